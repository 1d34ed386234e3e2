"""The DHT over real UDP sockets: 100 nodes on loopback, records, a warm restart."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

from starling.node.dht import DhtService
from starling.node.endpoint import Endpoint
from starling.proto.dht import KIND_PRESENCE, DhtConfig, Record, presence_key
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID

N = 100


def identity(i: int) -> PrivateKey:
    return PrivateKey(hashlib.sha256(b"loopback node %d" % i).digest())


async def start(i: int, state: Path) -> DhtService:
    # Each node has its own loopback address, as each host would have its own IP.
    endpoint = Endpoint(MAIN_NETWORK_ID)
    await endpoint.open(f"127.0.{1 + i // 200}.{1 + i % 200}", 0)
    return DhtService(identity(i), endpoint, DhtConfig(), state / f"node{i}")


def test_hundred_nodes_put_get_and_warm_restart(tmp_path: Path) -> None:
    async def main() -> None:
        rng = random.Random(5)
        nodes = [await start(i, tmp_path) for i in range(N)]
        addr = [n.endpoint.addresses[0] for n in nodes]
        try:
            # Join in waves, each node through two earlier ones.
            for wave in range(1, N, 10):
                await asyncio.gather(
                    *(
                        nodes[i].bootstrap([addr[j] for j in rng.sample(range(i), min(2, i))])
                        for i in range(wave, min(wave + 10, N))
                    )
                )
            sizes = sorted(len(n.core.table) for n in nodes)
            assert sizes[0] >= 10, sizes

            # Peer records: 20 nodes publish where they are; 20 others find them.
            publishers = rng.sample(range(N), 20)
            for i in publishers:
                record = Record.peer(identity(i), seq=1, ttl=3600, addresses=[addr[i]])
                done = await nodes[i].publish(record)
                assert done.stored >= 10, done
            for i in publishers:
                reader = nodes[rng.choice([j for j in range(N) if j != i])]
                found = await reader.get(identity(i).peer_id.raw)
                assert [r.addresses() for r in found] == [[addr[i]]]
                assert found[0].signer.peer_id == identity(i).peer_id

            # A newer sequence replaces the old one everywhere it is read.
            moved = Record.peer(
                identity(publishers[0]), seq=2, ttl=3600, addresses=[("127.9.9.9", 4)]
            )
            await nodes[publishers[0]].put(moved)
            found = await nodes[publishers[1]].get(identity(publishers[0]).peer_id.raw)
            assert [(r.seq, r.addresses()) for r in found] == [(2, [("127.9.9.9", 4)])]

            # Community presence: 12 members announce under one key; a newcomer finds them.
            community = hashlib.sha256(b"a community key").digest()
            key = presence_key(MAIN_NETWORK_ID, community)
            members = rng.sample(range(N), 12)
            for i in members:
                value = {1: [[bytes([127, 0, 1 + i // 200, 1 + i % 200]), addr[i][1]]]}
                await nodes[i].put(Record.make(identity(i), KIND_PRESENCE, key, 1, 3600, value))
            seen = {r.signer.peer_id for r in await nodes[0].get(key)}
            assert len(seen) >= 10
            assert seen <= {identity(i).peer_id for i in members}

            # Warm restart: ten nodes stop, then come back with no seeds but their saved table.
            restarted = rng.sample([i for i in range(N) if i not in publishers], 10)
            for i in restarted:
                nodes[i].close()
                nodes[i].endpoint.close()
                assert nodes[i].saved_contacts()
            for i in restarted:
                nodes[i] = await start(i, tmp_path)
                result = await nodes[i].bootstrap([])
                assert result.ok
                assert len(nodes[i].core.table) >= 10
                found = await nodes[i].get(identity(publishers[2]).peer_id.raw)
                assert found and found[0].signer.peer_id == identity(publishers[2]).peer_id
        finally:
            for n in nodes:
                n.close()
                n.endpoint.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_sessions_and_dht_share_one_socket() -> None:
    from starling.node.session import Node, Stream

    async def echo(stream: Stream) -> None:
        async for frame in stream:
            await stream.send(frame)
        await stream.close()

    async def main() -> None:
        a = await Node.start(identity(500), handlers={"starling/echo/1": echo})
        b = await Node.start(identity(501))
        dht_a = DhtService(a.identity, a.endpoint)
        dht_b = DhtService(b.identity, b.endpoint)
        try:
            joined = await dht_b.bootstrap([a.addresses[0]])
            assert joined.ok
            assert dht_b.core.table.get(a.peer_id.raw) is not None
            # The DHT told b where a is; a session goes to that very address and port.
            found = await dht_b.find_node(a.peer_id.raw)
            (node_id, addr), *_ = found.closest
            assert node_id == a.peer_id.raw
            session = await b.connect(addr, peer_id=a.peer_id)
            stream = await session.open_stream("starling/echo/1")
            await stream.send(b"one socket")
            assert await stream.recv() == b"one socket"
            assert a.endpoint.stats["rx_control"] > 0
            assert a.endpoint.stats["rx_quic"] > 0
            assert len(a.endpoint.addresses) == 1
        finally:
            dht_a.close()
            dht_b.close()
            await b.close()
            await a.close()

    asyncio.run(asyncio.wait_for(main(), 30))
