"""An eclipse attempt on the simulator: 20% of the nodes collude, answering only with
each other and never with records. Lookups over disjoint paths still find honest records."""

from __future__ import annotations

from typing import ClassVar

from starling.node.sim import LatencyModel, Simulator
from starling.proto import codec
from starling.proto.dht import DhtConfig, DhtNode, LookupDone, PutDone, Record
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID

N = 400
COLLUDERS = 80  # 20%


class Colluder(DhtNode):
    """Joins like anyone, then lies: names only fellow colluders, keeps no records."""

    ring: ClassVar[list[tuple[bytes, tuple[str, int]]]] = []

    def _node_list(self, target: bytes, exclude: bytes, budget: int) -> list[codec.Value]:
        t = int.from_bytes(target, "big")
        closest = sorted(self.ring, key=lambda e: int.from_bytes(e[0], "big") ^ t)
        out: list[codec.Value] = []
        for node_id, addr in closest[: self.config.k]:
            out.append([node_id, bytes(map(int, addr[0].split("."))), addr[1]])
        return out

    def store(self, record: Record) -> None:
        return  # acknowledged, and dropped

    def _live(self, key: bytes) -> list[tuple[Record, float]]:
        return []


def test_disjoint_lookups_find_honest_records_despite_colluders() -> None:
    sim = Simulator(7, LatencyModel.realistic(7, median_rtt_ms=80.0))
    rng = sim.child_rng("eclipse")
    bad = set(rng.sample(range(N), COLLUDERS))
    nodes: dict[int, tuple[tuple[str, int], DhtNode]] = {}
    Colluder.ring = []
    joined: list[tuple[str, int]] = []

    def join(i: int) -> None:
        addr = sim.allocate_address()
        node_rng = sim.child_rng("node", i)
        cls = Colluder if i in bad else DhtNode
        core = cls(
            PrivateKey(node_rng.randbytes(32)),
            MAIN_NETWORK_ID,
            node_rng.randbytes,
            sim.now,
            DhtConfig(),
        )
        sim.add(addr, core)
        nodes[i] = (addr, core)
        if i in bad:
            Colluder.ring.append((core.node_id, addr))
        core.bootstrap(rng.sample(joined, min(3, len(joined))), sim.now)
        sim.touch(addr)
        joined.append(addr)

    for i in range(N):
        sim.call_at(i * 0.05, join, i)
    sim.run_until(N * 0.05 + 60)

    honest = [i for i in range(N) if i not in bad]
    publishers = rng.sample(honest, 20)
    puts: dict[int, int] = {}

    def publish(i: int) -> None:
        addr, core = nodes[i]
        record = Record.peer(core.identity, seq=1, ttl=3600, addresses=[addr])
        puts[i] = core.put(record, sim.now, disjoint=3)
        sim.touch(addr)

    for n, i in enumerate(publishers):
        sim.call_at(sim.now + n * 0.1, publish, i)
    sim.run_until(sim.now + 30)
    for i in publishers:
        done = [e for e in drain(nodes[i][1]) if isinstance(e, PutDone)]
        assert done and done[0].stored >= 5

    results: dict[tuple[int, int], bytes] = {}

    def get(reader: int, publisher: int, disjoint: int) -> None:
        addr, core = nodes[reader]
        lookup_id = core.get(nodes[publisher][1].node_id, sim.now, disjoint=disjoint)
        results[(reader, lookup_id)] = nodes[publisher][1].node_id
        sim.touch(addr)

    def success_rate(disjoint: int) -> float:
        results.clear()
        start = sim.now
        for n in range(100):
            sim.call_at(start + n * 0.05, get, rng.choice(honest), rng.choice(publishers), disjoint)
        sim.run_until(start + 60)
        done: dict[tuple[int, int], LookupDone] = {}
        for reader in {reader for reader, _ in results}:
            for event in drain(nodes[reader][1]):
                if isinstance(event, LookupDone):
                    done[(reader, event.lookup_id)] = event
        assert set(done) >= set(results), "every lookup finishes"
        found = sum(
            any(r.signer_id == key for r in done[ident].records) for ident, key in results.items()
        )
        return found / len(results)

    assert success_rate(disjoint=3) >= 0.95


def drain(core: DhtNode) -> list[object]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out
