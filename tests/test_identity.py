"""Identities: keys, peer IDs and their text form, pinned Ed25519 rules, envelopes, key files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.node import keyfile
from starling.proto import bech32m, codec
from starling.proto.errors import (
    CodecError,
    ErrorCode,
    IdentityError,
    LocalProtocolError,
    SignatureError,
    StarlingError,
)
from starling.proto.identity import (
    SMALL_ORDER_Y,
    PeerId,
    PrivateKey,
    PublicKey,
    ed25519_verify,
    open_envelope,
    seal,
    signing_input,
)

PROPERTY = settings(max_examples=10_000, deadline=None)

# RFC 8032, section 7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72).
RFC1_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC1_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC1_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC2_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC2_SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
DOMAIN = "starling/test/1"


# ---------------------------------------------------------------- independent curve arithmetic


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P,
    )


def _xs_for_y(y: int) -> list[int]:
    """Both x with (x, y) on the curve, by brute square root; [] if none."""
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P:
        return []
    return sorted({x, (-x) % P})


def _order(point: tuple[int, int]) -> int:
    acc, n = point, 1
    while acc != (0, 1):
        acc, n = _add(acc, point), n + 1
        assert n <= 8, "not a small-order point"
    return n


def test_small_order_y_set_is_exactly_the_torsion_subgroup() -> None:
    # The torsion subgroup of edwards25519 has 8 points; find them from one of order 8.
    points = {(x, y) for y in SMALL_ORDER_Y for x in _xs_for_y(y)}
    assert len(points) == 8
    orders = sorted(_order(p) for p in points)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]
    generator = next(p for p in points if _order(p) == 8)
    multiples = {generator}
    acc = generator
    for _ in range(7):
        acc = _add(acc, generator)
        multiples.add(acc)
    assert multiples == points


# ---------------------------------------------------------------- keys and peer IDs


def test_rfc8032_test1_key_derivation_and_signature() -> None:
    key = PrivateKey(RFC1_SEED)
    assert key.public_key.raw == RFC1_PUBLIC
    ed25519_verify(RFC1_PUBLIC, b"", RFC1_SIG)
    ed25519_verify(RFC2_PUBLIC, b"\x72", RFC2_SIG)


def test_peer_id_is_tagged_sha256_of_the_public_key() -> None:
    key = PrivateKey(RFC1_SEED)
    expected = hashlib.sha256(b"starling/peer-id/1" + RFC1_PUBLIC).digest()
    assert key.peer_id.raw == expected
    text = key.peer_id.text()
    assert text.startswith("sp1")
    assert len(text) == 61
    assert PeerId.parse(text) == key.peer_id
    assert PeerId.parse(text.upper()) == key.peer_id


@PROPERTY
@given(st.text(max_size=70))
def test_peer_id_parser_accepts_only_canonical_forms(text: str) -> None:
    try:
        peer = PeerId.parse(text)
    except IdentityError as exc:
        assert exc.code.name.startswith("ID_TEXT_")
        return
    assert peer.text() == text.lower()


@settings(max_examples=2_000, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.data())
def test_any_single_substitution_is_detected(raw: bytes, data: st.DataObject) -> None:
    text = PeerId(raw).text()
    pos = data.draw(st.integers(3, len(text) - 1))
    replacement = data.draw(st.sampled_from(bech32m.CHARSET).filter(lambda c: c != text[pos]))
    typo = text[:pos] + replacement + text[pos + 1 :]
    with pytest.raises(IdentityError) as info:
        PeerId.parse(typo)
    assert info.value.code in (ErrorCode.ID_TEXT_CHECKSUM, ErrorCode.ID_TEXT_PADDING)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda t: t[:3] + t[3].upper() + t[4:], ErrorCode.ID_TEXT_MIXED_CASE),
        (lambda t: "sc" + t[2:], ErrorCode.ID_TEXT_PREFIX),
        (lambda t: t.replace("1", "", 1), ErrorCode.ID_TEXT_PREFIX),
        (lambda t: t[:10] + "b" + t[11:], ErrorCode.ID_TEXT_CHARACTER),
        (lambda t: t + " ", ErrorCode.ID_TEXT_CHARACTER),
        (lambda t: t[:-1], ErrorCode.ID_TEXT_LENGTH),
        (lambda t: t[:10] + t[11] + t[10] + t[12:], ErrorCode.ID_TEXT_CHECKSUM),
    ],
)
def test_peer_id_text_errors(mutate: object, code: ErrorCode) -> None:
    text = PrivateKey(RFC1_SEED).peer_id.text()
    bad = mutate(text)  # type: ignore[operator]
    assert bad != text
    with pytest.raises(IdentityError) as info:
        PeerId.parse(bad)
    assert info.value.code is code


def test_nonzero_padding_is_rejected_even_with_a_valid_checksum() -> None:
    # 32 bytes take 52 five-bit groups with 4 padding bits; set one and re-checksum.
    values = bech32m._to_5bit(bytes(32))
    values[-1] |= 1
    polymod = bech32m._polymod([*bech32m._hrp_expand("sp"), *values, 0, 0, 0, 0, 0, 0])
    checksum = [((polymod ^ bech32m._BECH32M_CONST) >> 5 * (5 - i)) & 31 for i in range(6)]
    text = "sp1" + "".join(bech32m.CHARSET[v] for v in values + checksum)
    with pytest.raises(IdentityError) as info:
        PeerId.parse(text)
    assert info.value.code is ErrorCode.ID_TEXT_PADDING


# ---------------------------------------------------------------- pinned verification rules


def _encode_y(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


@pytest.mark.parametrize("y", sorted(SMALL_ORDER_Y))
def test_small_order_public_keys_are_rejected(y: int) -> None:
    with pytest.raises(IdentityError) as info:
        PublicKey(_encode_y(y))
    assert info.value.code is ErrorCode.KEY_SMALL_ORDER


@pytest.mark.parametrize(
    ("encoded", "code"),
    [
        (_encode_y(P), ErrorCode.KEY_NON_CANONICAL),  # y = p, i.e. 0 unreduced
        (_encode_y(P + 1), ErrorCode.KEY_NON_CANONICAL),  # the identity, unreduced
        (_encode_y(1, sign=1), ErrorCode.KEY_NON_CANONICAL),  # x = 0 with sign bit
        (_encode_y(2), ErrorCode.KEY_NOT_ON_CURVE),
        (RFC1_PUBLIC[:31], ErrorCode.KEY_LENGTH),
    ],
)
def test_malformed_public_keys_are_rejected(encoded: bytes, code: ErrorCode) -> None:
    with pytest.raises(IdentityError) as info:
        PublicKey(encoded)
    assert info.value.code is code


def test_noncanonical_s_is_rejected_although_the_equation_holds_mod_l() -> None:
    s = int.from_bytes(RFC1_SIG[32:], "little")
    malleated = RFC1_SIG[:32] + (s + L).to_bytes(32, "little")
    with pytest.raises(SignatureError) as info:
        ed25519_verify(RFC1_PUBLIC, b"", malleated)
    assert info.value.code is ErrorCode.SIG_NON_CANONICAL_S


@pytest.mark.parametrize(
    ("signature", "message", "code"),
    [
        (RFC1_SIG[:32] + L.to_bytes(32, "little"), b"", ErrorCode.SIG_NON_CANONICAL_S),
        (_encode_y(1) + RFC1_SIG[32:], b"", ErrorCode.SIG_SMALL_ORDER_R),
        (_encode_y(P - 1, sign=1) + RFC1_SIG[32:], b"", ErrorCode.SIG_SMALL_ORDER_R),
        (RFC1_SIG, b"x", ErrorCode.SIG_INVALID),
        (RFC1_SIG[:63], b"", ErrorCode.SIG_LENGTH),
    ],
)
def test_signature_rules(signature: bytes, message: bytes, code: ErrorCode) -> None:
    with pytest.raises(SignatureError) as info:
        ed25519_verify(RFC1_PUBLIC, message, signature)
    assert info.value.code is code


# ---------------------------------------------------------------- signing input and envelopes


def test_signing_input_layout() -> None:
    assert signing_input("starling/x/1", b"\xaa") == b"starling/sig/1\x00\x0cstarling/x/1\xaa"
    for bad in ("starling/x", "other/x/1", "starling/X/1", "starling/x/1/2", ""):
        with pytest.raises(LocalProtocolError) as info:
            signing_input(bad, b"")
        assert info.value.code is ErrorCode.SIG_DOMAIN


def test_envelope_roundtrip_verifies_payload_as_carried() -> None:
    key = PrivateKey(RFC1_SEED)
    payload = codec.encode({1: "hi", 3: [1, 2]})
    env = open_envelope(seal(key, DOMAIN, payload), DOMAIN)
    assert env.payload == payload
    assert env.signer_id == key.peer_id


def _envelope_parts() -> tuple[PrivateKey, bytes, dict[int, codec.Value]]:
    key = PrivateKey(hashlib.sha256(b"env").digest())
    payload = codec.encode({1: "hello"})
    return key, payload, {1: key.public_key.raw, 2: payload, 3: key.sign(DOMAIN, payload)}


def test_envelope_rejections() -> None:
    key, payload, fields = _envelope_parts()
    cases: list[tuple[bytes, ErrorCode]] = [
        (seal(key, "starling/test/2", payload), ErrorCode.SIG_INVALID),
        (codec.encode({**fields, 2: payload[:-1] + b"\x00"}), ErrorCode.SIG_INVALID),
        (codec.encode({**fields, 5: 0}), ErrorCode.ENVELOPE_EXTRA_FIELD),
        (codec.encode({1: fields[1], 2: payload}), ErrorCode.SCHEMA_MISSING_FIELD),
        (codec.encode({**fields, 2: "text"}), ErrorCode.SCHEMA_TYPE),
        (codec.encode({**fields, 1: _encode_y(1)}), ErrorCode.KEY_SMALL_ORDER),
        (codec.encode([1, 2, 3]), ErrorCode.SCHEMA_TYPE),
        (codec.encode(fields) + b"\x00", ErrorCode.CBOR_TRAILING_BYTES),
    ]
    for data, code in cases:
        with pytest.raises(StarlingError) as info:
            open_envelope(data, DOMAIN)
        assert info.value.code is code, (data.hex(), info.value)


@PROPERTY
@given(st.binary(max_size=200), st.integers(0, 2000), st.integers(0, 7))
def test_envelope_decoder_contract(noise: bytes, pos: int, bit: int) -> None:
    """Any input either opens to an envelope that re-encodes to exactly it, or is refused
    with a Starling error; about half the inputs are valid envelopes with one bit flipped."""
    _, _, fields = _envelope_parts()
    data = bytearray(codec.encode(fields)) if pos % 2 else bytearray(noise)
    if data and pos % 4 != 3:
        data[pos % len(data)] ^= 1 << bit
    try:
        env = open_envelope(bytes(data), DOMAIN)
    except (CodecError, IdentityError, SignatureError):
        return
    assert codec.encode({1: env.signer.raw, 2: env.payload, 3: env.signature}) == bytes(data)


# ---------------------------------------------------------------- key files


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    key = keyfile.create(data_dir)
    path = keyfile.key_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert keyfile.load(data_dir).seed == key.seed
    assert key.seed.hex() in path.read_text()
    assert [p.name for p in data_dir.iterdir()] == ["identity.key"]  # no temp file left


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    key = keyfile.create(tmp_path)
    with pytest.raises(FileExistsError):
        keyfile.create(tmp_path)
    assert keyfile.load(tmp_path).seed == key.seed
    again, created = keyfile.load_or_create(tmp_path)
    assert not created
    assert again.seed == key.seed


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    keyfile.create(tmp_path)
    os.chmod(keyfile.key_path(tmp_path), 0o644)
    with pytest.raises(IdentityError) as info:
        keyfile.load(tmp_path)
    assert info.value.code is ErrorCode.KEY_FILE_PERMISSIONS
    assert "chmod 600" in str(info.value)


@pytest.mark.parametrize(
    "content",
    ["", "starling-ed25519-seed/1 zz\n", "starling-ed25519-seed/1 00\n", "other " + "00" * 32],
)
def test_corrupt_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = keyfile.key_path(tmp_path)
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError) as info:
        keyfile.load(tmp_path)
    assert info.value.code is ErrorCode.KEY_FILE_FORMAT
