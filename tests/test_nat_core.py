"""The NAT traversal cores (starling.proto.nat, spec/04-nat-traversal.md), deterministically.

No sockets and no clock: cores are driven by hand, or by a small simulator of hosts behind
NATs (endpoint-independent or endpoint-dependent mapping, endpoint-independent or
address-and-port-dependent filtering) on a virtual clock, which is enough to check that a
punch finds the direct path in the pairings the spec expects and gives up in the others.
Hostile input (forged probes, dial-backs to other IPs, relays over their limits, malformed
frames) must give a registry code and never an exception, and must not disturb anyone else.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.proto import codec, dht, nat
from starling.proto.errors import ErrorCode, LocalProtocolError, NatError, StarlingError
from starling.proto.identity import PrivateKey
from starling.proto.network import control_header, network_id
from starling.proto.session import Role

NET = network_id("starling")
Address = tuple[str, int]


def rng(label: str) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.sha256(f"{label}/{next(counter)}".encode()).digest()[:n]


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(label.encode()).digest())


def pid(label: str) -> bytes:
    return key(label).peer_id.raw


KEYS = nat.ProbeKeys.derive(b"h" * 32, b"1" * 32, b"2" * 32)


def pair(now: float = 0.0) -> tuple[nat.PathProbes, nat.PathProbes]:
    a = nat.PathProbes(KEYS, Role.INITIATOR, NET, rng("a"), now)
    b = nat.PathProbes(KEYS, Role.RESPONDER, NET, rng("b"), now)
    return a, b


def events(core: nat.PathProbes | nat.Reachability | nat.RelayCore) -> list[object]:
    out: list[object] = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


# ----------------------------------------------------------------------------- wire


def test_every_encoder_decodes_back_in_its_context() -> None:
    peer = pid("peer")
    addr = ("198.51.100.10", 4000)
    cases = [
        (nat.Protocol.RELAY, nat.encode_reserve(), nat.RESERVE),
        (nat.Protocol.RELAY, nat.encode_reservation(1, 2, 3, b"v"), nat.RESERVATION),
        (nat.Protocol.RELAY, nat.encode_connect(peer), nat.CONNECT),
        (nat.Protocol.RELAY, nat.encode_incoming(peer, 5, 6), nat.INCOMING),
        (nat.Protocol.RELAY, nat.encode_status(0x0733), nat.STATUS),
        (nat.Protocol.RELAY, nat.encode_status(0, 1800, 1 << 20), nat.STATUS),
        (nat.Protocol.PUNCH, nat.encode_punch_connect(2, [addr, ("2001:db8::1", 9)]), 2),
        (nat.Protocol.PUNCH, nat.encode_punch_sync(3), 4),
        (nat.Protocol.DIAL_BACK, nat.encode_dial_request(bytes(16), addr), 2),
        (nat.Protocol.DIAL_BACK, nat.encode_dial_response(0, addr), 4),
        (nat.Protocol.CONTROL, nat.dial_back_probe(NET, bytes(16))[6:], nat.DIAL_BACK_PROBE),
    ]
    for context, frame, kind in cases:
        got, fields = nat.decode_message(context, frame)
        assert got == kind and fields is not None, (context, frame.hex())


def test_peek_routes_control_datagrams_between_the_dht_and_nat() -> None:
    a, _ = pair()
    a.probe(("198.51.100.7", 4000), 0.0)
    ((ping, _),) = a.datagrams_to_send(0.0)
    assert nat.peek_control_type(ping) == nat.PATH_PING
    assert nat.peek_session_tag(ping) == KEYS.tag
    assert nat.peek_control_type(nat.dial_back_probe(NET, bytes(16))) == nat.DIAL_BACK_PROBE
    dht_ping = control_header(NET) + codec.encode({0: 2, 1: bytes(8), 2: bytes(32)})
    assert nat.peek_control_type(dht_ping) == 2
    assert nat.peek_control_type(dht_ping) not in nat.NAT_CONTROL_TYPES
    assert nat.peek_session_tag(dht_ping) is None
    for junk in (b"", control_header(NET), control_header(NET) + b"\x80", b"\x0c\x01\x00"):
        assert nat.peek_control_type(junk) is None


@settings(max_examples=200, deadline=None)
@given(context=st.sampled_from(list(nat.Protocol)), data=st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_codec_errors(
    context: nat.Protocol, data: bytes
) -> None:
    try:
        nat.decode_message(context, data)
    except StarlingError as exc:
        assert exc.code.name.startswith(("CBOR_", "SCHEMA_")), exc


# ----------------------------------------------------------------------------- probes


def test_a_ping_is_answered_and_its_pong_validates_the_path() -> None:
    a, b = pair()
    a_at, b_at = ("192.0.2.1", 4000), ("198.51.100.7", 4000)
    a.probe(b_at, 1.0)
    ((ping, to),) = a.datagrams_to_send(1.0)
    assert to == b_at
    b.receive(ping, a_at, 1.02)
    ((pong, back),) = b.datagrams_to_send(1.02)
    assert back == a_at
    assert nat.open_probe(KEYS, Role.INITIATOR, NET, pong).address == a_at  # where b saw us
    a.receive(pong, b_at, 1.04)
    assert a.direct == b_at
    (validated,) = events(a)
    assert isinstance(validated, nat.PathValidated)
    assert validated.address == b_at and validated.observed == a_at
    assert validated.rtt == pytest.approx(0.04)
    assert b.direct is None  # a PING proves nothing to its receiver [NAT-R23]


def test_forged_reflected_and_replayed_probes_do_nothing() -> None:
    a, b = pair()
    a_at, b_at = ("192.0.2.1", 4000), ("198.51.100.7", 4000)
    a.probe(b_at, 0.0)
    ((ping, _),) = a.datagrams_to_send(0.0)
    # Every single-bit change anywhere fails one check or another.
    for i in range(len(ping)):
        forged = bytearray(ping)
        forged[i] ^= 0x04
        with pytest.raises(NatError):
            nat.open_probe(KEYS, Role.RESPONDER, NET, bytes(forged))
        b.receive(bytes(forged), a_at, 0.0)
    assert b.datagrams_to_send(0.0) == []
    assert b.stats["rejected_NAT_PROBE_AUTH"] > 0
    # Reflected to its sender: checked under the other direction's key.
    a.receive(ping, b_at, 0.0)
    assert a.stats["rejected_NAT_PROBE_AUTH"] == 1 and a.datagrams_to_send(0.0) == []
    # Another session's keys.
    other = nat.ProbeKeys.derive(b"x" * 32, b"1" * 32, b"2" * 32)
    stranger = nat.make_probe(other, Role.INITIATOR, NET, nat.PATH_PING, bytes(8), b_at)
    b.receive(stranger, a_at, 0.0)
    assert b.stats["rejected_NAT_PROBE_AUTH"] > 0 and b.datagrams_to_send(0.0) == []
    # The genuine PONG, then the same PONG replayed, and one from another address.
    b.receive(ping, a_at, 0.01)
    ((pong, _),) = b.datagrams_to_send(0.01)
    a.receive(pong, ("203.0.113.66", 4000), 0.02)  # an off-path copy from elsewhere
    assert a.direct is None
    a.receive(pong, b_at, 0.02)
    assert a.direct == b_at
    a.receive(pong, b_at, 0.03)  # replayed
    assert a.stats["rejected_NAT_PROBE_UNSOLICITED"] == 2
    assert [type(e) for e in events(a)] == [nat.PathValidated]


def test_pongs_are_rate_limited() -> None:
    a, b = pair()
    for n in range(300):
        a.probe(("198.51.100.7", 4000), 0.0)
        del n
    pings = a.datagrams_to_send(0.0)
    for ping, _ in pings:
        b.receive(ping, ("192.0.2.1", 4000), 0.0)
    assert len(b.datagrams_to_send(0.0)) == 100  # the burst [NAT-R22]
    assert b.stats["rejected_NAT_PROBE_RATE_LIMITED"] == 200


def test_the_direct_path_is_kept_alive_and_declared_lost_after_three_misses() -> None:
    a, b = pair()
    b_at = ("198.51.100.7", 4000)
    a.set_direct(b_at, 0.0)
    assert a.get_timer() == 15.0  # keepalive below the ~30 s mapping lifetime [NAT-R52]
    # The peer answers: the path stays, the next keepalive is 15 s later.
    a.handle_timer(15.0)
    ((ping, _),) = a.datagrams_to_send(15.0)
    b.receive(ping, ("192.0.2.1", 4000), 15.05)
    ((pong, _),) = b.datagrams_to_send(15.05)
    a.receive(pong, b_at, 15.1)
    assert a.direct == b_at and a.get_timer() == pytest.approx(30.1)
    # Then silence: a probe, two immediate retries, each after the probe timeout.
    sent = []
    while a.direct is not None:
        at = a.get_timer()
        assert at is not None
        a.handle_timer(at)
        sent += [at for _ in a.datagrams_to_send(at)]
    assert len(sent) == 3
    assert sent[2] - sent[0] <= 2 * 3.0  # retries at once after each timeout
    lost = events(a)[-1]
    assert isinstance(lost, nat.PathLost) and lost.address == b_at
    assert a.get_timer() is None  # nothing more to probe: the runtime falls back


def test_suspecting_the_path_probes_it_at_once() -> None:
    a, _ = pair()
    a.set_direct(("198.51.100.7", 4000), 0.0)
    a.suspect(3.0)
    assert len(a.datagrams_to_send(3.0)) == 1
    a.suspect(3.1)  # a probe is in flight already
    assert a.datagrams_to_send(3.1) == []


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=120))
def test_probe_receiver_never_raises(data: bytes) -> None:
    a, _ = pair()
    a.receive(control_header(NET) + data, ("192.0.2.1", 4000), 0.0)
    a.receive(data, ("192.0.2.1", 4000), 0.0)
    assert a.direct is None


# ----------------------------------------------------------------------------- vouchers


def test_vouchers_verify_and_fail_with_their_codes() -> None:
    relay, peer = key("relay"), pid("peer")
    raw = nat.make_voucher(relay, peer, 1000)
    voucher = nat.verify_voucher(raw, relay.peer_id.raw, peer, 999)
    assert (voucher.relay, voucher.peer, voucher.expires) == (relay.peer_id.raw, peer, 1000)

    def code(*args: object) -> ErrorCode:
        with pytest.raises(NatError) as info:
            nat.verify_voucher(*args)  # type: ignore[arg-type]
        return info.value.code

    assert code(raw, relay.peer_id.raw, peer, 1000) is ErrorCode.NAT_VOUCHER_EXPIRED
    assert code(raw, pid("other"), peer, 0) is ErrorCode.NAT_VOUCHER_MISMATCH
    assert code(raw, relay.peer_id.raw, pid("other"), 0) is ErrorCode.NAT_VOUCHER_MISMATCH
    wrong_domain = key("relay").sign("starling/dht-record/1", b"")  # any other domain
    assert code(raw[:-64] + wrong_domain, relay.peer_id.raw, peer, 0) is (
        ErrorCode.NAT_VOUCHER_INVALID
    )
    assert code(b"\xa0", relay.peer_id.raw, peer, 0) is ErrorCode.NAT_VOUCHER_INVALID
    impostor = nat.make_voucher(key("impostor"), peer, 1000)  # names itself, not the relay
    assert code(impostor, relay.peer_id.raw, peer, 0) is ErrorCode.NAT_VOUCHER_MISMATCH


# ----------------------------------------------------------------------------- reachability


def test_an_address_is_confirmed_by_three_reporters_in_distinct_prefixes() -> None:
    reach = nat.Reachability(rng("r"), 0.0)
    seen = ("198.51.100.10", 4000)
    reach.observe(pid("r1"), ("203.0.113.10", 4000), seen, 0.0)
    reach.observe(pid("r2"), ("203.0.113.11", 4000), seen, 1.0)  # same /24 as r1
    reach.observe(pid("r2"), ("203.0.113.11", 4000), seen, 2.0)  # the same reporter again
    reach.observe(pid("r3"), ("192.0.2.7", 4000), seen, 3.0)
    assert reach.confirmed == []  # two prefixes [NAT-R10]
    reach.observe(pid("r4"), ("198.18.0.3", 4000), seen, 4.0)
    assert reach.confirmed_counts == [(seen, 3)]
    assert reach.mapping(4) is nat.Mapping.ENDPOINT_INDEPENDENT
    kinds = [type(e) for e in events(reach)]
    assert nat.AddressConfirmed in kinds and nat.MappingChanged in kinds
    # The reports expire: at 600.5 s r1's has, but r2 still speaks for its /24; at 603.5 s
    # only r4's is left, and the address is retracted [NAT-R11].
    reach.handle_timer(600.5)
    assert reach.confirmed == [seen]
    reach.handle_timer(603.5)
    assert reach.confirmed == []
    assert any(isinstance(e, nat.AddressRetracted) for e in events(reach))


def test_a_symmetric_nat_confirms_nothing() -> None:
    reach = nat.Reachability(rng("r"), 0.0)
    for n, reporter in enumerate(("203.0.113.10", "192.0.2.7", "198.18.0.3", "203.0.114.9")):
        reach.observe(pid(f"r{n}"), (reporter, 4000), ("198.51.100.11", 20000 + n), 0.0)
    assert reach.confirmed == []
    assert reach.mapping(4) is nat.Mapping.ENDPOINT_DEPENDENT
    assert reach.mapping(6) is nat.Mapping.UNKNOWN


class DialBackWorld:
    """A requester whose session comes from ``public`` and helpers with a second socket."""

    def __init__(self, public: Address = ("198.51.100.10", 4000)) -> None:
        self.public = public
        self.reach = nat.Reachability(rng("requester"), 0.0)
        for n, reporter in enumerate(("203.0.113.10", "192.0.2.7", "198.18.0.3")):
            self.reach.observe(pid(f"rep{n}"), (reporter, 4000), public, 0.0)
        assert self.reach.confirmed == [public]
        self.servers: dict[bytes, nat.DialBackServer] = {}

    def ask(
        self, helper: str, helper_at: Address, now: float, reachable: bool = True,
        address: Address | None = None,
    ) -> nat.DialBackReply:  # fmt: skip
        helper_id = pid(helper)
        server = self.servers.setdefault(helper_id, nat.DialBackServer(NET, now))
        frame = self.reach.request_dial_back(helper_id, helper_at, address or self.public, now)
        reply = server.handle(frame, self.public, now)
        self.reach.receive_dial_back_response(helper_id, reply.response, now + 0.01)
        if reply.probe is not None and reachable:
            second_socket = (helper_at[0], helper_at[1] + 1)  # the helper's other port
            assert reply.to == (address or self.public)
            assert self.reach.receive_probe(reply.probe, second_socket, now + 0.02)
        return reply


def test_dial_backs_from_two_helpers_make_a_node_public() -> None:
    world = DialBackWorld()
    world.ask("h1", ("203.0.113.10", 4000), 1.0)
    assert world.reach.status is nat.Status.UNKNOWN  # one helper is not a quorum
    world.ask("h2", ("203.0.113.20", 4000), 2.0)  # the same /24: still one
    assert world.reach.status is nat.Status.UNKNOWN
    world.ask("h3", ("192.0.2.30", 4000), 3.0)
    assert world.reach.status is nat.Status.PUBLIC  # [NAT-R16]
    done = [e for e in events(world.reach) if isinstance(e, nat.DialBackDone)]
    assert [e.ok for e in done] == [True, True, True]
    assert nat.ReachabilityChanged(nat.Status.PUBLIC) in events(world.reach) or (
        world.reach.status is nat.Status.PUBLIC
    )


def test_dial_backs_that_never_arrive_make_a_node_private() -> None:
    world = DialBackWorld()
    world.ask("h1", ("203.0.113.10", 4000), 1.0, reachable=False)
    world.ask("h2", ("192.0.2.30", 4000), 1.0, reachable=False)
    assert world.reach.status is nat.Status.UNKNOWN
    at = world.reach.get_timer()
    assert at == pytest.approx(6.0)  # the dial-back timeout
    world.reach.handle_timer(at)
    assert world.reach.status is nat.Status.PRIVATE
    done = [e for e in events(world.reach) if isinstance(e, nat.DialBackDone)]
    assert {e.code for e in done} == {ErrorCode.NAT_DIAL_BACK_TIMEOUT}


def test_a_dial_back_to_another_ip_is_refused_and_nothing_is_sent() -> None:
    world = DialBackWorld()
    reply = world.ask("h1", ("203.0.113.10", 4000), 1.0, address=("203.0.113.99", 4000))
    assert reply.code is ErrorCode.NAT_DIAL_BACK_ADDRESS and reply.probe is None
    _, fields = nat.decode_message(nat.Protocol.DIAL_BACK, reply.response)
    assert fields is not None and fields["code"] == ErrorCode.NAT_DIAL_BACK_ADDRESS
    (done,) = [e for e in events(world.reach) if isinstance(e, nat.DialBackDone)]
    assert done.code is ErrorCode.NAT_DIAL_BACK_ADDRESS and not done.ok
    assert world.reach.status is nat.Status.UNKNOWN  # a refusal is no evidence
    # Another port of the requester's own IP is allowed [NAT-R13].
    other_port = world.ask("h2", ("192.0.2.30", 4000), 2.0, address=("198.51.100.10", 61000))
    assert other_port.to == ("198.51.100.10", 61000)


def test_a_probe_from_the_helpers_session_address_proves_nothing() -> None:
    world = DialBackWorld()
    helper_at = ("203.0.113.10", 4000)
    frame = world.reach.request_dial_back(pid("h"), helper_at, world.public, 0.0)
    reply = nat.DialBackServer(NET, 0.0).handle(frame, world.public, 0.0)
    world.reach.receive_dial_back_response(pid("h"), reply.response, 0.0)
    assert reply.probe is not None
    assert not world.reach.receive_probe(reply.probe, helper_at, 0.1)  # [NAT-R15]
    assert world.reach.stats["dial_back_same_source"] == 1
    stray = nat.dial_back_probe(NET, bytes(16))
    assert not world.reach.receive_probe(stray, ("192.0.2.1", 9), 0.1)
    assert world.reach.stats["rejected_NAT_PROBE_UNSOLICITED"] == 1


def test_the_dial_back_helper_limits_and_refuses_with_codes() -> None:
    server = nat.DialBackServer(NET, 0.0)
    observed = ("198.51.100.10", 4000)

    def ask(n: int, at: Address = observed, now: float = 0.0) -> ErrorCode:
        return server.handle(nat.encode_dial_request(bytes([n]) * 16, at), at, now).code

    assert [ask(n) for n in range(4)] == [ErrorCode.NO_ERROR] * 3 + [
        ErrorCode.NAT_DIAL_BACK_RATE_LIMITED
    ]
    assert ask(9, ("198.51.100.11", 4000)) is ErrorCode.NO_ERROR  # another IP has its own
    assert ask(9, now=10.0) is ErrorCode.NO_ERROR  # 0.1 per second refills one
    assert server.handle(b"\xff", observed, 0.0).code is ErrorCode.NAT_MALFORMED
    wrong = nat.encode_dial_response(0)
    assert server.handle(wrong, observed, 0.0).code is ErrorCode.NAT_UNEXPECTED_MESSAGE
    off = nat.DialBackServer(NET, 0.0, nat.DialBackConfig(serving=False))
    assert off.handle(nat.encode_dial_request(bytes(16), observed), observed, 0.0).code is (
        ErrorCode.NAT_DIAL_BACK_NOT_SERVING
    )


def test_a_bad_dial_back_response_raises_with_a_code() -> None:
    reach = nat.Reachability(rng("r"), 0.0)
    reach.request_dial_back(pid("h"), ("203.0.113.10", 4000), ("198.51.100.10", 4000), 0.0)
    with pytest.raises(NatError) as info:
        reach.receive_dial_back_response(pid("h"), b"\x00\x01", 0.0)
    assert info.value.code is ErrorCode.NAT_MALFORMED
    with pytest.raises(NatError):
        reach.receive_dial_back_response(pid("stranger"), nat.encode_dial_response(0), 0.0)
    with pytest.raises(LocalProtocolError):  # one attempt per helper at a time
        reach.request_dial_back(pid("h2"), ("203.0.113.10", 4000), ("198.51.100.10", 1), 0.0)
        reach.request_dial_back(pid("h2"), ("203.0.113.10", 4000), ("198.51.100.10", 1), 0.0)


# ----------------------------------------------------------------------------- relays


@dataclass
class RelayWorld:
    """A relay core and its clients; streams are names, actions are applied by hand."""

    config: nat.RelayConfig = field(default_factory=nat.RelayConfig)
    relay: PrivateKey = field(default_factory=lambda: key("relay"))
    now: float = 0.0

    def __post_init__(self) -> None:
        self.core = nat.RelayCore(self.relay, 0.0, self.config, epoch_offset=1_700_000_000)
        self.names = itertools.count()

    @property
    def relay_id(self) -> bytes:
        return self.relay.peer_id.raw

    def reserve(self, who: str, ip: str) -> nat.RelayClientEvent | None:
        client, frame = nat.RelayStream.reserve(self.relay_id, pid(who))
        stream = f"reserve-{next(self.names)}"
        self.core.accept_stream(stream, pid(who), ip, self.now)
        self.core.receive(stream, frame, self.now)
        send, close = self.core.actions(self.now)
        assert isinstance(send, nat.Send) and isinstance(close, nat.Close) and close.code == 0
        return client.receive(send.data, 1_700_000_000 + self.now)

    def connect(
        self, source: str, target: str, accept: bool = True
    ) -> tuple[nat.RelayStream, object, nat.RelayClientEvent | None, nat.RelayStream | None]:
        client, frame = nat.RelayStream.connect(self.relay_id, pid(source), pid(target))
        stream = f"{source}->{target}-{next(self.names)}"
        self.core.accept_stream(stream, pid(source), "192.0.2.200", self.now)
        self.core.receive(stream, frame, self.now)
        first, *_ = self.core.actions(self.now)
        if isinstance(first, nat.Send):
            return client, stream, client.receive(first.data, 0), None
        assert isinstance(first, nat.Open) and first.peer == pid(target)
        offered = nat.RelayStream.offered(self.relay_id, pid(target))
        incoming = offered.receive(first.data, 0)
        assert isinstance(incoming, nat.IncomingCircuit) and incoming.source == pid(source)
        answer = offered.accept() if accept else offered.refuse(ErrorCode.SESSION_SHUTDOWN)
        self.core.receive(first.stream, answer, self.now)
        reply, *_ = self.core.actions(self.now)
        assert isinstance(reply, nat.Send)
        self.target_stream = first.stream
        return client, stream, client.receive(reply.data, 0), offered


def test_a_reservation_carries_a_verified_voucher() -> None:
    world = RelayWorld()
    granted = world.reserve("target", "198.51.100.10")
    assert isinstance(granted, nat.Reservation)
    assert granted.expires == 1_700_003_600 == granted.voucher.expires
    assert granted.voucher.relay == world.relay_id and granted.voucher.peer == pid("target")
    assert world.core.reservation(pid("target")) == (1_700_003_600, 3600.0)
    # A client expecting another relay refuses the voucher.
    client, frame = nat.RelayStream.reserve(pid("another relay"), pid("target2"))
    world.core.accept_stream("x", pid("target2"), "198.51.100.11", 0.0)
    world.core.receive("x", frame, 0.0)
    send, _ = world.core.actions(0.0)
    assert isinstance(send, nat.Send)
    with pytest.raises(NatError) as info:
        client.receive(send.data, 1_700_000_000)
    assert info.value.code is ErrorCode.NAT_VOUCHER_MISMATCH


def test_a_circuit_forwards_packets_unchanged_both_ways() -> None:
    world = RelayWorld()
    world.reserve("target", "198.51.100.10")
    client, stream, ready, offered = world.connect("source", "target")
    assert isinstance(ready, nat.CircuitReady) and offered is not None
    packet = b"\xc0" + bytes(1199)  # an opaque QUIC packet
    world.core.receive(stream, client.packet(packet), 0.0)
    (out,) = world.core.actions(0.0)
    assert out == nat.Send(world.target_stream, packet)
    assert offered.receive(out.data, 0) == nat.RelayedPacket(packet)
    world.core.receive(world.target_stream, offered.packet(b"\x40pong"), 0.0)
    (back,) = world.core.actions(0.0)
    assert back == nat.Send(stream, b"\x40pong")
    assert world.core.forwarded(1) == (1200, 5)
    # The source ends its stream: the relay ends the other with a FIN too.
    world.core.stream_closed(stream, 0, 0.0)
    assert world.core.actions(0.0) == [nat.Close(world.target_stream, 0)]
    closed = [e for e in events(world.core) if isinstance(e, nat.CircuitClosed)]
    assert closed[0].code is ErrorCode.NO_ERROR and closed[0].forwarded == (1200, 5)


def test_a_relay_over_its_limits_refuses_with_its_code_and_keeps_serving_others() -> None:
    world = RelayWorld(nat.RelayConfig(max_reservations=3, max_reservations_per_ip=2))
    assert isinstance(world.reserve("t1", "198.51.100.10"), nat.Reservation)
    assert isinstance(world.reserve("t2", "198.51.100.10"), nat.Reservation)
    refused = world.reserve("t3", "198.51.100.10")  # a third from one IP [NAT-R31]
    assert refused == nat.RelayRefused(ErrorCode.NAT_RELAY_IP_LIMIT)
    assert isinstance(world.reserve("t3", "203.0.113.5"), nat.Reservation)
    assert world.reserve("t4", "192.0.2.44") == nat.RelayRefused(
        ErrorCode.NAT_RELAY_RESERVATION_LIMIT
    )
    assert isinstance(world.reserve("t1", "198.51.100.10"), nat.Reservation)  # a renewal
    # The held reservations are still served: a circuit to t1 opens and forwards.
    client, stream, ready, _ = world.connect("source", "t1")
    assert isinstance(ready, nat.CircuitReady)
    world.core.receive(stream, client.packet(b"\x40data"), 1.0)
    assert world.core.actions(1.0) == [nat.Send(world.target_stream, b"\x40data")]
    refusals = [e for e in events(world.core) if isinstance(e, nat.ReservationRefused)]
    assert [e.code for e in refusals] == [
        ErrorCode.NAT_RELAY_IP_LIMIT,
        ErrorCode.NAT_RELAY_RESERVATION_LIMIT,
    ]
    # A CONNECT to someone without a reservation gets its code; t1's circuit goes on.
    _, _, refused_connect, _ = world.connect("source", "t4")
    assert refused_connect == nat.RelayRefused(ErrorCode.NAT_RELAY_NO_RESERVATION)
    world.core.receive(stream, client.packet(b"\x40more"), 2.0)
    assert world.core.actions(2.0) == [nat.Send(world.target_stream, b"\x40more")]


def test_circuit_caps_per_peer_and_in_all() -> None:
    world = RelayWorld(nat.RelayConfig(max_circuits=3, max_circuits_per_peer=2))
    for t in ("t1", "t2", "t3"):
        world.reserve(t, f"198.51.100.{len(t)}{t[-1]}")
    assert isinstance(world.connect("s1", "t1")[2], nat.CircuitReady)
    assert isinstance(world.connect("s2", "t1")[2], nat.CircuitReady)
    assert world.connect("s3", "t1")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_CIRCUIT_LIMIT)
    assert isinstance(world.connect("s1", "t2")[2], nat.CircuitReady)
    assert world.connect("s1", "t3")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_CIRCUIT_LIMIT)
    assert world.connect("s9", "t3")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_CIRCUIT_LIMIT)
    assert world.core.circuits == 3


def test_the_data_limit_ends_one_circuit_and_not_the_other() -> None:
    world = RelayWorld(nat.RelayConfig(circuit_data=3000))
    world.reserve("target", "198.51.100.10")
    c1, s1, _, _ = world.connect("a", "target")
    t1 = world.target_stream
    c2, s2, _, _ = world.connect("b", "target")
    t2 = world.target_stream
    for _ in range(2):
        world.core.receive(s1, c1.packet(bytes(1500)), 0.0)
    world.core.actions(0.0)
    world.core.receive(s1, c1.packet(bytes(1)), 0.0)  # one byte beyond [NAT-R36]
    code = ErrorCode.NAT_RELAY_DATA_LIMIT
    assert world.core.actions(0.0) == [nat.Close(s1, code), nat.Close(t1, code)]
    world.core.receive(s2, c2.packet(bytes(1500)), 0.0)
    assert world.core.actions(0.0) == [nat.Send(t2, bytes(1500))]


def test_the_duration_limit_is_a_timer() -> None:
    world = RelayWorld(nat.RelayConfig(circuit_duration=120))
    world.reserve("target", "198.51.100.10")
    _, stream, _, _ = world.connect("source", "target")
    timers = sorted({world.core.get_timer() or 0.0})
    assert timers == [10.0]  # the connect timeout, already moot
    world.core.handle_timer(10.0)
    assert world.core.actions(10.0) == []
    assert world.core.get_timer() == 120.0
    world.core.handle_timer(120.0)
    code = ErrorCode.NAT_RELAY_DURATION_LIMIT
    assert world.core.actions(120.0) == [
        nat.Close(stream, code),
        nat.Close(world.target_stream, code),
    ]


def test_targets_that_refuse_vanish_or_stay_silent() -> None:
    world = RelayWorld()
    world.reserve("target", "198.51.100.10")
    _, _, refused, _ = world.connect("source", "target", accept=False)
    assert refused == nat.RelayRefused(ErrorCode.NAT_RELAY_TARGET_REFUSED)
    # Silent: the connect timeout answers the source.
    client, frame = nat.RelayStream.connect(world.relay_id, pid("s2"), pid("target"))
    world.core.accept_stream("s2", pid("s2"), "192.0.2.9", 0.0)
    world.core.receive("s2", frame, 0.0)
    (opened,) = world.core.actions(0.0)
    assert isinstance(opened, nat.Open)
    world.core.handle_timer(10.0)
    send, _, close_dst = world.core.actions(10.0)
    assert isinstance(send, nat.Send)
    assert client.receive(send.data, 0) == nat.RelayRefused(ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
    assert close_dst == nat.Close(opened.stream, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)
    # Gone: the runtime could not open the stream.
    client, frame = nat.RelayStream.connect(world.relay_id, pid("s3"), pid("target"))
    world.core.accept_stream("s3", pid("s3"), "192.0.2.9", 11.0)
    world.core.receive("s3", frame, 11.0)
    (opened,) = world.core.actions(11.0)
    assert isinstance(opened, nat.Open)
    world.core.stream_closed(opened.stream, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE, 11.0)
    send, _ = world.core.actions(11.0)
    assert isinstance(send, nat.Send)
    assert client.receive(send.data, 0) == nat.RelayRefused(ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)


def test_a_reservation_ends_with_its_session_or_its_lifetime() -> None:
    world = RelayWorld(nat.RelayConfig(reservation_ttl=100))
    world.reserve("t1", "198.51.100.10")
    world.reserve("t2", "198.51.100.11")
    _, stream, _, _ = world.connect("s", "t1")
    world.core.session_closed(pid("t1"), 1.0)  # the circuit's other end is told
    assert world.core.actions(1.0) == [nat.Close(stream, ErrorCode.NAT_RELAY_TARGET_UNREACHABLE)]
    assert world.connect("s", "t1")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_NO_RESERVATION)
    while (at := world.core.get_timer()) is not None and at <= 100.0:
        world.core.handle_timer(at)
    world.now = 100.0
    assert world.core.reservations == 0
    assert world.connect("s", "t2")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_NO_RESERVATION)


def test_relay_faults_end_only_their_stream_with_a_code() -> None:
    world = RelayWorld()
    world.reserve("target", "198.51.100.10")
    client, stream, _, _ = world.connect("source", "target")
    for bad, code in (
        (b"\xff", ErrorCode.NAT_MALFORMED),
        (nat.encode_status(0), ErrorCode.NAT_UNEXPECTED_MESSAGE),
        (nat.encode_incoming(pid("x"), 1, 1), ErrorCode.NAT_UNEXPECTED_MESSAGE),
        (codec.encode({0: 12}), ErrorCode.NAT_MALFORMED),  # unknown even type
    ):
        name = f"bad-{bad.hex()}"
        world.core.accept_stream(name, pid("mallory"), "203.0.113.66", 0.0)
        world.core.receive(name, bad, 0.0)
        send, close = world.core.actions(0.0)
        assert isinstance(send, nat.Send) and close == nat.Close(name, 0)
        assert nat.decode_message(nat.Protocol.RELAY, send.data)[1] == {"type": 10, "code": code}
    world.core.accept_stream("odd", pid("mallory"), "203.0.113.66", 0.0)
    world.core.receive("odd", codec.encode({0: 13}), 0.0)  # an unknown odd type: ignored
    assert world.core.actions(0.0) == []
    # Forwarded frames of the wrong size end that circuit only.
    world.core.receive(stream, b"", 0.0)
    assert [a.code for a in world.core.actions(0.0)] == [ErrorCode.NAT_RELAY_PACKET_SIZE] * 2
    with pytest.raises(LocalProtocolError):
        client.packet(bytes(1501))
    # A source that sends before its circuit opens ends its circuit.
    _, frame = nat.RelayStream.connect(world.relay_id, pid("eager"), pid("target"))
    world.core.accept_stream("eager", pid("eager"), "192.0.2.9", 0.0)
    world.core.receive("eager", frame, 0.0)
    (opened,) = world.core.actions(0.0)
    world.core.receive("eager", b"\x40too soon", 0.0)  # a packet is no message
    assert {a.code for a in world.core.actions(0.0)} == {ErrorCode.NAT_MALFORMED}
    world.core.accept_stream("eager2", pid("eager2"), "192.0.2.9", 0.0)
    world.core.receive("eager2", nat.encode_connect(pid("target")), 0.0)
    world.core.actions(0.0)
    world.core.receive("eager2", nat.encode_reserve(), 0.0)  # a message out of turn
    assert {a.code for a in world.core.actions(0.0)} == {ErrorCode.NAT_UNEXPECTED_MESSAGE}
    assert world.core.circuits == 0
    world.core.receive("nobody", b"x", 0.0)
    assert world.core.stats["dropped_unknown_stream"] == 1
    assert isinstance(opened, nat.Open)


def test_a_relay_that_does_not_serve_refuses_everything() -> None:
    world = RelayWorld(nat.RelayConfig(serving=False))
    assert world.reserve("t", "198.51.100.10") == nat.RelayRefused(ErrorCode.NAT_RELAY_NOT_SERVING)
    assert world.connect("s", "t")[2] == nat.RelayRefused(ErrorCode.NAT_RELAY_NOT_SERVING)


def test_relay_clients_reject_what_their_state_does_not_allow() -> None:
    relay = pid("relay")
    client, _ = nat.RelayStream.connect(relay, pid("s"), pid("t"))
    with pytest.raises(NatError) as info:
        client.receive(nat.encode_reserve(), 0)
    assert info.value.code is ErrorCode.NAT_UNEXPECTED_MESSAGE
    client, _ = nat.RelayStream.connect(relay, pid("s"), pid("t"))
    with pytest.raises(NatError) as info:
        client.receive(nat.encode_status(0), 0)  # a STATUS 0 without the limits
    assert info.value.code is ErrorCode.NAT_MALFORMED
    offered = nat.RelayStream.offered(relay, pid("t"))
    with pytest.raises(LocalProtocolError):
        offered.accept()
    with pytest.raises(NatError):
        offered.receive(b"\x00", 0)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(st.binary(max_size=80), max_size=5))
def test_relay_core_never_raises_on_arbitrary_frames(frames: list[bytes]) -> None:
    world = RelayWorld()
    world.reserve("target", "198.51.100.10")
    world.core.accept_stream("fuzz", pid("fuzz"), "192.0.2.1", 0.0)
    for frame in frames:
        world.core.receive("fuzz", frame, 0.0)
        world.core.actions(0.0)
    assert isinstance(world.reserve("other", "192.0.2.2"), nat.Reservation)


# ----------------------------------------------------------------------------- punching


class Nat:
    """A NAT: endpoint-independent or endpoint-dependent mapping, endpoint-independent or
    address-and-port-dependent filtering."""

    def __init__(self, public_ip: str, mapping: str, filtering: str) -> None:
        self.public_ip = public_ip
        self.mapping = mapping  # "eim" | "edm"
        self.filtering = filtering  # "eif" | "apdf"
        self.ports: dict[object, int] = {}
        self.owner: dict[int, Address] = {}
        self.allowed: dict[int, set[Address]] = {}
        self.fresh = itertools.count(20001, 7)

    def outbound(self, local: Address, dst: Address) -> Address:
        mapping_key: object = local if self.mapping == "eim" else (local, dst)
        port = self.ports.get(mapping_key)
        if port is None:
            port = local[1] if self.mapping == "eim" else next(self.fresh)  # port-preserving
            self.ports[mapping_key] = port
            self.owner[port] = local
        self.allowed.setdefault(port, set()).add(dst)
        return (self.public_ip, port)

    def inbound(self, port: int, src: Address) -> Address | None:
        local = self.owner.get(port)
        if local is None or (self.filtering == "apdf" and src not in self.allowed[port]):
            return None
        return local


SERVER = ("192.0.2.250", 3478)  # where hosts learned their observed address


@dataclass
class Host:
    name: str
    local: Address
    nat: Nat | None
    paths: nat.PathProbes
    punch: nat.Puncher | None = None

    def observed(self) -> Address:
        return self.nat.outbound(self.local, SERVER) if self.nat else self.local

    def candidates(self) -> list[Address]:
        return [self.observed(), self.local] if self.nat else [self.local]


class Simulation:
    """Two hosts on a virtual clock: UDP between them crosses their NATs (20 ms each way);
    the punch stream runs over a relay (50 ms each way)."""

    def __init__(self, kind_a: str, kind_b: str) -> None:
        self.t = 0.0
        self.queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self.seq = itertools.count()
        self.a = self._host("a", kind_a, "10.1.0.10", "198.51.100.10", Role.RESPONDER)
        self.b = self._host("b", kind_b, "10.2.0.10", "198.51.100.11", Role.INITIATOR)
        self.events: dict[str, list[object]] = {"a": [], "b": []}
        self.datagrams = 0

    def _host(self, name: str, kind: str, private: str, public: str, role: Role) -> Host:
        paths = nat.PathProbes(KEYS, role, NET, rng(f"sim/{name}"), 0.0)
        if kind == "public":
            return Host(name, (public, 4000), None, paths)
        mapping, filtering = {"eim": ("eim", "eif"), "port-preserving": ("eim", "apdf"),
                              "symmetric": ("edm", "apdf")}[kind]  # fmt: skip
        return Host(name, (private, 4000), Nat(public, mapping, filtering), paths)

    def at(self, when: float, kind: str, *args: object) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), kind, args))

    def host_for(self, addr: Address) -> tuple[Host, Address] | None:
        for host in (self.a, self.b):
            if host.nat is None and host.local == addr:
                return host, addr
            if host.nat is not None and host.nat.public_ip == addr[0]:
                local = host.nat.inbound(addr[1], self.last_src)
                return (host, local) if local == host.local else None
        return None

    def flush(self, host: Host) -> None:
        other = self.b if host is self.a else self.a
        if host.punch is not None:
            for frame in host.punch.frames_to_send():
                self.at(self.t + 0.05, "frame", other, frame)
        for datagram, dst in host.paths.datagrams_to_send(self.t):
            src = host.nat.outbound(host.local, dst) if host.nat else host.local
            self.datagrams += 1
            self.at(self.t + 0.02, "udp", datagram, src, dst)
        while (event := host.paths.next_event()) is not None:
            self.events[host.name].append(event)
            if isinstance(event, nat.PunchSucceeded):  # the runtime ends its side (FIN)
                self.at(self.t + 0.05, "fin", other)

    def run(self, until: float = 30.0) -> None:
        self.b.punch = self.b.paths.start_punch(True, self.b.candidates(), 0.0)
        self.a.punch = self.a.paths.start_punch(False, self.a.candidates(), 0.0)
        self.flush(self.b)
        self.flush(self.a)
        while self.t < until:
            if self.a.punch.finished and self.b.punch.finished:
                return
            times = [self.queue[0][0]] if self.queue else []
            times += [x for h in (self.a, self.b) if (x := h.paths.get_timer()) is not None]
            if not times:
                return
            self.t = min(times)
            if self.queue and self.queue[0][0] <= self.t:
                _, _, kind, args = heapq.heappop(self.queue)
                if kind == "frame":
                    host, frame = args
                    assert isinstance(host, Host) and host.punch is not None
                    host.punch.receive(frame, self.t)  # type: ignore[arg-type]
                elif kind == "fin":
                    (host,) = args
                    assert isinstance(host, Host) and host.punch is not None
                    host.punch.stream_closed(self.t)
                else:
                    datagram, src, dst = args
                    self.last_src = src
                    found = self.host_for(dst)  # type: ignore[arg-type]
                    if found is not None:
                        found[0].paths.receive(datagram, src, self.t)  # type: ignore[arg-type]
            for host in (self.a, self.b):
                if (timer := host.paths.get_timer()) is not None and timer <= self.t:
                    host.paths.handle_timer(self.t)
            self.flush(self.a)
            self.flush(self.b)

    def outcome(self, host: Host) -> nat.PunchSucceeded | nat.PunchFailed:
        (last,) = [
            e for e in self.events[host.name] if isinstance(e, nat.PunchSucceeded | nat.PunchFailed)
        ]
        return last


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "direct"),
    [
        ("public", "public", True),
        ("eim", "eim", True),
        ("port-preserving", "port-preserving", True),
        ("eim", "symmetric", True),
        ("symmetric", "public", True),
        ("port-preserving", "eim", True),
        ("symmetric", "symmetric", False),
        ("port-preserving", "symmetric", False),
        ("symmetric", "port-preserving", False),
    ],
)
def test_punching_through_each_pairing_of_nats(kind_a: str, kind_b: str, direct: bool) -> None:
    sim = Simulation(kind_a, kind_b)
    sim.run()
    for host, other in ((sim.a, sim.b), (sim.b, sim.a)):
        result = sim.outcome(host)
        if direct:
            assert isinstance(result, nat.PunchSucceeded), (host.name, result)
            assert host.paths.direct == result.address
            # The path found is the one the peer's packets come from: its NAT's mapping.
            assert result.address[0] == (other.nat.public_ip if other.nat else other.local[0])
            # CONNECT, answer, SYNC, RTT/2, then a ping and its answer: well under 1 s + 3 RTT.
            assert sim.t < 1.0
        else:
            assert result == nat.PunchFailed(3, ErrorCode.NAT_PUNCH_FAILED, result.reason)
            assert host.paths.direct is None


def test_both_sides_start_each_round_together_and_swap_roles() -> None:
    sim = Simulation("symmetric", "symmetric")
    sim.run()
    rounds = {
        name: [e for e in evs if isinstance(e, nat.PunchRoundStarted)]
        for name, evs in sim.events.items()
    }
    assert [r.round for r in rounds["b"]] == [1, 2, 3] == [r.round for r in rounds["a"]]
    # b initiated: prober in odd rounds, dialer in even ones; a the other way [NAT-R42].
    assert [r.role.value for r in rounds["b"]] == ["prober", "dialer", "prober"]
    assert [r.role.value for r in rounds["a"]] == ["dialer", "prober", "dialer"]
    for ra, rb in zip(rounds["a"], rounds["b"], strict=True):
        assert ra.start == pytest.approx(rb.start)  # RTT/2 after SYNC left [NAT-R41]
        assert ra.rtt == pytest.approx(0.1) == rb.rtt
    # The dialer pings each of the 2 candidates 10 times a round, the prober 5 times.
    assert sim.datagrams == 3 * 2 * (10 + 5)


def test_punch_timing_is_the_specs() -> None:
    plan = nat.punch_plan(True, 1, 1.0, 1.08, [("198.51.100.10", 4000)])
    assert plan.role is nat.PunchRole.PROBER
    assert (plan.rtt, plan.start, plan.end) == pytest.approx((0.08, 1.12, 2.62))
    assert len(plan.probes) == 5
    responder = nat.punch_plan(False, 2, 5.15, 5.45, [("198.51.100.10", 4000)] * 2)
    assert responder.role is nat.PunchRole.PROBER and responder.start == 5.45
    assert nat.round_deadline(0.0, 0.6, nat.PathConfig()) == pytest.approx(2.1)


def test_a_punch_peer_that_goes_silent_or_misbehaves_ends_the_attempt_with_a_code() -> None:
    a, b = pair()
    init = a.start_punch(True, [("198.51.100.10", 4000)], 0.0)
    assert init.frames_to_send()  # CONNECT
    a.handle_timer(5.0)  # no answer in 5 s
    assert init.state is nat.PunchState.FAILED and init.code is ErrorCode.NAT_PUNCH_TIMEOUT
    failed = events(a)[-1]
    assert isinstance(failed, nat.PunchFailed) and failed.code is ErrorCode.NAT_PUNCH_TIMEOUT

    resp = b.start_punch(False, [], 0.0)
    resp.receive(b"\x81", 0.0)
    assert resp.code is ErrorCode.NAT_MALFORMED
    with pytest.raises(LocalProtocolError):  # one attempt at a time, unless it ended
        a2, _ = pair()
        a2.start_punch(True, [], 0.0)
        a2.start_punch(True, [], 0.0)
    _, b3 = pair()
    resp = b3.start_punch(False, [], 0.0)
    resp.receive(nat.encode_punch_connect(2, []), 0.0)  # round 2 before round 1
    assert resp.code is ErrorCode.NAT_UNEXPECTED_MESSAGE
    _, b4 = pair()
    resp = b4.start_punch(False, [], 0.0)
    resp.receive(nat.encode_punch_sync(1), 0.0)  # SYNC before CONNECT
    assert resp.code is ErrorCode.NAT_UNEXPECTED_MESSAGE
    _, b5 = pair()
    resp = b5.start_punch(False, [], 0.0)
    resp.receive(codec.encode({0: 7}), 0.0)  # an unknown odd type: ignored
    resp.receive(nat.encode_punch_connect(1, [("0.0.0.0", 1), ("224.0.0.1", 2)]), 0.0)
    assert resp.state is nat.PunchState.WAIT_SYNC
    assert resp.peer_candidates == ()  # unspecified and multicast candidates dropped
    resp.stream_closed(0.1)
    assert resp.code is ErrorCode.NAT_PUNCH_FAILED


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(st.binary(max_size=60), max_size=4))
def test_puncher_never_raises_on_arbitrary_frames(frames: list[bytes]) -> None:
    _, b = pair()
    resp = b.start_punch(False, [("198.51.100.11", 4000)], 0.0)
    for frame in frames:
        resp.receive(frame, 0.0)
        resp.frames_to_send()
    b.handle_timer(100.0)
    assert resp.finished


# ----------------------------------------------------------------------------- peer records


def test_peer_records_carry_relays_with_their_vouchers() -> None:
    me = key("me")
    relays = [key(f"relay{i}") for i in range(3)]
    entries = [
        nat.RelayEntry(
            r.peer_id.raw,
            (f"203.0.113.{10 + i}", 4000),
            nat.make_voucher(r, me.peer_id.raw, 1_700_003_600),
        )
        for i, r in enumerate(relays)
    ]
    entries.append(nat.RelayEntry(pid("no voucher"), ("2001:db8::7", 4000)))
    record = nat.make_peer_record(
        me, 1, 3600, [("198.51.100.10", 4000), ("2001:db8::1", 4000)], entries
    )
    assert len(record.envelope) <= 1024  # 3 relays with vouchers and 2 addresses fit
    parsed = dht.Record.parse(record.envelope)
    assert parsed.addresses() == [("198.51.100.10", 4000), ("2001:db8::1", 4000)]
    checked = nat.relays_of(parsed, 1_700_000_000)
    assert [c.voucher is not None for c in checked] == [True, True, True, False]
    assert [c.relay for c in checked] == [e.relay for e in entries]
    assert {c.error for c in nat.relays_of(parsed, 1_700_003_600)} == {
        ErrorCode.NAT_VOUCHER_EXPIRED,
        None,
    }
    # Someone else's voucher in my record does not verify for me.
    stolen = nat.make_voucher(relays[0], pid("someone else"), 1_700_003_600)
    record = nat.make_peer_record(
        me, 2, 3600, [], [nat.RelayEntry(relays[0].peer_id.raw, ("203.0.113.10", 4000), stolen)]
    )
    (entry,) = nat.relays_of(record, 1_700_000_000)
    assert entry.error is ErrorCode.NAT_VOUCHER_MISMATCH
    # A record without vouchers (03-dht revision 2) reads as relays without vouchers.
    plain = dht.Record.peer(me, 3, 3600, [], [(relays[0].peer_id.raw, ("203.0.113.10", 4000))])
    assert nat.relays_of(plain, 0) == [
        nat.CheckedRelay(relays[0].peer_id.raw, ("203.0.113.10", 4000), None, None)
    ]
