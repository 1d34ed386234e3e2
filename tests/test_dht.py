"""The sans-IO DHT core: geometry, routing table, lookups, records and hostile input.

Cores are joined in memory and datagrams moved between them by hand (no clock,
no sockets), so every test is deterministic.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from starling.proto import codec
from starling.proto.dht import (
    ERROR,
    GET,
    KIND_PEER,
    KIND_PRESENCE,
    NODES,
    RECORD_DOMAIN,
    STORED,
    VALUES,
    Contact,
    DhtConfig,
    DhtNode,
    LookupDone,
    PutDone,
    Record,
    RoutingTable,
    bucket_index,
    distance,
    presence_key,
    write_token,
)
from starling.proto.errors import DhtError, ErrorCode
from starling.proto.identity import PrivateKey, seal
from starling.proto.network import CONTROL_HEADER_SIZE, MAIN_NETWORK_ID, control_header

Address = tuple[str, int]
Tamper = Callable[[bytes, Address, Address], bytes | None]


def ident(label: str | int) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"dht test {label}".encode()).digest())


def addr_of(i: int) -> Address:
    return (f"10.{i // 200}.{i % 200}.1", 4000)


class Net:
    """Cores by address; ``pump`` moves every datagram until nothing is left to send."""

    def __init__(self) -> None:
        self.nodes: dict[Address, DhtNode] = {}
        self.now = 0.0
        self.tamper: Tamper | None = None
        self.events: list[tuple[Address, object]] = []

    def add(self, i: int, config: DhtConfig | None = None, label: str | None = None) -> DhtNode:
        rng = random.Random(i)
        node = DhtNode(ident(label or i), MAIN_NETWORK_ID, rng.randbytes, self.now, config)
        self.nodes[addr_of(i)] = node
        return node

    def pump(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            moved = False
            for src, node in list(self.nodes.items()):
                for data, dst in node.datagrams_to_send(self.now):
                    moved = True
                    if self.tamper is not None:
                        changed = self.tamper(data, src, dst)
                        if changed is None:
                            continue
                    else:
                        changed = data
                    if dst in self.nodes:
                        self.nodes[dst].receive_datagram(changed, src, self.now)
                while (event := node.next_event()) is not None:
                    self.events.append((src, event))
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """Let time pass: fire every timer due, in time order, pumping in between."""
        end = self.now + seconds
        while True:
            due = [(t, a) for a, n in self.nodes.items() if (t := n.get_timer()) is not None]
            due = [(t, a) for t, a in due if t <= end]
            if not due:
                break
            t, a = min(due)
            self.now = max(self.now, t)
            self.nodes[a].handle_timer(self.now)
            self.pump()
        self.now = end

    def done(self, node: DhtNode, lookup_id: int) -> LookupDone | PutDone:
        for src, event in self.events:
            if (
                self.nodes.get(src) is node
                and isinstance(event, LookupDone | PutDone)
                and event.lookup_id == lookup_id
            ):
                return event
        raise AssertionError("lookup did not finish")


def network(n: int, config: DhtConfig | None = None) -> Net:
    net = Net()
    for i in range(n):
        node = net.add(i, config)
        if i:
            node.bootstrap([addr_of(0), addr_of(max(0, i - 1))], net.now)
            net.pump()
    return net


def message(data: bytes) -> dict[int, codec.Value]:
    decoded = codec.decode(data[CONTROL_HEADER_SIZE:])
    assert isinstance(decoded, dict)
    return decoded


def datagram(fields: dict[int, codec.Value]) -> bytes:
    return control_header(MAIN_NETWORK_ID) + codec.encode(fields)


# ----------------------------------------------------------------------------- geometry


def test_distance_and_bucket_index() -> None:
    a = bytes(32)
    b = bytes([0x80]) + bytes(31)
    c = bytes(31) + b"\x01"
    assert distance(a, b) == 2**255
    assert bucket_index(a, b) == 0
    assert bucket_index(a, c) == 255
    assert bucket_index(a, a) == 256
    assert distance(b, c) == distance(c, b)


def test_routing_table_splits_and_caps_prefixes() -> None:
    own = bytes(32)
    table = RoutingTable(own, k=4, per_prefix_cap=2, replacements=2)

    def node(first: int, n: int) -> bytes:
        return bytes([first]) + n.to_bytes(31, "big")

    # Far half (first bit 1): at most k; the rest go to the replacement list.
    for n in range(6):
        table.add(Contact(node(0x80, n), (f"10.0.{n}.1", 1), 0.0))
    assert len(table.buckets[0]) == 4
    assert len(table.replacements[0]) == 2
    # Near nodes (7 shared leading bits) force the own-side bucket to split down to
    # depth 7; that bucket then holds k of them and keeps two in reserve.
    for n in range(6):
        table.add(Contact(node(0x01, n), (f"10.1.{n}.1", 1), 0.0))
    assert len(table.buckets) == 9
    assert len(table.buckets[7]) == 4
    assert len(table.replacements[7]) == 2
    assert len(table) == 8
    # Two per /24 per bucket, then no more.
    assert table.add(Contact(node(0x40, 1), ("10.9.9.1", 1), 0.0))
    assert table.add(Contact(node(0x40, 2), ("10.9.9.2", 1), 0.0))
    assert not table.add(Contact(node(0x40, 3), ("10.9.9.3", 1), 0.0))
    # Loopback is exempt (a whole test network may share it).
    assert table.add(Contact(node(0x20, 1), ("127.0.0.1", 1), 0.0))
    assert table.add(Contact(node(0x20, 2), ("127.0.0.1", 2), 0.0))
    assert table.add(Contact(node(0x20, 3), ("127.0.0.1", 3), 0.0))
    # A stale entry (two failures) gives way to a newcomer in a full bucket.
    far = list(table.buckets[0].values())
    far[0].failures = 2
    assert table.add(Contact(node(0x80, 99), ("10.5.5.1", 1), 0.0))
    assert far[0].node_id not in table


# ----------------------------------------------------------------------------- joining


def test_bootstrap_fills_tables_with_proven_nodes_only() -> None:
    net = network(40)
    for node in net.nodes.values():
        assert len(node.table) >= 8
        for contact in node.table.contacts():
            assert contact.node_id in node._proven, "a table entry was never proven"


def test_lookup_finds_the_true_closest() -> None:
    net = network(60)
    src = net.nodes[addr_of(7)]
    target = hashlib.sha256(b"somewhere").digest()
    lookup_id = src.find_node(target, net.now)
    net.pump()
    result = net.done(src, lookup_id)
    assert isinstance(result, LookupDone)
    truth = sorted((n.node_id for n in net.nodes.values()), key=lambda i: distance(i, target))
    found = [node_id for node_id, _ in result.closest]
    assert set(found) >= set(truth[:19]) - {src.node_id}
    assert result.rpcs <= 40


def test_unproven_ids_never_enter_the_table() -> None:
    net = network(5)
    newcomer = net.add(50)

    def forge_proofs(data: bytes, src: Address, dst: Address) -> bytes:
        fields = message(data)
        if dst == addr_of(50) and isinstance(fields.get(6), bytes):
            sig = bytearray(fields[6])  # type: ignore[arg-type]
            sig[0] ^= 1
            fields[6] = bytes(sig)
            return datagram(fields)
        return data

    net.tamper = forge_proofs
    newcomer.bootstrap([addr_of(0)], net.now)
    net.pump()
    assert len(newcomer.table) == 0
    assert newcomer.stats["rejected_DHT_PROOF_INVALID"] > 0


def test_client_mode_queries_but_never_enters_tables() -> None:
    net = network(10)
    client = net.add(60, DhtConfig(client_mode=True))
    lookup_id = client.bootstrap([addr_of(0)], net.now)
    net.pump()
    assert isinstance(net.done(client, lookup_id), LookupDone)
    assert len(client.table) >= 5
    for addr, node in net.nodes.items():
        if node is not client:
            assert client.node_id not in node.table, addr
    # And it answers nobody.
    net.nodes[addr_of(1)].find_node(client.node_id, net.now)
    client.receive_datagram(
        datagram({0: 2, 1: b"12345678", 2: ident(1).public_key.raw}), addr_of(1), net.now
    )
    assert client.datagrams_to_send(net.now) == []
    assert client.stats["dropped_client_mode"] == 1


def test_off_path_responses_are_dropped_and_counted() -> None:
    net = network(5)
    node = net.nodes[addr_of(1)]
    before = len(node.table)
    forged = datagram({0: NODES, 1: b"\x00" * 8, 2: ident("mallory").public_key.raw, 4: []})
    node.receive_datagram(forged, ("10.66.0.1", 4000), net.now)
    assert node.stats["rejected_DHT_TXID_UNKNOWN"] == 1
    # A real transaction ID answered from the wrong address is off-path too.
    node.find_node(bytes(32), net.now)
    (data, _), *_ = node.datagrams_to_send(net.now)
    txid = message(data)[1]
    spoof = datagram({0: NODES, 1: txid, 2: ident("mallory").public_key.raw, 4: []})
    node.receive_datagram(spoof, ("10.66.0.2", 4000), net.now)
    assert node.stats["rejected_DHT_TXID_UNKNOWN"] == 2
    assert len(node.table) == before


def test_unknown_message_types_follow_the_even_odd_rule() -> None:
    net = network(2)
    node = net.nodes[addr_of(0)]
    node.receive_datagram(datagram({0: 40, 1: b"x"}), addr_of(1), net.now)
    node.receive_datagram(datagram({0: 41, 1: b"x"}), addr_of(1), net.now)
    node.receive_datagram(control_header(MAIN_NETWORK_ID) + b"\xff", addr_of(1), net.now)
    assert node.stats["rejected_SCHEMA_UNKNOWN_MESSAGE_TYPE"] == 1
    assert node.stats["ignored_unknown_odd"] == 1
    assert node.stats["rejected_CBOR_UNEXPECTED_BREAK"] == 1


def test_timeouts_retry_once_then_skip_the_peer() -> None:
    net = network(12)
    src = net.nodes[addr_of(3)]
    dead = addr_of(5)
    net.nodes.pop(dead)  # gone without a word
    lookup_id = src.find_node(net.nodes[addr_of(6)].node_id, net.now)
    net.pump()
    net.advance(10.0)
    result = net.done(src, lookup_id)
    assert isinstance(result, LookupDone)
    assert src.stats["retries"] >= 1
    assert src.stats["timeouts"] >= 1
    assert dead in src._unresponsive
    assert dead not in [a for _, a in result.closest]


# ----------------------------------------------------------------------------- records


def raw_record(
    key: PrivateKey, kind: int, rkey: bytes, seq: int, ttl: int, value: dict[int, codec.Value]
) -> bytes:
    """A signed record envelope, made without the checks Record.make applies."""
    return seal(key, RECORD_DOMAIN, codec.encode({1: kind, 2: rkey, 3: seq, 4: ttl, 5: value}))


def put_via(
    net: Net, writer: DhtNode, target: DhtNode, envelope: bytes, token: bytes | None = None
) -> dict[int, codec.Value]:
    """Send one PUT from ``writer``'s address straight to ``target``; return the reply."""
    writer_addr = next(a for a, n in net.nodes.items() if n is writer)
    if token is None:
        token = write_token(target._secrets[0], writer_addr)
    put = datagram({0: 14, 1: b"tx" * 4, 2: writer.identity.public_key.raw, 4: envelope, 6: token})
    target.receive_datagram(put, writer_addr, net.now)
    replies = target.datagrams_to_send(net.now)
    return message(replies[0][0]) if replies else {0: 0}  # {0: 0}: dropped, no reply


def test_put_and_get_a_peer_record() -> None:
    net = network(30)
    owner = net.nodes[addr_of(4)]
    record = Record.peer(ident(4), seq=3, ttl=600, addresses=[addr_of(4)])
    put_id = owner.put(record, net.now)
    net.pump()
    stored = net.done(owner, put_id)
    assert isinstance(stored, PutDone)
    assert stored.stored >= 15
    reader = net.nodes[addr_of(20)]
    get_id = reader.get(owner.node_id, net.now)
    net.pump()
    result = net.done(reader, get_id)
    assert isinstance(result, LookupDone)
    assert [(r.seq, r.addresses()) for r in result.records] == [(3, [addr_of(4)])]


def test_forged_rolled_back_oversized_and_mismatched_records_are_refused() -> None:
    net = network(4)
    writer, target = net.nodes[addr_of(1)], net.nodes[addr_of(2)]
    good = Record.peer(ident(1), seq=5, ttl=600, addresses=[addr_of(1)])
    assert put_via(net, writer, target, good.envelope)[0] == STORED

    forged = bytearray(good.envelope)
    forged[-70] ^= 1  # a payload byte, inside the signed part
    cases: list[tuple[bytes, ErrorCode]] = [
        (bytes(forged), ErrorCode.DHT_RECORD_INVALID),
        (Record.peer(ident(1), seq=4, ttl=600, addresses=[]).envelope, ErrorCode.DHT_RECORD_SEQ),
        (
            Record.peer(ident(1), seq=5, ttl=600, addresses=[addr_of(9)]).envelope,
            ErrorCode.DHT_RECORD_SEQ,
        ),
        (
            raw_record(ident(1), KIND_PEER, ident(1).peer_id.raw, 6, 600, {1: ["x" * 1000]}),
            ErrorCode.DHT_RECORD_TOO_LARGE,
        ),
        (
            raw_record(ident(1), KIND_PEER, bytes(32), 1, 600, {}),
            ErrorCode.DHT_RECORD_KEY_MISMATCH,
        ),
        (
            raw_record(ident(1), KIND_PRESENCE, bytes(32), 1, 99999, {}),
            ErrorCode.DHT_RECORD_TTL,
        ),
        (raw_record(ident(1), 7, bytes(32), 1, 60, {}), ErrorCode.DHT_RECORD_KIND),
    ]
    for envelope, code in cases:
        reply = put_via(net, writer, target, envelope)
        assert (reply[0], reply[4]) == (ERROR, int(code)), code
    # The good record survived all of it, and resending it exactly is fine.
    assert target.records[good.key][good.signer_id][0] == good
    assert put_via(net, writer, target, good.envelope)[0] == STORED


def test_forged_records_in_replies_are_not_believed() -> None:
    net = network(6)
    reader = net.nodes[addr_of(1)]
    key = ident(3).peer_id.raw
    real = Record.peer(ident(3), seq=1, ttl=600, addresses=[addr_of(3)])
    fake = bytearray(Record.peer(ident(3), seq=9, ttl=600, addresses=[("10.66.6.6", 1)]).envelope)
    fake[-5] ^= 1

    def inject(data: bytes, src: Address, dst: Address) -> bytes:
        fields = message(data)
        if fields[0] == VALUES and dst == addr_of(1):
            fields[10] = [bytes(fake), real.envelope]
            return datagram(fields)
        return data

    net.tamper = inject
    get_id = reader.get(key, net.now)
    net.pump()
    result = net.done(reader, get_id)
    assert isinstance(result, LookupDone)
    assert [r.seq for r in result.records] == [1]
    assert reader.stats["rejected_DHT_RECORD_INVALID"] > 0


def test_write_tokens_bind_the_address_and_expire() -> None:
    net = network(3)
    writer, target = net.nodes[addr_of(1)], net.nodes[addr_of(2)]
    record = Record.peer(ident(1), seq=1, ttl=600, addresses=[])
    wrong = write_token(target._secrets[0], ("10.99.99.1", 4000))
    assert put_via(net, writer, target, record.envelope, token=wrong)[4] == int(
        ErrorCode.DHT_TOKEN_INVALID
    )
    old = write_token(target._secrets[0], addr_of(1))
    net.advance(2 * target.config.token_rotation + 1)  # two rotations
    assert put_via(net, writer, target, record.envelope, token=old)[4] == int(
        ErrorCode.DHT_TOKEN_INVALID
    )


def test_put_flood_from_one_address_is_limited_and_others_are_served() -> None:
    net = network(4)
    target = net.nodes[addr_of(2)]
    flooder = net.nodes[addr_of(1)]
    codes = []
    for n in range(300):
        rec = Record.make(
            ident(f"sock{n}"), KIND_PRESENCE, hashlib.sha256(b"%d" % n).digest(), 1, 600, {}
        )
        reply = put_via(net, flooder, target, rec.envelope)
        codes.append(reply.get(4) if reply[0] == ERROR else reply[0])
    # Within the request burst PUTs beyond their own rate are refused with a code;
    # past the request rate itself the flood is dropped unanswered.
    assert codes.count(STORED) <= 25
    assert codes.count(int(ErrorCode.DHT_RATE_LIMITED)) >= 150
    assert codes.count(0) >= 90
    assert target.stats["rejected_DHT_RATE_LIMITED"] >= 250
    assert sum(len(s) for s in target.records.values()) <= 25
    # Someone else is still answered.
    other = net.nodes[addr_of(3)]
    lookup_id = other.get(target.node_id, net.now)
    net.pump()
    assert net.done(other, lookup_id).ok  # type: ignore[union-attr]


def test_caps_per_key_and_per_signer() -> None:
    net = network(3)
    target = net.nodes[addr_of(2)]
    key = presence_key(MAIN_NETWORK_ID, b"community")
    config = target.config
    for n in range(config.max_records_per_key):
        target.store(Record.make(ident(f"m{n}"), KIND_PRESENCE, key, 1, 600, {}))
    with pytest.raises(DhtError) as info:
        target.store(Record.make(ident("one too many"), KIND_PRESENCE, key, 1, 600, {}))
    assert info.value.code is ErrorCode.DHT_KEY_FULL
    greedy = ident("greedy")
    for n in range(config.max_records_per_signer):
        target.store(Record.make(greedy, KIND_PRESENCE, bytes([n]) * 32, 1, 600, {}))
    with pytest.raises(DhtError) as info:
        target.store(Record.make(greedy, KIND_PRESENCE, b"\xee" * 32, 1, 600, {}))
    assert info.value.code is ErrorCode.DHT_SIGNER_FULL


def test_records_expire_and_owners_republish() -> None:
    net = network(20)
    owner = net.nodes[addr_of(5)]
    record = Record.peer(ident(5), seq=1, ttl=120, addresses=[addr_of(5)])
    owner.publish(record, net.now)
    net.pump()
    holders = [n for n in net.nodes.values() if record.key in n.records]
    assert len(holders) >= 10
    net.advance(250)  # past the TTL, with republishing every 60 s
    assert sum(1 for n in net.nodes.values() if n._live(record.key)) >= 10
    # A record nobody republishes is gone after its TTL.
    lone = Record.peer(ident(6), seq=1, ttl=100, addresses=[])
    net.nodes[addr_of(6)].put(lone, net.now)
    net.pump()
    net.advance(200)
    assert all(not n._live(lone.key) for n in net.nodes.values())
    assert all(lone.key not in n.records for n in net.nodes.values())


def test_get_of_a_presence_key_gathers_many_members() -> None:
    net = network(40)
    key = presence_key(MAIN_NETWORK_ID, b"big community")
    members = range(10, 30)
    for i in members:
        node = net.nodes[addr_of(i)]
        node.put(Record.make(ident(i), KIND_PRESENCE, key, 1, 600, {1: []}), net.now)
        net.pump()
    reader = net.nodes[addr_of(2)]
    lookup_id = reader.get(key, net.now)
    net.pump()
    result = net.done(reader, lookup_id)
    assert isinstance(result, LookupDone)
    assert len(result.records) >= 15
    assert {r.signer_id for r in result.records} <= {ident(i).peer_id.raw for i in members}
    assert GET != VALUES  # the reply type differs from the request type


# ----------------------------------------------------------------------------- regressions


def get_from(node: DhtNode, key: bytes, prove: bool = False) -> dict[int, codec.Value]:
    fields: dict[int, codec.Value] = {0: GET, 1: b"T" * 8, 2: ident("asker").public_key.raw, 4: key}
    if prove:
        fields[5] = True
    node.receive_datagram(datagram(fields), ("192.0.2.1", 4000), 0.0)
    (data, _), *_ = node.datagrams_to_send(0.0)
    assert len(data) <= node.config.max_datagram
    return message(data)


def test_values_carry_records_and_the_proof_side_by_side() -> None:
    node = DhtNode(ident("holder"), MAIN_NETWORK_ID, random.Random(1).randbytes, 0.0)
    record = Record.peer(ident("owner"), seq=1, ttl=600, addresses=[addr_of(1)])
    node.store(record)
    reply = get_from(node, record.key, prove=True)
    assert reply[10] == [record.envelope]
    assert isinstance(reply[6], bytes) and len(reply[6]) == 64  # the proof, not records


def test_large_records_are_served_and_do_not_hide_smaller_ones() -> None:
    node = DhtNode(ident("holder"), MAIN_NETWORK_ID, random.Random(1).randbytes, 0.0)
    key = presence_key(MAIN_NETWORK_ID, b"community")
    for pad in (0, 600, 700, 780):
        node.store(Record.make(ident(f"m{pad}"), KIND_PRESENCE, key, 1, 600, {3: bytes(pad)}))
    served = get_from(node, key)[10]
    assert isinstance(served, list) and len(served) >= 1
    lone = DhtNode(ident("lone"), MAIN_NETWORK_ID, random.Random(2).randbytes, 0.0)
    big = Record.make(ident("big"), KIND_PRESENCE, key, 1, 600, {3: bytes(840)})
    assert len(big.envelope) > 990
    lone.store(big)
    assert get_from(lone, key)[10] == [big.envelope]


def test_a_proof_vouches_for_the_address_it_was_made_at() -> None:
    net = network(6)
    a, x = net.nodes[addr_of(1)], net.nodes[addr_of(3)]
    assert x.node_id in a.table
    a.table.remove(x.node_id)
    # Someone elsewhere sends one PING carrying X's (public) key.
    spoof = datagram({0: 2, 1: b"mallory!", 2: x.identity.public_key.raw})
    a.receive_datagram(spoof, ("203.0.113.66", 6666), net.now)
    a.datagrams_to_send(net.now)
    contact = a.table.get(x.node_id)
    assert contact is None or contact.addr == addr_of(3)


def test_a_lookup_that_spends_its_request_budget_still_ends() -> None:
    net = network(30)
    src = net.nodes[addr_of(4)]
    src.config.max_rpcs_per_lookup = 3
    lookup_id = src.find_node(hashlib.sha256(b"far").digest(), net.now)
    net.pump()
    result = net.done(src, lookup_id)
    assert isinstance(result, LookupDone)
    assert result.rpcs <= 3


def test_unknown_even_keys_are_refused_and_odd_ones_ignored() -> None:
    net = network(2)
    node = net.nodes[addr_of(0)]
    sender = ident(1).public_key.raw
    node.receive_datagram(datagram({0: 2, 1: b"evenkey!", 2: sender, 10: 1}), addr_of(1), 0.0)
    assert node.datagrams_to_send(0.0) == []
    assert node.stats["rejected_DHT_MALFORMED"] == 1
    node.receive_datagram(datagram({0: 2, 1: b"odd key!", 2: sender, 11: 1}), addr_of(1), 0.0)
    assert len(node.datagrams_to_send(0.0)) == 1


def test_an_expired_record_decides_nothing() -> None:
    node = DhtNode(ident("holder"), MAIN_NETWORK_ID, random.Random(1).randbytes, 0.0)
    node.store(Record.peer(ident("o"), seq=5, ttl=60, addresses=[]))
    node._now = 100.0  # expired, not yet swept
    node.store(Record.peer(ident("o"), seq=1, ttl=60, addresses=[]))
    assert [r.seq for r, _ in node._live(ident("o").peer_id.raw)] == [1]


def test_a_response_of_the_wrong_type_is_not_an_answer() -> None:
    net = network(4)
    src = net.nodes[addr_of(1)]
    src.find_node(bytes(32), net.now)
    (data, dst), *_ = src.datagrams_to_send(net.now)
    request = message(data)
    wrong = datagram({0: STORED, 1: request[1], 2: net.nodes[dst].identity.public_key.raw})
    src.receive_datagram(wrong, dst, net.now)
    assert src.stats["rejected_DHT_MALFORMED"] == 1
    assert request[1] in src._pending  # still waiting for the real answer
