"""Secure sessions: Noise XX inside QUIC, per-stream keys, frames (spec/02-secure-session.md).

Theory of operation
-------------------
QUIC (with a throwaway TLS certificate) carries the packets; Noise proves who
the peer is and encrypts every application byte end to end, so the guarantees
hold whatever path or relay the QUIC packets take later.

1. The QUIC client is the Noise initiator. On client-initiated bidirectional
   stream 0 the two sides run ``Noise_XX_25519_ChaChaPoly_SHA256`` [SES-R2]
   with a prologue that binds the protocol version and the network ID [SES-R3].
   Each handshake message travels as a frame: a 2-byte big-endian length, then
   the message [SES-R4]::

       initiator -> responder   msg1: e                       (empty payload)
       initiator <- responder   msg2: e, ee, s, es + payload  (responder identity)
       initiator -> responder   msg3: s, se + payload         (initiator identity)

   The payload proves the identity: the Ed25519 identity key and its signature
   over the sender's Noise static key, plus the stream protocols it speaks.

2. After the handshake both sides hold two keys from Noise's Split(), one per
   direction. Each QUIC stream gets its own pair of keys, derived with HKDF
   from those and the stream ID [SES-R11], so every stream starts its nonce at
   zero and no nonce is ever reused across streams.

3. A stream carries frames: length (2 bytes, big-endian) then ChaCha20-Poly1305
   ciphertext of at most 65535 bytes, i.e. at most 65519 bytes of plaintext
   [SES-R12]. The first frame from the stream's opener is the stream header
   naming the protocol [SES-R15].

The table of who may send what on stream 0 (anything else is
SESSION_HANDSHAKE_UNEXPECTED [SES-R10])::

    role       state          receives   -> sends   next state
    initiator  SENT_1         msg2          msg3     DONE
    responder  WAIT_1         msg1          msg2     SENT_2
    responder  SENT_2         msg3          -        DONE

Everything here is sans-IO: the caller supplies the identity key, the Noise
static and ephemeral private keys, and the stream bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
import warnings
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from . import codec
from .errors import CodecError, ErrorCode, LocalProtocolError, SessionError, StarlingError
from .identity import PeerId, PrivateKey, PublicKey

__all__ = [
    "ALPN",
    "HANDSHAKE_STREAM_ID",
    "MAX_FRAME_PLAINTEXT",
    "FrameReader",
    "FrameWriter",
    "Handshake",
    "HandshakePayload",
    "Role",
    "SessionKeys",
    "StreamHeader",
    "check_protocol_id",
    "x25519_public",
]

ALPN = "starling/1"
NOISE_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE_TAG = b"starling/noise/1"
NOISE_STATIC_DOMAIN = "starling/noise-static/1"
STREAM_KEY_INFO = b"starling/stream/1"
HANDSHAKE_STREAM_ID = 0
NETWORK_ID_SIZE = 4
MAX_HANDSHAKE_MESSAGE = 4096
MAX_FRAME_CIPHERTEXT = 65535
TAG_SIZE = 16
MAX_FRAME_PLAINTEXT = MAX_FRAME_CIPHERTEXT - TAG_SIZE  # 65519, Noise's limit too
MAX_PROTOCOLS = 64
MAX_PROTOCOL_ID = 64

_PROTOCOL_RE = re.compile(r"starling/[a-z0-9][a-z0-9-]{0,40}/(0|[1-9][0-9]{0,3})")


def check_protocol_id(protocol: str) -> str:
    """Protocol IDs have the form ``starling/<name>/<major>`` [SES-R15]."""
    if len(protocol) > MAX_PROTOCOL_ID or not _PROTOCOL_RE.fullmatch(protocol):
        raise LocalProtocolError(
            ErrorCode.SESSION_STREAM_HEADER,
            f"{protocol!r} is not a protocol ID of the form starling/<name>/<major>",
            "SES-R15",
        )
    return protocol


@functools.lru_cache(maxsize=64)
def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of ``private`` (cached: a node's static key is reused)."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


# ----------------------------------------------------------------------------- payloads

_PAYLOAD_FIELDS = (
    codec.Field(1, "identity", bytes, size=32),
    codec.Field(2, "signature", bytes, size=64),
    codec.Field(3, "protocols", list, max_size=MAX_PROTOCOLS),
)


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """What msg2 and msg3 carry inside Noise encryption [SES-R6]."""

    identity: bytes
    signature: bytes
    protocols: tuple[str, ...]

    @classmethod
    def make(
        cls, identity: PrivateKey, noise_static_public: bytes, protocols: tuple[str, ...]
    ) -> HandshakePayload:
        signature = identity.sign(NOISE_STATIC_DOMAIN, noise_static_public)
        return cls(identity.public_key.raw, signature, protocols)

    def encode(self) -> bytes:
        return codec.encode({1: self.identity, 2: self.signature, 3: list(self.protocols)})

    @classmethod
    def decode(cls, data: bytes) -> HandshakePayload:
        try:
            fields = codec.read_fields(
                codec.decode(data, codec.DecodeLimits(max_size=MAX_HANDSHAKE_MESSAGE, max_depth=3)),
                _PAYLOAD_FIELDS,
                "handshake payload",
            )
        except CodecError as exc:
            raise SessionError(
                ErrorCode.SESSION_HANDSHAKE_MALFORMED, f"bad handshake payload: {exc}", "SES-R6"
            ) from None
        protocols = fields["protocols"]
        assert isinstance(protocols, list)
        for p in protocols:
            if not isinstance(p, str) or len(p) > MAX_PROTOCOL_ID or not _PROTOCOL_RE.fullmatch(p):
                raise SessionError(
                    ErrorCode.SESSION_HANDSHAKE_MALFORMED,
                    f"handshake payload lists an invalid protocol ID {p!r}",
                    "SES-R6",
                )
        identity, signature = fields["identity"], fields["signature"]
        assert isinstance(identity, bytes) and isinstance(signature, bytes)
        return cls(identity, signature, tuple(protocols))  # type: ignore[arg-type]

    def verify(self, noise_static_public: bytes) -> PublicKey:
        """Check the identity key and its signature over the Noise static key [SES-R7]."""
        try:
            key = PublicKey(self.identity)
            key.verify(NOISE_STATIC_DOMAIN, noise_static_public, self.signature)
        except StarlingError as exc:
            raise SessionError(
                ErrorCode.SESSION_IDENTITY_INVALID,
                f"identity proof does not verify ({exc.code.name})",
                "SES-R7",
            ) from None
        return key


@functools.lru_cache(maxsize=64)
def _static_keypair(private: bytes) -> object:
    return NoiseConnection.from_name(
        NOISE_PROTOCOL_NAME
    ).noise_protocol.dh_fn.klass.from_private_bytes(private)


@functools.lru_cache(maxsize=64)
def _own_payload(identity: PrivateKey, static_public: bytes, protocols: tuple[str, ...]) -> bytes:
    # A node signs its Noise static key once, not once per handshake: the key, the
    # identity and the protocol list stay the same for the node's lifetime.
    return HandshakePayload.make(identity, static_public, protocols).encode()


# ----------------------------------------------------------------------------- keys


def _hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256 (length <= 32 needs one expand block)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The outcome of a completed handshake, from one side's point of view."""

    role: Role
    peer: PublicKey
    peer_protocols: tuple[str, ...]
    handshake_hash: bytes
    initiator_key: bytes  # Split() k1: frames the initiator sends
    responder_key: bytes  # Split() k2: frames the responder sends

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id

    def stream_key(self, stream_id: int, sender: Role) -> bytes:
        """Key for frames ``sender`` writes on QUIC stream ``stream_id`` [SES-R11]."""
        base = self.initiator_key if sender is Role.INITIATOR else self.responder_key
        return _hkdf_sha256(
            self.handshake_hash, base, STREAM_KEY_INFO + struct.pack(">Q", stream_id)
        )

    def stream_cipher(
        self, stream_id: int, max_frame: int = MAX_FRAME_CIPHERTEXT
    ) -> tuple[FrameWriter, FrameReader]:
        """This side's writer and reader for one stream."""
        other = Role.RESPONDER if self.role is Role.INITIATOR else Role.INITIATOR
        return (
            FrameWriter(self.stream_key(stream_id, self.role)),
            FrameReader(self.stream_key(stream_id, other), max_frame),
        )


# ----------------------------------------------------------------------------- frames


def _nonce(counter: int) -> bytes:
    # Noise's ChaChaPoly nonce: 32 zero bits then the 64-bit counter, little-endian.
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


class FrameWriter:
    """Seals plaintext into frames for one stream direction [SES-R12]."""

    __slots__ = ("_aead", "counter")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_FRAME_PLAINTEXT:
            raise LocalProtocolError(
                ErrorCode.SESSION_FRAME_TOO_LARGE,
                f"frame of {len(plaintext)} bytes exceeds {MAX_FRAME_PLAINTEXT}",
                "SES-R12",
            )
        ciphertext = self._aead.encrypt(_nonce(self.counter), plaintext, None)
        self.counter += 1
        return struct.pack(">H", len(ciphertext)) + ciphertext

    def seal_many(self, data: bytes) -> bytes:
        """Split ``data`` into maximum-size frames and seal each (at least one frame)."""
        if len(data) <= MAX_FRAME_PLAINTEXT:
            return self.seal(data)
        view = memoryview(data)
        return b"".join(
            self.seal(bytes(view[i : i + MAX_FRAME_PLAINTEXT]))
            for i in range(0, len(data), MAX_FRAME_PLAINTEXT)
        )


class FrameReader:
    """Reassembles and opens frames from one stream direction's bytes [SES-R12]..[SES-R14].

    ``feed`` takes bytes as QUIC delivers them (any split) and returns the whole
    plaintext frames they complete; ``end`` is called at FIN.
    """

    __slots__ = ("_aead", "_buffer", "counter", "max_frame")

    def __init__(self, key: bytes, max_frame: int = MAX_FRAME_CIPHERTEXT) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._buffer = bytearray()
        self.counter = 0
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if size > self.max_frame:
                raise SessionError(
                    ErrorCode.SESSION_FRAME_TOO_LARGE,
                    f"frame of {size} bytes exceeds this stream's limit of {self.max_frame}",
                    "SES-R14",
                )
            if size < TAG_SIZE:
                raise SessionError(
                    ErrorCode.SESSION_FRAME_AUTH,
                    f"frame of {size} bytes is shorter than its tag",
                    "SES-R13",
                )
            if len(buf) - pos - 2 < size:
                break
            ciphertext = bytes(buf[pos + 2 : pos + 2 + size])
            try:
                frames.append(self._aead.decrypt(_nonce(self.counter), ciphertext, None))
            except InvalidTag:
                raise SessionError(
                    ErrorCode.SESSION_FRAME_AUTH,
                    f"frame {self.counter} does not authenticate",
                    "SES-R13",
                ) from None
            self.counter += 1
            pos += 2 + size
        if pos:
            del buf[:pos]
        return frames

    def end(self) -> None:
        if self._buffer:
            raise SessionError(
                ErrorCode.SESSION_STREAM_TRUNCATED,
                f"stream ended inside a frame ({len(self._buffer)} bytes left over)",
                "SES-R17",
            )


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The first frame on every application stream, from its opener [SES-R15]."""

    protocol: str

    def encode(self) -> bytes:
        return codec.encode({1: check_protocol_id(self.protocol)})

    @classmethod
    def decode(cls, data: bytes) -> StreamHeader:
        try:
            fields = codec.read_fields(
                codec.decode(data, codec.DecodeLimits(max_size=1024, max_depth=2)),
                (codec.Field(1, "protocol", str, max_size=MAX_PROTOCOL_ID),),
                "stream header",
            )
        except CodecError as exc:
            raise SessionError(
                ErrorCode.SESSION_STREAM_HEADER, f"bad stream header: {exc}", "SES-R15"
            ) from None
        protocol = fields["protocol"]
        assert isinstance(protocol, str)
        if not _PROTOCOL_RE.fullmatch(protocol):
            raise SessionError(
                ErrorCode.SESSION_STREAM_HEADER, f"{protocol!r} is not a protocol ID", "SES-R15"
            )
        return cls(protocol)


# ----------------------------------------------------------------------------- handshake


class _State(Enum):
    START = "start"
    SENT_1 = "sent msg1"
    WAIT_1 = "waiting for msg1"
    SENT_2 = "sent msg2"
    DONE = "done"
    FAILED = "failed"


class Handshake:
    """One side of the Noise XX handshake on stream 0, sans-IO.

    The initiator calls ``start()`` and writes what it returns; both sides feed
    every byte received on stream 0 to ``receive()`` and write what it returns.
    ``keys`` is set once the handshake is complete; ``fin`` says whether this
    side's direction of stream 0 should now be closed (it has nothing more to
    send). Any protocol violation raises ``SessionError`` and the state becomes
    FAILED: the caller closes the QUIC connection with the error's code.
    """

    def __init__(
        self,
        role: Role,
        identity: PrivateKey,
        static_private: bytes,
        ephemeral_private: bytes,
        network_id: bytes,
        protocols: tuple[str, ...],
        expected_peer: PeerId | None = None,
    ) -> None:
        if len(network_id) != NETWORK_ID_SIZE:
            raise LocalProtocolError(ErrorCode.SCHEMA_VALUE, "network ID must be 4 bytes", "SES-R3")
        if len(protocols) > MAX_PROTOCOLS:
            raise LocalProtocolError(
                ErrorCode.SESSION_HANDSHAKE_MALFORMED,
                f"at most {MAX_PROTOCOLS} protocols fit a handshake payload",
                "SES-R6",
            )
        for p in protocols:
            check_protocol_id(p)
        self.role = role
        self.keys: SessionKeys | None = None
        self.fin = False
        self._identity = identity
        self._protocols = tuple(protocols)
        self._expected = expected_peer
        self._static_public = x25519_public(static_private)
        self._buffer = bytearray()
        self._state = _State.START if role is Role.INITIATOR else _State.WAIT_1
        self._noise = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        if role is Role.INITIATOR:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_prologue(PROLOGUE_TAG + bytes(network_id))
        # The static keypair object is immutable and the same for every handshake of a node.
        self._noise.noise_protocol.keypairs["s"] = _static_keypair(bytes(static_private))
        with warnings.catch_warnings():
            # noiseprotocol warns when the ephemeral key is supplied rather than drawn by
            # itself. Supplying it is the point of a sans-IO core: node/ draws it from the
            # OS, vectors and the simulator from a seed.
            warnings.simplefilter("ignore", UserWarning)
            self._noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes(ephemeral_private))
            self._noise.start_handshake()

    @property
    def complete(self) -> bool:
        return self._state is _State.DONE

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def awaiting_msg3(self) -> bool:
        """Responder that sent msg2: the initiator may already be sending on streams,
        and their data can overtake a lost msg3 [SES-R16]."""
        return self._state is _State.SENT_2

    def start(self) -> bytes:
        """Initiator only: msg1, framed."""
        if self.role is not Role.INITIATOR or self._state is not _State.START:
            raise LocalProtocolError(
                ErrorCode.SESSION_HANDSHAKE_UNEXPECTED, "start() is for a new initiator"
            )
        self._state = _State.SENT_1
        return self._frame(self._noise.write_message(b""))

    def receive(self, data: bytes) -> bytes:
        """Feed stream-0 bytes; returns the framed bytes to send in reply (may be empty)."""
        if self._state is _State.FAILED:
            raise LocalProtocolError(
                ErrorCode.SESSION_HANDSHAKE_UNEXPECTED, "handshake already failed"
            )
        try:
            return self._receive(data)
        except SessionError:
            self._state = _State.FAILED
            raise

    def end_of_stream(self) -> None:
        """The peer closed its direction of stream 0: fine only once we are done [SES-R10]."""
        if self._state is not _State.DONE and self._state is not _State.FAILED:
            self._state = _State.FAILED
            raise SessionError(
                ErrorCode.SESSION_HANDSHAKE_MALFORMED,
                f"handshake stream ended while {self._state.value}",
                "SES-R4",
            )

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _frame(message: bytes) -> bytes:
        return struct.pack(">H", len(message)) + bytes(message)

    def _receive(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while len(self._buffer) >= 2:
            size = (self._buffer[0] << 8) | self._buffer[1]
            if size > MAX_HANDSHAKE_MESSAGE:
                raise SessionError(
                    ErrorCode.SESSION_FRAME_TOO_LARGE,
                    f"handshake message of {size} bytes exceeds {MAX_HANDSHAKE_MESSAGE}",
                    "SES-R4",
                )
            if len(self._buffer) - 2 < size:
                break
            message = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            out += self._on_message(message)
        return bytes(out)

    def _read(self, message: bytes, minimum: int, which: str) -> bytes:
        # Keep the handshake state: noiseprotocol drops it from the connection once the
        # last message completes the handshake, and _accept still needs the remote static.
        self._hs = self._noise.noise_protocol.handshake_state
        if len(message) < minimum:
            raise SessionError(
                ErrorCode.SESSION_HANDSHAKE_MALFORMED,
                f"{which} is {len(message)} bytes, shorter than the {minimum} it needs",
                "SES-R4",
            )
        try:
            return bytes(self._noise.read_message(message))
        except (NoiseInvalidMessage, InvalidTag, ValueError) as exc:
            raise SessionError(
                ErrorCode.SESSION_NOISE_AUTH,
                f"{which} does not authenticate (another network ID, or corrupted): {exc}",
                "SES-R9",
            ) from None

    def _on_message(self, message: bytes) -> bytes:
        state = self._state
        if state is _State.WAIT_1:
            if len(message) != 32:
                raise SessionError(
                    ErrorCode.SESSION_HANDSHAKE_MALFORMED,
                    f"msg1 must be exactly the 32-byte ephemeral key, is {len(message)} bytes",
                    "SES-R5",
                )
            self._read(message, 32, "msg1")
            reply = self._frame(self._write("msg2"))
            self._state = _State.SENT_2
            self.fin = True
            return reply
        if state is _State.SENT_1:
            body = self._read(message, 32 + 48 + TAG_SIZE, "msg2")
            self._accept(body)
            reply = self._frame(self._write("msg3"))
            self._finish()
            return reply
        if state is _State.SENT_2:
            body = self._read(message, 48 + TAG_SIZE, "msg3")
            self._accept(body)
            self._finish()
            return b""
        raise SessionError(
            ErrorCode.SESSION_HANDSHAKE_UNEXPECTED,
            f"unexpected handshake message while {state.value}",
            "SES-R10",
        )

    def _write(self, which: str) -> bytes:
        try:
            return bytes(self._noise.write_message(self._payload()))
        except ValueError as exc:
            # X25519 with a small-order peer key yields all zeros, which the DH refuses.
            raise SessionError(
                ErrorCode.SESSION_NOISE_AUTH,
                f"cannot write {which}: the peer's key gives no shared secret ({exc})",
                "SES-R9",
            ) from None

    def _payload(self) -> bytes:
        """Our identity proof for msg2 or msg3 [SES-R6] [SES-R7]."""
        return _own_payload(self._identity, self._static_public, self._protocols)

    def _accept(self, body: bytes) -> None:
        remote_static = bytes(self._hs.rs.public_bytes)
        payload = HandshakePayload.decode(body)
        peer = payload.verify(remote_static)
        if self._expected is not None and peer.peer_id != self._expected:
            raise SessionError(
                ErrorCode.SESSION_PEER_MISMATCH,
                f"peer is {peer.peer_id}, expected {self._expected}",
                "SES-R8",
            )
        self._peer = peer
        self._peer_protocols = payload.protocols

    def _finish(self) -> None:
        proto = self._noise.noise_protocol
        if self.role is Role.INITIATOR:
            k1, k2 = proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k
        else:
            k1, k2 = proto.cipher_state_decrypt.k, proto.cipher_state_encrypt.k
        self.keys = SessionKeys(
            role=self.role,
            peer=self._peer,
            peer_protocols=self._peer_protocols,
            handshake_hash=bytes(self._noise.get_handshake_hash()),
            initiator_key=bytes(k1),
            responder_key=bytes(k2),
        )
        self._state = _State.DONE
        self.fin = True
