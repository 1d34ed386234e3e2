"""A Starling node for the NAT lab (tests/test_nat_lab.py), one per namespace.

``python -m tests.peers.nat_node '<json>'`` with ``{"seed": hex, "host": ip, "port": n}``
and, for a relay, ``"relay": true``; for a peer, ``"via": [ip, port, relay peer ID hex]``.
A relay serves relaying and the DHT; a peer bootstraps the DHT through the relay (its
PONGs report the peer's public address: punch candidates), reserves a slot there and
prints its peer record. Then one JSON command per stdin line, one JSON answer each:

* ``{"op": "dial", "peer": hex, "record": hex}``: connect by peer ID through the record,
  then send ``size`` bytes on a sink stream (slowly, so the upgrade happens meanwhile),
  and answer with the hash, the path history and the final path;
* ``{"op": "state"}``: the path of every session.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time

from starling.node.dht import start_dht
from starling.node.dial import attach_dht, connect_peer
from starling.node.relay import RelayService
from starling.node.session import Node, NodeConfig, Stream
from starling.proto.dht import Record
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.nat import PathConfig, RelayConfig, make_peer_record

SINK = "starling/sink/1"


async def sink(stream: Stream) -> None:
    digest = hashlib.sha256()
    async for frame in stream:
        digest.update(frame)
    await stream.send(digest.digest())
    await stream.close()


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def main() -> None:
    args = json.loads(sys.argv[1])
    config = NodeConfig(
        host=args["host"],
        port=args["port"],
        path=PathConfig(keepalive=2.0),
        circuit_standby=args.get("standby", 30.0),
    )
    node = await Node.start(PrivateKey(bytes.fromhex(args["seed"])), config, {SINK: sink})
    relay = RelayService(node, serve=bool(args.get("relay")), config=RelayConfig())
    loop = asyncio.get_running_loop()
    if args.get("relay"):
        await start_dht(node.identity, node.endpoint)
        say({"peer_id": node.peer_id.raw.hex(), "addr": node.addresses[0]})
    else:
        ip, port, rid = args["via"]
        dht = await start_dht(node.identity, node.endpoint, [(ip, port)])
        attach_dht(node, dht)
        session = await node.connect((ip, port), peer_id=PeerId(bytes.fromhex(rid)))
        await relay.reserve(session)
        relay.keep_reserved((ip, port), PeerId(bytes.fromhex(rid)))
        record = make_peer_record(node.identity, 1, 3600, [], relay.relay_entries())
        say(
            {
                "peer_id": node.peer_id.raw.hex(),
                "record": record.envelope.hex(),
                "candidates": node.candidates(),
            }
        )
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
