"""Starling's sans-IO protocol cores: codec, identity and (later) the protocol state machines.

Nothing in this package performs I/O, reads the clock or draws randomness; the
runtime in ``starling.node`` (or the simulator) supplies bytes, time and seeds.
One module per spec document: ``codec`` <-> spec/00-conventions.md,
``identity`` <-> spec/01-identity.md, ``errors`` <-> spec/90-registries.md.
"""

from .codec import DecodeLimits, Field, Tag, decode, encode
from .errors import (
    CodecError,
    ErrorCode,
    IdentityError,
    LocalProtocolError,
    RemoteProtocolError,
    SignatureError,
    StarlingError,
)
from .identity import Envelope, PeerId, PrivateKey, PublicKey, open_envelope, seal

__all__ = [
    "CodecError",
    "DecodeLimits",
    "Envelope",
    "ErrorCode",
    "Field",
    "IdentityError",
    "LocalProtocolError",
    "PeerId",
    "PrivateKey",
    "PublicKey",
    "RemoteProtocolError",
    "SignatureError",
    "StarlingError",
    "Tag",
    "decode",
    "encode",
    "open_envelope",
    "seal",
]
