"""Baseline: the real ``kademlia`` package (bmuller's, asyncio + rpcudp) on Starling's simulator.

``python -m bench.kademlia_sim --nodes 1000 --dead 0.3 --lookups 100 [--json PATH]``

Theory of operation
-------------------
The DHT benchmark compares Starling's DHT core with a widely used Kademlia on
the *same* simulated network. The package is asyncio code, not a sans-IO core,
so instead of porting it we give it an asyncio world whose clock and network
are simulated:

* :class:`VirtualTimeLoop` is an ``asyncio.BaseEventLoop`` whose ``time()`` is
  virtual. Where a real loop would sleep in ``select()`` until the next timer,
  it jumps the clock to that timer; ``run_until_complete``, ``call_later``,
  ``asyncio.sleep`` and ``wait_for`` work unchanged, only instantly.
* :class:`VirtualNetwork` is the thin scheduling layer over the simulator's
  network model (``starling.node.sim.Network``: the same ``LatencyModel``,
  the same seeded loss draws, the same per-node counters): ``sendto`` asks the
  model for the datagram's fate and schedules its delivery with
  ``loop.call_at``, so the network's clock *is* the loop's clock.
  :class:`SimDatagramTransport` is the ``asyncio.DatagramTransport`` a node sees.
* ``SimServer`` subclasses ``kademlia.network.Server`` and overrides only
  ``listen``, the method that creates the datagram endpoint; every RPC, routing
  table, crawl and timeout is the package's own code with its defaults (5 s
  request timeout, lock-step rounds of alpha requests).

Two things of the package's would otherwise escape the simulation, and are
bound for the duration of a run only: ``kademlia.routing`` stamps buckets with
``time.monotonic()`` (given the loop's virtual clock, so the hourly refresh of
stale buckets sees virtual hours), and ``Protocol.get_refresh_ids`` draws from
the global ``random`` (seeded from the run's seed, and restored afterwards).
rpcudp's message IDs come from ``os.urandom``; they are opaque and of fixed
size, so they change no figure. The package's loggers are silenced during a
run (every timeout logs an ERROR).

A lookup is the package's own node lookup, ``NodeSpiderCrawl`` started from the
initiator's k nearest known contacts, exactly as ``Server.set`` does; a
subclass only counts its rounds and RPCs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import importlib
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from starling.node.sim import Address, LatencyModel, Network

try:
    from bench._common import percentile
except ImportError:  # run as a plain script
    from _common import percentile  # type: ignore[no-redef]

KADEMLIA_REQUIREMENT = "kademlia"
ID_BITS = 160  # the package's node IDs are SHA-1 sized


def ensure_kademlia() -> None:
    """Install the ``kademlia`` package into the running interpreter's environment if missing."""
    try:
        importlib.import_module("kademlia.network")
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", KADEMLIA_REQUIREMENT], check=True
        )
        importlib.invalidate_caches()
        importlib.import_module("kademlia.network")


# --------------------------------------------------------------------------- virtual-time loop


class VirtualLoopStalled(RuntimeError):
    """Nothing is ready and nothing is scheduled: what the loop waits for can never happen."""


class _JumpingSelector:
    """Stands where a real loop's selector is: instead of sleeping ``timeout``, jump the clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        self._loop._jump(timeout)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio event loop on a virtual clock, with no real I/O at all.

    When no callback is ready, ``_run_once`` asks the selector to wait until the
    next scheduled timer; this loop's selector moves the clock to that timer's
    due time instead. Callbacks due at the same instant run in the order asyncio
    would run them, so a run depends only on its inputs.
    """

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._virtual_now = start
        self._clock_resolution = 1e-9
        self._selector = _JumpingSelector(self)
        self.network: VirtualNetwork | None = None  # the simulated network living on this clock

    def time(self) -> float:
        return self._virtual_now

    def _jump(self, timeout: float | None) -> None:
        if timeout is None:
            raise VirtualLoopStalled("no callback is ready and no timer is scheduled")
        if timeout > 0:
            # _run_once has dropped cancelled timers from the head: this is the next one due
            self._virtual_now = max(self._virtual_now, self._scheduled[0]._when)

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass  # nothing sleeps, so nothing needs waking


# --------------------------------------------------------------------------- simulated network


class SimDatagramTransport(asyncio.DatagramTransport):
    """One node's datagram endpoint on the :class:`VirtualNetwork`."""

    def __init__(
        self, network: VirtualNetwork, addr: Address, protocol: asyncio.DatagramProtocol
    ) -> None:
        super().__init__(extra={"sockname": addr})
        self.network = network
        self.addr = addr
        self.protocol = protocol
        self.stats = network.model.stats_for(addr)
        self._closed = False

    def sendto(self, data: bytes, addr: Address | None = None) -> None:  # type: ignore[override]
        if self._closed:
            return  # a stopped or crashed node sends nothing
        if addr is None:
            raise ValueError("the simulated transport is unconnected: give an address")
        self.network.send(self, bytes(data), (addr[0], addr[1]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.network.detach(self.addr)
        self.network.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    def get_write_buffer_size(self) -> int:
        return 0


class VirtualNetwork:
    """Datagrams between simulated endpoints, scheduled on a :class:`VirtualTimeLoop`.

    The network model (latency, loss, counters, addresses) is the simulator's
    ``Network``; this class only schedules: a datagram the model does not lose
    is handed to the destination's protocol ``one_way`` seconds later, if a
    live endpoint is still there (otherwise it is dropped and counted).
    """

    def __init__(
        self, loop: VirtualTimeLoop, latency: LatencyModel, loss: float, seed: int
    ) -> None:
        self.loop = loop
        self.model = Network(latency, loss, random.Random(seed))
        self.endpoints: dict[Address, SimDatagramTransport] = {}
        loop.network = self

    def allocate_address(self) -> Address:
        return self.model.allocate_address()

    def open(self, addr: Address, protocol: asyncio.DatagramProtocol) -> SimDatagramTransport:
        if addr in self.endpoints:
            raise OSError(f"address {addr} already in use")
        transport = SimDatagramTransport(self, addr, protocol)
        self.endpoints[addr] = transport
        protocol.connection_made(transport)
        return transport

    def detach(self, addr: Address) -> None:
        self.endpoints.pop(addr, None)

    def crash(self, addr: Address) -> None:
        """The endpoint vanishes without notice: no connection_lost, nothing sent or received."""
        transport = self.endpoints.pop(addr)
        transport._closed = True

    def send(self, transport: SimDatagramTransport, data: bytes, dst: Address) -> None:
        delay = self.model.transmit(transport.stats, transport.addr, dst, len(data))
        if delay is not None:
            self.loop.call_at(self.loop.time() + delay, self._deliver, dst, data, transport.addr)

    def _deliver(self, dst: Address, data: bytes, src: Address) -> None:
        transport = self.endpoints.get(dst)
        if transport is None:
            self.model.stats[src].datagrams_dropped += 1
            return
        st = transport.stats
        st.datagrams_received += 1
        st.bytes_received += len(data)
        transport.protocol.datagram_received(data, src)

    def sent(self, addrs: list[Address]) -> tuple[int, int]:
        """(datagrams, bytes) sent so far by ``addrs``."""
        stats = self.model.stats
        return (
            sum(stats[a].datagrams_sent for a in addrs),
            sum(stats[a].bytes_sent for a in addrs),
        )


# --------------------------------------------------------------------------- the package, injected


@cache
def _classes() -> tuple[type, type]:
    """SimServer and the measuring crawl; built on first use, after ensure_kademlia()."""
    from kademlia.crawling import NodeSpiderCrawl
    from kademlia.network import Server

    class SimServer(Server):  # type: ignore[misc]
        """``kademlia.network.Server`` whose datagram endpoint is on the simulated network."""

        async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
            loop = asyncio.get_running_loop()
            network = getattr(loop, "network", None)
            if network is None:
                raise RuntimeError("SimServer runs on a VirtualTimeLoop with a VirtualNetwork")
            protocol = self._create_protocol()
            self.transport = network.open((interface, port), protocol)
            self.protocol = protocol
            self.refresh_table()  # as the package's listen does

    class MeasuredNodeSpiderCrawl(NodeSpiderCrawl):  # type: ignore[misc]
        """The package's node lookup, unchanged, counting its rounds and its RPCs."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.rounds = 0
            self.rpcs = 0

        async def _find(self, rpcmethod: Any) -> Any:
            self.rounds += 1

            async def counted(peer: Any, node: Any) -> Any:
                self.rpcs += 1
                return await rpcmethod(peer, node)

            return await super()._find(counted)

    return SimServer, MeasuredNodeSpiderCrawl


class _VirtualTime:
    """Stands in for the ``time`` module inside ``kademlia.routing``: monotonic() is virtual."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self.monotonic = loop.time

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def _package_bound_to(loop: VirtualTimeLoop, seed: int) -> Iterator[None]:
    import kademlia.routing

    saved_time = kademlia.routing.time
    saved_random = random.getstate()
    loggers = [logging.getLogger(name) for name in ("kademlia", "rpcudp")]
    saved_levels = [lg.level for lg in loggers]
    kademlia.routing.time = _VirtualTime(loop)  # type: ignore[assignment]
    random.seed(f"kademlia-package/{seed}")
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        kademlia.routing.time = saved_time
        random.setstate(saved_random)
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------- the scenario


def _k_closest(target: int, ids: list[int], k: int) -> list[int]:
    """The ``k`` ids closest to ``target``, closest first."""
    return heapq.nsmallest(k, ids, key=lambda i: i ^ target)


async def _scenario(
    loop: VirtualTimeLoop,
    net: VirtualNetwork,
    n_nodes: int,
    seed: int,
    dead_fraction: float,
    n_lookups: int,
    ksize: int,
    alpha: int,
    bootstrap_contacts: int,
    max_join_wave: int,
    idle_minutes: float,
    lookup_concurrency: int,
    out: dict[str, Any],
    servers: list[Any],
    progress: bool,
) -> None:
    from kademlia.node import Node

    sim_server, crawl_class = _classes()
    rng = random.Random(f"kademlia-scenario/{seed}")
    addrs: list[Address] = []
    wall0 = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - wall0:7.1f}s wall, {loop.time():8.1f}s virt] {msg}")

    # -- join: waves of nodes, each bootstrapping from a few nodes that have already joined
    for _ in range(n_nodes):
        node_id = rng.getrandbits(ID_BITS).to_bytes(ID_BITS // 8, "big")
        server = sim_server(ksize=ksize, alpha=alpha, node_id=node_id)
        addr = net.allocate_address()
        await server.listen(addr[1], addr[0])
        servers.append(server)
        addrs.append(addr)
    joined = 1
    while joined < n_nodes:
        wave = range(joined, min(n_nodes, joined + min(joined, max_join_wave)))
        contacts = [rng.sample(addrs[:joined], min(bootstrap_contacts, joined)) for _ in wave]
        await asyncio.gather(
            *(servers[i].bootstrap(c) for i, c in zip(wave, contacts, strict=True))
        )
        joined = wave[-1] + 1
        say(f"{joined} nodes joined")
    t_joined = loop.time()
    join_sent = net.sent(addrs)
    wall_joined = time.perf_counter()

    # -- crash a fraction of them without notice
    n_dead = round(n_nodes * dead_fraction)
    dead = set(rng.sample(range(n_nodes), n_dead))
    for i in sorted(dead):
        net.crash(addrs[i])
        servers[i].stop()  # its process is gone: no more refresh timer either
    live = [i for i in range(n_nodes) if i not in dead]
    live_addrs = [addrs[i] for i in live]
    live_ids = [servers[i].node.long_id for i in live]

    # -- idle: what keeping the network up costs when nobody looks anything up
    idle0 = net.sent(live_addrs)
    await asyncio.sleep(idle_minutes * 60.0)
    idle1 = net.sent(live_addrs)
    say(f"idle {idle_minutes} min: {idle1[0] - idle0[0]} datagrams")
    wall_idle = time.perf_counter()

    # -- lookups: the k closest nodes to random targets, from random live nodes
    results: list[dict[str, Any]] = []

    async def lookup(i: int, target: int) -> None:
        server = servers[i]
        target_node = Node(target.to_bytes(ID_BITS // 8, "big"))
        truth = _k_closest(target, [x for x in live_ids if x != server.node.long_id], ksize)
        start = loop.time()
        nearest = server.protocol.router.find_neighbors(target_node)
        spider = crawl_class(server.protocol, target_node, nearest, ksize, alpha)
        try:
            found = await spider.find() if nearest else []
        except Exception as exc:  # a failed lookup is a figure, not a crash of the benchmark
            found = []
            say(f"lookup raised {exc!r}")
        returned = {n.long_id for n in found}
        recall = len(returned & set(truth)) / len(truth) if truth else 1.0
        results.append(
            {
                # The same rule as for Starling's lookups (bench/dht.py): the
                # closest live node found and at least 95% of the true k closest.
                "success": bool(found) and bool(truth) and truth[0] in returned and recall >= 0.95,
                "recall": recall,
                "rpcs": spider.rpcs,
                "rounds": spider.rounds,
                "latency_ms": (loop.time() - start) * 1e3,
            }
        )

    lookups0 = net.sent(live_addrs)
    t_lookups = loop.time()
    done = 0
    while done < n_lookups:
        batch = min(lookup_concurrency, n_lookups - done)
        initiators = rng.sample(live, min(batch, len(live)))
        await asyncio.gather(*(lookup(i, rng.getrandbits(ID_BITS)) for i in initiators))
        done += batch
        say(f"{done} lookups")
    lookups1 = net.sent(live_addrs)

    ok = [r for r in results if r["success"]]
    # Latency and rounds over every lookup that finished, as for Starling's.
    lat = sorted(r["latency_ms"] for r in results)
    rounds = sorted(float(r["rounds"]) for r in results)
    totals = net.model.totals()
    live_n = max(1, len(live))
    out.update(
        {
            "success_rate": len(ok) / len(results) if results else None,
            "recall": sum(r["recall"] for r in results) / len(results) if results else None,
            "rpcs_per_lookup": sum(r["rpcs"] for r in results) / len(results) if results else None,
            "hops_p50": percentile(rounds, 50) if rounds else None,
            "latency_ms_p50": percentile(lat, 50) if lat else None,
            "latency_ms_p95": percentile(lat, 95) if lat else None,
            "latency_ms_p99": percentile(lat, 99) if lat else None,
            "maintenance_msgs_per_node_min": (
                (idle1[0] - idle0[0]) / live_n / idle_minutes if idle_minutes > 0 else None
            ),
            # Bytes sent by the live nodes during the lookups, per live node (as for Starling's).
            "bytes_per_node": (lookups1[1] - lookups0[1]) / live_n,
            "datagrams_per_node": totals.datagrams_sent / n_nodes,
            "phases": {
                "join": {
                    "virtual_s": t_joined,
                    "wall_s": wall_joined - wall0,
                    "datagrams_per_node": join_sent[0] / n_nodes,
                    "bytes_per_node": join_sent[1] / n_nodes,
                },
                "idle": {
                    "virtual_s": idle_minutes * 60.0,
                    "wall_s": wall_idle - wall_joined,
                    "datagrams_per_live_node": (idle1[0] - idle0[0]) / live_n,
                    "bytes_per_live_node": (idle1[1] - idle0[1]) / live_n,
                },
                "lookups": {
                    "virtual_s": loop.time() - t_lookups,
                    "wall_s": time.perf_counter() - wall_idle,
                    "datagrams_per_lookup": (lookups1[0] - lookups0[0]) / max(1, len(results)),
                    "bytes_per_lookup": (lookups1[1] - lookups0[1]) / max(1, len(results)),
                },
            },
            "live_nodes": len(live),
            "lookups": len(results),
            "totals": totals.as_dict(),
            "virtual_s": loop.time(),
        }
    )


def run_kademlia_scenario(
    n_nodes: int,
    seed: int,
    dead_fraction: float,
    latency: LatencyModel | None = None,
    loss: float = 0.0,
    n_lookups: int = 100,
    ksize: int = 20,
    alpha: int = 3,
    *,
    bootstrap_contacts: int = 3,
    max_join_wave: int = 250,
    idle_minutes: float = 5.0,
    lookup_concurrency: int = 10,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the real ``kademlia`` package on the simulated network; return the figures.

    The network grows in waves (each wave at most as large as the network so
    far, at most ``max_join_wave``); every new node bootstraps from
    ``bootstrap_contacts`` random nodes that have already joined. Then
    ``dead_fraction`` of the nodes crash without notice, the network idles for
    ``idle_minutes`` (maintenance traffic is measured), and ``n_lookups`` node
    lookups for random targets run from random live nodes, ``lookup_concurrency``
    at a time (distinct initiators).

    Per lookup: success (returned the closest live node and at least 95% of
    the true ``ksize`` closest), recall (share of the true ``ksize`` closest
    live nodes to the target, initiator excluded, that it returned), RPCs
    sent, virtual latency, and rounds (the package's lock-step rounds,
    reported as ``hops_p50``).
    """
    if not 0.0 <= dead_fraction < 1.0:
        raise ValueError("dead_fraction must be in [0, 1)")
    if n_nodes < 2:
        raise ValueError("need at least two nodes")
    ensure_kademlia()
    if latency is None:
        latency = LatencyModel.realistic(seed)
    loop = VirtualTimeLoop()
    net = VirtualNetwork(loop, latency, loss, seed)
    out: dict[str, Any] = {
        "implementation": f"kademlia {metadata.version('kademlia')} "
        f"(rpcudp {metadata.version('rpcudp')})",
        "n_nodes": n_nodes,
        "seed": seed,
        "dead_fraction": dead_fraction,
        "latency": repr(latency),
        "loss": loss,
        "ksize": ksize,
        "alpha": alpha,
        "n_lookups": n_lookups,
        "hops_definition": "lock-step rounds of the package's NodeSpiderCrawl",
    }
    servers: list[Any] = []
    wall0 = time.perf_counter()
    try:
        with _package_bound_to(loop, seed):
            loop.run_until_complete(
                _scenario(
                    loop,
                    net,
                    n_nodes,
                    seed,
                    dead_fraction,
                    n_lookups,
                    ksize,
                    alpha,
                    bootstrap_contacts,
                    max_join_wave,
                    idle_minutes,
                    lookup_concurrency,
                    out,
                    servers,
                    progress,
                )
            )
            for server in servers:
                server.stop()
            _cancel_all_tasks(loop)
    finally:
        loop.close()
    out["wall_s"] = time.perf_counter() - wall0
    return out


def _cancel_all_tasks(loop: VirtualTimeLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kademlia_sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dead", type=float, default=0.0, help="fraction crashed without notice")
    p.add_argument("--lookups", type=int, default=100)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--median-rtt-ms", type=float, default=80.0)
    p.add_argument("--ksize", type=int, default=20)
    p.add_argument("--alpha", type=int, default=3)
    p.add_argument("--idle-minutes", type=float, default=5.0)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    result = run_kademlia_scenario(
        args.nodes,
        args.seed,
        args.dead,
        LatencyModel.realistic(args.seed, args.median_rtt_ms),
        args.loss,
        args.lookups,
        args.ksize,
        args.alpha,
        idle_minutes=args.idle_minutes,
        progress=args.progress,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
