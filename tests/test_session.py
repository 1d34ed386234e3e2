"""Secure sessions over real UDP sockets on loopback: API, limits and hostile input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration

from starling.node.session import (
    SEND_HIGH_WATER,
    Node,
    NodeConfig,
    Session,
    SessionClosed,
    SessionDown,
    SessionEvent,
    SessionSuspect,
    SessionUp,
    Stream,
    StreamClosed,
    _QuicConnection,
)
from starling.proto.errors import ErrorCode
from starling.proto.identity import PrivateKey
from starling.proto.network import control_header, network_id
from starling.proto.session import MAX_FRAME_PLAINTEXT, Handshake, HandshakePayload, Role

ECHO = "starling/echo/1"
SINK = "starling/sink/1"


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(label.encode()).digest())


async def echo(stream: Stream) -> None:
    async for frame in stream:
        await stream.send(frame)
    await stream.close()


async def sink(stream: Stream) -> None:
    digest = hashlib.sha256()
    async for frame in stream:
        digest.update(frame)
    await stream.send(digest.digest())
    await stream.close()


_NODES: list[Node] = []


async def start(label: str, config: NodeConfig | None = None, handlers: dict | None = None) -> Node:  # type: ignore[type-arg]
    node = await Node.start(key(label), config, handlers)
    _NODES.append(node)
    return node


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    """Run a test body; every node it started is closed afterwards, pass or fail."""

    async def main() -> None:
        try:
            await asyncio.wait_for(coro_fn(), timeout)
        finally:
            while _NODES:
                await _NODES.pop().close()

    asyncio.run(main())


async def two_nodes(
    server_config: NodeConfig | None = None, client_config: NodeConfig | None = None
) -> tuple[Node, Node]:
    server = await start("server", server_config, {ECHO: echo, SINK: sink})
    client = await start("client", client_config)
    return server, client


async def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` (generous: CI may be slow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def roundtrip(session: Session, payload: bytes = b"ping") -> bytes | None:
    stream = await session.open_stream(ECHO)
    await stream.send(payload)
    reply = await stream.recv()
    await stream.close()
    assert await stream.recv() is None
    return reply


# ----------------------------------------------------------------------------- the API


def test_connect_authenticates_and_echoes() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        seen: asyncio.Queue[SessionEvent] = asyncio.Queue()
        server.add_listener(seen.put_nowait)
        session = await client.connect(server.addresses[0], peer_id=server.peer_id)
        assert session.peer_id == server.peer_id
        assert ECHO in session.peer_protocols
        assert await roundtrip(session) == b"ping"
        up = seen.get_nowait()
        assert isinstance(up, SessionUp)
        assert up.session.peer_id == client.peer_id
        # The QUIC layer offered X25519 only.
        assert session._quic.tls._supported_groups == [0x001D]
        await client.close()
        down = await asyncio.wait_for(seen.get(), 5)
        assert isinstance(down, SessionDown)
        assert down.code == ErrorCode.SESSION_SHUTDOWN
        assert down.by_peer
        await server.close()

    run(main)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_handshake_packets_carry_their_acks() -> None:
    """A session comes up in 3 client datagrams and 2 server datagrams (then 1 ACK).

    Client: Initial; Handshake finished + msg1; msg3 (with the ACK of msg2's
    packet). Server: Initial + Handshake; msg2 (with the ACK of msg1's packet).
    With aioquic's 1 ms ACK delay each side sent one more, ACK-only, datagram.
    """

    async def main() -> None:
        server, client = await two_nodes()
        seen: asyncio.Queue[SessionEvent] = asyncio.Queue()
        server.add_listener(seen.put_nowait)
        session = await client.connect(server.addresses[0], peer_id=server.peer_id)
        assert isinstance(await asyncio.wait_for(seen.get(), 5), SessionUp)
        await asyncio.sleep(0.05)  # past any ACK timer
        assert client.endpoint.stats["tx"] == 3
        assert server.endpoint.stats["tx"] == 3  # the third: the delayed ACK of msg3
        # One spare connection ID each way, not seven (RFC 9000's minimum limit of 2).
        assert len(session._quic._peer_cid_available) == 1

    run(main)


def test_one_socket_per_address_family() -> None:
    if not _has_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback (::1); the IPv4 socket is tested elsewhere")

    async def main() -> None:
        # A wildcard host binds IPv4 and IPv6 on one port; traffic here stays on loopback.
        server = await start("dual", NodeConfig(host="0.0.0.0"), {ECHO: echo})
        families = sorted(":" in host for host, _ in server.addresses)
        assert families == [False, True]
        port = server.addresses[0][1]
        assert {p for _, p in server.addresses} == {port}
        v4 = await start("v4 client", NodeConfig(host="127.0.0.1"))
        v6 = await start("v6 client", NodeConfig(host="::1"))
        for client, host in ((v4, "127.0.0.1"), (v6, "::1")):
            session = await client.connect((host, port), peer_id=server.peer_id)
            assert session.remote_address[0] == host
            assert await roundtrip(session, host.encode()) == host.encode()

    run(main)


def test_unknown_protocol_is_refused_with_its_code() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        session = await client.connect(server.addresses[0])
        stream = await session.open_stream("starling/nope/1")
        await stream.send(b"hello?")
        with pytest.raises(StreamClosed) as info:
            await stream.recv()
        assert info.value.code == ErrorCode.SESSION_PROTOCOL_UNKNOWN
        assert await roundtrip(session) == b"ping"  # the session lives on
        await client.close()
        await server.close()

    run(main)


def test_expected_peer_mismatch_closes_with_code() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        down: list[SessionEvent] = []
        server.add_listener(down.append)
        with pytest.raises(SessionClosed) as info:
            await client.connect(server.addresses[0], peer_id=key("someone else").peer_id)
        assert info.value.code == ErrorCode.SESSION_PEER_MISMATCH
        await eventually(lambda: not server.sessions)
        await client.close()
        await server.close()

    run(main)


def test_other_network_cannot_connect() -> None:
    async def main() -> None:
        server, client = await two_nodes(
            client_config=NodeConfig(network_id=network_id("elsewhere"))
        )
        with pytest.raises(SessionClosed) as info:
            await client.connect(server.addresses[0])
        assert info.value.code == ErrorCode.SESSION_NOISE_AUTH
        await client.close()
        await server.close()

    run(main)


def test_close_reason_reaches_the_peer() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        events: asyncio.Queue[SessionEvent] = asyncio.Queue()
        server.add_listener(events.put_nowait)
        session = await client.connect(server.addresses[0])
        assert isinstance(await events.get(), SessionUp)
        await session.close(ErrorCode.SESSION_LIMIT, "too busy, try later")
        down = await events.get()
        assert isinstance(down, SessionDown)
        assert (down.code, down.reason, down.by_peer) == (
            ErrorCode.SESSION_LIMIT,
            "too busy, try later",
            True,
        )
        with pytest.raises(SessionClosed):
            await session.open_stream(ECHO)
        await client.close()
        await server.close()

    run(main)


def test_keepalive_holds_an_idle_session_and_idle_timeout_ends_a_dead_one() -> None:
    async def main() -> None:
        config = NodeConfig(idle_timeout=1.0, keepalive_interval=0.3)
        server, client = await two_nodes(config, config)
        session = await client.connect(server.addresses[0])
        await asyncio.sleep(2.5)  # 2.5 idle timeouts without application traffic
        assert not session.closed
        assert await roundtrip(session) == b"ping"
        # The server vanishes without a word: the client notices by idle timeout.
        server.endpoint.pause_reading()
        server._keepalive_task.cancel()  # type: ignore[union-attr]
        closed = await asyncio.wait_for(session.wait_closed(), 5)
        assert closed.code == ErrorCode.SESSION_IDLE_TIMEOUT
        assert not closed.by_peer
        await client.close()
        await server.close()

    run(main)


def test_a_session_whose_data_goes_unacknowledged_turns_suspect_and_back() -> None:
    """[SES-R22] A peer that stops answering makes the session suspect a few probe
    timeouts after the first unacknowledged send, long before the idle timeout ends
    it; the next acknowledgement clears it. The session stays up throughout."""

    async def main() -> None:
        server, client = await two_nodes()  # idle timeout 30 s
        session = await client.connect(server.addresses[0])
        seen: list[SessionSuspect] = []
        client.add_listener(lambda e: seen.append(e) if isinstance(e, SessionSuspect) else None)
        assert await roundtrip(session) == b"ping"
        assert not session.suspect
        stream = await session.open_stream(SINK)
        server.endpoint.pause_reading()  # the peer hears nothing: nothing is acknowledged
        stream.send_nowait(b"are you there?")
        await eventually(lambda: session.suspect, timeout=10.0)
        assert not session.closed
        assert seen == [SessionSuspect(session, True)]
        server.endpoint.resume_reading()  # it reads what waited, and acknowledges
        await eventually(lambda: not session.suspect, timeout=10.0)
        assert seen == [SessionSuspect(session, True), SessionSuspect(session, False)]
        assert await roundtrip(session) == b"ping"
        assert session.stats["suspected"] == 1 and session.stats["unsuspected"] == 1
        await client.close()
        await server.close()

    run(main)


def test_backpressure_sender_waits_for_a_stalled_peer() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        session = await client.connect(server.addresses[0])
        stream = await session.open_stream(SINK)
        data = random.Random(7).randbytes(16 * 1024 * 1024)
        server.endpoint.pause_reading()  # the peer stops reading: nothing is acknowledged

        async def writer() -> None:
            for i in range(0, len(data), MAX_FRAME_PLAINTEXT):
                await stream.send(data[i : i + MAX_FRAME_PLAINTEXT])
            await stream.close()

        task = asyncio.create_task(writer())
        await eventually(lambda: session._unacked(stream.stream_id) > SEND_HIGH_WATER)
        await asyncio.sleep(0.5)
        assert not task.done(), "the sender should be waiting"
        buffered = session._unacked(stream.stream_id)
        assert SEND_HIGH_WATER < buffered <= SEND_HIGH_WATER + 2 * (MAX_FRAME_PLAINTEXT + 18)
        server.endpoint.resume_reading()
        await asyncio.wait_for(task, 30)
        assert await stream.recv() == hashlib.sha256(data).digest()
        await client.close()
        await server.close()

    run(main)


def test_receive_windows_follow_what_the_application_reads() -> None:
    """A handler that does not read holds at most its window; reading reopens it.

    Eight streams of 2 MiB each against handlers that wait before reading: the
    receiver never holds more than the 1 MiB stream window per stream nor the
    4 MiB connection window in all; every sender waits. Then the handlers read,
    and every stream completes with its hash (window updates flow again, also
    when only the connection-wide window was exhausted).
    """
    gate = asyncio.Event()
    held: dict[int, Stream] = {}

    async def lazy_sink(stream: Stream) -> None:
        held[stream.stream_id] = stream
        await gate.wait()
        await sink(stream)

    async def main() -> None:
        server = await start("server", None, {SINK: lazy_sink})
        client = await start("client")
        config = NodeConfig()
        session = await client.connect(server.addresses[0])
        data = [random.Random(i).randbytes(2 * 1024 * 1024) for i in range(8)]

        async def writer(payload: bytes) -> bytes | None:
            stream = await session.open_stream(SINK)
            for i in range(0, len(payload), MAX_FRAME_PLAINTEXT):
                await stream.send(payload[i : i + MAX_FRAME_PLAINTEXT])
            await stream.close()
            return await stream.recv()

        tasks = [asyncio.create_task(writer(d)) for d in data]
        await eventually(lambda: len(held) == 8)
        server_session = server.sessions[0]
        received = server_session._quic._local_max_data  # bytes received, connection-wide
        slack = 2 * (MAX_FRAME_PLAINTEXT + 18)  # a frame in flight across the limit
        await eventually(lambda: received.used >= config.max_data - slack, 20)
        await asyncio.sleep(0.5)  # nothing more may arrive: the windows are closed
        assert received.used <= config.max_data
        assert not any(t.done() for t in tasks), "the senders should be waiting"
        assert server_session._held_total <= config.max_data
        for stream in held.values():
            assert stream._held <= config.max_stream_data
        gate.set()
        digests = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert digests == [hashlib.sha256(d).digest() for d in data]
        assert server_session._held_total == 0

    run(main)


def test_data_a_handler_leaves_unread_does_not_stall_the_session() -> None:
    """Streams whose handler returns without reading release their share of the
    session's window: 8 MiB sent to such handlers, then a normal stream completes."""

    async def ignore(stream: Stream) -> None:
        return

    async def main() -> None:
        server = await start("server", None, {SINK: sink, "starling/ignore/1": ignore})
        client = await start("client")
        session = await client.connect(server.addresses[0])

        async def send(protocol: str, payload: bytes) -> Stream:
            stream = await session.open_stream(protocol)
            for i in range(0, len(payload), MAX_FRAME_PLAINTEXT):
                await stream.send(payload[i : i + MAX_FRAME_PLAINTEXT])
            await stream.close()
            return stream

        junk = bytes(2 * 1024 * 1024)
        await asyncio.wait_for(
            asyncio.gather(*(send("starling/ignore/1", junk) for _ in range(4))), 30
        )
        data = random.Random(3).randbytes(1024 * 1024)
        stream = await asyncio.wait_for(send(SINK, data), 30)
        assert await asyncio.wait_for(stream.recv(), 30) == hashlib.sha256(data).digest()
        assert server.sessions[0]._held_total == 0

    run(main)


def test_two_processes_100_mb_over_8_parallel_streams() -> None:
    peer = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.sink_node"],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        info = json.loads(peer.stdout.readline())

        async def main() -> None:
            from starling.proto.identity import PeerId

            client = await start("bulk client")
            session = await client.connect(
                (info["host"], info["port"]), peer_id=PeerId.parse(info["peer_id"])
            )
            per_stream = 100 * 1000 * 1000 // 8

            async def one(index: int) -> bool:
                data = random.Random(index).randbytes(per_stream)
                stream = await session.open_stream(SINK)
                for i in range(0, len(data), MAX_FRAME_PLAINTEXT):
                    await stream.send(data[i : i + MAX_FRAME_PLAINTEXT])
                await stream.close()
                return await stream.recv() == hashlib.sha256(data).digest()

            results = await asyncio.gather(*(one(i) for i in range(8)))
            assert results == [True] * 8
            await client.close()

        run(main, timeout=240)
    finally:
        if peer.stdin:
            peer.stdin.close()
        peer.wait(timeout=30)
        if peer.stdout:
            peer.stdout.close()


# ----------------------------------------------------------------------------- hostile input


def test_garbage_datagrams_are_counted_and_dropped() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        session = await client.connect(server.addresses[0])
        rng = random.Random(1)
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind(("127.0.0.1", 0))
        target = server.addresses[0]
        shapes = [
            lambda: rng.randbytes(rng.randint(1, 1400)),
            lambda: bytes([0x40 | rng.randint(0, 0x3F)]) + rng.randbytes(40),  # QUIC-ish
            lambda: bytes([0xC0]) + rng.randbytes(1300),  # long header junk
            lambda: control_header(network_id("elsewhere")) + b"\xa0",
            lambda: b"\x0c\x09" + server.config.network_id + b"\xa0",  # unknown version
            lambda: b"\x0c",
            lambda: b"",
        ]
        for i in range(1400):
            junk.sendto(shapes[i % len(shapes)](), target)
            if i % 100 == 0:
                assert await roundtrip(session, b"still here %d" % i) == b"still here %d" % i
        stats = server.endpoint.stats
        await eventually(lambda: stats["dropped_short"] >= 400)  # b"" and b"\x0c", 200 each
        assert stats["dropped_other_network"] >= 200
        assert stats["dropped_other_version"] >= 200
        assert (
            server.stats["dropped_unknown_connection"] + server.stats["dropped_bad_quic_header"] > 0
        )
        assert len(server.sessions) == 1
        assert await roundtrip(session) == b"ping"
        junk.close()
        await client.close()
        await server.close()

    run(main)


async def evil_connect(client: Node, server: Node, handshake: Handshake) -> SessionClosed:
    """Connect with a tampered handshake object; return how the server closed on us."""
    original = Session.__init__

    def patched(self: Session, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        if self.role is Role.INITIATOR:  # the server in this process stays honest
            self._handshake = handshake

    Session.__init__ = patched  # type: ignore[method-assign]
    try:
        session = await client.connect(server.addresses[0], timeout=5)
    except SessionClosed as exc:
        return exc
    finally:
        Session.__init__ = original  # type: ignore[method-assign]
    # In XX the initiator finishes first (on sending msg3); the responder's verdict follows.
    return await asyncio.wait_for(session.wait_closed(), 5)


class _ScriptedHandshake(Handshake):
    """Sends a fixed script on stream 0 instead of a real handshake."""

    def __init__(self, script: bytes) -> None:
        super().__init__(Role.INITIATOR, key("evil"), b"\x01" * 32, b"\x02" * 32, b"\x00" * 4, ())
        self._script = script

    def start(self) -> bytes:
        return self._script


class _ForgedIdentity(Handshake):
    def _payload(self) -> bytes:
        genuine = HandshakePayload.decode(super()._payload())
        forged = HandshakePayload(key("victim").public_key.raw, genuine.signature, ())
        return forged.encode()


def _fresh_msg1() -> bytes:
    return Handshake(Role.INITIATOR, key("x"), b"\x03" * 32, b"\x04" * 32, b"\x00" * 4, ()).start()


@pytest.mark.parametrize(
    ("make_handshake", "code"),
    [
        (lambda net: _ScriptedHandshake(_fresh_msg1()[:20]), ErrorCode.SESSION_HANDSHAKE_TIMEOUT),
        (lambda net: _ScriptedHandshake(b"\x00\x05abcde"), ErrorCode.SESSION_HANDSHAKE_MALFORMED),
        (
            lambda net: _ScriptedHandshake(_fresh_msg1() + _fresh_msg1()),
            ErrorCode.SESSION_HANDSHAKE_MALFORMED,
        ),
        (
            lambda net: _ScriptedHandshake(b"\xff\xff" + b"\x00" * 300),
            ErrorCode.SESSION_FRAME_TOO_LARGE,
        ),
        (
            lambda net: _ForgedIdentity(
                Role.INITIATOR, key("mallory"), b"\x05" * 32, b"\x06" * 32, net, ()
            ),
            ErrorCode.SESSION_IDENTITY_INVALID,
        ),
    ],
    ids=["truncated", "garbage", "replayed-msg1", "oversized", "forged-identity"],
)
def test_hostile_handshakes_are_closed_with_their_code(
    make_handshake: Callable[[bytes], Handshake], code: ErrorCode
) -> None:
    async def main() -> None:
        config = NodeConfig(handshake_timeout=1.0)
        server, client = await two_nodes(config, NodeConfig(handshake_timeout=3.0))
        healthy = await client.connect(server.addresses[0])
        server_events: list[SessionEvent] = []
        server.add_listener(server_events.append)
        closed = await evil_connect(client, server, make_handshake(config.network_id))
        assert closed.code == code, closed
        if code != ErrorCode.SESSION_HANDSHAKE_TIMEOUT:
            assert closed.by_peer
        await eventually(lambda: not server._half_open)
        assert [s.peer_id for s in server.sessions] == [client.peer_id]
        assert await roundtrip(healthy) == b"ping"
        await client.close()
        await server.close()

    run(main)


def test_application_data_before_the_handshake_closes_the_session() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        original_send = _QuicConnection.send_stream_data

        def send_and_rush(
            self: _QuicConnection, stream_id: int, data: bytes, end_stream: bool = False
        ) -> None:
            original_send(self, stream_id, data, end_stream)
            if self._is_client and stream_id == 0 and not getattr(self, "rushed", False):
                self.rushed = True  # type: ignore[attr-defined]
                # Application data on stream 4 before any handshake message.
                original_send(self, 4, b"\x00\x10" + b"early bird data!")

        _QuicConnection.send_stream_data = send_and_rush  # type: ignore[method-assign]
        try:
            # No msg1 at all: the server is still waiting for the first handshake message
            # when application data arrives.
            closed = await evil_connect(client, server, _ScriptedHandshake(b""))
        finally:
            _QuicConnection.send_stream_data = original_send  # type: ignore[method-assign]
        assert closed.code == ErrorCode.SESSION_NOT_READY
        assert closed.by_peer

    run(main)


def test_stream_data_that_overtakes_a_lost_msg3_is_held_not_fatal() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        real_sendto = client.endpoint.sendto
        state = {"armed": False, "dropped": 0}

        def lossy(data: bytes, addr: tuple[str, int]) -> None:
            if state["armed"] and not state["dropped"]:
                state["dropped"] += 1  # the next datagram out carries msg3: lose it
                return
            real_sendto(data, addr)

        client.endpoint.sendto = lossy  # type: ignore[method-assign]
        original = Session._on_handshake_data

        def arm(self: Session, data: bytes, end: bool) -> None:
            original(self, data, end)
            if self.role is Role.INITIATOR and self.keys is not None:
                state["armed"] = True

        Session._on_handshake_data = arm  # type: ignore[method-assign]
        try:
            session = await client.connect(server.addresses[0], peer_id=server.peer_id)
        finally:
            Session._on_handshake_data = original  # type: ignore[method-assign]
        assert state["dropped"] == 1
        assert await roundtrip(session, b"after a lost msg3") == b"after a lost msg3"
        assert not session.closed

    run(main)


def test_oversized_frame_on_a_stream_closes_the_session() -> None:
    async def main() -> None:
        server, client = await two_nodes()
        server.set_handler("starling/small/1", echo, max_frame=1024)
        session = await client.connect(server.addresses[0])
        stream = await session.open_stream("starling/small/1")
        await stream.send(b"x" * 100)
        assert await stream.recv() == b"x" * 100
        await stream.send(b"y" * 5000)  # frame of 5016 bytes > 1024
        closed = await asyncio.wait_for(session.wait_closed(), 5)
        assert closed.code == ErrorCode.SESSION_FRAME_TOO_LARGE
        assert closed.by_peer
        await client.close()
        await server.close()

    run(main)


def test_a_thousand_half_open_handshakes_from_one_address() -> None:
    async def main() -> None:
        server, client = await two_nodes(NodeConfig(handshake_timeout=3.0))
        healthy = await client.connect(server.addresses[0])
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.2", 0))
        target = server.addresses[0]
        loop = asyncio.get_running_loop()
        # Real QUIC Initials (with real ClientHellos), made first so the flood is one burst.
        initials = []
        for _ in range(1000):
            quic = _QuicConnection(
                configuration=QuicConfiguration(is_client=True, alpn_protocols=["starling/1"])
            )
            quic.connect(target, now=loop.time())
            initials += [data for data, _ in quic.datagrams_to_send(now=loop.time())]
        assert len(initials) == 1000
        for i, data in enumerate(initials):
            attacker.sendto(data, target)
            if i % 20 == 0:
                await asyncio.sleep(0)  # let the server read before the kernel buffer fills
        limit = server.config.max_half_open_per_ip
        await eventually(lambda: server._half_open["127.0.0.2"] == limit)
        # Every Initial is either one of the `limit` half-open sessions or refused.
        await eventually(lambda: server.stats["refused_half_open_limit"] == 1000 - limit)
        assert server._half_open["127.0.0.2"] == limit
        # Someone else still gets in, and the existing session still works.
        other = await start("other")
        assert await roundtrip(await other.connect(target)) == b"ping"
        assert await roundtrip(healthy) == b"ping"
        # The half-open ones time out and are freed, closing period included.
        await eventually(lambda: "127.0.0.2" not in server._half_open, timeout=20)
        await eventually(lambda: len(server._sessions) == 2, timeout=20)
        attacker.close()
        await other.close()
        await client.close()
        await server.close()

    run(main)
