"""The deterministic network simulator: a second runtime beside the asyncio one.

Theory of operation
-------------------
Starling's protocol cores are sans-IO (``receive_datagram``, ``datagrams_to_send``,
``get_timer``, ``handle_timer``; see :class:`Core`). The asyncio node feeds them
real sockets and the real clock; this module feeds them a simulated network and
a virtual clock instead, so thousands of nodes run in one process, and the same
seed and the same inputs give the same run, byte for byte.

Three pieces:

* :class:`LatencyModel` — one-way delay per ordered pair of addresses, without
  an N×N matrix: every address is assigned (by a seeded hash of the address) to
  one of R regions and an access delay; a delay is the R×R base delay of the two
  regions plus both access delays, plus optionally a stable per-pair spread and
  a per-datagram jitter.
* :class:`Network` — the network model proper: latency, random loss drawn from
  one seeded ``random.Random``, per-node traffic counters (:class:`TrafficStats`)
  and address allocation. It does not schedule anything, so a second scheduler
  can share it: the ``kademlia`` baseline (``bench/kademlia_sim.py``) drives the
  same model from a virtual-time asyncio loop.
* :class:`Simulator` — a discrete-event scheduler on a virtual clock. One heap
  holds every event as a plain tuple ``(time, seq, kind, ...)``; ``seq`` grows
  monotonically, so events at the same instant run in the order they were
  scheduled and the order never depends on anything but the inputs.

After every interaction with a core (a datagram delivered, its timer fired, an
application call through :meth:`Simulator.poke` or :meth:`Simulator.touch`) the
simulator drains the core's outgoing datagrams, schedules each one's delivery
``one_way(src, dst)`` later unless the loss draw drops it, and re-arms the core's
one timer from ``get_timer()``. A core has at most one live timer entry: each
re-arm takes a fresh generation number and entries whose generation is not the
core's current one are skipped when they come up.

A crashed (removed) node vanishes without notice: datagrams that reach its
address are dropped and counted, its timer never fires again, and nothing it
had queued is ever drained. Datagrams it sent before the crash still arrive.
``on_undeliverable(src, dst, now)``, if set, hears of each datagram dropped so
(when it would have arrived), and may schedule calls: what a sender's transport
infers from the missing acknowledgements is the caller's to model.

Addresses are labels, never used on a socket: :meth:`Simulator.allocate_address`
hands out ``("10.x.y.z", 4000)``, each in its own /24 (the first 65,536 of them).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Protocol

__all__ = [
    "Address",
    "Core",
    "LatencyModel",
    "Network",
    "Simulator",
    "TrafficStats",
]

Address = tuple[str, int]

SIM_PORT = 4000  # every simulated node listens on this port of its label address

_MASK64 = (1 << 64) - 1
_TWO64 = float(1 << 64)


class Core(Protocol):
    """What a sans-IO protocol core offers the simulator (and the asyncio node)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


# --------------------------------------------------------------------------- latency


def _splitmix64(x: int) -> int:
    """A 64-bit mixing function (SplitMix64's finaliser): cheap, well spread."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


# Regions of the realistic model: (name, share of nodes). The RTT matrix below is
# in the range of public inter-city measurements; realistic() rescales its base
# delays so that the median RTT of random pairs is the requested one.
_REGIONS: tuple[tuple[str, float], ...] = (
    ("north-america-east", 0.22),
    ("north-america-west", 0.13),
    ("europe", 0.33),
    ("east-asia", 0.20),
    ("south-america", 0.07),
    ("oceania", 0.05),
)
_REGION_RTT_MS: tuple[tuple[float, ...], ...] = (
    (30, 70, 90, 180, 130, 200),
    (70, 30, 150, 120, 180, 150),
    (90, 150, 25, 220, 200, 280),
    (180, 120, 220, 40, 280, 120),
    (130, 180, 200, 280, 35, 300),
    (200, 150, 280, 120, 300, 25),
)
_ACCESS_MEDIAN_MS = 4.0  # one-way last-mile delay of a typical node
_ACCESS_SIGMA = 0.7  # log-normal spread of access delays
_ACCESS_CAP_MS = 60.0
_CALIBRATION_PAIRS = 20_000


class LatencyModel:
    """One-way delays between addresses: regions, a base matrix and per-node access delay.

    ``one_way(src, dst)`` (seconds) = ``base[region(src)][region(dst)]``
    + ``access(src)`` + ``access(dst)`` + a per-pair spread (stable for the
    pair, symmetric), all derived from a seeded hash of the addresses, so one
    address always lands in the same region with the same access delay, in any
    order of first use. ``sample(src, dst, rng)`` adds the per-datagram jitter,
    drawn from the network's RNG. Constructors take milliseconds.
    """

    __slots__ = (
        "_access_median",
        "_access_sigma",
        "_base",
        "_cum_weights",
        "_nodes",
        "_pair_low",
        "_pair_span",
        "_seed",
        "jitter",
        "name",
        "region_names",
    )

    def __init__(
        self,
        base_ms: Sequence[Sequence[float]],
        *,
        region_weights: Sequence[float] | None = None,
        region_names: Sequence[str] | None = None,
        access_median_ms: float = 0.0,
        access_sigma: float = 0.0,
        pair_ms: tuple[float, float] = (0.0, 0.0),
        jitter_ms: float = 0.0,
        seed: int = 0,
        name: str = "custom",
    ) -> None:
        r = len(base_ms)
        if r == 0 or any(len(row) != r for row in base_ms):
            raise ValueError("base_ms must be a non-empty square matrix")
        weights = list(region_weights) if region_weights is not None else [1.0] * r
        if len(weights) != r or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("region_weights must give one non-negative weight per region")
        if pair_ms[1] < pair_ms[0] or pair_ms[0] < 0 or jitter_ms < 0 or access_median_ms < 0:
            raise ValueError("delays must be non-negative and ranges ordered")
        self._base = [[ms / 1000.0 for ms in row] for row in base_ms]
        total = sum(weights)
        self._cum_weights = list(itertools.accumulate(w / total for w in weights))
        self._cum_weights[-1] = 1.0
        self._access_median = access_median_ms / 1000.0
        self._access_sigma = access_sigma
        self._pair_low = pair_ms[0] / 1000.0
        self._pair_span = (pair_ms[1] - pair_ms[0]) / 1000.0
        self.jitter = jitter_ms / 1000.0
        self._seed = seed
        self._nodes: dict[Address, tuple[int, float, int]] = {}
        self.name = name
        self.region_names = (
            list(region_names) if region_names is not None else [f"r{i}" for i in range(r)]
        )

    # -- constructors

    @classmethod
    def constant(cls, ms: float) -> LatencyModel:
        """Every one-way delay is ``ms``."""
        return cls([[ms]], name=f"constant({ms}ms)")

    @classmethod
    def uniform(cls, one_way_ms_low: float, one_way_ms_high: float, seed: int = 0) -> LatencyModel:
        """One-way delay uniform in [low, high), fixed per (unordered) pair by a seeded hash."""
        return cls(
            [[0.0]],
            pair_ms=(one_way_ms_low, one_way_ms_high),
            seed=seed,
            name=f"uniform({one_way_ms_low}-{one_way_ms_high}ms)",
        )

    @classmethod
    def realistic(
        cls, seed: int, median_rtt_ms: float = 80.0, jitter_ms: float = 0.0
    ) -> LatencyModel:
        """Six world regions, log-normal access delays; median RTT of random pairs ≈ the target.

        The inter-region matrix keeps its shape (intra-region short, across
        oceans long) and is scaled so that the median RTT over random pairs
        hits the target; access delays (median 4 ms one way) stay as they are.
        """
        scale = _realistic_scale(median_rtt_ms)
        base = [[rtt * scale / 2 for rtt in row] for row in _REGION_RTT_MS]
        return cls(
            base,
            region_weights=[w for _, w in _REGIONS],
            region_names=[n for n, _ in _REGIONS],
            access_median_ms=_ACCESS_MEDIAN_MS,
            access_sigma=_ACCESS_SIGMA,
            jitter_ms=jitter_ms,
            seed=seed,
            name=f"realistic(median_rtt={median_rtt_ms}ms)",
        )

    # -- queries

    def _node(self, addr: Address) -> tuple[int, float, int]:
        """(region, access delay in s, 64-bit pair key) of an address, derived once."""
        info = self._nodes.get(addr)
        if info is None:
            h = hashlib.blake2b(
                f"{self._seed}|{addr[0]}|{addr[1]}".encode(), digest_size=24
            ).digest()
            u_region = int.from_bytes(h[0:8], "big") / _TWO64
            u_access = int.from_bytes(h[8:16], "big") / _TWO64
            key = int.from_bytes(h[16:24], "big")
            region = _pick(self._cum_weights, u_region)
            info = (region, self._access_delay(u_access), key)
            self._nodes[addr] = info
        return info

    def _access_delay(self, u: float) -> float:
        if self._access_median == 0.0:
            return 0.0
        if self._access_sigma == 0.0:
            return self._access_median
        z = statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        return min(self._access_median * math.exp(self._access_sigma * z), _ACCESS_CAP_MS / 1e3)

    def region(self, addr: Address) -> int:
        return self._node(addr)[0]

    def access(self, addr: Address) -> float:
        """The address's own access delay, seconds (counted once per end of a path)."""
        return self._node(addr)[1]

    def one_way(self, src: Address, dst: Address) -> float:
        """Base one-way delay from ``src`` to ``dst`` in seconds, without jitter."""
        nodes = self._nodes
        r1, a1, k1 = nodes.get(src) or self._node(src)
        r2, a2, k2 = nodes.get(dst) or self._node(dst)
        d = self._base[r1][r2] + a1 + a2
        if self._pair_span:
            d += self._pair_low + self._pair_span * (_splitmix64(k1 ^ k2) / _TWO64)
        elif self._pair_low:
            d += self._pair_low
        return d

    def rtt(self, a: Address, b: Address) -> float:
        """Round-trip time without jitter, seconds."""
        return self.one_way(a, b) + self.one_way(b, a)

    def sample(self, src: Address, dst: Address, rng: random.Random) -> float:
        """The delay of one datagram: ``one_way`` plus jitter in [0, jitter) from ``rng``."""
        d = self.one_way(src, dst)
        if self.jitter:
            d += self.jitter * rng.random()
        return d

    def __repr__(self) -> str:
        return f"LatencyModel.{self.name}"


def _pick(cum_weights: list[float], u: float) -> int:
    for i, c in enumerate(cum_weights):
        if u < c:
            return i
    return len(cum_weights) - 1


@lru_cache(maxsize=16)
def _realistic_scale(median_rtt_ms: float) -> float:
    """Scale of the region RTT matrix that gives the requested median RTT (bisection).

    Uses a fixed calibration sample of random pairs (region and access draws),
    so the scale does not depend on the model's seed.
    """
    rng = random.Random(0x5EED)
    cum = list(itertools.accumulate(w for _, w in _REGIONS))
    normal = statistics.NormalDist()

    def access_ms() -> float:
        z = normal.inv_cdf(min(max(rng.random(), 1e-12), 1 - 1e-12))
        return min(_ACCESS_MEDIAN_MS * math.exp(_ACCESS_SIGMA * z), _ACCESS_CAP_MS)

    samples = []
    for _ in range(_CALIBRATION_PAIRS):
        r1, r2 = _pick(cum, rng.random()), _pick(cum, rng.random())
        samples.append((_REGION_RTT_MS[r1][r2], 2 * (access_ms() + access_ms())))
    if median_rtt_ms <= statistics.median(a for _, a in samples):
        raise ValueError(f"median RTT {median_rtt_ms} ms is below what access delays allow")
    lo, hi = 0.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if statistics.median(b * mid + a for b, a in samples) < median_rtt_ms:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# --------------------------------------------------------------------------- network


@dataclass(slots=True)
class TrafficStats:
    """Datagram and byte counters of one node (or, summed, of the whole network).

    ``datagrams_lost`` (random loss) and ``datagrams_dropped`` (nobody live at
    the destination when it arrived) are counted on the sender.
    """

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    datagrams_lost: int = 0
    datagrams_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def add(self, other: TrafficStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Network:
    """The network model shared by every scheduler: latency, loss, counters, addresses.

    ``transmit`` is the one place a datagram's fate is decided: it counts the
    send, draws the loss from ``rng`` and returns the delay, or None if lost.
    """

    __slots__ = ("_allocated", "_block_mult", "_block_offset", "latency", "loss", "rng", "stats")

    def __init__(self, latency: LatencyModel, loss: float, rng: random.Random) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        self.latency = latency
        self.loss = loss
        self.rng = rng
        self.stats: dict[Address, TrafficStats] = {}
        self._allocated = 0
        # The /24 blocks of 10.0.0.0/8 are visited in a seeded order: i -> (i*mult + off) mod 2^16
        # is a bijection for odd mult, so the first 65,536 addresses sit in distinct /24s.
        pick = random.Random(rng.random())
        self._block_mult = pick.randrange(1, 1 << 16, 2)
        self._block_offset = pick.randrange(1 << 16)

    def stats_for(self, addr: Address) -> TrafficStats:
        st = self.stats.get(addr)
        if st is None:
            st = self.stats[addr] = TrafficStats()
        return st

    def allocate_address(self) -> Address:
        """A fresh label address in 10.0.0.0/8, port 4000; distinct /24s for the first 65,536."""
        i = self._allocated
        self._allocated += 1
        block = (i * self._block_mult + self._block_offset) & 0xFFFF
        round_ = i >> 16
        if round_ >= 254:
            raise RuntimeError("10.0.0.0/8 exhausted")
        host = 1 + (block * 7 + round_) % 254
        return (f"10.{block >> 8}.{block & 0xFF}.{host}", SIM_PORT)

    def transmit(
        self, src_stats: TrafficStats, src: Address, dst: Address, size: int
    ) -> float | None:
        """Count a datagram sent; return its one-way delay, or None if the loss draw drops it."""
        src_stats.datagrams_sent += 1
        src_stats.bytes_sent += size
        if self.loss and self.rng.random() < self.loss:
            src_stats.datagrams_lost += 1
            return None
        latency = self.latency
        if latency.jitter:
            return latency.sample(src, dst, self.rng)
        return latency.one_way(src, dst)

    def totals(self) -> TrafficStats:
        total = TrafficStats()
        for st in self.stats.values():
            total.add(st)
        return total


# --------------------------------------------------------------------------- simulator

# Event kinds: heap entries are (time, seq, kind, ...) tuples; seq is unique, so
# comparison never looks past it.
_DELIVER = 0  # (t, seq, _DELIVER, dst, data, src)
_TIMER = 1  # (t, seq, _TIMER, node, generation)
_CALL = 2  # (t, seq, _CALL, fn, args)


def _live_timer(ev: tuple[Any, ...]) -> bool:
    node: _Node = ev[3]
    return node.alive and node.timer_gen == ev[4]


class _Node:
    __slots__ = ("addr", "alive", "core", "stats", "timer_gen", "timer_when")

    def __init__(self, addr: Address, core: Core, stats: TrafficStats) -> None:
        self.addr = addr
        self.core = core
        self.stats = stats
        self.alive = True
        self.timer_when: float | None = None
        self.timer_gen = -1


class Simulator:
    """Discrete-event simulation of sans-IO cores on a virtual clock (seconds).

    ``seed`` seeds ``rng`` (a ``random.Random`` used for loss and jitter);
    :meth:`child_rng` derives independent streams for the cores, so giving a
    core randomness never shifts the network's draws.

    Pass ``trace=True`` to record every event in ``trace`` (for determinism tests).
    """

    def __init__(
        self, seed: int, latency: LatencyModel, loss: float = 0.0, *, trace: bool = False
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.network = Network(latency, loss, self.rng)
        self.latency = latency
        self.now = 0.0
        self.events_processed = 0
        self.trace: list[tuple[Any, ...]] | None = [] if trace else None
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._gen = itertools.count()
        self._nodes: dict[Address, _Node] = {}
        self._touched: dict[Address, None] | None = None  # set while a scheduled fn runs
        # Called with (src, dst, now) for each datagram that reached a crashed address.
        self.on_undeliverable: Callable[[Address, Address, float], None] | None = None

    # -- nodes

    @property
    def stats(self) -> dict[Address, TrafficStats]:
        """Per-address traffic counters (kept after a node crashes)."""
        return self.network.stats

    @property
    def totals(self) -> TrafficStats:
        """Traffic counters summed over every node that ever existed."""
        return self.network.totals()

    def allocate_address(self) -> Address:
        return self.network.allocate_address()

    def child_rng(self, *labels: object) -> random.Random:
        """A ``random.Random`` derived from the seed and ``labels`` (e.g. an address)."""
        material = repr((self.seed, *labels)).encode()
        return random.Random(int.from_bytes(hashlib.blake2b(material).digest(), "big"))

    def add(self, addr: Address, core: Core) -> None:
        """Bring ``core`` up at ``addr``, then drain its datagrams and arm its timer."""
        if addr in self._nodes:
            raise ValueError(f"{addr} already has a live node")
        node = _Node(addr, core, self.network.stats_for(addr))
        self._nodes[addr] = node
        if self.trace is not None:
            self.trace.append((self.now, "add", addr))
        self._flush(node, self.now)

    def remove(self, addr: Address) -> Core:
        """Take the node at ``addr`` away without notice; return its core."""
        node = self._nodes.pop(addr)
        node.alive = False
        node.timer_gen = -1
        if self.trace is not None:
            self.trace.append((self.now, "remove", addr))
        return node.core

    def crash(self, addr: Address) -> None:
        """The node at ``addr`` vanishes: deliveries to it are dropped, its timer stops."""
        self.remove(addr)

    def core(self, addr: Address) -> Core:
        return self._nodes[addr].core

    def is_alive(self, addr: Address) -> bool:
        return addr in self._nodes

    @property
    def addresses(self) -> list[Address]:
        """Addresses of the live nodes, in the order they were added."""
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    # -- application actions

    def call_at(self, t: float, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` at virtual time ``t``; then poke every core it :meth:`touch`-ed."""
        if t < self.now:
            raise ValueError(f"call_at({t}) is in the past (now={self.now})")
        heapq.heappush(self._heap, (t, next(self._seq), _CALL, fn, args))

    def call_later(self, dt: float, fn: Callable[..., object], *args: object) -> None:
        if dt < 0:
            raise ValueError("call_later needs dt >= 0")
        self.call_at(self.now + dt, fn, *args)

    def touch(self, addr: Address) -> None:
        """Mark the core at ``addr`` as acted upon: it is poked after the running scheduled fn.

        Outside a scheduled fn this is :meth:`poke`.
        """
        if self._touched is None:
            self.poke(addr)
        else:
            self._touched[addr] = None

    def poke(self, addr: Address) -> None:
        """Drain the core's outgoing datagrams and re-arm its timer now. Dead addresses: no-op."""
        node = self._nodes.get(addr)
        if node is not None:
            self._flush(node, self.now)

    # -- running

    def run_until(self, t: float) -> None:
        """Process every event scheduled at or before ``t``; the clock then reads ``t``."""
        self._run(t)
        self.now = max(self.now, t)

    def run_until_idle(self, max_time: float) -> bool:
        """Process events until none is left or the next is after ``max_time`` (absolute).

        Returns True if the queue ran empty (the clock reads the last event's
        time), False if ``max_time`` was reached first (the clock reads
        ``max_time``). A core whose timer is always set is never idle.
        """
        self._run(max_time)
        if self.pending_events():
            self.now = max(self.now, max_time)
            return False
        return True

    def pending_events(self) -> int:
        """Events still to come: datagrams in flight, armed timers, scheduled calls."""
        return sum(1 for ev in self._heap if ev[2] != _TIMER or _live_timer(ev))

    def in_flight(self) -> int:
        """Datagrams sent and neither delivered, dropped nor lost yet."""
        return sum(1 for ev in self._heap if ev[2] == _DELIVER)

    def _run(self, until: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        nodes = self._nodes
        trace = self.trace
        flush = self._flush
        processed = 0
        try:
            while heap and heap[0][0] <= until:
                ev = pop(heap)
                now = ev[0]
                self.now = now
                processed += 1
                kind = ev[2]
                if kind == _DELIVER:
                    dst = ev[3]
                    data = ev[4]
                    node = nodes.get(dst)
                    if node is None:
                        self.network.stats[ev[5]].datagrams_dropped += 1
                        if trace is not None:
                            trace.append((now, "drop", ev[5], dst, data))
                        if self.on_undeliverable is not None:
                            self.on_undeliverable(ev[5], dst, now)
                        continue
                    st = node.stats
                    st.datagrams_received += 1
                    st.bytes_received += len(data)
                    if trace is not None:
                        trace.append((now, "recv", ev[5], dst, data))
                    node.core.receive_datagram(data, ev[5], now)
                    flush(node, now)
                elif kind == _TIMER:
                    node = ev[3]
                    if not node.alive or node.timer_gen != ev[4]:
                        processed -= 1  # a stale entry is not an event
                        continue
                    node.timer_when = None
                    node.timer_gen = -1
                    if trace is not None:
                        trace.append((now, "timer", node.addr))
                    node.core.handle_timer(now)
                    if node.alive:
                        flush(node, now)
                else:
                    if trace is not None:
                        trace.append((now, "call"))
                    self._touched = {}
                    try:
                        ev[3](*ev[4])
                        touched = self._touched
                    finally:
                        self._touched = None
                    for addr in touched:
                        node = nodes.get(addr)
                        if node is not None:
                            flush(node, now)
        finally:
            self.events_processed += processed

    def _flush(self, node: _Node, now: float) -> None:
        core = node.core
        out = core.datagrams_to_send(now)
        if out:
            src = node.addr
            st = node.stats
            transmit = self.network.transmit
            heap = self._heap
            seq = self._seq
            trace = self.trace
            for data, dst in out:
                delay = transmit(st, src, dst, len(data))
                if trace is not None:
                    trace.append((now, "send", src, dst, len(data), delay))
                if delay is not None:
                    heapq.heappush(heap, (now + delay, next(seq), _DELIVER, dst, data, src))
        t = core.get_timer()
        if t != node.timer_when:
            node.timer_when = t
            if t is None:
                node.timer_gen = -1
            else:
                gen = next(self._gen)
                node.timer_gen = gen
                heapq.heappush(
                    self._heap, (t if t > now else now, next(self._seq), _TIMER, node, gen)
                )
