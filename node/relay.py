"""Relays on a running node (spec/04 section 6): serving, reserving, circuits.

Theory of operation
-------------------
Every message of ``starling/relay/1`` travels on a stream of a session with the
relay. ``RelayService`` plays every role a node may have:

* **relay** (``serve=True``, a public node): the sans-IO ``RelayCore`` holds
  reservations and circuits; this module feeds it the frames of the streams
  clients open, carries out its actions (``Send``, ``Open`` a stream toward a
  circuit's target, ``Close``) and re-arms its timer. It forwards opaque
  frames; it never holds keys of the end-to-end session [NAT-R35] [NAT-R37].
* **target** (a node behind NAT): ``keep_reserved`` reserves a slot on a relay
  and renews it before half its lifetime [NAT-R30]; a stream the relay opens
  with INCOMING is accepted (``accept`` may refuse a source) and becomes a
  ``Circuit``, whose first packet (a QUIC Initial) starts a responder session.
* **source**: ``connect`` / ``open_circuit`` write CONNECT and, on STATUS 0,
  give a ``Circuit`` over which ``Node.connect_via`` runs the end-to-end
  session, Noise included, so the relay sees only ciphertext [NAT-R37].

A ``Circuit`` carries one end-to-end QUIC packet per frame. Its packets go to
``Node._on_relayed``, routed by connection ID like packets from the socket;
the session's ``SessionPath`` decides when to send on it (node/path.py).
A circuit's stream is reliable, the packets inside are not: when the stream
backs up, packets are dropped (QUIC's loss recovery resends), never buffered
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

from starling.proto.errors import ErrorCode, NatError, StarlingError
from starling.proto.identity import PeerId
from starling.proto.nat import (
    FRAME_LIMITS,
    PUNCH_PROTOCOL,
    RELAY_PROTOCOL,
    CircuitReady,
    Close,
    IncomingCircuit,
    Open,
    RelayConfig,
    RelayCore,
    RelayedPacket,
    RelayEntry,
    RelayEvent,
    RelayRefused,
    RelayStream,
    Reservation,
    Send,
    encode_status,
)

from .endpoint import Address
from .path import PUNCH_FRAME_LIMIT, serve_punch
from .session import SEND_HIGH_WATER, SessionClosed, SessionDown, SessionEvent, StreamClosed

if TYPE_CHECKING:
    from .session import Node, Session, Stream

log = logging.getLogger("starling.relay")

__all__ = ["Circuit", "RelayService"]

CONNECT_TIMEOUT = 12.0  # a relay answers a CONNECT within its own 10 s [NAT-R34]
BACKLOG = SEND_HIGH_WATER  # unacknowledged bytes on a circuit's stream before packets drop


class Circuit:
    """One end of an open circuit: the relay stream and the end-to-end packets on it."""

    def __init__(
        self,
        service: RelayService,
        stream: Stream,
        client: RelayStream,
        peer: bytes,
        accepted: bool,
        duration: int,
        data: int,
    ) -> None:
        self.service = service
        self.stream = stream
        self.client = client
        self.relay = stream.session.peer_id.raw
        self.relay_address: Address = stream.session.remote_address
        self.peer = bytes(peer)  # the other end of the circuit
        self.accepted = accepted  # we are its target (we accepted INCOMING)
        self.duration = duration
        self.data = data
        self.session: Session | None = None
        self.opened = service._loop.time()  # for renewal before its duration ends [NAT-R54]
        self.renewing = False
        self.open = True
        self.code: int | None = None  # why it ended
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        state = "open" if self.open else f"closed 0x{self.code or 0:04x}"
        return f"Circuit(relay={self.relay.hex()[:8]}, peer={self.peer.hex()[:8]}, {state})"

    def send(self, packet: bytes) -> bool:
        """Send one packet; False when the circuit can no longer carry any."""
        if not self.open:
            return False
        if self.stream.unacked > BACKLOG:
            self.stats["tx_dropped_backlog"] += 1
            return True
        try:
            self.stream.send_nowait(self.client.packet(packet))
        except StreamClosed as exc:
            self._ended(exc.code)
            return False
        except StarlingError:
            self.stats["tx_dropped_size"] += 1
            return True
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += len(packet)
        return True

    async def run(self) -> None:
        """Read packets until the circuit ends; each goes to the node as a QUIC datagram."""
        code = 0
        try:
            async for frame in self.stream:
                event = self.client.receive(frame, time.time())
                if isinstance(event, RelayedPacket):
                    self.stats["rx_packets"] += 1
                    self.stats["rx_bytes"] += len(event.data)
                    self.service.node._on_relayed(event.data, self)
        except StreamClosed as exc:
            code = exc.code
        except NatError as exc:
            code = exc.code
            self.stream.reset(exc.code)
        finally:
            self._ended(code)

    def near_limits(self, now: float, share: float) -> bool:
        """Whether ``share`` of its duration or of either direction's data is used."""
        used = max(self.stats["tx_bytes"], self.stats["rx_bytes"])
        return now - self.opened >= share * self.duration or used >= share * self.data

    def close(self) -> None:
        """End our side (FIN); the relay ends the other."""
        if self.open:
            self.open = False
            self.code = 0
            with contextlib.suppress(StreamClosed):
                self.stream.finish()

    def _ended(self, code: int) -> None:
        if self.code is None or self.open:
            self.code = code
        was_open, self.open = self.open, False
        if was_open:
            log.info("%r ended", self)
        if self.session is not None:
            self.session.path.circuit_closed(self, code)


class RelayService:
    """A node's relay roles: the relay itself (``serve``), and the client of relays."""

    def __init__(
        self,
        node: Node,
        serve: bool = False,
        config: RelayConfig | None = None,
        accept: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.node = node
        self._loop = asyncio.get_running_loop()
        self.accept = accept or (lambda source: True)
        self.core: RelayCore | None = None
        if serve:
            offset = time.time() - self._loop.time()
            self.core = RelayCore(node.identity, self._loop.time(), config, offset)
        self.events: deque[RelayEvent] = deque(maxlen=1024)  # the core's, for operators
        self.reservations: dict[bytes, tuple[Address, Reservation]] = {}
        # Called whenever ``reservations`` changes (the host republishes its peer record).
        self.on_change: Callable[[], None] = lambda: None
        self.stats: Counter[str] = Counter()
        self._streams: dict[Hashable, Stream] = {}  # the core's stream handles
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        node.relay = self
        node.set_handler(RELAY_PROTOCOL, self._on_stream, FRAME_LIMITS[RELAY_PROTOCOL])
        node.set_handler(PUNCH_PROTOCOL, serve_punch, PUNCH_FRAME_LIMIT)
        node.add_listener(self._on_session_event)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()

    # -- the client: reservations ---------------------------------------------------------

    async def reserve(self, relay: Session) -> Reservation:
        """Reserve (or renew) a slot on ``relay``; its voucher is verified [NAT-R33]."""
        client, frame = RelayStream.reserve(relay.peer_id.raw, self.node.peer_id.raw)
        stream = await relay.open_stream(RELAY_PROTOCOL)
        await stream.send(frame)
        reply = await asyncio.wait_for(stream.recv(), CONNECT_TIMEOUT)
        await stream.close()
        if reply is None:
            raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "the relay ended the stream")
        event = client.receive(reply, time.time())
        if isinstance(event, RelayRefused):
            raise NatError(event.code, "the relay refused the reservation", "NAT-R31")
        if not isinstance(event, Reservation):
            raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, f"{event!r} answers RESERVE")
        self.reservations[event.relay] = (relay.remote_address, event)
        self.stats["reserved"] += 1
        self.on_change()
        return event

    def keep_reserved(self, address: Address, relay: PeerId) -> asyncio.Task[None]:
        """Hold a reservation on the relay at ``address``: renew it before half its
        lifetime, reconnect when the session ends, back off when refused [NAT-R30]."""
        return self._spawn(self._keep(address, relay))

    async def _keep(self, address: Address, relay: PeerId) -> None:
        backoff = 1.0
        while True:
            try:
                session = self.node.session_with(relay) or await self.node.connect(
                    address, peer_id=relay
                )
                granted = await self.reserve(session)
                backoff = 1.0
                renew = max(1.0, (granted.expires - time.time()) / 2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.wait_closed(), renew)
            except (StarlingError, SessionClosed, StreamClosed, OSError, TimeoutError) as exc:
                log.info("reservation on %s: %s", address, exc)
                if self.reservations.pop(relay.raw, None) is not None:
                    self.on_change()
                await asyncio.sleep(backoff)
                backoff = min(60.0, backoff * 2)

    def relay_entries(self) -> list[RelayEntry]:
        """Our live reservations as peer-record relay entries, vouchers included [NAT-R60]."""
        now = time.time()
        return [
            RelayEntry(relay, address, granted.voucher.raw)
            for relay, (address, granted) in self.reservations.items()
            if granted.expires > now
        ]

    # -- the client: circuits -------------------------------------------------------------

    async def connect(self, relay: Session, target: bytes) -> Circuit:
        """CONNECT through ``relay`` to ``target``; the circuit once STATUS 0 came."""
        client, frame = RelayStream.connect(relay.peer_id.raw, self.node.peer_id.raw, target)
        stream = await relay.open_stream(RELAY_PROTOCOL)
        await stream.send(frame)
        try:
            reply = await asyncio.wait_for(stream.recv(), CONNECT_TIMEOUT)
        except TimeoutError:
            stream.reset(ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
            raise
        if reply is None:
            raise NatError(ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, "the relay ended the stream")
        try:
            event = client.receive(reply, time.time())
        except NatError as exc:
            stream.reset(exc.code)
            raise
        if isinstance(event, RelayRefused):
            await stream.close()
            self.stats[f"refused_{event.code.name}"] += 1
            raise NatError(event.code, "the relay refused the circuit", "NAT-R34")
        assert isinstance(event, CircuitReady)
        circuit = Circuit(self, stream, client, target, False, event.duration, event.data)
        self._spawn(circuit.run())
        self.stats["circuits_dialled"] += 1
        return circuit

    async def open_circuit(self, relays: Iterable[tuple[bytes, Address]], target: bytes) -> Circuit:
        """A circuit to ``target`` through the first of ``relays`` that opens one."""
        error: BaseException | None = None
        for relay, address in relays:
            try:
                session = self.node.session_with(relay) or await self.node.connect(
                    address, peer_id=PeerId(relay)
                )
                return await self.connect(session, target)
            except (StarlingError, SessionClosed, StreamClosed, OSError, TimeoutError) as exc:
                log.info("no circuit through %s: %s", address, exc)
                error = exc
        raise error or NatError(ErrorCode.NAT_RELAY_NO_RESERVATION, "no relay to try")

    # -- streams the peers open -----------------------------------------------------------

    async def _on_stream(self, stream: Stream) -> None:
        first = await stream.recv()
        if first is None:
            return
        # A relay opens streams to its targets with INCOMING; anything else is a client's
        # request to us as a relay.
        client = RelayStream.offered(stream.session.peer_id.raw, self.node.peer_id.raw)
        try:
            event = client.receive(first, time.time())
        except NatError:
            event = None
        if isinstance(event, IncomingCircuit):
            await self._incoming(stream, client, event)
        elif self.core is None:
            stream.send_nowait(encode_status(ErrorCode.NAT_RELAY_NOT_SERVING))  # [NAT-R30]
            stream.finish()
        else:
            await self._serve(stream, first)

    async def _incoming(self, stream: Stream, client: RelayStream, event: IncomingCircuit) -> None:
        if not self.accept(event.source):
            stream.send_nowait(client.refuse(ErrorCode.NAT_RELAY_TARGET_REFUSED))
            stream.finish()
            return
        stream.send_nowait(client.accept())
        circuit = Circuit(self, stream, client, event.source, True, event.duration, event.data)
        self.stats["circuits_accepted"] += 1
        await circuit.run()

    # -- the relay ------------------------------------------------------------------------

    async def _serve(self, stream: Stream, first: bytes) -> None:
        core = self.core
        assert core is not None
        session = stream.session
        now = self._loop.time()
        core.accept_stream(stream, session.peer_id.raw, session.remote_address[0], now)
        self._streams[stream] = stream
        core.receive(stream, first, now)
        self._pump()
        await self._feed(stream, stream)

    async def _feed(self, handle: Hashable, stream: Stream) -> None:
        """Frames of one relay stream into the core, until it ends."""
        core = self.core
        assert core is not None
        code = 0
        try:
            async for frame in stream:
                core.receive(handle, frame, self._loop.time())
                self._pump()
        except StreamClosed as exc:
            code = exc.code
        finally:
            self._streams.pop(handle, None)
            core.stream_closed(handle, code, self._loop.time())
            self._pump()

    def _pump(self) -> None:
        """Carry out the core's actions, note its events, re-arm its timer."""
        core = self.core
        assert core is not None
        now = self._loop.time()
        while actions := core.actions(now):
            for action in actions:
                if isinstance(action, Send):
                    self._send(action)
                elif isinstance(action, Open):
                    self._open(action, now)
                elif isinstance(action, Close):
                    stream = self._streams.pop(action.stream, None)
                    if stream is not None:
                        if action.code:
                            stream.reset(action.code)
                        else:
                            stream.finish()
        while (event := core.next_event()) is not None:
            self.events.append(event)
            log.debug("relay: %r", event)
        at = core.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if at is None else self._loop.call_at(at, self._on_timer)
            self._timer_at = at

    def _send(self, action: Send) -> None:
        stream = self._streams.get(action.stream)
        if stream is None:
            return
        if stream.unacked > BACKLOG:
            self.stats["dropped_backlog"] += 1  # a packet: end to end QUIC resends it
            return
        with contextlib.suppress(StreamClosed):
            stream.send_nowait(action.data)

    def _open(self, action: Open, now: float) -> None:
        core = self.core
        assert core is not None
        session = self.node.session_with(action.peer)
        try:
            if session is None:
                raise SessionClosed(ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, "", by_peer=False)
            stream = session.open_stream_nowait(RELAY_PROTOCOL)
            stream.send_nowait(action.data)
        except (SessionClosed, StreamClosed, StarlingError):
            core.stream_closed(action.stream, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, now)
            return
        self._streams[action.stream] = stream
        self._spawn(self._feed(action.stream, stream))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None:
            self.core.handle_timer(self._loop.time())
            self._pump()

    def _on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, SessionDown):
            if self.core is not None:
                self.core.session_closed(event.session.peer_id.raw, self._loop.time())
                self._pump()
            held = event.session.keys is not None and self.reservations.pop(
                event.session.peer_id.raw, None
            )
            if held:
                self.on_change()

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
