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
  against libsodium over a signing input built here, session transcripts
  against a Noise XX written here from the Noise specification on the
  ``cryptography`` package's X25519, ChaCha20-Poly1305 and HMAC (our session
  core drives the ``noiseprotocol`` package instead), stream keys against
  ``cryptography``'s HKDF. DHT messages are built here from 03-dht.md and
  compared with the datagrams that live ``DhtNode`` cores, their randomness
  scripted, send in the same situation; DHT proofs, tokens and store decisions
  are also put to such cores, and to a model of the store rules written here.
* **Invalid vectors** are written by hand: literal hex (or structures built
  with ``cbor2``, which does not know our profile, or handshake messages made
  by the Noise XX written here, with any payload, prologue or key) and an
  error name chosen by reading the spec rule. Our decoder is run on each one only to catch a
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
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import cbor2
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import starling.proto
from starling.proto import codec, dht, gossip, identity, nat
from starling.proto import community as com
from starling.proto import session as ses
from starling.proto.errors import ErrorCode, StarlingError
from starling.proto.network import network_id

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "vectors"
FORMAT = "starling-vectors/1"
GENERATOR = "interop/generate.py"
SPEC_DIR = HERE.parent / "spec"

Json = dict[str, Any]


class GenerationError(Exception):
    """A cross-check failed: a vector and the implementation (or a reference) disagree."""


def abort(message: str) -> NoReturn:
    raise GenerationError(message)


def spec_revision(document: str) -> int:
    """The revision in the header table of spec/<document>: the vectors test that one."""
    path = SPEC_DIR / document
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        abort(f"cannot read {path} for its revision: {exc}")
    found = re.search(r"^\| Revision\s*\|\s*([0-9]+)\s*\|", text, re.MULTILINE)
    if found is None:
        abort(f"{path} has no 'Revision' row in its header table")
    return int(found.group(1))


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
            "spec": {"document": self.document, "revision": spec_revision(self.document)},
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
    ("00-conventions 5.5: {0: 4}, unknown even type", "a1 00 04", [2], "MSG-R3",
     "SCHEMA_UNKNOWN_MESSAGE_TYPE", SPEC),
    ("unknown even type 4 with a field", "a2 00 04 01 00", [1, 2], "MSG-R3",
     "SCHEMA_UNKNOWN_MESSAGE_TYPE", []),
    ("unknown even type 0", "a1 00 00", [1, 2], "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", []),
    ("00-conventions 5.5: no key 0", "a1 01 65 61 6c 69 63 65", [2], "MSG-R3",
     "SCHEMA_MISSING_FIELD", SPEC),
    ("empty map", "a0", [1, 2], "MSG-R3", "SCHEMA_MISSING_FIELD", []),
    ("00-conventions 5.5: {0: '2'}, type is a text string", "a1 00 61 32", [1, 2], "MSG-R3",
     "SCHEMA_TYPE", SPEC),
    ("00-conventions 5.5: {0: -2}, type is a negative integer (even, but not a type)",
     "a1 00 21", [1, 2], "MSG-R3", "SCHEMA_TYPE", SPEC),
    ("type -1, a negative integer (odd, but not a type: not ignored)", "a1 00 20", [1, 2],
     "MSG-R3", "SCHEMA_TYPE", []),
    ("type -2**64, the smallest negative integer", "a1 00 3b ff ff ff ff ff ff ff ff", [1, 2],
     "MSG-R3", "SCHEMA_TYPE", []),
    ("type is true (booleans are not integers)", "a1 00 f5", [1, 2], "MSG-R3", "SCHEMA_TYPE",
     []),
    ("type is null", "a1 00 f6", [1, 2], "MSG-R3", "SCHEMA_TYPE", []),
    ("type is a byte string", "a1 00 41 02", [1, 2], "MSG-R3", "SCHEMA_TYPE", []),
    ("type is an array holding a known type", "a1 00 81 02", [1, 2], "MSG-R3", "SCHEMA_TYPE",
     []),
    ("key 0 absent, other fields present", "a2 01 02 03 04", [1, 2], "MSG-R3",
     "SCHEMA_MISSING_FIELD", []),
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
    "NonAscii": "A non-ASCII character somewhere in the text (prefix, separator, data or "
    "checksum). The text form is ASCII, and the ASCII check comes before every other one "
    "(01-identity.md 4.2, step 1): Unicode case mapping must not turn such a character into "
    "an ASCII letter (U+212A KELVIN SIGN lowercases to 'k'), nor make the text look "
    "mixed-case or give it another prefix.",
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
    kelvin = good.index("k")  # 01-identity.md 4.3 puts U+212A here
    if kelvin != 55:
        abort("the 'k' of the 01-identity.md 4.3 text form is not at position 55")
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
        ("01-identity.md 4.3: U+212A KELVIN SIGN in place of the 'k' of a lowercase form "
         "(Unicode lowering gives the valid text; ASCII-only case checks would call it mixed)",
         good[:kelvin] + "\u212a" + good[kelvin + 1:], "ID_TEXT_CHARACTER", "ID-R5",
         ["NonAscii", "SpecExample"]),
        ("01-identity.md 4.3: U+212A KELVIN SIGN in place of the 'K' of an uppercase form "
         "(Unicode lowering gives the valid text)",
         good.upper()[:kelvin] + "\u212a" + good.upper()[kelvin + 1:], "ID_TEXT_CHARACTER",
         "ID-R5", ["NonAscii", "SpecExample"]),
        ("01-identity.md 4.3: U+0455 CYRILLIC DZE in place of the prefix's 's' (ASCII is "
         "checked before the prefix)", "\u0455" + good[1:], "ID_TEXT_CHARACTER", "ID-R5",
         ["NonAscii", "SpecExample"]),
        ("U+017F LONG S as the prefix's 's' of an uppercase form (Unicode uppercases it to "
         "'S')", "\u017fP1" + good.upper()[3:], "ID_TEXT_CHARACTER", "ID-R5", ["NonAscii"]),
        ("U+00E9 in an uppercase form (ASCII is checked before the case)",
         good.upper()[:20] + "\u00e9" + good.upper()[21:], "ID_TEXT_CHARACTER", "ID-R5",
         ["NonAscii"]),
        ("U+FF11 FULLWIDTH DIGIT ONE as the separator", "sp\uff11" + body,
         "ID_TEXT_CHARACTER", "ID-R5", ["NonAscii"]),
        ("U+00A0 NO-BREAK SPACE after the checksum", good + "\u00a0", "ID_TEXT_CHARACTER",
         "ID-R5", ["NonAscii"]),
        ("U+00E9 in the checksum", good[:-2] + "\u00e9" + good[-1:], "ID_TEXT_CHARACTER",
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


# ----------------------------------------------------------------------------- session suite
# Noise_XX_25519_ChaChaPoly_SHA256, written here from the Noise Protocol Framework
# (revision 34, sections 4, 5 and 7) on the `cryptography` primitives, independently of
# starling.proto.session (which drives the `noiseprotocol` package). It computes the valid
# transcripts a second time and crafts the invalid handshake messages.

NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
NOISE_STATIC_DOMAIN = "starling/noise-static/1"


def x25519_pub(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def x25519_dh(private: bytes, public: bytes) -> bytes:
    # `cryptography` refuses an all-zero result (a small-order public key) with ValueError.
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def noise_hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF(ck, ikm, 2), section 4.3."""
    temp = hmac.new(chaining_key, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    out2 = hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
    return out1, out2


def noise_nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little")


class NoiseXX:
    """One side of an XX handshake (Noise sections 5.1-5.3), with any payload bytes."""

    def __init__(self, initiator: bool, prologue: bytes, static: bytes, ephemeral: bytes) -> None:
        self.initiator = initiator
        self.s, self.e = static, ephemeral
        self.h = NOISE_NAME if len(NOISE_NAME) == 32 else hashlib.sha256(NOISE_NAME).digest()
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.re = self.rs = b""
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = noise_hkdf(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = ChaCha20Poly1305(self.k).encrypt(noise_nonce(self.n), plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            plaintext = ChaCha20Poly1305(self.k).decrypt(noise_nonce(self.n), ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def write1(self) -> bytes:  # -> e
        e_pub = x25519_pub(self.e)
        self.mix_hash(e_pub)
        return e_pub + self.encrypt_and_hash(b"")

    def read1(self, message: bytes) -> None:
        self.re = message[:32]
        self.mix_hash(self.re)
        self.decrypt_and_hash(message[32:])

    def write2(self, payload: bytes) -> bytes:  # <- e, ee, s, es
        e_pub = x25519_pub(self.e)
        self.mix_hash(e_pub)
        self.mix_key(x25519_dh(self.e, self.re))
        s_enc = self.encrypt_and_hash(x25519_pub(self.s))
        self.mix_key(x25519_dh(self.s, self.re))
        return e_pub + s_enc + self.encrypt_and_hash(payload)

    def read2(self, message: bytes) -> bytes:
        self.re = message[:32]
        self.mix_hash(self.re)
        self.mix_key(x25519_dh(self.e, self.re))
        self.rs = self.decrypt_and_hash(message[32:80])
        self.mix_key(x25519_dh(self.e, self.rs))
        return self.decrypt_and_hash(message[80:])

    def write3(self, payload: bytes) -> bytes:  # -> s, se
        s_enc = self.encrypt_and_hash(x25519_pub(self.s))
        self.mix_key(x25519_dh(self.s, self.re))
        return s_enc + self.encrypt_and_hash(payload)

    def read3(self, message: bytes) -> bytes:
        self.rs = self.decrypt_and_hash(message[:48])
        self.mix_key(x25519_dh(self.e, self.rs))
        return self.decrypt_and_hash(message[48:])

    def split(self) -> tuple[bytes, bytes]:
        return noise_hkdf(self.ck, b"")


def frame16(message: bytes) -> bytes:
    """A handshake message or stream frame on the wire: u16be length, then the bytes."""
    return len(message).to_bytes(2, "big") + message


def prologue_of(network: bytes, tag: bytes = b"starling/noise/1") -> bytes:
    return tag + network


def payload_bytes(identity_seed: bytes, static: bytes, protocols: list[str]) -> bytes:
    """A handshake payload built with cbor2 and libsodium from 02-secure-session 4.3."""
    signer = nacl.signing.SigningKey(identity_seed)
    signature = signer.sign(signing_input(NOISE_STATIC_DOMAIN, x25519_pub(static))).signature
    return cbor2.dumps({1: bytes(signer.verify_key), 2: signature, 3: protocols}, canonical=True)


def stream_key_reference(h: bytes, base: bytes, stream_id: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) by the `cryptography` package, 02-secure-session 5."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=h,
        info=b"starling/stream/1" + stream_id.to_bytes(8, "big"),
    ).derive(base)


def seal_reference(key: bytes, counter: int, plaintext: bytes) -> bytes:
    return frame16(ChaCha20Poly1305(key).encrypt(noise_nonce(counter), plaintext, None))


SESSION_NOTES = {
    "SpecExample": "Taken from a worked example of 02-secure-session.md, hard-coded here from "
    "the spec.",
    "Seeded": 'Keys derived from seeds SHA-256("starling-vectors/" + label).',
    "Split": "Bytes delivered in chunks that cut through frames (QUIC may deliver a stream's "
    "bytes in any split); the result must not depend on where the cuts are.",
    "Extension": "A payload or header carrying an unknown odd key, which the receiver ignores "
    "(00-conventions 5.3).",
    "WrongNetwork": "Built by a peer whose Noise prologue names another network ID: the "
    "handshake fails to authenticate, which is how two networks are kept apart.",
    "Forged": "The identity proof does not hold: the signature is not by the identity key "
    "over the sender's Noise static key under starling/noise-static/1.",
    "Tampered": "One bit of an authenticated message or frame is flipped.",
    "Replay": "A message or frame that was valid once is delivered again, or out of order, "
    "or under a key it was not made for.",
    "Truncated": "A message or frame shorter than its kind needs, or a stream that ends inside "
    "one.",
    "Limits": "A size limit: handshake messages of at most 4096 bytes, frames above the "
    "receiver's limit, payloads and headers beyond their decode limits.",
    "Structure": "The payload or header decrypts (or is given) but is not the CBOR structure "
    "its table describes.",
    "SmallOrder": "An X25519 or Ed25519 public key of small order.",
    "LaxVerifies": "The identity signature satisfies the Ed25519 equation but breaks a pinned "
    "rule of 01-identity section 5; Starling rejects it.",
    "ProtocolId": "A protocol ID that does not match starling/<name>/<major> "
    "(README 2.2): leading zeros, upper case, a missing part, a trailing newline.",
}

SESSION_STATES = {
    "start": "START",
    "sent msg1": "SENT_1",
    "waiting for msg1": "WAIT_1",
    "sent msg2": "SENT_2",
    "done": "DONE",
}


@dataclass(frozen=True)
class Side:
    """One side's configuration, as a handshake vector gives it."""

    identity_seed: bytes
    static: bytes
    ephemeral: bytes
    protocols: tuple[str, ...]
    expected_peer: bytes | None = None

    def json(self) -> Json:
        out: Json = {
            "identitySeed": self.identity_seed.hex(),
            "noiseStatic": self.static.hex(),
            "noiseEphemeral": self.ephemeral.hex(),
            "protocols": list(self.protocols),
        }
        if self.expected_peer is not None:
            out["expectedPeer"] = self.expected_peer.hex()
        return out

    @property
    def peer_id(self) -> bytes:
        public = bytes(nacl.signing.SigningKey(self.identity_seed).verify_key)
        return hashlib.sha256(b"starling/peer-id/1" + public).digest()

    def handshake(self, role: ses.Role, network: bytes) -> ses.Handshake:
        expected = None if self.expected_peer is None else identity.PeerId(self.expected_peer)
        return ses.Handshake(
            role,
            identity.PrivateKey(self.identity_seed),
            self.static,
            self.ephemeral,
            network,
            self.protocols,
            expected,
        )


def pattern_key(first: int) -> bytes:
    """32 bytes counting up from ``first``: 02-secure-session's example keys."""
    return bytes(range(first, first + 32))


def drive(
    role: ses.Role, side: Side, network: bytes, chunks: list[bytes], end: bool
) -> tuple[ses.Handshake, bytes, str]:
    """Run our Handshake as a vector's receiving side; return it, what it sent, and its
    state before its last input. Raises what starling.proto raises on the last input."""
    hs = side.handshake(role, network)
    sent = hs.start() if role is ses.Role.INITIATOR else b""
    state = SESSION_STATES[hs.state]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1 and not end
        state = SESSION_STATES[hs.state] if last else state
        try:
            sent += hs.receive(chunk)
        except StarlingError:
            if not last:
                abort(f"our Handshake failed on chunk {i} of {len(chunks)}, before the last input")
            raise
    if end:
        state = SESSION_STATES[hs.state]
        hs.end_of_stream()
    return hs, sent, state


# (comment, role, side, network ID, chunks, end of stream, flags, requirement, error)
HandshakeCase = tuple[str, ses.Role, Side, bytes, list[bytes], bool, list[str], str, str | None]


def session_suite() -> VectorFile:
    vf = VectorFile("session", "02-secure-session.md", SESSION_NOTES)
    main_net = network_id("starling")
    lab_net = network_id("starling-lab")
    if (main_net.hex(), lab_net.hex()) != ("a5146c9a", "e7ccd63e"):
        abort("network IDs differ from spec/README.md section 3")
    if hashlib.sha256(b"starling").digest()[:4] != main_net:
        abort("network_id is not SHA-256(name)[0:4]")

    # -- full transcripts ------------------------------------------------------------
    spec_i = Side(
        bytes.fromhex(RFC8032[0][1]),
        pattern_key(0x00),
        pattern_key(0x20),
        ("starling/echo/1",),
        None,
    )
    spec_r = Side(
        bytes.fromhex(RFC8032[1][1]),
        pattern_key(0x40),
        pattern_key(0x60),
        ("starling/echo/1", "starling/chat/1"),
    )
    spec_i = dataclasses.replace(spec_i, expected_peer=spec_r.peer_id)
    transcripts: list[tuple[str, bytes, Side, Side, list[str]]] = [
        (
            "02-secure-session.md 8: RFC 8032 TEST 1 (initiator) and TEST 2 (responder) "
            "identities, counting Noise keys, the public network, an expected peer",
            main_net,
            spec_i,
            spec_r,
            ["SpecExample"],
        ),
        (
            "seeded keys 'session/2/*', network starling-lab, the initiator speaks no "
            "protocol and expects no particular peer",
            lab_net,
            Side(
                seed("session/2/initiator/identity"),
                seed("session/2/initiator/static"),
                seed("session/2/initiator/ephemeral"),
                (),
            ),
            Side(
                seed("session/2/responder/identity"),
                seed("session/2/responder/static"),
                seed("session/2/responder/ephemeral"),
                ("starling/echo/1", "starling/x-test/2"),
            ),
            ["Seeded"],
        ),
    ]
    r3 = Side(
        seed("session/3/responder/identity"),
        seed("session/3/responder/static"),
        seed("session/3/responder/ephemeral"),
        (),
    )
    transcripts.append(
        (
            "seeded keys 'session/3/*', the public network, majors 0 and 9999, a 41-character "
            "name, the responder speaks no protocol",
            main_net,
            Side(
                seed("session/3/initiator/identity"),
                seed("session/3/initiator/static"),
                seed("session/3/initiator/ephemeral"),
                ("starling/echo/1", "starling/a/0", "starling/" + "n" * 41 + "/9999"),
                r3.peer_id,
            ),
            r3,
            ["Seeded"],
        )
    )
    tests = vf.group(
        "handshake",
        "A complete handshake between the two sides described (02-secure-session.md 4-6): "
        "msg1, msg2, msg3 as framed on stream 0, the decrypted payloads, the handshake hash, "
        "Split()'s keys, what each side learns of the other, the stream keys of streams 4 "
        "and 8, and the first frames of stream 4 (input.frames) on the wire.",
    )
    honest: dict[str, bytes] = {}
    honest_frames: list[bytes] = []
    for index, (comment, network, ini, res, flags) in enumerate(transcripts):
        prologue = prologue_of(network)
        ni = NoiseXX(True, prologue, ini.static, ini.ephemeral)
        nr = NoiseXX(False, prologue, res.static, res.ephemeral)
        p2 = payload_bytes(res.identity_seed, res.static, list(res.protocols))
        p3 = payload_bytes(ini.identity_seed, ini.static, list(ini.protocols))
        m1 = ni.write1()
        nr.read1(m1)
        m2 = nr.write2(p2)
        if ni.read2(m2) != p2:
            abort(f"{comment}: reference Noise does not round-trip msg2")
        m3 = ni.write3(p3)
        if nr.read3(m3) != p3 or ni.h != nr.h or ni.split() != nr.split():
            abort(f"{comment}: reference Noise sides disagree")
        if len(m1) != 32 or len(m2) != 96 + len(p2) or len(m3) != 64 + len(p3):
            abort(f"{comment}: message sizes differ from 02-secure-session.md 4.2")
        k1, k2 = ni.split()
        # The implementation under check.
        hi, hr = (
            ini.handshake(ses.Role.INITIATOR, network),
            res.handshake(ses.Role.RESPONDER, network),
        )
        w1 = hi.start()
        w2 = hr.receive(w1)
        w3 = hi.receive(w2)
        if hr.receive(w3) != b"" or not (hi.complete and hr.complete and hi.fin and hr.fin):
            abort(f"{comment}: our handshake does not complete")
        if (w1, w2, w3) != (frame16(m1), frame16(m2), frame16(m3)):
            abort(f"{comment}: our handshake messages differ from the reference Noise")
        ki, kr = hi.keys, hr.keys
        assert ki is not None and kr is not None
        if (ki.handshake_hash, ki.initiator_key, ki.responder_key) != (ni.h, k1, k2) or (
            kr.handshake_hash,
            kr.initiator_key,
            kr.responder_key,
        ) != (ni.h, k1, k2):
            abort(f"{comment}: handshake hash or Split() keys differ from the reference")
        for payload, side in ((p2, res), (p3, ini)):
            verify_key = nacl.signing.VerifyKey(cbor2.loads(payload)[1])
            verify_key.verify(
                signing_input(NOISE_STATIC_DOMAIN, x25519_pub(side.static)),
                cbor2.loads(payload)[2],
            )
        learns = {
            "initiatorLearns": (ki, res),
            "responderLearns": (kr, ini),
        }
        learned: Json = {}
        for name, (keys, other) in learns.items():
            if keys.peer_id.raw != other.peer_id or keys.peer_protocols != other.protocols:
                abort(f"{comment}: {name} is not the other side's identity and protocols")
            learned[name] = {
                "identityKey": keys.peer.raw.hex(),
                "peerId": keys.peer_id.raw.hex(),
                "protocols": list(keys.peer_protocols),
            }
        stream_keys: list[Json] = []
        for stream_id in (4, 8):
            entry: Json = {"streamId": stream_id}
            for role, base in ((ses.Role.INITIATOR, k1), (ses.Role.RESPONDER, k2)):
                key = ki.stream_key(stream_id, role)
                if key != kr.stream_key(stream_id, role) or key != stream_key_reference(
                    ni.h, base, stream_id
                ):
                    abort(f"{comment}: stream key {stream_id}/{role.value} differs")
                entry[role.value] = key.hex()
            stream_keys.append(entry)
        header = ses.StreamHeader("starling/echo/1").encode()
        if header != cbor2.dumps({1: "starling/echo/1"}):
            abort("stream header encoding differs from cbor2's")
        sends = [(ses.Role.INITIATOR, header), (ses.Role.INITIATOR, b"hello"),
                 (ses.Role.RESPONDER, b"hello")]  # fmt: skip
        writers = {ses.Role.INITIATOR: ki.stream_cipher(4), ses.Role.RESPONDER: kr.stream_cipher(4)}
        counters = {ses.Role.INITIATOR: 0, ses.Role.RESPONDER: 0}
        wires: list[str] = []
        for sender, plaintext in sends:
            other = ses.Role.RESPONDER if sender is ses.Role.INITIATOR else ses.Role.INITIATOR
            wire = writers[sender][0].seal(plaintext)
            key = stream_key_reference(ni.h, k1 if sender is ses.Role.INITIATOR else k2, 4)
            if wire != seal_reference(key, counters[sender], plaintext):
                abort(f"{comment}: frame differs from ChaCha20Poly1305 over the stream key")
            if writers[other][1].feed(wire) != [plaintext]:
                abort(f"{comment}: the other side does not open the frame")
            counters[sender] += 1
            wires.append(wire.hex())
        if index == 0:
            honest = {"m1": m1, "m2": m2, "m3": m3, "h": ni.h, "k1": k1, "k2": k2}
            honest["key4i"] = bytes.fromhex(stream_keys[0]["initiator"])
            honest["key4r"] = bytes.fromhex(stream_keys[0]["responder"])
            honest["key8i"] = bytes.fromhex(stream_keys[1]["initiator"])
            honest["p2"], honest["p3"] = p2, p3
            honest_frames = [bytes.fromhex(w) for w in wires]
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement="SES-R2",
            input={
                "networkId": network.hex(),
                "initiator": ini.json(),
                "responder": res.json(),
                "frames": [
                    {"streamId": 4, "sender": sender.value, "plaintext": plaintext.hex()}
                    for sender, plaintext in sends
                ],
            },
            expected={
                "msg1": frame16(m1).hex(),
                "msg2": frame16(m2).hex(),
                "msg3": frame16(m3).hex(),
                "msg2Payload": p2.hex(),
                "msg3Payload": p3.hex(),
                "handshakeHash": ni.h.hex(),
                "k1": k1.hex(),
                "k2": k2.hex(),
                **learned,
                "streamKeys": stream_keys,
                "frames": wires,
            },
        )
    check_spec_session_example(honest, honest_frames)

    # -- one side receives these bytes on stream 0 ---------------------------------------
    ini, res = spec_i, spec_r
    i_pub, r_pub = x25519_pub(ini.static), x25519_pub(res.static)

    def initiator_view(network: bytes = main_net) -> NoiseXX:
        """A reference initiator with the example keys, after writing msg1."""
        n = NoiseXX(True, prologue_of(network), ini.static, ini.ephemeral)
        n.write1()
        return n

    def responder_reply(
        payload: bytes, *, network: bytes = main_net, tag: bytes = b"starling/noise/1",
        static: bytes | None = None, ephemeral: bytes | None = None,
    ) -> bytes:  # fmt: skip
        """msg2 made by a reference responder in answer to the example initiator's msg1."""
        n = NoiseXX(False, prologue_of(network, tag), static or res.static,
                    ephemeral or res.ephemeral)  # fmt: skip
        n.read1(honest["m1"])
        return frame16(n.write2(payload))

    def initiator_final(payload: bytes) -> bytes:
        """msg3 made by a reference initiator after the example responder's msg2."""
        n = initiator_view()
        n.read2(honest["m2"])
        return frame16(n.write3(payload))

    def payload_of(
        identity_key: bytes, signature: bytes, protocols: object = ("starling/echo/1",),
        **extra: object,
    ) -> bytes:  # fmt: skip
        fields: dict[int, object] = {1: identity_key, 2: signature, 3: list(protocols)}  # type: ignore[call-overload]
        fields.update({int(k[1:]): v for k, v in extra.items()})
        return cbor2.dumps(fields, canonical=True)

    r_id = bytes(nacl.signing.SigningKey(res.identity_seed).verify_key)
    i_id = bytes(nacl.signing.SigningKey(ini.identity_seed).verify_key)
    r_sig = (
        nacl.signing.SigningKey(res.identity_seed)
        .sign(signing_input(NOISE_STATIC_DOMAIN, r_pub))
        .signature
    )
    i_sig = (
        nacl.signing.SigningKey(ini.identity_seed)
        .sign(signing_input(NOISE_STATIC_DOMAIN, i_pub))
        .signature
    )
    other = seed("session/mallory/identity")
    other_id = bytes(nacl.signing.SigningKey(other).verify_key)
    torsion = torsion_points()
    m1f, m2f, m3f = frame16(honest["m1"]), frame16(honest["m2"]), frame16(honest["m3"])
    tampered_m2 = bytearray(m2f)
    tampered_m2[2 + 40] ^= 0x01  # inside the encrypted static key
    tampered_m3 = bytearray(m3f)
    tampered_m3[-5] ^= 0x80  # inside the payload's tag
    fresh_responder = dataclasses.replace(res, ephemeral=seed("session/fresh/ephemeral"))
    unexpected_peer = seed("session/unexpected/identity")
    expecting_other = dataclasses.replace(
        ini,
        expected_peer=hashlib.sha256(
            b"starling/peer-id/1" + bytes(nacl.signing.SigningKey(unexpected_peer).verify_key)
        ).digest(),
    )
    expecting_nobody = dataclasses.replace(ini, expected_peer=None)
    zero_e_msg2 = frame16(bytes(32) + seeded_bytes("session/zero-e", 48 + len(honest["p2"]) + 16))
    # A responder given an all-zero ephemeral key cannot write msg2: its DH ee is all zero.
    zero_e_responder = NoiseXX(False, prologue_of(main_net), res.static, res.ephemeral)
    zero_e_responder.read1(bytes(32))
    try:
        zero_e_responder.write2(honest["p2"])
        abort("the reference Noise wrote msg2 in answer to an all-zero ephemeral key")
    except ValueError:
        pass

    INIT, RESP = ses.Role.INITIATOR, ses.Role.RESPONDER
    # (comment, role, side, network, chunks, end, flags, requirement, error | None)
    # fmt: off
    cases: list[HandshakeCase] = [
        # Valid deliveries.
        ("responder: msg1 one byte at a time", RESP, res, main_net,
         [m1f[i:i + 1] for i in range(len(m1f))], False, ["Split"], "SES-R4", None),
        ("responder: msg1 and msg3 in one chunk", RESP, res, main_net, [m1f + m3f], False,
         ["Split"], "SES-R4", None),
        ("responder: msg1, msg3 cut after its length, the rest, then the end of stream 0", RESP,
         res, main_net, [m1f, m3f[:2], m3f[2:]], True, ["Split"], "SES-R4", None),
        ("initiator: msg2 cut inside its length field, then the end of stream 0", INIT, ini,
         main_net, [m2f[:1], m2f[1:]], True, ["Split"], "SES-R4", None),
        ("initiator expecting no particular peer: msg2", INIT, expecting_nobody, main_net, [m2f],
         False, [], "SES-R8", None),
        ("initiator: msg2 whose payload carries an unknown odd key 5, ignored", INIT, ini,
         main_net, [responder_reply(payload_of(r_id, r_sig, ["starling/echo/1"], k5="later"))],
         False, ["Extension"], "SES-R6", None),
        ("responder: msg3 whose payload lists no protocol", RESP, res, main_net,
         [m1f, initiator_final(payload_of(i_id, i_sig, []))], False, [], "SES-R6", None),
        # Framing and message sizes [SES-R4] [SES-R5]
        ("responder: msg1 of 31 bytes", RESP, res, main_net, [b"\x00\x1f" + honest["m1"][:31]],
         False, ["Truncated"], "SES-R5", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: msg1 of 33 bytes (a 1-byte payload)", RESP, res, main_net,
         [b"\x00\x21" + honest["m1"] + b"\x00"], False, [], "SES-R5",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: msg1 with a 16-byte payload", RESP, res, main_net,
         [frame16(honest["m1"] + bytes(16))], False, [], "SES-R5",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: an empty handshake message", RESP, res, main_net, [b"\x00\x00"], False,
         ["Truncated"], "SES-R5", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: stream 0 ends inside msg1", RESP, res, main_net, [m1f[:20]], True,
         ["Truncated"], "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: stream 0 ends inside the length of msg1", RESP, res, main_net, [m1f[:1]],
         True, ["Truncated"], "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: stream 0 ends before any byte", RESP, res, main_net, [], True, ["Truncated"],
         "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: a handshake frame of 4097 bytes", RESP, res, main_net,
         [b"\x10\x01" + bytes(4097)], False, ["Limits"], "SES-R4", "SESSION_FRAME_TOO_LARGE"),
        ("responder: a length of 65535, refused as soon as the length is read", RESP, res,
         main_net, [b"\xff\xff"], False, ["Limits"], "SES-R4", "SESSION_FRAME_TOO_LARGE"),
        ("initiator: msg2 of 95 bytes, one short of e, encrypted s and a payload tag", INIT, ini,
         main_net, [frame16(honest["m2"][:95])], False, ["Truncated"], "SES-R4",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: stream 0 ends inside msg2", INIT, ini, main_net, [m2f[:100]], True,
         ["Truncated"], "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: stream 0 ends with no msg2", INIT, ini, main_net, [], True, ["Truncated"],
         "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: a handshake frame of 4097 bytes", INIT, ini, main_net,
         [b"\x10\x01" + bytes(4097)], False, ["Limits"], "SES-R4", "SESSION_FRAME_TOO_LARGE"),
        ("responder: msg3 of 63 bytes", RESP, res, main_net, [m1f, frame16(honest["m3"][:63])],
         False, ["Truncated"], "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: stream 0 ends after msg1", RESP, res, main_net, [m1f], True, ["Truncated"],
         "SES-R4", "SESSION_HANDSHAKE_MALFORMED"),
        # Noise authentication [SES-R9]
        ("initiator: msg2 from a responder on network starling-lab", INIT, ini, main_net,
         [responder_reply(honest["p2"], network=lab_net)], False, ["WrongNetwork"], "SES-R9",
         "SESSION_NOISE_AUTH"),
        ("initiator on network starling-lab: the msg2 of the public network", INIT, ini, lab_net,
         [m2f], False, ["WrongNetwork"], "SES-R9", "SESSION_NOISE_AUTH"),
        ("initiator: msg2 from a responder whose prologue tag is starling/noise/2", INIT, ini,
         main_net, [responder_reply(honest["p2"], tag=b"starling/noise/2")], False, [],
         "SES-R9", "SESSION_NOISE_AUTH"),
        ("initiator: msg2 with a bit of the encrypted static key flipped", INIT, ini, main_net,
         [bytes(tampered_m2)], False, ["Tampered"], "SES-R9", "SESSION_NOISE_AUTH"),
        ("initiator: msg2 whose ephemeral key is all zero (small order: the DH is all zero)",
         INIT, ini, main_net, [zero_e_msg2], False, ["SmallOrder"], "SES-R9",
         "SESSION_NOISE_AUTH"),
        ("responder: msg1 whose ephemeral key is all zero (small order: the DH ee of msg2, "
         "which the responder computes to write it, is all zero)", RESP, res, main_net,
         [frame16(bytes(32))], False, ["SmallOrder"], "SES-R9", "SESSION_NOISE_AUTH"),
        ("responder: msg3 with a bit of the payload tag flipped", RESP, res, main_net,
         [m1f, bytes(tampered_m3)], False, ["Tampered"], "SES-R9", "SESSION_NOISE_AUTH"),
        ("responder with another ephemeral key: a recorded msg1 and msg3", RESP, fresh_responder,
         main_net, [m1f, m3f], False, ["Replay"], "SES-R9", "SESSION_NOISE_AUTH"),
        # Payloads [SES-R6] and identity proofs [SES-R7]
        ("initiator: msg2 whose payload has no protocols (key 3)", INIT, ini, main_net,
         [responder_reply(cbor2.dumps({1: r_id, 2: r_sig}))], False, ["Structure"], "SES-R6",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: msg2 whose payload lists starling/echo/01", INIT, ini, main_net,
         [responder_reply(payload_of(r_id, r_sig, ["starling/echo/01"]))], False,
         ["Structure", "ProtocolId"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: msg2 whose payload is empty", INIT, ini, main_net, [responder_reply(b"")],
         False, ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("responder: msg3 whose payload carries an unknown even key 4", RESP, res, main_net,
         [m1f, initiator_final(payload_of(i_id, i_sig, k4=0))], False, ["Structure"],
         "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("initiator: msg2 claiming another identity key (signature by the real one)", INIT, ini,
         main_net, [responder_reply(payload_of(other_id, r_sig))], False, ["Forged"], "SES-R7",
         "SESSION_IDENTITY_INVALID"),
        ("initiator: msg2 whose signature covers another Noise static key", INIT, ini, main_net,
         [responder_reply(payload_of(
             r_id, nacl.signing.SigningKey(res.identity_seed).sign(
                 signing_input(NOISE_STATIC_DOMAIN, i_pub)).signature))],
         False, ["Forged"], "SES-R7", "SESSION_IDENTITY_INVALID"),
        ("initiator: msg2 whose signature is made under starling/test/1", INIT, ini, main_net,
         [responder_reply(payload_of(
             r_id, nacl.signing.SigningKey(res.identity_seed).sign(
                 signing_input(TEST_DOMAIN, r_pub)).signature))],
         False, ["Forged"], "SES-R7", "SESSION_IDENTITY_INVALID"),
        ("responder: msg3 whose signature is over the static key without the signing input",
         RESP, res, main_net, [m1f, initiator_final(payload_of(
             i_id, nacl.signing.SigningKey(ini.identity_seed).sign(i_pub).signature))],
         False, ["Forged"], "SES-R7", "SESSION_IDENTITY_INVALID"),
        ("responder: msg3 whose identity key is of small order, with a signature satisfying "
         "the equation", RESP, res, main_net, [m1f, initiator_final(payload_of(
             encode_point(torsion[1]),
             forge_for_small_order_key(torsion[1], signing_input(NOISE_STATIC_DOMAIN, i_pub),
                                       "session/forge/1")))],
         False, ["Forged", "SmallOrder", "LaxVerifies"], "SES-R7",
         "SESSION_IDENTITY_INVALID"),
        # The expected peer [SES-R8]
        ("initiator expecting another peer: an honest msg2", INIT, expecting_other, main_net,
         [m2f], False, [], "SES-R8", "SESSION_PEER_MISMATCH"),
        # Messages out of turn [SES-R10]
        ("initiator, done: msg2 again", INIT, ini, main_net, [m2f, m2f], False, ["Replay"],
         "SES-R10", "SESSION_HANDSHAKE_UNEXPECTED"),
        ("initiator, done: msg2 twice in one chunk", INIT, ini, main_net, [m2f + m2f], False,
         ["Replay"], "SES-R10", "SESSION_HANDSHAKE_UNEXPECTED"),
        ("responder, done: msg3 again", RESP, res, main_net, [m1f, m3f, m3f], False, ["Replay"],
         "SES-R10", "SESSION_HANDSHAKE_UNEXPECTED"),
        ("responder, done: an empty handshake frame", RESP, res, main_net, [m1f, m3f, b"\x00\x00"],
         False, [], "SES-R10", "SESSION_HANDSHAKE_UNEXPECTED"),
    ]
    # fmt: on
    tests = vf.group(
        "handshake-receive",
        "One side of the handshake, configured as input.side on network input.networkId, "
        "receives input.receive on stream 0, chunk by chunk (an initiator first writes msg1); "
        "with input.end, stream 0 then ends. Valid: everything the side wrote on stream 0, "
        "whether it is complete and what it learned. Invalid: the last input (the last chunk, "
        "or the end) fails with the error; input.state is the state the side is in just "
        "before it (02-secure-session.md 4.5).",
    )
    for comment, role, side, network, chunks, end, flags, requirement, error in cases:
        if error is None:
            hs, sent, _ = drive(role, side, network, chunks, end)
            expected: Json = {"sent": sent.hex(), "complete": hs.complete, "fin": hs.fin}
            if hs.keys is not None:
                expected["peerId"] = hs.keys.peer_id.raw.hex()
                expected["peerProtocols"] = list(hs.keys.peer_protocols)
            state = None
        else:
            expect_error(lambda r=role, s=side, n=network, c=chunks, e=end: drive(r, s, n, c, e),
                         error, comment)  # fmt: skip
            expected = {}
            state = failing_state(role, side, network, chunks, end)
        given: Json = {
            "networkId": network.hex(),
            "role": role.value,
            "side": side.json(),
            "receive": [chunk.hex() for chunk in chunks],
            "end": end,
        }
        if state is not None:
            given["state"] = state
        vf.add(tests, comment, flags=flags, requirement=requirement, input=given,
               expected=expected, error=error)  # fmt: skip

    # -- handshake payloads on their own -------------------------------------------------
    tests = vf.group(
        "handshake-payload",
        "Decode input.payload as the handshake payload of msg2 or msg3 (02-secure-session.md "
        "4.3), sent by a side whose Noise static public key is input.noiseStatic, and check "
        "its identity proof. Expected: the identity key, its peer ID and the protocols.",
        cddl={"file": "spec/cddl/session.cddl", "rule": "handshake-payload", "field": "payload"},
    )
    many = [f"starling/{i:02d}{'p' * 39}/{9999 - i}" for i in range(64)]
    if any(len(p) != 55 for p in many):
        abort("the longest protocol IDs are not 55 bytes")
    r_payload = honest["p2"]
    s_plus_l = r_sig[:32] + (int.from_bytes(r_sig[32:], "little") + L).to_bytes(32, "little")
    if not lax_verifies(r_id, signing_input(NOISE_STATIC_DOMAIN, r_pub), s_plus_l):
        abort("S + L identity signature does not satisfy the lax equation")
    deep = cbor2.dumps({1: r_id, 2: r_sig, 3: [], 5: [[0]]})
    # (comment, payload, noise static, flags, requirement, error)
    # fmt: off
    payload_cases: list[tuple[str, bytes, bytes, list[str], str, str | None]] = [
        ("02-secure-session.md 8: the responder's payload", r_payload, r_pub,
         ["SpecExample"], "SES-R6", None),
        ("02-secure-session.md 8: the initiator's payload", honest["p3"], i_pub,
         ["SpecExample"], "SES-R6", None),
        ("no protocols", payload_of(r_id, r_sig, []), r_pub, [], "SES-R6", None),
        ("64 protocol IDs of 55 bytes, the most a payload holds", payload_of(r_id, r_sig, many),
         r_pub, ["Limits"], "SES-R6", None),
        ("unknown odd keys 5 and 7", payload_of(r_id, r_sig, k5="x", k7=[1]), r_pub,
         ["Extension"], "SES-R6", None),
        ("65 protocol IDs", payload_of(r_id, r_sig, [*many, "starling/echo/1"]), r_pub,
         ["Limits"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("an array of the three fields", cbor2.dumps([r_id, r_sig, ["starling/echo/1"]]), r_pub,
         ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("no identity key (key 1)", cbor2.dumps({2: r_sig, 3: []}), r_pub, ["Structure"],
         "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("identity key of 31 bytes", payload_of(r_id[:31], r_sig), r_pub, ["Structure"],
         "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("signature of 63 bytes", payload_of(r_id, r_sig[:63]), r_pub, ["Structure"], "SES-R6",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("protocols is a text string", cbor2.dumps({1: r_id, 2: r_sig, 3: "starling/echo/1"}),
         r_pub, ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("a protocol ID as a byte string", payload_of(r_id, r_sig, [b"starling/echo/1"]), r_pub,
         ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("protocol ID starling/Echo/1", payload_of(r_id, r_sig, ["starling/Echo/1"]), r_pub,
         ["Structure", "ProtocolId"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("protocol ID starling/echo/1 with a trailing newline",
         payload_of(r_id, r_sig, ["starling/echo/1\n"]), r_pub, ["Structure", "ProtocolId"],
         "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("an unknown even key 4", payload_of(r_id, r_sig, k4=b""), r_pub, ["Structure"],
         "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("keys in the order 2, 1, 3", cbor2.dumps({2: r_sig, 1: r_id, 3: []}), r_pub,
         ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("an extension nested 4 levels deep (the limit is 3)", deep, r_pub,
         ["Structure", "Limits"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("a float in an extension", r_payload[:1].replace(b"\xa3", b"\xa4") + r_payload[1:]
         + b"\x05\xf9\x3c\x00", r_pub, ["Structure"], "SES-R6", "SESSION_HANDSHAKE_MALFORMED"),
        ("one byte after the payload", r_payload + b"\x00", r_pub, ["Structure"], "SES-R6",
         "SESSION_HANDSHAKE_MALFORMED"),
        ("the payload checked against the other side's static key", r_payload, i_pub,
         ["Forged"], "SES-R7", "SESSION_IDENTITY_INVALID"),
        ("signature with S + L", payload_of(r_id, s_plus_l), r_pub, ["Forged", "LaxVerifies"],
         "SES-R7", "SESSION_IDENTITY_INVALID"),
        ("identity key is the identity point, signature satisfying the equation",
         payload_of(encode_point(torsion[0]), forge_for_small_order_key(
             torsion[0], signing_input(NOISE_STATIC_DOMAIN, r_pub), "session/forge/0")),
         r_pub, ["Forged", "SmallOrder", "LaxVerifies"], "SES-R7",
         "SESSION_IDENTITY_INVALID"),
        ("identity key with y = p (non-canonical)",
         payload_of(P.to_bytes(32, "little"), r_sig), r_pub, ["Forged"], "SES-R7",
         "SESSION_IDENTITY_INVALID"),
        ("another key's signature", payload_of(r_id, nacl.signing.SigningKey(other).sign(
            signing_input(NOISE_STATIC_DOMAIN, r_pub)).signature), r_pub, ["Forged"], "SES-R7",
         "SESSION_IDENTITY_INVALID"),
    ]
    # fmt: on
    for comment, payload, static_pub, flags, requirement, error in payload_cases:
        if error is None:
            decoded = ses.HandshakePayload.decode(payload)
            key = decoded.verify(static_pub)
            if cbor2.loads(payload)[1] != key.raw:
                abort(f"{comment}: identity key differs from cbor2's reading")
            expected = {
                "identityKey": key.raw.hex(),
                "peerId": key.peer_id.raw.hex(),
                "protocols": list(decoded.protocols),
            }
        else:
            expect_error(
                lambda p=payload, s=static_pub: ses.HandshakePayload.decode(p).verify(s),
                error,
                comment,
            )
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"payload": payload.hex(), "noiseStatic": static_pub.hex()},
               expected=expected, error=error)  # fmt: skip

    # -- stream headers ------------------------------------------------------------------
    tests = vf.group(
        "stream-header",
        "Decode input.header, the plaintext of the first frame of a stream from its opener, "
        "as a stream header (02-secure-session.md 6.1). Valid: the protocol ID; also "
        "encoding {1: protocol} must give input.header back, unless the header carries an "
        "extension.",
        cddl={"file": "spec/cddl/session.cddl", "rule": "stream-header", "field": "header"},
    )
    longest = "starling/" + "a" * 41 + "/9999"
    # (comment, header bytes, flags, error)
    # fmt: off
    header_cases: list[tuple[str, bytes, list[str], str | None]] = [
        ("02-secure-session.md 8: starling/echo/1", bytes.fromhex(SPEC_STREAM_HEADER),
         ["SpecExample"], None),
        ("major 0", cbor2.dumps({1: "starling/x/0"}), [], None),
        ("the longest protocol ID: a 41-character name, major 9999", cbor2.dumps({1: longest}),
         ["Limits"], None),
        ("an unknown odd key 3", cbor2.dumps({1: "starling/echo/1", 3: "later"}),
         ["Extension"], None),
        ("starling/echo/01", cbor2.dumps({1: "starling/echo/01"}), ["ProtocolId"],
         "SESSION_STREAM_HEADER"),
        ("starling/Echo/1", cbor2.dumps({1: "starling/Echo/1"}), ["ProtocolId"],
         "SESSION_STREAM_HEADER"),
        ("starling/echo (no major)", cbor2.dumps({1: "starling/echo"}), ["ProtocolId"],
         "SESSION_STREAM_HEADER"),
        ("starling/-echo/1", cbor2.dumps({1: "starling/-echo/1"}), ["ProtocolId"],
         "SESSION_STREAM_HEADER"),
        ("major 10000", cbor2.dumps({1: "starling/echo/10000"}), ["ProtocolId"],
         "SESSION_STREAM_HEADER"),
        ("a 42-character name", cbor2.dumps({1: "starling/" + "a" * 42 + "/1"}),
         ["ProtocolId", "Limits"], "SESSION_STREAM_HEADER"),
        ("starling/echo/1 with a trailing newline", cbor2.dumps({1: "starling/echo/1\n"}),
         ["ProtocolId"], "SESSION_STREAM_HEADER"),
        ("the protocol as a byte string", cbor2.dumps({1: b"starling/echo/1"}), ["Structure"],
         "SESSION_STREAM_HEADER"),
        ("an unknown even key 2", cbor2.dumps({1: "starling/echo/1", 2: 0}), ["Structure"],
         "SESSION_STREAM_HEADER"),
        ("an empty map", cbor2.dumps({}), ["Structure"], "SESSION_STREAM_HEADER"),
        ("an array", cbor2.dumps([1, "starling/echo/1"]), ["Structure"],
         "SESSION_STREAM_HEADER"),
        ("an empty frame", b"", ["Structure"], "SESSION_STREAM_HEADER"),
        ("the text length in a non-shortest head",
         b"\xa1\x01\x78\x0f" + b"starling/echo/1", ["Structure"], "SESSION_STREAM_HEADER"),
        ("one byte after the map", cbor2.dumps({1: "starling/echo/1"}) + b"\x00",
         ["Structure"], "SESSION_STREAM_HEADER"),
        ("an extension nested 3 levels deep (the limit is 2)",
         cbor2.dumps({1: "starling/echo/1", 3: [0]}), ["Structure", "Limits"],
         "SESSION_STREAM_HEADER"),
        ("1025 bytes (the limit is 1024)",
         cbor2.dumps({1: "starling/echo/1", 3: bytes(1025 - 22)}), ["Limits"],
         "SESSION_STREAM_HEADER"),
    ]
    # fmt: on
    if len(header_cases[-1][1]) != 1025:
        abort("the oversized header is not 1025 bytes")
    if cbor2.dumps({1: "starling/echo/1"}) != bytes.fromhex(SPEC_STREAM_HEADER):
        abort("the stream header of 02-secure-session.md 8 differs from cbor2's encoding")
    for comment, header, flags, error in header_cases:
        if error is None:
            protocol = ses.StreamHeader.decode(header).protocol
            if cbor2.loads(header)[1] != protocol:
                abort(f"{comment}: protocol differs from cbor2's reading")
            expected = {"protocol": protocol}
        else:
            expect_error(lambda h=header: ses.StreamHeader.decode(h), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement="SES-R15",
               input={"header": header.hex()}, expected=expected, error=error)  # fmt: skip

    # -- frames ----------------------------------------------------------------------------
    tests = vf.group(
        "frame-receive",
        "Open the frames of one stream direction under input.key (02-secure-session.md 7), "
        "given the receiver's limit input.maxFrame on the length field, from the bytes "
        "input.receive delivered chunk by chunk; with input.end the stream then ends. Valid: "
        "the plaintexts in order; also sealing them in order under the key gives the "
        "received bytes. Invalid: the error, met on the last input.",
    )
    key4, key4r, key8 = honest["key4i"], honest["key4r"], honest["key8i"]

    def sealed(*plaintexts: bytes, key: bytes = key4, start: int = 0) -> list[bytes]:
        return [seal_reference(key, start + i, p) for i, p in enumerate(plaintexts)]

    f0, f1, f2 = sealed(b"hello", b"", b"third frame")
    big = sealed(seeded_bytes("session/frame/1008", 1008))[0]  # ciphertext 1024 bytes
    over = sealed(seeded_bytes("session/frame/1009", 1009))[0]  # ciphertext 1025 bytes
    spec_frames = honest_frames
    flip = bytearray(f0)
    flip[3] ^= 0x01
    flip_tag = bytearray(f0)
    flip_tag[-1] ^= 0x80
    # (comment, key, max frame, chunks, end, flags, requirement, error)
    # fmt: off
    frame_cases: list[tuple[str, bytes, int, list[bytes], bool, list[str], str, str | None]] = [
        ("02-secure-session.md 8: the initiator's first two frames on stream 4", key4, 65535,
         [spec_frames[0] + spec_frames[1]], False, ["SpecExample"], "SES-R12", None),
        ("a frame with an empty plaintext (16 bytes: the tag)", key4, 65535, sealed(b""),
         False, [], "SES-R12", None),
        ("three frames in one chunk, then the end", key4, 65535, [f0 + f1 + f2], True, [],
         "SES-R12", None),
        ("three frames one byte at a time", key4, 65535,
         [bytes((b,)) for b in f0 + f1 + f2], False, ["Split"], "SES-R12", None),
        ("a frame of 1024 bytes against a limit of 1024", key4, 1024, [big], False,
         ["Limits"], "SES-R14", None),
        ("a frame of 1025 bytes against a limit of 1024", key4, 1024, [over], False,
         ["Limits"], "SES-R14", "SESSION_FRAME_TOO_LARGE"),
        ("a length of 1025 against a limit of 1024, refused before the body arrives", key4,
         1024, [over[:2]], False, ["Limits"], "SES-R14", "SESSION_FRAME_TOO_LARGE"),
        ("a second frame over the limit after a good one", key4, 1024,
         [f0, sealed(seeded_bytes("session/frame/1009", 1009), start=1)[0]], False,
         ["Limits"], "SES-R14", "SESSION_FRAME_TOO_LARGE"),
        ("a bit of the ciphertext flipped", key4, 65535, [bytes(flip)], False, ["Tampered"],
         "SES-R13", "SESSION_FRAME_AUTH"),
        ("a bit of the tag flipped", key4, 65535, [bytes(flip_tag)], False, ["Tampered"],
         "SES-R13", "SESSION_FRAME_AUTH"),
        ("frame 0 twice", key4, 65535, [f0, f0], False, ["Replay"], "SES-R13",
         "SESSION_FRAME_AUTH"),
        ("frame 1 before frame 0", key4, 65535, [f1 + f0], False,
         ["Replay"], "SES-R13", "SESSION_FRAME_AUTH"),
        ("a frame sealed with the responder's key of the same stream (reflected)", key4,
         65535, [sealed(b"hello", key=key4r)[0]], False, ["Replay"], "SES-R13",
         "SESSION_FRAME_AUTH"),
        ("a frame sealed with stream 8's key", key4, 65535, [sealed(b"hello", key=key8)[0]],
         False, ["Replay"], "SES-R13", "SESSION_FRAME_AUTH"),
        ("a length of 15, too short for the tag", key4, 65535, [b"\x00\x0f" + bytes(15)],
         False, ["Truncated"], "SES-R13", "SESSION_FRAME_AUTH"),
        ("a length of 0", key4, 65535, [b"\x00\x00"], False, ["Truncated"], "SES-R13",
         "SESSION_FRAME_AUTH"),
        ("the stream ends inside a length field", key4, 65535, [f0, f2[:1]], True,
         ["Truncated"], "SES-R17", "SESSION_STREAM_TRUNCATED"),
        ("the stream ends inside a frame", key4, 65535, [f0[:-1]], True, ["Truncated"],
         "SES-R17", "SESSION_STREAM_TRUNCATED"),
    ]
    # fmt: on
    for comment, key, max_frame, chunks, end, flags, requirement, error in frame_cases:

        def open_all(case: tuple[bytes, int, list[bytes], bool, str] = (
                key, max_frame, chunks, end, comment)) -> list[bytes]:  # fmt: skip
            k, m, c, e, what = case
            reader = ses.FrameReader(k, m)
            out: list[bytes] = []
            for i, chunk in enumerate(c):
                try:
                    out += reader.feed(chunk)
                except StarlingError:
                    if i != len(c) - 1 or e:
                        abort(f"{what}: our FrameReader failed before the last input")
                    raise
            if e:
                reader.end()
            return out

        if error is None:
            frames = open_all()
            writer = ses.FrameWriter(key)
            if b"".join(writer.seal(f) for f in frames) != b"".join(chunks):
                abort(f"{comment}: sealing the plaintexts does not give the input back")
            expected = {"frames": [f.hex() for f in frames]}
        else:
            expect_error(open_all, error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"key": key.hex(), "maxFrame": max_frame,
                      "receive": [c.hex() for c in chunks], "end": end},
               expected=expected, error=error)  # fmt: skip
    return vf


def failing_state(
    role: ses.Role, side: Side, network: bytes, chunks: list[bytes], end: bool
) -> str:
    """The state our Handshake is in just before the last input of an invalid vector."""
    hs = side.handshake(role, network)
    if role is ses.Role.INITIATOR:
        hs.start()
    for chunk in chunks if end else chunks[:-1]:
        hs.receive(chunk)
    if not end:
        # The fault is in the last frame of the last chunk: feed the frames before it.
        last, pos = chunks[-1], 0
        while pos + 2 <= len(last) and pos + 2 + int.from_bytes(last[pos : pos + 2], "big") < len(
            last
        ):
            size = int.from_bytes(last[pos : pos + 2], "big")
            hs.receive(last[pos : pos + 2 + size])
            pos += 2 + size
    return SESSION_STATES[hs.state]


# Worked example of 02-secure-session.md section 8, hard-coded from the spec.
SPEC_STREAM_HEADER = "a1016f737461726c696e672f6563686f2f31"
SPEC_SESSION = {
    "m1": "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254",
    "m2": (
        "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f"
        "7e1866de56d6c9b805d589b5e65bd14858f21fba6e576ce64993fbf55eb00457"
        "f904a15fcd8d98ddc96085c5697f0d95d332ed1b55f6a1877ab8ee71988cee0d"
        "34d84354718ed9aafd7e81a5222b73f2b3283aee73964f2a35868f32e7d15663"
        "0be50c3e6bf5f349a359636ad31af6b4e1984c13c50d7a823ea79a32e5aaad4b"
        "84c4299363c8d4f4f4785a615a52b509b791b460a11fe7b9a51041f2a9e89d69"
        "5434080d98ecdd76cd75e31d19b235a45e7845f8bc1c629b9c42f09e4d6a682b"
        "4885c3d369b9703fce"
    ),
    "m3": (
        "1dc00df062a51249321a8f8349c312567dc00ed837b5fc3fa4c72162d39a4973"
        "de26b1479963de4d6b56a0e5cc4d396165c57de3a11e4d574e40c370aa857056"
        "372fc01c3f544c972ace0260d467c31d54b29757ff824df99a81e14bcaaf56e2"
        "e686a9c690ab03ad3eff51c58d120f155d635626c7014839789f06441ac5173a"
        "3269774f48fae93a139eeb1e3ecfa0a9cf436082ef725118ece20b2d21b4026f"
        "72ff7b45ffeadaaf0a817723c460e71a084abec789bc2790e1"
    ),
    "h": "c75ede54110c01d52ec2bc3ab1b14a0f927e58dcfe52c7affa08bb95125f4708",
    "k1": "dff3528565acdc10f0f1f626005dfe7c054965be0f42b708570c67691c53af34",
    "k2": "3605b6634260499326e319610beb0c8127213d8d96f146edca88ce91da1d2da6",
    "key4i": "03066be77d87fc8956d7ba9099b4fa07252a372cfec898e460a4c32b3223fe58",
    "key4r": "d562e39b462ccfd96d5abf71e6ea3090660b81d6750d38225ea93bb0507fdfba",
    "key8i": "1b9208fedb6fe5828846b39eac65c4014bee6f2d4ae16a651a147fa07a52e591",
}
SPEC_SESSION_FRAMES = [
    "0022848cf2662457927e96f5b3e32dfaa16f7ebbe1908a5336a3151e0327614f0e60640d",
    "0015554fbcb593e37f6f497415feab1cb1b4585cae502b",
    "001502e90efa4c0b4337d7f0adbd90173e7ac301ae66f6",
]


def check_spec_session_example(honest: dict[str, bytes], frames: list[bytes]) -> None:
    """The first transcript must be the worked example of 02-secure-session.md 8."""
    for name, value in SPEC_SESSION.items():
        if honest[name].hex() != value:
            abort(f"02-secure-session.md 8: {name} differs from the transcript computed here")
    if [f.hex() for f in frames] != SPEC_SESSION_FRAMES:
        abort("02-secure-session.md 8.6: the frames differ from the ones sealed here")


# ----------------------------------------------------------------------------- dht suite
# The parts of 03-dht.md that a reimplementer can check without a network: distance and
# ordering, the bytes of every message, ID proofs, records, store decisions, write tokens
# and presence keys. Valid vectors are built here from the spec with cbor2, hashlib, hmac
# and libsodium, then compared with starling.proto.dht. Message encodings are also compared
# with the datagrams that live DhtNode cores (their randomness scripted) send in the same
# situation, so the vectors are what the reference implementation puts on the wire; the one
# exception is marked where it is made (VALUES with records, 03-dht.md 4.5 and 14).

DHT_NOTES = {
    "SpecExample": "Taken from a worked example of 03-dht.md, hard-coded here from the spec.",
    "Seeded": 'Keys or IDs derived from seeds SHA-256("starling-vectors/" + label).',
    "Boundary": "A value at the edge of its range: bucket indexes 0, 255 and 256, ports 1 "
    "and 65535, a TTL of 1 or 7200 s, a sequence number of 2**64-1, a record of exactly "
    "1024 bytes.",
    "Ipv6": "An IPv6 address (16 bytes on the wire) where most vectors use IPv4.",
    "ClientMode": "Sent by a node in client mode: key 3 is true (03-dht.md 7.5).",
    "Proof": "A response carrying an ID proof (keys 6 and 7), or a request asking for one (key 5).",
    "Forged": "An ID proof, record signature or write token that does not hold over what the "
    "verifier reconstructs: another transaction ID, address, port or key, or bytes changed "
    "after signing.",
    "WrongDomain": "Signed under another signature domain than the one the verifier uses: "
    "domain separation must make it fail.",
    "LaxVerifies": "The signature satisfies the Ed25519 equation but breaks a pinned rule of "
    "01-identity section 5 (a small-order key, S >= L); Starling rejects it.",
    "Extension": "A record payload carrying an unknown odd key, which every node ignores "
    "and keeps in the signed bytes (00-conventions 5.3).",
    "Structure": "The record's envelope or payload is not the structure of its field table: "
    "a missing field, a field of the wrong type or size, an unknown even key, "
    "non-canonical CBOR, extra envelope keys.",
    "Rollback": "An incoming record of the same signer and key that does not replace the "
    "held one: a lower sequence number, or the same one with other bytes.",
    "Limits": "A size, TTL or storage cap (03-dht.md 9.3, 9.4).",
    "Truncated": "A token of the wrong length.",
    "Network": "A control datagram of another network than the public one.",
}

DHT_REQUESTER_SEED = bytes.fromhex(RFC8032[0][1])  # 01-identity's running example
DHT_RESPONDER_SEED = bytes.fromhex(RFC8032[1][1])
DHT_REQUESTER = ("192.0.2.1", 4000)
DHT_REQUESTER6 = ("2001:db8::1", 4000)
DHT_RESPONDER = ("198.51.100.7", 4000)
DHT_CONTACTS = [  # the responder's routing table in the NODES and VALUES examples
    (seed("dht/contact/1"), ("203.0.113.10", 4001)),
    (seed("dht/contact/2"), ("203.0.113.20", 4002)),
    (seed("dht/contact/3"), ("2001:db8:1::3", 4003)),
]
DHT_LIMITS = codec.DecodeLimits(max_size=1500, max_depth=4)
DHT_PROOF_DOMAIN = "starling/dht-proof/1"
DHT_RECORD_DOMAIN = "starling/dht-record/1"
DHT_PRESENCE_TAG = b"starling/community-presence/1"
DHT_TX = {  # transaction IDs, by what the request is
    "ping": bytes.fromhex("0102030405060708"),
    "challenge": bytes.fromhex("a1a2a3a4a5a6a7a8"),
    "bootstrap": bytes.fromhex("1112131415161718"),
    "find": bytes.fromhex("2122232425262728"),
    "get": bytes.fromhex("3132333435363738"),
    "put-get": bytes.fromhex("4142434445464748"),
    "put": bytes.fromhex("5152535455565758"),
    "bad-put": bytes.fromhex("6162636465666768"),
    "client": bytes.fromhex("7172737475767778"),
    "get-proof": bytes.fromhex("8182838485868788"),
    "presence": bytes.fromhex("9192939495969798"),
}
DHT_SECRET = seed("dht/token/current")  # the responder's current token secret
DHT_SECRET_PREVIOUS = seed("dht/token/previous")


class ScriptedRng:
    """The randomness a DhtNode draws, scripted: each call returns the next value of the
    script (which must have the size asked for), then a labelled seeded stream."""

    def __init__(self, label: str, *script: bytes) -> None:
        self.label = label
        self.script = list(script)
        self.drawn = 0

    def __call__(self, size: int) -> bytes:
        self.drawn += 1
        if self.script:
            value = self.script.pop(0)
            if len(value) != size:
                abort(f"{self.label}: draw {self.drawn} asks {size} bytes, script has {len(value)}")
            return value
        return seeded_bytes(f"{self.label}/{self.drawn}", size)


def ip_packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def address_value(addr: tuple[str, int]) -> list[object]:
    """An address on the wire, 03-dht.md 4.4: [ip bytes, port]."""
    return [ip_packed(addr[0]), addr[1]]


def ed25519_public(secret: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(secret).verify_key)


def peer_id_of(secret: bytes) -> bytes:
    return hashlib.sha256(b"starling/peer-id/1" + ed25519_public(secret)).digest()


def nacl_sign(secret: bytes, domain: str, payload: bytes) -> bytes:
    return nacl.signing.SigningKey(secret).sign(signing_input(domain, payload)).signature


def proof_of(secret: bytes, txid: bytes, observed: tuple[str, int]) -> bytes:
    """An ID proof built from 03-dht.md 6.2 with cbor2 and libsodium."""
    payload = txid + cbor2.dumps(address_value(observed))
    return nacl_sign(secret, DHT_PROOF_DOMAIN, payload)


def token_of(secret: bytes, addr: tuple[str, int]) -> bytes:
    """A write token from 03-dht.md 10 with the hmac module."""
    message = ip_packed(addr[0]) + addr[1].to_bytes(2, "big")
    return hmac.new(secret, message, hashlib.sha256).digest()[:8]


def presence_key_of(network: bytes, community: bytes) -> bytes:
    return hashlib.sha256(DHT_PRESENCE_TAG + network + community).digest()


def record_bytes(
    secret: bytes, payload: object, *, domain: str = DHT_RECORD_DOMAIN, raw: bool = False
) -> bytes:
    """A record envelope built with cbor2 and libsodium (01-identity 7, 03-dht.md 9.1).
    ``payload`` is a dict encoded canonically, or bytes used as they are with ``raw``."""
    data = payload if raw else cbor2.dumps(payload, canonical=True)
    assert isinstance(data, bytes)
    signature = nacl_sign(secret, domain, data)
    return cbor2.dumps({1: ed25519_public(secret), 2: data, 3: signature}, canonical=True)


def dht_datagram(network: bytes, message: dict[int, object]) -> bytes:
    """Header (02-secure-session 2.2) and body; the body checked against cbor2."""
    body = codec.encode(message)  # type: ignore[arg-type]
    if body != cbor2.dumps(message, canonical=True):
        abort(f"DHT message {message!r}: our encoding differs from cbor2's canonical one")
    if len(body) > 1500:
        abort("a DHT message body over 1500 bytes")
    return b"\x0c\x01" + network + body


def dht_core(secret: bytes, rng: ScriptedRng, *, client: bool = False) -> dht.DhtNode:
    config = dht.DhtConfig(client_mode=client)
    return dht.DhtNode(identity.PrivateKey(secret), network_id("starling"), rng, 0.0, config)


def exchange(cores: dict[tuple[str, int], dht.DhtNode], log: list[Json]) -> None:
    """Move every datagram between ``cores`` until none is left; log them in order."""
    moved = True
    while moved:
        moved = False
        for src, core in cores.items():
            for data, dst in core.datagrams_to_send(0.0):
                moved = True
                log.append({"src": src, "dst": dst, "data": data})
                if dst in cores:
                    cores[dst].receive_datagram(data, src, 0.0)


def sent(core: dht.DhtNode, data: bytes, src: tuple[str, int]) -> list[bytes]:
    """Deliver one datagram to ``core`` and return what it sends back."""
    core.receive_datagram(data, src, 0.0)
    return [d for d, _ in core.datagrams_to_send(0.0)]


def live_datagrams(records: list[bytes], peer_record: dht.Record, key: bytes) -> dict[str, bytes]:
    """What live DhtNode cores send, by name, in the situations of the message vectors."""
    main_net = network_id("starling")
    rsp_id = peer_id_of(DHT_RESPONDER_SEED)
    out: dict[str, bytes] = {}
    # The requester's maintenance tick finds its one contact silent for over 15 minutes.
    req = dht_core(DHT_REQUESTER_SEED, ScriptedRng("dht/live/a", seed("dht/a/1"),
                                                   seed("dht/a/2"), DHT_TX["ping"]))  # fmt: skip
    req.table.add(dht.Contact(rsp_id, DHT_RESPONDER, 0.0))
    req.handle_timer(1000.0)
    (out["ping"], to), *_ = req.datagrams_to_send(1000.0)
    if to != DHT_RESPONDER:
        abort("the maintenance PING went elsewhere")
    # The responder answers it, from IPv4 and from IPv6, then challenges the requester.
    for name, src in (("pong", DHT_REQUESTER), ("pong6", DHT_REQUESTER6)):
        rsp = dht_core(DHT_RESPONDER_SEED, ScriptedRng(
            f"dht/live/{name}", DHT_SECRET, DHT_SECRET_PREVIOUS, DHT_TX["challenge"]))  # fmt: skip
        replies = sent(rsp, out["ping"], src)
        if len(replies) != 2:
            abort(f"{name}: expected a PONG and a challenge, got {len(replies)} datagrams")
        out[name] = replies[0]
        out["challenge"] = replies[1]
    # Bootstrap through the responder, then a FIND_NODE, a GET and a PUT.
    req = dht_core(DHT_REQUESTER_SEED, ScriptedRng(
        "dht/live/req", seed("dht/a/1"), seed("dht/a/2"), DHT_TX["bootstrap"], DHT_TX["find"],
        DHT_TX["get"], DHT_TX["put-get"], DHT_TX["put"]))  # fmt: skip
    rsp = dht_core(DHT_RESPONDER_SEED, ScriptedRng(
        "dht/live/rsp", DHT_SECRET, DHT_SECRET_PREVIOUS, DHT_TX["challenge"]))  # fmt: skip
    cores = {DHT_REQUESTER: req, DHT_RESPONDER: rsp}
    log: list[Json] = []
    req.bootstrap([DHT_RESPONDER], 0.0)
    exchange(cores, log)
    req.find_node(peer_id_of(seed("dht/target")), 0.0)
    exchange(cores, log)
    req.get(key, 0.0)
    exchange(cores, log)
    req.put(peer_record, 0.0)
    exchange(cores, log)
    names = ["bootstrap", "nodes-empty-proof", "challenge-2", "pong-2", "find", "nodes-empty",
             "get", "values-empty", "put-get", "values-empty-2", "put", "stored"]  # fmt: skip
    if len(log) != len(names):
        abort(f"the bootstrap/find/get/put exchange sent {len(log)} datagrams, not {len(names)}")
    out.update({name: entry["data"] for name, entry in zip(names, log, strict=True)})
    # A PUT with a token made for another address.
    elsewhere = token_of(DHT_SECRET, ("192.0.2.2", 4000))
    bad = dht_datagram(main_net, {0: 14, 1: DHT_TX["bad-put"], 2: ed25519_public(
        DHT_REQUESTER_SEED), 4: peer_record.envelope, 6: elsewhere})  # fmt: skip
    out["error"] = sent(rsp, bad, DHT_REQUESTER)[0]
    # A client-mode requester bootstraps.
    client_rng = ScriptedRng("dht/live/client", seed("dht/a/1"), seed("dht/a/2"), DHT_TX["client"])
    client = dht_core(DHT_REQUESTER_SEED, client_rng, client=True)
    client.bootstrap([DHT_RESPONDER], 0.0)
    out["find-client"] = client.datagrams_to_send(0.0)[0][0]
    # A responder that knows three nodes and stores two presence records.
    full = dht_core(DHT_RESPONDER_SEED, ScriptedRng(
        "dht/live/full", DHT_SECRET, DHT_SECRET_PREVIOUS))  # fmt: skip
    for contact, addr in DHT_CONTACTS:
        if not full.table.add(dht.Contact(peer_id_of(contact), addr, 0.0)):
            abort("the responder's table refused a contact")
    for raw in records:
        full.store(dht.Record.parse(raw))
    out["nodes"] = sent(full, out["bootstrap"], DHT_REQUESTER)[0]
    get_proof = dht_datagram(main_net, {0: 10, 1: DHT_TX["get-proof"], 2: ed25519_public(
        DHT_REQUESTER_SEED), 4: key, 5: True})  # fmt: skip
    out["values-proof"] = sent(full, get_proof, DHT_REQUESTER)[0]
    presence = dht.Record.parse(records[0]).key
    get_presence = dht_datagram(main_net, {0: 10, 1: DHT_TX["presence"], 2: ed25519_public(
        DHT_REQUESTER_SEED), 4: presence})  # fmt: skip
    out["values-records"] = sent(full, get_presence, DHT_REQUESTER)[0]
    return out


def dht_suite() -> VectorFile:
    vf = VectorFile("dht", "03-dht.md", DHT_NOTES)
    main_net, lab_net = network_id("starling"), network_id("starling-lab")
    req_pub, rsp_pub = ed25519_public(DHT_REQUESTER_SEED), ed25519_public(DHT_RESPONDER_SEED)
    req_id, rsp_id = peer_id_of(DHT_REQUESTER_SEED), peer_id_of(DHT_RESPONDER_SEED)
    if req_id.hex() != SPEC_PEER_ID:
        abort("the requester is not 01-identity's running example")

    # -- distance and bucket index --------------------------------------------------------
    tests = vf.group(
        "distance",
        "The XOR distance of two 32-byte IDs a and b, as 32 big-endian bytes, and the index "
        "of b's bucket in a's routing table: the number of leading bits a and b share "
        "(03-dht.md 3.1, 3.2), 256 when a = b.",
    )
    zero, top = bytes(32), b"\x80" + bytes(31)
    bit100 = (1 << (255 - 100)).to_bytes(32, "big")
    pairs: list[tuple[str, bytes, bytes, list[str], str]] = [
        ("03-dht.md 3.3: the requester's and the responder's peer IDs", req_id, rsp_id,
         ["SpecExample"], "DHT-R1"),
        ("the same ID twice: distance 0, bucket index 256", req_id, req_id, ["Boundary"],
         "DHT-R2"),
        ("the first bit differs: bucket index 0", zero, top, ["Boundary"], "DHT-R2"),
        ("only the last bit differs: bucket index 255", zero, bytes(31) + b"\x01",
         ["Boundary"], "DHT-R2"),
        ("all bits differ", zero, b"\xff" * 32, ["Boundary"], "DHT-R1"),
        ("bits 0 to 99 equal, bit 100 differs", bytes(32), bit100, [], "DHT-R2"),
        ("seeded IDs 'dht/id/1' and 'dht/id/2'", seed("dht/id/1"), seed("dht/id/2"),
         ["Seeded"], "DHT-R1"),
        ("the same pair the other way round: XOR is symmetric", seed("dht/id/2"),
         seed("dht/id/1"), ["Seeded"], "DHT-R1"),
        ("seeded IDs 'dht/id/3' and 'dht/id/4'", seed("dht/id/3"), seed("dht/id/4"),
         ["Seeded"], "DHT-R1"),
    ]  # fmt: skip
    if bytes(x ^ y for x, y in zip(req_id, rsp_id, strict=True)).hex() != SPEC_DHT["distance"]:
        abort("03-dht.md 3.3: the distance example differs")
    for comment, a, b, flags, requirement in pairs:
        xor = bytes(x ^ y for x, y in zip(a, b, strict=True))
        bits = "".join(f"{byte:08b}" for byte in xor)
        shared = len(bits) - len(bits.lstrip("0"))
        if dht.distance(a, b) != int.from_bytes(xor, "big") or dht.bucket_index(a, b) != shared:
            abort(f"{comment}: distance or bucket index differs from the XOR computed here")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"a": a.hex(), "b": b.hex()},
               expected={"distance": xor.hex(), "bucketIndex": shared})  # fmt: skip

    # -- the closest IDs ------------------------------------------------------------------
    tests = vf.group(
        "closest",
        "Order input.ids by XOR distance to input.target, closest first, and keep the first "
        "input.count (03-dht.md 3.3): what a node puts in NODES and where a lookup starts.",
    )
    ids = [seed(f"dht/closest/{i}") for i in range(25)]
    spec_ids = [seed(f"dht/closest/{i}") for i in range(6)]
    target = seed("dht/closest/target")
    closest_cases: list[tuple[str, bytes, list[bytes], int, list[str]]] = [
        ("03-dht.md 3.3: six seeded IDs, the three closest", target, spec_ids, 3,
         ["SpecExample", "Seeded"]),
        ("25 seeded IDs 'dht/closest/0..24', the k = 20 closest", target, ids, 20, ["Seeded"]),
        ("the target is one of the IDs: it comes first", ids[7], ids[:12], 5, ["Seeded"]),
        ("more asked for than there are IDs: all of them, ordered", target, ids[:4], 20,
         ["Seeded"]),
    ]  # fmt: skip
    for comment, tgt, given, count, flags in closest_cases:
        ordered = sorted(given, key=lambda i: bytes(x ^ y for x, y in zip(i, tgt, strict=True)))
        table = dht.RoutingTable(b"\xff" * 32, k=64, per_prefix_cap=2, replacements=8)
        for n, node_id in enumerate(given):
            table.add(dht.Contact(node_id, ("127.0.0.1", 1000 + n), 0.0))
        if [c.node_id for c in table.closest(tgt, count)] != ordered[:count]:
            abort(f"{comment}: RoutingTable.closest differs from the ordering computed here")
        vf.add(tests, comment, flags=flags, requirement="DHT-R1",
               input={"target": tgt.hex(), "ids": [i.hex() for i in given], "count": count},
               expected={"closest": [i.hex() for i in ordered[:count]]})  # fmt: skip

    # -- records, needed by the messages ----------------------------------------------------
    community = seed("dht/community")
    pkey = presence_key_of(main_net, community)
    members = [seed(f"dht/member/{i}") for i in (1, 2)]
    member_addrs = [("203.0.113.51", 5001), ("2001:db8:2::52", 5002)]
    presence = [
        record_bytes(m, {1: 4, 2: pkey, 3: 1, 4: 3600, 5: {1: [address_value(a)]}})
        for m, a in zip(members, member_addrs, strict=True)
    ]
    peer_payload = {1: 2, 2: req_id, 3: 1, 4: 3600, 5: {
        1: [address_value(DHT_REQUESTER), address_value(DHT_REQUESTER6)],
        2: [[rsp_id, address_value(DHT_RESPONDER)]]}}  # fmt: skip
    peer_record = record_bytes(DHT_REQUESTER_SEED, peer_payload)
    ours = dht.Record.peer(identity.PrivateKey(DHT_REQUESTER_SEED), 1, 3600,
                           [DHT_REQUESTER, DHT_REQUESTER6], [(rsp_id, DHT_RESPONDER)])  # fmt: skip
    if ours.envelope != peer_record:
        abort("Record.peer differs from the peer record built here from 03-dht.md 9.2")
    if (
        bytes.fromhex(SPEC_DHT["peer-record"]) != peer_record
        or bytes.fromhex(SPEC_DHT["presence-key"]) != pkey
    ):
        abort("03-dht.md 9.6: the peer record or the presence key differs from the spec")
    get_key = peer_id_of(seed("dht/get-target"))

    # -- messages ----------------------------------------------------------------------------
    tests = vf.group(
        "dht-message",
        "Encode input.message, a DHT message given as a typed value, as the body of a control "
        "datagram on network input.networkId (03-dht.md 4): the datagram is 0c 01, the "
        "network ID, then the canonical CBOR body, and must equal expected.datagram. Then "
        "decode expected.datagram: its body must give input.message back.",
    )
    live = live_datagrams(presence, dht.Record.parse(peer_record), get_key)
    contacts = sorted(
        ((peer_id_of(c), a) for c, a in DHT_CONTACTS),
        key=lambda entry: dht.distance(entry[0], req_id),
    )

    def entries(toward: bytes) -> list[object]:
        ordered = sorted(contacts, key=lambda e: dht.distance(e[0], toward))
        return [[node_id, ip_packed(a[0]), a[1]] for node_id, a in ordered]

    def proof(txid: bytes, to: tuple[str, int] = DHT_REQUESTER) -> dict[int, object]:
        return {6: proof_of(DHT_RESPONDER_SEED, txid, to), 7: address_value(to)}

    ordered_presence = sorted(
        presence,
        key=lambda raw: hashlib.sha256(
            rsp_id + hashlib.sha256(b"starling/peer-id/1" + cbor2.loads(raw)[1]).digest()
        ).digest(),
    )
    tx = DHT_TX
    # (comment, network, message, live name or None, flags, requirement)
    # fmt: off
    messages: list[tuple[str, bytes, dict[int, object], str | None, list[str], str]] = [
        ("03-dht.md 4.8: PING, the requester's maintenance ping", main_net,
         {0: 2, 1: tx["ping"], 2: req_pub}, "ping", ["SpecExample"], "DHT-R3"),
        ("03-dht.md 4.8: PONG, the responder saw the requester at 192.0.2.1:4000", main_net,
         {0: 4, 1: tx["ping"], 2: rsp_pub, **proof(tx["ping"])}, "pong",
         ["SpecExample", "Proof"], "DHT-R10"),
        ("PONG to a requester at [2001:db8::1]:4000", main_net,
         {0: 4, 1: tx["ping"], 2: rsp_pub, **proof(tx["ping"], DHT_REQUESTER6)}, "pong6",
         ["Proof", "Ipv6"], "DHT-R10"),
        ("PING asking for a proof: the responder challenges a requester it does not know",
         main_net, {0: 2, 1: tx["challenge"], 2: rsp_pub, 5: True}, "challenge", ["Proof"],
         "DHT-R10"),
        ("PONG from the requester, answering that challenge from 198.51.100.7:4000", main_net,
         {0: 4, 1: tx["challenge"], 2: req_pub,
          6: proof_of(DHT_REQUESTER_SEED, tx["challenge"], DHT_RESPONDER),
          7: address_value(DHT_RESPONDER)}, "pong-2", ["Proof"], "DHT-R10"),
        ("FIND_NODE for the requester's own ID, asking for a proof (bootstrap)", main_net,
         {0: 6, 1: tx["bootstrap"], 2: req_pub, 4: req_id, 5: True}, "bootstrap", ["Proof"],
         "DHT-R10"),
        ("FIND_NODE from a node in client mode", main_net,
         {0: 6, 1: tx["client"], 2: req_pub, 3: True, 4: req_id, 5: True}, "find-client",
         ["ClientMode", "Proof"], "DHT-R13"),
        ("FIND_NODE to a node already proven: no proof asked", main_net,
         {0: 6, 1: tx["find"], 2: req_pub, 4: peer_id_of(seed("dht/target"))}, "find", [],
         "DHT-R4"),
        ("NODES: three node entries (two IPv4, one IPv6), closest to the target first, and "
         "a proof", main_net,
         {0: 8, 1: tx["bootstrap"], 2: rsp_pub, 4: entries(req_id), **proof(tx["bootstrap"])},
         "nodes", ["Proof", "Ipv6"], "DHT-R10"),
        ("NODES: no node entries, with a proof", main_net,
         {0: 8, 1: tx["bootstrap"], 2: rsp_pub, 4: [], **proof(tx["bootstrap"])},
         "nodes-empty-proof", ["Proof"], "DHT-R10"),
        ("NODES: no node entries, no proof", main_net,
         {0: 8, 1: tx["find"], 2: rsp_pub, 4: []}, "nodes-empty", [], "DHT-R4"),
        ("GET to a node already proven", main_net,
         {0: 10, 1: tx["get"], 2: req_pub, 4: get_key}, "get", [], "DHT-R4"),
        ("GET asking for a proof", main_net,
         {0: 10, 1: tx["get-proof"], 2: req_pub, 4: get_key, 5: True}, None, ["Proof"],
         "DHT-R10"),
        ("VALUES: no records; three nodes, a proof and a write token", main_net,
         {0: 12, 1: tx["get-proof"], 2: rsp_pub, 4: entries(get_key),
          **proof(tx["get-proof"]), 8: token_of(DHT_SECRET, DHT_REQUESTER)},
         "values-proof", ["Proof"], "DHT-R25"),
        ("VALUES: no records, no nodes, a write token", main_net,
         {0: 12, 1: tx["get"], 2: rsp_pub, 4: [], 8: token_of(DHT_SECRET, DHT_REQUESTER)},
         "values-empty", [], "DHT-R25"),
        ("VALUES: two presence records at key 10, in the responder's order "
         "(SHA-256 of its ID and the signer's), three nodes, a write token", main_net,
         {0: 12, 1: tx["presence"], 2: rsp_pub, 4: entries(pkey),
          8: token_of(DHT_SECRET, DHT_REQUESTER), 10: ordered_presence},
         "values-records", [], "DHT-R28"),
        ("PUT of the requester's peer record (03-dht.md 9.6) with its write token", main_net,
         {0: 14, 1: tx["put"], 2: req_pub, 4: peer_record,
          6: token_of(DHT_SECRET, DHT_REQUESTER)}, "put", [], "DHT-R25"),
        ("STORED", main_net, {0: 16, 1: tx["put"], 2: rsp_pub}, "stored", [], "DHT-R4"),
        ("ERROR DHT_TOKEN_INVALID (0x0504): a PUT whose token was made for 192.0.2.2",
         main_net, {0: 18, 1: tx["bad-put"], 2: rsp_pub, 4: int(ErrorCode.DHT_TOKEN_INVALID)},
         "error", [], "DHT-R25"),
        ("PING on network starling-lab (e7ccd63e)", lab_net,
         {0: 2, 1: tx["ping"], 2: req_pub}, None, ["Network"], "DHT-R3"),
    ]
    # fmt: on
    for comment, network, message, live_name, flags, requirement in messages:
        datagram = dht_datagram(network, message)
        if live_name == "values-records":
            # The reference implementation writes the records at key 6, where they displace
            # the ID proof (03-dht.md 14, open issue); accept that until it moves them.
            moved = {k: v for k, v in message.items() if k != 10} | {6: message[10]}
            if live[live_name] not in (datagram, dht_datagram(network, moved)):
                abort(f"{comment}: the live core sent {live[live_name].hex()}")
        elif live_name is not None and live[live_name] != datagram:
            abort(f"{comment}: the live core sent {live[live_name].hex()}, not {datagram.hex()}")
        if cbor2.loads(datagram[6:]) != message:
            abort(f"{comment}: cbor2 does not decode the body back")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"networkId": network.hex(), "message": typed(message)},
               expected={"datagram": datagram.hex()})  # fmt: skip
    spec_messages = {
        "ping": live["ping"],
        "pong": live["pong"],
        "put-head": live["put"][: -len(peer_record) - 10],
        "stored": live["stored"],
    }
    for name, data in spec_messages.items():
        if data.hex() != SPEC_DHT[name]:
            abort(f"03-dht.md 4.8 / 9.7: the {name} example differs from the live datagram")
    token_tail = b"\x06\x48" + bytes.fromhex(SPEC_DHT["token"])
    if live["put"] != bytes.fromhex(SPEC_DHT["put-head"]) + peer_record + token_tail:
        abort("03-dht.md 9.7: the PUT is not its head, the peer record and the token")
    spec_input = signing_input(DHT_PROOF_DOMAIN, DHT_TX["ping"] + cbor2.dumps(
        address_value(DHT_REQUESTER)))  # fmt: skip
    if spec_input.hex() != SPEC_DHT["proof-signing-input"]:
        abort("03-dht.md 4.8: the signing input of the proof differs")

    # -- ID proofs --------------------------------------------------------------------------
    tests = vf.group(
        "id-proof",
        "Check an ID proof (03-dht.md 6): input.signature at key 6 and input.observed at key 7 "
        "of a response whose key 2 is input.responderKey, answering a request whose "
        "transaction ID is input.txid. input.observed is the CBOR address [ip bytes, port]. "
        "Valid: the responder's peer ID and the signed payload txid || observed. Invalid: "
        "DHT_PROOF_INVALID.",
    )
    other = seed("dht/proof/other")
    txid = DHT_TX["ping"]
    at = cbor2.dumps(address_value(DHT_REQUESTER))
    good = proof_of(DHT_RESPONDER_SEED, txid, DHT_REQUESTER)
    s = int.from_bytes(good[32:], "little")
    malleable = good[:32] + (s + L).to_bytes(32, "little")
    if not lax_verifies(rsp_pub, signing_input(DHT_PROOF_DOMAIN, txid + at), malleable):
        abort("the S + L proof does not satisfy the lax equation")
    torsion = torsion_points()
    small_key = encode_point(torsion[1])
    small_sig = forge_for_small_order_key(
        torsion[1], signing_input(DHT_PROOF_DOMAIN, txid + at), "dht/proof/forge"
    )
    seeded_key = seed("dht/proof/seeded")
    port_one, port_max = ("192.0.2.77", 1), ("2001:db8::77", 65535)
    # (comment, txid, observed bytes, responder key, signature, flags, error)
    # fmt: off
    proof_cases: list[tuple[str, bytes, bytes, bytes, bytes, list[str], str | None]] = [
        ("03-dht.md 6.3: the proof of the PONG example", txid, at, rsp_pub, good,
         ["SpecExample"], None),
        ("observed at [2001:db8::1]:4000", txid, cbor2.dumps(address_value(DHT_REQUESTER6)),
         rsp_pub, proof_of(DHT_RESPONDER_SEED, txid, DHT_REQUESTER6), ["Ipv6"], None),
        ("seeded key, observed at port 1", DHT_TX["find"], cbor2.dumps(address_value(port_one)),
         ed25519_public(seeded_key), proof_of(seeded_key, DHT_TX["find"], port_one),
         ["Seeded", "Boundary"], None),
        ("seeded key, observed at port 65535 over IPv6", DHT_TX["get"],
         cbor2.dumps(address_value(port_max)), ed25519_public(seeded_key),
         proof_of(seeded_key, DHT_TX["get"], port_max), ["Seeded", "Boundary", "Ipv6"], None),
        ("signed over another transaction ID", DHT_TX["find"], at, rsp_pub, good, ["Forged"],
         "DHT_PROOF_INVALID"),
        ("observed address says port 4001, signed over port 4000", txid,
         cbor2.dumps(address_value(("192.0.2.1", 4001))), rsp_pub, good, ["Forged"],
         "DHT_PROOF_INVALID"),
        ("observed address says 192.0.2.2, signed over 192.0.2.1", txid,
         cbor2.dumps(address_value(("192.0.2.2", 4000))), rsp_pub, good, ["Forged"],
         "DHT_PROOF_INVALID"),
        ("signed by another key than the responder's", txid, at, rsp_pub,
         proof_of(other, txid, DHT_REQUESTER), ["Forged"], "DHT_PROOF_INVALID"),
        ("the responder's proof, presented with another key at key 2", txid, at,
         ed25519_public(other), good, ["Forged"], "DHT_PROOF_INVALID"),
        ("signed under starling/dht-record/1", txid, at, rsp_pub,
         nacl_sign(DHT_RESPONDER_SEED, DHT_RECORD_DOMAIN, txid + at), ["WrongDomain"],
         "DHT_PROOF_INVALID"),
        ("plain Ed25519 over txid || observed, without the signing input", txid, at, rsp_pub,
         nacl.signing.SigningKey(DHT_RESPONDER_SEED).sign(txid + at).signature,
         ["WrongDomain"], "DHT_PROOF_INVALID"),
        ("signature with S + L", txid, at, rsp_pub, malleable, ["LaxVerifies"],
         "DHT_PROOF_INVALID"),
        ("responder key of small order, signature satisfying the equation", txid, at,
         small_key, small_sig, ["LaxVerifies"], "DHT_PROOF_INVALID"),
        ("observed address with port 0", txid, cbor2.dumps([ip_packed("192.0.2.1"), 0]),
         rsp_pub, nacl_sign(DHT_RESPONDER_SEED, DHT_PROOF_DOMAIN,
                            txid + cbor2.dumps([ip_packed("192.0.2.1"), 0])),
         ["Boundary"], "DHT_PROOF_INVALID"),
    ]
    # fmt: on
    for comment, t_id, observed, key, signature, flags, error in proof_cases:
        payload = t_id + observed
        verdict = proof_verdict_of_core(t_id, observed, key, signature)
        if error is None:
            nacl.signing.VerifyKey(key).verify(signing_input(DHT_PROOF_DOMAIN, payload), signature)
            if verdict != "proven":
                abort(f"{comment}: a DhtNode does not accept the proof ({verdict})")
            responder_id = hashlib.sha256(b"starling/peer-id/1" + key).digest()
            expected: Json = {"responderId": responder_id.hex(), "payload": payload.hex()}
        else:
            if verdict != error:
                abort(f"DISAGREEMENT on {comment!r}: expects {error}, a DhtNode says {verdict}")
            expected = {}
        vf.add(tests, comment, flags=flags, requirement="DHT-R10",
               input={"txid": t_id.hex(), "observed": observed.hex(), "responderKey": key.hex(),
                      "signature": signature.hex()},
               expected=expected, error=error)  # fmt: skip

    # -- records -------------------------------------------------------------------------------
    tests = vf.group(
        "record",
        "Check input.envelope as a DHT record (03-dht.md 9.1-9.3), as a storing node does "
        "before storing it and a reader before using it. Valid: the signer's public key, its "
        "peer ID and the payload as a typed value. Invalid: the first failing check of 9.3.",
        cddl={"file": "spec/cddl/dht.cddl", "rule": "record-envelope", "field": "envelope"},
    )
    owner = seed("dht/record/owner")
    owner_id = peer_id_of(owner)
    stranger_id = peer_id_of(seed("dht/record/stranger"))

    def peer(value: dict[int, object] | None = None, **changes: object) -> dict[int, object]:
        empty: dict[int, object] = {1: [], 2: []}
        payload: dict[int, object] = {1: 2, 2: owner_id, 3: 7, 4: 600, 5: value or empty}
        payload.update({int(k[1:]): v for k, v in changes.items()})
        return payload

    def pres(**changes: object) -> dict[int, object]:
        payload: dict[int, object] = {1: 4, 2: pkey, 3: 1, 4: 600, 5: {}}
        payload.update({int(k[1:]): v for k, v in changes.items()})
        return payload

    def padded(size: int) -> bytes:
        """A presence record of exactly ``size`` bytes, padded in an odd value key."""
        for pad in range(size):
            raw = record_bytes(owner, pres(k5={3: bytes(pad)}))
            if len(raw) == size:
                return raw
        abort(f"no padding gives a record of {size} bytes")

    good_peer = record_bytes(owner, peer({1: [address_value(("192.0.2.9", 4000))], 2: []}))
    flipped = bytearray(good_peer)
    flipped[-70] ^= 0x01  # inside the payload, which the signature covers
    envelope_fields = cbor2.loads(good_peer)
    small = forge_for_small_order_key(
        torsion[0], signing_input(DHT_RECORD_DOMAIN, envelope_fields[2]), "dht/record/forge"
    )
    non_shortest_payload = cbor2.dumps(pres(), canonical=True).replace(
        b"\x03\x01", b"\x03\x18\x01", 1
    )
    if cbor2.loads(non_shortest_payload) != pres():
        abort("the non-shortest payload does not hold the same fields")
    max_seq = 2**64 - 1
    # (comment, envelope, flags, requirement, error)
    # fmt: off
    record_cases: list[tuple[str, bytes, list[str], str, str | None]] = [
        ("03-dht.md 9.6: the requester's peer record, two addresses and a relay", peer_record,
         ["SpecExample", "Ipv6"], "DHT-R21", None),
        ("a peer record with no addresses and no relays (seeded key 'dht/record/owner')",
         record_bytes(owner, peer()), ["Seeded"], "DHT-R21", None),
        ("a presence record of member 'dht/member/1' with one address", presence[0],
         ["Seeded"], "DHT-R21", None),
        ("a presence record with an empty value", record_bytes(owner, pres()), ["Seeded"],
         "DHT-R20", None),
        ("sequence number 2**64-1 and TTL 7200", record_bytes(owner, pres(k3=max_seq, k4=7200)),
         ["Boundary"], "DHT-R24", None),
        ("TTL 1 and sequence number 0", record_bytes(owner, pres(k3=0, k4=1)), ["Boundary"],
         "DHT-R24", None),
        ("an unknown odd key 7 in the payload", record_bytes(owner, pres(k7="later")),
         ["Extension"], "DHT-R20", None),
        ("a record of exactly 1024 bytes", padded(1024), ["Boundary", "Limits"], "DHT-R23",
         None),
        ("a record of 1025 bytes", padded(1025), ["Limits"], "DHT-R23",
         "DHT_RECORD_TOO_LARGE"),
        ("a payload bit flipped after signing", bytes(flipped), ["Forged"], "DHT-R20",
         "DHT_RECORD_INVALID"),
        ("signed under starling/dht-proof/1", record_bytes(owner, pres(),
         domain=DHT_PROOF_DOMAIN), ["WrongDomain"], "DHT-R20", "DHT_RECORD_INVALID"),
        ("signed under starling/test/1", record_bytes(owner, pres(), domain=TEST_DOMAIN),
         ["WrongDomain"], "DHT-R20", "DHT_RECORD_INVALID"),
        ("signer key of small order, signature satisfying the equation",
         cbor2.dumps({1: encode_point(torsion[0]), 2: envelope_fields[2], 3: small}),
         ["LaxVerifies"], "DHT-R20", "DHT_RECORD_INVALID"),
        ("an envelope with an extra key 5",
         cbor2.dumps({**envelope_fields, 5: 0}), ["Structure"], "DHT-R20",
         "DHT_RECORD_INVALID"),
        ("no sequence number (key 3)", record_bytes(owner, {1: 4, 2: pkey, 4: 600, 5: {}}),
         ["Structure"], "DHT-R20", "DHT_RECORD_INVALID"),
        ("an unknown even key 6 in the payload", record_bytes(owner, pres(k6=0)),
         ["Structure"], "DHT-R20", "DHT_RECORD_INVALID"),
        ("TTL 0", record_bytes(owner, pres(k4=0)), ["Structure"], "DHT-R20",
         "DHT_RECORD_INVALID"),
        ("a negative sequence number", record_bytes(owner, pres(k3=-1)), ["Structure"],
         "DHT-R20", "DHT_RECORD_INVALID"),
        ("a key of 31 bytes", record_bytes(owner, pres(k2=pkey[:31])), ["Structure"],
         "DHT-R20", "DHT_RECORD_INVALID"),
        ("the value is an array", record_bytes(owner, pres(k5=[])), ["Structure"], "DHT-R20",
         "DHT_RECORD_INVALID"),
        ("the payload is an array", record_bytes(owner, [4, pkey, 1, 600, {}]), ["Structure"],
         "DHT-R20", "DHT_RECORD_INVALID"),
        ("the payload's sequence number in a non-shortest head (signed as such)",
         record_bytes(owner, non_shortest_payload, raw=True), ["Structure"], "DHT-R20",
         "DHT_RECORD_INVALID"),
        ("TTL 7201", record_bytes(owner, pres(k4=7201)), ["Limits"], "DHT-R24",
         "DHT_RECORD_TTL"),
        ("a peer record under another peer's ID", record_bytes(owner, peer(k2=stranger_id)),
         [], "DHT-R21", "DHT_RECORD_KEY_MISMATCH"),
        ("a peer record under a presence key", record_bytes(owner, peer(k2=pkey)), [],
         "DHT-R21", "DHT_RECORD_KEY_MISMATCH"),
        ("kind 6, not registered", record_bytes(owner, pres(k1=6)), [], "DHT-R20",
         "DHT_RECORD_KIND"),
        ("kind 3, odd and not registered", record_bytes(owner, pres(k1=3)), [], "DHT-R20",
         "DHT_RECORD_KIND"),
        ("kind 0", record_bytes(owner, pres(k1=0)), [], "DHT-R20", "DHT_RECORD_KIND"),
    ]
    # fmt: on
    for comment, raw, flags, requirement, error in record_cases:
        if error is None:
            record = dht.Record.parse(raw)
            fields = cbor2.loads(raw)
            nacl.signing.VerifyKey(fields[1]).verify(
                signing_input(DHT_RECORD_DOMAIN, fields[2]), fields[3]
            )
            payload = cbor2.loads(fields[2])
            if (record.kind, record.key, record.seq, record.ttl, record.value) != tuple(
                payload[k] for k in (1, 2, 3, 4, 5)
            ):
                abort(f"{comment}: Record.parse reads other fields than cbor2")
            signer_id = hashlib.sha256(b"starling/peer-id/1" + fields[1]).digest()
            expected = {"signer": fields[1].hex(), "signerId": signer_id.hex(),
                        "payload": typed(payload)}  # fmt: skip
        else:
            expect_error(lambda r=raw: dht.Record.parse(r), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"envelope": raw.hex()}, expected=expected, error=error)  # fmt: skip

    # -- store decisions -----------------------------------------------------------------------
    tests = vf.group(
        "store",
        "A storing node with the caps input.caps (records per key, per signer, in all) stores "
        "the records of input.held in order (each is accepted), then input.incoming "
        "(03-dht.md 9.4). Valid: every record it holds afterwards, ordered by key, then by "
        "signer peer ID. Invalid: the code it refuses input.incoming with.",
    )
    default_caps = {"perKey": 32, "perSigner": 32, "total": 20000}
    alice, bob, carol = (seed(f"dht/store/{n}") for n in ("alice", "bob", "carol"))
    keys = [presence_key_of(main_net, seed(f"dht/store/community/{i}")) for i in range(3)]

    def rec(signer: bytes, seq: int, key: bytes | None = None, note: str = "") -> bytes:
        if key is None:  # a peer record
            value = {1: [address_value(("192.0.2.30", 4000 + seq))]} | ({3: note} if note else {})
            return record_bytes(signer, {1: 2, 2: peer_id_of(signer), 3: seq, 4: 600, 5: value})
        return record_bytes(signer, {1: 4, 2: key, 3: seq, 4: 600, 5: {}})

    same_seq_other = rec(alice, 5, note="moved")
    # (comment, caps, held, incoming, flags, requirement, error)
    # fmt: off
    store_cases: list[tuple[str, Json, list[bytes], bytes, list[str], str, str | None]] = [
        ("nothing held: the record is stored", default_caps, [], rec(alice, 5), [], "DHT-R22",
         None),
        ("a higher sequence number replaces the held record", default_caps, [rec(alice, 5)],
         rec(alice, 6), [], "DHT-R22", None),
        ("a much higher sequence number replaces it too", default_caps, [rec(alice, 5)],
         rec(alice, 2**40), [], "DHT-R22", None),
        ("the same record again, byte for byte, is accepted", default_caps, [rec(alice, 5)],
         rec(alice, 5), [], "DHT-R22", None),
        ("a lower sequence number is refused", default_caps, [rec(alice, 5)], rec(alice, 4),
         ["Rollback"], "DHT-R22", "DHT_RECORD_SEQ"),
        ("sequence number 0 against a held 1", default_caps, [rec(alice, 1)], rec(alice, 0),
         ["Rollback"], "DHT-R22", "DHT_RECORD_SEQ"),
        ("the same sequence number with other bytes is refused", default_caps,
         [rec(alice, 5)], same_seq_other, ["Rollback"], "DHT-R22", "DHT_RECORD_SEQ"),
        ("another signer under the same presence key: both are kept", default_caps,
         [rec(alice, 1, keys[0])], rec(bob, 1, keys[0]), [], "DHT-R22", None),
        ("a lower sequence number from another signer is not a rollback", default_caps,
         [rec(alice, 9, keys[0])], rec(bob, 1, keys[0]), [], "DHT-R22", None),
        ("the same signer under another key: both are kept", default_caps,
         [rec(alice, 1, keys[0])], rec(alice, 1, keys[1]), [], "DHT-R22", None),
        ("2 records per key: a third signer under a full key is refused",
         {"perKey": 2, "perSigner": 32, "total": 20000},
         [rec(alice, 1, keys[0]), rec(bob, 1, keys[0])], rec(carol, 1, keys[0]), ["Limits"],
         "DHT-R24", "DHT_KEY_FULL"),
        ("2 records per key: a newer record of a signer already held still replaces",
         {"perKey": 2, "perSigner": 32, "total": 20000},
         [rec(alice, 1, keys[0]), rec(bob, 1, keys[0])], rec(bob, 2, keys[0]), ["Limits"],
         "DHT-R24", None),
        ("2 records per signer: a third key of the same signer is refused",
         {"perKey": 32, "perSigner": 2, "total": 20000},
         [rec(alice, 1, keys[0]), rec(alice, 1, keys[1])], rec(alice, 1, keys[2]),
         ["Limits"], "DHT-R24", "DHT_SIGNER_FULL"),
        ("3 records in all: a fourth is refused", {"perKey": 32, "perSigner": 32, "total": 3},
         [rec(alice, 1, keys[0]), rec(bob, 1, keys[0]), rec(carol, 1, keys[1])],
         rec(carol, 1, keys[2]), ["Limits"], "DHT-R24", "DHT_STORE_FULL"),
        ("3 records in all: a replacement is no new record",
         {"perKey": 32, "perSigner": 32, "total": 3},
         [rec(alice, 1, keys[0]), rec(bob, 1, keys[0]), rec(carol, 1, keys[1])],
         rec(carol, 2, keys[1]), ["Limits"], "DHT-R24", None),
    ]
    # fmt: on
    for comment, caps, held, incoming, flags, requirement, error in store_cases:
        model = store_model(caps, held, incoming)
        if error is None:
            if not isinstance(model, list):
                abort(f"{comment}: the model of 03-dht.md 9.4 refuses it with {model}")
            if run_store(caps, held, incoming) != model:
                abort(f"{comment}: DhtNode.store keeps other records than the model")
            expected = {"stored": [r.hex() for r in model]}
        else:
            if model != error:
                abort(f"{comment}: the model of 03-dht.md 9.4 says {model}, not {error}")
            expect_error(lambda c=caps, h=held, i=incoming: run_store(c, h, i), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"caps": caps, "held": [r.hex() for r in held], "incoming": incoming.hex()},
               expected=expected, error=error)  # fmt: skip

    # -- write tokens ------------------------------------------------------------------------
    tests = vf.group(
        "write-token",
        "The write token a node with the token secret input.secret gives the address "
        "input.ip (4 or 16 bytes) and input.port (03-dht.md 10): "
        "HMAC-SHA256(secret, ip || u16be(port)), first 8 bytes.",
    )
    # (comment, secret, ip, port, flags)
    token_cases: list[tuple[str, bytes, str, int, list[str]]] = [
        ("03-dht.md 10: 192.0.2.1:4000", DHT_SECRET, "192.0.2.1", 4000, ["SpecExample"]),
        ("[2001:db8::1]:4000", DHT_SECRET, "2001:db8::1", 4000, ["Ipv6"]),
        ("the same IPv4 address written as IPv4-mapped IPv6 gives another token", DHT_SECRET,
         "::ffff:192.0.2.1", 4000, ["Ipv6"]),
        ("port 1", DHT_SECRET, "192.0.2.1", 1, ["Boundary"]),
        ("port 65535", DHT_SECRET, "192.0.2.1", 65535, ["Boundary"]),
        ("the previous secret", DHT_SECRET_PREVIOUS, "192.0.2.1", 4000, ["Seeded"]),
    ]  # fmt: skip
    for comment, secret, ip, port, flags in token_cases:
        token = token_of(secret, (ip, port))
        if dht.write_token(secret, (ip, port)) != token:
            abort(f"{comment}: write_token differs from the HMAC computed here")
        vf.add(tests, comment, flags=flags, requirement="DHT-R25",
               input={"secret": secret.hex(), "ip": ip_packed(ip).hex(), "port": port},
               expected={"token": token.hex()})  # fmt: skip
    if token_of(DHT_SECRET, DHT_REQUESTER).hex() != SPEC_DHT["token"]:
        abort("03-dht.md 10: the token example differs")

    tests = vf.group(
        "token-check",
        "A node whose current token secret is input.current and previous one input.previous "
        "receives a PUT from input.ip and input.port carrying input.token (03-dht.md 10). "
        "Valid: the token is accepted. Invalid: DHT_TOKEN_INVALID.",
    )
    older = seed("dht/token/older")
    here = DHT_REQUESTER
    # (comment, token, ip, port, flags, error)
    # fmt: off
    check_cases: list[tuple[str, bytes, tuple[str, int], list[str], str | None]] = [
        ("a token of the current secret", token_of(DHT_SECRET, here), here, [], None),
        ("a token of the previous secret", token_of(DHT_SECRET_PREVIOUS, here), here, [], None),
        ("a token of the secret before the previous one", token_of(older, here), here, [],
         "DHT_TOKEN_INVALID"),
        ("a token made for another port", token_of(DHT_SECRET, ("192.0.2.1", 4001)), here,
         ["Forged"], "DHT_TOKEN_INVALID"),
        ("a token made for another IP address", token_of(DHT_SECRET, ("192.0.2.2", 4000)), here,
         ["Forged"], "DHT_TOKEN_INVALID"),
        ("a token made for the IPv4-mapped IPv6 form of the address",
         token_of(DHT_SECRET, ("::ffff:192.0.2.1", 4000)), here, ["Forged", "Ipv6"],
         "DHT_TOKEN_INVALID"),
        ("the first 7 bytes of a good token", token_of(DHT_SECRET, here)[:7], here,
         ["Truncated"], "DHT_TOKEN_INVALID"),
        ("the whole 32-byte HMAC", hmac.new(DHT_SECRET, ip_packed(here[0]) + b"\x0f\xa0",
                                            hashlib.sha256).digest(), here, ["Truncated"],
         "DHT_TOKEN_INVALID"),
        ("an empty token", b"", here, ["Truncated"], "DHT_TOKEN_INVALID"),
        ("from IPv6: a token of the current secret", token_of(DHT_SECRET, DHT_REQUESTER6),
         DHT_REQUESTER6, ["Ipv6"], None),
    ]
    # fmt: on
    for comment, token, addr, flags, error in check_cases:
        verdict = token_verdict_of_core(token, addr, dht.Record.parse(peer_record))
        if verdict != (error or "STORED"):
            abort(f"DISAGREEMENT on {comment!r}: expects {error or 'STORED'}, a DhtNode says "
                  f"{verdict}")  # fmt: skip
        vf.add(tests, comment, flags=flags, requirement="DHT-R25",
               input={"current": DHT_SECRET.hex(), "previous": DHT_SECRET_PREVIOUS.hex(),
                      "ip": ip_packed(addr[0]).hex(), "port": addr[1], "token": token.hex()},
               expected={}, error=error)  # fmt: skip

    # -- presence keys -----------------------------------------------------------------------
    tests = vf.group(
        "presence-key",
        "The DHT key under which the members of a community announce themselves "
        '(03-dht.md 9.2): SHA-256("starling/community-presence/1" || network ID || '
        "community key).",
    )
    presence_cases: list[tuple[str, bytes, bytes, list[str]]] = [
        ("03-dht.md 9.6: community key 'dht/community' on the public network", main_net,
         community, ["SpecExample", "Seeded"]),
        ("the same community key on network starling-lab", lab_net, community,
         ["Seeded", "Network"]),
        ("RFC 8032 TEST 1's public key as a community key", main_net, req_pub, []),
    ]  # fmt: skip
    for comment, network, ckey, flags in presence_cases:
        key = presence_key_of(network, ckey)
        if dht.presence_key(network, ckey) != key:
            abort(f"{comment}: presence_key differs from the hash computed here")
        vf.add(tests, comment, flags=flags, requirement="DHT-R21",
               input={"networkId": network.hex(), "communityKey": ckey.hex()},
               expected={"key": key.hex()})  # fmt: skip
    return vf


def proof_verdict_of_core(txid: bytes, observed: bytes, key: bytes, signature: bytes) -> str:
    """What a DhtNode makes of a proof: a bootstrap request goes out with ``txid``, and a
    NODES reply carrying the proof comes back from the address it went to."""
    seed_addr = ("198.51.100.99", 4000)
    core = dht_core(DHT_REQUESTER_SEED, ScriptedRng("dht/verdict", seed("dht/v/1"),
                                                    seed("dht/v/2"), txid))  # fmt: skip
    core.bootstrap([seed_addr], 0.0)
    core.datagrams_to_send(0.0)
    reply = {0: 8, 1: txid, 2: key, 4: [], 6: signature, 7: cbor2.loads(observed)}
    core.receive_datagram(b"\x0c\x01" + network_id("starling") + cbor2.dumps(reply), seed_addr,
                          0.0)  # fmt: skip
    reporter = hashlib.sha256(b"starling/peer-id/1" + key).digest()
    while (event := core.next_event()) is not None:
        if isinstance(event, dht.ObservedAddress) and event.reporter == reporter:
            return "proven"
    if core.stats["rejected_DHT_PROOF_INVALID"]:
        return "DHT_PROOF_INVALID"
    return "ignored"


def token_verdict_of_core(token: bytes, addr: tuple[str, int], record: dht.Record) -> str:
    """What a DhtNode with the token secrets of the vectors answers to a PUT carrying
    ``token`` from ``addr``: STORED, or the code of its ERROR."""
    core = dht_core(DHT_RESPONDER_SEED, ScriptedRng("dht/token-core", DHT_SECRET,
                                                    DHT_SECRET_PREVIOUS))  # fmt: skip
    put = {0: 14, 1: DHT_TX["put"], 2: ed25519_public(DHT_REQUESTER_SEED), 4: record.envelope,
           6: token}  # fmt: skip
    replies = sent(core, dht_datagram(network_id("starling"), put), addr)
    answer = cbor2.loads(replies[0][6:])
    if answer[0] == 16:
        return "STORED"
    return ErrorCode(answer[4]).name if answer[0] == 18 else f"type {answer[0]}"


def store_model(caps: Json, held: list[bytes], incoming: bytes) -> list[bytes] | str:
    """03-dht.md 9.4 written out: the records kept, or the code of the refusal."""
    slots: dict[tuple[bytes, bytes], tuple[int, bytes]] = {}

    def signer_and_payload(raw: bytes) -> tuple[bytes, dict[int, Any]]:
        fields = cbor2.loads(raw)
        return hashlib.sha256(b"starling/peer-id/1" + fields[1]).digest(), cbor2.loads(fields[2])

    for raw in [*held, incoming]:
        signer, payload = signer_and_payload(raw)
        slot = (payload[2], signer)
        if slot in slots:
            seq, old = slots[slot]
            if payload[3] < seq or (payload[3] == seq and raw != old):
                return "DHT_RECORD_SEQ"
        elif sum(1 for k, _ in slots if k == payload[2]) >= caps["perKey"]:
            return "DHT_KEY_FULL"
        elif sum(1 for _, s in slots if s == signer) >= caps["perSigner"]:
            return "DHT_SIGNER_FULL"
        elif len(slots) >= caps["total"]:
            return "DHT_STORE_FULL"
        slots[slot] = (payload[3], raw)
    return [raw for _, (_, raw) in sorted(slots.items())]


def run_store(caps: Json, held: list[bytes], incoming: bytes) -> list[bytes]:
    """Our DhtNode.store on the same input; raises what it raises on ``incoming``."""
    config = dht.DhtConfig(
        max_records_per_key=caps["perKey"],
        max_records_per_signer=caps["perSigner"],
        max_records=caps["total"],
    )
    core = dht.DhtNode(identity.PrivateKey(DHT_RESPONDER_SEED), network_id("starling"),
                       ScriptedRng("dht/store-core"), 0.0, config)  # fmt: skip
    for raw in held:
        try:
            core.store(dht.Record.parse(raw))
        except StarlingError as exc:
            abort(f"DhtNode.store refused a held record: {exc}")
    core.store(dht.Record.parse(incoming))
    return [
        record.envelope
        for key in sorted(core.records)
        for _, (record, _) in sorted(core.records[key].items())
    ]


# Worked examples of 03-dht.md, hard-coded from the spec.
SPEC_DHT = {
    "ping": "0c01a5146c9aa3000201480102030405060708025820d75a980182b10ab7d54bfed3c964073a0ee172f3"
    "daa62325af021a68f707511a",
    "pong": "0c01a5146c9aa50004014801020304050607080258203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2e"
    "c4968cc0cd55f12af4660c065840dc8f639d8434d4f53bd56002e1844038dd06d062d0c8fa0d8c548bb76fcefbcf"
    "3147171946624815b4f0ff5305b4281cae1510918e8576ef4d6e88990b45f202078244c0000201190fa0",
    "proof-signing-input": "737461726c696e672f7369672f310014737461726c696e672f6468742d70726f6f66"
    "2f3101020304050607088244c0000201190fa0",
    "put-head": "0c01a5146c9aa5000e01485152535455565758025820d75a980182b10ab7d54bfed3c964073a0ee172"
    "f3daa62325af021a68f707511a0458e6",
    "stored": "0c01a5146c9aa30010014851525354555657580258203d4017c3e843895a92b70aa74d1b7ebc9c982ccf"
    "2ec4968cc0cd55f12af4660c",
    "peer-record": "a3015820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a02587c"
    "a50102025820efbc1c31b2d305dbe9bde5573102e5a707c77143c2a302cf8b9bb2459135acb6030104190e1005a2"
    "01828244c0000201190fa0825020010db8000000000000000000000001190fa00281825820a713ebff92a152c967"
    "3cf5d9a0e19850860c8ab3f428e1bc0b568c19b737206a8244c6336407190fa003584031212b7afde1fdd37f3d83"
    "d1c86fe2efa781526785328dc937914459d5665b32b261537b6edac44edddc362fed8fc9aea642974c895c44ae83"
    "c615c62929fe02",
    "presence-key": "59867d5c1c19cce26c5c0ce677fe54c0a15b14d3afef04cf6c438f7df47adf6e",
    "token": "1f5e1edad2538dc1",
    "distance": "48aff7ce207257128e81108e91e37df781cbfbf0368be37380cd3e5c26028cdc",
}


# ----------------------------------------------------------------------------- gossip suite
# Signed messages are built here with cbor2 and libsodium from 05-gossip.md 3.2, message
# IDs, topics and catch-up pages with hashlib and sorting written here; live GossipNode
# cores, their randomness seeded, must send the same gossip messages in the same
# situations, and starling.proto.gossip must reach the same verdicts.

GOSSIP_NOTES = {
    "SpecExample": "Taken from a worked example of 05-gossip.md, hard-coded here from the spec.",
    "Seeded": 'Keys or bytes derived from seeds SHA-256("starling-vectors/" + label).',
    "Boundary": "A value at the edge of its range: a time of 0 or 2**64-1, a signed message "
    "of exactly 65024 bytes, empty data, a full list of 1024 IDs, 64 topics or 16 peer hints.",
    "Extension": "A payload or message carrying an unknown odd key, which every node ignores "
    "(and, in a signed payload, keeps in the signed bytes).",
    "Forged": "A signature that does not hold over what the verifier reconstructs: bytes "
    "changed after signing, or another key's signature.",
    "WrongDomain": "Signed under another signature domain than starling/gossip-msg/1, or "
    "without the signing input at all: domain separation must make it fail.",
    "LaxVerifies": "The signature satisfies the Ed25519 equation but breaks a pinned rule of "
    "01-identity section 5 (a small-order key, S >= L); Starling rejects it.",
    "Structure": "The envelope or payload is not the structure of its field table: a missing "
    "field, a field of the wrong type or size, an unknown even key, an extra envelope key, "
    "non-canonical or non-profile CBOR.",
    "Live": "The bytes a live GossipNode core sent in the situation the comment describes.",
    "NotWellFormed": "Not well-formed CBOR, or CBOR outside the profile.",
    "Extensibility": "The even/odd rule for message types and keys (00-conventions 5.3, 5.4).",
    "Limits": "A size limit of 05-gossip.md 4.3 or 4.4: the message size, array lengths, "
    "element sizes, the backoff range, the hop count range.",
    "Paging": "A catch-up answer that does not hold every remaining ID: a cursor follows.",
    "Network": "A network other than the public one.",
}

GOSSIP_AUTHOR_SEED = bytes.fromhex(RFC8032[0][1])  # 01-identity's running example
GOSSIP_COMMUNITY = bytes.fromhex(RFC8032[1][2])  # RFC 8032 TEST 2's public key
GOSSIP_DOMAIN = "starling/gossip-msg/1"
GOSSIP_TIME = 1_700_000_000_000
GOSSIP_DATA = b"hello, community"


def gossip_topic(network: bytes, community: bytes) -> bytes:
    return hashlib.sha256(b"starling/gossip-topic/1" + network + community).digest()


def gossip_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"starling/gossip-id/1" + raw).digest()


def gossip_signed(
    secret: bytes, payload: object, *, domain: str = GOSSIP_DOMAIN, raw: bool = False
) -> bytes:
    """A signed message built with cbor2 and libsodium (05-gossip.md 3.2)."""
    data = payload if raw else cbor2.dumps(payload, canonical=True)
    assert isinstance(data, bytes)
    signature = nacl_sign(secret, domain, data)
    return cbor2.dumps({1: ed25519_public(secret), 2: data, 3: signature}, canonical=True)


def with_mesh_peers(core: Any, topic: bytes, *peers: str) -> None:
    """Peers that subscribe to ``topic`` and graft into ``core``'s mesh; what ``core``
    answers is discarded."""
    for peer in peers:
        core.add_peer(peer, 0.0)
        core.receive(peer, gossip_frame({0: 2, 1: [topic]}), 0.0)
        core.receive(peer, gossip_frame({0: 6, 1: topic}), 0.0)
    core.frames_to_send(0.0)


def gossip_frame(message: dict[int, object]) -> bytes:
    """A gossip message, checked against cbor2's canonical encoding."""
    frame = codec.encode(message)  # type: ignore[arg-type]
    if frame != cbor2.dumps(message, canonical=True):
        abort(f"gossip message {message!r}: our encoding differs from cbor2's canonical one")
    return frame


def gossip_core(secret: bytes, label: str, **config: Any) -> gossip.GossipNode:
    rng = ScriptedRng(f"gossip/{label}")
    return gossip.GossipNode(
        identity.PrivateKey(secret), network_id("starling"), rng, 0.0,
        gossip.GossipConfig(**config), epoch_offset=GOSSIP_TIME / 1000,
    )  # fmt: skip


def live_gossip(topic: bytes) -> dict[str, bytes]:
    """What live GossipNode cores send, by name, in the situations of the message vectors."""
    member_seed = bytes.fromhex(RFC8032[1][1])
    out: dict[str, bytes] = {}
    a = gossip_core(GOSSIP_AUTHOR_SEED, "a", eager_degree=0)
    b = gossip_core(member_seed, "b", eager_degree=0)
    b.subscribe(topic, 0.0)
    b.add_peer("a", 0.0)  # b's stream to a opens: b says what it takes part in
    ((_, out["subscribe"]),) = b.frames_to_send(0.0)
    a.add_peer("b", 0.0, outbound=True)
    a.receive("b", out["subscribe"], 0.0)
    a.subscribe(topic, 0.0)  # a joins: tells b, grafts b
    (_, out["subscribe-a"]), (_, out["graft"]) = a.frames_to_send(0.0)
    b.receive("a", out["subscribe-a"], 0.0)
    b.receive("a", out["graft"], 0.0)
    a.publish(topic, GOSSIP_DATA, 0.0, time_ms=GOSSIP_TIME)
    ((_, out["publish"]),) = a.frames_to_send(0.0)
    # A third member c, in b's mesh, hears of the message from b at once (eager degree 0).
    b.add_peer("c", 0.0)
    b.receive("c", gossip_frame({0: 2, 1: [topic]}), 0.0)
    b.receive("c", gossip_frame({0: 6, 1: topic}), 0.0)
    b.frames_to_send(0.0)
    b.receive("a", out["publish"], 0.0)
    ((_, out["ihave"]),) = b.frames_to_send(0.0)
    c = gossip_core(bytes.fromhex(RFC8032[2][1]), "c")
    c.subscribe(topic, 0.0)
    c.add_peer("b", 0.0)
    c.receive("b", gossip_frame({0: 6, 1: topic}), 0.0)  # b grafts c: an eager link of c's
    c.frames_to_send(0.0)
    c.receive("b", out["ihave"], 0.0)
    ((_, out["iwant"]),) = c.frames_to_send(0.0)
    # A member with one mesh peer besides the author forwards the message: hop count 2.
    fwd = gossip_core(seed("gossip/forwarder"), "forwarder")
    fwd.subscribe(topic, 0.0)
    with_mesh_peers(fwd, topic, "a", "h")
    fwd.receive("a", out["publish"], 0.0)
    ((_, out["publish-forwarded"]),) = [(p, f) for p, f in fwd.frames_to_send(0.0) if p == "h"]
    # A member that joins late catches up with b.
    late = gossip_core(seed("gossip/late"), "late")
    late.subscribe(topic, 0.0)
    late.add_peer("b", 0.0)
    late.frames_to_send(0.0)
    late.catch_up("b", topic, GOSSIP_TIME - 60_000, 0.0)
    ((_, out["sync"]),) = late.frames_to_send(0.0)
    b.receive("late", out["sync"], 0.0)  # from a peer b does not know: dropped
    if b.frames_to_send(0.0):
        abort("a core answered a peer it does not know")
    b.add_peer("late", 0.0)
    b.frames_to_send(0.0)
    b.receive("late", out["sync"], 0.0)
    ((_, out["sync-page"]),) = b.frames_to_send(0.0)
    # A large message makes c tell its other mesh peer d at once.
    with_mesh_peers(c, topic, "d")
    big = gossip.sign_message(identity.PrivateKey(GOSSIP_AUTHOR_SEED), topic, GOSSIP_TIME + 1,
                              seeded_bytes("gossip/large", 2000))  # fmt: skip
    c.receive("b", big.frame, 0.0)
    (_, out["idontwant"]), *_, (_, out["ihave-unpushed"]) = c.frames_to_send(0.0)
    # A member with two mesh peers and room for one eager link chokes one at its first
    # heartbeat; when that one announces a message the other did not push, the member
    # pulls it after its short wait and unchokes it.
    e = gossip_core(seed("gossip/choker"), "e", eager_max=1, eager_min=1, choke_hold=0.0)
    e.subscribe(topic, 0.0)
    with_mesh_peers(e, topic, "f", "g")
    e.handle_timer(1.0)
    ((choked, out["choke"]),) = [(p, f) for p, f in e.frames_to_send(1.0) if f[2] == 17]
    e.receive(choked, gossip_frame({0: 12, 1: topic, 2: [bytes.fromhex(SPEC_GOSSIP["id"])]}), 1.0)
    if e.frames_to_send(1.0):
        abort("a core pulled at once from a mesh peer it choked")
    e.handle_timer(e.get_timer() or 2.0)
    by_type = {f[2]: f for _, f in e.frames_to_send(2.0)}
    out["iwant-deferred"], out["unchoke"] = by_type[14], by_type[19]
    # b leaves the topic: PRUNE to its mesh (a, c), then UNSUBSCRIBE to everyone.
    b.unsubscribe(topic, 0.0)
    sent = b.frames_to_send(0.0)
    out["prune-leave"] = sent[0][1]
    out["unsubscribe"] = sent[-1][1]
    return out


def sync_select_here(
    entries: list[tuple[int, bytes]], since: int, after: bytes | None, limit: int
) -> tuple[list[bytes], tuple[int, bytes] | None]:
    """05-gossip.md 10.2 written out: filter, sort, cut."""
    ordered = sorted(entries)
    if after is None:
        rest = [e for e in ordered if e[0] >= since]
    else:
        rest = [e for e in ordered if e > (since, after)]
    page = rest[:limit]
    return [mid for _, mid in page], (page[-1] if len(rest) > limit else None)


def gossip_suite() -> VectorFile:
    vf = VectorFile("gossip", "05-gossip.md", GOSSIP_NOTES)
    main_net, lab_net = network_id("starling"), network_id("starling-lab")
    topic = gossip_topic(main_net, GOSSIP_COMMUNITY)
    author = ed25519_public(GOSSIP_AUTHOR_SEED)
    if topic.hex() != SPEC_GOSSIP["topic"]:
        abort("05-gossip.md 3.5: the topic differs")

    # -- topics ----------------------------------------------------------------------------
    tests = vf.group(
        "topic",
        'The topic of a community (05-gossip.md 3.1): SHA-256("starling/gossip-topic/1" || '
        "network ID || community key).",
    )
    topic_cases: list[tuple[str, bytes, bytes, list[str]]] = [
        ("05-gossip.md 3.5: RFC 8032 TEST 2's public key on the public network", main_net,
         GOSSIP_COMMUNITY, ["SpecExample"]),
        ("the same community key on network starling-lab", lab_net, GOSSIP_COMMUNITY,
         ["Network"]),
        ("seeded community key 'gossip/community'", main_net, seed("gossip/community"),
         ["Seeded"]),
    ]  # fmt: skip
    for comment, network, community, flags in topic_cases:
        expected_topic = gossip_topic(network, community)
        if gossip.topic_id(network, community) != expected_topic:
            abort(f"{comment}: topic_id differs from the hash computed here")
        vf.add(tests, comment, flags=flags, requirement="GSP-R14",
               input={"networkId": network.hex(), "communityKey": community.hex()},
               expected={"topic": expected_topic.hex()})  # fmt: skip

    # -- signing ---------------------------------------------------------------------------
    tests = vf.group(
        "message-sign",
        "Sign a gossip message (05-gossip.md 3.2) with the author key derived from "
        "input.authorSeed: the envelope under starling/gossip-msg/1 of the payload "
        "{1: input.topic, 2: input.time, 3: input.data}. input.time is a decimal string. "
        "expected.message is the signed message, expected.messageId its ID (3.3).",
    )
    sign_cases: list[tuple[str, bytes, bytes, int, bytes, list[str]]] = [
        ("05-gossip.md 3.5: 'hello, community' by RFC 8032 TEST 1's key", GOSSIP_AUTHOR_SEED,
         topic, GOSSIP_TIME, GOSSIP_DATA, ["SpecExample"]),
        ("empty data at time 0", GOSSIP_AUTHOR_SEED, topic, 0, b"", ["Boundary"]),
        ("time 2**64-1", GOSSIP_AUTHOR_SEED, topic, 2**64 - 1, b"x", ["Boundary"]),
        ("seeded author 'gossip/author/1', 300 seeded bytes", seed("gossip/author/1"), topic,
         GOSSIP_TIME + 1, seeded_bytes("gossip/data/300", 300), ["Seeded"]),
    ]  # fmt: skip
    for comment, secret, tpc, when, data, flags in sign_cases:
        raw = gossip_signed(secret, {1: tpc, 2: when, 3: data})
        ours = gossip.sign_message(identity.PrivateKey(secret), tpc, when, data)
        if ours.raw != raw or ours.id != gossip_id(raw):
            abort(f"{comment}: sign_message differs from the message signed here")
        vf.add(tests, comment, flags=flags, requirement="GSP-R10",
               input={"authorSeed": secret.hex(), "topic": tpc.hex(), "time": str(when),
                      "data": data.hex()},
               expected={"message": raw.hex(), "messageId": gossip_id(raw).hex()})  # fmt: skip
    spec_raw = gossip_signed(GOSSIP_AUTHOR_SEED, {1: topic, 2: GOSSIP_TIME, 3: GOSSIP_DATA})
    if spec_raw.hex() != SPEC_GOSSIP["message"] or gossip_id(spec_raw).hex() != SPEC_GOSSIP["id"]:
        abort("05-gossip.md 3.5: the signed message or its ID differs")

    # -- message IDs -----------------------------------------------------------------------
    tests = vf.group(
        "message-id",
        'The message ID of input.message (05-gossip.md 3.3): SHA-256("starling/gossip-id/1" '
        "|| the bytes exactly as given). The ID does not depend on the message being valid.",
    )
    id_cases: list[tuple[str, bytes, list[str]]] = [
        ("05-gossip.md 3.5: the worked example", spec_raw, ["SpecExample"]),
        ("the same message with its last byte changed: another ID", spec_raw[:-1] + bytes(
            [spec_raw[-1] ^ 1]), ["Forged"]),
        ("no bytes at all", b"", ["Boundary"]),
        ("1000 seeded bytes", seeded_bytes("gossip/id/1000", 1000), ["Seeded"]),
    ]  # fmt: skip
    for comment, raw, flags in id_cases:
        if gossip.message_id(raw) != gossip_id(raw):
            abort(f"{comment}: message_id differs from the hash computed here")
        vf.add(tests, comment, flags=flags, requirement="GSP-R11",
               input={"message": raw.hex()},
               expected={"messageId": gossip_id(raw).hex()})  # fmt: skip

    # -- checking signed messages ------------------------------------------------------------
    tests = vf.group(
        "signed-message",
        "Check input.message as a signed gossip message (05-gossip.md 3.4). Valid: the "
        "author's public key and peer ID, the topic, the time (a decimal string), the data "
        "and the message ID. Invalid: GOSSIP_MESSAGE_TOO_LARGE or GOSSIP_MESSAGE_INVALID "
        "(every envelope, payload, key and signature fault).",
        cddl={"file": "spec/cddl/gossip.cddl", "rule": "signed-message", "field": "message"},
    )
    torsion = torsion_points()
    payload = cbor2.dumps({1: topic, 2: GOSSIP_TIME, 3: GOSSIP_DATA}, canonical=True)
    fields = cbor2.loads(spec_raw)
    good_sig = fields[3]
    s_value = int.from_bytes(good_sig[32:], "little")
    malleable = good_sig[:32] + (s_value + L).to_bytes(32, "little")
    if not lax_verifies(author, signing_input(GOSSIP_DOMAIN, payload), malleable):
        abort("the S + L gossip signature does not satisfy the lax equation")
    small = forge_for_small_order_key(
        torsion[1], signing_input(GOSSIP_DOMAIN, payload), "gossip/forge"
    )
    flipped = bytearray(spec_raw)
    flipped[-70] ^= 0x01  # inside the payload, which the signature covers
    other = seed("gossip/other")
    non_shortest = cbor2.dumps({1: topic, 2: 5, 3: GOSSIP_DATA}, canonical=True).replace(
        b"\x02\x05", b"\x02\x18\x05", 1
    )
    if cbor2.loads(non_shortest) != {1: topic, 2: 5, 3: GOSSIP_DATA}:
        abort("the non-shortest gossip payload does not hold the same fields")

    def padded(size: int) -> bytes:
        """A valid signed message of exactly ``size`` bytes, padded in its data."""
        base = len(gossip_signed(GOSSIP_AUTHOR_SEED, {1: topic, 2: 1, 3: b""}))
        for pad in range(max(0, size - base - 8), size):
            raw = gossip_signed(GOSSIP_AUTHOR_SEED, {1: topic, 2: 1, 3: bytes(pad)})
            if len(raw) == size:
                return raw
        abort(f"no padding gives a signed message of {size} bytes")

    def env(**changes: object) -> bytes:
        base: dict[int, object] = {1: author, 2: payload, 3: good_sig}
        base.update({int(k[1:]): v for k, v in changes.items()})
        return cbor2.dumps(base)

    pay = {1: topic, 2: GOSSIP_TIME, 3: GOSSIP_DATA}
    invalid = "GOSSIP_MESSAGE_INVALID"
    # (comment, message, flags, requirement, error)
    # fmt: off
    signed_cases: list[tuple[str, bytes, list[str], str, str | None]] = [
        ("05-gossip.md 3.5: the worked example", spec_raw, ["SpecExample"], "GSP-R10", None),
        ("an unknown odd key 5 in the payload, kept in the signed bytes",
         gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 5: "later"}), ["Extension"], "GSP-R10", None),
        ("time 0 and empty data", gossip_signed(seed("gossip/author/2"), {1: topic, 2: 0, 3: b""}),
         ["Boundary", "Seeded"], "GSP-R10", None),
        ("a signed message of exactly 65024 bytes", padded(65024), ["Boundary"], "GSP-R10", None),
        ("a signed message of 65025 bytes", padded(65025), ["Boundary", "Limits"], "GSP-R10",
         "GOSSIP_MESSAGE_TOO_LARGE"),
        ("a payload bit flipped after signing", bytes(flipped), ["Forged"], "GSP-R10", invalid),
        ("signed by another key than the author's", env(k3=nacl_sign(other, GOSSIP_DOMAIN,
         payload)), ["Forged"], "GSP-R10", invalid),
        ("signed under starling/test/1", gossip_signed(GOSSIP_AUTHOR_SEED, pay,
         domain=TEST_DOMAIN), ["WrongDomain"], "GSP-R10", invalid),
        ("signed under starling/dht-record/1", gossip_signed(GOSSIP_AUTHOR_SEED, pay,
         domain=DHT_RECORD_DOMAIN), ["WrongDomain"], "GSP-R10", invalid),
        ("plain Ed25519 over the payload, without the signing input",
         env(k3=nacl.signing.SigningKey(GOSSIP_AUTHOR_SEED).sign(payload).signature),
         ["WrongDomain"], "GSP-R10", invalid),
        ("signature with S + L", env(k3=malleable), ["LaxVerifies"], "GSP-R10", invalid),
        ("author key of small order, signature satisfying the equation",
         env(k1=encode_point(torsion[1]), k3=small), ["LaxVerifies"], "GSP-R10", invalid),
        ("an envelope with an extra odd key 5", env(k5=b"relay note"), ["Structure"], "GSP-R10",
         invalid),
        ("an envelope without its signature", cbor2.dumps({1: author, 2: payload}),
         ["Structure"], "GSP-R10", invalid),
        ("no topic (key 1)", gossip_signed(GOSSIP_AUTHOR_SEED, {2: GOSSIP_TIME, 3: b"x"}),
         ["Structure"], "GSP-R10", invalid),
        ("a topic of 31 bytes", gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 1: topic[:31]}),
         ["Structure"], "GSP-R10", invalid),
        ("a negative time", gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 2: -1}), ["Structure"],
         "GSP-R10", invalid),
        ("the time as a text string", gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 2: "1700"}),
         ["Structure"], "GSP-R10", invalid),
        ("the data as a text string", gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 3: "hello"}),
         ["Structure"], "GSP-R10", invalid),
        ("an unknown even key 4 in the payload", gossip_signed(GOSSIP_AUTHOR_SEED, {**pay, 4: 0}),
         ["Structure"], "GSP-R10", invalid),
        ("the payload is an array", gossip_signed(GOSSIP_AUTHOR_SEED, [topic, GOSSIP_TIME,
         GOSSIP_DATA]), ["Structure"], "GSP-R10", invalid),
        ("the payload's time in a non-shortest head (signed as such)",
         gossip_signed(GOSSIP_AUTHOR_SEED, non_shortest, raw=True), ["Structure"], "GSP-R10",
         invalid),
        ("one zero byte after the envelope", spec_raw + b"\x00", ["Structure"], "GSP-R10",
         invalid),
        ("not CBOR: a bare payload without an envelope", payload[:-3], ["Structure"], "GSP-R10",
         invalid),
    ]
    # fmt: on
    for comment, raw, flags, requirement, error in signed_cases:
        if error is None:
            fields = cbor2.loads(raw)
            nacl.signing.VerifyKey(fields[1]).verify(
                signing_input(GOSSIP_DOMAIN, fields[2]), fields[3]
            )
            decoded = cbor2.loads(fields[2])
            message = gossip.parse_message(raw)
            if (message.topic, message.time_ms, message.data) != (decoded[1], decoded[2],
                                                                  decoded[3]):  # fmt: skip
                abort(f"{comment}: parse_message reads other fields than cbor2")
            expected: Json = {
                "author": fields[1].hex(),
                "authorId": peer_id_of_key(fields[1]).hex(),
                "topic": decoded[1].hex(),
                "time": str(decoded[2]),
                "data": decoded[3].hex(),
                "messageId": gossip_id(raw).hex(),
            }
        else:
            expect_error(lambda r=raw: gossip.parse_message(r), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"message": raw.hex()}, expected=expected, error=error)  # fmt: skip

    # -- gossip messages -------------------------------------------------------------------------
    tests = vf.group(
        "gossip-message",
        "Encode input.message, a gossip message given as a typed value, canonically "
        "(05-gossip.md 4): the bytes must equal expected.frame, the plaintext of one frame "
        "of a starling/gossip/1 stream. Then decode expected.frame as a gossip message "
        "(4.3, 4.4): it must be accepted and give input.message back.",
    )
    live = live_gossip(topic)
    big = gossip.sign_message(identity.PrivateKey(GOSSIP_AUTHOR_SEED), topic, GOSSIP_TIME + 1,
                              seeded_bytes("gossip/large", 2000))  # fmt: skip
    mid = gossip_id(spec_raw)
    ids = [gossip_id(seeded_bytes(f"gossip/ids/{i}", 8)) for i in range(1024)]
    topics = [gossip_topic(main_net, seed(f"gossip/topics/{i}")) for i in range(64)]
    hints = [seeded_bytes(f"gossip/hint/{i}", 100 + i) for i in range(16)]
    # (comment, message, live name or None, flags, requirement)
    # fmt: off
    messages: list[tuple[str, dict[int, object], str | None, list[str], str]] = [
        ("SUBSCRIBE: the first message of a member's stream, its one topic",
         {0: 2, 1: [topic]}, "subscribe", ["Live"], "GSP-R2"),
        ("SUBSCRIBE of 64 topics", {0: 2, 1: topics}, None, ["Boundary"], "GSP-R2"),
        ("SUBSCRIBE of no topic", {0: 2, 1: []}, None, ["Boundary"], "GSP-R2"),
        ("UNSUBSCRIBE: a member leaves the topic", {0: 4, 1: [topic]}, "unsubscribe", ["Live"],
         "GSP-R2"),
        ("GRAFT: a member joins and grafts a topic peer", {0: 6, 1: topic}, "graft", ["Live"],
         "GSP-R2"),
        ("PRUNE when leaving the topic: backoff 10 s, no peer hints", {0: 8, 1: topic, 2: 10},
         "prune-leave", ["Live"], "GSP-R2"),
        ("PRUNE with backoff 60 s and two peer hints", {0: 8, 1: topic, 2: 60, 3: hints[:2]},
         None, ["Seeded"], "GSP-R2"),
        ("PRUNE with backoff 3600 s and 16 peer hints", {0: 8, 1: topic, 2: 3600, 3: hints},
         None, ["Boundary", "Seeded"], "GSP-R2"),
        ("PRUNE with backoff 0 (refusing a GRAFT for a topic not taken part in)",
         {0: 8, 1: topic, 2: 0}, None, ["Boundary"], "GSP-R2"),
        ("05-gossip.md 4.5: PUBLISH of the worked example, by its author: hop count 1",
         {0: 10, 1: spec_raw, 3: 1}, "publish", ["SpecExample", "Live"], "GSP-R28"),
        ("PUBLISH of the worked example forwarded by a member: hop count 2",
         {0: 10, 1: spec_raw, 3: 2}, "publish-forwarded", ["Live"], "GSP-R28"),
        ("PUBLISH without a hop count (a revision 6 sender)", {0: 10, 1: spec_raw}, None,
         [], "GSP-R28"),
        ("PUBLISH with hop count 255, where it saturates", {0: 10, 1: spec_raw, 3: 255}, None,
         ["Boundary"], "GSP-R28"),
        ("05-gossip.md 4.5: IHAVE of the worked example, announced to a mesh peer at once",
         {0: 12, 1: topic, 2: [mid]}, "ihave", ["SpecExample", "Live"], "GSP-R2"),
        ("IHAVE of 1024 IDs", {0: 12, 1: topic, 2: ids}, None, ["Boundary", "Seeded"], "GSP-R2"),
        ("IWANT: the announced message is asked for", {0: 14, 1: [mid]}, "iwant", ["Live"],
         "GSP-R2"),
        ("IDONTWANT: a large message told to a mesh peer before checking it",
         {0: 15, 1: [big.id]}, "idontwant", ["Live"], "GSP-R2"),
        ("IHAVE of a large message, which nobody pushes: unpushed, pull at once",
         {0: 12, 1: topic, 2: [big.id], 3: True}, "ihave-unpushed", ["Live"], "GSP-R2"),
        ("CHOKE: a mesh peer is asked to send IDs instead of bodies",
         {0: 17, 1: topic}, "choke", ["Live"], "GSP-R2"),
        ("UNCHOKE: a choked mesh peer announced first and is made eager again",
         {0: 19, 1: topic}, "unchoke", ["Live"], "GSP-R2"),
        ("SYNC: a late member asks for the topic since a minute before the example",
         {0: 16, 1: topic, 2: GOSSIP_TIME - 60_000}, "sync", ["Live"], "GSP-R2"),
        ("SYNC continuing after a cursor", {0: 16, 1: topic, 2: GOSSIP_TIME, 4: mid}, None,
         ["Paging"], "GSP-R2"),
        ("SYNC_PAGE: the one message held, no cursor", {0: 18, 1: topic, 2: [mid]},
         "sync-page", ["Live"], "GSP-R2"),
        ("SYNC_PAGE: 1024 IDs and a cursor", {0: 18, 1: topic, 2: ids,
         4: [GOSSIP_TIME, ids[-1]]}, None, ["Paging", "Boundary", "Seeded"], "GSP-R2"),
        ("SYNC_PAGE: nothing held", {0: 18, 1: topic, 2: []}, None, ["Boundary"], "GSP-R2"),
    ]
    # fmt: on
    for comment, message, live_name, flags, requirement in messages:
        frame = gossip_frame(message)
        if live_name is not None and live[live_name] != frame:
            abort(f"{comment}: the live core sent {live[live_name].hex()}, not {frame.hex()}")
        kind, decoded_fields = gossip.decode_message(frame)
        if kind != message[0] or decoded_fields is None:
            abort(f"{comment}: decode_message does not accept it")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"message": typed(message)}, expected={"frame": frame.hex()})  # fmt: skip
    if live["iwant-deferred"] != live["iwant"]:
        abort("a deferred pull differs from an immediate one")
    for name in ("subscribe", "publish", "ihave"):
        if live[name].hex() != SPEC_GOSSIP[name]:
            abort(f"05-gossip.md 4.5: the {name} example differs from the live frame")

    # -- decoding gossip messages ----------------------------------------------------------------
    tests = vf.group(
        "gossip-decode",
        "Decode input.frame as a gossip message (05-gossip.md 4.3, 4.4): at most 65519 "
        "bytes, depth 4, no tags, a typed message checked against its field table and its "
        "array elements. Valid: expected.messageType and expected.known (false for an unknown "
        "odd type, which is ignored). Invalid: the CBOR_* or SCHEMA_* code of the fault.",
    )
    over_depth = b"\xa2\x00\x02\x01\x81\x81\x81\x80"  # {0: 2, 1: [[[[]]]]}: level 5
    oversized = gossip_frame({0: 10, 1: bytes(65513)})
    if len(oversized) != 65520:
        abort("the oversized frame is not 65520 bytes")
    # (comment, frame, flags, requirement, error or None, (type, known) when valid)
    # fmt: off
    decode_cases: list[tuple[str, bytes, list[str], str, str | None, tuple[int, bool] | None]] = [
        ("GRAFT", gossip_frame({0: 6, 1: topic}), [], "GSP-R2", None, (6, True)),
        ("GRAFT with an unknown odd key 3", gossip_frame({0: 6, 1: topic, 3: "later"}),
         ["Extension"], "MSG-R2", None, (6, True)),
        ("IDONTWANT, the one odd type", gossip_frame({0: 15, 1: [mid]}), [], "GSP-R1", None,
         (15, True)),
        ("an unknown odd type 21: ignored", gossip_frame({0: 21, 1: "later"}),
         ["Extensibility"], "MSG-R3", None, (21, False)),
        ("an unknown odd type 1 without fields: ignored", gossip_frame({0: 1}),
         ["Extensibility"], "MSG-R3", None, (1, False)),
        ("a PUBLISH whose signed message is not one: the frame is still a PUBLISH",
         gossip_frame({0: 10, 1: b"not a signed message"}), [], "GSP-R2", None, (10, True)),
        ("an unknown even type 20", gossip_frame({0: 20, 1: topic}), ["Extensibility"],
         "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", None),
        ("type 0", gossip_frame({0: 0}), ["Extensibility"], "MSG-R3",
         "SCHEMA_UNKNOWN_MESSAGE_TYPE", None),
        ("no type (key 0)", gossip_frame({1: topic}), ["Structure"], "MSG-R3",
         "SCHEMA_MISSING_FIELD", None),
        ("the type as a text string", gossip_frame({0: "GRAFT", 1: topic}), ["Structure"],
         "MSG-R3", "SCHEMA_TYPE", None),
        ("an array, not a map", gossip_frame([6, topic]), ["Structure"], "MSG-R1",
         "SCHEMA_TYPE", None),
        ("GRAFT without its topic", gossip_frame({0: 6}), ["Structure"], "MSG-R1",
         "SCHEMA_MISSING_FIELD", None),
        ("GRAFT with a topic of 31 bytes", gossip_frame({0: 6, 1: topic[:31]}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("GRAFT with an unknown even key 2", gossip_frame({0: 6, 1: topic, 2: 0}),
         ["Extensibility"], "MSG-R2", "SCHEMA_UNKNOWN_CRITICAL_FIELD", None),
        ("PRUNE with backoff 3601", gossip_frame({0: 8, 1: topic, 2: 3601}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("PRUNE with a negative backoff", gossip_frame({0: 8, 1: topic, 2: -1}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("PRUNE with 17 peer hints", gossip_frame({0: 8, 1: topic, 2: 60, 3: [*hints, b""]}),
         ["Limits"], "MSG-R1", "SCHEMA_VALUE", None),
        ("PRUNE with a peer hint of 1025 bytes", gossip_frame({0: 8, 1: topic, 2: 60,
         3: [bytes(1025)]}), ["Limits"], "GSP-R2", "SCHEMA_VALUE", None),
        ("PRUNE with a peer hint that is an integer", gossip_frame({0: 8, 1: topic, 2: 60,
         3: [7]}), ["Structure"], "GSP-R2", "SCHEMA_TYPE", None),
        ("PUBLISH whose message is a text string", gossip_frame({0: 10, 1: "hello"}),
         ["Structure"], "MSG-R1", "SCHEMA_TYPE", None),
        ("PUBLISH with hop count 0", gossip_frame({0: 10, 1: spec_raw, 3: 0}), ["Limits"],
         "GSP-R28", "SCHEMA_VALUE", None),
        ("PUBLISH with hop count 256", gossip_frame({0: 10, 1: spec_raw, 3: 256}), ["Limits"],
         "GSP-R28", "SCHEMA_VALUE", None),
        ("PUBLISH with hop count 2**64-1", gossip_frame({0: 10, 1: spec_raw, 3: 2**64 - 1}),
         ["Limits"], "GSP-R28", "SCHEMA_VALUE", None),
        ("PUBLISH with a negative hop count", gossip_frame({0: 10, 1: spec_raw, 3: -1}),
         ["Limits"], "GSP-R28", "SCHEMA_VALUE", None),
        ("PUBLISH whose hop count is a byte string", gossip_frame({0: 10, 1: spec_raw,
         3: b"\x01"}), ["Structure"], "GSP-R28", "SCHEMA_TYPE", None),
        ("PUBLISH with hop count 7 in a non-shortest head", gossip_frame({0: 10, 1: spec_raw,
         3: 7})[:-1] + b"\x18\x07", ["NotWellFormed"], "GSP-R28", "CBOR_NON_SHORTEST", None),
        ("SUBSCRIBE of 65 topics", gossip_frame({0: 2, 1: [*topics, topic]}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("SUBSCRIBE whose topic list is a byte string", gossip_frame({0: 2, 1: topic}),
         ["Structure"], "MSG-R1", "SCHEMA_TYPE", None),
        ("IHAVE of 1025 IDs", gossip_frame({0: 12, 1: topic, 2: [*ids, mid]}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("IHAVE whose unpushed flag is an integer", gossip_frame({0: 12, 1: topic, 2: [mid],
         3: 1}), ["Structure"], "MSG-R1", "SCHEMA_TYPE", None),
        ("CHOKE without its topic", gossip_frame({0: 17}), ["Structure"], "MSG-R1",
         "SCHEMA_MISSING_FIELD", None),
        ("UNCHOKE with a topic of 33 bytes", gossip_frame({0: 19, 1: topic + b"\x00"}),
         ["Limits"], "MSG-R1", "SCHEMA_VALUE", None),
        ("IWANT with an ID of 33 bytes", gossip_frame({0: 14, 1: [mid + b"\x00"]}), ["Limits"],
         "GSP-R2", "SCHEMA_VALUE", None),
        ("IWANT with an ID that is a text string", gossip_frame({0: 14, 1: [mid.hex()]}),
         ["Structure"], "GSP-R2", "SCHEMA_TYPE", None),
        ("SYNC without its time", gossip_frame({0: 16, 1: topic}), ["Structure"], "MSG-R1",
         "SCHEMA_MISSING_FIELD", None),
        ("SYNC with a cursor ID of 31 bytes", gossip_frame({0: 16, 1: topic, 2: 0,
         4: mid[:31]}), ["Limits"], "MSG-R1", "SCHEMA_VALUE", None),
        ("SYNC_PAGE whose cursor has one element", gossip_frame({0: 18, 1: topic, 2: [],
         4: [GOSSIP_TIME]}), ["Structure"], "MSG-R1", "SCHEMA_VALUE", None),
        ("SYNC_PAGE whose cursor time is negative", gossip_frame({0: 18, 1: topic, 2: [],
         4: [-1, mid]}), ["Structure"], "GSP-R2", "SCHEMA_VALUE", None),
        ("SYNC_PAGE whose cursor time is a byte string", gossip_frame({0: 18, 1: topic, 2: [],
         4: [b"\x01", mid]}), ["Structure"], "GSP-R2", "SCHEMA_TYPE", None),
        ("a frame of 65520 bytes", oversized, ["Limits"], "GSP-R1", "CBOR_TOO_LARGE", None),
        ("nesting deeper than 4 levels", over_depth, ["Limits"], "GSP-R1", "CBOR_TOO_DEEP",
         None),
        ("a float as the type", b"\xa1\x00\xfb\x40\x18\x00\x00\x00\x00\x00\x00",
         ["NotWellFormed"], "CBOR-R5", "CBOR_FLOAT", None),
        ("map keys 1 then 0", b"\xa2\x01\x58\x20" + topic + b"\x00\x06", ["NotWellFormed"],
         "CBOR-R9", "CBOR_MAP_KEY_ORDER", None),
        ("truncated: the topic cut short", gossip_frame({0: 6, 1: topic})[:-1],
         ["NotWellFormed"], "CBOR-R14", "CBOR_TRUNCATED", None),
        ("an empty frame", b"", ["NotWellFormed"], "CBOR-R14", "CBOR_TRUNCATED", None),
        ("two messages in one frame", gossip_frame({0: 6, 1: topic}) * 2, ["NotWellFormed"],
         "CBOR-R13", "CBOR_TRAILING_BYTES", None),
        ("a tag around the topic", b"\xa2\x00\x06\x01\xd8\x18\x58\x20" + topic,
         ["NotWellFormed"], "CBOR-R7", "CBOR_UNDECLARED_TAG", None),
    ]
    # fmt: on
    for comment, frame, flags, requirement, error, verdict in decode_cases:
        if error is None:
            assert verdict is not None
            kind, decoded_fields = gossip.decode_message(frame)
            if (kind, decoded_fields is not None) != verdict:
                abort(f"{comment}: decode_message says {kind}, {decoded_fields is not None}")
            expected = {"messageType": verdict[0], "known": verdict[1]}
        else:
            expect_error(lambda f=frame: gossip.decode_message(f), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"frame": frame.hex()}, expected=expected, error=error)  # fmt: skip

    # -- catch-up pages ----------------------------------------------------------------------
    tests = vf.group(
        "sync-select",
        "A node holds input.entries (each a time, as a decimal string, and a message ID) for "
        "a topic and answers a SYNC with time input.since and, if present, cursor ID "
        "input.after, listing at most input.limit IDs (05-gossip.md 10.2). expected.ids are "
        "the IDs of the SYNC_PAGE in order; expected.next its cursor (time and ID), present "
        "only when more IDs follow.",
    )
    pool = [gossip_id(seeded_bytes(f"gossip/sync/{i}", 8)) for i in range(8)]
    times = [GOSSIP_TIME, GOSSIP_TIME, GOSSIP_TIME + 5000, GOSSIP_TIME - 1, GOSSIP_TIME + 5000,
             GOSSIP_TIME + 9000, 0, 2**64 - 1]  # fmt: skip
    entries = list(zip(times, pool, strict=True))
    by_order = sorted(entries)
    # (comment, since, after, limit, flags)
    # fmt: off
    sync_cases: list[tuple[str, int, bytes | None, int, list[str]]] = [
        ("everything since time 0", 0, None, 1024, ["Boundary", "Seeded"]),
        ("since the example's time: the earlier ones left out", GOSSIP_TIME, None, 1024,
         ["Seeded"]),
        ("since the example's time, pages of 2: a cursor follows", GOSSIP_TIME, None, 2,
         ["Paging", "Seeded"]),
        ("the next page: strictly after the cursor", by_order[3][0], by_order[3][1], 2,
         ["Paging", "Seeded"]),
        ("the last page: no cursor", by_order[5][0], by_order[5][1], 2,
         ["Paging", "Seeded"]),
        ("a cursor ID that is not held: strictly after it all the same", GOSSIP_TIME + 5000,
         b"\x00" * 32, 10, ["Seeded"]),
        ("exactly as many left as the limit: no cursor", GOSSIP_TIME + 9000, None, 2,
         ["Boundary", "Seeded"]),
        ("nothing at or after the time", 2**64 - 1, by_order[-1][1], 10,
         ["Boundary", "Seeded"]),
    ]
    # fmt: on
    for comment, since, after, limit, flags in sync_cases:
        ids_here, cursor = sync_select_here(entries, since, after, limit)
        if gossip.select_ids(by_order, since, after, limit) != (ids_here, cursor):
            abort(f"{comment}: select_ids differs from the selection made here")
        given: Json = {
            "entries": [{"time": str(t), "id": i.hex()} for t, i in entries],
            "since": str(since),
        }
        if after is not None:
            given["after"] = after.hex()
        given["limit"] = limit
        outcome: Json = {"ids": [i.hex() for i in ids_here]}
        if cursor is not None:
            outcome["next"] = {"time": str(cursor[0]), "id": cursor[1].hex()}
        vf.add(tests, comment, flags=flags, requirement="GSP-R60", input=given,
               expected=outcome)  # fmt: skip
    return vf


def peer_id_of_key(public: bytes) -> bytes:
    return hashlib.sha256(b"starling/peer-id/1" + public).digest()


# Worked examples of 05-gossip.md, hard-coded from the spec.
SPEC_GOSSIP = {
    "topic": "6e393f1229eaad2719536a984cc96af6e88586bf421a9c6b15fe264c962c43ad",
    "message": "a3015820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a025840a3"
    "0158206e393f1229eaad2719536a984cc96af6e88586bf421a9c6b15fe264c962c43ad021b0000018bcfe5680003"
    "5068656c6c6f2c20636f6d6d756e697479035840cbdc4e0e486816592e2328b2b4223fb75451340f4048473fc681"
    "9935b07d660e3ad156b2983588b4d90122cd6486e96bfc1903e108d9e9f4fdd083d73a08ea01",
    "id": "994be8e110477a55867c34e896d2c7b5bbb690c525d9e013de49b5c4192c6c65",
    "subscribe": "a20002018158206e393f1229eaad2719536a984cc96af6e88586bf421a9c6b15fe264c962c43ad",
    "publish": "a3000a0158aaa3015820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f70751"
    "1a025840a30158206e393f1229eaad2719536a984cc96af6e88586bf421a9c6b15fe264c962c43ad021b0000018b"
    "cfe56800035068656c6c6f2c20636f6d6d756e697479035840cbdc4e0e486816592e2328b2b4223fb75451340f40"
    "48473fc6819935b07d660e3ad156b2983588b4d90122cd6486e96bfc1903e108d9e9f4fdd083d73a08ea010301",
    "ihave": "a3000c0158206e393f1229eaad2719536a984cc96af6e88586bf421a9c6b15fe264c962c43ad02815820"
    "994be8e110477a55867c34e896d2c7b5bbb690c525d9e013de49b5c4192c6c65",
}


# ----------------------------------------------------------------------------- nat suite
# 04-nat-traversal.md: the messages of its four contexts, probe keys and MACs, vouchers,
# observed-address confirmation, dial-back addresses, relay admission, circuits and
# forwarding limits, punch timing and the relay entries of peer records. Valid vectors are
# built here from the spec: bytes with cbor2, hmac, cryptography's HKDF and libsodium,
# decisions with small models of the spec's rules written below. Live cores of
# starling.proto.nat (RelayCore, RelayStream, Puncher, Reachability, DialBackServer,
# PathProbes), their randomness scripted, must send the same bytes in the same situations
# (flag Live) and starling.proto.nat must reach the same verdicts; any disagreement aborts.

NAT_NOTES = {
    "SpecExample": "Taken from a worked example of 04-nat-traversal.md, hard-coded here from "
    "the spec.",
    "Seeded": 'Keys, IDs or bytes derived from seeds SHA-256("starling-vectors/" + label).',
    "Live": "The bytes a live core of the reference implementation sent in the situation the "
    "comment describes.",
    "Boundary": "A value at the edge of its range: 8 candidates, round 3, a packet of 1 or "
    "1500 bytes, a data limit reached exactly, a cap reached exactly.",
    "Ipv6": "An IPv6 address where most vectors use IPv4.",
    "Extension": "A message or payload carrying an unknown odd key, which every node ignores "
    "(and, under a MAC or signature, keeps in the authenticated bytes).",
    "Extensibility": "The even/odd rule for message types (00-conventions 5.4).",
    "Structure": "Not the structure of its field table: a missing field, a field of the wrong "
    "type or size, an unknown even key, an address that is not one.",
    "NotWellFormed": "Not well-formed CBOR, or CBOR outside the profile.",
    "Limits": "A size limit or a cap of 04-nat-traversal.md.",
    "Forged": "A MAC or signature that does not hold over what the verifier reconstructs: "
    "bytes changed after authentication, another key, another session.",
    "Reflected": "A probe presented to its own sender: it is checked under the other "
    "direction's key and fails.",
    "WrongDomain": "Signed under another signature domain than starling/relay-voucher/1: "
    "domain separation must make it fail.",
    "LaxVerifies": "The signature satisfies the Ed25519 equation but breaks a pinned rule of "
    "01-identity section 5 (S >= L); Starling rejects it.",
    "Expired": "A voucher at or past its expiry.",
    "Mismatch": "A voucher of another relay, or for another peer, than the verifier expects.",
    "Amplification": "A dial-back aimed at another IP than the requester's own: refused, so "
    "nobody can make a helper send to a third party.",
    "Network": "A network other than the public one.",
    "Prefix": "Reporters or helpers in one IPv4 /24 or IPv6 /48, which count once.",
    "Expiry": "Reports older than their 600-second lifetime, which count for nothing.",
    "Rounds": "A punch round after the first: roles swapped, its own RTT.",
}

NAT_RELAY_SEED = bytes.fromhex(RFC8032[1][1])  # the relay of the spec's voucher example
NAT_PEER_SEED = bytes.fromhex(RFC8032[0][1])  # the holder: 01-identity's running example
NAT_EXPIRES = 1_700_003_600
NAT_NOW = 1_700_000_000
NAT_SESSION = {  # 02-secure-session section 8.5: the keys of the probe example
    "h": "c75ede54110c01d52ec2bc3ab1b14a0f927e58dcfe52c7affa08bb95125f4708",
    "k1": "dff3528565acdc10f0f1f626005dfe7c054965be0f42b708570c67691c53af34",
    "k2": "3605b6634260499326e319610beb0c8127213d8d96f146edca88ce91da1d2da6",
}
NAT_LIMITS = codec.DecodeLimits(max_size=1024, max_depth=4)
NAT_VOUCHER_DOMAIN = "starling/relay-voucher/1"
NAT_DEFAULTS = {  # the RECOMMENDED relay values of 04-nat-traversal.md 2.1
    "reservationTtl": 3600, "circuitDuration": 1800, "circuitData": 64 << 20,
    "maxReservations": 128, "maxReservationsPerIp": 4, "maxCircuits": 256,
    "maxCircuitsPerPeer": 16,
}  # fmt: skip
NAT_PROTOCOLS = {
    "control": nat.Protocol.CONTROL,
    "relay": nat.Protocol.RELAY,
    "punch": nat.Protocol.PUNCH,
    "dial-back": nat.Protocol.DIAL_BACK,
}


def nat_hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 by the `cryptography` package (04-nat-traversal.md 5.1)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def nat_probe_keys(h: bytes, k1: bytes, k2: bytes) -> tuple[bytes, bytes, bytes]:
    """Session tag and the two probe keys, from 04-nat-traversal.md 5.1."""
    return (
        nat_hkdf(h, k1 + k2, b"starling/probe-tag/1", 8),
        nat_hkdf(h, k1, b"starling/probe/1", 32),
        nat_hkdf(h, k2, b"starling/probe/1", 32),
    )


def nat_probe(
    key: bytes,
    network: bytes,
    kind: int,
    tag: bytes,
    nonce: bytes,
    addr: object,
    extra: dict[int, object] | None = None,
) -> bytes:
    """A probe built with cbor2 and hmac from 04-nat-traversal.md 5.2."""
    body: dict[int, object] = {0: kind, 1: tag, 2: nonce, 3: addr, **(extra or {})}
    header = b"\x0c\x01" + network
    mac = hmac.new(key, header + cbor2.dumps(body, canonical=True), hashlib.sha256).digest()
    return header + cbor2.dumps({**body, 4: mac[:16]}, canonical=True)  # fmt: skip


def nat_frame(message: object) -> bytes:
    frame = codec.encode(message)  # type: ignore[arg-type]
    if frame != cbor2.dumps(message, canonical=True):
        abort(f"NAT message {message!r}: our encoding differs from cbor2's canonical one")
    return frame


def nat_voucher(
    relay_seed: bytes, payload: object, *, domain: str = NAT_VOUCHER_DOMAIN, raw: bool = False
) -> bytes:
    """A voucher built with cbor2 and libsodium (04-nat-traversal.md 6.3)."""
    data = payload if raw else cbor2.dumps(payload, canonical=True)
    assert isinstance(data, bytes)
    signature = nacl_sign(relay_seed, domain, data)
    return cbor2.dumps({1: ed25519_public(relay_seed), 2: data, 3: signature}, canonical=True)


def nat_addr(addr: tuple[str, int]) -> Json:
    return {"ip": ip_packed(addr[0]).hex(), "port": addr[1]}


def nat_relay_config(config: Json) -> nat.RelayConfig:
    return nat.RelayConfig(
        reservation_ttl=config["reservationTtl"],
        circuit_duration=config["circuitDuration"],
        circuit_data=config["circuitData"],
        max_reservations=config["maxReservations"],
        max_reservations_per_ip=config["maxReservationsPerIp"],
        max_circuits=config["maxCircuits"],
        max_circuits_per_peer=config["maxCircuitsPerPeer"],
    )


def live_nat() -> dict[str, bytes]:
    """What live cores of starling.proto.nat send, by name, in the situations of the
    message vectors."""
    out: dict[str, bytes] = {}
    relay_key = identity.PrivateKey(NAT_RELAY_SEED)
    relay_id = relay_key.peer_id.raw
    target = peer_id_of(NAT_PEER_SEED)
    source = peer_id_of(seed("nat/source"))
    # A target reserves on a relay whose clock reads NAT_NOW.
    core = nat.RelayCore(relay_key, 0.0, epoch_offset=NAT_NOW)
    stream, out["reserve"] = nat.RelayStream.reserve(relay_id, target)
    core.accept_stream("t", target, "198.51.100.10", 0.0)
    core.receive("t", out["reserve"], 0.0)
    send, _ = core.actions(0.0)
    assert isinstance(send, nat.Send)
    out["reservation"] = send.data
    granted = stream.receive(send.data, NAT_NOW)
    if not isinstance(granted, nat.Reservation) or granted.expires != NAT_EXPIRES:
        abort("the live reservation is not the spec's")
    # A source connects; the target accepts; a packet crosses.
    client, out["connect"] = nat.RelayStream.connect(relay_id, source, target)
    core.accept_stream("s", source, "203.0.113.50", 1.0)
    core.receive("s", out["connect"], 1.0)
    (opened,) = core.actions(1.0)
    assert isinstance(opened, nat.Open)
    out["incoming"] = opened.data
    offered = nat.RelayStream.offered(relay_id, target)
    offered.receive(opened.data, NAT_NOW)
    out["status-accept"] = offered.accept()
    core.receive(opened.stream, out["status-accept"], 1.1)
    (ready,) = core.actions(1.1)
    assert isinstance(ready, nat.Send)
    out["status-open"] = ready.data
    if not isinstance(client.receive(ready.data, NAT_NOW), nat.CircuitReady):
        abort("the live source did not see its circuit open")
    # A CONNECT to a peer without a reservation, and a second RESERVE from the target's IP
    # on a relay that allows one reservation per IP.
    core.accept_stream("x", source, "203.0.113.50", 2.0)
    core.receive("x", nat.encode_connect(peer_id_of(seed("nat/nobody"))), 2.0)
    refusal, _ = core.actions(2.0)
    assert isinstance(refusal, nat.Send)
    out["status-no-reservation"] = refusal.data
    tight = nat.RelayCore(relay_key, 0.0, nat.RelayConfig(max_reservations_per_ip=1), NAT_NOW)
    for n, peer in enumerate((target, source)):
        tight.accept_stream(n, peer, "198.51.100.10", 0.0)
        tight.receive(n, nat.encode_reserve(), 0.0)
    out["status-ip-limit"] = tight.actions(0.0)[2].data  # type: ignore[union-attr]
    # A punch: the initiator (the circuit's target) and the responder (its source).
    h, k1, k2 = (bytes.fromhex(NAT_SESSION[k]) for k in ("h", "k1", "k2"))
    keys = nat.ProbeKeys.derive(h, k1, k2)
    main_net = network_id("starling")
    paths_i = nat.PathProbes(keys, ses.Role.RESPONDER, main_net, ScriptedRng("nat/i"), 0.0)
    paths_r = nat.PathProbes(keys, ses.Role.INITIATOR, main_net, ScriptedRng("nat/r"), 0.0)
    init = paths_i.start_punch(True, [("198.51.100.10", 4000), ("10.1.0.10", 4000)], 0.0)
    resp = paths_r.start_punch(False, [("203.0.113.50", 4000)], 0.0)
    (out["punch-connect"],) = init.frames_to_send()
    resp.receive(out["punch-connect"], 0.04)
    (out["punch-answer"],) = resp.frames_to_send()
    init.receive(out["punch-answer"], 0.08)
    (out["punch-sync"],) = init.frames_to_send()
    # A dial-back: the requester asks, the helper probes, or refuses another IP.
    reach = nat.Reachability(ScriptedRng("nat/dial", seeded_bytes("nat/dial-nonce", 16)), 0.0)
    out["dial-request"] = reach.request_dial_back(
        relay_id, ("203.0.113.10", 4000), ("198.51.100.10", 4000), 0.0
    )
    helper = nat.DialBackServer(main_net, 0.0)
    reply = helper.handle(out["dial-request"], ("198.51.100.10", 4000), 0.0)
    assert reply.probe is not None
    out["dial-response"] = reply.response
    out["dial-back"] = reply.probe[6:]
    other_ip = nat.encode_dial_request(seeded_bytes("nat/dial-nonce", 16), ("203.0.113.99", 4000))
    out["dial-refused"] = helper.handle(other_ip, ("198.51.100.10", 4000), 0.0).response
    if not reach.receive_probe(reply.probe, ("203.0.113.10", 4001), 0.1):
        abort("the live requester did not accept its dial-back probe")
    return out


def nat_suite() -> VectorFile:
    vf = VectorFile("nat", "04-nat-traversal.md", NAT_NOTES)
    main_net, lab_net = network_id("starling"), network_id("starling-lab")
    relay_id, holder = peer_id_of(NAT_RELAY_SEED), peer_id_of(NAT_PEER_SEED)
    source = peer_id_of(seed("nat/source"))
    live = live_nat()
    spec_voucher = nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: holder, 3: NAT_EXPIRES})
    if spec_voucher.hex() != SPEC_NAT["voucher"]:
        abort("04-nat-traversal.md 6.3: the voucher example differs")
    a4, a6 = address_value(("198.51.100.10", 4000)), address_value(("2001:db8::10", 4000))
    lan = address_value(("10.1.0.10", 4000))
    candidates8 = [address_value((f"192.0.2.{i}", 4000 + i)) for i in range(1, 9)]
    nonce16 = seeded_bytes("nat/dial-nonce", 16)

    # -- messages ----------------------------------------------------------------------------
    tests = vf.group(
        "nat-message",
        "Encode input.message, a message of context input.protocol (control: the body of a "
        "control datagram; relay, punch, dial-back: one frame of starling/relay/1, "
        "starling/punch/1, starling/dial-back/1) given as a typed value, canonically: the "
        "result must be expected.frame. Then decode expected.frame in that context "
        "(04-nat-traversal.md 3): it must be accepted and give input.message back.",
    )
    voucher_live = cbor2.loads(live["reservation"])[4]
    # (comment, protocol, message, live name or None, flags, requirement)
    # fmt: off
    messages: list[tuple[str, str, dict[int, object], str | None, list[str], str]] = [
        ("RESERVE", "relay", {0: 2}, "reserve", ["Live"], "NAT-R31"),
        ("04-nat-traversal.md 6.3: RESERVATION until 1700003600 with the recommended limits "
         "and the example's voucher", "relay",
         {0: 4, 1: NAT_EXPIRES, 2: 1800, 3: 64 << 20, 4: spec_voucher}, "reservation",
         ["SpecExample", "Live"], "NAT-R32"),
        ("CONNECT to the reservation's holder", "relay", {0: 6, 1: holder}, "connect", ["Live"],
         "NAT-R34"),
        ("INCOMING from the source, with the circuit's limits", "relay",
         {0: 8, 1: source, 2: 1800, 3: 64 << 20}, "incoming", ["Live", "Seeded"], "NAT-R34"),
        ("STATUS 0: the target accepts", "relay", {0: 10, 1: 0}, "status-accept", ["Live"],
         "NAT-R34"),
        ("STATUS 0 with the limits: the relay opens the circuit", "relay",
         {0: 10, 1: 0, 2: 1800, 3: 64 << 20}, "status-open", ["Live"], "NAT-R34"),
        ("STATUS NAT_RELAY_NO_RESERVATION (0x0733)", "relay", {0: 10, 1: 0x0733},
         "status-no-reservation", ["Live"], "NAT-R34"),
        ("STATUS NAT_RELAY_IP_LIMIT (0x0732)", "relay", {0: 10, 1: 0x0732}, "status-ip-limit",
         ["Live"], "NAT-R31"),
        ("punch CONNECT, round 1, the initiator's two candidates", "punch",
         {0: 2, 1: 1, 2: [a4, lan]}, "punch-connect", ["Live"], "NAT-R43"),
        ("punch CONNECT, the responder's answer", "punch",
         {0: 2, 1: 1, 2: [address_value(("203.0.113.50", 4000))]}, "punch-answer", ["Live"],
         "NAT-R41"),
        ("punch SYNC, round 1", "punch", {0: 4, 1: 1}, "punch-sync", ["Live"], "NAT-R41"),
        ("punch CONNECT, round 3, 8 candidates", "punch", {0: 2, 1: 3, 2: candidates8}, None,
         ["Boundary", "Rounds"], "NAT-R43"),
        ("punch CONNECT of round 2 without candidates", "punch", {0: 2, 1: 2, 2: []},
         None, ["Rounds"], "NAT-R43"),
        ("punch CONNECT with an IPv6 candidate", "punch", {0: 2, 1: 1, 2: [a6]}, None,
         ["Ipv6"], "NAT-R43"),
        ("DIAL_REQUEST for 198.51.100.10:4000", "dial-back", {0: 2, 1: nonce16, 2: a4},
         "dial-request", ["Live", "Seeded"], "NAT-R13"),
        ("DIAL_RESPONSE 0 with the observed address", "dial-back", {0: 4, 1: 0, 2: a4},
         "dial-response", ["Live"], "NAT-R14"),
        ("DIAL_RESPONSE NAT_DIAL_BACK_ADDRESS (0x0710) for a request naming 203.0.113.99",
         "dial-back", {0: 4, 1: 0x0710, 2: a4}, "dial-refused", ["Live", "Amplification"],
         "NAT-R13"),
        ("DIAL_BACK control body", "control", {0: 36, 1: nonce16}, "dial-back", ["Live"],
         "NAT-R13"),
    ]
    # fmt: on
    if voucher_live != spec_voucher:
        abort("the live relay's voucher is not the spec's")
    for comment, protocol, message, live_name, flags, requirement in messages:
        frame = nat_frame(message)
        if live_name is not None and live[live_name] != frame:
            abort(f"{comment}: the live core sent {live[live_name].hex()}, not {frame.hex()}")
        kind, fields = nat.decode_message(NAT_PROTOCOLS[protocol], frame)
        if kind != message[0] or fields is None:
            abort(f"{comment}: decode_message does not accept it")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"protocol": protocol, "message": typed(message)},
               expected={"frame": frame.hex()})  # fmt: skip
    if live["reservation"].hex()[:32] != SPEC_NAT["reservation-head"]:
        abort("04-nat-traversal.md 6.3: the RESERVATION's head differs")

    # -- decoding -----------------------------------------------------------------------------
    tests = vf.group(
        "nat-decode",
        "Decode input.frame as a message of context input.protocol (04-nat-traversal.md 3): "
        "at most 1024 bytes, depth 4, no tags, a typed message of that context, its field "
        "table, then its addresses (3.3). Valid: expected.messageType and expected.known "
        "(false for an unknown odd type, which is ignored). Invalid: the CBOR_* or SCHEMA_* "
        "code of the fault (on the wire, every one of them is NAT_MALFORMED).",
    )
    tag8, nonce8, mac16 = seeded_bytes("nat/tag", 8), seeded_bytes("nat/nonce", 8), bytes(16)
    ping_body = {0: 32, 1: tag8, 2: nonce8, 3: a4, 4: mac16}
    over_depth = b"\xa3\x00\x02\x01\x01\x02\x81\x81\x81\x80"  # {0: 2, 1: 1, 2: [[[[]]]]}

    def sized(size: int) -> bytes:
        """A RESERVATION of exactly ``size`` bytes, padded in an odd key."""
        for pad in range(size):
            frame = nat_frame({0: 4, 1: 1, 2: 1, 3: 1, 4: bytes(512), 5: bytes(pad)})
            if len(frame) == size:
                return frame
        abort(f"no padding gives a frame of {size} bytes")

    # (comment, protocol, frame, flags, requirement, error or None, (type, known) when valid)
    # fmt: off
    DecodeCase = tuple[str, str, bytes, list[str], str, str | None, tuple[int, bool] | None]
    decode_cases: list[DecodeCase] = [
        ("PATH_PING (any MAC: decoding does not check it)", "control", nat_frame(ping_body),
         ["Seeded"], "NAT-R1", None, (32, True)),
        ("PATH_PONG with an unknown odd key 5", "control",
         nat_frame({**ping_body, 0: 34, 5: "later"}), ["Extension"], "MSG-R2", None, (34, True)),
        ("an unknown odd control type 33: ignored", "control", nat_frame({0: 33, 1: b""}),
         ["Extensibility"], "MSG-R3", None, (33, False)),
        ("STATUS without limits", "relay", nat_frame({0: 10, 1: 0x0736}), [], "NAT-R2", None,
         (10, True)),
        ("an unknown odd relay type 11: ignored", "relay", nat_frame({0: 11}),
         ["Extensibility"], "MSG-R3", None, (11, False)),
        ("DIAL_RESPONSE without the observed address", "dial-back", nat_frame({0: 4, 1: 0}),
         [], "NAT-R2", None, (4, True)),
        ("punch CONNECT with 8 candidates", "punch", nat_frame({0: 2, 1: 1, 2: candidates8}),
         ["Boundary"], "NAT-R2", None, (2, True)),
        ("a frame of exactly 1024 bytes", "relay", sized(1024), ["Boundary"],
         "NAT-R2", None, (4, True)),
        ("a DHT type (PING, 2) is no NAT control message", "control", nat_frame({0: 2}),
         ["Extensibility"], "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", None),
        ("a relay type 12, even and unknown", "relay", nat_frame({0: 12}), ["Extensibility"],
         "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", None),
        ("a relay RESERVATION type in the punch context", "punch", nat_frame({0: 10, 1: 0}),
         ["Extensibility"], "MSG-R3", "SCHEMA_UNKNOWN_MESSAGE_TYPE", None),
        ("no type", "relay", nat_frame({1: holder}), ["Structure"], "MSG-R3",
         "SCHEMA_MISSING_FIELD", None),
        ("an array, not a map", "punch", nat_frame([4, 1]), ["Structure"], "MSG-R1",
         "SCHEMA_TYPE", None),
        ("PATH_PING without its MAC", "control", nat_frame({k: v for k, v in ping_body.items()
                                                           if k != 4}),
         ["Structure"], "MSG-R1", "SCHEMA_MISSING_FIELD", None),
        ("PATH_PING with a MAC of 32 bytes", "control", nat_frame({**ping_body, 4: bytes(32)}),
         ["Structure"], "MSG-R1", "SCHEMA_VALUE", None),
        ("PATH_PING with a tag of 7 bytes", "control", nat_frame({**ping_body, 1: tag8[:7]}),
         ["Structure"], "MSG-R1", "SCHEMA_VALUE", None),
        ("PATH_PING whose address has port 0", "control",
         nat_frame({**ping_body, 3: [ip_packed("198.51.100.10"), 0]}), ["Structure"], "NAT-R3",
         "SCHEMA_VALUE", None),
        ("PATH_PING whose address has 3 elements", "control",
         nat_frame({**ping_body, 3: [*a4, 1]}), ["Structure"], "NAT-R3", "SCHEMA_VALUE", None),
        ("PATH_PING whose address IP is 5 bytes", "control",
         nat_frame({**ping_body, 3: [bytes(5), 4000]}), ["Structure"], "NAT-R3", "SCHEMA_VALUE",
         None),
        ("PATH_PING whose address IP is text", "control",
         nat_frame({**ping_body, 3: ["198.51.100.10", 4000]}), ["Structure"], "NAT-R3",
         "SCHEMA_TYPE", None),
        ("PATH_PING whose address is a byte string", "control",
         nat_frame({**ping_body, 3: ip_packed("198.51.100.10")}), ["Structure"], "MSG-R1",
         "SCHEMA_TYPE", None),
        ("PATH_PING with an unknown even key 6", "control", nat_frame({**ping_body, 6: 0}),
         ["Extensibility"], "MSG-R2", "SCHEMA_UNKNOWN_CRITICAL_FIELD", None),
        ("DIAL_BACK with a nonce of 8 bytes", "control", nat_frame({0: 36, 1: nonce8}),
         ["Structure"], "MSG-R1", "SCHEMA_VALUE", None),
        ("RESERVATION without its voucher", "relay",
         nat_frame({0: 4, 1: NAT_EXPIRES, 2: 1800, 3: 1}), ["Structure"], "MSG-R1",
         "SCHEMA_MISSING_FIELD", None),
        ("RESERVATION with a voucher of 513 bytes", "relay",
         nat_frame({0: 4, 1: NAT_EXPIRES, 2: 1800, 3: 1, 4: bytes(513)}), ["Limits"], "MSG-R1",
         "SCHEMA_VALUE", None),
        ("RESERVATION with a duration of 0", "relay",
         nat_frame({0: 4, 1: NAT_EXPIRES, 2: 0, 3: 1, 4: spec_voucher}), ["Limits"], "MSG-R1",
         "SCHEMA_VALUE", None),
        ("CONNECT with a peer ID of 31 bytes", "relay", nat_frame({0: 6, 1: holder[:31]}),
         ["Structure"], "MSG-R1", "SCHEMA_VALUE", None),
        ("STATUS with code 65536", "relay", nat_frame({0: 10, 1: 65536}), ["Limits"], "MSG-R1",
         "SCHEMA_VALUE", None),
        ("STATUS with a negative code", "relay", nat_frame({0: 10, 1: -1}), ["Structure"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("INCOMING without its data limit", "relay", nat_frame({0: 8, 1: source, 2: 1800}),
         ["Structure"], "MSG-R1", "SCHEMA_MISSING_FIELD", None),
        ("punch CONNECT of round 4", "punch", nat_frame({0: 2, 1: 4, 2: []}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("punch CONNECT of round 0", "punch", nat_frame({0: 2, 1: 0, 2: []}), ["Limits"],
         "MSG-R1", "SCHEMA_VALUE", None),
        ("punch CONNECT with 9 candidates", "punch",
         nat_frame({0: 2, 1: 1, 2: [*candidates8, a4]}), ["Limits"], "MSG-R1", "SCHEMA_VALUE",
         None),
        ("punch CONNECT with a candidate of port 65536", "punch",
         nat_frame({0: 2, 1: 1, 2: [[ip_packed("192.0.2.1"), 65536]]}), ["Structure"],
         "NAT-R3", "SCHEMA_VALUE", None),
        ("punch CONNECT whose candidates are a map", "punch", nat_frame({0: 2, 1: 1, 2: {}}),
         ["Structure"], "MSG-R1", "SCHEMA_TYPE", None),
        ("punch SYNC with the round as text", "punch", nat_frame({0: 4, 1: "1"}),
         ["Structure"], "MSG-R1", "SCHEMA_TYPE", None),
        ("DIAL_REQUEST without an address", "dial-back", nat_frame({0: 2, 1: nonce16}),
         ["Structure"], "MSG-R1", "SCHEMA_MISSING_FIELD", None),
        ("DIAL_REQUEST whose address port is a string", "dial-back",
         nat_frame({0: 2, 1: nonce16, 2: [ip_packed("198.51.100.10"), "4000"]}), ["Structure"],
         "NAT-R3", "SCHEMA_TYPE", None),
        ("a frame of 1025 bytes", "relay", sized(1025), ["Limits"],
         "NAT-R2", "CBOR_TOO_LARGE", None),
        ("nesting deeper than 4 levels", "punch", over_depth, ["Limits"], "NAT-R2",
         "CBOR_TOO_DEEP", None),
        ("truncated", "relay", nat_frame({0: 6, 1: holder})[:-1], ["NotWellFormed"], "CBOR-R14",
         "CBOR_TRUNCATED", None),
        ("an empty frame", "dial-back", b"", ["NotWellFormed"], "CBOR-R14", "CBOR_TRUNCATED",
         None),
        ("two messages in one frame", "punch", nat_frame({0: 4, 1: 1}) * 2, ["NotWellFormed"],
         "CBOR-R13", "CBOR_TRAILING_BYTES", None),
        ("map keys out of order", "relay", b"\xa2\x01\x00\x00\x0a", ["NotWellFormed"],
         "CBOR-R9", "CBOR_MAP_KEY_ORDER", None),
        ("the type in a non-shortest head", "relay", b"\xa1\x00\x18\x02", ["NotWellFormed"],
         "CBOR-R2", "CBOR_NON_SHORTEST", None),
    ]
    # fmt: on
    for comment, protocol, frame, flags, requirement, error, verdict in decode_cases:
        context = NAT_PROTOCOLS[protocol]
        if error is None:
            assert verdict is not None
            kind, fields = nat.decode_message(context, frame)
            if (kind, fields is not None) != verdict:
                abort(f"{comment}: decode_message says {kind}, {fields is not None}")
            expected: Json = {"messageType": verdict[0], "known": verdict[1]}
        else:
            expect_error(lambda c=context, f=frame: nat.decode_message(c, f), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"protocol": protocol, "frame": frame.hex()}, expected=expected,
               error=error)  # fmt: skip

    # -- probe keys ---------------------------------------------------------------------------
    tests = vf.group(
        "probe-keys",
        "Derive a session's probe keys (04-nat-traversal.md 5.1) from the handshake hash "
        "input.handshakeHash and the Split() keys input.k1, input.k2: expected.sessionTag, "
        "expected.initiatorKey (probe_key(I)) and expected.responderKey (probe_key(R)).",
    )
    sessions = [
        ("04-nat-traversal.md 5.7: the session of 02-secure-session section 8",
         *(bytes.fromhex(NAT_SESSION[k]) for k in ("h", "k1", "k2")), ["SpecExample"]),
        ("seeded keys 'nat/session/1'", seed("nat/session/1/h"), seed("nat/session/1/k1"),
         seed("nat/session/1/k2"), ["Seeded"]),
        ("k1 and k2 swapped: every key differs", *(bytes.fromhex(NAT_SESSION[k])
                                                   for k in ("h", "k2", "k1")), []),
    ]  # fmt: skip
    for comment, h, k1, k2, flags in sessions:
        tag, ki, kr = nat_probe_keys(h, k1, k2)
        ours = nat.ProbeKeys.derive(h, k1, k2)
        if (ours.tag, ours.initiator, ours.responder) != (tag, ki, kr):
            abort(f"{comment}: ProbeKeys.derive differs from cryptography's HKDF")
        vf.add(tests, comment, flags=flags, requirement="NAT-R20",
               input={"handshakeHash": h.hex(), "k1": k1.hex(), "k2": k2.hex()},
               expected={"sessionTag": tag.hex(), "initiatorKey": ki.hex(),
                         "responderKey": kr.hex()})  # fmt: skip
    spec_h, spec_k1, spec_k2 = (bytes.fromhex(NAT_SESSION[k]) for k in ("h", "k1", "k2"))
    spec_tag, spec_ki, spec_kr = nat_probe_keys(spec_h, spec_k1, spec_k2)
    if [spec_tag.hex(), spec_ki.hex(), spec_kr.hex()] != SPEC_NAT["keys"]:
        abort("04-nat-traversal.md 5.7: the probe keys differ")

    # -- making probes --------------------------------------------------------------------------
    tests = vf.group(
        "probe-make",
        "Make a probe (04-nat-traversal.md 5.2) of type input.type (32 PATH_PING, 34 "
        "PATH_PONG) on network input.networkId, sent by input.sender (the Noise initiator or "
        "responder) of the session whose keys derive from input.handshakeHash, input.k1 and "
        "input.k2, with nonce input.nonce and the address input.address: expected.datagram, "
        "header included.",
    )
    spec_nonce = bytes.fromhex("0102030405060708")
    rsp_addr, req_addr = ("198.51.100.7", 4000), ("192.0.2.1", 4000)
    probe_cases = [
        ("04-nat-traversal.md 5.7: the initiator's PATH_PING to 198.51.100.7:4000",
         main_net, "initiator", 32, spec_nonce, rsp_addr, ["SpecExample", "Live"]),
        ("04-nat-traversal.md 5.7: the responder's PATH_PONG, seen from 192.0.2.1:4000",
         main_net, "responder", 34, spec_nonce, req_addr, ["SpecExample", "Live"]),
        ("a PATH_PING of the responder to [2001:db8::1]:4000", main_net, "responder", 32,
         seeded_bytes("nat/probe/nonce", 8), ("2001:db8::1", 4000), ["Ipv6", "Seeded"]),
        ("a PATH_PING on network starling-lab", lab_net, "initiator", 32, spec_nonce,
         rsp_addr, ["Network"]),
    ]  # fmt: skip
    made: dict[str, bytes] = {}
    for comment, network, sender, kind, nonce, addr, flags in probe_cases:
        key = spec_ki if sender == "initiator" else spec_kr
        datagram = nat_probe(key, network, kind, spec_tag, nonce, address_value(addr))
        role = ses.Role.INITIATOR if sender == "initiator" else ses.Role.RESPONDER
        keys = nat.ProbeKeys.derive(spec_h, spec_k1, spec_k2)
        if nat.make_probe(keys, role, network, kind, nonce, addr) != datagram:
            abort(f"{comment}: make_probe differs from the probe built here")
        if "Live" in flags:
            paths = nat.PathProbes(keys, role, network, ScriptedRng("nat/probe", nonce), 0.0)
            if kind == 32:
                paths.probe(addr, 0.0)
            else:
                paths.receive(made["ping"], addr, 0.0)
            ((sent_datagram, to),) = paths.datagrams_to_send(0.0)
            if sent_datagram != datagram or to != addr:
                abort(f"{comment}: the live PathProbes sent {sent_datagram.hex()} to {to}")
            made["ping" if kind == 32 else "pong"] = datagram
        vf.add(tests, comment, flags=flags, requirement="NAT-R21",
               input={"handshakeHash": spec_h.hex(), "k1": spec_k1.hex(), "k2": spec_k2.hex(),
                      "networkId": network.hex(), "sender": sender, "type": kind,
                      "nonce": nonce.hex(), "address": nat_addr(addr)},
               expected={"datagram": datagram.hex()})  # fmt: skip
    if made["ping"].hex() != SPEC_NAT["ping"] or made["pong"].hex() != SPEC_NAT["pong"]:
        abort("04-nat-traversal.md 5.7: the PATH_PING or PATH_PONG example differs")

    # -- checking probes ------------------------------------------------------------------------
    tests = vf.group(
        "probe-open",
        "input.receiver (the Noise initiator or responder of the session whose keys derive "
        "from input.handshakeHash, input.k1, input.k2), on network input.networkId, checks "
        "input.datagram as a probe (04-nat-traversal.md 5.3). Valid: expected.type, "
        "expected.nonce and expected.address. Invalid: the first failing check's code.",
    )
    other_tag, other_ki, _ = nat_probe_keys(seed("nat/other/h"), seed("nat/other/k1"),
                                            seed("nat/other/k2"))  # fmt: skip
    ping = made["ping"]
    flipped = bytearray(ping)
    flipped[-20] ^= 0x01  # the port, under the MAC
    relabelled = b"\x0c\x01" + lab_net + ping[6:]  # another network's header, same body
    extended = nat_probe(spec_ki, main_net, 32, spec_tag, spec_nonce, address_value(rsp_addr),
                         {5: "later"})  # fmt: skip
    # (comment, receiver, network, datagram, flags, requirement, error)
    # fmt: off
    open_cases: list[tuple[str, str, bytes, bytes, list[str], str, str | None]] = [
        ("04-nat-traversal.md 5.7: the responder checks the initiator's PATH_PING", "responder",
         main_net, ping, ["SpecExample"], "NAT-R22", None),
        ("04-nat-traversal.md 5.7: the initiator checks the responder's PATH_PONG", "initiator",
         main_net, made["pong"], ["SpecExample"], "NAT-R22", None),
        ("a PATH_PING with an unknown odd key 5, under the MAC", "responder", main_net,
         extended, ["Extension"], "NAT-R21", None),
        ("the PATH_PING presented to its own sender", "initiator", main_net, ping,
         ["Reflected"], "NAT-R22", "NAT_PROBE_AUTH"),
        ("the PATH_PING with its port changed after the MAC", "responder", main_net,
         bytes(flipped), ["Forged"], "NAT-R22", "NAT_PROBE_AUTH"),
        ("the PATH_PING's body under the header of network starling-lab", "responder",
         lab_net, relabelled, ["Forged", "Network"], "NAT-R21", "NAT_PROBE_AUTH"),
        ("a PATH_PING of another session (its tag and keys)", "responder", main_net,
         nat_probe(other_ki, main_net, 32, other_tag, spec_nonce, address_value(rsp_addr)),
         ["Forged"], "NAT-R22", "NAT_PROBE_AUTH"),
        ("this session's tag with another session's key", "responder", main_net,
         nat_probe(other_ki, main_net, 32, spec_tag, spec_nonce, address_value(rsp_addr)),
         ["Forged"], "NAT-R22", "NAT_PROBE_AUTH"),
        ("a PATH_PING with an all-zero MAC", "responder", main_net,
         b"\x0c\x01" + main_net + nat_frame({**cbor2.loads(ping[6:]), 4: bytes(16)}),
         ["Forged"], "NAT-R22", "NAT_PROBE_AUTH"),
        ("a DIAL_BACK where a probe is checked", "responder", main_net,
         b"\x0c\x01" + main_net + live["dial-back"], [], "NAT-R22",
         "NAT_UNEXPECTED_MESSAGE"),
        ("a PATH_PING whose MAC is 15 bytes", "responder", main_net,
         b"\x0c\x01" + main_net + nat_frame({**cbor2.loads(ping[6:]), 4: bytes(15)}),
         ["Structure"], "NAT-R1", "NAT_MALFORMED"),
        ("a QUIC packet (first byte 0x40 set)", "responder", main_net, b"\x40" + ping[1:], [],
         "NAT-R1", "NAT_MALFORMED"),
    ]
    # fmt: on
    keys = nat.ProbeKeys.derive(spec_h, spec_k1, spec_k2)
    for comment, receiver, network, datagram, flags, requirement, error in open_cases:
        role = ses.Role.INITIATOR if receiver == "initiator" else ses.Role.RESPONDER
        if error is None:
            probe = nat.open_probe(keys, role, network, datagram)
            body = cbor2.loads(datagram[6:])
            sender_key = spec_ki if receiver == "responder" else spec_kr
            rebuilt = nat_probe(sender_key, network, body[0], body[1], body[2], body[3],
                                {k: v for k, v in body.items() if k > 4})  # fmt: skip
            if rebuilt != datagram:
                abort(f"{comment}: the MAC computed here does not match")
            ip, port = body[3]
            if (probe.kind, probe.nonce, probe.address) != (body[0], body[2], (
                    str(ipaddress.ip_address(ip)), port)):  # fmt: skip
                abort(f"{comment}: open_probe reads other fields")
            expected = {"type": body[0], "nonce": body[2].hex(),
                        "address": {"ip": ip.hex(), "port": port}}  # fmt: skip
        else:
            expect_error(lambda r=role, n=network, d=datagram: nat.open_probe(keys, r, n, d),
                         error, comment)  # fmt: skip
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"handshakeHash": spec_h.hex(), "k1": spec_k1.hex(), "k2": spec_k2.hex(),
                      "networkId": network.hex(), "receiver": receiver,
                      "datagram": datagram.hex()},
               expected=expected, error=error)  # fmt: skip

    # -- vouchers ---------------------------------------------------------------------------
    tests = vf.group(
        "voucher-sign",
        "The voucher (04-nat-traversal.md 6.3) a relay whose identity derives from "
        "input.relaySeed signs for input.peer, expiring at input.expires (Unix seconds, a "
        "decimal string): expected.voucher.",
    )
    sign_cases = [
        ("04-nat-traversal.md 6.3: RFC 8032 TEST 2's relay for 01-identity's running example",
         NAT_RELAY_SEED, holder, NAT_EXPIRES, ["SpecExample", "Live"]),
        ("seeded relay 'nat/relay/2', expiry 0", seed("nat/relay/2"), source, 0,
         ["Seeded", "Boundary"]),
        ("expiry 2**64-1", NAT_RELAY_SEED, holder, 2**64 - 1, ["Boundary"]),
    ]  # fmt: skip
    for comment, relay_seed, peer, expires, flags in sign_cases:
        raw = nat_voucher(relay_seed, {1: peer_id_of(relay_seed), 2: peer, 3: expires})
        if nat.make_voucher(identity.PrivateKey(relay_seed), peer, expires) != raw:
            abort(f"{comment}: make_voucher differs from the voucher signed here")
        vf.add(tests, comment, flags=flags, requirement="NAT-R32",
               input={"relaySeed": relay_seed.hex(), "peer": peer.hex(), "expires": str(expires)},
               expected={"voucher": raw.hex()})  # fmt: skip

    tests = vf.group(
        "voucher",
        "Check input.voucher expecting the relay input.relay and the holder input.peer at "
        "Unix time input.now (a decimal string), in the order of 04-nat-traversal.md 6.3. "
        "Valid: expected.relay, expected.peer and expected.expires (a decimal string). "
        "Invalid: the first failing step's code.",
        cddl={"file": "spec/cddl/nat.cddl", "rule": "voucher-envelope", "field": "voucher"},
    )
    payload = cbor2.dumps({1: relay_id, 2: holder, 3: NAT_EXPIRES}, canonical=True)
    good_sig = cbor2.loads(spec_voucher)[3]
    malleable = good_sig[:32] + (int.from_bytes(good_sig[32:], "little") + L).to_bytes(32, "little")
    if not lax_verifies(ed25519_public(NAT_RELAY_SEED), signing_input(NAT_VOUCHER_DOMAIN, payload),
                        malleable):  # fmt: skip
        abort("the S + L voucher signature does not satisfy the lax equation")
    other_relay = seed("nat/relay/other")

    def padded_voucher(size: int) -> bytes:
        for pad in range(size):
            raw = nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: holder, 3: NAT_EXPIRES,
                                               5: bytes(pad)})  # fmt: skip
            if len(raw) == size:
                return raw
        abort(f"no padding gives a voucher of {size} bytes")

    v_flip = bytearray(spec_voucher)
    v_flip[-70] ^= 0x01  # inside the payload
    # (comment, voucher, relay, peer, now, flags, error)
    # fmt: off
    voucher_cases: list[tuple[str, bytes, bytes, bytes, int, list[str], str | None]] = [
        ("04-nat-traversal.md 6.3: the example, a second before it expires", spec_voucher,
         relay_id, holder, NAT_EXPIRES - 1, ["SpecExample"], None),
        ("an unknown odd key 5 in the payload", nat_voucher(NAT_RELAY_SEED, {
            1: relay_id, 2: holder, 3: NAT_EXPIRES, 5: "later"}), relay_id, holder, NAT_NOW,
         ["Extension"], None),
        ("the example at its expiry", spec_voucher, relay_id, holder, NAT_EXPIRES,
         ["Expired", "Boundary"], "NAT_VOUCHER_EXPIRED"),
        ("the example a day after its expiry", spec_voucher, relay_id, holder,
         NAT_EXPIRES + 86400, ["Expired"], "NAT_VOUCHER_EXPIRED"),
        ("expected from another relay", spec_voucher, peer_id_of(other_relay), holder, NAT_NOW,
         ["Mismatch"], "NAT_VOUCHER_MISMATCH"),
        ("presented by another peer than its holder", spec_voucher, relay_id, source, NAT_NOW,
         ["Mismatch"], "NAT_VOUCHER_MISMATCH"),
        ("another relay's voucher naming this relay: signer and relay differ",
         nat_voucher(other_relay, {1: relay_id, 2: holder, 3: NAT_EXPIRES}), relay_id, holder,
         NAT_NOW, ["Forged"], "NAT_VOUCHER_INVALID"),
        ("signed under starling/dht-record/1", nat_voucher(NAT_RELAY_SEED, {
            1: relay_id, 2: holder, 3: NAT_EXPIRES}, domain=DHT_RECORD_DOMAIN), relay_id, holder,
         NAT_NOW, ["WrongDomain"], "NAT_VOUCHER_INVALID"),
        ("signed under starling/test/1", nat_voucher(NAT_RELAY_SEED, {
            1: relay_id, 2: holder, 3: NAT_EXPIRES}, domain=TEST_DOMAIN), relay_id, holder,
         NAT_NOW, ["WrongDomain"], "NAT_VOUCHER_INVALID"),
        ("a payload bit flipped after signing", bytes(v_flip), relay_id, holder, NAT_NOW,
         ["Forged"], "NAT_VOUCHER_INVALID"),
        ("signature with S + L", cbor2.dumps({1: ed25519_public(NAT_RELAY_SEED), 2: payload,
                                             3: malleable}),
         relay_id, holder, NAT_NOW, ["LaxVerifies"], "NAT_VOUCHER_INVALID"),
        ("no expiry", nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: holder}), relay_id, holder,
         NAT_NOW, ["Structure"], "NAT_VOUCHER_INVALID"),
        ("an unknown even key 4 in the payload", nat_voucher(NAT_RELAY_SEED, {
            1: relay_id, 2: holder, 3: NAT_EXPIRES, 4: 0}), relay_id, holder, NAT_NOW,
         ["Structure"], "NAT_VOUCHER_INVALID"),
        ("an envelope with an extra key 5", cbor2.dumps({**cbor2.loads(spec_voucher), 5: 0}),
         relay_id, holder, NAT_NOW, ["Structure"], "NAT_VOUCHER_INVALID"),
        ("a voucher of exactly 512 bytes", padded_voucher(512), relay_id, holder, NAT_NOW,
         ["Limits", "Boundary"], None),
        ("a voucher of 513 bytes", padded_voucher(513), relay_id, holder, NAT_NOW,
         ["Limits"], "NAT_VOUCHER_INVALID"),
    ]
    # fmt: on
    for comment, raw, relay, peer, now, flags, error in voucher_cases:
        if error is None:
            fields = cbor2.loads(raw)
            nacl.signing.VerifyKey(fields[1]).verify(
                signing_input(NAT_VOUCHER_DOMAIN, fields[2]), fields[3]
            )
            body = cbor2.loads(fields[2])
            checked = nat.verify_voucher(raw, relay, peer, now)
            if (checked.relay, checked.peer, checked.expires) != (body[1], body[2], body[3]):
                abort(f"{comment}: verify_voucher reads other fields than cbor2")
            expected = {"relay": body[1].hex(), "peer": body[2].hex(), "expires": str(body[3])}
        else:
            expect_error(lambda r=raw, a=relay, p=peer, n=now: nat.verify_voucher(r, a, p, n),
                         error, comment)  # fmt: skip
            expected = {}
        vf.add(tests, comment, flags=flags, requirement="NAT-R33",
               input={"voucher": raw.hex(), "relay": relay.hex(), "peer": peer.hex(),
                      "now": str(now)},
               expected=expected, error=error)  # fmt: skip

    # -- observed addresses -------------------------------------------------------------------
    tests = vf.group(
        "observed-address",
        "A node received the reports input.reports (each: the reporter's peer ID, its "
        "address, the address it observed, and the time in seconds the report came); it is "
        "now input.now. With a lifetime of 600 s, reporters counted once per IPv4 /24 or "
        "IPv6 /48 (loopback: per peer ID) and 3 needed (04-nat-traversal.md 4.1-4.3): "
        "expected.confirmed, the confirmed addresses with their count of reporters (most "
        "first, then by IP bytes and port), and expected.mapping for IPv4 and IPv6.",
    )
    obs = ("198.51.100.10", 4000)
    reporter_ids = [peer_id_of(seed(f"nat/reporter/{i}")) for i in range(8)]

    def report(i: int, at: tuple[str, int], seen: tuple[str, int], when: int = 0) -> Json:
        return {"reporter": reporter_ids[i].hex(), "address": nat_addr(at),
                "observed": nat_addr(seen), "time": when}  # fmt: skip

    r_a, r_b, r_c, r_d = ("203.0.113.10", 4000), ("203.0.113.11", 4000), ("192.0.2.7", 4000), (
        "198.18.0.3", 4000)  # fmt: skip
    # (comment, reports, now, flags, requirement)
    # fmt: off
    observed_cases: list[tuple[str, list[Json], int, list[str], str]] = [
        ("04-nat-traversal.md 4.2: three reporters, two in one /24: not confirmed",
         [report(0, r_a, obs), report(1, r_b, obs), report(2, r_c, obs)], 10,
         ["SpecExample", "Prefix"], "NAT-R10"),
        ("04-nat-traversal.md 4.2: a fourth reporter in another prefix confirms it with 3",
         [report(0, r_a, obs), report(1, r_b, obs), report(2, r_c, obs), report(3, r_d, obs)],
         10, ["SpecExample", "Prefix"], "NAT-R10"),
        ("three reporters in three prefixes: confirmed; endpoint-independent",
         [report(0, r_a, obs), report(2, r_c, obs), report(3, r_d, obs)], 10, [], "NAT-R10"),
        ("each reporter saw another port: nothing confirmed; endpoint-dependent",
         [report(0, r_a, ("198.51.100.10", 28496)), report(2, r_c, ("198.51.100.10", 19252)),
          report(3, r_d, ("198.51.100.10", 40001))], 10, [], "NAT-R12"),
        ("a reporter's later report replaces its earlier one",
         [report(0, r_a, obs, 0), report(2, r_c, obs, 0), report(3, r_d, obs, 0),
          report(3, r_d, ("198.51.100.10", 5000), 5)], 10, [], "NAT-R10"),
        ("one report older than 600 s: the rest do not confirm",
         [report(0, r_a, obs, 0), report(2, r_c, obs, 500), report(3, r_d, obs, 500)], 600,
         ["Expiry"], "NAT-R11"),
        ("reports 599 s old still count", [report(0, r_a, obs, 1), report(2, r_c, obs, 1),
                                           report(3, r_d, obs, 1)], 600, ["Expiry"], "NAT-R11"),
        ("one reporter only: mapping unknown", [report(0, r_a, obs)], 10, [], "NAT-R12"),
        ("IPv6 reporters in distinct /48s confirm an IPv6 address",
         [report(0, ("2001:db8:1::1", 4000), ("2001:db8:ff::10", 4000)),
          report(1, ("2001:db8:2::1", 4000), ("2001:db8:ff::10", 4000)),
          report(2, ("2001:db8:3::1", 4000), ("2001:db8:ff::10", 4000)),
          report(3, r_a, obs)], 10, ["Ipv6"], "NAT-R10"),
        ("IPv6 reporters in one /48 count once", [
            report(0, ("2001:db8:1::1", 4000), ("2001:db8:ff::10", 4000)),
            report(1, ("2001:db8:1:2::1", 4000), ("2001:db8:ff::10", 4000)),
            report(2, ("2001:db8:1:3::1", 4000), ("2001:db8:ff::10", 4000))], 10,
         ["Ipv6", "Prefix"], "NAT-R10"),
        ("loopback reporters count per peer ID", [
            report(0, ("127.0.0.1", 4001), ("127.0.0.1", 5000)),
            report(1, ("127.0.0.1", 4002), ("127.0.0.1", 5000)),
            report(2, ("127.0.0.1", 4003), ("127.0.0.1", 5000))], 10, [], "NAT-R10"),
        ("two addresses confirmed: the one with more reporters first", [
            report(0, r_a, ("198.51.100.10", 4001)), report(2, r_c, ("198.51.100.10", 4001)),
            report(3, r_d, ("198.51.100.10", 4001)), report(4, ("203.0.114.1", 1),
                                                             ("198.51.100.10", 4000)),
            report(5, ("203.0.115.1", 1), ("198.51.100.10", 4000)),
            report(6, ("203.0.116.1", 1), ("198.51.100.10", 4000)),
            report(7, ("203.0.117.1", 1), ("198.51.100.10", 4000))], 10, [], "NAT-R10"),
    ]
    # fmt: on

    def model(reports: list[Json], now: int) -> Json:
        """04-nat-traversal.md 4.1-4.3 written out."""
        latest: dict[str, Json] = {}
        for r in reports:
            latest[r["reporter"]] = r  # in order: later reports replace earlier ones
        live_reports = [r for r in latest.values() if r["time"] > now - 600]
        groups: dict[tuple[str, int], set[str]] = {}
        for r in live_reports:
            ip = ipaddress.ip_address(bytes.fromhex(r["address"]["ip"]))
            if ip.is_loopback:
                group = r["reporter"]
            else:
                bits = 24 if ip.version == 4 else 48
                group = str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
            key = (r["observed"]["ip"], r["observed"]["port"])
            groups.setdefault(key, set()).add(group)
        confirmed = sorted(((k, len(g)) for k, g in groups.items() if len(g) >= 3),
                           key=lambda e: (-e[1], bytes.fromhex(e[0][0]), e[0][1]))  # fmt: skip
        mapping: Json = {}
        for family, size in (("v4", 4), ("v6", 16)):
            mine = [r for r in live_reports if len(bytes.fromhex(r["observed"]["ip"])) == size]
            dests = {(r["address"]["ip"], r["address"]["port"]) for r in mine}
            seen = {(r["observed"]["ip"], r["observed"]["port"]) for r in mine}
            mapping[family] = ("unknown" if len(dests) < 2 else "endpoint-dependent"
                               if len(seen) > 1 else "endpoint-independent")  # fmt: skip
        return {"confirmed": [{"address": {"ip": ip, "port": port}, "reporters": n}
                              for (ip, port), n in confirmed], "mapping": mapping}  # fmt: skip

    for comment, reports, now, flags, requirement in observed_cases:
        expected = model(reports, now)
        if run_observed(reports, now) != expected:
            abort(f"{comment}: Reachability says {run_observed(reports, now)}, not {expected}")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"reports": reports, "now": now}, expected=expected)  # fmt: skip

    # -- dial-back addresses ------------------------------------------------------------------
    tests = vf.group(
        "dial-back-check",
        "A helper whose session with a requester comes from input.observed receives a "
        "DIAL_REQUEST naming input.requested (04-nat-traversal.md 4.4, step 3). Valid: "
        "expected.probeTo, where the probe goes. Invalid: NAT_DIAL_BACK_ADDRESS.",
    )
    seen_at = ("198.51.100.10", 4000)
    # fmt: off
    dial_cases: list[tuple[str, tuple[str, int], tuple[str, int], list[str], str | None]] = [
        ("04-nat-traversal.md 4.4: the observed address itself", seen_at, seen_at,
         ["SpecExample"], None),
        ("04-nat-traversal.md 4.4: the same IP, another port", seen_at,
         ("198.51.100.10", 61000), ["SpecExample"], None),
        ("04-nat-traversal.md 4.4: another IP", seen_at, ("203.0.113.50", 4000),
         ["SpecExample", "Amplification"], "NAT_DIAL_BACK_ADDRESS"),
        ("the neighbour in the requester's /24", seen_at, ("198.51.100.11", 4000),
         ["Amplification"], "NAT_DIAL_BACK_ADDRESS"),
        ("the IPv4-mapped IPv6 form of the requester's IP", seen_at,
         ("::ffff:198.51.100.10", 4000), ["Amplification", "Ipv6"], "NAT_DIAL_BACK_ADDRESS"),
        ("IPv6, the same address, port 1", ("2001:db8::10", 4000), ("2001:db8::10", 1),
         ["Ipv6", "Boundary"], None),
        ("IPv6, another address in the requester's /64", ("2001:db8::10", 4000),
         ("2001:db8::11", 4000), ["Ipv6", "Amplification"], "NAT_DIAL_BACK_ADDRESS"),
    ]
    # fmt: on
    for comment, observed, requested, flags, error in dial_cases:
        same = ip_packed(observed[0]) == ip_packed(requested[0])
        if (error is None) != same:
            abort(f"{comment}: 4.4 step 3 says otherwise")
        if error is None:
            if nat.check_dial_back(observed, requested) != (observed[0], requested[1]):
                abort(f"{comment}: check_dial_back sends elsewhere")
            expected = {"probeTo": nat_addr((observed[0], requested[1]))}
        else:
            expect_error(lambda o=observed, r=requested: nat.check_dial_back(o, r), error,
                         comment)  # fmt: skip
            expected = {}
        vf.add(tests, comment, flags=flags, requirement="NAT-R13",
               input={"observed": nat_addr(observed), "requested": nat_addr(requested)},
               expected=expected, error=error)  # fmt: skip

    # -- relay reservations -------------------------------------------------------------------
    tests = vf.group(
        "relay-reserve",
        "A relay whose identity derives from input.relaySeed, with the limits input.config, "
        "offering relaying when input.serving, holds a reservation for each of input.held "
        "(peer ID and the IP its session comes from). At Unix time input.now (a decimal "
        "string) input.incoming sends RESERVE (04-nat-traversal.md 6.2). Valid: "
        "expected.frame, the RESERVATION (its expiry input.now + reservationTtl). Invalid: "
        "the code of the STATUS that refuses it.",
    )
    peers = [peer_id_of(seed(f"nat/peer/{i}")) for i in range(6)]
    ip_a, ip_b, ip_c = "198.51.100.10", "203.0.113.50", "2001:db8:5::1"

    def held(*pairs: tuple[int, str]) -> list[Json]:
        return [{"peer": peers[i].hex(), "ip": ip_packed(ip).hex()} for i, ip in pairs]

    def cfg(**changes: int) -> Json:
        return {**NAT_DEFAULTS, **changes}

    # (comment, config, serving, held, incoming peer index (or -1: the holder), ip, flags, error)
    # fmt: off
    reserve_cases: list[tuple[str, Json, bool, list[Json], int, str, list[str], str | None]] = [
        ("04-nat-traversal.md 6.3: the example's holder, nothing held", cfg(), True, [], -1, ip_a,
         ["SpecExample"], None),
        ("a second reservation from the same IP, per-IP cap 2", cfg(maxReservationsPerIp=2),
         True, held((0, ip_a)), 1, ip_a, [], None),
        ("a third from the same IP, per-IP cap 2: refused", cfg(maxReservationsPerIp=2), True,
         held((0, ip_a), (1, ip_a)), 2, ip_a, ["Limits", "Boundary"], "NAT_RELAY_IP_LIMIT"),
        ("a renewal at the per-IP cap: granted (it does not count against itself)",
         cfg(maxReservationsPerIp=2), True, held((0, ip_a), (1, ip_a)), 1, ip_a, ["Limits"],
         None),
        ("the per-IP cap of another IP does not matter", cfg(maxReservationsPerIp=2), True,
         held((0, ip_a), (1, ip_a)), 2, ip_b, ["Limits"], None),
        ("IPv6: one /64 counts as one IP", cfg(maxReservationsPerIp=1), True,
         held((0, ip_c)), 1, "2001:db8:5::2", ["Limits", "Ipv6"], "NAT_RELAY_IP_LIMIT"),
        ("IPv6: another /64 is another IP", cfg(maxReservationsPerIp=1), True,
         held((0, ip_c)), 1, "2001:db8:5:1::1", ["Limits", "Ipv6"], None),
        ("total cap 3, three held: refused", cfg(maxReservations=3), True,
         held((0, ip_a), (1, ip_b), (2, "192.0.2.1")), 3, "192.0.2.2", ["Limits", "Boundary"],
         "NAT_RELAY_RESERVATION_LIMIT"),
        ("total cap 3, three held, a renewal: granted", cfg(maxReservations=3), True,
         held((0, ip_a), (1, ip_b), (2, "192.0.2.1")), 2, "192.0.2.1", ["Limits"], None),
        ("both caps reached: the per-IP cap is checked first",
         cfg(maxReservations=2, maxReservationsPerIp=2), True, held((0, ip_a), (1, ip_a)), 2,
         ip_a, ["Limits"], "NAT_RELAY_IP_LIMIT"),
        ("a relay that does not offer relaying", cfg(), False, [], 0, ip_a, [],
         "NAT_RELAY_NOT_SERVING"),
    ]
    # fmt: on
    for comment, config, serving, held_list, incoming, ip, flags, error in reserve_cases:
        who = holder if incoming < 0 else peers[incoming]
        verdict = reserve_model(config, serving, held_list, who, ip)
        if verdict != (error or "granted"):
            abort(f"{comment}: the model of 6.2 says {verdict}")
        frame = None
        if error is None:
            voucher = nat_voucher(NAT_RELAY_SEED, {
                1: relay_id, 2: who, 3: NAT_NOW + config["reservationTtl"]})  # fmt: skip
            frame = nat_frame({0: 4, 1: NAT_NOW + config["reservationTtl"],
                               2: config["circuitDuration"], 3: config["circuitData"],
                               4: voucher})  # fmt: skip
        given = {"relaySeed": NAT_RELAY_SEED.hex(), "config": config, "serving": serving,
                 "held": held_list, "incoming": {"peer": who.hex(), "ip": ip_packed(ip).hex()},
                 "now": str(NAT_NOW)}  # fmt: skip
        outcome = run_reserve(given)
        if outcome != (frame if frame is not None else error):
            abort(f"DISAGREEMENT on {comment!r}: a RelayCore answers {outcome!r}")
        if error is None and incoming < 0 and frame != live["reservation"]:
            abort(f"{comment}: not the live RESERVATION")
        vf.add(tests, comment, flags=flags, requirement="NAT-R31", input=given,
               expected={} if frame is None else {"frame": frame.hex()},
               error=error)  # fmt: skip

    # -- circuits -----------------------------------------------------------------------------
    tests = vf.group(
        "relay-connect",
        "A relay with the limits input.config, offering relaying when input.serving, holds "
        "reservations for input.reserved and has the circuits input.circuits open (each a "
        "source and a target). input.source sends CONNECT for input.target "
        "(04-nat-traversal.md 6.4). Valid: expected.incoming, the INCOMING the relay writes "
        "to the target. Invalid: the code of the STATUS that refuses it.",
    )
    s0, s1, t0, t1 = peers[0], peers[1], peers[2], peers[3]
    # (comment, config, serving, reserved, circuits, source, target, flags, error)
    # fmt: off
    connect_cases: list[tuple[str, Json, bool, list[bytes], list[tuple[bytes, bytes]], bytes,
                              bytes, list[str], str | None]] = [
        ("a target with a reservation", cfg(), True, [t0], [], s0, t0, [], None),
        ("a target without a reservation", cfg(), True, [t0], [], s0, t1, [],
         "NAT_RELAY_NO_RESERVATION"),
        ("a CONNECT to oneself", cfg(), True, [t0], [], t0, t0, [], "NAT_UNEXPECTED_MESSAGE"),
        ("2 circuits per peer: a third to the same target is refused",
         cfg(maxCircuitsPerPeer=2), True, [t0], [(s0, t0), (s1, t0)], peers[4], t0,
         ["Limits", "Boundary"], "NAT_RELAY_CIRCUIT_LIMIT"),
        ("2 circuits per peer: a third from the same source is refused",
         cfg(maxCircuitsPerPeer=2), True, [t0, t1, peers[5]], [(s0, t0), (s0, t1)], s0,
         peers[5], ["Limits", "Boundary"], "NAT_RELAY_CIRCUIT_LIMIT"),
        ("2 circuits per peer: another source to another target is fine",
         cfg(maxCircuitsPerPeer=2), True, [t0, t1], [(s0, t0), (s1, t0)], s1, t1, ["Limits"],
         None),
        ("2 circuits in all: a third is refused", cfg(maxCircuits=2), True, [t0, t1],
         [(s0, t0), (s1, t1)], peers[4], t1, ["Limits", "Boundary"], "NAT_RELAY_CIRCUIT_LIMIT"),
        ("a relay that does not offer relaying", cfg(), False, [], [], s0, t0, [],
         "NAT_RELAY_NOT_SERVING"),
        ("a shorter circuit: 120 s and 128 KiB", cfg(circuitDuration=120, circuitData=131072),
         True, [t0], [], s0, t0, ["Limits"], None),
    ]
    # fmt: on
    for comment, config, serving, reserved, circuits, src, dst, flags, error in connect_cases:
        verdict = connect_model(config, serving, reserved, circuits, src, dst)
        if verdict != (error or "open"):
            abort(f"{comment}: the model of 6.4 says {verdict}")
        given = {"config": config, "serving": serving, "reserved": [p.hex() for p in reserved],
                 "circuits": [{"source": a.hex(), "target": b.hex()} for a, b in circuits],
                 "source": src.hex(), "target": dst.hex()}  # fmt: skip
        incoming = None
        if error is None:
            incoming = nat_frame({0: 8, 1: src, 2: config["circuitDuration"],
                                  3: config["circuitData"]})  # fmt: skip
        outcome = run_connect(given)
        if outcome != (incoming if incoming is not None else error):
            abort(f"DISAGREEMENT on {comment!r}: a RelayCore answers {outcome!r}")
        vf.add(tests, comment, flags=flags, requirement="NAT-R34", input=given,
               expected={} if incoming is None else {"incoming": incoming.hex()},
               error=error)  # fmt: skip

    # -- forwarding ---------------------------------------------------------------------------
    tests = vf.group(
        "relay-forward",
        "An open circuit with the data limit input.dataLimit (bytes per direction) carries "
        "the frames input.packets in order, each from its circuit's source or target with "
        "the given size (04-nat-traversal.md 6.5, 6.6). Valid: expected.forwarded, the "
        "bytes forwarded source to target and target to source. Invalid: the code the relay "
        "ends the circuit with, which must happen on the last packet, and not before.",
    )

    def pk(*spec: tuple[str, int]) -> list[Json]:
        return [{"from": side, "size": size} for side, size in spec]

    # fmt: off
    forward_cases: list[tuple[str, int, list[Json], list[str], str, str | None]] = [
        ("three packets each way", 10000, pk(("source", 1200), ("target", 1200),
         ("source", 50), ("target", 1350), ("source", 1), ("target", 1500)), [], "NAT-R35", None),
        ("exactly the data limit in one direction", 3000,
         pk(("source", 1500), ("source", 1500), ("target", 100)), ["Boundary"], "NAT-R36", None),
        ("one byte beyond the data limit", 3000,
         pk(("source", 1500), ("target", 1500), ("source", 1500), ("source", 1)),
         ["Limits"], "NAT-R36", "NAT_RELAY_DATA_LIMIT"),
        ("the directions are counted apart", 2000,
         pk(("source", 1500), ("target", 1500), ("target", 500), ("source", 500)), [],
         "NAT-R36", None),
        ("an empty frame", 10000, pk(("source", 100), ("target", 0)), ["Limits"], "NAT-R35",
         "NAT_RELAY_PACKET_SIZE"),
        ("a frame of 1501 bytes", 10000, pk(("source", 1501)), ["Limits"], "NAT-R35",
         "NAT_RELAY_PACKET_SIZE"),
    ]
    # fmt: on
    for comment, limit, packets, flags, requirement, error in forward_cases:
        counted = [0, 0]
        verdict: str | None = None
        for i, packet in enumerate(packets):
            side = 0 if packet["from"] == "source" else 1
            if not 0 < packet["size"] <= 1500:
                verdict = "NAT_RELAY_PACKET_SIZE"
            elif counted[side] + packet["size"] > limit:
                verdict = "NAT_RELAY_DATA_LIMIT"
            else:
                counted[side] += packet["size"]
                continue
            if i != len(packets) - 1:
                abort(f"{comment}: the fault is not on the last packet")
            break
        if verdict != error:
            abort(f"{comment}: the model of 6.5 and 6.6 says {verdict}")
        outcome = run_forward(limit, packets)
        if outcome != (error if error is not None else counted):
            abort(f"DISAGREEMENT on {comment!r}: a RelayCore gives {outcome!r}")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"dataLimit": limit, "packets": packets},
               expected={} if error else {"forwarded": counted}, error=error)  # fmt: skip

    # -- punch timing ---------------------------------------------------------------------------
    tests = vf.group(
        "punch-plan",
        "One side of a punch (input.initiator) in round input.round, with the RECOMMENDED "
        "values of 04-nat-traversal.md 7.4 (probe interval 100 ms, 10 PINGs per candidate "
        "for the dialer and 5 for the prober, shortest round 1.5 s). The initiator wrote "
        "CONNECT at input.sentMs and read the answer at input.answerMs; the responder wrote "
        "its CONNECT at input.sentMs and read SYNC at input.answerMs (milliseconds, even "
        "round trips). The peer's candidates are input.candidates. expected: the side's "
        "role, the RTT, the start of the round, its end, and its PINGs in order (time, "
        "address).",
    )
    cand2 = [("198.51.100.10", 4000), ("10.1.0.10", 4000)]
    # fmt: off
    plan_cases: list[tuple[str, bool, int, int, int, list[tuple[str, int]], list[str], str]] = [
        ("04-nat-traversal.md 7.3: the initiator, RTT 80 ms, round 1: prober", True, 1, 1000,
         1080, cand2, ["SpecExample"], "NAT-R41"),
        ("the responder of that round: dialer, starting when SYNC arrives", False, 1, 1040,
         1120, [("203.0.113.50", 4000)], [], "NAT-R42"),
        ("round 2: the initiator dials", True, 2, 5000, 5300, cand2, ["Rounds"], "NAT-R42"),
        ("round 2: the responder probes", False, 2, 5150, 5450, cand2, ["Rounds"], "NAT-R42"),
        ("round 3, RTT 600 ms: the round lasts 0.9 s + 2 RTT", True, 3, 9000, 9600, cand2,
         ["Rounds"], "NAT-R42"),
        ("no candidates: nothing to ping", True, 1, 0, 20, [], ["Boundary"], "NAT-R43"),
    ]
    # fmt: on
    for comment, initiator, rnd, sent, answer, cands, flags, requirement in plan_cases:
        prober = initiator if rnd % 2 == 1 else not initiator
        rtt = answer - sent
        start = answer + rtt // 2 if initiator else answer
        count = 5 if prober else 10
        plan: Json = {
            "role": "prober" if prober else "dialer",
            "rttMs": rtt,
            "startMs": start,
            "endMs": start + max(1500, 900 + 2 * rtt),
            "probes": [{"atMs": start + 100 * n, "address": nat_addr(a)}
                       for n in range(count) for a in cands],
        }  # fmt: skip
        given = {"initiator": initiator, "round": rnd, "sentMs": sent, "answerMs": answer,
                 "candidates": [nat_addr(a) for a in cands]}  # fmt: skip
        if run_plan(given) != plan:
            abort(f"{comment}: starling.proto.nat plans {run_plan(given)}")
        if rnd == 1 and cands and live_plan(given) != plan:
            abort(f"{comment}: a live Puncher does {live_plan(given)}")
        vf.add(tests, comment, flags=flags, requirement=requirement, input=given,
               expected=plan)  # fmt: skip

    # -- relay entries ------------------------------------------------------------------------
    tests = vf.group(
        "relay-entries",
        "Read the relay entries of the peer record input.record (a record envelope, 03-dht "
        "9) at Unix time input.now (a decimal string), with the vouchers at key 3 of its "
        "value (04-nat-traversal.md 9). expected.relays: each entry kept, in order, with "
        "its voucher's verdict: valid, absent, or the code it fails with.",
    )
    relay2 = seed("nat/relay/2")
    v_good = nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: holder, 3: NAT_EXPIRES})
    v_two = nat_voucher(relay2, {1: peer_id_of(relay2), 2: holder, 3: NAT_EXPIRES})
    v_old = nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: holder, 3: NAT_NOW - 1})
    v_other = nat_voucher(NAT_RELAY_SEED, {1: relay_id, 2: source, 3: NAT_EXPIRES})
    e1 = [relay_id, address_value(("203.0.113.10", 4000))]
    e2 = [peer_id_of(relay2), address_value(("2001:db8::20", 4000))]

    def rec(value: dict[int, object]) -> bytes:
        return record_bytes(NAT_PEER_SEED, {1: 2, 2: holder, 3: 1, 4: 3600, 5: value})

    # fmt: off
    entry_cases: list[tuple[str, bytes, list[str]]] = [
        ("two relays with valid vouchers", rec({1: [a4], 2: [e1, e2], 3: [v_good, v_two]}),
         ["Ipv6"]),
        ("a voucher and a null", rec({1: [], 2: [e1, e2], 3: [v_good, None]}), []),
        ("no key 3: no vouchers (a record of 03-dht revision 2)", rec({1: [a4], 2: [e1]}), []),
        ("an expired voucher", rec({1: [], 2: [e1], 3: [v_old]}), ["Expired"]),
        ("a voucher for another peer", rec({1: [], 2: [e1], 3: [v_other]}), ["Mismatch"]),
        ("vouchers in the wrong order: each is another relay's", rec({1: [], 2: [e1, e2],
                                                                     3: [v_two, v_good]}),
         ["Mismatch"]),
        ("key 3 shorter than key 2: ignored as a whole", rec({1: [], 2: [e1, e2], 3: [v_good]}),
         ["Structure"]),
        ("key 3 with an integer element: ignored as a whole", rec({1: [], 2: [e1], 3: [7]}),
         ["Structure"]),
        ("a malformed entry is skipped, the rest kept", rec({1: [], 2: [[relay_id[:31], a4], e1],
                                                            3: [None, v_good]}),
         ["Structure"]),
    ]
    # fmt: on
    for comment, raw, flags in entry_cases:
        record = dht.Record.parse(raw)
        value = cbor2.loads(cbor2.loads(raw)[2])[5]
        vouchers = value.get(3)
        entries = value.get(2, [])
        if not (isinstance(vouchers, list) and len(vouchers) == len(entries)
                and all(v is None or isinstance(v, bytes) for v in vouchers)):  # fmt: skip
            vouchers = [None] * len(entries)
        relays: list[Json] = []
        for (rid, addr), voucher in zip(entries, vouchers, strict=True):
            if len(rid) != 32:
                continue
            if voucher is None:
                verdict = "absent"
            else:
                body = cbor2.loads(cbor2.loads(voucher)[2])
                verdict = ("NAT_VOUCHER_MISMATCH" if body[1] != rid or body[2] != holder else
                           "NAT_VOUCHER_EXPIRED" if body[3] <= NAT_NOW else "valid")  # fmt: skip
            relays.append({"relay": rid.hex(), "address": {"ip": addr[0].hex(), "port": addr[1]},
                           "voucher": verdict})  # fmt: skip
        ours = [{"relay": c.relay.hex(), "address": nat_addr(c.address),
                 "voucher": "valid" if c.voucher else c.error.name if c.error else "absent"}
                for c in nat.relays_of(record, NAT_NOW)]  # fmt: skip
        if ours != relays:
            abort(f"{comment}: relays_of reads {ours}")
        vf.add(tests, comment, flags=flags, requirement="NAT-R60",
               input={"record": raw.hex(), "now": str(NAT_NOW)},
               expected={"relays": relays})  # fmt: skip

    # -- bootstrap strings (9.3) -----------------------------------------------------------
    tests = vf.group(
        "bootstrap-string",
        "Parse input.text as a bootstrap string (04-nat-traversal.md 9.3). Valid: "
        "expected.peerId (hex) and expected.addresses, in order; formatting them again must "
        "give expected.text, the canonical form. Invalid: NAT_BOOTSTRAP_MALFORMED.",
    )
    peer_text = bech32_text("sp", five_bit_groups(holder))  # 01-identity's running example
    # (comment, text, addresses when valid, canonical text, flags)
    # fmt: off
    boot_cases: list[tuple[str, str, list[tuple[str, int]] | None, str, list[str]]] = [
        ("04-nat-traversal.md 9.3: one IPv4 address", f"{peer_text}@203.0.113.10:4000",
         [("203.0.113.10", 4000)], f"{peer_text}@203.0.113.10:4000", ["SpecExample"]),
        ("04-nat-traversal.md 9.3: IPv4 and IPv6",
         f"{peer_text}@203.0.113.10:4000,[2001:db8::10]:4000",
         [("203.0.113.10", 4000), ("2001:db8::10", 4000)],
         f"{peer_text}@203.0.113.10:4000,[2001:db8::10]:4000", ["SpecExample", "Ipv6"]),
        ("surrounding whitespace and a newline are ignored", f"  {peer_text}@192.0.2.1:1\n",
         [("192.0.2.1", 1)], f"{peer_text}@192.0.2.1:1", ["Boundary"]),
        ("an IPv6 address in a long, upper-case form: its canonical form is RFC 5952's",
         f"{peer_text}@[2001:DB8:0:0:0:0:0:10]:65535", [("2001:db8::10", 65535)],
         f"{peer_text}@[2001:db8::10]:65535", ["Ipv6", "Boundary"]),
        ("8 addresses", f"{peer_text}@" + ",".join(f"192.0.2.{i}:4000" for i in range(1, 9)),
         [(f"192.0.2.{i}", 4000) for i in range(1, 9)],
         f"{peer_text}@" + ",".join(f"192.0.2.{i}:4000" for i in range(1, 9)), ["Boundary"]),
        ("9 addresses", f"{peer_text}@" + ",".join(f"192.0.2.{i}:4000" for i in range(1, 10)),
         None, "", ["Limits"]),
        ("no '@'", peer_text, None, "", ["Structure"]),
        ("no address after '@'", f"{peer_text}@", None, "", ["Structure"]),
        ("no port", f"{peer_text}@203.0.113.10", None, "", ["Structure"]),
        ("port 0", f"{peer_text}@203.0.113.10:0", None, "", ["Boundary"]),
        ("port 65536", f"{peer_text}@203.0.113.10:65536", None, "", ["Boundary"]),
        ("a port with a leading zero", f"{peer_text}@203.0.113.10:04000", None, "",
         ["Structure"]),
        ("an IPv4 address with a leading zero", f"{peer_text}@203.0.113.010:4000", None, "",
         ["Structure"]),
        ("IPv6 without brackets", f"{peer_text}@2001:db8::10:4000", None, "",
         ["Structure", "Ipv6"]),
        ("IPv4 in brackets", f"{peer_text}@[203.0.113.10]:4000", None, "", ["Structure"]),
        ("an IPv4-mapped IPv6 address", f"{peer_text}@[::ffff:203.0.113.10]:4000", None, "",
         ["Structure", "Ipv6"]),
        ("the unspecified address", f"{peer_text}@0.0.0.0:4000", None, "", ["Structure"]),
        ("a multicast address", f"{peer_text}@[ff02::1]:4000", None, "", ["Structure", "Ipv6"]),
        ("an address twice", f"{peer_text}@192.0.2.1:1,192.0.2.1:1", None, "", ["Structure"]),
        ("a space inside", f"{peer_text}@192.0.2.1:1, 192.0.2.2:1", None, "", ["Structure"]),
        ("a peer ID with a broken checksum", f"{peer_text[:-1]}"
         f"{'q' if peer_text[-1] != 'q' else 'p'}@192.0.2.1:1", None, "", ["Structure"]),
        ("a host name instead of an address", f"{peer_text}@localhost:4000", None, "",
         ["Structure"]),
    ]
    # fmt: on
    for comment, text, addresses, canonical, flags in boot_cases:
        if addresses is None:
            expect_error(lambda t=text: nat.parse_bootstrap(t), "NAT_BOOTSTRAP_MALFORMED", comment)
            vf.add(tests, comment, flags=flags, requirement="NAT-R70", input={"text": text},
                   expected={}, error="NAT_BOOTSTRAP_MALFORMED")  # fmt: skip
            continue
        pid, ours = nat.parse_bootstrap(text)
        if pid.raw != holder or ours != addresses:
            abort(f"{comment}: parse_bootstrap reads {pid}, {ours}")
        if nat.format_bootstrap(pid, ours) != canonical:
            abort(f"{comment}: format_bootstrap writes {nat.format_bootstrap(pid, ours)}")
        vf.add(tests, comment, flags=flags, requirement="NAT-R70", input={"text": text},
               expected={"peerId": holder.hex(), "addresses": [nat_addr(a) for a in addresses],
                         "text": canonical})  # fmt: skip
    return vf


def reserve_model(config: Json, serving: bool, held: list[Json], peer: bytes, ip: str) -> str:
    """04-nat-traversal.md 6.2 written out."""
    if not serving:
        return "NAT_RELAY_NOT_SERVING"

    def ip_key(packed: str) -> str:
        addr = ipaddress.ip_address(bytes.fromhex(packed))
        return str(ipaddress.ip_network(f"{addr}/{32 if addr.version == 4 else 64}",
                                        strict=False))  # fmt: skip

    others = [h for h in held if h["peer"] != peer.hex()]
    mine = ip_key(ip_packed(ip).hex())
    if sum(1 for h in others if ip_key(h["ip"]) == mine) >= config["maxReservationsPerIp"]:
        return "NAT_RELAY_IP_LIMIT"
    if len(others) >= config["maxReservations"]:
        return "NAT_RELAY_RESERVATION_LIMIT"
    return "granted"


def connect_model(
    config: Json,
    serving: bool,
    reserved: list[bytes],
    circuits: list[tuple[bytes, bytes]],
    source: bytes,
    target: bytes,
) -> str:
    """04-nat-traversal.md 6.4 written out."""
    if not serving:
        return "NAT_RELAY_NOT_SERVING"
    if source == target:
        return "NAT_UNEXPECTED_MESSAGE"
    if target not in reserved:
        return "NAT_RELAY_NO_RESERVATION"
    per_peer = config["maxCircuitsPerPeer"]
    if (len(circuits) >= config["maxCircuits"]
            or sum(1 for _, t in circuits if t == target) >= per_peer
            or sum(1 for s, _ in circuits if s == source) >= per_peer):  # fmt: skip
        return "NAT_RELAY_CIRCUIT_LIMIT"
    return "open"


def run_observed(reports: list[Json], now: int) -> Json:
    """What a Reachability core makes of the reports of an observed-address vector."""
    reach = nat.Reachability(ScriptedRng("nat/reach"), 0.0)
    for r in reports:
        reach.observe(bytes.fromhex(r["reporter"]),
                      (str(ipaddress.ip_address(bytes.fromhex(r["address"]["ip"]))),
                       r["address"]["port"]),
                      (str(ipaddress.ip_address(bytes.fromhex(r["observed"]["ip"]))),
                       r["observed"]["port"]), float(r["time"]))  # fmt: skip
    reach.handle_timer(float(now))
    return {
        "confirmed": [{"address": nat_addr(a), "reporters": n} for a, n in reach.confirmed_counts],
        "mapping": {"v4": reach.mapping(4).value, "v6": reach.mapping(6).value},
    }


def run_reserve(given: Json) -> bytes | str:
    """A RelayCore's answer to the RESERVE of a relay-reserve vector: a frame or a code."""
    config = nat_relay_config(given["config"])
    config.serving = given["serving"]
    core = nat.RelayCore(identity.PrivateKey(bytes.fromhex(given["relaySeed"])), 0.0, config,
                         int(given["now"]))  # fmt: skip
    for h in given["held"]:
        core.reserve(bytes.fromhex(h["peer"]), str(ipaddress.ip_address(bytes.fromhex(h["ip"]))),
                     0.0)  # fmt: skip
    incoming = given["incoming"]
    core.accept_stream("in", bytes.fromhex(incoming["peer"]),
                       str(ipaddress.ip_address(bytes.fromhex(incoming["ip"]))), 0.0)  # fmt: skip
    core.receive("in", nat.encode_reserve(), 0.0)
    send, close = core.actions(0.0)
    assert isinstance(send, nat.Send) and isinstance(close, nat.Close)
    fields = cbor2.loads(send.data)
    return send.data if fields[0] == 4 else ErrorCode(fields[1]).name


def run_connect(given: Json) -> bytes | str:
    """A RelayCore's answer to the CONNECT of a relay-connect vector: INCOMING or a code."""
    config = nat_relay_config(given["config"])
    core = nat.RelayCore(identity.PrivateKey(NAT_RELAY_SEED), 0.0, config, NAT_NOW)
    for peer in given["reserved"]:
        core.reserve(bytes.fromhex(peer), "192.0.2.1", 0.0)
    for n, circuit in enumerate(given["circuits"]):
        core.accept_stream(("c", n), bytes.fromhex(circuit["source"]), "192.0.2.2", 0.0)
        core.receive(("c", n), nat.encode_connect(bytes.fromhex(circuit["target"])), 0.0)
        (opened,) = core.actions(0.0)
        assert isinstance(opened, nat.Open)
        core.receive(opened.stream, nat.encode_status(0), 0.0)
        core.actions(0.0)
    config.serving = given["serving"]
    core.accept_stream("in", bytes.fromhex(given["source"]), "192.0.2.3", 0.0)
    core.receive("in", nat.encode_connect(bytes.fromhex(given["target"])), 0.0)
    first, *_ = core.actions(0.0)
    if isinstance(first, nat.Open):
        return first.data
    assert isinstance(first, nat.Send)
    return ErrorCode(cbor2.loads(first.data)[1]).name


def run_forward(limit: int, packets: list[Json]) -> list[int] | str:
    """A RelayCore forwarding the packets of a relay-forward vector."""
    config = nat.RelayConfig(circuit_data=limit)
    core = nat.RelayCore(identity.PrivateKey(NAT_RELAY_SEED), 0.0, config, NAT_NOW)
    target, source = peer_id_of(seed("nat/peer/0")), peer_id_of(seed("nat/peer/1"))
    core.reserve(target, "192.0.2.1", 0.0)
    core.accept_stream("src", source, "192.0.2.2", 0.0)
    core.receive("src", nat.encode_connect(target), 0.0)
    (opened,) = core.actions(0.0)
    assert isinstance(opened, nat.Open)
    core.receive(opened.stream, nat.encode_status(0), 0.0)
    core.actions(0.0)
    handles = {"source": "src", "target": opened.stream}
    for i, packet in enumerate(packets):
        core.receive(handles[packet["from"]], bytes(packet["size"]), 0.0)
        actions = core.actions(0.0)
        closes = [a for a in actions if isinstance(a, nat.Close)]
        if closes:
            if i != len(packets) - 1:
                abort("a RelayCore ended a circuit before the last packet")
            return ErrorCode(closes[0].code).name
    event = None
    while (e := core.next_event()) is not None:
        event = e
    assert isinstance(event, nat.CircuitOpened)
    forwarded = core.forwarded(event.circuit)
    assert forwarded is not None
    return list(forwarded)


def run_plan(given: Json) -> Json:
    """What starling.proto.nat plans for a punch-plan vector (its pure function)."""
    cands = [(str(ipaddress.ip_address(bytes.fromhex(a["ip"]))), a["port"])
             for a in given["candidates"]]  # fmt: skip
    plan = nat.punch_plan(given["initiator"], given["round"], given["sentMs"] / 1000,
                          given["answerMs"] / 1000, cands)  # fmt: skip
    return {
        "role": plan.role.value,
        "rttMs": round(plan.rtt * 1000),
        "startMs": round(plan.start * 1000),
        "endMs": round(plan.end * 1000),
        "probes": [{"atMs": round(at * 1000), "address": nat_addr(a)} for at, a in plan.probes],
    }


def live_plan(given: Json) -> Json:
    """What a live Puncher does in round 1 of a punch-plan vector: the PINGs it sends, and
    when the round ends without an answer."""
    keys = nat.ProbeKeys.derive(seed("nat/plan/h"), seed("nat/plan/k1"), seed("nat/plan/k2"))
    role = ses.Role.RESPONDER if given["initiator"] else ses.Role.INITIATOR
    paths = nat.PathProbes(keys, role, network_id("starling"), ScriptedRng("nat/plan"), 0.0)
    peer = [[bytes.fromhex(a["ip"]), a["port"]] for a in given["candidates"]]
    sent, answer = given["sentMs"] / 1000, given["answerMs"] / 1000
    punch = paths.start_punch(given["initiator"], [], sent)
    if given["initiator"]:
        punch.frames_to_send()
        punch.receive(nat_frame({0: 2, 1: 1, 2: peer}), answer)
    else:
        punch.receive(nat_frame({0: 2, 1: 1, 2: peer}), sent)
        punch.receive(nat_frame({0: 4, 1: 1}), answer)
    probes: list[Json] = [{"atMs": round(answer * 1000), "address": nat_addr(a)}
                          for _, a in paths.datagrams_to_send(answer)]  # fmt: skip
    end: float | None = None
    while (t := paths.get_timer()) is not None and end is None:
        if punch.state is nat.PunchState.PUNCHING or punch.state is nat.PunchState.SCHEDULED:
            paths.handle_timer(t)
        probes += [{"atMs": round(t * 1000), "address": nat_addr(a)}
                   for _, a in paths.datagrams_to_send(t)]  # fmt: skip
        if punch.state not in (nat.PunchState.PUNCHING, nat.PunchState.SCHEDULED):
            end = t  # the round ended without an answer
    started = paths.next_event()
    assert isinstance(started, nat.PunchRoundStarted)
    return {
        "role": started.role.value,
        "rttMs": round(started.rtt * 1000),
        "startMs": round(started.start * 1000),
        "endMs": round((end or 0.0) * 1000),
        "probes": probes,
    }


# Worked examples of 04-nat-traversal.md, hard-coded from the spec.
SPEC_NAT: dict[str, Any] = {
    "keys": [
        "19b2a71a9a305d13",
        "997760cb71e099f9e742fc8240456cc76fe911e6fd8116d4a2bd077989158051",
        "a92fdd772867e6422307df1711600f15d6d52fc7ef95a455b54f006b0405e504",
    ],
    "ping": "0c01a5146c9aa5001820014819b2a71a9a305d1302480102030405060708038244c6336407190fa004"
    "5080b34622ac03e0cea167a7cedd494a89",
    "pong": "0c01a5146c9aa5001822014819b2a71a9a305d1302480102030405060708038244c0000201190fa004"
    "50933856f122e585277b4ea89e42b3fd57",
    "voucher": "a30158203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c02584da3"
    "015820a713ebff92a152c9673cf5d9a0e19850860c8ab3f428e1bc0b568c19b737206a025820efbc1c31b2d305"
    "dbe9bde5573102e5a707c77143c2a302cf8b9bb2459135acb6031a6553ff100358400b61ec7dee88bebbbaa9b1"
    "ec4e942bcc58a1ecabaf12217305909ae8343a00bcae09e1ba24dcbde830dedb2eb3cb740fa3fe3d207d46b97b"
    "02af9ba9e07b6801",
    "reservation-head": "a50004011a6553ff1002190708031a04",
}


# ----------------------------------------------------------------------------- community suite
# Entries, capabilities and links are built here with cbor2, libsodium and the bech32m
# encoder written above, from 06-community.md; the replay scripts' outcomes are written by
# hand for the entries that matter, and checked three ways: against the hand-written
# outcomes, against ``com_oracle`` (section 6 from its definitions: every causal past
# replayed from scratch, every pair of entries tested for concurrency), and against
# starling.proto.community's AuthorityLog fed in every order listed in the vector.

COMMUNITY_NOTES = {
    "SpecExample": "Taken from a worked example of 06-community.md, hard-coded here from the spec.",
    "Seeded": 'Keys or bytes derived from seeds SHA-256("starling-vectors/" + label).',
    "Boundary": "A value at the edge of its range: 16 parents, 4 peer hints, 2**32-1 uses, "
    "an entry of exactly 4096 bytes, a link at its longest.",
    "Extension": "An unknown odd key in a payload: ignored, and kept in the signed bytes.",
    "Extensibility": "The even/odd rule for kinds: an unknown odd kind is carried without "
    "effect, an unknown even kind refused.",
    "Structure": "The envelope or payload is not the structure of its table: a missing or "
    "unknown even field, a value out of range, non-canonical CBOR.",
    "Forged": "A signature that does not hold over what the verifier reconstructs: bytes "
    "changed after signing, another domain, another key.",
    "LaxVerifies": "The signature satisfies the Ed25519 equation but breaks a pinned rule of "
    "01-identity section 5; Starling rejects it.",
    "QrForm": "The upper-case form of a link or key, as read from a QR code.",
    "TextForm": "A fault of the bech32m text form (01-identity 4.2): prefix, alphabet, case, "
    "length, checksum, padding.",
    "Unauthorised": "An author without the rank the entry needs in its causal past: rejected "
    "by every member.",
    "Concurrent": "Entries written concurrently (neither names the other among its "
    "ancestors): the outcome follows the sanctions and the replay order (06-community 6.3-6.5).",
    "Invite": "Joining with a capability: expiry, revocation, uses, the inviter's rank.",
    "Pending": "An entry whose parent is never given: it waits, in every order.",
    "Feed": "Member feeds (06-community 8): feed entries alone and offered in sequence.",
    "Sync": "The sync stream (06-community 9): tags, messages, the answer to a request.",
    "Live": "The data of a live gossip message on a community's topic (06-community 9.7).",
}

COM_TIME = 1_700_000_000_000
COM_DOMAIN = "starling/community-entry/1"
COM_INVITE_DOMAIN = "starling/community-invite/1"
COM_ROOT_SEED = bytes.fromhex(RFC8032[1][1])  # 06-community.md 3.2: RFC 8032 TEST 2
COM_OWNER_SEED = bytes.fromhex(RFC8032[0][1])  # the owner of 4.8: RFC 8032 TEST 1
SPEC_COMMUNITY = {  # 06-community.md, hard-coded from the spec
    "key": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "text": "sc184qp0slggwy44y4hp2n56xm7hjwfstx09mzfdrxqe42lz2h5vcxqvpjn0j",
    "create": "a30158203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c02582aa4"
    "00020158203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c02800300035840d06"
    "6e512d8112cd5b688243a6ffb32fca918d872f26af5ffb4bab5ad068d2ef271b1b89959319881a6673f9045b0af"
    "99ebeb622dce1abd58c8b09d8ba9ab7b09",
    "create-id": "8f3d01add90c63d1a3f34ef9ba3aeadc400d95fe0ea35962c2518aae0d30b44a",
    "grant": "a30158203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c025879a600"
    "0e0158203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c028158208f3d01add90c"
    "63d1a3f34ef9ba3aeadc400d95fe0ea35962c2518aae0d30b44a031b0000018bcfe56800045820d75a980182b10a"
    "b7d54bfed3c964073a0ee172f3daa62325af021a68f707511a05040358406b93fc5b7879596b7fbd11a9ed22ce25"
    "63db5577fec3b8d86ae3251bcf99361ba5ab96792dc3691de6a6d4511d3a57dbb62014166002a4f7e2a61393d9e3"
    "8c00",
    "grant-id": "51e984d95b4ed3f8b77f4a38473d309930d337547de546a37c5f00841466ef16",
    "invite-id": "ebe8dfa65bdb97aef1047ba5f268e9724b22cbeb2c7e410498b4b5f5e087e389",
    "link": "starling://join/sj15gq43t4rq9vzp466nqqc9vg2kl25hlkne9jqwwswu9e08k4xyvj67qs6drmsw5g6q"
    "fvyffgptqsr6sqhc05y8z26j2ms4f6drdlte8yc9n8ja3yk3nqv64039t6xvrqzqyp3kqqqqx9l8u0vqqzq2p2sqqqs"
    "yqcyq5rqwzqfpg9scrgwpup4ssyvrh8vp5snqv7rdl22yzfepmn5h3rvwpajn0j6q9utl2q82v8pdjh8ck8npdrlp5v"
    "06u5ztafkksc2508565uwp9udak20ckksk7jqyq5psdvzpmaurscm95c9m05mme2hxypwtfc8cac58s4rqt8chxajgkg"
    "ntt9ksxpyfjcqwy2pjrazsqa4z6vh",
}


def com_entry_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"starling/community-entry-id/1" + raw).digest()


def com_invite_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"starling/community-invite-id/1" + raw).digest()


def com_signed(secret: bytes, payload: object, domain: str = COM_DOMAIN) -> bytes:
    """A signed envelope built with cbor2 and libsodium (01-identity 7, 06-community 4.1)."""
    data = cbor2.dumps(payload, canonical=True)
    return cbor2.dumps(
        {1: ed25519_public(secret), 2: data, 3: nacl_sign(secret, domain, data)}, canonical=True
    )


def com_key(label: str) -> bytes:
    """The seed of a person of the replay scripts."""
    return seed(f"community/{label}")


class ComScript:
    """A replay script: entries signed with starling.proto's helpers against the heads of a
    log kept alongside, each with the outcome a reader of the spec expects."""

    def __init__(self, label: str) -> None:
        self.root = identity.PrivateKey(com_key(f"{label}/root"))
        self.K = self.root.public_key.raw
        self.log = com.AuthorityLog(self.K)
        self.time = COM_TIME
        self.raws: list[bytes] = []
        self.expect: list[str] = []
        for entry in com.genesis(self.root, self.pub("owner"), self.tick(), "Starlings"):
            self.add(entry)

    @staticmethod
    def key(name: str) -> identity.PrivateKey:
        return identity.PrivateKey(com_key(name))

    def pub(self, name: str) -> bytes:
        return self.key(name).public_key.raw

    def tick(self) -> int:
        self.time += 1000
        return self.time

    def heads(self) -> list[bytes]:
        return self.log.heads()

    def add(self, entry: com.Entry | bytes, expect: str = "effective") -> com.Entry | None:
        raw = entry.raw if isinstance(entry, com.Entry) else entry
        self.raws.append(raw)
        self.expect.append(expect)
        self.log.add(raw)
        return entry if isinstance(entry, com.Entry) else None

    def invite(self, inviter: str = "owner", uses: int = 10, role: com.Role = com.Role.MEMBER,
               ttl: int = 3_600_000) -> com.Capability:  # fmt: skip
        nonce = seeded_bytes(f"community/nonce/{inviter}/{self.time}/{uses}/{int(role)}", 16)
        return com.make_capability(self.key(inviter), self.K, expires_ms=self.time + ttl,
                                   nonce=nonce, max_uses=uses, role=role)  # fmt: skip

    def member(self, name: str, role: com.Role = com.Role.MEMBER) -> None:
        self.add(com.join(self.key(name), self.invite(), self.heads(), self.tick()))
        if role > com.Role.MEMBER:
            self.add(com.role_grant(self.key("owner"), self.K, self.heads(), self.tick(),
                                    self.pub(name), role))  # fmt: skip


def com_oracle(community: bytes, raws: list[bytes]) -> tuple[Json, dict[bytes, str]]:
    """06-community.md section 6 from its definitions, with starling.proto's per-kind
    rules (5.4, 5.5: the hand-written outcomes check those): causal pasts replayed from
    scratch, concurrency tested pair by pair, grounded labelling iterated to the end."""
    verdicts: dict[bytes, str] = {}
    parsed: dict[bytes, com.Entry] = {}
    for raw in raws:
        eid = com_entry_id(raw)
        try:
            parsed[eid] = com.parse_entry(raw, community)
        except StarlingError as exc:
            verdicts[eid] = f"rejected:{exc.code.name}"
    memo: dict[bytes, frozenset[bytes]] = {}

    def anc(eid: bytes) -> frozenset[bytes]:
        if eid not in memo:
            out: set[bytes] = set()
            for parent in parsed[eid].parents:
                out |= {parent} | anc(parent)
            memo[eid] = frozenset(out)
        return memo[eid]

    heights: dict[bytes, int] = {}

    def height(eid: bytes) -> int:
        if eid not in heights:
            heights[eid] = 1 + max((height(p) for p in parsed[eid].parents), default=-1)
        return heights[eid]

    needs: dict[bytes, tuple[int, int]] = {}

    def sets(e: com.Entry) -> tuple[bytes, int] | None:
        if e.kind == com.Kind.BAN:
            return e.member, -1
        if e.kind == com.Kind.ROLE_GRANT:
            return e.member, int(e.role)
        if e.kind == com.Kind.ROLE_REVOKE:
            return e.member, 1
        if e.kind == com.Kind.UNBAN:
            return e.member, 0
        if e.kind == com.Kind.JOIN and e.capability is not None:
            return e.author, int(e.capability.role)
        return None

    def uses(e: com.Entry) -> list[tuple[bytes, int]]:
        need_author, need_inviter = needs[e.id]
        out = [] if e.author == community else [(e.author, need_author)]
        cap = e.capability
        if e.kind == com.Kind.JOIN and cap is not None and cap.inviter != community:
            out.append((cap.inviter, need_inviter))
        return out

    def attacks(s: com.Entry, x: com.Entry) -> bool:
        if s.kind == com.Kind.INVITE_REVOKE:
            joins = x.kind == com.Kind.JOIN and x.capability is not None
            return joins and s.capability is not None and x.capability.id == s.capability.id
        target = sets(s)
        assert target is not None
        if any(k == target[0] and target[1] < need for k, need in uses(x)):
            return True
        own = sets(x)
        return own is not None and own[0] == target[0] and target[1] < own[1]

    sanction_kinds = (com.Kind.BAN, com.Kind.ROLE_GRANT, com.Kind.ROLE_REVOKE,
                      com.Kind.INVITE_REVOKE)  # fmt: skip

    def replay(members: frozenset[bytes]) -> tuple[com.AuthorityState, dict[bytes, str]]:
        sanctions = [s for s in members if parsed[s].kind in sanction_kinds]
        attackers = {x: {s for s in sanctions if s != x and s not in anc(x) and x not in anc(s)
                         and attacks(parsed[s], parsed[x])} for x in members}  # fmt: skip
        label: dict[bytes, str] = {}
        changed = True
        while changed:
            changed = False
            for s in sanctions:
                if s not in label:
                    if all(label.get(a) == "out" for a in attackers[s]):
                        label[s], changed = "in", True
                    elif any(label.get(a) == "in" for a in attackers[s]):
                        label[s], changed = "out", True
        state = com.AuthorityState(community)
        out: dict[bytes, str] = {}
        for eid in sorted(members, key=lambda e: (height(e), e)):
            if any(label.get(a) != "out" for a in attackers[eid]):
                out[eid] = "void:COMMUNITY_OVERRULED"
                continue
            try:
                state.check(parsed[eid])
            except StarlingError as exc:
                out[eid] = f"void:{exc.code.name}"
                continue
            state.apply(parsed[eid])
            out[eid] = "effective"
        return state, out

    admitted: set[bytes] = set()
    progress = True
    while progress:
        progress = False
        for eid in sorted(parsed):
            if eid in admitted or eid in verdicts:
                continue
            entry = parsed[eid]
            if any(verdicts.get(p, "").startswith("rejected") for p in entry.parents):
                verdicts[eid] = "rejected:COMMUNITY_PARENT_REJECTED"
            elif all(p in admitted for p in entry.parents):
                try:
                    needs[eid] = replay(anc(eid))[0].check(entry)
                    admitted.add(eid)
                except StarlingError as exc:
                    verdicts[eid] = f"rejected:{exc.code.name}"
            else:
                continue
            progress = True
    for eid in parsed:
        verdicts.setdefault(eid, "pending")
    state, outcome = replay(frozenset(admitted))
    verdicts.update(outcome)
    return state.summary(), verdicts


def com_outcome(verdict: str) -> Json:
    status, _, error = verdict.partition(":")
    return {"status": status, "error": error} if error else {"status": status}


def seeded_permutation(label: str, n: int) -> list[int]:
    """A Fisher-Yates shuffle of range(n) driven by seeded bytes (no ambient randomness)."""
    order = list(range(n))
    stream = seeded_bytes(f"community/order/{label}", 4 * n)
    for i in range(n - 1, 0, -1):
        j = int.from_bytes(stream[4 * i : 4 * i + 4], "big") % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def com_replay_scripts() -> list[tuple[str, ComScript, list[str], str]]:
    """(comment, script, flags, requirement) for every replay vector."""
    out: list[tuple[str, ComScript, list[str], str]] = []

    s = ComScript("history")
    o, K = s.key("owner"), s.K
    general = s.add(com.channel_add(o, K, s.heads(), s.tick(), "general", "Text"))
    assert general is not None
    s.member("alice", com.Role.ADMIN)
    s.member("bob")
    a = s.key("alice")
    random_channel = s.add(com.channel_add(a, K, s.heads(), s.tick(), "random"))
    assert random_channel is not None
    s.add(com.channel_rename(a, K, s.heads(), s.tick(), general.id, "lobby"))
    s.add(com.channel_permissions(a, K, s.heads(), s.tick(), random_channel.id, {1: 0, 2: 1}))
    s.add(com.profile(s.key("bob"), K, s.heads(), s.tick(), "Bob"))
    s.add(com.community_info(a, K, s.heads(), s.tick(), "Starlings", "A place for birds"))
    s.add(com.channel_add(o, K, s.heads(), s.tick(), "gone"))
    gone = s.raws[-1]
    s.add(com.channel_remove(a, K, s.heads(), s.tick(), com_entry_id(gone)))
    out.append(("a linear history: genesis, channels, invites, joins, roles, profiles",
                s, ["Seeded"], "COM-R34"))  # fmt: skip

    s = ComScript("refusals")
    o, K = s.key("owner"), s.K
    s.member("x")
    s.member("admin", com.Role.ADMIN)
    x, nope = s.key("x"), "rejected:COMMUNITY_NOT_PERMITTED"
    s.add(com.role_grant(x, K, s.heads(), s.tick(), s.pub("x"), com.Role.ADMIN), nope)
    s.add(com.role_grant(s.key("admin"), K, s.heads(), s.tick(), s.pub("admin"), com.Role.OWNER),
          nope)  # fmt: skip
    s.add(com.role_grant(s.key("admin"), K, s.heads(), s.tick(), s.pub("x"), com.Role.ADMIN), nope)
    s.add(com.channel_add(x, K, s.heads(), s.tick(), "mine"), nope)
    s.add(com.ban(s.key("admin"), K, s.heads(), s.tick(), s.pub("owner")), nope)
    s.add(com.ban(o, K, s.heads(), s.tick(), K), nope)
    s.add(com.profile(s.root, K, s.heads(), s.tick(), "root"), nope)
    s.add(com.profile(s.key("stranger"), K, s.heads(), s.tick(), "hi"),
          "rejected:COMMUNITY_NOT_MEMBER")  # fmt: skip
    s.add(com.role_grant(o, K, s.heads(), s.tick(), s.pub("stranger"), com.Role.MODERATOR),
          "rejected:COMMUNITY_BAD_TARGET")  # fmt: skip
    s.add(com.unban(o, K, s.heads(), s.tick(), s.pub("x")), "rejected:COMMUNITY_BAD_TARGET")
    s.add(com.channel_rename(o, K, s.heads(), s.tick(), b"\x00" * 32, "x"),
          "rejected:COMMUNITY_UNKNOWN_CHANNEL")  # fmt: skip
    s.add(com.role_grant(s.root, K, s.heads(), s.tick(), s.pub("newcomer"), com.Role.MODERATOR))
    s.add(com.profile(x, K, s.heads(), s.tick(), "x"))
    out.append(("self-promotion, promotion beyond one's rank, actions on higher ranks and on "
                "the root, strangers, bad targets: each rejected with its code; the root "
                "admits directly", s, ["Unauthorised"], "COM-R22"))  # fmt: skip

    s = ComScript("forged")
    o, K = s.key("owner"), s.K
    genuine = com.channel_add(o, K, s.heads(), s.tick(), "general")
    forged = bytearray(genuine.raw)
    forged[-1] ^= 0x01
    s.add(bytes(forged), "rejected:COMMUNITY_ENTRY_FORGED")
    child = com.profile(o, K, [com_entry_id(bytes(forged))], s.tick(), "o")
    s.add(child, "rejected:COMMUNITY_PARENT_REJECTED")
    s.add(com.profile(o, K, [child.id], s.tick(), "p"), "rejected:COMMUNITY_PARENT_REJECTED")
    s.add(genuine)
    other = ComScript("forged-other")
    s.add(com.channel_add(other.key("owner"), other.K, other.heads(), s.tick(), "x"),
          "rejected:COMMUNITY_WRONG_COMMUNITY")  # fmt: skip
    s.add(b"\xa3\x01", "rejected:COMMUNITY_ENTRY_MALFORMED")
    out.append(("a forged entry, the entries built on it, an entry of another community and "
                "bytes that are no entry: rejected; the genuine entry applies", s,
                ["Forged"], "COM-R32"))  # fmt: skip

    s = ComScript("banned")
    K = s.K
    s.member("x")
    s.member("mod", com.Role.MODERATOR)
    m, x, banned = s.key("mod"), s.key("x"), "rejected:COMMUNITY_BANNED"
    s.add(com.ban(m, K, s.heads(), s.tick(), s.pub("x"), "spam"))
    s.add(com.profile(x, K, s.heads(), s.tick(), "still here"), banned)
    s.add(com.join(x, s.invite(), s.heads(), s.tick()), banned)
    s.add(com.unban(m, K, s.heads(), s.tick(), s.pub("x")))
    s.add(com.profile(x, K, s.heads(), s.tick(), "back?"), "rejected:COMMUNITY_NOT_MEMBER")
    s.add(com.join(x, s.invite(), s.heads(), s.tick()))
    s.add(com.profile(x, K, s.heads(), s.tick(), "back"))
    out.append(("a banned member's later entries are rejected; after an unban it is a "
                "stranger who may join again", s, ["Unauthorised"], "COM-R22"))  # fmt: skip

    s = ComScript("ban-vs-action")
    o, K = s.key("owner"), s.K
    s.member("admin", com.Role.ADMIN)
    s.member("x")
    fork = s.heads()
    ban_admin = s.add(com.ban(o, K, fork, s.tick(), s.pub("admin")))
    chan = s.add(com.channel_add(s.key("admin"), K, fork, s.tick(), "mine"),
                 "void:COMMUNITY_OVERRULED")  # fmt: skip
    assert chan is not None and ban_admin is not None
    s.add(com.profile(s.key("admin"), K, [chan.id], s.tick(), "admin"), "void:COMMUNITY_OVERRULED")
    s.add(com.profile(s.key("x"), K, s.heads(), s.tick(), "x"))
    out.append(("a ban wins over what the banned admin wrote concurrently; an entry built on "
                "both stays valid", s, ["Concurrent"], "COM-R33"))  # fmt: skip

    s = ComScript("demotion")
    o, K = s.key("owner"), s.K
    s.member("admin", com.Role.ADMIN)
    s.member("x")
    fork = s.heads()
    s.add(com.role_revoke(o, K, fork, s.tick(), s.pub("admin")))
    chan = s.add(com.channel_add(s.key("admin"), K, fork, s.tick(), "mine"),
                 "void:COMMUNITY_OVERRULED")  # fmt: skip
    assert chan is not None
    s.add(com.profile(s.key("admin"), K, fork, s.tick(), "me"))
    s.add(com.ban(s.key("admin"), K, [chan.id], s.tick(), s.pub("x")), "void:COMMUNITY_OVERRULED")
    out.append(("a demotion voids the concurrent entries that needed the old role (a channel, "
                "a ban), not those a member may write (a profile)", s, ["Concurrent"],
                "COM-R33"))  # fmt: skip

    s = ComScript("backdated")
    o, K = s.key("owner"), s.K
    s.member("admin", com.Role.ADMIN)
    s.member("mod", com.Role.MODERATOR)
    s.member("x")
    old = s.heads()
    s.add(com.channel_add(o, K, s.heads(), s.tick(), "general"))
    s.add(com.ban(s.key("mod"), K, s.heads(), s.tick(), s.pub("x")))
    s.add(com.role_revoke(o, K, s.heads(), s.tick(), s.pub("admin")))
    s.add(com.ban(s.key("admin"), K, old, s.tick(), s.pub("mod")), "void:COMMUNITY_OVERRULED")
    out.append(("a demoted admin's ban, backdated to before its demotion, is overruled and so "
                "overrules nothing: the moderator's later ban stands", s, ["Concurrent"],
                "COM-R33"))  # fmt: skip

    s = ComScript("lower-wins")
    o, K = s.key("owner"), s.K
    s.member("x")
    s.member("a1", com.Role.ADMIN)
    fork = s.heads()
    s.add(com.role_grant(o, K, fork, s.tick(), s.pub("x"), com.Role.ADMIN),
          "void:COMMUNITY_OVERRULED")  # fmt: skip
    s.add(com.role_grant(s.key("a1"), K, fork, s.tick(), s.pub("x"), com.Role.MODERATOR))
    out.append(("of two concurrent role changes the lower wins", s, ["Concurrent"], "COM-R33"))

    s = ComScript("ban-vs-unban")
    K = s.K
    s.member("x")
    s.member("m1", com.Role.MODERATOR)
    s.member("m2", com.Role.MODERATOR)
    s.add(com.ban(s.key("m1"), K, s.heads(), s.tick(), s.pub("x")))
    fork = s.heads()
    s.add(com.unban(s.key("m1"), K, fork, s.tick(), s.pub("x")), "void:COMMUNITY_OVERRULED")
    s.add(com.ban(s.key("m2"), K, fork, s.tick(), s.pub("x")))
    out.append(("an unban concurrent with a ban of the same member is void", s, ["Concurrent"],
                "COM-R33"))  # fmt: skip

    s = ComScript("mutual")
    K, root = s.K, s.root
    s.member("a", com.Role.ADMIN)
    s.member("b", com.Role.ADMIN)
    fork = s.heads()
    ga = s.add(com.role_grant(root, K, fork, s.tick(), s.pub("a"), com.Role.OWNER),
               "void:COMMUNITY_OVERRULED")  # fmt: skip
    gb = s.add(com.role_grant(root, K, fork, s.tick(), s.pub("b"), com.Role.OWNER),
               "void:COMMUNITY_OVERRULED")  # fmt: skip
    assert ga is not None and gb is not None
    s.add(com.ban(s.key("a"), K, [ga.id], s.tick(), s.pub("b")), "void:COMMUNITY_OVERRULED")
    s.add(com.ban(s.key("b"), K, [gb.id], s.tick(), s.pub("a")), "void:COMMUNITY_OVERRULED")
    out.append(("two admins, each made owner concurrently, ban each other: the bans attack each "
                "other in a cycle, nothing stands, both stay admins", s, ["Concurrent"],
                "COM-R33"))  # fmt: skip

    s = ComScript("invites")
    o, K = s.key("owner"), s.K
    cap = s.invite(uses=2, ttl=60_000)
    first = s.add(com.join(s.key("a"), cap, s.heads(), s.tick()))
    assert first is not None
    s.add(com.join(s.key("b"), cap, s.heads(), s.tick()))
    s.add(com.join(s.key("c"), cap, s.heads(), s.tick()), "rejected:COMMUNITY_INVITE_EXHAUSTED")
    s.add(com.join(s.key("late"), cap, s.heads(), cap.expires_ms + 1),
          "rejected:COMMUNITY_INVITE_EXPIRED")  # fmt: skip
    s.add(first)  # the same join again: a duplicate, one entry
    s.add(com.join(s.key("a"), s.invite(), s.heads(), s.tick()),
          "rejected:COMMUNITY_ALREADY_MEMBER")  # fmt: skip
    own = s.invite(inviter="a")
    s.add(com.invite_revoke(s.key("a"), K, s.heads(), s.tick(), own))
    s.add(com.join(s.key("d"), own, s.heads(), s.tick()), "rejected:COMMUNITY_INVITE_REVOKED")
    s.add(com.invite_revoke(s.key("b"), K, s.heads(), s.tick(), s.invite()),
          "rejected:COMMUNITY_NOT_PERMITTED")  # fmt: skip
    s.add(com.join(s.key("e"), s.invite(inviter="a", role=com.Role.MODERATOR), s.heads(),
                   s.tick()), "rejected:COMMUNITY_INVITE_NOT_PERMITTED")  # fmt: skip
    s.add(com.join(s.key("e"), s.invite(inviter="stranger"), s.heads(), s.tick()),
          "rejected:COMMUNITY_INVITE_NOT_PERMITTED")  # fmt: skip
    s.add(com.join(s.key("f"), s.invite(role=com.Role.MODERATOR), s.heads(), s.tick()))
    out.append(("invites: two uses then exhausted, expired, a replayed join, a member joining "
                "again, revoked, revocation by a member of another's invite, inviters without "
                "the rank", s, ["Invite"], "COM-R42"))  # fmt: skip

    s = ComScript("invite-races")
    o, K = s.key("owner"), s.K
    once, doomed = s.invite(uses=1), s.invite()
    fork = s.heads()
    s.add(com.invite_revoke(o, K, fork, s.tick(), doomed))
    s.add(com.join(s.key("j"), doomed, fork, s.tick()), "void:COMMUNITY_OVERRULED")
    u = com.join(s.key("u"), once, fork, s.tick())
    v = com.join(s.key("v"), once, fork, s.tick())
    first_id = min(u.id, v.id)  # same height: the smaller ID comes first (6.1)
    for entry in (u, v):
        s.add(entry, "effective" if entry.id == first_id else "void:COMMUNITY_INVITE_EXHAUSTED")
    out.append(("a join concurrent with the revocation of its invite is void; of two concurrent "
                "joins with a one-use invite the one first in replay order counts", s,
                ["Concurrent", "Invite"], "COM-R45"))  # fmt: skip

    s = ComScript("channels")
    o, K = s.key("owner"), s.K
    s.member("admin", com.Role.ADMIN)
    chan = s.add(com.channel_add(o, K, s.heads(), s.tick(), "general"))
    assert chan is not None
    fork = s.heads()
    s.add(com.channel_remove(o, K, fork, s.tick(), chan.id))
    step = s.add(com.profile(s.key("admin"), K, fork, s.tick(), "admin"))
    assert step is not None
    s.add(com.channel_rename(s.key("admin"), K, [step.id], s.tick(), chan.id, "lobby"),
          "void:COMMUNITY_UNKNOWN_CHANNEL")  # fmt: skip
    out.append(("a rename after (in replay order) a concurrent removal of its channel is void",
                s, ["Concurrent"], "COM-R34"))  # fmt: skip

    s = ComScript("pending")
    o, K = s.key("owner"), s.K
    s.add(com.profile(o, K, [hashlib.sha256(b"never given").digest()], s.tick(), "o"), "pending")
    odd = com_signed(com_key("owner"), {0: 41, 1: K, 2: s.heads(), 3: s.tick(), 4: {1: 2}})
    s.add(odd)
    s.add(com_signed(com_key("stranger"), {0: 41, 1: K, 2: s.heads(), 3: s.tick()}),
          "rejected:COMMUNITY_NOT_MEMBER")  # fmt: skip
    s.add(com.profile(o, K, s.heads(), s.tick(), "o"))
    out.append(("an entry whose parent never comes stays pending; an entry of an unknown odd "
                "kind is carried without effect, for members only", s,
                ["Pending", "Extensibility"], "COM-R35"))  # fmt: skip

    s = ComScript("conflicts")
    o, K, t = s.key("owner"), s.K, s.tick
    for name, role in (("admin", com.Role.ADMIN), ("admin2", com.Role.ADMIN),
                       ("mod", com.Role.MODERATOR), ("x", com.Role.MEMBER),
                       ("y", com.Role.MEMBER), ("z", com.Role.MEMBER)):  # fmt: skip
        s.member(name, role)
    chan = s.add(com.channel_add(o, K, s.heads(), t(), "general"))
    assert chan is not None
    once, doomed = s.invite(inviter="mod", uses=1), s.invite()
    fork, void = s.heads(), "void:COMMUNITY_OVERRULED"
    ban_x = s.add(com.ban(o, K, fork, t(), s.pub("x")))
    assert ban_x is not None
    s.add(com.role_revoke(o, K, [ban_x.id], t(), s.pub("admin")))
    a1 = s.add(com.channel_add(s.key("admin"), K, fork, t(), "random"), void)
    assert a1 is not None
    a2 = s.add(com.ban(s.key("admin"), K, [a1.id], t(), s.pub("y")), void)
    assert a2 is not None
    s.add(com.channel_rename(s.key("admin"), K, [a2.id], t(), chan.id, "lobby"), void)
    s.add(com.role_revoke(s.key("admin"), K, fork, t(), s.pub("mod")), void)
    x1 = s.add(com.profile(s.key("x"), K, fork, t(), "x"), void)
    assert x1 is not None
    x2 = com.role_grant(s.key("x"), K, [x1.id], t(), s.pub("x"), com.Role.ADMIN)
    s.add(x2, "rejected:COMMUNITY_NOT_PERMITTED")
    s.add(com.profile(s.key("x"), K, [x2.id], t(), "x again"), "rejected:COMMUNITY_PARENT_REJECTED")
    s.add(com.profile(s.key("y"), K, fork, t(), "yvonne"))
    s.add(com.role_grant(o, K, fork, t(), s.pub("z"), com.Role.ADMIN), void)
    s.add(com.role_grant(s.key("admin2"), K, fork, t(), s.pub("z"), com.Role.MODERATOR), void)
    u = com.join(s.key("u"), once, fork, t())
    v = com.join(s.key("v"), once, fork, t())
    for entry in (u, v):
        s.add(entry, "effective" if entry.id == min(u.id, v.id) else
              "void:COMMUNITY_INVITE_EXHAUSTED")  # fmt: skip
    s.add(com.invite_revoke(o, K, fork, t(), doomed))
    s.add(com.join(s.key("j"), doomed, fork, t()), void)
    m_ban = s.add(com.ban(s.key("mod"), K, fork, t(), s.pub("z")))
    assert m_ban is not None
    s.add(com.unban(s.key("admin2"), K, [m_ban.id], t(), s.pub("z")), void)
    s.add(com.ban(s.key("mod"), K, [m_ban.id], t(), s.pub("z")))
    s.add(com.profile(o, K, s.heads(), t(), "the owner"))
    out.append(("many conflicts at once after one fork: bans, demotions, a self-promotion and "
                "what builds on it, promotions against demotions, invite races, ban against "
                "unban; then a merge", s, ["Concurrent", "Unauthorised", "Invite"],
                "COM-R36"))  # fmt: skip
    return out


def community_suite() -> VectorFile:
    vf = VectorFile("community", "06-community.md", COMMUNITY_NOTES)
    root_public = ed25519_public(COM_ROOT_SEED)
    owner_public = ed25519_public(COM_OWNER_SEED)
    if root_public.hex() != SPEC_COMMUNITY["key"]:
        abort("06-community.md 3.2: the community key differs")

    # -- community keys ------------------------------------------------------------------
    tests = vf.group(
        "community-key",
        "Parse input.text as the text form of a community key (06-community.md 3.2: "
        "bech32m with prefix sc, then the key checks of 01-identity 5.2). Valid: "
        "expected.publicKey; a lower-case input is also what encoding the key gives.",
    )
    not_on_curve = next(y for y in range(2, 100) if recover_x(y, 0) is None)
    key_cases: list[tuple[str, str, list[str], str, str | None]] = [
        ("06-community.md 3.2: RFC 8032 TEST 2's key", bech32_text("sc", five_bit_groups(
            root_public)), ["SpecExample"], "COM-R1", None),
        ("the same in upper case", bech32_text("sc", five_bit_groups(root_public)).upper(),
         ["QrForm"], "COM-R2", None),
        ("seeded key 'community/key'", bech32_text("sc", five_bit_groups(ed25519_public(
            seed("community/key")))), ["Seeded"], "COM-R1", None),
        ("a peer-ID prefix sp", bech32_text("sp", five_bit_groups(root_public)), ["TextForm"],
         "COM-R2", "ID_TEXT_PREFIX"),
        ("the last character changed", bech32_text("sc", five_bit_groups(root_public))[:-1]
         + "q", ["TextForm"], "COM-R2", "ID_TEXT_CHECKSUM"),
        ("mixed case", "SC1" + bech32_text("sc", five_bit_groups(root_public))[3:], ["TextForm"],
         "COM-R2", "ID_TEXT_MIXED_CASE"),
        ("31 bytes", bech32_text("sc", five_bit_groups(root_public[:31])), ["TextForm"],
         "COM-R2", "ID_TEXT_LENGTH"),
        ("the identity point (y = 1), of small order", bech32_text("sc", five_bit_groups(
            (1).to_bytes(32, "little"))), ["Structure"], "COM-R2", "KEY_SMALL_ORDER"),
        ("y = p, a non-canonical encoding", bech32_text("sc", five_bit_groups(
            (2**255 - 19).to_bytes(32, "little"))), ["Structure"], "COM-R2", "KEY_NON_CANONICAL"),
        (f"y = {not_on_curve}, not on the curve", bech32_text("sc", five_bit_groups(
            not_on_curve.to_bytes(32, "little"))), ["Structure"], "COM-R2", "KEY_NOT_ON_CURVE"),
    ]  # fmt: skip
    if key_cases[0][1] != SPEC_COMMUNITY["text"]:
        abort("06-community.md 3.2: the text form differs")
    for comment, text, flags, requirement, error in key_cases:
        if error is None:
            key_bytes = com.CommunityId.parse(text).raw
            expected: Json = {"publicKey": key_bytes.hex()}
            if text == text.lower() and com.CommunityId(key_bytes).text() != text:
                abort(f"{comment}: the text form made here differs")
        else:
            expect_error(lambda t=text: com.CommunityId.parse(t), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement, input={"text": text},
               expected=expected, error=error)  # fmt: skip

    # -- signing entries ---------------------------------------------------------------
    tests = vf.group(
        "entry-sign",
        "Sign input.payload (a typed value, encoded canonically) as an authority entry "
        "(06-community.md 4.1) with the key derived from input.authorSeed: the envelope "
        "under starling/community-entry/1. expected.entry is the signed entry, "
        "expected.entryId its ID (4.2).",
    )
    create_payload = {0: 2, 1: root_public, 2: [], 3: 0}
    create_raw = com_signed(COM_ROOT_SEED, create_payload)
    create_id = com_entry_id(create_raw)
    grant_payload = {0: 14, 1: root_public, 2: [create_id], 3: COM_TIME, 4: owner_public, 5: 4}
    grant_raw = com_signed(COM_ROOT_SEED, grant_payload)
    if (create_raw.hex(), create_id.hex()) != (SPEC_COMMUNITY["create"],
                                               SPEC_COMMUNITY["create-id"]):  # fmt: skip
        abort("06-community.md 4.8: the create entry differs")
    grant_id = com_entry_id(grant_raw)
    if (grant_raw.hex(), grant_id.hex()) != (SPEC_COMMUNITY["grant"], SPEC_COMMUNITY["grant-id"]):
        abort("06-community.md 4.8: the ROLE_GRANT differs")
    member_seed = seed("community/member")
    sign_cases: list[tuple[str, bytes, dict[int, object], list[str]]] = [
        ("06-community.md 4.8: the create entry", COM_ROOT_SEED, create_payload, ["SpecExample"]),
        ("06-community.md 4.8: the owner's ROLE_GRANT", COM_ROOT_SEED, grant_payload,
         ["SpecExample"]),
        ("a CHANNEL_ADD with a category, by the owner", COM_OWNER_SEED,
         {0: 6, 1: root_public, 2: [com_entry_id(grant_raw)], 3: COM_TIME + 1, 4: "general",
          5: "Text"}, []),
        ("a PROFILE with an extension key 7, seeded author", member_seed,
         {0: 26, 1: root_public, 2: sorted([create_id, com_entry_id(grant_raw)]), 3: COM_TIME + 2,
          4: "Robin", 7: "later"}, ["Seeded", "Extension"]),
    ]  # fmt: skip
    for comment, secret, payload, flags in sign_cases:
        raw = com_signed(secret, payload)
        ours = identity.seal(identity.PrivateKey(secret), com.ENTRY_DOMAIN,
                             codec.encode(payload))  # type: ignore[arg-type]  # fmt: skip
        if ours != raw or com.parse_entry(raw).id != com_entry_id(raw):
            abort(f"{comment}: the entry signed here and starling.proto's differ")
        vf.add(tests, comment, flags=flags, requirement="COM-R10",
               input={"authorSeed": secret.hex(), "payload": typed(payload)},
               expected={"entry": raw.hex(), "entryId": com_entry_id(raw).hex()})  # fmt: skip

    # -- checking entries --------------------------------------------------------------
    entry_comment = (
        "Check input.entry as an authority entry of the community input.community, in the "
        "order of 06-community.md 4.6 (nothing here depends on other entries). Valid: "
        "expected.entryId, author, kind, parents (in order) and time (a decimal string). "
        "Invalid: the COMMUNITY_* code of the first failing step."
    )
    tests = vf.group("entry", entry_comment, cddl={"file": "spec/cddl/community.cddl",
                     "rule": "authority-entry", "field": "entry"})  # fmt: skip
    head = [create_id]
    cap_raw = com_signed(COM_OWNER_SEED, {1: root_public, 2: 1, 3: COM_TIME + 86_400_000, 4: 5,
                                          5: seeded_bytes("community/nonce", 16)},
                         COM_INVITE_DOMAIN)  # fmt: skip
    chan_id = com_entry_id(b"channel")
    base: dict[int, object] = {1: root_public, 2: head, 3: COM_TIME}
    kinds: list[tuple[str, dict[int, object]]] = [
        ("INFO", {0: 4, 4: "Starlings", 5: "birds"}),
        ("CHANNEL_ADD", {0: 6, 4: "general"}),
        ("CHANNEL_RENAME", {0: 8, 4: chan_id, 5: "lobby", 6: "Text"}),
        ("CHANNEL_REMOVE", {0: 10, 4: chan_id}),
        ("CHANNEL_PERMISSIONS", {0: 12, 4: chan_id, 5: {1: 0, 2: 3}}),
        ("ROLE_GRANT", {0: 14, 4: owner_public, 5: 3}),
        ("ROLE_REVOKE", {0: 16, 4: owner_public}),
        ("BAN", {0: 18, 4: owner_public, 5: "spam"}),
        ("UNBAN", {0: 20, 4: owner_public}),
        ("INVITE_REVOKE", {0: 22, 4: cap_raw}),
        ("JOIN", {0: 24, 4: cap_raw}),
        ("PROFILE", {0: 26, 4: "Robin"}),
    ]
    parents16 = sorted(com_entry_id(bytes([i])) for i in range(16))
    good = com_signed(member_seed, {**base, 0: 6, 4: "general"})
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    good_fields = cbor2.loads(good)
    sig = good_fields[3]
    malleable = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    if not lax_verifies(good_fields[1], signing_input(COM_DOMAIN, good_fields[2]), malleable):
        abort("the S + L entry signature does not satisfy the lax equation")
    torsion = torsion_points()
    small_key = encode_point(torsion[1])
    small_sig = forge_for_small_order_key(torsion[1], signing_input(COM_DOMAIN, good_fields[2]),
                                          "community/forge")  # fmt: skip

    def envelope(**fields: object) -> bytes:
        env = {1: good_fields[1], 2: good_fields[2], 3: sig}
        env.update({int(k[1:]): v for k, v in fields.items()})
        return cbor2.dumps(env, canonical=True)

    def padded(size: int) -> bytes:
        for pad in range(size - 300, size):
            raw = com_signed(member_seed, {**base, 0: 26, 4: "x", 7: "p" * pad})
            if len(raw) == size:
                return raw
        abort(f"no padding gives an entry of {size} bytes")

    non_shortest = cbor2.dumps({**base, 0: 6, 4: "general"}, canonical=True).replace(
        b"\x00\x06", b"\x00\x18\x06", 1)  # fmt: skip
    forged_cap = bytearray(cap_raw)
    forged_cap[-1] ^= 0x01
    foreign_cap = com_signed(COM_OWNER_SEED, {1: owner_public, 2: 1, 3: COM_TIME, 4: 1,
                                              5: bytes(16)}, COM_INVITE_DOMAIN)  # fmt: skip
    malformed, invalid_cap = "COMMUNITY_ENTRY_MALFORMED", "COMMUNITY_INVITE_INVALID"
    # (comment, entry, flags, requirement, error)
    # fmt: off
    entry_cases: list[tuple[str, bytes, list[str], str, str | None]] = [
        ("06-community.md 4.8: the create entry", create_raw, ["SpecExample"], "COM-R15", None),
        ("06-community.md 4.8: the owner's ROLE_GRANT", grant_raw, ["SpecExample"], "COM-R16",
         None),
        *[(f"a {name} entry", com_signed(member_seed, {**base, **fields}), ["Seeded"],
           "COM-R12", None) for name, fields in kinds],
        ("an unknown odd key 7", com_signed(member_seed, {**base, 0: 26, 4: "x", 7: "later"}),
         ["Extension"], "COM-R12", None),
        ("16 parents", com_signed(member_seed, {**base, 0: 26, 2: parents16, 4: "x"}),
         ["Boundary"], "COM-R14", None),
        ("an entry of exactly 4096 bytes", padded(4096), ["Boundary"], "COM-R10", None),
        ("an entry of 4097 bytes", padded(4097), ["Boundary"], "COM-R10",
         "COMMUNITY_ENTRY_TOO_LARGE"),
        ("not CBOR at all", b"\xff", ["Structure"], "COM-R10", malformed),
        ("an envelope with an extra key 5", envelope(k5=1), ["Structure"], "COM-R10", malformed),
        ("a payload that is an array", com_signed(member_seed, [6, "general"]), ["Structure"],
         "COM-R12", malformed),
        ("an unknown even kind 40", com_signed(member_seed, {**base, 0: 40}), ["Extensibility"],
         "COM-R12", malformed),
        ("an unknown even key 8", com_signed(member_seed, {**base, 0: 6, 4: "general", 8: 1}),
         ["Structure"], "COM-R12", malformed),
        ("an empty channel name", com_signed(member_seed, {**base, 0: 6, 4: ""}), ["Structure"],
         "COM-R12", malformed),
        ("a ROLE_GRANT of role 1", com_signed(member_seed, {**base, 0: 14, 4: owner_public, 5: 1}),
         ["Structure"], "COM-R12", malformed),
        ("overrides for role 4", com_signed(member_seed, {**base, 0: 12, 4: chan_id, 5: {4: 1}}),
         ["Structure"], "COM-R21", malformed),
        ("overrides with bit 0x04", com_signed(member_seed, {**base, 0: 12, 4: chan_id,
         5: {1: 4}}), ["Structure"], "COM-R21", malformed),
        ("a time of -1", com_signed(member_seed, {**base, 0: 6, 3: -1, 4: "general"}),
         ["Structure"], "COM-R12", malformed),
        ("a non-shortest kind in the payload", cbor2.dumps({1: good_fields[1], 2: non_shortest,
         3: nacl_sign(member_seed, COM_DOMAIN, non_shortest)}, canonical=True), ["Structure"],
         "COM-R12", malformed),
        ("another community", com_signed(member_seed, {**base, 0: 6, 1: owner_public,
         4: "general"}), [], "COM-R13", "COMMUNITY_WRONG_COMMUNITY"),
        ("17 parents", com_signed(member_seed, {**base, 0: 26, 2: sorted([*parents16,
         com_entry_id(b"17")]), 4: "x"}), ["Boundary"], "COM-R14", "COMMUNITY_BAD_PARENTS"),
        ("parents in descending order", com_signed(member_seed, {**base, 0: 26,
         2: parents16[:2][::-1], 4: "x"}), ["Structure"], "COM-R14", "COMMUNITY_BAD_PARENTS"),
        ("the same parent twice", com_signed(member_seed, {**base, 0: 26, 2: head * 2, 4: "x"}),
         ["Structure"], "COM-R14", "COMMUNITY_BAD_PARENTS"),
        ("a parent of 31 bytes", com_signed(member_seed, {**base, 0: 26, 2: [create_id[:31]],
         4: "x"}), ["Structure"], "COM-R14", "COMMUNITY_BAD_PARENTS"),
        ("a PROFILE without parents", com_signed(member_seed, {**base, 0: 26, 2: [], 4: "x"}),
         ["Structure"], "COM-R14", "COMMUNITY_BAD_PARENTS"),
        ("a create entry at time 1", com_signed(COM_ROOT_SEED, {**create_payload, 3: 1}),
         ["Structure"], "COM-R15", "COMMUNITY_CREATE_INVALID"),
        ("a create entry with a parent", com_signed(COM_ROOT_SEED, {**create_payload,
         2: [grant_raw[:32]]}), ["Structure"], "COM-R15", "COMMUNITY_CREATE_INVALID"),
        ("a create entry with an odd key", com_signed(COM_ROOT_SEED, {**create_payload, 5: 1}),
         ["Extension"], "COM-R15", "COMMUNITY_CREATE_INVALID"),
        ("a create entry signed by the owner", com_signed(COM_OWNER_SEED, create_payload),
         ["Forged"], "COM-R15", "COMMUNITY_CREATE_INVALID"),
        ("the signature's last byte changed", bytes(flipped), ["Forged"], "COM-R10",
         "COMMUNITY_ENTRY_FORGED"),
        ("signed under starling/gossip-msg/1", com_signed(member_seed, {**base, 0: 6,
         4: "general"}, "starling/gossip-msg/1"), ["Forged"], "COM-R10", "COMMUNITY_ENTRY_FORGED"),
        ("S + L: a malleable signature", envelope(k3=malleable), ["LaxVerifies"], "COM-R10",
         "COMMUNITY_ENTRY_FORGED"),
        ("a small-order author key with a signature the lax equation accepts",
         envelope(k1=small_key, k3=small_sig), ["LaxVerifies"], "COM-R10",
         "COMMUNITY_ENTRY_FORGED"),
        ("a JOIN whose capability's signature is broken", com_signed(member_seed, {**base,
         0: 24, 4: bytes(forged_cap)}), ["Forged", "Invite"], "COM-R40", invalid_cap),
        ("a JOIN with a capability of another community", com_signed(member_seed, {**base,
         0: 24, 4: foreign_cap}), ["Invite"], "COM-R40", invalid_cap),
    ]
    # fmt: on
    if not lax_verifies(small_key, signing_input(COM_DOMAIN, good_fields[2]), small_sig):
        abort("the small-order entry signature does not satisfy the lax equation")
    community_hex = root_public.hex()
    # Payloads with extension keys (and the size boundaries, padded with one) go to a second
    # group without a CDDL check: pycddl mishandles a choice of maps with catch-alls.
    extended = [case for case in entry_cases if "Extension" in case[2] or "4096" in case[0]
                or "4097" in case[0]]  # fmt: skip
    for comment, raw, flags, requirement, error in entry_cases:
        if (comment, raw, flags, requirement, error) in extended:
            continue
        if error is None:
            fields = cbor2.loads(cbor2.loads(raw)[2])
            parents = [p.hex() for p in fields[2]]
            expected = {"entryId": com_entry_id(raw).hex(), "author": cbor2.loads(raw)[1].hex(),
                        "kind": fields[0], "parents": parents, "time": str(fields[3])}  # fmt: skip
            entry = com.parse_entry(raw, root_public)
            if [entry.id.hex(), entry.author.hex(), entry.kind, [p.hex() for p in entry.parents],
                    str(entry.time_ms)] != list(expected.values()):  # fmt: skip
                abort(f"{comment}: parse_entry reads other fields")
        else:
            expect_error(lambda r=raw: com.parse_entry(r, root_public), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"community": community_hex, "entry": raw.hex()}, expected=expected,
               error=error)  # fmt: skip
    tests = vf.group("entry", entry_comment + " Extension keys, sizes at the limit, unknown "
                     "odd kinds: not checked against the CDDL.")  # fmt: skip
    for comment, raw, flags, requirement, error in extended:
        if error is None:
            entry = com.parse_entry(raw, root_public)
            expected = {"entryId": com_entry_id(raw).hex(), "author": entry.author.hex(),
                        "kind": entry.kind, "parents": [p.hex() for p in entry.parents],
                        "time": str(entry.time_ms)}  # fmt: skip
            if cbor2.loads(cbor2.loads(raw)[2])[2] != list(entry.parents):
                abort(f"{comment}: parse_entry reads other parents")
        else:
            expect_error(lambda r=raw: com.parse_entry(r, root_public), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"community": community_hex, "entry": raw.hex()}, expected=expected,
               error=error)  # fmt: skip
    odd = com_signed(member_seed, {**base, 0: 41, 4: {1: 2}, 6: "must be understood?"})
    fields = cbor2.loads(cbor2.loads(odd)[2])
    if com.parse_entry(odd, root_public).known:
        abort("kind 41 is known")
    vf.add(tests, "an unknown odd kind 41, with even key 6: only the common fields are checked",
           flags=["Extensibility"], requirement="COM-R12",
           input={"community": community_hex, "entry": odd.hex()},
           expected={"entryId": com_entry_id(odd).hex(), "author": cbor2.loads(odd)[1].hex(),
                     "kind": 41, "parents": [create_id.hex()], "time": str(COM_TIME)})  # fmt: skip

    # -- capabilities --------------------------------------------------------------------
    tests = vf.group(
        "capability",
        "Check input.capability as an invite capability for the community input.community "
        "(06-community.md 7.1). Valid: expected.inviteId (7.2), inviter, role, expires "
        "(a decimal string), uses and nonce. Invalid: COMMUNITY_INVITE_INVALID, whatever "
        "the fault (the comment says which).",
        cddl={"file": "spec/cddl/community.cddl", "rule": "capability", "field": "capability"},
    )
    week = COM_TIME + 7 * 86_400_000
    spec_cap = com_signed(COM_OWNER_SEED, {1: root_public, 2: 1, 3: week, 4: 5,
                                           5: bytes(range(16))}, COM_INVITE_DOMAIN)  # fmt: skip
    if com_invite_id(spec_cap).hex() != SPEC_COMMUNITY["invite-id"]:
        abort("06-community.md 7.7: the invite ID differs")
    cap_base = {1: root_public, 2: 1, 3: COM_TIME, 4: 1, 5: bytes(16)}
    mod_seed = seed("community/mod")
    # fmt: off
    cap_cases: list[tuple[str, bytes, list[str], str | None]] = [
        ("06-community.md 7.7: one week, five uses, as member", spec_cap, ["SpecExample"], None),
        ("role moderator, 2**32-1 uses, seeded inviter", com_signed(mod_seed, {**cap_base, 2: 2,
         4: 2**32 - 1}, COM_INVITE_DOMAIN), ["Seeded", "Boundary"], None),
        ("an unknown odd key 7", com_signed(mod_seed, {**cap_base, 7: "later"},
         COM_INVITE_DOMAIN), ["Extension"], None),
        ("the signature's last byte changed", bytes(forged_cap), ["Forged"], invalid_cap),
        ("signed under starling/community-entry/1", com_signed(mod_seed, cap_base),
         ["Forged"], invalid_cap),
        ("another community", com_signed(mod_seed, {**cap_base, 1: owner_public},
         COM_INVITE_DOMAIN), [], invalid_cap),
        ("role 0", com_signed(mod_seed, {**cap_base, 2: 0}, COM_INVITE_DOMAIN), ["Structure"],
         invalid_cap),
        ("role 4 (owners are made by the root alone)", com_signed(mod_seed, {**cap_base, 2: 4},
         COM_INVITE_DOMAIN), ["Structure"], invalid_cap),
        ("0 uses", com_signed(mod_seed, {**cap_base, 4: 0}, COM_INVITE_DOMAIN), ["Structure"],
         invalid_cap),
        ("a nonce of 15 bytes", com_signed(mod_seed, {**cap_base, 5: bytes(15)},
         COM_INVITE_DOMAIN), ["Structure"], invalid_cap),
        ("an unknown even key 6", com_signed(mod_seed, {**cap_base, 6: 1}, COM_INVITE_DOMAIN),
         ["Structure"], invalid_cap),
        ("513 bytes", com_signed(mod_seed, {**cap_base, 7: "x" * 334}, COM_INVITE_DOMAIN),
         ["Boundary"], invalid_cap),
    ]
    # fmt: on
    if len(cap_cases[-1][1]) != 513:
        abort(f"the oversized capability is {len(cap_cases[-1][1])} bytes")
    for comment, raw, flags, error in cap_cases:
        if error is None:
            env, pay = cbor2.loads(raw), cbor2.loads(cbor2.loads(raw)[2])
            expected = {"inviteId": com_invite_id(raw).hex(), "inviter": env[1].hex(),
                        "role": pay[2], "expires": str(pay[3]), "uses": pay[4],
                        "nonce": pay[5].hex()}  # fmt: skip
            cap = com.parse_capability(raw, root_public)
            if [cap.id.hex(), cap.inviter.hex(), int(cap.role), str(cap.expires_ms), cap.max_uses,
                    cap.nonce.hex()] != list(expected.values()):  # fmt: skip
                abort(f"{comment}: parse_capability reads other fields")
        else:
            expect_error(lambda r=raw: com.parse_capability(r, root_public), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement="COM-R40",
               input={"community": community_hex, "capability": raw.hex()}, expected=expected,
               error=error)  # fmt: skip

    # -- invite links --------------------------------------------------------------------
    tests = vf.group(
        "invite-link",
        "Parse input.text as an invite link or a bare invite code, in the order of "
        "06-community.md 7.6. Valid: expected.community, inviteId and peers (each a peer ID, "
        "its addresses and its relays; IPs as bytes in hex). Invalid: the code of the first "
        "failing step.",
    )

    def code_of(payload: object) -> str:
        return bech32_text("sj", five_bit_groups(cbor2.dumps(payload, canonical=True)))

    owner_peer = peer_id_of(COM_OWNER_SEED)
    hint = [owner_peer, [address_value(("203.0.113.20", 4002))], []]
    spec_link = "starling://join/" + code_of({1: spec_cap, 2: [hint]})
    if spec_link != SPEC_COMMUNITY["link"]:
        abort("06-community.md 7.7: the link differs")
    relay_peer = peer_id_of(seed("community/relay"))
    full_hint = [owner_peer, [address_value(("203.0.113.20", 4002)),
                              address_value(("2001:db8::20", 4002))],
                 [[relay_peer, address_value(("198.51.100.7", 443))]]]  # fmt: skip
    four = [[peer_id_of(seed(f"community/peer/{i}")), [address_value((f"192.0.2.{i + 1}", 4002))
             for _ in range(4)], [[relay_peer, address_value(("198.51.100.7", 443))]] * 2]
            for i in range(4)]  # fmt: skip
    body = code_of({1: spec_cap, 2: [hint]})[3:]
    groups = five_bit_groups(cbor2.dumps({1: spec_cap}))
    padded_code = bech32_text("sj", [*groups[:-1], groups[-1] | 1])
    one_more = bech32_text("sj", [*groups, 0])
    link_malformed = "COMMUNITY_LINK_MALFORMED"
    # fmt: off
    link_cases: list[tuple[str, str, list[str], str, str | None]] = [
        ("06-community.md 7.7: one hint, one address", spec_link, ["SpecExample"], "COM-R48",
         None),
        ("the same link in upper case, for a QR code", spec_link.upper(), ["QrForm"], "COM-R48",
         None),
        ("the bare invite code, with spaces and a newline around", "  " + spec_link[16:] + "\n",
         [], "COM-R49", None),
        ("no peer hints", "starling://join/" + code_of({1: spec_cap}), [], "COM-R47", None),
        ("a hint with an IPv6 address and a relay", "starling://join/" + code_of(
            {1: spec_cap, 2: [full_hint]}), ["Seeded"], "COM-R47", None),
        ("four hints, each with four addresses and two relays", "starling://join/" + code_of(
            {1: spec_cap, 2: four}), ["Boundary", "Seeded"], "COM-R47", None),
        ("an unknown odd key 3", "starling://join/" + code_of({1: spec_cap, 3: "later"}),
         ["Extension"], "COM-R47", None),
        ("1665 characters", "starling://join/sj1" + "q" * 1646, ["Boundary"], "COM-R48",
         "COMMUNITY_LINK_TOO_LONG"),
        ("another scheme", "https://join/" + spec_link[16:], ["Structure"], "COM-R49",
         link_malformed),
        ("the prefix without its last slash", "starling://join" + spec_link[16:],
         ["Structure"], "COM-R49", link_malformed),
        ("the last character changed", spec_link[:-1] + ("q" if spec_link[-1] != "q" else "p"),
         ["TextForm"], "COM-R48", "ID_TEXT_CHECKSUM"),
        ("the code in mixed case", "starling://join/sj1" + body[:10].upper() + body[10:],
         ["TextForm"], "COM-R48", "ID_TEXT_MIXED_CASE"),
        ("the prefix sc", "starling://join/" + bech32_text("sc", five_bit_groups(cbor2.dumps(
            {1: spec_cap}))), ["TextForm"], "COM-R48", "ID_TEXT_PREFIX"),
        ("a 'b', outside the alphabet", "starling://join/sj1b" + body[1:], ["TextForm"],
         "COM-R48", "ID_TEXT_CHARACTER"),
        ("a padding bit set (checksum recomputed)", "starling://join/" + padded_code,
         ["TextForm"], "COM-R48", "ID_TEXT_PADDING"),
        ("a data character that carries no byte", "starling://join/" + one_more, ["TextForm"],
         "COM-R48", "ID_TEXT_LENGTH"),
        ("a payload that is an array", "starling://join/" + code_of([spec_cap]), ["Structure"],
         "COM-R47", link_malformed),
        ("no capability", "starling://join/" + code_of({2: [hint]}), ["Structure"], "COM-R47",
         link_malformed),
        ("five hints", "starling://join/" + code_of({1: spec_cap, 2: [hint] * 5}), ["Boundary"],
         "COM-R47", link_malformed),
        ("an address of 3 bytes", "starling://join/" + code_of({1: spec_cap, 2: [[owner_peer,
         [[b"\x01\x02\x03", 4002]], []]]}), ["Structure"], "COM-R47", link_malformed),
        ("port 0", "starling://join/" + code_of({1: spec_cap, 2: [[owner_peer,
         [[bytes(4), 0]], []]]}), ["Structure"], "COM-R47", link_malformed),
        ("a hint of two elements", "starling://join/" + code_of({1: spec_cap, 2: [[owner_peer,
         []]]}), ["Structure"], "COM-R47", link_malformed),
        ("a forged capability", "starling://join/" + code_of({1: bytes(forged_cap)}),
         ["Forged"], "COM-R49", invalid_cap),
    ]
    # fmt: on
    for comment, text, flags, requirement, error in link_cases:
        if error is None:
            stripped = text.strip(" \t\r\n")
            code = stripped[16:] if stripped.lower().startswith("starling://join/") else stripped
            payload = cbor2.loads(bytes(com_bech32_bytes(code.lower())))
            peers = [{"peerId": h[0].hex(),
                      "addresses": [{"ip": a[0].hex(), "port": a[1]} for a in h[1]],
                      "relays": [{"peerId": r[0].hex(), "ip": r[1][0].hex(), "port": r[1][1]}
                                 for r in h[2]]} for h in payload.get(2, [])]  # fmt: skip
            cap_payload = cbor2.loads(cbor2.loads(payload[1])[2])
            expected = {"community": cap_payload[1].hex(),
                        "inviteId": com_invite_id(payload[1]).hex(), "peers": peers}  # fmt: skip
            link = com.InviteLink.parse(text)
            if link.capability.id.hex() != expected["inviteId"] or len(link.peers) != len(peers):
                abort(f"{comment}: InviteLink.parse reads another link")
        else:
            expect_error(lambda t=text: com.InviteLink.parse(t), error, comment)
            expected = {}
        vf.add(tests, comment, flags=flags, requirement=requirement, input={"text": text},
               expected=expected, error=error)  # fmt: skip

    # -- replay ----------------------------------------------------------------------------
    tests = vf.group(
        "replay",
        "Offer input.entries to a fresh log of the community input.community one at a time, "
        "in each order of input.orders (indices into input.entries), and replay them "
        "(06-community.md section 6). Every order must give the same result: expected.state, "
        "the state (5.6) as JSON, and expected.outcomes, one per input entry: effective, "
        "void (stored, no effect) or rejected with the error, or pending. An entry listed "
        "twice is one entry.",
    )
    for comment, script, flags, requirement in com_replay_scripts():
        raws = script.raws
        summary, verdicts = com_oracle(script.K, raws)
        hand = dict(zip((com_entry_id(r) for r in raws), script.expect, strict=True))
        for eid, want in hand.items():
            if verdicts[eid] != want:
                abort(f"replay {comment!r}: the spec's definitions give {verdicts[eid]} for an "
                      f"entry written to be {want}")  # fmt: skip
        n = len(raws)
        orders = [list(range(n)), list(range(n))[::-1], seeded_permutation(f"{comment}/1", n),
                  seeded_permutation(f"{comment}/2", n)]  # fmt: skip
        outcomes = [com_outcome(verdicts[com_entry_id(r)]) for r in raws]
        for order in orders:
            log = com.AuthorityLog(script.K)
            for i in order:
                log.add(raws[i])
            got = []
            for raw in raws:
                status = log.status(com_entry_id(raw))
                got.append({"status": status.status, "error": status.code.name}
                           if status.code is not None else {"status": status.status})  # fmt: skip
            if log.state.summary() != summary or got != outcomes:
                abort(f"replay {comment!r}: AuthorityLog disagrees in order {order}")
        vf.add(tests, comment, flags=flags, requirement=requirement,
               input={"community": script.K.hex(), "entries": [r.hex() for r in raws],
                      "orders": orders},
               expected={"state": summary, "outcomes": outcomes})  # fmt: skip
    feed_and_sync_groups(vf, COM_ROOT_SEED, COM_OWNER_SEED)
    return vf


# ----------------------------------------------------------------------------- feeds and sync

FEED_DOMAIN_G = "starling/feed-entry/1"
FEED_CLIENT_TAG = b"starling/feed-client/1"
SYNC_TAG_DOMAIN = b"starling/community-sync-tag/1"
FEED_NOW = COM_TIME + 10_000_000  # the receiver's clock in the feed and sync vectors


def feed_signed(
    secret: bytes,
    community: bytes,
    device: bytes,
    seq: int,
    prev: bytes | None,
    hlc: int,
    update: bytes,
    signer: bytes | None = None,
) -> bytes:
    """A feed entry built with cbor2 and libsodium (06-community 8.2); ``signer`` puts another
    key in the envelope than the one that signs."""
    payload: dict[int, object] = {0: 2, 1: community, 2: device, 3: seq}
    if prev is not None:
        payload[4] = prev
    payload[5] = hlc
    payload[6] = update
    data = cbor2.dumps(payload, canonical=True)
    key = ed25519_public(secret) if signer is None else signer
    return cbor2.dumps({1: key, 2: data, 3: nacl_sign(secret, FEED_DOMAIN_G, data)}, canonical=True)


def feed_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"starling/feed-entry-id/1" + raw).digest()


class YjsAuthor:
    """One author's document written with pycrdt directly (06-community 8.4)."""

    def __init__(self, author: bytes, device: bytes) -> None:
        from pycrdt import Doc, Map

        client = int.from_bytes(
            hashlib.sha256(FEED_CLIENT_TAG + author + device).digest()[:4], "big"
        )
        self.doc: Any = Doc(client_id=client)
        self.map: Any = self.doc.get("messages", type=Map)

    def write(
        self, mid: bytes, channel: bytes, hlc: int, text: str | None, edited: int | None = None
    ) -> bytes:
        updates: list[bytes] = []
        sub = self.doc.observe(lambda event: updates.append(event.update))
        with self.doc.transaction():
            self.map[mid.hex()] = [
                channel,
                hlc.to_bytes(8, "big"),
                text,
                None,
                None if edited is None else edited.to_bytes(8, "big"),
            ]
        self.doc.unobserve(sub)
        return updates[-1]


def feed_chain_model(
    community: bytes, authority: list[bytes], entries: list[bytes], channel: bytes
) -> Json:
    from starling.proto import feeds

    log = com.AuthorityLog(community)
    log.add_many(authority)
    fs = feeds.FeedSet(log)
    outcomes = []
    for raw in entries:
        result = fs.add(raw, FEED_NOW)
        item: Json = {"outcome": result.outcome.value}
        if result.code is not None:
            item["error"] = result.code.name
        outcomes.append(item)
    view = [
        {"author": m.author.hex(), "id": m.id.hex(), "text": m.text}
        for m in fs.page(channel, None, 1000)
    ]
    return {"outcomes": outcomes, "view": view}


def feed_and_sync_groups(vf: VectorFile, root_seed: bytes, owner_seed: bytes) -> None:
    from starling.proto import sync

    community = ed25519_public(root_seed)
    owner = identity.PrivateKey(owner_seed)
    alice_seed, bob_seed, carol_seed = (
        seed(f"community/feeds/{n}") for n in ("alice", "bob", "carol")
    )
    alice, bob = ed25519_public(alice_seed), ed25519_public(bob_seed)
    root_key = identity.PrivateKey(root_seed)
    genesis = com.genesis(root_key, owner.public_key.raw, COM_TIME, "vectors")
    chan = com.channel_add(owner, community, [genesis[-1].id], COM_TIME + 1, "general")
    cap = com.make_capability(
        owner,
        community,
        expires_ms=COM_TIME + 10**9,
        nonce=seeded_bytes("community/feeds/nonce", 16),
        max_uses=5,
    )
    ja = com.join(identity.PrivateKey(alice_seed), cap, [chan.id], COM_TIME + 2)
    jb = com.join(identity.PrivateKey(bob_seed), cap, [ja.id], COM_TIME + 3)
    authority = [e.raw for e in (*genesis, chan, ja, jb)]
    dev_a, dev_b = b"\xaa" * 8, b"\xbb" * 8
    ya = YjsAuthor(alice, dev_a)
    t = COM_TIME + 1000

    def hlc(ms: int, counter: int = 0) -> int:
        return (ms << 16) | counter

    def a_post(seq: int, prev: bytes | None, text: str, ms: int, doc: YjsAuthor = ya) -> bytes:
        mid = dev_a + seq.to_bytes(8, "big")
        return feed_signed(
            alice_seed, community, dev_a, seq, prev, hlc(ms), doc.write(mid, chan.id, hlc(ms), text)
        )

    a1 = a_post(1, None, "first", t)
    a2 = a_post(2, feed_id(a1), "second", t + 1)
    a3 = a_post(3, feed_id(a2), "third", t + 2)

    # -- feed entries alone ---------------------------------------------------------------
    tests = vf.group(
        "feed-entry",
        "Check input.entry alone as a feed entry of the community input.community "
        "(06-community.md 8.2 and steps 1-5 of 8.3). Valid: expected.entryId (SHA-256 of "
        '"starling/feed-entry-id/1" || the bytes), author, device, seq, prev (absent for '
        "seq 1) and hlc (a decimal string).",
        cddl={"file": "spec/cddl/community.cddl", "rule": "feed-entry", "field": "entry"},
    )
    forged = bytearray(a2)
    forged[-1] ^= 0x01
    bad_prev = feed_signed(alice_seed, community, dev_a, 1, b"\x01" * 32, hlc(t), b"\x00\x00")
    in_alice = feed_signed(
        bob_seed, community, dev_a, 4, feed_id(a3), hlc(t + 3), b"\x00\x00", signer=alice
    )
    other = feed_signed(
        alice_seed, ed25519_public(seed("community/other")), dev_a, 1, None, hlc(t), b"\x00\x00"
    )
    big = feed_signed(alice_seed, community, dev_a, 1, None, hlc(t), b"\x00" * 12289)
    cases: list[tuple[str, bytes, list[str], str, str | None]] = [
        ("Alice's first entry", a1, ["Feed"], "COM-R50", None),
        ("Alice's second entry, naming the first as prev", a2, ["Feed"], "COM-R50", None),
        (
            "a signature that does not hold (last byte changed)",
            bytes(forged),
            ["Forged"],
            "COM-R51",
            "FEED_ENTRY_FORGED",
        ),
        (
            "an entry in Alice's feed (her key as signer) signed by Bob",
            in_alice,
            ["Forged"],
            "COM-R51",
            "FEED_ENTRY_FORGED",
        ),
        ("prev on the first entry", bad_prev, ["Structure"], "COM-R50", "FEED_ENTRY_MALFORMED"),
        ("an entry of another community", other, ["Feed"], "COM-R50", "FEED_WRONG_COMMUNITY"),
        ("an update of 12289 bytes", big, ["Structure"], "COM-R50", "FEED_ENTRY_MALFORMED"),
    ]
    from starling.proto import feeds

    for comment, raw, flags, requirement, error in cases:
        if error is None:
            entry = feeds.parse_feed_entry(raw, community)
            body = cbor2.loads(cbor2.loads(raw)[2])
            expected: Json = {
                "entryId": feed_id(raw).hex(),
                "author": alice.hex(),
                "device": body[2].hex(),
                "seq": body[3],
                "hlc": str(body[5]),
            }
            if 4 in body:
                expected["prev"] = body[4].hex()
            if (entry.id, entry.seq, entry.hlc) != (feed_id(raw), body[3], body[5]):
                abort(f"{comment}: parse_feed_entry reads other fields")
        else:
            expect_error(lambda r=raw: feeds.parse_feed_entry(r, community), error, comment)
            expected = {}
        vf.add(
            tests,
            comment,
            flags=flags,
            requirement=requirement,
            input={"community": community.hex(), "entry": raw.hex()},
            expected=expected,
            error=error,
        )

    # -- feed chains ------------------------------------------------------------------------
    tests = vf.group(
        "feed-chain",
        "Replay input.authority (06-community 6) as the log, then offer input.entries in order "
        "to the feeds (8.3) with the clock at input.now (ms). Expected: per entry its outcome "
        "(accepted, duplicate, pending, held, refused) and error code, then the view of "
        "input.channel (8.6), oldest first: author, message ID (device || seq) and text.",
    )
    fork2 = a_post(2, feed_id(a1), "another second", t + 5, YjsAuthor(alice, dev_a))
    broken = feed_signed(
        alice_seed,
        community,
        dev_a,
        2,
        b"\x02" * 32,
        hlc(t + 1),
        ya.write(dev_a + (9).to_bytes(8, "big"), chan.id, hlc(t + 1), "x"),
    )
    future = feed_signed(
        alice_seed,
        community,
        dev_a,
        4,
        feed_id(a3),
        hlc(FEED_NOW + 120_000),
        YjsAuthor(alice, dev_a).write(
            dev_a + (4).to_bytes(8, "big"), chan.id, hlc(FEED_NOW + 120_000), "later"
        ),
    )
    yb = YjsAuthor(bob, dev_b)
    hijack = feed_signed(
        bob_seed,
        community,
        dev_b,
        1,
        None,
        hlc(t + 10),
        yb.write(dev_a + (1).to_bytes(8, "big"), chan.id, hlc(t + 10), "hijacked"),
    )
    stranger = feed_signed(
        carol_seed,
        community,
        b"\xcc" * 8,
        1,
        None,
        hlc(t),
        YjsAuthor(ed25519_public(carol_seed), b"\xcc" * 8).write(
            b"\xcc" * 8 + (1).to_bytes(8, "big"), chan.id, hlc(t), "hello"
        ),
    )
    ban = com.ban(owner, community, [jb.id], t + 100, bob)
    yb2 = YjsAuthor(bob, dev_b)
    b_before = feed_signed(
        bob_seed,
        community,
        dev_b,
        1,
        None,
        hlc(t + 50),
        yb2.write(dev_b + (1).to_bytes(8, "big"), chan.id, hlc(t + 50), "before"),
    )
    b_after = feed_signed(
        bob_seed,
        community,
        dev_b,
        2,
        feed_id(b_before),
        hlc(t + 150),
        yb2.write(dev_b + (2).to_bytes(8, "big"), chan.id, hlc(t + 150), "after"),
    )
    chains: list[tuple[str, list[bytes], list[bytes], str]] = [
        ("a valid chain of three entries, one given twice", authority, [a1, a2, a3, a2], "COM-R52"),
        ("a gap: entry 3 waits for entry 2", authority, [a1, a3, a2], "COM-R52"),
        ("a fork: a second, different entry 2", authority, [a1, a2, fork2], "COM-R52"),
        ("a broken hash chain: prev is not entry 1's ID", authority, [a1, broken], "COM-R52"),
        (
            "from the future: 120 s ahead of the clock, held",
            authority,
            [a1, a2, a3, future],
            "COM-R59",
        ),
        (
            "Bob's update writes Alice's message key: only Bob's document changes",
            authority,
            [a1, hijack],
            "COM-R51",
        ),
        ("a stranger's entry", authority, [stranger], "COM-R57"),
        (
            "a banned member's entries before and after the ban",
            [*authority, ban.raw],
            [b_before, b_after],
            "COM-R58",
        ),
    ]
    for comment, auth, entries, requirement in chains:
        expected = feed_chain_model(community, auth, entries, chan.id)
        vf.add(
            tests,
            comment,
            flags=["Feed"],
            requirement=requirement,
            input={
                "community": community.hex(),
                "authority": [r.hex() for r in auth],
                "entries": [r.hex() for r in entries],
                "channel": chan.id.hex(),
                "now": str(FEED_NOW),
            },
            expected=expected,
        )
    outcomes = [
        o
        for _, auth, entries, _ in chains
        for o in feed_chain_model(community, auth, entries, chan.id)["outcomes"]
    ]
    want = {"FEED_FORK", "FEED_FROM_FUTURE", "FEED_NOT_MEMBER", "FEED_AUTHOR_BANNED"}
    if not want <= {o.get("error") for o in outcomes}:
        abort("feed-chain vectors miss an outcome")

    # -- sync tags ------------------------------------------------------------------------------
    tests = vf.group(
        "sync-tag",
        'The HELLO tag of a community (06-community 9.2): SHA-256("starling/community-sync-tag/1"'
        " || input.nonce || input.communityKey), first 16 bytes.",
    )
    for label in ("a", "b"):
        nonce = seeded_bytes(f"community/sync/nonce/{label}", 16)
        tag = hashlib.sha256(SYNC_TAG_DOMAIN + nonce + community).digest()[:16]
        if sync.community_tag(nonce, community) != tag:
            abort("community_tag disagrees")
        vf.add(
            tests,
            f"seeded nonce {label!r}",
            flags=["Sync"],
            requirement="COM-R61",
            input={"nonce": nonce.hex(), "communityKey": community.hex()},
            expected={"tag": tag.hex()},
        )

    # -- sync messages --------------------------------------------------------------------------
    tests = vf.group(
        "sync-message",
        "Decode input.frame as a sync message (06-community 9.1). Valid: expected.type and, "
        "when the message names one, expected.community.",
        cddl={"file": "spec/cddl/community.cddl", "rule": "sync-message", "field": "frame"},
    )
    nonce = seeded_bytes("community/sync/nonce/a", 16)
    hello = cbor2.dumps(
        {0: 2, 1: nonce, 2: [hashlib.sha256(SYNC_TAG_DOMAIN + nonce + community).digest()[:16]]},
        canonical=True,
    )
    have = cbor2.dumps({0: 4, 1: community, 2: [jb.id], 3: [[alice, dev_a, 1]]}, canonical=True)
    have_more = cbor2.dumps({0: 4, 1: community, 2: [], 3: [], 4: True}, canonical=True)
    entries_msg = cbor2.dumps({0: 6, 1: community, 2: [jb.raw], 3: [a1]}, canonical=True)
    done = cbor2.dumps({0: 8, 1: community}, canonical=True)
    messages: list[tuple[str, bytes, str | None]] = [
        ("HELLO with one tag", hello, None),
        ("HAVE: one head, one feed length", have, None),
        ("HAVE with more set, nothing yet", have_more, None),
        ("ENTRIES: one authority entry, one feed entry", entries_msg, None),
        ("DONE", done, None),
        (
            "HELLO with a 15-byte nonce",
            cbor2.dumps({0: 2, 1: nonce[:15], 2: []}, canonical=True),
            "SYNC_MALFORMED",
        ),
        (
            "HELLO with 257 tags",
            cbor2.dumps({0: 2, 1: nonce, 2: [nonce] * 257}, canonical=True),
            "SYNC_MALFORMED",
        ),
        (
            "HAVE with a head of 31 bytes",
            cbor2.dumps({0: 4, 1: community, 2: [b"\x00" * 31], 3: []}, canonical=True),
            "SYNC_MALFORMED",
        ),
        (
            "HAVE with a feed length of two items",
            cbor2.dumps({0: 4, 1: community, 2: [], 3: [[alice, 1]]}, canonical=True),
            "SYNC_MALFORMED",
        ),
        (
            "an unknown even type 10",
            cbor2.dumps({0: 10, 1: community}, canonical=True),
            "SYNC_MALFORMED",
        ),
        (
            "not canonical CBOR (a non-shortest type)",
            b"\xa2\x00\x18\x08\x01\x58\x20" + community,
            "SYNC_MALFORMED",
        ),
        (
            "a frame of 65520 bytes",
            cbor2.dumps({0: 8, 1: community, 3: b"\x00" * 65478}, canonical=True),
            "SYNC_TOO_LARGE",
        ),
    ]
    for comment, frame, error in messages:
        if error is None:
            decoded = cbor2.loads(frame)
            expected = {"type": decoded[0]}
            if 1 in decoded and decoded[0] != 2:
                expected["community"] = decoded[1].hex()
            sync.decode_message(frame)
        else:
            if error == "SYNC_TOO_LARGE" and len(frame) <= 65519:
                abort(f"{comment}: the frame is {len(frame)} bytes")
            expect_error(lambda f=frame: sync.decode_message(f), error, comment)
            expected = {}
        vf.add(
            tests,
            comment,
            flags=["Sync"],
            requirement="COM-R64",
            input={"frame": frame.hex()},
            expected=expected,
            error=error,
        )

    # -- answers ----------------------------------------------------------------------------------
    tests = vf.group(
        "sync-answer",
        "A node holds the community input.community with the authority entries input.authority "
        "and the feed entries input.feeds (taken with the clock at input.now). A session starts; "
        "the peer's first message is input.request. Expected: the frames the node sends, in order "
        "(06-community 9.2, 9.3).",
    )
    held_feeds = [a1, a2, a3]
    answers: list[tuple[str, bytes]] = [
        ("HELLO naming the community: the node's HAVE", hello),
        (
            "HELLO naming nothing the node holds: no answer",
            cbor2.dumps({0: 2, 1: nonce, 2: [b"\x00" * 16]}, canonical=True),
        ),
        (
            "HAVE of a joiner that holds nothing: HAVE, then everything, parents first, then DONE",
            cbor2.dumps({0: 4, 1: community, 2: [], 3: []}, canonical=True),
        ),
        ("HAVE with the latest head and one of Alice's three entries: the two others", have),
        (
            "HAVE of a community the node does not hold: DONE alone",
            cbor2.dumps(
                {0: 4, 1: ed25519_public(seed("community/other")), 2: [], 3: []}, canonical=True
            ),
        ),
    ]
    for comment, request in answers:
        replica = sync.Replica(community)
        replica.take(authority, held_feeds, FEED_NOW)
        session = sync.SyncSession({community: replica}, 0.0)
        session.receive(request, 0.0, FEED_NOW)
        frames = session.frames_to_send()
        for frame in frames:
            cbor2.loads(frame)  # well-formed
        vf.add(
            tests,
            comment,
            flags=["Sync"],
            requirement="COM-R63",
            input={
                "community": community.hex(),
                "authority": [r.hex() for r in authority],
                "feeds": [r.hex() for r in held_feeds],
                "now": str(FEED_NOW),
                "request": request.hex(),
            },
            expected={"frames": [f.hex() for f in frames]},
        )

    # -- live messages ----------------------------------------------------------------------------
    tests = vf.group(
        "live-message",
        "Decode input.data, the data of a gossip message on a community's topic (06-community "
        "9.7). Valid: expected.kind (1 authority entry, 2 feed entry) and expected.entry.",
    )
    lives: list[tuple[str, bytes, str | None]] = [
        ("a live authority entry", cbor2.dumps({0: 1, 1: jb.raw}, canonical=True), None),
        ("a live feed entry", cbor2.dumps({0: 2, 1: a1}, canonical=True), None),
        ("kind 3", cbor2.dumps({0: 3, 1: a1}, canonical=True), "SYNC_MALFORMED"),
        ("no entry", cbor2.dumps({0: 2}, canonical=True), "SYNC_MALFORMED"),
        ("16401 bytes", cbor2.dumps({0: 2, 1: b"\x00" * 16395}, canonical=True), "SYNC_MALFORMED"),
    ]
    for comment, data, error in lives:
        if error is None:
            decoded = cbor2.loads(data)
            expected = {"kind": decoded[0], "entry": decoded[1].hex()}
            if sync.decode_live(data) != (decoded[0], decoded[1]):
                abort(f"{comment}: decode_live disagrees")
        else:
            expect_error(lambda d=data: sync.decode_live(d), error, comment)
            expected = {}
        vf.add(
            tests,
            comment,
            flags=["Live"],
            requirement="COM-R67",
            input={"data": data.hex()},
            expected=expected,
            error=error,
        )


def com_bech32_bytes(text: str) -> bytes:
    """The data bytes of a lower-case bech32m text whose checksum is known good."""
    values = [BECH32_ALPHABET.index(c) for c in text[text.rfind("1") + 1 : -6]]
    bits = "".join(f"{v:05b}" for v in values)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - len(bits) % 8, 8))


# ----------------------------------------------------------------------------- main

SUITES: dict[str, Callable[[], VectorFile]] = {
    "codec": codec_suite,
    "identity": identity_suite,
    "envelope": envelope_suite,
    "session": session_suite,
    "dht": dht_suite,
    "gossip": gossip_suite,
    "nat": nat_suite,
    "community": community_suite,
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
