"""Registered error codes and the exceptions that carry them.

Theory of operation
-------------------
Every rejection in Starling has a number in the error-code registry
(spec/90-registries.md). The number is what goes on the wire (close reasons,
error replies) and what test vectors name; the symbolic name is what humans
read. Each exception also names the requirement ID of the spec rule that was
violated, so an error message points a reimplementer at the sentence to read.

Following h11, the exception type says whose fault it was:

* ``RemoteProtocolError`` -- the bytes we received are bad (the peer's fault).
  Codec and signature failures are of this kind.
* ``LocalProtocolError`` -- our own caller asked for something the protocol
  does not allow (encoding a float, signing with a malformed domain).
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The error-code registry.

    Ranges: 0x0000 no error, 0x01xx codec, 0x02xx identity, 0x03xx signatures,
    0x04xx secure sessions, 0x05xx DHT, 0x06xx gossip, 0x07xx NAT traversal and
    relays, 0x08xx communities. QUIC application close and stream reset codes use
    these same numbers.
    """

    NO_ERROR = 0x0000

    # -- 0x01xx: CBOR profile (spec/00-conventions.md) --------------------------------
    CBOR_TRUNCATED = 0x0101
    CBOR_TRAILING_BYTES = 0x0102
    CBOR_NON_SHORTEST = 0x0103
    CBOR_INDEFINITE_LENGTH = 0x0104
    CBOR_RESERVED_INFO = 0x0105
    CBOR_UNEXPECTED_BREAK = 0x0106
    CBOR_FLOAT = 0x0107
    CBOR_SIMPLE_VALUE = 0x0108
    CBOR_UNDECLARED_TAG = 0x0109
    CBOR_MAP_KEY_TYPE = 0x010A
    CBOR_MAP_KEY_ORDER = 0x010B
    CBOR_DUPLICATE_KEY = 0x010C
    CBOR_INVALID_UTF8 = 0x010D
    CBOR_TOO_LARGE = 0x010E
    CBOR_TOO_DEEP = 0x010F
    CBOR_UNENCODABLE = 0x0110
    # Schema level: a well-formed item that is not the message the context expects.
    SCHEMA_TYPE = 0x0120
    SCHEMA_MISSING_FIELD = 0x0121
    SCHEMA_UNKNOWN_CRITICAL_FIELD = 0x0122
    SCHEMA_UNKNOWN_MESSAGE_TYPE = 0x0123
    SCHEMA_VALUE = 0x0124

    # -- 0x02xx: identity (spec/01-identity.md) ---------------------------------------
    ID_TEXT_CHECKSUM = 0x0201
    ID_TEXT_PREFIX = 0x0202
    ID_TEXT_CHARACTER = 0x0203
    ID_TEXT_LENGTH = 0x0204
    ID_TEXT_MIXED_CASE = 0x0205
    ID_TEXT_PADDING = 0x0206
    KEY_LENGTH = 0x0210
    KEY_NON_CANONICAL = 0x0211
    KEY_SMALL_ORDER = 0x0212
    KEY_NOT_ON_CURVE = 0x0213
    KEY_FILE_FORMAT = 0x0218
    KEY_FILE_PERMISSIONS = 0x0219

    # -- 0x03xx: signatures and envelopes (spec/01-identity.md) -----------------------
    SIG_LENGTH = 0x0301
    SIG_NON_CANONICAL_S = 0x0302
    SIG_SMALL_ORDER_R = 0x0303
    SIG_INVALID = 0x0304
    SIG_DOMAIN = 0x0305
    ENVELOPE_EXTRA_FIELD = 0x0306

    # -- 0x04xx: secure sessions (spec/02-secure-session.md) --------------------------
    SESSION_NOISE_AUTH = 0x0401
    SESSION_HANDSHAKE_MALFORMED = 0x0402
    SESSION_IDENTITY_INVALID = 0x0403
    SESSION_PEER_MISMATCH = 0x0404
    SESSION_HANDSHAKE_UNEXPECTED = 0x0405
    SESSION_HANDSHAKE_TIMEOUT = 0x0406
    SESSION_NOT_READY = 0x0407
    SESSION_FRAME_TOO_LARGE = 0x0410
    SESSION_FRAME_AUTH = 0x0411
    SESSION_PROTOCOL_UNKNOWN = 0x0412
    SESSION_STREAM_HEADER = 0x0413
    SESSION_STREAM_TRUNCATED = 0x0414
    SESSION_LIMIT = 0x0420
    SESSION_IDLE_TIMEOUT = 0x0421
    SESSION_SHUTDOWN = 0x0422

    # -- 0x05xx: DHT (spec/03-dht.md) -------------------------------------------------
    DHT_MALFORMED = 0x0501
    DHT_TXID_UNKNOWN = 0x0502
    DHT_PROOF_INVALID = 0x0503
    DHT_TOKEN_INVALID = 0x0504
    DHT_RECORD_INVALID = 0x0505
    DHT_RECORD_KIND = 0x0506
    DHT_RECORD_KEY_MISMATCH = 0x0507
    DHT_RECORD_SEQ = 0x0508
    DHT_RECORD_TOO_LARGE = 0x0509
    DHT_RECORD_TTL = 0x050A
    DHT_KEY_FULL = 0x050B
    DHT_SIGNER_FULL = 0x050C
    DHT_STORE_FULL = 0x050D
    DHT_RATE_LIMITED = 0x050E
    DHT_NOT_SERVING = 0x050F

    # -- 0x06xx: gossip (spec/05-gossip.md) -------------------------------------------
    GOSSIP_MESSAGE_INVALID = 0x0601
    GOSSIP_MESSAGE_TOO_LARGE = 0x0602
    GOSSIP_MESSAGE_REJECTED = 0x0603
    GOSSIP_MESSAGE_FUTURE = 0x0604
    GOSSIP_NOT_SUBSCRIBED = 0x0605
    GOSSIP_RATE_LIMITED = 0x0606
    GOSSIP_IHAVE_LIMIT = 0x0607
    GOSSIP_IWANT_LIMIT = 0x0608
    GOSSIP_PROMISE_BROKEN = 0x0609
    GOSSIP_GRAFT_BACKOFF = 0x060A
    GOSSIP_GRAYLISTED = 0x060B
    GOSSIP_TOPIC_LIMIT = 0x060C
    GOSSIP_UNSOLICITED = 0x060D
    GOSSIP_SYNC_LIMIT = 0x060E
    GOSSIP_IDONTWANT_LIMIT = 0x060F
    GOSSIP_CHOKE_LIMIT = 0x0610

    # -- 0x07xx: NAT traversal, probes, relays, punching (spec/04-nat-traversal.md) ----
    NAT_MALFORMED = 0x0701
    NAT_UNEXPECTED_MESSAGE = 0x0702
    NAT_PROBE_AUTH = 0x0703
    NAT_PROBE_UNSOLICITED = 0x0704
    NAT_PROBE_RATE_LIMITED = 0x0705
    NAT_DIAL_BACK_ADDRESS = 0x0710
    NAT_DIAL_BACK_RATE_LIMITED = 0x0711
    NAT_DIAL_BACK_NOT_SERVING = 0x0712
    NAT_DIAL_BACK_TIMEOUT = 0x0713
    NAT_VOUCHER_INVALID = 0x0720
    NAT_VOUCHER_EXPIRED = 0x0721
    NAT_VOUCHER_MISMATCH = 0x0722
    NAT_RELAY_NOT_SERVING = 0x0730
    NAT_RELAY_RESERVATION_LIMIT = 0x0731
    NAT_RELAY_IP_LIMIT = 0x0732
    NAT_RELAY_NO_RESERVATION = 0x0733
    NAT_RELAY_CIRCUIT_LIMIT = 0x0734
    NAT_RELAY_DURATION_LIMIT = 0x0735
    NAT_RELAY_DATA_LIMIT = 0x0736
    NAT_RELAY_TARGET_UNREACHABLE = 0x0737
    NAT_RELAY_TARGET_REFUSED = 0x0738
    NAT_RELAY_PACKET_SIZE = 0x0739
    NAT_PUNCH_FAILED = 0x0740
    NAT_PUNCH_TIMEOUT = 0x0741
    NAT_BOOTSTRAP_MALFORMED = 0x0750

    # -- 0x08xx: communities: authority entries, invites (spec/06-community.md) -------
    COMMUNITY_ENTRY_TOO_LARGE = 0x0801
    COMMUNITY_ENTRY_MALFORMED = 0x0802
    COMMUNITY_ENTRY_FORGED = 0x0803
    COMMUNITY_WRONG_COMMUNITY = 0x0804
    COMMUNITY_BAD_PARENTS = 0x0805
    COMMUNITY_CREATE_INVALID = 0x0806
    COMMUNITY_PARENT_REJECTED = 0x0807
    COMMUNITY_PENDING_LIMIT = 0x0808
    COMMUNITY_NOT_MEMBER = 0x0810
    COMMUNITY_BANNED = 0x0811
    COMMUNITY_NOT_PERMITTED = 0x0812
    COMMUNITY_BAD_TARGET = 0x0813
    COMMUNITY_UNKNOWN_CHANNEL = 0x0814
    COMMUNITY_ALREADY_MEMBER = 0x0815
    COMMUNITY_OVERRULED = 0x0816
    COMMUNITY_INVITE_INVALID = 0x0820
    COMMUNITY_INVITE_EXPIRED = 0x0821
    COMMUNITY_INVITE_REVOKED = 0x0822
    COMMUNITY_INVITE_EXHAUSTED = 0x0823
    COMMUNITY_INVITE_NOT_PERMITTED = 0x0824
    COMMUNITY_LINK_MALFORMED = 0x0830
    COMMUNITY_LINK_TOO_LONG = 0x0831
    # member feeds (06-community section 8): 0x0840-0x085f
    FEED_ENTRY_TOO_LARGE = 0x0840
    FEED_ENTRY_MALFORMED = 0x0841
    FEED_WRONG_COMMUNITY = 0x0842
    FEED_ENTRY_FORGED = 0x0843
    FEED_NOT_MEMBER = 0x0844
    FEED_AUTHOR_BANNED = 0x0845
    FEED_FROM_FUTURE = 0x0846
    FEED_FORK = 0x0847
    FEED_HLC_REGRESSION = 0x0848
    FEED_BAD_UPDATE = 0x0849
    FEED_PENDING_LIMIT = 0x084A
    # sync and live entries (06-community section 9): 0x0860-0x086f
    SYNC_MALFORMED = 0x0860
    SYNC_TOO_LARGE = 0x0861
    SYNC_LIMIT = 0x0862
    SYNC_UNEXPECTED = 0x0863
    # the client API (06-community section 11, local): 0x0870-0x087f
    COMMUNITY_UNKNOWN = 0x0870
    COMMUNITY_NO_SUCH_MEMBER = 0x0871
    COMMUNITY_AMBIGUOUS_NAME = 0x0872
    COMMUNITY_JOIN_FAILED = 0x0873


class StarlingError(Exception):
    """Base of every error Starling raises on purpose.

    ``code`` is the registry entry, ``requirement`` the spec requirement ID
    (such as ``"CBOR-R4"``) whose rule was broken, ``reason`` a phrase for humans.
    """

    def __init__(self, code: ErrorCode, reason: str, requirement: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.requirement = requirement
        where = f" [{requirement}]" if requirement else ""
        super().__init__(f"{code.name} (0x{int(code):04x}){where}: {reason}")


class RemoteProtocolError(StarlingError):
    """Received bytes violate the protocol: the sender is at fault."""


class LocalProtocolError(StarlingError):
    """Our caller asked for something the protocol forbids."""


class CodecError(RemoteProtocolError):
    """Bytes that are not a valid item of the Starling CBOR profile, or not the expected message."""


class IdentityError(RemoteProtocolError):
    """A malformed peer ID text form, public key or key file."""


class SignatureError(RemoteProtocolError):
    """A signature or signed envelope that does not verify under the pinned rules."""


class DhtError(RemoteProtocolError):
    """A DHT message or record that breaks spec/03-dht.md."""


class GossipError(RemoteProtocolError):
    """A gossip message or signed message that breaks spec/05-gossip.md."""


class NatError(RemoteProtocolError):
    """A probe, relay, punch or dial-back message that breaks spec/04-nat-traversal.md."""


class CommunityError(RemoteProtocolError):
    """An authority entry, invite or invite link that breaks spec/06-community.md."""


class SessionError(RemoteProtocolError):
    """A peer broke the secure-session protocol; the session or stream is closed with ``code``."""
