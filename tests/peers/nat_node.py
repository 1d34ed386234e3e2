"""A Starling node for the NAT lab (tests/test_nat_lab.py, bench/nat.py), one per namespace.

``python -m tests.peers.nat_node '<json>'`` with ``{"seed": hex, "host": ip, "port": n}``
and, for a relay, ``"relay": true`` (``"limits": {...}``: ``RelayConfig`` fields); for a
peer, ``"via": [ip, port, relay peer ID hex]``. A relay serves relaying and the DHT; a
peer bootstraps the DHT through the relay (its PONGs report the peer's public address:
punch candidates), reserves a slot there and prints its peer record (or, when the relay
refuses, ``{"refused": code name}``). Then one JSON command per stdin line, one JSON
answer each:

* ``{"op": "dial", "peer": hex, "record": hex}``: connect by peer ID through the record,
  then send ``size`` bytes on a sink stream (slowly, so the upgrade happens meanwhile),
  and answer with the hash, the path history and the final path;
* ``{"op": "open", "peer": hex, "record": hex}``: connect, time the first echoed byte
  and the round trip over the first path, then keep a sink stream flowing (``chunk``
  bytes every ``pause`` seconds) until ``finish``;
* ``{"op": "wait", "until": "direct" | "relay" | "settled" | "moved", "timeout": s}``:
  until the session's path is that kind ("settled": direct, or a punch gave up;
  "moved": the path changed, to the relay or to the peer's new address), then the round
  trip on the path it is on;
* ``{"op": "finish"}``: close the flowing stream; the hash check, history and stats;
* ``{"op": "state"}``: the path of every session.

Times in answers are milliseconds since the ``open`` or ``dial`` command arrived.

With ``"hosted": true`` the process runs a ``node/host.py`` Host instead, which finds
out its reachability and relays by itself from a seed's bootstrap string (``host_main``
lists its arguments and commands); ``lab.matrix.HostedMatrix`` drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import sys
import time
from typing import Any

from starling.node.dht import start_dht
from starling.node.dial import attach_dht, connect_peer
from starling.node.host import Host, HostConfig
from starling.node.path import SessionPath
from starling.node.relay import RelayService
from starling.node.session import Node, NodeConfig, Session, Stream
from starling.proto.dht import Record
from starling.proto.errors import NatError
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.nat import (
    PathConfig,
    ReachabilityConfig,
    RelayConfig,
    Status,
    make_peer_record,
    relays_of,
)

SINK = "starling/sink/1"
ECHO = "starling/echo/1"


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


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def round_trip_ms(session: Session, count: int = 5, kind: str | None = None) -> float | None:
    """The median time of ``count`` one-frame echoes on a fresh stream; with ``kind``,
    only echoes that began and ended on that kind of path count (the session may move
    from the relay to a punched path meanwhile), None when none did."""
    loop = asyncio.get_running_loop()
    stream = await session.open_stream(ECHO)
    times = []
    for i in range(count):
        before = session.path.kind
        started = loop.time()
        await stream.send(bytes([i]) * 32)
        await asyncio.wait_for(stream.recv(), 10)
        if kind is None or before == session.path.kind == kind:
            times.append((loop.time() - started) * 1000)
    await stream.close()
    return round(statistics.median(times), 3) if times else None


class Flow:
    """One dialled session and the sink stream that keeps flowing over it."""

    def __init__(self, session: Session, stream: Stream, started: float) -> None:
        self.session = session
        self.stream = stream
        self.started = started
        self.digest = hashlib.sha256()
        self.sent = 0
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    async def pump(self, chunk: int, pause: float) -> None:
        # Stopped by a flag, not cancelled: a cancelled send might leave the hash unsure.
        i = 0
        while not self.stopping:
            data = (i % 256).to_bytes(1, "big") * chunk
            await self.stream.send(data)
            self.digest.update(data)
            self.sent += len(data)
            i += 1
            await asyncio.sleep(pause)

    def ms(self, t: float) -> float:
        return round((t - self.started) * 1000, 1)

    def report(self) -> dict[str, Any]:
        path = self.session.path
        return {
            "path": path.kind,
            "history": [(self.ms(t), kind, str(where)) for t, kind, where in path.history],
            "stats": dict(path.stats),
        }


async def host_main(args: dict[str, Any]) -> None:
    """``"hosted": true``: a ``Host`` that decides by itself (node/host.py). Arguments:
    ``seed``, ``host``, ``port``, ``seeds`` (bootstrap strings), ``public`` (true, false or
    absent: decided), ``prefix_bits`` (reporter prefix, 32 in the lab, whose public hosts
    share one /24), ``limits`` (RelayConfig). First line: peer ID and bootstrap string.
    Commands: ``{"op": "settle", "timeout": s}`` (until reachability is decided and a
    private host's record names a relay), ``{"op": "status"}``, and ``{"op": "connect",
    "peer": hex, "timeout": s}`` (by peer ID only; echo, then until settled)."""
    loop = asyncio.get_running_loop()
    bits = args.get("prefix_bits", 24)
    config = HostConfig(
        PrivateKey(bytes.fromhex(args["seed"])),
        host=args["host"],
        port=args["port"],
        seeds=args.get("seeds", []),
        public=args.get("public"),
        relay=RelayConfig(**args.get("limits", {})),
        reachability=ReachabilityConfig(reporter_prefix_v4=bits),
        check_interval=1.0,
        max_relays=args.get("max_relays", 2),
    )
    host = await Host.start(config)
    host.node.set_handler(ECHO, echo)
    host.node.set_handler(SINK, sink)
    say({"peer_id": host.peer_id.raw.hex(), "bootstrap": host.bootstrap_string()})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def settled() -> bool:
        if host.reachable is Status.UNKNOWN:
            return False
        return host.public or bool(host.record is not None and relays_of(host.record, 0))

    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "settle":
            deadline = loop.time() + cmd.get("timeout", 30.0)
            while not settled() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            verdict = host.verdict_at
            took = None if verdict is None else round((verdict - host.started_at) * 1000, 1)
            say({"settled": settled(), "verdict_ms": took, **host.status()})
        elif cmd["op"] == "status":
            say(host.status())
        elif cmd["op"] == "connect":
            say(await hosted_connect(host, PeerId(bytes.fromhex(cmd["peer"])), cmd))
    await host.close()


async def hosted_connect(host: Host, peer: PeerId, cmd: dict[str, Any]) -> dict[str, Any]:
    """Connect by peer ID only, time the first echoed byte, wait for the path to settle."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def ms(t: float) -> float:
        return round((t - started) * 1000, 1)

    answer: dict[str, Any] = {"ok": False, "reused": host.node.session_with(peer) is not None}
    try:
        s = await host.connect(peer, timeout=cmd.get("connect_timeout", 15.0))
        answer["first_path"] = s.path.kind
        probe = await s.open_stream(ECHO)
        await probe.send(b"\x01")
        await asyncio.wait_for(probe.recv(), 10)
        answer["time_to_first_byte_ms"] = ms(loop.time())
        await probe.close()
        kind = s.path.kind
        rtt = await round_trip_ms(s, kind=kind)
        if rtt is not None:
            answer[f"rtt_ms_{kind}"] = rtt
        deadline = loop.time() + cmd.get("timeout", 15.0)
        while not (s.path.kind == "direct" or s.path.stats["punch_failed"] > 0):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        kind = s.path.kind
        if f"rtt_ms_{kind}" not in answer:
            rtt = await round_trip_ms(s, kind=kind)
            if rtt is not None:
                answer[f"rtt_ms_{kind}"] = rtt
        stream = await s.open_stream(SINK)
        data = bytes(range(256)) * 64
        await stream.send(data)
        await stream.close()
        answer["ok"] = await asyncio.wait_for(stream.recv(), 10) == hashlib.sha256(data).digest()
        answer.update(
            path=s.path.kind,
            history=[(ms(t), k, str(w)) for t, k, w in s.path.history],
            stats=dict(s.path.stats),
        )
    except Exception as exc:
        answer["error"] = f"{type(exc).__name__}: {exc}"
    return answer


async def main() -> None:
    args = json.loads(sys.argv[1])
    if args.get("hosted"):
        await host_main(args)
        return
    config = NodeConfig(
        host=args["host"],
        port=args["port"],
        path=PathConfig(keepalive=args.get("keepalive", 2.0)),
        circuit_standby=args.get("standby", 30.0),
    )
    handlers = {SINK: sink, ECHO: echo}
    node = await Node.start(PrivateKey(bytes.fromhex(args["seed"])), config, handlers)
    limits = RelayConfig(**args.get("limits", {}))
    relay = RelayService(node, serve=bool(args.get("relay")), config=limits)
    loop = asyncio.get_running_loop()
    if args.get("relay"):
        await start_dht(node.identity, node.endpoint)
        say({"peer_id": node.peer_id.raw.hex(), "addr": node.addresses[0]})
    else:
        ip, port, rid = args["via"]
        dht = await start_dht(node.identity, node.endpoint, [(ip, port)])
        attach_dht(node, dht)
        session = await node.connect((ip, port), peer_id=PeerId(bytes.fromhex(rid)))
        info: dict[str, Any] = {"peer_id": node.peer_id.raw.hex()}
        try:
            await relay.reserve(session)
        except NatError as exc:  # e.g. over the relay's per-IP cap: the test wants the code
            info["refused"] = exc.code.name
        else:
            relay.keep_reserved((ip, port), PeerId(bytes.fromhex(rid)))
            record = make_peer_record(node.identity, 1, 3600, [], relay.relay_entries())
            info["record"] = record.envelope.hex()
        say({**info, "candidates": node.candidates()})
    flow: Flow | None = None
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "dial":
            started = time.monotonic()
            peer = PeerId(bytes.fromhex(cmd["peer"]))
            record = Record.parse(bytes.fromhex(cmd["record"]))
            s = await connect_peer(node, peer, record)
            stream = await s.open_stream(SINK)
            data = bytes(range(256)) * (cmd["size"] // 256)
            for i in range(0, len(data), 16384):
                await stream.send(data[i : i + 16384])
                await asyncio.sleep(cmd.get("pause", 0.01))
            await stream.close()
            reply = await stream.recv()
            ok = reply == hashlib.sha256(data).digest()
            await asyncio.sleep(cmd.get("settle", 0))  # e.g. until a punch has run its rounds
            history = [
                (round(t - loop.time() + time.monotonic() - started, 3), k, str(w))
                for t, k, w in s.path.history
            ]
            say({"ok": ok, "history": history, "path": s.path.kind, "stats": dict(s.path.stats)})
        elif cmd["op"] == "open":
            started = loop.time()
            peer = PeerId(bytes.fromhex(cmd["peer"]))
            s = await connect_peer(node, peer, Record.parse(bytes.fromhex(cmd["record"])))
            connected = loop.time()
            first_path = s.path.kind
            probe = await s.open_stream(ECHO)
            await probe.send(b"\x01")
            await asyncio.wait_for(probe.recv(), 10)
            first_byte = loop.time()
            await probe.close()
            # The first path's round trip: only echoes that stayed on it (a punch may move
            # the session meanwhile); else the first echo's own round trip, stream opening
            # included (a stream's first frame travels with its opening, no extra trip).
            rtt = await round_trip_ms(s, kind=first_path)
            if rtt is None:
                rtt = round((first_byte - connected) * 1000, 3)
            flow = Flow(s, await s.open_stream(SINK), started)
            flow.task = loop.create_task(flow.pump(cmd.get("chunk", 4096), cmd.get("pause", 0.02)))
            say(
                {
                    "connected_ms": flow.ms(connected),
                    "time_to_first_byte_ms": flow.ms(first_byte),
                    "first_path": first_path,
                    f"rtt_ms_{first_path}": rtt,
                    **flow.report(),
                }
            )
        elif cmd["op"] == "wait":
            assert flow is not None
            path = flow.session.path
            deadline = loop.time() + cmd.get("timeout", 15.0)

            until, moves = cmd["until"], len(path.history) + path.stats["rebinds"]

            def reached(path: SessionPath = path, until: str = until, moves: int = moves) -> bool:
                if until == "settled":  # direct, or the punch gave up
                    return path.kind == "direct" or path.stats["punch_failed"] > 0
                if until == "moved":  # to the relay, or to the peer's new address
                    return len(path.history) + path.stats["rebinds"] > moves
                return bool(path.kind == until)

            while not reached() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            answer = {"reached": reached(), **flow.report()}
            with contextlib.suppress(Exception):  # the path may be dying: no figure then
                kind = path.kind
                rtt = await round_trip_ms(flow.session, kind=kind)
                if rtt is not None:
                    answer[f"rtt_ms_{kind}"] = rtt
            say(answer)
        elif cmd["op"] == "finish":
            assert flow is not None and flow.task is not None
            flow.stopping = True
            await flow.task
            await flow.stream.close()
            reply = await asyncio.wait_for(flow.stream.recv(), 30)
            ok = reply == flow.digest.digest()
            say({"ok": ok, "bytes": flow.sent, **flow.report()})
            flow = None
        elif cmd["op"] == "state":
            say(
                [
                    {
                        "peer": s.peer_id.raw.hex(),
                        "path": s.path.kind,
                        "history": [(k, str(w)) for _, k, w in s.path.history],
                    }
                    for s in node.sessions
                ]
            )
    relay.close()
    await node.close()


if __name__ == "__main__":
    asyncio.run(main())
