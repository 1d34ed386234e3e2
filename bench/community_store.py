"""Community storage benchmark: the SQLite store (node/store.py) on a 100k-message channel.

``python -m bench.community_store [--json PATH] [--messages N] [--authors K] [--quick]``

Builds a data directory holding one channel of N messages (default 100,000) from K
authors (default 5), each message one feed entry whose payload is a real Yjs
update (pycrdt, one document per author, a plain-dict value per message ID),
wrapped as a feed entry would be (author, seq, payload, 64-byte signature; the
exact envelope is proto/feeds.py's, so the bytes are an approximation of its
size). Then it measures:

* ``db_bytes_per_message``: size of ``starling.db`` after the store is closed
  (WAL checkpointed into it), divided by N; ``entry_bytes_per_message`` is the
  stored entry itself, the rest is index and B-tree overhead;
* ``ingest_msgs_per_s``: entries stored as a sync reply would store them
  (``put_feed_entries`` in chunks of 1,000, ``fsync=False``);
* ``view_page_ms`` (p50, p99, and the first query after opening): one
  ``channel_page(limit=100, entries=True)`` at random points of the channel,
  entry bytes included; ``index_page_ms``: the same without the entry bytes;
* ``local_post_ack_ms``: one post at a time, ``fsync=True`` (commit + fsync per
  post, what a user waits for); ``local_post_batched_per_s``: 100 concurrent
  posters, ``fsync=True`` (group commit: one fsync per batch).

Wall-clock figures; the machine may be running other work, so compare runs on
one machine. The database lives in a temporary directory (``--dir`` to choose,
e.g. a real disk rather than tmpfs: fsync costs depend on it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pycrdt

from starling.node.store import DB_FILE_NAME, FeedRecord, MessageRef, Store

COMMUNITY = hashlib.sha256(b"bench community").digest()
CHANNEL = hashlib.sha256(b"bench channel").digest()
T0_MS = 1_750_000_000_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.4999999))
    return ordered[min(rank, len(ordered)) - 1]


def make_records(messages: int, authors: int, seed: int = 1) -> list[FeedRecord]:
    """``messages`` feed entries, round-robin over ``authors``, HLCs increasing."""
    rng = random.Random(seed)
    keys = [hashlib.sha256(b"bench author %d" % i).digest() for i in range(authors)]
    docs = [pycrdt.Doc() for _ in keys]
    maps = [doc.get("messages", type=pycrdt.Map) for doc in docs]
    seqs = [0] * authors
    records = []
    for n in range(messages):
        i = n % authors
        hlc = ((T0_MS + n * 50) << 16) | rng.randrange(4)
        message_id = rng.randbytes(16)
        words = rng.randrange(3, 25)
        text = " ".join(
            rng.choice(("hello", "starling", "chat", "ok", "the", "peer")) for _ in range(words)
        )
        before = docs[i].get_state()
        maps[i][message_id.hex()] = {
            "channel": CHANNEL.hex(),
            "text": text,
            "hlc": hlc,
            "reply": None,
        }
        update = docs[i].get_update(before)
        seqs[i] += 1
        raw = keys[i] + seqs[i].to_bytes(8, "big") + update + rng.randbytes(64)
        records.append(FeedRecord(keys[i], seqs[i], raw, (MessageRef(CHANNEL, hlc, message_id),)))
    return records


async def ingest(data_dir: Path, records: list[FeedRecord]) -> float:
    async with await Store.open(data_dir) as store:
        start = time.perf_counter()
        for k in range(0, len(records), 1000):
            await store.put_feed_entries(COMMUNITY, records[k : k + 1000], fsync=False)
        return time.perf_counter() - start


async def pages(data_dir: Path, records: list[FeedRecord], queries: int) -> dict[str, Any]:
    rng = random.Random(2)
    hlcs = sorted(r.messages[0].hlc for r in records)
    out: dict[str, Any] = {}
    async with await Store.open(data_dir) as store:
        start = time.perf_counter()
        first = await store.channel_page(COMMUNITY, CHANNEL, limit=100, entries=True)
        out["view_page_ms_first"] = (time.perf_counter() - start) * 1e3
        assert len(first) == 100
        for name, entries in (("view_page", True), ("index_page", False)):
            samples = []
            for _ in range(queries):
                before = hlcs[rng.randrange(100, len(hlcs))]
                start = time.perf_counter()
                page = await store.channel_page(COMMUNITY, CHANNEL, before, 100, entries=entries)
                samples.append((time.perf_counter() - start) * 1e3)
                assert len(page) == 100
            out[f"{name}_ms_p50"] = percentile(samples, 50)
            out[f"{name}_ms_p99"] = percentile(samples, 99)
    return out


async def local_posts(data_dir: Path, sequential: int, concurrent: int) -> dict[str, Any]:
    me = hashlib.sha256(b"bench me").digest()
    raw = bytes(300)
    async with await Store.open(data_dir) as store:
        samples = []
        for seq in range(1, sequential + 1):
            msg = MessageRef(CHANNEL, (T0_MS << 16) + seq, seq.to_bytes(16, "big"))
            start = time.perf_counter()
            await store.put_feed_entry(COMMUNITY, me, seq, raw, messages=[msg])
            samples.append((time.perf_counter() - start) * 1e3)
        base = dict(store.stats)

        async def poster(i: int) -> None:
            author = hashlib.sha256(b"bench poster %d" % i).digest()
            for seq in range(1, 21):
                msg = MessageRef(CHANNEL, (T0_MS << 16) + seq, author[:8] + seq.to_bytes(8, "big"))
                await store.put_feed_entry(COMMUNITY, author, seq, raw, messages=[msg])

        start = time.perf_counter()
        await asyncio.gather(*(poster(i) for i in range(concurrent)))
        elapsed = time.perf_counter() - start
        writes = store.stats["writes"] - base.get("writes", 0)
        commits = store.stats["fsync_transactions"] - base.get("fsync_transactions", 0)
    return {
        "local_post_ack_ms_p50": percentile(samples, 50),
        "local_post_ack_ms_p99": percentile(samples, 99),
        "local_post_batched_per_s": writes / elapsed,
        "local_post_batched_writes_per_fsync": writes / max(1, commits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.community_store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--authors", type=int, default=5)
    parser.add_argument("--queries", type=int, default=300, help="pages measured per kind")
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 100 queries")
    parser.add_argument("--dir", help="parent directory for the temporary data directory")
    args = parser.parse_args(argv)
    messages = 10_000 if args.quick else args.messages
    queries = 100 if args.quick else args.queries
    log = sys.stderr

    print(
        f"building {messages} feed entries (pycrdt updates) from {args.authors} authors", file=log
    )
    start = time.perf_counter()
    records = make_records(messages, args.authors)
    build_s = time.perf_counter() - start
    entry_bytes = sum(len(r.raw) for r in records) / messages

    with tempfile.TemporaryDirectory(prefix="starling-store-bench-", dir=args.dir) as tmp:
        data_dir = Path(tmp) / "node"
        print("ingesting", file=log)
        ingest_s = asyncio.run(ingest(data_dir, records))
        db_path = data_dir / DB_FILE_NAME
        db_bytes = db_path.stat().st_size
        wal = db_path.with_name(DB_FILE_NAME + "-wal")
        leftover_wal = wal.stat().st_size if wal.exists() else 0
        with sqlite3.connect(db_path) as db:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
        print("paging", file=log)
        figures = asyncio.run(pages(data_dir, records, queries))
        print("local posts", file=log)
        figures.update(asyncio.run(local_posts(Path(tmp) / "posts", 200, 100)))

    report = {
        "benchmark": "community_store",
        "messages": messages,
        "authors": args.authors,
        "db_bytes_per_message": db_bytes / messages,
        "entry_bytes_per_message": entry_bytes,
        "overhead_bytes_per_message": (db_bytes - entry_bytes * messages) / messages,
        "ingest_msgs_per_s": messages / ingest_s,
        "view_page_ms": figures["view_page_ms_p50"],
        **figures,
        "notes": [
            "feed entry bytes approximate proto/feeds.py's envelope: author, seq, pycrdt "
            "update, 64-byte signature",
            f"database page size {page_size}; WAL left after close: {leftover_wal} bytes",
            f"building the entries with pycrdt took {build_s:.1f} s (not counted)",
        ],
        "environment": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "pycrdt": getattr(pycrdt, "__version__", "?"),
            "cpu_count": os.cpu_count(),
        },
    }
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text + "\n")
    for name in (
        "db_bytes_per_message",
        "entry_bytes_per_message",
        "ingest_msgs_per_s",
        "view_page_ms",
        "view_page_ms_p99",
        "view_page_ms_first",
        "index_page_ms_p50",
        "local_post_ack_ms_p50",
        "local_post_batched_per_s",
        "local_post_batched_writes_per_fsync",
    ):
        print(f"{name:<38} {report.get(name, figures.get(name)):>12.3f}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
