"""Push-pull gossip per community topic (spec/05-gossip.md), sans-IO.

Theory of operation
-------------------
Every community is one **topic** (32 bytes, :func:`topic_id`). Members online
gossip the topic's **messages**: signed envelopes (domain
``starling/gossip-msg/1``) of ``{1: topic, 2: time_ms, 3: data}``, named by
their **message ID**, SHA-256 over a tag and the exact signed bytes [GSP-R11].
A message is verified once, then forwarded byte for byte [GSP-R13].

``GossipNode`` is one node's gossip state, driven like the DHT core: feed it
frames with ``receive(peer, frame, now)``, send what ``frames_to_send(now)``
returns, call ``handle_timer(now)`` at ``get_timer()``, read events with
``next_event()``. It never does I/O, never reads a clock, never draws
randomness of its own: randomness comes from an injected ``rand(n) -> bytes``.

Delivery has three paths, from fastest to most complete:

* **eager push** along a per-topic **mesh** of about D = 6 peers, kept between
  D_low and D_high by a heartbeat with GRAFT and PRUNE (peer exchange and a
  backoff on prune) [GSP-R40] [GSP-R41] [GSP-R42]. Each node keeps only
  ``eager_max`` (2) mesh links **eager**, the peers that tell it of messages
  first, and CHOKEs the others: they send it IDs at once instead of bodies
  [GSP-R45] [GSP-R46]. Own messages go to every topic peer (flood publishing),
  and a small message received straight from its author is relayed the same
  way (author relay), so the first two hops are wide [GSP-R23]. A PUBLISH
  carries a hop count (not signed); a copy that came ``quiet_hops`` (6) links
  is announced instead of pushed, and one that came ``silent_hops`` (8) only at
  heartbeats, so
  that long chains of fast links do not make long first-delivery paths
  [GSP-R28] [GSP-R29];
* **lazy pull**: IDs are announced (IHAVE) at once to the choked mesh peers and
  to ``lazy_fanout`` peers outside the mesh, and at each heartbeat to D_lazy
  more; a node that hears of an ID from a peer that is not an eager link waits
  a short, adaptive time for the eager copy, then asks for it (IWANT) and
  UNCHOKEs that announcer; large messages are pushed to nobody, announced
  ``unpushed`` and pulled at once; an announcer that never delivers breaks a
  promise and is penalised [GSP-R32] [GSP-R33];
* **catch-up** on every new or resumed session: SYNC asks a peer for the IDs
  it holds for a topic since a time, SYNC_PAGE answers page by page, and the
  asker pulls what it lacks [GSP-R60] [GSP-R61] [GSP-R62].

A peer whose session reports our data unacknowledged (``set_peer_suspect``,
a crash the idle timeout would notice only 30 s later) leaves the mesh at
once; replacements are grafted at once, peers heard from lately first, and a
catch-up with one of them brings what the dark link missed [GSP-R47].

What bounds memory: a seen-cache of IDs only, by count and TTL [GSP-R30]; a
message cache of bodies by count, bytes and age [GSP-R31]; per-peer state of
a few counters and one bounded IDONTWANT map; wants and syncs bounded by
count. What bounds abuse: per-peer limits on announcements, requests,
IDONTWANTs, SYNCs and PUBLISH rate [GSP-R50]; penalties that decay, and a
graylist above a threshold [GSP-R52]. Every rejection has a registry code.

Public API (what ``node/gossip.py`` and a simulator adapter need)
------------------------------------------------------------------
Peers are opaque hashable handles chosen by the caller (a ``PeerId`` on a
node, an address in a simulator); the core never interprets them.

``GossipNode(identity, network_id, rand, now, config=None, validator=None,
store=None, epoch_offset=0.0)``
    ``now`` is seconds on the caller's clock (monotonic is fine);
    ``epoch_offset`` is Unix time minus that clock, so ``now + epoch_offset``
    is wall time, used to date own messages and to refuse received messages
    dated too far ahead (a simulator passes 0). ``validator(message, peer)``
    returns :class:`Verdict` ACCEPT / REJECT / IGNORE. ``store`` is a
    :class:`MessageStore` (default: a :class:`MessageCache`).
``subscribe(topic, now)`` / ``unsubscribe(topic, now)``
    join or leave a topic (SUBSCRIBE / UNSUBSCRIBE to every peer, GRAFT / PRUNE).
``add_peer(peer, now, outbound=False, peer_id=None)`` / ``remove_peer(peer, now)``
    a gossip stream to ``peer`` opened / closed. ``outbound``: we dialled it;
    ``peer_id``: the raw peer ID the session authenticated (for the author relay).
``set_peer_suspect(peer, suspect, now)``
    the session with ``peer`` reports that what we send it goes unacknowledged
    (``True``) or is acknowledged again (``False``): a suspect peer leaves the
    meshes, and nothing but answers is sent to it [GSP-R47].
``set_peer_hint(peer, hint)``
    opaque bytes (for example a signed peer record) given to others as peer
    exchange when we prune them; ``None`` clears it.
``receive(peer, frame, now)``
    one gossip message (one stream frame's plaintext). Never raises for bad
    input: faults are counted in ``stats`` and penalised.
``frames_to_send(now) -> list[tuple[peer, bytes]]``
    each bytes is one gossip message, to be sent as one frame on the peer's
    ``starling/gossip/1`` stream, in order.
``publish(topic, data, now, time_ms=None) -> bytes``
    sign, store and push an own message; returns its message ID.
``catch_up(peer, topic, since_ms, now) -> bool``
    send SYNC; the node calls it for each topic on every new or resumed
    session. ``CatchUpDone`` reports the end.
``get_timer() -> float | None`` / ``handle_timer(now)``
    the heartbeat, and deferred pulls (due between heartbeats).
``next_event() -> Event | None``
    :class:`Delivered` (once per message ID, never for own messages),
    :class:`PeerMisbehaved` (drop the session when ``graylisted``),
    :class:`PeerExchange` (hints from a PRUNE), :class:`CatchUpDone`.
``stats`` (a ``Counter``)
    ``tx_frames`` / ``tx_bytes`` / ``rx_frames`` / ``rx_bytes`` in all and per
    kind (``tx_bytes_PUBLISH``, ``rx_frames_IHAVE``, ...); ``publish_rx``
    (every PUBLISH body received, duplicates included), ``publish_rx_duplicate``,
    ``delivered``, ``published``, ``forwarded``, ``served`` (bodies sent for
    IWANT), ``announced_ids``, ``requested_ids``, ``rejected_<CODE>`` per
    registry code (``rejected_GOSSIP_GRAYLISTED``: input dropped from a
    graylisted peer), ``ignored_unknown_type``.
    Control bytes are ``tx_bytes - tx_bytes_PUBLISH``; copies per delivery are
    ``publish_rx / delivered``.
``mesh(topic)``, ``topic_peers(topic)``, ``penalty(peer)``, ``graylisted(peer)``
    read-only views for tests and benchmarks.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, cast

from . import codec, identity
from .errors import CodecError, ErrorCode, GossipError, StarlingError
from .identity import PrivateKey, PublicKey

__all__ = [
    "MESSAGE_DOMAIN",
    "MESSAGE_ID_TAG",
    "PROTOCOL_ID",
    "CatchUpDone",
    "Delivered",
    "GossipConfig",
    "GossipNode",
    "Message",
    "MessageCache",
    "MessageStore",
    "PeerExchange",
    "PeerMisbehaved",
    "SeenCache",
    "Verdict",
    "decode_message",
    "message_id",
    "parse_message",
    "select_ids",
    "sign_message",
    "topic_id",
]

Peer = Hashable
Rand = Callable[[int], bytes]

PROTOCOL_ID = "starling/gossip/1"  # a stream per side of a session, a message per frame [GSP-R3]
MESSAGE_DOMAIN = "starling/gossip-msg/1"
MESSAGE_ID_TAG = b"starling/gossip-id/1"
TOPIC_TAG = b"starling/gossip-topic/1"

TOPIC_SIZE = 32
ID_SIZE = 32
MAX_FRAME = 65519  # the largest frame plaintext of a session stream (02-secure-session, 7)
MAX_MESSAGE_SIZE = 65024  # a signed message, so that a PUBLISH always fits one frame
MAX_IDS = 1024  # IDs in one IHAVE, IWANT, IDONTWANT or SYNC_PAGE
MAX_TOPICS = 64  # topics in one SUBSCRIBE or UNSUBSCRIBE
MAX_PX = 16  # peer hints in one PRUNE
MAX_HINT = 1024  # bytes in one peer hint
MAX_BACKOFF = 3600  # seconds
MAX_HOPS = 255  # the hop count of a PUBLISH saturates here [GSP-R28]

# Message types (key 0). Even types must be understood; IDONTWANT is odd because a
# receiver that ignores it still behaves correctly (it only saves bandwidth) [MSG-R4].
SUBSCRIBE, UNSUBSCRIBE, GRAFT, PRUNE, PUBLISH = 2, 4, 6, 8, 10
IHAVE, IWANT, IDONTWANT, SYNC, SYNC_PAGE = 12, 14, 15, 16, 18
# CHOKE and UNCHOKE are odd for the same reason: a receiver that ignores them keeps
# pushing bodies, which costs bandwidth and nothing else [GSP-R45].
CHOKE, UNCHOKE = 17, 19
KIND_NAMES = {
    SUBSCRIBE: "SUBSCRIBE",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    GRAFT: "GRAFT",
    PRUNE: "PRUNE",
    PUBLISH: "PUBLISH",
    IHAVE: "IHAVE",
    IWANT: "IWANT",
    IDONTWANT: "IDONTWANT",
    SYNC: "SYNC",
    SYNC_PAGE: "SYNC_PAGE",
    CHOKE: "CHOKE",
    UNCHOKE: "UNCHOKE",
}

FRAME_LIMITS = codec.DecodeLimits(max_size=MAX_FRAME, max_depth=4)  # [GSP-R1]
MESSAGE_LIMITS = codec.DecodeLimits(max_size=MAX_MESSAGE_SIZE, max_depth=4)  # [GSP-R10]

_TYPE = codec.Field(0, "type", int, minimum=0)
_TOPIC = codec.Field(1, "topic", bytes, size=TOPIC_SIZE)
_FIELDS: dict[int, tuple[codec.Field, ...]] = {  # spec/05-gossip.md, section 4 [GSP-R2]
    SUBSCRIBE: (_TYPE, codec.Field(1, "topics", list, max_size=MAX_TOPICS)),
    UNSUBSCRIBE: (_TYPE, codec.Field(1, "topics", list, max_size=MAX_TOPICS)),
    GRAFT: (_TYPE, _TOPIC),
    PRUNE: (
        _TYPE,
        _TOPIC,
        codec.Field(2, "backoff", int, minimum=0, maximum=MAX_BACKOFF),
        codec.Field(3, "px", list, required=False, max_size=MAX_PX),
    ),
    PUBLISH: (
        _TYPE,
        codec.Field(1, "message", bytes),
        codec.Field(3, "hops", int, required=False, minimum=1, maximum=MAX_HOPS),
    ),
    IHAVE: (
        _TYPE,
        _TOPIC,
        codec.Field(2, "ids", list, max_size=MAX_IDS),
        codec.Field(3, "unpushed", bool, required=False),
    ),
    IWANT: (_TYPE, codec.Field(1, "ids", list, max_size=MAX_IDS)),
    IDONTWANT: (_TYPE, codec.Field(1, "ids", list, max_size=MAX_IDS)),
    SYNC: (
        _TYPE,
        _TOPIC,
        codec.Field(2, "since", int, minimum=0),
        codec.Field(4, "after", bytes, required=False, size=ID_SIZE),
    ),
    SYNC_PAGE: (
        _TYPE,
        _TOPIC,
        codec.Field(2, "ids", list, max_size=MAX_IDS),
        codec.Field(4, "next", list, required=False, size=2),
    ),
    CHOKE: (_TYPE, _TOPIC),
    UNCHOKE: (_TYPE, _TOPIC),
}
_PAYLOAD_FIELDS = (  # the signed payload [GSP-R10]
    codec.Field(1, "topic", bytes, size=TOPIC_SIZE),
    codec.Field(2, "time", int, minimum=0),
    codec.Field(3, "data", bytes),
)


# ----------------------------------------------------------------------------- wire helpers


def topic_id(network: bytes, community_key: bytes) -> bytes:
    """The topic of a community: SHA-256("starling/gossip-topic/1" || network || key) [GSP-R14]."""
    return hashlib.sha256(TOPIC_TAG + network + community_key).digest()


def message_id(raw: bytes) -> bytes:
    """SHA-256("starling/gossip-id/1" || the signed message bytes) [GSP-R11]."""
    return hashlib.sha256(MESSAGE_ID_TAG + raw).digest()


def _element_fault(code: ErrorCode, what: str) -> CodecError:
    return CodecError(code, what, "GSP-R2")


def _check_blobs(items: list[codec.Value], size: int | None, limit: int | None, what: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, bytes):
            raise _element_fault(ErrorCode.SCHEMA_TYPE, f"{what}[{i}] must be bytes")
        if size is not None and len(item) != size:
            raise _element_fault(ErrorCode.SCHEMA_VALUE, f"{what}[{i}] must be {size} bytes")
        if limit is not None and len(item) > limit:
            raise _element_fault(ErrorCode.SCHEMA_VALUE, f"{what}[{i}] exceeds {limit} bytes")


_PUBLISH_HEAD = b"\x00\x0a\x01"  # after the map head: {0: 10, 1: ...


def _publish_body(frame: bytes) -> tuple[bytes, int | None] | None:
    """The signed message and hop count of a canonical PUBLISH, or None.

    ``{0: 10, 1: bstr}`` or ``{0: 10, 1: bstr, 3: uint}`` with the hop count in
    1 ... 255. PUBLISH is most of what a node receives, so it skips the general
    decoder: the bytes accepted here are exactly the canonical encodings of such a
    map, which the general decoder accepts too; anything else takes the general path.
    """
    size = len(frame)
    if size > MAX_FRAME or size < 5 or frame[1:4] != _PUBLISH_HEAD:
        return None
    pairs = frame[0]
    if pairs == 0xA2:
        tail = 0
    elif pairs == 0xA3 and size >= 7:
        # The hop count ends the frame: 03 then a uint of one or two bytes.
        if frame[-2] == 0x03 and 0x01 <= frame[-1] <= 0x17:
            tail, hops = 2, frame[-1]
        elif frame[-3] == 0x03 and frame[-2] == 0x18 and frame[-1] >= 24:
            tail, hops = 3, frame[-1]
        else:
            return None
    else:
        return None
    head = frame[4]
    if 0x40 <= head <= 0x57:
        start, length = 5, head - 0x40
    elif head == 0x58 and size >= 6 and frame[5] >= 24:
        start, length = 6, frame[5]
    elif head == 0x59 and size >= 7 and frame[5] != 0:  # a 2-byte length of 256 or more
        start, length = 7, (frame[5] << 8) | frame[6]
    else:
        return None
    if start + length + tail != size:
        return None
    return bytes(frame[start : size - tail]), (hops if tail else None)


def _with_hops(frame: bytes, hops: int) -> bytes:
    """A PUBLISH ``{0: 10, 1: bstr}`` with the hop count appended as key 3 [GSP-R28]."""
    hops = min(hops, MAX_HOPS)
    return (
        b"\xa3"
        + frame[1:]
        + (b"\x03" + bytes((hops,)) if hops < 24 else b"\x03\x18" + bytes((hops,)))
    )


def decode_message(frame: bytes) -> tuple[int, dict[str, codec.Value] | None]:
    """Decode one gossip message: its type and its fields by name [GSP-R1] [GSP-R2].

    An unknown odd type gives ``(type, None)``: the message is ignored [MSG-R3].
    Raises CodecError (``CBOR_*``, ``SCHEMA_*``) for everything else that is wrong.
    """
    fast = _publish_body(frame)
    if fast is not None:
        body, hops = fast
        if hops is None:
            return PUBLISH, {"type": PUBLISH, "message": body}
        return PUBLISH, {"type": PUBLISH, "message": body, "hops": hops}
    message = codec.decode(frame, FRAME_LIMITS)
    kind = codec.dispatch(message, _KNOWN, "gossip message")
    if kind is None:
        assert isinstance(message, dict)
        unknown = message[0]
        assert isinstance(unknown, int)
        return unknown, None
    fields = codec.read_fields(message, _FIELDS[kind], KIND_NAMES[kind])
    for name, value in fields.items():
        if isinstance(value, list):
            if name == "topics":
                _check_blobs(value, TOPIC_SIZE, None, name)
            elif name == "ids":
                _check_blobs(value, ID_SIZE, None, name)
            elif name == "px":
                _check_blobs(value, None, MAX_HINT, name)
            elif name == "next":
                when, after = value
                if not isinstance(when, int) or isinstance(when, bool):
                    raise _element_fault(ErrorCode.SCHEMA_TYPE, "next[0] must be an integer")
                if when < 0:
                    raise _element_fault(ErrorCode.SCHEMA_VALUE, "next[0] must be >= 0")
                _check_blobs([after], ID_SIZE, None, "next[1:]")
    return kind, fields


def _kind_of(kind: int) -> Callable[[dict[int, codec.Value]], int]:
    return lambda _message: kind


_KNOWN = {kind: _kind_of(kind) for kind in _FIELDS}


# ----------------------------------------------------------------------------- signed messages


@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """A verified gossip message. ``raw`` is the signed message exactly as carried,
    ``frame`` the PUBLISH that carries it (built once, forwarded as is) [GSP-R13]."""

    id: bytes
    topic: bytes
    author: PublicKey
    time_ms: int
    data: bytes
    raw: bytes = field(repr=False)
    frame: bytes = field(repr=False)

    @property
    def author_id(self) -> bytes:
        return self.author.peer_id.raw


@dataclass(frozen=True, slots=True)
class _Unverified:
    signer: bytes
    payload: bytes
    signature: bytes
    topic: bytes
    time_ms: int
    data: bytes


def _invalid(reason: str) -> GossipError:
    return GossipError(ErrorCode.GOSSIP_MESSAGE_INVALID, reason, "GSP-R10")


def _structure(raw: bytes) -> _Unverified:
    """Every check of a signed message but the signature's [GSP-R10]."""
    if len(raw) > MAX_MESSAGE_SIZE:
        raise GossipError(
            ErrorCode.GOSSIP_MESSAGE_TOO_LARGE,
            f"signed message of {len(raw)} bytes exceeds {MAX_MESSAGE_SIZE}",
            "GSP-R10",
        )
    try:
        signer, payload, signature = identity.read_envelope(raw, MESSAGE_LIMITS)
        fields = codec.read_fields(
            codec.decode(payload, MESSAGE_LIMITS), _PAYLOAD_FIELDS, "gossip payload"
        )
    except GossipError:
        raise
    except StarlingError as exc:
        raise _invalid(f"not a signed gossip message: {exc}") from None
    topic, time_ms, data = fields["topic"], fields["time"], fields["data"]
    assert isinstance(topic, bytes) and isinstance(time_ms, int) and isinstance(data, bytes)
    return _Unverified(signer, payload, signature, topic, time_ms, data)


def _publish_frame(raw: bytes) -> bytes:
    return codec.encode({0: PUBLISH, 1: raw})


def _verify(raw: bytes, mid: bytes, parsed: _Unverified) -> Message:
    try:
        author = PublicKey(parsed.signer)
        author.verify(MESSAGE_DOMAIN, parsed.payload, parsed.signature)
    except StarlingError as exc:
        raise _invalid(f"signature does not verify: {exc}") from None
    return Message(mid, parsed.topic, author, parsed.time_ms, parsed.data, raw, _publish_frame(raw))


# Verified (or refused) messages by ID: a message reaches a node over several paths and,
# in a simulator, thousands of cores in one process. The ID is a hash of the exact bytes,
# so a hit is the same bytes; keeping the first Message also shares its bytes.
# A refusal is kept with the message's topic when the structure was sound (None when
# not), so that the order of checks of 6.1 (topic before signature) holds on a hit.
_VERIFIED: OrderedDict[bytes, Message | tuple[GossipError, bytes | None]] = OrderedDict()
_VERIFIED_MAX = 8192


def _remember(mid: bytes, result: Message | tuple[GossipError, bytes | None]) -> None:
    _VERIFIED[mid] = result
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)


def parse_message(raw: bytes) -> Message:
    """Check and verify a signed message; every failure is a GossipError with its code:
    ``GOSSIP_MESSAGE_TOO_LARGE`` or ``GOSSIP_MESSAGE_INVALID`` [GSP-R10]."""
    raw = bytes(raw)
    mid = message_id(raw)
    cached = _VERIFIED.get(mid)
    if isinstance(cached, Message):
        return cached
    if cached is not None:
        raise cached[0]
    try:
        parsed = _structure(raw)
    except GossipError as exc:
        _remember(mid, (exc, None))
        raise
    try:
        message = _verify(raw, mid, parsed)
    except GossipError as exc:
        _remember(mid, (exc, parsed.topic))
        raise
    _remember(mid, message)
    return message


def sign_message(author: PrivateKey, topic: bytes, time_ms: int, data: bytes) -> Message:
    """Sign ``{1: topic, 2: time_ms, 3: data}`` under ``starling/gossip-msg/1`` [GSP-R10]."""
    payload = codec.encode({1: bytes(topic), 2: time_ms, 3: bytes(data)})
    raw = identity.seal(author, MESSAGE_DOMAIN, payload)
    return parse_message(raw)


# ----------------------------------------------------------------------------- caches


def select_ids(
    entries: Sequence[tuple[int, bytes]], since_ms: int, after: bytes | None, limit: int
) -> tuple[list[bytes], tuple[int, bytes] | None]:
    """One SYNC_PAGE from ``entries``, sorted by (time, ID) [GSP-R60].

    The IDs of the entries at or after ``since_ms`` (strictly after ``(since_ms,
    after)`` when ``after`` is given), in that order, at most ``limit``; and the
    cursor of the last one listed when more follow, else None.
    """
    if after is None:
        start = bisect.bisect_left(entries, (since_ms, b""))
    else:
        start = bisect.bisect_right(entries, (since_ms, after))
    page = entries[start : start + limit]
    more = start + limit < len(entries)
    return [mid for _, mid in page], (page[-1] if more and page else None)


class MessageStore(Protocol):
    """Where a node keeps message bodies for IWANT and catch-up [GSP-R31].

    The default is :class:`MessageCache`; the community layer can plug in its
    persistent store. Every method is synchronous and must not block.
    """

    def add(self, message: Message, now: float) -> None: ...

    def get(self, message_id: bytes) -> Message | None: ...

    def has(self, message_id: bytes) -> bool: ...

    def ids_since(
        self, topic: bytes, since_ms: int, after: bytes | None, limit: int
    ) -> tuple[list[bytes], tuple[int, bytes] | None]: ...

    def expire(self, now: float) -> None: ...

    def drop_topic(self, topic: bytes) -> None: ...


class MessageCache:
    """Bodies of recent messages, bounded by count, bytes and age [GSP-R31].

    Eviction is oldest received first. ``ids_since`` pages through a topic's
    messages ordered by (publisher time, ID).
    """

    def __init__(self, max_messages: int = 4096, max_bytes: int = 32 << 20, max_age: float = 600.0):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[bytes, tuple[Message, float]] = OrderedDict()
        self._index: dict[bytes, list[tuple[int, bytes]]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, message: Message, now: float) -> None:
        if message.id in self._entries:
            return
        self._entries[message.id] = (message, now)
        self.bytes += len(message.raw)
        bisect.insort(self._index.setdefault(message.topic, []), (message.time_ms, message.id))
        while self._entries and (
            len(self._entries) > self.max_messages or self.bytes > self.max_bytes
        ):
            self._evict()

    def _evict(self) -> None:
        _, (message, _) = self._entries.popitem(last=False)
        self.bytes -= len(message.raw)
        index = self._index.get(message.topic)
        if index is not None:
            key = (message.time_ms, message.id)
            i = bisect.bisect_left(index, key)
            if i < len(index) and index[i] == key:
                del index[i]
            if not index:
                del self._index[message.topic]

    def get(self, message_id: bytes) -> Message | None:
        entry = self._entries.get(message_id)
        return entry[0] if entry is not None else None

    def has(self, message_id: bytes) -> bool:
        return message_id in self._entries

    def ids_since(
        self, topic: bytes, since_ms: int, after: bytes | None, limit: int
    ) -> tuple[list[bytes], tuple[int, bytes] | None]:
        return select_ids(self._index.get(topic, []), since_ms, after, limit)

    def expire(self, now: float) -> None:
        while self._entries:
            _, added = next(iter(self._entries.values()))
            if added > now - self.max_age:
                break
            self._evict()

    def drop_topic(self, topic: bytes) -> None:
        for _, mid in self._index.pop(topic, []):
            entry = self._entries.pop(mid, None)
            if entry is not None:
                self.bytes -= len(entry[0].raw)


# Seen-cache verdicts; a rejection is stored as its registry code.
_ACCEPTED = 0
_IGNORED = 1


class SeenCache:
    """Message IDs already received, never bodies: bounded by count and TTL [GSP-R30].

    The TTL is the same for every entry, so insertion order is expiry order and
    both bounds are kept from the front.
    """

    def __init__(self, max_entries: int = 20000, ttl: float = 120.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[bytes, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: bytes) -> bool:
        return message_id in self._entries

    def get(self, message_id: bytes) -> int | None:
        entry = self._entries.get(message_id)
        return entry[1] if entry is not None else None

    def add(self, message_id: bytes, verdict: int, now: float) -> None:
        if message_id in self._entries:
            self._entries[message_id] = (self._entries[message_id][0], verdict)
            return
        self._entries[message_id] = (now + self.ttl, verdict)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            expires, _ = next(iter(entries.values()))
            if expires > now:
                break
            entries.popitem(last=False)


# ----------------------------------------------------------------------------- events


class Verdict(Enum):
    """What the application's validator says of a message [GSP-R21]."""

    ACCEPT = "accept"  # deliver and forward
    REJECT = "reject"  # drop, do not forward, penalise the sender
    IGNORE = "ignore"  # drop, do not forward, no penalty


Validator = Callable[[Message, Peer], Verdict]


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message reached this node for the first time (never sent for own messages).

    ``via`` is ``"push"`` (an eager PUBLISH), ``"pull"`` (asked for after an IHAVE)
    or ``"sync"`` (asked for during a catch-up). ``from_peer`` is None for a message
    accepted late [GSP-R27] whose sender is gone since."""

    topic: bytes
    message_id: bytes
    message: Message
    from_peer: Peer | None
    via: str


@dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """A peer was penalised; ``graylisted``: its input is now dropped and the node
    should close the session [GSP-R52]."""

    peer: Peer
    code: ErrorCode
    reason: str
    penalty: float
    graylisted: bool


@dataclass(frozen=True, slots=True)
class PeerExchange:
    """A PRUNE carried peer hints (unauthenticated: dial them like any address) [GSP-R43]."""

    peer: Peer
    topic: bytes
    hints: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CatchUpDone:
    """A catch-up with ``peer`` ended: ``listed`` IDs seen in its pages, ``requested``
    of them asked for; ``complete`` is False when it was cut short."""

    peer: Peer
    topic: bytes
    listed: int
    requested: int
    complete: bool


Event = Delivered | PeerMisbehaved | PeerExchange | CatchUpDone


# ----------------------------------------------------------------------------- config


@dataclass
class GossipConfig:
    """Parameters (spec/05-gossip.md, section 2.1). Times in seconds."""

    d: int = 6
    d_low: int = 4
    d_high: int = 12
    d_out: int = 2  # outbound peers kept in a mesh
    d_lazy: int = 6  # non-mesh peers sent IHAVE at each heartbeat
    gossip_factor: float = 0.25
    gossip_window: float = 3.0  # IDs received this recently are announced at a heartbeat
    # Anti-entropy [GSP-R63]: every this many heartbeats (None: never), a catch-up with
    # one topic peer (one heard from within ``sync_alive`` if there is one) for what it
    # holds from the last ``sync_window`` seconds.
    sync_every: int | None = 10
    sync_window: float = 120.0
    sync_alive: float = 5.0
    # A mesh peer turned suspect [GSP-R47]: catch up since this long before we last
    # heard from it (authors' clocks differ a little; anti-entropy covers the rest).
    repair_margin: float = 10.0
    heartbeat: float = 1.0
    flood_publish: bool = True  # own messages to every topic peer, not only the mesh [GSP-R23]
    # Eager push: how many mesh peers get the body of a forwarded message; the other
    # mesh peers get an IHAVE at once [GSP-R23]. None: all of them. Large messages are
    # announced and pulled, not pushed, by default: one copy per node instead of about
    # one per mesh peer, for a round trip more per hop.
    eager_degree: int | None = None
    large_message: int = 1024  # bytes [GSP-R34]
    eager_degree_large: int | None = 0
    # Eager and lazy mesh links (section 7.5) [GSP-R45] [GSP-R46]: a node keeps between
    # ``eager_min`` and ``eager_max`` of its mesh peers unchoked (they push it bodies),
    # preferring those that tell it of new messages first, and chokes the others (they
    # send it IDs at once instead). None: never choke. A peer unchoked less than
    # ``choke_hold`` ago is not choked again; a choked peer replaces the slowest eager
    # one when its score is above ``swap_factor`` times that one's plus one.
    eager_max: int | None = 2
    eager_min: int = 2
    choke_hold: float = 5.0
    swap_factor: float = 2.0
    score_decay: float = 0.9  # per heartbeat
    # IDs of a forwarded message go at once to this many topic peers outside the mesh
    # too (besides the choked mesh peers) [GSP-R23].
    lazy_fanout: int = 8
    # By hop count [GSP-R29]: a message whose copy came ``quiet_hops`` links or more from
    # its author is pushed to nobody (the peers it would have gone to get its ID at once),
    # and one that came ``silent_hops`` links or more is announced at heartbeats only.
    # None: no such limit.
    quiet_hops: int | None = 6
    silent_hops: int | None = 8
    # A small message received straight from its author (the session's peer ID is the
    # author's) is pushed to every mesh peer, choked or not ("mesh"), or to every topic
    # peer ("all"), like the author's own flood publishing; None: as any other [GSP-R23].
    author_relay: str | None = "all"
    # An ID announced by a peer that is not an eager mesh peer is pulled after a short
    # wait for the eager copy [GSP-R33]: twice the recent mean of how much later eager
    # copies came than announcements, within these bounds.
    pull_delay: float = 0.08
    pull_delay_min: float = 0.02
    pull_delay_max: float = 0.25
    idontwant: bool = True  # send IDONTWANT for large messages (received ones are honoured)
    prune_backoff: int = 60
    unsubscribe_backoff: int = 10
    px_count: int = 8
    seen_ttl: float = 120.0
    seen_max: int = 20000
    cache_max_messages: int = 4096
    cache_max_bytes: int = 32 << 20
    cache_max_age: float = 600.0
    forward_max_age: float = 120.0  # older messages are delivered and kept, not forwarded
    max_clock_skew: float | None = 60.0  # messages dated further ahead are ignored
    iwant_timeout: float = 3.0
    max_wants: int = 8192
    want_ttl: float = 30.0
    # Per peer and heartbeat, what we accept ...
    max_ihave_ids: int = 5000
    max_ihave_messages: int = 500
    max_iwant_ids: int = 1024
    max_retransmissions: int = 3  # times one ID is served to one peer
    retransmission_window: float = 60.0
    max_syncs: int = 4
    max_idontwant_ids: int = 2048  # entries kept per peer
    max_chokes: int = 8  # CHOKE and UNCHOKE per peer and heartbeat
    idontwant_ttl: float = 3.0
    max_topics_per_peer: int = 256
    publish_rate: float = 200.0  # PUBLISH per second per peer, token bucket ...
    publish_burst: float = 1000.0  # ... of this depth
    # ... and what we send (below the limits above, so an honest sender is never refused).
    max_iwant_ids_out: int = 512
    max_syncs_out: int = 2
    sync_page: int = MAX_IDS
    max_sync_pages: int = 64
    sync_timeout: float = 30.0
    # Penalties (spec/05-gossip.md, section 11.2): points per fault, a graylist threshold
    # and a decay per heartbeat.
    penalty_malformed: float = 50.0
    penalty_invalid: float = 25.0
    penalty_rejected: float = 10.0
    penalty_backoff: float = 10.0
    penalty_promise: float = 2.0
    penalty_limit: float = 1.0
    penalty_rate: float = 0.5
    graylist_threshold: float = 100.0
    penalty_decay: float = 0.9

    def penalty_for(self, code: ErrorCode) -> float:
        """Points for a fault of ``code`` (0: counted, not penalised)."""
        if code.name.startswith(("CBOR_", "SCHEMA_")):
            return self.penalty_malformed
        return {
            ErrorCode.GOSSIP_MESSAGE_INVALID: self.penalty_invalid,
            ErrorCode.GOSSIP_MESSAGE_TOO_LARGE: self.penalty_invalid,
            ErrorCode.GOSSIP_MESSAGE_REJECTED: self.penalty_rejected,
            ErrorCode.GOSSIP_GRAFT_BACKOFF: self.penalty_backoff,
            ErrorCode.GOSSIP_PROMISE_BROKEN: self.penalty_promise,
            ErrorCode.GOSSIP_IHAVE_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_IWANT_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_SYNC_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_IDONTWANT_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_CHOKE_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_TOPIC_LIMIT: self.penalty_limit,
            ErrorCode.GOSSIP_UNSOLICITED: self.penalty_limit,
            ErrorCode.GOSSIP_RATE_LIMITED: self.penalty_rate,
        }.get(code, 0.0)


# ----------------------------------------------------------------------------- peer state


class _Peer:
    """What the core keeps per peer: a handful of numbers and two small maps."""

    __slots__ = (
        "chokes",
        "dontwant",
        "epoch",
        "graylisted",
        "handle",
        "heard",
        "hint",
        "ihave_ids",
        "ihave_msgs",
        "iwant_ids",
        "iwant_out",
        "outbound",
        "peer_id",
        "penalty",
        "refilled",
        "served",
        "served_reset",
        "suspect",
        "syncs",
        "syncs_out",
        "tokens",
        "topics",
    )

    def __init__(self, handle: Peer, outbound: bool, now: float, burst: float) -> None:
        self.handle = handle
        self.outbound = outbound
        self.topics: dict[bytes, None] = {}  # dicts as ordered sets: runs reproduce
        self.penalty = 0.0
        self.graylisted = False
        self.tokens = burst
        self.refilled = now
        self.hint: bytes | None = None
        self.peer_id: bytes | None = None
        self.heard = now  # when a frame last came from this peer
        self.suspect = False  # the session says our data goes unacknowledged [GSP-R47]
        self.dontwant: dict[bytes, float] = {}
        self.served: dict[bytes, int] = {}
        self.served_reset = now
        # Per-heartbeat counters, reset lazily when ``epoch`` is behind the node's.
        self.epoch = -1
        self.ihave_ids = self.ihave_msgs = self.iwant_ids = self.iwant_out = 0
        self.syncs = self.syncs_out = self.chokes = 0


class _Topic:
    __slots__ = (
        "choked_by",
        "choking",
        "eager_since",
        "last_time",
        "mesh",
        "recent",
        "repair_after",
        "repair_from",
        "repair_peer",
        "repair_since",
        "repaired",
        "score",
    )

    def __init__(self) -> None:
        self.mesh: dict[Peer, None] = {}
        self.recent: deque[tuple[float, bytes]] = deque()  # (received, ID) to gossip
        self.last_time = -1
        # Eager and lazy links [GSP-R45]: mesh peers we choked, mesh peers that choked
        # us, when each unchoked mesh peer became eager, and per mesh peer how often it
        # was the first to tell us of a message (decayed at each heartbeat).
        self.choking: dict[Peer, None] = {}
        self.choked_by: dict[Peer, None] = {}
        self.eager_since: dict[Peer, float] = {}
        self.score: dict[Peer, float] = {}
        # The catch-up for mesh links gone dark [GSP-R47]: the window still to ask for
        # (None: nothing pending), whom we may ask (peers heard from after this), and
        # the last one started: with whom, from when, at what time.
        self.repair_since: float | None = None
        self.repair_after = -math.inf
        self.repair_peer: Peer | None = None
        self.repair_from = 0.0
        self.repaired = -math.inf


class _Want:
    """An ID we lack and that peers announced: who announced it, whom we asked."""

    __slots__ = ("announcers", "asked", "created", "deadline", "due", "first", "sync", "topic")

    def __init__(self, topic: bytes | None, sync: bool, now: float) -> None:
        self.topic = topic
        self.announcers: list[Peer] = []
        self.asked: Peer | None = None
        self.deadline = 0.0
        self.due = 0.0  # a deferred pull: not asked for before this time [GSP-R33]
        self.first: Peer | None = None  # the first announcer
        self.sync = sync
        self.created = now


class _Sync:
    """A catch-up in progress with one peer in one topic; ``pending`` is the SYNC to
    send when the budget toward the peer allows (paced at heartbeats) [GSP-R51]."""

    __slots__ = ("listed", "pages", "pending", "requested", "started")

    def __init__(self, now: float, pending: tuple[int, bytes | None]) -> None:
        self.pages = 1
        self.listed = 0
        self.requested = 0
        self.started = now
        self.pending: tuple[int, bytes | None] | None = pending


_MAX_ANNOUNCERS = 4
_MAX_PULLED = 1024
# Messages the validator ignored, remembered (ID, time, sender, way) in case the
# application accepts them late [GSP-R27]; the bodies stay with the application.
_MAX_IGNORED = 4096
_MAX_SOURCES = 8


# ----------------------------------------------------------------------------- the node


class GossipNode:
    """One node's gossip state machine (sans-IO). See the module docstring for the API."""

    def __init__(
        self,
        identity_key: PrivateKey,
        network_id: bytes,
        rand: Rand,
        now: float,
        config: GossipConfig | None = None,
        validator: Validator | None = None,
        store: MessageStore | None = None,
        epoch_offset: float = 0.0,
    ) -> None:
        self.identity = identity_key
        self.network_id = network_id
        self.config = cfg = config or GossipConfig()
        self.validator = validator
        self.epoch_offset = epoch_offset
        self.store: MessageStore = store or MessageCache(
            cfg.cache_max_messages, cfg.cache_max_bytes, cfg.cache_max_age
        )
        self.seen = SeenCache(cfg.seen_max, cfg.seen_ttl)
        self.stats: Counter[str] = Counter()
        self._rand = rand
        self._now = now
        self._epoch = 0
        # Nodes run their anti-entropy at different heartbeats, not all at once.
        self._sync_phase = int.from_bytes(rand(2), "big") % (cfg.sync_every or 1)
        self._next_heartbeat = now + cfg.heartbeat
        self._peers: dict[Peer, _Peer] = {}
        self._topics: dict[bytes, _Topic] = {}  # the topics we subscribe to
        # Every topic some peer subscribes to. Sets whose order could reach the wire are
        # dicts: set order follows hashes, which vary between processes.
        self._topic_peers: dict[bytes, dict[Peer, None]] = {}
        self._backoff_ours: dict[tuple[bytes, Peer], float] = {}  # we pruned them
        self._backoff_theirs: dict[tuple[bytes, Peer], float] = {}  # they pruned us
        self._wants: dict[bytes, _Want] = {}
        self._syncs: dict[tuple[Peer, bytes], _Sync] = {}
        self._sources: dict[bytes, list[Peer]] = {}  # recent IDs: peers that sent them
        self._penalised: dict[Peer, None] = {}
        self._penalty_memory: OrderedDict[Peer, tuple[float, float]] = OrderedDict()
        self._dontwant_peers: dict[Peer, None] = {}
        self._outbox: list[tuple[Peer, bytes]] = []
        # peer -> (topic, unpushed) -> IDs to announce at once
        self._announce: dict[Peer, dict[tuple[bytes, bool], list[bytes]]] = {}
        self._dontwant_out: dict[Peer, list[bytes]] = {}
        # Deferred pulls (due time, ID), and the mean of how much later an eager copy
        # came than the first announcement of its message [GSP-R33].
        self._deferred: list[tuple[float, bytes]] = []
        self._gap = cfg.pull_delay / 2
        self._pulled: OrderedDict[bytes, float] = OrderedDict()  # pulled ID -> first notice
        self._ignored: OrderedDict[bytes, tuple[float, Peer, str, int | None]] = OrderedDict()
        # Recent IDs (those of ``_sources``): the hop count of the copy that brought
        # each, None when it carried none [GSP-R28].
        self._hops: dict[bytes, int | None] = {}
        self._events: deque[Event] = deque()
        self._handlers: dict[int, Callable[[_Peer, dict[str, codec.Value]], None]] = {
            SUBSCRIBE: self._on_subscribe,
            UNSUBSCRIBE: self._on_unsubscribe,
            GRAFT: self._on_graft,
            PRUNE: self._on_prune,
            PUBLISH: self._on_publish,
            IHAVE: self._on_ihave,
            IWANT: self._on_iwant,
            IDONTWANT: self._on_idontwant,
            SYNC: self._on_sync,
            SYNC_PAGE: self._on_sync_page,
            CHOKE: self._on_choke,
            UNCHOKE: self._on_unchoke,
        }

    # -- views -----------------------------------------------------------------------------

    def topic(self, community_key: bytes) -> bytes:
        return topic_id(self.network_id, community_key)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers)

    @property
    def topics(self) -> list[bytes]:
        return list(self._topics)

    def mesh(self, topic: bytes) -> set[Peer]:
        state = self._topics.get(topic)
        return set(state.mesh) if state is not None else set()

    def topic_peers(self, topic: bytes) -> set[Peer]:
        return set(self._topic_peers.get(topic, ()))

    def penalty(self, peer: Peer) -> float:
        p = self._peers.get(peer)
        return p.penalty if p is not None else 0.0

    def graylisted(self, peer: Peer) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.graylisted

    @property
    def pending_wants(self) -> int:
        return len(self._wants)

    # -- the sans-IO interface -------------------------------------------------------------

    def receive(self, peer: Peer, frame: bytes, now: float) -> None:
        """One gossip message from ``peer``. Bad input is counted and penalised, never
        raised."""
        self._now = now
        p = self._peers.get(peer)
        if p is None:
            self.stats["dropped_unknown_peer"] += 1
            return
        if p.graylisted:  # [GSP-R52]
            self.stats["rejected_GOSSIP_GRAYLISTED"] += 1
            return
        p.heard = now
        size = len(frame)
        self.stats["rx_frames"] += 1
        self.stats["rx_bytes"] += size
        try:
            kind, fields = decode_message(frame)
            name = KIND_NAMES.get(kind)
            if fields is None or name is None:
                self.stats["ignored_unknown_type"] += 1  # odd, unknown [MSG-R3]
                return
            self.stats[_RX_FRAMES[kind]] += 1
            self.stats[_RX_BYTES[kind]] += size
            self._handlers[kind](p, fields)
        except StarlingError as exc:
            self._fault(p, exc)

    def frames_to_send(self, now: float) -> list[tuple[Peer, bytes]]:
        self._now = now
        out: list[tuple[Peer, bytes]] = []
        if self._dontwant_out:  # first: they are worth most when they arrive early
            for handle, ids in self._dontwant_out.items():
                for chunk in _chunks(ids, MAX_IDS):
                    frame = codec.encode({0: IDONTWANT, 1: chunk})
                    out.append((handle, self._count(IDONTWANT, frame)))
            self._dontwant_out = {}
        out.extend(self._outbox)
        self._outbox = []
        if self._announce:
            for handle, by_topic in self._announce.items():
                for (topic, unpushed), ids in by_topic.items():
                    for chunk in _chunks(ids, MAX_IDS):
                        message: dict[int, codec.Value] = {0: IHAVE, 1: topic, 2: chunk}
                        if unpushed:
                            message[3] = True
                        frame = codec.encode(message)
                        out.append((handle, self._count(IHAVE, frame)))
            self._announce = {}
        return out

    def get_timer(self) -> float | None:
        if self._deferred:
            return min(self._next_heartbeat, self._deferred[0][0])
        return self._next_heartbeat

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._deferred and self._deferred[0][0] <= now:
            self._pull_deferred()
        if now < self._next_heartbeat:
            return
        self._heartbeat()
        self._next_heartbeat += self.config.heartbeat
        if self._next_heartbeat <= now:  # the caller was late: no burst of heartbeats
            self._next_heartbeat = now + self.config.heartbeat

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- application API -------------------------------------------------------------------

    def add_peer(
        self, peer: Peer, now: float, outbound: bool = False, peer_id: bytes | None = None
    ) -> None:
        """A gossip stream with ``peer`` is open: tell it our topics [GSP-R44].

        ``peer_id``: the raw peer ID the session authenticated, if known; a message
        that comes straight from its author is then relayed more widely [GSP-R23]."""
        self._now = now
        if peer in self._peers:
            return
        p = _Peer(peer, outbound, now, self.config.publish_burst)
        p.peer_id = peer_id
        remembered = self._penalty_memory.pop(peer, None)
        if remembered is not None:  # penalties survive a reconnection, decayed
            penalty, at = remembered
            beats = max(0.0, (now - at) / self.config.heartbeat)
            p.penalty = penalty * self.config.penalty_decay**beats
            if p.penalty > 0.01:
                self._penalised[peer] = None
                p.graylisted = p.penalty >= self.config.graylist_threshold
            else:
                p.penalty = 0.0
        self._peers[peer] = p
        if p.graylisted:
            reason = "graylisted when it last left"
            self._events.append(
                PeerMisbehaved(peer, ErrorCode.GOSSIP_GRAYLISTED, reason, p.penalty, True)
            )
            return
        for chunk in _chunks(list(self._topics), MAX_TOPICS):
            self._send(p, SUBSCRIBE, codec.encode({0: SUBSCRIBE, 1: chunk}))

    def remove_peer(self, peer: Peer, now: float) -> None:
        """The stream or session with ``peer`` is gone."""
        self._now = now
        p = self._peers.pop(peer, None)
        if p is None:
            return
        for topic in p.topics:
            members = self._topic_peers.get(topic)
            if members is not None:
                members.pop(peer, None)
                if not members:
                    del self._topic_peers[topic]
        for state in self._topics.values():
            state.mesh.pop(peer, None)
        for want in self._wants.values():
            if peer in want.announcers:
                want.announcers.remove(peer)
            if want.asked == peer:
                want.asked = None
        for key in [k for k in self._syncs if k[0] == peer]:
            del self._syncs[key]
        self._penalised.pop(peer, None)
        self._dontwant_peers.pop(peer, None)
        self._announce.pop(peer, None)
        self._dontwant_out.pop(peer, None)
        if any(handle == peer for handle, _ in self._outbox):
            self._outbox = [(handle, f) for handle, f in self._outbox if handle != peer]
        if p.penalty > 0.01:
            self._penalty_memory[peer] = (p.penalty, now)
            while len(self._penalty_memory) > 4096:
                self._penalty_memory.popitem(last=False)

    def set_peer_suspect(self, peer: Peer, suspect: bool, now: float) -> None:
        """The session with ``peer`` says whether what we send it goes unacknowledged
        (02-secure-session, 3.5): a suspect peer leaves every mesh at once, its
        replacements are grafted at once, and it gets nothing but answers until the
        session says otherwise or ends [GSP-R47]."""
        self._now = now
        p = self._peers.get(peer)
        if p is None or p.suspect == suspect:
            return
        p.suspect = suspect
        if not suspect:
            self.stats["unsuspected"] += 1
            return
        self.stats["suspected"] += 1
        cfg = self.config
        for topic, state in self._topics.items():
            if state.repair_peer == peer and (peer, topic) in self._syncs:
                # The catch-up for a dark link went to a peer that is gone too: again.
                del self._syncs[(peer, topic)]
                state.repair_peer = None
                state.repaired = -math.inf
                self._pend_repair(state, state.repair_from, state.repair_after)
            if peer in state.mesh:
                self._prune(topic, state, peer, suspect=True)
                self._maintain(topic, state)
                since = max(p.heard - cfg.repair_margin, now - cfg.sync_window)
                running = state.repair_peer is not None and now - state.repaired < cfg.heartbeat
                if not (running and state.repair_from <= since):
                    self._pend_repair(state, since, p.heard)
            self._repair(topic, state)

    @staticmethod
    def _pend_repair(state: _Topic, since: float, after: float) -> None:
        if state.repair_since is None:
            state.repair_since, state.repair_after = since, after
        else:
            state.repair_since = min(state.repair_since, since)
            state.repair_after = min(state.repair_after, after)

    def _repair(self, topic: bytes, state: _Topic) -> None:
        """Mesh links went dark: what they should have brought since is missing. Catch
        up for that time with a topic peer heard from since the first of them was last
        heard (so alive after it), at most once a heartbeat per topic; with no such
        peer yet, the heartbeat tries again [GSP-R47]."""
        now, cfg = self._now, self.config
        since = state.repair_since
        if since is None or now - state.repaired < cfg.heartbeat:
            return
        peers = self._peers
        alive = [h for h in self._syncable(topic) if peers[h].heard > state.repair_after]
        if not alive:
            return
        handle = self._shuffled(alive)[0]
        state.repair_since = None
        state.repair_peer, state.repair_from, state.repaired = handle, since, now
        self.stats["repairs"] += 1
        self.catch_up(handle, topic, int((since + self.epoch_offset) * 1000), now)

    def set_peer_hint(self, peer: Peer, hint: bytes | None) -> None:
        """Opaque bytes others may dial ``peer`` by, given away in PRUNE [GSP-R43]."""
        p = self._peers.get(peer)
        if p is not None:
            p.hint = None if hint is None else bytes(hint[:MAX_HINT])

    def subscribe(self, topic: bytes, now: float) -> None:
        """Join ``topic``: announce it and graft up to D of its peers [GSP-R44]."""
        self._now = now
        topic = _topic_arg(topic)
        if topic in self._topics:
            return
        self._topics[topic] = state = _Topic()
        frame = codec.encode({0: SUBSCRIBE, 1: [topic]})
        for p in self._peers.values():
            self._send(p, SUBSCRIBE, frame)
        candidates = self._graft_candidates(topic, state)
        for handle in candidates[: self.config.d]:
            self._graft(topic, state, handle)

    def unsubscribe(self, topic: bytes, now: float) -> None:
        """Leave ``topic``: PRUNE the mesh, UNSUBSCRIBE everyone, forget its messages."""
        self._now = now
        state = self._topics.pop(topic, None)
        if state is None:
            return
        backoff = self.config.unsubscribe_backoff
        for handle in state.mesh:
            p = self._peers[handle]
            self._backoff_ours[(topic, handle)] = now + backoff
            self._send(p, PRUNE, codec.encode({0: PRUNE, 1: topic, 2: backoff}))
        frame = codec.encode({0: UNSUBSCRIBE, 1: [topic]})
        for p in self._peers.values():
            self._send(p, UNSUBSCRIBE, frame)
        for handle, want in list(self._wants.items()):
            if want.topic == topic:
                del self._wants[handle]
        for key in [k for k in self._syncs if k[1] == topic]:
            del self._syncs[key]
        for _, mid in state.recent:
            self._sources.pop(mid, None)
            self._hops.pop(mid, None)
        self.store.drop_topic(topic)

    def publish(self, topic: bytes, data: bytes, now: float, time_ms: int | None = None) -> bytes:
        """Sign, keep and push an own message; returns its ID [GSP-R12] [GSP-R23].

        ``time_ms`` defaults to the wall clock; times of one node's messages in a
        topic strictly increase, so two messages never share an ID by accident.
        """
        self._now = now
        topic = _topic_arg(topic)
        state = self._topics.get(topic)
        when = self._wall_ms() if time_ms is None else time_ms
        if state is not None:
            when = max(when, state.last_time + 1)
            state.last_time = when
        message = sign_message(self.identity, topic, when, data)
        self.seen.add(message.id, _ACCEPTED, now)
        self.store.add(message, now)
        self.stats["published"] += 1
        if self.config.flood_publish:  # every topic peer: one hop fewer for most members
            targets = list(self._topic_peers.get(topic, ()))
        elif state is not None and state.mesh:
            targets = list(state.mesh)
        else:  # no mesh (yet): up to D peers of the topic
            targets = self._shuffled(self._topic_peers.get(topic, ()))[: self.config.d]
        frame = _with_hops(message.frame, 1)  # the first link [GSP-R28]
        for handle in targets:
            p = self._peers[handle]
            if not p.graylisted and not p.suspect:
                self._send(p, PUBLISH, frame)
        if state is not None:
            state.recent.append((now, message.id))
            self._hops[message.id] = 0
        return message.id

    def catch_up(self, peer: Peer, topic: bytes, since_ms: int, now: float) -> bool:
        """Ask ``peer`` for the IDs it holds for ``topic`` dated ``since_ms`` or later,
        and pull what we lack [GSP-R60]. False if the peer is unknown or we do not
        subscribe to the topic."""
        self._now = now
        p = self._peers.get(peer)
        if p is None or p.graylisted or topic not in self._topics:
            return False
        sync = self._syncs[(peer, topic)] = _Sync(now, (max(0, since_ms), None))
        self._ask(p, topic, sync)
        return True

    def _ask(self, p: _Peer, topic: bytes, sync: _Sync) -> None:
        """Send the sync's pending SYNC if the budget toward ``p`` allows, else leave it
        for a later heartbeat [GSP-R51]."""
        if sync.pending is None or self._tick(p).syncs_out >= self.config.max_syncs_out:
            return
        since, after = sync.pending
        sync.pending = None
        p.syncs_out += 1
        message: dict[int, codec.Value] = {0: SYNC, 1: topic, 2: since}
        if after is not None:
            message[4] = after
        self._send(p, SYNC, codec.encode(message))

    # -- sending ---------------------------------------------------------------------------

    def _count(self, kind: int, frame: bytes) -> bytes:
        stats = self.stats
        stats["tx_frames"] += 1
        stats["tx_bytes"] += len(frame)
        stats[_TX_FRAMES[kind]] += 1
        stats[_TX_BYTES[kind]] += len(frame)
        return frame

    def _send(self, p: _Peer, kind: int, frame: bytes) -> None:
        self._outbox.append((p.handle, self._count(kind, frame)))

    def _wall_ms(self) -> int:
        return int((self._now + self.epoch_offset) * 1000)

    def _tick(self, p: _Peer) -> _Peer:
        """Reset the peer's per-heartbeat counters if a heartbeat passed since."""
        if p.epoch != self._epoch:
            p.epoch = self._epoch
            p.ihave_ids = p.ihave_msgs = p.iwant_ids = p.iwant_out = 0
            p.syncs = p.syncs_out = p.chokes = 0
        return p

    def _shuffled(self, items: Iterable[Peer]) -> list[Peer]:
        """The items in a random order (Fisher-Yates on the injected randomness)."""
        out = list(items)
        n = len(out)
        if n > 1:
            draw = self._rand(4 * n)
            for i in range(n - 1, 0, -1):
                j = int.from_bytes(draw[4 * i : 4 * i + 4], "big") % (i + 1)
                out[i], out[j] = out[j], out[i]
        return out

    # -- faults and penalties --------------------------------------------------------------

    @staticmethod
    def _usable(p: _Peer) -> bool:
        """A peer to announce to, ask, sync with or graft: neither graylisted nor suspect."""
        return not p.graylisted and not p.suspect

    def _fault(self, p: _Peer, exc: StarlingError) -> None:
        self.stats[f"rejected_{exc.code.name}"] += 1
        amount = self.config.penalty_for(exc.code)
        if amount > 0:
            self._penalise(p, exc.code, exc.reason, amount)

    def _penalise(self, p: _Peer, code: ErrorCode, reason: str, amount: float) -> None:
        """Add points; at the threshold the peer is graylisted: its input is dropped,
        it leaves every mesh, and the node is told to close the session [GSP-R52]."""
        p.penalty += amount
        self._penalised[p.handle] = None
        if not p.graylisted and p.penalty >= self.config.graylist_threshold:
            p.graylisted = True
            self.stats["graylisted"] += 1
            for state in self._topics.values():
                state.mesh.pop(p.handle, None)
        self._events.append(PeerMisbehaved(p.handle, code, reason, p.penalty, p.graylisted))

    def _limit(self, p: _Peer, code: ErrorCode, reason: str) -> None:
        self._fault(p, GossipError(code, reason, "GSP-R50"))

    # -- handlers --------------------------------------------------------------------------

    def _on_subscribe(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        for topic in cast(list[bytes], fields["topics"]):
            if topic in p.topics:
                continue
            if len(p.topics) >= self.config.max_topics_per_peer:
                self._limit(p, ErrorCode.GOSSIP_TOPIC_LIMIT, "too many topics")
                return
            p.topics[topic] = None
            self._topic_peers.setdefault(topic, {})[p.handle] = None

    def _on_unsubscribe(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        for topic in cast(list[bytes], fields["topics"]):
            self._forget_subscription(p, topic)

    def _forget_subscription(self, p: _Peer, topic: bytes) -> None:
        p.topics.pop(topic, None)
        members = self._topic_peers.get(topic)
        if members is not None:
            members.pop(p.handle, None)
            if not members:
                del self._topic_peers[topic]
        state = self._topics.get(topic)
        if state is not None:
            state.mesh.pop(p.handle, None)

    def _on_graft(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        topic = cast(bytes, fields["topic"])
        state = self._topics.get(topic)
        if state is None:  # not ours: refuse without blame [GSP-R41]
            self._send(p, PRUNE, codec.encode({0: PRUNE, 1: topic, 2: 0}))
            return
        until = self._backoff_ours.get((topic, p.handle))
        if until is not None and until > self._now:
            # Grafting back before the backoff we gave it ends [GSP-R42]: refuse, and
            # restart the backoff.
            backoff = self.config.prune_backoff
            self._backoff_ours[(topic, p.handle)] = self._now + backoff
            self._send(p, PRUNE, codec.encode({0: PRUNE, 1: topic, 2: backoff}))
            self._fault(
                p,
                GossipError(ErrorCode.GOSSIP_GRAFT_BACKOFF, "GRAFT during backoff", "GSP-R42"),
            )
            return
        if topic not in p.topics:  # a GRAFT implies the subscription
            if len(p.topics) >= self.config.max_topics_per_peer:
                self._limit(p, ErrorCode.GOSSIP_TOPIC_LIMIT, "too many topics")
                return
            p.topics[topic] = None
            self._topic_peers.setdefault(topic, {})[p.handle] = None
        self._backoff_theirs.pop((topic, p.handle), None)
        if p.handle not in state.mesh:
            state.mesh[p.handle] = None
            self._link_up(state, p.handle)

    def _on_prune(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        topic = cast(bytes, fields["topic"])
        backoff = cast(int, fields["backoff"])
        state = self._topics.get(topic)
        if state is not None:
            state.mesh.pop(p.handle, None)
        if backoff:
            self._backoff_theirs[(topic, p.handle)] = self._now + backoff  # [GSP-R42]
        px = cast(list[bytes] | None, fields.get("px"))
        if px and state is not None:
            self._events.append(PeerExchange(p.handle, topic, tuple(px)))

    def _on_publish(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        """The order of checks of spec/05-gossip.md, section 6.1 [GSP-R20]."""
        now = self._now
        # Token bucket: a flood costs a counter, not a hash [GSP-R50].
        cfg = self.config
        p.tokens = min(cfg.publish_burst, p.tokens + (now - p.refilled) * cfg.publish_rate)
        p.refilled = now
        if p.tokens < 1.0:
            self._limit(p, ErrorCode.GOSSIP_RATE_LIMITED, "PUBLISH over the peer's rate")
            return
        p.tokens -= 1.0
        raw = cast(bytes, fields["message"])
        hops = cast(int | None, fields.get("hops"))
        stats = self.stats
        stats["publish_rx"] += 1
        mid = message_id(raw)
        verdict = self.seen.get(mid)
        if verdict is None and self.store.has(mid):
            verdict = _ACCEPTED
        want = self._wants.pop(mid, None)
        if verdict is not None:  # a duplicate [GSP-R22]
            stats["publish_rx_duplicate"] += 1
            if verdict > _IGNORED:  # a copy of what we refused counts against its sender too
                again = GossipError(ErrorCode(verdict), "a refused message again", "GSP-R21")
                self._fault(p, again)
            else:
                self._add_source(mid, p.handle)
                noticed = self._pulled.pop(mid, None)
                if noticed is not None:
                    self._learn_gap(now - noticed)
            return
        cached = _VERIFIED.get(mid)  # checked before, maybe by another core
        try:
            if isinstance(cached, Message):
                message = cached
                if not self._wanted_topic(p, message.topic, mid):
                    return
                self._dontwant(message.topic, mid, len(raw), p)
            elif cached is not None:
                refusal, topic = cached
                if topic is not None and not self._wanted_topic(p, topic, mid):
                    return
                raise refusal
            else:
                try:
                    parsed = _structure(raw)
                except GossipError as exc:
                    _remember(mid, (exc, None))
                    raise
                if not self._wanted_topic(p, parsed.topic, mid):
                    return
                self._dontwant(parsed.topic, mid, len(raw), p)  # before verifying [GSP-R34]
                try:
                    message = _verify(raw, mid, parsed)
                except GossipError as exc:
                    _remember(mid, (exc, parsed.topic))
                    raise
                _remember(mid, message)
        except GossipError as exc:
            self.seen.add(mid, int(exc.code), now)
            self._fault(p, exc)
            return
        skew = cfg.max_clock_skew
        if skew is not None and message.time_ms > (now + self.epoch_offset + skew) * 1000:
            self.seen.add(mid, _IGNORED, now)  # a clock too far ahead: no blame [GSP-R25]
            stats["rejected_GOSSIP_MESSAGE_FUTURE"] += 1
            return
        if self.validator is not None:
            decision = self.validator(message, p.handle)
            if decision is Verdict.REJECT:
                self.seen.add(mid, int(ErrorCode.GOSSIP_MESSAGE_REJECTED), now)
                self._fault(
                    p,
                    GossipError(ErrorCode.GOSSIP_MESSAGE_REJECTED, "validator rejected", "GSP-R21"),
                )
                return
            if decision is Verdict.IGNORE:
                self.seen.add(mid, _IGNORED, now)
                stats["ignored_by_validator"] += 1
                # The application may accept it later, once it can judge it [GSP-R27].
                self._ignored[mid] = (now, p.handle, self._via(p, want), hops)
                while len(self._ignored) > _MAX_IGNORED:
                    self._ignored.popitem(last=False)
                return
        self._accept(message, p, self._via(p, want), want, hops)

    def _wanted_topic(self, p: _Peer, topic: bytes, mid: bytes) -> bool:
        if topic in self._topics:
            return True
        # Not (or no longer) ours: a race with UNSUBSCRIBE, not a fault [GSP-R26].
        self.seen.add(mid, _IGNORED, self._now)
        self.stats["rejected_GOSSIP_NOT_SUBSCRIBED"] += 1
        return False

    def _dontwant(self, topic: bytes, mid: bytes, size: int, source: _Peer) -> None:
        """Tell the mesh we hold a large message before spending time on it [GSP-R34]."""
        if size <= self.config.large_message or not self.config.idontwant:
            return
        state = self._topics.get(topic)
        if state is None:
            return
        for handle in state.mesh:
            if handle != source.handle:
                self._dontwant_out.setdefault(handle, []).append(mid)

    def _add_source(self, mid: bytes, handle: Peer) -> None:
        sources = self._sources.get(mid)
        if sources is not None and len(sources) < _MAX_SOURCES and handle not in sources:
            sources.append(handle)

    @staticmethod
    def _via(p: _Peer, want: _Want | None) -> str:
        """How a message came: pushed, pulled (an IWANT of ours), or by a catch-up."""
        if want is not None and want.asked == p.handle:  # the answer to our IWANT
            return "sync" if want.sync else "pull"
        return "push"

    def accept_late(self, message: Message, now: float) -> bool:
        """The application accepts a message its validator ignored because it could not
        judge it then (a dependency was missing) [GSP-R27]: keep it, deliver it and
        forward it as if it had been accepted when it came, unless it is old news.
        False when the message was not ignored by the validator lately, or is held."""
        self._now = now
        mid = message.id
        late = self._ignored.pop(mid, None)
        if late is None or self.store.has(mid) or self.seen.get(mid) not in (None, _IGNORED):
            return False
        received, handle, via, hops = late
        if now - received > self.config.seen_ttl or message.topic not in self._topics:
            return False
        self.stats["accepted_late"] += 1
        self._accept(message, self._peers.get(handle), via, None, hops)
        return True

    def _accept(
        self,
        message: Message,
        p: _Peer | None,
        via: str,
        want: _Want | None,
        hops: int | None = None,
    ) -> None:
        """Keep, deliver once, forward [GSP-R22] [GSP-R23] [GSP-R24]. ``p`` is the peer it
        came from (None: gone since, for a message accepted late); ``hops`` the hop
        count its copy carried [GSP-R28]."""
        now = self._now
        mid = message.id
        self.seen.add(mid, _ACCEPTED, now)
        self.store.add(message, now)
        self.stats["delivered"] += 1
        source = None if p is None else p.handle
        self._events.append(Delivered(message.topic, mid, message, source, via))
        state = self._topics.get(message.topic)
        if state is None:  # the validator unsubscribed
            return
        age = (now + self.epoch_offset) * 1000 - message.time_ms
        if via == "sync" or age > self.config.forward_max_age * 1000:
            return  # old news: delivered and kept, not pushed again [GSP-R24]
        if p is not None:
            self._credit(state, message, p, want, via)
        self._sources[mid] = [] if source is None else [source]
        self._hops[mid] = hops
        state.recent.append((now, mid))
        cfg = self.config
        large = len(message.raw) > cfg.large_message
        degree = cfg.eager_degree_large if large else cfg.eager_degree
        # Late in the wave, a message is pushed to nobody (the peers it would have gone to
        # get its ID at once, and its eager links pull it at once); later still, only
        # heartbeats announce it: the long chains of fast links end here [GSP-R29].
        quiet = silent = False
        if hops is not None:
            quiet = cfg.quiet_hops is not None and hops >= cfg.quiet_hops
            silent = cfg.silent_hops is not None and hops >= cfg.silent_hops
        eager: list[Peer] = []
        lazy: list[Peer] = []
        # Straight from its author: the second hop of the wave, relayed like the first
        # (flood publishing), to every mesh peer or every topic peer [GSP-R23].
        relay = None
        if cfg.author_relay and not large and p is not None and p.peer_id is not None:
            relay = cfg.author_relay if p.peer_id == message.author_id else None
        if relay == "all":
            wide: Iterable[Peer] = self._topic_peers.get(message.topic, ())
        else:
            wide = state.mesh
        for handle in wide:
            q = self._peers[handle]
            if handle == source or q.graylisted or q.suspect or mid in q.dontwant:
                continue
            # A mesh peer that choked us gets the ID instead of the body [GSP-R45].
            if quiet or (handle in state.choked_by and relay is None):
                lazy.append(handle)
            else:
                eager.append(handle)
        if degree is not None and len(eager) > degree:
            eager = self._shuffled(eager)
            lazy.extend(eager[degree:])  # the rest of the mesh hears of it at once
            eager = eager[:degree]
        if cfg.lazy_fanout > 0 and relay != "all":  # and a few peers outside the mesh [GSP-R23]
            others = [
                h
                for h in self._topic_peers.get(message.topic, ())
                if h not in state.mesh and h != source and self._usable(self._peers[h])
            ]
            lazy.extend(self._sample(others, cfg.lazy_fanout))
        # A message too large to push to anyone: say so, and the receiver pulls it without
        # waiting for an eager copy [GSP-R33].
        key = (message.topic, large and degree == 0)
        if silent:
            lazy = []
        for handle in lazy:
            self._announce.setdefault(handle, {}).setdefault(key, []).append(mid)
        self.stats["announced_ids"] += len(lazy)
        if eager:
            frame = self._passed_on(message)
            for handle in eager:
                self._send(self._peers[handle], PUBLISH, frame)
        self.stats["forwarded"] += len(eager)

    def _passed_on(self, message: Message) -> bytes:
        """The PUBLISH that passes ``message`` on (forwarded or served): one hop more than
        the copy this node took, or no hop count if that copy had none [GSP-R28]."""
        hops = self._hops.get(message.id)
        return message.frame if hops is None else _with_hops(message.frame, hops + 1)

    def _credit(
        self, state: _Topic, message: Message, p: _Peer, want: _Want | None, via: str
    ) -> None:
        """Score the mesh peer that told us of the message first, and learn how much
        later eager copies come than announcements [GSP-R46] [GSP-R33]."""
        first = p.handle
        if want is not None and want.first is not None and not want.sync:
            first = want.first
            if via == "push":
                self._learn_gap(self._now - want.created)
            else:  # pulled: an eager copy may still come, and tell how late it was
                self._pulled[message.id] = want.created
                if len(self._pulled) > _MAX_PULLED:
                    self._pulled.popitem(last=False)
        if first in state.mesh:
            state.score[first] = state.score.get(first, 0.0) + 1.0

    def _learn_gap(self, gap: float) -> None:
        self._gap += 0.125 * (gap - self._gap)

    def _pull_delay(self) -> float:
        cfg = self.config
        return min(cfg.pull_delay_max, max(cfg.pull_delay_min, 2.0 * self._gap))

    def _sample(self, items: list[Peer], k: int) -> list[Peer]:
        """Up to ``k`` of the items, drawn at random without replacement."""
        n = len(items)
        if n <= k:
            return items
        out = list(items)
        draw = self._rand(4 * k)
        for i in range(k):
            j = i + int.from_bytes(draw[4 * i : 4 * i + 4], "big") % (n - i)
            out[i], out[j] = out[j], out[i]
        return out[:k]

    def _eager_link(self, topic: bytes, handle: Peer) -> bool:
        """Whether ``handle`` is a mesh peer of ``topic`` that we have not choked."""
        state = self._topics.get(topic)
        return state is not None and handle in state.mesh and handle not in state.choking

    def _on_ihave(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        topic = cast(bytes, fields["topic"])
        ids = cast(list[bytes], fields["ids"])
        self._tick(p)
        p.ihave_msgs += 1
        if p.ihave_msgs > self.config.max_ihave_messages:
            self._limit(p, ErrorCode.GOSSIP_IHAVE_LIMIT, "too many IHAVE this heartbeat")
            return
        room = self.config.max_ihave_ids - p.ihave_ids
        if len(ids) > room:
            ids = ids[: max(0, room)]
            self._limit(p, ErrorCode.GOSSIP_IHAVE_LIMIT, "too many announced IDs this heartbeat")
        p.ihave_ids += len(ids)
        if topic not in self._topics or not ids:
            return
        self._want(p, topic, ids, sync=False, unpushed=fields.get("unpushed") is True)

    def _known(self, mid: bytes) -> bool:
        return mid in self.seen or self.store.has(mid)

    def _want(
        self, p: _Peer, topic: bytes, ids: list[bytes], sync: bool, unpushed: bool = False
    ) -> int:
        """Note ``p`` as an announcer of the IDs we lack; ask it for those no one is
        asked for yet, within our budget toward it [GSP-R33] [GSP-R51]. Returns how
        many were asked for."""
        now = self._now
        cfg = self.config
        self._tick(p)
        request: list[bytes] = []
        for mid in ids:
            if self._known(mid):
                continue
            want = self._wants.get(mid)
            if want is None:
                if len(self._wants) >= cfg.max_wants:
                    self.stats["dropped_wants"] += 1
                    continue
                want = self._wants[mid] = _Want(topic, sync, now)
            elif not sync:
                want.sync = False  # announced as news too: forward it when it comes
            if want.first is None and not sync:
                want.first = p.handle
            if p.handle not in want.announcers and len(want.announcers) < _MAX_ANNOUNCERS:
                want.announcers.append(p.handle)
            if want.asked is not None:
                continue
            if not sync and not unpushed and not self._eager_link(topic, p.handle):
                # An eager copy is likely on its way: wait for it a little [GSP-R33].
                if not want.due:
                    want.due = now + self._pull_delay()
                    heapq.heappush(self._deferred, (want.due, mid))
                continue
            if p.iwant_out < cfg.max_iwant_ids_out and not p.suspect:
                want.asked = p.handle
                want.deadline = now + cfg.iwant_timeout
                p.iwant_out += 1
                request.append(mid)
        self._request(p, request)
        return len(request)

    def _request(self, p: _Peer, ids: list[bytes]) -> None:
        for chunk in _chunks(ids, MAX_IDS):
            self._send(p, IWANT, codec.encode({0: IWANT, 1: chunk}))
        self.stats["requested_ids"] += len(ids)

    def _on_iwant(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        ids = cast(list[bytes], fields["ids"])
        cfg = self.config
        self._tick(p)
        room = cfg.max_iwant_ids - p.iwant_ids
        if len(ids) > room:
            ids = ids[: max(0, room)]
            self._limit(p, ErrorCode.GOSSIP_IWANT_LIMIT, "too many requested IDs this heartbeat")
        p.iwant_ids += len(ids)
        if self._now - p.served_reset > cfg.retransmission_window:
            p.served.clear()
            p.served_reset = self._now
        for mid in ids:
            message = self.store.get(mid)
            if message is None:
                continue  # not (or no longer) held: nothing is sent [GSP-R32]
            count = p.served.get(mid, 0)
            if count >= cfg.max_retransmissions:
                self.stats["rejected_GOSSIP_IWANT_LIMIT"] += 1
                continue
            p.served[mid] = count + 1
            self._send(p, PUBLISH, self._passed_on(message))
            self.stats["served"] += 1

    def _on_idontwant(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        ids = cast(list[bytes], fields["ids"])
        until = self._now + self.config.idontwant_ttl
        room = self.config.max_idontwant_ids - len(p.dontwant)
        if len(ids) > room:
            ids = ids[: max(0, room)]
            self._limit(p, ErrorCode.GOSSIP_IDONTWANT_LIMIT, "too many IDONTWANT entries")
        for mid in ids:
            p.dontwant[mid] = until
        if p.dontwant:
            self._dontwant_peers[p.handle] = None

    def _on_sync(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        self._tick(p)
        p.syncs += 1
        if p.syncs > self.config.max_syncs:
            self._limit(p, ErrorCode.GOSSIP_SYNC_LIMIT, "too many SYNC this heartbeat")
            return
        topic = cast(bytes, fields["topic"])
        since = cast(int, fields["since"])
        after = cast(bytes | None, fields.get("after"))
        reply: dict[int, codec.Value] = {0: SYNC_PAGE, 1: topic}
        if topic in self._topics:
            limit = max(1, min(self.config.sync_page, MAX_IDS))
            ids, cursor = self.store.ids_since(topic, since, after, limit)
            reply[2] = list(ids)
            if cursor is not None:
                reply[4] = [cursor[0], cursor[1]]
        else:
            reply[2] = []  # not ours: nothing held [GSP-R60]
        self._send(p, SYNC_PAGE, codec.encode(reply))

    def _on_sync_page(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        topic = cast(bytes, fields["topic"])
        key = (p.handle, topic)
        sync = self._syncs.get(key)
        if sync is None:
            unsolicited = GossipError(
                ErrorCode.GOSSIP_UNSOLICITED, "SYNC_PAGE not asked for", "GSP-R61"
            )
            self._fault(p, unsolicited)
            return
        ids = cast(list[bytes], fields["ids"])
        sync.started = self._now  # the timeout counts from the last page
        sync.listed += len(ids)
        if ids and topic in self._topics:
            sync.requested += self._want(p, topic, ids, sync=True)
        cursor = cast(list[codec.Value] | None, fields.get("next"))
        if cursor is not None and sync.pages < self.config.max_sync_pages:
            sync.pages += 1
            since, after = cursor
            assert isinstance(since, int) and isinstance(after, bytes)
            sync.pending = (since, after)
            self._ask(p, topic, sync)
            return
        del self._syncs[key]
        done = CatchUpDone(p.handle, topic, sync.listed, sync.requested, cursor is None)
        self._events.append(done)

    # -- the mesh --------------------------------------------------------------------------

    def _graft_candidates(
        self, topic: bytes, state: _Topic, outbound_only: bool = False
    ) -> list[Peer]:
        """Topic peers we may graft, in a random order, those heard from lately first
        [GSP-R40] [GSP-R42] [GSP-R47]: after a crash, most silent ones are dead."""
        now = self._now
        out = []
        for handle in self._topic_peers.get(topic, ()):
            if handle in state.mesh:
                continue
            p = self._peers[handle]
            if outbound_only and not p.outbound:
                continue
            if not self._usable(p) or p.penalty >= self.config.graylist_threshold / 2:
                continue
            key = (topic, handle)
            if self._backoff_ours.get(key, 0.0) > now or self._backoff_theirs.get(key, 0.0) > now:
                continue
            out.append(handle)
        alive = self.config.sync_alive
        peers = self._peers
        return sorted(self._shuffled(out), key=lambda h: now - peers[h].heard > alive)

    def _graft(self, topic: bytes, state: _Topic, handle: Peer) -> None:
        state.mesh[handle] = None
        self._link_up(state, handle)
        self._send(self._peers[handle], GRAFT, codec.encode({0: GRAFT, 1: topic}))

    def _prune(self, topic: bytes, state: _Topic, handle: Peer, suspect: bool = False) -> None:
        """Prune with a backoff and peer hints; a suspect peer with neither, so that
        either side may graft again as soon as the session answers [GSP-R47]."""
        state.mesh.pop(handle, None)
        backoff = 0 if suspect else self.config.prune_backoff
        if backoff:
            self._backoff_ours[(topic, handle)] = self._now + backoff
        message: dict[int, codec.Value] = {0: PRUNE, 1: topic, 2: backoff}
        px = [] if suspect else self._px(topic, handle)
        if px:
            message[3] = list(px)
        self._send(self._peers[handle], PRUNE, codec.encode(message))

    def _px(self, topic: bytes, pruned: Peer) -> list[bytes]:
        """Hints of other peers of the topic, the mesh first [GSP-R43]."""
        if self.config.px_count <= 0:
            return []
        state = self._topics[topic]
        others = [h for h in self._topic_peers.get(topic, ()) if h != pruned]
        ordered = sorted(self._shuffled(others), key=lambda h: h not in state.mesh)
        hints = []
        for handle in ordered:
            q = self._peers[handle]
            hint = q.hint
            if hint is not None and not q.suspect:
                hints.append(hint)
                if len(hints) >= min(self.config.px_count, MAX_PX):
                    break
        return hints

    def _maintain(self, topic: bytes, state: _Topic) -> None:
        """Keep the mesh between D_low and D_high with at least D_out outbound [GSP-R40]."""
        cfg = self.config
        mesh = state.mesh
        if len(mesh) < cfg.d_low:
            for handle in self._graft_candidates(topic, state)[: cfg.d - len(mesh)]:
                self._graft(topic, state, handle)
        elif len(mesh) > cfg.d_high:
            ordered = self._shuffled(mesh)
            keep = ordered[: cfg.d]
            outbound = sum(1 for h in keep if self._peers[h].outbound)
            if outbound < cfg.d_out:
                extra = [h for h in ordered[cfg.d :] if self._peers[h].outbound]
                swap = extra[: cfg.d_out - outbound]
                inbound = [h for h in reversed(keep) if not self._peers[h].outbound]
                for old, new in zip(inbound, swap, strict=False):
                    keep[keep.index(old)] = new
            kept = set(keep)
            for handle in ordered:
                if handle not in kept:
                    self._prune(topic, state, handle)
        if len(mesh) >= cfg.d_low:
            outbound = sum(1 for h in mesh if self._peers[h].outbound)
            if outbound < cfg.d_out:
                candidates = self._graft_candidates(topic, state, outbound_only=True)
                for handle in candidates[: cfg.d_out - outbound]:
                    self._graft(topic, state, handle)

    # -- eager and lazy links --------------------------------------------------------------

    def _link_up(self, state: _Topic, handle: Peer) -> None:
        """A new mesh link is eager both ways [GSP-R45]."""
        state.choking.pop(handle, None)
        state.choked_by.pop(handle, None)
        state.eager_since[handle] = self._now
        state.score.setdefault(handle, 0.0)

    def _set_choke(self, topic: bytes, state: _Topic, handle: Peer, choke: bool) -> None:
        if choke:
            state.choking[handle] = None
            self.stats["choked"] += 1
            self._send(self._peers[handle], CHOKE, codec.encode({0: CHOKE, 1: topic}))
        else:
            state.choking.pop(handle, None)
            state.eager_since[handle] = self._now
            self.stats["unchoked"] += 1
            self._send(self._peers[handle], UNCHOKE, codec.encode({0: UNCHOKE, 1: topic}))

    def _rebalance(self, topic: bytes, state: _Topic) -> None:
        """Keep between eager_min and eager_max mesh peers eager, the ones that tell us
        of messages first [GSP-R46]."""
        cfg = self.config
        mesh = state.mesh
        for table in (state.choking, state.choked_by, state.eager_since, state.score):
            for gone in [h for h in table if h not in mesh]:
                del table[gone]
        score = state.score
        for handle in score:
            score[handle] *= cfg.score_decay
        if cfg.eager_max is None:
            return
        now = self._now

        def points(handle: Peer) -> float:
            return score.get(handle, 0.0)

        def choosable(eager: list[Peer]) -> list[Peer]:
            since = state.eager_since
            return [h for h in eager if now - since.get(h, now) >= cfg.choke_hold]

        eager = [h for h in mesh if h not in state.choking]
        lazy = [h for h in mesh if h in state.choking]
        candidates = choosable(eager)
        if lazy and candidates:  # one swap per heartbeat, with hysteresis
            best = max(lazy, key=points)
            worst = min(candidates, key=points)
            if points(best) > cfg.swap_factor * points(worst) + 1.0:
                self._set_choke(topic, state, best, False)
                self._set_choke(topic, state, worst, True)
                eager[eager.index(worst)] = best
                lazy[lazy.index(best)] = worst
        while len(eager) > cfg.eager_max:
            candidates = choosable(eager)
            if not candidates:
                break
            worst = min(self._shuffled(candidates), key=points)
            self._set_choke(topic, state, worst, True)
            eager.remove(worst)
            lazy.append(worst)
        while len(eager) < cfg.eager_min and lazy:
            best = max(self._shuffled(lazy), key=points)
            self._set_choke(topic, state, best, False)
            lazy.remove(best)
            eager.append(best)

    def _pull_deferred(self) -> None:
        """Deferred pulls that are due: the eager copy did not come, so ask the first
        live announcer, and make it an eager link if it is a choked mesh peer [GSP-R33]
        [GSP-R46]."""
        now, cfg = self._now, self.config
        requests: dict[Peer, list[bytes]] = {}
        while self._deferred and self._deferred[0][0] <= now:
            due, mid = heapq.heappop(self._deferred)
            want = self._wants.get(mid)
            if want is None or want.due != due or want.asked is not None:
                continue
            if self._known(mid):
                del self._wants[mid]
                continue
            for handle in want.announcers:
                p = self._peers.get(handle)
                if (
                    p is None
                    or not self._usable(p)
                    or self._tick(p).iwant_out >= cfg.max_iwant_ids_out
                ):
                    continue
                p.iwant_out += 1
                want.asked = handle
                want.deadline = now + cfg.iwant_timeout
                requests.setdefault(handle, []).append(mid)
                state = self._topics.get(want.topic) if want.topic is not None else None
                if state is not None and handle in state.choking and handle in state.mesh:
                    assert want.topic is not None
                    self._set_choke(want.topic, state, handle, False)
                break
        for handle, ids in requests.items():
            self._request(self._peers[handle], ids)

    def _on_choke(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        self._choke_message(p, fields, True)

    def _on_unchoke(self, p: _Peer, fields: dict[str, codec.Value]) -> None:
        self._choke_message(p, fields, False)

    def _choke_message(self, p: _Peer, fields: dict[str, codec.Value], choke: bool) -> None:
        """CHOKE: send me IDs, not bodies, of this topic; UNCHOKE: bodies again [GSP-R45]."""
        self._tick(p).chokes += 1
        if p.chokes > self.config.max_chokes:
            self._limit(p, ErrorCode.GOSSIP_CHOKE_LIMIT, "too many CHOKE or UNCHOKE")
            return
        state = self._topics.get(cast(bytes, fields["topic"]))
        if state is None or p.handle not in state.mesh:
            return  # not a mesh link (a race with PRUNE): nothing to change
        if choke:
            state.choked_by[p.handle] = None
        else:
            state.choked_by.pop(p.handle, None)

    def _gossip(self, topic: bytes, state: _Topic) -> None:
        """IHAVE of the IDs received within the gossip window to D_lazy peers outside
        the mesh [GSP-R32]."""
        now = self._now
        recent = state.recent
        if not recent:
            return
        horizon = now - self.config.gossip_window
        ids = [mid for at, mid in recent if at > horizon]
        while recent and recent[0][0] <= horizon:
            old = recent.popleft()[1]
            self._sources.pop(old, None)
            self._hops.pop(old, None)
        if not ids:
            return
        candidates = [
            h
            for h in self._topic_peers.get(topic, ())
            if h not in state.mesh and self._usable(self._peers[h])
        ]
        if not candidates:
            return
        count = max(self.config.d_lazy, int(self.config.gossip_factor * len(candidates)))
        for handle in self._shuffled(candidates)[:count]:
            p = self._peers[handle]
            mine = [
                mid
                for mid in ids
                if mid not in p.dontwant and handle not in self._sources.get(mid, ())
            ][-self.config.max_ihave_ids // 2 :]
            for chunk in _chunks(mine, MAX_IDS):
                self._send(p, IHAVE, codec.encode({0: IHAVE, 1: topic, 2: chunk}))
            self.stats["announced_ids"] += len(mine)

    # -- the heartbeat ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = self._now
        cfg = self.config
        self._epoch += 1
        self.stats["heartbeats"] += 1
        self.seen.expire(now)
        self.store.expire(now)
        if self._dontwant_peers:
            for handle in list(self._dontwant_peers):
                p = self._peers[handle]
                p.dontwant = {m: t for m, t in p.dontwant.items() if t > now}
                if not p.dontwant:
                    self._dontwant_peers.pop(handle, None)
        if self._wants:
            self._check_wants()
        if self._penalised:
            for handle in list(self._penalised):
                p = self._peers[handle]
                p.penalty *= cfg.penalty_decay
                if p.graylisted and p.penalty < cfg.graylist_threshold / 2:
                    p.graylisted = False  # the session survived: listen again
                if p.penalty < 0.01:
                    p.penalty = 0.0
                    self._penalised.pop(handle, None)
        if self._syncs:
            for key, sync in list(self._syncs.items()):
                if now - sync.started > cfg.sync_timeout:
                    del self._syncs[key]
                    self._events.append(
                        CatchUpDone(key[0], key[1], sync.listed, sync.requested, False)
                    )
                elif sync.pending is not None:
                    self._ask(self._peers[key[0]], key[1], sync)
        for backoffs in (self._backoff_ours, self._backoff_theirs):
            if backoffs:
                for ended in [k for k, until in backoffs.items() if until <= now]:
                    del backoffs[ended]
        for topic, state in self._topics.items():
            self._maintain(topic, state)
            self._rebalance(topic, state)
            self._gossip(topic, state)
            self._repair(topic, state)
        every = cfg.sync_every
        if every and (self._epoch + self._sync_phase) % every == 0:
            self._anti_entropy()

    def _anti_entropy(self) -> None:
        """A catch-up with one live topic peer per topic [GSP-R63]: what pushes and
        IHAVEs missed (a crash cut the mesh, an IHAVE window passed) is pulled here."""
        now, cfg = self._now, self.config
        since = max(0, self._wall_ms() - int(cfg.sync_window * 1000))
        for topic in self._topics:
            peers = self._syncable(topic)
            # Peers heard from lately first: after a crash, most silent ones are dead.
            alive = [h for h in peers if now - self._peers[h].heard <= cfg.sync_alive] or peers
            if alive:
                self.stats["anti_entropy"] += 1
                self.catch_up(self._shuffled(alive)[0], topic, since, now)

    def _syncable(self, topic: bytes) -> list[Peer]:
        """Topic peers we may start a catch-up with: usable, and none running with them."""
        return [
            h
            for h in self._topic_peers.get(topic, ())
            if self._usable(self._peers[h]) and (h, topic) not in self._syncs
        ]

    def _check_wants(self) -> None:
        """Broken promises are penalised and the ID asked of the next announcer
        [GSP-R33]; wants nobody can serve are dropped."""
        now = self._now
        cfg = self.config
        requests: dict[Peer, list[bytes]] = {}
        broken: dict[Peer, int] = {}
        for mid, want in list(self._wants.items()):
            if self._known(mid):
                del self._wants[mid]
                continue
            if want.asked is not None and want.deadline <= now:
                if want.asked in self._peers:
                    broken[want.asked] = broken.get(want.asked, 0) + 1
                if want.asked in want.announcers:
                    want.announcers.remove(want.asked)
                want.asked = None
            if want.asked is None and want.due > now:
                continue  # a deferred pull, not due yet
            if want.asked is None:
                for handle in want.announcers:
                    p = self._peers.get(handle)
                    if p is None or not self._usable(p):
                        continue
                    self._tick(p)
                    if p.iwant_out < cfg.max_iwant_ids_out:
                        p.iwant_out += 1
                        want.asked = handle
                        want.deadline = now + cfg.iwant_timeout
                        requests.setdefault(handle, []).append(mid)
                        break
                if want.asked is None and (
                    not want.announcers or now - want.created > cfg.want_ttl
                ):
                    del self._wants[mid]
        for handle, count in broken.items():
            p = self._peers[handle]
            self.stats["rejected_GOSSIP_PROMISE_BROKEN"] += count
            reason = f"{count} announced messages not delivered in time"
            code = ErrorCode.GOSSIP_PROMISE_BROKEN
            self._penalise(p, code, reason, count * cfg.penalty_for(code))
        for handle, ids in requests.items():
            self._request(self._peers[handle], ids)


def _topic_arg(topic: bytes) -> bytes:
    topic = bytes(topic)
    if len(topic) != TOPIC_SIZE:
        raise ValueError(f"a topic is {TOPIC_SIZE} bytes, not {len(topic)}")
    return topic


def _chunks(items: list[bytes], size: int) -> Iterable[list[codec.Value]]:
    for i in range(0, len(items), size):
        chunk: list[codec.Value] = list(items[i : i + size])
        yield chunk


_RX_FRAMES = {kind: f"rx_frames_{name}" for kind, name in KIND_NAMES.items()}
_RX_BYTES = {kind: f"rx_bytes_{name}" for kind, name in KIND_NAMES.items()}
_TX_FRAMES = {kind: f"tx_frames_{name}" for kind, name in KIND_NAMES.items()}
_TX_BYTES = {kind: f"tx_bytes_{name}" for kind, name in KIND_NAMES.items()}
