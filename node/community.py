"""Communities on a running node: the client API over sync, gossip and the store.

Theory of operation
-------------------
One :class:`Communities` object per node holds, per community, a
``proto.sync.Replica`` (the authority log and the members' feeds) and glues it
to the rest of the node:

* **Sessions.** Every session whose peer speaks ``starling/community/1`` gets
  a ``proto.sync.SyncSession``: each side opens its own stream, sends HELLO
  (tags of its communities under a fresh nonce), and the cores exchange HAVE,
  ENTRIES and DONE (spec/06-community.md section 9). A peer that breaks the
  protocol has its session closed with the ``SYNC_*`` code; the node goes on
  serving the others.
* **Gossip.** Each community is a gossip topic; our own new entries are
  published there as LIVE messages, and the gossip validator hands received
  ones to ``Replica.take_live`` (accept / ignore / reject). When a live entry
  cannot be judged yet (unknown parents, a gap in a feed, an author not yet
  known as a member), the node asks the peer that sent it for a sync.
* **Storage.** Whatever a replica admits is written to the ``Store``: our own
  entries with ``fsync=True`` before the call that wrote them returns (so an
  acknowledged post survives ``kill -9`` and a power cut), received ones with
  ``fsync=False`` in the background (they can be fetched again). A feed is
  stored under the key ``author || device`` (40 bytes). Reopening a store
  replays every community from its rows.
* **Presence.** With a DHT, the node publishes a presence record (kind 4,
  spec/03-dht.md) per community every ``presence_interval`` seconds; a joiner
  starts from the invite link's peers, then reads the presence records and
  dials members by peer ID.

Signature checks of a large sync batch (an ENTRIES message read ahead) run in two
worker processes, shared by every ``Communities`` of the Python process: libsodium
releases the GIL, but a checking thread must take it back after every signature, and
it waits while the event loop runs Python (applying the batch before, reading the
next), so threads checked mostly while the loop was idle. Items that fail in a worker
are checked again here, for their errors. The workers start with the first large batch
and stop after ``VERIFY_IDLE`` seconds without one (an idle node runs none); while they
start, where they cannot be started, and for the other batches, the checks run on two
threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import os
import pickle
import queue
import random
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starling.proto import codec
from starling.proto import community as com
from starling.proto.dht import KIND_PRESENCE, Record, presence_key
from starling.proto.errors import (
    ErrorCode,
    LocalProtocolError,
    StarlingError,
)
from starling.proto.feeds import (
    Feed,
    FeedEntry,
    Message,
    Prepared,
    prepare,
    verify_serially,
)
from starling.proto.gossip import Message as GossipMessage
from starling.proto.gossip import Verdict
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.sync import (
    LIVE_AUTHORITY,
    LIVE_FEED,
    PROTOCOL_ID,
    Entries,
    Intake,
    LiveVerdict,
    Replica,
    SyncDone,
    SyncError,
    SyncReceived,
    SyncSession,
    decode_live,
    decode_message,
    encode_live,
)

from .dial import dial_first
from .gossip import GossipService
from .session import Node, Session, SessionDown, SessionEvent, SessionUp, Stream, StreamClosed
from .store import FeedRecord, MessageRef, Store

log = logging.getLogger("starling.community")

__all__ = [
    "ChannelView",
    "ClientError",
    "Communities",
    "CommunityEvent",
    "CommunityView",
    "MemberView",
    "MessageView",
    "feed_record",
]

DEVICE_META = "community.device"
MESSAGE_ID_SIZE = 48  # author key (32) || device (8) || seq (8)
JOIN_TIMEOUT = 30.0
JOIN_EARLY = 5.0
PRESENCE_TTL = 600
RESYNC_INTERVAL = 30.0
MEET_TARGET = 4  # members per community we seek sessions with through presence
MEET_DELAY = 1.0  # s after losing a member session before meeting more [COM-R68]
MEET_STAGGER = 0.25  # s before dialling the next member while none answered (RFC 8305)
MAX_DEFERRED = 1024  # live messages kept while their entries wait


# Worker processes checking the signatures of large sync batches; the environment
# variable STARLING_VERIFY_PROCESSES=0 makes threads check them (for comparisons). They
# start with the first large batch and stop after VERIFY_IDLE seconds without one.
VERIFY_PROCESSES = 2
VERIFY_IDLE = 30.0


class _Worker:
    """One ``starling.node.verifier`` process and its pipes (used by one thread at once)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "starling.node.verifier"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(size)
        if len(data) != size:
            raise ConnectionError("the signature-checking process ended")
        return data

    def wait_ready(self) -> None:
        if self._read(1) != b"R":
            raise ConnectionError("the signature-checking process did not start")

    def failed(self, items: list[tuple[bytes, str, bytes, bytes]]) -> list[int]:
        assert self.proc.stdin is not None
        request = pickle.dumps(items)
        self.proc.stdin.write(len(request).to_bytes(4, "big") + request)
        self.proc.stdin.flush()
        answer = pickle.loads(self._read(int.from_bytes(self._read(4), "big")))
        assert isinstance(answer, list)
        return answer

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the worker ends at the end of its input
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _Verifiers:
    """The worker processes that check signatures of large sync batches, shared by every
    ``Communities`` of this Python process. They start with the first large batch (which,
    like any batch while they start, is checked on threads) and stop after VERIFY_IDLE
    seconds without one, so an idle node runs none. Each checks one half of a batch, from
    a thread of ours that waits on its pipes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._threads: ThreadPoolExecutor | None = None
        self._ready: concurrent.futures.Future[None] | None = None
        self._inflight = 0
        self._last_used = 0.0
        self._timer: threading.Timer | None = None
        self.broken = False
        self.checked = 0  # signatures checked in the workers
        self.starts = 0  # times the workers were started
        self._pid = os.getpid()  # a forked child starts workers of its own
        atexit.register(self._stop)

    def start(self) -> concurrent.futures.Future[None] | None:
        """Start the workers unless they run; the future is done when they are ready (None:
        no workers, threads check)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's workers are not ours
                self.__init__()  # type: ignore[misc]
            if self.broken:
                return None
            if self._ready is not None:
                return self._ready
            if os.environ.get("STARLING_VERIFY_PROCESSES", "").strip() == "0":
                self.broken = True
                return None
            workers: list[_Worker] = []
            try:
                for _ in range(VERIFY_PROCESSES):
                    workers.append(_Worker())
            except OSError as exc:  # then threads check
                log.info("no signature-checking processes: %s", exc)
                self.broken = True
                for worker in workers:
                    worker.stop()
                return None
            self._workers = workers
            self._idle = queue.SimpleQueue()  # none of a stopped generation
            for worker in workers:
                self._idle.put(worker)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    VERIFY_PROCESSES, thread_name_prefix="starling-verifier"
                )
            self._ready = self._threads.submit(self._wait_ready, workers)
            self.starts += 1
            self._last_used = time.monotonic()
            self._arm(VERIFY_IDLE)
            return self._ready

    @staticmethod
    def _wait_ready(workers: list[_Worker]) -> None:
        for worker in workers:
            worker.wait_ready()

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._idle_check)
        self._timer.daemon = True
        self._timer.start()

    def _idle_check(self) -> None:
        """Stop the workers once VERIFY_IDLE seconds passed without a batch."""
        with self._lock:
            if self._pid != os.getpid() or not self._workers:
                return
            left = self._last_used + VERIFY_IDLE - time.monotonic()
            if left > 0 or self._inflight:
                self._arm(max(left, 0.05))
                return
            workers, self._workers, self._ready = self._workers, [], None
            self._idle = queue.SimpleQueue()
        for worker in workers:
            worker.stop()

    def _stop(self) -> None:
        if self._pid != os.getpid():
            return
        with self._lock:
            workers, self._workers, self._ready = self._workers, [], None
            if self._timer is not None:
                self._timer.cancel()
        for worker in workers:
            worker.stop()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None

    async def ready(self) -> None:
        """Start the workers if needed and wait until they are ready."""
        future = self.start()
        if future is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.wrap_future(future)

    def _call(self, items: list[tuple[bytes, str, bytes, bytes]]) -> list[int]:
        idle = self._idle  # this generation's (a restart makes a new queue)
        worker = idle.get()  # only the thread holding a worker reads its pipes
        try:
            return worker.failed(items)
        finally:
            idle.put(worker)

    async def failed(
        self, loop: asyncio.AbstractEventLoop, items: list[tuple[bytes, str, bytes, bytes]]
    ) -> list[int] | None:
        """The indexes of ``items`` whose signature does not hold; None: check them on
        threads (no workers, or they are still starting)."""
        ready = self.start()
        if ready is None or not ready.done():
            return None
        with self._lock:
            if ready is not self._ready or self._threads is None:
                return None  # stopped meanwhile
            if ready.exception() is not None:
                log.warning("signature-checking processes failed: %s", ready.exception())
                self.broken = True
                return None
            self._inflight += 1
            self._last_used = time.monotonic()
            threads = self._threads
        half = len(items) // 2
        try:
            first, second = await asyncio.gather(
                loop.run_in_executor(threads, self._call, items[:half]),
                loop.run_in_executor(threads, self._call, items[half:]),
            )
        except (ConnectionError, OSError, ValueError) as exc:  # threads check from now on
            log.warning("signature-checking processes failed: %s", exc)
            self.broken = True
            return None
        finally:
            with self._lock:
                self._inflight -= 1
                self._last_used = time.monotonic()
        self.checked += len(items)
        return first + [half + i for i in second]


_VERIFIERS = _Verifiers()


class ClientError(LocalProtocolError):
    """A request of the API that cannot be done (an unknown community, member, channel)."""


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class MessageView:
    message_id: bytes  # 48 bytes: author key || device || seq
    author: str  # peer ID text
    author_name: str | None
    time_ms: int
    text: str
    reply_to: bytes | None
    edited: bool
    channel: bytes


@dataclass(frozen=True, slots=True)
class MemberView:
    peer_id: str
    key: bytes
    display_name: str | None
    role: str  # member, moderator, admin, owner; "banned" for a banned key
    banned: bool
    online: bool


@dataclass(frozen=True, slots=True)
class ChannelView:
    id: bytes
    name: str
    category: str | None


@dataclass(frozen=True, slots=True)
class CommunityView:
    id: str
    name: str | None
    channels: tuple[ChannelView, ...]
    role: str | None  # ours; None: not a member (yet)


@dataclass(frozen=True, slots=True)
class CommunityEvent:
    """``kind``: message_posted, message_edited, message_deleted, member_joined,
    member_banned, member_unbanned, role_changed, channel_added, entry_rejected."""

    kind: str
    community: str
    message: MessageView | None = None
    member: str | None = None  # peer ID text
    channel: bytes | None = None
    entry_id: bytes | None = None
    code: ErrorCode | None = None
    reason: str | None = None


@functools.lru_cache(maxsize=4096)
def _peer_text(key: bytes) -> str:
    return PeerId.from_public_key(key).text()


def _mid(author: bytes, message_id: bytes) -> bytes:
    return author + message_id


# ----------------------------------------------------------------------------- per peer


class _Peer:
    """Sync with one session: the core, our stream, a writer task."""

    def __init__(self, owner: Communities, session: Session) -> None:
        self.owner = owner
        self.session = session
        self.core = SyncSession(owner._replicas, owner._loop.time(), verify=owner._verify)
        self.wakeup = asyncio.Event()
        self.task = owner._loop.create_task(self._write())
        self.done: dict[bytes, asyncio.Event] = {}
        self.progress: set[bytes] = set()  # communities that got new entries this round

    async def _write(self) -> None:
        stream: Stream | None = None
        try:
            stream = await self.session.open_stream(PROTOCOL_ID)
            while True:
                # Frames are taken (and a sync reply's ENTRIES encoded) one at a time, each
                # leaving before the next is encoded.
                while (frame := self.core.next_frame()) is not None:
                    await stream.send(frame)
                    await asyncio.sleep(0)
                self.wakeup.clear()
                await self.wakeup.wait()
        except (StreamClosed, ConnectionError) as exc:
            log.debug("sync stream to %s closed: %s", self.session, exc)
        except asyncio.CancelledError:
            if stream is not None:
                with contextlib.suppress(StreamClosed):
                    await stream.close()
            raise

    def flush(self) -> None:
        """The core may have frames to send: wake the writer."""
        self.wakeup.set()


# ----------------------------------------------------------------------------- the API


class Communities:
    """A node's communities: create, invite, join, post, read, moderate (issue #7, 8)."""

    def __init__(
        self,
        node: Node,
        gossip: GossipService,
        store: Store,
        identity: PrivateKey,
        dht: object | None,
        clock: Callable[[], float],
        device: bytes,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.node = node
        self.gossip = gossip
        self.store = store
        self.identity = identity
        self.key = identity.public_key.raw
        self.dht = dht
        self.clock = clock
        self.device = device
        self.presence_interval = 60.0
        # A HAVE to one peer per community this often, whatever else happens [COM-R69].
        self.resync_interval = RESYNC_INTERVAL
        self.stats: dict[str, int] = {}
        self._replicas: dict[bytes, Replica] = {}
        self._writers: dict[bytes, Feed] = {}
        self._topics: dict[bytes, bytes] = {}  # gossip topic -> community
        self._names: dict[bytes, str | None] = {}
        self._peers: dict[Session, _Peer] = {}
        self._listeners: list[Callable[[CommunityEvent], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="starling-verify")
        self._presence_seen: dict[tuple[bytes, bytes], float] = {}  # (community, key)
        # Live messages ignored while their entry waited (parents, a gap, a JOIN), by
        # entry: accepted late, and so forwarded, once the entry is taken [COM-R67].
        self._deferred: OrderedDict[bytes, tuple[float, GossipMessage]] = OrderedDict()
        self._presence_task: asyncio.Task[None] | None = None
        self._unreached: dict[bytes, float] = {}  # member key -> when a dial to it failed
        self._meet_task: asyncio.Task[None] | None = None
        self._meet_again = False
        self._resync_task: asyncio.Task[None] | None = None
        self._closed = False
        self._previous_validator = gossip.core.validator
        gossip.core.validator = self._validate

    @classmethod
    async def open(
        cls,
        node: Node,
        gossip: GossipService,
        store: Store,
        identity: PrivateKey,
        *,
        dht: object | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Communities:
        """Load every stored community and start serving sync on sessions."""
        device = await store.get_meta(DEVICE_META)
        if device is None:
            device = os.urandom(8)
            await store.set_meta(DEVICE_META, device)
        self = cls(node, gossip, store, identity, dht, clock, bytes(device))
        for info in await store.communities():
            await self._load(info.key, info.name)
        node.set_handler(PROTOCOL_ID, self._serve)
        node.add_listener(self._on_session_event)
        for session in node.sessions:
            self._peer(session)
        if dht is not None:
            self._presence_task = self._loop.create_task(self._presence_loop())
        self._resync_task = self._loop.create_task(self._resync_loop())
        return self

    async def _load(self, key: bytes, name: str | None) -> Replica:
        authority = await self.store.load_authority(key)
        replica = Replica(key, authority)
        now = self._now_ms()
        for feed_key in sorted(await self.store.feed_lengths(key)):
            rows = await self.store.feed_entries_since(key, feed_key, 0)
            replica.feeds.add_many([raw for _, raw in rows], now, self._verify)
        replica._changes.clear()
        self._attach(key, replica, name)
        return replica

    def _attach(self, key: bytes, replica: Replica, name: str | None) -> None:
        self._replicas[key] = replica
        self._names[key] = name
        topic = com.CommunityId(key).topic(self.node.config.network_id)
        self._topics[topic] = key
        self.gossip.subscribe(topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._presence_task, self._resync_task):
            if task is not None:
                task.cancel()
        for peer in list(self._peers.values()):
            peer.task.cancel()
        self._peers.clear()
        for task in list(self._side_tasks):
            task.cancel()
        if self._side_tasks:
            await asyncio.gather(*self._side_tasks, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.gossip.core.validator == self._validate:
            self.gossip.core.validator = self._previous_validator
        self._pool.shutdown(wait=True)

    # -- helpers ----------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _verify(self, items: list[tuple[bytes, str, bytes, bytes]]) -> list[StarlingError | None]:
        if len(items) < 64 or self._closed:
            return verify_serially(items)
        half = len(items) // 2
        parts = list(self._pool.map(verify_serially, (items[:half], items[half:])))
        return parts[0] + parts[1]

    def _replica(self, community: str | bytes) -> tuple[bytes, Replica]:
        try:
            key = (
                community if isinstance(community, bytes) else com.CommunityId.parse(community).raw
            )
        except StarlingError as exc:
            raise ClientError(
                ErrorCode.COMMUNITY_UNKNOWN, f"{community!r} is not a community ID: {exc}"
            ) from None
        replica = self._replicas.get(key)
        if replica is None:
            raise ClientError(
                ErrorCode.COMMUNITY_UNKNOWN,
                f"this node holds no community {com.CommunityId(key).text()}: join it first",
            )
        return key, replica

    def _channel(self, replica: Replica, channel: str | bytes) -> bytes:
        channels = replica.authority.state.channels
        if isinstance(channel, bytes) and channel in channels:
            return channel
        if isinstance(channel, str):
            with contextlib.suppress(ValueError):
                raw = bytes.fromhex(channel)
                if raw in channels:
                    return raw
            found = [c.id for c in channels.values() if c.name == channel.lstrip("#")]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise ClientError(
                    ErrorCode.COMMUNITY_AMBIGUOUS_NAME,
                    f"{len(found)} channels are named {channel!r}: use the channel ID",
                )
        names = ", ".join(sorted(c.name for c in channels.values())) or "none"
        raise ClientError(
            ErrorCode.COMMUNITY_UNKNOWN_CHANNEL, f"no channel {channel!r} (channels: {names})"
        )

    def _member(self, replica: Replica, member: str | bytes) -> bytes:
        state = replica.authority.state
        known = set(state.roles) | set(state.banned)
        if isinstance(member, bytes) and len(member) == 32 and member in known:
            return member
        text = member if isinstance(member, str) else member.hex()
        with contextlib.suppress(StarlingError):
            pid = PeerId.parse(text)
            for key in known:
                if PeerId.from_public_key(key) == pid:
                    return key
            raise ClientError(
                ErrorCode.COMMUNITY_NO_SUCH_MEMBER, f"{text} is not a member of this community"
            )
        found = [k for k in known if state.profiles.get(k) == text]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ClientError(
                ErrorCode.COMMUNITY_AMBIGUOUS_NAME,
                f"{len(found)} members are called {text!r}: use their peer ID",
            )
        raise ClientError(
            ErrorCode.COMMUNITY_NO_SUCH_MEMBER,
            f"no member is called {text!r}: use a peer ID (sp1...) or a display name",
        )

    def _writer(self, key: bytes, replica: Replica) -> Feed:
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = replica.feeds.writer(self.identity, self.device)
        return writer

    def _spawn(self, coro: object, *, side: bool = False) -> None:
        """Run ``coro`` in the background: store writes (``close`` waits for them) or,
        with ``side``, work that ``close`` cancels (presence)."""
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        (self._side_tasks if side else self._tasks).add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("community task failed: %r", task.exception())

    # -- writing our own entries --------------------------------------------------------

    async def _author(self, key: bytes, replica: Replica, entry: com.Entry) -> com.Entry:
        """Admit, store (fsync) and publish one of our own authority entries."""
        result = replica.authority.add(entry.raw, self._now_ms())
        intake = Intake()
        replica._authority_events(intake, self._now_ms())
        if result.outcome is not com.Outcome.ACCEPTED:
            assert result.error is not None
            raise ClientError(result.error.code, f"refused: {result.error.reason}")
        status = replica.authority.status(entry.id)
        await self.store.put_authority_entries(key, intake.authority, fsync=True)
        self._emit_intake(key, intake)
        self._publish(key, LIVE_AUTHORITY, entry.raw)
        if status.error is not None:
            raise ClientError(status.error.code, f"the entry is void: {status.error.reason}")
        return entry

    def _publish(self, key: bytes, kind: int, raw: bytes) -> None:
        topic = com.CommunityId(key).topic(self.node.config.network_id)
        self.gossip.publish(topic, encode_live(kind, raw))

    async def _write_feed(self, key: bytes, replica: Replica, raw: bytes) -> FeedEntry:
        writer = self._writer(key, replica)
        entry = replica.feeds.feed_entries(self.key, self.device, writer.length - 1)[0]
        assert entry.raw == raw
        await self.store.put_feed_entries(key, [feed_record(replica, entry)], fsync=True)
        self._publish(key, LIVE_FEED, raw)
        return entry

    # -- the API: communities -----------------------------------------------------------

    async def create(self, name: str) -> str:
        """A new community owned by this node's identity; returns its ID ``sc1...``."""
        community_key = PrivateKey(os.urandom(32))
        key = community_key.public_key.raw
        entries = com.genesis(community_key, self.key, self._now_ms(), name)
        replica = Replica(key)
        for entry in entries:
            replica.authority.add(entry.raw)
        while replica.authority.next_event() is not None:
            pass
        await self.store.put_authority_entries(key, [e.raw for e in entries], fsync=True)
        await self.store.set_meta(f"community.root.{key.hex()}", community_key.seed)
        await self.store.put_community(key, name=name, role=com.Role.OWNER)
        self._attach(key, replica, name)
        self._announce()
        if self.dht is not None:
            self._spawn(self.publish_presence(), side=True)
        return com.CommunityId(key).text()

    def communities(self) -> list[CommunityView]:
        out = []
        for key, replica in self._replicas.items():
            state = replica.authority.state
            role = state.role_of(self.key)
            channels = tuple(
                ChannelView(c.id, c.name, c.category)
                for c in sorted(state.channels.values(), key=lambda c: (c.name, c.id))
            )
            out.append(
                CommunityView(
                    com.CommunityId(key).text(),
                    state.name or self._names.get(key),
                    channels,
                    None if role is None else role.name.lower(),
                )
            )
        return out

    async def invite(
        self,
        community: str,
        *,
        uses: int | None = None,
        expires_s: int | None = None,
        role: str = "member",
        hints: Iterable[com.PeerHint] = (),
    ) -> str:
        """A ``starling://join/...`` link with this node (and ``hints``) as peers to start from."""
        key, replica = self._replica(community)
        try:
            cap_role = com.Role[role.upper()]
        except KeyError:
            raise ClientError(
                ErrorCode.COMMUNITY_INVITE_INVALID,
                f"role {role!r}: use member, moderator or admin",
            ) from None
        expires = self._now_ms() + 1000 * (expires_s if expires_s is not None else 7 * 86400)
        cap = com.make_capability(
            self.identity,
            key,
            expires_ms=expires,
            nonce=os.urandom(com.NONCE_SIZE),
            max_uses=uses if uses is not None else com.MAX_USES,
            role=cap_role,
        )
        state = replica.authority.state
        if not com.Permission.INVITE & state.permissions(self.key):
            raise ClientError(
                ErrorCode.COMMUNITY_NOT_PERMITTED, "your role may not invite in this community"
            )
        addresses = tuple(self.node.candidates()[: com.MAX_HINT_ADDRESSES])
        own = com.PeerHint(self.node.peer_id.raw, addresses)
        link = com.InviteLink(cap, (own, *tuple(hints)[: com.MAX_HINTS - 1]))
        return link.text()

    async def join(self, link: str, *, display_name: str | None = None) -> str:
        """Join by invite link: reach the link's peers, sync, write our join entry."""
        invite = com.InviteLink.parse(link)
        cap = invite.capability
        key = cap.community
        now = self._now_ms()
        if now > cap.expires_ms + com.CLOCK_SKEW_MS:
            raise ClientError(
                ErrorCode.COMMUNITY_INVITE_EXPIRED,
                "this invite has expired: ask a member for a new link",
            )
        replica = self._replicas.get(key)
        if replica is not None and replica.authority.state.is_member(self.key):
            return com.CommunityId(key).text()
        if replica is None:
            replica = Replica(key)
            self._attach(key, replica, None)
        self._announce()
        sessions = await self._reach(invite.peers)
        if sessions:  # more members through presence, without waiting for them
            self._spawn(self._find_members(key), side=True)
        else:  # nobody of the link: the presence records are all there is
            sessions = await self._find_members(key)
        if not await self._wait_synced(key, sessions, cap.inviter):
            raise ClientError(
                ErrorCode.COMMUNITY_JOIN_FAILED,
                "no member of this community could be reached: try again when one is online, "
                "or ask for a link with other peers",
            )
        parents = replica.authority.heads()
        entry = com.join(self.identity, cap, parents, max(now, _latest(replica) + 1))
        await self._author(key, replica, entry)
        name = replica.authority.state.name
        self._names[key] = name
        await self.store.put_community(key, name=name, role=cap.role)
        if display_name is not None:
            await self.set_name(com.CommunityId(key).text(), display_name)
        if self.dht is not None:
            self._spawn(self.publish_presence(), side=True)
        return com.CommunityId(key).text()

    async def _reach(self, hints: Iterable[com.PeerHint]) -> list[Session]:
        results = await asyncio.gather(*(self._dial_hint(h) for h in hints))
        return [s for s in results if s is not None]

    async def _dial_hint(self, hint: com.PeerHint) -> Session | None:
        """A session with a link's peer: its direct addresses all at once; after a head
        start, its relays and (with a DHT) its peer record too; the first that works wins."""
        node = self.node
        pid = PeerId(hint.peer_id)
        if pid == node.peer_id:
            return None
        existing = node.session_with(pid)
        if existing is not None:
            return existing
        later = [lambda: node.connect(pid, timeout=10.0)] if node.resolver is not None else []
        try:
            return await dial_first(node, pid, hint.addresses, hint.relays, 10.0, later)
        except Exception as exc:  # this peer is out of reach: the link's others may do
            log.info("invite peer %s out of reach: %s", pid, exc)
            return None

    async def _wait_synced(
        self, key: bytes, sessions: list[Session], inviter: bytes | None = None
    ) -> bool:
        """Until a peer finished answering our HAVE for ``key`` and the log holds entries;
        after ``JOIN_EARLY`` seconds (a long history still on its way: authority entries
        come first), as soon as the log shows the inviter as a member."""
        start = self._loop.time()
        deadline = start + JOIN_TIMEOUT
        replica = self._replicas[key]
        while self._loop.time() < deadline:
            log_ = replica.authority
            if (
                inviter is not None
                and self._loop.time() > start + JOIN_EARLY
                and log_.state.is_member(inviter)
                and not log_.missing()
            ):
                return True
            for session in [*sessions, *self.node.sessions]:
                peer = self._peers.get(session)
                if peer is None:
                    peer = self._peer(session)
                if peer is None:
                    continue
                event = peer.done.get(key)
                if event is not None and event.is_set() and len(replica.authority) > 0:
                    return not replica.authority.missing() or await self._settle(key)
            await asyncio.sleep(0.05)
        return False

    async def _settle(self, key: bytes) -> bool:
        for _ in range(40):
            if not self._replicas[key].authority.missing():
                return True
            await asyncio.sleep(0.05)
        return False

    # -- the API: authority -----------------------------------------------------------------

    async def add_channel(self, community: str, name: str, category: str | None = None) -> str:
        """A new channel; returns its ID (hex)."""
        key, replica = self._replica(community)
        entry = com.channel_add(
            self.identity, key, replica.authority.heads(), self._time(replica), name, category
        )
        await self._author(key, replica, entry)
        return entry.id.hex()

    async def grant(self, community: str, member: str, role: str) -> None:
        key, replica = self._replica(community)
        target = self._member(replica, member)
        if role.lower() == "member":
            entry = com.role_revoke(
                self.identity, key, replica.authority.heads(), self._time(replica), target
            )
        else:
            try:
                value = com.Role[role.upper()]
            except KeyError:
                raise ClientError(
                    ErrorCode.COMMUNITY_BAD_TARGET,
                    f"role {role!r}: use member, moderator, admin or owner",
                ) from None
            entry = com.role_grant(
                self.identity, key, replica.authority.heads(), self._time(replica), target, value
            )
        await self._author(key, replica, entry)

    async def ban(self, community: str, member: str, reason: str | None = None) -> None:
        key, replica = self._replica(community)
        target = self._member(replica, member)
        entry = com.ban(
            self.identity, key, replica.authority.heads(), self._time(replica), target, reason
        )
        await self._author(key, replica, entry)

    async def unban(self, community: str, member: str) -> None:
        key, replica = self._replica(community)
        target = self._member(replica, member)
        entry = com.unban(
            self.identity, key, replica.authority.heads(), self._time(replica), target
        )
        await self._author(key, replica, entry)

    async def set_name(self, community: str, display_name: str) -> None:
        """Our display name in ``community`` (a profile entry)."""
        key, replica = self._replica(community)
        entry = com.profile(
            self.identity, key, replica.authority.heads(), self._time(replica), display_name
        )
        await self._author(key, replica, entry)

    def _time(self, replica: Replica) -> int:
        return max(self._now_ms(), _latest(replica) + 1)

    async def members(self, community: str) -> list[MemberView]:
        key, replica = self._replica(community)
        state = replica.authority.state
        online = self._online(key)
        out = []
        for member_key in sorted(set(state.roles) | set(state.banned)):
            banned = member_key in state.banned
            role = state.roles.get(member_key)
            out.append(
                MemberView(
                    _peer_text(member_key),
                    member_key,
                    state.profiles.get(member_key),
                    "banned" if banned or role is None else role.name.lower(),
                    banned,
                    member_key in online,
                )
            )
        return out

    def _online(self, key: bytes) -> set[bytes]:
        found = {self.key}
        for session, peer in self._peers.items():
            if key in peer.core.shared and not session.closed and session.keys is not None:
                found.add(session.keys.peer.raw)
        horizon = self._loop.time() - PRESENCE_TTL
        for (community, member), seen in self._presence_seen.items():
            if community == key and seen >= horizon:
                found.add(member)
        return found

    # -- the API: messages ------------------------------------------------------------------

    async def post(
        self, community: str, channel: str, text: str, *, reply_to: bytes | None = None
    ) -> bytes:
        """Post ``text``; returns the message ID (48 bytes). Acknowledged = on disk."""
        key, replica = self._replica(community)
        chan = self._channel(replica, channel)
        if not replica.authority.state.can_post(self.key, chan):
            raise ClientError(
                ErrorCode.COMMUNITY_NOT_PERMITTED,
                "you may not post in this channel (not a member, banned, or the channel's "
                "permissions)",
            )
        reply = None
        if reply_to is not None:
            if len(reply_to) != MESSAGE_ID_SIZE:
                raise ClientError(ErrorCode.FEED_ENTRY_MALFORMED, "a message ID is 48 bytes")
            reply = (reply_to[:32], reply_to[32:])
        writer = self._writer(key, replica)
        raw = self._guard(lambda: writer.post(chan, text, self._now_ms(), reply))
        entry = await self._write_feed(key, replica, raw)
        self._drain_changes(key, replica)
        return _mid(self.key, entry.device + entry.seq.to_bytes(8, "big"))

    async def edit(self, community: str, message_id: bytes, text: str) -> None:
        key, replica = self._replica(community)
        mid = self._own(message_id)
        writer = self._writer(key, replica)
        raw = self._guard(lambda: writer.edit(mid, text, self._now_ms()))
        await self._write_feed(key, replica, raw)
        self._drain_changes(key, replica)

    async def delete(self, community: str, message_id: bytes) -> None:
        key, replica = self._replica(community)
        mid = self._own(message_id)
        writer = self._writer(key, replica)
        raw = self._guard(lambda: writer.delete(mid, self._now_ms()))
        await self._write_feed(key, replica, raw)
        self._drain_changes(key, replica)

    def _own(self, message_id: bytes) -> bytes:
        if len(message_id) != MESSAGE_ID_SIZE or message_id[:32] != self.key:
            raise ClientError(
                ErrorCode.FEED_ENTRY_MALFORMED, "only your own messages can be edited or deleted"
            )
        return message_id[32:]

    @staticmethod
    def _guard(write: Callable[[], bytes]) -> bytes:
        try:
            return write()
        except StarlingError as exc:
            raise ClientError(exc.code, exc.reason) from None

    async def page(
        self,
        community: str,
        channel: str,
        *,
        before: bytes | tuple[int, bytes, bytes] | None = None,
        limit: int = 100,
    ) -> list[MessageView]:
        """Up to ``limit`` messages before ``before`` (a message ID or a cursor), oldest
        first."""
        _, replica = self._replica(community)
        chan = self._channel(replica, channel)
        cursor: tuple[int, bytes, bytes] | None = None
        if isinstance(before, bytes):
            msg = replica.feeds.message(before[:32], before[32:])
            if msg is None:
                raise ClientError(ErrorCode.FEED_ENTRY_MALFORMED, "no such message to page from")
            cursor = msg.cursor
        elif before is not None:
            cursor = before
        profiles = replica.authority.state.profiles
        return [self._view(m, profiles) for m in replica.feeds.page(chan, cursor, limit)]

    @staticmethod
    def _view(m: Message, profiles: dict[bytes, str]) -> MessageView:
        return MessageView(
            _mid(m.author, m.id),
            _peer_text(m.author),
            profiles.get(m.author),
            m.hlc >> 16,
            m.text or "",
            None if m.reply_to is None else m.reply_to[0] + m.reply_to[1],
            m.edited is not None,
            m.channel,
        )

    # -- events -----------------------------------------------------------------------------

    async def events(self, community: str | None = None) -> AsyncIterator[CommunityEvent]:
        """Live events from now on, of one community or all."""
        queue: asyncio.Queue[CommunityEvent] = asyncio.Queue()
        wanted = None if community is None else com.CommunityId.parse(community).text()

        def put(event: CommunityEvent) -> None:
            if wanted is None or event.community == wanted:
                queue.put_nowait(event)

        self._listeners.append(put)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(put)

    def add_listener(self, listener: Callable[[CommunityEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: CommunityEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _drain_changes(self, key: bytes, replica: Replica) -> None:
        changes, replica._changes = replica._changes, []
        self._emit_intake(key, Intake(changes=changes))

    def _emit_intake(self, key: bytes, intake: Intake) -> None:
        if not self._listeners:
            return
        text = com.CommunityId(key).text()
        replica = self._replicas.get(key)
        profiles = replica.authority.state.profiles if replica is not None else {}
        for raw in intake.authority:
            held = None if replica is None else replica.authority.entry(com.entry_id(raw))
            entry = held if held is not None else com.parse_entry(raw)
            kind = entry.kind
            if kind == com.Kind.JOIN:
                self._emit(CommunityEvent("member_joined", text, member=_peer_text(entry.author)))
            elif kind == com.Kind.BAN:
                self._emit(CommunityEvent("member_banned", text, member=_peer_text(entry.member)))
            elif kind == com.Kind.UNBAN:
                self._emit(CommunityEvent("member_unbanned", text, member=_peer_text(entry.member)))
            elif kind in (com.Kind.ROLE_GRANT, com.Kind.ROLE_REVOKE):
                self._emit(CommunityEvent("role_changed", text, member=_peer_text(entry.member)))
            elif kind == com.Kind.CHANNEL_ADD:
                self._emit(CommunityEvent("channel_added", text, channel=entry.id))
        for change in intake.changes:
            m = change.message
            kind = (
                "message_deleted"
                if m.text is None
                else "message_posted"
                if change.before is None
                else "message_edited"
            )
            self._emit(CommunityEvent(kind, text, message=self._view(m, profiles)))
        for entry_id, error in intake.rejected:
            self._emit(
                CommunityEvent(
                    "entry_rejected", text, entry_id=entry_id, code=error.code, reason=error.reason
                )
            )

    # -- intake: persist and announce ---------------------------------------------------------

    def _persist(self, key: bytes, replica: Replica, intake: Intake) -> None:
        if self._deferred and (intake.authority or intake.feeds):
            # Entries that waited and are taken now: their live messages spread on, after
            # the message being validated, if one is [COM-R67] [GSP-R27].
            for raw in (*intake.authority, *(e.raw for e in intake.feeds)):
                deferred = self._deferred.pop(raw, None)
                if deferred is not None:
                    self._loop.call_soon(self.gossip.accept_late, deferred[1])
        if intake.authority:
            self._spawn(self.store.put_authority_entries(key, intake.authority, fsync=False))
        if intake.feeds:
            records = [feed_record(replica, e) for e in intake.feeds]
            self._spawn(self.store.put_feed_entries(key, records, fsync=False))
        self._emit_intake(key, intake)
        for entry_id, error in intake.rejected:
            self.stats[f"rejected_{error.code.name}"] = (
                self.stats.get(f"rejected_{error.code.name}", 0) + 1
            )
            log.info("community %s: refused %s: %s", key.hex()[:8], entry_id, error)

    # -- gossip -------------------------------------------------------------------------------

    def _validate(self, message: GossipMessage, peer: object) -> Verdict:
        key = self._topics.get(message.topic)
        if key is None or self._closed:
            previous = self._previous_validator
            return Verdict.ACCEPT if previous is None else previous(message, peer)
        replica = self._replicas[key]
        try:
            kind, raw = decode_live(message.data)
        except SyncError as exc:
            self._persist(key, replica, Intake(rejected=[(None, exc)]))
            return Verdict.REJECT
        intake = Intake()
        verdict, error = replica.take_live(kind, raw, self._now_ms(), intake)
        if verdict is LiveVerdict.IGNORE and (intake.missing or error is not None):
            # Kept while gossip would still take it late (its seen-cache TTL), and bounded.
            now = self._loop.time()
            self._deferred[raw] = (now, message)
            while len(self._deferred) > MAX_DEFERRED or (
                next(iter(self._deferred.values()))[0] < now - self.gossip.core.config.seen_ttl
            ):
                self._deferred.popitem(last=False)
        self._persist(key, replica, intake)
        if intake.missing and isinstance(peer, PeerId):
            self._request(key, peer)
        self.stats[f"live_{verdict.value}"] = self.stats.get(f"live_{verdict.value}", 0) + 1
        if verdict is LiveVerdict.ACCEPT:
            return Verdict.ACCEPT
        if verdict is LiveVerdict.REJECT:
            return Verdict.REJECT
        return Verdict.IGNORE

    def _request(self, key: bytes, peer_id: PeerId) -> None:
        for session, peer in self._peers.items():
            if session.keys is not None and session.keys.peer_id == peer_id:
                if peer.core.request(key):  # or again after the DONE under way
                    peer.flush()
                return

    # -- sessions -----------------------------------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if isinstance(event, SessionUp):
            self._peer(event.session)
        elif isinstance(event, SessionDown):
            peer = self._peers.pop(event.session, None)
            if peer is not None:
                peer.task.cancel()
                self._lost_member(peer.core.shared)

    def _peer(self, session: Session) -> _Peer | None:
        peer = self._peers.get(session)
        if peer is not None:
            return peer
        if (
            self._closed
            or session.closed
            or session.keys is None
            or PROTOCOL_ID not in session.peer_protocols
        ):
            return None
        peer = self._peers[session] = _Peer(self, session)
        peer.core.hello(os.urandom(16))
        peer.flush()
        return peer

    def _announce(self) -> None:
        """A community was added: tell every peer again (a new HELLO) [COM-R61]."""
        for peer in list(self._peers.values()):
            peer.core.hello(os.urandom(16))
            peer.flush()

    async def _serve(self, stream: Stream) -> None:
        session = stream.session
        peer = self._peer(session)
        if peer is None:
            return
        # A reader takes frames off the stream and starts checking the signatures of large
        # batches on the pool's threads at once, so that the checks of the next frames run
        # while this one is applied; frames are still applied one by one, in order.
        ahead: asyncio.Queue[tuple[bytes, asyncio.Future[tuple[Entries, Prepared] | None]] | None]
        ahead = asyncio.Queue(maxsize=8)

        async def read() -> None:
            try:
                async for frame in stream:
                    await ahead.put((frame, asyncio.ensure_future(self._verify_ahead(frame))))
            except StreamClosed:
                pass
            finally:
                await ahead.put(None)

        reader = self._loop.create_task(read())
        try:
            while (item := await ahead.get()) is not None:
                if self._closed:
                    return
                frame, checked = item
                read_ahead = await checked
                if self._closed:
                    return
                decoded, prepared = (None, None) if read_ahead is None else read_ahead
                try:
                    peer.core.receive(frame, self._loop.time(), self._now_ms(), prepared, decoded)
                except SyncError as exc:
                    log.info("sync with %s: %s", session, exc)
                    self.stats[f"sync_{exc.code.name}"] = (
                        self.stats.get(f"sync_{exc.code.name}", 0) + 1
                    )
                    self._drain(peer)
                    await session.close(exc.code, exc.reason[:100])
                    return
                self._drain(peer)
        finally:
            reader.cancel()
            while not ahead.empty():
                pending = ahead.get_nowait()
                if pending is not None:
                    pending[1].cancel()

    async def _verify_ahead(self, frame: bytes) -> tuple[Entries, Prepared] | None:
        """For a large ENTRIES message: read its feed entries and check their signatures in
        the worker processes (or on the pool's threads) while the loop goes on receiving;
        the core takes the message (decoded once) and the result."""
        if len(frame) < 8192:
            return None
        try:
            message = decode_message(frame)
        except SyncError:
            return None  # the core reports it
        if not isinstance(message, Entries) or len(message.feeds) < 64:
            return None
        prepared = prepare(message.feeds, message.community)
        checks = prepared.checks()
        items = [c for _, c in checks]
        failed = await _VERIFIERS.failed(self._loop, items)
        if failed is not None:
            # What failed in a worker is judged again here, for its error.
            again = dict(zip(failed, verify_serially([items[i] for i in failed]), strict=True))
            for i, (raw, _) in enumerate(checks):
                prepared.verified[raw] = again.get(i)
            return message, prepared
        half = len(items) // 2
        parts = await asyncio.gather(
            self._loop.run_in_executor(self._pool, verify_serially, items[:half]),
            self._loop.run_in_executor(self._pool, verify_serially, items[half:]),
        )
        for (raw, _), error in zip(checks, parts[0] + parts[1], strict=True):
            prepared.verified[raw] = error
        return message, prepared

    async def ready(self) -> None:
        """Start the worker processes that check the signatures of large sync batches, and
        wait until they are ready (otherwise they start with the first such batch, which
        threads check meanwhile; they stop after VERIFY_IDLE seconds without one)."""
        await _VERIFIERS.ready()

    def _drain(self, peer: _Peer) -> None:
        while (event := peer.core.next_event()) is not None:
            if isinstance(event, SyncReceived):
                replica = self._replicas.get(event.community)
                if replica is None:
                    continue
                self._persist(event.community, replica, event.intake)
                if event.intake.authority or event.intake.feeds:
                    peer.progress.add(event.community)
                if event.intake.missing:
                    peer.core.request(event.community)
            elif isinstance(event, SyncDone):
                done = peer.done.setdefault(event.community, asyncio.Event())
                done.set()
                replica = self._replicas.get(event.community)
                progressed = event.community in peer.progress
                peer.progress.discard(event.community)
                # Still lacking something after a round that brought something: ask again
                # [COM-R66] (a round that brought nothing would only repeat itself).
                if progressed and replica is not None and replica.lacks():
                    peer.core.request(event.community)
        peer.flush()

    # -- presence -----------------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        """Periodic sync [COM-R69]: what neither gossip nor a noticed gap brought (an
        entry whose only way here ran through a node that took it by sync) comes
        within one period. The phase is random so that members do not ask at once."""
        await asyncio.sleep(self.resync_interval * (0.5 + random.random()))
        while not self._closed:
            self.resync()
            await asyncio.sleep(self.resync_interval * (0.75 + random.random() / 2))

    def resync(self) -> int:
        """Send our HAVE for each community to one peer holding it, chosen at random;
        returns how many were sent."""
        sent = 0
        for key in list(self._replicas):
            peers = [p for p in self._peers.values() if key in p.core.shared]
            if peers and (peer := random.choice(peers)).core.request(key):
                peer.flush()
                sent += 1
        self.stats["resync_have"] = self.stats.get("resync_have", 0) + sent
        return sent

    async def _presence_loop(self) -> None:
        while not self._closed:
            with contextlib.suppress(Exception):
                await self.publish_presence()
            with contextlib.suppress(Exception):
                await self.meet_members()
            await asyncio.sleep(self.presence_interval)

    async def meet_members(self) -> int:
        """For each community in which we have sessions with fewer than ``MEET_TARGET``
        members, dial members named by presence records until we have that many
        [COM-R68]: members who joined while we were away are otherwise met only through
        others, and after a crash around us they are how we get back in. Returns new
        sessions."""
        met = 0
        for key, replica in list(self._replicas.items()):
            if not replica.authority.state.is_member(self.key):
                continue
            if self._member_sessions(key) < MEET_TARGET:
                met += len(await self._find_members(key, enough=MEET_TARGET))
        self.stats["met_by_presence"] = self.stats.get("met_by_presence", 0) + met
        return met

    def _member_sessions(self, key: bytes) -> int:
        """Open sessions with peers that share the community ``key`` with us."""
        return sum(
            1
            for s, p in self._peers.items()
            if key in p.core.shared and not s.closed and s.keys is not None
        )

    def _lost_member(self, shared: Iterable[bytes]) -> None:
        """A session with a member of ``shared`` ended: if that leaves us with fewer than
        ``MEET_TARGET`` members in one of them, meet more now, not at the next
        republication [COM-R68]. Losses that come together (a crash around us, a network
        change) make one meeting, ``MEET_DELAY`` later."""
        if self.dht is None or self._closed:
            return
        if all(self._member_sessions(key) >= MEET_TARGET for key in shared):
            return
        if self._meet_task is not None and not self._meet_task.done():
            self._meet_again = True
            return
        self._meet_task = self._loop.create_task(self._meet_after_loss())
        self._side_tasks.add(self._meet_task)
        self._meet_task.add_done_callback(self._task_done)

    async def _meet_after_loss(self) -> None:
        self._meet_again = True
        while self._meet_again and not self._closed:
            self._meet_again = False
            await asyncio.sleep(MEET_DELAY)
            try:
                met = await self.meet_members()
            except Exception as exc:  # a failed lookup: the presence loop tries again
                log.info("meeting members after a loss failed: %s", exc)
                return
            self.stats["met_after_loss"] = self.stats.get("met_after_loss", 0) + met

    async def publish_presence(self) -> int:
        """Put a presence record (DHT kind 4) for every community we are a member of."""
        dht = self.dht
        if dht is None:
            return 0
        done = 0
        network = self.node.config.network_id
        addresses = self.node.candidates()[:4]
        for key, replica in list(self._replicas.items()):
            if not replica.authority.state.is_member(self.key):
                continue
            record = Record.make(
                self.identity,
                KIND_PRESENCE,
                presence_key(network, key),
                int(self.clock()),
                PRESENCE_TTL,
                {1: [_address(a) for a in addresses], 2: []},
            )
            await asyncio.wait_for(dht.put(record), 30)  # type: ignore[attr-defined]
            done += 1
        return done

    async def _find_members(
        self, key: bytes, limit: int = 8, enough: int | None = None
    ) -> list[Session]:
        """Read the community's presence records and dial the members they name, by
        peer ID, freshest record first (a member still online has republished since one
        who left): without ``enough``, the first ``limit`` at once; with it, one after
        another through every record, the next as soon as a dial ends or MEET_STAGGER
        passes without an answer, starting none once we have sessions with ``enough``
        members. A member we failed to reach is not dialled again for a
        ``presence_interval`` (its record outlives it)."""
        dht = self.dht
        if dht is None:
            return []
        try:
            records = await dht.get(presence_key(self.node.config.network_id, key))  # type: ignore[attr-defined]
        except Exception as exc:  # a lookup that fails leaves the link's peers
            log.info("presence lookup failed: %s", exc)
            return []

        async def dial(record: Record) -> Session | None:
            pid = record.signer.peer_id
            for addr in record.addresses():
                try:
                    return await self.node.connect(addr, pid, timeout=5.0)
                except Exception:  # the next address, then by peer ID
                    continue
            if self.node.resolver is not None:  # by peer ID: its peer record, relays
                with contextlib.suppress(Exception):
                    return await self.node.connect(pid, timeout=10.0)
            return None

        now = self._loop.time()
        horizon = now - self.presence_interval
        for raw, failed in list(self._unreached.items()):
            if failed < horizon:
                del self._unreached[raw]
        wanted: deque[Record] = deque()
        for record in sorted(records, key=lambda r: r.seq, reverse=True):
            self._presence_seen[(key, record.signer.raw)] = now
            pid = record.signer.peer_id
            if pid == self.node.peer_id or self.node.session_with(pid) is not None:
                continue
            if record.signer.raw not in self._unreached:
                wanted.append(record)
        if enough is None:
            wanted = deque(list(wanted)[:limit])
        have = self._member_sessions(key)
        sessions: list[Session] = []

        def collect(done: set[asyncio.Task[Session | None]]) -> None:
            for task in done:
                session = task.result()
                if session is None:
                    self._unreached[dialling.pop(task).signer.raw] = self._loop.time()
                else:
                    dialling.pop(task)
                    sessions.append(session)

        dialling: dict[asyncio.Task[Session | None], Record] = {}
        try:
            # A member that is offline costs its timeout once, beside the others, not
            # once per member after it: without ``enough``, all at once; with it, one
            # more each time a dial ends or MEET_STAGGER passes without an answer.
            while wanted and (enough is None or have + len(sessions) < enough):
                record = wanted.popleft()
                dialling[self._loop.create_task(dial(record))] = record
                if enough is None:
                    continue
                done, _ = await asyncio.wait(
                    dialling, timeout=MEET_STAGGER, return_when=asyncio.FIRST_COMPLETED
                )
                collect(done)
            if dialling:
                done, _ = await asyncio.wait(dialling)
                collect(done)
        finally:
            for task in dialling:
                task.cancel()
        return sessions

    # -- sessions of other code: which peer IDs hold a community ------------------------------

    def peers_of(self, community: str) -> list[str]:
        key, _ = self._replica(community)
        return sorted(
            s.keys.peer_id.text()
            for s, p in self._peers.items()
            if key in p.core.shared and s.keys is not None
        )


def feed_record(replica: Replica, entry: FeedEntry) -> FeedRecord:
    """How a feed entry is stored: under ``author || device``, with the message it creates
    (if it creates one: its ID is ``device || seq``) for the channel index."""
    mid = entry.device + entry.seq.to_bytes(8, "big")
    msg = replica.feeds.message(entry.author, mid)
    refs = () if msg is None else (MessageRef(msg.channel, msg.hlc, _mid(entry.author, mid)),)
    return FeedRecord(entry.author + entry.device, entry.seq, entry.raw, refs)


def _latest(replica: Replica) -> int:
    """The latest time of an entry we hold: our next entry is dated after it, so that a
    slow clock does not make it look older than what it follows."""
    state_times = [
        e.time_ms for e in (replica.authority.entry(h) for h in replica.authority.heads()) if e
    ]
    return max(state_times, default=0)


def _address(addr: tuple[str, int]) -> list[codec.Value]:
    return [ipaddress.ip_address(addr[0]).packed, addr[1]]
