#!/usr/bin/env python3
"""Generate Starling's interop test vectors: ``python interop/generate.py [--out DIR]``.

Theory of operation
-------------------
The vector files in ``interop/vectors/`` are the contract another
implementation checks itself against, so they must not simply echo whatever
our code does. This script therefore keeps three kinds of knowledge apart:

* **Valid vectors** are computed by our encoder and signer, then checked
  against something independent before they are written: every CBOR item
  against ``cbor2`` (decoding and canonical encoding), RFC 8949 appendix A
  encodings where one exists, RFC 8032 test keys and signatures hard-coded
  from the RFC, the worked examples of spec/ hard-coded from the spec, peer ID
  text forms against a bech32m encoder written here from BIP 350, signatures
  against libsodium over a signing input built here.
* **Invalid vectors** are written by hand: literal hex (or structures built
  with ``cbor2``, which does not know our profile) and an error name chosen by
  reading the spec rule. Our decoder is run on each one only to catch a
  disagreement: if it does not raise exactly the hand-assigned error, the
  generator aborts, because either the vector or ``starling.proto`` is wrong
  and a human must decide which.
* **Ed25519 edge cases** are built with the small pure-Python group
  arithmetic below (RFC 8032 section 6), so the script can show that the
  malleable and small-order vectors really *would* verify under a lax
  verifier: that is what makes them worth rejecting.

Output is deterministic: every key comes from a seed SHA-256("starling-vectors/"
+ label), no clock and no ambient randomness is read, JSON keys keep the order
in which they are built. Running the script twice gives byte-identical files,
and tests/test_interop.py checks that the committed files are reproduced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import cbor2
import nacl.signing

import starling.proto
from starling.proto import codec, identity
from starling.proto.errors import ErrorCode, StarlingError

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "vectors"
FORMAT = "starling-vectors/1"
GENERATOR = "interop/generate.py"
SPEC_REVISION = 1

Json = dict[str, Any]


class GenerationError(Exception):
    """A cross-check failed: a vector and the implementation (or a reference) disagree."""


def abort(message: str) -> NoReturn:
    raise GenerationError(message)


def seed(label: str) -> bytes:
    """A reproducible 32-byte seed: SHA-256("starling-vectors/" + label)."""
    return hashlib.sha256(("starling-vectors/" + label).encode()).digest()


def seeded_bytes(label: str, size: int) -> bytes:
    """``size`` reproducible bytes: SHA-256 in counter mode over a labelled seed."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed(label) + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:size])


def cited_requirements() -> frozenset[str]:
    """Requirement IDs that starling.proto cites, as ``[ID-R2]`` or as a ``"ID-R2"`` argument."""
    cited: set[str] = set()
    for path in Path(next(iter(starling.proto.__path__))).glob("*.py"):
        text = path.read_text(encoding="utf-8")
        cited.update(re.findall(r"\[([A-Z]+-R[0-9]+)\]", text))
        cited.update(re.findall(r"\"([A-Z]+-R[0-9]+)\"", text))
    return frozenset(cited)


CITED = cited_requirements()


# ----------------------------------------------------------------------------- vector files


class VectorFile:
    """One suite's file under construction: groups of tests with increasing tcIds."""

    def __init__(self, suite: str, document: str, notes: dict[str, str]) -> None:
        self.suite = suite
        self.document = document
        self.notes = notes
        self.groups: list[Json] = []
        self.used_flags: set[str] = set()
        self.next_id = 1

    def group(
        self,
        kind: str,
        comment: str,
        *,
        parameters: Json | None = None,
        cddl: Json | None = None,
    ) -> list[Json]:
        group: Json = {"type": kind, "comment": comment}
        if parameters is not None:
            group["parameters"] = parameters
        if cddl is not None:
            group["cddl"] = cddl
        group["tests"] = []
        self.groups.append(group)
        tests: list[Json] = group["tests"]
        return tests

    def add(
        self,
        tests: list[Json],
        comment: str,
        *,
        flags: list[str],
        requirement: str,
        input: Json,
        expected: Json,
        error: str | None = None,
    ) -> None:
        for flag in flags:
            if flag not in self.notes:
                abort(f"{self.suite}: flag {flag!r} has no note")
        self.used_flags.update(flags)
        if requirement not in CITED:
            abort(f"{self.suite}: requirement {requirement} is not cited in starling.proto")
        if error is not None and error not in ErrorCode.__members__:
            abort(f"{self.suite}: {error} is not in the error registry")
        if any(other["input"] == input for other in tests):
            abort(f"{self.suite}: {comment!r} repeats the input of another test in its group")
        test: Json = {
            "tcId": self.next_id,
            "comment": comment,
            "flags": flags,
            "requirement": requirement,
            "input": input,
            "expected": expected,
            "result": "valid" if error is None else "invalid",
        }
        if error is not None:
            test["error"] = error
        tests.append(test)
        self.next_id += 1

    def render(self) -> str:
        unused = set(self.notes) - self.used_flags
        if unused:
            abort(f"{self.suite}: notes for unused flags {sorted(unused)}")
        document: Json = {
            "schema": FORMAT,
            "suite": self.suite,
            "spec": {"document": self.document, "revision": SPEC_REVISION},
            "generator": GENERATOR,
            "numberOfTests": self.next_id - 1,
            "notes": {flag: {"description": text} for flag, text in self.notes.items()},
            "testGroups": self.groups,
        }
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def expect_error(action: Callable[[], object], error: str, what: str) -> None:
    """Run our code on a hand-written invalid vector; abort unless it fails as assigned."""
    try:
        action()
    except StarlingError as exc:
        if exc.code.name != error:
            abort(
                f"DISAGREEMENT on {what!r}: the vector expects {error}, starling.proto raised {exc}"
            )
        return
    abort(f"DISAGREEMENT on {what!r}: the vector expects {error}, starling.proto accepted it")


# ----------------------------------------------------------------------------- typed values


def typed(value: object) -> Json:
    """The language-neutral JSON form of a CBOR value (see interop/README.md)."""
    if isinstance(value, bool):
        return {"bool": value}
    if value is None:
        return {"null": None}
    if isinstance(value, int):
        return {"uint": str(value)} if value >= 0 else {"nint": str(value)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, list | tuple):
        return {"array": [typed(item) for item in value]}
    if isinstance(value, Mapping):  # cbor2 gives frozendict inside tags
        return {"map": [[typed(k), typed(v)] for k, v in sorted(value.items())]}
    if isinstance(value, codec.Tag | cbor2.CBORTag):
        number = value.number if isinstance(value, codec.Tag) else value.tag
        return {"tag": number, "value": typed(value.value)}
    abort(f"no typed form for {value!r}")


def to_cbor2(value: object) -> object:
    """The same value in cbor2's model (tags as CBORTag)."""
    if isinstance(value, codec.Tag):
        return cbor2.CBORTag(value.number, to_cbor2(value.value))
    if isinstance(value, list):
        return [to_cbor2(item) for item in value]
    if isinstance(value, dict):
        return {k: to_cbor2(v) for k, v in value.items()}
    return value


def limits_of(parameters: Json) -> codec.DecodeLimits:
    return codec.DecodeLimits(
        max_size=parameters["maxSize"],
        max_depth=parameters["maxDepth"],
        tags=frozenset(parameters["tags"]),
    )


def default_parameters(**changes: Any) -> Json:
    limits = codec.DEFAULT_LIMITS
    parameters: Json = {
        "maxSize": limits.max_size,
        "maxDepth": limits.max_depth,
        "tags": sorted(limits.tags),
    }
    parameters.update(changes)
    return parameters


# ----------------------------------------------------------------------------- codec suite

CODEC_NOTES = {
    "Boundary": "A value or length at the edge of an argument size class "
    "(23/24, 255/256, 65535/65536, 2**32-1/2**32, 2**64-1, -2**64), where the "
    "shortest encoding changes length.",
    "Utf8": "Text beyond ASCII: multi-byte UTF-8 sequences, the highest code point, "
    "a NUL character.",
    "Nested": "Arrays, maps or tags inside one another.",
    "Tag": "A tag that the group's parameters declare.",
    "SpecExample": "Taken from an example of 00-conventions.md (section 4.4 or 5), "
    "hard-coded here from the spec.",
    "NotWellFormed": "Not well-formed CBOR under RFC 8949 section 3 at all: truncated "
    "input, reserved additional information, a stray break, bytes after the item.",
    "NonCanonical": "Well-formed CBOR encoding a value that has another, canonical "
    "encoding in the profile (non-shortest argument, indefinite length, map keys out "
    "of order). Lax decoders accept these; the profile requires rejecting them so a "
    "value has exactly one encoding.",
    "OutsideProfile": "Well-formed CBOR outside the profile's data model: floats, "
    "simple values other than false/true/null, undeclared tags, map keys that are not "
    "unsigned integers, duplicate keys, text that is not UTF-8.",
    "HugeLength": "A declared length or count far beyond the input; a decoder must "
    "report truncation without allocating memory for the declared size.",
    "Limits": "Checks a decode limit set by the group's parameters (maxSize, maxDepth).",
    "Extensibility": "The even/odd rule for message types: an unknown odd type is "
    "ignored, an unknown even type must be refused.",
}

# Flag shorthands for the tables below.
NWF, NONCANON, OUTSIDE = ["NotWellFormed"], ["NonCanonical"], ["OutsideProfile"]
HUGE = ["NotWellFormed", "HugeLength"]
SPEC = ["SpecExample"]
DEPTH = codec.DEFAULT_LIMITS.max_depth


def _nested_arrays(levels: int) -> codec.Value:
    value: codec.Value = []
    for _ in range(levels - 1):
        value = [value]
    return value


# Valid items under the default limits: (comment, value, flags, requirement, reference
# encoding from RFC 8949 appendix A or the spec, where there is one). The encoding is
# computed by our encoder and checked against cbor2 and the reference.
# fmt: off
VALID_ITEMS: list[tuple[str, codec.Value, list[str], str, str | None]] = [
    ("unsigned integer 0", 0, [], "CBOR-R2", "00"),
    ("unsigned integer 1", 1, [], "CBOR-R2", "01"),
    ("unsigned integer 10", 10, [], "CBOR-R2", "0a"),
    ("unsigned integer 23", 23, ["Boundary"], "CBOR-R2", "17"),
    ("unsigned integer 24", 24, ["Boundary"], "CBOR-R2", "1818"),
    ("unsigned integer 25", 25, [], "CBOR-R2", "1819"),
    ("unsigned integer 100", 100, [], "CBOR-R2", "1864"),
    ("unsigned integer 255", 255, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 256", 256, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 1000", 1000, [], "CBOR-R2", "1903e8"),
    ("unsigned integer 65535", 65535, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 65536", 65536, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 1000000", 1000000, [], "CBOR-R2", "1a000f4240"),
    ("unsigned integer 2**32-1", 2**32 - 1, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 2**32", 2**32, ["Boundary"], "CBOR-R2", None),
    ("unsigned integer 10**12", 10**12, [], "CBOR-R2", "1b000000e8d4a51000"),
    ("unsigned integer 2**64-1, the largest", 2**64 - 1, ["Boundary"], "CBOR-R2",
     "1bffffffffffffffff"),
    ("negative integer -1", -1, [], "CBOR-R2", "20"),
    ("negative integer -10", -10, [], "CBOR-R2", "29"),
    ("negative integer -24", -24, ["Boundary"], "CBOR-R2", None),
    ("negative integer -25", -25, ["Boundary"], "CBOR-R2", None),
    ("negative integer -100", -100, [], "CBOR-R2", "3863"),
    ("negative integer -256", -256, ["Boundary"], "CBOR-R2", None),
    ("negative integer -257", -257, ["Boundary"], "CBOR-R2", None),
    ("negative integer -1000", -1000, [], "CBOR-R2", "3903e7"),
    ("negative integer -65536", -65536, ["Boundary"], "CBOR-R2", None),
    ("negative integer -65537", -65537, ["Boundary"], "CBOR-R2", None),
    ("negative integer -2**32", -(2**32), ["Boundary"], "CBOR-R2", None),
    ("negative integer -2**32-1", -(2**32) - 1, ["Boundary"], "CBOR-R2", None),
    ("negative integer -2**64, the smallest", -(2**64), ["Boundary"], "CBOR-R2",
     "3bffffffffffffffff"),
    ("empty byte string", b"", [], "CBOR-R15", "40"),
    ("byte string 01020304", b"\x01\x02\x03\x04", [], "CBOR-R15", "4401020304"),
    ("byte string of 23 bytes", seeded_bytes("codec/bytes/23", 23), ["Boundary"], "CBOR-R2",
     None),
    ("byte string of 24 bytes", seeded_bytes("codec/bytes/24", 24), ["Boundary"], "CBOR-R2",
     None),
    ("byte string of 255 bytes", seeded_bytes("codec/bytes/255", 255), ["Boundary"],
     "CBOR-R2", None),
    ("byte string of 256 bytes", seeded_bytes("codec/bytes/256", 256), ["Boundary"],
     "CBOR-R2", None),
    ("byte string of 300 bytes", seeded_bytes("codec/bytes/300", 300), [], "CBOR-R2", None),
    ("empty text string", "", [], "CBOR-R11", "60"),
    ("text 'a'", "a", [], "CBOR-R11", "6161"),
    ("text 'IETF'", "IETF", [], "CBOR-R11", "6449455446"),
    ("text with quote and backslash", '"\\', [], "CBOR-R11", "62225c"),
    ("text U+00FC (2-byte UTF-8)", "\u00fc", ["Utf8"], "CBOR-R11", "62c3bc"),
    ("text U+6C34 (3-byte UTF-8)", "\u6c34", ["Utf8"], "CBOR-R11", "63e6b0b4"),
    ("text U+10151 (4-byte UTF-8)", "\U00010151", ["Utf8"], "CBOR-R11", "64f0908591"),
    ("text U+10FFFF, the highest code point", "\U0010ffff", ["Utf8"], "CBOR-R11", None),
    ("text containing NUL", "a\x00b", ["Utf8"], "CBOR-R11", None),
    ("mixed scripts and emoji", "Grüße, 世界 👋", ["Utf8"], "CBOR-R11", None),
    ("text of 23 bytes", "starling-vectors-23-abc", ["Boundary"], "CBOR-R2", None),
    ("text of 24 bytes", "starling-vectors-24-abcd", ["Boundary"], "CBOR-R2", None),
    ("text of 300 bytes (100 x U+6C34)", "\u6c34" * 100, ["Utf8"], "CBOR-R11", None),
    ("false", False, [], "CBOR-R6", "f4"),
    ("true", True, [], "CBOR-R6", "f5"),
    ("null", None, [], "CBOR-R6", "f6"),
    ("empty array", [], [], "CBOR-R15", "80"),
    ("array [1, 2, 3]", [1, 2, 3], [], "CBOR-R15", "83010203"),
    ("array [1, [2, 3], [4, 5]]", [1, [2, 3], [4, 5]], ["Nested"], "CBOR-R15",
     "8301820203820405"),
    ("array of 25 items (one-byte count)", list(range(1, 26)), ["Boundary"], "CBOR-R2",
     "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ("array of every kind of item", [0, -1, b"", "", [], {}, False, True, None], ["Nested"],
     "CBOR-R15", None),
    (f"{DEPTH} nested arrays, the innermost empty (at the default depth limit)",
     _nested_arrays(DEPTH), ["Nested", "Limits", "SpecExample"], "CBOR-R12", None),
    ("empty map", {}, [], "CBOR-R15", "a0"),
    ("map {1: 2, 3: 4}", {1: 2, 3: 4}, [], "CBOR-R9", "a201020304"),
    ("map with keys 0, 23, 24, 256 (ascending, across head sizes)",
     {0: "zero", 23: "twenty-three", 24: "twenty-four", 256: "two hundred fifty-six"},
     ["Boundary"], "CBOR-R9", None),
    ("map with the largest key 2**64-1", {2**64 - 1: b"\xff"}, ["Boundary"], "CBOR-R8", None),
    ("map of 24 pairs (one-byte count)", {k: -k - 1 for k in range(24)}, ["Boundary"],
     "CBOR-R9", None),
    ("nested maps and arrays",
     {0: {1: [1, 2, {2: "two"}], 3: {}}, 1: [b"\x00", {0: None}], 2: -1}, ["Nested"],
     "CBOR-R9", None),
    ("00-conventions 5.5: {0: 2, 1: 'alice', 2: h'0001020304050607'}",
     {0: 2, 1: "alice", 2: bytes(range(8))}, SPEC, "CBOR-R15",
     "a300020165616c69636502480001020304050607"),
]

# Invalid items under the default limits: (comment, hex, error, flags, requirement).
# Each has exactly one fault; the error is assigned by reading 00-conventions.md 4.4/4.5.
INVALID_ITEMS: list[tuple[str, str, str, list[str], str]] = [
    ("empty input", "", "CBOR_TRUNCATED", NWF + SPEC, "CBOR-R14"),
    ("uint with its 1-byte argument missing", "18", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("uint with its 2-byte argument missing", "19", "CBOR_TRUNCATED", NWF + SPEC, "CBOR-R14"),
    ("uint with 1 of its 2 argument bytes", "19 01", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("uint with 7 of its 8 argument bytes", "1b 00 00 00 01 00 00 00", "CBOR_TRUNCATED", NWF,
     "CBOR-R14"),
    ("byte string of 3 bytes with 2 present", "43 01 02", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("text string of 2 bytes with 1 present", "62 61", "CBOR_TRUNCATED", NWF + SPEC,
     "CBOR-R14"),
    ("array of 2 items with 1 present", "82 01", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("array of 3 items with 2 present", "83 01 02", "CBOR_TRUNCATED", NWF + SPEC, "CBOR-R14"),
    ("map with a key and no value", "a1 01", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("map of 2 pairs with 1 byte left", "a2 01", "CBOR_TRUNCATED", NWF + SPEC, "CBOR-R14"),
    ("map of 2 pairs with 1.5 present", "a2 01 02 03", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ("float cut short inside a map value", "a1 00 f9", "CBOR_TRUNCATED", NWF + SPEC,
     "CBOR-R14"),
    ("byte string declaring 2**64-1 bytes", "5b ff ff ff ff ff ff ff ff 00", "CBOR_TRUNCATED",
     HUGE, "CBOR-R14"),
    ("text string declaring 2**31-1 bytes", "7a 7f ff ff ff 61", "CBOR_TRUNCATED", HUGE,
     "CBOR-R14"),
    ("array declaring 2**32 items", "9b 00 00 00 01 00 00 00 00 00", "CBOR_TRUNCATED", HUGE,
     "CBOR-R14"),
    ("map declaring 2**32-1 pairs", "ba ff ff ff ff 00 00", "CBOR_TRUNCATED", HUGE,
     "CBOR-R14"),
    ("two items: 0 then 0", "00 00", "CBOR_TRAILING_BYTES", NWF + SPEC, "CBOR-R13"),
    ("two items: 1 then 2", "01 02", "CBOR_TRAILING_BYTES", NWF, "CBOR-R13"),
    ("empty array followed by a zero byte", "80 00", "CBOR_TRAILING_BYTES", NWF, "CBOR-R13"),
    ("uint 23 in 1 argument byte", "18 17", "CBOR_NON_SHORTEST", NONCANON + SPEC, "CBOR-R2"),
    ("uint 23 in 2 argument bytes", "19 00 17", "CBOR_NON_SHORTEST", NONCANON + SPEC,
     "CBOR-R2"),
    ("uint 255 in 2 argument bytes", "19 00 ff", "CBOR_NON_SHORTEST", NONCANON, "CBOR-R2"),
    ("uint 65535 in 4 argument bytes", "1a 00 00 ff ff", "CBOR_NON_SHORTEST",
     NONCANON + SPEC, "CBOR-R2"),
    ("uint 2**32-1 in 8 argument bytes", "1b 00 00 00 00 ff ff ff ff", "CBOR_NON_SHORTEST",
     NONCANON + SPEC, "CBOR-R2"),
    ("negative -1 in 1 argument byte", "38 00", "CBOR_NON_SHORTEST", NONCANON, "CBOR-R2"),
    ("negative -256 in 2 argument bytes", "39 00 ff", "CBOR_NON_SHORTEST", NONCANON,
     "CBOR-R2"),
    ("byte string length 0 in 1 byte", "58 00", "CBOR_NON_SHORTEST", NONCANON + SPEC,
     "CBOR-R2"),
    ("text string length 5 in 2 bytes", "79 00 05 68 65 6c 6c 6f", "CBOR_NON_SHORTEST",
     NONCANON, "CBOR-R2"),
    ("array count 1 in 1 byte", "98 01 00", "CBOR_NON_SHORTEST", NONCANON, "CBOR-R2"),
    ("map count 1 in 1 byte", "b8 01 00 00", "CBOR_NON_SHORTEST", NONCANON, "CBOR-R2"),
    ("map key 1 in 1 argument byte", "a1 18 01 00", "CBOR_NON_SHORTEST", NONCANON, "CBOR-R2"),
    ("indefinite-length byte string", "5f 41 00 ff", "CBOR_INDEFINITE_LENGTH", NONCANON,
     "CBOR-R3"),
    ("indefinite-length text string", "7f 61 61 ff", "CBOR_INDEFINITE_LENGTH", NONCANON,
     "CBOR-R3"),
    ("indefinite-length array", "9f 01 ff", "CBOR_INDEFINITE_LENGTH", NONCANON, "CBOR-R3"),
    ("indefinite-length map", "bf 01 02 ff", "CBOR_INDEFINITE_LENGTH", NONCANON, "CBOR-R3"),
    ("empty indefinite-length array", "9f ff", "CBOR_INDEFINITE_LENGTH", NONCANON + SPEC,
     "CBOR-R3"),
    ("major type 0, additional information 28", "1c", "CBOR_RESERVED_INFO", NWF + SPEC,
     "CBOR-R4"),
    ("major type 0, additional information 29", "1d", "CBOR_RESERVED_INFO", NWF, "CBOR-R4"),
    ("major type 0, additional information 30", "1e", "CBOR_RESERVED_INFO", NWF, "CBOR-R4"),
    ("major type 0, additional information 31", "1f", "CBOR_RESERVED_INFO", NWF + SPEC,
     "CBOR-R4"),
    ("major type 1, additional information 31", "3f", "CBOR_RESERVED_INFO", NWF + SPEC,
     "CBOR-R4"),
    ("major type 6, additional information 31", "df 00", "CBOR_RESERVED_INFO", NWF,
     "CBOR-R4"),
    ("major type 7, additional information 28", "fc", "CBOR_RESERVED_INFO", NWF + SPEC,
     "CBOR-R4"),
    ("a lone break code", "ff", "CBOR_UNEXPECTED_BREAK", NWF + SPEC, "CBOR-R3"),
    ("break code as the item of a definite array", "81 ff", "CBOR_UNEXPECTED_BREAK", NWF,
     "CBOR-R3"),
    ("half-precision float 1.0", "f9 3c 00", "CBOR_FLOAT", OUTSIDE + SPEC, "CBOR-R5"),
    ("single-precision float 1.0", "fa 3f 80 00 00", "CBOR_FLOAT", OUTSIDE + SPEC, "CBOR-R5"),
    ("double-precision float 1.0", "fb 3f f0 00 00 00 00 00 00", "CBOR_FLOAT", OUTSIDE + SPEC,
     "CBOR-R5"),
    ("half-precision 0.0 inside an array", "82 01 f9 00 00", "CBOR_FLOAT", OUTSIDE, "CBOR-R5"),
    ("simple value 23 (undefined)", "f7", "CBOR_SIMPLE_VALUE", OUTSIDE + SPEC, "CBOR-R6"),
    ("simple value 16", "f0", "CBOR_SIMPLE_VALUE", OUTSIDE + SPEC, "CBOR-R6"),
    ("simple value 32 (two-byte form)", "f8 20", "CBOR_SIMPLE_VALUE", OUTSIDE + SPEC,
     "CBOR-R6"),
    ("simple value 255 (two-byte form)", "f8 ff", "CBOR_SIMPLE_VALUE", OUTSIDE, "CBOR-R6"),
    ("false written in two bytes (f8 14)", "f8 14", "CBOR_SIMPLE_VALUE", OUTSIDE + SPEC,
     "CBOR-R6"),
    ("tag 1 (epoch time), not declared", "c1 00", "CBOR_UNDECLARED_TAG", OUTSIDE + SPEC,
     "CBOR-R7"),
    ("tag 2 (bignum), not declared", "c2 41 01", "CBOR_UNDECLARED_TAG", OUTSIDE, "CBOR-R7"),
    ("tag 24 (embedded CBOR), not declared", "d8 18 40", "CBOR_UNDECLARED_TAG",
     OUTSIDE + SPEC, "CBOR-R7"),
    ("tag 55799 (self-described CBOR), not declared", "d9 d9 f7 00", "CBOR_UNDECLARED_TAG",
     OUTSIDE, "CBOR-R7"),
    ("map with a text key", "a1 61 61 01", "CBOR_MAP_KEY_TYPE", OUTSIDE + SPEC, "CBOR-R8"),
    ("map with a negative integer key", "a1 20 01", "CBOR_MAP_KEY_TYPE", OUTSIDE + SPEC,
     "CBOR-R8"),
    ("map with a byte string key", "a1 40 01", "CBOR_MAP_KEY_TYPE", OUTSIDE + SPEC, "CBOR-R8"),
    ("map with a boolean key", "a1 f5 00", "CBOR_MAP_KEY_TYPE", OUTSIDE, "CBOR-R8"),
    ("map with an array key", "a1 80 00", "CBOR_MAP_KEY_TYPE", OUTSIDE, "CBOR-R8"),
    ("map with a text key after key 0", "a2 00 00 61 61 00", "CBOR_MAP_KEY_TYPE", OUTSIDE,
     "CBOR-R8"),
    ("map keys 2 then 1", "a2 02 00 01 00", "CBOR_MAP_KEY_ORDER", NONCANON + SPEC, "CBOR-R9"),
    ("map keys 24 then 23", "a2 18 18 00 17 00", "CBOR_MAP_KEY_ORDER", NONCANON, "CBOR-R9"),
    ("map keys 256 then 255 (longer key first)", "a2 19 01 00 00 18 ff 00",
     "CBOR_MAP_KEY_ORDER", NONCANON, "CBOR-R9"),
    ("map with key 1 twice", "a2 01 00 01 00", "CBOR_DUPLICATE_KEY", OUTSIDE + SPEC,
     "CBOR-R10"),
    ("map with key 0 twice, different values", "a2 00 61 61 00 61 62", "CBOR_DUPLICATE_KEY",
     OUTSIDE, "CBOR-R10"),
    ("text with byte ff", "61 ff", "CBOR_INVALID_UTF8", OUTSIDE, "CBOR-R11"),
    ("text with a lone continuation byte", "61 80", "CBOR_INVALID_UTF8", OUTSIDE, "CBOR-R11"),
    ("text with a truncated 2-byte sequence", "61 c3", "CBOR_INVALID_UTF8", OUTSIDE,
     "CBOR-R11"),
    ("text with a bad continuation byte (c3 28)", "62 c3 28", "CBOR_INVALID_UTF8",
     OUTSIDE + SPEC, "CBOR-R11"),
    ("text with overlong NUL (c0 80)", "62 c0 80", "CBOR_INVALID_UTF8", OUTSIDE, "CBOR-R11"),
    ("text with overlong '/' (c0 af)", "62 c0 af", "CBOR_INVALID_UTF8", OUTSIDE + SPEC,
     "CBOR-R11"),
    ("text with overlong '/' (e0 80 af)", "63 e0 80 af", "CBOR_INVALID_UTF8", OUTSIDE,
     "CBOR-R11"),
    ("text with surrogate U+D800 (ed a0 80)", "63 ed a0 80", "CBOR_INVALID_UTF8",
     OUTSIDE + SPEC, "CBOR-R11"),
    ("text with code point above U+10FFFF", "64 f4 90 80 80", "CBOR_INVALID_UTF8",
     OUTSIDE + SPEC, "CBOR-R11"),
    (f"{DEPTH + 1} nested arrays", "81" * DEPTH + "80", "CBOR_TOO_DEEP", ["Limits", *SPEC],
     "CBOR-R12"),
    (f"non-empty map at level {DEPTH}: its key is at level {DEPTH + 1}",
     "81" * (DEPTH - 1) + "a1 00 00", "CBOR_TOO_DEEP", ["Limits", *SPEC], "CBOR-R12"),
]

# The message layer: (comment, hex, known types, requirement, dispatched or error name,
# flags besides "Extensibility").
MESSAGES: list[tuple[str, str, list[int], str, bool | str, list[str]]] = [
    ("known type 2", "a2 00 02 01 42 68 69", [1, 2], "MSG-R3", True, []),
    ("known odd type 1", "a1 00 01", [1, 2], "MSG-R3", True, []),
    ("00-conventions 5.5: {0: 2, 1: 'alice', 2: h'0001020304050607'}, type 2 known",
     "a3 00 02 01 65 61 6c 69 63 65 02 48 00 01 02 03 04 05 06 07", [2], "MSG-R3", True, SPEC),
    ("unknown odd type 3 is ignored", "a2 00 03 01 63 6e 65 77", [1, 2], "MSG-R3", False, []),
    ("00-conventions 5.5: {0: 7, 1: 'x'}, unknown odd type, ignored", "a2 00 07 01 61 78",
     [2], "MSG-R3", False, SPEC),
    ("unknown odd type 65537 is ignored", "a1 00 1a 00 01 00 01", [], "MSG-R3", False, []),
    ("unknown odd negative type -1 is ignored", "a1 00 20", [1, 2], "MSG-R3", False, []),
    ("00-conventions 5.5: {0: 4}, unknown even type", "a1 00 04", [2], "MSG-R3",
     "SCHEMA_UNKNOWN_MESSAGE_TYPE", SPEC),
    ("unknown even type 4 with a field", "a2 00 04 01 00", [1, 2], "MSG-R3",
     "SCHEMA_UNKNOWN_MESSAGE_TYPE", []),
    ("unknown even type 0", "a1 00 00", [1, 2], "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", []),
    ("unknown even negative type -2", "a1 00 21", [1, 2], "MSG-R3",
     "SCHEMA_UNKNOWN_MESSAGE_TYPE", []),
    ("00-conventions 5.5: no key 0", "a1 01 65 61 6c 69 63 65", [2], "MSG-R3",
     "SCHEMA_MISSING_FIELD", SPEC),
    ("empty map", "a0", [1, 2], "MSG-R3", "SCHEMA_MISSING_FIELD", []),
    ("type is a text string", "a1 00 61 32", [1, 2], "MSG-R3", "SCHEMA_MISSING_FIELD", []),
    ("type is true (booleans are not integers)", "a1 00 f5", [1, 2], "MSG-R3",
     "SCHEMA_MISSING_FIELD", []),
    ("type is null", "a1 00 f6", [1, 2], "MSG-R3", "SCHEMA_MISSING_FIELD", []),
    ("an array, not a map", "82 00 02", [1, 2], "MSG-R1", "SCHEMA_TYPE", []),
    ("a text string, not a map", "61 61", [1, 2], "MSG-R1", "SCHEMA_TYPE", []),
]
# fmt: on


def codec_suite() -> VectorFile:
    vf = VectorFile("codec", "00-conventions.md", CODEC_NOTES)

    def valid(
        tests: list[Json],
        parameters: Json,
        comment: str,
        value: codec.Value,
        *,
        flags: list[str],
        requirement: str,
        known: str | None = None,
    ) -> None:
        data = codec.encode(value)
        want = typed(value)
        if known is not None and data.hex() != known:
            abort(f"{comment}: encoder gave {data.hex()}, the reference says {known}")
        other = cbor2.loads(data)
        if typed(other) != want:
            abort(f"{comment}: cbor2 decodes {data.hex()} as {other!r}, not {value!r}")
        if cbor2.dumps(to_cbor2(value), canonical=True) != data:
            abort(f"{comment}: cbor2's canonical encoding differs from ours ({data.hex()})")
        if typed(codec.decode(data, limits_of(parameters))) != want:
            abort(f"{comment}: our decoder does not round-trip {data.hex()}")
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"cbor": data.hex()},
            expected={"value": want},
        )

    def invalid(
        tests: list[Json],
        parameters: Json,
        comment: str,
        hex_text: str,
        *,
        error: str,
        flags: list[str],
        requirement: str,
    ) -> None:
        data = bytes.fromhex(hex_text.replace(" ", ""))
        expect_error(lambda: codec.decode(data, limits_of(parameters)), error, comment)
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"cbor": data.hex()},
            expected={},
            error=error,
        )

    params = default_parameters()
    tests = vf.group(
        "cbor",
        "Valid items of the profile. Check decode(cbor) == value and encode(value) == cbor.",
        parameters=params,
        cddl={"file": "spec/cddl/conventions.cddl", "rule": "profile-value", "field": "cbor"},
    )
    for comment, value, flags, requirement, known in VALID_ITEMS:
        valid(tests, params, comment, value, flags=flags, requirement=requirement, known=known)

    tests = vf.group(
        "cbor",
        "Invalid items: decode(cbor) must fail with the error named, the first fault met "
        "reading left to right (00-conventions.md 4.5). Each input has exactly one fault.",
        parameters=params,
    )
    for comment, hex_text, error, flags, requirement in INVALID_ITEMS:
        invalid(tests, params, comment, hex_text, error=error, flags=flags, requirement=requirement)

    params = default_parameters(tags=[42, 1000])
    tests = vf.group(
        "cbor",
        "Tags 42 and 1000 are declared (parameters.tags); any other tag is an error.",
        parameters=params,
    )
    # fmt: off
    for comment, value, flags, known in [
        ("tag 42 around a byte string", codec.Tag(42, b"\x01\x02"), ["Tag"], "d82a420102"),
        ("tag 1000 (two-byte tag number) around a map", codec.Tag(1000, {1: "x"}),
         ["Tag", "Nested"], "d903e8a1016178"),
        ("tag 1000 around tag 42", codec.Tag(1000, codec.Tag(42, 0)), ["Tag", "Nested"], None),
        ("tags inside an array and a map", [codec.Tag(42, "a"), {0: codec.Tag(42, [])}],
         ["Tag", "Nested"], None),
    ]:
        valid(tests, params, comment, value, flags=flags, requirement="CBOR-R7", known=known)
    for comment, hex_text, error, flags, requirement in [
        ("tag 43, not declared", "d8 2b 00", "CBOR_UNDECLARED_TAG", OUTSIDE, "CBOR-R7"),
        ("undeclared tag 43 inside declared tag 42", "d8 2a d8 2b 00", "CBOR_UNDECLARED_TAG",
         [*OUTSIDE, "Nested"], "CBOR-R7"),
        ("tag number 42 in 2 argument bytes", "d9 00 2a 00", "CBOR_NON_SHORTEST", NONCANON,
         "CBOR-R2"),
        ("tag 42 with no tagged item", "d8 2a", "CBOR_TRUNCATED", NWF, "CBOR-R14"),
    ]:
        invalid(tests, params, comment, hex_text, error=error, flags=flags, requirement=requirement)
    # fmt: on

    params = default_parameters(maxSize=8)
    tests = vf.group("cbor", "Input size limit of 8 bytes (parameters.maxSize).", parameters=params)
    valid(
        tests,
        params,
        "8-byte item, exactly at the size limit",
        bytes(range(1, 8)),
        flags=["Limits"],
        requirement="CBOR-R1",
    )
    for comment, hex_text in [
        ("9-byte item, one over the size limit", "48 01 02 03 04 05 06 07 08"),
        ("12-byte array over the size limit", "8b 01 02 03 04 05 06 07 08 09 0a 0b"),
    ]:
        invalid(
            tests,
            params,
            comment,
            hex_text,
            error="CBOR_TOO_LARGE",
            flags=["Limits"],
            requirement="CBOR-R1",
        )

    params = default_parameters(maxDepth=3, tags=[42])
    tests = vf.group(
        "cbor",
        "Nesting limit of 3 levels (parameters.maxDepth): a top-level item is at level 1, "
        "an item inside one array, map (key or value) or tag at level 2, and so on.",
        parameters=params,
    )
    for comment, value, flags in [
        ("[[0]]: three levels", [[0]], ["Limits", "Nested"]),
        ("{1: {1: {}}}: three levels, the innermost map empty", {1: {1: {}}}, ["Limits"]),
        ("[42(0)]: a tag counts as a level", [codec.Tag(42, 0)], ["Limits", "Tag"]),
    ]:
        valid(tests, params, comment, value, flags=flags, requirement="CBOR-R12")
    for comment, hex_text in [
        ("[[[0]]]: four levels", "81 81 81 00"),
        ("[[[]]]: an empty array at level four", "81 81 81 80"),
        ("{1: {1: {1: 0}}}: keys at level four", "a1 01 a1 01 a1 01 00"),
        ("[[42(0)]]: tagged item at level four", "81 81 d8 2a 00"),
    ]:
        invalid(
            tests,
            params,
            comment,
            hex_text,
            error="CBOR_TOO_DEEP",
            flags=["Limits", "Nested"],
            requirement="CBOR-R12",
        )

    params = default_parameters()
    tests = vf.group(
        "message",
        "Dispatch a typed message on key 0 (00-conventions.md 5.4) given the types the "
        "receiver knows: 'dispatched' is true when a known type's handler ran, false when "
        "an unknown odd type was ignored.",
        parameters=params,
        cddl={"file": "spec/cddl/conventions.cddl", "rule": "typed-message", "field": "cbor"},
    )

    def dispatch(data: bytes, known: list[int]) -> object:
        message = codec.decode(data, limits_of(params))
        return codec.dispatch(message, dict.fromkeys(known, lambda _m: True), "message")

    for comment, hex_text, known, requirement, outcome, flags in MESSAGES:
        data = bytes.fromhex(hex_text.replace(" ", ""))
        if isinstance(outcome, bool):
            if typed(cbor2.loads(data)) != typed(codec.decode(data)):
                abort(f"{comment}: cbor2 and our decoder disagree on {hex_text}")
            if (dispatch(data, known) is not None) != outcome:
                abort(f"{comment}: dispatch does not give {outcome}")
            expected: Json = {"dispatched": outcome}
            error = None
        else:
            expect_error(lambda d=data, k=known: dispatch(d, k), outcome, comment)
            expected, error = {}, outcome
        vf.add(
            tests,
            comment,
            flags=["Extensibility", *flags],
            requirement=requirement,
            input={"cbor": data.hex(), "knownTypes": known},
            expected=expected,
            error=error,
        )
    return vf


# ----------------------------------------------------------------------------- Ed25519 arithmetic
# RFC 8032 section 6, for building and checking edge cases; never used to sign real data.

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]
NEUTRAL: Point = (0, 1, 1, 0)


def point_add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_mul(s: int, p: Point) -> Point:
    q = NEUTRAL
    while s > 0:
        if s & 1:
            q = point_add(q, p)
        p = point_add(p, p)
        s >>= 1
    return q


def point_neg(p: Point) -> Point:
    return (-p[0] % P, p[1], p[2], -p[3] % P)


def point_equal(p: Point, q: Point) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def recover_x(y: int, sign: int) -> int | None:
    """RFC 8032 5.1.3 step 2-4 for a reduced y; None when y is not on the curve."""
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def point_from_y(y: int, sign: int = 0) -> Point:
    x = recover_x(y, sign)
    if x is None:
        abort(f"y={y} is not on the curve")
    return (x, y, 1, x * y % P)


def encode_point(p: Point) -> bytes:
    zinv = pow(p[2], P - 2, P)
    x, y = p[0] * zinv % P, p[1] * zinv % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def decode_point_lax(data: bytes) -> Point | None:
    """Decode as a lax verifier might: reduce y modulo p, accept any on-curve point."""
    value = int.from_bytes(data, "little")
    y, sign = (value & ((1 << 255) - 1)) % P, value >> 255
    x = recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


BASE = point_from_y(4 * pow(5, P - 2, P) % P, 0)


def order_dividing_8(p: Point) -> int | None:
    for n in (1, 2, 4, 8):
        if point_equal(point_mul(n, p), NEUTRAL):
            return n
    return None


def secret_scalar(seed_bytes: bytes) -> int:
    h = hashlib.sha512(seed_bytes).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    return a | (1 << 254)


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def lax_verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The cofactorless equation [S]B = R + [k]A with none of the [ID-R10]..[ID-R12] checks."""
    a, r = decode_point_lax(public_key), decode_point_lax(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")  # not reduced, not range-checked
    k = challenge(signature[:32], public_key, message)
    return point_equal(point_mul(s, BASE), point_add(r, point_mul(k, a)))


def torsion_points() -> list[Point]:
    """The 8 points of small order, found as [L]P for a point P with an order-8 component."""
    for y in range(2, 100):
        if recover_x(y, 0) is None:
            continue
        t = point_mul(L, point_from_y(y))
        if order_dividing_8(t) == 8:
            return [point_mul(i, t) for i in range(8)]
    abort("no point with an order-8 component found")


def forge_for_small_order_key(key: Point, message: bytes, label: str) -> bytes:
    """A signature that satisfies the lax equation under a small-order key, for any message.

    With A of order n, [k]A only depends on k mod n: pick S, guess j, set R = [S]B - [j]A,
    and keep the first (S, j) for which k = H(R || A || M) is congruent to j.
    """
    a_bytes = encode_point(key)
    s = int.from_bytes(seed(label), "little") % L
    while True:
        for j in range(8):
            r = point_add(point_mul(s, BASE), point_neg(point_mul(j, key)))
            r_bytes = encode_point(r)
            k = challenge(r_bytes, a_bytes, message)
            if point_equal(point_mul(k, key), point_mul(j, key)):
                signature = r_bytes + s.to_bytes(32, "little")
                if not lax_verifies(a_bytes, message, signature):
                    abort("forged signature does not satisfy the lax equation")
                return signature
        s += 1


# ----------------------------------------------------------------------------- bech32m (BIP 350)
# Written here from BIP 173/350, independently of starling.proto.bech32m.

BECH32_ALPHABET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
BECH32_CONST, BECH32M_CONST = 1, 0x2BC830A3


def bech32_polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if (top >> i) & 1 else 0
    return chk


def bech32_text(hrp: str, groups: list[int], const: int = BECH32M_CONST) -> str:
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = bech32_polymod(expanded + groups + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_ALPHABET[g] for g in groups + checksum)


def five_bit_groups(data: bytes) -> list[int]:
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    return [int(bits[i : i + 5], 2) for i in range(0, len(bits), 5)]


def cofactored_verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The cofactored equation [8][S]B = [8]R + [8][k]A, for the Cofactored vectors."""
    a, r = decode_point_lax(public_key), decode_point_lax(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    k = challenge(signature[:32], public_key, message)
    left = point_mul(8, point_mul(s, BASE))
    return point_equal(left, point_mul(8, point_add(r, point_mul(k, a))))


def mixed_order_signature(
    secret: bytes, torsion: Point, message: bytes, label: str, *, cofactorless: bool
) -> tuple[bytes, bytes]:
    """Sign ``message`` under the mixed-order key [a]B + T; return (key, signature).

    With ``cofactorless`` the signature satisfies the cofactorless equation (R absorbs
    the [k]T term, found by the same guessing as forge_for_small_order_key); without,
    R = [r]B as an honest signer would make it, so only the cofactored equation holds.
    """
    a = secret_scalar(secret)
    key = encode_point(point_add(point_mul(a, BASE), torsion))
    r = int.from_bytes(seed(label), "little") % L
    while True:
        for j in range(8) if cofactorless else (0,):
            big_r = point_add(point_mul(r, BASE), point_neg(point_mul(j, torsion)))
            r_bytes = encode_point(big_r)
            k = challenge(r_bytes, key, message)
            if cofactorless and k % 8 != j:
                continue
            if not cofactorless and k % 8 == 0:
                break  # [k]T would vanish; try the next r
            return key, r_bytes + ((r + k * a) % L).to_bytes(32, "little")
        r += 1


# ----------------------------------------------------------------------------- identity suite

RFC8032 = [
    # (name, secret key (seed), public key, message, signature) from RFC 8032 section 7.1.
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
        "701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
        "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7"
        "60984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

# Worked examples of 01-identity.md (revision 1), hard-coded from the spec. All use the
# seed of RFC 8032 TEST 1.
SPEC_PEER_ID = "efbc1c31b2d305dbe9bde5573102e5a707c77143c2a302cf8b9bb2459135acb6"
SPEC_PEER_TEXT = "sp1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvf"
SPEC_ZERO_TEXT = "sp1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqd7l94f"
SPEC_SIGNING_INPUT = "737461726c696e672f7369672f31000f737461726c696e672f746573742f31a101626869"
SPEC_SIGNATURE = (
    "2640a4555d895344bea1e5dcfc43cafe27358ae77a81ac8c0448d923f1ddfdbe"
    "d5171e44307cfc0772fbefe3c119216629d70aa25d8bede95a39cae0b316b00a"
)
SPEC_S_PLUS_L = "c2eb13a14adf0e604898e786a013007b29d70aa25d8bede95a39cae0b316b01a"
SPEC_MIXED_KEY = "9158312a9a8d6e3b34c891d6d61444f8b8211c5117ebad15bdb0bd68b07e0245"
SPEC_ENVELOPE = (
    "a3015820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    "0245a1016268690358402640a4555d895344bea1e5dcfc43cafe27358ae77a81ac8c0448"
    "d923f1ddfdbed5171e44307cfc0772fbefe3c119216629d70aa25d8bede95a39cae0b316"
    "b00a"
)
# 01-identity.md 4.3, "Parsing": (text, error the spec assigns, requirement).
# fmt: off
SPEC_TEXTS = [
    ("Sp1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvf", "ID_TEXT_MIXED_CASE",
     "ID-R4"),
    ("sc1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvf", "ID_TEXT_PREFIX",
     "ID-R5"),
    ("spa77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvf", "ID_TEXT_PREFIX", "ID-R5"),
    ("sp1a77pcvdb6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvf", "ID_TEXT_CHARACTER",
     "ID-R5"),
    ("sp1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjv", "ID_TEXT_LENGTH", "ID-R6"),
    ("sp1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmqkfmjvq", "ID_TEXT_CHECKSUM",
     "ID-R6"),
    ("sp1a77pcvdj6vzah6dau4tnzqh95uruwu2rc23s9nutnweytyf44jmptl083m", "ID_TEXT_PADDING",
     "ID-R7"),
]
# fmt: on

IDENTITY_NOTES = {
    "Rfc8032": "Key or signature from RFC 8032 section 7.1 (Ed25519 test vectors).",
    "SpecExample": "Taken from a worked example of 01-identity.md, hard-coded here from the spec.",
    "Seeded": 'Key derived from the seed SHA-256("starling-vectors/" + label); the comment '
    "gives the label.",
    "Case": "Tests the rule that a peer ID text form is all lowercase or all uppercase.",
    "Typo": "A peer ID text form damaged the way a person copying it might damage it.",
    "NonAscii": "A non-ASCII character in the data part. The text form is ASCII and "
    "lowering changes only A-Z: Unicode case mapping must not turn such a character into "
    "an ASCII letter (or make the text look mixed-case).",
    "Bech32": "A checksum computed with the bech32 constant 1 (BIP 173) instead of the "
    "bech32m constant 0x2bc830a3 (BIP 350).",
    "Padding": "The last 5-bit group carries non-zero padding bits under a correct checksum: "
    "a second text form of the same bytes, which must be rejected.",
    "Malleability": "A second signature for the same message made from a valid one (S + L "
    "or S + 2L instead of S). A verifier that does not require S < L accepts it.",
    "SmallOrder": "A public key or signature point R of small order (one of the 8 points "
    "of the torsion subgroup). Such a key can 'sign' messages without any secret.",
    "NonCanonical": "A point encoding that is not canonical: y >= p, or x = 0 with the sign "
    "bit set. Libraries disagree on whether to reduce or reject these.",
    "MixedOrder": "The public key is a point of large order plus a point of small order. "
    "Only the 8 small-order points themselves are rejected as keys; signatures under a "
    "mixed-order key are judged by the cofactorless equation like any other.",
    "Cofactored": "The signature satisfies the cofactored equation [8][S]B = [8]R + [8][k]A "
    "but not the cofactorless one. Starling pins the cofactorless equation [ID-R13], so it "
    "is invalid; a cofactored verifier accepts it.",
    "LaxVerifies": "The signature satisfies the cofactorless equation [S]B = R + [k]A "
    "(with S not reduced). A verifier that skips the checks of [ID-R10]..[ID-R12] "
    "accepts it; Starling must not.",
}


def identity_suite() -> VectorFile:
    vf = VectorFile("identity", "01-identity.md", IDENTITY_NOTES)

    # -- key derivation ---------------------------------------------------------------------
    tests = vf.group(
        "key-derivation",
        "From a 32-byte Ed25519 seed: the public key (RFC 8032 5.1.5), the peer ID "
        'SHA-256("starling/peer-id/1" || public key) and its text form (bech32m, prefix sp).',
    )

    def derive(comment: str, secret: bytes, flags: list[str], public_hex: str | None) -> None:
        key = identity.PrivateKey(secret)
        public = key.public_key.raw
        if bytes(nacl.signing.SigningKey(secret).verify_key) != public:
            abort(f"{comment}: public key differs from libsodium's")
        if encode_point(point_mul(secret_scalar(secret), BASE)) != public:
            abort(f"{comment}: public key differs from RFC 8032 arithmetic")
        if public_hex is not None and public.hex() != public_hex:
            abort(f"{comment}: derived {public.hex()}, RFC 8032 says {public_hex}")
        peer_id = hashlib.sha256(b"starling/peer-id/1" + public).digest()
        if key.peer_id.raw != peer_id:
            abort(f"{comment}: peer ID differs from SHA-256 over the tag and key")
        text = bech32_text("sp", five_bit_groups(peer_id))
        if key.peer_id.text() != text:
            abort(f"{comment}: text form {key.peer_id.text()} differs from BIP 350's {text}")
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement="ID-R2",
            input={"seed": secret.hex()},
            expected={"publicKey": public.hex(), "peerId": peer_id.hex(), "peerIdText": text},
        )

    test1_seed = bytes.fromhex(RFC8032[0][1])
    test1_peer = hashlib.sha256(b"starling/peer-id/1" + bytes.fromhex(RFC8032[0][2])).digest()
    if test1_peer.hex() != SPEC_PEER_ID:
        abort("RFC 8032 TEST 1's peer ID differs from 01-identity.md section 3")
    if bech32_text("sp", five_bit_groups(test1_peer)) != SPEC_PEER_TEXT:
        abort("RFC 8032 TEST 1's peer ID text differs from 01-identity.md section 4.3")
    for name, secret, public_hex, _, _ in RFC8032:
        flags = ["Rfc8032", "SpecExample"] if name == "TEST 1" else ["Rfc8032"]
        derive(f"RFC 8032 section 7.1 {name}", bytes.fromhex(secret), flags, public_hex)
    for i in range(1, 6):
        label = f"identity/key/{i}"
        derive(f"seeded key '{label}'", seed(label), ["Seeded"], None)

    # -- peer ID text forms -----------------------------------------------------------------
    tests = vf.group(
        "peer-id-text",
        "Parse a peer ID text form (01-identity.md 4.2): expected peerId is the 32 bytes it "
        "names. Checks run in the order of the spec's table; the first failure is reported.",
    )
    seeded_peer = identity.PrivateKey(seed("identity/key/1")).peer_id.raw
    if bech32_text("sp", five_bit_groups(bytes(32))) != SPEC_ZERO_TEXT:
        abort("the all-zero peer ID text differs from 01-identity.md section 4.3")
    # fmt: off
    for comment, text, raw, flags, requirement in [
        ("lowercase text form", SPEC_PEER_TEXT, test1_peer, ["SpecExample"], "ID-R3"),
        ("all-uppercase text form", SPEC_PEER_TEXT.upper(), test1_peer,
         ["Case", "SpecExample"], "ID-R4"),
        ("32 zero bytes", SPEC_ZERO_TEXT, bytes(32), ["SpecExample"], "ID-R3"),
        ("32 bytes ff", bech32_text("sp", five_bit_groups(b"\xff" * 32)), b"\xff" * 32, [],
         "ID-R3"),
        ("seeded key 'identity/key/1'", bech32_text("sp", five_bit_groups(seeded_peer)),
         seeded_peer, ["Seeded"], "ID-R3"),
    ]:
        # fmt: on
        if identity.PeerId.parse(text).raw != raw:
            abort(f"{comment}: {text} does not parse to {raw.hex()}")
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"text": text},
            expected={"peerId": raw.hex()},
        )

    good = SPEC_PEER_TEXT
    body = good[3:]
    groups = five_bit_groups(test1_peer)
    letter = next(i for i, ch in enumerate(body) if ch.isalpha() and i > 20)
    substituted = BECH32_ALPHABET[(BECH32_ALPHABET.index(body[30]) + 1) % 32]
    swap = next(i for i in range(12, len(body) - 1) if body[i] != body[i + 1])
    last = BECH32_ALPHABET[(BECH32_ALPHABET.index(good[-1]) + 7) % 32]
    # 32 bytes = 256 bits in 52 groups: the last group holds 1 data bit and 4 padding bits.
    padded = {bits: [*groups[:-1], groups[-1] | bits] for bits in (0b0001, 0b1000, 0b1111)}
    # fmt: off
    bad_texts: list[tuple[str, str, str, str, list[str]]] = [
        *((f"01-identity.md 4.3: {t}", t, error, req, ["SpecExample"])
          for t, error, req in SPEC_TEXTS),
        ("one uppercase letter inside a lowercase form",
         "sp1" + body[:letter] + body[letter].upper() + body[letter + 1:],
         "ID_TEXT_MIXED_CASE", "ID-R4", ["Case"]),
        ("uppercase prefix, lowercase data", "SP1" + body, "ID_TEXT_MIXED_CASE", "ID-R4",
         ["Case"]),
        ("prefix 'sq' (valid bech32m for that prefix)",
         bech32_text("sq", groups), "ID_TEXT_PREFIX", "ID-R5", []),
        ("prefix 'spx' (valid bech32m for that prefix)",
         bech32_text("spx", groups), "ID_TEXT_PREFIX", "ID-R5", []),
        ("empty string", "", "ID_TEXT_PREFIX", "ID-R5", []),
        ("leading space: the part before the last '1' is ' sp'", " " + good,
         "ID_TEXT_PREFIX", "ID-R5", ["Typo"]),
        ("a '1' in the data part: the last '1' is the separator, so the prefix is not 'sp'",
         "sp1" + body[:10] + "1" + body[11:], "ID_TEXT_PREFIX", "ID-R5", ["Typo"]),
        ("'i' in the data part", "sp1" + body[:15] + "i" + body[16:], "ID_TEXT_CHARACTER",
         "ID-R5", ["Typo"]),
        ("'o' in the data part", "sp1" + body[:20] + "o" + body[21:], "ID_TEXT_CHARACTER",
         "ID-R5", ["Typo"]),
        ("a space in the data part", "sp1" + body[:25] + " " + body[26:], "ID_TEXT_CHARACTER",
         "ID-R5", ["Typo"]),
        ("trailing space", good + " ", "ID_TEXT_CHARACTER", "ID-R5", ["Typo"]),
        ("U+212A KELVIN SIGN in a lowercase form (Unicode lowercases it to 'k')",
         good[:20] + "\u212a" + good[21:], "ID_TEXT_CHARACTER", "ID-R5", ["NonAscii"]),
        ("U+017F LONG S in an uppercase form (Unicode uppercases it to 'S')",
         good.upper()[:20] + "\u017f" + good.upper()[21:], "ID_TEXT_CHARACTER", "ID-R5",
         ["NonAscii"]),
        ("U+00E9 in the data part", good[:20] + "\u00e9" + good[21:], "ID_TEXT_CHARACTER",
         "ID-R5", ["NonAscii"]),
        ("31 bytes (valid bech32m)", bech32_text("sp", five_bit_groups(test1_peer[:31])),
         "ID_TEXT_LENGTH", "ID-R6", []),
        ("33 bytes (valid bech32m)", bech32_text("sp", five_bit_groups(test1_peer + b"\0")),
         "ID_TEXT_LENGTH", "ID-R6", []),
        ("no data, checksum only (valid bech32m)", bech32_text("sp", []), "ID_TEXT_LENGTH",
         "ID-R6", []),
        ("one data character substituted", good[:33] + substituted + good[34:],
         "ID_TEXT_CHECKSUM", "ID-R6", ["Typo"]),
        ("two adjacent data characters swapped",
         "sp1" + body[:swap] + body[swap + 1] + body[swap] + body[swap + 2:],
         "ID_TEXT_CHECKSUM", "ID-R6", ["Typo"]),
        ("last checksum character substituted", good[:-1] + last, "ID_TEXT_CHECKSUM",
         "ID-R6", ["Typo"]),
        ("bech32 (not bech32m) checksum of the same data",
         bech32_text("sp", groups, BECH32_CONST), "ID_TEXT_CHECKSUM", "ID-R6", ["Bech32"]),
        *((f"padding bits {bits:04b} under a valid bech32m checksum", bech32_text("sp", g),
           "ID_TEXT_PADDING", "ID-R7", ["Padding"]) for bits, g in padded.items()),
    ]
    # fmt: on
    seen: set[str] = set()
    for comment, text, error, requirement, flags in bad_texts:
        if text in seen:
            continue  # a constructed case that is already a spec example
        seen.add(text)
        expect_error(lambda t=text: identity.PeerId.parse(t), error, comment)
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"text": text},
            expected={},
            error=error,
        )

    # -- raw Ed25519 verification under the pinned rules ------------------------------------
    tests = vf.group(
        "ed25519-verify",
        "Verify a raw Ed25519 signature (no envelope, no domain: 'message' is what was "
        "signed) under the pinned rules of 01-identity.md section 5, in the order of its "
        "table 5.5. Expected is empty: the result says whether it verifies.",
    )
    rfc: dict[str, tuple[bytes, bytes, bytes]] = {}
    for name, secret, public_hex, message_hex, signature_hex in RFC8032:
        public, message, signature = map(bytes.fromhex, (public_hex, message_hex, signature_hex))
        if nacl.signing.SigningKey(bytes.fromhex(secret)).sign(message).signature != signature:
            abort(f"RFC 8032 {name}: libsodium makes another signature")
        if not lax_verifies(public, message, signature):
            abort(f"RFC 8032 {name}: equation does not hold")
        rfc[name] = (public, message, signature)
    public1, message1, signature1 = rfc["TEST 1"]
    public2, message2, signature2 = rfc["TEST 2"]
    s1 = int.from_bytes(signature1[32:], "little")
    s2 = int.from_bytes(signature2[32:], "little")

    spec_message = bytes.fromhex(SPEC_SIGNING_INPUT)
    spec_signature = bytes.fromhex(SPEC_SIGNATURE)
    if spec_message != signing_input(TEST_DOMAIN, codec.encode({1: "hi"})):
        abort("the signing input of 01-identity.md 6.3 differs from the one built here")
    if nacl.signing.SigningKey(test1_seed).sign(spec_message).signature != spec_signature:
        abort("the signature of 01-identity.md 6.3 differs from libsodium's")
    spec_r, spec_s = spec_signature[:32], int.from_bytes(spec_signature[32:], "little")
    if (spec_s + L).to_bytes(32, "little").hex() != SPEC_S_PLUS_L:
        abort("S + L of 01-identity.md 5.6 differs from the one computed here")

    seeded_secret = seed("identity/key/2")
    seeded_public = identity.PrivateKey(seeded_secret).public_key.raw
    long_message = seeded_bytes("identity/message/1", 1000)
    long_signature = nacl.signing.SigningKey(seeded_secret).sign(long_message).signature

    torsion = torsion_points()
    small_y = {int.from_bytes(encode_point(t), "little") & ((1 << 255) - 1) for t in torsion}
    if small_y != set(identity.SMALL_ORDER_Y):
        abort("the torsion subgroup computed here differs from identity.SMALL_ORDER_Y")
    order_names = {
        1: "the identity (y = 1)",
        2: "the point of order 2 (y = p - 1)",
        4: "a point of order 4 (y = 0)",
        8: "a point of order 8",
    }
    order8 = next(t for t in torsion if order_dividing_8(t) == 8)
    order2 = next(t for t in torsion if order_dividing_8(t) == 2)
    point1 = decode_point_lax(public1)
    assert point1 is not None
    spec_mixed = [t for t in torsion if encode_point(point_add(point1, t)).hex() == SPEC_MIXED_KEY]
    if len(spec_mixed) != 1 or order_dividing_8(spec_mixed[0]) != 8:
        abort("the mixed-order key of 01-identity.md 5.2 is not TEST 1's key plus an order-8 point")
    mixed_key, mixed_valid = mixed_order_signature(
        test1_seed, spec_mixed[0], spec_message, "identity/mixed/1", cofactorless=True
    )
    _, mixed_cofactored = mixed_order_signature(
        test1_seed, spec_mixed[0], spec_message, "identity/mixed/2", cofactorless=False
    )
    if not cofactored_verifies(mixed_key, spec_message, mixed_cofactored) or lax_verifies(
        mixed_key, spec_message, mixed_cofactored
    ):
        abort("the cofactored-only signature is not cofactored-only")
    # R = identity with S = k*a: the equation holds for the real key, [S]B = [k]A = R + [k]A.
    neutral = encode_point(NEUTRAL)
    k = challenge(neutral, seeded_public, message2)
    r_identity_signature = neutral + (k * secret_scalar(seeded_secret) % L).to_bytes(32, "little")

    def y_key(y: int, sign: int = 0) -> bytes:
        return (y | sign << 255).to_bytes(32, "little")

    on_curve_low = next(y for y in range(2, 19) if recover_x(y, 0) is not None)
    forged_message = b"Starling small-order key"
    flipped_r = bytes((spec_signature[0] ^ 1,)) + spec_signature[1:]
    flipped_s = spec_signature[:40] + bytes((spec_signature[40] ^ 1,)) + spec_signature[41:]
    sign_flipped_r = spec_r[:31] + bytes((spec_r[31] ^ 0x80,)) + spec_signature[32:]
    sign_flipped_key = public1[:31] + bytes((public1[31] ^ 0x80,))
    spec_flags = ["SpecExample"]
    # (comment, public key, message, signature, flags, requirement, error)
    # fmt: off
    verify_cases: list[tuple[str, bytes, bytes, bytes, list[str], str, str | None]] = [
        *((f"RFC 8032 section 7.1 {name}", *rfc[name], ["Rfc8032"], "ID-R13", None)
          for name in rfc),
        ("01-identity.md 6.3: TEST 1 key over the example signing input", public1,
         spec_message, spec_signature, spec_flags, "ID-R13", None),
        ("seeded key 'identity/key/2', 1000-byte message", seeded_public, long_message,
         long_signature, ["Seeded"], "ID-R13", None),
        ("mixed-order key of 01-identity.md 5.2, signature satisfying the equation",
         mixed_key, spec_message, mixed_valid, ["MixedOrder", "SpecExample"], "ID-R13", None),
        ("mixed-order key, honest R: only the cofactored equation holds", mixed_key,
         spec_message, mixed_cofactored, ["MixedOrder", "Cofactored"], "ID-R13",
         "SIG_INVALID"),
        # S out of range [ID-R12]
        ("01-identity.md 5.6: S + L", public1, spec_message,
         spec_r + bytes.fromhex(SPEC_S_PLUS_L), ["Malleability", "LaxVerifies", *spec_flags],
         "ID-R12", "SIG_NON_CANONICAL_S"),
        ("TEST 1 with S + L", public1, message1,
         signature1[:32] + (s1 + L).to_bytes(32, "little"),
         ["Malleability", "LaxVerifies", "Rfc8032"], "ID-R12", "SIG_NON_CANONICAL_S"),
        ("TEST 2 with S + 2L", public2, message2,
         signature2[:32] + (s2 + 2 * L).to_bytes(32, "little"),
         ["Malleability", "LaxVerifies", "Rfc8032"], "ID-R12", "SIG_NON_CANONICAL_S"),
        ("TEST 1 with S = L exactly", public1, message1, signature1[:32] + L.to_bytes(32, "little"),
         ["Rfc8032"], "ID-R12", "SIG_NON_CANONICAL_S"),
        ("TEST 1 with every bit of S set", public1, message1, signature1[:32] + b"\xff" * 32,
         ["Rfc8032"], "ID-R12", "SIG_NON_CANONICAL_S"),
        # Small-order public keys [ID-R11]: all 8 points, each with a signature that
        # satisfies the equation, so only the key check stands in the way.
        *((f"public key is {order_names[order_dividing_8(t) or 0]}, sign bit "
           f"{encode_point(t)[31] >> 7} (torsion point [{i}]T8)", encode_point(t),
           forged_message, forge_for_small_order_key(t, forged_message, f"identity/forge/{i}"),
           ["SmallOrder", "LaxVerifies"], "ID-R11", "KEY_SMALL_ORDER")
          for i, t in enumerate(torsion)),
        # Non-canonical and off-curve public keys [ID-R10]
        ("01-identity.md 5.6: public key y = p", y_key(P), spec_message, spec_signature,
         ["NonCanonical", *spec_flags], "ID-R10", "KEY_NON_CANONICAL"),
        ("public key y = p + 1 (the identity, non-canonically)", y_key(P + 1), message1,
         signature1, ["NonCanonical", "SmallOrder"], "ID-R10", "KEY_NON_CANONICAL"),
        (f"public key y = p + {on_curve_low} (a point of large order, non-canonically)",
         y_key(P + on_curve_low), message1, signature1, ["NonCanonical"], "ID-R10",
         "KEY_NON_CANONICAL"),
        ("public key y = 2**255 - 1 (every bit of y set)", y_key(2**255 - 1), message1,
         signature1, ["NonCanonical"], "ID-R10", "KEY_NON_CANONICAL"),
        ("01-identity.md 5.6: public key y = 1 (x = 0) with the sign bit set", y_key(1, 1),
         spec_message, spec_signature, ["NonCanonical", "SmallOrder", *spec_flags], "ID-R10",
         "KEY_NON_CANONICAL"),
        ("public key y = p - 1 (x = 0) with the sign bit set", y_key(P - 1, 1), message1,
         signature1, ["NonCanonical", "SmallOrder"], "ID-R10", "KEY_NON_CANONICAL"),
        ("01-identity.md 5.6: public key y = 2, not on the curve", y_key(2), spec_message,
         spec_signature, spec_flags, "ID-R10", "KEY_NOT_ON_CURVE"),
        ("public key of 31 bytes", public1[:31], message1, signature1, ["Rfc8032"], "ID-R10",
         "KEY_LENGTH"),
        ("public key of 33 bytes", public1 + b"\x00", message1, signature1, ["Rfc8032"],
         "ID-R10", "KEY_LENGTH"),
        ("empty public key", b"", message1, signature1, ["Rfc8032"], "ID-R10", "KEY_LENGTH"),
        # Signature shape [ID-R12]
        ("signature of 63 bytes", public1, message1, signature1[:63], ["Rfc8032"], "ID-R12",
         "SIG_LENGTH"),
        ("signature of 65 bytes", public1, message1, signature1 + b"\x00", ["Rfc8032"],
         "ID-R12", "SIG_LENGTH"),
        ("empty signature", public1, message1, b"", ["Rfc8032"], "ID-R12", "SIG_LENGTH"),
        ("01-identity.md 5.6: R = identity", public1, spec_message,
         y_key(1) + spec_signature[32:], ["SmallOrder", *spec_flags], "ID-R12",
         "SIG_SMALL_ORDER_R"),
        ("R = identity, S = k*a: the equation holds for the real key", seeded_public,
         message2, r_identity_signature, ["SmallOrder", "LaxVerifies", "Seeded"], "ID-R12",
         "SIG_SMALL_ORDER_R"),
        ("R of order 8", public1, message1, encode_point(order8) + signature1[32:],
         ["SmallOrder", "Rfc8032"], "ID-R12", "SIG_SMALL_ORDER_R"),
        ("R of order 2 (y = p - 1)", public1, message1, encode_point(order2) + signature1[32:],
         ["SmallOrder", "Rfc8032"], "ID-R12", "SIG_SMALL_ORDER_R"),
        ("01-identity.md 5.6: R = y = p + 1 with the sign bit (a non-canonical identity)",
         public1, spec_message, y_key(P + 1, 1) + spec_signature[32:],
         ["SmallOrder", "NonCanonical", *spec_flags], "ID-R12", "SIG_SMALL_ORDER_R"),
        ("R = y = p + 1 (a non-canonical identity)", public1, message1,
         y_key(P + 1) + signature1[32:], ["SmallOrder", "NonCanonical", "Rfc8032"], "ID-R12",
         "SIG_SMALL_ORDER_R"),
        # The equation [ID-R13]
        ("01-identity.md 5.6: R = y = p + 2 (non-canonical, not small order)", public1,
         spec_message, y_key(P + 2) + spec_signature[32:], ["NonCanonical", *spec_flags],
         "ID-R13", "SIG_INVALID"),
        ("01-identity.md 5.6: R with its sign bit flipped", public1, spec_message,
         sign_flipped_r, spec_flags, "ID-R13", "SIG_INVALID"),
        ("01-identity.md 5.6: key with its sign bit flipped", sign_flipped_key, spec_message,
         spec_signature, spec_flags, "ID-R13", "SIG_INVALID"),
        ("one bit of R flipped", public1, spec_message, flipped_r, [], "ID-R13",
         "SIG_INVALID"),
        ("one bit of S flipped", public1, spec_message, flipped_s, [], "ID-R13",
         "SIG_INVALID"),
        ("TEST 2 signature over another message (73)", public2, b"\x73", signature2,
         ["Rfc8032"], "ID-R13", "SIG_INVALID"),
        ("TEST 2 signature under TEST 3's key", rfc["TEST 3"][0], message2, signature2,
         ["Rfc8032"], "ID-R13", "SIG_INVALID"),
        ("TEST 1 signature over the example signing input", public1, spec_message,
         signature1, ["Rfc8032"], "ID-R13", "SIG_INVALID"),
    ]
    # fmt: on
    for comment, public, message, signature, flags, requirement, error in verify_cases:
        if error is None:
            identity.ed25519_verify(public, message, signature)
            if not lax_verifies(public, message, signature):
                abort(f"{comment}: valid, but the equation does not hold here")
        else:
            expect_error(
                lambda a=public, m=message, s=signature: identity.ed25519_verify(a, m, s),
                error,
                comment,
            )
        if "LaxVerifies" in flags and not lax_verifies(public, message, signature):
            abort(f"{comment}: flagged LaxVerifies but the equation does not hold")
        if "Cofactored" in flags and not cofactored_verifies(public, message, signature):
            abort(f"{comment}: flagged Cofactored but the cofactored equation does not hold")
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={
                "publicKey": public.hex(),
                "message": message.hex(),
                "signature": signature.hex(),
            },
            expected={},
            error=error,
        )
    return vf


# ----------------------------------------------------------------------------- envelope suite

ENVELOPE_NOTES = {
    "SpecExample": IDENTITY_NOTES["SpecExample"],
    "Seeded": IDENTITY_NOTES["Seeded"],
    "WrongDomain": "Signed under another domain than the one the receiver checks: domain "
    "separation must make it fail.",
    "Malleability": IDENTITY_NOTES["Malleability"],
    "SmallOrder": "The signer key is a point of small order.",
    "LaxVerifies": IDENTITY_NOTES["LaxVerifies"],
    "Extension": "An envelope carrying a map key besides 1, 2 and 3. Envelopes admit no "
    "extensions, odd or even, so that nobody but the signer can produce a second "
    "encoding of a signed envelope.",
    "Structure": "A well-formed CBOR item that is not a signed envelope: not a map, a "
    "missing field, a field of the wrong type or size.",
    "NonCanonical": "The envelope bytes are not the canonical encoding (CBOR profile).",
}


TEST_DOMAIN = "starling/test/1"


def signing_input(domain: str, payload: bytes) -> bytes:
    """Built here from 01-identity.md 6.2: context, one length byte, the domain, the payload."""
    raw = domain.encode("ascii")
    return b"starling/sig/1\x00" + bytes((len(raw),)) + raw + payload


def envelope_suite() -> VectorFile:
    vf = VectorFile("envelope", "01-identity.md", ENVELOPE_NOTES)
    tests = vf.group(
        "envelope",
        "Open a signed envelope {1: signer, 2: payload, 3: signature} expected under "
        "'domain' (01-identity.md 7.3). Expected: the signer's public key, its peer ID and "
        "the payload bytes as carried.",
        cddl={"file": "spec/cddl/identity.cddl", "rule": "signed-envelope", "field": "envelope"},
    )

    def sealed(secret: bytes, payload: bytes, domain: str = TEST_DOMAIN) -> bytes:
        key = identity.PrivateKey(secret)
        data = identity.seal(key, domain, payload)
        decoded = cbor2.loads(data)
        if set(decoded) != {1, 2, 3} or decoded[1] != key.public_key.raw:
            abort(f"sealed envelope decodes as {decoded!r}")
        if decoded[2] != payload or cbor2.dumps(decoded, canonical=True) != data:
            abort("sealed envelope is not the canonical encoding of its fields")
        nacl.signing.VerifyKey(decoded[1]).verify(signing_input(domain, payload), decoded[3])
        return data

    def by_hand(fields: object, trailer: bytes = b"") -> bytes:
        # cbor2 without canonical=True keeps map keys in the order written here.
        return cbor2.dumps(fields) + trailer

    test1_seed = bytes.fromhex(RFC8032[0][1])
    spec_payload = codec.encode({1: "hi"})
    if sealed(test1_seed, spec_payload).hex() != SPEC_ENVELOPE:
        abort("the envelope of 01-identity.md 7.4 differs from the one sealed here")
    key_seeds = {i: seed(f"envelope/key/{i}") for i in (1, 2, 3)}
    secret = key_seeds[1]
    public = identity.PrivateKey(secret).public_key.raw
    payload = b"hello, starling"
    signature = identity.PrivateKey(secret).sign(TEST_DOMAIN, payload)
    s = int.from_bytes(signature[32:], "little")
    malleable = signature[:32] + (s + L).to_bytes(32, "little")
    if not lax_verifies(public, signing_input(TEST_DOMAIN, payload), malleable):
        abort("envelope S + L does not satisfy the lax equation")
    tampered = bytes((payload[0] ^ 0x01,)) + payload[1:]
    torsion = torsion_points()
    forged = {
        i: forge_for_small_order_key(
            torsion[i], signing_input(TEST_DOMAIN, payload), f"envelope/forge/{i}"
        )
        for i in (0, 1)
    }
    non_shortest = (
        b"\xa3\x01\x58\x20" + public + b"\x02\x58" + bytes((len(payload),)) + payload
        + b"\x03\x58\x40" + signature
    )  # fmt: skip
    seeded = ["Seeded"]
    # (comment, envelope bytes, domain, flags, requirement, error)
    # fmt: off
    cases: list[tuple[str, bytes, str, list[str], str, str | None]] = [
        ("01-identity.md 7.4: {1: 'hi'} sealed with RFC 8032 TEST 1's key",
         bytes.fromhex(SPEC_ENVELOPE), TEST_DOMAIN, ["SpecExample"], "ID-R21", None),
        ("empty payload (key 'envelope/key/1')", sealed(key_seeds[1], b""), TEST_DOMAIN,
         seeded, "ID-R21", None),
        ("short text payload (key 'envelope/key/1')", sealed(key_seeds[1], payload),
         TEST_DOMAIN, seeded, "ID-R21", None),
        ("CBOR message as payload (key 'envelope/key/2')",
         sealed(key_seeds[2], codec.encode({0: 1, 1: "hi", 3: [1, 2]})), TEST_DOMAIN, seeded,
         "ID-R21", None),
        ("1000-byte payload (key 'envelope/key/3')",
         sealed(key_seeds[3], seeded_bytes("envelope/payload/1000", 1000)), TEST_DOMAIN,
         seeded, "ID-R21", None),
        ("another domain, checked under that domain (key 'envelope/key/2')",
         sealed(key_seeds[2], b"record", "starling/dht-record/2"), "starling/dht-record/2",
         seeded, "ID-R20", None),
        ("signed under starling/test/2, checked under starling/test/1",
         sealed(secret, payload, "starling/test/2"), TEST_DOMAIN, ["WrongDomain"], "ID-R20",
         "SIG_INVALID"),
        ("01-identity.md 7.4 envelope checked under starling/test/2",
         bytes.fromhex(SPEC_ENVELOPE), "starling/test/2", ["WrongDomain", "SpecExample"],
         "ID-R20", "SIG_INVALID"),
        ("payload with one bit flipped after signing",
         by_hand({1: public, 2: tampered, 3: signature}), TEST_DOMAIN, [], "ID-R20",
         "SIG_INVALID"),
        ("signature with S + L", by_hand({1: public, 2: payload, 3: malleable}), TEST_DOMAIN,
         ["Malleability", "LaxVerifies"], "ID-R12", "SIG_NON_CANONICAL_S"),
        ("signer key is the identity point; the signature satisfies the equation",
         by_hand({1: encode_point(torsion[0]), 2: payload, 3: forged[0]}), TEST_DOMAIN,
         ["SmallOrder", "LaxVerifies"], "ID-R11", "KEY_SMALL_ORDER"),
        ("signer key is a point of order 8; the signature satisfies the equation",
         by_hand({1: encode_point(torsion[1]), 2: payload, 3: forged[1]}), TEST_DOMAIN,
         ["SmallOrder", "LaxVerifies"], "ID-R11", "KEY_SMALL_ORDER"),
        ("extra odd key 5", by_hand({1: public, 2: payload, 3: signature, 5: b"ext"}),
         TEST_DOMAIN, ["Extension"], "ID-R22", "ENVELOPE_EXTRA_FIELD"),
        ("extra even key 4", by_hand({1: public, 2: payload, 3: signature, 4: 0}),
         TEST_DOMAIN, ["Extension"], "ID-R22", "ENVELOPE_EXTRA_FIELD"),
        ("extra key 0 before the fields", by_hand({0: 1, 1: public, 2: payload, 3: signature}),
         TEST_DOMAIN, ["Extension"], "ID-R22", "ENVELOPE_EXTRA_FIELD"),
        ("signature (key 3) missing", by_hand({1: public, 2: payload}), TEST_DOMAIN,
         ["Structure"], "MSG-R1", "SCHEMA_MISSING_FIELD"),
        ("signer (key 1) missing", by_hand({2: payload, 3: signature}), TEST_DOMAIN,
         ["Structure"], "MSG-R1", "SCHEMA_MISSING_FIELD"),
        ("empty map", by_hand({}), TEST_DOMAIN, ["Structure"], "MSG-R1",
         "SCHEMA_MISSING_FIELD"),
        ("payload is a text string", by_hand({1: public, 2: payload.decode(), 3: signature}),
         TEST_DOMAIN, ["Structure"], "MSG-R1", "SCHEMA_TYPE"),
        ("signer is an array", by_hand({1: [public], 2: payload, 3: signature}), TEST_DOMAIN,
         ["Structure"], "MSG-R1", "SCHEMA_TYPE"),
        ("an array of the three fields, not a map", by_hand([public, payload, signature]),
         TEST_DOMAIN, ["Structure"], "MSG-R1", "SCHEMA_TYPE"),
        ("signer of 31 bytes", by_hand({1: public[:31], 2: payload, 3: signature}),
         TEST_DOMAIN, ["Structure"], "MSG-R1", "SCHEMA_VALUE"),
        ("signature of 65 bytes", by_hand({1: public, 2: payload, 3: signature + b"\0"}),
         TEST_DOMAIN, ["Structure"], "MSG-R1", "SCHEMA_VALUE"),
        ("map keys in the order 2, 1, 3", by_hand({2: payload, 1: public, 3: signature}),
         TEST_DOMAIN, ["NonCanonical"], "CBOR-R9", "CBOR_MAP_KEY_ORDER"),
        ("one zero byte after the envelope",
         by_hand({1: public, 2: payload, 3: signature}, b"\x00"), TEST_DOMAIN,
         ["NonCanonical"], "CBOR-R13", "CBOR_TRAILING_BYTES"),
        ("payload length in a non-shortest head", non_shortest, TEST_DOMAIN, ["NonCanonical"],
         "CBOR-R2", "CBOR_NON_SHORTEST"),
    ]
    # fmt: on
    for comment, data, domain, flags, requirement, error in cases:
        if error is None:
            opened = identity.open_envelope(data, domain)
            expected: Json = {
                "signer": opened.signer.raw.hex(),
                "signerId": opened.signer_id.raw.hex(),
                "payload": opened.payload.hex(),
            }
        else:
            expect_error(lambda d=data, o=domain: identity.open_envelope(d, o), error, comment)
            expected = {}
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"envelope": data.hex(), "domain": domain},
            expected=expected,
            error=error,
        )
    return vf


# ----------------------------------------------------------------------------- main

SUITES: dict[str, Callable[[], VectorFile]] = {
    "codec": codec_suite,
    "identity": identity_suite,
    "envelope": envelope_suite,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    rendered: dict[str, str] = {}
    try:
        for name, build in SUITES.items():
            rendered[f"{name}.json"] = build().render()
    except GenerationError as exc:
        print(f"generate.py: ABORTED, nothing written: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, text in rendered.items():
        (args.out / filename).write_bytes(text.encode("utf-8"))
        count = json.loads(text)["numberOfTests"]
        print(f"wrote {args.out / filename} ({count} tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
