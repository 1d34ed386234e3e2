"""The node's local storage: one SQLite database per data directory (issue #7, item 7).

Theory of operation
-------------------
Everything a node keeps between runs lives in ``<data dir>/starling.db``
(SQLite in WAL mode, opened through aiosqlite): a reference to the identity
(key file and peer ID, never the key itself), known peers, the communities we
joined, their authority entries and the members' feed entries (raw signed
bytes, exactly as received, so signatures can be checked again and the bytes
served to peers), and an index for channel history:
``(channel, hlc, author, message id) -> (feed, seq)``, so a page of a channel is
one range scan of one B-tree whatever the channel's length.

The store parses nothing: callers hand it the bytes and the fields it indexes
(community, author, seq, and per message: channel, HLC, message ID).
``proto.community`` gives the authority entry IDs and replays what is reloaded
(:meth:`Store.load_authority`).

Writes. An aiosqlite call costs ~95 us (a hop to the connection's thread and
back), so one transaction per write would cap a node at a few thousand writes a
second and one fsync each would cap it far lower. Every ``put_*`` coroutine
instead queues its rows and waits; one writer task takes everything queued
(``batch_window_ms`` after the first write, by default the next loop tick) and
commits it as **one transaction** of one ``executemany`` per statement, then
wakes every caller of that batch. While a batch commits, new writes queue up
for the next one (group commit), so batches grow with the load. If a batch
fails, its writes are retried one transaction each, so one bad write fails
alone. Inserts are idempotent: the first copy of an authority entry (by entry
ID) or a feed entry (by community, author, seq) wins and later copies are
ignored; peers and communities are upserts. Within a batch, writes of one kind
apply in call order. Cancelling a caller does not withdraw its write.

Durability: what an acknowledgement means
-----------------------------------------
``await store.put_...()`` returns only after the transaction holding the write
has committed. In WAL mode a commit appends the transaction's pages to the WAL
file with write(2); ``synchronous`` decides whether it is also fsync'd:

* ``fsync=True`` (the default; use it for everything *we* author: our own feed
  entries, authority entries we sign, invites): the batch commits under
  ``PRAGMA synchronous=FULL``, so the WAL is fsync'd before the await returns.
  The write survives the process being killed (``kill -9``, OOM killer, a
  crash), an OS crash and a power loss (on a disk that honours flushes).
* ``fsync=False`` (for what peers sent us: it can be fetched again on the next
  sync): the batch commits under ``synchronous=NORMAL``: no fsync at commit.
  The write survives any death of the *process*, ``kill -9`` included, since
  the bytes are in the kernel's page cache once write(2) returned and the
  kernel writes them out whatever happens to us. An OS crash or power loss
  may lose the most recent such commits (those since the last fsync of the
  WAL), never corrupt the database, and never a commit acknowledged with
  ``fsync=True`` or any commit before one (the WAL is append-only and fsync
  covers the whole file, so a durable commit makes every earlier one durable).

Why not NORMAL for everything: ``kill -9`` alone would not need FULL, but a
node that loses the tail of its own feed in a power cut, after peers got it,
would sign a *different* entry with a reused sequence number: a fork of its
own feed that honest peers must treat as equivocation. FULL costs one fsync
per batch, not per write (figures from ``python -m bench.community_store``).
A write whose await had not returned when the process died may or may not be
stored; each batch is all or nothing. Opening, migrations included, is itself
transactional, so a kill at any moment leaves a database that opens and passes
``PRAGMA integrity_check`` (tests/test_store.py, the kill -9 test).

Reads use a second connection, so they never see a batch that has not
committed, and never wait behind one (WAL readers do not block the writer).

Schema. ``PRAGMA user_version`` holds the schema version; ``MIGRATIONS[i]``
takes a database from version ``i`` to ``i + 1`` in one transaction. A database
newer than this code is refused rather than guessed at. Storage choices
(measured by the bench): community, author-feed and channel keys are interned
to small integers; a feed entry's row ID is ``feed << 32 | seq`` so the feed
table needs no second index; the channel index is a ``WITHOUT ROWID`` table
keyed by the page order. It keeps the author key itself (not its interned
number) because ties in HLC are broken by author key [view order: HLC, author,
message ID], and the order must be the same on every member.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from starling.proto.community import AuthorityLog, entry_id

DB_FILE_NAME = "starling.db"

#: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``; append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE peers (
        peer_id BLOB PRIMARY KEY,
        addresses TEXT NOT NULL,         -- JSON: [[host, port], ...]
        last_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX peers_by_last_seen ON peers (last_seen_ms);
    CREATE TABLE communities (
        id INTEGER PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,
        name TEXT,
        joined_ms INTEGER,               -- NULL: entries stored, not joined (yet)
        role INTEGER                     -- our role (proto.community.Role), NULL: none
    );
    CREATE TABLE authority_entries (
        arrival INTEGER PRIMARY KEY,     -- arrival order: parents before children
        community_id INTEGER NOT NULL,
        entry_id BLOB NOT NULL,
        raw BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        UNIQUE (community_id, entry_id)
    );
    CREATE TABLE feeds (                 -- one per (community, author)
        id INTEGER PRIMARY KEY,
        community_id INTEGER NOT NULL,
        author BLOB NOT NULL,
        UNIQUE (community_id, author)
    );
    CREATE TABLE feed_entries (
        key INTEGER PRIMARY KEY,         -- feed id << 32 | seq
        raw BLOB NOT NULL,
        received_ms INTEGER NOT NULL
    );
    CREATE TABLE channels (              -- one per (community, channel)
        id INTEGER PRIMARY KEY,
        community_id INTEGER NOT NULL,
        channel BLOB NOT NULL,
        UNIQUE (community_id, channel)
    );
    CREATE TABLE channel_index (
        channel_id INTEGER NOT NULL,
        hlc INTEGER NOT NULL,
        author BLOB NOT NULL,
        message_id BLOB NOT NULL,
        feed_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (channel_id, hlc, author, message_id)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

MAX_SEQ = (1 << 32) - 1
MAX_HLC = (1 << 63) - 1
MAX_KEY_SIZE = 64  # community keys, authors, channel and message IDs, peer IDs


class StoreError(Exception):
    """The database cannot be used: closed, not WAL-capable, or from a newer Starling."""


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class IdentityRef:
    """Which key file is this node, and the peer ID it should hold (checked on load)."""

    key_file: str
    peer_id: bytes


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: bytes
    addresses: tuple[tuple[str, int], ...]
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class CommunityInfo:
    key: bytes
    name: str | None
    joined_ms: int
    role: int | None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One message a feed entry creates, as the channel index needs it."""

    channel: bytes
    hlc: int
    message_id: bytes


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One signed feed entry to store, with the messages it creates (may be none)."""

    author: bytes
    seq: int
    raw: bytes
    messages: tuple[MessageRef, ...] = ()


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """One message of a channel page; ``entry`` is the feed entry's bytes if asked for."""

    hlc: int
    author: bytes
    message_id: bytes
    seq: int
    entry: bytes | None = field(default=None, repr=False)

    @property
    def cursor(self) -> tuple[int, bytes, bytes]:
        """Pass as ``before=`` to get the page that precedes this row."""
        return (self.hlc, self.author, self.message_id)


# ------------------------------------------------------------------------------ statements

_INTERN_COMMUNITY = "INSERT OR IGNORE INTO communities (id, key) VALUES (?, ?)"
_INTERN_FEED = "INSERT OR IGNORE INTO feeds (id, community_id, author) VALUES (?, ?, ?)"
_INTERN_CHANNEL = "INSERT OR IGNORE INTO channels (id, community_id, channel) VALUES (?, ?, ?)"
_UPDATE_COMMUNITY = "UPDATE communities SET name = ?, joined_ms = ?, role = ? WHERE id = ?"
_PUT_AUTHORITY = (
    "INSERT OR IGNORE INTO authority_entries (community_id, entry_id, raw, received_ms) "
    "VALUES (?, ?, ?, ?)"
)
_PUT_FEED = "INSERT OR IGNORE INTO feed_entries (key, raw, received_ms) VALUES (?, ?, ?)"
# Indexed only if the stored entry is this one: a second, different entry with the same
# (author, seq) (a fork, which the feeds layer should have refused) must not index its
# messages under the first one's bytes.
_PUT_INDEX = (
    "INSERT OR IGNORE INTO channel_index (channel_id, hlc, author, message_id, feed_id, seq) "
    "SELECT ?, ?, ?, ?, ?, ? WHERE (SELECT raw FROM feed_entries WHERE key = ?) = ?"
)
_PUT_PEER = (
    "INSERT INTO peers (peer_id, addresses, last_seen_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (peer_id) DO UPDATE SET addresses = excluded.addresses, "
    "last_seen_ms = excluded.last_seen_ms WHERE excluded.last_seen_ms >= peers.last_seen_ms"
)
_PUT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
# Keys before the rows that use them; otherwise any order (the kinds touch disjoint rows).
_STATEMENT_ORDER = (
    _INTERN_COMMUNITY,
    _INTERN_FEED,
    _INTERN_CHANNEL,
    _UPDATE_COMMUNITY,
    _PUT_AUTHORITY,
    _PUT_FEED,
    _PUT_INDEX,
    _PUT_PEER,
    _PUT_META,
)

_FEED_LENGTHS = """
    SELECT f.author,
           (SELECT max(e.key) FROM feed_entries e
             WHERE e.key >= f.id << 32 AND e.key < (f.id + 1) << 32)
      FROM feeds f JOIN communities c ON c.id = f.community_id
     WHERE c.key = ?
"""
_FEED_SINCE = """
    SELECT e.key, e.raw
      FROM feeds f JOIN communities c ON c.id = f.community_id, feed_entries e
     WHERE c.key = ? AND f.author = ?
       AND e.key > (f.id << 32) + ? AND e.key < (f.id + 1) << 32
     ORDER BY e.key LIMIT ?
"""
_CHANNEL_ID = (
    "SELECT ch.id FROM channels ch JOIN communities c ON c.id = ch.community_id "
    "WHERE c.key = ? AND ch.channel = ?"
)
_PAGE_COLUMNS = "i.hlc, i.author, i.message_id, i.seq"
_PAGE_ORDER = "ORDER BY i.hlc DESC, i.author DESC, i.message_id DESC LIMIT ?"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_bytes(value: bytes, what: str) -> bytes:
    value = bytes(value)
    if not 0 < len(value) <= MAX_KEY_SIZE:
        raise ValueError(f"{what} must be 1..{MAX_KEY_SIZE} bytes, got {len(value)}")
    return value


def _check_int(value: int, what: str, maximum: int) -> int:
    if not 0 <= value <= maximum:
        raise ValueError(f"{what} {value} is outside 0..{maximum}")
    return int(value)


# ------------------------------------------------------------------------------ batching


@dataclass(slots=True)
class _Write:
    """One caller's request: rows of one or more kinds, committed together."""

    ops: list[tuple[str, tuple[Any, ...]]]
    fsync: bool
    future: asyncio.Future[None]


class _Keys:
    """Interned keys: community key -> id, (community id, author) -> feed id, (community id,
    channel) -> channel id. Only committed rows are here; a batch works on a copy."""

    def __init__(self) -> None:
        self.communities: dict[bytes, int] = {}
        self.feeds: dict[tuple[int, bytes], int] = {}
        self.channels: dict[tuple[int, bytes], int] = {}
        self.next_ids = {"communities": 1, "feeds": 1, "channels": 1}


class _Plan:
    """The statements of one transaction; new keys get IDs here and are adopted by the
    store only once the transaction commits."""

    def __init__(self, keys: _Keys) -> None:
        self.keys = keys
        self.new_communities: dict[bytes, int] = {}
        self.new_feeds: dict[tuple[int, bytes], int] = {}
        self.new_channels: dict[tuple[int, bytes], int] = {}
        self.next_ids = dict(keys.next_ids)
        self.rows: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _STATEMENT_ORDER}
        self.count = 0

    def _new_id(self, table: str) -> int:
        value = self.next_ids[table]
        self.next_ids[table] = value + 1
        return value

    def community(self, key: bytes) -> int:
        cid = self.keys.communities.get(key) or self.new_communities.get(key)
        if cid is None:
            cid = self.new_communities[key] = self._new_id("communities")
            self.rows[_INTERN_COMMUNITY].append((cid, key))
        return cid

    def feed(self, community: bytes, author: bytes) -> int:
        k = (self.community(community), author)
        fid = self.keys.feeds.get(k) or self.new_feeds.get(k)
        if fid is None:
            fid = self.new_feeds[k] = self._new_id("feeds")
            self.rows[_INTERN_FEED].append((fid, *k))
        return fid

    def channel(self, community: bytes, channel: bytes) -> int:
        k = (self.community(community), channel)
        chid = self.keys.channels.get(k) or self.new_channels.get(k)
        if chid is None:
            chid = self.new_channels[k] = self._new_id("channels")
            self.rows[_INTERN_CHANNEL].append((chid, *k))
        return chid

    def add(self, kind: str, args: tuple[Any, ...]) -> None:
        self.count += 1
        if kind == "community":
            key, name, joined_ms, role = args
            self.rows[_UPDATE_COMMUNITY].append((name, joined_ms, role, self.community(key)))
        elif kind == "authority":
            community, eid, raw, received_ms = args
            self.rows[_PUT_AUTHORITY].append((self.community(community), eid, raw, received_ms))
        elif kind == "feed":
            community, record, received_ms = args
            fid = self.feed(community, record.author)
            key = (fid << 32) | record.seq
            self.rows[_PUT_FEED].append((key, record.raw, received_ms))
            for m in record.messages:
                chid = self.channel(community, m.channel)
                self.rows[_PUT_INDEX].append(
                    (chid, m.hlc, record.author, m.message_id, fid, record.seq, key, record.raw)
                )
        elif kind == "peer":
            self.rows[_PUT_PEER].append(args)
        elif kind == "meta":
            self.rows[_PUT_META].append(args)
        else:  # pragma: no cover - the put_* methods are the only producers
            raise AssertionError(kind)

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        return [(sql, rows) for sql, rows in self.rows.items() if rows]

    def adopt(self) -> None:
        self.keys.communities.update(self.new_communities)
        self.keys.feeds.update(self.new_feeds)
        self.keys.channels.update(self.new_channels)
        self.keys.next_ids = self.next_ids


# ------------------------------------------------------------------------------ the store


class Store:
    """The node's database. Open with ``await Store.open(data_dir)``; use from one loop.

    ``stats`` counts ``writes`` (put calls acknowledged), ``transactions`` (commits),
    ``rows`` (records committed), ``fsync_transactions`` (commits under FULL),
    ``split_batches`` (batches retried write by write) and ``failed_writes``.
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        keys: _Keys,
        *,
        batch_window_ms: float,
        max_batch_rows: int,
    ) -> None:
        self.path = path
        self.batch_window_ms = batch_window_ms
        self.max_batch_rows = max_batch_rows
        self.stats: Counter[str] = Counter()
        self._writer = writer
        self._reader = reader
        self._keys = keys
        self._full_sync = True  # the connection's current synchronous setting
        self._queue: list[_Write] = []
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run_writer())

    # -- opening and closing -----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path | str,
        *,
        batch_window_ms: float = 0.0,
        max_batch_rows: int = 8192,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> Store:
        """Open (creating or migrating) ``<data_dir>/starling.db``.

        ``batch_window_ms``: how long the writer waits after the first queued write
        before committing (0: the next loop tick; commits in flight batch the rest).
        ``migrations`` is for tests of the migration hook.
        """
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / DB_FILE_NAME
        writer = await aiosqlite.connect(path, isolation_level=None)
        reader: aiosqlite.Connection | None = None
        try:
            mode = await _fetch_one(writer, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            await writer.execute("PRAGMA synchronous = FULL")
            await writer.execute("PRAGMA busy_timeout = 5000")
            await _migrate(writer, path, migrations)
            keys = await _load_keys(writer)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only = 1")
            await reader.execute("PRAGMA busy_timeout = 5000")
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise
        return cls(
            path,
            writer,
            reader,
            keys,
            batch_window_ms=batch_window_ms,
            max_batch_rows=max_batch_rows,
        )

    async def close(self) -> None:
        """Commit everything queued, then close (the last close checkpoints the WAL)."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._closed = True
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return int(await _fetch_one(self._reader, "PRAGMA user_version"))

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` or SQLite's list of problems."""
        rows = await self._reader.execute_fetchall("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    # -- writes ------------------------------------------------------------------------

    async def set_identity(self, key_file: Path | str, peer_id: bytes) -> None:
        await self._put(
            [
                ("meta", ("identity.key_file", str(key_file).encode())),
                ("meta", ("identity.peer_id", _check_bytes(peer_id, "peer ID"))),
            ],
            fsync=True,
        )

    async def set_meta(self, key: str, value: bytes, *, fsync: bool = True) -> None:
        """Keep a small named value (the community layer's device ID, community keys)."""
        await self._put([("meta", (str(key), bytes(value)))], fsync=fsync)

    async def get_meta(self, key: str) -> bytes | None:
        rows = list(
            await self._reader.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        )
        return bytes(rows[0][0]) if rows else None

    async def put_peer(
        self,
        peer_id: bytes,
        addresses: Iterable[tuple[str, int]],
        last_seen_ms: int | None = None,
        *,
        fsync: bool = False,
    ) -> None:
        """Remember a peer's addresses; an older ``last_seen_ms`` never overwrites a newer."""
        addrs = json.dumps([[str(h), int(p)] for h, p in addresses])
        seen = _now_ms() if last_seen_ms is None else last_seen_ms
        await self._put([("peer", (_check_bytes(peer_id, "peer ID"), addrs, seen))], fsync=fsync)

    async def put_community(
        self,
        key: bytes,
        *,
        name: str | None,
        joined_ms: int | None = None,
        role: int | None = None,
    ) -> None:
        """Record a community we joined (or update its name or our role)."""
        joined = _now_ms() if joined_ms is None else joined_ms
        role_value = None if role is None else int(role)
        await self._put(
            [("community", (_check_bytes(key, "community key"), name, joined, role_value))],
            fsync=True,
        )

    async def put_authority_entries(
        self,
        community: bytes,
        raws: Iterable[bytes],
        *,
        received_ms: int | None = None,
        fsync: bool = True,
    ) -> None:
        """Store signed authority entries (already admitted by the community's
        ``AuthorityLog``, in admission order, so reloads find parents first)."""
        key = _check_bytes(community, "community key")
        when = _now_ms() if received_ms is None else received_ms
        ops = [("authority", (key, entry_id(bytes(r)), bytes(r), when)) for r in raws]
        await self._put(ops, fsync=fsync)

    async def put_authority_entry(
        self, community: bytes, raw: bytes, *, received_ms: int | None = None, fsync: bool = True
    ) -> None:
        await self.put_authority_entries(community, [raw], received_ms=received_ms, fsync=fsync)

    async def put_feed_entries(
        self,
        community: bytes,
        records: Iterable[FeedRecord],
        *,
        received_ms: int | None = None,
        fsync: bool = True,
    ) -> None:
        """Store feed entries and index their messages, all in one transaction.

        Use ``fsync=False`` for entries received from peers (see the module's notes)."""
        key = _check_bytes(community, "community key")
        when = _now_ms() if received_ms is None else received_ms
        ops: list[tuple[str, tuple[Any, ...]]] = []
        for r in records:
            _check_bytes(r.author, "author")
            _check_int(r.seq, "seq", MAX_SEQ)
            if not isinstance(r.raw, bytes):
                raise TypeError(f"raw must be bytes, not {type(r.raw).__name__}")
            for m in r.messages:
                _check_bytes(m.channel, "channel")
                _check_bytes(m.message_id, "message ID")
                _check_int(m.hlc, "hlc", MAX_HLC)
            ops.append(("feed", (key, r, when)))
        await self._put(ops, fsync=fsync)

    async def put_feed_entry(
        self,
        community: bytes,
        author: bytes,
        seq: int,
        raw: bytes,
        *,
        messages: Iterable[MessageRef] = (),
        received_ms: int | None = None,
        fsync: bool = True,
    ) -> None:
        record = FeedRecord(bytes(author), seq, bytes(raw), tuple(messages))
        await self.put_feed_entries(community, [record], received_ms=received_ms, fsync=fsync)

    async def _put(self, ops: list[tuple[str, tuple[Any, ...]]], *, fsync: bool) -> None:
        if self._closing:
            raise StoreError("the store is closed")
        if not ops:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(ops, fsync, future))
        self._queued_rows += len(ops)
        self._wakeup.set()
        await future

    # -- the writer task ---------------------------------------------------------------

    async def _run_writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Let every caller that is ready in this loop tick (or window) join the batch.
            await asyncio.sleep(self.batch_window_ms / 1000)
            while self._queue:
                await self._commit(self._take())
            if self._closing:
                return

    def _take(self) -> list[_Write]:
        taken = rows = 0
        for w in self._queue:
            if taken and rows + len(w.ops) > self.max_batch_rows:
                break
            taken += 1
            rows += len(w.ops)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        self._queued_rows -= rows
        return batch

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            self.stats["split_batches"] += 1
            for w in batch:  # find the bad write; the others still commit
                try:
                    await self._transaction([w])
                except Exception as one:
                    self._fail(w, one)
                else:
                    self._done(w)
            return
        for w in batch:
            self._done(w)

    def _done(self, w: _Write) -> None:
        self.stats["writes"] += 1
        if not w.future.done():  # a cancelled caller's write is still stored
            w.future.set_result(None)

    def _fail(self, w: _Write, exc: Exception) -> None:
        self.stats["failed_writes"] += 1
        if not w.future.done():
            w.future.set_exception(exc)

    async def _transaction(self, batch: list[_Write]) -> None:
        plan = _Plan(self._keys)
        for w in batch:
            for kind, args in w.ops:
                plan.add(kind, args)
        full = any(w.fsync for w in batch)
        db = self._writer
        if full != self._full_sync:
            # synchronous is read at commit time; switching costs one call, only on change.
            await db.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._full_sync = full
        await db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in plan.statements():
                await db.executemany(sql, rows)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # "no transaction is active" is fine
                await db.execute("ROLLBACK")
            raise
        plan.adopt()
        self.stats["transactions"] += 1
        self.stats["rows"] += plan.count
        if full:
            self.stats["fsync_transactions"] += 1

    # -- reads -------------------------------------------------------------------------

    async def identity(self) -> IdentityRef | None:
        rows = await self._reader.execute_fetchall(
            "SELECT key, value FROM meta WHERE key IN ('identity.key_file', 'identity.peer_id')"
        )
        found = {str(k): bytes(v) for k, v in rows}
        if len(found) != 2:
            return None
        return IdentityRef(found["identity.key_file"].decode(), found["identity.peer_id"])

    async def peers(self, limit: int = -1) -> list[PeerInfo]:
        """Known peers, most recently seen first."""
        rows = await self._reader.execute_fetchall(
            "SELECT peer_id, addresses, last_seen_ms FROM peers ORDER BY last_seen_ms DESC LIMIT ?",
            (limit,),
        )
        return [
            PeerInfo(bytes(p), tuple((str(h), int(port)) for h, port in json.loads(a)), int(s))
            for p, a, s in rows
        ]

    async def communities(self) -> list[CommunityInfo]:
        """The communities we joined, oldest first."""
        rows = await self._reader.execute_fetchall(
            "SELECT key, name, joined_ms, role FROM communities "
            "WHERE joined_ms IS NOT NULL ORDER BY joined_ms, id"
        )
        return [CommunityInfo(bytes(k), n, int(j), r) for k, n, j, r in rows]

    async def authority_entries(self, community: bytes) -> list[bytes]:
        """A community's authority entries in arrival order (parents first)."""
        rows = await self._reader.execute_fetchall(
            "SELECT a.raw FROM authority_entries a JOIN communities c ON c.id = a.community_id "
            "WHERE c.key = ? ORDER BY a.arrival",
            (bytes(community),),
        )
        return [bytes(r[0]) for r in rows]

    async def load_authority(self, community: bytes, **options: Any) -> AuthorityLog:
        """Rebuild a community's ``AuthorityLog`` from the stored entries (one batch, no
        clock: the entries were judged when they were admitted)."""
        log = AuthorityLog(bytes(community), **options)
        log.add_many(await self.authority_entries(community), None)
        return log

    async def feed_lengths(self, community: bytes) -> dict[bytes, int]:
        """Per author, the highest stored sequence number (what sync compares; the store
        does not check for gaps: the feeds layer stores an author's entries in order)."""
        rows = await self._reader.execute_fetchall(_FEED_LENGTHS, (bytes(community),))
        return {bytes(a): int(top) & MAX_SEQ for a, top in rows if top is not None}

    async def feed_entries_since(
        self, community: bytes, author: bytes, seq: int, limit: int = -1
    ) -> list[tuple[int, bytes]]:
        """``(seq, raw)`` of an author's entries with a sequence number above ``seq``,
        ascending (``seq=0`` or ``-1`` for all, depending on where feeds start)."""
        after = max(-1, min(seq, MAX_SEQ))
        rows = await self._reader.execute_fetchall(
            _FEED_SINCE, (bytes(community), bytes(author), after, limit)
        )
        return [(int(k) & MAX_SEQ, bytes(raw)) for k, raw in rows]

    async def feed_entry(self, community: bytes, author: bytes, seq: int) -> bytes | None:
        got = await self.feed_entries_since(community, author, seq - 1, 1)
        return got[0][1] if got and got[0][0] == seq else None

    async def channel_page(
        self,
        community: bytes,
        channel: bytes,
        before_hlc: int | None = None,
        limit: int = 100,
        *,
        before: tuple[int, bytes, bytes] | None = None,
        entries: bool = False,
    ) -> list[ChannelRow]:
        """The ``limit`` latest messages of a channel before a point, in view order
        (oldest first): one range scan of the index, newest end first.

        ``before_hlc``: messages with a smaller HLC; ``before``: messages before a row's
        ``cursor`` (exact paging even through equal HLCs); neither: the latest.
        ``entries=True`` also fetches each message's feed entry bytes.
        """
        params: list[Any] = [bytes(community), bytes(channel)]
        if before is not None:
            params += [before[0], bytes(before[1]), bytes(before[2])]
        elif before_hlc is not None:
            params.append(before_hlc)
        sql = _page_sql(
            "row" if before is not None else "hlc" if before_hlc is not None else "", entries
        )
        rows = await self._reader.execute_fetchall(sql, (*params, limit))
        page = [
            ChannelRow(
                int(r[0]),
                bytes(r[1]),
                bytes(r[2]),
                int(r[3]),
                bytes(r[4]) if entries and r[4] is not None else None,
            )
            for r in rows
        ]
        page.reverse()
        return page

    async def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        """``EXPLAIN QUERY PLAN`` details (tests check that pages use the index)."""
        rows = await self._reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", tuple(params))
        return [str(r[-1]) for r in rows]


# ------------------------------------------------------------------------------ helpers


def _page_sql(before: str, entries: bool) -> str:
    """The page query: ``before`` is ``"row"`` (a cursor), ``"hlc"`` or ``""`` (latest)."""
    columns = _PAGE_COLUMNS + (", e.raw" if entries else "")
    join = " LEFT JOIN feed_entries e ON e.key = (i.feed_id << 32) | i.seq" if entries else ""
    where = f"i.channel_id = ({_CHANNEL_ID})"
    if before == "row":
        where += " AND (i.hlc, i.author, i.message_id) < (?, ?, ?)"
    elif before == "hlc":
        where += " AND i.hlc < ?"
    return f"SELECT {columns} FROM channel_index i{join} WHERE {where} {_PAGE_ORDER}"


async def _fetch_one(db: aiosqlite.Connection, sql: str) -> Any:
    rows = list(await db.execute_fetchall(sql))
    return rows[0][0] if rows else None


async def _migrate(db: aiosqlite.Connection, path: Path, migrations: Sequence[str]) -> None:
    version = int(await _fetch_one(db, "PRAGMA user_version"))
    if version > len(migrations):
        raise StoreError(
            f"{path} has schema version {version}, newer than this Starling knows "
            f"({len(migrations)}); refusing to touch it"
        )
    for v in range(version, len(migrations)):
        # One transaction per step: a kill mid-migration leaves version v, intact.
        script = f"BEGIN IMMEDIATE;\n{migrations[v]}\nPRAGMA user_version = {v + 1};\nCOMMIT;"
        try:
            await db.executescript(script)
        except BaseException:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise


async def _load_keys(db: aiosqlite.Connection) -> _Keys:
    keys = _Keys()
    for cid, key in await db.execute_fetchall("SELECT id, key FROM communities"):
        keys.communities[bytes(key)] = int(cid)
    for fid, cid, author in await db.execute_fetchall("SELECT id, community_id, author FROM feeds"):
        keys.feeds[(int(cid), bytes(author))] = int(fid)
    for chid, cid, channel in await db.execute_fetchall(
        "SELECT id, community_id, channel FROM channels"
    ):
        keys.channels[(int(cid), bytes(channel))] = int(chid)
    for table in keys.next_ids:
        top = await _fetch_one(db, f"SELECT max(id) FROM {table}")
        keys.next_ids[table] = 1 + int(top or 0)
    return keys


__all__ = [
    "DB_FILE_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ChannelRow",
    "CommunityInfo",
    "FeedRecord",
    "IdentityRef",
    "MessageRef",
    "PeerInfo",
    "Store",
    "StoreError",
]
