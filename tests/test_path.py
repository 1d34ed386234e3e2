"""The path layer and relays on loopback (spec/04 sections 6 to 8), no root needed.

Three nodes on 127.0.0.1: a relay R, a target B that reserves a slot on R, and
a source A that reaches B through R. Sessions start on the relay, move to the
direct path once a punch validates it (trivial on loopback), and fall back to
the relay when the direct path is cut, without closing QUIC or its streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable

import pytest

from starling.node.dial import connect_peer
from starling.node.endpoint import Address
from starling.node.relay import RelayService
from starling.node.session import Node, NodeConfig, Session, Stream
from starling.proto.dht import Record
from starling.proto.errors import ErrorCode, NatError
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.nat import (
    CircuitClosed,
    PathConfig,
    RelayConfig,
    RelayEntry,
    make_peer_record,
)

SINK = "starling/sink/1"
ECHO = "starling/echo/1"
MARKER = b"plaintext the relay must never see "


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(b"path " + label.encode()).digest())


async def sink(stream: Stream) -> None:
    digest = hashlib.sha256()
    async for frame in stream:
        digest.update(frame)
    await stream.send(digest.digest())
    await stream.close()


async def echo(stream: Stream) -> None:
    async for frame in stream:
        await stream.send(frame)
    await stream.close()


_NODES: list[Node] = []
_SERVICES: list[RelayService] = []


async def start(
    label: str, config: NodeConfig | None = None, serve: RelayConfig | None = None
) -> tuple[Node, RelayService]:
    node = await Node.start(key(label), config, {SINK: sink, ECHO: echo})
    service = RelayService(node, serve=serve is not None, config=serve)
    _NODES.append(node)
    _SERVICES.append(service)
    return node, service


def run(body: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(body(), timeout)
        finally:
            while _SERVICES:
                _SERVICES.pop().close()
            while _NODES:
                await _NODES.pop().close()

    asyncio.run(main())


async def eventually(condition: Callable[[], object], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def send_and_hash(session: Session, data: bytes, pause: float = 0.0) -> bytes:
    """Send ``data`` on a sink stream (with ``pause`` between 64 KiB chunks); the hash back."""
    stream = await session.open_stream(SINK)
    for i in range(0, len(data), 64 * 1024):
        await stream.send(data[i : i + 64 * 1024])
        if pause:
            await asyncio.sleep(pause)
    await stream.close()
    reply = await asyncio.wait_for(stream.recv(), 30)
    assert reply is not None
    return reply


def cut(node: Node, other: Address) -> None:
    """Drop every datagram ``node`` sends to or receives from ``other`` (a test hook)."""
    endpoint = node.endpoint
    sendto, dispatch = endpoint.sendto, endpoint._dispatch

    def dropping_sendto(data: bytes, addr: Address) -> None:
        if addr == other:
            endpoint.stats["test_dropped"] += 1
            return
        sendto(data, addr)

    def dropping_dispatch(data: bytes, addr: Address) -> None:
        if addr == other:
            endpoint.stats["test_dropped"] += 1
            return
        dispatch(data, addr)

    endpoint.sendto = dropping_sendto  # type: ignore[method-assign]
    endpoint._dispatch = dropping_dispatch  # type: ignore[method-assign]


STAY_RELAYED = NodeConfig(punch=False)


def test_a_reaches_b_through_the_relay_which_forwards_only_opaque_packets() -> None:
    async def main() -> None:
        r, relay = await start("relay", serve=RelayConfig())
        b, b_relay = await start("b", STAY_RELAYED)
        a, a_relay = await start("a", STAY_RELAYED)
        frames: list[bytes] = []
        forward = relay._send

        def spy(action):  # type: ignore[no-untyped-def]
            frames.append(action.data)
            forward(action)

        relay._send = spy  # type: ignore[method-assign]

        granted = await b_relay.reserve(await b.connect(r.addresses[0], peer_id=r.peer_id))
        assert granted.voucher.peer == b.peer_id.raw and granted.relay == r.peer_id.raw
        assert relay.core is not None and relay.core.reservation(b.peer_id.raw) is not None

        to_relay = await a.connect(r.addresses[0], peer_id=r.peer_id)
        circuit = await a_relay.connect(to_relay, b.peer_id.raw)
        session = await a.connect_via(circuit, b.peer_id)
        assert session.peer_id == b.peer_id
        assert session.path.kind == "relay" and session.path.circuit is circuit

        data = (MARKER * 40000)[: 1 << 20]
        assert await send_and_hash(session, data) == hashlib.sha256(data).digest()

        # The relay forwarded the end-to-end packets but holds no session with them: its
        # sessions are with A and B, and what it forwarded never shows the plaintext.
        stats = relay.core.stats
        assert stats["forwarded_bytes"] > len(data)
        assert stats["circuits_opened"] == 1
        assert {s.peer_id for s in r.sessions} == {a.peer_id, b.peer_id}
        assert not any(MARKER[:16] in frame for frame in frames)
        assert session.path.stats["tx_direct"] == 0 and session.path.stats["rx_direct"] == 0
        served = b.session_with(a.peer_id)
        assert served is not None and served.path.kind == "relay"
        assert served.path.circuit is not None and served.path.circuit.accepted

    run(main)


def test_a_relay_over_its_limits_ends_with_its_code_and_serves_others() -> None:
    async def main() -> None:
        limits = RelayConfig(circuit_data=300_000, circuit_duration=3)
        r, relay = await start("relay", serve=limits)
        b, b_relay = await start("b", STAY_RELAYED)
        a, a_relay = await start("a", STAY_RELAYED)
        c, c_relay = await start("c", STAY_RELAYED)
        await b_relay.reserve(await b.connect(r.addresses[0], peer_id=r.peer_id))

        # No reservation: refused with its code, and the relay goes on.
        to_relay_c = await c.connect(r.addresses[0], peer_id=r.peer_id)
        with pytest.raises(NatError) as refused:
            await c_relay.connect(to_relay_c, a.peer_id.raw)
        assert refused.value.code is ErrorCode.NAT_RELAY_NO_RESERVATION

        # A circuit over its data limit ends with NAT_RELAY_DATA_LIMIT.
        to_relay_a = await a.connect(r.addresses[0], peer_id=r.peer_id)
        circuit = await a_relay.connect(to_relay_a, b.peer_id.raw)
        session = await a.connect_via(circuit, b.peer_id)
        stream = await session.open_stream(SINK)
        await stream.send(random.Random(1).randbytes(600_000))
        await eventually(lambda: not circuit.open)
        assert circuit.code == ErrorCode.NAT_RELAY_DATA_LIMIT
        assert relay.core is not None
        codes = [e.code for e in relay.events if isinstance(e, CircuitClosed)]
        assert codes == [ErrorCode.NAT_RELAY_DATA_LIMIT]

        # Another circuit to the same target still works, until its duration is over.
        circuit_c = await c_relay.connect(to_relay_c, b.peer_id.raw)
        session_c = await c.connect_via(circuit_c, b.peer_id)
        data = random.Random(2).randbytes(50_000)
        assert await send_and_hash(session_c, data) == hashlib.sha256(data).digest()
        await eventually(lambda: not circuit_c.open, timeout=10)
        assert circuit_c.code == ErrorCode.NAT_RELAY_DURATION_LIMIT
        assert relay.core.stats["circuits_closed_NAT_RELAY_DURATION_LIMIT"] == 1
        assert relay.core.reservation(b.peer_id.raw) is not None

    run(main)


def test_session_moves_to_direct_and_back_to_the_relay_while_a_stream_flows() -> None:
    async def main() -> None:
        fast = PathConfig(keepalive=0.3, probe_timeout=0.2, probe_timeout_max=0.3)
        config = NodeConfig(path=fast, circuit_standby=60.0)
        r, _ = await start("relay", serve=RelayConfig())
        b, b_relay = await start("b", config)
        a, _ = await start("a", config)
        granted = await b_relay.reserve(await b.connect(r.addresses[0], peer_id=r.peer_id))

        # B's peer record: no direct address, one relay with its voucher (spec/04, 9.1).
        entry = RelayEntry(r.peer_id.raw, r.addresses[0], granted.voucher.raw)
        record = make_peer_record(b.identity, 1, 3600, [], [entry])

        async def resolve(peer_id: PeerId) -> Record | None:
            return record if peer_id == b.peer_id else None

        a.resolver = resolve  # what attach_dht(a, dht) installs
        session = await a.connect(b.peer_id)
        assert await a.connect(b.peer_id) is session  # sessions are by peer ID
        assert session.path.history[0][1] == "relay"
        assert session.path.relays == [(r.peer_id.raw, r.addresses[0])]

        data = random.Random(3).randbytes(3 << 20)
        flow = asyncio.ensure_future(send_and_hash(session, data, pause=0.02))

        # B, the circuit's target, punches; on loopback the first round validates.
        await eventually(lambda: session.path.direct == b.addresses[0])
        served = b.session_with(a.peer_id)
        assert served is not None
        await eventually(lambda: served.path.direct == a.addresses[0])
        assert not flow.done()
        direct_rx = session.path.stats["rx_direct"]
        await eventually(lambda: session.path.stats["rx_direct"] > direct_rx)

        # Cut the direct path: 3 missed probes, then both fall back to the circuit.
        cut(a, b.addresses[0])
        cut(b, a.addresses[0])
        await eventually(lambda: session.path.direct is None and served.path.direct is None)
        assert session.path.circuit is not None and session.path.circuit.open
        relayed = session.path.stats["tx_relay"]
        assert await asyncio.wait_for(flow, 60) == hashlib.sha256(data).digest()
        assert session.path.stats["tx_relay"] > relayed
        assert [kind for _, kind, _ in session.path.history] == ["relay", "direct", "relay"]
        assert not session.closed and session is a.session_with(b.peer_id)

    run(main, timeout=90)


def test_without_a_standby_circuit_the_source_opens_a_new_one_when_direct_dies() -> None:
    async def main() -> None:
        fast = PathConfig(keepalive=0.3, probe_timeout=0.2, probe_timeout_max=0.3)
        config = NodeConfig(path=fast, circuit_standby=0.5)
        r, relay = await start("relay", serve=RelayConfig())
        b, b_relay = await start("b", config)
        a, _ = await start("a", config)
        granted = await b_relay.reserve(await b.connect(r.addresses[0], peer_id=r.peer_id))
        entry = RelayEntry(r.peer_id.raw, r.addresses[0], granted.voucher.raw)
        record = make_peer_record(b.identity, 1, 3600, [], [entry])
        session = await connect_peer(a, b.peer_id, record)
        await eventually(lambda: session.path.direct is not None)
        served = b.session_with(a.peer_id)
        assert served is not None

        # Direct both ways for a while: the standby circuit is closed.
        assert (
            await send_and_hash(session, b"x" * 100_000) == hashlib.sha256(b"x" * 100_000).digest()
        )
        await eventually(lambda: not session.path.circuits and not served.path.circuits)
        assert relay.core is not None
        await eventually(lambda: relay.core.circuits == 0)

        data = random.Random(4).randbytes(2 << 20)
        flow = asyncio.ensure_future(send_and_hash(session, data, pause=0.02))
        await asyncio.sleep(0.2)
        cut(a, b.addresses[0])
        cut(b, a.addresses[0])
        # A (the source) dials a new circuit through B's relay; B takes it up.
        await eventually(
            lambda: session.path.circuit is not None and served.path.circuit is not None
        )
        assert await asyncio.wait_for(flow, 60) == hashlib.sha256(data).digest()
        assert relay.core.stats["circuits_opened"] == 2
        assert not session.closed and not served.closed

    run(main, timeout=90)
