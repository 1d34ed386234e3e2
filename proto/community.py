"""Communities: keys, the signed authority log and invites (spec/06-community.md), sans-IO.

Theory of operation
-------------------
A community is an Ed25519 key pair. Its public key names it (text form
bech32m ``sc1...`` [COM-R1]); whoever holds the private key is its **root**
and can do anything, but need not be online: day-to-day authority belongs to
members with roles, and invites are capabilities any member can honour.

**Authority** (channels, roles, bans, invites, members and their profiles)
lives in a DAG of signed **entries** (envelopes under
``starling/community-entry/1``). Each entry names the IDs of the heads its
author had seen, its **parents**; the one entry without parents is the
**create** entry, signed by the community key, whose bytes are fixed by the
key alone [COM-R15]. Replay walks the DAG in one total order: by **height**
(1 + the largest height of the parents), then by entry ID [COM-R30].

Three verdicts, each a function of the set of entries only, never of the order
in which they arrived:

* **rejected** -- the entry is malformed, forged, or its author lacked the
  permission in the state of the entry's own causal past (its ancestors,
  replayed) [COM-R31]. That past never changes, so neither does the verdict;
  rejected entries are not stored, and entries built on them are rejected too
  [COM-R32].
* **void** -- the entry is stored (it is part of the DAG, so its descendants
  stay valid) but has no effect: a concurrent **sanction** overrules it
  [COM-R33], or it is refused by the replay's running state (a use of an
  invite beyond its count, a rename of a channel removed concurrently)
  [COM-R34].
* **effective** -- it changes the state.

Sanctions are the entries that set a member's rank (BAN, ROLE_GRANT,
ROLE_REVOKE) and INVITE_REVOKE. A sanction **attacks** every concurrent entry
(neither ancestor nor descendant) that relies on its target being ranked above
what the sanction sets, or that sets its target higher, or that uses the
invite it revokes. Attacks among sanctions are settled by grounded labelling
(a sanction stands unless a standing sanction attacks it; cycles, such as
mutual bans, stand for neither); every entry attacked by a sanction that is not
defeated is void. So a ban wins over everything its target did concurrently, a
demotion over what needed the old role, a revocation over concurrent joins,
and the lower of two concurrent role changes wins.

Efficiency. ``AuthorityLog`` keeps the running state of the whole DAG, with
copies (**checkpoints**) every ``max(checkpoint_interval, state size / 64)``
entries (a dict copy costs far less per item than replaying an entry), the
older ones thinned out so that at most ``max_checkpoints`` are kept. An entry
that extends every head (the common case) is checked against
and applied to the running state directly. Otherwise the state of its causal
past is rebuilt: from the state of its parent, cached when that parent was
itself admitted this way, or by replaying, from the last checkpoint before
them, every entry but the few outside its past (found by walking down from
the heads). An insertion in the middle of the order replays from the
checkpoint before it. Attacks on a new entry are found with per-entry bit masks
of the sanctions in each entry's past; the targets of a new sanction are those
of its candidates (indexed by key) outside its past, found by the same walk.

Invites. A capability ``{1: community, 2: role, 3: expires, 4: uses, 5:
nonce}`` is signed by a member allowed to invite (domain
``starling/community-invite/1``) [COM-R40]. A joiner writes its own JOIN
entry carrying it; the checks (inviter's permission and the revocations and
uses in the join's causal past, expiry against the join's time) are part of
replay, so any member can admit a joiner [COM-R42]. A link
``starling://join/sj1...`` carries the capability and peer hints as bech32m
text, lower case or, for QR codes, upper case [COM-R48].

Everything here is deterministic: keys come from the caller, times are
arguments (``now_ms`` only drives local rules: the fresh-join clock rule
[COM-R44] and the pending entries' age [COM-R35]).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import ipaddress
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum, IntFlag

from . import bech32m, codec, gossip, identity
from .errors import (
    CommunityError,
    ErrorCode,
    IdentityError,
    LocalProtocolError,
    StarlingError,
)
from .identity import PrivateKey, PublicKey

__all__ = [
    "CLOCK_SKEW_MS",
    "COMMUNITY_HRP",
    "ENTRY_DOMAIN",
    "INVITE_DOMAIN",
    "INVITE_HRP",
    "LINK_PREFIX",
    "AddResult",
    "AuthorityLog",
    "AuthorityState",
    "Capability",
    "Channel",
    "CommunityId",
    "Entry",
    "EntryAccepted",
    "EntryRejected",
    "EntryStatus",
    "InviteLink",
    "Kind",
    "Member",
    "Outcome",
    "PeerHint",
    "Permission",
    "Role",
    "ban",
    "channel_add",
    "channel_permissions",
    "channel_remove",
    "channel_rename",
    "community_info",
    "create_entry",
    "entry_id",
    "genesis",
    "invite_id",
    "invite_revoke",
    "join",
    "make_capability",
    "parse_capability",
    "parse_entry",
    "profile",
    "role_grant",
    "role_revoke",
    "sign_entry",
    "unban",
]

COMMUNITY_HRP = "sc"  # text form of a community key [COM-R1]
INVITE_HRP = "sj"  # text form of an invite (the code after the link prefix) [COM-R48]
LINK_PREFIX = "starling://join/"
ENTRY_DOMAIN = "starling/community-entry/1"
INVITE_DOMAIN = "starling/community-invite/1"
ENTRY_ID_TAG = b"starling/community-entry-id/1"
INVITE_ID_TAG = b"starling/community-invite-id/1"

KEY_SIZE = 32
ID_SIZE = 32
NONCE_SIZE = 16
MAX_ENTRY_SIZE = 4096  # bytes of a signed entry [COM-R10]
MAX_PARENTS = 16
MAX_CAPABILITY_SIZE = 512
MAX_LINK_PAYLOAD = 1024
MAX_LINK_TEXT = len(LINK_PREFIX) + len(INVITE_HRP) + 1 + (MAX_LINK_PAYLOAD * 8 + 4) // 5 + 6
MAX_HINTS = 4  # peers in a link
MAX_HINT_ADDRESSES = 4
MAX_HINT_RELAYS = 2
MAX_USES = 2**32 - 1
CLOCK_SKEW_MS = 300_000  # the fresh-join clock rule's tolerance [COM-R44]

ENTRY_LIMITS = codec.DecodeLimits(max_size=MAX_ENTRY_SIZE, max_depth=4)
CAPABILITY_LIMITS = codec.DecodeLimits(max_size=MAX_CAPABILITY_SIZE, max_depth=4)
LINK_LIMITS = codec.DecodeLimits(max_size=MAX_LINK_PAYLOAD, max_depth=7)


class Kind(IntEnum):
    """Entry kinds (key 0 of the payload). All even: a receiver must understand them [MSG-R4]."""

    CREATE = 2
    INFO = 4
    CHANNEL_ADD = 6
    CHANNEL_RENAME = 8
    CHANNEL_REMOVE = 10
    CHANNEL_PERMISSIONS = 12
    ROLE_GRANT = 14
    ROLE_REVOKE = 16
    BAN = 18
    UNBAN = 20
    INVITE_REVOKE = 22
    JOIN = 24
    PROFILE = 26


class Role(IntEnum):
    """Member roles; the value is the rank [COM-R20]."""

    MEMBER = 1
    MODERATOR = 2
    ADMIN = 3
    OWNER = 4


# Ranks beyond the roles: a banned key, a stranger, the community key itself.
BANNED = -1
NONE = 0
ROOT = 5


class Permission(IntFlag):
    """What a role allows [COM-R21]. POST and MODERATE are channel-scoped."""

    POST = 0x01
    MODERATE = 0x02
    INVITE = 0x04
    BAN = 0x08
    REVOKE_INVITES = 0x10
    MANAGE_CHANNELS = 0x20
    MANAGE_ROLES = 0x40
    MANAGE_COMMUNITY = 0x80


ALL_PERMISSIONS = Permission(0xFF)
CHANNEL_SCOPED = Permission.POST | Permission.MODERATE
ROLE_PERMISSIONS: Mapping[int, Permission] = {
    Role.MEMBER: Permission.POST | Permission.INVITE,
    Role.MODERATOR: Permission.POST
    | Permission.INVITE
    | Permission.MODERATE
    | Permission.BAN
    | Permission.REVOKE_INVITES,
    Role.ADMIN: ALL_PERMISSIONS,  # everything below the owner's rank
    Role.OWNER: ALL_PERMISSIONS,
}


def _fail(code: ErrorCode, reason: str, requirement: str) -> CommunityError:
    return CommunityError(code, reason, requirement)


def _kind_name(kind: int) -> str:
    return Kind(kind).name if kind in Kind._value2member_map_ else f"kind {kind}"


# ----------------------------------------------------------------------------- community keys


@dataclass(frozen=True, slots=True)
class CommunityId:
    """A community's public key, checked at construction ([ID-R10] [ID-R11])."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise IdentityError(
                ErrorCode.KEY_LENGTH, f"community key is {len(self.raw)} bytes, not 32", "ID-R10"
            )
        identity.check_public_key(self.raw)

    @classmethod
    def parse(cls, text: str) -> CommunityId:
        """Parse the text form ``sc1...`` [COM-R2]: ID_TEXT_* codes, then KEY_* codes."""
        return cls(bech32m.decode(text, COMMUNITY_HRP, KEY_SIZE, "community key"))

    def text(self) -> str:
        """The bech32m text form with prefix ``sc``, lower case [COM-R1]."""
        return bech32m.encode(COMMUNITY_HRP, self.raw)

    def topic(self, network: bytes) -> bytes:
        """The community's gossip topic on ``network`` [COM-R3] [GSP-R14]."""
        return gossip.topic_id(network, self.raw)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"CommunityId({self.text()})"


# ----------------------------------------------------------------------------- invites


def invite_id(raw: bytes) -> bytes:
    """SHA-256("starling/community-invite-id/1" || capability bytes) [COM-R41]."""
    return hashlib.sha256(INVITE_ID_TAG + raw).digest()


_CAPABILITY_FIELDS = (  # [COM-R40]
    codec.Field(1, "community", bytes, size=KEY_SIZE),
    codec.Field(2, "role", int, minimum=Role.MEMBER, maximum=Role.ADMIN),
    codec.Field(3, "expires", int, minimum=0),
    codec.Field(4, "uses", int, minimum=1, maximum=MAX_USES),
    codec.Field(5, "nonce", bytes, size=NONCE_SIZE),
)


@dataclass(frozen=True, slots=True, eq=False)
class Capability:
    """A verified invite capability: who invites, to which community, as what, until when."""

    id: bytes
    raw: bytes = field(repr=False)
    inviter: bytes
    community: bytes
    role: Role
    expires_ms: int
    max_uses: int
    nonce: bytes


def parse_capability(raw: bytes, community: bytes | None = None) -> Capability:
    """Check and verify a capability; every fault is COMMUNITY_INVITE_INVALID [COM-R40]."""
    raw = bytes(raw)
    if len(raw) > MAX_CAPABILITY_SIZE:
        raise _fail(
            ErrorCode.COMMUNITY_INVITE_INVALID,
            f"capability of {len(raw)} bytes exceeds {MAX_CAPABILITY_SIZE}",
            "COM-R40",
        )
    try:
        envelope = identity.open_envelope(raw, INVITE_DOMAIN, CAPABILITY_LIMITS)
        fields = codec.read_fields(
            codec.decode(envelope.payload, CAPABILITY_LIMITS), _CAPABILITY_FIELDS, "capability"
        )
    except StarlingError as exc:
        raise _fail(
            ErrorCode.COMMUNITY_INVITE_INVALID, f"not a valid capability: {exc}", "COM-R40"
        ) from None
    cap_community, role, expires = fields["community"], fields["role"], fields["expires"]
    uses, nonce = fields["uses"], fields["nonce"]
    assert isinstance(cap_community, bytes) and isinstance(nonce, bytes)
    assert isinstance(role, int) and isinstance(expires, int) and isinstance(uses, int)
    if community is not None and cap_community != community:
        raise _fail(
            ErrorCode.COMMUNITY_INVITE_INVALID,
            "the capability is for another community",
            "COM-R40",
        )
    return Capability(
        invite_id(raw), raw, envelope.signer.raw, cap_community, Role(role), expires, uses, nonce
    )


def make_capability(
    inviter: PrivateKey,
    community: bytes,
    *,
    expires_ms: int,
    nonce: bytes,
    max_uses: int = 1,
    role: Role = Role.MEMBER,
) -> Capability:
    """Sign a capability. ``nonce`` (16 bytes) comes from the caller's randomness [COM-R40]."""
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(
            ErrorCode.COMMUNITY_INVITE_INVALID, "an invite nonce is 16 bytes", "COM-R40"
        )
    payload = codec.encode(
        {1: bytes(community), 2: int(role), 3: expires_ms, 4: max_uses, 5: bytes(nonce)}
    )
    return parse_capability(identity.seal(inviter, INVITE_DOMAIN, payload), community)


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PeerHint:
    """A peer to bootstrap from: its peer ID, direct addresses and relays (as a peer record)."""

    peer_id: bytes
    addresses: tuple[Address, ...] = ()
    relays: tuple[tuple[bytes, Address], ...] = ()


def _encode_address(addr: Address) -> list[codec.Value]:
    return [ipaddress.ip_address(addr[0]).packed, addr[1]]


def _decode_address(value: codec.Value, what: str) -> Address:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], bytes)
        or len(value[0]) not in (4, 16)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or not 1 <= value[1] <= 65535
    ):
        raise _fail(ErrorCode.COMMUNITY_LINK_MALFORMED, f"{what} is not an address", "COM-R47")
    return (str(ipaddress.ip_address(value[0])), value[1])


def _link_fault(reason: str) -> CommunityError:
    return _fail(ErrorCode.COMMUNITY_LINK_MALFORMED, reason, "COM-R47")


def _decode_hint(value: codec.Value, i: int) -> PeerHint:
    what = f"peer hint {i}"
    if not isinstance(value, list) or len(value) != 3:
        raise _link_fault(f"{what} is not [peer ID, addresses, relays]")
    peer, addresses, relays = value
    if not isinstance(peer, bytes) or len(peer) != ID_SIZE:
        raise _link_fault(f"{what}: the peer ID is not 32 bytes")
    if not isinstance(addresses, list) or len(addresses) > MAX_HINT_ADDRESSES:
        raise _link_fault(f"{what}: at most {MAX_HINT_ADDRESSES} addresses")
    if not isinstance(relays, list) or len(relays) > MAX_HINT_RELAYS:
        raise _link_fault(f"{what}: at most {MAX_HINT_RELAYS} relays")
    addrs = tuple(_decode_address(a, f"{what} address") for a in addresses)
    out: list[tuple[bytes, Address]] = []
    for relay in relays:
        if (
            not isinstance(relay, list)
            or len(relay) != 2
            or not isinstance(relay[0], bytes)
            or len(relay[0]) != ID_SIZE
        ):
            raise _link_fault(f"{what}: a relay is not [peer ID, address]")
        out.append((relay[0], _decode_address(relay[1], f"{what} relay address")))
    return PeerHint(peer, addrs, tuple(out))


_LINK_FIELDS = (  # [COM-R47]
    codec.Field(1, "capability", bytes, max_size=MAX_CAPABILITY_SIZE),
    codec.Field(2, "peers", list, required=False, max_size=MAX_HINTS),
)


@dataclass(frozen=True, slots=True)
class InviteLink:
    """What a ``starling://join/`` link carries: a capability and peers to start from."""

    capability: Capability
    peers: tuple[PeerHint, ...] = ()

    @property
    def community(self) -> bytes:
        return self.capability.community

    def payload(self) -> bytes:
        """The CBOR the text form encodes [COM-R47]."""
        message: dict[int, codec.Value] = {1: self.capability.raw}
        if self.peers:
            message[2] = [
                [
                    hint.peer_id,
                    [_encode_address(a) for a in hint.addresses],
                    [[rid, _encode_address(a)] for rid, a in hint.relays],
                ]
                for hint in self.peers
            ]
        return codec.encode(message)

    def code(self) -> str:
        """The invite code ``sj1...``, lower case, usable without the link prefix [COM-R48]."""
        payload = self.payload()
        if len(payload) > MAX_LINK_PAYLOAD:
            raise LocalProtocolError(
                ErrorCode.COMMUNITY_LINK_TOO_LONG,
                f"link payload of {len(payload)} bytes exceeds {MAX_LINK_PAYLOAD}",
                "COM-R48",
            )
        return bech32m.encode(INVITE_HRP, payload)

    def text(self) -> str:
        """``starling://join/sj1...``: the form to paste in a chat message [COM-R48]."""
        return LINK_PREFIX + self.code()

    def qr_text(self) -> str:
        """The same link in upper case: QR codes' alphanumeric mode holds all of it [COM-R48]."""
        return self.text().upper()

    @classmethod
    def parse(cls, text: str) -> InviteLink:
        """Parse a link or a bare invite code, in the order of 06-community 7.4 [COM-R49].

        Leading and trailing ASCII whitespace is ignored; the prefix is matched
        without regard to case. Errors: COMMUNITY_LINK_TOO_LONG, COMMUNITY_LINK_MALFORMED,
        the ID_TEXT_* codes of the bech32m text, COMMUNITY_INVITE_INVALID.
        """
        text = text.strip(" \t\r\n")
        if len(text) > MAX_LINK_TEXT:
            raise _fail(
                ErrorCode.COMMUNITY_LINK_TOO_LONG,
                f"link of {len(text)} characters exceeds {MAX_LINK_TEXT}",
                "COM-R48",
            )
        if text[: len(LINK_PREFIX)].lower() == LINK_PREFIX:
            text = text[len(LINK_PREFIX) :]
        elif "/" in text:
            raise _link_fault(f"a link starts with {LINK_PREFIX!r}")
        raw = bech32m.decode_bytes(text, INVITE_HRP, MAX_LINK_PAYLOAD, "invite code")
        try:
            fields = codec.read_fields(codec.decode(raw, LINK_LIMITS), _LINK_FIELDS, "invite link")
        except StarlingError as exc:
            raise _link_fault(f"the invite code holds no link: {exc}") from None
        cap_raw, peers = fields["capability"], fields.get("peers", [])
        assert isinstance(cap_raw, bytes) and isinstance(peers, list)
        hints = tuple(_decode_hint(value, i) for i, value in enumerate(peers))
        return cls(parse_capability(cap_raw), hints)


# ----------------------------------------------------------------------------- entries


def entry_id(raw: bytes) -> bytes:
    """SHA-256("starling/community-entry-id/1" || signed entry bytes) [COM-R11]."""
    return hashlib.sha256(ENTRY_ID_TAG + raw).digest()


_NAME = 64  # bytes of a name (channel, category, display name, community)
_COMMON = (  # every entry [COM-R12]
    codec.Field(0, "kind", int, minimum=0),
    codec.Field(1, "community", bytes, size=KEY_SIZE),
    codec.Field(2, "parents", list),  # its elements and count: step 6 of 4.6 [COM-R14]
    codec.Field(3, "time", int, minimum=0),
)
_CHANNEL = codec.Field(4, "channel", bytes, size=ID_SIZE)
_MEMBER = codec.Field(4, "member", bytes, size=KEY_SIZE)
_CAPABILITY = codec.Field(4, "capability", bytes, max_size=MAX_CAPABILITY_SIZE)
_KIND_FIELDS: dict[int, tuple[codec.Field, ...]] = {  # spec/06-community.md 4.4 [COM-R12]
    Kind.CREATE: (),
    Kind.INFO: (
        codec.Field(4, "name", str, max_size=_NAME),
        codec.Field(5, "description", str, required=False, max_size=1024),
    ),
    Kind.CHANNEL_ADD: (
        codec.Field(4, "name", str, max_size=_NAME),
        codec.Field(5, "category", str, required=False, max_size=_NAME),
    ),
    Kind.CHANNEL_RENAME: (
        _CHANNEL,
        codec.Field(5, "name", str, max_size=_NAME),
        codec.Field(6, "category", str, required=False, max_size=_NAME),
    ),
    Kind.CHANNEL_REMOVE: (_CHANNEL,),
    Kind.CHANNEL_PERMISSIONS: (_CHANNEL, codec.Field(5, "overrides", dict, max_size=3)),
    Kind.ROLE_GRANT: (
        _MEMBER,
        codec.Field(5, "role", int, minimum=Role.MODERATOR, maximum=Role.OWNER),
    ),
    Kind.ROLE_REVOKE: (_MEMBER,),
    Kind.BAN: (_MEMBER, codec.Field(5, "reason", str, required=False, max_size=256)),
    Kind.UNBAN: (_MEMBER,),
    Kind.INVITE_REVOKE: (_CAPABILITY,),
    Kind.JOIN: (_CAPABILITY,),
    Kind.PROFILE: (codec.Field(4, "name", str, max_size=_NAME),),
}
_KIND_OF = {kind: (lambda _message, k=int(kind): k) for kind in _KIND_FIELDS}
_NON_EMPTY = ("name", "category")  # text fields that must hold at least one byte
_SANCTIONS = frozenset({Kind.BAN, Kind.ROLE_GRANT, Kind.ROLE_REVOKE, Kind.INVITE_REVOKE})


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """A checked and verified authority entry (not yet judged against any state)."""

    id: bytes
    raw: bytes = field(repr=False)
    author: bytes
    kind: int
    community: bytes
    parents: tuple[bytes, ...]
    time_ms: int
    fields: Mapping[str, codec.Value] = field(repr=False)
    capability: Capability | None = None

    def _bytes(self, name: str) -> bytes:
        value = self.fields[name]
        assert isinstance(value, bytes)
        return value

    def _text(self, name: str) -> str | None:
        value = self.fields.get(name)
        assert value is None or isinstance(value, str)
        return value

    @property
    def member(self) -> bytes:
        """The target of ROLE_GRANT, ROLE_REVOKE, BAN, UNBAN."""
        return self._bytes("member")

    @property
    def channel(self) -> bytes:
        """The channel of CHANNEL_RENAME, CHANNEL_REMOVE, CHANNEL_PERMISSIONS."""
        return self._bytes("channel")

    @property
    def name(self) -> str | None:
        return self._text("name")

    @property
    def category(self) -> str | None:
        return self._text("category")

    @property
    def description(self) -> str | None:
        return self._text("description")

    @property
    def reason(self) -> str | None:
        return self._text("reason")

    @property
    def role(self) -> Role:
        value = self.fields["role"]
        assert isinstance(value, int)
        return Role(value)

    @property
    def overrides(self) -> dict[int, int]:
        value = self.fields["overrides"]
        assert isinstance(value, dict)
        return {k: v for k, v in value.items() if isinstance(v, int)}

    @property
    def known(self) -> bool:
        """False for a kind of a later revision (odd), which has no effect here [MSG-R3]."""
        return self.kind in _KIND_FIELDS


def _malformed(reason: str, requirement: str = "COM-R12") -> CommunityError:
    return _fail(ErrorCode.COMMUNITY_ENTRY_MALFORMED, reason, requirement)


def parse_entry(raw: bytes, community: bytes | None = None) -> Entry:
    """Check and verify a signed entry, in the order of 06-community 4.6 [COM-R16].

    Structure (TOO_LARGE, MALFORMED), community (WRONG_COMMUNITY), parents
    (BAD_PARENTS), the create rules (CREATE_INVALID), the signature (FORGED), the
    capability of a JOIN or INVITE_REVOKE (COMMUNITY_INVITE_INVALID). Nothing
    here depends on other entries.
    """
    raw = bytes(raw)
    if len(raw) > MAX_ENTRY_SIZE:
        raise _fail(
            ErrorCode.COMMUNITY_ENTRY_TOO_LARGE,
            f"entry of {len(raw)} bytes exceeds {MAX_ENTRY_SIZE}",
            "COM-R10",
        )
    try:
        signer, payload, signature = identity.read_envelope(raw, ENTRY_LIMITS)
        body = codec.decode(payload, ENTRY_LIMITS)
        known = codec.dispatch(body, _KIND_OF, "entry")
        assert isinstance(body, dict)
        if known is None:  # an odd kind of a later revision: only the common fields count
            common = {k: v for k, v in body.items() if k < 4}
            fields = codec.read_fields(common, _COMMON, "entry")
        else:
            fields = codec.read_fields(body, _COMMON + _KIND_FIELDS[known], "entry")
        kind = fields["kind"]
        assert isinstance(kind, int)
    except CommunityError:
        raise
    except StarlingError as exc:
        raise _malformed(f"not a well-formed entry: {exc}") from None
    for name in _NON_EMPTY:
        if fields.get(name) == "":
            raise _malformed(f"the {name} is empty")
    if kind == Kind.CHANNEL_PERMISSIONS:
        overrides = fields["overrides"]
        assert isinstance(overrides, dict)
        for role, bits in overrides.items():
            if role not in (Role.MEMBER, Role.MODERATOR, Role.ADMIN):
                raise _malformed(f"overrides name role {role}, not member, moderator or admin")
            if not isinstance(bits, int) or isinstance(bits, bool) or bits & ~CHANNEL_SCOPED:
                raise _malformed(f"overrides of role {role} are not channel permission bits")
    entry_community, parents, time_ms = fields["community"], fields["parents"], fields["time"]
    assert isinstance(entry_community, bytes) and isinstance(parents, list)
    assert isinstance(time_ms, int)
    if community is not None and entry_community != community:
        raise _fail(
            ErrorCode.COMMUNITY_WRONG_COMMUNITY,
            "the entry belongs to another community",
            "COM-R13",
        )
    if len(parents) > MAX_PARENTS:
        raise _fail(ErrorCode.COMMUNITY_BAD_PARENTS, f"more than {MAX_PARENTS} parents", "COM-R14")
    for parent in parents:
        if not isinstance(parent, bytes) or len(parent) != ID_SIZE:
            raise _fail(
                ErrorCode.COMMUNITY_BAD_PARENTS, "a parent is not a 32-byte entry ID", "COM-R14"
            )
    ids = tuple(p for p in parents if isinstance(p, bytes))
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise _fail(
            ErrorCode.COMMUNITY_BAD_PARENTS,
            "parents must be in ascending order, each once",
            "COM-R14",
        )
    if kind == Kind.CREATE:
        if body != {0: Kind.CREATE, 1: entry_community, 2: [], 3: 0}:
            raise _fail(
                ErrorCode.COMMUNITY_CREATE_INVALID,
                "a create entry is exactly {0: 2, 1: community, 2: [], 3: 0}",
                "COM-R15",
            )
        if signer != entry_community:
            raise _fail(
                ErrorCode.COMMUNITY_CREATE_INVALID,
                "a create entry is signed by the community key",
                "COM-R15",
            )
    elif not ids:
        raise _fail(
            ErrorCode.COMMUNITY_BAD_PARENTS, "only the create entry has no parents", "COM-R14"
        )
    try:
        PublicKey(signer).verify(ENTRY_DOMAIN, payload, signature)
    except StarlingError as exc:
        raise _fail(
            ErrorCode.COMMUNITY_ENTRY_FORGED, f"the signature does not hold: {exc}", "COM-R10"
        ) from None
    capability = None
    if kind in (Kind.JOIN, Kind.INVITE_REVOKE):
        cap_raw = fields["capability"]
        assert isinstance(cap_raw, bytes)
        capability = parse_capability(cap_raw, entry_community)
    return Entry(
        entry_id(raw), raw, signer, kind, entry_community, ids, time_ms, fields, capability
    )


def sign_entry(
    author: PrivateKey,
    community: bytes,
    kind: int,
    parents: Iterable[bytes],
    time_ms: int,
    fields: Mapping[int, codec.Value] | None = None,
) -> Entry:
    """Sign ``{0: kind, 1: community, 2: sorted parents, 3: time, ...fields}`` [COM-R10]."""
    parent_ids: list[codec.Value] = [*sorted({bytes(p) for p in parents})]
    payload: dict[int, codec.Value] = {0: int(kind), 1: bytes(community), 2: parent_ids, 3: time_ms}
    payload.update(fields or {})
    raw = identity.seal(author, ENTRY_DOMAIN, codec.encode(payload))
    return parse_entry(raw, community)


def create_entry(community_key: PrivateKey) -> Entry:
    """The one create entry of a community: its bytes follow from the key [COM-R15]."""
    return sign_entry(community_key, community_key.public_key.raw, Kind.CREATE, (), 0)


def community_info(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    name: str,
    description: str | None = None,
) -> Entry:
    fields: dict[int, codec.Value] = {4: name}
    if description is not None:
        fields[5] = description
    return sign_entry(author, community, Kind.INFO, parents, time_ms, fields)


def channel_add(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    name: str,
    category: str | None = None,
) -> Entry:
    """A new channel; its ID is the entry's ID."""
    fields: dict[int, codec.Value] = {4: name}
    if category is not None:
        fields[5] = category
    return sign_entry(author, community, Kind.CHANNEL_ADD, parents, time_ms, fields)


def channel_rename(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    channel: bytes,
    name: str,
    category: str | None = None,
) -> Entry:
    """Set a channel's name and category (absent: no category)."""
    fields: dict[int, codec.Value] = {4: channel, 5: name}
    if category is not None:
        fields[6] = category
    return sign_entry(author, community, Kind.CHANNEL_RENAME, parents, time_ms, fields)


def channel_remove(
    author: PrivateKey, community: bytes, parents: Iterable[bytes], time_ms: int, channel: bytes
) -> Entry:
    return sign_entry(author, community, Kind.CHANNEL_REMOVE, parents, time_ms, {4: channel})


def channel_permissions(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    channel: bytes,
    overrides: Mapping[int, int],
) -> Entry:
    """Per-channel overrides: ``{role: channel-scoped permission bits}``; unlisted roles keep
    their defaults."""
    value: dict[int, codec.Value] = {int(k): int(v) for k, v in overrides.items()}
    return sign_entry(
        author, community, Kind.CHANNEL_PERMISSIONS, parents, time_ms, {4: channel, 5: value}
    )


def role_grant(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    member: bytes,
    role: Role,
) -> Entry:
    return sign_entry(
        author, community, Kind.ROLE_GRANT, parents, time_ms, {4: member, 5: int(role)}
    )


def role_revoke(
    author: PrivateKey, community: bytes, parents: Iterable[bytes], time_ms: int, member: bytes
) -> Entry:
    """Back to plain member."""
    return sign_entry(author, community, Kind.ROLE_REVOKE, parents, time_ms, {4: member})


def ban(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    member: bytes,
    reason: str | None = None,
) -> Entry:
    fields: dict[int, codec.Value] = {4: member}
    if reason is not None:
        fields[5] = reason
    return sign_entry(author, community, Kind.BAN, parents, time_ms, fields)


def unban(
    author: PrivateKey, community: bytes, parents: Iterable[bytes], time_ms: int, member: bytes
) -> Entry:
    return sign_entry(author, community, Kind.UNBAN, parents, time_ms, {4: member})


def invite_revoke(
    author: PrivateKey,
    community: bytes,
    parents: Iterable[bytes],
    time_ms: int,
    capability: Capability,
) -> Entry:
    return sign_entry(author, community, Kind.INVITE_REVOKE, parents, time_ms, {4: capability.raw})


def join(
    author: PrivateKey, capability: Capability, parents: Iterable[bytes], time_ms: int
) -> Entry:
    """The joiner's own entry, carrying the capability [COM-R42]."""
    return sign_entry(
        author, capability.community, Kind.JOIN, parents, time_ms, {4: capability.raw}
    )


def profile(
    author: PrivateKey, community: bytes, parents: Iterable[bytes], time_ms: int, name: str
) -> Entry:
    """The author's own display name."""
    return sign_entry(author, community, Kind.PROFILE, parents, time_ms, {4: name})


def genesis(
    community_key: PrivateKey, owner: bytes, time_ms: int, name: str | None = None
) -> list[Entry]:
    """A new community: the create entry, the owner's OWNER role (granted by the community
    key, which admits the owner) and, if ``name`` is given, the community's name."""
    community = community_key.public_key.raw
    create = create_entry(community_key)
    grant = role_grant(community_key, community, [create.id], time_ms, owner, Role.OWNER)
    entries = [create, grant]
    if name is not None:
        entries.append(community_info(community_key, community, [grant.id], time_ms, name))
    return entries


# ----------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel; ``id`` is the ID of the CHANNEL_ADD entry."""

    id: bytes
    name: str
    category: str | None = None
    overrides: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Member:
    key: bytes
    role: Role
    name: str | None
    admitted_by: bytes  # the entry (JOIN or the community key's ROLE_GRANT) that admitted them


class AuthorityState:
    """What the replay of a set of entries gives [COM-R23]; read-only for callers.

    ``check`` and ``apply`` are the per-kind rules of 06-community 5.3 and 5.4.
    """

    __slots__ = (
        "admitted",
        "banned",
        "channels",
        "community",
        "description",
        "invite_uses",
        "name",
        "profiles",
        "revoked",
        "roles",
    )

    def __init__(self, community: bytes) -> None:
        self.community = community
        self.name: str | None = None
        self.description: str | None = None
        self.roles: dict[bytes, Role] = {}
        self.banned: dict[bytes, bytes] = {}  # key -> the BAN entry
        self.profiles: dict[bytes, str] = {}
        self.admitted: dict[bytes, bytes] = {}  # member key -> the admitting entry
        self.channels: dict[bytes, Channel] = {}
        self.invite_uses: dict[bytes, int] = {}
        self.revoked: dict[bytes, bytes] = {}  # invite ID -> the INVITE_REVOKE entry

    def copy(self) -> AuthorityState:
        other = AuthorityState(self.community)
        other.name, other.description = self.name, self.description
        other.roles = dict(self.roles)
        other.banned = dict(self.banned)
        other.profiles = dict(self.profiles)
        other.admitted = dict(self.admitted)
        other.channels = dict(self.channels)
        other.invite_uses = dict(self.invite_uses)
        other.revoked = dict(self.revoked)
        return other

    def size(self) -> int:
        return (
            len(self.roles)
            + len(self.banned)
            + len(self.profiles)
            + len(self.admitted)
            + len(self.channels)
            + len(self.invite_uses)
            + len(self.revoked)
        )

    # -- queries ------------------------------------------------------------------------

    def rank_of(self, key: bytes) -> int:
        """5 for the community key, -1 banned, 0 a stranger, else the role [COM-R20]."""
        if key == self.community:
            return ROOT
        if key in self.banned:
            return BANNED
        return int(self.roles.get(key, NONE))

    def role_of(self, key: bytes) -> Role | None:
        return self.roles.get(key)

    def is_member(self, key: bytes) -> bool:
        return key in self.roles

    def is_banned(self, key: bytes) -> bool:
        return key in self.banned

    @property
    def members(self) -> dict[bytes, Member]:
        return {
            key: Member(key, role, self.profiles.get(key), self.admitted.get(key, b""))
            for key, role in self.roles.items()
        }

    def permissions(self, key: bytes, channel: bytes | None = None) -> Permission:
        """What ``key`` may do, in ``channel`` if given (with its overrides) [COM-R21]."""
        rank = self.rank_of(key)
        if rank >= Role.OWNER:
            return ALL_PERMISSIONS
        if rank < Role.MEMBER:
            return Permission(0)
        base = ROLE_PERMISSIONS[rank]
        if channel is not None:
            chan = self.channels.get(channel)
            if chan is None:
                return base & ~CHANNEL_SCOPED
            for role, bits in chan.overrides:
                if role == rank:
                    return (base & ~CHANNEL_SCOPED) | Permission(bits)
        return base

    def can_post(self, key: bytes, channel: bytes) -> bool:
        return bool(self.permissions(key, channel) & Permission.POST)

    def summary(self) -> dict[str, object]:
        """The state as plain JSON-able values, in a canonical order (vectors, tests)."""
        out: dict[str, object] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        channels = []
        for cid in sorted(self.channels):
            chan = self.channels[cid]
            item: dict[str, object] = {"id": cid.hex(), "name": chan.name}
            if chan.category is not None:
                item["category"] = chan.category
            if chan.overrides:
                item["overrides"] = [[role, bits] for role, bits in chan.overrides]
            channels.append(item)
        out["channels"] = channels
        members = []
        for key in sorted(self.roles):
            member: dict[str, object] = {"key": key.hex(), "role": self.roles[key].name.lower()}
            if key in self.profiles:
                member["name"] = self.profiles[key]
            members.append(member)
        out["members"] = members
        out["bans"] = [key.hex() for key in sorted(self.banned)]
        out["revokedInvites"] = [i.hex() for i in sorted(self.revoked)]
        out["inviteUses"] = [[i.hex(), n] for i, n in sorted(self.invite_uses.items())]
        return out

    # -- rules ----------------------------------------------------------------------------

    def check(self, entry: Entry) -> tuple[int, int]:
        """Would ``entry`` be permitted here? Returns the ranks it needs of its author and
        (a JOIN) its inviter; raises CommunityError [COM-R22] [COM-R42]."""
        author, kind = entry.author, entry.kind
        if author == self.community:
            if kind in (Kind.JOIN, Kind.PROFILE):
                raise _fail(
                    ErrorCode.COMMUNITY_NOT_PERMITTED,
                    "the community key is not a member: it neither joins nor has a profile",
                    "COM-R22",
                )
            rank = ROOT
        else:
            if author in self.banned:
                raise _fail(ErrorCode.COMMUNITY_BANNED, "the author is banned", "COM-R22")
            rank = self.roles.get(author, NONE)
            if kind == Kind.JOIN:
                return self._check_join(entry, rank)
            if rank < Role.MEMBER:
                raise _fail(ErrorCode.COMMUNITY_NOT_MEMBER, "the author is no member", "COM-R22")
        need: int
        if kind == Kind.CREATE:
            need = ROOT
        elif kind in (Kind.PROFILE,) or not entry.known:
            need = Role.MEMBER
        elif kind in (Kind.INFO, Kind.CHANNEL_ADD):
            need = Role.ADMIN
        elif kind in (Kind.CHANNEL_RENAME, Kind.CHANNEL_REMOVE, Kind.CHANNEL_PERMISSIONS):
            if entry.channel not in self.channels:
                raise _fail(
                    ErrorCode.COMMUNITY_UNKNOWN_CHANNEL, "no such channel (or removed)", "COM-R22"
                )
            need = Role.ADMIN
        elif kind in (Kind.ROLE_GRANT, Kind.ROLE_REVOKE, Kind.BAN, Kind.UNBAN):
            need = self._check_target(entry, rank)
        elif kind == Kind.INVITE_REVOKE:
            assert entry.capability is not None
            need = Role.MEMBER if entry.capability.inviter == author else Role.MODERATOR
        else:  # pragma: no cover - every known kind is listed above
            raise AssertionError(kind)
        if rank < need:
            raise _fail(
                ErrorCode.COMMUNITY_NOT_PERMITTED,
                f"{_kind_name(kind)} needs rank {need}; the author has {rank}",
                "COM-R22",
            )
        return need, NONE

    def _check_target(self, entry: Entry, rank: int) -> int:
        # The author's own key and the community key rank at least as high as the author,
        # so the rank rules below refuse self-promotion and attacks on the root alike.
        kind = entry.kind
        target_rank = self.rank_of(entry.member)
        if kind == Kind.BAN:
            return max(Role.MODERATOR, target_rank + 1)
        if kind == Kind.UNBAN:
            if target_rank != BANNED:
                raise _fail(ErrorCode.COMMUNITY_BAD_TARGET, "the target is not banned", "COM-R22")
            return Role.MODERATOR
        admits = kind == Kind.ROLE_GRANT and rank == ROOT  # only the root admits directly
        if target_rank == BANNED or (target_rank == NONE and not admits):
            raise _fail(
                ErrorCode.COMMUNITY_BAD_TARGET,
                "the target is not a member (only the community key's grant admits)",
                "COM-R22",
            )
        if kind == Kind.ROLE_REVOKE:
            return max(Role.ADMIN, target_rank + 1)
        return max(Role.ADMIN, entry.role + 1, target_rank + 1)

    def _check_join(self, entry: Entry, rank: int) -> tuple[int, int]:
        cap = entry.capability
        assert cap is not None
        if rank >= Role.MEMBER:
            raise _fail(
                ErrorCode.COMMUNITY_ALREADY_MEMBER, "the joiner is already a member", "COM-R42"
            )
        if entry.time_ms > cap.expires_ms:
            raise _fail(
                ErrorCode.COMMUNITY_INVITE_EXPIRED,
                f"joined at {entry.time_ms}, the invite expired at {cap.expires_ms}",
                "COM-R43",
            )
        if cap.id in self.revoked:
            raise _fail(ErrorCode.COMMUNITY_INVITE_REVOKED, "the invite is revoked", "COM-R46")
        if self.invite_uses.get(cap.id, 0) >= cap.max_uses:
            raise _fail(
                ErrorCode.COMMUNITY_INVITE_EXHAUSTED,
                f"the invite was used {cap.max_uses} times already",
                "COM-R45",
            )
        need = Role.MEMBER if cap.role == Role.MEMBER else max(Role.ADMIN, cap.role + 1)
        inviter_rank = self.rank_of(cap.inviter)
        if inviter_rank < need:
            raise _fail(
                ErrorCode.COMMUNITY_INVITE_NOT_PERMITTED,
                f"inviting as {cap.role.name.lower()} needs rank {need}; the inviter has "
                f"{inviter_rank}",
                "COM-R42",
            )
        return NONE, need

    def apply(self, entry: Entry) -> None:
        """Apply a permitted entry [COM-R23]."""
        kind = entry.kind
        if kind == Kind.INFO:
            self.name, self.description = entry.name, entry.description
        elif kind == Kind.CHANNEL_ADD:
            assert entry.name is not None
            self.channels[entry.id] = Channel(entry.id, entry.name, entry.category)
        elif kind == Kind.CHANNEL_RENAME:
            old = self.channels[entry.channel]
            assert entry.name is not None
            self.channels[old.id] = Channel(old.id, entry.name, entry.category, old.overrides)
        elif kind == Kind.CHANNEL_REMOVE:
            del self.channels[entry.channel]
        elif kind == Kind.CHANNEL_PERMISSIONS:
            old = self.channels[entry.channel]
            overrides = tuple(sorted(entry.overrides.items()))
            self.channels[old.id] = Channel(old.id, old.name, old.category, overrides)
        elif kind == Kind.ROLE_GRANT:
            self.roles[entry.member] = entry.role
            self.admitted.setdefault(entry.member, entry.id)
        elif kind == Kind.ROLE_REVOKE:
            self.roles[entry.member] = Role.MEMBER
        elif kind == Kind.BAN:
            self.banned[entry.member] = entry.id
            self.roles.pop(entry.member, None)
            self.admitted.pop(entry.member, None)
        elif kind == Kind.UNBAN:
            del self.banned[entry.member]
        elif kind == Kind.INVITE_REVOKE:
            assert entry.capability is not None
            self.revoked[entry.capability.id] = entry.id
        elif kind == Kind.JOIN:
            cap = entry.capability
            assert cap is not None
            self.roles[entry.author] = cap.role
            self.admitted[entry.author] = entry.id
            self.invite_uses[cap.id] = self.invite_uses.get(cap.id, 0) + 1
        elif kind == Kind.PROFILE:
            assert entry.name is not None
            self.profiles[entry.author] = entry.name


# ----------------------------------------------------------------------------- the log


class Outcome(Enum):
    ACCEPTED = "accepted"  # stored (effective or void: see status())
    PENDING = "pending"  # waiting for parents
    DUPLICATE = "duplicate"  # already stored or pending
    REJECTED = "rejected"  # refused; ``error`` says why


@dataclass(frozen=True, slots=True)
class AddResult:
    entry_id: bytes
    outcome: Outcome
    error: StarlingError | None = None

    @property
    def code(self) -> ErrorCode | None:
        return None if self.error is None else self.error.code


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """``status`` is "effective", "void", "rejected", "pending" or "unknown"; ``error``
    says why for void and rejected entries."""

    status: str
    error: StarlingError | None = None

    @property
    def code(self) -> ErrorCode | None:
        return None if self.error is None else self.error.code


@dataclass(frozen=True, slots=True)
class EntryAccepted:
    """An entry was stored (it may be void: see ``AuthorityLog.status``)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class EntryRejected:
    entry_id: bytes
    error: StarlingError


Event = EntryAccepted | EntryRejected
Key = tuple[int, bytes]


@dataclass(slots=True, eq=False)
class _Node:
    entry: Entry
    key: Key
    mask: int  # bits of the sanctions in this entry's down-set, its own included
    bit: int  # this entry's sanction bit, -1 when it is no sanction
    uses: tuple[tuple[bytes, int], ...]  # (principal, rank needed of it) [COM-R33]
    sets: tuple[bytes, int] | None  # (principal, rank it sets)
    invite: bytes | None  # the invite a JOIN uses or an INVITE_REVOKE revokes

    @property
    def height(self) -> int:
        return self.key[0]


def _sets(entry: Entry) -> tuple[bytes, int] | None:
    kind = entry.kind
    if kind == Kind.BAN:
        return entry.member, BANNED
    if kind == Kind.ROLE_GRANT:
        return entry.member, int(entry.role)
    if kind == Kind.ROLE_REVOKE:
        return entry.member, int(Role.MEMBER)
    if kind == Kind.UNBAN:
        return entry.member, NONE
    if kind == Kind.JOIN:
        assert entry.capability is not None
        return entry.author, int(entry.capability.role)
    return None


def _attacks(sanction: _Node, node: _Node) -> bool:
    """Does ``sanction`` overrule ``node`` if the two are concurrent? [COM-R33]"""
    if sanction.entry.kind == Kind.INVITE_REVOKE:
        return node.entry.kind == Kind.JOIN and node.invite == sanction.invite
    assert sanction.sets is not None
    target, rank = sanction.sets
    if any(p == target and rank < need for p, need in node.uses):
        return True
    return node.sets is not None and node.sets[0] == target and rank < node.sets[1]


def _grounded(attackers: Mapping[bytes, set[bytes]], excluded: set[bytes]) -> set[bytes]:
    """The entries overruled among those not ``excluded``: grounded labelling [COM-R33].

    A sanction is IN when every attacker is OUT, OUT when some attacker is IN; what
    remains (cycles) is undecided. An entry is overruled when an attacker is not OUT.
    """
    out: set[bytes] = set()
    in_: set[bytes] = set()
    sanctions = {a for atts in attackers.values() for a in atts if a not in excluded}
    undecided = set(sanctions)
    changed = True
    while changed:
        changed = False
        for s in list(undecided):
            atts = [a for a in attackers.get(s, ()) if a not in excluded]
            if all(a in out for a in atts):
                in_.add(s)
            elif any(a in in_ for a in atts):
                out.add(s)
            else:
                continue
            undecided.discard(s)
            changed = True
    return {
        x
        for x, atts in attackers.items()
        if x not in excluded and any(a not in excluded and a not in out for a in atts)
    }


class AuthorityLog:
    """One community's authority DAG and its replayed state [COM-R30] ... [COM-R36].

    ``add(raw, now_ms)`` / ``add_many(raws, now_ms)`` take signed entries in any
    order; ``heads()``, ``missing()``, ``order()``, ``lacking(their_heads)`` serve
    sync; ``state`` is the replayed :class:`AuthorityState`; ``status(id)`` says
    whether an entry is effective, void, rejected or pending; ``next_event()``
    gives :class:`EntryAccepted` / :class:`EntryRejected`.
    """

    def __init__(
        self,
        community: bytes,
        *,
        max_pending: int = 4096,
        pending_ttl_ms: int = 600_000,
        clock_skew_ms: int = CLOCK_SKEW_MS,
        checkpoint_interval: int = 32,
        max_checkpoints: int = 64,
        max_rejected: int = 65536,
    ) -> None:
        self.community = bytes(community)
        self.max_pending = max_pending
        self.pending_ttl_ms = pending_ttl_ms
        self.clock_skew_ms = clock_skew_ms
        self.checkpoint_interval = checkpoint_interval
        self.max_checkpoints = max_checkpoints
        self.max_rejected = max_rejected
        self.stats: Counter[str] = Counter()
        self._nodes: dict[bytes, _Node] = {}
        self._order: list[Key] = []
        self._heads: set[bytes] = set()
        self._status: dict[bytes, CommunityError | None] = {}
        self._state = AuthorityState(self.community)
        self._applied: Key | None = None  # the last entry reflected in _state
        self._dirty: Key | None = None  # the first entry to process again
        self._cp_keys: list[Key] = []  # checkpoint i: the state before _cp_keys[i]
        self._cp_states: list[AuthorityState] = []
        self._since_cp = 0
        self._cache: OrderedDict[bytes, AuthorityState] = OrderedDict()
        self._pending: OrderedDict[bytes, tuple[Entry, int | None]] = OrderedDict()
        self._waiting: dict[bytes, set[bytes]] = {}  # missing parent -> pending children
        self._rejected: OrderedDict[bytes, StarlingError] = OrderedDict()
        self._events: deque[Event] = deque()
        self._next_bit = 0
        self._by_principal: dict[bytes, list[_Node]] = {}
        self._sanctions_on: dict[bytes, list[_Node]] = {}
        self._by_invite: dict[bytes, list[_Node]] = {}  # JOINs and INVITE_REVOKEs
        self._attackers: dict[bytes, set[bytes]] = {}
        self._attacks: dict[bytes, set[bytes]] = {}
        self._overruled: set[bytes] = set()

    # -- intake ---------------------------------------------------------------------------

    def add(self, raw: bytes, now_ms: int | None = None) -> AddResult:
        """Take one signed entry. ``now_ms`` (wall clock) drives the local rules only."""
        return self.add_many([raw], now_ms)[0]

    def add_many(self, raws: Iterable[bytes], now_ms: int | None = None) -> list[AddResult]:
        """Take a batch (a sync reply): a JOIN cited by another entry of the batch is not
        fresh, so the fresh-join clock rule does not apply to it [COM-R44]."""
        items: list[tuple[bytes, Entry | AddResult]] = []
        cited: set[bytes] = set()
        for given in raws:
            raw = bytes(given)
            eid = entry_id(raw)
            known = self._known(eid)
            if known is not None:
                items.append((eid, known))
                continue
            try:
                entry = parse_entry(raw, self.community)
            except CommunityError as exc:
                items.append((eid, self._reject(eid, exc)))
                continue
            cited.update(entry.parents)
            items.append((eid, entry))
        results: list[AddResult] = []
        for eid, item in items:
            if isinstance(item, AddResult):
                results.append(item)
                continue
            known = self._known(eid)  # an earlier item of the batch may have settled it
            if known is not None:
                results.append(known)
                continue
            refusal = self._clock_rule(item, now_ms, eid in cited)
            if refusal is not None:
                self.stats["refused_clock"] += 1
                results.append(AddResult(eid, Outcome.REJECTED, refusal))
                continue
            results.append(self._offer(item, now_ms))
        return results

    def _known(self, eid: bytes) -> AddResult | None:
        if eid in self._nodes or eid in self._pending:
            return AddResult(eid, Outcome.DUPLICATE)
        error = self._rejected.get(eid)
        if error is not None:
            return AddResult(eid, Outcome.REJECTED, error)
        return None

    def _clock_rule(self, entry: Entry, now_ms: int | None, cited: bool) -> CommunityError | None:
        """A fresh JOIN (no entry held or in the batch cites it) of an invite expired by
        our clock is refused, and not remembered: it is taken later as an ancestor
        [COM-R44]."""
        if now_ms is None or entry.kind != Kind.JOIN or cited or entry.id in self._waiting:
            return None
        cap = entry.capability
        assert cap is not None
        if now_ms <= cap.expires_ms + self.clock_skew_ms:
            return None
        return _fail(
            ErrorCode.COMMUNITY_INVITE_EXPIRED,
            f"the invite expired at {cap.expires_ms}; it is {now_ms} here",
            "COM-R44",
        )

    def _reject(self, eid: bytes, error: StarlingError) -> AddResult:
        """Refuse ``eid`` and, with PARENT_REJECTED, every pending entry built on it."""
        self._remember_rejected(eid, error)
        self._cascade_rejection(eid)
        return AddResult(eid, Outcome.REJECTED, error)

    def _remember_rejected(self, eid: bytes, error: StarlingError) -> None:
        self._rejected[eid] = error
        while len(self._rejected) > self.max_rejected:
            self._rejected.popitem(last=False)
        self.stats["rejected"] += 1
        self.stats[f"rejected_{error.code.name}"] += 1
        self._events.append(EntryRejected(eid, error))

    def _offer(self, entry: Entry, now_ms: int | None) -> AddResult:
        for parent in entry.parents:
            if parent in self._rejected:
                return self._reject(entry.id, self._parent_rejected(parent))
        missing = [p for p in entry.parents if p not in self._nodes]
        if missing:
            self._pending[entry.id] = (entry, now_ms)
            for parent in missing:
                self._waiting.setdefault(parent, set()).add(entry.id)
            self.stats["pending"] += 1
            self._bound_pending()
            if entry.id not in self._pending:
                return AddResult(
                    entry.id,
                    Outcome.REJECTED,
                    _fail(ErrorCode.COMMUNITY_PENDING_LIMIT, "too many pending", "COM-R35"),
                )
            return AddResult(entry.id, Outcome.PENDING)
        return self._admit_cascade(entry)

    @staticmethod
    def _parent_rejected(parent: bytes) -> CommunityError:
        return _fail(
            ErrorCode.COMMUNITY_PARENT_REJECTED,
            f"parent {parent.hex()[:16]} was rejected",
            "COM-R32",
        )

    def _admit_cascade(self, first: Entry) -> AddResult:
        """Admit ``first``, then every pending entry whose last missing parent it was."""
        work: deque[Entry] = deque([first])
        result: AddResult | None = None
        while work:
            entry = work.popleft()
            error = self._admit(entry)
            if error is not None:
                outcome = self._reject(entry.id, error)
            else:
                outcome = AddResult(entry.id, Outcome.ACCEPTED)
                for child_id in sorted(self._waiting.pop(entry.id, ())):
                    item = self._pending.get(child_id)
                    if item is None:
                        continue
                    child = item[0]
                    if all(p in self._nodes for p in child.parents):
                        del self._pending[child_id]
                        work.append(child)
            if result is None:
                result = outcome
        assert result is not None
        return result

    def _cascade_rejection(self, eid: bytes) -> None:
        stack = [eid]
        while stack:
            parent = stack.pop()
            for child_id in sorted(self._waiting.pop(parent, ())):
                item = self._pending.pop(child_id, None)
                if item is None:
                    continue
                self._unwait(item[0])
                self._remember_rejected(child_id, self._parent_rejected(parent))
                stack.append(child_id)

    def _unwait(self, entry: Entry) -> None:
        for parent in entry.parents:
            children = self._waiting.get(parent)
            if children is not None:
                children.discard(entry.id)
                if not children:
                    del self._waiting[parent]

    def _bound_pending(self) -> None:
        while len(self._pending) > self.max_pending:
            _, (entry, _) = self._pending.popitem(last=False)
            self._unwait(entry)
            self.stats["pending_dropped"] += 1

    def expire(self, now_ms: int) -> None:
        """Drop pending entries older than ``pending_ttl_ms`` [COM-R35]."""
        for eid, (entry, arrived) in list(self._pending.items()):
            if arrived is not None and arrived < now_ms - self.pending_ttl_ms:
                del self._pending[eid]
                self._unwait(entry)
                self.stats["pending_expired"] += 1

    # -- admission ------------------------------------------------------------------------

    def _admit(self, entry: Entry) -> CommunityError | None:
        """Judge ``entry`` (all parents stored) in the state of its causal past [COM-R31];
        store it if admissible."""
        parents = [self._nodes[p] for p in entry.parents]
        height = 1 + max((p.height for p in parents), default=-1)
        key = (height, entry.id)
        extends_all = self._heads <= set(entry.parents)
        owned = False
        outside: set[bytes] | None = None  # the stored entries concurrent with it, if known
        if extends_all:
            self._flush()
            state = self._state
            self.stats["fast_path"] += 1
        elif len(parents) == 1 and parents[0].entry.id in self._cache:
            state = self._cache.pop(parents[0].entry.id)
            owned = True
            self.stats["cache_hits"] += 1
        else:
            outside = self._outside_past(entry.parents)
            state = self._state_without(outside)
            owned = True
        try:
            need_author, need_inviter = state.check(entry)
        except CommunityError as exc:
            if owned and len(parents) == 1:
                self._remember(parents[0].entry.id, state)
            return exc
        mask = 0
        for parent in parents:
            mask |= parent.mask
        bit = -1
        if entry.kind in _SANCTIONS:
            bit = self._next_bit
            self._next_bit += 1
            mask |= 1 << bit
        uses: tuple[tuple[bytes, int], ...] = ()
        if entry.author != self.community:
            uses = ((entry.author, need_author),)
        invite = None if entry.capability is None else entry.capability.id
        if entry.kind == Kind.JOIN:
            assert entry.capability is not None
            if entry.capability.inviter != self.community:
                uses += ((entry.capability.inviter, need_inviter),)
        node = _Node(entry, key, mask, bit, uses, _sets(entry), invite)
        self._store(node)
        if extends_all:  # the newest entry, concurrent with nothing: apply in place
            if self._since_cp >= self._interval(state):
                self._checkpoint(key, state)
            state.apply(entry)
            self._since_cp += 1
            self._status[entry.id] = None
            self._applied = key
        else:
            if self._applied is not None and key < self._applied:
                self._invalidate(key)
            self._link_attacks(node, outside)
        if owned:
            state.apply(entry)
            self._remember(entry.id, state)
        self._events.append(EntryAccepted(entry))
        self.stats["accepted"] += 1
        return None

    def _remember(self, eid: bytes, state: AuthorityState) -> None:
        self._cache[eid] = state
        self._cache.move_to_end(eid)
        while len(self._cache) > 8:
            self._cache.popitem(last=False)

    def _store(self, node: _Node) -> None:
        entry = node.entry
        self._nodes[entry.id] = node
        bisect.insort(self._order, node.key)
        self._heads.difference_update(entry.parents)
        self._heads.add(entry.id)
        for principal, _ in node.uses:
            self._by_principal.setdefault(principal, []).append(node)
        if node.sets is not None and node.sets[0] not in (p for p, _ in node.uses):
            self._by_principal.setdefault(node.sets[0], []).append(node)
        if node.bit >= 0 and node.sets is not None:
            self._sanctions_on.setdefault(node.sets[0], []).append(node)
        if node.invite is not None:
            self._by_invite.setdefault(node.invite, []).append(node)

    def _link_attacks(self, node: _Node, outside: set[bytes] | None) -> None:
        """Record the attacks between ``node`` and the stored entries concurrent with it.

        ``outside``: the entries stored before ``node`` that are not in its causal past,
        when the caller has them. Nothing stored descends from a new entry, so these are
        exactly the entries concurrent with it.
        """
        added = False
        principals = {p for p, _ in node.uses}
        if node.sets is not None:
            principals.add(node.sets[0])
        candidates = [s for p in principals for s in self._sanctions_on.get(p, ())]
        if node.entry.kind == Kind.JOIN and node.invite is not None:
            candidates += [
                s
                for s in self._by_invite.get(node.invite, ())
                if s.entry.kind == Kind.INVITE_REVOKE
            ]
        for sanction in candidates:
            # Nothing stored descends from a new entry: concurrent = not an ancestor.
            if sanction is node or (node.mask >> sanction.bit) & 1:
                continue
            if _attacks(sanction, node):
                added |= self._add_attack(sanction, node)
        if node.bit >= 0:
            if node.entry.kind == Kind.INVITE_REVOKE:
                assert node.invite is not None
                targets = self._by_invite.get(node.invite, [])
            else:
                assert node.sets is not None
                targets = self._by_principal.get(node.sets[0], [])
            hits = [t for t in targets if t is not node and _attacks(node, t)]
            if hits and outside is None:
                outside = self._outside_past(node.entry.parents)
            for target in hits:
                if outside is not None and target.entry.id in outside:
                    added |= self._add_attack(node, target)
        if added:
            self._relabel()

    def _add_attack(self, sanction: _Node, target: _Node) -> bool:
        atts = self._attackers.setdefault(target.entry.id, set())
        if sanction.entry.id in atts:
            return False
        atts.add(sanction.entry.id)
        self._attacks.setdefault(sanction.entry.id, set()).add(target.entry.id)
        self.stats["attacks"] += 1
        return True

    def _relabel(self) -> None:
        overruled = _grounded(self._attackers, set())
        changed = overruled ^ self._overruled
        self._overruled = overruled
        if changed:
            self._invalidate(min(self._nodes[eid].key for eid in changed))

    def _outside_past(self, parents: Iterable[bytes]) -> set[bytes]:
        """The stored entries that are not in the down-set of ``parents`` (which are
        stored): a walk down from the heads that stops once only the past is left."""
        inside: dict[bytes, bool] = {}
        heap: list[tuple[int, bytes]] = []
        outside_queued = 0
        for eid in parents:
            if eid in self._nodes and eid not in inside:
                inside[eid] = True
                heapq.heappush(heap, (-self._nodes[eid].height, eid))
        for eid in self._heads:
            if eid not in inside:
                inside[eid] = False
                outside_queued += 1
                heapq.heappush(heap, (-self._nodes[eid].height, eid))
        result: set[bytes] = set()
        while outside_queued:
            _, eid = heapq.heappop(heap)
            self.stats["walk_steps"] += 1
            in_past = inside[eid]
            if not in_past:
                outside_queued -= 1
                result.add(eid)
            for parent in self._nodes[eid].entry.parents:
                seen = inside.get(parent)
                if seen is None:
                    inside[parent] = in_past
                    outside_queued += not in_past
                    heapq.heappush(heap, (-self._nodes[parent].height, parent))
                elif in_past and not seen:
                    inside[parent] = True
                    outside_queued -= 1
        return result

    # -- replay ---------------------------------------------------------------------------

    def _interval(self, state: AuthorityState) -> int:
        # Copying a state costs about what replaying 1/64 of its size in entries does.
        return max(self.checkpoint_interval, state.size() // 64)

    def _checkpoint(self, key: Key, state: AuthorityState) -> None:
        self._cp_keys.append(key)
        self._cp_states.append(state.copy())
        self._since_cp = 0
        self.stats["checkpoints"] += 1
        if len(self._cp_keys) > self.max_checkpoints:
            # Concurrent entries land near the end of the order: keep the recent half of
            # the checkpoints and every other one of the older half (spacing doubles
            # with age, memory stays bounded).
            half = len(self._cp_keys) // 2
            keep = [i for i in range(len(self._cp_keys)) if i >= half or i % 2 == 0]
            self._cp_keys = [self._cp_keys[i] for i in keep]
            self._cp_states = [self._cp_states[i] for i in keep]

    def _invalidate(self, key: Key) -> None:
        """Entries from ``key`` on must be replayed again; later checkpoints are stale."""
        if self._applied is not None and key <= self._applied:
            self._dirty = key if self._dirty is None else min(self._dirty, key)
        cut = bisect.bisect_right(self._cp_keys, key)
        del self._cp_keys[cut:], self._cp_states[cut:]

    def _start_at(self, key: Key) -> tuple[int, AuthorityState]:
        """The order index and a copy of the state of the last checkpoint at or before key."""
        i = bisect.bisect_right(self._cp_keys, key) - 1
        if i < 0:
            return 0, AuthorityState(self.community)
        return bisect.bisect_left(self._order, self._cp_keys[i]), self._cp_states[i].copy()

    def _flush(self) -> None:
        """Bring the running state up to date with every stored entry [COM-R34]."""
        if self._dirty is not None:
            start, self._state = self._start_at(self._dirty)
            self._dirty = None
            last_cp = bisect.bisect_left(self._order, self._cp_keys[-1]) if self._cp_keys else 0
            self._since_cp = start - last_cp
        elif self._applied is None:
            start = 0
        else:
            start = bisect.bisect_right(self._order, self._applied)
        if start >= len(self._order):
            return
        state = self._state
        for key in self._order[start:]:
            if self._since_cp >= self._interval(state):
                self._checkpoint(key, state)
            eid = key[1]
            self.stats["replay_steps"] += 1
            self._since_cp += 1
            if eid in self._overruled:
                self._status[eid] = self._overruled_error(eid)
                continue
            entry = self._nodes[eid].entry
            try:
                state.check(entry)
            except CommunityError as exc:
                self._status[eid] = exc
                continue
            state.apply(entry)
            self._status[eid] = None
        self._applied = self._order[-1]

    def _overruled_error(self, eid: bytes) -> CommunityError:
        by = sorted(self._attackers.get(eid, ()))
        return _fail(
            ErrorCode.COMMUNITY_OVERRULED,
            "overruled by concurrent sanction " + ", ".join(b.hex()[:16] for b in by),
            "COM-R33",
        )

    def _state_without(self, outside: set[bytes]) -> AuthorityState:
        """The state of the stored entries but ``outside`` (a causal past) [COM-R31]."""
        self.stats["past_replays"] += 1
        if any(eid in self._attacks for eid in outside):
            overruled = _grounded(self._attackers, outside)
            differ = (overruled ^ self._overruled) - outside
        else:
            overruled, differ = self._overruled - outside, set()
        first = min(self._nodes[eid].key for eid in outside | differ)
        start, state = self._start_at(first)
        for key in self._order[start:]:
            eid = key[1]
            if eid in outside or eid in overruled:
                continue
            self.stats["past_replay_steps"] += 1
            entry = self._nodes[eid].entry
            try:
                state.check(entry)
            except CommunityError:
                continue
            state.apply(entry)
        return state

    # -- views ----------------------------------------------------------------------------

    @property
    def state(self) -> AuthorityState:
        """The replayed state of every stored entry. Read it, do not change it."""
        self._flush()
        return self._state

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, eid: object) -> bool:
        return eid in self._nodes

    def heads(self) -> list[bytes]:
        """The stored entries no stored entry names as parent: a new entry's parents
        [COM-R17]."""
        return sorted(self._heads)

    def missing(self) -> list[bytes]:
        """Parents that pending entries wait for and nobody here holds: fetch these."""
        return sorted(p for p in self._waiting if p not in self._pending and p not in self._nodes)

    def pending(self) -> list[bytes]:
        return list(self._pending)

    def order(self) -> list[bytes]:
        """Every stored entry in replay order: height, then ID [COM-R30]."""
        return [eid for _, eid in self._order]

    def get(self, eid: bytes) -> bytes | None:
        node = self._nodes.get(eid)
        return None if node is None else node.entry.raw

    def entry(self, eid: bytes) -> Entry | None:
        node = self._nodes.get(eid)
        return None if node is None else node.entry

    def lacking(self, their_heads: Iterable[bytes]) -> list[bytes]:
        """The entries a peer with ``their_heads`` lacks (their heads we do not hold are
        ignored), in replay order, so parents come first."""
        known = [h for h in their_heads if h in self._nodes]
        outside = self._outside_past(known) if known else set(self._nodes)
        return [self._nodes[eid].entry.raw for _, eid in self._order if eid in outside]

    def status(self, eid: bytes) -> EntryStatus:
        if eid in self._nodes:
            self._flush()
            error = self._status.get(eid)
            return EntryStatus("effective") if error is None else EntryStatus("void", error)
        if eid in self._pending:
            return EntryStatus("pending")
        rejected = self._rejected.get(eid)
        if rejected is not None:
            return EntryStatus("rejected", rejected)
        return EntryStatus("unknown")

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None
