"""Secure sessions over QUIC: the asyncio glue around aioquic and ``starling.proto.session``.

Theory of operation
-------------------
A ``Node`` owns one ``Endpoint`` (UDP sockets) and routes QUIC packets to
connections by destination connection ID, as aioquic's own server does, so
client and server connections share the one socket. Each QUIC connection is
wrapped by a ``Session``, which:

* runs the sans-IO Noise handshake (``proto.session.Handshake``) on stream 0;
* once it completes, gives every other stream its own frame keys, reads the
  stream header of streams the peer opens and hands them to the handler
  registered for that protocol (or resets them with SESSION_PROTOCOL_UNKNOWN);
* turns every ``SessionError`` into a QUIC close carrying the registry code,
  so the peer learns why, and frees everything the session held.

The flow is aioquic's ``QuicConnectionProtocol`` pattern: feed a datagram in,
drain the connection's events, transmit, re-arm one timer per connection.

Backpressure: aioquic buffers whatever is written to a stream. ``Stream.send``
waits while more than ``SEND_HIGH_WATER`` bytes of the stream are unacknowledged,
so a sender that outruns its peer waits instead of buffering without bound.

Liveness (spec/02-secure-session.md 3.5): a peer that vanishes without a word
is noticed by the idle timeout, 30 s after it last spoke. Long before that, the
acknowledgements stop: once what a session sent has gone unacknowledged for
``suspect_ptos`` probe timeouts (and ``suspect_min`` seconds), the session is
*suspect* and the node emits ``SessionSuspect(session, True)``; the next
acknowledgement clears it (``SessionSuspect(session, False)``). The session
stays open either way: applications route around it (gossip takes the peer
out of its mesh) and the idle timeout still decides its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.congestion.base import K_GRANULARITY
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from starling.proto.errors import ErrorCode, LocalProtocolError, SessionError
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.nat import PathConfig, peek_session_tag
from starling.proto.network import MAIN_NETWORK_ID
from starling.proto.session import (
    ALPN,
    HANDSHAKE_STREAM_ID,
    MAX_FRAME_CIPHERTEXT,
    TAG_SIZE,
    FrameReader,
    FrameWriter,
    Handshake,
    Role,
    SessionKeys,
    StreamHeader,
    check_protocol_id,
)

from .endpoint import Address, Endpoint
from .path import SessionPath

if TYPE_CHECKING:
    from starling.proto.dht import Record

    from .relay import Circuit, RelayService

log = logging.getLogger("starling.session")

FRAME_OVERHEAD = 2 + TAG_SIZE  # a frame's length prefix and AEAD tag [SES-R12]

SEND_HIGH_WATER = 1 << 20  # unacknowledged bytes per stream before send() waits
EARLY_DATA_LIMIT = 256 * 1024  # stream bytes a responder holds while msg3 is missing
CID_LENGTH = 8


class StreamClosed(Exception):
    """The stream was reset or its session ended; ``code`` says why."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
        super().__init__(f"stream closed: {name} (0x{code:04x}) {reason}".rstrip())


class SessionClosed(ConnectionError):
    """A session ended, locally or by the peer; ``code`` is the registry code."""

    def __init__(self, code: int, reason: str, by_peer: bool) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"QUIC {code}"
        who = "peer" if by_peer else "us"
        super().__init__(f"session closed by {who}: {name} (0x{code:04x}) {reason}".rstrip())


@dataclass(frozen=True)
class SessionUp:
    session: Session


@dataclass(frozen=True)
class SessionDown:
    session: Session
    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True)
class SessionSuspect:
    """What ``session`` sent has gone unacknowledged for several probe timeouts
    (``suspect``), or an acknowledgement came again (not ``suspect``) [SES-R22]."""

    session: Session
    suspect: bool


SessionEvent = SessionUp | SessionDown | SessionSuspect
StreamHandler = Callable[["Stream"], Awaitable[None]]


@dataclass
class NodeConfig:
    """Knobs of the session layer; the defaults suit a node on the Internet."""

    network_id: bytes = MAIN_NETWORK_ID
    host: str = "127.0.0.1"
    port: int = 0
    idle_timeout: float = 30.0
    keepalive_interval: float = 10.0  # below common ~30 s NAT UDP mapping lifetimes
    # A session is suspect once its sent data has gone unacknowledged for this many
    # probe timeouts (RFC 9002's PTO, about RTT + 25 ms on a quiet path), and at least
    # ``suspect_min`` seconds: a peer's event loop busy for a moment is not a dead peer.
    suspect_ptos: float = 3.0
    suspect_min: float = 0.5
    handshake_timeout: float = 10.0
    max_sessions: int = 1024
    # Unfinished handshakes: per source IP (a carrier-grade NAT puts many people behind
    # one address) and in all.
    max_half_open_per_ip: int = 64
    max_half_open: int = 512
    # 1350 fits every path with a 1400-byte MTU; aioquic's own default is RFC 9000's 1200.
    max_datagram_size: int = 1350
    x25519_only: bool = True
    reader: str = "drain"
    max_stream_data: int = 1 << 20
    max_data: int = 4 << 20
    # QUIC v1 only (RFC 9000): aioquic would also prepare v2's Initial keys per connection.
    quic_versions: tuple[int, ...] = (QuicProtocolVersion.VERSION_1,)
    # The path layer (spec/04 section 8): probes and punching, how long a circuit stays
    # open as a standby once the session moved to a direct path [NAT-R51], the head
    # start of direct addresses over relays when dialling a peer ID (8.2), and addresses
    # this node may be reached at besides its sockets' (confirmed or configured).
    path: PathConfig = field(default_factory=PathConfig)
    circuit_standby: float = 30.0
    punch: bool = True  # relayed sessions try to go direct (spec/04 section 7)
    direct_head_start: float = 0.25
    candidates: tuple[Address, ...] = ()


# ----------------------------------------------------------------------------- QUIC glue


class _QuicConnection(QuicConnection):
    """aioquic's connection, tuned for short handshakes.

    * Only the X25519 key share: aioquic's client sends shares for P-256, P-384,
      X25519 and X448, and making the three it will not use costs CPU on every
      handshake.
    * Two connection IDs per side (the minimum, RFC 9000 section 18.2) instead
      of aioquic's eight: paths change below QUIC, in the path layer, never in
      it, so the spare IDs were only seven NEW_CONNECTION_ID frames each way.
    * ACKs without delay until our last Noise message is out: aioquic delays
      ACKs by 1 ms, so the packets carrying msg2 and msg3 (computed in less)
      left without the ACK that then followed in a packet of its own.
    """

    x25519_only = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_active_connection_id_limit = 2
        self._ack_delay = 0.0

    def handshake_sent(self) -> None:
        """Our last handshake message is queued: back to aioquic's ACK delay."""
        self._ack_delay = K_GRANULARITY

    # -- receive windows that follow what the application has read ------------------
    #
    # aioquic doubles a receive window whenever the peer has sent half of it,
    # whether or not anybody read the data, so a peer could make a node buffer
    # without bound behind a slow reader. Here a window is credited only as the
    # application consumes: the limit stays at (bytes consumed + window), raised
    # in steps of half a window. ``held`` says how many received bytes of a stream
    # still wait to be read (None: the connection's total).

    held: Callable[[int | None], int] = staticmethod(lambda _stream_id: 0)  # type: ignore[assignment]

    def credit_due(self, stream_id: int) -> bool:
        """Whether reading from ``stream_id`` has earned the peer a window update."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        window = self._configuration.max_stream_data
        consumed = stream.receiver.highest_offset - self.held(stream_id)
        return consumed + window - stream.max_stream_data_local >= window // 2

    def connection_credit_due(self) -> bool:
        """Whether reading has earned the peer a connection-wide window update."""
        limit = self._local_max_data
        window = self._configuration.max_data
        return limit.used - self.held(None) + window - limit.value >= window // 2

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        if self.connection_credit_due():
            limit.value = limit.used - self.held(None) + self._configuration.max_data
        used, limit.used = limit.used, 0  # hides the bytes from aioquic's doubling rule
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        receiver = stream.receiver
        if stream.max_stream_data_local and self.credit_due(stream.stream_id):
            window = self._configuration.max_stream_data
            stream.max_stream_data_local = receiver.highest_offset - self.held(stream.stream_id)
            stream.max_stream_data_local += window
        highest, receiver.highest_offset = receiver.highest_offset, 0  # as above
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self.x25519_only:
            self.tls._supported_groups = [tls.Group.X25519]


def _self_signed_certificate() -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """A throwaway certificate: TLS only wraps the transport, Noise proves identity [SES-R1]."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "starling")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    return cert, key


# ----------------------------------------------------------------------------- streams


class Stream:
    """One application stream: frames in both directions under the stream's own keys."""

    def __init__(
        self,
        session: Session,
        stream_id: int,
        protocol: str,
        writer: FrameWriter,
        reader: FrameReader,
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.protocol = protocol
        self._writer = writer
        self._reader = reader
        self._frames: deque[bytes] = deque()
        self._held = 0  # received bytes (as framed on the wire) not yet read
        self._discarding = False  # the handler is done: what arrives is dropped
        self._readable = asyncio.Event()
        self._eof = False
        self._send_closed = False
        self._error: StreamClosed | None = None

    def __repr__(self) -> str:
        return f"Stream({self.protocol}, id={self.stream_id}, peer={self.session.peer_id})"

    # -- sending ------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one or more frames; waits while the peer is behind."""
        self._check_send()
        self.session._send(self.stream_id, self._writer.seal_many(bytes(data)))
        while self.session._unacked(self.stream_id) > SEND_HIGH_WATER:
            await self.session._wait_progress()
            self._check_send()

    def send_nowait(self, data: bytes) -> None:
        """Queue ``data`` as frames without waiting for the peer (callers bound it)."""
        self._check_send()
        self.session._send(self.stream_id, self._writer.seal_many(bytes(data)))

    @property
    def unacked(self) -> int:
        """Bytes sent on this stream and not yet acknowledged."""
        return self.session._unacked(self.stream_id)

    async def close(self) -> None:
        """Finish our direction (FIN); the peer reads to the end, then sees end of stream."""
        self.finish()

    def finish(self) -> None:
        """``close()`` for synchronous callers."""
        if not self._send_closed and self._error is None and not self.session.closed:
            self._send_closed = True
            self.session._send(self.stream_id, b"", end_stream=True)

    def reset(self, code: int = ErrorCode.NO_ERROR) -> None:
        """Abandon the stream in both directions with ``code``."""
        self.session._reset_stream(self.stream_id, code)
        self._fail(StreamClosed(code, "reset locally"))

    def _check_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._send_closed:
            raise StreamClosed(ErrorCode.NO_ERROR, "already closed for sending")

    # -- receiving ----------------------------------------------------------------

    async def recv(self) -> bytes | None:
        """The next frame's plaintext, or None at the end of the stream."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._release(len(frame) + FRAME_OVERHEAD)
        return frame

    def _release(self, nbytes: int) -> None:
        self._held -= nbytes
        self.session._held_total -= nbytes
        self.session._consumed(self.stream_id)

    async def read_all(self) -> bytes:
        chunks = []
        while (frame := await self.recv()) is not None:
            chunks.append(frame)
        return b"".join(chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while (frame := await self.recv()) is not None:
            yield frame

    def _deliver(self, frames: list[bytes], end: bool) -> None:
        if self._discarding:
            frames = []
        if frames:
            self._frames.extend(frames)
            held = sum(map(len, frames)) + FRAME_OVERHEAD * len(frames)
            self._held += held
            self.session._held_total += held
        if end:
            self._eof = True
        if frames or end:
            self._readable.set()

    def _fail(self, error: StreamClosed) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._discard_unread()  # nobody will read these

    def _discard_unread(self, from_now_on: bool = False) -> None:
        if self._held:  # they no longer count against the receive windows
            self._frames.clear()
            self._release(self._held)
        if from_now_on:  # and nothing that still arrives will be read either
            self._discarding = True


# ----------------------------------------------------------------------------- sessions


class Session:
    """A QUIC connection with a completed (or running) Noise handshake."""

    def __init__(
        self,
        node: Node,
        quic: QuicConnection,
        addr: Address,
        role: Role,
        expected_peer: PeerId | None,
        circuit: Circuit | None = None,
    ) -> None:
        self.node = node
        # Where the session was first reached: the peer's address, or for a session that
        # came up through a relay, the relay's. QUIC itself only ever sees
        # ``path.synthetic``; ``path`` decides where each packet goes [NAT-R50].
        self.remote_address = addr
        self.path = SessionPath(self, None if circuit is not None else addr, circuit)
        self.role = role
        self._quic = quic
        self._loop = asyncio.get_running_loop()
        self._handshake = Handshake(
            role,
            node.identity,
            node._noise_static,
            os.urandom(32),
            node.config.network_id,
            tuple(node._handlers),
            expected_peer,
        )
        self.keys: SessionKeys | None = None
        self._handshake_fin_sent = False
        self.ready: asyncio.Future[Session] = self._loop.create_future()
        self._closed: asyncio.Future[SessionClosed] = self._loop.create_future()
        self._cids: set[bytes] = set()  # connection IDs routed to this session
        self._early: list[tuple[int, bytes, bool]] = []  # stream data that overtook msg3
        self._early_bytes = 0
        self._streams: dict[int, Stream] = {}
        self._inbound: dict[int, FrameReader] = {}  # peer streams whose header has not come
        self._refused: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._held_total = 0  # received stream bytes the application has not read yet
        if isinstance(quic, _QuicConnection):
            quic.held = self._held
        self._progress = asyncio.Event()
        self._last_activity = self._loop.time()
        # Liveness [SES-R22]: the largest packet number acknowledged so far, since when
        # ack-eliciting data has waited for an acknowledgement, and the timer that
        # re-checks once it could have waited too long.
        self.suspect = False
        self._acked_seen = -1
        self._unacked_since: float | None = None
        self._liveness_timer: asyncio.TimerHandle | None = None
        self._handshake_timer = self._loop.call_later(
            node.config.handshake_timeout, self._on_handshake_timeout
        )
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        peer = self.keys.peer_id if self.keys else "?"
        return f"Session({self.role.value}, peer={peer}, addr={self.remote_address})"

    # -- public API -----------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        if self.keys is None:
            raise LocalProtocolError(ErrorCode.SESSION_NOT_READY, "handshake not complete")
        return self.keys.peer_id

    @property
    def peer_protocols(self) -> tuple[str, ...]:
        return self.keys.peer_protocols if self.keys else ()

    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> SessionClosed:
        return await asyncio.shield(self._closed)

    async def open_stream(self, protocol: str) -> Stream:
        """Open a stream speaking ``protocol``; its header goes out with the first frame."""
        check_protocol_id(protocol)
        if self.closed:
            raise self._closed.result()
        await asyncio.shield(self.ready)
        return self.open_stream_nowait(protocol)

    def open_stream_nowait(self, protocol: str) -> Stream:
        """``open_stream`` for synchronous callers; the handshake must be complete."""
        check_protocol_id(protocol)
        if self.closed:
            raise self._closed.result()
        if self.keys is None:
            raise LocalProtocolError(ErrorCode.SESSION_NOT_READY, "handshake not complete")
        stream_id = self._quic.get_next_available_stream_id()
        writer, reader = self.keys.stream_cipher(stream_id, self.node._max_frame(protocol))
        stream = Stream(self, stream_id, protocol, writer, reader)
        self._streams[stream_id] = stream
        self._send(stream_id, writer.seal(StreamHeader(protocol).encode()))
        return stream

    async def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the session with a registry code and a reason the peer will see."""
        self._terminate(code, reason, by_peer=False)
        self._transmit()

    # -- internals: I/O -------------------------------------------------------------

    def _datagram_received(
        self, data: bytes, addr: Address | None, circuit: Circuit | None = None
    ) -> None:
        self.path.received(addr, circuit)
        self._quic.receive_datagram(data, self.path.synthetic, now=self._loop.time())
        self._last_activity = self._loop.time()
        self._process_events()
        if self._handshake.complete:
            # Established: one transmit pass for all the datagrams read in this loop
            # iteration (a catch-up brings thousands), not one per datagram.
            self._transmit_soon()
        else:
            # Handshaking: reply at once; deferring cost 25-40% of the handshake rate.
            self._transmit()
        # ACKs may have freed send buffer: wake writers waiting in Stream.send().
        self._progress.set()
        self._progress = asyncio.Event()

    async def _wait_progress(self) -> None:
        if self.closed:
            return
        waiter = self._progress
        closed = asyncio.ensure_future(asyncio.shield(self._closed))
        try:
            await asyncio.wait(
                [asyncio.ensure_future(waiter.wait()), closed],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            closed.cancel()

    def _unacked(self, stream_id: int) -> int:
        # aioquic keeps a stream's bytes until they are acknowledged; their count is
        # what backpressure bounds. (Private attributes: pinned by tests/test_session.py.)
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def _send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.closed:
            raise StreamClosed(self._closed.result().code, "session closed")
        self._quic.send_stream_data(stream_id, data, end_stream)
        self.stats["tx_bytes"] += len(data)
        self._transmit_soon()

    def _reset_stream(self, stream_id: int, code: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(ValueError, AssertionError):
            self._quic.reset_stream(stream_id, code)
        with contextlib.suppress(ValueError, AssertionError):
            self._quic.stop_stream(stream_id, code)
        self._streams.pop(stream_id, None)
        self._inbound.pop(stream_id, None)
        # Data the peer sent before it saw the reset is dropped, not taken for a new stream.
        self._refused.add(stream_id)
        self._transmit_soon()

    def _held(self, stream_id: int | None) -> int:
        if stream_id is None:
            return self._held_total
        stream = self._streams.get(stream_id)
        return stream._held if stream is not None else 0

    def _consumed(self, stream_id: int) -> None:
        # The application read from a stream: send a window update once one is due.
        quic = self._quic
        if isinstance(quic, _QuicConnection) and (
            quic.credit_due(stream_id) or quic.connection_credit_due()
        ):
            self._transmit_soon()

    def _transmit_soon(self) -> None:
        # Coalesce many writes in one loop iteration into one transmit pass.
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_handle = None
        now = self._loop.time()
        for data, _ in self._quic.datagrams_to_send(now=now):
            self.path.send(data)
        timer_at = self._quic.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if timer_at is None else self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at
        if self.keys is not None and not self.closed:
            self._check_liveness(now)

    def _check_liveness(self, now: float) -> None:
        """Suspect the session when its ack-eliciting data has waited for an
        acknowledgement for ``suspect_ptos`` PTOs; clear it at the next one [SES-R22].

        The clock starts at the oldest packet in flight when no acknowledgement came
        since the last check, and restarts at every acknowledgement of a new packet:
        aioquic resends a probe's data in new packets, so "the oldest packet in
        flight" alone would restart at every PTO. (Private attributes of aioquic's
        recovery: pinned by tests/test_session.py.)"""
        quic = self._quic
        space = quic._spaces.get(tls.Epoch.ONE_RTT)
        if space is None:
            return
        acked = space.largest_acked_packet
        if acked != self._acked_seen:
            self._acked_seen = acked
            self._unacked_since = None
            if self.suspect:
                self.suspect = False
                self.stats["unsuspected"] += 1
                self.node._emit(SessionSuspect(self, False))
        if not space.ack_eliciting_in_flight:
            self._unacked_since = None
            return
        if self._unacked_since is None:
            oldest = next(
                (p.sent_time for p in space.sent_packets.values() if p.is_ack_eliciting), now
            )
            self._unacked_since = oldest
        if self.suspect or self._liveness_timer is not None:
            return  # an armed timer checks again (and re-arms if an ACK moved the clock)
        config = self.node.config
        wait = max(config.suspect_ptos * quic._loss.get_probe_timeout(), config.suspect_min)
        due = self._unacked_since + wait
        if now >= due:
            self.suspect = True
            self.stats["suspected"] += 1
            log.info(
                "%r is suspect: nothing acknowledged for %.2f s", self, now - self._unacked_since
            )
            self.node._emit(SessionSuspect(self, True))
        else:
            self._liveness_timer = self._loop.call_at(due, self._on_liveness_timer)

    def _on_liveness_timer(self) -> None:
        self._liveness_timer = None
        if self.keys is not None and not self.closed:
            self._check_liveness(self._loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._quic.handle_timer(now=self._loop.time())
        self._process_events()
        self._transmit()

    def _keepalive(self) -> None:
        if self.keys is not None and not self.closed:
            idle = self._loop.time() - self._last_activity
            if idle >= self.node.config.keepalive_interval * 0.9:
                self._quic.send_ping(0)
                self._transmit()

    # -- internals: events ----------------------------------------------------------

    def _process_events(self) -> None:
        while (event := self._quic.next_event()) is not None:
            try:
                self._handle_event(event)
            except SessionError as exc:
                log.info("closing %r: %s", self, exc)
                self.stats[f"error_{exc.code.name}"] += 1
                self._terminate(exc.code, exc.reason, by_peer=False)
                return

    def _handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id == HANDSHAKE_STREAM_ID:
                self._on_handshake_data(event.data, event.end_stream)
            else:
                self._on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            stream = self._streams.pop(event.stream_id, None)
            self._inbound.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(StreamClosed(event.error_code, "reset by peer"))
        elif isinstance(event, events.ConnectionIdIssued):
            self.node._route(event.connection_id, self)
        elif isinstance(event, events.ConnectionIdRetired):
            self.node._routes.pop(event.connection_id, None)
            self._cids.discard(event.connection_id)
        elif isinstance(event, events.ConnectionTerminated):
            by_peer = not self.closed
            code, reason = event.error_code, event.reason_phrase
            if by_peer and reason == "Idle timeout" and event.frame_type == QuicFrameType.PADDING:
                # aioquic's own idle timer fired (it reports that as an internal error on a
                # PADDING frame): nothing came from the peer at all.
                code, by_peer = ErrorCode.SESSION_IDLE_TIMEOUT, False
            self._terminate(code, reason, by_peer=by_peer, final=True)

    def _on_handshake_data(self, data: bytes, end: bool) -> None:
        hs = self._handshake
        reply = hs.receive(data) if data else b""
        fin = (
            hs.fin and not self._handshake_fin_sent
        )  # close our direction once, with the last message
        if reply or fin:
            self._handshake_fin_sent |= fin
            self._quic.send_stream_data(HANDSHAKE_STREAM_ID, reply, end_stream=fin)
            if (hs.complete or hs.awaiting_msg3) and isinstance(self._quic, _QuicConnection):
                self._quic.handshake_sent()
        if end:
            hs.end_of_stream()
        if hs.complete and self.keys is None:
            self.keys = hs.keys
            self._handshake_timer.cancel()
            self.path.session_ready()
            self.node._on_ready(self)
            if not self.ready.done():
                self.ready.set_result(self)
            early, self._early = self._early, []
            for stream_id, chunk, fin in early:
                self._on_stream_data(stream_id, chunk, fin)

    def _on_stream_data(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.keys is None:
            # Once msg2 is out, the initiator is done and may open streams; if msg3 is lost,
            # their data arrives first. Hold a bounded amount until msg3 comes [SES-R16].
            self._early_bytes += len(data)
            if self._handshake.awaiting_msg3 and self._early_bytes <= EARLY_DATA_LIMIT:
                self._early.append((stream_id, data, end))
                return
            raise SessionError(
                ErrorCode.SESSION_NOT_READY,
                f"data on stream {stream_id} before the handshake completed",
                "SES-R16",
            )
        if stream_id & 2:  # unidirectional: Starling opens none [SES-R19]
            if stream_id not in self._refused:
                self._refused.add(stream_id)
                with contextlib.suppress(ValueError, AssertionError):
                    self._quic.stop_stream(stream_id, ErrorCode.SESSION_PROTOCOL_UNKNOWN)
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            frames = stream._reader.feed(data)
            if end:
                stream._reader.end()
            stream._deliver(frames, end)
            return
        if stream_id in self._refused:
            return
        # A stream the peer opened: the first frame is its header [SES-R15].
        reader = self._inbound.get(stream_id)
        if reader is None:
            reader = self.keys.stream_cipher(stream_id)[1]
            self._inbound[stream_id] = reader
        frames = reader.feed(data)
        if end:
            reader.end()
        if not frames:
            if end:
                self._inbound.pop(stream_id, None)
            return
        del self._inbound[stream_id]
        header = StreamHeader.decode(frames[0])
        handler = self.node._handlers.get(header.protocol)
        if handler is None:
            self._refused.add(stream_id)
            self.stats["streams_refused"] += 1
            self._reset_stream(stream_id, ErrorCode.SESSION_PROTOCOL_UNKNOWN)
            return
        writer, _ = self.keys.stream_cipher(stream_id)
        reader.max_frame = self.node._max_frame(header.protocol)
        stream = Stream(self, stream_id, header.protocol, writer, reader)
        self._streams[stream_id] = stream
        stream._deliver(frames[1:], end)
        task = self._loop.create_task(self._run_handler(handler, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: StreamHandler, stream: Stream) -> None:
        try:
            await handler(stream)
        except StreamClosed:
            pass
        except Exception:
            log.exception("handler for %s failed", stream.protocol)
            stream.reset(ErrorCode.SESSION_SHUTDOWN)
        finally:
            # Frames the handler left unread will never be read: they stop counting
            # against the session's receive windows, and so does whatever follows.
            stream._discard_unread(from_now_on=True)

    def _on_handshake_timeout(self) -> None:
        # [SES-R18]: a handshake that does not finish in time is abandoned.
        if self.keys is None and not self.closed:
            self.stats["handshake_timeouts"] += 1
            self._terminate(
                ErrorCode.SESSION_HANDSHAKE_TIMEOUT,
                f"no handshake within {self.node.config.handshake_timeout:g} s",
                by_peer=False,
            )
            self._transmit()

    def _terminate(self, code: int, reason: str, by_peer: bool, final: bool = False) -> None:
        if not self.closed:
            error = SessionClosed(code, reason, by_peer)
            self._closed.set_result(error)
            if not self.ready.done():
                self.ready.set_exception(error)
                self.ready.exception()  # retrieved here: nobody may be awaiting it
            if self._quic._state not in (
                QuicConnectionState.CLOSING,
                QuicConnectionState.DRAINING,
                QuicConnectionState.TERMINATED,
            ):
                self._quic.close(error_code=code, reason_phrase=reason[:200])
            self._handshake_timer.cancel()
            if self._liveness_timer is not None:
                self._liveness_timer.cancel()
                self._liveness_timer = None
            for stream in self._streams.values():
                stream._fail(StreamClosed(code, "session closed"))
            self._streams.clear()
            self._inbound.clear()
            for task in list(self._tasks):
                task.cancel()
            self._progress.set()
            self.path.close()
            self.node._on_closed(self, error)
        if final:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.node._forget(self)


# ----------------------------------------------------------------------------- the node


class Node:
    """A Starling node: an identity, one UDP endpoint, and its secure sessions."""

    def __init__(self, identity: PrivateKey, config: NodeConfig) -> None:
        self.identity = identity
        self.config = config
        self._endpoint = Endpoint(config.network_id, config.reader)
        self._endpoint.on_quic = self._on_quic
        self._endpoint.on_probe = self._on_probe
        self._handlers: dict[str, StreamHandler] = {}
        self._tags: dict[bytes, Session] = {}  # probe session tags [NAT-R20]
        # NAT traversal: the relay service (node/relay.py) attaches itself here, and a
        # resolver of peer records (the DHT's, node/dial.py) lets connect() take a peer ID.
        self.relay: RelayService | None = None
        self.resolver: Callable[[PeerId], Awaitable[Record | None]] | None = None
        # Addresses peers saw us at (PONGs; the DHT's reports through ``reported``): punch
        # candidates (spec/04, 7.2), newest last.
        self.observed: dict[Address, float] = {}
        self.reported: Callable[[], list[Address]] = list
        self._max_frames: dict[str, int] = {}
        self._routes: dict[bytes, Session] = {}
        self._sessions: set[Session] = set()
        self._half_open: Counter[str] = Counter()
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._noise_static = os.urandom(32)
        self._cert, self._cert_key = _self_signed_certificate()
        self._keepalive_task: asyncio.Task[None] | None = None
        self.stats: Counter[str] = Counter()

    @classmethod
    async def start(
        cls,
        identity: PrivateKey,
        config: NodeConfig | None = None,
        handlers: dict[str, StreamHandler] | None = None,
    ) -> Node:
        node = cls(identity, config or NodeConfig())
        for protocol, handler in (handlers or {}).items():
            node.set_handler(protocol, handler)
        await node._endpoint.open(node.config.host, node.config.port)
        node._keepalive_task = asyncio.get_running_loop().create_task(node._keepalive_loop())
        return node

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def addresses(self) -> list[Address]:
        return self._endpoint.addresses

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def sessions(self) -> list[Session]:
        """Sessions whose handshake has completed and that are still open."""
        return [s for s in self._sessions if s.keys is not None and not s.closed]

    def set_handler(
        self, protocol: str, handler: StreamHandler, max_frame: int = MAX_FRAME_CIPHERTEXT
    ) -> None:
        """Serve streams the peers open for ``protocol``; ``max_frame`` caps their frames."""
        self._handlers[check_protocol_id(protocol)] = handler
        self._max_frames[protocol] = max_frame

    def _max_frame(self, protocol: str) -> int:
        return self._max_frames.get(protocol, MAX_FRAME_CIPHERTEXT)

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        """Call ``listener`` with SessionUp and SessionDown events."""
        self._listeners.append(listener)

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Session events from now on, as an async iterator."""
        queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self._listeners.append(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(queue.put_nowait)

    async def connect(
        self,
        addr: Address | PeerId,
        peer_id: PeerId | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Open a session to ``addr``; with ``peer_id``, only that peer is accepted [SES-R8].

        Given a peer ID instead of an address, reuse the open session with that peer, or
        resolve its peer record and dial it directly or through its relays (spec/04, 8.2).
        """
        if isinstance(addr, PeerId):
            from .dial import connect_peer

            return await connect_peer(self, addr, None, timeout)
        host = str(ipaddress.ip_address(addr[0]))
        return await self._dial((host, int(addr[1])), peer_id, timeout, None)

    async def connect_via(
        self, circuit: Circuit, peer_id: PeerId, timeout: float | None = None
    ) -> Session:
        """Open a session to ``peer_id`` through an open relay circuit [NAT-R37]."""
        return await self._dial(circuit.relay_address, peer_id, timeout, circuit)

    def candidates(self) -> list[Address]:
        """Where peers may reach us directly (spec/04, 7.2): configured and confirmed
        addresses, then addresses peers observed, then our sockets' own, at most 8."""
        observed = sorted(self.observed, key=self.observed.__getitem__, reverse=True)
        local = [a for a in self.addresses if not ipaddress.ip_address(a[0]).is_unspecified]
        found = [*self.config.candidates, *self.reported(), *observed, *local]
        return list(dict.fromkeys(found))[:8]

    def _observed(self, addr: Address) -> None:
        self.observed[addr] = asyncio.get_running_loop().time()
        while len(self.observed) > 8:
            del self.observed[min(self.observed, key=self.observed.__getitem__)]

    def session_with(self, peer_id: PeerId | bytes) -> Session | None:
        """The open session with ``peer_id`` whose handshake completed, if any."""
        raw = peer_id.raw if isinstance(peer_id, PeerId) else bytes(peer_id)
        for session in self._sessions:
            if session.keys is not None and not session.closed and session.keys.peer_id.raw == raw:
                return session
        return None

    async def _dial(
        self,
        addr: Address,
        peer_id: PeerId | None,
        timeout: float | None,
        circuit: Circuit | None,
    ) -> Session:
        if len(self._sessions) >= self.config.max_sessions:
            raise SessionClosed(ErrorCode.SESSION_LIMIT, "too many sessions", by_peer=False)
        quic = _QuicConnection(configuration=self._quic_config(is_client=True))
        quic.x25519_only = self.config.x25519_only
        session = Session(self, quic, addr, Role.INITIATOR, peer_id, circuit)
        self._sessions.add(session)
        self._route(quic.host_cid, session)
        quic.connect(session.path.synthetic, now=asyncio.get_running_loop().time())
        # msg1 rides with the client's first 1-RTT packet, right after the TLS Finished.
        quic.send_stream_data(HANDSHAKE_STREAM_ID, session._handshake.start())
        session._transmit()
        try:
            return await asyncio.wait_for(
                asyncio.shield(session.ready), timeout or self.config.handshake_timeout + 1
            )
        except TimeoutError:
            session._on_handshake_timeout()
            raise
        except asyncio.CancelledError:
            await session.close(ErrorCode.SESSION_SHUTDOWN, "connect cancelled")
            raise

    async def close(self) -> None:
        """Close every session with SESSION_SHUTDOWN and release the sockets."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        for session in list(self._sessions):
            await session.close(ErrorCode.SESSION_SHUTDOWN, "node shutting down")
        await asyncio.sleep(0)
        for session in list(self._sessions):
            session._terminate(ErrorCode.SESSION_SHUTDOWN, "", by_peer=False, final=True)
        self._endpoint.close()

    # -- internals ------------------------------------------------------------------

    def _quic_config(self, is_client: bool) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.config.idle_timeout,
            max_datagram_size=self.config.max_datagram_size,
            connection_id_length=CID_LENGTH,
            max_stream_data=self.config.max_stream_data,
            max_data=self.config.max_data,
            supported_versions=list(self.config.quic_versions),
        )
        if is_client:
            config.verify_mode = ssl.CERT_NONE  # identity comes from Noise [SES-R1]
        else:
            config.certificate = self._cert
            config.private_key = self._cert_key
        return config

    def _on_quic(self, data: bytes, addr: Address) -> None:
        self._receive_quic(data, addr, None)

    def _on_relayed(self, data: bytes, circuit: Circuit) -> None:
        """A packet that came through ``circuit``: routed like any QUIC packet [NAT-R50]."""
        self._receive_quic(data, circuit.relay_address, circuit)

    def _on_probe(self, data: bytes, addr: Address) -> None:
        tag = peek_session_tag(data)
        session = self._tags.get(tag) if tag is not None else None
        if session is None:
            self.stats["dropped_probe_unknown_session"] += 1
            return
        session.path.probe_received(data, addr)

    def _receive_quic(self, data: bytes, addr: Address, circuit: Circuit | None) -> None:
        if not data[0] & 0x80:
            # Short header (RFC 9000, 17.3): the destination connection ID follows the
            # first byte directly. Most packets take this path; no full header parse.
            session = self._routes.get(data[1 : 1 + CID_LENGTH])
            if session is None:
                self.stats["dropped_unknown_connection"] += 1
            else:
                session._datagram_received(data, None if circuit else addr, circuit)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.stats["dropped_bad_quic_header"] += 1
            return
        session = self._routes.get(header.destination_cid)
        if session is not None:
            session._datagram_received(data, None if circuit else addr, circuit)
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.stats["dropped_unknown_connection"] += 1
            return
        if header.version not in self.config.quic_versions:
            if circuit is not None:
                return
            self._endpoint.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=list(self.config.quic_versions),
                ),
                addr,
            )
            return
        # Admission: a bounded number of sessions, and of unfinished handshakes per IP.
        if len(self._sessions) >= self.config.max_sessions:
            self.stats["refused_session_limit"] += 1
            return
        if self._half_open[addr[0]] >= self.config.max_half_open_per_ip:
            self.stats["refused_half_open_limit"] += 1
            return
        if self._half_open.total() >= self.config.max_half_open:
            self.stats["refused_half_open_total"] += 1
            return
        quic = _QuicConnection(
            configuration=self._quic_config(is_client=False),
            original_destination_connection_id=header.destination_cid,
        )
        quic.x25519_only = self.config.x25519_only
        session = Session(self, quic, addr, Role.RESPONDER, None, circuit)
        self._sessions.add(session)
        self._half_open[addr[0]] += 1
        self._route(header.destination_cid, session)
        self._route(quic.host_cid, session)
        session._datagram_received(data, None if circuit else addr, circuit)

    def _route(self, cid: bytes, session: Session) -> None:
        self._routes[cid] = session
        session._cids.add(cid)

    def _on_ready(self, session: Session) -> None:
        if session.role is Role.RESPONDER:
            self._release_half_open(session)
        self.stats["sessions_up"] += 1
        self._emit(SessionUp(session))

    def _on_closed(self, session: Session, error: SessionClosed) -> None:
        if session.role is Role.RESPONDER and session.keys is None:
            self._release_half_open(session)
        if session.keys is not None:
            self._emit(SessionDown(session, error.code, error.reason, error.by_peer))

    def _release_half_open(self, session: Session) -> None:
        ip = session.remote_address[0]
        self._half_open[ip] -= 1
        if self._half_open[ip] <= 0:
            del self._half_open[ip]

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)
        for cid in session._cids:
            if self._routes.get(cid) is session:
                del self._routes[cid]
        session._cids.clear()

    def _emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("session listener failed")

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_interval)
            for session in list(self._sessions):
                session._keepalive()
