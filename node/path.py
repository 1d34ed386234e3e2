"""The path layer (spec/04 section 8): where each packet of a session goes.

Theory of operation
-------------------
A session is named by its peer's ID, never by an address. Its QUIC connection
sees one synthetic peer address (``synthetic``, in the discard-only prefix
100::/64 of RFC 6666) for its whole life, so aioquic never sees a path change
and never migrates [NAT-R50]. Below QUIC, ``SessionPath`` decides packet by
packet where each datagram goes:

* to ``direct``, the validated direct address, when there is one: the address
  the handshake crossed for a session dialled directly, or one a PATH_PONG
  validated (``proto.nat.PathProbes``);
* else as a frame on the newest open relay circuit (``node/relay.py``).

Whatever arrives, directly from any source address or through any circuit,
goes to the QUIC connection with the synthetic address; only a validated
probe changes where we send (make before break) [NAT-R51].

Once the handshake completes, the session's ``PathProbes`` exist: they keep
the direct path alive with PATH_PINGs below the NAT mapping lifetime and
report ``PathLost`` after 3 unanswered ones [NAT-R52]; packets then go to the
circuit again, or to a new circuit the source opens through the target's
relays [NAT-R53]. An authenticated PATH_PING from an address that is not where
we send (the peer's NAT rebound after a conntrack flush or timeout, or we fell
back to the relay while the peer still sends directly) draws one PING there;
its PONG makes that address the direct path, so neither a relay's session nor a
peer's follows a dead mapping until QUIC's idle timeout. A session that came up
through a circuit punches: its
target (the side that accepted INCOMING) opens ``starling/punch/1`` and runs
the ``Puncher`` as initiator [NAT-R40]; the source answers. Once direct, the
circuit stays open as a standby for at least ``circuit_standby`` seconds (30)
and until the peer, too, sends directly [NAT-R51].

All decisions are the sans-IO cores'; this module moves bytes and re-arms one
timer per session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING

from starling.proto.errors import ErrorCode, SessionError
from starling.proto.nat import (
    FRAME_LIMITS,
    PUNCH_PROTOCOL,
    PathLost,
    PathProbes,
    PathValidated,
    Puncher,
    PunchFailed,
    PunchSucceeded,
)

from .endpoint import Address

if TYPE_CHECKING:
    from .relay import Circuit
    from .session import Session, Stream

log = logging.getLogger("starling.path")

__all__ = ["PUNCH_FRAME_LIMIT", "SessionPath", "serve_punch"]

PUNCH_FRAME_LIMIT = FRAME_LIMITS[PUNCH_PROTOCOL]
PUNCH_RETRY_FIRST = 60.0  # 8.6: after a failed punch, then doubling ...
PUNCH_RETRY_MAX = 900.0  # ... up to 15 minutes
RENEW_SHARE = 0.9  # 8.5: a new circuit once 90 % of a limit is used [NAT-R54] ...
RENEW_GRACE = 2.0  # ... and the old one closed this long after the new one carries packets
_synthetic_ids = itertools.count(1)


class SessionPath:
    """One session's paths: its direct address (via ``PathProbes``) and its circuits."""

    def __init__(self, session: Session, direct: Address | None, circuit: Circuit | None) -> None:
        self.session = session
        self.node = session.node
        self._loop = asyncio.get_running_loop()
        self.synthetic: Address = (f"100::{next(_synthetic_ids):x}", 9)
        self._initial = direct  # where the handshake goes, until the probes exist
        self.circuits: list[Circuit] = []
        self.probes: PathProbes | None = None
        # The side that accepted a circuit's INCOMING starts the punches [NAT-R40].
        self.punch_initiator = circuit is not None and circuit.accepted
        # The target's relays (relay ID, address), for the source to open a new circuit.
        self.relays: list[tuple[bytes, Address]] = []
        self.stats: Counter[str] = Counter()
        self.history: list[tuple[float, str, object]] = []  # (time, "direct"/"relay", where)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._punch_stream: Stream | None = None
        self._punch_retry = PUNCH_RETRY_FIRST
        self._punch_handle: asyncio.TimerHandle | None = None
        self._standby_handle: asyncio.TimerHandle | None = None
        self._direct_since: float | None = None
        self._last_rx_direct = float("-inf")
        self._last_rx_relay = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting = False
        self._rebind: tuple[Address, float, bytes] | None = None  # (address, sent, nonce)
        self._closed = False
        if circuit is not None:
            self.attach(circuit)

    def __repr__(self) -> str:
        return f"SessionPath(direct={self.direct}, circuits={len(self.circuits)})"

    # -- views ----------------------------------------------------------------------------

    @property
    def direct(self) -> Address | None:
        """Where QUIC packets go directly; None: through the circuit."""
        return self.probes.direct if self.probes is not None else self._initial

    @property
    def circuit(self) -> Circuit | None:
        """The newest open circuit: the one packets take when there is no direct path."""
        for circuit in reversed(self.circuits):
            if circuit.open:
                return circuit
        return None

    @property
    def kind(self) -> str:
        return "direct" if self.direct is not None else "relay"

    # -- packets --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """One QUIC datagram of the session, on exactly one path [NAT-R51]."""
        direct = self.direct
        if direct is not None:
            self.node._endpoint.sendto(data, direct)
            self.stats["tx_direct"] += 1
            return
        circuit = self.circuit
        if circuit is not None and circuit.send(data):
            self.stats["tx_relay"] += 1
            if not circuit.renewing and circuit.near_limits(self._loop.time(), RENEW_SHARE):
                self._renew(circuit)
            return
        self.stats["tx_no_path"] += 1  # QUIC's loss recovery resends once a path is back

    def received(self, addr: Address | None, circuit: Circuit | None) -> None:
        """A QUIC packet came, directly from ``addr`` or through ``circuit``. It never
        changes where we send [NAT-R50]; an unknown circuit of this session is kept."""
        now = self._loop.time()
        if circuit is None:
            self.stats["rx_direct"] += 1
            self._last_rx_direct = now
            return
        self.stats["rx_relay"] += 1
        self._last_rx_relay = now
        if circuit.session is None and circuit.open:
            self.attach(circuit)

    def attach(self, circuit: Circuit) -> None:
        """Use ``circuit`` for this session (a new one comes first)."""
        circuit.session = self.session
        if circuit not in self.circuits:
            self.circuits.append(circuit)
            self.stats["circuits"] += 1
            if self.direct is None:
                self._moved("relay", circuit.relay_address)

    def circuit_closed(self, circuit: Circuit, code: int) -> None:
        """``circuit`` ended; while the session has no direct path, the source opens a new
        one through the target's relays [NAT-R53] [NAT-R54]."""
        if circuit in self.circuits:
            self.circuits.remove(circuit)
        if self._closed or self.direct is not None or self.circuit is not None:
            return
        self._reconnect()

    # -- the session's lifecycle ----------------------------------------------------------

    def session_ready(self) -> None:
        """The Noise handshake completed: the probes start, and a relayed session punches."""
        session = self.session
        keys = session.keys
        assert keys is not None
        for circuit in self.circuits:
            if circuit.peer != keys.peer_id.raw:
                # The target accepted INCOMING from one peer; nobody else may use it.
                raise SessionError(
                    ErrorCode.SESSION_PEER_MISMATCH,
                    "the session over a circuit is not with the circuit's source",
                    "NAT-R37",
                )
        now = self._loop.time()
        config = self.node.config.path
        self.probes = PathProbes.for_session(
            keys, self.node.config.network_id, os.urandom, now, config
        )
        if self._initial is not None:
            self.probes.set_direct(self._initial, now)  # 8.2: the handshake crossed it
            self._direct_since = now
            self.history.append((now, "direct", self._initial))
        self.node._tags[self.probes.session_tag] = session
        if self.punch_initiator and self.probes.direct is None and self.node.config.punch:
            self._loop.call_soon(self._start_punch)
        self._drain()

    def close(self) -> None:
        """The session ended: timers, tasks and circuits go with it."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._punch_handle, self._standby_handle):
            if handle is not None:
                handle.cancel()
        for task in self._tasks:
            task.cancel()
        if self.probes is not None and self.node._tags.get(self.probes.session_tag) is (
            self.session
        ):
            del self.node._tags[self.probes.session_tag]
        for circuit in list(self.circuits):
            circuit.close()
        self.circuits.clear()

    # -- probes ---------------------------------------------------------------------------

    def probe_received(self, data: bytes, addr: Address) -> None:
        probes = self.probes
        if probes is None or self._closed:
            return
        now = self._loop.time()
        pongs = probes.stats["pongs_sent"]
        probes.receive(data, addr, now)
        if probes.stats["pongs_sent"] > pongs:  # an authenticated PING came from ``addr``
            self._peer_seen_at(addr, now)
        self._rebind_validated(addr, now)
        self._drain()

    def _peer_seen_at(self, addr: Address, now: float) -> None:
        """The peer sent an authenticated PING from ``addr``. When that is not where we send
        (its NAT rebound after a conntrack flush or a timeout, or we fell back to the relay
        while it still sends directly), PING ``addr`` once per probe timeout; its PONG makes
        it the direct path (make before break [NAT-R51]: QUIC keeps its synthetic address)."""
        probes = self.probes
        assert probes is not None
        if addr == probes.direct or (probes.punch is not None and not probes.punch.finished):
            return
        pending = self._rebind
        if pending is not None and pending[0] == addr and now - pending[1] < self._rebind_wait():
            return
        self._rebind = (addr, now, probes.probe(addr, now))
        self.stats["rebind_probes"] += 1

    def _rebind_validated(self, addr: Address, now: float) -> None:
        pending, probes = self._rebind, self.probes
        if pending is None or probes is None or pending[0] != addr:
            return
        if now - pending[1] > self._rebind_wait():
            self._rebind = None
            return
        # PathProbes keeps a PING's nonce until its PONG validates it (or it expires, 30 s);
        # with no direct path the core itself reports PathValidated.
        if pending[2] in probes._outstanding:
            return
        self._rebind = None
        if probes.direct is not None and probes.direct != addr:
            probes.set_direct(addr, now)
            self.stats["rebinds"] += 1
            self._direct_since = now
            self._moved("direct", addr)

    def _rebind_wait(self) -> float:
        return self.node.config.path.probe_timeout_max

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.probes is None or self._closed:
            return
        self.probes.handle_timer(self._loop.time())
        self._drain()

    def _drain(self) -> None:
        """Send what the probes want sent, act on their events, re-arm the timer."""
        probes = self.probes
        if probes is None or self._closed:
            return
        now = self._loop.time()
        for datagram, addr in probes.datagrams_to_send(now):
            self.node._endpoint.sendto(datagram, addr)
        punch, stream = probes.punch, self._punch_stream
        if punch is not None and stream is not None:
            for frame in punch.frames_to_send():
                try:
                    stream.send_nowait(frame)
                except Exception:  # the stream or session ended: the punch times out
                    self.stats["punch_frames_lost"] += 1
        while (event := probes.next_event()) is not None:
            if isinstance(event, PathValidated):
                self._on_validated(event, now)
            elif isinstance(event, PathLost):
                self._on_lost(event)
            elif isinstance(event, PunchSucceeded):
                self.stats["punch_succeeded"] += 1
                if stream is not None:
                    stream.finish()  # [NAT-R44]
                self._punch_retry = PUNCH_RETRY_FIRST
            elif isinstance(event, PunchFailed):
                self.stats["punch_failed"] += 1
                log.info("%r: punch failed: %s %s", self.session, event.code.name, event.reason)
                if stream is not None:
                    stream.reset(event.code)
                self._schedule_punch()
        at = probes.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if at is None else self._loop.call_at(at, self._on_timer)
            self._timer_at = at

    def _on_validated(self, event: PathValidated, now: float) -> None:
        self.node._observed(event.observed)
        self._direct_since = now
        self._moved("direct", event.address)
        self._arm_standby(self.node.config.circuit_standby)

    def _on_lost(self, event: PathLost) -> None:
        self.stats["paths_lost"] += 1
        self._direct_since = None
        circuit = self.circuit
        log.info("%r: direct path %s lost", self.session, event.address)
        if circuit is not None:
            self._moved("relay", circuit.relay_address)
        else:
            self._reconnect()
        self._schedule_punch()

    def _moved(self, kind: str, where: object) -> None:
        self.history.append((self._loop.time(), kind, where))
        self.stats[f"moved_{kind}"] += 1

    # -- the standby circuit --------------------------------------------------------------

    def _arm_standby(self, delay: float) -> None:
        if self._standby_handle is not None:
            self._standby_handle.cancel()
        self._standby_handle = self._loop.call_later(delay, self._standby_check)

    def _standby_check(self) -> None:
        """Close the circuits once direct for ``circuit_standby`` seconds and the peer, too,
        sends directly (nothing came through a circuit for a while) [NAT-R51]."""
        self._standby_handle = None
        if self._closed or self.direct is None or not self.circuits:
            return
        now = self._loop.time()
        quiet = max(1.0, 3 * self.node.config.path.probe_timeout)
        if now - self._last_rx_relay < quiet or now - self._last_rx_direct > quiet * 3:
            self._arm_standby(quiet)
            return
        for circuit in list(self.circuits):
            circuit.close()
        self.circuits.clear()
        self.stats["circuits_closed_standby"] += 1

    def _reconnect(self) -> None:
        """No path at all: the source dials a new circuit through the target's relays; the
        target keeps its reservations and waits for it [NAT-R53]."""
        relay = self.node.relay
        if self._reconnecting or relay is None or not self.relays or self.session.keys is None:
            return
        self._reconnecting = True
        peer = self.session.keys.peer_id.raw

        async def reconnect() -> None:
            try:
                circuit = await relay.open_circuit(self.relays, peer)
                if self._closed:
                    circuit.close()
                    return
                self.attach(circuit)
                self.session._transmit()
            except Exception as exc:  # no relay would take us: QUIC's idle timeout decides
                log.info("%r: no new circuit: %s", self.session, exc)
            finally:
                self._reconnecting = False

        self._spawn(reconnect())

    def _renew(self, old: Circuit) -> None:
        """``old`` nears its duration or data limit: the source opens a new circuit through
        the target's relays and moves to it before the relay ends the old one; the target
        has nothing to do but accept [NAT-R54]."""
        relay = self.node.relay
        old.renewing = True
        if old.accepted or relay is None or not self.relays or self.session.keys is None:
            return
        peer = self.session.keys.peer_id.raw

        async def renew() -> None:
            try:
                circuit = await relay.open_circuit(self.relays, peer)
            except Exception as exc:  # the relay ends the old one with its code: _reconnect
                log.info("%r: no circuit to renew %r: %s", self.session, old, exc)
                return
            if self._closed:
                circuit.close()
                return
            self.attach(circuit)  # the newest open circuit: packets take it from now on
            self.stats["circuits_renewed"] += 1
            self.session._transmit()
            # What is in flight on the old one arrives; it closes before its limit would.
            left = old.opened + old.duration - self._loop.time()
            await asyncio.sleep(max(0.0, min(RENEW_GRACE, left / 2)))
            old.close()

        self._spawn(renew())

    # -- punching -------------------------------------------------------------------------

    def _schedule_punch(self) -> None:
        """8.6: try again after 60 s, doubling up to 15 minutes (the target only)."""
        if not self.punch_initiator or self._closed or not self.node.config.punch:
            return
        if self._punch_handle is not None:
            self._punch_handle.cancel()
        self._punch_handle = self._loop.call_later(self._punch_retry, self._start_punch)
        self._punch_retry = min(PUNCH_RETRY_MAX, self._punch_retry * 2)

    def _start_punch(self) -> None:
        self._punch_handle = None
        probes = self.probes
        if self._closed or probes is None or probes.direct is not None or self.session.closed:
            return
        if probes.punch is not None and not probes.punch.finished:
            return
        try:
            stream = self.session.open_stream_nowait(PUNCH_PROTOCOL)
        except Exception as exc:
            log.info("%r: cannot open a punch stream: %s", self.session, exc)
            return
        self.stats["punch_attempts"] += 1
        self._punch_stream = stream
        punch = probes.start_punch(True, self.node.candidates(), self._loop.time())
        self._drain()
        self._spawn(self._read_punch(stream, punch))

    async def serve_punch(self, stream: Stream) -> None:
        """The responder's side: the peer (the circuit's target) opened the punch stream."""
        probes = self.probes
        if probes is None or self.punch_initiator:
            stream.reset(ErrorCode.NAT_UNEXPECTED_MESSAGE)  # [NAT-R40]
            return
        if probes.punch is not None and not probes.punch.finished:
            probes.punch.abort(self._loop.time())  # the initiator started afresh
            self._drain()
        self._punch_stream = stream
        punch = probes.start_punch(False, self.node.candidates(), self._loop.time())
        await self._read_punch(stream, punch)

    async def _read_punch(self, stream: Stream, punch: Puncher) -> None:
        from .session import StreamClosed

        try:
            async for frame in stream:
                punch.receive(frame, self._loop.time())
                self._drain()
            punch.stream_closed(self._loop.time())
        except StreamClosed:
            punch.stream_closed(self._loop.time())
        self._drain()

    def _spawn(self, coro: object) -> None:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve_punch(stream: Stream) -> None:
    """The ``starling/punch/1`` handler: hand the stream to its session's path."""
    await stream.session.path.serve_punch(stream)
