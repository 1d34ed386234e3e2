"""The interop vectors, their generator and the vector runner (starling.node.interop).

What is checked here:

* every committed vector file follows the JSON Schema and the rules the schema
  cannot express (increasing tcIds, defined flags, registered error names,
  requirement IDs that the code cites);
* ``interop/generate.py`` reproduces the committed files byte for byte;
* our implementation passes every vector, the codec suite reaches every
  decoder error code, the session suite every code the sans-IO session
  core can raise, the dht suite every record, proof, token and store code,
  the gossip suite every message type and every signed-message code, and the
  nat suite every message of its four contexts and every code that is not
  about timing or rates;
* structurally valid envelopes, handshake payloads, stream headers and DHT
  records match their CDDL rule (pycddl), and so do the payloads and stream
  headers of the handshake transcripts, the bodies of the DHT messages, the
  gossip messages and the signed gossip messages, the NAT messages (each
  against its context's rule) and the vouchers;
* the harness contract: ``run_main`` for our implementation, ``verify_main``
  driving an external command.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import jsonschema
import pycddl
import pytest

import starling.proto
from starling.node import interop
from starling.proto.errors import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "interop"
VECTORS = INTEROP / "vectors"
SCHEMA = INTEROP / "schema" / "vectors.schema.json"
GENERATOR = INTEROP / "generate.py"
SUITE_FILES = {
    "codec": "codec.json",
    "identity": "identity.json",
    "envelope": "envelope.json",
    "session": "session.json",
    "dht": "dht.json",
    "gossip": "gossip.json",
    "nat": "nat.json",
    "community": "community.json",
}

Json = dict[str, Any]


def load(path: Path) -> Json:
    data: Json = json.loads(path.read_text(encoding="utf-8"))
    return data


def each_test(vectors: Json) -> Iterator[tuple[Json, Json]]:
    for group in vectors["testGroups"]:
        for test in group["tests"]:
            yield group, test


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = load(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def cited_requirements() -> set[str]:
    """Requirement IDs cited in starling.proto, as [ID-R2] or as a "ID-R2" argument."""
    cited: set[str] = set()
    for path in Path(next(iter(starling.proto.__path__))).glob("*.py"):
        text = path.read_text(encoding="utf-8")
        cited.update(re.findall(r"\[([A-Z]+-R[0-9]+)\]", text))
        cited.update(re.findall(r"\"([A-Z]+-R[0-9]+)\"", text))
    return cited


# ----------------------------------------------------------------------------- (a) format


def test_the_committed_vector_files_are_exactly_the_suites() -> None:
    assert sorted(p.name for p in VECTORS.glob("*.json")) == sorted(SUITE_FILES.values())


@pytest.mark.parametrize("suite", sorted(SUITE_FILES))
def test_vector_file_follows_the_schema(
    suite: str, validator: jsonschema.protocols.Validator
) -> None:
    vectors = load(VECTORS / SUITE_FILES[suite])
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(vectors)]
    assert errors == []
    assert vectors["suite"] == suite


@pytest.mark.parametrize("suite", sorted(SUITE_FILES))
def test_vector_file_rules_beyond_the_schema(suite: str) -> None:
    vectors = load(VECTORS / SUITE_FILES[suite])
    ids = [test["tcId"] for _, test in each_test(vectors)]
    assert ids == sorted(set(ids)), "tcIds must be unique and increasing"
    assert vectors["numberOfTests"] == len(ids) > 0
    used_flags = {flag for _, test in each_test(vectors) for flag in test["flags"]}
    assert used_flags == set(vectors["notes"]), "every flag has a note and every note is used"
    cited = cited_requirements()
    for _, test in each_test(vectors):
        assert test["requirement"] in cited, test
        if test["result"] == "invalid":
            assert test["error"] in ErrorCode.__members__, test
            assert test["expected"] == {}, test


def test_the_schema_rejects_malformed_files(validator: jsonschema.protocols.Validator) -> None:
    good = load(VECTORS / "codec.json")
    assert validator.is_valid(good)
    valid_test = good["testGroups"][0]["tests"][0]
    assert valid_test["result"] == "valid"
    invalid_test = good["testGroups"][1]["tests"][0]
    assert invalid_test["result"] == "invalid"

    def broken(change: Any) -> Json:
        doc = copy.deepcopy(good)
        change(doc)
        return doc

    mutations = {
        "valid test with an error": lambda d: d["testGroups"][0]["tests"][0].update(
            error="CBOR_FLOAT"
        ),
        "invalid test without an error": lambda d: d["testGroups"][1]["tests"][0].pop("error"),
        "uppercase hex": lambda d: d["testGroups"][0]["tests"][0]["input"].update(cbor="0A"),
        "odd-length hex": lambda d: d["testGroups"][0]["tests"][0]["input"].update(cbor="0"),
        "uint as a JSON number": lambda d: d["testGroups"][0]["tests"][0]["expected"].update(
            value={"uint": 0}
        ),
        "unknown test field": lambda d: d["testGroups"][0]["tests"][0].update(extra=1),
        "unknown group type": lambda d: d["testGroups"][0].update(type="nope"),
        "unknown top-level field": lambda d: d.update(timestamp="now"),
        "bad requirement ID": lambda d: d["testGroups"][0]["tests"][0].update(requirement="R2"),
        "wrong format name": lambda d: d.update(schema="starling-vectors/2"),
    }
    for name, change in mutations.items():
        assert not validator.is_valid(broken(change)), name


# ----------------------------------------------------------------------------- (b) generator


def test_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    produced = sorted(p.name for p in tmp_path.iterdir())
    assert produced == sorted(SUITE_FILES.values())
    for name in produced:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name


# ------------------------------------------------------------------ (c) our implementation


@pytest.mark.parametrize("suite", sorted(SUITE_FILES))
def test_our_implementation_passes_every_vector(suite: str) -> None:
    vectors = load(VECTORS / SUITE_FILES[suite])
    results = interop.run_suite(suite, vectors)
    assert len(results) == vectors["numberOfTests"] > 0
    assert [tc for tc, status in results.items() if status != interop.PASS] == []
    valid = sum(1 for _, t in each_test(vectors) if t["result"] == "valid")
    assert 0 < valid < len(results), "each suite has both valid and invalid vectors"


def errors_in(suite: str) -> set[str]:
    vectors = load(VECTORS / SUITE_FILES[suite])
    return {test["error"] for _, test in each_test(vectors) if "error" in test}


def test_codec_vectors_cover_every_decoder_error() -> None:
    decoder_errors = {
        code.name
        for code in ErrorCode
        if code.name.startswith("CBOR_") and code is not ErrorCode.CBOR_UNENCODABLE
    }
    assert decoder_errors - errors_in("codec") == set()


def test_identity_and_envelope_vectors_cover_their_errors() -> None:
    wanted = {
        code.name
        for code in ErrorCode
        if code.name.startswith(("ID_TEXT_", "KEY_", "SIG_"))
        and code not in {ErrorCode.KEY_FILE_FORMAT, ErrorCode.KEY_FILE_PERMISSIONS}
        and code is not ErrorCode.SIG_DOMAIN  # a local error: our own caller's domain
    }
    assert wanted - errors_in("identity") == set()
    assert "ENVELOPE_EXTRA_FIELD" in errors_in("envelope")


# Session codes that only the runtime (node/session.py) can meet: timers, admission,
# application decisions, and stream-level handling outside the sans-IO core.
RUNTIME_ONLY_SESSION_CODES = {
    ErrorCode.SESSION_HANDSHAKE_TIMEOUT,
    ErrorCode.SESSION_NOT_READY,
    ErrorCode.SESSION_LIMIT,
    ErrorCode.SESSION_IDLE_TIMEOUT,
    ErrorCode.SESSION_SHUTDOWN,
    ErrorCode.SESSION_PROTOCOL_UNKNOWN,
}


def test_session_vectors_cover_every_core_error() -> None:
    wanted = {
        code.name
        for code in ErrorCode
        if code.name.startswith("SESSION_") and code not in RUNTIME_ONLY_SESSION_CODES
    }
    assert "SESSION_STREAM_TRUNCATED" in wanted  # expressible: "the stream ends after these bytes"
    assert wanted - errors_in("session") == set()
    assert errors_in("session") <= {
        code.name for code in ErrorCode if code.name.startswith("SESSION_")
    }


def test_session_vectors_cover_every_handshake_state() -> None:
    vectors = load(VECTORS / "session.json")
    states = {
        t["input"]["state"]
        for g, t in each_test(vectors)
        if g["type"] == "handshake-receive"
        if "state" in t["input"]
    }
    assert states == {"WAIT_1", "SENT_1", "SENT_2", "DONE"}
    groups = {g["type"] for g in vectors["testGroups"]}
    assert groups == {
        "handshake",
        "handshake-receive",
        "handshake-payload",
        "stream-header",
        "frame-receive",
    }
    transcripts = [t for g, t in each_test(vectors) if g["type"] == "handshake"]
    assert len(transcripts) >= 2
    assert len({t["input"]["initiator"]["identitySeed"] for t in transcripts}) == len(transcripts)


# DHT codes that only a node handling datagrams over time meets (a malformed or unmatched
# datagram, a rate), or that no revision-1 node sends; the dht vectors test pure functions.
DATAGRAM_ONLY_DHT_CODES = {
    ErrorCode.DHT_MALFORMED,
    ErrorCode.DHT_TXID_UNKNOWN,
    ErrorCode.DHT_RATE_LIMITED,
    ErrorCode.DHT_NOT_SERVING,
}


def test_dht_vectors_cover_every_record_proof_token_and_store_error() -> None:
    wanted = {
        code.name
        for code in ErrorCode
        if code.name.startswith("DHT_") and code not in DATAGRAM_ONLY_DHT_CODES
    }
    assert {"DHT_PROOF_INVALID", "DHT_TOKEN_INVALID", "DHT_STORE_FULL"} <= wanted
    assert wanted - errors_in("dht") == set()
    assert errors_in("dht") <= wanted


def test_dht_vectors_cover_every_message_type() -> None:
    vectors = load(VECTORS / "dht.json")
    types = {
        int({k["uint"]: v for k, v in t["input"]["message"]["map"]}["0"]["uint"])
        for g, t in each_test(vectors)
        if g["type"] == "dht-message"
    }
    assert types == {2, 4, 6, 8, 10, 12, 14, 16, 18}
    groups = {g["type"] for g in vectors["testGroups"]}
    assert groups == {
        "distance",
        "closest",
        "dht-message",
        "id-proof",
        "record",
        "store",
        "write-token",
        "token-check",
        "presence-key",
    }


def test_dht_runner_checks_both_directions(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "dht.json")
    test = first_test(vectors, "valid", "dht-message")
    assert interop.run_suite("dht", vectors)[test["tcId"]] == interop.PASS
    datagram = bytearray.fromhex(test["expected"]["datagram"])
    datagram[-1] ^= 1
    test["expected"]["datagram"] = datagram.hex()
    assert interop.run_suite("dht", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err


# Gossip codes that only a node receiving messages over time meets (limits, penalties,
# clocks, subscriptions); the gossip vectors test what a message or a frame is.
BEHAVIOUR_ONLY_GOSSIP_CODES = {
    code
    for code in ErrorCode
    if code.name.startswith("GOSSIP_")
    and code not in {ErrorCode.GOSSIP_MESSAGE_INVALID, ErrorCode.GOSSIP_MESSAGE_TOO_LARGE}
}


def test_gossip_vectors_cover_every_message_type_and_message_code() -> None:
    vectors = load(VECTORS / "gossip.json")
    types = {
        int({k["uint"]: v for k, v in t["input"]["message"]["map"]}["0"]["uint"])
        for g, t in each_test(vectors)
        if g["type"] == "gossip-message"
    }
    assert types == {2, 4, 6, 8, 10, 12, 14, 15, 16, 17, 18, 19}
    groups = {g["type"] for g in vectors["testGroups"]}
    assert groups == {
        "topic",
        "message-sign",
        "message-id",
        "signed-message",
        "gossip-message",
        "gossip-decode",
        "sync-select",
    }
    gossip_codes = {c.name for c in ErrorCode if c.name.startswith("GOSSIP_")}
    wanted = gossip_codes - {c.name for c in BEHAVIOUR_ONLY_GOSSIP_CODES}
    assert wanted == {"GOSSIP_MESSAGE_INVALID", "GOSSIP_MESSAGE_TOO_LARGE"}
    assert wanted <= errors_in("gossip") and errors_in("gossip") & gossip_codes == wanted
    schema_codes = {c.name for c in ErrorCode if c.name.startswith("SCHEMA_")}
    assert schema_codes <= errors_in("gossip"), "decoding vectors reach every schema code"


def test_gossip_runner_checks_both_directions(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "gossip.json")
    test = first_test(vectors, "valid", "gossip-message")
    assert interop.run_suite("gossip", vectors)[test["tcId"]] == interop.PASS
    frame = bytearray.fromhex(test["expected"]["frame"])
    frame[-1] ^= 1
    test["expected"]["frame"] = frame.hex()
    assert interop.run_suite("gossip", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err


# NAT codes that only a node running over time meets (timeouts, rates, limits that need a
# clock, a target's answer, a punch's rounds) or that only its runtime can detect; the nat
# vectors test messages, keys, MACs, vouchers and the decisions that are pure functions.
# tests/test_nat_core.py drives the cores through each of these.
BEHAVIOUR_ONLY_NAT_CODES = {
    ErrorCode.NAT_PROBE_UNSOLICITED,
    ErrorCode.NAT_PROBE_RATE_LIMITED,
    ErrorCode.NAT_DIAL_BACK_RATE_LIMITED,
    ErrorCode.NAT_DIAL_BACK_NOT_SERVING,
    ErrorCode.NAT_DIAL_BACK_TIMEOUT,
    ErrorCode.NAT_RELAY_DURATION_LIMIT,
    ErrorCode.NAT_RELAY_TARGET_UNREACHABLE,
    ErrorCode.NAT_RELAY_TARGET_REFUSED,
    ErrorCode.NAT_PUNCH_FAILED,
    ErrorCode.NAT_PUNCH_TIMEOUT,
}
NAT_CONTEXT_RULES = {
    "control": "nat-control",
    "relay": "relay-message",
    "punch": "punch-message",
    "dial-back": "dial-back-message",
}


def test_nat_vectors_cover_every_message_and_pure_code() -> None:
    vectors = load(VECTORS / "nat.json")
    groups = {g["type"] for g in vectors["testGroups"]}
    assert groups == {
        "nat-message",
        "nat-decode",
        "probe-keys",
        "probe-make",
        "probe-open",
        "voucher-sign",
        "voucher",
        "observed-address",
        "dial-back-check",
        "relay-reserve",
        "relay-connect",
        "relay-forward",
        "punch-plan",
        "relay-entries",
        "bootstrap-string",
    }
    seen = {
        (
            t["input"]["protocol"],
            int({k["uint"]: v for k, v in t["input"]["message"]["map"]}["0"]["uint"]),
        )
        for g, t in each_test(vectors)
        if g["type"] == "nat-message"
    }
    assert {(c, k) for c, k in seen if c != "control"} == {
        ("relay", 2), ("relay", 4), ("relay", 6), ("relay", 8), ("relay", 10),
        ("punch", 2), ("punch", 4), ("dial-back", 2), ("dial-back", 4),
    }  # fmt: skip
    probes = {t["input"]["type"] for g, t in each_test(vectors) if g["type"] == "probe-make"}
    assert probes == {32, 34} and ("control", 36) in seen
    nat_codes = {c.name for c in ErrorCode if c.name.startswith("NAT_")}
    wanted = nat_codes - {c.name for c in BEHAVIOUR_ONLY_NAT_CODES}
    assert wanted <= errors_in("nat") and errors_in("nat") & nat_codes == wanted
    schema_codes = {c.name for c in ErrorCode if c.name.startswith("SCHEMA_")}
    assert schema_codes <= errors_in("nat"), "decoding vectors reach every schema code"


def test_nat_messages_match_the_nat_cddl() -> None:
    nat_cddl = ROOT / "spec" / "cddl" / "nat.cddl"
    rules = {ctx: cddl_schema(nat_cddl, rule) for ctx, rule in NAT_CONTEXT_RULES.items()}
    vectors = load(VECTORS / "nat.json")
    checked = 0
    for g, t in each_test(vectors):
        if g["type"] == "nat-message":
            frame, context = bytes.fromhex(t["expected"]["frame"]), t["input"]["protocol"]
        elif g["type"] == "probe-make":
            frame, context = bytes.fromhex(t["expected"]["datagram"])[6:], "control"
        elif g["type"] == "nat-decode" and t["result"] == "valid" and t["expected"]["known"]:
            frame, context = bytes.fromhex(t["input"]["frame"]), t["input"]["protocol"]
            if cbor2.loads(frame).keys() - {0, 1, 2, 3, 4}:
                continue  # unknown odd keys: the rules list exactly what a sender writes
        else:
            continue
        try:
            rules[context].validate_cbor(frame)
        except pycddl.ValidationError as exc:
            raise AssertionError(f"{t['comment']}: {exc}") from None
        checked += 1
    assert checked >= 25
    # Vouchers signed by the sign vectors, and peer record values with vouchers, match too.
    voucher = cddl_schema(nat_cddl, "voucher-envelope")
    value = cddl_schema(nat_cddl, "peer-record-value")
    for g, t in each_test(vectors):
        if g["type"] == "voucher-sign":
            voucher.validate_cbor(bytes.fromhex(t["expected"]["voucher"]))
        if g["type"] == "relay-entries" and t["comment"].startswith("two relays"):
            envelope = cbor2.loads(bytes.fromhex(t["input"]["record"]))
            value.validate_cbor(cbor2.dumps(cbor2.loads(envelope[2])[5]))
    # The rules are exact: an extra even key, or a missing field, does not match.
    reserve = cbor2.dumps({0: 2, 2: 0})
    with pytest.raises(pycddl.ValidationError):
        rules["relay"].validate_cbor(reserve)
    with pytest.raises(pycddl.ValidationError):
        rules["punch"].validate_cbor(cbor2.dumps({0: 2, 1: 1}))


def test_nat_runner_checks_both_directions(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "nat.json")
    test = first_test(vectors, "valid", "nat-message")
    assert interop.run_suite("nat", vectors)[test["tcId"]] == interop.PASS
    frame = bytearray.fromhex(test["expected"]["frame"])
    frame[-1] ^= 1
    test["expected"]["frame"] = frame.hex()
    assert interop.run_suite("nat", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err


def test_nat_forward_runner_requires_the_fault_on_the_last_packet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    vectors = load(VECTORS / "nat.json")
    test = next(
        t
        for g, t in each_test(vectors)
        if g["type"] == "relay-forward" and t["result"] == "invalid"
    )
    assert interop.run_suite("nat", vectors)[test["tcId"]] == interop.PASS
    test["input"]["packets"].append({"from": "source", "size": 1})
    assert interop.run_suite("nat", vectors)[test["tcId"]] == interop.FAIL
    assert "before the last one" in capsys.readouterr().err


def test_rfc8032_test_1_is_pinned() -> None:
    vectors = load(VECTORS / "identity.json")
    derivations = [t for g, t in each_test(vectors) if g["type"] == "key-derivation"]
    test1 = derivations[0]
    assert test1["input"]["seed"] == (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    )
    assert test1["expected"]["publicKey"] == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )


def first_test(vectors: Json, result: str, group_type: str | None = None) -> Json:
    return next(
        t
        for g, t in each_test(vectors)
        if t["result"] == result and (group_type is None or g["type"] == group_type)
    )


def test_runner_fails_a_wrong_expected_value(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "codec.json")
    test = first_test(vectors, "valid")
    test["expected"]["value"] = {"uint": "12345"}
    assert interop.run_suite("codec", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err


def test_runner_checks_the_encoding_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    # A valid codec vector needs decode(cbor) == value and encode(value) == cbor. Our strict
    # decoder makes the second follow from the first, so break the encoder to see it checked.
    vectors = load(VECTORS / "codec.json")
    test = first_test(vectors, "valid")
    assert interop.run_suite("codec", vectors)[test["tcId"]] == interop.PASS
    monkeypatch.setattr(interop.codec, "encode", lambda value: b"\xf6")
    assert interop.run_suite("codec", vectors)[test["tcId"]] == interop.FAIL


def test_runner_fails_a_wrong_error_code() -> None:
    vectors = load(VECTORS / "codec.json")
    test = first_test(vectors, "invalid")
    test["error"] = "CBOR_FLOAT" if test["error"] != "CBOR_FLOAT" else "CBOR_TRUNCATED"
    assert interop.run_suite("codec", vectors)[test["tcId"]] == interop.FAIL


def test_runner_fails_an_invalid_vector_that_is_accepted() -> None:
    vectors = load(VECTORS / "identity.json")
    test = first_test(vectors, "invalid", "ed25519-verify")
    valid = first_test(vectors, "valid", "ed25519-verify")
    test["input"] = dict(valid["input"])
    assert interop.run_suite("identity", vectors)[test["tcId"]] == interop.FAIL


def test_runner_reports_a_crash_as_fail(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "envelope.json")
    test = first_test(vectors, "invalid")
    test["input"]["envelope"] = "not hex"  # bytes.fromhex raises ValueError
    assert interop.run_suite("envelope", vectors)[test["tcId"]] == interop.FAIL
    err = capsys.readouterr().err
    assert "ValueError" in err and "Traceback" in err


def test_session_runner_fails_a_wrong_transcript(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "session.json")
    test = first_test(vectors, "valid", "handshake")
    msg2 = bytearray.fromhex(test["expected"]["msg2"])
    msg2[-1] ^= 1
    test["expected"]["msg2"] = msg2.hex()
    assert interop.run_suite("session", vectors)[test["tcId"]] == interop.FAIL
    assert "msg2" in capsys.readouterr().err


def test_session_runner_requires_the_fault_on_the_last_input(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same faulty bytes, followed by one more chunk: the error now comes too early.
    vectors = load(VECTORS / "session.json")
    test = next(
        t
        for g, t in each_test(vectors)
        if g["type"] == "handshake-receive" and t["result"] == "invalid" and not t["input"]["end"]
    )
    assert interop.run_suite("session", vectors)[test["tcId"]] == interop.PASS
    test["input"]["receive"].append("00")
    assert interop.run_suite("session", vectors)[test["tcId"]] == interop.FAIL
    assert "before the last input" in capsys.readouterr().err


def test_runner_marks_unknown_group_types_unsupported() -> None:
    vectors = load(VECTORS / "codec.json")
    vectors["testGroups"][0]["type"] = "from-the-future"
    results = interop.run_suite("codec", vectors)
    ids = [t["tcId"] for t in vectors["testGroups"][0]["tests"]]
    assert {results[i] for i in ids} == {interop.UNSUPPORTED}
    assert set(interop.run_suite("no-such-suite", vectors).values()) == {interop.UNSUPPORTED}


def test_typed_values_round_trip() -> None:
    vectors = load(VECTORS / "codec.json")
    for _, test in each_test(vectors):
        value = test["expected"].get("value")
        if value is not None:
            assert interop.to_typed(interop.from_typed(value)) == value
    for malformed in ({"uint": "-1"}, {"uint": "01"}, {"nint": "5"}, {"bool": "true"}, {}):
        with pytest.raises(ValueError):
            interop.from_typed(malformed)


# ----------------------------------------------------------------------------- (d) CDDL


def cddl_groups() -> Iterator[tuple[str, Json]]:
    for suite, name in SUITE_FILES.items():
        for group in load(VECTORS / name)["testGroups"]:
            if "cddl" in group:
                yield suite, group


def structurally_valid(test: Json) -> bool:
    """Valid vectors, and invalid ones that fail only on a key or signature."""
    return test["result"] == "valid" or test["error"].startswith(
        ("SIG_", "KEY_", "SESSION_IDENTITY_INVALID")
    )


def cddl_schema(path: Path, rule: str) -> pycddl.Schema:
    # pycddl validates against the first rule of a schema: put an alias of ours first.
    text = path.read_text(encoding="utf-8")
    return pycddl.Schema(f"starling-vector-root = {rule}\n{text}")


def check_cddl(group: Json, spec_root: Path) -> int:
    """Validate the group's structurally valid inputs against its CDDL rule; return how many."""
    cddl = group["cddl"]
    schema = cddl_schema(spec_root / cddl["file"], cddl["rule"])
    checked = 0
    for test in group["tests"]:
        if structurally_valid(test):
            schema.validate_cbor(bytes.fromhex(test["input"][cddl["field"]]))
            checked += 1
    return checked


def test_there_are_cddl_groups() -> None:
    suites = [suite for suite, _ in cddl_groups()]
    assert "envelope" in suites
    assert "codec" in suites
    assert suites.count("session") == 2  # handshake payloads and stream headers
    assert suites.count("dht") == 1  # record envelopes, their payloads through .cbor
    assert suites.count("gossip") == 1  # signed messages, their payloads through .cbor
    assert suites.count("nat") == 1  # vouchers, their payloads through .cbor


@pytest.mark.parametrize(("suite", "group"), list(cddl_groups()))
def test_structurally_valid_inputs_match_their_cddl_rule(suite: str, group: Json) -> None:
    cddl_file = ROOT / group["cddl"]["file"]
    assert cddl_file.is_file(), f"{suite}: vectors refer to {cddl_file}, which is missing"
    assert check_cddl(group, ROOT) > 0


def test_handshake_transcripts_match_the_session_cddl() -> None:
    session_cddl = ROOT / "spec" / "cddl" / "session.cddl"
    payload = cddl_schema(session_cddl, "handshake-payload")
    header = cddl_schema(session_cddl, "stream-header")
    vectors = load(VECTORS / "session.json")
    transcripts = [t for g, t in each_test(vectors) if g["type"] == "handshake"]
    assert len(transcripts) >= 2
    for test in transcripts:
        payload.validate_cbor(bytes.fromhex(test["expected"]["msg2Payload"]))
        payload.validate_cbor(bytes.fromhex(test["expected"]["msg3Payload"]))
        # The first frame the initiator sends on stream 4 is the stream header.
        header.validate_cbor(bytes.fromhex(test["input"]["frames"][0]["plaintext"]))
    with pytest.raises(pycddl.ValidationError):  # the check can fail: rules are not any-map
        header.validate_cbor(bytes.fromhex(transcripts[0]["expected"]["msg2Payload"]))


def dht_bodies() -> Iterator[tuple[str, bytes]]:
    for g, t in each_test(load(VECTORS / "dht.json")):
        if g["type"] == "dht-message":
            yield t["comment"], bytes.fromhex(t["expected"]["datagram"])[6:]


def test_dht_messages_match_the_dht_cddl() -> None:
    dht_cddl = ROOT / "spec" / "cddl" / "dht.cddl"
    schema = cddl_schema(dht_cddl, "dht-message")
    bodies = list(dht_bodies())
    assert len(bodies) >= 9
    for comment, body in bodies:
        try:
            schema.validate_cbor(body)
        except pycddl.ValidationError as exc:
            raise AssertionError(f"{comment}: {exc}") from None
    # The rules are exact: a message with a key its table lacks, or without a required
    # field, does not match.
    comment, pong = next((c, b) for c, b in bodies if c.startswith("03-dht.md 4.8: PONG"))
    decoded = cbor2.loads(pong)
    for broken in ({**decoded, 9: 0}, {k: v for k, v in decoded.items() if k != 6}):
        with pytest.raises(pycddl.ValidationError):
            schema.validate_cbor(cbor2.dumps(broken))


def test_gossip_messages_match_the_gossip_cddl() -> None:
    schema = cddl_schema(ROOT / "spec" / "cddl" / "gossip.cddl", "gossip-message")
    vectors = load(VECTORS / "gossip.json")
    frames = [
        (t["comment"], bytes.fromhex(t["expected"]["frame"]))
        for g, t in each_test(vectors)
        if g["type"] == "gossip-message"
    ]
    assert len(frames) >= 10
    for comment, frame in frames:
        try:
            schema.validate_cbor(frame)
        except pycddl.ValidationError as exc:
            raise AssertionError(f"{comment}: {exc}") from None
    # Signed messages made by the sign vectors match the signed-message rule too.
    signed = cddl_schema(ROOT / "spec" / "cddl" / "gossip.cddl", "signed-message")
    for g, t in each_test(vectors):
        if g["type"] == "message-sign":
            signed.validate_cbor(bytes.fromhex(t["expected"]["message"]))
    # The rules are exact: an extra even key, or a missing field, does not match.
    decoded = cbor2.loads(frames[0][1])
    for broken in ({**decoded, 2: 0}, {0: decoded[0]}):
        with pytest.raises(pycddl.ValidationError):
            schema.validate_cbor(cbor2.dumps(broken))


def test_dht_record_payloads_match_the_dht_cddl() -> None:
    dht_cddl = ROOT / "spec" / "cddl" / "dht.cddl"
    payload = cddl_schema(dht_cddl, "record-payload")
    peer_value = cddl_schema(dht_cddl, "peer-record-value")
    presence_value = cddl_schema(dht_cddl, "presence-record-value")
    records = [t for g, t in each_test(load(VECTORS / "dht.json")) if g["type"] == "record"]
    checked = 0
    for test in records:
        if test["result"] != "valid":
            continue
        envelope = cbor2.loads(bytes.fromhex(test["input"]["envelope"]))
        payload.validate_cbor(envelope[2])
        fields = cbor2.loads(envelope[2])
        value = cbor2.dumps(fields[5])
        (peer_value if fields[1] == 2 else presence_value).validate_cbor(value)
        checked += 1
    assert checked >= 5


def test_cddl_check_catches_a_mismatch(tmp_path: Path) -> None:
    # The same check against a rule the envelopes do not match must fail.
    group = next(group for suite, group in cddl_groups() if suite == "envelope")
    (tmp_path / "spec" / "cddl").mkdir(parents=True)
    (tmp_path / group["cddl"]["file"]).write_text(
        f"{group['cddl']['rule']} = {{ 1: bstr .size 31, 2: bstr, 3: bstr }}\n", encoding="utf-8"
    )
    with pytest.raises(pycddl.ValidationError):
        check_cddl(group, tmp_path)


# ----------------------------------------------------------------------------- (e) run_main


@pytest.mark.parametrize("suite", sorted(SUITE_FILES))
def test_run_main_prints_a_verdict_for_every_test(
    suite: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = VECTORS / SUITE_FILES[suite]
    assert interop.run_main(suite, str(path)) == 0
    verdicts = json.loads(capsys.readouterr().out)
    ids = [str(test["tcId"]) for _, test in each_test(load(path))]
    assert list(verdicts) == ids
    assert set(verdicts.values()) == {"pass"}


def test_run_main_exits_127_for_an_unknown_suite(capsys: pytest.CaptureFixture[str]) -> None:
    assert interop.run_main("no-such-suite", str(VECTORS / "codec.json")) == 127
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no-such-suite" in captured.err


# ----------------------------------------------------------------------------- (f) verify_main


def test_verify_main_runs_our_implementation(capsys: pytest.CaptureFixture[str]) -> None:
    assert interop.verify_main([], None, False) == 0
    lines = capsys.readouterr().out.splitlines()
    total = sum(load(VECTORS / name)["numberOfTests"] for name in SUITE_FILES.values())
    assert lines[-1] == f"{total} passed, 0 failed"
    for suite in SUITE_FILES:
        pattern = rf"{suite}\s+\d+ passed, 0 failed, 0 unsupported  \(.*{suite}\.json\)$"
        assert any(re.match(pattern, line) for line in lines), suite


def test_verify_main_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert interop.verify_main([str(VECTORS / "codec.json")], None, True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["failed"] == report["unsupported"] == 0
    assert report["passed"] == load(VECTORS / "codec.json")["numberOfTests"]
    assert [f["suite"] for f in report["files"]] == ["codec"]


def test_verify_main_fails_on_a_failing_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors = load(VECTORS / "codec.json")
    first_test(vectors, "invalid")["error"] = "CBOR_FLOAT"
    (tmp_path / "codec.json").write_text(json.dumps(vectors), encoding="utf-8")
    assert interop.verify_main([str(tmp_path)], None, False) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith(" passed, 1 failed")


def test_verify_main_without_vectors_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert interop.verify_main([str(tmp_path / "missing")], None, False) == 2
    assert "missing" in capsys.readouterr().err


FAKE_HARNESS = """\
import json, sys
verdict = sys.argv[1]
suite, path = sys.argv[2], sys.argv[3]
if verdict == "unknown-suite":
    sys.exit(127)
vectors = json.load(open(path, encoding="utf-8"))
ids = [t["tcId"] for g in vectors["testGroups"] for t in g["tests"]]
verdicts = {str(i): "pass" for i in ids}
if verdict == "one-fail":
    verdicts[str(ids[-1])] = "fail"
if verdict == "one-missing":
    del verdicts[str(ids[0])]
if verdict == "one-unsupported":
    verdicts[str(ids[0])] = "unsupported"
print(json.dumps(verdicts))
"""


@pytest.fixture
def fake_harness(tmp_path: Path) -> str:
    script = tmp_path / "fake_harness.py"
    script.write_text(FAKE_HARNESS, encoding="utf-8")
    return f"{sys.executable} {script}"


@pytest.mark.parametrize(
    ("verdict", "exit_code", "total_line"),
    [
        ("all-pass", 0, "{n} passed, 0 failed"),
        ("one-fail", 1, "{m} passed, 1 failed"),
        ("one-missing", 1, "{m} passed, 1 failed"),
        ("one-unsupported", 1, "{m} passed, 1 failed"),
        ("unknown-suite", 1, "0 passed, {n} failed"),
    ],
)
def test_verify_main_honours_an_external_harness(
    fake_harness: str,
    verdict: str,
    exit_code: int,
    total_line: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = VECTORS / "identity.json"
    n = load(path)["numberOfTests"]
    assert interop.verify_main([str(path)], f"{fake_harness} {verdict}", False) == exit_code
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == total_line.format(n=n, m=n - 1)
    assert lines[0].startswith("identity ")


def test_verify_main_may_allow_unsupported(
    fake_harness: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(VECTORS / "envelope.json")
    code = interop.verify_main([path], f"{fake_harness} one-unsupported", False, True)
    assert code == 0
    assert "1 unsupported" in capsys.readouterr().out


def test_our_own_harness_through_the_external_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Our run_main, driven as an external command, must pass the committed vectors too.
    script = tmp_path / "our_harness.py"
    script.write_text(
        "import sys\nfrom starling.node.interop import run_main\n"
        "sys.exit(run_main(sys.argv[1], sys.argv[2]))\n",
        encoding="utf-8",
    )
    assert interop.verify_main([], f"{sys.executable} {script}", False) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" passed, 0 failed")


# ----------------------------------------------------------------------------- community


# Community codes that no vector of a pure function can show: a node's pending bound.
# The client API's codes (0x087x) are local too.
LOCAL_ONLY_COMMUNITY_CODES = {
    ErrorCode.COMMUNITY_PENDING_LIMIT,
    ErrorCode.COMMUNITY_UNKNOWN,
    ErrorCode.COMMUNITY_NO_SUCH_MEMBER,
    ErrorCode.COMMUNITY_AMBIGUOUS_NAME,
    ErrorCode.COMMUNITY_JOIN_FAILED,
}


def test_community_vectors_cover_every_group_and_code() -> None:
    vectors = load(VECTORS / "community.json")
    groups = {g["type"] for g in vectors["testGroups"]}
    assert groups == {
        "community-key",
        "entry-sign",
        "entry",
        "capability",
        "invite-link",
        "replay",
        "feed-entry",
        "feed-chain",
        "sync-tag",
        "sync-message",
        "sync-answer",
        "live-message",
    }
    seen = errors_in("community")
    for group, test in each_test(vectors):
        if group["type"] == "replay":
            seen |= {o["error"] for o in test["expected"]["outcomes"] if "error" in o}
            assert len(test["input"]["orders"]) >= 4
    wanted = {
        code.name
        for code in ErrorCode
        if code.name.startswith("COMMUNITY_") and code not in LOCAL_ONLY_COMMUNITY_CODES
    }
    assert wanted - seen == set()
    replays = [t for g, t in each_test(vectors) if g["type"] == "replay"]
    statuses = {o["status"] for t in replays for o in t["expected"]["outcomes"]}
    assert statuses == {"effective", "void", "rejected", "pending"}
    assert {"ID_TEXT_CHECKSUM", "KEY_SMALL_ORDER"} <= seen


def test_community_cddl_groups() -> None:
    rules = sorted(g["cddl"]["rule"] for s, g in cddl_groups() if s == "community")
    assert rules == ["authority-entry", "capability", "feed-entry", "sync-message"]


def test_feed_and_sync_vectors_cover_their_codes() -> None:
    vectors = load(VECTORS / "community.json")
    seen = errors_in("community")
    for group, test in each_test(vectors):
        if group["type"] == "feed-chain":
            seen |= {o["error"] for o in test["expected"]["outcomes"] if "error" in o}
    assert {
        "FEED_ENTRY_FORGED",
        "FEED_WRONG_COMMUNITY",
        "FEED_ENTRY_MALFORMED",
        "FEED_FORK",
        "FEED_FROM_FUTURE",
        "FEED_NOT_MEMBER",
        "FEED_AUTHOR_BANNED",
        "SYNC_MALFORMED",
        "SYNC_TOO_LARGE",
    } <= seen
    answers = [t for g, t in each_test(vectors) if g["type"] == "sync-answer"]
    types = {cbor2.loads(bytes.fromhex(f))[0] for t in answers for f in t["expected"]["frames"]}
    assert types == {4, 6, 8}  # HAVE, ENTRIES, DONE; HELLO is in the sync-message group


def test_sync_answer_runner_checks_the_frames(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = load(VECTORS / "community.json")
    test = next(
        t for g, t in each_test(vectors) if g["type"] == "sync-answer" and t["expected"]["frames"]
    )
    assert interop.run_suite("community", vectors)[test["tcId"]] == interop.PASS
    test["expected"]["frames"].pop()
    assert interop.run_suite("community", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err


def test_community_replay_runner_checks_states_and_outcomes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    vectors = load(VECTORS / "community.json")
    test = next(
        t
        for g, t in each_test(vectors)
        if g["type"] == "replay" and any(o["status"] == "void" for o in t["expected"]["outcomes"])
    )
    assert interop.run_suite("community", vectors)[test["tcId"]] == interop.PASS
    for outcome in test["expected"]["outcomes"]:
        if outcome["status"] == "void":
            outcome["status"] = "effective"
            del outcome["error"]
            break
    assert interop.run_suite("community", vectors)[test["tcId"]] == interop.FAIL
    assert f"tcId {test['tcId']}" in capsys.readouterr().err
