"""The Starling CBOR profile: canonical encoding, strict decoding, the message layer."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starling.proto import codec
from starling.proto.codec import DecodeLimits, Field, Tag, decode, dispatch, encode, read_fields
from starling.proto.errors import CodecError, ErrorCode, LocalProtocolError

PROPERTY = settings(
    max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ----------------------------------------------------------------------------- strategies

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = (
    ints
    | st.binary(max_size=80)
    | st.text(max_size=40)
    | st.booleans()
    | st.none()
    | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -(2**64)])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.integers(min_value=0, max_value=2**64 - 1), inner, max_size=6)
    ),
    max_leaves=30,
)


def _check_decoder_contract(data: bytes, limits: DecodeLimits = codec.DEFAULT_LIMITS) -> None:
    """Decoding returns a value that re-encodes to exactly the input, or raises CodecError."""
    try:
        value = decode(data, limits)
    except CodecError:
        return
    assert encode(value) == data


# ----------------------------------------------------------------------------- properties


@PROPERTY
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_canonically_or_raise_codec_error(data: bytes) -> None:
    _check_decoder_contract(data)


@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_encodings_decode_canonically_or_raise_codec_error(
    value: codec.Value, data: st.DataObject
) -> None:
    # Start from a valid encoding so mutations reach deep decoder paths, not just byte 0.
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "flip" and pos < len(raw):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "delete" and pos < len(raw):
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    _check_decoder_contract(bytes(raw), DecodeLimits(max_depth=8, tags=frozenset({1, 42})))


@settings(max_examples=2_000, deadline=None)
@given(values)
def test_roundtrip_and_agreement_with_cbor2(value: codec.Value) -> None:
    raw = encode(value)
    assert decode(raw) == value
    # An independent implementation reads the same value back ...
    assert cbor2.loads(raw) == value
    # ... and its canonical encoder (RFC 7049 length-first order) writes the same bytes,
    # which holds because map keys are unsigned integers only.
    assert cbor2.dumps(value, canonical=True) == raw


# ----------------------------------------------------------------------------- encoder


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (256, "190100"),
        (2**32, "1b0000000100000000"),
        (-1, "20"),
        (-(2**64), "3bffffffffffffffff"),
        (b"", "40"),
        ("ü", "62c3bc"),
        ([1, [2]], "82018102"),
        ({256: 1, 24: 2, 1: 3}, "a3010318180219010001"),
        (Tag(42, b"\x01"), "d82a4101"),
        ((False, True, None), "83f4f5f6"),
    ],
)
def test_canonical_encoding(value: codec.Value, hex_: str) -> None:
    assert encode(value).hex() == hex_


@pytest.mark.parametrize(
    "value",
    [1.5, {"a": 1}, {-1: 1}, {True: 1}, 2**64, -(2**64) - 1, "\ud800", object(), {1, 2}],
)
def test_encoder_refuses_what_the_profile_lacks(value: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(value)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.CBOR_UNENCODABLE


# ----------------------------------------------------------------------------- decoder faults

FAULTS = [
    ("", ErrorCode.CBOR_TRUNCATED),
    ("19 01", ErrorCode.CBOR_TRUNCATED),
    ("43 0102", ErrorCode.CBOR_TRUNCATED),
    ("9b ffffffffffffffff", ErrorCode.CBOR_TRUNCATED),  # no allocation for a huge count
    ("5b ffffffffffffffff 00", ErrorCode.CBOR_TRUNCATED),
    ("00 00", ErrorCode.CBOR_TRAILING_BYTES),
    ("18 17", ErrorCode.CBOR_NON_SHORTEST),
    ("19 00ff", ErrorCode.CBOR_NON_SHORTEST),
    ("1a 0000ffff", ErrorCode.CBOR_NON_SHORTEST),
    ("1b 00000000ffffffff", ErrorCode.CBOR_NON_SHORTEST),
    ("38 00", ErrorCode.CBOR_NON_SHORTEST),
    ("58 01 00", ErrorCode.CBOR_NON_SHORTEST),
    ("a1 1800 00", ErrorCode.CBOR_NON_SHORTEST),
    ("5f 41 00 ff", ErrorCode.CBOR_INDEFINITE_LENGTH),
    ("9f ff", ErrorCode.CBOR_INDEFINITE_LENGTH),
    ("bf ff", ErrorCode.CBOR_INDEFINITE_LENGTH),
    ("ff", ErrorCode.CBOR_UNEXPECTED_BREAK),
    ("1c", ErrorCode.CBOR_RESERVED_INFO),
    ("1f", ErrorCode.CBOR_RESERVED_INFO),
    ("df 00", ErrorCode.CBOR_RESERVED_INFO),
    ("f9 3c00", ErrorCode.CBOR_FLOAT),
    ("fb 3ff0000000000000", ErrorCode.CBOR_FLOAT),
    ("f7", ErrorCode.CBOR_SIMPLE_VALUE),
    ("f8 20", ErrorCode.CBOR_SIMPLE_VALUE),
    ("e0", ErrorCode.CBOR_SIMPLE_VALUE),
    ("c1 00", ErrorCode.CBOR_UNDECLARED_TAG),
    ("a1 6161 00", ErrorCode.CBOR_MAP_KEY_TYPE),
    ("a1 20 00", ErrorCode.CBOR_MAP_KEY_TYPE),
    ("a2 02 00 01 00", ErrorCode.CBOR_MAP_KEY_ORDER),
    ("a2 01 00 01 00", ErrorCode.CBOR_DUPLICATE_KEY),
    ("62 c0af", ErrorCode.CBOR_INVALID_UTF8),  # overlong "/"
    ("63 eda080", ErrorCode.CBOR_INVALID_UTF8),  # UTF-16 surrogate
]


@pytest.mark.parametrize(("hex_", "code"), FAULTS)
def test_each_fault_has_its_code(hex_: str, code: ErrorCode) -> None:
    with pytest.raises(CodecError) as info:
        decode(bytes.fromhex(hex_.replace(" ", "")))
    assert info.value.code is code
    assert info.value.requirement and info.value.requirement.startswith("CBOR-R")


def test_every_decoder_code_has_a_fault_case() -> None:
    covered = {code for _, code in FAULTS} | {ErrorCode.CBOR_TOO_LARGE, ErrorCode.CBOR_TOO_DEEP}
    decoder_codes = {
        c for c in ErrorCode if c.name.startswith("CBOR_") and c is not ErrorCode.CBOR_UNENCODABLE
    }
    assert decoder_codes <= covered


def test_size_cap_is_checked_before_decoding() -> None:
    limits = DecodeLimits(max_size=4)
    assert decode(b"\x43abc", limits) == b"abc"
    with pytest.raises(CodecError) as info:
        decode(b"\x44abcd", limits)
    assert info.value.code is ErrorCode.CBOR_TOO_LARGE


def test_depth_limit_counts_levels_from_one() -> None:
    limits = DecodeLimits(max_depth=3)
    assert decode(bytes.fromhex("818180"), limits) == [[[]]]  # three levels
    for too_deep in ("81818100", "818181a0", "8181a10000"):  # a fourth level, keys count too
        with pytest.raises(CodecError) as info:
            decode(bytes.fromhex(too_deep), limits)
        assert info.value.code is ErrorCode.CBOR_TOO_DEEP


def test_very_deep_input_is_refused_without_recursion_error() -> None:
    with pytest.raises(CodecError) as info:
        decode(b"\x81" * 50_000 + b"\x00", DecodeLimits(max_size=100_000))
    assert info.value.code is ErrorCode.CBOR_TOO_DEEP


def test_declared_tags_are_accepted() -> None:
    assert decode(b"\xc1\x00", DecodeLimits(tags=frozenset({1}))) == Tag(1, 0)


def test_error_message_names_code_requirement_and_offset() -> None:
    with pytest.raises(CodecError) as info:
        decode(bytes.fromhex("820119ff"))
    text = str(info.value)
    assert "CBOR_TRUNCATED (0x0101)" in text
    assert "[CBOR-R14]" in text
    assert "offset 2" in text


# ----------------------------------------------------------------------------- message layer

FIELDS = (
    Field(1, "name", str, max_size=8),
    Field(2, "key", bytes, size=2),
    Field(4, "count", int, required=False, minimum=0, maximum=9),
)


def test_read_fields_by_name_and_ignores_unknown_odd_keys() -> None:
    got = read_fields({1: "a", 2: b"xy", 7: "future"}, FIELDS, "thing")
    assert got == {"name": "a", "key": b"xy"}


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ([], ErrorCode.SCHEMA_TYPE),
        ({2: b"xy"}, ErrorCode.SCHEMA_MISSING_FIELD),
        ({1: b"a", 2: b"xy"}, ErrorCode.SCHEMA_TYPE),
        ({1: "a", 2: b"xyz"}, ErrorCode.SCHEMA_VALUE),
        ({1: "a" * 9, 2: b"xy"}, ErrorCode.SCHEMA_VALUE),
        ({1: "a", 2: b"xy", 4: 10}, ErrorCode.SCHEMA_VALUE),
        ({1: "a", 2: b"xy", 4: True}, ErrorCode.SCHEMA_TYPE),
        ({1: "a", 2: b"xy", 6: 0}, ErrorCode.SCHEMA_UNKNOWN_CRITICAL_FIELD),
    ],
)
def test_read_fields_rejections(message: codec.Value, code: ErrorCode) -> None:
    with pytest.raises(CodecError) as info:
        read_fields(message, FIELDS, "thing")
    assert info.value.code is code


def test_dispatch_even_odd_rule() -> None:
    handlers = {2: lambda m: ("two", m[1])}
    assert dispatch({0: 2, 1: "x"}, handlers, "msg") == ("two", "x")
    assert dispatch({0: 3}, handlers, "msg") is None  # unknown odd: ignored
    for bad, code in [
        ({0: 4}, ErrorCode.SCHEMA_UNKNOWN_MESSAGE_TYPE),
        ({1: 2}, ErrorCode.SCHEMA_MISSING_FIELD),
        ({0: "2"}, ErrorCode.SCHEMA_TYPE),
        ({0: -2}, ErrorCode.SCHEMA_TYPE),
        (b"", ErrorCode.SCHEMA_TYPE),
    ]:
        with pytest.raises(CodecError) as info:
            dispatch(bad, handlers, "msg")
        assert info.value.code is code
