"""The Starling CBOR profile (spec/00-conventions.md, section "CBOR profile").

Theory of operation
-------------------
Everything Starling signs or sends is CBOR (RFC 8949) restricted to one
deterministic profile, so that a value has exactly one encoding:

* data model: unsigned and negative integers in [-2**64, 2**64 - 1], byte
  strings, UTF-8 text strings, arrays, maps whose keys are unsigned integers,
  ``false``/``true``/``null``, and tags only where the schema declares them;
* encoding: definite lengths, every argument (integer, length, tag number) in
  its shortest form, map keys in ascending numeric order without duplicates.

Because keys are unsigned integers only, the RFC 8949 "core deterministic"
bytewise order and the RFC 7049 length-first order agree, so every tool
computes the same order.

The decoder is the gatekeeper: it rejects anything that is not the unique
encoding of its value, each fault with its own registry code, and it enforces
caps on input size and nesting depth *before* allocating anything
proportional to untrusted lengths. A property that follows, and that the
tests check with arbitrary input: if ``decode(b)`` returns, then
``encode(decode(b)) == b``.

When an input has several faults, the decoder reports the first one met while
reading left to right (the size cap is checked before reading). Test vectors
contain one fault each.

The second half of the module is the message layer every protocol document
builds on: messages are maps; ``Field`` tables describe them; unknown keys
and unknown message types follow the even/odd extensibility rule [MSG-R2]
[MSG-R3].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from .errors import CodecError, ErrorCode, LocalProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "Field",
    "Tag",
    "Value",
    "decode",
    "dispatch",
    "encode",
    "read_fields",
]


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged item (major type 6). Only tags the schema declares are accepted [CBOR-R7]."""

    number: int
    value: Value


Value: TypeAlias = int | bytes | str | bool | list["Value"] | dict[int, "Value"] | Tag | None

UINT_MAX = 2**64 - 1
NINT_MIN = -(2**64)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Caps a decoder applies to untrusted input.

    ``max_size`` bounds the whole input in bytes [CBOR-R1]; ``max_depth`` bounds
    the nesting level of any item (a top-level item is at level 1, an item
    inside one array, map or tag at level 2, and so on) [CBOR-R12];
    ``tags`` lists the tag numbers the schema declares [CBOR-R7].
    """

    max_size: int = 65536
    max_depth: int = 16
    tags: frozenset[int] = frozenset()


DEFAULT_LIMITS = DecodeLimits()


# ----------------------------------------------------------------------------- encoding


def _head(major: int, arg: int) -> bytes:
    """The initial byte and argument of an item, in the shortest form [CBOR-R2]."""
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg <= 0xFF:
        return bytes((mt | 24, arg))
    if arg <= 0xFFFF:
        return bytes((mt | 25,)) + arg.to_bytes(2, "big")
    if arg <= 0xFFFFFFFF:
        return bytes((mt | 26,)) + arg.to_bytes(4, "big")
    return bytes((mt | 27,)) + arg.to_bytes(8, "big")


def _unencodable(reason: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.CBOR_UNENCODABLE, reason, "CBOR-R15")


def _encode_into(out: bytearray, value: Value) -> None:
    # bool before int: in Python True is an int.
    if value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif isinstance(value, int):
        if 0 <= value <= UINT_MAX:
            out += _head(0, value)
        elif NINT_MIN <= value < 0:
            out += _head(1, -1 - value)
        else:
            raise _unencodable(f"integer {value} outside [-2**64, 2**64-1]")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += _head(2, len(raw))
        out += raw
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise _unencodable(f"text is not valid Unicode: {exc.reason}") from None
        out += _head(3, len(raw))
        out += raw
    elif isinstance(value, list | tuple):
        out += _head(4, len(value))
        for item in value:
            _encode_into(out, item)
    elif isinstance(value, dict):
        keys = list(value)
        for key in keys:
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= UINT_MAX:
                raise _unencodable(f"map key {key!r} is not an unsigned integer")
        out += _head(5, len(keys))
        for key in sorted(keys):
            out += _head(0, key)
            _encode_into(out, value[key])
    elif isinstance(value, Tag):
        if not 0 <= value.number <= UINT_MAX:
            raise _unencodable(f"tag number {value.number} out of range")
        out += _head(6, value.number)
        _encode_into(out, value.value)
    else:
        raise _unencodable(f"type {type(value).__name__} has no encoding in the profile")


def encode(value: Value) -> bytes:
    """The one canonical encoding of ``value`` [CBOR-R15].

    Tuples encode as arrays. Raises ``LocalProtocolError`` (CBOR_UNENCODABLE) for
    floats, non-integer map keys, integers out of range and other Python types.
    """
    out = bytearray()
    _encode_into(out, value)
    return bytes(out)


# ----------------------------------------------------------------------------- decoding


class _Reader:
    """One decoding pass over ``data``; the position only moves forward."""

    __slots__ = ("data", "end", "limits", "pos")

    def __init__(self, data: bytes, limits: DecodeLimits) -> None:
        self.data = data
        self.end = len(data)
        self.limits = limits
        self.pos = 0

    def fail(self, code: ErrorCode, requirement: str, reason: str, at: int) -> CodecError:
        return CodecError(code, f"{reason} at offset {at}", requirement)

    def take(self, n: int, at: int) -> bytes:
        if n > self.end - self.pos:
            raise self.fail(
                ErrorCode.CBOR_TRUNCATED,
                "CBOR-R14",
                f"needs {n} bytes, {self.end - self.pos} remain",
                at,
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int, int]:
        """Read an initial byte and its argument -> (major, info, argument, offset)."""
        at = self.pos
        initial = self.take(1, at)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info, at
        if info <= 27:
            size = 1 << (info - 24)
            arg = int.from_bytes(self.take(size, at), "big")
            # Major type 7 is exempt: 0xf9-0xfb are floats (CBOR_FLOAT) and 0xf8 is a
            # two-byte simple value (CBOR_SIMPLE_VALUE) whatever its argument.
            if major != 7 and arg < (24 if size == 1 else 1 << (4 * size)):
                raise self.fail(
                    ErrorCode.CBOR_NON_SHORTEST,
                    "CBOR-R2",
                    f"argument {arg} encoded in {size} bytes",
                    at,
                )
            return major, info, arg, at
        if info == 31:
            if major in (2, 3, 4, 5):
                raise self.fail(
                    ErrorCode.CBOR_INDEFINITE_LENGTH, "CBOR-R3", "indefinite-length item", at
                )
            if major == 7:
                raise self.fail(
                    ErrorCode.CBOR_UNEXPECTED_BREAK, "CBOR-R3", "break code outside any item", at
                )
        raise self.fail(
            ErrorCode.CBOR_RESERVED_INFO,
            "CBOR-R4",
            f"additional information {info} is not allowed for major type {major}",
            at,
        )

    def item(self, level: int) -> Value:
        at = self.pos
        if level > self.limits.max_depth:
            raise self.fail(
                ErrorCode.CBOR_TOO_DEEP,
                "CBOR-R12",
                f"item at nesting level {level} exceeds the limit {self.limits.max_depth}",
                at,
            )
        major, info, arg, at = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg, at)
        if major == 3:
            raw = self.take(arg, at)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail(
                    ErrorCode.CBOR_INVALID_UTF8,
                    "CBOR-R11",
                    f"text string is not UTF-8 ({exc.reason})",
                    at,
                ) from None
        if major == 4:
            # Every item takes at least one byte: a count larger than what remains is
            # truncated input, found before allocating anything for it.
            if arg > self.end - self.pos:
                raise self.fail(
                    ErrorCode.CBOR_TRUNCATED, "CBOR-R14", f"array of {arg} items cannot fit", at
                )
            return [self.item(level + 1) for _ in range(arg)]
        if major == 5:
            if 2 * arg > self.end - self.pos:
                raise self.fail(
                    ErrorCode.CBOR_TRUNCATED, "CBOR-R14", f"map of {arg} pairs cannot fit", at
                )
            return self.map_body(arg, level)
        if major == 6:
            if arg not in self.limits.tags:
                raise self.fail(
                    ErrorCode.CBOR_UNDECLARED_TAG, "CBOR-R7", f"tag {arg} is not declared", at
                )
            return Tag(arg, self.item(level + 1))
        # major 7
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            raise self.fail(ErrorCode.CBOR_FLOAT, "CBOR-R5", "floating-point value", at)
        raise self.fail(
            ErrorCode.CBOR_SIMPLE_VALUE, "CBOR-R6", f"simple value {arg} is not allowed", at
        )

    def map_body(self, count: int, level: int) -> dict[int, Value]:
        result: dict[int, Value] = {}
        previous = -1
        for _ in range(count):
            at = self.pos
            if at < self.end and self.data[at] >> 5 != 0:
                raise self.fail(
                    ErrorCode.CBOR_MAP_KEY_TYPE,
                    "CBOR-R8",
                    f"map key of major type {self.data[at] >> 5}",
                    at,
                )
            if level + 1 > self.limits.max_depth:
                raise self.fail(
                    ErrorCode.CBOR_TOO_DEEP,
                    "CBOR-R12",
                    f"item at nesting level {level + 1} exceeds the limit {self.limits.max_depth}",
                    at,
                )
            _, _, key, _ = self.head()  # major type 0, checked above
            if key == previous:
                raise self.fail(
                    ErrorCode.CBOR_DUPLICATE_KEY, "CBOR-R10", f"map key {key} repeated", at
                )
            if key < previous:
                raise self.fail(
                    ErrorCode.CBOR_MAP_KEY_ORDER,
                    "CBOR-R9",
                    f"map key {key} follows key {previous}",
                    at,
                )
            previous = key
            result[key] = self.item(level + 1)
        return result


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Value:
    """Decode exactly one item of the Starling profile from ``data``.

    Raises ``CodecError`` with the registry code of the first fault found.
    """
    data = bytes(data)
    if len(data) > limits.max_size:
        raise CodecError(
            ErrorCode.CBOR_TOO_LARGE,
            f"input of {len(data)} bytes exceeds the limit of {limits.max_size}",
            "CBOR-R1",
        )
    reader = _Reader(data, limits)
    value = reader.item(1)
    if reader.pos != reader.end:
        raise reader.fail(
            ErrorCode.CBOR_TRAILING_BYTES,
            "CBOR-R13",
            f"{reader.end - reader.pos} bytes after the item",
            reader.pos,
        )
    return value


# ----------------------------------------------------------------------------- messages

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Field:
    """One entry of a message's field table: map key, name, CBOR type and constraints.

    ``kind`` is one of ``int``, ``bytes``, ``str``, ``bool``, ``list``, ``dict``.
    ``size`` pins the exact length of a byte string; ``max_size`` caps a byte
    string, a text string (in UTF-8 bytes) or an array (in items);
    ``minimum``/``maximum`` bound an integer.
    """

    key: int
    name: str
    kind: type
    required: bool = True
    size: int | None = None
    max_size: int | None = None
    minimum: int | None = None
    maximum: int | None = None


def _type_ok(value: Value, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def read_fields(message: Value, fields: Sequence[Field], what: str) -> dict[str, Value]:
    """Check a decoded map against a field table and return its fields by name.

    Unknown keys follow the extensibility rule: an unknown even key makes the
    message unacceptable [MSG-R2]; an unknown odd key is ignored [MSG-R2] (it
    stays in the received bytes, so signatures over them still verify).
    """
    if not isinstance(message, dict):
        raise CodecError(ErrorCode.SCHEMA_TYPE, f"{what} must be a map", "MSG-R1")
    known = {f.key for f in fields}
    for key in message:
        if key not in known and key % 2 == 0:
            raise CodecError(
                ErrorCode.SCHEMA_UNKNOWN_CRITICAL_FIELD,
                f"{what} carries unknown even key {key}",
                "MSG-R2",
            )
    out: dict[str, Value] = {}
    for f in fields:
        if f.key not in message:
            if f.required:
                raise CodecError(
                    ErrorCode.SCHEMA_MISSING_FIELD,
                    f"{what} lacks {f.name} (key {f.key})",
                    "MSG-R1",
                )
            continue
        value = message[f.key]
        if not _type_ok(value, f.kind):
            raise CodecError(
                ErrorCode.SCHEMA_TYPE,
                f"{what}.{f.name} must be {f.kind.__name__}, not {type(value).__name__}",
                "MSG-R1",
            )
        _check_bounds(f, value, what)
        out[f.name] = value
    return out


def _check_bounds(f: Field, value: Value, what: str) -> None:
    def bad(reason: str) -> CodecError:
        return CodecError(ErrorCode.SCHEMA_VALUE, f"{what}.{f.name} {reason}", "MSG-R1")

    if isinstance(value, bytes | str | list):
        # Text is measured in UTF-8 bytes, as on the wire, not in code points.
        length = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
        if f.size is not None and length != f.size:
            raise bad(f"must be {f.size} long, is {length}")
        if f.max_size is not None and length > f.max_size:
            raise bad(f"exceeds {f.max_size}")
    if isinstance(value, int) and not isinstance(value, bool):
        if f.minimum is not None and value < f.minimum:
            raise bad(f"is below {f.minimum}")
        if f.maximum is not None and value > f.maximum:
            raise bad(f"is above {f.maximum}")


def dispatch(
    message: Value, handlers: Mapping[int, Callable[[dict[int, Value]], T]], what: str
) -> T | None:
    """Dispatch a message map on its type (key 0) through a table of handlers.

    An unknown even type is an error [MSG-R3]; an unknown odd type is ignored
    and ``None`` returned, so newer peers can add optional messages.
    """
    if not isinstance(message, dict):
        raise CodecError(ErrorCode.SCHEMA_TYPE, f"{what} must be a map", "MSG-R1")
    if 0 not in message:
        raise CodecError(ErrorCode.SCHEMA_MISSING_FIELD, f"{what} lacks its type (key 0)", "MSG-R3")
    kind = message[0]
    if not isinstance(kind, int) or isinstance(kind, bool) or kind < 0:
        raise CodecError(
            ErrorCode.SCHEMA_TYPE, f"{what} type (key 0) must be an unsigned integer", "MSG-R3"
        )
    handler = handlers.get(kind)
    if handler is not None:
        return handler(message)
    if kind % 2 == 0:
        raise CodecError(
            ErrorCode.SCHEMA_UNKNOWN_MESSAGE_TYPE,
            f"{what} type {kind} is unknown and must be understood",
            "MSG-R3",
        )
    return None
