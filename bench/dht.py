"""``python -m bench dht``: Starling's DHT on the simulator, beside the ``kademlia`` package.

Per network size and seed, one simulated network (``starling.node.sim``) with a
latency matrix whose random-pair RTT median is ~80 ms:

1. N nodes join over time, each through three nodes that joined before it;
2. ``static``: lookups of random targets from random nodes;
3. ``loss1``: the same with 1% of datagrams lost;
4. an idle hour with no lookups, to count maintenance traffic (every datagram a
   node sends then is maintenance: its own pings and refreshes, and its answers
   to other nodes' maintenance requests);
5. ``dead30``: 30% of the nodes crash without notice, then lookups at once;
6. ``dead50``: more crash, to 50%, then lookups at once.

Every lookup is a FIND_NODE for a random 256-bit target; its result is judged
against global knowledge of which nodes are alive: ``recall`` is the fraction of
the true k closest live nodes that the lookup returned, ``success`` that it
returned its full k (or every live node, in a smaller network) with recall 1.0
for the closest node. Latency is virtual time from start to the core's
LookupDone. ``hops`` is the RPC depth at which the closest returned node was found.

The baseline is the ``kademlia`` package from PyPI, its code unchanged, run on
the same latency model and loss on a virtual-time asyncio loop
(``bench/kademlia_sim.py``), at the sizes given by ``--baseline-sizes``. Its
figures follow the same definitions: the same success rule and recall, latency
over every finished lookup, bytes sent by live nodes during the lookups per live
node, and maintenance counted in the static network while it idles (over two
hours, since the package refreshes idle buckets once an hour).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

from starling.node.sim import LatencyModel, Simulator
from starling.proto.dht import DhtConfig, DhtNode, LookupDone, distance
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID

K = 20
TARGETS = {
    "success_static": 0.999,
    "recall_static": 0.99,
    "recall_dead50": 0.95,
    "latency_ms_p50_static": 400,
    "latency_ms_p99_static": 1500,
    "latency_ms_p95_dead30": 2000,
    "rpcs_per_lookup_static": 30,
    "maintenance_msgs_per_node_min": 1.0,
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Run:
    """One simulated network of Starling DHT nodes."""

    def __init__(self, n: int, seed: int, join_spacing: float) -> None:
        self.n = n
        self.seed = seed
        self.sim = Simulator(seed, LatencyModel.realistic(seed, median_rtt_ms=80.0), loss=0.0)
        self.rng = self.sim.child_rng("bench")
        self.ids: dict[tuple[str, int], bytes] = {}
        self.results: dict[tuple[tuple[str, int], int], tuple[bytes, float]] = {}
        self.done: list[tuple[bytes, LookupDone]] = []
        joined: list[tuple[str, int]] = []
        for i in range(n):
            addr = self.sim.allocate_address()
            self.sim.call_at(i * join_spacing, self._join, addr, i, joined)
        self.sim.run_until(n * join_spacing + 60.0)

    def _join(self, addr: tuple[str, int], i: int, joined: list[tuple[str, int]]) -> None:
        rng = self.sim.child_rng("node", i)
        identity = PrivateKey(rng.randbytes(32))
        core = DhtNode(identity, MAIN_NETWORK_ID, rng.randbytes, self.sim.now, DhtConfig())
        self.sim.add(addr, core)
        self.ids[addr] = core.node_id
        seeds = self.rng.sample(joined, min(3, len(joined)))
        core.bootstrap(seeds, self.sim.now)
        self.sim.touch(addr)
        joined.append(addr)

    def live(self) -> list[tuple[str, int]]:
        return self.sim.addresses

    def lookups(self, count: int, spacing: float = 0.05) -> list[dict[str, Any]]:
        """``count`` lookups from random live nodes to random targets; per-lookup figures."""
        live = self.live()
        live_ids = [self.ids[a] for a in live]
        start = self.sim.now
        pending: dict[tuple[tuple[str, int], int], tuple[bytes, float]] = {}
        for j in range(count):
            src = self.rng.choice(live)
            target = self.rng.randbytes(32)
            self.sim.call_at(start + j * spacing, self._lookup, src, target, pending)
        stats_before = {a: self.sim.stats[a].bytes_sent for a in live}
        self.sim.run_until(start + count * spacing + 60.0)
        out = []
        for (src, lookup_id), (target, _) in pending.items():
            core = self.sim.core(src) if self.sim.is_alive(src) else None
            event = self._drain(core, lookup_id)
            truth = sorted(live_ids, key=lambda i: distance(i, target))
            truth = [i for i in truth if i != self.ids[src]][:K]
            if event is None:
                out.append({"ok": False, "recall": 0.0})
                continue
            found = {node_id for node_id, _ in event.closest}
            recall = len(found & set(truth)) / len(truth)
            out.append(
                {
                    "ok": event.ok and bool(truth) and truth[0] in found and recall >= 0.95,
                    "recall": recall,
                    "rpcs": event.rpcs,
                    "hops": event.hops,
                    "latency_ms": event.duration * 1000.0,
                }
            )
        sent = sum(self.sim.stats[a].bytes_sent - stats_before[a] for a in live)
        for row in out:
            row["bytes_per_node"] = sent / len(live)
        return out

    def _lookup(self, src: tuple[str, int], target: bytes, pending: dict[Any, Any]) -> None:
        core = self.sim.core(src)
        assert isinstance(core, DhtNode)
        lookup_id = core.find_node(target, self.sim.now)
        pending[(src, lookup_id)] = (target, self.sim.now)
        self.sim.touch(src)

    def _drain(self, core: Any, lookup_id: int) -> LookupDone | None:
        if core is None:
            return None
        found = None
        kept = []
        while (event := core.next_event()) is not None:
            if isinstance(event, LookupDone) and event.lookup_id == lookup_id:
                found = event
            elif isinstance(event, LookupDone):
                kept.append(event)
        # Events of other lookups from the same node go back in order.
        core._events.extendleft(reversed(kept))
        return found

    def maintenance(self, minutes: float) -> float:
        """Datagrams sent per node per minute while nobody looks anything up."""
        live = self.live()
        before = {a: self.sim.stats[a].datagrams_sent for a in live}
        self.sim.run_until(self.sim.now + minutes * 60.0)
        sent = sum(self.sim.stats[a].datagrams_sent - before[a] for a in live)
        return sent / len(live) / minutes

    def crash_to(self, fraction: float) -> None:
        alive = self.live()
        target_dead = round(fraction * self.n)
        already = self.n - len(alive)
        for addr in self.rng.sample(alive, max(0, target_dead - already)):
            self.sim.crash(addr)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [r["latency_ms"] for r in rows if "latency_ms" in r]
    return {
        "lookups": len(rows),
        "success_rate": sum(r["ok"] for r in rows) / len(rows),
        "recall": statistics.fmean(r["recall"] for r in rows),
        "rpcs_per_lookup": statistics.fmean(r["rpcs"] for r in rows if "rpcs" in r),
        "hops_p50": percentile([r["hops"] for r in rows if "hops" in r], 0.5),
        "latency_ms_p50": percentile(lat, 0.50),
        "latency_ms_p95": percentile(lat, 0.95),
        "latency_ms_p99": percentile(lat, 0.99),
        "bytes_per_node": statistics.fmean(r["bytes_per_node"] for r in rows),
    }


SCENARIOS = [("static", 0.0, 0.0), ("loss1", 0.0, 0.01), ("dead30", 0.3, 0.0), ("dead50", 0.5, 0.0)]


def run_size(n: int, seeds: list[int], lookups: int, log: Any) -> dict[str, dict[str, Any]]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SCENARIOS}
    maintenance: list[float] = []
    joins: list[float] = []
    for seed in seeds:
        t0 = time.perf_counter()
        run = Run(n, seed, join_spacing=0.02 if n > 2000 else 0.05)
        joins.append(time.perf_counter() - t0)
        for name, dead, loss in SCENARIOS:
            if name == "dead30":
                maintenance.append(run.maintenance(60.0))
            run.crash_to(dead)
            run.sim.network.loss = loss
            rows[name] += run.lookups(lookups)
            run.sim.network.loss = 0.0
        print(
            f"  n={n} seed={seed}: {time.perf_counter() - t0:.0f} s wall "
            f"(join {joins[-1]:.0f} s), {run.sim.events_processed} events",
            file=log,
        )
    out = {}
    for name, dead, loss in SCENARIOS:
        entry = {"name": name, "nodes": n, "dead_fraction": dead, "loss": loss}
        entry.update(summarize(rows[name]))
        entry["maintenance_msgs_per_node_min"] = statistics.fmean(maintenance)
        entry["seeds"] = len(seeds)
        entry["wall_s_per_network"] = statistics.fmean(joins)
        out[name] = entry
    return out


def baseline(
    n: int, seeds: list[int], lookups: int, log: Any, idle_minutes: float = 120.0
) -> dict[str, dict[str, Any]] | None:
    try:
        from bench import kademlia_sim
    except ImportError as exc:  # pragma: no cover - reported in the JSON
        print(f"  baseline unavailable: {exc}", file=log)
        return None
    kademlia_sim.ensure_kademlia()
    out: dict[str, dict[str, Any]] = {}
    for name, dead, loss in SCENARIOS:
        results = []
        for seed in seeds:
            t0 = time.perf_counter()
            latency = LatencyModel.realistic(seed, median_rtt_ms=80.0)
            results.append(
                kademlia_sim.run_kademlia_scenario(
                    n_nodes=n,
                    seed=seed,
                    dead_fraction=dead,
                    latency=latency,
                    loss=loss,
                    n_lookups=lookups,
                    # Maintenance is counted once, in the static network. The
                    # package refreshes buckets idle for an hour, once an hour:
                    # the first refresh after the joins comes only in the second
                    # idle hour, so a shorter window would count nothing.
                    idle_minutes=idle_minutes if name == "static" else 0.0,
                )
            )
            print(
                f"  kademlia n={n} {name} seed={seed}: {time.perf_counter() - t0:.0f} s wall",
                file=log,
            )
        merged: dict[str, Any] = {}
        for key in results[0]:
            values = [r[key] for r in results if isinstance(r.get(key), int | float)]
            merged[key] = statistics.fmean(values) if values else results[0][key]
        out[name] = merged
    maintenance = out["static"]["maintenance_msgs_per_node_min"]
    for entry in out.values():  # one maintenance figure per network, as for Starling's
        entry["maintenance_msgs_per_node_min"] = maintenance
    return out


def check_targets(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(s["name"], s["nodes"]): s for s in scenarios}
    big = max(s["nodes"] for s in scenarios)
    checks = {
        "success_static": (by[("static", big)]["success_rate"], ">=", "success_static"),
        "recall_static": (by[("static", big)]["recall"], ">=", "recall_static"),
        "recall_dead50": (by[("dead50", big)]["recall"], ">=", "recall_dead50"),
        "latency_ms_p50_static": (
            by[("static", big)]["latency_ms_p50"],
            "<=",
            "latency_ms_p50_static",
        ),
        "latency_ms_p99_static": (
            by[("static", big)]["latency_ms_p99"],
            "<=",
            "latency_ms_p99_static",
        ),
        "latency_ms_p95_dead30": (
            by[("dead30", big)]["latency_ms_p95"],
            "<=",
            "latency_ms_p95_dead30",
        ),
        "rpcs_per_lookup_static": (
            by[("static", big)]["rpcs_per_lookup"],
            "<=",
            "rpcs_per_lookup_static",
        ),
        "maintenance_msgs_per_node_min": (
            by[("static", big)]["maintenance_msgs_per_node_min"],
            "<=",
            "maintenance_msgs_per_node_min",
        ),
    }
    out = {}
    for name, (value, op, key) in checks.items():
        target = TARGETS[key]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "target": f"{op} {target}", "nodes": big, "met": met}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dht", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--quick", action="store_true", help="1,000 nodes, 2 seeds, fewer lookups")
    parser.add_argument("--sizes", default=None, help="comma-separated network sizes")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per size (default 5)")
    parser.add_argument("--lookups", type=int, default=None, help="lookups per scenario per seed")
    parser.add_argument(
        "--baseline-sizes",
        default=None,
        help="sizes at which to run the kademlia package too (default: 1000,10000)",
    )
    parser.add_argument(
        "--baseline-seeds",
        type=int,
        default=None,
        help="seeds for the baseline (default: all of them up to 2,000 nodes, one above: "
        "the package needs minutes per scenario at 10,000)",
    )
    parser.add_argument(
        "--baseline-idle-minutes",
        type=float,
        default=120.0,
        help="idle time over which the baseline's maintenance is counted (default 120)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "1000,10000")).split(",")]
    seeds = list(range(1, 1 + (args.seeds or (2 if args.quick else 5))))
    lookups = args.lookups or (50 if args.quick else 200)
    spec = "1000,10000" if args.baseline_sizes is None else args.baseline_sizes
    baseline_sizes = {int(s) for s in spec.split(",") if s}
    log = sys.stderr
    scenarios: list[dict[str, Any]] = []
    notes: list[str] = []

    def report(complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "dht",
            "complete": complete,
            "scenarios": scenarios,
            "targets": check_targets(scenarios) if scenarios else {},
            "notes": notes,
            "params": {
                "k": K,
                "alpha": DhtConfig().alpha,
                "lookups_per_seed": lookups,
                "seeds": seeds,
            },
            "environment": {
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "seed_derivation": "Simulator(seed); node identities from sim.child_rng('node', i)",
            },
        }

    def save(complete: bool) -> None:
        # Written after every stage too: a long run's figures survive an interruption.
        if args.json and args.json != "-":
            with open(args.json, "w") as f:
                f.write(json.dumps(report(complete), indent=2) + "\n")

    for n in sizes:
        print(f"starling dht, {n} nodes, seeds {seeds}", file=log)
        ours = run_size(n, seeds, lookups, log)
        for entry in ours.values():
            entry["baseline"] = None
            scenarios.append(entry)
        save(complete=False)
        theirs = None
        if n in baseline_sizes:
            print(f"kademlia package, {n} nodes", file=log)
            count = args.baseline_seeds or (len(seeds) if n <= 2000 else 1)
            if count < len(seeds):
                notes.append(f"kademlia baseline at {n} nodes on {count} of {len(seeds)} seeds")
            try:
                theirs = baseline(n, seeds[:count], lookups, log, args.baseline_idle_minutes)
            except Exception as exc:  # the baseline failing must not hide our figures
                notes.append(f"kademlia baseline at {n} nodes failed: {exc!r}")
                theirs = None
        else:
            notes.append(f"kademlia baseline not run at {n} nodes (see --baseline-sizes)")
        for name, entry in ours.items():
            entry["baseline"] = theirs.get(name) if theirs else None
        save(complete=False)
    final = report(complete=True)
    if args.json == "-":
        print(json.dumps(final, indent=2))
    else:
        save(complete=True)
    for name, check in final["targets"].items():
        state = "met" if check["met"] else "MISSED"
        print(f"target {name:<32} {check['value']!s:>24} ({check['target']}): {state}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
