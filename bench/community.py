"""Communities on loopback: catch-up, post-to-visible latency, channel pages, storage.

Run: ``python -m bench community [--json PATH] [--quick]``. Prints JSON.

* ``catchup_10k_s``: a member that was offline while 5 authors wrote 10,000
  messages connects to one that holds them; the time from the connect call until
  every entry is checked, applied and committed to its SQLite store (a real QUIC
  session on 127.0.0.1, real stores in a temporary directory). The member holding the
  messages runs in its own process (``bench.community_worker``), the catching-up one
  in this process with a fresh store each run. ``catchup_cpu_s`` and
  ``catchup_loop_thread_cpu_s`` say how much CPU the catching-up member (its process
  and its signature-checking worker processes; ``catchup_verify_processes_cpu_s``: the
  workers alone) and its event loop's thread took, ``catchup_sender_cpu_s`` the sending
  process. The catching-up node starts as one just back online: no signature-checking
  process runs, they start with its first large batch (``node/community.py``). Five
  runs (``--catchup-runs``): each figure is their median, ``catchup_10k_s_min`` the
  fastest, ``catchup_runs`` every run with the load average;
* ``catchup_10k_warm_s`` (``_min``, ``catchup_10k_warm_runs``): the same with the
  checking processes already running (a node that synced something large in the last
  30 s), five runs;
* ``catchup_10k_single_process_s`` (and ``catchup_single_process_*``): the same
  catch-up with both members in this process and event loop, as measured before, for
  comparison (the receiver then pays for the sender's CPU too);
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starling.node import community as community_module
from starling.node.community import Communities, CommunityEvent, feed_record
from starling.node.gossip import GossipService
from starling.node.session import Node, NodeConfig
from starling.node.store import DB_FILE_NAME, Store
from starling.proto import community as com
from starling.proto.gossip import GossipConfig
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.sync import Replica

T0 = int(time.time() * 1000) - 3_600_000
LOOPBACK = "127.0.0.1"


def _key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(("bench-community/" + label).encode()).digest())


class _Member:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.identity = _key(name)
        self.data = root / name

    async def start(self, config: NodeConfig | None = None) -> _Member:
        self.node = await Node.start(self.identity, config or NodeConfig(host=LOOPBACK))
        self.gossip = GossipService(self.node, GossipConfig())
        self.store = await Store.open(self.data)
        self.api = await Communities.open(self.node, self.gossip, self.store, self.identity)
        return self

    async def stop(self) -> None:
        await self.api.close()
        await self.gossip.close()
        await self.node.close()
        await self.store.close()


def _authority(
    authors: list[PrivateKey], extra: list[PrivateKey], t0: int = T0
) -> tuple[list[bytes], bytes]:
    root, owner = _key("root"), authors[0]
    entries = com.genesis(root, owner.public_key.raw, t0, "bench")
    chan = com.channel_add(owner, root.public_key.raw, [entries[-1].id], t0 + 1, "general")
    cap = com.make_capability(
        owner, root.public_key.raw, expires_ms=t0 + 10**10, nonce=b"\0" * 16, max_uses=1000
    )
    out = [*entries, chan]
    for member in [*authors[1:], *extra]:
        out.append(com.join(member, cap, [out[-1].id], t0 + 2))
    return [e.raw for e in out], chan.id


def _catchup_authority(
    authors_n: int, t0: int
) -> tuple[bytes, list[bytes], list[PrivateKey], bytes]:
    """The catch-up's community (key, authority, authors, channel); the same from the same ``t0``
    in every process, as keys and signatures are deterministic."""
    authors = [_key(f"author{i}") for i in range(authors_n)]
    authority, chan = _authority(authors, [_key("server"), _key("client")], t0)
    return _key("root").public_key.raw, authority, authors, chan


async def prepare_catchup(
    root: Path, member: _Member, messages: int, authors_n: int, t0: int
) -> int:
    """Write ``member``'s store before it starts: the community's authority, and for the
    member named ``server`` also the feed entries 5 authors wrote (``messages`` in all,
    written as the authors' devices would). Returns how many feed entries there are."""
    community, authority, authors, chan = _catchup_authority(authors_n, t0)
    per_author = messages // authors_n
    store = await Store.open(member.data)
    try:
        await store.put_authority_entries(community, authority)
        await store.put_community(community, name="bench", role=com.Role.MEMBER)
        if member.name == "server":
            writer_side = Replica(community)
            writer_side.take(authority, [], t0 + 10**7)
            feeds: list[bytes] = []
            for i, author in enumerate(authors):
                w = writer_side.feeds.writer(author, bytes([i]) * 8)
                feeds += [
                    w.post(chan, f"message {j} from author {i}", t0 + 1000 + j)
                    for j in range(per_author)
                ]
            replica = Replica(community)
            replica.take(authority, [], t0 + 10**7)
            intake = replica.take([], feeds, int(time.time() * 1000))
            records = [feed_record(replica, e) for e in intake.feeds]
            await store.put_feed_entries(community, records, fsync=False)
    finally:
        await store.close()
    return per_author * authors_n


def _children_cpu(exclude: int | None) -> float:
    """CPU seconds of this process's child processes but ``exclude`` (the sending member):
    the node's signature-checking workers (``node/community.py``)."""
    total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:  # ppid; utime and stime follow
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _catch_up_from(
    client: _Member,
    community: bytes,
    expected: int,
    addr: Any,
    peer: Any,
    sender_pid: int | None = None,
    warm: bool = False,
) -> dict[str, float]:
    """Connect ``client`` to the member at ``addr`` and time the catch-up of ``expected``
    feed entries: applied, then committed to the store."""
    replica = client.api._replicas[community]
    assert sum(replica.feeds.lengths().values()) == 0
    if warm:  # its signature-checking processes run (it synced something large lately)
        await client.api.ready()
    else:  # a node just back online: they start with the first large batch
        community_module._VERIFIERS._stop()
    workers_cpu = _children_cpu(sender_pid)
    start = time.perf_counter()
    cpu, main_cpu = time.process_time(), time.thread_time()
    await client.node.connect(addr, peer_id=peer)
    while sum(replica.feeds.lengths().values()) < expected:
        await asyncio.sleep(0.002)
    applied_s = time.perf_counter() - start
    while client.api._tasks:
        await asyncio.gather(*list(client.api._tasks))
    stored_s = time.perf_counter() - start
    cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
    workers_cpu = _children_cpu(sender_pid) - workers_cpu
    page = await client.api.page(community_text(community), "general", limit=100)
    assert len(page) == 100
    return {
        "stored_s": stored_s,
        "applied_s": applied_s,
        "cpu": cpu + workers_cpu,
        "main_cpu": main_cpu,
        "workers_cpu": workers_cpu,
    }


async def catchup_single_process(root: Path, messages: int, authors_n: int) -> dict[str, Any]:
    """Both members in this process and event loop (the figure before the two-process one)."""
    server_m, client_m = _Member("server", root), _Member("client", root)
    community = _key("root").public_key.raw
    n = await prepare_catchup(root, server_m, messages, authors_n, T0)
    await prepare_catchup(root, client_m, messages, authors_n, T0)
    server = await server_m.start()
    client = await client_m.start()
    try:
        t = await _catch_up_from(
            client, community, n, server.node.addresses[0], server.node.peer_id
        )
    finally:
        await client.stop()
        await server.stop()
    return {
        "catchup_10k_single_process_s": round(t["stored_s"], 3),
        "catchup_single_process_applied_s": round(t["applied_s"], 3),
        # Both members: CPU of all this process's threads and of the event loop's thread.
        "catchup_single_process_cpu_s": round(t["cpu"], 3),
        "catchup_single_process_verify_processes_cpu_s": round(t["workers_cpu"], 3),
        "catchup_single_process_loop_thread_cpu_s": round(t["main_cpu"], 3),
    }


class SenderProcess:
    """The member holding the messages, in a ``bench.community_worker`` subprocess."""

    def __init__(self, root: Path, messages: int, authors_n: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.community_worker",
                "--data",
                str(root),
                "--messages",
                str(messages),
                "--authors",
                str(authors_n),
                "--t0",
                str(T0),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._line()
        if not self.ready.get("ready"):
            self.close()
            raise RuntimeError(f"community worker failed: {self.ready}")

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"error": "worker exited"}

    def cpu(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("cpu\n")
        self.proc.stdin.flush()
        answer = self._line()
        if "cpu_s" not in answer:
            raise RuntimeError(f"community worker: {answer}")
        return float(answer["cpu_s"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def catchup(
    root: Path, sender: SenderProcess, messages: int, authors_n: int, warm: bool = False
) -> dict[str, Any]:
    """The catching-up member in this process, with fresh state, against ``sender``."""
    client_m = _Member("client", root)
    community = _key("root").public_key.raw
    await prepare_catchup(root, client_m, messages, authors_n, T0)
    n = int(sender.ready["messages"])
    client = await client_m.start()
    addr = (LOOPBACK, int(sender.ready["port"]))
    peer = PeerId.parse(sender.ready["peer_id"])
    try:
        sender_cpu = sender.cpu()
        t = await _catch_up_from(client, community, n, addr, peer, sender.proc.pid, warm)
        sender_cpu = sender.cpu() - sender_cpu
    finally:
        await client.stop()
    db_bytes = (client_m.data / DB_FILE_NAME).stat().st_size
    return {
        "catchup_10k_s": round(t["stored_s"], 3),
        "catchup_applied_s": round(t["applied_s"], 3),
        "catchup_messages": n,
        # The catching-up member's process (all threads) and its signature-checking worker
        # processes, of which the workers alone, its event loop's thread, and the sending
        # member's process, over the catch-up.
        "catchup_cpu_s": round(t["cpu"], 3),
        "catchup_verify_processes_cpu_s": round(t["workers_cpu"], 3),
        "catchup_loop_thread_cpu_s": round(t["main_cpu"], 3),
        "catchup_sender_cpu_s": round(sender_cpu, 3),
        "db_bytes_per_message": round(db_bytes / n, 1),
    }


def _median_runs(runs: list[dict[str, Any]], wall: str, runs_key: str) -> dict[str, Any]:
    """Several catch-up runs: the median of each figure (wall time is noisy on a shared
    machine), the fastest run's wall time, and every run with the load average after it."""
    out: dict[str, Any] = {}
    for name, value in runs[0].items():
        if name == "catchup_messages":
            out[name] = value
        elif name != "load_average":
            out[name] = round(statistics.median(r[name] for r in runs), 3)
    out[wall + "_min"] = min(r[wall] for r in runs)
    out[runs_key] = runs
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
        print(f"catch-up: the sending member writes {catch_n} messages", file=log)
        sender = SenderProcess(Path(tmp) / "sender", catch_n, 5)
        try:
            runs = []
            for i in range(runs_n):
                print(f"catch-up from another process, run {i + 1} of {runs_n}", file=log)
                run = asyncio.run(catchup(Path(tmp) / f"catchup{i}", sender, catch_n, 5))
                run["load_average"] = round(os.getloadavg()[0], 2)
                runs.append(run)
            warm = []
            for i in range(runs_n):
                print(f"the same, checking processes already running, run {i + 1}", file=log)
                run = asyncio.run(catchup(Path(tmp) / f"warm{i}", sender, catch_n, 5, True))
                warm.append(run["catchup_10k_s"])
        finally:
            sender.close()
        report.update(_median_runs(runs, "catchup_10k_s", "catchup_runs"))
        report["catchup_10k_warm_s"] = round(statistics.median(warm), 3)
        report["catchup_10k_warm_s_min"] = min(warm)
        report["catchup_10k_warm_runs"] = warm
        runs = []
        for i in range(runs_n):
            print(f"catch-up in one process, run {i + 1} of {runs_n}", file=log)
            run = asyncio.run(catchup_single_process(Path(tmp) / f"single{i}", catch_n, 5))
            run["load_average"] = round(os.getloadavg()[0], 2)
            runs.append(run)
        report.update(
            _median_runs(runs, "catchup_10k_single_process_s", "catchup_single_process_runs")
        )
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
