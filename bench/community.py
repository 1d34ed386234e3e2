"""Communities on loopback: catch-up, post-to-visible latency, channel pages, storage.

Run: ``python -m bench community [--json PATH] [--quick]``. Prints JSON.

* ``catchup_10k_s``: a member that was offline while 5 authors wrote 10,000
  messages connects to one that holds them; the time from the connect call until
  every entry is checked, applied and committed to its SQLite store (a real QUIC
  session on 127.0.0.1, real stores in a temporary directory; both members in this
  process). ``catchup_cpu_s`` and ``catchup_loop_thread_cpu_s`` say how much CPU it
  took: when the first is close to the wall time, the run had one core's worth.
  Five runs (``--catchup-runs``): each figure is their median, ``catchup_10k_s_min``
  the fastest, ``catchup_runs`` every run with the load average;
* ``post_to_visible_ms_p50`` / ``_p99``: 10 members on loopback in a full mesh;
  one posts (``Communities.post``: sign, fsync, publish) and the time until the
  message is in the channel view of *all* nine others, per post;
* ``view_page_ms``: a 100-message page (``Communities.page``) at the end of a
  100,000-message channel (``_middle``: from a cursor in the middle);
* ``db_bytes_per_message``: the catching-up member's database file after the
  catch-up, divided by the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starling.node.community import Communities, CommunityEvent, feed_record
from starling.node.gossip import GossipService
from starling.node.session import Node, NodeConfig
from starling.node.store import DB_FILE_NAME, Store
from starling.proto import community as com
from starling.proto.gossip import GossipConfig
from starling.proto.identity import PrivateKey
from starling.proto.sync import Replica

T0 = int(time.time() * 1000) - 3_600_000


def _key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(("bench-community/" + label).encode()).digest())


class _Member:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.identity = _key(name)
        self.data = root / name

    async def start(self) -> _Member:
        self.node = await Node.start(self.identity, NodeConfig())
        self.gossip = GossipService(self.node, GossipConfig())
        self.store = await Store.open(self.data)
        self.api = await Communities.open(self.node, self.gossip, self.store, self.identity)
        return self

    async def stop(self) -> None:
        await self.api.close()
        await self.gossip.close()
        await self.node.close()
        await self.store.close()


def _authority(authors: list[PrivateKey], extra: list[PrivateKey]) -> tuple[list[bytes], bytes]:
    root, owner = _key("root"), authors[0]
    entries = com.genesis(root, owner.public_key.raw, T0, "bench")
    chan = com.channel_add(owner, root.public_key.raw, [entries[-1].id], T0 + 1, "general")
    cap = com.make_capability(
        owner, root.public_key.raw, expires_ms=T0 + 10**10, nonce=b"\0" * 16, max_uses=1000
    )
    out = [*entries, chan]
    for member in [*authors[1:], *extra]:
        out.append(com.join(member, cap, [out[-1].id], T0 + 2))
    return [e.raw for e in out], chan.id


async def catchup(root: Path, messages: int, authors_n: int) -> dict[str, Any]:
    authors = [_key(f"author{i}") for i in range(authors_n)]
    server_m, client_m = _Member("server", root), _Member("client", root)
    authority, chan = _authority(authors, [server_m.identity, client_m.identity])
    community = _key("root").public_key.raw
    # The entries, written as the authors' devices would.
    writer_side = Replica(community)
    writer_side.take(authority, [], T0 + 10**7)
    feeds: list[bytes] = []
    per_author = messages // authors_n
    for i, author in enumerate(authors):
        w = writer_side.feeds.writer(author, bytes([i]) * 8)
        feeds += [
            w.post(chan, f"message {j} from author {i}", T0 + 1000 + j) for j in range(per_author)
        ]
    # Both stores hold the authority; the server also holds every feed entry.
    for m, with_feeds in ((server_m, True), (client_m, False)):
        store = await Store.open(m.data)
        await store.put_authority_entries(community, authority)
        await store.put_community(community, name="bench", role=com.Role.MEMBER)
        if with_feeds:
            replica = Replica(community)
            replica.take(authority, [], T0 + 10**7)
            intake = replica.take([], feeds, int(time.time() * 1000))
            records = [feed_record(replica, e) for e in intake.feeds]
            await store.put_feed_entries(community, records, fsync=False)
        await store.close()
    server = await server_m.start()
    client = await client_m.start()
    try:
        replica = client.api._replicas[community]
        assert sum(replica.feeds.lengths().values()) == 0
        start = time.perf_counter()
        cpu, main_cpu = time.process_time(), time.thread_time()
        await client.node.connect(server.node.addresses[0], peer_id=server.node.peer_id)
        while sum(replica.feeds.lengths().values()) < len(feeds):
            await asyncio.sleep(0.002)
        applied_s = time.perf_counter() - start
        while client.api._tasks:
            await asyncio.gather(*list(client.api._tasks))
        stored_s = time.perf_counter() - start
        cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
        page = await client.api.page(community_text(community), "general", limit=100)
        assert len(page) == 100
    finally:
        await client.stop()
        await server.stop()
    db_bytes = (client_m.data / DB_FILE_NAME).stat().st_size
    return {
        "catchup_10k_s": round(stored_s, 3),
        "catchup_applied_s": round(applied_s, 3),
        "catchup_messages": len(feeds),
        # Both members run in this process: CPU of all its threads (the verification pool
        # included) and of the event loop's thread, over the catch-up.
        "catchup_cpu_s": round(cpu, 3),
        "catchup_loop_thread_cpu_s": round(main_cpu, 3),
        "db_bytes_per_message": round(db_bytes / len(feeds), 1),
    }


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several catch-up runs: the median of each figure (wall time is noisy on a shared
    machine), the fastest run's wall time, and every run with the load average after it."""
    out: dict[str, Any] = {}
    for name, value in runs[0].items():
        if name == "catchup_messages":
            out[name] = value
        elif name != "load_average":
            out[name] = round(statistics.median(r[name] for r in runs), 3)
    out["catchup_10k_s_min"] = min(r["catchup_10k_s"] for r in runs)
    out["catchup_runs"] = runs
    return out


def community_text(key: bytes) -> str:
    return com.CommunityId(key).text()


async def post_to_visible(root: Path, members_n: int, posts: int) -> dict[str, Any]:
    members = [await _Member(f"m{i}", root).start() for i in range(members_n)]
    try:
        owner = members[0]
        cid = await owner.api.create("latency")
        await owner.api.add_channel(cid, "general")
        link = await owner.api.invite(cid, uses=members_n)
        for m in members[1:]:
            await m.api.join(link)
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if a.node.session_with(b.node.peer_id) is None:
                    await a.node.connect(b.node.addresses[0], peer_id=b.node.peer_id)
        await asyncio.sleep(1.5)  # meshes settle (GRAFT at the first heartbeats)
        seen: dict[bytes, list[float]] = {}

        def listener(event: CommunityEvent) -> None:
            if event.kind == "message_posted" and event.message is not None:
                seen.setdefault(event.message.message_id, []).append(time.perf_counter())

        for m in members:
            m.api.add_listener(listener)
        latencies = []
        for i in range(posts):
            poster = members[i % members_n]
            start = time.perf_counter()
            mid = await poster.api.post(cid, "general", f"post {i}")
            deadline = start + 10
            while len(seen.get(mid, ())) < members_n and time.perf_counter() < deadline:
                await asyncio.sleep(0.0005)
            times = seen.get(mid, [])
            if len(times) < members_n:
                raise RuntimeError(f"post {i} reached {len(times) - 1} of {members_n - 1}")
            latencies.append((max(times) - start) * 1000)
        latencies.sort()
        return {
            "post_to_visible_ms_p50": round(statistics.median(latencies), 2),
            "post_to_visible_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
            "post_to_visible_members": members_n,
            "post_to_visible_posts": posts,
        }
    finally:
        for m in members:
            await m.stop()


def view_page(messages: int, repeat: int) -> dict[str, Any]:
    authors = [_key(f"pager{i}") for i in range(5)]
    authority, chan = _authority(authors, [])
    replica = Replica(_key("root").public_key.raw)
    replica.take(authority, [], T0 + 10**7)
    for i, author in enumerate(authors):
        w = replica.feeds.writer(author, bytes([i]) * 8)
        for j in range(messages // len(authors)):
            w.post(chan, f"message {j}", T0 + 1000 + j)
    api_like = Communities.__new__(Communities)
    api_like._replicas = {replica.community: replica}
    text = community_text(replica.community)

    all_keys = replica.feeds._channels[chan].ordered()
    middle = all_keys[len(all_keys) // 2]

    async def measure(before: Any) -> list[float]:
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            page = await api_like.page(text, "general", before=before, limit=100)
            out.append((time.perf_counter() - t) * 1000)
            assert len(page) == 100
        return out

    end = asyncio.run(measure(None))
    mid = asyncio.run(measure(middle))
    return {
        "view_page_ms": round(statistics.median(end), 3),
        "view_page_ms_middle": round(statistics.median(mid), 3),
        "view_page_channel_messages": len(all_keys),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench community", description=__doc__)
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--quick", action="store_true", help="smaller figures, for smoke tests")
    parser.add_argument("--dir", help="parent directory for the temporary data directories")
    parser.add_argument(
        "--catchup-runs",
        type=int,
        metavar="N",
        help="catch-up runs (default 5, --quick 1); the figures are their medians",
    )
    args = parser.parse_args(argv)
    catch_n, page_n, posts = (1000, 5000, 10) if args.quick else (10_000, 100_000, 200)
    runs_n = max(1, args.catchup_runs or (1 if args.quick else 5))
    log = sys.stderr
    report: dict[str, Any] = {"benchmark": "community", "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="starling-community-bench-", dir=args.dir) as tmp:
        runs = []
        for i in range(runs_n):
            print(f"catch-up of {catch_n} messages, run {i + 1} of {runs_n}", file=log)
            run = asyncio.run(catchup(Path(tmp) / f"catchup{i}", catch_n, 5))
            run["load_average"] = round(os.getloadavg()[0], 2)
            runs.append(run)
        report.update(_median_runs(runs))
        print(f"post to visible, 10 members, {posts} posts", file=log)
        report.update(asyncio.run(post_to_visible(Path(tmp) / "latency", 10, posts)))
    print(f"view pages of a {page_n}-message channel", file=log)
    report.update(view_page(page_n, 50))
    report["targets"] = {"catchup_10k_s": 1.0}
    report["environment"] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
