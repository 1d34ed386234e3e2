"""NAT traversal (spec/04-nat-traversal.md), sans-IO: reachability, path probes, relays, punching.

Theory of operation
-------------------
Most nodes sit behind NAT. This module holds every protocol decision of
spec/04; ``node/path.py`` and ``node/relay.py`` only move bytes and re-arm
timers. Five pieces, each a plain object driven like the DHT and gossip cores
(feed input with ``now``, drain output, ``get_timer()`` / ``handle_timer(now)``,
``next_event()``); none reads a clock, draws randomness or does I/O:

* **Reachability** (section 4). ``Reachability`` collects the addresses DHT
  peers report having seen us at (03-dht's ``ObservedAddress`` events, with the
  reporter's own address). An address is *confirmed*, and may be advertised,
  once at least 3 distinct reporters (distinct peer IDs in distinct /24 or /48
  prefixes) currently report it [NAT-R10]; the reports also classify the NAT's
  mapping (one external address toward every destination, or not) [NAT-R12].
  A *dial-back* settles reachability: a helper sends a small probe to the
  address we name, but only on the IP it sees our session come from
  [NAT-R13]; probes that arrive from two helpers make us PUBLIC (serve the
  DHT, offer relaying), timeouts from two make us PRIVATE (DHT client mode)
  [NAT-R16]. ``DialBackServer`` is the helper's side.
* **Path probes** (section 5). ``PathProbes`` is one session's view of its
  direct path: authenticated PATH_PING / PATH_PONG control datagrams on the
  node's UDP socket, MACed with keys derived from the session's Noise keys
  [NAT-R20] [NAT-R21]. A path is validated only by a PONG to a fresh nonce,
  from the address the PING went to [NAT-R23]; the active direct path is kept
  alive by probes below the ~30 s NAT mapping lifetime and declared lost after
  3 unanswered probes [NAT-R52]. ``direct`` is where QUIC packets go; None
  means the relay.
* **Relays** (section 6). ``RelayCore`` is a relay's whole state: reservations
  (per-IP and total caps, a signed *voucher* per reservation [NAT-R32]),
  circuits (CONNECT, INCOMING, STATUS), and forwarding of opaque end-to-end
  QUIC packets, one stream frame per packet, under duration and byte limits
  per direction [NAT-R35] [NAT-R36]. Every refusal has its code, and one
  circuit over its limit never disturbs the others. ``RelayStream`` is the
  client side of one relay stream (reserving, dialling, being dialled), and
  ``verify_voucher`` the check a client makes of a voucher.
* **Hole punching** (section 7). ``Puncher`` runs one attempt over the relayed
  session's ``starling/punch/1`` stream, DCUtR style: the initiator sends
  CONNECT with its candidate addresses, times the answer (RTT), sends SYNC and
  starts RTT/2 later, when SYNC reaches the responder, which starts at once
  [NAT-R41]. One side is the *dialer* (pings every candidate for the whole
  round), the other the *prober* (a short burst that opens its NAT); roles
  swap each round, at most 3 rounds [NAT-R42]. Success is a validated path.
* **Peer records** (section 9): relay entries carry the relays' vouchers at
  key 3 of the peer record's value, a list parallel to key 2 [NAT-R60].

Wire summary (90-registries): control datagram types 32 PATH_PING, 34
PATH_PONG, 36 DIAL_BACK (the type space 03-dht's messages live in); stream
protocols ``starling/relay/1``, ``starling/punch/1``, ``starling/dial-back/1``;
signature domain ``starling/relay-voucher/1``; codes ``0x07xx``.

Time: every ``now`` is seconds on the caller's clock (monotonic is fine).
Vouchers and reservations carry Unix times; the cores that need them take
``epoch_offset`` (Unix time minus the caller's clock), as the gossip core does.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import codec, dht
from .errors import CodecError, ErrorCode, LocalProtocolError, NatError, StarlingError
from .identity import PeerId, PrivateKey, open_envelope, seal
from .network import CONTROL_HEADER_SIZE, DatagramKind, classify, control_header
from .session import Role, SessionKeys

__all__ = [
    "DIAL_BACK_PROBE",
    "DIAL_BACK_PROTOCOL",
    "FRAME_LIMITS",
    "LIMITS",
    "MESSAGE_NAMES",
    "NAT_CONTROL_TYPES",
    "PATH_PING",
    "PATH_PONG",
    "PUNCH_PROTOCOL",
    "RELAY_PROTOCOL",
    "VOUCHER_DOMAIN",
    "AddressConfirmed",
    "AddressRetracted",
    "CheckedRelay",
    "CircuitClosed",
    "CircuitOpened",
    "CircuitReady",
    "Close",
    "DialBackConfig",
    "DialBackDone",
    "DialBackReply",
    "DialBackServer",
    "IncomingCircuit",
    "Mapping",
    "MappingChanged",
    "Open",
    "OutboundStream",
    "PathConfig",
    "PathLost",
    "PathProbes",
    "PathValidated",
    "Probe",
    "ProbeKeys",
    "Protocol",
    "PunchFailed",
    "PunchPlan",
    "PunchRole",
    "PunchRoundStarted",
    "PunchState",
    "PunchSucceeded",
    "Puncher",
    "Reachability",
    "ReachabilityChanged",
    "ReachabilityConfig",
    "RelayConfig",
    "RelayCore",
    "RelayEntry",
    "RelayRefused",
    "RelayStream",
    "RelayedPacket",
    "Reservation",
    "ReservationGranted",
    "ReservationRefused",
    "Send",
    "Status",
    "Voucher",
    "check_dial_back",
    "classify_mapping",
    "confirmed_addresses",
    "decode_address",
    "decode_message",
    "dial_back_probe",
    "encode_address",
    "encode_connect",
    "encode_dial_request",
    "encode_dial_response",
    "encode_incoming",
    "encode_punch_connect",
    "encode_punch_sync",
    "encode_reservation",
    "encode_reserve",
    "encode_status",
    "format_bootstrap",
    "make_peer_record",
    "make_probe",
    "make_voucher",
    "open_probe",
    "parse_bootstrap",
    "peek_control_type",
    "peek_session_tag",
    "peer_record_value",
    "probe_schedule",
    "punch_plan",
    "relays_of",
    "role_for_round",
    "round_deadline",
    "sync_plan",
    "verify_voucher",
]

Address = tuple[str, int]
Rand = Callable[[int], bytes]

RELAY_PROTOCOL = "starling/relay/1"
PUNCH_PROTOCOL = "starling/punch/1"
DIAL_BACK_PROTOCOL = "starling/dial-back/1"
VOUCHER_DOMAIN = "starling/relay-voucher/1"
PROBE_KEY_INFO = b"starling/probe/1"
PROBE_TAG_INFO = b"starling/probe-tag/1"

# Control datagram types (key 0 of a control datagram's body). They share one type space
# with 03-dht's messages (2 ... 18); all even: a node that takes part must understand them.
PATH_PING, PATH_PONG, DIAL_BACK_PROBE = 32, 34, 36
NAT_CONTROL_TYPES = frozenset({PATH_PING, PATH_PONG, DIAL_BACK_PROBE})
# starling/relay/1 messages.
RESERVE, RESERVATION, CONNECT, INCOMING, STATUS = 2, 4, 6, 8, 10
# starling/punch/1 messages.
PUNCH_CONNECT, PUNCH_SYNC = 2, 4
# starling/dial-back/1 messages.
DIAL_REQUEST, DIAL_RESPONSE = 2, 4

ID_SIZE = 32
TAG_SIZE = 8
PROBE_NONCE_SIZE = 8
MAC_SIZE = 16
DIAL_NONCE_SIZE = 16
MAX_MESSAGE = 1024  # a NAT message body or frame, decoded [NAT-R1] [NAT-R2]
MAX_PACKET = 1500  # a forwarded packet [NAT-R35]
MAX_CANDIDATES = 8
MAX_VOUCHER = 512
MAX_ROUNDS = 3
LIMITS = codec.DecodeLimits(max_size=MAX_MESSAGE, max_depth=4)
_VOUCHER_LIMITS = codec.DecodeLimits(max_size=MAX_VOUCHER, max_depth=2)
# Frame limits (02-secure-session, 7) the runtime sets per protocol: the ciphertext of the
# largest frame each protocol carries.
FRAME_LIMITS = {RELAY_PROTOCOL: MAX_PACKET + 16, PUNCH_PROTOCOL: 1040, DIAL_BACK_PROTOCOL: 1040}


# ----------------------------------------------------------------------------- addresses


def encode_address(addr: Address) -> list[codec.Value]:
    """An address on the wire: ``[ip bytes (4 or 16), port]`` (03-dht, 4.4) [NAT-R3]."""
    return dht.encode_address(addr)


def _fault(code: ErrorCode, reason: str) -> CodecError:
    return CodecError(code, reason, "NAT-R3")


def decode_address(value: codec.Value, what: str = "address") -> Address:
    """Check an address element; a fault is ``SCHEMA_TYPE`` or ``SCHEMA_VALUE`` [NAT-R3]."""
    if not isinstance(value, list):
        raise _fault(ErrorCode.SCHEMA_TYPE, f"{what} must be an array")
    if len(value) != 2:
        raise _fault(ErrorCode.SCHEMA_VALUE, f"{what} must have 2 elements, has {len(value)}")
    ip, port = value
    if not isinstance(ip, bytes):
        raise _fault(ErrorCode.SCHEMA_TYPE, f"{what}[0] must be a byte string")
    if len(ip) not in (4, 16):
        raise _fault(ErrorCode.SCHEMA_VALUE, f"{what}[0] must be 4 or 16 bytes")
    if not isinstance(port, int) or isinstance(port, bool):
        raise _fault(ErrorCode.SCHEMA_TYPE, f"{what}[1] must be an integer")
    if not 0 < port < 65536:
        raise _fault(ErrorCode.SCHEMA_VALUE, f"{what}[1] must be a port 1 ... 65535")
    return (str(ipaddress.ip_address(ip)), port)


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _dialable(addr: Address) -> bool:
    """Whether probes may go to ``addr`` [NAT-R43]: not unspecified, multicast or broadcast."""
    ip = ipaddress.ip_address(addr[0])
    if ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"))


def _prefix(ip: str, bits_v4: int, bits_v6: int) -> str | None:
    """The network an address counts against; None for loopback (counted per peer)."""
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        return None
    bits = bits_v4 if addr.version == 4 else bits_v6
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


# ----------------------------------------------------------------------------- messages


class Protocol(Enum):
    """The contexts NAT messages are dispatched in; each has its own type space."""

    CONTROL = "control"  # bodies of control datagrams
    RELAY = "relay"  # frames of starling/relay/1
    PUNCH = "punch"  # frames of starling/punch/1
    DIAL_BACK = "dial-back"  # frames of starling/dial-back/1


_F = codec.Field
_TYPE = _F(0, "type", int, minimum=0)
_CODE = _F(1, "code", int, minimum=0, maximum=0xFFFF)
_LIMIT_FIELDS = (_F(2, "duration", int, minimum=1), _F(3, "data", int, minimum=1))
_PROBE_FIELDS = (
    _TYPE,
    _F(1, "tag", bytes, size=TAG_SIZE),
    _F(2, "nonce", bytes, size=PROBE_NONCE_SIZE),
    _F(3, "address", list),
    _F(4, "mac", bytes, size=MAC_SIZE),
)
_FIELDS: dict[Protocol, dict[int, tuple[codec.Field, ...]]] = {  # section 3 [NAT-R2]
    Protocol.CONTROL: {
        PATH_PING: _PROBE_FIELDS,
        PATH_PONG: _PROBE_FIELDS,
        DIAL_BACK_PROBE: (_TYPE, _F(1, "nonce", bytes, size=DIAL_NONCE_SIZE)),
    },
    Protocol.RELAY: {
        RESERVE: (_TYPE,),
        RESERVATION: (
            _TYPE,
            _F(1, "expires", int, minimum=0),
            *_LIMIT_FIELDS,
            _F(4, "voucher", bytes, max_size=MAX_VOUCHER),
        ),
        CONNECT: (_TYPE, _F(1, "peer", bytes, size=ID_SIZE)),
        INCOMING: (_TYPE, _F(1, "peer", bytes, size=ID_SIZE), *_LIMIT_FIELDS),
        STATUS: (
            _TYPE,
            _CODE,
            _F(2, "duration", int, required=False, minimum=1),
            _F(3, "data", int, required=False, minimum=1),
        ),
    },
    Protocol.PUNCH: {
        PUNCH_CONNECT: (
            _TYPE,
            _F(1, "round", int, minimum=1, maximum=MAX_ROUNDS),
            _F(2, "candidates", list, max_size=MAX_CANDIDATES),
        ),
        PUNCH_SYNC: (_TYPE, _F(1, "round", int, minimum=1, maximum=MAX_ROUNDS)),
    },
    Protocol.DIAL_BACK: {
        DIAL_REQUEST: (_TYPE, _F(1, "nonce", bytes, size=DIAL_NONCE_SIZE), _F(2, "address", list)),
        DIAL_RESPONSE: (_TYPE, _CODE, _F(2, "observed", list, required=False)),
    },
}
MESSAGE_NAMES: dict[Protocol, dict[int, str]] = {
    Protocol.CONTROL: {
        PATH_PING: "PATH_PING",
        PATH_PONG: "PATH_PONG",
        DIAL_BACK_PROBE: "DIAL_BACK",
    },
    Protocol.RELAY: {
        RESERVE: "RESERVE",
        RESERVATION: "RESERVATION",
        CONNECT: "CONNECT",
        INCOMING: "INCOMING",
        STATUS: "STATUS",
    },
    Protocol.PUNCH: {PUNCH_CONNECT: "CONNECT", PUNCH_SYNC: "SYNC"},
    Protocol.DIAL_BACK: {DIAL_REQUEST: "DIAL_REQUEST", DIAL_RESPONSE: "DIAL_RESPONSE"},
}


def _kind_of(kind: int) -> Callable[[dict[int, codec.Value]], int]:
    return lambda _message: kind


_KNOWN = {p: {k: _kind_of(k) for k in table} for p, table in _FIELDS.items()}


def decode_message(protocol: Protocol, data: bytes) -> tuple[int, dict[str, codec.Value] | None]:
    """Decode one NAT message of ``protocol``: its type and its fields by name.

    At most 1024 bytes, depth 4, no tags; a typed message; its field table; the
    addresses it holds [NAT-R1] [NAT-R2] [NAT-R3]. An unknown odd type gives
    ``(type, None)`` (ignored, [MSG-R3]); every other fault raises ``CodecError``
    with its ``CBOR_*`` or ``SCHEMA_*`` code.
    """
    message = codec.decode(data, LIMITS)
    kind = codec.dispatch(message, _KNOWN[protocol], f"{protocol.value} message")
    if kind is None:
        assert isinstance(message, dict)
        unknown = message[0]
        assert isinstance(unknown, int)
        return unknown, None
    fields = codec.read_fields(message, _FIELDS[protocol][kind], MESSAGE_NAMES[protocol][kind])
    for name in ("address", "observed"):
        if name in fields:
            decode_address(fields[name], name)
    candidates = fields.get("candidates")
    if isinstance(candidates, list):
        for i, item in enumerate(candidates):
            decode_address(item, f"candidates[{i}]")
    return kind, fields


def _address_field(fields: dict[str, codec.Value], name: str) -> Address:
    return decode_address(fields[name], name)  # checked by decode_message


def _int(fields: dict[str, codec.Value], name: str) -> int:
    value = fields[name]
    assert isinstance(value, int)
    return value


def _bytes(fields: dict[str, codec.Value], name: str) -> bytes:
    value = fields[name]
    assert isinstance(value, bytes)
    return value


def _code(value: int) -> ErrorCode | None:
    """The registry entry of a code received on the wire, None for an unassigned one."""
    try:
        return ErrorCode(value)
    except ValueError:
        return None


def _malformed(exc: StarlingError, what: str) -> NatError:
    """The wire code of every CBOR or schema fault in a NAT message [NAT-R2]."""
    return NatError(ErrorCode.NAT_MALFORMED, f"{what}: {exc}", "NAT-R2")


# Encoders, one per message. Each returns the frame (stream protocols) or the body.


def encode_reserve() -> bytes:
    return codec.encode({0: RESERVE})


def encode_reservation(expires: int, duration: int, data: int, voucher: bytes) -> bytes:
    return codec.encode({0: RESERVATION, 1: expires, 2: duration, 3: data, 4: voucher})


def encode_connect(peer: bytes) -> bytes:
    return codec.encode({0: CONNECT, 1: bytes(peer)})


def encode_incoming(peer: bytes, duration: int, data: int) -> bytes:
    return codec.encode({0: INCOMING, 1: bytes(peer), 2: duration, 3: data})


def encode_status(code: int, duration: int | None = None, data: int | None = None) -> bytes:
    message: dict[int, codec.Value] = {0: STATUS, 1: int(code)}
    if duration is not None:
        message[2] = duration
    if data is not None:
        message[3] = data
    return codec.encode(message)


def encode_punch_connect(round_: int, candidates: Sequence[Address]) -> bytes:
    return codec.encode({0: PUNCH_CONNECT, 1: round_, 2: [encode_address(a) for a in candidates]})


def encode_punch_sync(round_: int) -> bytes:
    return codec.encode({0: PUNCH_SYNC, 1: round_})


def encode_dial_request(nonce: bytes, address: Address) -> bytes:
    return codec.encode({0: DIAL_REQUEST, 1: bytes(nonce), 2: encode_address(address)})


def encode_dial_response(code: int, observed: Address | None = None) -> bytes:
    message: dict[int, codec.Value] = {0: DIAL_RESPONSE, 1: int(code)}
    if observed is not None:
        message[2] = encode_address(observed)
    return codec.encode(message)


def dial_back_probe(network: bytes, nonce: bytes) -> bytes:
    """The DIAL_BACK control datagram a helper sends [NAT-R13]."""
    return control_header(network) + codec.encode({0: DIAL_BACK_PROBE, 1: bytes(nonce)})


def peek_control_type(datagram: bytes) -> int | None:
    """The type at key 0 of a control datagram's body, read from its first bytes only.

    For the runtime's demultiplexer: bodies of types in ``NAT_CONTROL_TYPES`` go to the
    NAT cores, the others to the DHT. None when the bytes do not start a canonical map
    whose first key is 0 with a type below 256.
    """
    body = datagram[CONTROL_HEADER_SIZE:]
    if len(body) < 3 or not 0xA1 <= body[0] <= 0xB7 or body[1] != 0x00:
        return None
    if body[2] < 24:
        return body[2]
    if body[2] == 0x18 and len(body) >= 4 and body[3] >= 24:
        return body[3]
    return None


# ----------------------------------------------------------------------------- probes


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-SHA256 with one expand block (length <= 32)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


@dataclass(frozen=True, slots=True)
class ProbeKeys:
    """A session's probe keys [NAT-R20]: the session tag that names it in probes, and one
    MAC key per sender (Noise role)."""

    tag: bytes
    initiator: bytes
    responder: bytes

    @classmethod
    def derive(cls, handshake_hash: bytes, k1: bytes, k2: bytes) -> ProbeKeys:
        return cls(
            _hkdf(handshake_hash, k1 + k2, PROBE_TAG_INFO, TAG_SIZE),
            _hkdf(handshake_hash, k1, PROBE_KEY_INFO),
            _hkdf(handshake_hash, k2, PROBE_KEY_INFO),
        )

    @classmethod
    def from_session(cls, keys: SessionKeys) -> ProbeKeys:
        return cls.derive(keys.handshake_hash, keys.initiator_key, keys.responder_key)

    def key_of(self, sender: Role) -> bytes:
        return self.initiator if sender is Role.INITIATOR else self.responder

    def __repr__(self) -> str:  # never print key material
        return f"ProbeKeys(tag={self.tag.hex()})"


def _other(role: Role) -> Role:
    return Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR


def _mac(key: bytes, header: bytes, body: bytes) -> bytes:
    return hmac.new(key, header + body, hashlib.sha256).digest()[:MAC_SIZE]


def make_probe(
    keys: ProbeKeys, sender: Role, network: bytes, kind: int, nonce: bytes, address: Address
) -> bytes:
    """A PATH_PING (``address``: where it is sent) or PATH_PONG (``address``: where the PING
    came from), MACed with the sender's key over the header and the body without key 4
    [NAT-R21]."""
    if kind not in (PATH_PING, PATH_PONG):
        raise LocalProtocolError(ErrorCode.NAT_UNEXPECTED_MESSAGE, f"type {kind} is no probe")
    header = control_header(network)
    body: dict[int, codec.Value] = {
        0: kind,
        1: keys.tag,
        2: bytes(nonce),
        3: encode_address(address),
    }
    body[4] = _mac(keys.key_of(sender), header, codec.encode(body))
    return header + codec.encode(body)


@dataclass(frozen=True, slots=True)
class Probe:
    """An authenticated probe: PATH_PING or PATH_PONG, its nonce and the address it carries."""

    kind: int
    nonce: bytes
    address: Address


def open_probe(keys: ProbeKeys, receiver: Role, network: bytes, datagram: bytes) -> Probe:
    """Check a received probe in the order of section 5.3 [NAT-R22].

    ``NAT_MALFORMED`` (not a control datagram of ``network``, or a body that breaks its
    field table), ``NAT_UNEXPECTED_MESSAGE`` (a control type other than a probe),
    ``NAT_PROBE_AUTH`` (another session's tag, or a MAC that does not verify under the
    peer's key).
    """
    if classify(datagram, network) is not DatagramKind.CONTROL:
        raise NatError(ErrorCode.NAT_MALFORMED, "not a control datagram of this network", "NAT-R1")
    header, raw = datagram[:CONTROL_HEADER_SIZE], datagram[CONTROL_HEADER_SIZE:]
    try:
        kind, fields = decode_message(Protocol.CONTROL, raw)
    except CodecError as exc:
        raise _malformed(exc, "probe") from None
    if fields is None or kind not in (PATH_PING, PATH_PONG):
        raise NatError(
            ErrorCode.NAT_UNEXPECTED_MESSAGE, f"control type {kind} is no probe", "NAT-R22"
        )
    if not hmac.compare_digest(_bytes(fields, "tag"), keys.tag):
        raise NatError(ErrorCode.NAT_PROBE_AUTH, "probe of another session", "NAT-R22")
    # The canonical decoder gives back exactly the bytes it read, so re-encoding the map
    # without key 4 rebuilds what the sender MACed, unknown odd keys included [NAT-R21].
    message = codec.decode(raw, LIMITS)
    assert isinstance(message, dict)
    unmaced = codec.encode({k: v for k, v in message.items() if k != 4})
    expected = _mac(keys.key_of(_other(receiver)), bytes(header), unmaced)
    if not hmac.compare_digest(expected, _bytes(fields, "mac")):
        raise NatError(ErrorCode.NAT_PROBE_AUTH, "probe MAC does not verify", "NAT-R22")
    return Probe(kind, _bytes(fields, "nonce"), _address_field(fields, "address"))


# ----------------------------------------------------------------------------- path events


@dataclass(frozen=True, slots=True)
class PathValidated:
    """A PONG answered our fresh nonce from ``address``: packets reach the peer there and
    its answers reach us [NAT-R24]. ``observed``: where the peer saw our PING come from."""

    address: Address
    rtt: float
    observed: Address


@dataclass(frozen=True, slots=True)
class PathLost:
    """The direct path stopped answering [NAT-R52]: send through the relay again."""

    address: Address


class PunchRole(Enum):
    """Who does what in a round [NAT-R42]. The dialer stands where DCUtR's QUIC client
    stands: it pings every candidate for the whole round. The prober sends a short burst
    that opens its own NAT toward the dialer's candidates, then answers."""

    DIALER = "dialer"
    PROBER = "prober"


@dataclass(frozen=True, slots=True)
class PunchRoundStarted:
    """A round begins now (``start``): both sides start together [NAT-R41]."""

    round: int
    role: PunchRole
    start: float
    rtt: float
    candidates: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class PunchSucceeded:
    """The punch validated a direct path: ``PathProbes.direct`` is it when it was empty."""

    address: Address
    round: int
    role: PunchRole | None


@dataclass(frozen=True, slots=True)
class PunchFailed:
    """The attempt is over without a path: ``NAT_PUNCH_FAILED`` after the last round,
    ``NAT_PUNCH_TIMEOUT`` when the peer stopped answering, ``NAT_MALFORMED`` or
    ``NAT_UNEXPECTED_MESSAGE`` for a bad frame. The runtime closes the punch stream with
    ``code``."""

    rounds: int
    code: ErrorCode
    reason: str


PathEvent = PathValidated | PathLost | PunchRoundStarted | PunchSucceeded | PunchFailed


@dataclass
class PathConfig:
    """Parameters of spec/04 sections 5, 7 and 8.3. Times in seconds."""

    keepalive: float = 15.0  # probes on the active direct path [NAT-R52]
    probe_timeout: float = 1.0  # least wait for a PONG
    probe_timeout_max: float = 3.0
    max_misses: int = 3  # unanswered probes in a row: the path is lost
    pong_rate: float = 50.0  # PONGs per second per session, a token bucket ...
    pong_burst: float = 100.0  # ... of this depth [NAT-R22]
    max_outstanding: int = 128
    outstanding_ttl: float = 30.0
    # Punching (section 7.4).
    probe_interval: float = 0.1
    dialer_probes: int = 10  # per candidate and round
    prober_probes: int = 5
    round_min: float = 1.5
    message_timeout: float = 5.0  # for an answer to CONNECT, for SYNC, for the next CONNECT
    max_reflexive: int = 8  # addresses learned from the peer's PINGs, per attempt


def role_for_round(initiator: bool, round_: int) -> PunchRole:
    """Odd rounds: the initiator probes and the responder dials; even rounds swap [NAT-R42]."""
    prober = initiator if round_ % 2 == 1 else not initiator
    return PunchRole.PROBER if prober else PunchRole.DIALER


def sync_plan(connect_sent: float, answer_received: float) -> tuple[float, float]:
    """The initiator's timing [NAT-R41]: the RTT is the time from CONNECT to its answer,
    SYNC goes out at once, and the round starts RTT/2 after that, when SYNC arrives."""
    rtt = max(0.0, answer_received - connect_sent)
    return rtt, answer_received + rtt / 2


def round_deadline(start: float, rtt: float, config: PathConfig) -> float:
    """When a round without success ends [NAT-R42]."""
    last_probe = (config.dialer_probes - 1) * config.probe_interval
    return start + max(config.round_min, last_probe + 2 * rtt)


def probe_schedule(
    role: PunchRole, start: float, candidates: Sequence[Address], config: PathConfig
) -> list[tuple[float, Address]]:
    """The PINGs of one round [NAT-R43]: every candidate at ``start``, then every
    ``probe_interval``, 10 times for the dialer and 5 for the prober; in time order,
    candidates in their given order at each time."""
    count = config.dialer_probes if role is PunchRole.DIALER else config.prober_probes
    return [(start + n * config.probe_interval, addr) for n in range(count) for addr in candidates]


@dataclass(frozen=True, slots=True)
class PunchPlan:
    """One side's round, decided [NAT-R41] [NAT-R42] [NAT-R43]: its role, the RTT, when the
    round starts and ends, and its scheduled PINGs (time, address)."""

    role: PunchRole
    rtt: float
    start: float
    end: float
    probes: tuple[tuple[float, Address], ...]


def punch_plan(
    initiator: bool,
    round_: int,
    sent: float,
    answer: float,
    candidates: Sequence[Address],
    config: PathConfig | None = None,
) -> PunchPlan:
    """The plan of a round. The initiator wrote CONNECT at ``sent`` and read the answer at
    ``answer``; the responder wrote its CONNECT at ``sent`` and read SYNC at ``answer``.
    ``candidates`` are the peer's."""
    config = config or PathConfig()
    if initiator:
        rtt, start = sync_plan(sent, answer)
    else:
        rtt, start = max(0.0, answer - sent), answer
    role = role_for_round(initiator, round_)
    probes = tuple(probe_schedule(role, start, candidates, config))
    return PunchPlan(role, rtt, start, round_deadline(start, rtt, config), probes)


@dataclass(slots=True)
class _Outstanding:
    address: Address
    sent_at: float


class PathProbes:
    """One session's probes and direct path (sans-IO). See the module docstring.

    ``receive(datagram, addr, now)`` takes the PATH_PING and PATH_PONG datagrams whose
    session tag (``session_tag``, see ``peek_session_tag``) is this session's; it never
    raises: faults are counted in ``stats`` as ``rejected_<CODE>``.
    ``datagrams_to_send(now)`` gives ``(datagram, address)`` pairs for the UDP socket.
    ``direct`` is the validated direct path QUIC packets go to, None for the relay.
    """

    def __init__(
        self,
        keys: ProbeKeys,
        role: Role,
        network: bytes,
        rand: Rand,
        now: float,
        config: PathConfig | None = None,
    ) -> None:
        self.keys = keys
        self.role = role
        self.network = network
        self.config = config or PathConfig()
        self.direct: Address | None = None
        self.punch: Puncher | None = None
        self.stats: Counter[str] = Counter()
        self._rand = rand
        self._now = now
        self._outstanding: OrderedDict[bytes, _Outstanding] = OrderedDict()
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[PathEvent] = deque()
        self._srtt: float | None = None
        self._misses = 0
        self._waiting: float | None = None  # deadline of the keepalive probe in flight
        self._next_keepalive: float | None = None
        self._tokens = self.config.pong_burst
        self._refilled = now

    @classmethod
    def for_session(
        cls,
        keys: SessionKeys,
        network: bytes,
        rand: Rand,
        now: float,
        config: PathConfig | None = None,
    ) -> PathProbes:
        return cls(ProbeKeys.from_session(keys), keys.role, network, rand, now, config)

    @property
    def session_tag(self) -> bytes:
        return self.keys.tag

    # -- the sans-IO interface -------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        self._now = now
        try:
            probe = open_probe(self.keys, self.role, self.network, datagram)
        except NatError as exc:
            self.stats[f"rejected_{exc.code.name}"] += 1
            return
        if probe.kind == PATH_PING:
            if not self._allow(now):
                self.stats["rejected_NAT_PROBE_RATE_LIMITED"] += 1  # [NAT-R22]
                return
            self.stats["pongs_sent"] += 1
            self._send(PATH_PONG, probe.nonce, addr)
            if self.punch is not None:
                self.punch._ping_from(addr, now)
            return
        pending = self._outstanding.get(probe.nonce)
        stale = pending is not None and pending.sent_at <= now - self.config.outstanding_ttl
        if pending is None or pending.address != addr or stale:
            # Replayed, late, forged by someone who saw a PONG, or from elsewhere [NAT-R23].
            self.stats["rejected_NAT_PROBE_UNSOLICITED"] += 1
            return
        del self._outstanding[probe.nonce]
        self._validated(addr, max(0.0, now - pending.sent_at), probe.address, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        self._now = now
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        times = [t for t in (self._waiting, self._keepalive_due()) if t is not None]
        if self.punch is not None:
            at = self.punch.get_timer()
            if at is not None:
                times.append(at)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._waiting is not None and now >= self._waiting:
            self._waiting = None
            self._miss(now)
        due = self._keepalive_due()
        if due is not None and now >= due:
            self._keepalive(now)
        if self.punch is not None:
            self.punch._handle_timer(now)
        self._expire_outstanding(now)

    def next_event(self) -> PathEvent | None:
        return self._events.popleft() if self._events else None

    # -- application API -------------------------------------------------------------------

    def probe(self, addr: Address, now: float) -> bytes:
        """Send one PING to ``addr`` (validating a candidate path); returns its nonce."""
        self._now = now
        return self._ping(addr, now)

    def set_direct(self, addr: Address, now: float) -> None:
        """The session itself came up over ``addr`` (the QUIC handshake crossed it): make it
        the direct path and keep it alive."""
        self._now = now
        self.direct = addr
        self._misses = 0
        self._waiting = None
        self._next_keepalive = now + self.config.keepalive

    def suspect(self, now: float) -> None:
        """The runtime suspects the direct path (QUIC retransmits on it): probe it now."""
        self._now = now
        if self.direct is not None and self._waiting is None:
            self._keepalive(now)

    def forget_direct(self) -> None:
        self.direct = None
        self._waiting = None
        self._next_keepalive = None

    def start_punch(self, initiator: bool, candidates: Sequence[Address], now: float) -> Puncher:
        """Start a hole-punching attempt over this session (section 7). The initiator's
        CONNECT is queued at once; a responder is created when the peer opens the punch
        stream, and fed its frames."""
        if self.punch is not None and not self.punch.finished:
            raise LocalProtocolError(
                ErrorCode.NAT_UNEXPECTED_MESSAGE, "a punch attempt is already running", "NAT-R40"
            )
        self.punch = Puncher(self, initiator, candidates, now)
        return self.punch

    # -- internals -------------------------------------------------------------------------

    def _allow(self, now: float) -> bool:
        cfg = self.config
        self._tokens = min(cfg.pong_burst, self._tokens + (now - self._refilled) * cfg.pong_rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _send(self, kind: int, nonce: bytes, addr: Address) -> None:
        self._out.append((make_probe(self.keys, self.role, self.network, kind, nonce, addr), addr))

    def _ping(self, addr: Address, now: float) -> bytes:
        nonce = self._rand(PROBE_NONCE_SIZE)  # fresh for every PING [NAT-R23]
        self._outstanding[nonce] = _Outstanding(addr, now)
        while len(self._outstanding) > self.config.max_outstanding:
            self._outstanding.popitem(last=False)
        self.stats["pings_sent"] += 1
        self._send(PATH_PING, nonce, addr)
        return nonce

    def _expire_outstanding(self, now: float) -> None:
        while self._outstanding:
            pending = next(iter(self._outstanding.values()))
            if pending.sent_at > now - self.config.outstanding_ttl:
                break
            self._outstanding.popitem(last=False)

    def _timeout(self) -> float:
        cfg = self.config
        base = cfg.probe_timeout if self._srtt is None else max(cfg.probe_timeout, 3 * self._srtt)
        return min(cfg.probe_timeout_max, base)

    def _keepalive_due(self) -> float | None:
        if self.direct is None or self._waiting is not None:
            return None
        return self._next_keepalive

    def _keepalive(self, now: float) -> None:
        assert self.direct is not None
        self._ping(self.direct, now)
        self._waiting = now + self._timeout()

    def _miss(self, now: float) -> None:
        if self.direct is None:
            return
        self._misses += 1
        if self._misses >= self.config.max_misses:
            lost = self.direct
            self.forget_direct()
            self._misses = 0
            self.stats["paths_lost"] += 1
            self._events.append(PathLost(lost))
            return
        self._keepalive(now)  # retry at once

    def _validated(self, addr: Address, rtt: float, observed: Address, now: float) -> None:
        self._srtt = rtt if self._srtt is None else 0.875 * self._srtt + 0.125 * rtt
        if addr == self.direct:
            self._misses = 0
            self._waiting = None
            self._next_keepalive = now + self.config.keepalive
        elif self.direct is None:
            # Make before break: the direct path is used only once validated [NAT-R51].
            self.set_direct(addr, now)
            self.stats["paths_validated"] += 1
            self._events.append(PathValidated(addr, rtt, observed))
        if self.punch is not None:
            self.punch._validated(addr, now)


def peek_session_tag(datagram: bytes) -> bytes | None:
    """The session tag of a PATH_PING or PATH_PONG, unauthenticated: which ``PathProbes``
    the runtime hands the datagram to. None if it is not a probe."""
    if peek_control_type(datagram) not in (PATH_PING, PATH_PONG):
        return None
    try:
        message = codec.decode(datagram[CONTROL_HEADER_SIZE:], LIMITS)
    except CodecError:
        return None
    tag = message.get(1) if isinstance(message, dict) else None
    return tag if isinstance(tag, bytes) and len(tag) == TAG_SIZE else None


# ----------------------------------------------------------------------------- punching


class PunchState(Enum):
    IDLE = "idle"  # responder: waiting for a CONNECT
    WAIT_CONNECT = "wait-connect"  # initiator: CONNECT sent, waiting for the answer
    WAIT_SYNC = "wait-sync"  # responder: CONNECT answered, waiting for SYNC
    SCHEDULED = "scheduled"  # initiator: SYNC sent, starting RTT/2 later
    PUNCHING = "punching"  # a round is running
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Puncher:
    """One hole-punching attempt (sans-IO), owned by a session's ``PathProbes``.

    The punch stream: ``receive(frame, now)`` for every frame the peer writes on it,
    ``frames_to_send()`` for what to write, ``stream_closed(now)`` when the peer ends its
    side. PINGs go out through the ``PathProbes`` (its ``datagrams_to_send``), timers run
    through its ``get_timer``/``handle_timer``, events come out of its ``next_event``:
    ``PunchRoundStarted``, then ``PunchSucceeded`` or ``PunchFailed``. Once ``finished``,
    the runtime closes the stream (FIN after success, reset with the code after failure).

    State table (``(state, message) -> handler``; anything else is
    ``NAT_UNEXPECTED_MESSAGE``)::

        role       state         receives  -> sends  next state
        initiator  WAIT_CONNECT  CONNECT      SYNC   SCHEDULED (start after RTT/2)
        responder  IDLE          CONNECT      CONNECT WAIT_SYNC
        responder  PUNCHING      CONNECT      CONNECT WAIT_SYNC (the initiator moved on)
        responder  WAIT_SYNC     SYNC         -      PUNCHING (start now)
    """

    def __init__(
        self, paths: PathProbes, initiator: bool, candidates: Sequence[Address], now: float
    ) -> None:
        self._paths = paths
        self.config = paths.config
        self.initiator = initiator
        self.round = 0
        self.role: PunchRole | None = None
        self.state = PunchState.IDLE
        self.rtt = 0.0
        self.address: Address | None = None
        self.code: ErrorCode | None = None
        self.candidates = self._own(candidates)
        self.peer_candidates: tuple[Address, ...] = ()
        self._frames: list[bytes] = []
        self._schedule: deque[tuple[float, Address]] = deque()
        self._deadline: float | None = None
        self._start_at: float | None = None
        self._sent_at = now
        self._answered_at = now
        self._peer_done = False
        self._reflexive: dict[Address, None] = {}
        self._last_ping: dict[Address, float] = {}
        self._table: dict[tuple[PunchState, int], Callable[[dict[str, codec.Value], float], None]]
        self._table = {
            (PunchState.WAIT_CONNECT, PUNCH_CONNECT): self._on_answer,
            (PunchState.IDLE, PUNCH_CONNECT): self._on_connect,
            (PunchState.PUNCHING, PUNCH_CONNECT): self._on_connect,
            (PunchState.WAIT_SYNC, PUNCH_SYNC): self._on_sync,
        }
        if initiator:
            self._connect(now)
        else:
            self._deadline = now + self.config.message_timeout

    @property
    def finished(self) -> bool:
        return self.state in (PunchState.SUCCEEDED, PunchState.FAILED)

    @staticmethod
    def _own(candidates: Iterable[Address]) -> tuple[Address, ...]:
        kept = [a for a in dict.fromkeys(candidates) if _dialable(a)]
        return tuple(kept[:MAX_CANDIDATES])

    def update_candidates(self, candidates: Sequence[Address]) -> None:
        """Candidates for the next CONNECT (observed addresses may change between rounds)."""
        self.candidates = self._own(candidates)

    # -- the punch stream -------------------------------------------------------------------

    def receive(self, frame: bytes, now: float) -> None:
        """One frame of the punch stream. A fault ends the attempt (``PunchFailed`` with its
        code); nothing is raised."""
        if self.finished:
            return
        try:
            kind, fields = decode_message(Protocol.PUNCH, frame)
        except CodecError as exc:
            self._fail(ErrorCode.NAT_MALFORMED, f"bad punch message: {exc}")
            return
        if fields is None:
            return  # an unknown odd type [MSG-R3]
        handler = self._table.get((self.state, kind))
        if handler is None:
            name = MESSAGE_NAMES[Protocol.PUNCH][kind]
            self._fail(ErrorCode.NAT_UNEXPECTED_MESSAGE, f"{name} while {self.state.value}")
            return
        handler(fields, now)

    def frames_to_send(self) -> list[bytes]:
        out, self._frames = self._frames, []
        return out

    def stream_closed(self, now: float) -> None:
        """The peer ended its side of the punch stream: it has finished (or given up). A
        running round goes on to its end; no further round starts."""
        self._peer_done = True
        if not self.finished and self.state is not PunchState.PUNCHING:
            self._fail(ErrorCode.NAT_PUNCH_FAILED, "the peer ended the punch stream")

    def abort(self, now: float) -> None:
        if not self.finished:
            self._fail(ErrorCode.NAT_PUNCH_FAILED, "aborted")

    def get_timer(self) -> float | None:
        if self.finished:
            return None
        times = [t for t in (self._deadline, self._start_at) if t is not None]
        if self._schedule:
            times.append(self._schedule[0][0])
        return min(times, default=None)

    # -- handlers ----------------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        self.round += 1
        self.state = PunchState.WAIT_CONNECT
        self._sent_at = now
        self._deadline = now + self.config.message_timeout
        self._frames.append(encode_punch_connect(self.round, self.candidates))

    def _peer(self, fields: dict[str, codec.Value]) -> None:
        raw = fields["candidates"]
        assert isinstance(raw, list)
        addresses = (decode_address(a) for a in raw)
        self.peer_candidates = tuple(a for a in dict.fromkeys(addresses) if _dialable(a))

    def _on_answer(self, fields: dict[str, codec.Value], now: float) -> None:
        if _int(fields, "round") != self.round:
            self._fail(ErrorCode.NAT_UNEXPECTED_MESSAGE, "CONNECT answers another round")
            return
        self._peer(fields)
        self.rtt, start = sync_plan(self._sent_at, now)  # [NAT-R41]
        self._frames.append(encode_punch_sync(self.round))
        self.state = PunchState.SCHEDULED
        self._deadline = None
        self._start_at = start

    def _on_connect(self, fields: dict[str, codec.Value], now: float) -> None:
        if _int(fields, "round") != self.round + 1:
            self._fail(ErrorCode.NAT_UNEXPECTED_MESSAGE, "CONNECT out of round order")
            return
        self._schedule.clear()
        self.round += 1
        self._peer(fields)
        self._frames.append(encode_punch_connect(self.round, self.candidates))
        self.state = PunchState.WAIT_SYNC
        self._answered_at = now
        self._deadline = now + self.config.message_timeout

    def _on_sync(self, fields: dict[str, codec.Value], now: float) -> None:
        if _int(fields, "round") != self.round:
            self._fail(ErrorCode.NAT_UNEXPECTED_MESSAGE, "SYNC for another round")
            return
        # The time from our answer to SYNC is one round trip, as the initiator measured.
        self.rtt = max(0.0, now - self._answered_at)
        self._start(now)  # SYNC arrives when the initiator starts [NAT-R41]

    # -- rounds ------------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        self.state = PunchState.PUNCHING
        self._start_at = None
        self.role = role_for_round(self.initiator, self.round)
        self._schedule = deque(probe_schedule(self.role, now, self.peer_candidates, self.config))
        self._deadline = round_deadline(now, self.rtt, self.config)
        self._paths._events.append(
            PunchRoundStarted(self.round, self.role, now, self.rtt, self.peer_candidates)
        )
        self._fire(now)

    def _fire(self, now: float) -> None:
        while self._schedule and self._schedule[0][0] <= now and not self.finished:
            _, addr = self._schedule.popleft()
            self._last_ping[addr] = now
            self._paths._ping(addr, now)

    def _handle_timer(self, now: float) -> None:
        if self.finished:
            return
        if self._start_at is not None and now >= self._start_at:
            self._start(now)
            return
        self._fire(now)
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._timed_out(now)

    def _timed_out(self, now: float) -> None:
        if self.state is PunchState.PUNCHING:
            self._schedule.clear()
            if self.round >= MAX_ROUNDS or self._peer_done:
                self._fail(ErrorCode.NAT_PUNCH_FAILED, f"no direct path after {self.round} rounds")
            elif self.initiator:
                self._connect(now)  # the next round, roles swapped
            else:
                self.state = PunchState.IDLE
                self._deadline = now + self.config.message_timeout
            return
        self._fail(ErrorCode.NAT_PUNCH_TIMEOUT, f"the peer did not answer while {self.state.value}")

    def _ping_from(self, addr: Address, now: float) -> None:
        """An authenticated PING of the peer reached us from ``addr``: answer it with a PING
        of ours, since its NAT now lets our packets in from there (at most once per probe
        interval per address; addresses outside the candidates, the peer's mapping toward
        us, count against a cap) [NAT-R43]."""
        if self.finished or (self.state is PunchState.IDLE and self.round == 0):
            return
        if addr not in self.peer_candidates and addr not in self._reflexive:
            if len(self._reflexive) >= self.config.max_reflexive or not _dialable(addr):
                return
            self._reflexive[addr] = None
        last = self._last_ping.get(addr)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._last_ping[addr] = now
        self._paths._ping(addr, now)

    def _validated(self, addr: Address, now: float) -> None:
        if self.finished:
            return
        self.state = PunchState.SUCCEEDED
        self.address = addr
        self._schedule.clear()
        self._deadline = self._start_at = None
        self._paths._events.append(PunchSucceeded(addr, self.round, self.role))  # [NAT-R44]

    def _fail(self, code: ErrorCode, reason: str) -> None:
        self.state = PunchState.FAILED
        self.code = code
        self._schedule.clear()
        self._deadline = self._start_at = None
        self._paths._events.append(PunchFailed(self.round, code, reason))


# ----------------------------------------------------------------------------- reachability


class Mapping(Enum):
    """How the local NAT maps one socket toward different destinations [NAT-R12]."""

    UNKNOWN = "unknown"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ENDPOINT_DEPENDENT = "endpoint-dependent"


class Status(Enum):
    """Reachability [NAT-R16]: PUBLIC nodes serve the DHT and may relay; PRIVATE ones run
    the DHT in client mode and reserve relays; UNKNOWN ones behave as PRIVATE."""

    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class AddressConfirmed:
    """Enough distinct reporters see us at ``address``: it may be advertised [NAT-R10]."""

    address: Address
    reporters: int


@dataclass(frozen=True, slots=True)
class AddressRetracted:
    """``address`` lost its confirmation (reports expired or moved) [NAT-R11]."""

    address: Address


@dataclass(frozen=True, slots=True)
class MappingChanged:
    family: int
    mapping: Mapping


@dataclass(frozen=True, slots=True)
class DialBackDone:
    """A dial-back ended. ``ok``: its probe arrived. ``code``: ``NO_ERROR`` on success,
    ``NAT_DIAL_BACK_TIMEOUT`` (counts against reachability), or the helper's refusal
    code (counts for nothing)."""

    helper: bytes
    address: Address
    ok: bool
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class ReachabilityChanged:
    status: Status


ReachabilityEvent = (
    AddressConfirmed | AddressRetracted | MappingChanged | DialBackDone | ReachabilityChanged
)


@dataclass
class ReachabilityConfig:
    """Parameters of spec/04 section 4. Times in seconds."""

    confirmations: int = 3  # distinct reporters before an address is confirmed [NAT-R10]
    reporter_prefix_v4: int = 24  # reporters count once per IPv4 /24 ...
    reporter_prefix_v6: int = 48  # ... and per IPv6 /48 (32 and 128: per address)
    report_ttl: float = 600.0
    max_reporters: int = 256
    dial_back_timeout: float = 5.0
    dial_back_quorum: int = 2
    result_ttl: float = 1800.0


@dataclass(slots=True)
class _Report:
    reporter_addr: Address
    observed: Address
    at: float


@dataclass(slots=True)
class _Attempt:
    helper: bytes
    helper_addr: Address
    address: Address
    nonce: bytes
    deadline: float
    answered: bool = False


def confirmed_addresses(
    reports: Iterable[tuple[bytes, Address, Address]], config: ReachabilityConfig
) -> list[tuple[Address, int]]:
    """Which observed addresses are confirmed [NAT-R10], from the live latest report of
    each reporter ``(reporter peer ID, reporter address, observed address)``: those seen by
    at least ``confirmations`` reporters in distinct prefixes (loopback reporters count
    per peer ID). Most reporters first, then by address bytes and port."""
    groups: dict[Address, set[object]] = {}
    for reporter, reporter_addr, observed in reports:
        prefix = _prefix(reporter_addr[0], config.reporter_prefix_v4, config.reporter_prefix_v6)
        groups.setdefault(observed, set()).add(prefix if prefix is not None else reporter)
    out = [(addr, len(g)) for addr, g in groups.items() if len(g) >= config.confirmations]
    return sorted(out, key=lambda e: (-e[1], _packed(e[0][0]), e[0][1]))


def classify_mapping(reports: Iterable[tuple[Address, Address]]) -> Mapping:
    """The mapping behind a set of live reports ``(reporter address, observed address)``
    of one family [NAT-R12]: unknown below two distinct destinations, endpoint-dependent
    when two destinations saw different addresses, else endpoint-independent."""
    destinations: set[Address] = set()
    observed: set[Address] = set()
    for dest, seen in reports:
        destinations.add(dest)
        observed.add(seen)
    if len(destinations) < 2:
        return Mapping.UNKNOWN
    return Mapping.ENDPOINT_DEPENDENT if len(observed) > 1 else Mapping.ENDPOINT_INDEPENDENT


class Reachability:
    """Observed addresses, the NAT's mapping and the dial-back verdict (sans-IO).

    ``observe(reporter, reporter_addr, observed, now)`` for each address a peer reports
    (03-dht's ``ObservedAddress`` events, drained right after ``receive_datagram(data,
    addr)``: the reporter is at ``addr``). ``request_dial_back(...)`` gives the first frame
    of a ``starling/dial-back/1`` stream to a helper; its answer goes to
    ``receive_dial_back_response`` and DIAL_BACK control datagrams to ``receive_probe``.
    ``confirmed``, ``mapping(family)`` and ``status`` are the outputs; events report
    their changes.
    """

    def __init__(self, rand: Rand, now: float, config: ReachabilityConfig | None = None) -> None:
        self.config = config or ReachabilityConfig()
        self.status = Status.UNKNOWN
        self.stats: Counter[str] = Counter()
        self._rand = rand
        self._now = now
        self._reports: OrderedDict[bytes, _Report] = OrderedDict()
        self._confirmed: dict[Address, int] = {}
        self._mapping = {4: Mapping.UNKNOWN, 6: Mapping.UNKNOWN}
        self._attempts: dict[bytes, _Attempt] = {}  # by nonce
        self._by_helper: dict[bytes, bytes] = {}  # helper -> nonce
        # helper -> (ok, address, when, helper address): the latest verdict of each helper.
        self._results: dict[bytes, tuple[bool, Address, float, Address]] = {}
        self._events: deque[ReachabilityEvent] = deque()

    # -- observed addresses ----------------------------------------------------------------

    def observe(
        self, reporter: bytes, reporter_addr: Address, observed: Address, now: float
    ) -> None:
        """``reporter`` (a proven peer at ``reporter_addr``) saw us at ``observed``."""
        self._now = now
        if not _dialable(observed) or observed[1] == 0:
            self.stats["ignored_undialable"] += 1
            return
        self._reports.pop(reporter, None)  # a reporter's latest report replaces its earlier one
        self._reports[reporter] = _Report(reporter_addr, observed, now)
        while len(self._reports) > self.config.max_reporters:
            self._reports.popitem(last=False)
        self._update(now)

    @property
    def confirmed(self) -> list[Address]:
        """The confirmed addresses, most reporters first: what a peer record may list."""
        return list(self._confirmed)

    @property
    def confirmed_counts(self) -> list[tuple[Address, int]]:
        """The confirmed addresses with their counts of distinct reporters."""
        return list(self._confirmed.items())

    def mapping(self, family: int = 4) -> Mapping:
        return self._mapping[family]

    def _live(self, now: float) -> list[tuple[bytes, _Report]]:
        horizon = now - self.config.report_ttl
        return [(r, rep) for r, rep in self._reports.items() if rep.at > horizon]

    def _update(self, now: float) -> None:
        while self._reports:  # drop expired reports from the front (oldest first)
            reporter, oldest = next(iter(self._reports.items()))
            if oldest.at > now - self.config.report_ttl:
                break
            del self._reports[reporter]
        live = self._live(now)
        found = dict(
            confirmed_addresses(((r, p.reporter_addr, p.observed) for r, p in live), self.config)
        )
        for addr in self._confirmed:
            if addr not in found:
                self._events.append(AddressRetracted(addr))
        for addr, count in found.items():
            if addr not in self._confirmed:
                self._events.append(AddressConfirmed(addr, count))
        self._confirmed = found
        for family in (4, 6):
            mapping = classify_mapping(
                (p.reporter_addr, p.observed)
                for _, p in live
                if ipaddress.ip_address(p.observed[0]).version == family
            )
            if mapping is not self._mapping[family]:
                self._mapping[family] = mapping
                self._events.append(MappingChanged(family, mapping))
        self._decide(now)

    # -- dial-back ----------------------------------------------------------------------------

    def request_dial_back(
        self, helper: bytes, helper_addr: Address, address: Address, now: float
    ) -> bytes:
        """The DIAL_REQUEST to write on a new ``starling/dial-back/1`` stream to ``helper``
        (whose session comes from ``helper_addr``), asking for a probe to ``address``."""
        self._now = now
        if helper in self._by_helper:
            raise LocalProtocolError(
                ErrorCode.NAT_UNEXPECTED_MESSAGE, "a dial-back with this helper is running"
            )
        nonce = self._rand(DIAL_NONCE_SIZE)
        deadline = now + self.config.dial_back_timeout
        self._attempts[nonce] = _Attempt(helper, helper_addr, address, nonce, deadline)
        self._by_helper[helper] = nonce
        return encode_dial_request(nonce, address)

    def awaiting_response(self, helper: bytes) -> bool:
        """Whether a dial-back asked of ``helper`` still waits for its DIAL_RESPONSE (its
        probe may come first and settle the attempt: the response is then moot)."""
        nonce = self._by_helper.get(helper)
        attempt = self._attempts.get(nonce) if nonce is not None else None
        return attempt is not None and not attempt.answered

    def receive_dial_back_response(self, helper: bytes, frame: bytes, now: float) -> None:
        """The helper's DIAL_RESPONSE. Raises ``NatError`` for a bad frame (the runtime
        resets the stream with its code); the attempt then ends without a verdict."""
        self._now = now
        nonce = self._by_helper.get(helper)
        attempt = self._attempts.get(nonce) if nonce is not None else None
        if attempt is None:
            raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "no dial-back asked", "NAT-R13")
        try:
            kind, fields = decode_message(Protocol.DIAL_BACK, frame)
        except CodecError as exc:
            self._end(attempt, False, ErrorCode.NAT_MALFORMED, counted=False)
            raise _malformed(exc, "dial-back response") from None
        if fields is None:
            return
        if kind != DIAL_RESPONSE or attempt.answered:
            self._end(attempt, False, ErrorCode.NAT_UNEXPECTED_MESSAGE, counted=False)
            raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "not a DIAL_RESPONSE", "NAT-R13")
        code = _int(fields, "code")
        if "observed" in fields:  # over an authenticated session: a report like any other
            self.observe(helper, attempt.helper_addr, _address_field(fields, "observed"), now)
        if code != ErrorCode.NO_ERROR:
            refused = _code(code) or ErrorCode.NAT_DIAL_BACK_NOT_SERVING
            self._end(attempt, False, refused, counted=False)
            return
        attempt.answered = True  # the probe is on its way; wait for it until the deadline

    def dial_back_failed(self, helper: bytes, now: float) -> None:
        """The stream or session to ``helper`` failed: the attempt ends without a verdict."""
        self._now = now
        nonce = self._by_helper.get(helper)
        attempt = self._attempts.get(nonce) if nonce is not None else None
        if attempt is not None:
            self._end(attempt, False, ErrorCode.NAT_DIAL_BACK_NOT_SERVING, counted=False)

    def receive_probe(self, datagram: bytes, addr: Address, now: float) -> bool:
        """A DIAL_BACK control datagram reached the node's socket from ``addr``. True when
        it settled an attempt of ours [NAT-R15]. Never raises."""
        self._now = now
        try:
            kind, fields = decode_message(Protocol.CONTROL, datagram[CONTROL_HEADER_SIZE:])
        except CodecError:
            self.stats["rejected_NAT_MALFORMED"] += 1
            return False
        if fields is None or kind != DIAL_BACK_PROBE:
            self.stats["rejected_NAT_UNEXPECTED_MESSAGE"] += 1
            return False
        attempt = self._attempts.get(_bytes(fields, "nonce"))
        if attempt is None:
            self.stats["rejected_NAT_PROBE_UNSOLICITED"] += 1
            return False
        if addr == attempt.helper_addr:
            # Through the mapping our own session opened toward the helper: proves nothing.
            self.stats["dial_back_same_source"] += 1
            return False
        self._end(attempt, True, ErrorCode.NO_ERROR, counted=True)
        return True

    def _end(self, attempt: _Attempt, ok: bool, code: ErrorCode, counted: bool) -> None:
        self._attempts.pop(attempt.nonce, None)
        self._by_helper.pop(attempt.helper, None)
        if counted:
            self._results[attempt.helper] = (ok, attempt.address, self._now, attempt.helper_addr)
        self._events.append(DialBackDone(attempt.helper, attempt.address, ok, code))
        self._decide(self._now)

    def _decide(self, now: float) -> None:
        """PUBLIC: probes from ``quorum`` helpers in distinct prefixes arrived at a confirmed
        address; PRIVATE: not PUBLIC, and ``quorum`` such helpers timed out [NAT-R16]."""
        cfg = self.config
        horizon = now - cfg.result_ttl
        for helper in [h for h, r in self._results.items() if r[2] <= horizon]:
            del self._results[helper]

        def distinct(ok: bool) -> int:
            groups: set[object] = set()
            for helper, (good, address, _, helper_addr) in self._results.items():
                if good == ok and (not ok or address in self._confirmed):
                    prefix = _prefix(helper_addr[0], cfg.reporter_prefix_v4, cfg.reporter_prefix_v6)
                    groups.add(prefix if prefix is not None else helper)
            return len(groups)

        if distinct(True) >= cfg.dial_back_quorum:
            status = Status.PUBLIC
        elif distinct(False) >= cfg.dial_back_quorum:
            status = Status.PRIVATE
        else:
            status = Status.UNKNOWN
        if status is not self.status:
            self.status = status
            self._events.append(ReachabilityChanged(status))

    # -- sans-IO plumbing ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [a.deadline for a in self._attempts.values()]
        if self._reports:
            times.append(next(iter(self._reports.values())).at + self.config.report_ttl)
        if self._results:
            times.append(min(r[2] for r in self._results.values()) + self.config.result_ttl)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        for attempt in [a for a in self._attempts.values() if a.deadline <= now]:
            self._end(attempt, False, ErrorCode.NAT_DIAL_BACK_TIMEOUT, counted=True)
        self._update(now)

    def next_event(self) -> ReachabilityEvent | None:
        return self._events.popleft() if self._events else None


@dataclass(frozen=True, slots=True)
class DialBackReply:
    """What a helper does with one request: write ``response`` on the stream (then end it),
    and, when ``probe`` is set, send it to ``to`` (from another port or address than the
    session's when it has one) [NAT-R14]."""

    response: bytes
    code: ErrorCode
    probe: bytes | None = None
    to: Address | None = None


@dataclass
class DialBackConfig:
    serving: bool = True
    per_ip_rate: float = 0.1  # probes per second per requester IP (IPv6: per /64) ...
    per_ip_burst: float = 3.0  # ... with this burst
    rate: float = 20.0  # probes per second in all ...
    burst: float = 40.0  # ... with this burst


class DialBackServer:
    """The helper side of ``starling/dial-back/1`` (sans-IO, no timers)."""

    def __init__(self, network: bytes, now: float, config: DialBackConfig | None = None) -> None:
        self.network = network
        self.config = config or DialBackConfig()
        self.stats: Counter[str] = Counter()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._global = (self.config.burst, now)

    def handle(self, frame: bytes, observed: Address, now: float) -> DialBackReply:
        """Answer the DIAL_REQUEST ``frame`` of a requester whose session comes from
        ``observed``. Checks in the order of section 4.4: the message, serving, the
        address's IP [NAT-R13], the rates [NAT-R14]."""
        try:
            kind, fields = decode_message(Protocol.DIAL_BACK, frame)
        except CodecError:
            return self._refuse(ErrorCode.NAT_MALFORMED, observed)
        if fields is None or kind != DIAL_REQUEST:
            return self._refuse(ErrorCode.NAT_UNEXPECTED_MESSAGE, observed)
        if not self.config.serving:
            return self._refuse(ErrorCode.NAT_DIAL_BACK_NOT_SERVING, observed)
        try:
            target = check_dial_back(observed, _address_field(fields, "address"))
        except NatError as exc:
            return self._refuse(exc.code, observed)
        if not self._allow(observed[0], now):
            return self._refuse(ErrorCode.NAT_DIAL_BACK_RATE_LIMITED, observed)
        self.stats["probes_sent"] += 1
        probe = dial_back_probe(self.network, _bytes(fields, "nonce"))
        return DialBackReply(encode_dial_response(0, observed), ErrorCode.NO_ERROR, probe, target)

    def _refuse(self, code: ErrorCode, observed: Address) -> DialBackReply:
        self.stats[f"refused_{code.name}"] += 1
        return DialBackReply(encode_dial_response(code, observed), code)

    def _allow(self, ip: str, now: float) -> bool:
        cfg = self.config
        key = _prefix(ip, 32, 64) or ip
        tokens, last = self._buckets.get(key, (cfg.per_ip_burst, now))
        tokens = min(cfg.per_ip_burst, tokens + (now - last) * cfg.per_ip_rate)
        total, glast = self._global
        total = min(cfg.burst, total + (now - glast) * cfg.rate)
        if tokens < 1 or total < 1:
            self._buckets[key] = (tokens, now)
            self._global = (total, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > 10000:
            self._buckets.popitem(last=False)
        self._global = (total - 1, now)
        return True


def check_dial_back(observed: Address, requested: Address) -> Address:
    """Where a helper may send a dial-back probe [NAT-R13]: only to the IP the requester's
    session comes from (any port); another IP is refused with ``NAT_DIAL_BACK_ADDRESS``."""
    if _packed(requested[0]) != _packed(observed[0]):
        raise NatError(
            ErrorCode.NAT_DIAL_BACK_ADDRESS,
            f"dial-back to {requested[0]} asked from {observed[0]}",
            "NAT-R13",
        )
    return (str(ipaddress.ip_address(_packed(observed[0]))), requested[1])


# ----------------------------------------------------------------------------- vouchers

_VOUCHER_FIELDS = (
    _F(1, "relay", bytes, size=ID_SIZE),
    _F(2, "peer", bytes, size=ID_SIZE),
    _F(3, "expires", int, minimum=0),
)


@dataclass(frozen=True, slots=True)
class Voucher:
    """A verified voucher: ``relay`` holds a reservation for ``peer`` until ``expires``
    (Unix seconds). ``raw`` is the envelope exactly as carried."""

    relay: bytes
    peer: bytes
    expires: int
    raw: bytes


def make_voucher(relay: PrivateKey, peer: bytes, expires: int) -> bytes:
    """The envelope under ``starling/relay-voucher/1`` of ``{1: relay ID, 2: peer ID,
    3: expires}`` [NAT-R32]."""
    payload = codec.encode({1: relay.peer_id.raw, 2: bytes(peer), 3: int(expires)})
    return seal(relay, VOUCHER_DOMAIN, payload)


def verify_voucher(raw: bytes, relay: bytes, peer: bytes, now_unix: float) -> Voucher:
    """Check a voucher as the steps of section 6.3 order them [NAT-R33]:
    ``NAT_VOUCHER_INVALID`` (too large, an envelope, payload, key or signature fault, or a
    signer that is not the relay the payload names), ``NAT_VOUCHER_MISMATCH`` (another
    relay or another peer than expected), ``NAT_VOUCHER_EXPIRED``."""
    raw = bytes(raw)
    if len(raw) > MAX_VOUCHER:
        raise NatError(ErrorCode.NAT_VOUCHER_INVALID, f"voucher of {len(raw)} bytes", "NAT-R33")
    try:
        envelope = open_envelope(raw, VOUCHER_DOMAIN, _VOUCHER_LIMITS)
        fields = codec.read_fields(
            codec.decode(envelope.payload, _VOUCHER_LIMITS), _VOUCHER_FIELDS, "voucher"
        )
    except StarlingError as exc:
        raise NatError(
            ErrorCode.NAT_VOUCHER_INVALID, f"voucher does not verify: {exc}", "NAT-R33"
        ) from None
    named, holder, expires = (
        _bytes(fields, "relay"),
        _bytes(fields, "peer"),
        _int(fields, "expires"),
    )
    if envelope.signer_id.raw != named:
        raise NatError(
            ErrorCode.NAT_VOUCHER_INVALID, "signed by another key than its relay's", "NAT-R33"
        )
    if named != bytes(relay):
        raise NatError(ErrorCode.NAT_VOUCHER_MISMATCH, "a voucher of another relay", "NAT-R33")
    if holder != bytes(peer):
        raise NatError(ErrorCode.NAT_VOUCHER_MISMATCH, "a voucher for another peer", "NAT-R33")
    if expires <= now_unix:
        raise NatError(ErrorCode.NAT_VOUCHER_EXPIRED, f"expired at {expires}", "NAT-R33")
    return Voucher(named, holder, expires, raw)


# ----------------------------------------------------------------------------- relay core


@dataclass(frozen=True, slots=True)
class OutboundStream:
    """A stream the relay core asks the runtime to open (toward a circuit's target)."""

    id: int


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` as one frame on ``stream``."""

    stream: Hashable
    data: bytes


@dataclass(frozen=True, slots=True)
class Open:
    """Open a ``starling/relay/1`` stream to ``peer`` over the relay's session with it, send
    ``data`` as its first frame after the stream header, and from then on feed the
    stream's frames to ``RelayCore.receive(stream, ...)``. If it cannot be opened, call
    ``stream_closed(stream, NAT_RELAY_TARGET_UNREACHABLE, ...)``."""

    stream: OutboundStream
    peer: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """End ``stream``: FIN after the frames already sent when ``code`` is 0, else
    RESET_STREAM and STOP_SENDING with ``code``."""

    stream: Hashable
    code: int


RelayAction = Send | Open | Close


@dataclass(frozen=True, slots=True)
class ReservationGranted:
    peer: bytes
    expires: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class ReservationRefused:
    peer: bytes
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class CircuitOpened:
    circuit: int
    source: bytes
    target: bytes


@dataclass(frozen=True, slots=True)
class CircuitClosed:
    """A circuit ended (or never opened): ``code`` says why; ``forwarded`` bytes per
    direction (source to target, target to source)."""

    circuit: int
    source: bytes
    target: bytes
    code: ErrorCode
    forwarded: tuple[int, int]


RelayEvent = ReservationGranted | ReservationRefused | CircuitOpened | CircuitClosed


@dataclass
class RelayConfig:
    """A relay's limits (spec/04 section 6.6). Times in seconds, data in bytes."""

    serving: bool = True  # only while Reachability says PUBLIC [NAT-R16]
    reservation_ttl: int = 3600
    max_reservations: int = 128
    max_reservations_per_ip: int = 4  # per IPv4 address or IPv6 /64
    circuit_duration: int = 1800
    circuit_data: int = 64 << 20  # per direction
    max_circuits: int = 256
    max_circuits_per_peer: int = 16  # as a source, and as a target
    connect_timeout: float = 10.0
    max_packet: int = MAX_PACKET


class _Kind(Enum):
    INBOUND = "inbound"  # opened by a client: RESERVE or CONNECT
    OUTBOUND = "outbound"  # opened by the relay toward a circuit's target


class _St(Enum):
    NEW = "new"
    DONE = "done"  # answered, ending
    WAITING = "waiting"  # a circuit waits for its target's STATUS
    FORWARDING = "forwarding"


@dataclass(slots=True)
class _Stream:
    handle: Hashable
    kind: _Kind
    peer: bytes
    ip: str
    state: _St = _St.NEW
    circuit: _Circuit | None = None


@dataclass(slots=True)
class _Circuit:
    id: int
    source: _Stream
    target: _Stream
    opened: float = 0.0
    forwarded: list[int] = field(default_factory=lambda: [0, 0])
    open: bool = False


@dataclass(slots=True)
class _Reservation:
    peer: bytes
    ip_key: str
    expires: float  # on the caller's clock
    expires_unix: int


class RelayCore:
    """A relay's reservations and circuits (sans-IO).

    The runtime calls ``accept_stream(stream, peer, ip, now)`` for every
    ``starling/relay/1`` stream a peer opens (``ip``: its session's remote IP), then
    ``receive(stream, frame, now)`` for each frame, ``stream_closed(stream, code, now)``
    when the peer ends or resets it, and ``session_closed(peer, now)`` when a session
    ends. It carries out ``actions(now)`` in order (``Send``, ``Open``, ``Close``), and
    re-arms ``get_timer()``. ``next_event()`` reports grants, refusals and circuits.
    Nothing raises for bad input: every fault ends the stream or circuit concerned with
    its code, and nothing else [NAT-R36].
    """

    def __init__(
        self,
        identity: PrivateKey,
        now: float,
        config: RelayConfig | None = None,
        epoch_offset: float = 0.0,
    ) -> None:
        self.identity = identity
        self.relay_id = identity.peer_id.raw
        self.config = config or RelayConfig()
        self.epoch_offset = epoch_offset
        self.stats: Counter[str] = Counter()
        self._now = now
        self._streams: dict[Hashable, _Stream] = {}
        self._reservations: dict[bytes, _Reservation] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._ids = itertools.count(1)
        self._actions: list[RelayAction] = []
        self._events: deque[RelayEvent] = deque()
        self._timers: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._handlers: dict[
            tuple[_Kind, _St, int], Callable[[_Stream, dict[str, codec.Value], float], None]
        ] = {
            (_Kind.INBOUND, _St.NEW, RESERVE): self._on_reserve,
            (_Kind.INBOUND, _St.NEW, CONNECT): self._on_connect,
            (_Kind.OUTBOUND, _St.WAITING, STATUS): self._on_target_status,
        }

    # -- views -----------------------------------------------------------------------------

    def reservation(self, peer: bytes) -> tuple[int, float] | None:
        """(Unix expiry, expiry on the caller's clock) of ``peer``'s live reservation."""
        held = self._reservations.get(peer)
        if held is None or held.expires <= self._now:
            return None
        return held.expires_unix, held.expires

    @property
    def reservations(self) -> int:
        return sum(1 for r in self._reservations.values() if r.expires > self._now)

    @property
    def circuits(self) -> int:
        return len(self._circuits)

    def forwarded(self, circuit: int) -> tuple[int, int] | None:
        """Bytes an open circuit forwarded so far: source to target, target to source."""
        held = self._circuits.get(circuit)
        return None if held is None else (held.forwarded[0], held.forwarded[1])

    # -- the sans-IO interface ---------------------------------------------------------------

    def accept_stream(self, stream: Hashable, peer: bytes, ip: str, now: float) -> None:
        self._now = now
        self._streams[stream] = _Stream(stream, _Kind.INBOUND, bytes(peer), ip)

    def receive(self, stream: Hashable, frame: bytes, now: float) -> None:
        self._now = now
        st = self._streams.get(stream)
        if st is None:
            self.stats["dropped_unknown_stream"] += 1
            return
        if st.state is _St.FORWARDING:
            self._forward(st, frame)
            return
        try:
            kind, fields = decode_message(Protocol.RELAY, frame)
        except CodecError as exc:
            self.stats[f"rejected_{exc.code.name}"] += 1
            self._fault(st, ErrorCode.NAT_MALFORMED)  # [NAT-R2]
            return
        if fields is None:
            self.stats["ignored_unknown_type"] += 1
            return
        handler = self._handlers.get((st.kind, st.state, kind))
        if handler is None:
            self._fault(st, ErrorCode.NAT_UNEXPECTED_MESSAGE)
            return
        handler(st, fields, now)

    def stream_closed(self, stream: Hashable, code: int, now: float) -> None:
        """The peer ended ``stream`` (FIN: ``code`` 0) or reset it, or it could not be opened."""
        self._now = now
        st = self._streams.pop(stream, None)
        if st is None:
            return
        circuit = st.circuit
        if circuit is None:
            return
        if not circuit.open and st is circuit.target:
            # The target refused by reset, or could not be reached.
            self._answer(circuit.source, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
            self._end(circuit, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, skip=st)
            return
        self._end(circuit, _code(code) or ErrorCode.NO_ERROR, skip=st, close_code=int(code))

    def session_closed(self, peer: bytes, now: float) -> None:
        """The session with ``peer`` ended: its reservation and its streams go with it."""
        self._now = now
        self._reservations.pop(peer, None)
        for st in [s for s in self._streams.values() if s.peer == peer]:
            self._streams.pop(st.handle, None)
            circuit = st.circuit
            if circuit is not None:
                if not circuit.open and st is circuit.target:
                    self._answer(circuit.source, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
                self._end(circuit, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, skip=st)

    def actions(self, now: float) -> list[RelayAction]:
        self._now = now
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, ref = heapq.heappop(self._timers)
            if kind == "reservation":
                assert isinstance(ref, bytes)
                held = self._reservations.get(ref)
                if held is not None and held.expires <= now:
                    del self._reservations[ref]
                    self.stats["reservations_expired"] += 1
            elif kind == "connect":
                assert isinstance(ref, int)
                circuit = self._circuits.get(ref)
                if circuit is not None and not circuit.open:
                    self._answer(circuit.source, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
                    self._end(circuit, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
            elif kind == "duration":
                assert isinstance(ref, int)
                circuit = self._circuits.get(ref)
                if circuit is not None and circuit.open:
                    self._end(circuit, ErrorCode.NAT_RELAY_DURATION_LIMIT)  # [NAT-R36]

    def next_event(self) -> RelayEvent | None:
        return self._events.popleft() if self._events else None

    # -- reservations ----------------------------------------------------------------------

    def _ip_key(self, ip: str) -> str:
        return _prefix(ip, 32, 64) or ip

    def admit(self, peer: bytes, ip: str, now: float) -> ErrorCode:
        """Whether a RESERVE from ``peer`` at ``ip`` is granted, in the order of section 6.2
        [NAT-R31]: serving, the per-IP cap, the total cap. A renewal never counts twice."""
        cfg = self.config
        if not cfg.serving:
            return ErrorCode.NAT_RELAY_NOT_SERVING
        live = {p: r for p, r in self._reservations.items() if r.expires > now and p != peer}
        key = self._ip_key(ip)
        if sum(1 for r in live.values() if r.ip_key == key) >= cfg.max_reservations_per_ip:
            return ErrorCode.NAT_RELAY_IP_LIMIT
        if len(live) >= cfg.max_reservations:
            return ErrorCode.NAT_RELAY_RESERVATION_LIMIT
        return ErrorCode.NO_ERROR

    def reserve(self, peer: bytes, ip: str, now: float) -> bytes:
        """Grant (or renew) ``peer``'s reservation; the RESERVATION frame with its voucher."""
        cfg = self.config
        expires_unix = int(now + self.epoch_offset) + cfg.reservation_ttl
        expires = now + cfg.reservation_ttl
        self._reservations[peer] = _Reservation(peer, self._ip_key(ip), expires, expires_unix)
        heapq.heappush(self._timers, (expires, next(self._seq), "reservation", peer))
        voucher = make_voucher(self.identity, peer, expires_unix)  # [NAT-R32]
        self.stats["reservations_granted"] += 1
        self._events.append(ReservationGranted(peer, expires_unix))
        return encode_reservation(expires_unix, cfg.circuit_duration, cfg.circuit_data, voucher)

    def _on_reserve(self, st: _Stream, fields: dict[str, codec.Value], now: float) -> None:
        code = self.admit(st.peer, st.ip, now)
        if code:
            self.stats[f"refused_{code.name}"] += 1
            self._events.append(ReservationRefused(st.peer, code))
            self._answer(st, code)
            return
        self._actions.append(Send(st.handle, self.reserve(st.peer, st.ip, now)))
        self._finish(st, 0)

    # -- circuits --------------------------------------------------------------------------

    def check_connect(self, source: bytes, target: bytes, now: float) -> ErrorCode:
        """Whether a CONNECT from ``source`` to ``target`` may open a circuit, in the order
        of section 6.4 [NAT-R34]."""
        cfg = self.config
        if not cfg.serving:
            return ErrorCode.NAT_RELAY_NOT_SERVING
        if target == source:
            return ErrorCode.NAT_UNEXPECTED_MESSAGE
        held = self._reservations.get(target)
        if held is None or held.expires <= now:
            return ErrorCode.NAT_RELAY_NO_RESERVATION
        if len(self._circuits) >= cfg.max_circuits:
            return ErrorCode.NAT_RELAY_CIRCUIT_LIMIT
        as_target = sum(1 for c in self._circuits.values() if c.target.peer == target)
        as_source = sum(1 for c in self._circuits.values() if c.source.peer == source)
        if max(as_target, as_source) >= cfg.max_circuits_per_peer:
            return ErrorCode.NAT_RELAY_CIRCUIT_LIMIT
        return ErrorCode.NO_ERROR

    def _on_connect(self, st: _Stream, fields: dict[str, codec.Value], now: float) -> None:
        target = _bytes(fields, "peer")
        code = self.check_connect(st.peer, target, now)
        if code:
            self.stats[f"refused_{code.name}"] += 1
            self._answer(st, code)
            return
        cfg = self.config
        circuit_id = next(self._ids)
        out = OutboundStream(circuit_id)
        dst = _Stream(out, _Kind.OUTBOUND, target, "", _St.WAITING)
        circuit = _Circuit(circuit_id, st, dst)
        st.state, st.circuit, dst.circuit = _St.WAITING, circuit, circuit
        self._streams[out] = dst
        self._circuits[circuit_id] = circuit
        frame = encode_incoming(st.peer, cfg.circuit_duration, cfg.circuit_data)
        self._actions.append(Open(out, target, frame))
        heapq.heappush(
            self._timers, (now + cfg.connect_timeout, next(self._seq), "connect", circuit_id)
        )

    def _on_target_status(self, st: _Stream, fields: dict[str, codec.Value], now: float) -> None:
        circuit = st.circuit
        assert circuit is not None
        if _int(fields, "code") != ErrorCode.NO_ERROR:
            self._answer(circuit.source, ErrorCode.NAT_RELAY_TARGET_REFUSED)
            self._end(circuit, ErrorCode.NAT_RELAY_TARGET_REFUSED, close_code=0)
            return
        cfg = self.config
        circuit.open = True
        circuit.opened = now
        circuit.source.state = st.state = _St.FORWARDING
        status = encode_status(0, cfg.circuit_duration, cfg.circuit_data)
        self._actions.append(Send(circuit.source.handle, status))
        heapq.heappush(
            self._timers, (now + cfg.circuit_duration, next(self._seq), "duration", circuit.id)
        )
        self.stats["circuits_opened"] += 1
        self._events.append(CircuitOpened(circuit.id, circuit.source.peer, circuit.target.peer))

    def _forward(self, st: _Stream, frame: bytes) -> None:
        """One packet of a circuit: forwarded unchanged, within its limits [NAT-R35]."""
        circuit = st.circuit
        assert circuit is not None
        size = len(frame)
        if not 0 < size <= self.config.max_packet:
            self._end(circuit, ErrorCode.NAT_RELAY_PACKET_SIZE)
            return
        direction = 0 if st is circuit.source else 1
        if circuit.forwarded[direction] + size > self.config.circuit_data:
            self._end(circuit, ErrorCode.NAT_RELAY_DATA_LIMIT)  # [NAT-R36]
            return
        circuit.forwarded[direction] += size
        other = circuit.target if direction == 0 else circuit.source
        self.stats["forwarded_packets"] += 1
        self.stats["forwarded_bytes"] += size
        self._actions.append(Send(other.handle, frame))

    # -- endings ----------------------------------------------------------------------------

    def _answer(self, st: _Stream, code: ErrorCode) -> None:
        """Refuse on ``st``: a STATUS with ``code``, then FIN."""
        self._actions.append(Send(st.handle, encode_status(code)))
        self._finish(st, 0)

    def _finish(self, st: _Stream, code: int) -> None:
        st.state = _St.DONE
        self._actions.append(Close(st.handle, int(code)))
        self._streams.pop(st.handle, None)

    def _fault(self, st: _Stream, code: ErrorCode) -> None:
        """A bad frame on ``st``: a STATUS and FIN on a stream still in its message phase
        (the client learns why), and the circuit, if any, ends with ``code``."""
        circuit = st.circuit
        if circuit is None:
            self._answer(st, code)
            return
        if st is circuit.target and not circuit.open:
            self._answer(circuit.source, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
        self._end(circuit, code)

    def _end(
        self,
        circuit: _Circuit,
        code: ErrorCode,
        skip: _Stream | None = None,
        close_code: int | None = None,
    ) -> None:
        """Close both streams of ``circuit`` (but ``skip``, already gone) with ``code`` (or
        ``close_code``), and forget it. Other circuits are untouched [NAT-R36]."""
        if self._circuits.pop(circuit.id, None) is None:
            return
        wire = int(code) if close_code is None else close_code
        for st in (circuit.source, circuit.target):
            if st is not skip and st.handle in self._streams:
                self._finish(st, wire)
        if circuit.open or code is not ErrorCode.NO_ERROR:
            self.stats[f"circuits_closed_{code.name}"] += 1
        self._events.append(
            CircuitClosed(
                circuit.id,
                circuit.source.peer,
                circuit.target.peer,
                code,
                (circuit.forwarded[0], circuit.forwarded[1]),
            )
        )


# ----------------------------------------------------------------------------- relay clients


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted reservation, its voucher verified [NAT-R33]."""

    relay: bytes
    expires: int  # Unix seconds
    duration: int  # each circuit's limit, seconds
    data: int  # each circuit's limit per direction, bytes
    voucher: Voucher


@dataclass(frozen=True, slots=True)
class RelayRefused:
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class CircuitReady:
    """The circuit is open: every frame from now on is one packet [NAT-R35]."""

    duration: int
    data: int


@dataclass(frozen=True, slots=True)
class IncomingCircuit:
    """The relay offers a circuit from ``source``: ``accept()`` or ``refuse(code)``."""

    source: bytes
    duration: int
    data: int


@dataclass(frozen=True, slots=True)
class RelayedPacket:
    data: bytes


RelayClientEvent = Reservation | RelayRefused | CircuitReady | IncomingCircuit | RelayedPacket


class _Client(Enum):
    RESERVING = "reserving"  # RESERVE sent
    CONNECTING = "connecting"  # CONNECT sent
    OFFERED = "offered"  # relay opened the stream; waiting for INCOMING
    DECIDING = "deciding"  # INCOMING received, not yet accepted
    FORWARDING = "forwarding"
    DONE = "done"


class RelayStream:
    """The client side of one ``starling/relay/1`` stream (sans-IO).

    Made by ``reserve`` (our stream: RESERVE), ``connect`` (our stream: CONNECT) or
    ``offered`` (a stream the relay opened to us). ``receive(frame, now_unix)`` returns
    the event a frame brings, raising ``NatError`` for a frame the state does not allow
    (the runtime resets the stream with its code). ``packet(data)`` frames an outgoing
    packet once forwarding.
    """

    def __init__(self, relay: bytes, own: bytes, state: _Client, target: bytes | None = None):
        self.relay = bytes(relay)
        self.own = bytes(own)
        self.target = target
        self.state = state
        self.source: bytes | None = None

    @classmethod
    def reserve(cls, relay: bytes, own: bytes) -> tuple[RelayStream, bytes]:
        return cls(relay, own, _Client.RESERVING), encode_reserve()

    @classmethod
    def connect(cls, relay: bytes, own: bytes, target: bytes) -> tuple[RelayStream, bytes]:
        return cls(relay, own, _Client.CONNECTING, bytes(target)), encode_connect(target)

    @classmethod
    def offered(cls, relay: bytes, own: bytes) -> RelayStream:
        return cls(relay, own, _Client.OFFERED)

    @property
    def forwarding(self) -> bool:
        return self.state is _Client.FORWARDING

    def receive(self, frame: bytes, now_unix: float) -> RelayClientEvent | None:
        if self.state is _Client.FORWARDING:
            return RelayedPacket(bytes(frame))
        try:
            kind, fields = decode_message(Protocol.RELAY, frame)
        except CodecError as exc:
            self.state = _Client.DONE
            raise _malformed(exc, "relay message") from None
        if fields is None:
            return None
        expected = {
            _Client.RESERVING: (RESERVATION, STATUS),
            _Client.CONNECTING: (STATUS,),
            _Client.OFFERED: (INCOMING,),
        }.get(self.state, ())
        if kind not in expected:
            name, state = MESSAGE_NAMES[Protocol.RELAY][kind], self.state.value
            self.state = _Client.DONE
            raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, f"{name} while {state}", "NAT-R34")
        if kind == STATUS:
            code = _int(fields, "code")
            if code != 0 or self.state is _Client.RESERVING:
                self.state = _Client.DONE
                return RelayRefused(_code(code) or ErrorCode.NAT_UNEXPECTED_MESSAGE)
            if "duration" not in fields or "data" not in fields:
                self.state = _Client.DONE
                raise NatError(ErrorCode.NAT_MALFORMED, "STATUS 0 without limits", "NAT-R34")
            self.state = _Client.FORWARDING
            return CircuitReady(_int(fields, "duration"), _int(fields, "data"))
        if kind == RESERVATION:
            self.state = _Client.DONE
            voucher = verify_voucher(_bytes(fields, "voucher"), self.relay, self.own, now_unix)
            expires = _int(fields, "expires")
            if expires != voucher.expires:
                raise NatError(ErrorCode.NAT_VOUCHER_MISMATCH, "voucher expiry differs", "NAT-R33")
            return Reservation(
                self.relay, expires, _int(fields, "duration"), _int(fields, "data"), voucher
            )
        # INCOMING
        self.state = _Client.DECIDING
        self.source = _bytes(fields, "peer")
        return IncomingCircuit(self.source, _int(fields, "duration"), _int(fields, "data"))

    def accept(self) -> bytes:
        self._deciding()
        self.state = _Client.FORWARDING
        return encode_status(0)

    def refuse(self, code: ErrorCode) -> bytes:
        self._deciding()
        self.state = _Client.DONE
        return encode_status(code)

    def _deciding(self) -> None:
        if self.state is not _Client.DECIDING:
            raise LocalProtocolError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "no INCOMING to answer")

    def packet(self, data: bytes) -> bytes:
        """The frame of one outgoing packet (1 ... 1500 bytes) [NAT-R35]."""
        if self.state is not _Client.FORWARDING:
            raise LocalProtocolError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "circuit not open")
        if not 0 < len(data) <= MAX_PACKET:
            raise LocalProtocolError(
                ErrorCode.NAT_RELAY_PACKET_SIZE, f"packet of {len(data)} bytes"
            )
        return bytes(data)


# ----------------------------------------------------------------------------- peer records


@dataclass(frozen=True, slots=True)
class RelayEntry:
    """A relay a peer can be reached through, with the relay's voucher when it has one."""

    relay: bytes
    address: Address
    voucher: bytes | None = None


@dataclass(frozen=True, slots=True)
class CheckedRelay:
    """A relay entry as read from a peer record: ``voucher`` when it verified, else
    ``error`` (its code) or neither (no voucher given) [NAT-R60]."""

    relay: bytes
    address: Address
    voucher: Voucher | None
    error: ErrorCode | None


def peer_record_value(
    addresses: Iterable[Address], relays: Iterable[RelayEntry]
) -> dict[int, codec.Value]:
    """The value of a peer record (03-dht, 9.2) with the vouchers of spec/04, 9.1: key 3,
    present when any relay has a voucher, a list parallel to key 2 holding each entry's
    voucher or null [NAT-R60]."""
    entries = list(relays)
    value: dict[int, codec.Value] = {
        1: [encode_address(a) for a in addresses],
        2: [[e.relay, encode_address(e.address)] for e in entries],
    }
    if any(e.voucher is not None for e in entries):
        value[3] = [e.voucher for e in entries]
    return value


def make_peer_record(
    identity: PrivateKey,
    seq: int,
    ttl: int,
    addresses: Iterable[Address],
    relays: Iterable[RelayEntry],
) -> dht.Record:
    value = peer_record_value(addresses, relays)
    return dht.Record.make(identity, dht.KIND_PEER, identity.peer_id.raw, seq, ttl, value)


def relays_of(record: dht.Record, now_unix: float) -> list[CheckedRelay]:
    """The relay entries of a peer (or presence) record, each with its voucher checked
    against the entry's relay, the record's signer and ``now_unix`` [NAT-R60]. Entries that
    are not ``[32-byte ID, address]`` are skipped; a key 3 that is not a list of the same
    length as key 2, of byte strings and nulls, is ignored as a whole."""
    raw_entries = record.value.get(2)
    if not isinstance(raw_entries, list):
        return []
    vouchers = record.value.get(3)
    if not (
        isinstance(vouchers, list)
        and len(vouchers) == len(raw_entries)
        and all(v is None or isinstance(v, bytes) for v in vouchers)
    ):
        vouchers = [None] * len(raw_entries)
    out: list[CheckedRelay] = []
    for entry, voucher in zip(raw_entries, vouchers, strict=True):
        if not isinstance(entry, list) or len(entry) != 2:
            continue
        relay, raw_addr = entry
        if not isinstance(relay, bytes) or len(relay) != ID_SIZE:
            continue
        try:
            address = decode_address(raw_addr)
        except CodecError:
            continue
        if voucher is None:
            out.append(CheckedRelay(relay, address, None, None))
            continue
        assert isinstance(voucher, bytes)
        try:
            checked = verify_voucher(voucher, relay, record.signer_id, now_unix)
        except NatError as exc:
            out.append(CheckedRelay(relay, address, None, exc.code))
            continue
        out.append(CheckedRelay(relay, address, checked, None))
    return out


# ----------------------------------------------------------------------------- bootstrap strings

MAX_BOOTSTRAP_TEXT = 1024
MAX_BOOTSTRAP_ADDRESSES = 8


def _bootstrap_fault(reason: str) -> NatError:
    return NatError(ErrorCode.NAT_BOOTSTRAP_MALFORMED, reason, "NAT-R70")


def _format_address(addr: Address) -> str:
    ip = ipaddress.ip_address(addr[0])
    return f"[{ip.compressed}]:{addr[1]}" if ip.version == 6 else f"{ip}:{addr[1]}"


def format_bootstrap(peer_id: PeerId, addresses: Sequence[Address]) -> str:
    """The bootstrap string of a node (spec/04, 9.3): ``<peer ID>@<address>[,<address>]``,
    each address ``a.b.c.d:port`` or ``[ipv6]:port``, in canonical form [NAT-R70]."""
    unique = list(dict.fromkeys(addresses))
    if not 1 <= len(unique) <= MAX_BOOTSTRAP_ADDRESSES:
        raise LocalProtocolError(
            ErrorCode.NAT_BOOTSTRAP_MALFORMED,
            f"a bootstrap string names 1 ... {MAX_BOOTSTRAP_ADDRESSES} addresses",
            "NAT-R70",
        )
    for addr in unique:
        if not _dialable(addr) or not 0 < addr[1] < 65536:
            raise LocalProtocolError(
                ErrorCode.NAT_BOOTSTRAP_MALFORMED, f"{addr} is not dialable", "NAT-R70"
            )
    return peer_id.text() + "@" + ",".join(_format_address(a) for a in unique)


def _parse_port(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text.startswith("0"):
        raise _bootstrap_fault(f"{where}: the port must be a decimal number 1 ... 65535")
    port = int(text)
    if not 0 < port < 65536:
        raise _bootstrap_fault(f"{where}: the port must be a decimal number 1 ... 65535")
    return port


def _parse_bootstrap_address(text: str) -> Address:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise _bootstrap_fault(f"{text!r}: an IPv6 address is written [address]:port")
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise _bootstrap_fault(f"{text!r}: not an IPv6 address") from None
        if ip6.ipv4_mapped is not None:
            raise _bootstrap_fault(f"{text!r}: write an IPv4-mapped address as IPv4")
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ip6
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise _bootstrap_fault(f"{text!r}: an address is written ip:port")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise _bootstrap_fault(f"{text!r}: not an IPv4 address (IPv6 in brackets)") from None
    addr = (str(ip), _parse_port(port, repr(text)))
    if not _dialable(addr):
        raise _bootstrap_fault(f"{text!r}: unspecified, multicast or broadcast")
    return addr


def parse_bootstrap(text: str) -> tuple[PeerId, list[Address]]:
    """The peer ID and addresses of a bootstrap string (spec/04, 9.3); surrounding
    whitespace is ignored. Anything else malformed raises ``NatError`` with
    ``NAT_BOOTSTRAP_MALFORMED`` and a reason a person can act on [NAT-R70]."""
    text = text.strip()
    if len(text) > MAX_BOOTSTRAP_TEXT:
        raise _bootstrap_fault(f"longer than {MAX_BOOTSTRAP_TEXT} characters")
    if any(c.isspace() for c in text):
        raise _bootstrap_fault("whitespace inside a bootstrap string")
    peer_text, at, rest = text.partition("@")
    if not at:
        raise _bootstrap_fault("expected <peer ID>@<ip>:<port>[,<ip>:<port>...]: no '@'")
    try:
        peer_id = PeerId.parse(peer_text)
    except StarlingError as exc:
        raise _bootstrap_fault(f"bad peer ID: {exc}") from None
    parts = rest.split(",")
    if not rest or len(parts) > MAX_BOOTSTRAP_ADDRESSES:
        raise _bootstrap_fault(f"expected 1 ... {MAX_BOOTSTRAP_ADDRESSES} addresses after '@'")
    addresses = [_parse_bootstrap_address(p) for p in parts]
    if len(set(addresses)) != len(addresses):
        raise _bootstrap_fault("an address is repeated")
    return peer_id, addresses
