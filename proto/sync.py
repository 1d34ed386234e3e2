"""Community sync on every session, and live entries over gossip (spec/06-community.md
section 9), sans-IO.

Theory of operation
-------------------
Two nodes with a session between them each open one ``starling/community/1``
stream and write every sync message for the other on it [COM-R60]. Which
communities both hold is found without either naming one the other does not
already know [COM-R61]: each side sends HELLO with a fresh random nonce and,
per community it holds, a **tag** ``SHA-256(tag domain || nonce || key)[:16]``.
A tag under a fresh nonce says nothing to whoever lacks the key, and tags of
two sessions cannot be linked. The receiver computes the tags of its own
communities under that nonce; a match is a community both hold.

For each match the receiver of the HELLO sends HAVE: its authority heads and
the length of every feed it holds [COM-R62]. Whoever receives a HAVE sends
exactly what the sender lacks, as ENTRIES messages: every authority entry
outside the past of the named heads (parents first, in replay order), then
every feed entry beyond the named lengths (each feed in sequence order), then
DONE [COM-R63]. A HAVE received for a community for which this side has sent
no HAVE in this session is answered with our own HAVE as well, so a node that
announces a community later (a new HELLO after a join) is served both ways.
A HAVE can be sent again at any time to fetch what is missing: after a live
entry arrived whose parents are unknown, for example [COM-R66].

Live entries travel on the community's gossip topic (06-community 3.3) as
``LIVE`` messages carrying one authority or feed entry. The gossip validator
(:meth:`Replica.take_live`) checks and applies the entry: accepted entries are
forwarded; duplicates and entries that cannot be judged yet (missing parents,
an unknown author, a date ahead of our clock) are ignored without blame, and
the node fetches the missing part by sync; forged, unauthorised or otherwise
invalid ones are rejected, which penalises the peer that sent it [COM-R67].

Limits [COM-R64]: every message fits one stream frame (65,519 bytes); HELLO
carries at most 256 tags, HAVE at most 64 heads and 1,024 feed lengths (larger
state spans several HAVE with ``more`` set), ENTRIES at most 1,024 entries.
Per peer, HELLO and HAVE requests are limited by a token bucket (burst 64,
refilled at 2 per second), ENTRIES and DONE are accepted only for a
community we asked for, and a reply carrying more than 256 entries we refuse
for invalid ends the session. Violations raise :class:`SyncError`, whose
code the node closes the session with.

Nothing here performs I/O, reads a clock or draws randomness: nonces and
``now`` come from the caller.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

from . import codec
from .community import AuthorityLog, EntryAccepted, EntryRejected, Outcome
from .errors import CommunityError, ErrorCode, StarlingError
from .feeds import (
    BatchVerifier,
    FeedEntry,
    FeedSet,
    Message,
    Prepared,
)
from .feeds import Outcome as FeedOutcome

__all__ = [
    "LIVE_AUTHORITY",
    "LIVE_FEED",
    "PROTOCOL_ID",
    "Change",
    "Done",
    "Entries",
    "Have",
    "Hello",
    "Intake",
    "LiveVerdict",
    "Replica",
    "SyncConfig",
    "SyncDone",
    "SyncError",
    "SyncReceived",
    "SyncSession",
    "community_tag",
    "decode_live",
    "decode_message",
    "encode_live",
]

PROTOCOL_ID = "starling/community/1"
TAG_DOMAIN = b"starling/community-sync-tag/1"
HELLO, HAVE, ENTRIES, DONE = 2, 4, 6, 8
LIVE_AUTHORITY, LIVE_FEED = 1, 2
NONCE_SIZE = 16
TAG_SIZE = 16
KEY_SIZE = 32
ID_SIZE = 32
DEVICE_SIZE = 8
MAX_FRAME = 65519  # one session stream frame (02-secure-session) [COM-R64]
MAX_TAGS = 256
MAX_HEADS = 64
MAX_FEEDS = 1024  # feed lengths in one HAVE
MAX_ENTRIES = 1024  # entries in one ENTRIES
BATCH_BYTES = 60000  # what a sender puts in one ENTRIES: room for the map's heads
MAX_LIVE = 16400  # a LIVE message: the largest feed entry and its framing
FRAME_LIMITS = codec.DecodeLimits(max_size=MAX_FRAME, max_depth=4)
LIVE_LIMITS = codec.DecodeLimits(max_size=MAX_LIVE, max_depth=2)


class SyncError(CommunityError):
    """A peer broke the sync protocol; the session is closed with ``code``."""


def _fail(code: ErrorCode, reason: str, requirement: str) -> SyncError:
    return SyncError(code, reason, requirement)


def community_tag(nonce: bytes, key: bytes) -> bytes:
    """SHA-256("starling/community-sync-tag/1" || nonce || community key)[:16] [COM-R61]."""
    return hashlib.sha256(TAG_DOMAIN + nonce + key).digest()[:TAG_SIZE]


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: bytes
    tags: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.encode({0: HELLO, 1: self.nonce, 2: list(self.tags)})


@dataclass(frozen=True, slots=True)
class Have:
    community: bytes
    heads: tuple[bytes, ...]
    lengths: tuple[tuple[bytes, bytes, int], ...]  # (author, device, entries held)
    more: bool = False

    def encode(self) -> bytes:
        message: dict[int, codec.Value] = {
            0: HAVE,
            1: self.community,
            2: list(self.heads),
            3: [[a, d, n] for a, d, n in self.lengths],
        }
        if self.more:
            message[4] = True
        return codec.encode(message)


@dataclass(frozen=True, slots=True)
class Entries:
    community: bytes
    authority: tuple[bytes, ...] = ()
    feeds: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        return codec.encode(
            {0: ENTRIES, 1: self.community, 2: list(self.authority), 3: list(self.feeds)}
        )


@dataclass(frozen=True, slots=True)
class Done:
    community: bytes

    def encode(self) -> bytes:
        return codec.encode({0: DONE, 1: self.community})


Message_ = Hello | Have | Entries | Done

_TYPE = codec.Field(0, "type", int, minimum=0)
_COMMUNITY = codec.Field(1, "community", bytes, size=KEY_SIZE)
_TABLES: dict[int, tuple[codec.Field, ...]] = {
    HELLO: (
        _TYPE,
        codec.Field(1, "nonce", bytes, size=NONCE_SIZE),
        codec.Field(2, "tags", list, max_size=MAX_TAGS),
    ),
    HAVE: (
        _TYPE,
        _COMMUNITY,
        codec.Field(2, "heads", list, max_size=MAX_HEADS),
        codec.Field(3, "lengths", list, max_size=MAX_FEEDS),
        codec.Field(4, "more", bool, required=False),
    ),
    ENTRIES: (
        _TYPE,
        _COMMUNITY,
        codec.Field(2, "authority", list, max_size=MAX_ENTRIES),
        codec.Field(3, "feeds", list, max_size=MAX_ENTRIES),
    ),
    DONE: (_TYPE, _COMMUNITY),
}


def _table_of(kind: int) -> Callable[[dict[int, codec.Value]], tuple[codec.Field, ...]]:
    def table(_message: dict[int, codec.Value]) -> tuple[codec.Field, ...]:
        return _TABLES[kind]

    return table


_DISPATCH = {kind: _table_of(kind) for kind in _TABLES}


def _malformed(reason: str) -> SyncError:
    return _fail(ErrorCode.SYNC_MALFORMED, reason, "COM-R64")


def _byte_list(values: list[codec.Value], size: int | None, what: str) -> tuple[bytes, ...]:
    for v in values:
        if not isinstance(v, bytes) or (size is not None and len(v) != size):
            raise _malformed(f"{what} must hold byte strings" + (f" of {size}" if size else ""))
    return tuple(values)  # type: ignore[arg-type]


def decode_message(frame: bytes) -> Message_ | None:
    """One sync message [COM-R64]; None for an unknown odd type (ignored, [MSG-R3]).

    Raises SyncError: SYNC_TOO_LARGE, SYNC_MALFORMED."""
    if len(frame) > MAX_FRAME:
        raise _fail(ErrorCode.SYNC_TOO_LARGE, f"sync message of {len(frame)} bytes", "COM-R64")
    try:
        body = codec.decode(frame, FRAME_LIMITS)
        table = codec.dispatch(body, _DISPATCH, "sync message")
        if table is None:
            return None
        fields = codec.read_fields(body, table, "sync message")
    except StarlingError as exc:
        raise _malformed(f"not a sync message: {exc}") from None
    assert isinstance(body, dict)
    kind = body[0]
    if kind == HELLO:
        nonce, tags = fields["nonce"], fields["tags"]
        assert isinstance(nonce, bytes) and isinstance(tags, list)
        return Hello(nonce, _byte_list(tags, TAG_SIZE, "tags"))
    community = fields["community"]
    assert isinstance(community, bytes)
    if kind == HAVE:
        heads, lengths = fields["heads"], fields["lengths"]
        assert isinstance(heads, list) and isinstance(lengths, list)
        out: list[tuple[bytes, bytes, int]] = []
        for item in lengths:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], bytes)
                or len(item[0]) != KEY_SIZE
                or not isinstance(item[1], bytes)
                or len(item[1]) != DEVICE_SIZE
                or not isinstance(item[2], int)
                or isinstance(item[2], bool)
            ):
                raise _malformed("a feed length is [author, device, length]")
            out.append((item[0], item[1], item[2]))
        return Have(
            community, _byte_list(heads, ID_SIZE, "heads"), tuple(out), fields.get("more") is True
        )
    if kind == ENTRIES:
        auth, feeds = fields["authority"], fields["feeds"]
        assert isinstance(auth, list) and isinstance(feeds, list)
        if len(auth) + len(feeds) > MAX_ENTRIES:
            raise _malformed(f"ENTRIES carries more than {MAX_ENTRIES} entries")
        return Entries(
            community, _byte_list(auth, None, "authority"), _byte_list(feeds, None, "feeds")
        )
    return Done(community)


def encode_live(kind: int, raw: bytes) -> bytes:
    """The data of a gossip message on a community's topic: ``{0: kind, 1: entry}``."""
    return codec.encode({0: kind, 1: bytes(raw)})


def decode_live(data: bytes) -> tuple[int, bytes]:
    """Raises SyncError(SYNC_MALFORMED) [COM-R67]."""
    try:
        body = codec.decode(data, LIVE_LIMITS)
        fields = codec.read_fields(
            body,
            (
                codec.Field(0, "kind", int, minimum=LIVE_AUTHORITY, maximum=LIVE_FEED),
                codec.Field(1, "entry", bytes, max_size=MAX_LIVE),
            ),
            "live entry",
        )
    except StarlingError as exc:
        raise _fail(ErrorCode.SYNC_MALFORMED, f"not a live entry: {exc}", "COM-R67") from None
    kind, raw = fields["kind"], fields["entry"]
    assert isinstance(kind, int) and isinstance(raw, bytes)
    return kind, raw


# ----------------------------------------------------------------------------- replicas


@dataclass(frozen=True, slots=True)
class Change:
    """A message of an author's document as it is now, and as it was (None: new)."""

    message: Message
    before: Message | None


@dataclass(slots=True)
class Intake:
    """What taking a batch did: entries now held (to store), refusals, changes."""

    authority: list[bytes] = field(default_factory=list)  # admitted, parents first
    feeds: list[FeedEntry] = field(default_factory=list)  # appended, per feed in order
    rejected: list[tuple[bytes | None, StarlingError]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    missing: bool = False  # something waits for entries we lack: sync again

    def __bool__(self) -> bool:
        return bool(self.authority or self.feeds or self.rejected)


class LiveVerdict(Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"


# Refusals that say nothing against the sender: it may be right and we behind.
_NOT_BLAME = frozenset(
    {
        ErrorCode.FEED_NOT_MEMBER,
        ErrorCode.FEED_FROM_FUTURE,
        ErrorCode.FEED_PENDING_LIMIT,
        ErrorCode.COMMUNITY_PENDING_LIMIT,
    }
)


class Replica:
    """One community as a member holds it: the authority log, the feeds, and the
    entries refused only because their author is not (yet) known to be a member."""

    def __init__(
        self,
        community: bytes,
        authority: AuthorityLog | None = None,
        *,
        max_orphans: int = 4096,
        max_feeds: int = MAX_FEEDS,
    ) -> None:
        self.community = bytes(community)
        self.max_feeds = min(max_feeds, MAX_FEEDS)
        self.authority = authority or AuthorityLog(self.community)
        self.feeds = FeedSet(self.authority)
        self.max_orphans = max_orphans
        self._orphans: OrderedDict[bytes, bytes] = OrderedDict()
        self._changes: list[Change] = []
        self.feeds.on_change = lambda m, b: self._changes.append(Change(m, b))
        while self.authority.next_event() is not None:  # a reload: nothing new
            pass

    def lacks(self) -> bool:
        """Whether this replica knows it lacks something a peer may hold [COM-R66]:
        parents of pending authority entries, a gap in a feed, or the JOIN of a feed
        entry's author."""
        return bool(self.authority.missing()) or self.feeds.has_gaps() or bool(self._orphans)

    # -- what sync compares -------------------------------------------------------

    def have(self) -> list[Have]:
        """Our HAVE for this community, split to fit its limits [COM-R62] [COM-R64]."""
        heads = tuple(self.authority.heads()[:MAX_HEADS])
        lengths = sorted((a, d, n) for (a, d), n in self.feeds.lengths().items())
        step = self.max_feeds
        chunks = [lengths[i : i + step] for i in range(0, len(lengths), step)] or [[]]
        return [
            Have(self.community, heads, tuple(chunk), more=i < len(chunks) - 1)
            for i, chunk in enumerate(chunks)
        ]

    def lacking(
        self, heads: Iterable[bytes], lengths: Mapping[tuple[bytes, bytes], int]
    ) -> tuple[list[bytes], list[bytes]]:
        """What a peer that sent ``heads`` and ``lengths`` lacks [COM-R63]."""
        return self.authority.lacking(heads), self.feeds.lacking(lengths)

    def behind(self, heads: Iterable[bytes], lengths: Mapping[tuple[bytes, bytes], int]) -> bool:
        """Does a peer with ``heads`` and ``lengths`` hold something we lack [COM-R66]?"""
        log = self.authority
        if any(h not in log and log.status(h).status != "rejected" for h in heads):
            return True
        ours = self.feeds.lengths()
        return any(n > ours.get(feed, 0) for feed, n in lengths.items())

    # -- intake ---------------------------------------------------------------------

    def take(
        self,
        authority: Iterable[bytes],
        feeds: Iterable[bytes],
        now_ms: int,
        verify: BatchVerifier | None = None,
        prepared: Prepared | None = None,
    ) -> Intake:
        """Take a sync batch: authority entries first, then feed entries [COM-R63].
        ``prepared``: the feed entries read (and verified) ahead."""
        intake = Intake()
        auth = list(authority)
        if auth:
            self._take_authority(auth, now_ms, intake)
        feed_list = list(feeds)
        if feed_list:
            self._take_feeds(feed_list, now_ms, verify, intake, prepared=prepared)
        return intake

    def _take_authority(self, raws: list[bytes], now_ms: int, intake: Intake) -> None:
        results = self.authority.add_many(raws, now_ms)
        self._authority_events(intake, now_ms)
        reported = {eid for eid, _ in intake.rejected}
        for result in results:  # the fresh-join clock rule refuses without an event
            if result.outcome is Outcome.REJECTED and result.entry_id not in reported:
                assert result.error is not None
                intake.rejected.append((result.entry_id, result.error))
        if self.authority.missing():
            intake.missing = True

    def _authority_events(self, intake: Intake, now_ms: int) -> None:
        admitted = False
        while (event := self.authority.next_event()) is not None:
            if isinstance(event, EntryAccepted):
                intake.authority.append(event.entry.raw)
                admitted = True
            elif isinstance(event, EntryRejected):
                intake.rejected.append((event.entry_id, event.error))
        if admitted and self._orphans:
            # New members or unbans: retry the entries refused for an unknown author.
            orphans = list(self._orphans.values())
            self._orphans.clear()
            self._take_feeds(orphans, now_ms, None, intake, retry=True)

    def _take_feeds(
        self,
        raws: list[bytes],
        now_ms: int,
        verify: BatchVerifier | None,
        intake: Intake,
        retry: bool = False,
        prepared: Prepared | None = None,
    ) -> None:
        before = self.feeds.lengths()
        self._changes = []
        results = self.feeds.add_many(raws, now_ms, verify, prepared)
        for raw, result in zip(raws, results, strict=True):
            if result.outcome is FeedOutcome.PENDING:
                intake.missing = True
            if result.outcome is not FeedOutcome.REFUSED:
                continue
            assert result.error is not None
            if result.code is ErrorCode.FEED_NOT_MEMBER:
                if result.entry_id is not None:
                    self._orphans[result.entry_id] = raw
                    while len(self._orphans) > self.max_orphans:
                        self._orphans.popitem(last=False)
                intake.missing = True
                continue
            if not retry:
                intake.rejected.append((result.entry_id, result.error))
        after = self.feeds.lengths()
        for (author, device), length in sorted(after.items()):
            start = before.get((author, device), 0)
            if length > start:
                intake.feeds.extend(self.feeds.feed_entries(author, device, start))
        intake.changes.extend(self._changes)
        self._changes = []

    def take_live(
        self, kind: int, raw: bytes, now_ms: int, intake: Intake
    ) -> tuple[LiveVerdict, StarlingError | None]:
        """Judge and apply one live entry [COM-R67]: ACCEPT (applied or already held:
        forward it), IGNORE (it cannot be judged yet: ``intake.missing`` says to sync)
        or REJECT (invalid: the sender is penalised)."""
        if kind == LIVE_AUTHORITY:
            result = self.authority.add(raw, now_ms)
            self._authority_events(intake, now_ms)
            if result.outcome is Outcome.ACCEPTED:
                return LiveVerdict.ACCEPT, None
            if result.outcome is Outcome.PENDING:
                intake.missing = True
                return LiveVerdict.IGNORE, None
            if result.outcome is Outcome.DUPLICATE:
                return LiveVerdict.ACCEPT, None  # held (by sync, say): spread it on
            assert result.error is not None
            if result.code in _NOT_BLAME:
                return LiveVerdict.IGNORE, result.error
            if not any(eid == result.entry_id for eid, _ in intake.rejected):
                # The fresh-join clock rule refuses without remembering (COM-R44).
                intake.rejected.append((result.entry_id, result.error))
            return LiveVerdict.REJECT, result.error
        self._changes = []
        before = self.feeds.lengths()
        (result_f,) = self.feeds.add_many([raw], now_ms)
        after = self.feeds.lengths()
        for key, length in after.items():
            start = before.get(key, 0)
            if length > start:
                intake.feeds.extend(self.feeds.feed_entries(key[0], key[1], start))
        intake.changes.extend(self._changes)
        self._changes = []
        outcome = result_f.outcome
        if outcome is FeedOutcome.ACCEPTED:
            return LiveVerdict.ACCEPT, None
        if outcome in (FeedOutcome.PENDING, FeedOutcome.HELD):
            intake.missing = outcome is FeedOutcome.PENDING
            return LiveVerdict.IGNORE, result_f.error
        if outcome is FeedOutcome.DUPLICATE:
            return LiveVerdict.ACCEPT, None  # held (by sync, say): spread it on
        assert result_f.error is not None
        if result_f.code is ErrorCode.FEED_NOT_MEMBER:
            if result_f.entry_id is not None:
                self._orphans[result_f.entry_id] = raw
            intake.missing = True
            return LiveVerdict.IGNORE, result_f.error
        if result_f.code in _NOT_BLAME:
            return LiveVerdict.IGNORE, result_f.error
        intake.rejected.append((result_f.entry_id, result_f.error))
        return LiveVerdict.REJECT, result_f.error


# ----------------------------------------------------------------------------- sessions


@dataclass
class SyncConfig:
    burst: float = 64.0  # HELLO and HAVE requests a peer may send at once ...
    rate: float = 2.0  # ... refilled per second [COM-R65]
    max_invalid: int = 256  # entries refused as invalid per session before it ends
    batch_bytes: int = BATCH_BYTES
    max_entries: int = MAX_ENTRIES


@dataclass(frozen=True, slots=True)
class SyncReceived:
    """A batch from the peer was taken into ``community``'s replica."""

    community: bytes
    intake: Intake


@dataclass(frozen=True, slots=True)
class SyncDone:
    """The peer sent everything we lacked as of our HAVE (its DONE) [COM-R63]."""

    community: bytes


SyncEvent = SyncReceived | SyncDone


_TheirHave = tuple[Iterable[bytes], Mapping[tuple[bytes, bytes], int]]  # heads, lengths


class SyncSession:
    """The sync state machine of one session (spec/06-community.md 9.2) [COM-R60].

    ``replicas`` is the node's live mapping of community key -> :class:`Replica`.
    Feed in frames with ``receive``; take frames to send with ``frames_to_send`` and
    events with ``next_event``. ``hello(nonce)`` (re)announces what we hold,
    ``request(community)`` sends our HAVE to fetch what we lack.
    """

    def __init__(
        self,
        replicas: Mapping[bytes, Replica],
        now: float,
        config: SyncConfig | None = None,
        verify: BatchVerifier | None = None,
    ) -> None:
        self.replicas = replicas
        self.config = config or SyncConfig()
        self.verify = verify
        self.stats: dict[str, int] = {}
        self._tokens = self.config.burst
        self._refilled = now
        # Frames to send; a sync reply's ENTRIES are encoded as they are taken (a
        # generator here), so that the first leaves before the last is encoded.
        self._out: deque[bytes | Iterator[bytes]] = deque()
        self._events: deque[SyncEvent] = deque()
        self._peer_holds: set[bytes] = set()
        self._have_sent: set[bytes] = set()
        self._asked: dict[bytes, int] = {}  # community -> DONEs we still expect
        # Communities we learnt we lack something of while our HAVE was outstanding (its
        # answer may predate that), with the peer's last HAVE if that is how [COM-R66].
        self._again: dict[bytes, _TheirHave | None] = {}
        self._partial: dict[bytes, list[Have]] = {}
        self._invalid = 0

    # -- sending --------------------------------------------------------------------

    def hello(self, nonce: bytes) -> None:
        """Announce our communities as tags under ``nonce`` (16 fresh random bytes)."""
        keys = sorted(self.replicas)[:MAX_TAGS]
        self._out.append(Hello(bytes(nonce), tuple(community_tag(nonce, k) for k in keys)).encode())

    def request(self, community: bytes) -> bool:
        """Send our HAVE for ``community`` if the peer holds it; False if it does not
        (as far as we know), or a request is already outstanding: then a new HAVE
        follows its DONE if the replica still lacks something [COM-R66]."""
        return self._request(community, None)

    def _request(self, community: bytes, theirs: _TheirHave | None) -> bool:
        if community not in self._peer_holds or community not in self.replicas:
            return False
        if self._asked.get(community, 0) > 0:
            if theirs is not None or community not in self._again:
                self._again[community] = theirs
            return False
        self._send_have(community)
        return True

    def _send_have(self, community: bytes) -> None:
        self._have_sent.add(community)
        self._asked[community] = self._asked.get(community, 0) + 1
        for have in self.replicas[community].have():
            self._out.append(have.encode())

    @property
    def shared(self) -> set[bytes]:
        """Communities the peer showed it holds."""
        return set(self._peer_holds)

    def frames_to_send(self) -> list[bytes]:
        out: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def next_frame(self) -> bytes | None:
        """The next frame to send (None: nothing now); ``frames_to_send`` takes them all."""
        out = self._out
        while out:
            head = out[0]
            if isinstance(head, bytes):
                out.popleft()
                return head
            frame = next(head, None)
            if frame is not None:
                return frame
            out.popleft()
        return None

    def next_event(self) -> SyncEvent | None:
        return self._events.popleft() if self._events else None

    # -- receiving ------------------------------------------------------------------

    def _spend(self, now: float) -> None:
        cfg = self.config
        self._tokens = min(cfg.burst, self._tokens + (now - self._refilled) * cfg.rate)
        self._refilled = now
        if self._tokens < 1:
            raise _fail(
                ErrorCode.SYNC_LIMIT,
                f"more than {cfg.burst:g} sync requests at {cfg.rate:g} per second",
                "COM-R65",
            )
        self._tokens -= 1

    def receive(
        self,
        frame: bytes,
        now: float,
        now_ms: int,
        prepared: Prepared | None = None,
        decoded: Entries | None = None,
    ) -> None:
        """Take one frame from the peer. Raises SyncError: close the session with its code.

        ``prepared``: this frame's feed entries, read and verified ahead of time;
        ``decoded``: what ``decode_message(frame)`` returned for it, when the caller
        already decoded it (to read ahead), so that it is not decoded twice."""
        message = decode_message(frame) if decoded is None else decoded
        if message is None:
            return
        self.stats[type(message).__name__] = self.stats.get(type(message).__name__, 0) + 1
        if isinstance(message, Hello):
            self._spend(now)
            mine = {community_tag(message.nonce, k): k for k in self.replicas}
            for tag in dict.fromkeys(message.tags):
                community = mine.get(tag)
                if community is not None and community not in self._peer_holds:
                    self._peer_holds.add(community)
                    self._send_have(community)
        elif isinstance(message, Have):
            self._on_have(message, now)
        elif isinstance(message, Entries):
            self._expect(message.community, "ENTRIES")
            replica = self.replicas[message.community]
            intake = replica.take(
                message.authority, message.feeds, now_ms, self.verify, prepared=prepared
            )
            self._invalid += sum(1 for _, error in intake.rejected if error.code not in _NOT_BLAME)
            self._events.append(SyncReceived(message.community, intake))
            if self._invalid > self.config.max_invalid:
                raise _fail(
                    ErrorCode.SYNC_LIMIT,
                    f"more than {self.config.max_invalid} invalid entries",
                    "COM-R65",
                )
        else:
            community = message.community
            self._expect(community, "DONE")
            self._asked[community] -= 1
            self._events.append(SyncDone(community))
            if self._asked[community] == 0 and community in self._again:
                theirs = self._again.pop(community)
                replica = self.replicas[community]
                if replica.lacks() or (theirs is not None and replica.behind(*theirs)):
                    self.stats["have_again"] = self.stats.get("have_again", 0) + 1
                    self._send_have(community)

    def _expect(self, community: bytes, what: str) -> None:
        if self._asked.get(community, 0) <= 0 or community not in self.replicas:
            raise _fail(
                ErrorCode.SYNC_UNEXPECTED, f"{what} for a community we did not ask", "COM-R63"
            )

    def _on_have(self, have: Have, now: float) -> None:
        community = have.community
        parts = self._partial.setdefault(community, [])
        if not parts:
            self._spend(now)
        parts.append(have)
        if len(parts) * MAX_FEEDS > 1 << 20:
            raise _fail(ErrorCode.SYNC_LIMIT, "a HAVE of more than 2^20 feeds", "COM-R64")
        if have.more:
            return
        del self._partial[community]
        replica = self.replicas.get(community)
        if replica is None:
            # Not ours (any more): nothing to send, and no blame (a HELLO crossed a leave).
            self.stats["have_unknown"] = self.stats.get("have_unknown", 0) + 1
            self._out.append(Done(community).encode())
            return
        self._peer_holds.add(community)
        lengths = {(a, d): n for part in parts for a, d, n in part.lengths}
        if community not in self._have_sent:
            self._send_have(community)
        elif replica.behind(parts[0].heads, lengths):
            self._request(community, (parts[0].heads, lengths))  # it holds what we lack [COM-R66]
        authority, feeds = replica.lacking(parts[0].heads, lengths)
        self._out.append(self._entries(community, authority, feeds))
        self._out.append(Done(community).encode())

    def _entries(
        self, community: bytes, authority: list[bytes], feeds: list[bytes]
    ) -> Iterator[bytes]:
        """The ENTRIES messages carrying ``authority`` then ``feeds``, encoded one by one."""
        cfg = self.config
        auth: list[bytes] = []
        feed: list[bytes] = []
        size = 0
        for is_authority, raws in ((True, authority), (False, feeds)):
            for raw in raws:
                if (auth or feed) and (
                    size + len(raw) + 8 > cfg.batch_bytes
                    or len(auth) + len(feed) >= cfg.max_entries
                ):
                    yield Entries(community, tuple(auth), tuple(feed)).encode()
                    auth, feed, size = [], [], 0
                (auth if is_authority else feed).append(raw)
                size += len(raw) + 8
        if auth or feed:
            yield Entries(community, tuple(auth), tuple(feed)).encode()
