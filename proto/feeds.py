"""Member feeds: signed append-only feeds of CRDT updates, merged into channel views
(spec/06-community.md section 8), sans-IO.

Theory of operation
-------------------
Chat content never enters the authority log. Each member writes it only to its
own **feeds**: one per device, named ``(author, device)``, an append-only chain
of **feed entries** (envelopes under ``starling/feed-entry/1``) numbered 1, 2,
3, ... each naming the ID of the one before [COM-R50]. The signer is the
author: nobody else can write a feed of theirs [COM-R51].

Every entry carries a Yjs update (v1 encoding, as produced by pycrdt/yrs) of
the **author's document**: one document per author, shared by all of its
devices, whose root map ``messages`` holds one plain (non-shared) array per
message [COM-R53]. A receiver keeps one document per author and applies to it
only the updates of that author's feeds, so what A's document says is A's
word alone, and two devices of A converge through the CRDT (concurrent writes
to one message: Yjs's last-writer rule, deterministic for a set of updates).

A message is ``[channel, hlc, text, reply_to, edited]``; ``text`` null means
deleted. Its ID is ``device || seq`` of the entry that created it (16 bytes,
the map key is its hex). Plain array values keep the map flat: one Yjs item
per message (a nested Map per message costs a shared type each and gets
quadratically slow past tens of thousands of messages).

Views. A channel view merges every author's messages of that channel in one
order: HLC, then author key, then message ID [COM-R56]. An index per channel
keeps the order keys in a list sorted lazily (appends in order are the common
case; a sort of a nearly sorted list is linear). A page walks back from a
cursor with ``bisect`` and filters each key through the visibility rule
[COM-R57]: the message exists and is not deleted, its channel still exists,
its HLC is no later than its author's latest accepted entry, and its author
may post there now -- or, for a banned author, its HLC's physical time is
before the ban entry's time.

Intake. ``FeedSet.add(raw, now_ms)`` checks an entry alone (size, structure,
community, signature), then against the authority state (member, not banned
at the entry's time), the clock (at most ``max_future_ms`` ahead: else held
and retried by ``tick``), and the feed (duplicate, gap -> pending, fork, HLC
not increasing, an update that does not decode). A ban cuts the banned
author's feeds at the first entry at or after the ban's time and rebuilds
their document from what is left, so every member ends with the same
document whatever it received before the ban [COM-R58].

Nothing here reads a clock or draws randomness: times are arguments, device
IDs come from the caller.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pycrdt import Doc, Map, MapEvent, Subscription, Transaction, TransactionEvent

from . import codec, identity
from .community import AuthorityLog, AuthorityState
from .errors import CommunityError, ErrorCode, LocalProtocolError, StarlingError
from .identity import PrivateKey, PublicKey

__all__ = [
    "FEED_DOMAIN",
    "MAX_FUTURE_MS",
    "BatchVerifier",
    "ChannelView",
    "Feed",
    "FeedEntry",
    "FeedResult",
    "FeedSet",
    "Message",
    "Outcome",
    "Prepared",
    "feed_entry_id",
    "hlc_next",
    "hlc_physical",
    "parse_feed_entry",
    "prepare",
    "sign_feed_entry",
    "verify_serially",
]

FEED_DOMAIN = "starling/feed-entry/1"
FEED_ID_TAG = b"starling/feed-entry-id/1"
CLIENT_ID_TAG = b"starling/feed-client/1"
UPDATE = 2  # the one entry type of this revision (key 0)
ROOT = "messages"  # the author's document's root map

KEY_SIZE = 32
ID_SIZE = 32
DEVICE_SIZE = 8
MESSAGE_ID_SIZE = DEVICE_SIZE + 8
HLC_SIZE = 8
MAX_SEQ = 2**53 - 1
MAX_HLC = 2**64 - 1
MAX_ENTRY_SIZE = 16384  # bytes of a signed feed entry [COM-R50]
MAX_UPDATE_SIZE = 12288
MAX_TEXT = 4000  # UTF-8 bytes of a message's text [COM-R53]
MAX_FUTURE_MS = 60_000  # the future rule's tolerance [COM-R59]
ENTRY_LIMITS = codec.DecodeLimits(max_size=MAX_ENTRY_SIZE, max_depth=2)

_FIELDS = (  # spec/06-community.md 8.2 [COM-R50]
    codec.Field(0, "type", int, minimum=0),
    codec.Field(1, "community", bytes, size=KEY_SIZE),
    codec.Field(2, "device", bytes, size=DEVICE_SIZE),
    codec.Field(3, "seq", int, minimum=1, maximum=MAX_SEQ),
    codec.Field(4, "prev", bytes, required=False, size=ID_SIZE),
    codec.Field(5, "hlc", int, minimum=0, maximum=MAX_HLC),
    codec.Field(6, "update", bytes, max_size=MAX_UPDATE_SIZE),
)


def _fail(code: ErrorCode, reason: str, requirement: str) -> CommunityError:
    return CommunityError(code, reason, requirement)


# ----------------------------------------------------------------------------- clocks


def hlc_physical(hlc: int) -> int:
    """The physical part of a hybrid logical clock value, in ms [COM-R54]."""
    return hlc >> 16


def hlc_next(last: int, wall_ms: int) -> int:
    """The HLC of a new local event after ``last`` (the largest seen) [COM-R54].

    ``(physical << 16) | counter``: the physical part is the larger of the wall
    clock and ``last``'s; the counter restarts at 0 when the wall clock moved on.
    """
    physical = max(last >> 16, wall_ms)
    if physical == last >> 16:
        counter = (last & 0xFFFF) + 1
        if counter > 0xFFFF:
            physical, counter = physical + 1, 0
    else:
        counter = 0
    return (physical << 16) | counter


def _client_id(author: bytes, device: bytes) -> int:
    """The Yjs client ID of a device: 32 bits of a hash, so devices never share one."""
    digest = hashlib.sha256(CLIENT_ID_TAG + author + device).digest()
    return int.from_bytes(digest[:4], "big")


# ----------------------------------------------------------------------------- entries


def feed_entry_id(raw: bytes) -> bytes:
    """SHA-256("starling/feed-entry-id/1" || signed entry bytes) [COM-R50]."""
    return hashlib.sha256(FEED_ID_TAG + raw).digest()


@dataclass(frozen=True, slots=True, eq=False)
class FeedEntry:
    """A checked and verified feed entry (not yet judged against any feed or state)."""

    id: bytes
    raw: bytes = field(repr=False)
    author: bytes
    community: bytes
    device: bytes
    seq: int
    prev: bytes | None
    hlc: int
    update: bytes | None = field(repr=False)  # None: an odd type of a later revision

    @property
    def feed(self) -> tuple[bytes, bytes]:
        return self.author, self.device


def _head(raw: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """A shortest-form head of ``major`` (0: unsigned, 2: byte string) at ``pos`` ->
    (its argument, the next position); None for anything else."""
    if pos >= len(raw):
        return None
    info = raw[pos] - (major << 5)
    if info < 24:
        return None if info < 0 else (info, pos + 1)
    if info > 27:
        return None
    size = 1 << (info - 24)
    end = pos + 1 + size
    value = int.from_bytes(raw[pos + 1 : end], "big")
    if end > len(raw) or value < (24 if size == 1 else 1 << (4 * size)):
        return None
    return value, end


_ENVELOPE_HEAD = b"\xa3\x01\x58\x20"  # {1: bytes(32) ...
_SIGNATURE_HEAD = b"\x03\x58\x40"  # ... 3: bytes(64)}
_PAYLOAD_HEAD = b"\x00\x02\x01\x58\x20"  # {0: 2, 1: bytes(32) ...
_PREV_HEAD = b"\x04\x58\x20"


def _fast_structure(raw: bytes) -> tuple[bytes, bytes, bytes, list[object]] | None:
    """The canonical shape of a feed entry of type 2, read without the generic decoder.

    Returns ``(signer, payload, signature, [community, device, seq, prev, hlc, update])``
    only for bytes the generic path would accept with the same fields (shortest forms,
    the exact keys in order, no odd extensions); anything else gives None and the caller
    takes the generic path, so errors and odd shapes are judged there. The catch-up of
    thousands of entries spends most of its time decoding otherwise.
    """
    n = len(raw)
    if n < 110 or raw[:4] != _ENVELOPE_HEAD or raw[36] != 0x02:
        return None
    # The payload: a byte string of 24 to 65,535 bytes (longer is too large anyway).
    if raw[37] == 0x58:
        start, size = 39, raw[38]
        if size < 24:
            return None
    elif raw[37] == 0x59:
        start, size = 40, int.from_bytes(raw[38:40], "big")
        if size < 256:
            return None
    else:
        return None
    end = start + size
    if end + 67 != n or raw[end : end + 3] != _SIGNATURE_HEAD:
        return None
    p = raw[start:end]
    if (
        size < 50
        or p[0] not in (0xA6, 0xA7)
        or p[1:6] != _PAYLOAD_HEAD
        or p[38:40] != b"\x02\x48"
        or p[48] != 0x03
    ):
        return None
    got = _head(p, 49, 0)
    if got is None:
        return None
    seq, pos = got
    prev: bytes | None = None
    if p[0] == 0xA7:
        if p[pos : pos + 3] != _PREV_HEAD or seq < 2:
            return None
        prev, pos = p[pos + 3 : pos + 35], pos + 35
    elif seq != 1:
        return None
    if seq > MAX_SEQ or p[pos : pos + 1] != b"\x05":
        return None
    got = _head(p, pos + 1, 0)
    if got is None:
        return None
    hlc, pos = got
    if p[pos : pos + 1] != b"\x06":
        return None
    got = _head(p, pos + 1, 2)
    if got is None or got[1] + got[0] != size or got[0] > MAX_UPDATE_SIZE:
        return None
    return raw[4:36], p, raw[end + 3 :], [p[6:38], p[40:48], seq, prev, hlc, p[got[1] :]]


def _structure(raw: bytes, community: bytes | None) -> tuple[FeedEntry, bytes, bytes]:
    """Steps 1-4 of 06-community 8.3 (size, structure, prev rule, community), unverified:
    ``(entry, payload, signature)``."""
    raw = bytes(raw)
    if len(raw) > MAX_ENTRY_SIZE:
        raise _fail(
            ErrorCode.FEED_ENTRY_TOO_LARGE,
            f"feed entry of {len(raw)} bytes exceeds {MAX_ENTRY_SIZE}",
            "COM-R50",
        )
    fast = _fast_structure(raw)
    if fast is not None:
        signer, payload, signature, values = fast
        entry_community, device, seq, prev, hlc, update = values
        assert isinstance(entry_community, bytes) and isinstance(device, bytes)
        assert isinstance(seq, int) and isinstance(hlc, int) and isinstance(update, bytes)
        assert prev is None or isinstance(prev, bytes)
    else:
        signer, payload, signature, fields = _generic_structure(raw)
        seq, prev = fields["seq"], fields.get("prev")
        assert isinstance(seq, int)
        if (seq == 1) != (prev is None):
            raise _fail(
                ErrorCode.FEED_ENTRY_MALFORMED,
                "prev is present exactly when seq is above 1",
                "COM-R50",
            )
        entry_community, device, hlc = fields["community"], fields["device"], fields["hlc"]
        update = fields.get("update")
        assert isinstance(entry_community, bytes) and isinstance(device, bytes)
        assert isinstance(hlc, int) and (prev is None or isinstance(prev, bytes))
        assert update is None or isinstance(update, bytes)
    if community is not None and entry_community != community:
        raise _fail(
            ErrorCode.FEED_WRONG_COMMUNITY, "the entry belongs to another community", "COM-R50"
        )
    entry = FeedEntry(
        feed_entry_id(raw), raw, signer, entry_community, device, seq, prev, hlc, update
    )
    return entry, payload, signature


def _generic_structure(raw: bytes) -> tuple[bytes, bytes, bytes, dict[str, codec.Value]]:
    try:
        signer, payload, signature = identity.read_envelope(raw, ENTRY_LIMITS)
        body = codec.decode(payload, ENTRY_LIMITS)
        known = codec.dispatch(body, {UPDATE: lambda _m: True}, "feed entry")
        assert isinstance(body, dict)
        table = _FIELDS if known else _FIELDS[:6]  # an odd type: no update field checked
        fields = codec.read_fields(
            body if known else {k: v for k, v in body.items() if k < 6}, table, "feed entry"
        )
    except CommunityError:
        raise
    except StarlingError as exc:
        raise _fail(
            ErrorCode.FEED_ENTRY_MALFORMED, f"not a well-formed feed entry: {exc}", "COM-R50"
        ) from None
    return signer, payload, signature, fields


def _verify(entry: FeedEntry, payload: bytes, signature: bytes) -> None:
    """Step 5 of 06-community 8.3: the author's signature [COM-R51]."""
    try:
        PublicKey(entry.author).verify(FEED_DOMAIN, payload, signature)
    except StarlingError as exc:
        raise _fail(
            ErrorCode.FEED_ENTRY_FORGED, f"the signature does not hold: {exc}", "COM-R51"
        ) from None


def parse_feed_entry(raw: bytes, community: bytes | None = None) -> FeedEntry:
    """Check and verify a feed entry alone, in the order of 06-community 8.3 [COM-R52]."""
    entry, payload, signature = _structure(raw, community)
    _verify(entry, payload, signature)
    return entry


@dataclass(slots=True)
class Prepared:
    """Feed entries read ahead of ``FeedSet.add_many`` (keyed by their bytes): their
    structure, and the verdicts on their signatures once a caller filled ``verified``
    (a node checks them on other threads while it goes on receiving)."""

    entries: dict[bytes, tuple[FeedEntry, bytes, bytes] | StarlingError]
    verified: dict[bytes, StarlingError | None] = field(default_factory=dict)

    def checks(self) -> list[tuple[bytes, tuple[bytes, str, bytes, bytes]]]:
        """``(raw, (key, domain, payload, signature))`` of every entry to verify."""
        return [
            (raw, (item[0].author, FEED_DOMAIN, item[1], item[2]))
            for raw, item in self.entries.items()
            if not isinstance(item, StarlingError)
        ]


def prepare(raws: Iterable[bytes], community: bytes | None = None) -> Prepared:
    """Steps 1-4 of 06-community 8.3 for a batch, ahead of ``add_many``."""
    entries: dict[bytes, tuple[FeedEntry, bytes, bytes] | StarlingError] = {}
    for raw in raws:
        try:
            entries[raw] = _structure(raw, community)
        except StarlingError as exc:
            entries[raw] = exc
    return Prepared(entries)


#: Verifies many signatures at once: ``[(key, domain, payload, signature)]`` -> per item
#: the error, or None when it holds. A node may spread the work over threads.
BatchVerifier = Callable[[list[tuple[bytes, str, bytes, bytes]]], list[StarlingError | None]]


def verify_serially(items: list[tuple[bytes, str, bytes, bytes]]) -> list[StarlingError | None]:
    """The ``BatchVerifier`` that checks every item in turn (``identity.verify_batch``)."""
    return identity.verify_batch(items)


def sign_feed_entry(
    author: PrivateKey,
    community: bytes,
    device: bytes,
    seq: int,
    prev: bytes | None,
    hlc: int,
    update: bytes,
) -> FeedEntry:
    """Sign ``{0: 2, 1: community, 2: device, 3: seq, ?4: prev, 5: hlc, 6: update}``."""
    payload: dict[int, codec.Value] = {0: UPDATE, 1: community, 2: device, 3: seq}
    if prev is not None:
        payload[4] = prev
    payload[5] = hlc
    payload[6] = update
    raw = identity.seal(author, FEED_DOMAIN, codec.encode(payload))
    if len(raw) > MAX_ENTRY_SIZE:
        raise LocalProtocolError(
            ErrorCode.FEED_ENTRY_TOO_LARGE, f"an entry of {len(raw)} bytes", "COM-R50"
        )
    # Our own signature over our own encoding: no need to parse and verify it again.
    return FeedEntry(
        feed_entry_id(raw), raw, author.public_key.raw, community, device, seq, prev, hlc, update
    )


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a channel view, as its author's document says it now."""

    author: bytes
    id: bytes  # device || seq of the creating entry
    channel: bytes
    hlc: int
    text: str | None  # None: deleted
    reply_to: tuple[bytes, bytes] | None = None  # (author, message ID)
    edited: int | None = None  # HLC of the last edit or of the deletion

    @property
    def cursor(self) -> tuple[int, bytes, bytes]:
        """The merge order key [COM-R56]; pass it as ``before`` for the previous page."""
        return self.hlc, self.author, self.id

    @property
    def deleted(self) -> bool:
        return self.text is None


def _as_bytes(value: object, size: int) -> bytes | None:
    if isinstance(value, bytes | bytearray) and len(value) == size:
        return bytes(value)
    return None


def _message(author: bytes, key: str, value: object) -> Message | None:
    """Read a map value [COM-R53]; anything else than the stated shape is no message."""
    if not isinstance(value, list) or len(value) != 5:
        return None
    try:
        mid = bytes.fromhex(key)
    except ValueError:
        return None
    if len(mid) != MESSAGE_ID_SIZE or key != mid.hex():
        return None
    channel, hlc_raw, text, reply_raw, edited_raw = value
    chan = _as_bytes(channel, ID_SIZE)
    hlc_b = _as_bytes(hlc_raw, HLC_SIZE)
    if chan is None or hlc_b is None:
        return None
    if text is not None and not (isinstance(text, str) and len(text.encode()) <= MAX_TEXT):
        return None
    reply: tuple[bytes, bytes] | None = None
    if reply_raw is not None:
        r = _as_bytes(reply_raw, KEY_SIZE + MESSAGE_ID_SIZE)
        if r is None:
            return None
        reply = (r[:KEY_SIZE], r[KEY_SIZE:])
    edited: int | None = None
    if edited_raw is not None:
        e = _as_bytes(edited_raw, HLC_SIZE)
        if e is None:
            return None
        edited = int.from_bytes(e, "big")
    return Message(author, mid, chan, int.from_bytes(hlc_b, "big"), text, reply, edited)


def _value(m: Message) -> list[Any]:
    reply = None if m.reply_to is None else m.reply_to[0] + m.reply_to[1]
    edited = None if m.edited is None else m.edited.to_bytes(HLC_SIZE, "big")
    return [m.channel, m.hlc.to_bytes(HLC_SIZE, "big"), m.text, reply, edited]


# ----------------------------------------------------------------------------- intake


class Outcome(Enum):
    ACCEPTED = "accepted"  # applied (and so may be pending entries after it)
    DUPLICATE = "duplicate"  # already held: ignored
    PENDING = "pending"  # waits for the entries before it in its feed
    HELD = "held"  # dated too far ahead: retried by ``tick`` [COM-R59]
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class FeedResult:
    outcome: Outcome
    entry_id: bytes | None = None
    error: StarlingError | None = None

    @property
    def code(self) -> ErrorCode | None:
        return None if self.error is None else self.error.code


class _Index:
    """A channel's order keys, sorted lazily."""

    __slots__ = ("keys", "members", "sorted")

    def __init__(self) -> None:
        self.keys: list[tuple[int, bytes, bytes]] = []
        self.members: set[tuple[int, bytes, bytes]] = set()
        self.sorted = True

    def add(self, key: tuple[int, bytes, bytes]) -> None:
        if key in self.members:
            return
        self.members.add(key)
        if self.keys and key < self.keys[-1]:
            self.sorted = False
        self.keys.append(key)

    def ordered(self) -> list[tuple[int, bytes, bytes]]:
        if not self.sorted:
            self.keys.sort()
            self.sorted = True
        return self.keys


class _AuthorDoc:
    """One author's document and a flat mirror of its messages, kept by map events."""

    __slots__ = ("author", "doc", "map", "messages", "subscription")

    def __init__(self, author: bytes, client_id: int | None, feeds: FeedSet) -> None:
        self.author = author
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.map: Map[Any] = self.doc.get(ROOT, type=Map)
        self.messages: dict[bytes, Message] = {}
        self.subscription: Subscription = self.map.observe(
            lambda event: feeds._changed(self, event)
        )


@dataclass(slots=True)
class _DeviceFeed:
    entries: list[FeedEntry] = field(default_factory=list)

    @property
    def hlc(self) -> int:
        return self.entries[-1].hlc if self.entries else -1


FeedKey = tuple[bytes, bytes]  # (author, device)


class FeedSet:
    """Every member's feeds of one community, their documents and the channel views.

    ``add(raw, now_ms)`` takes entries of any author in any order; ``lengths()``,
    ``entries_since()`` and ``lacking()`` serve sync; ``page()`` reads a channel.
    ``authority`` is the community's log: its current state decides membership,
    bans and posting rights [COM-R57] [COM-R58].
    """

    def __init__(
        self,
        authority: AuthorityLog,
        *,
        max_future_ms: int = MAX_FUTURE_MS,
        max_pending: int = 4096,
    ) -> None:
        self.authority = authority
        self.community = authority.community
        self.max_future_ms = max_future_ms
        self.max_pending = max_pending
        self.clock = 0  # the largest HLC accepted: a local writer's next HLC follows it
        self._feeds: dict[FeedKey, _DeviceFeed] = {}
        self._docs: dict[bytes, _AuthorDoc] = {}
        self._max_hlc: dict[bytes, int] = {}
        self._pending: dict[FeedKey, dict[int, FeedEntry]] = {}
        self._pending_count = 0
        self._held: dict[bytes, FeedEntry] = {}
        self._channels: dict[bytes, _Index] = {}
        self._cut: dict[bytes, int] = {}  # banned author -> ban time applied
        self._bans_seen: dict[bytes, bytes] = {}
        # During ``add_many``: the documents with a transaction held open, so that a batch
        # makes one transaction (one map event) per author instead of one per entry.
        self._batch: dict[int, Transaction] | None = None
        # Called with (message as now, message before or None) for every change an
        # applied update makes to an author's messages (the client's live events).
        self.on_change: Callable[[Message, Message | None], None] | None = None

    # -- documents ------------------------------------------------------------------------

    def _doc(self, author: bytes, client_id: int | None = None) -> _AuthorDoc:
        doc = self._docs.get(author)
        if doc is None:
            doc = self._docs[author] = _AuthorDoc(author, client_id, self)
        return doc

    def _changed(self, doc: _AuthorDoc, event: MapEvent) -> None:
        """Mirror a change of an author's map into the flat messages and the indexes."""
        changes: dict[str, dict[str, Any]] = getattr(event, "keys")  # noqa: B009
        # In message ID order (device, then sequence): a batch's event lists its keys in
        # no stated order, the changes reach ``on_change`` in a reproducible one.
        for key in sorted(changes):
            change = changes[key]
            mid_msg = _message(doc.author, key, change.get("newValue"))
            if change.get("action") == "delete" or mid_msg is None:
                with contextlib.suppress(ValueError):
                    doc.messages.pop(bytes.fromhex(key), None)
                continue
            before = doc.messages.get(mid_msg.id)
            doc.messages[mid_msg.id] = mid_msg
            if self.on_change is not None:
                self.on_change(mid_msg, before)
            index = self._channels.get(mid_msg.channel)
            if index is None:
                index = self._channels[mid_msg.channel] = _Index()
            index.add(mid_msg.cursor)

    def _rebuild(self, author: bytes, client_id: int | None = None) -> None:
        """A fresh document of ``author`` from its kept entries (after a cut, or to write)."""
        old = self._docs.pop(author, None)
        if old is not None:
            old.map.unobserve(old.subscription)
            if client_id is None:
                client_id = old.doc.client_id
        doc = self._doc(author, client_id)
        best = -1
        for (a, _device), feed in self._feeds.items():
            if a != author:
                continue
            for entry in feed.entries:
                if entry.update is not None:
                    doc.doc.apply_update(entry.update)
                best = max(best, entry.hlc)
        if best >= 0:
            self._max_hlc[author] = best
        else:
            self._max_hlc.pop(author, None)

    # -- authority ------------------------------------------------------------------------

    def _ban_time(self, state: AuthorityState, author: bytes) -> int | None:
        ban = state.banned.get(author)
        if ban is None:
            return None
        entry = self.authority.entry(ban)
        return 0 if entry is None else entry.time_ms

    def refresh(self) -> None:
        """Apply new bans of the authority state: cut the banned authors' feeds [COM-R58].

        Called by ``add`` and ``page``; cheap when no ban changed.
        """
        state = self.authority.state
        if state.banned == self._bans_seen:
            return
        self._bans_seen = dict(state.banned)
        for author in list(self._cut):
            if author not in state.banned:
                del self._cut[author]  # unbanned: sync brings back what was cut
        for author in state.banned:
            ban_time = self._ban_time(state, author)
            assert ban_time is not None
            if self._cut.get(author) == ban_time:
                continue
            self._cut[author] = ban_time
            cut = False
            for (a, _device), feed in self._feeds.items():
                if a != author:
                    continue
                for i, entry in enumerate(feed.entries):
                    if hlc_physical(entry.hlc) >= ban_time:
                        del feed.entries[i:]
                        cut = True
                        break
            if cut:
                self._rebuild(author)

    # -- intake ---------------------------------------------------------------------------

    def add(self, raw: bytes, now_ms: int) -> FeedResult:
        """Take one signed feed entry of any author [COM-R52] ... [COM-R59]."""
        try:
            entry = parse_feed_entry(raw, self.community)
        except StarlingError as exc:
            return FeedResult(Outcome.REFUSED, None, exc)
        self.refresh()
        return self._offer(entry, now_ms)

    def add_many(
        self,
        raws: Iterable[bytes],
        now_ms: int,
        verify: BatchVerifier | None = None,
        prepared: Prepared | None = None,
    ) -> list[FeedResult]:
        """Take a batch (a sync reply): every entry's structure first, then all the
        signatures at once through ``verify`` (default: one after the other), then each
        entry in order, as ``add`` would. ``prepared`` holds what was read (and verified)
        ahead; entries it lacks are read here."""
        items: list[tuple[FeedEntry, bytes, bytes] | FeedResult] = []
        known: dict[bytes, StarlingError | None] = {}
        for raw in raws:
            ahead = None if prepared is None else prepared.entries.get(raw)
            if ahead is None or (
                not isinstance(ahead, StarlingError) and ahead[0].community != self.community
            ):  # not read ahead, or read for another community: read it here
                try:
                    ahead = _structure(raw, self.community)
                except StarlingError as exc:
                    ahead = exc
            if isinstance(ahead, StarlingError):
                items.append(FeedResult(Outcome.REFUSED, None, ahead))
                continue
            items.append(ahead)
            if prepared is not None and raw in prepared.verified:
                known[ahead[0].id] = prepared.verified[raw]
        checks = [
            (item[0].author, FEED_DOMAIN, item[1], item[2])
            for item in items
            if not isinstance(item, FeedResult) and item[0].id not in known
        ]
        errors = iter((verify or verify_serially)(checks))
        self.refresh()
        results: list[FeedResult] = []
        # The batch's updates of one author go into one pycrdt transaction, committed at
        # the end: the map observer runs once per author, with every key the batch
        # changed (a message posted and edited in one batch is one change) [COM-R53].
        self._batch = {}
        try:
            for item in items:
                if isinstance(item, FeedResult):
                    results.append(item)
                    continue
                error = known[item[0].id] if item[0].id in known else next(errors)
                if error is not None:
                    forged = _fail(
                        ErrorCode.FEED_ENTRY_FORGED,
                        f"the signature does not hold: {error}",
                        "COM-R51",
                    )
                    results.append(FeedResult(Outcome.REFUSED, item[0].id, forged))
                    continue
                results.append(self._offer(item[0], now_ms))
        finally:
            self._commit_batch()
        return results

    def _commit_batch(self) -> None:
        """Commit the transactions ``add_many`` holds open, in the order they were opened
        (the authors' changes reach ``on_change`` in the order of the batch)."""
        batch, self._batch = self._batch or {}, None
        failed: BaseException | None = None
        for txn in batch.values():
            try:
                txn.__exit__(None, None, None)
            except Exception as exc:  # an observer's error: the others still commit
                failed = failed or exc
        if failed is not None:
            raise failed

    def tick(self, now_ms: int) -> list[FeedResult]:
        """Retry the entries held for their future time [COM-R59]."""
        due = [e for e in self._held.values() if not self._too_new(e, now_ms)]
        results = []
        for entry in due:
            del self._held[entry.id]
            results.append(self._offer(entry, now_ms))
        return results

    def _too_new(self, entry: FeedEntry, now_ms: int) -> bool:
        return hlc_physical(entry.hlc) > now_ms + self.max_future_ms

    def _author_error(self, entry: FeedEntry) -> CommunityError | None:
        state = self.authority.state
        ban_time = self._ban_time(state, entry.author)
        if ban_time is not None:
            if hlc_physical(entry.hlc) >= ban_time:
                return _fail(
                    ErrorCode.FEED_AUTHOR_BANNED,
                    f"written at {hlc_physical(entry.hlc)}, the author was banned at {ban_time}",
                    "COM-R58",
                )
            return None
        if state.rank_of(entry.author) < 1:
            return _fail(ErrorCode.FEED_NOT_MEMBER, "the author is not a member", "COM-R57")
        return None

    def _offer(self, entry: FeedEntry, now_ms: int) -> FeedResult:
        error = self._author_error(entry)
        if error is not None:
            return FeedResult(Outcome.REFUSED, entry.id, error)
        if self._too_new(entry, now_ms):
            self._held[entry.id] = entry
            return FeedResult(
                Outcome.HELD,
                entry.id,
                _fail(
                    ErrorCode.FEED_FROM_FUTURE,
                    f"dated {hlc_physical(entry.hlc) - now_ms} ms ahead of this clock",
                    "COM-R59",
                ),
            )
        feed = self._feeds.get(entry.feed)
        length = 0 if feed is None else len(feed.entries)
        if entry.seq <= length:
            assert feed is not None
            if feed.entries[entry.seq - 1].id == entry.id:
                return FeedResult(Outcome.DUPLICATE, entry.id)
            return FeedResult(Outcome.REFUSED, entry.id, self._fork(entry))
        if entry.seq > length + 1:
            waiting = self._pending.setdefault(entry.feed, {})
            if entry.seq in waiting:
                if waiting[entry.seq].id == entry.id:
                    return FeedResult(Outcome.DUPLICATE, entry.id)
                return FeedResult(Outcome.REFUSED, entry.id, self._fork(entry))
            if self._pending_count >= self.max_pending:
                return FeedResult(
                    Outcome.REFUSED,
                    entry.id,
                    _fail(ErrorCode.FEED_PENDING_LIMIT, "too many entries wait", "COM-R52"),
                )
            waiting[entry.seq] = entry
            self._pending_count += 1
            return FeedResult(Outcome.PENDING, entry.id)
        error = self._append(entry)
        if error is not None:
            return FeedResult(Outcome.REFUSED, entry.id, error)
        self._drain(entry.feed)
        return FeedResult(Outcome.ACCEPTED, entry.id)

    @staticmethod
    def _fork(entry: FeedEntry) -> CommunityError:
        return _fail(
            ErrorCode.FEED_FORK,
            f"another entry {entry.seq} of this feed is held, or prev does not match",
            "COM-R52",
        )

    def _append(self, entry: FeedEntry) -> CommunityError | None:
        """Append the next entry of its feed: chain, HLC, update [COM-R52]."""
        feed = self._feeds.get(entry.feed)
        last = feed.entries[-1] if feed is not None and feed.entries else None
        if (last.id if last is not None else None) != entry.prev:
            return self._fork(entry)
        if last is not None and entry.hlc <= last.hlc:
            return _fail(
                ErrorCode.FEED_HLC_REGRESSION,
                "an entry's HLC must exceed the previous entry's",
                "COM-R54",
            )
        if entry.update is not None:
            doc = self._doc(entry.author)
            if self._batch is not None and id(doc.doc) not in self._batch:
                txn = self._batch[id(doc.doc)] = doc.doc.transaction()
                txn.__enter__()
            try:
                doc.doc.apply_update(entry.update)
            except ValueError as exc:
                return _fail(ErrorCode.FEED_BAD_UPDATE, f"not a Yjs update: {exc}", "COM-R53")
        if feed is None:
            feed = self._feeds[entry.feed] = _DeviceFeed()
        feed.entries.append(entry)
        self._max_hlc[entry.author] = max(self._max_hlc.get(entry.author, -1), entry.hlc)
        self.clock = max(self.clock, entry.hlc)
        return None

    def _drain(self, key: FeedKey) -> None:
        waiting = self._pending.get(key)
        while waiting:
            feed = self._feeds[key]
            entry = waiting.pop(len(feed.entries) + 1, None)
            if entry is None:
                break
            self._pending_count -= 1
            if self._author_error(entry) is not None or self._append(entry) is not None:
                break  # the rest of this feed waits on a successor that will never come
        if waiting is not None and not waiting:
            del self._pending[key]

    # -- sync -----------------------------------------------------------------------------

    def lengths(self) -> dict[FeedKey, int]:
        """Per feed ``(author, device)``, the entries held in sequence [COM-R55]."""
        return {key: len(feed.entries) for key, feed in self._feeds.items() if feed.entries}

    def entries_since(self, author: bytes, device: bytes, seq: int) -> list[bytes]:
        """The entries of a feed after number ``seq``, in order."""
        feed = self._feeds.get((author, device))
        return [] if feed is None else [e.raw for e in feed.entries[seq:]]

    def feed_entries(self, author: bytes, device: bytes, start: int = 0) -> list[FeedEntry]:
        """The entries of a feed from index ``start`` (0: the first), in order."""
        feed = self._feeds.get((author, device))
        return [] if feed is None else feed.entries[start:]

    def lacking(self, their_lengths: Mapping[FeedKey, int]) -> list[bytes]:
        """Exactly what a peer with ``their_lengths`` lacks [COM-R55]."""
        out: list[bytes] = []
        for (author, device), feed in sorted(self._feeds.items()):
            out.extend(e.raw for e in feed.entries[their_lengths.get((author, device), 0) :])
        return out

    def held(self) -> list[bytes]:
        return [e.raw for e in self._held.values()]

    def pending(self) -> list[bytes]:
        return [e.raw for w in self._pending.values() for e in w.values()]

    def has_gaps(self) -> bool:
        """Whether some entry waits for an earlier one of its feed (8.3)."""
        return bool(self._pending)

    # -- reading --------------------------------------------------------------------------

    def messages(self, author: bytes) -> dict[bytes, Message]:
        """The author's document as read (deleted messages included)."""
        doc = self._docs.get(author)
        return {} if doc is None else dict(doc.messages)

    def message(self, author: bytes, mid: bytes) -> Message | None:
        """One message of the author's document (deleted ones included), without a copy."""
        doc = self._docs.get(author)
        return None if doc is None else doc.messages.get(mid)

    def document(self, author: bytes) -> dict[str, Any]:
        """The author's document as plain values (tests, debugging)."""
        doc = self._docs.get(author)
        return {} if doc is None else doc.map.to_py() or {}

    def view(self, channel: bytes) -> ChannelView:
        return ChannelView(self, channel)

    def page(
        self,
        channel: bytes,
        before: tuple[int, bytes, bytes] | None = None,
        limit: int = 100,
    ) -> list[Message]:
        """Up to ``limit`` visible messages before ``before``, oldest first [COM-R56]."""
        self.refresh()
        state = self.authority.state
        index = self._channels.get(channel)
        if index is None or channel not in state.channels or limit <= 0:
            return []
        keys = index.ordered()
        i = len(keys) if before is None else bisect.bisect_left(keys, before)
        allowed: dict[bytes, int | None] = {}  # author -> ban time, or -1 may post, None not
        out: list[Message] = []
        while i > 0 and len(out) < limit:
            i -= 1
            hlc, author, mid = keys[i]
            doc = self._docs.get(author)
            msg = None if doc is None else doc.messages.get(mid)
            if msg is None or msg.channel != channel or msg.hlc != hlc or msg.text is None:
                continue  # gone, moved, re-dated or deleted: a stale index key
            if hlc > self._max_hlc.get(author, -1):
                continue  # dated after everything its author wrote [COM-R57]
            if author not in allowed:
                ban_time = self._ban_time(state, author)
                if ban_time is not None:
                    allowed[author] = ban_time
                else:
                    allowed[author] = -1 if state.can_post(author, channel) else None
            rule = allowed[author]
            if rule is None or (rule >= 0 and hlc_physical(hlc) >= rule):
                continue
            out.append(msg)
        out.reverse()
        return out

    # -- writing --------------------------------------------------------------------------

    def writer(self, key: PrivateKey, device: bytes) -> Feed:
        return Feed(self, key, device)

    def _accept_local(self, entry: FeedEntry) -> None:
        feed = self._feeds.setdefault(entry.feed, _DeviceFeed())
        feed.entries.append(entry)
        self._max_hlc[entry.author] = max(self._max_hlc.get(entry.author, -1), entry.hlc)
        self.clock = max(self.clock, entry.hlc)


class ChannelView:
    """One channel of a :class:`FeedSet`, paged newest-last [COM-R56]."""

    def __init__(self, feeds: FeedSet, channel: bytes) -> None:
        self.feeds = feeds
        self.channel = channel

    def page(
        self, before: tuple[int, bytes, bytes] | None = None, limit: int = 100
    ) -> list[Message]:
        return self.feeds.page(self.channel, before, limit)

    def all(self) -> list[Message]:
        out: list[Message] = []
        before = None
        while True:
            chunk = self.page(before, 1000)
            out[:0] = chunk
            if len(chunk) < 1000:
                return out
            before = chunk[0].cursor


class Feed:
    """The local author's feed on one device: post, edit, delete -> signed entry bytes.

    The device writes into its author's document in ``feeds`` (the one other
    devices' entries are applied to), so devices converge [COM-R53].
    """

    def __init__(self, feeds: FeedSet, key: PrivateKey, device: bytes) -> None:
        if len(device) != DEVICE_SIZE:
            raise LocalProtocolError(
                ErrorCode.FEED_ENTRY_MALFORMED, f"a device ID is {DEVICE_SIZE} bytes", "COM-R50"
            )
        self.feeds = feeds
        self.key = key
        self.author = key.public_key.raw
        self.device = bytes(device)
        client_id = _client_id(self.author, self.device)
        doc = feeds._docs.get(self.author)
        if doc is None or doc.doc.client_id != client_id:
            feeds._rebuild(self.author, client_id)
        self._updates: list[bytes] = []
        self._doc = feeds._docs[self.author]
        self._sub = self._doc.doc.observe(self._capture)

    def _capture(self, event: TransactionEvent) -> None:
        self._updates.append(event.update)

    @property
    def length(self) -> int:
        feed = self.feeds._feeds.get((self.author, self.device))
        return 0 if feed is None else len(feed.entries)

    def _write(self, mid: bytes, message: Message, hlc: int) -> bytes:
        feed = self.feeds._feeds.get((self.author, self.device))
        prev = feed.entries[-1].id if feed is not None and feed.entries else None
        seq = self.length + 1
        self._updates.clear()
        with self._doc.doc.transaction():
            self._doc.map[mid.hex()] = _value(message)
        update = b"".join(self._updates[-1:])
        entry = sign_feed_entry(self.key, self.feeds.community, self.device, seq, prev, hlc, update)
        self.feeds._accept_local(entry)
        return entry.raw

    def _hlc(self, now_ms: int) -> int:
        feed = self.feeds._feeds.get((self.author, self.device))
        last = max(self.feeds.clock, -1 if feed is None else feed.hlc, 0)
        return hlc_next(last, now_ms)

    def post(
        self,
        channel: bytes,
        text: str,
        now_ms: int,
        reply_to: tuple[bytes, bytes] | None = None,
    ) -> bytes:
        """A new message; its ID is ``device || seq`` of this entry."""
        if len(text.encode()) > MAX_TEXT:
            raise LocalProtocolError(
                ErrorCode.FEED_ENTRY_MALFORMED, f"text exceeds {MAX_TEXT} bytes", "COM-R53"
            )
        hlc = self._hlc(now_ms)
        mid = self.device + (self.length + 1).to_bytes(8, "big")
        return self._write(mid, Message(self.author, mid, channel, hlc, text, reply_to), hlc)

    def _own(self, mid: bytes) -> Message:
        msg = self._doc.messages.get(mid)
        if msg is None or msg.deleted:
            raise LocalProtocolError(
                ErrorCode.FEED_ENTRY_MALFORMED,
                "only one's own existing messages can be edited or deleted",
                "COM-R53",
            )
        return msg

    def edit(self, mid: bytes, text: str, now_ms: int) -> bytes:
        old = self._own(mid)
        if len(text.encode()) > MAX_TEXT:
            raise LocalProtocolError(
                ErrorCode.FEED_ENTRY_MALFORMED, f"text exceeds {MAX_TEXT} bytes", "COM-R53"
            )
        hlc = self._hlc(now_ms)
        new = Message(self.author, mid, old.channel, old.hlc, text, old.reply_to, hlc)
        return self._write(mid, new, hlc)

    def delete(self, mid: bytes, now_ms: int) -> bytes:
        old = self._own(mid)
        hlc = self._hlc(now_ms)
        return self._write(
            mid, Message(self.author, mid, old.channel, old.hlc, None, None, hlc), hlc
        )
