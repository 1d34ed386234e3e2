"""The sans-IO secure-session core: Noise XX handshake, payloads, per-stream keys, frames.

Client and server are joined in memory and bytes moved between them by hand,
as aioquic's own tests do.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.proto import codec
from starling.proto.errors import ErrorCode, LocalProtocolError, SessionError
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID, network_id
from starling.proto.session import (
    MAX_FRAME_PLAINTEXT,
    FrameReader,
    FrameWriter,
    Handshake,
    HandshakePayload,
    Role,
    StreamHeader,
)


def seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


ALICE, BOB, MALLORY = PrivateKey(seed("alice")), PrivateKey(seed("bob")), PrivateKey(seed("m"))
PROTOCOLS = ("starling/echo/1",)


def pair(
    initiator_net: bytes = MAIN_NETWORK_ID,
    responder_net: bytes = MAIN_NETWORK_ID,
    expected: PrivateKey | None = None,
) -> tuple[Handshake, Handshake]:
    i = Handshake(
        Role.INITIATOR,
        ALICE,
        seed("a-static"),
        seed("a-eph"),
        initiator_net,
        PROTOCOLS,
        expected.peer_id if expected else None,
    )
    r = Handshake(
        Role.RESPONDER, BOB, seed("b-static"), seed("b-eph"), responder_net, ("starling/x/2",)
    )
    return i, r


def run(i: Handshake, r: Handshake) -> tuple[bytes, bytes, bytes]:
    m1 = i.start()
    m2 = r.receive(m1)
    m3 = i.receive(m2)
    assert r.receive(m3) == b""
    return m1, m2, m3


def test_handshake_authenticates_both_sides() -> None:
    i, r = pair(expected=BOB)
    m1, _, _ = run(i, r)
    assert i.complete and r.complete
    assert i.keys is not None and r.keys is not None
    assert i.keys.peer_id == BOB.peer_id
    assert r.keys.peer_id == ALICE.peer_id
    assert i.keys.peer_protocols == ("starling/x/2",)
    assert r.keys.peer_protocols == PROTOCOLS
    assert i.keys.handshake_hash == r.keys.handshake_hash
    assert (i.keys.initiator_key, i.keys.responder_key) == (
        r.keys.initiator_key,
        r.keys.responder_key,
    )
    assert len(m1) == 2 + 32  # framed msg1: just the ephemeral key
    assert i.fin and r.fin


def test_handshake_is_deterministic_given_injected_keys() -> None:
    assert run(*pair()) == run(*pair())


def test_stream_keys_differ_per_stream_and_direction() -> None:
    i, r = pair()
    run(i, r)
    assert i.keys is not None and r.keys is not None
    keys = {i.keys.stream_key(s, role) for s in (0, 4, 8) for role in Role}
    assert len(keys) == 6
    assert i.keys.stream_key(4, Role.INITIATOR) == r.keys.stream_key(4, Role.INITIATOR)
    # Both sides seal and open each other's frames on the same stream.
    iw, ir = i.keys.stream_cipher(4)
    rw, rr = r.keys.stream_cipher(4)
    assert rr.feed(iw.seal(b"to bob")) == [b"to bob"]
    assert ir.feed(rw.seal(b"to alice")) == [b"to alice"]


def test_other_network_fails_to_authenticate() -> None:
    i, r = pair(responder_net=network_id("starling-test"))
    with pytest.raises(SessionError) as info:
        i.receive(r.receive(i.start()))
    assert info.value.code is ErrorCode.SESSION_NOISE_AUTH


def test_unexpected_peer_is_refused() -> None:
    i, r = pair(expected=MALLORY)
    with pytest.raises(SessionError) as info:
        i.receive(r.receive(i.start()))
    assert info.value.code is ErrorCode.SESSION_PEER_MISMATCH
    assert str(MALLORY.peer_id) in str(info.value)


class _ForgedIdentity(Handshake):
    """Claims BOB's identity key but can only sign with its own."""

    def _payload(self) -> bytes:
        genuine = HandshakePayload.decode(super()._payload())
        return HandshakePayload(BOB.public_key.raw, genuine.signature, genuine.protocols).encode()


def test_forged_identity_signature_is_refused() -> None:
    i = _ForgedIdentity(
        Role.INITIATOR, MALLORY, seed("m-s"), seed("m-e"), MAIN_NETWORK_ID, PROTOCOLS
    )
    _, r = pair()
    m2 = r.receive(i.start())
    with pytest.raises(SessionError) as info:
        r.receive(i.receive(m2))
    assert info.value.code is ErrorCode.SESSION_IDENTITY_INVALID


def test_identity_signature_over_another_static_key_is_refused() -> None:
    class _Replayed(Handshake):
        def _payload(self) -> bytes:  # a valid proof, but for some other Noise static key
            return HandshakePayload.make(MALLORY, b"\x09" * 32, PROTOCOLS).encode()

    i = _Replayed(Role.INITIATOR, MALLORY, seed("s"), seed("e"), MAIN_NETWORK_ID, PROTOCOLS)
    _, r = pair()
    with pytest.raises(SessionError) as info:
        r.receive(i.receive(r.receive(i.start())))
    assert info.value.code is ErrorCode.SESSION_IDENTITY_INVALID


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda m: m[:-1], None),  # incomplete frame: waits for more, nothing raised
        (lambda m: b"\x00\x1f" + m[2:33], ErrorCode.SESSION_HANDSHAKE_MALFORMED),  # 31 bytes
        (lambda m: b"\x00\x21" + m[2:] + b"\x00", ErrorCode.SESSION_HANDSHAKE_MALFORMED),
        (lambda m: b"\x10\x01" + b"\x00" * 4097, ErrorCode.SESSION_FRAME_TOO_LARGE),
    ],
)
def test_malformed_msg1(mangle: object, code: ErrorCode | None) -> None:
    i, r = pair()
    data = mangle(i.start())  # type: ignore[operator]
    if code is None:
        assert r.receive(data) == b""
        with pytest.raises(SessionError) as info:
            r.end_of_stream()  # the stream ended there: truncated
        assert info.value.code is ErrorCode.SESSION_HANDSHAKE_MALFORMED
        return
    with pytest.raises(SessionError) as info:
        r.receive(data)
    assert info.value.code is code


def test_truncated_msg2_and_corrupted_msg3() -> None:
    i, r = pair()
    m1 = i.start()
    m2 = r.receive(m1)
    short = b"\x00\x40" + m2[2:66]  # 64 bytes cannot hold e, encrypted s and a payload
    with pytest.raises(SessionError) as info:
        i.receive(short)
    assert info.value.code is ErrorCode.SESSION_HANDSHAKE_MALFORMED

    i, r = pair()
    m3 = bytearray(i.receive(r.receive(i.start())))
    m3[10] ^= 1
    with pytest.raises(SessionError) as info:
        r.receive(bytes(m3))
    assert info.value.code is ErrorCode.SESSION_NOISE_AUTH


def test_replayed_messages_are_refused() -> None:
    i, r = pair()
    m1, m2, m3 = run(i, r)
    # Within the session: any further handshake message is unexpected.
    with pytest.raises(SessionError) as info:
        i.receive(m2)
    assert info.value.code is ErrorCode.SESSION_HANDSHAKE_UNEXPECTED
    with pytest.raises(SessionError) as info:
        r.receive(m3)
    assert info.value.code is ErrorCode.SESSION_HANDSHAKE_UNEXPECTED
    # Into a fresh responder: a recorded msg3 cannot finish a handshake it did not start.
    r2_fresh = Handshake(
        Role.RESPONDER, BOB, seed("b-static"), seed("other-eph"), MAIN_NETWORK_ID, ()
    )
    r2_fresh.receive(m1)
    with pytest.raises(SessionError) as info:
        r2_fresh.receive(m3)
    assert info.value.code is ErrorCode.SESSION_NOISE_AUTH
    # A failed handshake stays failed.
    with pytest.raises(LocalProtocolError):
        r2_fresh.receive(b"")


def test_msg1_with_payload_is_refused() -> None:
    i, r = pair()
    framed = i.start()
    with pytest.raises(SessionError) as info:
        r.receive(b"\x00\x21" + framed[2:] + b"!")
    assert info.value.code is ErrorCode.SESSION_HANDSHAKE_MALFORMED


@pytest.mark.parametrize(
    "payload",
    [
        codec.encode({1: b"\x00" * 32, 2: b"\x00" * 64}),  # no protocols
        codec.encode({1: b"\x00" * 31, 2: b"\x00" * 64, 3: []}),
        codec.encode({1: b"\x00" * 32, 2: b"\x00" * 64, 3: ["not a protocol"]}),
        codec.encode({1: b"\x00" * 32, 2: b"\x00" * 64, 3: [], 4: 0}),  # unknown even key
        b"\xff",
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(SessionError) as info:
        HandshakePayload.decode(payload)
    assert info.value.code is ErrorCode.SESSION_HANDSHAKE_MALFORMED


def test_payload_ignores_unknown_odd_keys() -> None:
    raw = codec.encode({1: b"\x01" * 32, 2: b"\x02" * 64, 3: ["starling/a/1"], 5: "later"})
    assert HandshakePayload.decode(raw).protocols == ("starling/a/1",)


# ----------------------------------------------------------------------------- frames

KEY = seed("frame-key")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(frames: list[bytes], data: st.DataObject) -> None:
    writer, reader = FrameWriter(KEY), FrameReader(KEY)
    wire = b"".join(writer.seal(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    got: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += reader.feed(wire[a:b])
    reader.end()
    assert got == frames


def test_frame_limits_and_integrity() -> None:
    writer = FrameWriter(KEY)
    big = writer.seal(b"x" * MAX_FRAME_PLAINTEXT)
    assert len(big) == 2 + 65535
    with pytest.raises(LocalProtocolError) as local:
        writer.seal(b"x" * (MAX_FRAME_PLAINTEXT + 1))
    assert local.value.code is ErrorCode.SESSION_FRAME_TOO_LARGE
    assert (
        len(FrameWriter(KEY).seal_many(b"y" * (3 * MAX_FRAME_PLAINTEXT + 5)))
        == 4 * 2 + (3 * MAX_FRAME_PLAINTEXT + 5) + 4 * 16
    )

    # A reader with a lower limit refuses a frame above it, before buffering it whole.
    with pytest.raises(SessionError) as info:
        FrameReader(KEY, max_frame=1024).feed(FrameWriter(KEY).seal(b"z" * 2000)[:10])
    assert info.value.code is ErrorCode.SESSION_FRAME_TOO_LARGE

    tampered = bytearray(FrameWriter(KEY).seal(b"hello"))
    tampered[5] ^= 0x80
    with pytest.raises(SessionError) as info:
        FrameReader(KEY).feed(bytes(tampered))
    assert info.value.code is ErrorCode.SESSION_FRAME_AUTH

    # Frames cannot be reordered or replayed: the nonce is the frame counter.
    w = FrameWriter(KEY)
    first, second = w.seal(b"1"), w.seal(b"2")
    with pytest.raises(SessionError) as info:
        FrameReader(KEY).feed(second + first)
    assert info.value.code is ErrorCode.SESSION_FRAME_AUTH
    with pytest.raises(SessionError) as info:
        FrameReader(KEY).feed(first + first)
    assert info.value.code is ErrorCode.SESSION_FRAME_AUTH

    reader = FrameReader(KEY)
    reader.feed(FrameWriter(KEY).seal(b"abc")[:-1])
    with pytest.raises(SessionError) as info:
        reader.end()
    assert info.value.code is ErrorCode.SESSION_STREAM_TRUNCATED


def test_stream_header() -> None:
    assert StreamHeader.decode(StreamHeader("starling/chat/1").encode()).protocol == (
        "starling/chat/1"
    )
    for bad in (codec.encode({1: "chat"}), codec.encode({2: "x"}), b"\x00\x00"):
        with pytest.raises(SessionError) as info:
            StreamHeader.decode(bad)
        assert info.value.code is ErrorCode.SESSION_STREAM_HEADER
    with pytest.raises(LocalProtocolError):
        StreamHeader("starling/Chat/1").encode()
