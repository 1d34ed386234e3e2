"""The interop vector runner: ``starling interop verify`` and ``starling interop run``.

Theory of operation
-------------------
``interop/vectors/*.json`` hold Wycheproof-style test vectors (format and
meaning in interop/README.md, JSON Schema in interop/schema/). This module
runs them in two ways:

* against **this implementation**: ``run_suite`` looks up the suite, then the
  group type, in ``SUITES`` -- a table of small functions, one per group type,
  each turning a test's ``input`` into the outputs its ``expected`` is compared
  with. A test passes when a valid vector gives exactly the expected outputs,
  or an invalid one raises a ``StarlingError`` whose code has the expected
  registry name. Any other exception is a failure, reported on stderr, never a
  pass. ``run_main`` wraps this in the harness contract, so our own
  implementation is also a harness like any other.
* against **another implementation**: ``verify_main`` with ``impl`` runs the
  command ``impl SUITE FILE`` for each vector file and reads the
  ``{"<tcId>": "pass" | "fail" | "unsupported"}`` object it prints.

``verify_main`` prints one line per file and a last line ``N passed, N failed``
that CI reads; unsupported tests count as failed there unless explicitly
allowed, so a harness cannot pass by supporting nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from starling.proto import codec, dht, feeds, gossip, identity, nat, sync
from starling.proto import community as com
from starling.proto import session as ses
from starling.proto.errors import DhtError, ErrorCode, NatError, StarlingError
from starling.proto.network import DatagramKind, classify, control_header

T = TypeVar("T")

__all__ = [
    "FAIL",
    "PASS",
    "SUITES",
    "UNSUPPORTED",
    "VECTORS_DIR",
    "from_typed",
    "run_main",
    "run_suite",
    "to_typed",
    "verify_main",
]

FORMAT = "starling-vectors/1"
VECTORS_DIR = Path(__file__).resolve().parent.parent / "interop" / "vectors"
PASS, FAIL, UNSUPPORTED = "pass", "fail", "unsupported"
STATUSES = frozenset({PASS, FAIL, UNSUPPORTED})
EXIT_UNKNOWN_SUITE = 127
EXIT_USAGE = 2
EXTERNAL_TIMEOUT = 600.0  # seconds per vector file

Json = dict[str, Any]
Outputs = dict[str, Any]
TestRunner = Callable[[Json, Json], Outputs]
"""Runs one test of a group (``group``, ``test``) and returns the outputs to compare
with ``test["expected"]``, or raises the StarlingError our implementation raises."""


class Mismatch(Exception):
    """Our implementation disagrees with a vector in a way the outputs cannot show."""


# ----------------------------------------------------------------------------- typed values


def _feed(given: Json, feed: Callable[[bytes], T], end: Callable[[], None]) -> list[T]:
    """Feed ``input.receive`` chunk by chunk, then the end of stream if ``input.end``.

    A vector's fault must be in its last input (the final chunk, or the end of the
    stream when there is one): failing earlier is a mismatch, not a pass.
    """
    chunks = [bytes.fromhex(chunk) for chunk in given["receive"]]
    last = len(chunks) - (0 if given["end"] else 1)
    out: list[T] = []
    for i, chunk in enumerate(chunks):
        try:
            out.append(feed(chunk))
        except StarlingError as exc:
            if i < last:
                raise Mismatch(f"failed on chunk {i}, before the last input: {exc}") from None
            raise
    if given["end"]:
        end()
    return out


def to_typed(value: object) -> Json:
    """The typed JSON form of a decoded CBOR value (interop/README.md, "Typed values")."""
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
    if isinstance(value, list):
        return {"array": [to_typed(item) for item in value]}
    if isinstance(value, dict):
        return {"map": [[to_typed(k), to_typed(v)] for k, v in value.items()]}
    if isinstance(value, codec.Tag):
        return {"tag": value.number, "value": to_typed(value.value)}
    raise TypeError(f"no typed form for {type(value).__name__}")


def _uint(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"malformed uint {text!r}")
    return int(text)


def _nint(text: str) -> int:
    if text[:1] != "-" or text == "-0":
        raise ValueError(f"malformed nint {text!r}")
    return -_uint(text[1:])


def _map(pairs: list[list[Json]]) -> dict[int, codec.Value]:
    out: dict[int, codec.Value] = {}
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"map entry {pair!r} is not a [key, value] pair")
        key, value = pair
        k = from_typed(key)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ValueError(f"map key {key!r} is not an integer")
        out[k] = from_typed(value)
    return out


_FROM_TYPED: Mapping[str, tuple[type, Callable[[Any], codec.Value]]] = {
    # kind -> (JSON type of the payload, conversion)
    "uint": (str, _uint),
    "nint": (str, _nint),
    "bytes": (str, bytes.fromhex),
    "text": (str, str),
    "array": (list, lambda items: [from_typed(item) for item in items]),
    "map": (list, _map),
    "bool": (bool, bool),
    "null": (type(None), lambda _: None),
}


def from_typed(typed: Json) -> codec.Value:
    """The Python value of a typed JSON value; raises ValueError if it is malformed."""
    if not isinstance(typed, dict):
        raise ValueError(f"malformed typed value {typed!r}")
    if set(typed) == {"tag", "value"} and type(typed["tag"]) is int:
        return codec.Tag(typed["tag"], from_typed(typed["value"]))
    if len(typed) != 1 or next(iter(typed)) not in _FROM_TYPED:
        raise ValueError(f"malformed typed value {typed!r}")
    ((kind, payload),) = typed.items()
    json_type, convert = _FROM_TYPED[kind]
    if type(payload) is not json_type:
        raise ValueError(f"malformed typed value {typed!r}")
    return convert(payload)


# ----------------------------------------------------------------------------- test runners


def _limits(group: Json) -> codec.DecodeLimits:
    parameters = group.get("parameters")
    if parameters is None:
        return codec.DEFAULT_LIMITS
    return codec.DecodeLimits(
        max_size=parameters["maxSize"],
        max_depth=parameters["maxDepth"],
        tags=frozenset(parameters["tags"]),
    )


def _run_cbor(group: Json, test: Json) -> Outputs:
    data = bytes.fromhex(test["input"]["cbor"])
    value = codec.decode(data, _limits(group))
    expected = test["expected"].get("value")
    if expected is not None:  # valid vectors check both directions
        encoded = codec.encode(from_typed(expected))
        if encoded != data:
            raise Mismatch(f"encode(expected value) is {encoded.hex()}, not the input")
    return {"value": to_typed(value)}


def _handled(_message: dict[int, codec.Value]) -> bool:
    return True


def _run_message(group: Json, test: Json) -> Outputs:
    message = codec.decode(bytes.fromhex(test["input"]["cbor"]), _limits(group))
    handlers = dict.fromkeys(test["input"]["knownTypes"], _handled)
    return {"dispatched": codec.dispatch(message, handlers, "message") is not None}


def _run_key_derivation(group: Json, test: Json) -> Outputs:
    key = identity.PrivateKey(bytes.fromhex(test["input"]["seed"]))
    return {
        "publicKey": key.public_key.raw.hex(),
        "peerId": key.peer_id.raw.hex(),
        "peerIdText": key.peer_id.text(),
    }


def _run_peer_id_text(group: Json, test: Json) -> Outputs:
    return {"peerId": identity.PeerId.parse(test["input"]["text"]).raw.hex()}


def _run_ed25519_verify(group: Json, test: Json) -> Outputs:
    given = test["input"]
    identity.ed25519_verify(
        bytes.fromhex(given["publicKey"]),
        bytes.fromhex(given["message"]),
        bytes.fromhex(given["signature"]),
    )
    return {}


def _run_envelope(group: Json, test: Json) -> Outputs:
    given = test["input"]
    opened = identity.open_envelope(
        bytes.fromhex(given["envelope"]), given["domain"], _limits(group)
    )
    return {
        "signer": opened.signer.raw.hex(),
        "signerId": opened.signer_id.raw.hex(),
        "payload": opened.payload.hex(),
    }


# -- session (02-secure-session.md) ------------------------------------------------------

_ROLES = {"initiator": ses.Role.INITIATOR, "responder": ses.Role.RESPONDER}


def _handshake(role: ses.Role, side: Json, network_id: str) -> ses.Handshake:
    """One side of the handshake with the vector's injected keys, as a reimplementer would."""
    expected = side.get("expectedPeer")
    return ses.Handshake(
        role,
        identity.PrivateKey(bytes.fromhex(side["identitySeed"])),
        bytes.fromhex(side["noiseStatic"]),
        bytes.fromhex(side["noiseEphemeral"]),
        bytes.fromhex(network_id),
        tuple(side["protocols"]),
        None if expected is None else identity.PeerId(bytes.fromhex(expected)),
    )


def _payload(side: Json) -> bytes:
    static = ses.x25519_public(bytes.fromhex(side["noiseStatic"]))
    key = identity.PrivateKey(bytes.fromhex(side["identitySeed"]))
    return ses.HandshakePayload.make(key, static, tuple(side["protocols"])).encode()


def _learned(keys: ses.SessionKeys) -> Json:
    return {
        "identityKey": keys.peer.raw.hex(),
        "peerId": keys.peer_id.raw.hex(),
        "protocols": list(keys.peer_protocols),
    }


def _run_handshake(group: Json, test: Json) -> Outputs:
    given = test["input"]
    ini = _handshake(ses.Role.INITIATOR, given["initiator"], given["networkId"])
    res = _handshake(ses.Role.RESPONDER, given["responder"], given["networkId"])
    msg1 = ini.start()
    msg2 = res.receive(msg1)
    msg3 = ini.receive(msg2)
    if res.receive(msg3) != b"":
        raise Mismatch("the responder answered msg3")
    ki, kr = ini.keys, res.keys
    if ki is None or kr is None or not (ini.fin and res.fin):
        raise Mismatch("the handshake did not complete on both sides")
    if (ki.handshake_hash, ki.initiator_key, ki.responder_key) != (
        kr.handshake_hash,
        kr.initiator_key,
        kr.responder_key,
    ):
        raise Mismatch("the two sides derived different keys")
    stream_keys = []
    for stream_id in (4, 8):
        entry: Json = {"streamId": stream_id}
        for role in ses.Role:
            key = ki.stream_key(stream_id, role)
            if key != kr.stream_key(stream_id, role):
                raise Mismatch(f"the sides disagree on the key of stream {stream_id}")
            entry[role.value] = key.hex()
        stream_keys.append(entry)
    ciphers = {
        ses.Role.INITIATOR: {s: ki.stream_cipher(s) for s in (4, 8)},
        ses.Role.RESPONDER: {s: kr.stream_cipher(s) for s in (4, 8)},
    }
    wires = []
    for frame in given["frames"]:
        sender = _ROLES[frame["sender"]]
        other = ses.Role.RESPONDER if sender is ses.Role.INITIATOR else ses.Role.INITIATOR
        plaintext = bytes.fromhex(frame["plaintext"])
        wire = ciphers[sender][frame["streamId"]][0].seal(plaintext)
        if ciphers[other][frame["streamId"]][1].feed(wire) != [plaintext]:
            raise Mismatch("the other side does not open the frame")
        wires.append(wire.hex())
    return {
        "msg1": msg1.hex(),
        "msg2": msg2.hex(),
        "msg3": msg3.hex(),
        "msg2Payload": _payload(given["responder"]).hex(),
        "msg3Payload": _payload(given["initiator"]).hex(),
        "handshakeHash": ki.handshake_hash.hex(),
        "k1": ki.initiator_key.hex(),
        "k2": ki.responder_key.hex(),
        "initiatorLearns": _learned(ki),
        "responderLearns": _learned(kr),
        "streamKeys": stream_keys,
        "frames": wires,
    }


def _run_handshake_receive(group: Json, test: Json) -> Outputs:
    given = test["input"]
    role = _ROLES[given["role"]]
    hs = _handshake(role, given["side"], given["networkId"])
    sent = hs.start() if role is ses.Role.INITIATOR else b""
    sent += b"".join(_feed(given, hs.receive, hs.end_of_stream))
    outputs: Outputs = {"sent": sent.hex(), "complete": hs.complete, "fin": hs.fin}
    if hs.keys is not None:
        outputs["peerId"] = hs.keys.peer_id.raw.hex()
        outputs["peerProtocols"] = list(hs.keys.peer_protocols)
    return outputs


def _run_handshake_payload(group: Json, test: Json) -> Outputs:
    given = test["input"]
    payload = ses.HandshakePayload.decode(bytes.fromhex(given["payload"]))
    key = payload.verify(bytes.fromhex(given["noiseStatic"]))
    return {
        "identityKey": key.raw.hex(),
        "peerId": key.peer_id.raw.hex(),
        "protocols": list(payload.protocols),
    }


def _run_stream_header(group: Json, test: Json) -> Outputs:
    data = bytes.fromhex(test["input"]["header"])
    header = ses.StreamHeader.decode(data)
    plain = header.encode()
    decoded = codec.decode(data)  # a header without extensions must encode back to itself
    if isinstance(decoded, dict) and set(decoded) == {1} and plain != data:
        raise Mismatch(f"encode({header.protocol!r}) is {plain.hex()}, not the input")
    return {"protocol": header.protocol}


def _run_frame_receive(group: Json, test: Json) -> Outputs:
    given = test["input"]
    key = bytes.fromhex(given["key"])
    reader = ses.FrameReader(key, given["maxFrame"])
    frames = [frame for batch in _feed(given, reader.feed, reader.end) for frame in batch]
    if test.get("result") == "valid":  # valid vectors check both directions
        writer = ses.FrameWriter(key)
        wire = bytes.fromhex("".join(given["receive"]))
        if b"".join(writer.seal(frame) for frame in frames) != wire:
            raise Mismatch("sealing the frames in order does not give the input back")
    return {"frames": [frame.hex() for frame in frames]}


# -- dht (03-dht.md) -------------------------------------------------------------------

_DHT_BODY_LIMITS = codec.DecodeLimits(max_size=1500, max_depth=4)  # [DHT-R32]


def _ip_text(packed: str) -> str:
    return str(ipaddress.ip_address(bytes.fromhex(packed)))


def _run_dht_distance(group: Json, test: Json) -> Outputs:
    a, b = bytes.fromhex(test["input"]["a"]), bytes.fromhex(test["input"]["b"])
    return {
        "distance": dht.distance(a, b).to_bytes(32, "big").hex(),
        "bucketIndex": dht.bucket_index(a, b),
    }


def _run_dht_closest(group: Json, test: Json) -> Outputs:
    given = test["input"]
    target = bytes.fromhex(given["target"])
    ids = sorted((bytes.fromhex(i) for i in given["ids"]), key=lambda i: dht.distance(i, target))
    return {"closest": [i.hex() for i in ids[: given["count"]]]}


def _run_dht_message(group: Json, test: Json) -> Outputs:
    given = test["input"]
    network = bytes.fromhex(given["networkId"])
    datagram = control_header(network) + codec.encode(from_typed(given["message"]))
    expected = test["expected"].get("datagram")
    if expected is not None:  # valid vectors check the decoding direction too
        wire = bytes.fromhex(expected)
        if classify(wire, network) is not DatagramKind.CONTROL:
            raise Mismatch("the expected datagram is not a control datagram of its network")
        body = codec.decode(wire[len(control_header(network)) :], _DHT_BODY_LIMITS)
        if to_typed(body) != given["message"]:
            raise Mismatch(f"the expected datagram decodes to {json.dumps(to_typed(body))}")
    return {"datagram": datagram.hex()}


def _run_dht_id_proof(group: Json, test: Json) -> Outputs:
    given = test["input"]
    txid = bytes.fromhex(given["txid"])
    try:
        observed = dht.decode_address(codec.decode(bytes.fromhex(given["observed"])))
        key = identity.PublicKey(bytes.fromhex(given["responderKey"]))
        payload = dht.proof_payload(txid, observed)
        key.verify(dht.PROOF_DOMAIN, payload, bytes.fromhex(given["signature"]))
    except StarlingError as exc:  # whatever fails, the proof proves nothing [DHT-R10]
        raise DhtError(ErrorCode.DHT_PROOF_INVALID, str(exc), "DHT-R10") from None
    return {"responderId": key.peer_id.raw.hex(), "payload": payload.hex()}


def _run_dht_record(group: Json, test: Json) -> Outputs:
    data = bytes.fromhex(test["input"]["envelope"])
    record = dht.Record.parse(data)
    payload = identity.open_envelope(data, dht.RECORD_DOMAIN).payload
    return {
        "signer": record.signer.raw.hex(),
        "signerId": record.signer_id.hex(),
        "payload": to_typed(codec.decode(payload)),
    }


def _run_dht_store(group: Json, test: Json) -> Outputs:
    given = test["input"]
    caps = given["caps"]
    config = dht.DhtConfig(
        max_records_per_key=caps["perKey"],
        max_records_per_signer=caps["perSigner"],
        max_records=caps["total"],
    )
    node = dht.DhtNode(identity.PrivateKey(bytes(32)), bytes(4), bytes, 0.0, config)
    for i, held in enumerate(given["held"]):
        try:
            node.store(dht.Record.parse(bytes.fromhex(held)))
        except StarlingError as exc:
            raise Mismatch(f"held record {i} refused: {exc}") from None
    node.store(dht.Record.parse(bytes.fromhex(given["incoming"])))
    return {
        "stored": [
            record.envelope.hex()
            for key in sorted(node.records)
            for _, (record, _) in sorted(node.records[key].items())
        ]
    }


def _run_dht_write_token(group: Json, test: Json) -> Outputs:
    given = test["input"]
    address = (_ip_text(given["ip"]), given["port"])
    return {"token": dht.write_token(bytes.fromhex(given["secret"]), address).hex()}


def _run_dht_token_check(group: Json, test: Json) -> Outputs:
    given = test["input"]
    address = (_ip_text(given["ip"]), given["port"])
    token = bytes.fromhex(given["token"])
    secrets = (bytes.fromhex(given["current"]), bytes.fromhex(given["previous"]))
    if not any(hmac.compare_digest(token, dht.write_token(s, address)) for s in secrets):
        raise DhtError(ErrorCode.DHT_TOKEN_INVALID, "not a token of ours for you", "DHT-R25")
    return {}


def _run_dht_presence_key(group: Json, test: Json) -> Outputs:
    given = test["input"]
    network, community = bytes.fromhex(given["networkId"]), bytes.fromhex(given["communityKey"])
    return {"key": dht.presence_key(network, community).hex()}


# -- gossip (05-gossip.md) ----------------------------------------------------------------


def _run_gossip_topic(group: Json, test: Json) -> Outputs:
    given = test["input"]
    network, community = bytes.fromhex(given["networkId"]), bytes.fromhex(given["communityKey"])
    return {"topic": gossip.topic_id(network, community).hex()}


def _run_gossip_message_sign(group: Json, test: Json) -> Outputs:
    given = test["input"]
    message = gossip.sign_message(
        identity.PrivateKey(bytes.fromhex(given["authorSeed"])),
        bytes.fromhex(given["topic"]),
        _uint(given["time"]),
        bytes.fromhex(given["data"]),
    )
    if gossip.parse_message(message.raw).id != message.id:  # signed, then checked back
        raise Mismatch("the signed message does not check out")
    return {"message": message.raw.hex(), "messageId": message.id.hex()}


def _run_gossip_message_id(group: Json, test: Json) -> Outputs:
    return {"messageId": gossip.message_id(bytes.fromhex(test["input"]["message"])).hex()}


def _run_gossip_signed_message(group: Json, test: Json) -> Outputs:
    message = gossip.parse_message(bytes.fromhex(test["input"]["message"]))
    return {
        "author": message.author.raw.hex(),
        "authorId": message.author_id.hex(),
        "topic": message.topic.hex(),
        "time": str(message.time_ms),
        "data": message.data.hex(),
        "messageId": message.id.hex(),
    }


def _run_gossip_message(group: Json, test: Json) -> Outputs:
    given = test["input"]
    frame = codec.encode(from_typed(given["message"]))
    expected = test["expected"].get("frame")
    if expected is not None:  # valid vectors check the decoding direction too
        wire = bytes.fromhex(expected)
        kind, fields = gossip.decode_message(wire)
        if fields is None:
            raise Mismatch(f"the expected frame is of an unknown type {kind}")
        decoded = to_typed(codec.decode(wire, gossip.FRAME_LIMITS))
        if decoded != given["message"]:
            raise Mismatch(f"the expected frame decodes to {json.dumps(decoded)}")
    return {"frame": frame.hex()}


def _run_gossip_decode(group: Json, test: Json) -> Outputs:
    kind, fields = gossip.decode_message(bytes.fromhex(test["input"]["frame"]))
    return {"messageType": kind, "known": fields is not None}


def _run_gossip_sync_select(group: Json, test: Json) -> Outputs:
    given = test["input"]
    entries = sorted(
        (_uint(entry["time"]), bytes.fromhex(entry["id"])) for entry in given["entries"]
    )
    after = given.get("after")
    ids, cursor = gossip.select_ids(
        entries,
        _uint(given["since"]),
        None if after is None else bytes.fromhex(after),
        given["limit"],
    )
    outputs: Outputs = {"ids": [i.hex() for i in ids]}
    if cursor is not None:
        outputs["next"] = {"time": str(cursor[0]), "id": cursor[1].hex()}
    return outputs


# -- nat (04-nat-traversal.md) ------------------------------------------------------------

_NAT_CONTEXTS = {
    "control": nat.Protocol.CONTROL,
    "relay": nat.Protocol.RELAY,
    "punch": nat.Protocol.PUNCH,
    "dial-back": nat.Protocol.DIAL_BACK,
}
_NAT_ROLES = {"initiator": ses.Role.INITIATOR, "responder": ses.Role.RESPONDER}


def _nat_addr(given: Json) -> tuple[str, int]:
    return (_ip_text(given["ip"]), given["port"])


def _nat_json(addr: tuple[str, int]) -> Json:
    return {"ip": ipaddress.ip_address(addr[0]).packed.hex(), "port": addr[1]}


def _nat_keys(given: Json) -> nat.ProbeKeys:
    return nat.ProbeKeys.derive(
        bytes.fromhex(given["handshakeHash"]),
        bytes.fromhex(given["k1"]),
        bytes.fromhex(given["k2"]),
    )


def _nat_relay_config(config: Json, serving: bool = True) -> nat.RelayConfig:
    return nat.RelayConfig(
        serving=serving,
        reservation_ttl=config["reservationTtl"],
        circuit_duration=config["circuitDuration"],
        circuit_data=config["circuitData"],
        max_reservations=config["maxReservations"],
        max_reservations_per_ip=config["maxReservationsPerIp"],
        max_circuits=config["maxCircuits"],
        max_circuits_per_peer=config["maxCircuitsPerPeer"],
    )


def _nat_refusal(actions: list[nat.RelayAction]) -> NatError:
    """The STATUS code a relay answered with, as the error a vector names."""
    send = actions[0]
    if not isinstance(send, nat.Send):
        raise Mismatch(f"the relay did {send}, not a STATUS")
    kind, fields = nat.decode_message(nat.Protocol.RELAY, send.data)
    if kind != nat.STATUS or fields is None or not isinstance(fields["code"], int):
        raise Mismatch("the relay's answer is not a STATUS")
    return NatError(ErrorCode(fields["code"]), "refused by the relay")


def _run_nat_message(group: Json, test: Json) -> Outputs:
    given = test["input"]
    frame = codec.encode(from_typed(given["message"]))
    expected = test["expected"].get("frame")
    if expected is not None:  # valid vectors check the decoding direction too
        wire = bytes.fromhex(expected)
        kind, fields = nat.decode_message(_NAT_CONTEXTS[given["protocol"]], wire)
        if fields is None:
            raise Mismatch(f"the expected frame is of an unknown type {kind}")
        decoded = to_typed(codec.decode(wire, nat.LIMITS))
        if decoded != given["message"]:
            raise Mismatch(f"the expected frame decodes to {json.dumps(decoded)}")
    return {"frame": frame.hex()}


def _run_nat_decode(group: Json, test: Json) -> Outputs:
    given = test["input"]
    kind, fields = nat.decode_message(
        _NAT_CONTEXTS[given["protocol"]], bytes.fromhex(given["frame"])
    )
    return {"messageType": kind, "known": fields is not None}


def _run_probe_keys(group: Json, test: Json) -> Outputs:
    keys = _nat_keys(test["input"])
    return {
        "sessionTag": keys.tag.hex(),
        "initiatorKey": keys.initiator.hex(),
        "responderKey": keys.responder.hex(),
    }


def _run_probe_make(group: Json, test: Json) -> Outputs:
    given = test["input"]
    datagram = nat.make_probe(
        _nat_keys(given),
        _NAT_ROLES[given["sender"]],
        bytes.fromhex(given["networkId"]),
        given["type"],
        bytes.fromhex(given["nonce"]),
        _nat_addr(given["address"]),
    )
    return {"datagram": datagram.hex()}


def _run_probe_open(group: Json, test: Json) -> Outputs:
    given = test["input"]
    probe = nat.open_probe(
        _nat_keys(given),
        _NAT_ROLES[given["receiver"]],
        bytes.fromhex(given["networkId"]),
        bytes.fromhex(given["datagram"]),
    )
    return {"type": probe.kind, "nonce": probe.nonce.hex(), "address": _nat_json(probe.address)}


def _run_voucher_sign(group: Json, test: Json) -> Outputs:
    given = test["input"]
    relay = identity.PrivateKey(bytes.fromhex(given["relaySeed"]))
    peer, expires = bytes.fromhex(given["peer"]), _uint(given["expires"])
    raw = nat.make_voucher(relay, peer, expires)
    if expires and nat.verify_voucher(raw, relay.peer_id.raw, peer, expires - 1).raw != raw:
        raise Mismatch("the signed voucher does not check out")
    return {"voucher": raw.hex()}


def _run_voucher(group: Json, test: Json) -> Outputs:
    given = test["input"]
    voucher = nat.verify_voucher(
        bytes.fromhex(given["voucher"]),
        bytes.fromhex(given["relay"]),
        bytes.fromhex(given["peer"]),
        _uint(given["now"]),
    )
    return {
        "relay": voucher.relay.hex(),
        "peer": voucher.peer.hex(),
        "expires": str(voucher.expires),
    }


def _run_observed_address(group: Json, test: Json) -> Outputs:
    given = test["input"]
    reach = nat.Reachability(bytes, 0.0)
    for report in given["reports"]:
        reach.observe(
            bytes.fromhex(report["reporter"]),
            _nat_addr(report["address"]),
            _nat_addr(report["observed"]),
            float(report["time"]),
        )
    reach.handle_timer(float(given["now"]))
    return {
        "confirmed": [
            {"address": _nat_json(addr), "reporters": count}
            for addr, count in reach.confirmed_counts
        ],
        "mapping": {"v4": reach.mapping(4).value, "v6": reach.mapping(6).value},
    }


def _run_dial_back_check(group: Json, test: Json) -> Outputs:
    given = test["input"]
    target = nat.check_dial_back(_nat_addr(given["observed"]), _nat_addr(given["requested"]))
    return {"probeTo": _nat_json(target)}


def _run_relay_reserve(group: Json, test: Json) -> Outputs:
    given = test["input"]
    config = _nat_relay_config(given["config"], given["serving"])
    relay = identity.PrivateKey(bytes.fromhex(given["relaySeed"]))
    core = nat.RelayCore(relay, 0.0, config, epoch_offset=_uint(given["now"]))
    for held in given["held"]:
        core.reserve(bytes.fromhex(held["peer"]), _ip_text(held["ip"]), 0.0)
    incoming = given["incoming"]
    core.accept_stream("in", bytes.fromhex(incoming["peer"]), _ip_text(incoming["ip"]), 0.0)
    core.receive("in", nat.encode_reserve(), 0.0)
    actions = core.actions(0.0)
    first = actions[0]
    if isinstance(first, nat.Send) and nat.decode_message(nat.Protocol.RELAY, first.data)[0] == (
        nat.RESERVATION
    ):
        return {"frame": first.data.hex()}
    raise _nat_refusal(actions)


def _run_relay_connect(group: Json, test: Json) -> Outputs:
    given = test["input"]
    config = _nat_relay_config(given["config"])
    core = nat.RelayCore(identity.PrivateKey(bytes(32)), 0.0, config)
    for peer in given["reserved"]:
        core.reserve(bytes.fromhex(peer), "192.0.2.1", 0.0)
    for n, circuit in enumerate(given["circuits"]):
        core.accept_stream(("held", n), bytes.fromhex(circuit["source"]), "192.0.2.2", 0.0)
        core.receive(("held", n), nat.encode_connect(bytes.fromhex(circuit["target"])), 0.0)
        opened = core.actions(0.0)[0]
        if not isinstance(opened, nat.Open):
            raise Mismatch(f"held circuit {n} was refused: {opened}")
        core.receive(opened.stream, nat.encode_status(0), 0.0)
        core.actions(0.0)
    config.serving = given["serving"]
    core.accept_stream("in", bytes.fromhex(given["source"]), "192.0.2.3", 0.0)
    core.receive("in", nat.encode_connect(bytes.fromhex(given["target"])), 0.0)
    actions = core.actions(0.0)
    if isinstance(actions[0], nat.Open):
        return {"incoming": actions[0].data.hex()}
    raise _nat_refusal(actions)


def _run_relay_forward(group: Json, test: Json) -> Outputs:
    given = test["input"]
    core = nat.RelayCore(
        identity.PrivateKey(bytes(32)), 0.0, nat.RelayConfig(circuit_data=given["dataLimit"])
    )
    target, source = bytes([1]) * 32, bytes([2]) * 32
    core.reserve(target, "192.0.2.1", 0.0)
    core.accept_stream("source", source, "192.0.2.2", 0.0)
    core.receive("source", nat.encode_connect(target), 0.0)
    opened = core.actions(0.0)[0]
    assert isinstance(opened, nat.Open)
    core.receive(opened.stream, nat.encode_status(0), 0.0)
    core.actions(0.0)
    streams = {"source": "source", "target": opened.stream}
    packets = given["packets"]
    for i, packet in enumerate(packets):
        core.receive(streams[packet["from"]], bytes(packet["size"]), 0.0)
        closes = [a for a in core.actions(0.0) if isinstance(a, nat.Close)]
        if closes:
            if i < len(packets) - 1:
                raise Mismatch(f"the circuit ended on packet {i}, before the last one")
            raise NatError(ErrorCode(closes[0].code), "the relay ended the circuit")
    forwarded = core.forwarded(1)
    if forwarded is None:
        raise Mismatch("the circuit is gone")
    return {"forwarded": list(forwarded)}


def _run_punch_plan(group: Json, test: Json) -> Outputs:
    given = test["input"]
    plan = nat.punch_plan(
        given["initiator"],
        given["round"],
        given["sentMs"] / 1000,
        given["answerMs"] / 1000,
        [_nat_addr(a) for a in given["candidates"]],
    )
    return {
        "role": plan.role.value,
        "rttMs": round(plan.rtt * 1000),
        "startMs": round(plan.start * 1000),
        "endMs": round(plan.end * 1000),
        "probes": [{"atMs": round(at * 1000), "address": _nat_json(a)} for at, a in plan.probes],
    }


def _run_relay_entries(group: Json, test: Json) -> Outputs:
    given = test["input"]
    record = dht.Record.parse(bytes.fromhex(given["record"]))
    relays = []
    for entry in nat.relays_of(record, _uint(given["now"])):
        verdict = "valid" if entry.voucher else entry.error.name if entry.error else "absent"
        relays.append(
            {"relay": entry.relay.hex(), "address": _nat_json(entry.address), "voucher": verdict}
        )
    return {"relays": relays}


def _run_bootstrap_string(group: Json, test: Json) -> Outputs:
    peer, addresses = nat.parse_bootstrap(test["input"]["text"])
    return {
        "peerId": peer.raw.hex(),
        "addresses": [_nat_json(a) for a in addresses],
        "text": nat.format_bootstrap(peer, addresses),
    }


# -- community (06-community.md) -----------------------------------------------------------


def _run_community_key(group: Json, test: Json) -> Outputs:
    text = test["input"]["text"]
    key = com.CommunityId.parse(text)
    if text == text.lower() and key.text() != text:  # the encoding direction too
        raise Mismatch(f"the key's text form is {key.text()}")
    return {"publicKey": key.raw.hex()}


def _run_community_entry_sign(group: Json, test: Json) -> Outputs:
    given = test["input"]
    author = identity.PrivateKey(bytes.fromhex(given["authorSeed"]))
    raw = identity.seal(author, com.ENTRY_DOMAIN, codec.encode(from_typed(given["payload"])))
    return {"entry": raw.hex(), "entryId": com.parse_entry(raw).id.hex()}


def _run_community_entry(group: Json, test: Json) -> Outputs:
    given = test["input"]
    entry = com.parse_entry(bytes.fromhex(given["entry"]), bytes.fromhex(given["community"]))
    return {
        "entryId": entry.id.hex(),
        "author": entry.author.hex(),
        "kind": entry.kind,
        "parents": [parent.hex() for parent in entry.parents],
        "time": str(entry.time_ms),
    }


def _run_community_capability(group: Json, test: Json) -> Outputs:
    given = test["input"]
    raw, community = bytes.fromhex(given["capability"]), bytes.fromhex(given["community"])
    cap = com.parse_capability(raw, community)
    return {
        "inviteId": cap.id.hex(),
        "inviter": cap.inviter.hex(),
        "role": int(cap.role),
        "expires": str(cap.expires_ms),
        "uses": cap.max_uses,
        "nonce": cap.nonce.hex(),
    }


def _ip_hex(ip: str) -> str:
    return ipaddress.ip_address(ip).packed.hex()


def _run_community_invite_link(group: Json, test: Json) -> Outputs:
    link = com.InviteLink.parse(test["input"]["text"])
    peers = [
        {
            "peerId": hint.peer_id.hex(),
            "addresses": [{"ip": _ip_hex(ip), "port": port} for ip, port in hint.addresses],
            "relays": [
                {"peerId": relay.hex(), "ip": _ip_hex(ip), "port": port}
                for relay, (ip, port) in hint.relays
            ],
        }
        for hint in link.peers
    ]
    return {"community": link.community.hex(), "inviteId": link.capability.id.hex(), "peers": peers}


def _run_community_replay(group: Json, test: Json) -> Outputs:
    given = test["input"]
    community = bytes.fromhex(given["community"])
    entries = [bytes.fromhex(raw) for raw in given["entries"]]
    first: Outputs | None = None
    for order in given["orders"]:
        log = com.AuthorityLog(community)
        for i in order:
            log.add(entries[i])
        outcomes = []
        for raw in entries:
            status = log.status(com.entry_id(raw))
            outcome = {"status": status.status}
            if status.code is not None:
                outcome["error"] = status.code.name
            outcomes.append(outcome)
        result = {"state": log.state.summary(), "outcomes": outcomes}
        if first is None:
            first = result
        elif result != first:
            raise Mismatch(f"arrival order {order} gives another result than {given['orders'][0]}")
    assert first is not None
    return first


def _run_feed_entry(group: Json, test: Json) -> Outputs:
    given = test["input"]
    entry = feeds.parse_feed_entry(bytes.fromhex(given["entry"]), bytes.fromhex(given["community"]))
    out: Outputs = {
        "entryId": entry.id.hex(),
        "author": entry.author.hex(),
        "device": entry.device.hex(),
        "seq": entry.seq,
        "hlc": str(entry.hlc),
    }
    if entry.prev is not None:
        out["prev"] = entry.prev.hex()
    return out


def _run_feed_chain(group: Json, test: Json) -> Outputs:
    given = test["input"]
    log = com.AuthorityLog(bytes.fromhex(given["community"]))
    log.add_many([bytes.fromhex(raw) for raw in given["authority"]])
    feed_set = feeds.FeedSet(log)
    now = _uint(given["now"])
    outcomes = []
    for raw in given["entries"]:
        result = feed_set.add(bytes.fromhex(raw), now)
        item: Outputs = {"outcome": result.outcome.value}
        if result.code is not None:
            item["error"] = result.code.name
        outcomes.append(item)
    view = [
        {"author": m.author.hex(), "id": m.id.hex(), "text": m.text}
        for m in feed_set.page(bytes.fromhex(given["channel"]), None, 1000)
    ]
    return {"outcomes": outcomes, "view": view}


def _run_sync_tag(group: Json, test: Json) -> Outputs:
    given = test["input"]
    tag = sync.community_tag(bytes.fromhex(given["nonce"]), bytes.fromhex(given["communityKey"]))
    return {"tag": tag.hex()}


def _run_sync_message(group: Json, test: Json) -> Outputs:
    message = sync.decode_message(bytes.fromhex(test["input"]["frame"]))
    if message is None:
        raise Mismatch("an unknown odd type: no message")
    kinds = {sync.Hello: 2, sync.Have: 4, sync.Entries: 6, sync.Done: 8}
    out: Outputs = {"type": kinds[type(message)]}
    if not isinstance(message, sync.Hello):
        out["community"] = message.community.hex()
    return out


def _run_sync_answer(group: Json, test: Json) -> Outputs:
    given = test["input"]
    community, now = bytes.fromhex(given["community"]), _uint(given["now"])
    replica = sync.Replica(community)
    replica.take(
        [bytes.fromhex(r) for r in given["authority"]],
        [bytes.fromhex(r) for r in given["feeds"]],
        now,
    )
    session = sync.SyncSession({community: replica}, 0.0)
    session.receive(bytes.fromhex(given["request"]), 0.0, now)
    return {"frames": [frame.hex() for frame in session.frames_to_send()]}


def _run_live_message(group: Json, test: Json) -> Outputs:
    kind, entry = sync.decode_live(bytes.fromhex(test["input"]["data"]))
    return {"kind": kind, "entry": entry.hex()}


SUITES: Mapping[str, Mapping[str, TestRunner]] = {
    "codec": {"cbor": _run_cbor, "message": _run_message},
    "identity": {
        "key-derivation": _run_key_derivation,
        "peer-id-text": _run_peer_id_text,
        "ed25519-verify": _run_ed25519_verify,
    },
    "envelope": {"envelope": _run_envelope},
    "session": {
        "handshake": _run_handshake,
        "handshake-receive": _run_handshake_receive,
        "handshake-payload": _run_handshake_payload,
        "stream-header": _run_stream_header,
        "frame-receive": _run_frame_receive,
    },
    "dht": {
        "distance": _run_dht_distance,
        "closest": _run_dht_closest,
        "dht-message": _run_dht_message,
        "id-proof": _run_dht_id_proof,
        "record": _run_dht_record,
        "store": _run_dht_store,
        "write-token": _run_dht_write_token,
        "token-check": _run_dht_token_check,
        "presence-key": _run_dht_presence_key,
    },
    "gossip": {
        "topic": _run_gossip_topic,
        "message-sign": _run_gossip_message_sign,
        "message-id": _run_gossip_message_id,
        "signed-message": _run_gossip_signed_message,
        "gossip-message": _run_gossip_message,
        "gossip-decode": _run_gossip_decode,
        "sync-select": _run_gossip_sync_select,
    },
    "nat": {
        "nat-message": _run_nat_message,
        "nat-decode": _run_nat_decode,
        "probe-keys": _run_probe_keys,
        "probe-make": _run_probe_make,
        "probe-open": _run_probe_open,
        "voucher-sign": _run_voucher_sign,
        "voucher": _run_voucher,
        "observed-address": _run_observed_address,
        "dial-back-check": _run_dial_back_check,
        "relay-reserve": _run_relay_reserve,
        "relay-connect": _run_relay_connect,
        "relay-forward": _run_relay_forward,
        "punch-plan": _run_punch_plan,
        "relay-entries": _run_relay_entries,
        "bootstrap-string": _run_bootstrap_string,
    },
    "community": {
        "community-key": _run_community_key,
        "entry-sign": _run_community_entry_sign,
        "entry": _run_community_entry,
        "capability": _run_community_capability,
        "invite-link": _run_community_invite_link,
        "replay": _run_community_replay,
        "feed-entry": _run_feed_entry,
        "feed-chain": _run_feed_chain,
        "sync-tag": _run_sync_tag,
        "sync-message": _run_sync_message,
        "sync-answer": _run_sync_answer,
        "live-message": _run_live_message,
    },
}
"""Suite name -> group type -> runner. A group type missing here is "unsupported"."""


def _judge(runner: TestRunner, group: Json, test: Json) -> tuple[str, str | None]:
    """Run one test; return its status and, for a failure, why."""
    invalid = test.get("result") == "invalid"
    try:
        outputs = runner(group, test)
    except StarlingError as exc:
        if invalid and exc.code.name == test.get("error"):
            return PASS, None
        wanted = f"expected {test.get('error')}" if invalid else "expected success"
        return FAIL, f"raised {exc}; {wanted}"
    except Mismatch as exc:
        return FAIL, str(exc)
    except Exception as exc:  # a crash is a failure, never a pass
        summary = "".join(traceback.format_exception(exc, limit=-3)).rstrip()
        return FAIL, f"unexpected {type(exc).__name__}:\n{summary}"
    if invalid:
        return FAIL, f"accepted; expected {test.get('error')}"
    if outputs != test.get("expected"):
        return FAIL, f"got {json.dumps(outputs)}; expected {json.dumps(test.get('expected'))}"
    return PASS, None


def run_suite(suite: str, vectors: Mapping[str, Any]) -> dict[int | str, str]:
    """Run every test of a loaded vector file against this implementation.

    Returns tcId -> "pass" / "fail" / "unsupported" (a suite or group type this
    implementation has no runner for). Reasons for failures go to stderr.
    """
    runners = SUITES.get(suite, {})
    results: dict[int | str, str] = {}
    for group in vectors.get("testGroups", []):
        runner = runners.get(group.get("type", ""))
        for test in group.get("tests", []):
            tc_id = test.get("tcId", "?")
            if runner is None:
                results[tc_id] = UNSUPPORTED
                continue
            status, reason = _judge(runner, group, test)
            results[tc_id] = status
            if reason is not None:
                print(
                    f"FAIL {suite} tcId {tc_id} ({test.get('comment')}): {reason}", file=sys.stderr
                )
    return results


# ----------------------------------------------------------------------------- harness contract


def _load(path: Path) -> Json | None:
    """Load a vector file; None (with a message) if it is unreadable or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(data, dict) or data.get("schema") != FORMAT:
        print(f"skipping {path}: not a {FORMAT} vector file", file=sys.stderr)
        return None
    return data


def run_main(suite: str, path: str) -> int:
    """``starling interop run SUITE FILE``: the harness contract, for our implementation.

    Prints ``{"<tcId>": "pass" | "fail" | "unsupported"}`` for every test in FILE
    and exits 0; exits 127 for a suite it does not know.
    """
    if suite not in SUITES:
        print(f"unknown suite {suite!r} (known: {', '.join(SUITES)})", file=sys.stderr)
        return EXIT_UNKNOWN_SUITE
    vectors = _load(Path(path))
    if vectors is None:
        return EXIT_USAGE
    results = run_suite(suite, vectors)
    print(json.dumps({str(tc_id): status for tc_id, status in results.items()}))
    return 0


def _test_ids(vectors: Json) -> list[int | str]:
    return [test.get("tcId", "?") for g in vectors.get("testGroups", []) for test in g["tests"]]


def _run_external(impl: str, suite: str, path: Path, vectors: Json) -> dict[int | str, str]:
    """Run ``impl SUITE FILE`` and read its verdicts; anything it does not report is a fail."""
    ids = _test_ids(vectors)
    command = [*shlex.split(impl), suite, str(path)]

    def every(status: str, why: str) -> dict[int | str, str]:
        print(f"{suite}: {shlex.join(command)}: {why}", file=sys.stderr)
        return dict.fromkeys(ids, status)

    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=EXTERNAL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return every(FAIL, f"could not run: {exc}")
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode == EXIT_UNKNOWN_SUITE:
        return every(UNSUPPORTED, "exit 127: suite not supported")
    if proc.returncode != 0:
        return every(FAIL, f"exit status {proc.returncode}")
    try:
        reported = json.loads(proc.stdout)
    except ValueError as exc:
        return every(FAIL, f"stdout is not JSON ({exc})")
    if not isinstance(reported, dict):
        return every(FAIL, "stdout is not a JSON object")
    results: dict[int | str, str] = {}
    for tc_id in ids:
        status = reported.get(str(tc_id))
        if status not in STATUSES:
            print(f"{suite}: tcId {tc_id}: reported {status!r}, counted as fail", file=sys.stderr)
            status = FAIL
        results[tc_id] = status
    unknown = set(reported) - {str(tc_id) for tc_id in ids}
    if unknown:
        print(f"{suite}: ignoring verdicts for unknown tcIds {sorted(unknown)}", file=sys.stderr)
    return results


def _vector_files(paths: list[str]) -> list[Path] | None:
    if not paths:
        if not VECTORS_DIR.is_dir():
            print(
                f"no vector directory at {VECTORS_DIR} (an installed package carries no "
                "vectors): pass PATH, e.g. 'starling interop verify path/to/interop/vectors'",
                file=sys.stderr,
            )
            return None
        paths = [str(VECTORS_DIR)]
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            print(f"no such file or directory: {path}", file=sys.stderr)
            return None
    return files


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def verify_main(
    paths: list[str], impl: str | None, json_out: bool, allow_unsupported: bool = False
) -> int:
    """``starling interop verify [PATH ...] [--impl CMD] [--json]``.

    Runs every vector file under ``paths`` (default: the repository's
    interop/vectors) against this implementation, or against the harness command
    ``impl``. Returns 0 only if every test passed; unsupported tests count as
    failures unless ``allow_unsupported``. Returns 2 when there is nothing to run.
    """
    files = _vector_files(paths)
    if files is None:
        return EXIT_USAGE
    reports: list[Json] = []
    for path in files:
        vectors = _load(path)
        if vectors is None:
            continue
        suite = str(vectors.get("suite"))
        if impl is None:
            results = run_suite(suite, vectors)
        else:
            results = _run_external(impl, suite, path, vectors)
        counts = {s: sum(1 for v in results.values() if v == s) for s in (PASS, FAIL, UNSUPPORTED)}
        reports.append(
            {
                "path": _shown(path),
                "suite": suite,
                "passed": counts[PASS],
                "failed": counts[FAIL],
                "unsupported": counts[UNSUPPORTED],
                "results": {str(tc_id): status for tc_id, status in results.items()},
            }
        )
    if not reports:
        print("no vector files found", file=sys.stderr)
        return EXIT_USAGE
    passed = sum(r["passed"] for r in reports)
    failed = sum(r["failed"] for r in reports)
    unsupported = sum(r["unsupported"] for r in reports)
    not_passed = failed + (0 if allow_unsupported else unsupported)
    ok = not_passed == 0
    if json_out:
        summary = {
            "ok": ok,
            "implementation": impl if impl is not None else "starling (this package)",
            "passed": passed,
            "failed": failed,
            "unsupported": unsupported,
            "files": reports,
        }
        print(json.dumps(summary, indent=2))
    else:
        for r in reports:
            print(
                f"{r['suite']:<10} {r['passed']} passed, {r['failed']} failed, "
                f"{r['unsupported']} unsupported  ({r['path']})"
            )
        if unsupported:
            how = "allowed" if allow_unsupported else "counted as failed"
            print(f"({unsupported} unsupported {how})")
        print(f"{passed} passed, {not_passed} failed")
    return 0 if ok else 1
