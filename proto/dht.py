"""Kademlia DHT over control datagrams (spec/03-dht.md), sans-IO.

Theory of operation
-------------------
Node IDs are peer IDs (256 bits); distance is XOR. ``DhtNode`` is one node's
protocol state, driven like aioquic's connection: feed it datagrams with
``receive_datagram(data, addr, now)``, send what ``datagrams_to_send(now)``
returns, and call ``handle_timer(now)`` at ``get_timer()``. Randomness (transaction
IDs, token secrets, refresh targets) comes from an injected ``rng(n) -> bytes``.

Routing table. Buckets by common-prefix length with Kademlia splitting: the
last bucket holds every node sharing at least ``len(buckets) - 1`` leading
bits with us and splits when it overflows. A node enters only once it has
proven its ID [DHT-R10]: some response of its carried a signature, by the key
the ID derives from, over our transaction ID and the address it saw us at.
Each bucket holds at most two nodes per IPv4 /24 or IPv6 /48 [DHT-R11];
loopback addresses are exempt so a whole test network can live on 127.0.0.1.
A full bucket keeps a short replacement list; an entry that failed twice in a
row is stale and gives way to a proven replacement [DHT-R12]. Client-mode
nodes query but never enter tables, and do not answer queries [DHT-R13].

Lookups. Up to ``alpha`` requests in flight per path, pipelined: each
response immediately frees a slot for the next closest unqueried node.
Timeouts adapt per peer (SRTT + 4 RTTVAR, RFC 6298 style), with the node's
global estimate for strangers. At the first timeout a request is resent once
and stops holding its slot; at the second it has failed, and the peer goes
into a short-lived unresponsive cache that later lookups skip. A path ends
when the k closest nodes it knows (failed ones excluded) have all answered.
Reads that must resist eclipse use d disjoint paths [DHT-R30]: no node is
queried by two paths, and records from every path are pooled.

Records are signed envelopes (domain ``starling/dht-record/1``) of
``{kind, key, seq, ttl, value}``; a higher sequence number replaces a lower one
and a lower one is refused [DHT-R22]. Storing nodes keep records until their
TTL runs out; their owners republish at half the TTL. PUT needs a write token
that the storing node handed to the same address in a GET reply [DHT-R25].

Maintenance is deliberately frugal (one request per node every few minutes in
steady state): lookups the node makes anyway keep its table fresh, and the
maintenance tick only pings the longest-silent entry or refreshes one idle bucket.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import cast

from . import codec
from .errors import DhtError, ErrorCode, StarlingError
from .identity import PeerId, PrivateKey, PublicKey, open_envelope, seal
from .network import CONTROL_HEADER_SIZE, DatagramKind, classify, control_header

__all__ = [
    "KIND_PEER",
    "KIND_PRESENCE",
    "DhtConfig",
    "DhtNode",
    "LookupDone",
    "PutDone",
    "Record",
    "RoutingTable",
    "bucket_index",
    "distance",
    "presence_key",
    "write_token",
]

Address = tuple[str, int]
Rng = Callable[[int], bytes]

ID_SIZE = 32
TXID_SIZE = 8
TOKEN_SIZE = 8

# Message types (key 0). All even: every one must be understood [MSG-R3].
PING, PONG, FIND_NODE, NODES, GET, VALUES, PUT, STORED, ERROR = 2, 4, 6, 8, 10, 12, 14, 16, 18
_REQUESTS = frozenset({PING, FIND_NODE, GET, PUT})
_ANSWERS = {PING: PONG, FIND_NODE: NODES, GET: VALUES, PUT: STORED}
_REQ = frozenset({0, 1, 2, 3, 5})
_RESP = frozenset({0, 1, 2, 3, 6, 7})
_FIELDS = {  # the keys each message type defines (spec/03-dht.md, section 4)
    PING: _REQ,
    PONG: _RESP,
    FIND_NODE: _REQ | {4},
    NODES: _RESP | {4},
    GET: _REQ | {4},
    VALUES: _RESP | {4, 8, 10},
    PUT: _REQ | {4, 6},
    STORED: _RESP,
    ERROR: _RESP | {4},
}
_RESPONSES = frozenset({PONG, NODES, VALUES, STORED, ERROR})

RECORD_DOMAIN = "starling/dht-record/1"
PROOF_DOMAIN = "starling/dht-proof/1"
PRESENCE_TAG = b"starling/community-presence/1"
KIND_PEER = 2
KIND_PRESENCE = 4

_LIMITS = codec.DecodeLimits(max_size=1500, max_depth=4)
_RECORD_LIMITS = codec.DecodeLimits(max_size=4096, max_depth=6)


@dataclass
class DhtConfig:
    k: int = 20
    alpha: int = 3
    timeout_min: float = 0.15
    timeout_max: float = 2.0
    timeout_default: float = 1.0
    max_rpcs_per_lookup: int = 300
    maintenance_interval: float = 150.0
    stale_after: float = 900.0
    refresh_interval: float = 3600.0
    unresponsive_ttl: float = 300.0
    token_rotation: float = 300.0
    replacements_per_bucket: int = 8
    per_prefix_cap: int = 2
    record_max_size: int = 1024
    record_max_ttl: int = 7200
    max_records_per_key: int = 32
    max_records_per_signer: int = 32
    max_records: int = 20000
    request_rate: float = 50.0  # per source IP per second, with a burst of 4x
    put_rate: float = 5.0
    max_datagram: int = 1400
    client_mode: bool = False


# ----------------------------------------------------------------------------- geometry


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two IDs, as an integer [DHT-R1]."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """Common-prefix length in bits (256 for the same ID) [DHT-R2]."""
    d = distance(own, other)
    return 256 - d.bit_length()


def _prefix(ip: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) an address counts against, None for loopback."""
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def encode_address(addr: Address) -> list[codec.Value]:
    return [ipaddress.ip_address(addr[0]).packed, addr[1]]


def decode_address(value: codec.Value) -> Address:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], bytes)
        or len(value[0]) not in (4, 16)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or not 0 < value[1] < 65536
    ):
        raise DhtError(ErrorCode.DHT_MALFORMED, "bad address", "DHT-R4")
    return (str(ipaddress.ip_address(value[0])), value[1])


def presence_key(network: bytes, community_key: bytes) -> bytes:
    """Where members of a community announce themselves [DHT-R21]."""
    return hashlib.sha256(PRESENCE_TAG + network + community_key).digest()


def write_token(secret: bytes, addr: Address) -> bytes:
    """HMAC-SHA256(secret, ip bytes || port u16be), first 8 bytes [DHT-R25]."""
    message = ipaddress.ip_address(addr[0]).packed + addr[1].to_bytes(2, "big")
    return hmac.new(secret, message, hashlib.sha256).digest()[:TOKEN_SIZE]


def proof_payload(txid: bytes, observed: Address) -> bytes:
    """What a responder signs to prove its ID: the txid and where it saw the requester."""
    return txid + codec.encode(encode_address(observed))


# ----------------------------------------------------------------------------- records

_RECORD_FIELDS = (
    codec.Field(1, "kind", int, minimum=0),
    codec.Field(2, "key", bytes, size=ID_SIZE),
    codec.Field(3, "seq", int, minimum=0),
    codec.Field(4, "ttl", int, minimum=1),
    codec.Field(5, "value", dict),
)


@dataclass(frozen=True, slots=True)
class Record:
    """A signed DHT record; ``envelope`` is the exact signed bytes that travel."""

    kind: int
    key: bytes
    seq: int
    ttl: int
    value: dict[int, codec.Value]
    signer: PublicKey
    envelope: bytes

    @property
    def signer_id(self) -> bytes:
        return self.signer.peer_id.raw

    @classmethod
    def make(
        cls,
        identity: PrivateKey,
        kind: int,
        key: bytes,
        seq: int,
        ttl: int,
        value: dict[int, codec.Value],
    ) -> Record:
        payload = codec.encode({1: kind, 2: key, 3: seq, 4: ttl, 5: value})
        return cls.parse(seal(identity, RECORD_DOMAIN, payload))

    @classmethod
    def peer(
        cls,
        identity: PrivateKey,
        seq: int,
        ttl: int,
        addresses: Iterable[Address],
        relays: Iterable[tuple[bytes, Address]] = (),
    ) -> Record:
        """A peer record: where to reach ``identity`` directly and through relays."""
        value: dict[int, codec.Value] = {
            1: [encode_address(a) for a in addresses],
            2: [[rid, encode_address(a)] for rid, a in relays],
        }
        return cls.make(identity, KIND_PEER, identity.peer_id.raw, seq, ttl, value)

    @classmethod
    def parse(cls, envelope: bytes, max_size: int = 1024, max_ttl: int = 7200) -> Record:
        """Verify and decode a record; every failure is a DhtError with its code."""
        return _parse_record(bytes(envelope), max_size, max_ttl)

    def addresses(self) -> list[Address]:
        raw = self.value.get(1, [])
        return [decode_address(a) for a in raw] if isinstance(raw, list) else []


def _parse_record(envelope: bytes, max_size: int, max_ttl: int) -> Record:
    if len(envelope) > max_size:
        raise DhtError(
            ErrorCode.DHT_RECORD_TOO_LARGE,
            f"record of {len(envelope)} bytes exceeds {max_size}",
            "DHT-R23",
        )
    try:
        env = open_envelope(envelope, RECORD_DOMAIN, _RECORD_LIMITS)
        fields = codec.read_fields(
            codec.decode(env.payload, _RECORD_LIMITS), _RECORD_FIELDS, "record"
        )
    except StarlingError as exc:
        raise DhtError(
            ErrorCode.DHT_RECORD_INVALID, f"record does not verify: {exc}", "DHT-R20"
        ) from None
    kind, key, seq, ttl, value = (fields[n] for n in ("kind", "key", "seq", "ttl", "value"))
    assert isinstance(kind, int) and isinstance(key, bytes) and isinstance(seq, int)
    assert isinstance(ttl, int) and isinstance(value, dict)
    if ttl > max_ttl:
        raise DhtError(ErrorCode.DHT_RECORD_TTL, f"ttl {ttl} s exceeds {max_ttl}", "DHT-R24")
    if kind == KIND_PEER:
        if key != env.signer.peer_id.raw:
            raise DhtError(
                ErrorCode.DHT_RECORD_KEY_MISMATCH,
                "a peer record's key must be its signer's peer ID",
                "DHT-R21",
            )
    elif kind != KIND_PRESENCE:
        raise DhtError(ErrorCode.DHT_RECORD_KIND, f"unknown record kind {kind}", "DHT-R20")
    return Record(kind, key, seq, ttl, value, env.signer, envelope)


# ----------------------------------------------------------------------------- routing table


@dataclass(slots=True)
class Contact:
    node_id: bytes
    addr: Address
    last_seen: float
    failures: int = 0


class RoutingTable:
    """Buckets by common-prefix length, the last one splitting as it fills [DHT-R10..R12]."""

    def __init__(self, own_id: bytes, k: int, per_prefix_cap: int, replacements: int) -> None:
        self.own_id = own_id
        self.k = k
        self.per_prefix_cap = per_prefix_cap
        self.replacement_cap = replacements
        self.buckets: list[OrderedDict[bytes, Contact]] = [OrderedDict()]
        self.replacements: list[OrderedDict[bytes, Contact]] = [OrderedDict()]
        self.refreshed: list[float] = [0.0]
        self._index: dict[bytes, Contact] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._index

    def get(self, node_id: bytes) -> Contact | None:
        return self._index.get(node_id)

    def contacts(self) -> Iterable[Contact]:
        return self._index.values()

    def bucket_of(self, node_id: bytes) -> int:
        return min(bucket_index(self.own_id, node_id), len(self.buckets) - 1)

    def _prefix_full(self, bucket: OrderedDict[bytes, Contact], addr: Address) -> bool:
        prefix = _prefix(addr[0])
        if prefix is None:
            return False
        return sum(1 for c in bucket.values() if _prefix(c.addr[0]) == prefix) >= (
            self.per_prefix_cap
        )

    def add(self, contact: Contact) -> bool:
        """Insert a proven contact; False if its bucket (and prefix quota) has no room."""
        if contact.node_id == self.own_id or contact.node_id in self._index:
            return False
        while True:
            i = self.bucket_of(contact.node_id)
            bucket = self.buckets[i]
            if self._prefix_full(bucket, contact.addr):
                return False
            if len(bucket) < self.k:
                bucket[contact.node_id] = contact
                self._index[contact.node_id] = contact
                self.replacements[i].pop(contact.node_id, None)
                return True
            stale = next((c for c in bucket.values() if c.failures >= 2), None)
            if stale is not None:
                # The newcomer, just proven, takes the stale entry's place.
                del bucket[stale.node_id]
                del self._index[stale.node_id]
                continue
            if i == len(self.buckets) - 1 and i < 255:
                self._split()
                continue
            replacements = self.replacements[i]
            replacements[contact.node_id] = contact
            while len(replacements) > self.replacement_cap:
                replacements.popitem(last=False)
            return False

    def _split(self) -> None:
        depth = len(self.buckets) - 1
        last = self.buckets[-1]
        keep: OrderedDict[bytes, Contact] = OrderedDict()
        deeper: OrderedDict[bytes, Contact] = OrderedDict()
        for node_id, c in last.items():
            (deeper if bucket_index(self.own_id, node_id) > depth else keep)[node_id] = c
        self.buckets[-1] = keep
        self.buckets.append(deeper)
        self.replacements.append(OrderedDict())
        self.refreshed.append(self.refreshed[-1])

    def remove(self, node_id: bytes) -> None:
        contact = self._index.pop(node_id, None)
        if contact is None:
            return
        i = self.bucket_of(node_id)
        self.buckets[i].pop(node_id, None)
        # Promote the most recently heard replacement that fits.
        replacements = self.replacements[i]
        while replacements:
            _, candidate = replacements.popitem(last=True)
            if candidate.failures == 0 and self.add(candidate):
                break

    def touch(self, node_id: bytes, now: float) -> None:
        contact = self._index.get(node_id)
        if contact is not None:
            contact.last_seen = now
            contact.failures = 0
            self.buckets[self.bucket_of(node_id)].move_to_end(node_id)

    def closest(self, target: bytes, count: int, exclude: bytes | None = None) -> list[Contact]:
        """The ``count`` known nodes closest to ``target``: table entries, and also the
        proven nodes waiting in replacement lists (after a wave of departures they are
        often the live ones)."""
        t = int.from_bytes(target, "big")
        pool = itertools.chain(self._index.values(), *(r.values() for r in self.replacements))
        return sorted(
            (c for c in pool if c.node_id != exclude and c.failures < 2),
            key=lambda c: int.from_bytes(c.node_id, "big") ^ t,
        )[:count]


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LookupDone:
    """A FIND_NODE or GET lookup finished."""

    lookup_id: int
    target: bytes
    closest: list[tuple[bytes, Address]]
    records: list[Record]
    rpcs: int
    hops: int
    duration: float
    ok: bool


@dataclass(frozen=True, slots=True)
class PutDone:
    lookup_id: int
    key: bytes
    stored: int
    attempted: int
    duration: float


@dataclass(frozen=True, slots=True)
class ObservedAddress:
    """A proven peer reported the address it saw us at."""

    reporter: bytes
    addr: Address


Event = LookupDone | PutDone | ObservedAddress


# ----------------------------------------------------------------------------- lookups


class _State(Enum):
    NEW = 0
    INFLIGHT = 1
    STALLED = 2  # first timeout passed, resent once, no longer holds a slot
    DONE = 3
    FAILED = 4


@dataclass(slots=True)
class _Candidate:
    node_id: bytes
    addr: Address
    dist: int
    hop: int
    state: _State = _State.NEW


@dataclass
class _Path:
    candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    inflight: int = 0
    seeds: int = 0  # bootstrap requests to addresses whose IDs we do not know yet
    best: int | None = None  # distance of the closest candidate seen so far
    final: bool = False  # converged: query the rest of the k closest all at once
    done: bool = False


@dataclass
class _Lookup:
    lookup_id: int
    kind: int  # FIND_NODE, GET or PUT
    target: bytes
    started: float
    paths: list[_Path]
    claimed: set[bytes] = field(default_factory=set)
    records: dict[bytes, Record] = field(default_factory=dict)
    tokens: dict[bytes, tuple[Address, bytes]] = field(default_factory=dict)
    rpcs: int = 0
    put_record: Record | None = None
    put_pending: int = 0
    put_stored: int = 0
    put_attempted: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Pending:
    txid: bytes
    addr: Address
    kind: int
    datagram: bytes
    sent_at: float
    node_id: bytes | None
    lookup: _Lookup | None
    path: _Path | None
    attempt: int = 0
    prove: bool = False


# ----------------------------------------------------------------------------- the node


class DhtNode:
    """One node's DHT state machine (sans-IO)."""

    def __init__(
        self,
        identity: PrivateKey,
        network: bytes,
        rng: Rng,
        now: float,
        config: DhtConfig | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.peer_id.raw
        self.network = network
        self.config = config or DhtConfig()
        self._rng = rng
        self._now = now
        self._header = control_header(network)
        self.table = RoutingTable(
            self.node_id,
            self.config.k,
            self.config.per_prefix_cap,
            self.config.replacements_per_bucket,
        )
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._pending: dict[bytes, _Pending] = {}
        self._timers: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._lookups = itertools.count(1)
        # node ID -> the address its proof was made at: a proof vouches for ID *and* address.
        self._proven: OrderedDict[bytes, Address] = OrderedDict()
        self._proving: set[bytes] = set()
        self._unresponsive: OrderedDict[Address, float] = OrderedDict()
        self._rtt: OrderedDict[Address, tuple[float, float]] = OrderedDict()
        self._global_rtt: tuple[float, float] | None = None
        self._buckets_rate: dict[str, tuple[float, float]] = {}
        self._buckets_put: dict[str, tuple[float, float]] = {}
        self._secrets = [rng(32), rng(32)]
        self.records: dict[bytes, dict[bytes, tuple[Record, float]]] = {}
        self._signer_counts: Counter[bytes] = Counter()
        self._published: dict[bytes, tuple[Record, int]] = {}
        self.stats: Counter[str] = Counter()
        self.table.refreshed = [now]
        self._schedule(now + self.config.maintenance_interval, "maintenance", None)
        self._schedule(now + self.config.token_rotation, "rotate", None)
        self._schedule(now + 60.0, "expire", None)

    # -- the core interface ------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._now = now
        if classify(data, self.network) is not DatagramKind.CONTROL:
            self.stats["dropped_not_ours"] += 1
            return
        try:
            message = codec.decode(data[CONTROL_HEADER_SIZE:], _LIMITS)
            if not isinstance(message, dict) or not isinstance(message.get(0), int):
                raise DhtError(ErrorCode.DHT_MALFORMED, "not a DHT message", "DHT-R3")
            kind = message[0]
            if kind in _REQUESTS:
                self._on_request(kind, message, addr)
            elif kind in _RESPONSES:
                self._on_response(kind, message, addr)
            else:
                codec.dispatch(message, {}, "DHT message")  # even: error, odd: ignored
                self.stats["ignored_unknown_odd"] += 1
        except StarlingError as exc:
            self.stats[f"rejected_{exc.code.name}"] += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        self._now = now
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, payload = heapq.heappop(self._timers)
            if kind == "timeout":
                txid, attempt = cast(tuple[bytes, int], payload)
                self._on_timeout(txid, attempt)
            elif kind == "maintenance":
                self._maintenance()
                self._schedule(now + self.config.maintenance_interval, "maintenance", None)
            elif kind == "rotate":
                self._secrets = [self._rng(32), self._secrets[0]]
                self._schedule(now + self.config.token_rotation, "rotate", None)
            elif kind == "expire":
                self._expire()
                self._schedule(now + 60.0, "expire", None)
            elif kind == "republish":
                published = self._published.get(payload)  # type: ignore[call-overload]
                if published is not None:
                    record, disjoint = published
                    self._start_put(record, disjoint)
                    self._schedule(now + record.ttl / 2, "republish", payload)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- application API ----------------------------------------------------------------

    def bootstrap(self, seeds: Iterable[Address], now: float) -> int:
        """Join through seed addresses: ask each for nodes near our own ID, proving them."""
        self._now = now
        lookup = self._new_lookup(FIND_NODE, self.node_id, 1)
        path = lookup.paths[0]
        for addr in seeds:
            path.seeds += 1
            self._request(FIND_NODE, {4: self.node_id}, addr, None, lookup, path, True)
        if not path.seeds:
            self._finish(lookup)
        return lookup.lookup_id

    def find_node(self, target: bytes, now: float, disjoint: int = 1) -> int:
        self._now = now
        return self._start(FIND_NODE, target, disjoint).lookup_id

    def get(self, key: bytes, now: float, disjoint: int = 1) -> int:
        """Look up ``key``; the LookupDone event carries every valid record found."""
        self._now = now
        return self._start(GET, key, disjoint).lookup_id

    def put(self, record: Record, now: float, disjoint: int = 1) -> int:
        """Store ``record`` on the k nodes closest to its key (once); ``disjoint`` > 1 finds
        them over that many disjoint paths, so colluding nodes cannot hide them [DHT-R30]."""
        self._now = now
        return self._start_put(record, disjoint).lookup_id

    def publish(self, record: Record, now: float, disjoint: int = 1) -> int:
        """Store ``record`` and keep republishing it at half its TTL [DHT-R26]."""
        self._now = now
        ident = record.key + record.signer_id
        self._published[ident] = (record, disjoint)
        self._schedule(now + record.ttl / 2, "republish", ident)
        return self._start_put(record, disjoint).lookup_id

    # -- requests out -------------------------------------------------------------------

    def _schedule(self, at: float, kind: str, payload: object) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, payload))

    def _send(self, message: dict[int, codec.Value], addr: Address) -> bytes:
        datagram = self._header + codec.encode(message)
        self._outbox.append((datagram, addr))
        self.stats["tx"] += 1
        self.stats["tx_bytes"] += len(datagram)
        return datagram

    def _common(self, kind: int, txid: bytes) -> dict[int, codec.Value]:
        message: dict[int, codec.Value] = {0: kind, 1: txid, 2: self.identity.public_key.raw}
        if self.config.client_mode:
            message[3] = True
        return message

    def _timeout_for(self, addr: Address) -> float:
        est = self._rtt.get(addr) or self._global_rtt
        if est is None:
            return self.config.timeout_default
        srtt, rttvar = est
        return min(self.config.timeout_max, max(self.config.timeout_min, srtt + 4 * rttvar))

    def _request(
        self,
        kind: int,
        body: dict[int, codec.Value],
        addr: Address,
        node_id: bytes | None,
        lookup: _Lookup | None,
        path: _Path | None,
        prove: bool,
    ) -> None:
        txid = self._rng(TXID_SIZE)
        message = self._common(kind, txid)
        message.update(body)
        if prove:
            message[5] = True  # ask for an ID proof in the response [DHT-R10]
        datagram = self._send(message, addr)
        pending = _Pending(txid, addr, kind, datagram, self._now, node_id, lookup, path)
        pending.prove = prove
        self._pending[txid] = pending
        if lookup is not None:
            lookup.rpcs += 1
        self._schedule(self._now + self._timeout_for(addr), "timeout", (txid, 0))

    def _on_timeout(self, txid: bytes, attempt: int) -> None:
        pending = self._pending.get(txid)
        if pending is None or pending.attempt != attempt:
            return
        if attempt == 0:
            # First timeout: resend once and let the lookup move on without waiting.
            pending.attempt = 1
            self._outbox.append((pending.datagram, pending.addr))
            self.stats["tx"] += 1
            self.stats["retries"] += 1
            self._schedule(self._now + 2 * self._timeout_for(pending.addr), "timeout", (txid, 1))
            if pending.lookup is not None:
                pending.lookup.rpcs += 1
                self._candidate_state(pending, _State.STALLED)
            return
        del self._pending[txid]
        self.stats["timeouts"] += 1
        self._unresponsive[pending.addr] = self._now + self.config.unresponsive_ttl
        if len(self._unresponsive) > 4096:
            self._unresponsive.popitem(last=False)
        if pending.node_id is not None:
            contact = self.table.get(pending.node_id)
            if contact is not None:
                contact.failures += 1
                if contact.failures >= 2:
                    self.table.remove(pending.node_id)
        self._proving.discard(pending.node_id or b"")
        if pending.lookup is not None:
            self._candidate_state(pending, _State.FAILED)
            if pending.kind == PUT:
                pending.lookup.put_pending -= 1
                self._maybe_finish_put(pending.lookup)

    def _candidate_state(self, pending: _Pending, state: _State) -> None:
        path, lookup = pending.path, pending.lookup
        if path is None or lookup is None:
            return
        if pending.node_id is None:  # a bootstrap seed
            if state is _State.FAILED:
                path.seeds -= 1
                self._step(lookup, path)
            return
        cand = path.candidates.get(pending.node_id)
        if cand is not None and cand.state in (_State.INFLIGHT, _State.STALLED):
            if cand.state is _State.INFLIGHT:
                path.inflight -= 1
            cand.state = state
        self._step(lookup, path)

    # -- lookups -------------------------------------------------------------------------

    def _new_lookup(self, kind: int, target: bytes, disjoint: int) -> _Lookup:
        lookup = _Lookup(
            next(self._lookups), kind, target, self._now, [_Path() for _ in range(disjoint)]
        )
        lookup.claimed.add(self.node_id)
        i = self.table.bucket_of(target)
        if i < len(self.table.refreshed):
            self.table.refreshed[i] = self._now
        return lookup

    def _start(
        self, kind: int, target: bytes, disjoint: int, put_record: Record | None = None
    ) -> _Lookup:
        lookup = self._new_lookup(kind, target, max(1, disjoint))
        lookup.put_record = put_record
        seeds = self.table.closest(target, self.config.k * len(lookup.paths))
        for n, contact in enumerate(seeds):
            self._add_candidate(
                lookup, lookup.paths[n % len(lookup.paths)], contact.node_id, contact.addr, 1
            )
        for path in lookup.paths:
            self._step(lookup, path)
        if not seeds:
            self._finish(lookup)
        return lookup

    def _start_put(self, record: Record, disjoint: int = 1) -> _Lookup:
        return self._start(PUT, record.key, disjoint, record)

    def _add_candidate(
        self, lookup: _Lookup, path: _Path, node_id: bytes, addr: Address, hop: int
    ) -> None:
        if node_id in lookup.claimed or node_id in path.candidates:
            return
        until = self._unresponsive.get(addr)
        if until is not None:
            if until > self._now:
                return
            del self._unresponsive[addr]
        lookup.claimed.add(node_id)
        dist = distance(node_id, lookup.target)
        path.candidates[node_id] = _Candidate(node_id, addr, dist, hop)
        if path.best is None or dist < path.best:
            path.best = dist

    def _step(self, lookup: _Lookup, path: _Path) -> None:
        if lookup.finished or path.done:
            return
        k = self.config.k
        alpha = k if path.final else self.config.alpha
        # A stalled request (one timeout already) is most likely to a dead node: it no
        # longer holds a place among the k closest, so the next candidate goes out now.
        # Should it answer after all, its answer still counts.
        ranked = sorted(
            (
                c
                for c in path.candidates.values()
                if c.state is not _State.FAILED and c.state is not _State.STALLED
            ),
            key=lambda c: c.dist,
        )[:k]
        waiting = False
        for cand in ranked:
            if cand.state is _State.NEW:
                if lookup.rpcs >= self.config.max_rpcs_per_lookup:
                    continue  # the request budget is spent: wait only for what is out
                if path.inflight >= alpha:
                    waiting = True
                    break
                cand.state = _State.INFLIGHT
                path.inflight += 1
                body: dict[int, codec.Value] = {4: lookup.target}
                kind = FIND_NODE if lookup.kind == FIND_NODE else GET
                prove = self._proven.get(cand.node_id) != cand.addr
                self._request(kind, body, cand.addr, cand.node_id, lookup, path, prove)
            elif cand.state in (_State.INFLIGHT, _State.STALLED):
                waiting = True
        if not waiting and path.inflight == 0 and path.seeds == 0:
            path.done = True
            if all(p.done for p in lookup.paths):
                self._finish(lookup)

    def _finish(self, lookup: _Lookup) -> None:
        if lookup.finished:
            return
        lookup.finished = True
        answered = sorted(
            (c for p in lookup.paths for c in p.candidates.values() if c.state is _State.DONE),
            key=lambda c: c.dist,
        )[: self.config.k]
        if lookup.kind == PUT and lookup.put_record is not None:
            self._send_puts(lookup, answered)
            return
        hops = answered[0].hop if answered else 0
        self._events.append(
            LookupDone(
                lookup.lookup_id,
                lookup.target,
                [(c.node_id, c.addr) for c in answered],
                sorted(lookup.records.values(), key=lambda r: (-r.seq, r.signer_id)),
                lookup.rpcs,
                hops,
                self._now - lookup.started,
                bool(answered),
            )
        )

    def _send_puts(self, lookup: _Lookup, answered: list[_Candidate]) -> None:
        assert lookup.put_record is not None
        for cand in answered:
            token = lookup.tokens.get(cand.node_id)
            if token is None:
                continue
            addr, value = token
            lookup.put_pending += 1
            lookup.put_attempted += 1
            body: dict[int, codec.Value] = {4: lookup.put_record.envelope, 6: value}
            self._request(PUT, body, addr, cand.node_id, lookup, None, False)
        lookup.finished = False  # now waiting for STORED replies
        lookup.paths = []
        self._maybe_finish_put(lookup)

    def _maybe_finish_put(self, lookup: _Lookup) -> None:
        if lookup.put_pending == 0 and not lookup.finished:
            lookup.finished = True
            self._events.append(
                PutDone(
                    lookup.lookup_id,
                    lookup.target,
                    lookup.put_stored,
                    lookup.put_attempted,
                    self._now - lookup.started,
                )
            )

    # -- responses in --------------------------------------------------------------------

    @staticmethod
    def _check_keys(kind: int, message: dict[int, codec.Value]) -> None:
        """Unknown even keys make a message unacceptable, unknown odd ones are ignored
        [MSG-R2]."""
        unknown = [key for key in message if key not in _FIELDS[kind] and key % 2 == 0]
        if unknown:
            raise DhtError(
                ErrorCode.DHT_MALFORMED,
                f"message type {kind} carries unknown even key {unknown[0]}",
                "MSG-R2",
            )

    def _on_response(self, kind: int, message: dict[int, codec.Value], addr: Address) -> None:
        self._check_keys(kind, message)
        txid = message.get(1)
        pending = self._pending.get(txid) if isinstance(txid, bytes) else None
        if pending is None or pending.addr != addr or not isinstance(txid, bytes):
            # Off-path or late beyond the final timeout: never acted upon [DHT-R5].
            raise DhtError(ErrorCode.DHT_TXID_UNKNOWN, "response matches no request", "DHT-R5")
        sender = message.get(2)
        if not isinstance(sender, bytes) or len(sender) != 32:
            raise DhtError(ErrorCode.DHT_MALFORMED, "response lacks the sender key", "DHT-R4")
        node_id = PeerId.from_public_key(sender).raw
        if pending.node_id is not None and node_id != pending.node_id:
            raise DhtError(
                ErrorCode.DHT_PROOF_INVALID, "response from another ID than asked", "DHT-R10"
            )
        if kind != ERROR and kind != _ANSWERS[pending.kind]:
            raise DhtError(
                ErrorCode.DHT_MALFORMED,
                f"type {kind} does not answer type {pending.kind}",
                "DHT-R4",
            )
        del self._pending[txid]
        self._sample_rtt(addr, self._now - pending.sent_at, pending.attempt)
        proof = message.get(6)
        if isinstance(proof, bytes):
            self._check_proof(node_id, sender, proof, txid, message.get(7), addr)
        elif pending.prove or kind == PONG:
            self.stats["proof_missing"] += 1
        self._heard_from(node_id, addr, message.get(3) is True)
        lookup, path = pending.lookup, pending.path
        if kind == ERROR:
            self.stats["error_replies"] += 1
            if lookup is not None and pending.kind == PUT:
                lookup.put_pending -= 1
                self._maybe_finish_put(lookup)
            elif lookup is not None:
                self._candidate_state(pending, _State.FAILED)
            return
        if lookup is None or path is None:
            if lookup is not None and kind == STORED:
                lookup.put_pending -= 1
                lookup.put_stored += 1
                self._maybe_finish_put(lookup)
            elif lookup is None and kind == NODES:
                self._learn(message.get(4))
            return
        if pending.node_id is None:
            # A bootstrap seed answered: now that its ID is known it joins the lookup,
            # answered, like any other node.
            path.seeds -= 1
            if node_id not in lookup.claimed and node_id != self.node_id:
                lookup.claimed.add(node_id)
                seed = _Candidate(node_id, addr, distance(node_id, lookup.target), 1, _State.DONE)
                path.candidates[node_id] = seed
                if path.best is None or seed.dist < path.best:
                    path.best = seed.dist
        cand = path.candidates.get(node_id)
        hop = cand.hop if cand is not None else 1
        best_before = path.best
        nodes = message.get(4)
        if isinstance(nodes, list):
            for entry in nodes[: self.config.k]:
                try:
                    nid, naddr = self._node_entry(entry)
                except DhtError:
                    self.stats["bad_node_entries"] += 1
                    continue
                if nid != self.node_id:
                    target_path = path
                    self._add_candidate(lookup, target_path, nid, naddr, hop + 1)
        if kind == VALUES:
            token = message.get(8)
            if isinstance(token, bytes):
                lookup.tokens[node_id] = (addr, token)
            records = message.get(10)
            if isinstance(records, list) and lookup.kind == GET:
                for raw in records:
                    self._collect(lookup, raw)
        if cand is not None and cand.state in (_State.INFLIGHT, _State.STALLED):
            if cand.state is _State.INFLIGHT:
                path.inflight -= 1
            cand.state = _State.DONE
        if not path.final and pending.node_id is not None and path.best == best_before:
            # Kademlia's last step: once the closest node known has answered and an
            # answer named nobody closer, the lookup has converged; ask the rest of the
            # k closest at once instead of alpha at a time [DHT-R31].
            nearest = min(
                (
                    c
                    for c in path.candidates.values()
                    if c.state is not _State.FAILED and c.state is not _State.STALLED
                ),
                key=lambda c: c.dist,
                default=None,
            )
            path.final = nearest is not None and nearest.state is _State.DONE
        self._step(lookup, path)

    def _collect(self, lookup: _Lookup, raw: codec.Value) -> None:
        if not isinstance(raw, bytes):
            return
        try:
            record = _parse_record_cached(
                raw, self.config.record_max_size, self.config.record_max_ttl
            )
        except DhtError as exc:
            self.stats[f"rejected_{exc.code.name}"] += 1
            return
        if record.key != lookup.target:
            self.stats["rejected_record_wrong_key"] += 1
            return
        held = lookup.records.get(record.signer_id)
        if held is None or record.seq > held.seq:
            lookup.records[record.signer_id] = record

    def _node_entry(self, entry: codec.Value) -> tuple[bytes, Address]:
        if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], bytes):
            raise DhtError(ErrorCode.DHT_MALFORMED, "bad node entry", "DHT-R4")
        if len(entry[0]) != ID_SIZE:
            raise DhtError(ErrorCode.DHT_MALFORMED, "bad node ID", "DHT-R4")
        return entry[0], decode_address([entry[1], entry[2]])

    def _learn(self, nodes: codec.Value) -> None:
        """Nodes from a maintenance FIND_NODE: prove those that would fit in the table."""
        if not isinstance(nodes, list):
            return
        for entry in nodes[: self.config.k]:
            try:
                nid, naddr = self._node_entry(entry)
            except DhtError:
                continue
            self._consider(nid, naddr)

    def _sample_rtt(self, addr: Address, rtt: float, attempt: int) -> None:
        if attempt:  # ambiguous sample after a resend (Karn's rule)
            return
        est = self._rtt.get(addr)
        if est is None:
            new = (rtt, rtt / 2)
        else:
            srtt, rttvar = est
            new = (0.875 * srtt + 0.125 * rtt, 0.75 * rttvar + 0.25 * abs(srtt - rtt))
        self._rtt[addr] = new
        self._rtt.move_to_end(addr)
        if len(self._rtt) > 4096:
            self._rtt.popitem(last=False)
        g = self._global_rtt
        self._global_rtt = (
            (rtt, rtt / 2)
            if g is None
            else (0.95 * g[0] + 0.05 * rtt, 0.9 * g[1] + 0.1 * abs(g[0] - rtt))
        )

    def _check_proof(
        self,
        node_id: bytes,
        public_key: bytes,
        proof: bytes,
        txid: bytes,
        observed: codec.Value,
        addr: Address,
    ) -> None:
        try:
            seen_at = decode_address(observed)
            PublicKey(public_key).verify(PROOF_DOMAIN, proof_payload(txid, seen_at), proof)
        except StarlingError:
            self.stats["rejected_DHT_PROOF_INVALID"] += 1
            return
        self._proven[node_id] = addr
        self._proven.move_to_end(node_id)
        if len(self._proven) > 8192:
            self._proven.popitem(last=False)
        self._proving.discard(node_id)
        self._events.append(ObservedAddress(node_id, seen_at))

    def _heard_from(self, node_id: bytes, addr: Address, client: bool) -> None:
        contact = self.table.get(node_id)
        if contact is not None:
            if contact.addr == addr:
                self.table.touch(node_id, self._now)
            return
        if not client and self._proven.get(node_id) == addr:
            self.table.add(Contact(node_id, addr, self._now))

    def _consider(self, node_id: bytes, addr: Address) -> None:
        """A node we learned of: prove it if its bucket could take it [DHT-R10]."""
        if node_id == self.node_id or node_id in self.table or node_id in self._proving:
            return
        i = self.table.bucket_of(node_id)
        bucket = self.table.buckets[i]
        room = (
            len(bucket) < self.config.k
            or i == len(self.table.buckets) - 1
            or any(c.failures >= 2 for c in bucket.values())
        )
        if not room:
            return
        if self._proven.get(node_id) == addr:
            self.table.add(Contact(node_id, addr, self._now))
            return
        self._proving.add(node_id)
        self._request(PING, {}, addr, node_id, None, None, True)

    # -- requests in ---------------------------------------------------------------------

    def _allow(self, buckets: dict[str, tuple[float, float]], ip: str, rate: float) -> bool:
        tokens, last = buckets.get(ip, (4 * rate, self._now))
        tokens = min(4 * rate, tokens + (self._now - last) * rate)
        if tokens < 1:
            buckets[ip] = (tokens, self._now)
            return False
        buckets[ip] = (tokens - 1, self._now)
        if len(buckets) > 10000:
            buckets.pop(next(iter(buckets)))
        return True

    def _on_request(self, kind: int, message: dict[int, codec.Value], addr: Address) -> None:
        if self.config.client_mode:
            self.stats["dropped_client_mode"] += 1
            return
        if not self._allow(self._buckets_rate, addr[0], self.config.request_rate):
            raise DhtError(ErrorCode.DHT_RATE_LIMITED, f"{addr[0]} over its rate", "DHT-R27")
        self._check_keys(kind, message)
        txid, sender = message.get(1), message.get(2)
        if not isinstance(txid, bytes) or len(txid) != TXID_SIZE:
            raise DhtError(ErrorCode.DHT_MALFORMED, "bad transaction ID", "DHT-R4")
        if not isinstance(sender, bytes) or len(sender) != 32:
            raise DhtError(ErrorCode.DHT_MALFORMED, "bad sender key", "DHT-R4")
        node_id = PeerId.from_public_key(sender).raw
        reply = self._common(PONG, txid)
        if kind == PING or message.get(5) is True:
            # Prove our ID: sign the requester's txid and the address we see it at.
            reply[6] = self.identity.sign(PROOF_DOMAIN, proof_payload(txid, addr))
            reply[7] = encode_address(addr)
        client = message.get(3) is True
        if kind == PING:
            pass
        elif kind == FIND_NODE:
            target = self._target(message)
            reply[0] = NODES
            reply[4] = self._node_list(target, node_id, self.config.max_datagram - 260)
        elif kind == GET:
            key = self._target(message)
            reply[0] = VALUES
            reply[8] = write_token(self._secrets[0], addr)
            # Fixed fields and a proof take under 260 bytes; the first record always goes
            # in (a record is at most 1024 bytes) [DHT-R37]; later ones only while room
            # for a few node entries remains; nodes fill the rest.
            budget = self.config.max_datagram - 260
            records: list[codec.Value] = []
            for stored, _ in self._live(key):
                size = len(stored.envelope) + 3
                if size <= budget and (not records or budget - size >= 300):
                    records.append(stored.envelope)
                    budget -= size
            if records:
                reply[10] = records
            reply[4] = self._node_list(key, node_id, budget)
        elif kind == PUT:
            reply[0] = STORED
            try:
                self._on_put(message, addr)
            except DhtError as exc:
                reply[0] = ERROR
                reply[4] = int(exc.code)
                self._send(reply, addr)
                raise
        self._send(reply, addr)
        if not client:
            if node_id in self.table:
                self._heard_from(node_id, addr, False)
            else:
                self._consider(node_id, addr)

    def _target(self, message: dict[int, codec.Value]) -> bytes:
        target = message.get(4)
        if not isinstance(target, bytes) or len(target) != ID_SIZE:
            raise DhtError(ErrorCode.DHT_MALFORMED, "bad target", "DHT-R4")
        return target

    def _node_list(self, target: bytes, exclude: bytes, budget: int) -> list[codec.Value]:
        out: list[codec.Value] = []
        for c in self.table.closest(target, self.config.k, exclude=exclude):
            size = 45 if "." in c.addr[0] else 57
            if budget < size:
                break
            budget -= size
            packed = ipaddress.ip_address(c.addr[0]).packed
            out.append([c.node_id, packed, c.addr[1]])
        return out

    # -- storage -------------------------------------------------------------------------

    def _on_put(self, message: dict[int, codec.Value], addr: Address) -> None:
        if not self._allow(self._buckets_put, addr[0], self.config.put_rate):
            raise DhtError(ErrorCode.DHT_RATE_LIMITED, "too many PUTs", "DHT-R27")
        token = message.get(6)
        if not isinstance(token, bytes) or not any(
            hmac.compare_digest(token, write_token(s, addr)) for s in self._secrets
        ):
            raise DhtError(ErrorCode.DHT_TOKEN_INVALID, "write token not ours for you", "DHT-R25")
        raw = message.get(4)
        if not isinstance(raw, bytes):
            raise DhtError(ErrorCode.DHT_MALFORMED, "PUT without a record", "DHT-R4")
        record = _parse_record_cached(raw, self.config.record_max_size, self.config.record_max_ttl)
        self.store(record)

    def store(self, record: Record) -> None:
        """Keep a verified record, applying sequence rules and caps [DHT-R22..R24]."""
        slot = self.records.get(record.key, {})
        held = slot.get(record.signer_id)
        expires = self._now + record.ttl
        if held is not None and held[1] <= self._now:
            # Expired but not swept yet: it decides nothing [DHT-R36].
            del slot[record.signer_id]
            self._signer_counts[record.signer_id] -= 1
            held = None
        if held is not None:
            old = held[0]
            if record.seq < old.seq or (record.seq == old.seq and record.envelope != old.envelope):
                raise DhtError(
                    ErrorCode.DHT_RECORD_SEQ,
                    f"sequence {record.seq} does not replace {old.seq}",
                    "DHT-R22",
                )
            slot[record.signer_id] = (record, expires)
            return
        if len(slot) >= self.config.max_records_per_key:
            raise DhtError(ErrorCode.DHT_KEY_FULL, "no room under this key", "DHT-R24")
        if self._signer_counts[record.signer_id] >= self.config.max_records_per_signer:
            raise DhtError(ErrorCode.DHT_SIGNER_FULL, "signer stores too much here", "DHT-R24")
        if sum(self._signer_counts.values()) >= self.config.max_records:
            raise DhtError(ErrorCode.DHT_STORE_FULL, "store full", "DHT-R24")
        slot[record.signer_id] = (record, expires)
        self.records[record.key] = slot
        self._signer_counts[record.signer_id] += 1

    def _live(self, key: bytes) -> list[tuple[Record, float]]:
        """Unexpired records under ``key``, in an order of this node's own: by
        SHA-256(this node's ID || signer ID). When not all fit in a reply, each storing
        node answers with a different subset, so a GET asking several of them gathers
        many members [DHT-R28]."""
        slot = self.records.get(key)
        if not slot:
            return []
        return sorted(
            ((r, e) for r, e in slot.values() if e > self._now),
            key=lambda re: hashlib.sha256(self.node_id + re[0].signer_id).digest(),
        )

    def _expire(self) -> None:
        for key in list(self.records):
            slot = self.records[key]
            for signer, (_, expires) in list(slot.items()):
                if expires <= self._now:
                    del slot[signer]
                    self._signer_counts[signer] -= 1
                    if self._signer_counts[signer] <= 0:
                        del self._signer_counts[signer]
            if not slot:
                del self.records[key]

    # -- maintenance ---------------------------------------------------------------------

    def _maintenance(self) -> None:
        """At most one request per tick [DHT-R14]: ping the longest-silent entry, or
        refresh one idle bucket with a single FIND_NODE."""
        self.stats["maintenance_ticks"] += 1
        oldest = min(self.table.contacts(), key=lambda c: c.last_seen, default=None)
        if oldest is not None and self._now - oldest.last_seen > self.config.stale_after:
            self.stats["maintenance_requests"] += 1
            self._request(PING, {}, oldest.addr, oldest.node_id, None, None, False)
            oldest.last_seen = self._now  # one ping per stale entry per tick
            return
        for i, refreshed in enumerate(self.table.refreshed):
            bucket = self.table.buckets[i]
            if bucket and self._now - refreshed > self.config.refresh_interval:
                self.table.refreshed[i] = self._now
                contact = next(reversed(bucket.values()))
                self.stats["maintenance_requests"] += 1
                target = self._random_id_in_bucket(i)
                self._request(
                    FIND_NODE, {4: target}, contact.addr, contact.node_id, None, None, False
                )
                return

    def _random_id_in_bucket(self, i: int) -> bytes:
        own = int.from_bytes(self.node_id, "big")
        rand = int.from_bytes(self._rng(ID_SIZE), "big")
        if i >= 255:
            return self.node_id
        # Share the first i bits with us, differ at bit i, random below.
        keep = own >> (255 - i) << (255 - i)
        flip = (~own) & (1 << (255 - i))
        low = rand & ((1 << (255 - i)) - 1)
        return (keep & ~(1 << (255 - i)) | flip | low).to_bytes(ID_SIZE, "big")


_RECORD_CACHE: OrderedDict[tuple[bytes, int, int], Record] = OrderedDict()


def _parse_record_cached(raw: bytes, max_size: int, max_ttl: int) -> Record:
    """Verified records by their exact bytes: the same envelope arrives from many nodes."""
    key = (raw, max_size, max_ttl)
    record = _RECORD_CACHE.get(key)
    if record is None:
        record = _parse_record(raw, max_size, max_ttl)
        _RECORD_CACHE[key] = record
        if len(_RECORD_CACHE) > 4096:
            _RECORD_CACHE.popitem(last=False)
    return record
