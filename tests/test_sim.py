"""The deterministic network simulator (``starling.node.sim``), driven by a trivial ping core.

``PingCore`` pings a few random peers every interval and answers pings; it is
sans-IO like every Starling core (its RNG is injected, it never reads a clock),
so these tests exercise exactly the interface real cores use.

Run this file as a script for the micro-benchmark (events per second):
``python tests/test_sim.py [n_nodes] [virtual_seconds]``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import statistics
import sys
import time

import pytest

from starling.node.sim import Address, LatencyModel, Simulator

PING = b"P"
PONG = b"Q"


class PingCore:
    """Every ``interval`` seconds, ping ``fanout`` random peers; answer pings; record RTTs."""

    def __init__(
        self,
        addr: Address,
        peers: list[Address],
        rng: random.Random,
        *,
        interval: float = 1.0,
        fanout: int = 3,
        start: float = 0.0,
        payload: int = 32,
    ) -> None:
        self.addr = addr
        self.peers = peers
        self.rng = rng
        self.interval = interval
        self.fanout = fanout
        self.padding = bytes(payload)
        self.outbox: list[tuple[bytes, Address]] = []
        self.pending: dict[bytes, float] = {}
        self.rtts: list[tuple[Address, float]] = []
        self.next_ping: float | None = start + rng.random() * interval
        self.nonce = 0
        self.timer_fires = 0
        self.received = 0

    # the Core interface

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received += 1
        kind, nonce = data[:1], data[1:9]
        if kind == PING:
            self.outbox.append((PONG + nonce + data[9:], addr))
        elif kind == PONG:
            sent = self.pending.pop(nonce, None)
            if sent is not None:
                self.rtts.append((addr, now - sent))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return self.next_ping

    def handle_timer(self, now: float) -> None:
        self.timer_fires += 1
        for _ in range(self.fanout):
            peer = self.rng.choice(self.peers)
            if peer != self.addr:
                self.ping(peer, now)
        self.next_ping = now + self.interval

    # an application action

    def ping(self, peer: Address, now: float) -> None:
        self.nonce += 1
        nonce = self.nonce.to_bytes(8, "big")
        self.pending[nonce] = now
        self.outbox.append((PING + nonce + self.padding, peer))


def build(
    n: int,
    seed: int,
    latency: LatencyModel,
    loss: float = 0.0,
    *,
    trace: bool = False,
    fanout: int = 3,
    interval: float = 1.0,
) -> tuple[Simulator, dict[Address, PingCore]]:
    sim = Simulator(seed, latency, loss, trace=trace)
    addrs = [sim.allocate_address() for _ in range(n)]
    cores = {}
    for a in addrs:
        core = PingCore(a, addrs, sim.child_rng("ping", a), fanout=fanout, interval=interval)
        cores[a] = core
        sim.add(a, core)
    return sim, cores


def digest(sim: Simulator, cores: dict[Address, PingCore]) -> str:
    h = hashlib.sha256()
    h.update(repr(sim.trace).encode())
    h.update(repr(sorted((a, s.as_dict()) for a, s in sim.stats.items())).encode())
    h.update(repr([(a, c.rtts) for a, c in cores.items()]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- determinism


def _scenario(seed: int) -> tuple[Simulator, dict[Address, PingCore]]:
    latency = LatencyModel.realistic(seed, jitter_ms=3.0)
    sim, cores = build(120, seed, latency, loss=0.05, trace=True)
    addrs = sim.addresses
    sim.call_at(2.5, sim.crash, addrs[7])
    victim = cores[addrs[3]]

    def app_ping() -> None:
        victim.ping(addrs[50], sim.now)
        sim.touch(addrs[3])

    sim.call_at(1.25, app_ping)
    sim.run_until(6.0)
    return sim, cores


def test_same_seed_same_run_byte_for_byte() -> None:
    sim1, cores1 = _scenario(11)
    sim2, cores2 = _scenario(11)
    assert sim1.trace == sim2.trace
    assert len(sim1.trace or []) > 1000
    assert sim1.stats == sim2.stats
    assert sim1.totals == sim2.totals
    assert digest(sim1, cores1) == digest(sim2, cores2)
    assert sim1.events_processed == sim2.events_processed


def test_different_seed_different_run() -> None:
    sim1, cores1 = _scenario(11)
    sim2, cores2 = _scenario(12)
    assert sim1.trace != sim2.trace
    assert digest(sim1, cores1) != digest(sim2, cores2)


# --------------------------------------------------------------------------- latency


def test_constant_latency_rtt_is_twice_one_way() -> None:
    sim, cores = build(30, 1, LatencyModel.constant(25.0))
    sim.run_until(5.0)
    rtts = [rtt for c in cores.values() for _, rtt in c.rtts]
    assert len(rtts) > 300
    assert all(rtt == pytest.approx(0.050, abs=1e-9) for rtt in rtts)


def test_delivery_happens_one_way_later() -> None:
    sim, _ = build(10, 2, LatencyModel.constant(40.0), trace=True)
    sim.run_until(3.0)
    assert sim.trace is not None
    sends = [e for e in sim.trace if e[1] == "send"]
    recvs = {(e[2], e[3], e[4]): e[0] for e in sim.trace if e[1] == "recv"}
    for t, _, src, dst, _size, delay in sends:
        assert delay == pytest.approx(0.040)
        if t + delay <= 3.0:
            # each datagram's bytes are unique (nonce), so the pair of events can be matched
            matching = [rt for (s, d, _data), rt in recvs.items() if s == src and d == dst]
            assert any(rt == pytest.approx(t + 0.040) for rt in matching)


def test_uniform_latency_is_stable_symmetric_and_in_range() -> None:
    model = LatencyModel.uniform(10.0, 50.0, seed=3)
    sim = Simulator(0, model)
    addrs = [sim.allocate_address() for _ in range(200)]
    rng = random.Random(5)
    delays = []
    for _ in range(2000):
        a, b = rng.sample(addrs, 2)
        d = model.one_way(a, b)
        assert d == model.one_way(b, a) == model.one_way(a, b)
        assert 0.010 <= d < 0.050
        delays.append(d)
    assert min(delays) < 0.012
    assert max(delays) > 0.048
    assert LatencyModel.uniform(10.0, 50.0, seed=4).one_way(addrs[0], addrs[1]) != model.one_way(
        addrs[0], addrs[1]
    )


def test_uniform_latency_rtt_in_simulation() -> None:
    model = LatencyModel.uniform(5.0, 120.0, seed=9)
    sim, cores = build(40, 9, model)
    sim.run_until(5.0)
    n = 0
    for a, core in cores.items():
        for peer, rtt in core.rtts:
            assert rtt == pytest.approx(2 * model.one_way(a, peer), abs=1e-9)
            n += 1
    assert n > 400


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_realistic_median_rtt_is_about_80ms(seed: int) -> None:
    model = LatencyModel.realistic(seed)
    sim = Simulator(seed, model)
    addrs = [sim.allocate_address() for _ in range(20_000)]
    random.Random(seed).shuffle(addrs)
    rtts_ms = [model.rtt(addrs[2 * i], addrs[2 * i + 1]) * 1e3 for i in range(10_000)]
    assert 70.0 <= statistics.median(rtts_ms) <= 90.0
    # a realistic spread: nearby pairs well under the median, intercontinental ones well over
    q = statistics.quantiles(rtts_ms, n=20)
    assert q[0] < 40.0
    assert q[-1] > 120.0
    assert len({model.region(a) for a in addrs[:1000]}) == len(model.region_names)


def test_realistic_median_follows_the_parameter() -> None:
    model = LatencyModel.realistic(4, median_rtt_ms=150.0)
    sim = Simulator(4, model)
    addrs = [sim.allocate_address() for _ in range(4000)]
    rtts = [model.rtt(addrs[2 * i], addrs[2 * i + 1]) * 1e3 for i in range(2000)]
    assert 135.0 <= statistics.median(rtts) <= 165.0


def test_jitter_is_bounded_and_seeded() -> None:
    model = LatencyModel.realistic(1, jitter_ms=5.0)
    a, b = ("10.0.0.1", 4000), ("10.0.1.1", 4000)
    rng1, rng2 = random.Random(1), random.Random(1)
    s1 = [model.sample(a, b, rng1) for _ in range(100)]
    s2 = [model.sample(a, b, rng2) for _ in range(100)]
    assert s1 == s2
    base = model.one_way(a, b)
    assert all(base <= s < base + 0.005 for s in s1)
    assert len(set(s1)) > 90


# --------------------------------------------------------------------------- loss


def test_loss_rate_close_to_configured() -> None:
    sim, cores = build(20, 4, LatencyModel.constant(10.0), loss=0.2)
    sim.run_until(200.0)
    totals = sim.totals
    assert totals.datagrams_sent > 15_000
    rate = totals.datagrams_lost / totals.datagrams_sent
    assert rate == pytest.approx(0.2, abs=0.015)
    # a ping round trip survives both ways: 0.8 * 0.8
    pings = sum(c.nonce for c in cores.values())
    answered = sum(len(c.rtts) for c in cores.values())
    assert answered / pings == pytest.approx(0.64, abs=0.03)


def test_no_loss_means_every_datagram_arrives() -> None:
    sim, _ = build(20, 4, LatencyModel.constant(10.0))
    sim.run_until(10.0)
    sim.run_until(10.5)  # let the last pongs land; pings of t in (10, 10.5] may be in flight
    totals = sim.totals
    assert totals.datagrams_lost == 0
    assert totals.datagrams_dropped == 0
    assert totals.datagrams_sent - totals.datagrams_received == sim.in_flight()
    assert totals.bytes_sent >= totals.bytes_received > 0


# --------------------------------------------------------------------------- crash


def test_crash_makes_a_node_silent_and_stops_its_timer() -> None:
    sim, cores = build(30, 6, LatencyModel.constant(50.0), trace=True)
    sim.run_until(5.0)
    victim_addr = sim.addresses[0]
    victim = cores[victim_addr]
    assert victim.next_ping is not None
    crash_at = victim.next_ping + 0.001  # just after it sent pings: they are in flight
    sim.run_until(crash_at)
    sim.crash(victim_addr)
    before = victim_addr and sim.stats[victim_addr].as_dict()
    fires, received = victim.timer_fires, victim.received
    sim.run_until(15.0)
    assert victim.timer_fires == fires
    assert victim.received == received
    after = sim.stats[victim_addr].as_dict()
    assert after["datagrams_sent"] == before["datagrams_sent"]
    assert after["datagrams_received"] == before["datagrams_received"]
    assert not sim.is_alive(victim_addr)
    assert victim_addr not in sim.addresses
    # the others still ping it: those datagrams are dropped and counted on their senders
    assert sim.totals.datagrams_dropped > 0
    assert sim.stats[victim_addr].datagrams_dropped == 0
    assert sim.trace is not None
    drops = [e for e in sim.trace if e[1] == "drop"]
    assert drops
    assert all(e[3] == victim_addr and e[0] >= crash_at for e in drops)
    # what it sent before the crash still arrives
    assert any(e[1] == "recv" and e[2] == victim_addr and e[0] > crash_at for e in sim.trace)
    # everyone else goes on
    assert all(c.timer_fires >= 14 for a, c in cores.items() if a != victim_addr)


def test_crashed_address_can_host_a_new_node() -> None:
    sim, cores = build(5, 7, LatencyModel.constant(5.0))
    addr = sim.addresses[2]
    sim.run_until(2.0)
    old = sim.remove(addr)
    assert old is cores[addr]
    fires = cores[addr].timer_fires
    with pytest.raises(KeyError):
        sim.remove(addr)
    new = PingCore(addr, [*sim.addresses, addr], random.Random(1), start=sim.now)
    sim.add(addr, new)
    with pytest.raises(ValueError, match="already"):
        sim.add(addr, new)
    sim.run_until(6.0)
    assert cores[addr].timer_fires == fires  # the old core's timer entry is stale
    assert new.timer_fires >= 3
    assert sim.core(addr) is new


# --------------------------------------------------------------------------- scheduling


def test_call_at_ordering() -> None:
    sim = Simulator(0, LatencyModel.constant(1.0))
    log: list[tuple[float, str]] = []

    def note(tag: str) -> None:
        log.append((sim.now, tag))

    sim.call_at(3.0, note, "c")
    sim.call_at(1.0, note, "a1")
    sim.call_at(2.0, note, "b")
    sim.call_at(1.0, note, "a2")
    sim.call_later(1.0, note, "a3")

    def nested() -> None:
        note("n")
        sim.call_later(0.0, note, "n0")  # same instant, after what is already queued
        sim.call_at(1.5, note, "n1")

    sim.call_at(1.0, nested)
    sim.call_at(1.0, note, "a4")
    with pytest.raises(ValueError, match="past"):
        sim.call_at(-1.0, note, "x")
    with pytest.raises(ValueError):
        sim.call_later(-0.5, note, "x")
    sim.run_until(2.0)
    assert sim.now == 2.0
    assert log == [
        (1.0, "a1"),
        (1.0, "a2"),
        (1.0, "a3"),
        (1.0, "n"),
        (1.0, "a4"),
        (1.0, "n0"),
        (1.5, "n1"),
        (2.0, "b"),
    ]
    with pytest.raises(ValueError, match="past"):
        sim.call_at(1.9, note, "x")
    assert sim.run_until_idle(10.0) is True
    assert log[-1] == (3.0, "c")
    assert sim.now == 3.0
    sim.call_at(20.0, note, "late")
    assert sim.run_until_idle(10.0) is False
    assert sim.now == 10.0
    assert log[-1] == (3.0, "c")


def test_touch_after_a_scheduled_call_sends_at_that_time() -> None:
    sim, cores = build(4, 8, LatencyModel.constant(30.0), trace=True, interval=1000.0)
    a, b = sim.addresses[0], sim.addresses[1]
    for core in cores.values():
        core.next_ping = None  # silence the periodic pings
        sim.poke(core.addr)

    def start() -> None:
        cores[a].ping(b, sim.now)
        sim.touch(a)

    sim.call_at(2.0, start)
    assert sim.run_until_idle(100.0) is True
    assert sim.trace is not None
    assert [(round(e[0], 9), e[1]) for e in sim.trace if e[1] in ("send", "recv")] == [
        (2.0, "send"),
        (2.03, "recv"),
        (2.03, "send"),
        (2.06, "recv"),
    ]
    assert cores[a].rtts == [(b, pytest.approx(0.06))]
    # outside a scheduled fn, touch drains at once
    cores[b].ping(a, sim.now)
    sim.touch(b)
    assert sim.trace[-1][1] == "send"
    sim.poke(("10.255.255.255", 1))  # nobody there: a no-op


class Alarm:
    """A core whose timer the application moves; counts its firings."""

    def __init__(self) -> None:
        self.when: float | None = None
        self.fired: list[float] = []

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return []

    def get_timer(self) -> float | None:
        return self.when

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.when = None


def test_one_live_timer_per_core() -> None:
    sim = Simulator(0, LatencyModel.constant(1.0))
    alarm = Alarm()
    addr = sim.allocate_address()
    sim.add(addr, alarm)
    for t in (5.0, 3.0, 4.0):  # re-armed three times: only the last one counts
        alarm.when = t
        sim.touch(addr)
    alarm.when = 4.0
    sim.poke(addr)  # unchanged: no new entry
    sim.run_until(10.0)
    assert alarm.fired == [4.0]
    alarm.when = 12.0
    sim.poke(addr)
    alarm.when = None
    sim.poke(addr)  # disarmed
    sim.run_until(20.0)
    assert alarm.fired == [4.0]
    alarm.when = 1.0  # in the past: fires now
    sim.poke(addr)
    sim.run_until(20.0)
    assert alarm.fired == [4.0, 20.0]


def test_allocated_addresses_are_labels_in_distinct_slash24s() -> None:
    sim = Simulator(3, LatencyModel.constant(1.0))
    addrs = [sim.allocate_address() for _ in range(5000)]
    assert len(set(addrs)) == 5000
    assert all(port == 4000 for _, port in addrs)
    net = ipaddress.ip_network("10.0.0.0/8")
    ips = [ipaddress.ip_address(ip) for ip, _ in addrs]
    assert all(ip in net for ip in ips)
    assert len({int(ip) >> 8 for ip in ips}) == 5000
    assert len({int(ip) >> 16 for ip in ips}) > 200  # spread over many /16s too
    again = Simulator(3, LatencyModel.constant(1.0))
    assert [again.allocate_address() for _ in range(5000)] == addrs


# --------------------------------------------------------------------------- scale


def run_benchmark(n_nodes: int, virtual_seconds: float, fanout: int = 3) -> dict[str, float]:
    """Events per second of wall time with the trivial ping core (a figure, never asserted)."""
    t0 = time.perf_counter()
    sim, _ = build(n_nodes, 1, LatencyModel.realistic(1), loss=0.01, fanout=fanout)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim.run_until(virtual_seconds)
    wall = time.perf_counter() - t0
    return {
        "nodes": n_nodes,
        "virtual_s": virtual_seconds,
        "setup_s": round(setup, 3),
        "wall_s": round(wall, 3),
        "events": sim.events_processed,
        "events_per_s": round(sim.events_processed / wall),
        "datagrams_sent": sim.totals.datagrams_sent,
    }


@pytest.mark.slow
def test_ten_thousand_nodes() -> None:
    n = 10_000
    t0 = time.perf_counter()
    sim, cores = build(n, 10, LatencyModel.realistic(10), loss=0.01, fanout=2)
    sim.run_until(10.0)
    wall = time.perf_counter() - t0
    assert len(sim) == n
    assert all(c.timer_fires >= 9 for c in cores.values())
    totals = sim.totals
    assert totals.datagrams_sent > n * 2 * 9 * 2 * 0.95
    assert totals.datagrams_received + totals.datagrams_lost + sim.in_flight() == (
        totals.datagrams_sent
    )
    answered = sum(len(c.rtts) for c in cores.values())
    assert answered > n * 2 * 9 * 0.95
    print(f"10k nodes, 10 virtual s: {sim.events_processed} events in {wall:.2f} s wall")


def test_benchmark_runs() -> None:
    result = run_benchmark(200, 5.0)
    assert result["events"] > 0
    print(result)


if __name__ == "__main__":
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    print(run_benchmark(nodes, seconds))
