"""``python -m bench gossip``: Starling's gossip beside naive push, GossipSub v1.1 and py-libp2p.

Simulator side (``bench/gossip_models.py`` holds the harness and the baselines):
per network size and seed, one network with one-way link delays uniform
10-50 ms, every node holding sessions with about 24 random members; the
scenarios ``steady`` (no crash), ``crash20``, ``crash50`` and ``crash80`` (that
fraction of nodes crash at once, their neighbours notice 20-30 s later, and
messages are published at once; survivors left with fewer than 4 sessions meet
members through presence records, as nodes do). The same harness runs Starling's sans-IO
core (``proto/gossip.py``, through :class:`StarlingSimCore`), the naive
"push once to 6 random peers" and the GossipSub v1.1 model, on the same
networks, workloads and seeds.

Real-socket side: 20 Starling nodes on loopback, in one process, each dialling
3 random others, one topic, the same D; messages of 200 B and 16 KiB from
random nodes; latency from ``publish()`` to each other node's delivery, and
full copies received per delivery. Beside it, py-libp2p's gossipsub on the
same topology shape (``bench/gossip_libp2p_worker.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from typing import Any

from bench import gossip_libp2p_worker, gossip_models
from bench.gossip_models import HarnessParams, NodeSetup, message_index
from starling.proto.gossip import (
    IHAVE,
    IWANT,
    Delivered,
    GossipConfig,
    GossipNode,
    _publish_body,
    decode_message,
    message_id,
    topic_id,
)
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID

TOPIC = topic_id(MAIN_NETWORK_ID, hashlib.sha256(b"bench community").digest())

NOTES = {
    "coverage_by_push": (
        "fraction of the online members (publisher excluded) reached by the publisher's "
        "dissemination wave: every link of the path was an eager PUBLISH, or a pull asked "
        "for because of an announcement (IHAVE) the announcer sent on receiving the message "
        "in that wave, asked at once or when the short wait for an eager copy ran out; "
        "never heartbeat gossip (IHAVE sent at a heartbeat), a request retried at a "
        "heartbeat, anti-entropy or a catch-up. Baselines: eager copies only (their pulls "
        "follow heartbeat gossip)."
    ),
    "coverage_by_eager_push": (
        "the same, but every link an eager PUBLISH: no pull at all (pure eager push)"
    ),
    "coverage_after_two_heartbeats": (
        "mean over messages of the fraction of online members holding the message 2 s "
        "(two heartbeats) after it was published, by any path"
    ),
    "copies_per_delivery": "full copies received (duplicates included) / first receipts",
    "hops_max": "longest path (links) of a first receipt, pulls included",
}

TARGETS = {
    "coverage": 1.0,
    "latency_ms_p99_1000": 300.0,
    "copies_per_delivery_16384": 1.5,
    "copies_per_delivery_200": 3.0,
    "coverage_by_push_crash50": 0.99,
    "coverage_after_two_heartbeats_crash50": 1.0,
}


def _publish_raw(frame: bytes) -> bytes | None:
    """The signed message inside a PUBLISH frame (``{0: 10, 1: bytes, ? 3: hops}``), else None."""
    fast = _publish_body(frame)
    return None if fast is None else fast[0]


class _Shared:
    """What the cores of one run share: message IDs to benchmark indices, payload sizes."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.index_of: dict[bytes, int] = {}
        self.sizes = sorted(sizes)
        self._keys: dict[int, PrivateKey] = {}
        # The dissemination wave (measurement only): (announcer, receiver, message) of
        # every IHAVE sent on receipt of a message, (requester, announcer, message) of
        # every IWANT sent on receipt of an IHAVE or when a deferred pull came due;
        # never those sent at a heartbeat.
        self.wave_ihave: set[tuple[int, int, int]] = set()
        self.wave_iwant: set[tuple[int, int, int]] = set()

    def key(self, node: int) -> PrivateKey:
        """Node ``node``'s identity key (derived from its index: any core can name any)."""
        k = self._keys.get(node)
        if k is None:
            k = self._keys[node] = PrivateKey(hashlib.sha256(b"bench gossip %d" % node).digest())
        return k

    def peer_id(self, node: int) -> bytes:
        return self.key(node).peer_id.raw

    def payload_size(self, frame_len: int) -> int:
        # A PUBLISH frame carries exactly one payload of the workload's sizes plus the
        # envelope (~150 bytes): the largest size not above the frame's length is it.
        return max((s for s in self.sizes if s <= frame_len), default=0)


class StarlingSimCore:
    """Starling's ``GossipNode`` in the harness: peers are simulator addresses.

    Measurement only, nothing the protocol sees: every PUBLISH frame received
    is a full copy (``probe.received``), every PUBLISH frame sent carries one
    payload (``probe.sent_payload``), and a delivery's hop count is the
    sender's plus one. A delivery is **by push** (part of the publisher's
    dissemination wave) when the sender was reached by the wave and either
    pushed the body eagerly, or announced the ID on receipt (not at a
    heartbeat) and this node pulled it at once or when its short wait for
    the eager copy ran out (not at a heartbeat retry, not in a catch-up); it
    is **by eager push** when every link was an eager PUBLISH.
    """

    def __init__(self, setup: NodeSetup, shared: _Shared, config: GossipConfig) -> None:
        self.setup = setup
        self.me = setup.index
        self.shared = shared
        self.index_of = setup.topology.index_of
        rng = setup.rng
        self.core = GossipNode(
            shared.key(self.me), MAIN_NETWORK_ID, rng.randbytes, setup.now, config
        )
        self.core.subscribe(TOPIC, setup.now)
        for peer in setup.peers:
            # The session authenticated the peer: its peer ID is known.
            peer_id = shared.peer_id(self.index_of[peer])
            self.core.add_peer(peer, setup.now, outbound=peer in setup.outbound, peer_id=peer_id)
        self._heartbeat_context = False  # what datagrams_to_send flushes came from one

    # -- the simulator's Core interface -------------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self._heartbeat_context = False
        raw = _publish_raw(data)
        if raw is None:
            self.core.receive(addr, data, now)
            self._events(now)
            return
        mid = message_id(raw)
        pulled = mid in self.core._wants  # an answer to our IWANT (measurement only)
        duplicates = self.core.stats["publish_rx_duplicate"]
        self.core.receive(addr, data, now)
        msg = self.shared.index_of.get(mid)
        if self.core.stats["publish_rx_duplicate"] != duplicates and msg is not None:
            # A copy we already had still counts, and may be the first to have come
            # along pushes only (the first one came by pull).
            probe = self.setup.probe
            sender = self.index_of[addr]
            origin = sender == probe.messages[msg][0]
            pushed = not pulled and (origin or bool(probe.push_reached[msg][sender]))
            eager = not pulled and (origin or bool(probe.eager_reached[msg][sender]))
            probe.received(self.me, msg, now, -1, pushed, eager)
        self._events(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        out = []
        probe = self.setup.probe
        wave = not self._heartbeat_context
        for peer, frame in self.core.frames_to_send(now):
            if _publish_body(frame) is not None:
                probe.sent_payload(self.shared.payload_size(len(frame)))
            elif wave:
                self._note_wave(frame, self.index_of[peer])
            out.append((frame, peer))
        return out

    def _note_wave(self, frame: bytes, peer: int) -> None:
        kind, fields = decode_message(frame)
        if kind == IHAVE:
            table = self.shared.wave_ihave
        elif kind == IWANT:
            table = self.shared.wave_iwant
        else:
            return
        assert fields is not None
        index_of = self.shared.index_of
        for mid in fields["ids"]:  # type: ignore[union-attr]
            msg = index_of.get(mid)  # type: ignore[call-overload]
            if msg is not None:
                table.add((self.me, peer, msg))

    def get_timer(self) -> float | None:
        return self.core.get_timer()

    def handle_timer(self, now: float) -> None:
        beats = self.core.stats["heartbeats"]
        self.core.handle_timer(now)
        # A heartbeat's IHAVEs and retried IWANTs are not part of any wave; a timer
        # that only fired deferred pulls is.
        self._heartbeat_context = self.core.stats["heartbeats"] != beats
        self._events(now)

    # -- the harness's calls ------------------------------------------------------------

    def publish(self, payload: bytes, now: float) -> None:
        self._heartbeat_context = False
        mid = self.core.publish(TOPIC, payload, now)
        self.shared.index_of[mid] = message_index(payload)

    def peer_down(self, peer: Any, now: float) -> None:
        self.core.remove_peer(peer, now)

    def peer_up(self, peer: Any, now: float, outbound: bool) -> None:
        # A new session, as node/gossip.py opens it: the stream, then a catch-up from
        # the beginning (the two never met) [GSP-R60].
        self._heartbeat_context = False
        self.core.add_peer(
            peer, now, outbound=outbound, peer_id=self.shared.peer_id(self.index_of[peer])
        )
        self.core.catch_up(peer, TOPIC, 0, now)
        self._events(now)

    def peer_suspect(self, peer: Any, now: float) -> None:
        # What node/gossip.py does when the session reports itself suspect [GSP-R47].
        self._heartbeat_context = False
        self.core.set_peer_suspect(peer, True, now)
        self._events(now)

    def mesh_degree(self) -> int:
        return len(self.core.mesh(TOPIC))

    def _events(self, now: float) -> None:
        probe = self.setup.probe
        while (event := self.core.next_event()) is not None:
            if not isinstance(event, Delivered):
                continue
            msg = message_index(event.message.data)
            sender = self.index_of[event.from_peer]
            publisher = probe.messages[msg][0]
            if sender == publisher:
                hops, reached, eager_reached = 1, True, True
            else:
                before = probe.hops[msg][sender]
                hops = before + 1 if before >= 0 else -1
                reached = bool(probe.push_reached[msg][sender])
                eager_reached = bool(probe.eager_reached[msg][sender])
            eager = event.via == "push" and eager_reached
            pushed = reached and (
                event.via == "push"
                or (
                    event.via == "pull"
                    and (self.me, sender, msg) in self.shared.wave_iwant
                    and (sender, self.me, msg) in self.shared.wave_ihave
                )
            )
            probe.received(self.me, msg, now, hops, pushed, eager)


def starling_factory(config: GossipConfig | None = None, params: HarnessParams | None = None):  # type: ignore[no-untyped-def]
    """A harness core factory for Starling's gossip (one shared table per run)."""
    config = config or GossipConfig()
    sizes = (params or HarnessParams()).sizes
    # One table per run, told apart by the run's probe itself (not its id(), which a
    # later run's probe may reuse once the earlier one is freed: a stale table would
    # count the earlier run's announcements as this one's wave).
    current: list[tuple[Any, _Shared]] = []

    def factory(setup: NodeSetup) -> StarlingSimCore:
        if not current or current[0][0] is not setup.probe:
            current[:] = [(setup.probe, _Shared(sizes))]
        return StarlingSimCore(setup, current[0][1], config)

    return factory


# ----------------------------------------------------------------------------- real sockets


async def _real_starling(params: dict[str, Any]) -> dict[str, Any]:
    from starling.node.gossip import GossipService
    from starling.node.session import Node, NodeConfig

    n, dial, seed = params["nodes"], params["dial"], params["seed"]
    rng = random.Random(seed)
    config = GossipConfig(
        d=params["degree"], d_low=params["degree_low"], d_high=params["degree_high"]
    )
    nodes = [await Node.start(PrivateKey(rng.randbytes(32)), NodeConfig()) for _ in range(n)]
    services = [GossipService(node, config) for node in nodes]
    loop = asyncio.get_running_loop()
    published: dict[bytes, tuple[float, int, int]] = {}  # id -> (time, publisher, size)
    latencies: list[float] = []
    firsts: dict[int, int] = {}
    copies: dict[int, int] = {}
    delivered: set[tuple[bytes, int]] = set()

    def on_event(i: int, event: object) -> None:
        if isinstance(event, Delivered) and event.message_id in published:
            t0, _, size = published[event.message_id]
            latencies.append((loop.time() - t0) * 1000.0)
            firsts[size] = firsts.get(size, 0) + 1
            delivered.add((event.message_id, i))

    def counting(i: int, receive: Any) -> Any:
        def wrapped(peer: Any, frame: bytes, now: float) -> None:
            raw = _publish_raw(frame)
            if raw is not None:
                size = 16384 if len(raw) > 16384 else 200
                copies[size] = copies.get(size, 0) + 1
            receive(peer, frame, now)

        return wrapped

    try:
        for i, svc in enumerate(services):
            svc.add_listener(lambda e, i=i: on_event(i, e))
            svc.core.receive = counting(i, svc.core.receive)  # type: ignore[method-assign]
            svc.subscribe(TOPIC)
        pairs: set[tuple[int, int]] = set()
        for i in range(n):
            for j in rng.sample([x for x in range(n) if x != i], dial):
                if (i, j) not in pairs and (j, i) not in pairs:
                    pairs.add((i, j))
        await asyncio.gather(
            *(nodes[i].connect(nodes[j].addresses[0], peer_id=nodes[j].peer_id) for i, j in pairs)
        )
        await asyncio.sleep(params["settle_s"])
        sizes = params["sizes"]
        start = loop.time()
        for k in range(params["messages"]):
            await asyncio.sleep(max(0.0, start + k * params["interval_s"] - loop.time()))
            size = sizes[k % len(sizes)]
            p = rng.randrange(n)
            published_at = loop.time()
            mid = services[p].publish(TOPIC, os.urandom(size))
            published[mid] = (published_at, p, size)
        await asyncio.sleep(params["drain_s"])
    finally:
        for svc in services:
            await svc.close()
        for node in nodes:
            await node.close()
    latencies.sort()
    expected = len(published) * (n - 1)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, max(0, math.ceil(q * len(latencies)) - 1))]

    return {
        "latency_ms_p50": pct(0.50),
        "latency_ms_p99": pct(0.99),
        "copies_per_delivery": {
            str(s): copies.get(s, 0) / firsts[s] if firsts.get(s) else None for s in sizes
        },
        "coverage": len(delivered) / expected if expected else None,
        "params": params,
    }


def real(quick: bool) -> dict[str, Any]:
    params = dict(gossip_libp2p_worker.QUICK if quick else gossip_libp2p_worker.DEFAULTS)
    return {
        "starling": asyncio.run(_real_starling(params)),
        "py_libp2p": gossip_libp2p_worker.run(params),
    }


# ----------------------------------------------------------------------------- the report


def check_targets(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in scenarios:
        n = s["nodes"]
        tag = f"{s['name']}_{n}"
        out[f"coverage_{tag}"] = {
            "value": s["coverage"],
            "target": ">= 1.0",
            "met": s["coverage"] is not None and s["coverage"] >= 1.0,
        }
        hop_limit = math.ceil(math.log(n, 5)) + 2
        if s["name"] == "steady":
            out[f"hops_max_{tag}"] = {
                "value": s["hops_max"],
                "target": f"<= {hop_limit}",
                "met": s["hops_max"] is not None and s["hops_max"] <= hop_limit,
            }
            for size, limit in (("16384", 1.5), ("200", 3.0)):
                v = s["copies_per_delivery"].get(size)
                out[f"copies_per_delivery_{size}_{tag}"] = {
                    "value": v,
                    "target": f"<= {limit}",
                    "met": v is not None and v <= limit,
                }
            if n == 1000:
                v = s["latency_ms_p99"]
                out[f"latency_ms_p99_{tag}"] = {
                    "value": v,
                    "target": "<= 300",
                    "met": v is not None and v <= 300,
                }
        if s["name"] == "crash50":
            v = s["coverage_by_push"]
            out[f"coverage_by_push_{tag}"] = {
                "value": v,
                "target": ">= 0.99",
                "met": v is not None and v >= 0.99,
            }
            v = s["coverage_after_two_heartbeats"]
            out[f"coverage_after_two_heartbeats_{tag}"] = {
                "value": v,
                "target": ">= 1.0",
                "met": v is not None and v >= 1.0,
            }
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench gossip", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--quick", action="store_true", help="1,000 nodes, 1 seed, short phases")
    parser.add_argument("--sizes", default=None, help="comma-separated network sizes")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per size (default 5)")
    parser.add_argument("--no-baselines", action="store_true", help="Starling only")
    parser.add_argument("--no-real", action="store_true", help="skip the real-socket part")
    parser.add_argument(
        "--jobs", type=int, default=1, help="simulator runs in parallel processes (same figures)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "1000,10000")).split(",")]
    seeds = list(range(1, 1 + (args.seeds or (1 if args.quick else 5))))
    params = HarnessParams.quick() if args.quick and min(sizes) < 1000 else HarnessParams()
    log = sys.stderr
    scenarios: list[dict[str, Any]] = []
    wall0 = time.perf_counter()
    for n in sizes:
        print(f"starling gossip, {n} nodes, seeds {seeds}", file=log, flush=True)
        ours = gossip_models.run_model(
            starling_factory(GossipConfig(), params),
            n,
            seeds,
            params=params,
            log=log,
            label="starling",
            jobs=args.jobs,
        )
        theirs = (
            {}
            if args.no_baselines
            else gossip_models.run_baselines(n, seeds, params=params, log=log, jobs=args.jobs)
        )
        for k, entry in enumerate(ours):
            entry["baselines"] = {name: runs[k] for name, runs in theirs.items()}
            scenarios.append(entry)
    report: dict[str, Any] = {
        "benchmark": "gossip",
        "notes": NOTES,
        "scenarios": scenarios,
        "real": None if args.no_real else real(args.quick),
        "targets": check_targets(scenarios),
        "params": {
            "harness": params.as_dict(),
            "starling": {
                k: getattr(GossipConfig(), k)
                for k in (
                    "d",
                    "d_low",
                    "d_high",
                    "d_lazy",
                    "heartbeat",
                    "eager_degree",
                    "eager_degree_large",
                    "eager_max",
                    "eager_min",
                    "lazy_fanout",
                    "pull_delay",
                    "flood_publish",
                    "author_relay",
                    "quiet_hops",
                    "silent_hops",
                )
            },
            "gossipsub": gossip_models.GOSSIPSUB_V11.as_dict(),
            "seeds": seeds,
        },
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "wall_s": time.perf_counter() - wall0,
        },
    }
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    for name, check in report["targets"].items():
        state = "met" if check["met"] else "MISSED"
        print(f"target {name:<44} {check['value']!s:>24} ({check['target']}): {state}", file=log)
    if report["real"]:
        for side, figures in report["real"].items():
            keys = ("latency_ms_p50", "latency_ms_p99", "copies_per_delivery", "coverage")
            print(f"real {side:<10} " + ", ".join(f"{k} {figures.get(k)}" for k in keys), file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
