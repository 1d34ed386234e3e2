"""NAT benchmark: every pairing of NAT behaviours through the real Linux NAT lab.

``python -m bench nat --json PATH [--delay MS] [--pairs a+b,...] [--parallel N] [--no-hosted]``

Needs root (network namespaces and nftables); without it the command says why and
exits 2. One lab (``tests/lab/``) holds a relay, which is also the DHT bootstrap, and
two sites per NAT behaviour; each pairing of ``tests/lab/matrix.py`` is one scenario
run by ``MatrixLab.run_pair``: the behaviour check of both sites, two fresh
``tests/peers/nat_node.py`` processes, B reachable only through its relay, A dialling
B by peer ID. A second stage (``hosted``, skipped with ``--no-hosted``) starts a
``node/host.py`` Host on every site with nothing but the seed's bootstrap string:
each one's reachability verdict and how long it took, then every pair again, dialled
by peer ID alone through the DHT. What each figure means: ``bench/README.md``.

Exit status: 0 when every target is met, 1 when one is not, 2 when the lab cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .session import environment

REPO = Path(__file__).resolve().parent.parent
DIRECT_BUDGET_MS = 1000.0  # target: first contact to the direct path <= 1 s + 3 round trips
DIRECT_ROUND_TRIPS = 3


def _lab() -> Any:
    """The lab modules (tests/lab/, standard library only), imported from the repository."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import lab.matrix
    import lab.netlab

    return lab


def direct_limit_ms(pair: dict[str, Any]) -> float | None:
    """1 s plus 3 round trips of the relayed session (the punch is coordinated over it)."""
    rtt = pair.get("rtt_ms_relay")
    return None if rtt is None else round(DIRECT_BUDGET_MS + DIRECT_ROUND_TRIPS * rtt, 1)


def targets(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    connected = [p for p in pairs if p["outcome"] != "failed"]
    missing = [f"{p['a']}+{p['b']}" for p in pairs if p["expected"] == "direct" != p["outcome"]]
    timed = []
    for p in pairs:
        if p["outcome"] == "direct":
            limit = p["time_to_direct_limit_ms"]
            timed.append((p["time_to_direct_ms"], limit, f"{p['a']}+{p['b']}"))
    late = [name for took, limit, name in timed if limit is None or took is None or took > limit]
    worst = max(timed, key=lambda t: (t[0] or 0) - (t[1] or 0), default=None)
    return {
        "all_connect": {
            "connected": len(connected),
            "pairs": len(pairs),
            "target": "100%",
            "met": len(connected) == len(pairs),
        },
        "direct_where_expected": {
            "direct": sum(p["expected"] == "direct" == p["outcome"] for p in pairs),
            "expected_direct": sum(p["expected"] == "direct" for p in pairs),
            "missing": missing,
            "met": not missing,
        },
        "time_to_direct": {
            "target": f"<= {DIRECT_BUDGET_MS:g} ms + {DIRECT_ROUND_TRIPS} x rtt_ms_relay",
            "worst_pair": None if worst is None else worst[2],
            "worst_ms": None if worst is None else worst[0],
            "worst_limit_ms": None if worst is None else worst[1],
            "late": late,
            "met": not late,
        },
    }


def run_hosted(lab: Any, matrix: Any, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stage 2: ``HostedMatrix`` (node/host.py on every site, started with only the seed's
    bootstrap string): each host's verdict and how long it took, then every pair again,
    A dialling B by peer ID alone (record from the DHT)."""
    hosts = lab.matrix.HostedMatrix(matrix)
    try:
        status = hosts.settle()
        connects = [hosts.connect(a, b) for a, b in pairs]
    finally:
        hosts.close()
    verdicts = {
        label: {
            "reachability": s["reachability"],
            "forced": s["forced"],
            "dht_mode": s["dht"]["mode"],
            "nat_mapping": s["nat_mapping"],
            "external": s["external"],
            "relays_held": len(s["relay"]["reservations_held"]),
            "verdict_ms": s["verdict_ms"],
        }
        for label, s in status.items()
    }
    decided = [v["verdict_ms"] for v in verdicts.values() if v["verdict_ms"] is not None]
    for c in connects:
        print(
            f"hosted {c['a']:>15} + {c['b']:<15} expected {c['expected']:<6} got "
            f"{c['outcome']:<6} first {c.get('first_path')} ttfb {c.get('time_to_first_byte_ms')}"
            " ms",
            file=sys.stderr,
        )
    keys = (
        "a", "b", "expected", "outcome", "reused", "first_path", "time_to_first_byte_ms",
        "rtt_ms_direct", "rtt_ms_relay", "history", "error",
    )  # fmt: skip
    return {
        "hosts": verdicts,
        "worst_verdict_ms": max(decided, default=None),
        "pairs": [{k: c.get(k) for k in keys} for c in connects],
        "connected": sum(c["outcome"] != "failed" for c in connects),
        "as_expected": sum(c["outcome"] == c["expected"] for c in connects),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench nat", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the JSON report here ('-' for stdout)")
    p.add_argument(
        "--delay",
        type=int,
        default=25,
        metavar="MS",
        help="one-way delay per link into the core: netem where the kernel has it, else the "
        "lab's userspace TUN delay (environment.delay says which)",
    )
    p.add_argument("--pairs", help="comma-separated subset, e.g. eim+symmetric (default: all)")
    p.add_argument(
        "--parallel", type=int, default=1, help="scenarios side by side (1: cleanest timings)"
    )
    p.add_argument(
        "--no-hosted",
        action="store_true",
        help="skip the second stage: hosts that decide their reachability and dial by peer ID",
    )
    args = p.parse_args(argv)

    lab = _lab()
    reason = lab.netlab.unavailable_reason()
    if reason is not None:
        print(f"bench nat needs root and nftables (the NAT lab): {reason}", file=sys.stderr)
        return 2
    pairs = list(lab.matrix.PAIRS)
    if args.pairs:
        wanted = [tuple(name.split("+", 1)) for name in args.pairs.split(",")]
        unknown = [w for w in wanted if w not in pairs]
        if unknown:
            p.error(f"unknown pairs {unknown}; choose from {[f'{a}+{b}' for a, b in pairs]}")
        pairs = wanted

    started = time.monotonic()
    with lab.netlab.Lab(delay_ms=args.delay or None) as net:
        matrix = lab.matrix.MatrixLab(net)
        try:
            with ThreadPoolExecutor(max(1, args.parallel)) as pool:
                futures = [
                    pool.submit(matrix.run_pair, a, b, lab.matrix.PAIRS.index((a, b)))
                    for a, b in pairs
                ]
                results = [future.result() for future in futures]
            hosted = None if args.no_hosted else run_hosted(lab, matrix, pairs)
        finally:
            matrix.close()
        description = net.description()
    for result in results:
        result["time_to_direct_limit_ms"] = direct_limit_ms(result)
        print(
            f"{result['a']:>15} + {result['b']:<15} expected {result['expected']:<6} "
            f"got {result['outcome']:<6} ttfb {result['time_to_first_byte_ms']} ms, "
            f"direct after {result['time_to_direct_ms']} ms "
            f"(limit {result['time_to_direct_limit_ms']}), rtt relay {result['rtt_ms_relay']} "
            f"direct {result['rtt_ms_direct']} ms",
            file=sys.stderr,
        )
    report = {
        "benchmark": "nat",
        "pairs": results,
        "targets": targets(results),
        "hosted": hosted,
        "environment": {
            **environment(),
            "kernel": os.uname().release,
            "delay_ms": description["delay_ms"],
            "delay_requested_ms": description["delay_requested_ms"],
            "delay_note": description["delay_note"],
            "delay": {"ms": description["delay"]["ms"], "by": description["delay"]["by"]},
            "loss_pct": description["loss_pct"],
            "parallel": args.parallel,
            "lab": {"prefix": description["prefix"], "nodes": description["nodes"]},
            "duration_s": round(time.monotonic() - started, 1),
        },
    }
    text = json.dumps(report, indent=2, default=str)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text + "\n")
    met = all(t["met"] for t in report["targets"].values())
    print(
        "targets: "
        + ", ".join(
            f"{k} {'met' if v['met'] else 'NOT met'}" for k, v in report["targets"].items()
        ),
        file=sys.stderr,
    )
    return 0 if met else 1
