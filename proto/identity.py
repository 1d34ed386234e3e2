"""Identities, peer IDs, signatures and signed envelopes (spec/01-identity.md).

Theory of operation
-------------------
A Starling identity is an Ed25519 key pair; nothing else (no account, no
certificate authority). Three derived things live here:

* the **peer ID**: SHA-256 over a fixed tag and the public key [ID-R2], with
  one text form, bech32m with prefix ``sp`` [ID-R3];
* **signatures** under pinned verification rules [ID-R10]..[ID-R13]. Ed25519
  libraries disagree on edge cases (non-canonical S, small-order or
  non-canonical keys, cofactored or cofactorless equations); a node that
  accepts what another rejects splits the network, so the rule set is stated
  exactly and checked here before libsodium evaluates the equation;
* **signed envelopes**: a signer key, payload bytes and a signature over a
  domain-separation string and those bytes exactly as carried [ID-R20]. The
  payload is never re-encoded before verification; an envelope admits no other
  fields, so a third party cannot produce a second encoding of it [ID-R22].

No randomness is drawn here: keys come from 32-byte seeds the caller supplies.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from . import bech32m, codec
from .errors import (
    ErrorCode,
    IdentityError,
    LocalProtocolError,
    SignatureError,
    StarlingError,
)

__all__ = [
    "PEER_ID_HRP",
    "Envelope",
    "PeerId",
    "PrivateKey",
    "PublicKey",
    "ed25519_verify",
    "open_envelope",
    "read_envelope",
    "seal",
    "signing_input",
    "verify_batch",
]

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
PEER_ID_SIZE = 32
PEER_ID_HRP = "sp"
PEER_ID_TAG = b"starling/peer-id/1"
SIGNATURE_CONTEXT = b"starling/sig/1\x00"

# Curve25519 field prime, Ed25519 group order and curve constant (RFC 8032, 5.1).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

# The y coordinates of the eight points of small order (the torsion subgroup): the
# identity (y=1), the point of order 2 (y=-1), the two of order 4 (y=0) and the four of
# order 8 (two y values, each with two x signs). tests/test_identity.py recomputes them.
SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _P - 1,
        0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826,
        0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7,
    }
)

_DOMAIN_RE = re.compile(r"starling/[a-z0-9][a-z0-9-]{0,40}/(0|[1-9][0-9]{0,3})")


def _decode_point_y(encoded: bytes, what: str) -> int:
    """Apply the RFC 8032 5.1.3 decoding checks; return y. Raises IdentityError."""
    if len(encoded) != PUBLIC_KEY_SIZE:
        raise IdentityError(
            ErrorCode.KEY_LENGTH, f"{what} is {len(encoded)} bytes, not 32", "ID-R10"
        )
    value = int.from_bytes(encoded, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= _P:
        raise IdentityError(
            ErrorCode.KEY_NON_CANONICAL, f"{what} encodes y >= p (non-canonical)", "ID-R10"
        )
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        if (v * x * x + u) % _P != 0:
            raise IdentityError(
                ErrorCode.KEY_NOT_ON_CURVE, f"{what} is not a point on the curve", "ID-R10"
            )
        x = (x * _SQRT_M1) % _P
    if x == 0 and sign:
        raise IdentityError(
            ErrorCode.KEY_NON_CANONICAL, f"{what} encodes x = 0 with the sign bit set", "ID-R10"
        )
    return y


@functools.lru_cache(maxsize=4096)
def check_public_key(encoded: bytes) -> None:
    """[ID-R10] [ID-R11]: canonical, on the curve, not of small order.

    The result is cached per key (only successes are: a raising call is not
    cached): peers meet the same keys again and again, and the square root
    behind the curve check is a 255-bit modular exponentiation in Python.
    """
    if _decode_point_y(bytes(encoded), "public key") in SMALL_ORDER_Y:
        raise IdentityError(
            ErrorCode.KEY_SMALL_ORDER, "public key is a point of small order", "ID-R11"
        )


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify a raw Ed25519 signature under Starling's pinned rules.

    [ID-R10]/[ID-R11] on the key, then [ID-R12] on the signature's shape, then the
    cofactorless equation [ID-R13] (libsodium's). Raises IdentityError for a bad key
    and SignatureError for a bad signature; returns None when valid.
    """
    check_public_key(public_key)
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(
            ErrorCode.SIG_LENGTH, f"signature is {len(signature)} bytes, not 64", "ID-R12"
        )
    if int.from_bytes(signature[32:], "little") >= _L:
        raise SignatureError(
            ErrorCode.SIG_NON_CANONICAL_S,
            "signature scalar S is not below the group order L",
            "ID-R12",
        )
    r_y = int.from_bytes(signature[:32], "little") & ((1 << 255) - 1)
    if r_y % _P in SMALL_ORDER_Y:
        raise SignatureError(
            ErrorCode.SIG_SMALL_ORDER_R, "signature point R has small order", "ID-R12"
        )
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(ErrorCode.SIG_INVALID, "signature does not verify", "ID-R13") from None


def _check_domain(domain: str) -> bytes:
    if not _DOMAIN_RE.fullmatch(domain):
        raise LocalProtocolError(
            ErrorCode.SIG_DOMAIN,
            f"signature domain {domain!r} is not of the form starling/<name>/<major>",
            "ID-R20",
        )
    return domain.encode("ascii")


def signing_input(domain: str, payload: bytes) -> bytes:
    """The bytes an identity signs: context, domain length and domain, payload [ID-R20]."""
    raw = _check_domain(domain)
    return SIGNATURE_CONTEXT + bytes((len(raw),)) + raw + bytes(payload)


def verify_batch(items: list[tuple[bytes, str, bytes, bytes]]) -> list[StarlingError | None]:
    """Check many signatures ``[(key, domain, payload, signature)]``, each on its own:
    per item None when it holds, else the error that ``PublicKey(key).verify`` raises."""
    out: list[StarlingError | None] = []
    prefixes: dict[str, bytes] = {}  # domain -> signing input before the payload [ID-R20]
    for key, domain, payload, signature in items:
        try:
            prefix = prefixes.get(domain)
            if prefix is None:
                prefix = prefixes[domain] = signing_input(domain, b"")
            # The key's checks [ID-R10] [ID-R11] come first, as in PublicKey(key).verify.
            ed25519_verify(key, prefix + payload, signature)
        except StarlingError as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


@dataclass(frozen=True, slots=True)
class PeerId:
    """32 bytes naming a peer: SHA-256("starling/peer-id/1" || public key) [ID-R2]."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PEER_ID_SIZE:
            raise IdentityError(
                ErrorCode.ID_TEXT_LENGTH, f"peer ID is {len(self.raw)} bytes, not 32", "ID-R2"
            )

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        return cls(hashlib.sha256(PEER_ID_TAG + public_key).digest())

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the text form [ID-R3]; errors carry ID_TEXT_* codes."""
        return cls(bech32m.decode(text, PEER_ID_HRP, PEER_ID_SIZE, "peer ID"))

    def text(self) -> str:
        return bech32m.encode(PEER_ID_HRP, self.raw)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"PeerId({self.text()})"


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated Ed25519 public key (checked at construction, [ID-R10] [ID-R11])."""

    raw: bytes

    def __post_init__(self) -> None:
        check_public_key(self.raw)

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self.raw)

    def verify(self, domain: str, payload: bytes, signature: bytes) -> None:
        """Verify ``signature`` over ``signing_input(domain, payload)``; raise SignatureError."""
        ed25519_verify(self.raw, signing_input(domain, payload), signature)


class PrivateKey:
    """An Ed25519 signing key, always built from a caller-supplied 32-byte seed."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise LocalProtocolError(
                ErrorCode.KEY_LENGTH, f"seed is {len(seed)} bytes, not 32", "ID-R1"
            )
        self._key = nacl.signing.SigningKey(bytes(seed))
        self.public_key = PublicKey(bytes(self._key.verify_key))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def peer_id(self) -> PeerId:
        return self.public_key.peer_id

    def sign(self, domain: str, payload: bytes) -> bytes:
        """The 64-byte signature over ``signing_input(domain, payload)`` [ID-R20]."""
        return self._key.sign(signing_input(domain, payload)).signature

    def __repr__(self) -> str:  # never print secret material
        return f"PrivateKey(peer_id={self.peer_id.text()})"


# ----------------------------------------------------------------------------- envelopes

ENVELOPE_FIELDS = (
    codec.Field(1, "signer", bytes, size=PUBLIC_KEY_SIZE),
    codec.Field(2, "payload", bytes),
    codec.Field(3, "signature", bytes, size=SIGNATURE_SIZE),
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified envelope: who signed, and the payload bytes exactly as carried."""

    signer: PublicKey
    payload: bytes
    signature: bytes

    @property
    def signer_id(self) -> PeerId:
        return self.signer.peer_id


def seal(key: PrivateKey, domain: str, payload: bytes) -> bytes:
    """Encode a signed envelope ``{1: signer, 2: payload, 3: signature}`` [ID-R21]."""
    signature = key.sign(domain, payload)
    return codec.encode({1: key.public_key.raw, 2: bytes(payload), 3: signature})


def open_envelope(
    data: bytes, domain: str, limits: codec.DecodeLimits = codec.DEFAULT_LIMITS
) -> Envelope:
    """Decode and verify an envelope expected under ``domain``.

    Raises CodecError (structure), IdentityError (signer key) or SignatureError.
    The caller decodes ``payload`` with its own schema afterwards.
    """
    _check_domain(domain)  # our own argument: a local error comes before any remote one
    signer, payload, signature = read_envelope(data, limits)
    public_key = PublicKey(signer)
    public_key.verify(domain, payload, signature)
    return Envelope(public_key, payload, signature)


def read_envelope(
    data: bytes, limits: codec.DecodeLimits = codec.DEFAULT_LIMITS
) -> tuple[bytes, bytes, bytes]:
    """The envelope's structure alone: ``(signer key, payload, signature)``, unverified.

    For records whose checks put cheap ones (their payload's fields) before the
    signature; they verify with ``PublicKey(signer).verify(domain, ...)`` after.
    Raises CodecError, or SignatureError for keys beyond 1-3 [ID-R22].
    """
    message = codec.decode(data, limits)
    if isinstance(message, dict):
        extra = sorted(set(message) - {1, 2, 3})
        if extra:
            raise SignatureError(
                ErrorCode.ENVELOPE_EXTRA_FIELD,
                f"envelope carries extra key {extra[0]}; envelopes admit no extensions",
                "ID-R22",
            )
    fields = codec.read_fields(message, ENVELOPE_FIELDS, "envelope")
    signer, payload, signature = fields["signer"], fields["payload"], fields["signature"]
    assert isinstance(signer, bytes) and isinstance(payload, bytes)
    assert isinstance(signature, bytes)
    return signer, payload, signature
