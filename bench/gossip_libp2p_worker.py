"""The real-socket peer of the gossip benchmark: py-libp2p's gossipsub on a loopback topology.

Two sides in one file:

* the worker (``VENV/bin/python bench/gossip_libp2p_worker.py --params JSON``),
  run by the python of the py-libp2p venv (``~/.cache/starling-bench/venv-libp2p``,
  made by ``bench.session.ensure_libp2p``). It imports only the standard
  library, ``_common`` beside it, trio and libp2p, and prints one JSON line;
* :func:`run`, called from Starling's venv, which makes or reuses that venv,
  starts the worker and returns its result (or a result with null figures and
  the reason in ``error``).

What the worker does: ``nodes`` (20) py-libp2p hosts in one process and one
trio loop, each a TCP listener on 127.0.0.1 with Noise and yamux (libp2p's
defaults), each with a ``Pubsub`` and a ``GossipSub`` router (``/meshsub/1.1.0``,
D = 6, D_lo = 4, D_hi = 12, heartbeat 1 s, mcache 5 windows / gossip 3,
PX on prune with a 60 s backoff; everything else py-libp2p's default). Every
node subscribes to one topic, then dials ``dial`` random others (no pair twice:
about 2 x dial sessions each). After the meshes settle, ``messages`` messages
(sizes alternating between 200 B and 16 KiB) are published from random nodes,
one every ``interval`` seconds on a fixed schedule: 1 s by default, which keeps
the one process far from saturation (at 0.2 s it saturates and queueing sets
the latency; py-libp2p also drops more than 10 messages per second from one
forwarder on a topic).

Figures: end-to-end latency from ``publish()`` to each other node's
subscription yielding the message (one clock: one process), nearest-rank
p50/p99; copies per delivery = full messages arriving in RPCs from other peers
(every ``Pubsub.push_msg`` call for a received message, counted before the
seen-cache drops duplicates) / first deliveries, per size; coverage = delivered
(message, node) pairs / expected pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULTS: dict[str, Any] = {
    "nodes": 20,
    "dial": 3,
    "degree": 6,
    "degree_low": 4,
    "degree_high": 12,
    "heartbeat_s": 1,
    "messages": 60,
    "sizes": [200, 16384],
    # one message a second: 20 hosts share one process, and one message costs ~0.15 s of
    # its CPU (~110 RPCs through Noise, yamux, protobuf and a signature check each);
    # at 0.2 s the process saturates and queueing, not gossip, sets the latency
    "interval_s": 1.0,
    "settle_s": 5.0,
    "drain_s": 5.0,
    "seed": 1,
}
QUICK: dict[str, Any] = {
    **DEFAULTS,
    "nodes": 8,
    "messages": 10,
    "interval_s": 0.3,
    "settle_s": 3.0,
    "drain_s": 3.0,
}
TOPIC = "starling-bench-gossip"
FIGURES = ("latency_ms_p50", "latency_ms_p99", "copies_per_delivery", "coverage")


# ----------------------------------------------------------------------------- parent side


def run(
    params: dict[str, Any] | None = None,
    *,
    allow_install: bool = True,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run the worker in the py-libp2p venv; its JSON result, or null figures and ``error``."""
    merged = {**DEFAULTS, **(params or {})}
    failed: dict[str, Any] = dict.fromkeys(FIGURES)
    failed["params"] = merged
    try:
        from bench.session import ensure_libp2p
    except ImportError as exc:  # pragma: no cover - bench.session ships beside this file
        return {**failed, "error": f"bench.session unavailable: {exc}"}
    python, how = ensure_libp2p(allow_install)
    if python is None:
        return {**failed, "error": how}
    try:
        done = subprocess.run(
            [python, str(HERE / "gossip_libp2p_worker.py"), "--params", json.dumps(merged)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"py-libp2p gossip worker timed out after {timeout:g} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(done.stderr.split())[-600:]
        return {**failed, "error": f"worker exited {done.returncode} without a result: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if done.returncode != 0 or "error" in result:
        why = result.get("error", f"worker exited {done.returncode}")
        tail = " ".join(done.stderr.split())[-600:]
        return {**failed, "error": why, "stderr_tail": tail}
    result["venv"] = how
    return result


# ----------------------------------------------------------------------------- worker side


async def _worker(params: dict[str, Any]) -> dict[str, Any]:
    import random
    import time
    from contextlib import AsyncExitStack
    from importlib.metadata import version

    import multiaddr
    import trio
    from _common import LOOPBACK, percentile  # type: ignore[import-not-found]
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    n = params["nodes"]
    rng = random.Random(params["seed"])
    listen = [multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/0")]
    hosts = [
        new_host(
            key_pair=create_new_key_pair(rng.randbytes(32)),
            muxer_opt=create_yamux_muxer_option(),
            listen_addrs=listen,
        )
        for _ in range(n)
    ]
    routers = [
        GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=params["degree"],
            degree_low=params["degree_low"],
            degree_high=params["degree_high"],
            time_to_live=60,
            gossip_window=3,
            gossip_history=5,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=params["heartbeat_s"],
            do_px=True,
            prune_back_off=60,
        )
        for _ in range(n)
    ]
    pubsubs = [Pubsub(h, r) for h, r in zip(hosts, routers, strict=True)]
    ids = [h.get_id() for h in hosts]

    # What is measured: per message, its size and publish time; per (message, node),
    # the first delivery time; per message, the full copies received from other peers.
    messages: list[tuple[int, int, float]] = []  # (publisher, size, perf_counter at publish)
    first: dict[tuple[int, int], float] = {}
    copies: list[int] = []

    def counting(i: int, pubsub: Any) -> Any:
        original = pubsub.push_msg
        me = ids[i]

        async def push_msg(forwarder: Any, msg: Any) -> None:
            if forwarder != me and len(msg.data) >= 4:
                m = int.from_bytes(msg.data[:4], "big")
                if m < len(copies):
                    copies[m] += 1
            await original(forwarder, msg)

        return push_msg

    for i, pubsub in enumerate(pubsubs):
        pubsub.push_msg = counting(i, pubsub)

    async def reader(i: int, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            now = time.perf_counter()
            m = int.from_bytes(msg.data[:4], "big")
            if m < len(messages) and messages[m][0] != i:
                first.setdefault((m, i), now)

    edges: set[tuple[int, int]] = set()
    for i in range(n):
        others = [j for j in range(n) if j != i and (min(i, j), max(i, j)) not in edges]
        for j in rng.sample(others, min(params["dial"], len(others))):
            edges.add((min(i, j), max(i, j)))
    degree = [0] * n
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    teardown_error = None
    measured = False
    try:
        async with AsyncExitStack() as stack:
            for host in hosts:
                await stack.enter_async_context(host.run(listen_addrs=listen))
            for pubsub, router in zip(pubsubs, routers, strict=True):
                await stack.enter_async_context(background_trio_service(pubsub))
                await stack.enter_async_context(background_trio_service(router))
            for pubsub in pubsubs:
                await pubsub.wait_until_ready()
            subscriptions = [await pubsub.subscribe(TOPIC) for pubsub in pubsubs]
            phases["start"] = time.perf_counter() - t0
            nursery = await stack.enter_async_context(trio.open_nursery())
            for i, sub in enumerate(subscriptions):
                nursery.start_soon(reader, i, sub)
            async with trio.open_nursery() as dials:  # concurrently: one dial takes ~0.5 s
                for a, b in sorted(edges):
                    # the dialler is chosen at random; the edge is one connection either way
                    src, dst = (a, b) if rng.random() < 0.5 else (b, a)
                    info = PeerInfo(ids[dst], hosts[dst].get_addrs())
                    dials.start_soon(hosts[src].connect, info)
            phases["connect"] = time.perf_counter() - t0 - phases["start"]
            await trio.sleep(params["settle_s"])
            mesh_before = [len(r.mesh.get(TOPIC, ())) for r in routers]

            sizes = params["sizes"]
            start = time.perf_counter()
            first_publish = trio.current_time()
            for m in range(params["messages"]):
                size = sizes[m % len(sizes)]
                publisher = rng.randrange(n)
                data = m.to_bytes(4, "big") + rng.randbytes(size - 4)
                await trio.sleep_until(first_publish + m * params["interval_s"])
                copies.append(0)
                messages.append((publisher, size, time.perf_counter()))
                await pubsubs[publisher].publish(TOPIC, data)
            expected = len(messages) * (n - 1)
            deadline = trio.current_time() + params["drain_s"]
            while len(first) < expected and trio.current_time() < deadline:
                await trio.sleep(0.05)
            elapsed = time.perf_counter() - start
            mesh_after = [len(r.mesh.get(TOPIC, ())) for r in routers]
            nursery.cancel_scope.cancel()
            measured = True
            t_stop = time.perf_counter()
    except Exception as exc:  # py-libp2p's teardown can fail under load: keep the figures
        if not measured:
            raise
        teardown_error = f"{type(exc).__name__}: {exc}"[:300]
    phases["stop"] = time.perf_counter() - t_stop

    latencies = sorted((t - messages[m][2]) * 1000.0 for (m, _), t in first.items())
    copies_per_delivery = {}
    latency_by_size = {}
    for size in sizes:
        lat = sorted(
            (t - messages[m][2]) * 1000.0 for (m, _), t in first.items() if messages[m][1] == size
        )
        latency_by_size[str(size)] = {
            "p50": percentile(lat, 50) if lat else None,
            "p99": percentile(lat, 99) if lat else None,
        }
        ms = [m for m, (_, s, _) in enumerate(messages) if s == size]
        delivered = sum(1 for (m, _) in first if messages[m][1] == size)
        received = sum(copies[m] for m in ms)
        copies_per_delivery[str(size)] = received / delivered if delivered else None
    return {
        "stack": "py-libp2p gossipsub",
        "libp2p_version": version("libp2p"),
        "nodes": n,
        "messages": len(messages),
        "latency_ms_p50": percentile(latencies, 50) if latencies else None,
        "latency_ms_p99": percentile(latencies, 99) if latencies else None,
        "latency_ms_max": latencies[-1] if latencies else None,
        "latency_ms_by_size": latency_by_size,
        "copies_per_delivery": copies_per_delivery,
        "coverage": len(first) / expected if expected else None,
        "nodes_with_all": sum(
            1
            for i in range(n)
            if all((m, i) in first for m in range(len(messages)) if messages[m][0] != i)
        ),
        "sessions_per_node": {"min": min(degree), "mean": 2 * len(edges) / n, "max": max(degree)},
        "mesh_degree_before": {"min": min(mesh_before), "max": max(mesh_before)},
        "mesh_degree_after": {"min": min(mesh_after), "max": max(mesh_after)},
        "elapsed_s": elapsed,
        "phases_s": phases,
        "teardown_error": teardown_error,
        "config": {
            **params,
            "protocol": str(PROTOCOL_ID_V11),
            "transport": "TCP 127.0.0.1 + Noise + yamux (py-libp2p defaults)",
            "gossip_window": 3,
            "gossip_history": 5,
            "do_px": True,
            "prune_back_off": 60,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gossip_libp2p_worker.py")
    parser.add_argument("--params", default="{}", help="JSON object overriding the defaults")
    parser.add_argument("--quick", action="store_true", help="8 nodes, 10 messages")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this core")
    args = parser.parse_args(argv)
    params = {**(QUICK if args.quick else DEFAULTS), **json.loads(args.params)}
    sys.path.insert(0, str(HERE))
    import logging
    import traceback

    import trio
    from _common import emit, pin_cpu  # type: ignore[import-not-found]

    logging.disable(logging.WARNING)  # py-libp2p logs rate-limit warnings at WARNING
    pin_cpu(args.cpu)
    try:
        emit(trio.run(_worker, params))
        return 0
    except BaseException as exc:
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}", "pid": os.getpid()})
        return 1


if __name__ == "__main__":
    sys.exit(main())
