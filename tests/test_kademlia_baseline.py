"""The ``kademlia`` baseline harness (``bench/kademlia_sim.py``) and its virtual-time asyncio loop.

These tests exercise the real ``kademlia`` package (bmuller's, asyncio +
rpcudp), unmodified, on Starling's simulated network and virtual clock: the
package is installed on first use by ``ensure_kademlia()`` if it is missing.
Only that the harness runs and its figures are sane is asserted; the figures
themselves are the DHT benchmark's business.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.kademlia_sim import (  # noqa: E402
    VirtualLoopStalled,
    VirtualNetwork,
    VirtualTimeLoop,
    ensure_kademlia,
    run_kademlia_scenario,
)
from starling.node.sim import LatencyModel  # noqa: E402

FIGURES = [
    "success_rate",
    "recall",
    "rpcs_per_lookup",
    "hops_p50",
    "latency_ms_p50",
    "latency_ms_p95",
    "latency_ms_p99",
    "maintenance_msgs_per_node_min",
    "bytes_per_node",
]


@pytest.fixture(scope="module", autouse=True)
def _kademlia_installed() -> None:
    ensure_kademlia()


# --------------------------------------------------------------------------- the virtual loop


def test_virtual_loop_jumps_instead_of_sleeping() -> None:
    loop = VirtualTimeLoop()
    order: list[tuple[float, str]] = []

    async def main() -> float:
        loop.call_later(7200.0, lambda: order.append((loop.time(), "b")))
        loop.call_later(0.5, lambda: order.append((loop.time(), "a")))
        await asyncio.sleep(3600.0)
        order.append((loop.time(), "slept"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100.0), timeout=5.0)
        order.append((loop.time(), "timed out"))
        await asyncio.sleep(10_000.0)
        return loop.time()

    try:
        end = loop.run_until_complete(main())
    finally:
        loop.close()
    assert end == pytest.approx(13_605.0)
    assert order == [
        (0.5, "a"),
        (3600.0, "slept"),
        (3605.0, "timed out"),
        (7200.0, "b"),
    ]


def test_virtual_loop_reports_a_stall() -> None:
    loop = VirtualTimeLoop()

    async def forever() -> None:
        await loop.create_future()  # nobody will ever set it

    try:
        with pytest.raises(VirtualLoopStalled):
            loop.run_until_complete(forever())
    finally:
        loop.close()


def test_virtual_network_delivers_one_way_later_and_drops_to_the_dead() -> None:
    loop = VirtualTimeLoop()
    net = VirtualNetwork(loop, LatencyModel.constant(30.0), 0.0, seed=1)
    got: list[tuple[float, bytes, tuple[str, int]]] = []

    class Recorder(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
            got.append((loop.time(), data, addr))

    a, b, c = (net.allocate_address() for _ in range(3))

    async def main() -> None:
        ta = net.open(a, asyncio.DatagramProtocol())
        net.open(b, Recorder())
        net.open(c, Recorder())
        ta.sendto(b"hello", b)
        ta.sendto(b"to the dead", c)
        net.crash(c)
        await asyncio.sleep(1.0)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == [(pytest.approx(0.030), b"hello", a)]
    st = net.model.stats
    assert st[a].datagrams_sent == 2
    assert st[a].datagrams_dropped == 1
    assert st[b].bytes_received == 5


# --------------------------------------------------------------------------- the scenario


def _check(result: dict[str, object]) -> None:
    for name in FIGURES:
        assert name in result, name
    assert result["phases"]


def test_same_seed_same_figures() -> None:
    kw = {"n_lookups": 10, "idle_minutes": 1.0}
    r1 = run_kademlia_scenario(60, 5, 0.2, LatencyModel.realistic(5), 0.01, **kw)
    r2 = run_kademlia_scenario(60, 5, 0.2, LatencyModel.realistic(5), 0.01, **kw)
    for r in (r1, r2):
        r.pop("wall_s")
        for phase in r["phases"].values():
            phase.pop("wall_s")
    assert r1 == r2
    assert r1["totals"]["datagrams_lost"] > 0


# The real package at N=1,000 on the simulator: about 10 s of wall time per run
# (the joins dominate), so a few lookups each.
@pytest.mark.slow
def test_thousand_nodes_static() -> None:
    r = run_kademlia_scenario(1000, 1, 0.0, LatencyModel.realistic(1), 0.0, n_lookups=20)
    _check(r)
    assert r["live_nodes"] == 1000
    assert r["success_rate"] == 1.0
    assert r["recall"] > 0.9
    assert 0 < r["latency_ms_p50"] < 5000  # no timeouts in a static network
    assert r["rpcs_per_lookup"] >= 3
    assert r["maintenance_msgs_per_node_min"] >= 0
    assert r["bytes_per_node"] > 0
    assert r["totals"]["datagrams_dropped"] == 0


@pytest.mark.slow
def test_thousand_nodes_thirty_percent_dead() -> None:
    r = run_kademlia_scenario(1000, 1, 0.3, LatencyModel.realistic(1), 0.0, n_lookups=20)
    _check(r)
    assert r["live_nodes"] == 700
    assert r["totals"]["datagrams_dropped"] > 0
    # lock-step rounds wait out the 5 s request timeout whenever a round asks a dead node
    assert r["latency_ms_p50"] > 5000
    assert 0 < r["recall"] <= 1
