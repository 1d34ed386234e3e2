"""node/store.py: the SQLite store (issue #7, item 7), including the kill -9 test."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from starling.node import store as store_module
from starling.node.store import (
    DB_FILE_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    FeedRecord,
    MessageRef,
    Store,
    StoreError,
)
from starling.proto import community as com
from starling.proto.identity import PrivateKey
from tests.peers import store_writer

REPO = Path(__file__).resolve().parent.parent
COMMUNITY = hashlib.sha256(b"test community").digest()
CHANNEL = hashlib.sha256(b"general").digest()
OTHER_CHANNEL = hashlib.sha256(b"random").digest()


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(main())


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def mid(author: bytes, seq: int) -> bytes:
    return hashlib.sha256(author + seq.to_bytes(4, "big")).digest()[:16]


# ----------------------------------------------------------------------------- schema


def test_schema_version_wal_and_reopen(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            assert await store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        async with await Store.open(tmp_path) as store:  # reopening migrates nothing
            assert await store.schema_version() == SCHEMA_VERSION
            assert await store.integrity_check() == "ok"

    run(main)
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_migration_hook_and_newer_database_refused(tmp_path: Path) -> None:
    later = (*MIGRATIONS, "CREATE TABLE later (x INTEGER);")

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            await store.put_community(COMMUNITY, name="kept", joined_ms=1)
        async with await Store.open(tmp_path, migrations=later) as store:
            assert await store.schema_version() == SCHEMA_VERSION + 1
            assert [c.name for c in await store.communities()] == ["kept"]
        with pytest.raises(StoreError, match="newer"):
            await Store.open(tmp_path)  # this code knows one version less

    run(main)


# ----------------------------------------------------------------------------- round trips


def test_identity_peers_and_communities_round_trip(tmp_path: Path) -> None:
    peer_a, peer_b = key("peer a"), key("peer b")

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            assert await store.identity() is None
            await store.set_identity(tmp_path / "identity.key", key("me"))
            await store.put_peer(peer_a, [("192.0.2.1", 4000)], 1_000)
            await store.put_peer(peer_b, [("198.51.100.7", 5000), ("::1", 5001)], 2_000)
            await store.put_peer(peer_a, [("192.0.2.9", 4001)], 3_000)
            await store.put_peer(peer_a, [("203.0.113.1", 1)], 500)  # older: ignored
            await store.put_community(COMMUNITY, name="Starlings", joined_ms=10, role=3)
            await store.put_community(COMMUNITY, name="Starlings!", joined_ms=10, role=4)
            # Entries of a community we have not joined do not make it "joined".
            await store.put_feed_entry(key("other"), key("x"), 1, b"entry")

        async with await Store.open(tmp_path) as store:
            ident = await store.identity()
            assert ident is not None
            assert ident.key_file == str(tmp_path / "identity.key")
            assert ident.peer_id == key("me")
            peers = await store.peers()
            assert [(p.peer_id, p.addresses, p.last_seen_ms) for p in peers] == [
                (peer_a, (("192.0.2.9", 4001),), 3_000),
                (peer_b, (("198.51.100.7", 5000), ("::1", 5001)), 2_000),
            ]
            assert len(await store.peers(limit=1)) == 1
            (info,) = await store.communities()
            assert (info.key, info.name, info.joined_ms, info.role) == (
                COMMUNITY,
                "Starlings!",
                10,
                4,
            )

    run(main)


def test_authority_entries_reload_into_the_same_log(tmp_path: Path) -> None:
    root, owner = PrivateKey(key("root")), PrivateKey(key("owner"))
    cid = root.public_key.raw
    log = com.AuthorityLog(cid)
    entries = com.genesis(root, owner.public_key.raw, 1_000, "Starlings")
    for name in ("general", "random", "news"):
        entries.append(com.channel_add(owner, cid, [entries[-1].id], 2_000, name))
    results = log.add_many([e.raw for e in entries])
    assert all(r.outcome is com.Outcome.ACCEPTED for r in results), results

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            await store.put_authority_entries(cid, [e.raw for e in entries[:3]])
            await store.put_authority_entries(cid, [e.raw for e in entries])  # dups ignored
        async with await Store.open(tmp_path) as store:
            assert await store.authority_entries(cid) == [e.raw for e in entries]
            assert await store.authority_entries(COMMUNITY) == []
            again = await store.load_authority(cid)
            assert again.heads() == log.heads()
            assert again.order() == log.order()
            assert again.state.summary() == log.state.summary()

    run(main)


def test_feed_entries_round_trip_lengths_and_since(tmp_path: Path) -> None:
    alice, bob = key("alice"), key("bob")

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            await store.put_feed_entries(
                COMMUNITY,
                [FeedRecord(alice, s, b"a%d" % s) for s in range(1, 11)]
                + [FeedRecord(bob, s, b"b%d" % s) for s in range(1, 4)],
                received_ms=42,
                fsync=False,
            )
        async with await Store.open(tmp_path) as store:
            assert await store.feed_lengths(COMMUNITY) == {alice: 10, bob: 3}
            assert await store.feed_lengths(key("nobody")) == {}
            assert await store.feed_entries_since(COMMUNITY, alice, 7) == [
                (8, b"a8"),
                (9, b"a9"),
                (10, b"a10"),
            ]
            assert [s for s, _ in await store.feed_entries_since(COMMUNITY, bob, 0)] == [1, 2, 3]
            assert len(await store.feed_entries_since(COMMUNITY, alice, 0, limit=4)) == 4
            assert await store.feed_entries_since(COMMUNITY, key("carol"), 0) == []
            assert await store.feed_entry(COMMUNITY, bob, 2) == b"b2"
            assert await store.feed_entry(COMMUNITY, bob, 4) is None

    run(main)


def test_inserts_are_idempotent_and_a_fork_does_not_index(tmp_path: Path) -> None:
    alice = key("alice")
    msg = MessageRef(CHANNEL, 100, b"m1")

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            for _ in range(3):
                await store.put_feed_entry(COMMUNITY, alice, 1, b"first", messages=[msg])
            # Same (author, seq), other bytes and another message: the first copy stays,
            # and the second's message is not indexed under it.
            await store.put_feed_entry(
                COMMUNITY, alice, 1, b"fork", messages=[MessageRef(CHANNEL, 200, b"m2")]
            )
            await asyncio.gather(
                *(store.put_feed_entry(COMMUNITY, alice, 2, b"second") for _ in range(5))
            )
            assert await store.feed_entries_since(COMMUNITY, alice, 0) == [
                (1, b"first"),
                (2, b"second"),
            ]
            page = await store.channel_page(COMMUNITY, CHANNEL, entries=True)
            assert [(r.hlc, r.message_id, r.seq, r.entry) for r in page] == [
                (100, b"m1", 1, b"first")
            ]

    run(main)


# ----------------------------------------------------------------------------- paging


def test_channel_paging_follows_view_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    authors = [key(f"author {i}") for i in range(3)]
    records: list[FeedRecord] = []
    expected: list[tuple[int, bytes, bytes]] = []
    for a in authors:
        for seq in range(1, 301):
            hlc = rng.randrange(1_000)  # many equal HLCs across (and within) authors
            channel = CHANNEL if seq % 5 else OTHER_CHANNEL
            records.append(FeedRecord(a, seq, b"%s/%d" % (a[:2].hex().encode(), seq)))
            records[-1] = FeedRecord(
                a, seq, records[-1].raw, (MessageRef(channel, hlc, mid(a, seq)),)
            )
            if channel == CHANNEL:
                expected.append((hlc, a, mid(a, seq)))
    expected.sort()  # view order: HLC, then author, then message ID
    rng.shuffle(records)

    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            await store.put_feed_entries(COMMUNITY, records, fsync=False)
            seen: list[tuple[int, bytes, bytes]] = []
            page = await store.channel_page(COMMUNITY, CHANNEL, limit=100)
            while page:
                assert len(page) <= 100
                seen[:0] = [r.cursor for r in page]
                page = await store.channel_page(COMMUNITY, CHANNEL, before=page[0].cursor)
            assert seen == expected

            latest = await store.channel_page(COMMUNITY, CHANNEL, limit=10, entries=True)
            assert [r.cursor for r in latest] == expected[-10:]
            by_key = {(r.author, r.seq): r.raw for r in records}
            assert all(r.entry == by_key[r.author, r.seq] for r in latest)
            older = await store.channel_page(COMMUNITY, CHANNEL, before_hlc=500, limit=1000)
            assert [r.cursor for r in older] == [e for e in expected if e[0] < 500]
            assert await store.channel_page(COMMUNITY, key("no such channel")) == []
            assert await store.channel_page(key("no such community"), CHANNEL) == []

            # One indexed range scan: no full scan, no sort of the channel.
            for kind, extra in (("", []), ("hlc", [500]), ("row", [5, authors[0], b"x"])):
                for entries in (False, True):
                    sql = store_module._page_sql(kind, entries)
                    plan = await store.explain(sql, [COMMUNITY, CHANNEL, *extra, 100])
                    assert any("SEARCH i USING PRIMARY KEY (channel_id=?" in p for p in plan)
                    assert not any("SCAN" in p or "TEMP B-TREE" in p for p in plan), plan

    run(main)


# ----------------------------------------------------------------------------- batching


def test_concurrent_writers_are_batched(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            authors = [key(f"author {i}") for i in range(20)]

            async def writer(a: bytes) -> None:
                for seq in range(1, 11):
                    msg = MessageRef(CHANNEL, seq, mid(a, seq))
                    await store.put_feed_entry(COMMUNITY, a, seq, b"x", messages=[msg])

            base = store.stats["transactions"]
            await asyncio.gather(*(writer(a) for a in authors))
            transactions = store.stats["transactions"] - base
            assert store.stats["writes"] == 200
            # Each round of the 20 writers is one transaction (a few more when a commit in
            # flight splits a round), never one per write.
            assert transactions <= 40, store.stats
            assert len(await store.channel_page(COMMUNITY, CHANNEL, limit=1000)) == 200
            lengths = await store.feed_lengths(COMMUNITY)
            assert lengths == dict.fromkeys(authors, 10)

    run(main)


def test_a_bad_write_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(tmp_path) as store:
            good = [
                store.put_feed_entry(COMMUNITY, key("alice"), seq, b"ok") for seq in range(1, 6)
            ]
            # Fault injection past the API's checks: a value SQLite cannot bind.
            broken = FeedRecord(key("bob"), 1, object())  # type: ignore[arg-type]
            bad = store._put([("feed", (COMMUNITY, broken, 0))], fsync=True)
            results = await asyncio.gather(*good, bad, return_exceptions=True)
            assert results[:5] == [None] * 5
            assert isinstance(results[5], sqlite3.Error)
            assert store.stats["split_batches"] == 1
            assert store.stats["failed_writes"] == 1
            assert await store.feed_lengths(COMMUNITY) == {key("alice"): 5}
            # The failed batch's interned keys were not adopted: bob can still be written.
            await store.put_feed_entry(COMMUNITY, key("bob"), 1, b"now fine")
            assert await store.feed_entry(COMMUNITY, key("bob"), 1) == b"now fine"
            with pytest.raises(ValueError, match="seq"):
                await store.put_feed_entry(COMMUNITY, key("bob"), -1, b"x")
            with pytest.raises(TypeError, match="raw"):
                await store.put_feed_entries(COMMUNITY, [broken])

    run(main)


def test_fsync_choice_and_close_drains(tmp_path: Path) -> None:
    async def main() -> None:
        store = await Store.open(tmp_path)
        await store.put_feed_entry(COMMUNITY, key("peer"), 1, b"from a peer", fsync=False)
        assert store.stats["fsync_transactions"] == 0
        await store.put_feed_entry(COMMUNITY, key("me"), 1, b"mine")
        assert store.stats["fsync_transactions"] == 1
        # A batch holding any fsync=True write commits under FULL.
        await asyncio.gather(
            store.put_feed_entry(COMMUNITY, key("peer"), 2, b"x", fsync=False),
            store.put_feed_entry(COMMUNITY, key("me"), 2, b"y"),
        )
        assert store.stats["fsync_transactions"] == 2
        pending = asyncio.ensure_future(store.put_feed_entry(COMMUNITY, key("me"), 3, b"z"))
        await asyncio.sleep(0)
        await store.close()
        assert pending.done() and pending.exception() is None
        with pytest.raises(StoreError):
            await store.put_feed_entry(COMMUNITY, key("me"), 4, b"late")
        async with await Store.open(tmp_path) as again:
            assert await again.feed_lengths(COMMUNITY) == {key("peer"): 2, key("me"): 3}

    run(main)


# ----------------------------------------------------------------------------- kill -9


def _read_acks(proc: subprocess.Popen[str], acks: list[tuple[int, int]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ack" and line.endswith("\n"):
            acks.append((int(parts[1]), int(parts[2])))


async def _check_all_acknowledged(data_dir: Path, acked: set[tuple[int, int]]) -> None:
    async with await Store.open(data_dir) as store:
        assert await store.integrity_check() == "ok"
        community = store_writer.COMMUNITY
        stored: set[tuple[int, int]] = set()
        for i in range(store_writer.AUTHORS):
            for seq, raw in await store.feed_entries_since(community, store_writer.author(i), -1):
                assert raw == store_writer.raw(i, seq)
                stored.add((i, seq))
        indexed: set[tuple[bytes, int]] = set()
        for channel in store_writer.CHANNELS:
            for row in await store.channel_page(community, channel, limit=-1):
                indexed.add((row.author, row.seq))
        assert acked <= stored, sorted(acked - stored)[:10]
        assert {(store_writer.author(i), s) for i, s in acked} <= indexed


def test_kill_9_never_loses_an_acknowledged_post(tmp_path: Path) -> None:
    """A writer process is SIGKILLed at random moments (while opening, while committing,
    between commits; fsync on and off); every post it acknowledged is there afterwards
    and the database is intact. Rounds reuse the directory, so each one also recovers
    the previous round's WAL."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    # Before the database exists, around opening (~0.2 s after start), then while posting.
    delays = [0.05, rng.uniform(0.15, 0.25), *(rng.uniform(0.3, 1.5) for _ in range(4))]
    acked: set[tuple[int, int]] = set()
    for n, delay in enumerate(delays):
        mode = "fsync" if n % 2 else "nofsync"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.peers.store_writer",
                str(tmp_path),
                mode,
                str(1 + n * 10**6),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        acks: list[tuple[int, int]] = []
        reader = threading.Thread(target=_read_acks, args=(proc, acks))
        reader.start()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, "the writer exited by itself"
        acked.update(acks)
        if (tmp_path / DB_FILE_NAME).exists():
            db = sqlite3.connect(tmp_path / DB_FILE_NAME)
            try:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                db.close()
            asyncio.run(_check_all_acknowledged(tmp_path, acked))
    assert len(acked) > 100, "the writer acknowledged too few posts for the test to mean much"
