"""The sans-IO gossip core (spec/05-gossip.md): mesh, push, pull, catch-up, caches, hostile input.

Cores are joined in memory by a small discrete-event pump with a fake clock and a
fixed one-way delay per link; hostile peers are plain handles whose frames the
tests write by hand. Nothing here opens a socket or reads the clock, so every
run is the same.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import subprocess
import sys
from collections.abc import Callable, Hashable
from pathlib import Path

import pytest

from starling.proto import codec
from starling.proto.errors import CodecError, ErrorCode, GossipError
from starling.proto.gossip import (
    CHOKE,
    GRAFT,
    IDONTWANT,
    IHAVE,
    IWANT,
    MAX_FRAME,
    MAX_MESSAGE_SIZE,
    MESSAGE_DOMAIN,
    PRUNE,
    PUBLISH,
    SUBSCRIBE,
    SYNC,
    SYNC_PAGE,
    UNCHOKE,
    CatchUpDone,
    Delivered,
    GossipConfig,
    GossipNode,
    Message,
    MessageCache,
    PeerExchange,
    PeerMisbehaved,
    SeenCache,
    Verdict,
    decode_message,
    message_id,
    parse_message,
    select_ids,
    sign_message,
    topic_id,
)
from starling.proto.identity import PrivateKey, seal

TOPIC = hashlib.sha256(b"gossip test topic").digest()
OTHER_TOPIC = hashlib.sha256(b"gossip test other topic").digest()
NETWORK = b"\xa5\x14\x6c\x9a"


def key(label: str | int) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"gossip test {label}".encode()).digest())


AUTHOR = key("author")


class Net:
    """Cores by name, frames delivered after a per-link delay, timers on a fake clock."""

    def __init__(self, latency: Callable[[str, str], float] | None = None) -> None:
        self.now = 0.0
        self.nodes: dict[str, GossipNode] = {}
        self.links: set[tuple[str, str]] = set()
        self.latency = latency or (lambda a, b: 0.01)
        self.queue: list[tuple[float, int, str, str, bytes]] = []
        self.seq = 0
        self.events: dict[str, list[object]] = {}
        self.sent: list[tuple[str, str, bytes]] = []  # every frame, in order

    def add(
        self,
        name: str,
        config: GossipConfig | None = None,
        validator: Callable[[Message, Hashable], Verdict] | None = None,
        subscribe: bool = True,
    ) -> GossipNode:
        rng = random.Random(name)
        node = GossipNode(key(name), NETWORK, rng.randbytes, self.now, config, validator)
        self.nodes[name] = node
        self.events[name] = []
        if subscribe:
            node.subscribe(TOPIC, self.now)
        return node

    def connect(self, a: str, b: str) -> None:
        self.links.add((a, b))
        self.links.add((b, a))
        self.nodes[a].add_peer(b, self.now, outbound=True)
        self.nodes[b].add_peer(a, self.now, outbound=False)
        self.flush(a)
        self.flush(b)

    def disconnect(self, a: str, b: str) -> None:
        self.links.discard((a, b))
        self.links.discard((b, a))
        self.nodes[a].remove_peer(b, self.now)
        self.nodes[b].remove_peer(a, self.now)

    def flush(self, name: str) -> None:
        node = self.nodes[name]
        for dst, frame in node.frames_to_send(self.now):
            assert isinstance(dst, str)
            self.sent.append((name, dst, frame))
            if (name, dst) in self.links:
                self.seq += 1
                at = self.now + self.latency(name, dst)
                heapq.heappush(self.queue, (at, self.seq, name, dst, frame))
        while (event := node.next_event()) is not None:
            self.events[name].append(event)

    def run(self, seconds: float) -> None:
        """Deliver frames and fire timers in time order until ``seconds`` have passed."""
        end = self.now + seconds
        while True:
            timer = min(
                ((t, name) for name, n in self.nodes.items() if (t := n.get_timer()) is not None),
                default=None,
            )
            frame_at = self.queue[0][0] if self.queue else None
            if frame_at is not None and frame_at <= end and (timer is None or frame_at <= timer[0]):
                at, _, src, dst, frame = heapq.heappop(self.queue)
                self.now = max(self.now, at)
                if (src, dst) in self.links:
                    self.nodes[dst].receive(src, frame, self.now)
                    self.flush(dst)
            elif timer is not None and timer[0] <= end:
                self.now = max(self.now, timer[0])
                self.nodes[timer[1]].handle_timer(self.now)
                self.flush(timer[1])
            else:
                break
        self.now = end

    def publish(self, name: str, data: bytes, topic: bytes = TOPIC) -> bytes:
        mid = self.nodes[name].publish(topic, data, self.now)
        self.flush(name)
        return mid

    def delivered(self, name: str) -> list[Delivered]:
        return [e for e in self.events[name] if isinstance(e, Delivered)]

    def misbehaved(self, name: str) -> list[PeerMisbehaved]:
        return [e for e in self.events[name] if isinstance(e, PeerMisbehaved)]


def link_delay(a: str, b: str) -> float:
    """A fixed one-way delay per ordered pair, 10 to 50 ms."""
    return 0.01 + hashlib.sha256(f"{a}>{b}".encode()).digest()[0] / 255 * 0.04


def random_network(n: int, degree: int, config: GossipConfig | None = None, seed: int = 7) -> Net:
    """``n`` cores, each dialling ``degree`` others at random, all in TOPIC."""
    rng = random.Random(seed)
    net = Net(latency=link_delay)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        net.add(name, config)
    for name in names:
        for other in rng.sample(names, degree):
            if other != name and (name, other) not in net.links:
                net.connect(name, other)
    return net


def frames_to(node: GossipNode, peer: str) -> list[tuple[int, dict[str, codec.Value] | None]]:
    """What ``node`` sends ``peer`` now, decoded."""
    return [decode_message(f) for dst, f in node.frames_to_send(0.0) if dst == peer]


def kinds(frames: list[tuple[int, dict[str, codec.Value] | None]]) -> list[int]:
    return [kind for kind, _ in frames]


def publish_frame(message: Message | bytes) -> bytes:
    raw = message.raw if isinstance(message, Message) else message
    return codec.encode({0: PUBLISH, 1: raw})


def lone_node(config: GossipConfig | None = None, **kwargs: object) -> GossipNode:
    rng = random.Random(1)
    node = GossipNode(key("lone"), NETWORK, rng.randbytes, 0.0, config, **kwargs)  # type: ignore[arg-type]
    node.subscribe(TOPIC, 0.0)
    return node


def with_peers(node: GossipNode, *peers: str, now: float = 0.0) -> None:
    """Fake peers that subscribe to TOPIC and graft into ``node``'s mesh."""
    for peer in peers:
        node.add_peer(peer, now, outbound=False)
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), now)
        node.receive(peer, codec.encode({0: GRAFT, 1: TOPIC}), now)
    node.frames_to_send(now)


def events_of(node: GossipNode) -> list[object]:
    out = []
    while (event := node.next_event()) is not None:
        out.append(event)
    return out


# ----------------------------------------------------------------------------- wire format


def test_message_id_is_sha256_of_tag_and_exact_bytes() -> None:
    message = sign_message(AUTHOR, TOPIC, 1_700_000_000_000, b"hello")
    assert message.id == hashlib.sha256(b"starling/gossip-id/1" + message.raw).digest()
    assert message_id(message.raw) == message.id
    assert parse_message(message.raw) is message  # verified once, then shared
    assert message.author.raw == AUTHOR.public_key.raw
    assert (message.topic, message.time_ms, message.data) == (TOPIC, 1_700_000_000_000, b"hello")
    assert message.frame == codec.encode({0: PUBLISH, 1: message.raw})


def test_topic_id_binds_the_network() -> None:
    community = b"\x01" * 32
    assert (
        topic_id(NETWORK, community)
        == hashlib.sha256(b"starling/gossip-topic/1" + NETWORK + community).digest()
    )
    assert topic_id(b"\x00\x00\x00\x00", community) != topic_id(NETWORK, community)


def signed(payload: dict[int, codec.Value], author: PrivateKey = AUTHOR) -> bytes:
    return seal(author, MESSAGE_DOMAIN, codec.encode(payload))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"hello", ErrorCode.GOSSIP_MESSAGE_INVALID),  # not an envelope at all
        (signed({1: TOPIC, 2: 1, 3: b"x"})[:-1] + b"\x00", ErrorCode.GOSSIP_MESSAGE_INVALID),
        (seal(AUTHOR, "starling/test/1", codec.encode({1: TOPIC, 2: 1, 3: b"x"})),
         ErrorCode.GOSSIP_MESSAGE_INVALID),  # another domain
        (signed({1: TOPIC[:31], 2: 1, 3: b"x"}), ErrorCode.GOSSIP_MESSAGE_INVALID),
        (signed({1: TOPIC, 2: -1, 3: b"x"}), ErrorCode.GOSSIP_MESSAGE_INVALID),
        (signed({1: TOPIC, 2: 1, 3: b"x", 4: 0}), ErrorCode.GOSSIP_MESSAGE_INVALID),
        (signed({1: TOPIC, 3: b"x"}), ErrorCode.GOSSIP_MESSAGE_INVALID),
        (signed({1: TOPIC, 2: 1, 3: bytes(MAX_MESSAGE_SIZE)}), ErrorCode.GOSSIP_MESSAGE_TOO_LARGE),
    ],
)  # fmt: skip
def test_parse_message_refuses_with_a_code(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(GossipError) as caught:
        parse_message(raw)
    assert caught.value.code is code
    with pytest.raises(GossipError):  # a refusal is remembered, and still raised
        parse_message(raw)


def test_parse_message_accepts_odd_extensions_in_the_signed_bytes() -> None:
    raw = signed({1: TOPIC, 2: 5, 3: b"x", 5: "later"})
    message = parse_message(raw)
    assert message.raw == raw and message.data == b"x"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", ErrorCode.CBOR_TRUNCATED),
        (b"\xa1\x00\x02\x00", ErrorCode.CBOR_TRAILING_BYTES),
        (codec.encode([2, [TOPIC]]), ErrorCode.SCHEMA_TYPE),
        (codec.encode({1: [TOPIC]}), ErrorCode.SCHEMA_MISSING_FIELD),
        (codec.encode({0: 20}), ErrorCode.SCHEMA_UNKNOWN_MESSAGE_TYPE),
        (codec.encode({0: GRAFT}), ErrorCode.SCHEMA_MISSING_FIELD),
        (codec.encode({0: GRAFT, 1: TOPIC[:31]}), ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: GRAFT, 1: TOPIC, 2: 0}), ErrorCode.SCHEMA_UNKNOWN_CRITICAL_FIELD),
        (codec.encode({0: IWANT, 1: [b"x" * 31]}), ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: IWANT, 1: ["text"]}), ErrorCode.SCHEMA_TYPE),
        (codec.encode({0: IWANT, 1: [bytes(32)] * 1025}), ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: PRUNE, 1: TOPIC, 2: 3601}), ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: PRUNE, 1: TOPIC, 2: 1, 3: [bytes(1025)]}), ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: SYNC_PAGE, 1: TOPIC, 2: [], 4: [-1, bytes(32)]}),
         ErrorCode.SCHEMA_VALUE),
        (codec.encode({0: SYNC_PAGE, 1: TOPIC, 2: [], 4: [1]}), ErrorCode.SCHEMA_VALUE),
        (b"\xa2\x00\x06\x01\xfb" + bytes(8), ErrorCode.CBOR_FLOAT),
        (bytes(MAX_FRAME + 1), ErrorCode.CBOR_TOO_LARGE),
    ],
)  # fmt: skip
def test_malformed_frames_raise_codec_errors(frame: bytes, code: ErrorCode) -> None:
    with pytest.raises(CodecError) as caught:
        decode_message(frame)
    assert caught.value.code is code


def test_unknown_odd_type_and_odd_key_are_ignored() -> None:
    assert decode_message(codec.encode({0: 21, 1: "later"})) == (21, None)
    kind, fields = decode_message(codec.encode({0: GRAFT, 1: TOPIC, 3: "later"}))
    assert kind == GRAFT and fields == {"type": GRAFT, "topic": TOPIC}


def test_select_ids_pages_by_time_then_id() -> None:
    entries = sorted((t, bytes([i]) * 32) for i, t in enumerate([5, 5, 7, 9, 9, 12]))
    ids = [mid for _, mid in entries]
    assert select_ids(entries, 0, None, 10) == (ids, None)
    assert select_ids(entries, 7, None, 10) == (ids[2:], None)
    assert select_ids(entries, 5, None, 2) == (ids[:2], entries[1])
    assert select_ids(entries, 5, ids[1], 2) == (ids[2:4], entries[3])  # strictly after
    assert select_ids(entries, 9, ids[4], 2) == (ids[5:], None)
    assert select_ids(entries, 13, None, 2) == ([], None)


# ----------------------------------------------------------------------------- caches


def test_seen_cache_is_bounded_by_count_and_ttl() -> None:
    seen = SeenCache(max_entries=100, ttl=10.0)
    for i in range(1000):
        seen.add(i.to_bytes(32, "big"), 0, now=i * 0.01)
        assert len(seen) <= 100
    assert (999).to_bytes(32, "big") in seen and (0).to_bytes(32, "big") not in seen
    seen.expire(9.5 + 10.0)
    assert 0 < len(seen) < 100
    seen.expire(9.99 + 10.0)
    assert len(seen) == 0


def test_message_cache_is_bounded_by_count_bytes_and_age() -> None:
    cache = MessageCache(max_messages=10, max_bytes=2000, max_age=5.0)
    messages = [sign_message(AUTHOR, TOPIC, i, bytes(50)) for i in range(30)]
    for i, message in enumerate(messages):
        cache.add(message, now=i * 0.1)
        assert len(cache) <= 10 and cache.bytes <= 2000
    assert cache.get(messages[0].id) is None and cache.get(messages[29].id) is messages[29]
    ids, _ = cache.ids_since(TOPIC, 0, None, 100)
    assert ids == [m.id for m in messages[-len(cache) :]]
    big = MessageCache(max_messages=10, max_bytes=500, max_age=5.0)
    for message in messages[:10]:
        big.add(message, now=0.0)
    assert big.bytes <= 500 and len(big) < 10
    cache.expire(3.0 + 5.0)
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.ids_since(TOPIC, 0, None, 100) == ([], None)


def test_seen_cache_memory_stays_bounded_however_long_the_run() -> None:
    config = GossipConfig(seen_max=200, seen_ttl=5.0, cache_max_messages=50, forward_max_age=1e9)
    node = lone_node(config)
    with_peers(node, "p")
    sizes = []
    for i in range(3000):
        now = i * 0.01
        message = sign_message(AUTHOR, TOPIC, int(now * 1000), i.to_bytes(4, "big"))
        node.receive("p", publish_frame(message), now)
        node.frames_to_send(now)
        events_of(node)
        if node.get_timer() is not None and node.get_timer() <= now:  # type: ignore[operator]
            node.handle_timer(now)
        sizes.append((len(node.seen), len(node.store)))  # type: ignore[arg-type]
    assert node.stats["delivered"] == 3000
    assert max(s for s, _ in sizes) <= 200 and max(c for _, c in sizes) <= 50
    node.handle_timer(30.0 + 10.0)
    assert len(node.seen) == 0
    assert node.pending_wants == 0


# ----------------------------------------------------------------------------- the network


def test_mesh_forms_within_its_bounds_and_is_mutual() -> None:
    config = GossipConfig()
    net = random_network(40, 8, config)
    net.run(5.0)
    for name, node in net.nodes.items():
        mesh = node.mesh(TOPIC)
        assert config.d_low <= len(mesh) <= config.d_high, (name, mesh)
        for peer in mesh:
            assert isinstance(peer, str)
            assert name in net.nodes[peer].mesh(TOPIC), (name, peer)


def test_a_publish_reaches_everyone_once() -> None:
    net = random_network(40, 6)
    net.run(5.0)
    rng = random.Random(3)
    publishers = [rng.choice(list(net.nodes)) for _ in range(10)]
    ids = []
    for name in publishers:
        ids.append(net.publish(name, rng.randbytes(200)))
        net.run(0.2)
    net.run(3.0)
    for name in net.nodes:
        got = [d.message_id for d in net.delivered(name)]
        assert len(got) == len(set(got)), "delivered once"
        own = {mid for mid, who in zip(ids, publishers, strict=True) if who == name}
        assert set(got) == set(ids) - own, name


def test_own_messages_go_to_every_mesh_peer() -> None:
    node = lone_node()
    with_peers(node, "a", "b", "c")
    mid = node.publish(TOPIC, b"mine", 0.0)
    sent = node.frames_to_send(0.0)
    assert sorted(dst for dst, _ in sent) == ["a", "b", "c"]  # type: ignore[type-var]
    assert all(decode_message(f)[0] == PUBLISH for _, f in sent)
    assert events_of(node) == []  # never delivered to ourselves
    assert node.store.get(mid) is not None


def test_own_messages_flood_to_every_topic_peer_unless_configured_off() -> None:
    """Flood publishing [GSP-R23]: topic peers outside the mesh get own messages too."""
    for flood, expected in ((True, ["a", "b", "x", "y"]), (False, ["a", "b"])):
        node = lone_node(GossipConfig(flood_publish=flood))
        with_peers(node, "a", "b")  # grafted: the mesh
        for peer in ("x", "y"):  # subscribed, not in the mesh
            node.add_peer(peer, 0.0, outbound=False)
            node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
        node.frames_to_send(0.0)
        assert node.mesh(TOPIC) == {"a", "b"}
        node.publish(TOPIC, b"mine", 0.0)
        sent = [(dst, f) for dst, f in node.frames_to_send(0.0) if decode_message(f)[0] == PUBLISH]
        assert sorted(dst for dst, _ in sent) == expected  # type: ignore[type-var]


def test_a_late_joiner_catches_up_through_sync_and_iwant() -> None:
    net = random_network(12, 4)
    net.run(5.0)
    ids = [net.publish(f"n{i % 12}", f"message {i}".encode()) for i in range(30)]
    net.run(2.0)
    late = net.add("late")
    net.connect("late", "n0")
    assert late.catch_up("n0", TOPIC, 0, net.now)
    net.flush("late")
    net.run(2.0)
    got = {d.message_id for d in net.delivered("late")}
    assert got == set(ids)
    assert {d.via for d in net.delivered("late")} == {"sync"}
    done = [e for e in net.events["late"] if isinstance(e, CatchUpDone)]
    assert done == [CatchUpDone("n0", TOPIC, 30, 30, True)]
    # What a catch-up brings is old news: delivered, not pushed to the mesh again.
    assert late.stats["forwarded"] == 0


def test_a_node_offline_for_some_messages_catches_up_on_reconnection() -> None:
    net = random_network(16, 5)
    net.run(5.0)
    before = [net.publish("n1", f"before {i}".encode()) for i in range(5)]
    net.run(1.0)
    away = "n9"
    peers = [p for p in list(net.nodes[away].peers) if isinstance(p, str)]
    for peer in peers:
        net.disconnect(away, peer)
    offline_since = int(net.now * 1000)
    missed = [net.publish(f"n{i % 8}", f"missed {i}".encode()) for i in range(20)]
    net.run(2.0)
    assert not {d.message_id for d in net.delivered(away)} & set(missed)
    for peer in peers:
        net.connect(away, peer)
        net.nodes[away].catch_up(peer, TOPIC, offline_since - 60_000, net.now)
    net.flush(away)
    net.run(3.0)
    got = [d.message_id for d in net.delivered(away)]
    assert set(got) == set(before) | set(missed)
    assert len(got) == len(set(got))
    after = net.publish("n2", b"after")
    net.run(1.0)
    assert after in {d.message_id for d in net.delivered(away)}


def test_catch_up_pages_through_a_long_history() -> None:
    config = GossipConfig(sync_page=7, sync_every=None)  # only the catch-up asked for
    net = Net()
    old = net.add("old", config)
    for i in range(23):
        old.publish(TOPIC, f"m{i}".encode(), net.now, time_ms=1000 + i)
    new = net.add("new", config)
    net.connect("old", "new")
    new.catch_up("old", TOPIC, 0, net.now)
    net.flush("new")
    net.run(3.0)
    assert len(net.delivered("new")) == 23
    sync_frames = [f for src, _, f in net.sent if src == "new" and decode_message(f)[0] == SYNC]
    assert len(sync_frames) == 4  # pages of 7, 7, 7, 2
    assert [e for e in net.events["new"] if isinstance(e, CatchUpDone)] == [
        CatchUpDone("old", TOPIC, 23, 23, True)
    ]


def test_anti_entropy_pulls_what_push_and_ihave_missed() -> None:
    """A mesh peer whose push was lost hears no IHAVE for it (IHAVE goes outside the
    mesh); the periodic catch-up with a live peer pulls it [GSP-R63]."""
    for every, expected in ((10, 1), (None, 0)):
        net = Net()
        net.add("a", GossipConfig(sync_every=every))
        b = net.add("b", GossipConfig(sync_every=every))
        net.connect("a", "b")
        net.run(2.0)
        assert net.nodes["a"].mesh(TOPIC) == {"b"}
        net.nodes["a"].publish(TOPIC, b"lost on the way", net.now)
        net.nodes["a"].frames_to_send(net.now)  # the push is lost
        net.run(12.0)  # more than ten heartbeats
        assert len(net.delivered("b")) == expected
        if every:
            assert b.stats["anti_entropy"] >= 1
            assert net.delivered("b")[0].via == "sync"


def test_a_long_catch_up_is_paced_within_the_peers_limits() -> None:
    # The responder serves 2 SYNC per heartbeat; pages come back within milliseconds,
    # so an unpaced asker would be refused and penalised after its second page.
    net = Net()
    old = net.add("old", GossipConfig(sync_page=5, max_syncs=2))
    for i in range(30):
        old.publish(TOPIC, f"m{i}".encode(), net.now, time_ms=1000 + i)
    new = net.add("new", GossipConfig(max_syncs_out=2))
    net.connect("old", "new")
    new.catch_up("old", TOPIC, 0, net.now)
    net.flush("new")
    net.run(5.0)
    assert len(net.delivered("new")) == 30
    assert old.stats["rejected_GOSSIP_SYNC_LIMIT"] == 0 and old.penalty("new") == 0
    assert [e for e in net.events["new"] if isinstance(e, CatchUpDone)] == [
        CatchUpDone("old", TOPIC, 30, 30, True)
    ]


def test_lazy_pull_covers_a_node_outside_the_mesh() -> None:
    # The publisher and a watcher share no mesh: the watcher only hears an IHAVE at the
    # heartbeat and pulls the message.
    net = Net()
    no_mesh = GossipConfig(d=0, d_low=0, d_high=0, d_out=0, flood_publish=False)
    net.add("pub", no_mesh)
    watcher = net.add("watch", no_mesh)
    net.connect("pub", "watch")
    net.run(1.5)
    assert net.nodes["pub"].mesh(TOPIC) == set() and watcher.mesh(TOPIC) == set()
    mid = net.publish("pub", b"announced, then pulled")
    net.run(2.0)
    (delivery,) = net.delivered("watch")
    assert delivery.message_id == mid and delivery.via == "pull"


def test_large_messages_go_to_few_mesh_peers_and_are_announced_to_the_rest() -> None:
    node = lone_node(GossipConfig(eager_degree_large=2))
    with_peers(node, "src", "a", "b", "c", "d")
    message = sign_message(AUTHOR, TOPIC, 0, bytes(4000))
    node.receive("src", publish_frame(message), 0.0)
    sent = node.frames_to_send(0.0)
    bodies = [dst for dst, f in sent if decode_message(f)[0] == PUBLISH]
    announced = [dst for dst, f in sent if decode_message(f)[0] == IHAVE]
    assert len(bodies) == 2 and len(announced) == 2 and set(bodies) | set(announced) == set("abcd")


def test_idontwant_is_sent_for_large_messages_and_honoured() -> None:
    node = lone_node(GossipConfig(eager_degree_large=None))
    with_peers(node, "src", "a", "b")
    large = sign_message(AUTHOR, TOPIC, 0, bytes(2000))
    small = sign_message(AUTHOR, TOPIC, 1, bytes(100))
    # "a" already holds the large message and says so.
    node.receive("a", codec.encode({0: IDONTWANT, 1: [large.id]}), 0.0)
    node.receive("src", publish_frame(large), 0.0)
    sent = node.frames_to_send(0.0)
    to_a, to_b = (kinds([decode_message(f) for d, f in sent if d == p]) for p in "ab")
    assert to_a == [IDONTWANT]  # told, never pushed: no duplicate for "a"
    assert to_b == [IDONTWANT, PUBLISH]  # the notice goes before the body
    node.receive("src", publish_frame(small), 0.0)
    sent = node.frames_to_send(0.0)
    assert sorted(kinds([decode_message(f) for _, f in sent])) == [PUBLISH, PUBLISH]


def test_idontwant_lowers_duplicates_between_cores() -> None:
    # p reaches x only; x pushes to one of y and z and announces to the other, telling
    # both it holds the message; whichever of y and z gets it second does not push it
    # back to x.
    def duplicates(idontwant: bool) -> int:
        config = GossipConfig(eager_degree_large=1, idontwant=idontwant)
        net = Net()
        for name in "pxyz":
            net.add(name, config)
        for a, b in (("p", "x"), ("x", "y"), ("x", "z"), ("y", "z")):
            net.connect(a, b)
        net.run(2.0)
        net.publish("p", bytes(3000))
        net.run(2.0)
        assert all(len(net.delivered(n)) == 1 for n in "xyz")
        return sum(n.stats["publish_rx_duplicate"] for n in net.nodes.values())

    assert duplicates(idontwant=True) < duplicates(idontwant=False)


# ----------------------------------------------------------------------------- hostile input


def penalties(node: GossipNode, peer: str) -> list[ErrorCode]:
    return [e.code for e in events_of(node) if isinstance(e, PeerMisbehaved) and e.peer == peer]


def test_unsigned_and_forged_messages_are_not_forwarded_and_cost_the_sender() -> None:
    node = lone_node()
    with_peers(node, "evil", "honest")
    good = sign_message(AUTHOR, TOPIC, 0, b"fine")
    forged = bytearray(good.raw)
    forged[-1] ^= 1  # the signature's last byte
    unsigned = codec.encode({1: TOPIC, 2: 0, 3: b"no envelope"})
    for raw in (bytes(forged), unsigned):
        node.receive("evil", codec.encode({0: PUBLISH, 1: raw}), 0.0)
        assert node.frames_to_send(0.0) == []  # nothing forwarded
        assert penalties(node, "evil") == [ErrorCode.GOSSIP_MESSAGE_INVALID]
    assert node.stats["rejected_GOSSIP_MESSAGE_INVALID"] == 2
    assert node.penalty("evil") > 0 and node.penalty("honest") == 0
    # The same forged bytes again (say from a second peer) cost that peer too.
    node.receive("honest", codec.encode({0: PUBLISH, 1: bytes(forged)}), 0.0)
    assert penalties(node, "honest") == [ErrorCode.GOSSIP_MESSAGE_INVALID]


def test_validator_reject_penalises_and_ignore_does_not() -> None:
    verdicts = {b"bad": Verdict.REJECT, b"meh": Verdict.IGNORE, b"ok": Verdict.ACCEPT}
    node = lone_node(validator=lambda message, peer: verdicts[message.data])
    with_peers(node, "p", "q")
    for data in (b"bad", b"meh", b"ok"):
        node.receive("p", publish_frame(sign_message(AUTHOR, TOPIC, 0, data)), 0.0)
    forwarded = [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "q"]
    assert [parse_message(fields["message"]).data for fields in forwarded] == [b"ok"]  # type: ignore[index, arg-type]
    events = events_of(node)
    assert [e.code for e in events if isinstance(e, PeerMisbehaved)] == [
        ErrorCode.GOSSIP_MESSAGE_REJECTED
    ]
    assert [e.message.data for e in events if isinstance(e, Delivered)] == [b"ok"]


def test_an_ignored_message_accepted_late_is_kept_delivered_and_forwarded() -> None:
    """GSP-R27: what the validator could not judge yet spreads on once it can."""
    waiting = {b"second"}
    node = lone_node(
        validator=lambda m, peer: Verdict.IGNORE if m.data in waiting else Verdict.ACCEPT
    )
    with_peers(node, "p", "q")
    second = sign_message(AUTHOR, TOPIC, 10_000, b"second")
    first = sign_message(AUTHOR, TOPIC, 9_000, b"first")
    node.receive("p", publish_frame(second), 1.0)
    assert frames_to(node, "q") == [] and node.stats["ignored_by_validator"] == 1
    events_of(node)
    # Not a message the validator ignored: nothing to accept late.
    assert not node.accept_late(sign_message(AUTHOR, TOPIC, 9_500, b"other"), 1.0)
    node.receive("p", publish_frame(first), 1.5)
    waiting.clear()  # what "second" waited for has come
    assert node.accept_late(second, 1.5)
    sent = [parse_message(f["message"]).data for k, f in frames_to(node, "q") if k == PUBLISH]  # type: ignore[index, arg-type]
    assert sent == [b"first", b"second"]  # forwarded to the mesh, in that order
    assert frames_to(node, "p") == []  # never back to the peer it came from
    delivered = [e for e in events_of(node) if isinstance(e, Delivered)]
    assert [(e.message.data, e.from_peer, e.via) for e in delivered] == [
        (b"first", "p", "push"),
        (b"second", "p", "push"),
    ]
    # Now held: served on IWANT, a duplicate if it comes again, not accepted twice.
    assert not node.accept_late(second, 2.0)
    node.receive("q", publish_frame(second), 2.0)
    assert node.stats["publish_rx_duplicate"] == 1 and events_of(node) == []


def test_a_message_accepted_late_after_a_catch_up_or_the_ttl_is_not_pushed() -> None:
    """GSP-R27 with GSP-R24: late acceptance keeps old news old."""
    node = lone_node(validator=lambda m, peer: Verdict.IGNORE)
    with_peers(node, "p", "q")
    old = sign_message(AUTHOR, TOPIC, 0, b"old")
    node.receive("p", publish_frame(old), 200.0)  # dated 200 s ago
    assert node.accept_late(old, 200.0)
    assert [k for k, _ in frames_to(node, "q")] == []  # kept and delivered, not pushed
    assert [e.via for e in events_of(node) if isinstance(e, Delivered)] == ["push"]
    stale = sign_message(AUTHOR, TOPIC, 300_000, b"stale")
    node.receive("p", publish_frame(stale), 300.0)
    assert not node.accept_late(stale, 300.0 + 121.0)  # past the seen-cache's TTL


def test_messages_dated_in_the_future_or_for_other_topics_are_ignored_without_blame() -> None:
    node = lone_node(GossipConfig(max_clock_skew=60.0))
    with_peers(node, "p", "q")
    ahead = sign_message(AUTHOR, TOPIC, 61_001, b"from the future")
    elsewhere = sign_message(AUTHOR, OTHER_TOPIC, 0, b"not ours")
    node.receive("p", publish_frame(ahead), 0.0)
    node.receive("p", publish_frame(elsewhere), 0.0)
    assert [dst for dst, _ in node.frames_to_send(0.0)] == []
    assert events_of(node) == []
    assert node.stats["rejected_GOSSIP_MESSAGE_FUTURE"] == 1
    assert node.stats["rejected_GOSSIP_NOT_SUBSCRIBED"] == 1
    assert node.penalty("p") == 0


def test_a_publish_flood_above_the_rate_is_dropped() -> None:
    node = lone_node(GossipConfig(publish_rate=10.0, publish_burst=20.0))
    with_peers(node, "flooder")
    for i in range(100):
        node.receive("flooder", publish_frame(sign_message(AUTHOR, TOPIC, i, b"x")), 0.0)
    assert node.stats["delivered"] == 20
    assert node.stats["rejected_GOSSIP_RATE_LIMITED"] == 80
    assert set(penalties(node, "flooder")) == {ErrorCode.GOSSIP_RATE_LIMITED}
    # The bucket refills with time.
    node.receive("flooder", publish_frame(sign_message(AUTHOR, TOPIC, 500, b"y")), 1.0)
    assert node.stats["delivered"] == 21


def test_an_ihave_flood_is_bounded() -> None:
    config = GossipConfig(max_ihave_ids=3000, max_iwant_ids_out=500, max_wants=2000)
    node = lone_node(config)
    with_peers(node, "liar")
    ids = [hashlib.sha256(b"fake %d" % i).digest() for i in range(10 * 1024)]
    for i in range(10):
        chunk = ids[i * 1024 : (i + 1) * 1024]
        node.receive("liar", codec.encode({0: IHAVE, 1: TOPIC, 2: chunk}), 0.0)
    requested = [
        mid
        for dst, f in node.frames_to_send(0.0)
        for mid in decode_message(f)[1]["ids"]  # type: ignore[index]
    ]
    assert len(requested) == 500  # our budget toward one peer per heartbeat
    assert node.pending_wants <= 2000
    assert node.stats["rejected_GOSSIP_IHAVE_LIMIT"] > 0
    assert ErrorCode.GOSSIP_IHAVE_LIMIT in penalties(node, "liar")


def test_an_iwant_flood_is_bounded() -> None:
    config = GossipConfig(max_iwant_ids=50, max_retransmissions=3)
    node = lone_node(config)
    with_peers(node, "greedy")
    mid = node.publish(TOPIC, b"popular", 0.0)
    node.frames_to_send(0.0)
    for _ in range(10):  # the same ID over and over
        node.receive("greedy", codec.encode({0: IWANT, 1: [mid]}), 0.0)
    assert len(node.frames_to_send(0.0)) == 3
    node.handle_timer(1.0)
    node.frames_to_send(1.0)
    others = [node.publish(TOPIC, b"m%d" % i, 1.0) for i in range(80)]
    node.frames_to_send(1.0)
    node.receive("greedy", codec.encode({0: IWANT, 1: others}), 1.0)
    assert len(node.frames_to_send(1.0)) == 50
    assert node.stats["rejected_GOSSIP_IWANT_LIMIT"] >= 7 + 1
    assert ErrorCode.GOSSIP_IWANT_LIMIT in penalties(node, "greedy")


def test_announcing_and_never_delivering_is_penalised_and_another_announcer_asked() -> None:
    node = lone_node(GossipConfig(iwant_timeout=2.0))
    with_peers(node, "liar", "honest")
    message = sign_message(AUTHOR, TOPIC, 0, b"wanted")
    node.receive("liar", codec.encode({0: IHAVE, 1: TOPIC, 2: [message.id]}), 0.0)
    node.receive("honest", codec.encode({0: IHAVE, 1: TOPIC, 2: [message.id]}), 0.0)
    asked = [(dst, decode_message(f)[0]) for dst, f in node.frames_to_send(0.0)]
    assert asked == [("liar", IWANT)]  # one request, to the first announcer
    node.handle_timer(1.0)
    assert penalties(node, "liar") == []
    node.handle_timer(2.0)
    assert penalties(node, "liar") == [ErrorCode.GOSSIP_PROMISE_BROKEN]
    assert [(dst, decode_message(f)[0]) for dst, f in node.frames_to_send(2.0)][-1] == (
        "honest",
        IWANT,
    )
    node.receive("honest", publish_frame(message), 2.1)
    (delivery,) = [e for e in events_of(node) if isinstance(e, Delivered)]
    assert delivery.via == "pull" and delivery.from_peer == "honest"
    node.handle_timer(5.0)
    assert penalties(node, "honest") == []


def test_graft_during_backoff_is_penalised_and_pruned_again() -> None:
    node = lone_node(GossipConfig(d=2, d_low=1, d_high=3, prune_backoff=60))
    with_peers(node, "a", "b", "c", "d", "e")
    node.handle_timer(1.0)  # five in the mesh, above D_high: prune down to D
    pruned = [dst for dst, f in node.frames_to_send(1.0) if decode_message(f)[0] == PRUNE]
    assert len(pruned) == 3 and len(node.mesh(TOPIC)) == 2
    again = pruned[0]
    assert isinstance(again, str)
    node.receive(again, codec.encode({0: GRAFT, 1: TOPIC}), 10.0)
    assert again not in node.mesh(TOPIC)
    assert [decode_message(f)[0] for dst, f in node.frames_to_send(10.0) if dst == again] == [PRUNE]
    assert penalties(node, again) == [ErrorCode.GOSSIP_GRAFT_BACKOFF]
    # After the backoff, a GRAFT is welcome.
    node.receive(pruned[1], codec.encode({0: GRAFT, 1: TOPIC}), 62.0)
    assert pruned[1] in node.mesh(TOPIC) and penalties(node, pruned[1]) == []  # type: ignore[arg-type]


def test_a_pruned_node_waits_out_the_backoff_before_grafting_again() -> None:
    node = lone_node(GossipConfig(d=3, d_low=2, d_high=6))
    with_peers(node, "a")
    node.receive("a", codec.encode({0: PRUNE, 1: TOPIC, 2: 30}), 0.0)
    assert node.mesh(TOPIC) == set()
    for t in range(1, 30):
        node.handle_timer(float(t))
        assert GRAFT not in kinds(frames_to(node, "a")), t
    node.handle_timer(31.0)
    assert kinds(frames_to(node, "a")) == [GRAFT]


def test_prune_carries_peer_exchange() -> None:
    node = lone_node(GossipConfig(d=1, d_low=1, d_high=1, px_count=4))
    with_peers(node, "a", "b", "c")
    for peer in ("a", "b", "c"):
        node.set_peer_hint(peer, f"hint of {peer}".encode())
    node.handle_timer(1.0)
    prunes = [(dst, decode_message(f)[1]) for dst, f in node.frames_to_send(1.0)]
    assert len(prunes) == 2
    for dst, fields in prunes:
        assert fields is not None
        assert f"hint of {dst}".encode() not in fields["px"]  # type: ignore[operator]
        assert len(fields["px"]) == 2  # type: ignore[arg-type]
    other = lone_node()
    with_peers(other, "pruner")
    px = [b"somewhere"]
    other.receive("pruner", codec.encode({0: PRUNE, 1: TOPIC, 2: 60, 3: px}), 0.0)
    assert events_of(other) == [PeerExchange("pruner", TOPIC, (b"somewhere",))]


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff",
        b"",
        codec.encode({0: 20}),
        codec.encode({0: GRAFT, 1: b"short"}),
        codec.encode({0: IHAVE, 1: TOPIC, 2: [b"short"]}),
        codec.encode({0: PUBLISH, 1: b"x", 2: 0}),
        b"\x9f\xff",
    ],
)
def test_malformed_frames_are_counted_and_penalised_never_raised(frame: bytes) -> None:
    node = lone_node()
    with_peers(node, "evil")
    node.receive("evil", frame, 0.0)
    (code,) = penalties(node, "evil")
    assert code.name.startswith(("CBOR_", "SCHEMA_"))
    assert node.stats[f"rejected_{code.name}"] == 1


def test_oversized_frames_and_messages_are_rejected() -> None:
    node = lone_node()
    with_peers(node, "evil")
    node.receive("evil", bytes(MAX_FRAME + 1), 0.0)
    huge = signed({1: TOPIC, 2: 0, 3: bytes(MAX_MESSAGE_SIZE)})
    node.receive("evil", codec.encode({0: PUBLISH, 1: huge[: MAX_FRAME - 8]}), 0.0)
    assert penalties(node, "evil") == [
        ErrorCode.CBOR_TOO_LARGE,
        ErrorCode.GOSSIP_MESSAGE_TOO_LARGE,
    ]


def test_an_unknown_odd_message_type_is_ignored_without_blame() -> None:
    node = lone_node()
    with_peers(node, "newer")
    node.receive("newer", codec.encode({0: 21, 1: "from a later revision"}), 0.0)
    assert events_of(node) == [] and node.stats["ignored_unknown_type"] == 1


def test_a_misbehaving_peer_is_graylisted_and_forgiven_slowly() -> None:
    node = lone_node()
    with_peers(node, "evil", "ok")
    for _ in range(2):
        node.receive("evil", b"\xff", 0.0)
    events = [e for e in events_of(node) if isinstance(e, PeerMisbehaved)]
    assert [e.graylisted for e in events] == [False, True]
    assert node.graylisted("evil") and "evil" not in node.mesh(TOPIC)
    node.receive("evil", codec.encode({0: GRAFT, 1: TOPIC}), 0.0)
    assert "evil" not in node.mesh(TOPIC)
    assert node.stats["rejected_GOSSIP_GRAYLISTED"] == 1
    for t in range(1, 60):
        node.handle_timer(float(t))
    assert not node.graylisted("evil") and node.penalty("evil") < 50
    # A reconnection does not wipe the slate.
    node.receive("evil", b"\xff", 60.0)
    node.receive("evil", b"\xff", 60.0)
    node.remove_peer("evil", 60.0)
    events_of(node)
    node.add_peer("evil", 60.0)
    (event,) = events_of(node)
    assert isinstance(event, PeerMisbehaved) and event.code is ErrorCode.GOSSIP_GRAYLISTED


def test_sync_floods_and_unsolicited_pages_are_bounded() -> None:
    node = lone_node(GossipConfig(max_syncs=4))
    with_peers(node, "evil")
    for _ in range(10):
        node.receive("evil", codec.encode({0: SYNC, 1: TOPIC, 2: 0}), 0.0)
    assert kinds(frames_to(node, "evil")) == [SYNC_PAGE] * 4
    assert node.stats["rejected_GOSSIP_SYNC_LIMIT"] == 6
    page = codec.encode({0: SYNC_PAGE, 1: TOPIC, 2: [bytes(32)]})
    node.receive("evil", page, 0.0)
    assert node.stats["rejected_GOSSIP_UNSOLICITED"] == 1
    assert node.pending_wants == 0  # nothing asked for on an unsolicited page


def transcript() -> str:
    """A digest of every frame of a small run."""
    net = random_network(15, 4, seed=11)
    net.run(3.0)
    for i in range(5):
        net.publish(f"n{i}", b"x%d" % i)
    net.run(3.0)
    digest = hashlib.sha256()
    for src, dst, frame in net.sent:
        digest.update(f"{src}>{dst}:".encode() + frame)
    return digest.hexdigest()


def test_runs_are_reproducible_across_processes() -> None:
    # Set iteration order follows string hashes, which differ between processes: a
    # core whose output depended on it would give two transcripts here.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import test_gossip_core as t; print(t.transcript())"
    )
    here = str(Path(__file__).resolve().parent)
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, here],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1 and len(outputs.pop().strip()) == 64


def test_the_publish_fast_path_agrees_with_the_general_decoder() -> None:
    # Every length class of the signed message, and near misses of the canonical form.
    for size in (0, 23, 24, 255, 256, 65000):
        frame = codec.encode({0: PUBLISH, 1: bytes(size)})
        assert decode_message(frame) == (PUBLISH, {"type": PUBLISH, "message": bytes(size)})
    near_misses = [
        b"\xa2\x00\x0a\x01\x58\x05" + bytes(5),  # length 5 in one extra byte
        b"\xa2\x00\x0a\x01\x59\x00\x20" + bytes(32),  # length 32 in two extra bytes
        b"\xa2\x00\x0a\x01\x43\x00\x00",  # one byte short
        b"\xa2\x00\x0a\x01\x41\x00\x00",  # one byte too many
        b"\xa2\x00\x0a\x01\x61\x78",  # a text string
    ]
    for frame in near_misses:
        with pytest.raises(CodecError):
            decode_message(frame)


# ----------------------------------------------------------------------------- eager and lazy links


def choking_node(**changes: object) -> GossipNode:
    """A node with mesh peers a..e that keeps at most two of them eager."""
    config = GossipConfig(eager_max=2, eager_min=1, choke_hold=0.0, **changes)  # type: ignore[arg-type]
    node = lone_node(config)
    with_peers(node, *"abcde")
    node.handle_timer(1.0)
    return node


def test_a_node_chokes_mesh_peers_beyond_eager_max_and_keeps_the_floor() -> None:
    node = choking_node()
    sent = [(dst, decode_message(f)) for dst, f in node.frames_to_send(1.0)]
    choked = {dst for dst, (kind, fields) in sent if kind == CHOKE}
    assert len(choked) == 3 and choked < set("abcde")
    assert all(fields == {"type": CHOKE, "topic": TOPIC} for _, (k, fields) in sent if k == CHOKE)
    assert node.stats["choked"] == 3
    # Two eager peers leave the mesh: the floor of one eager link unchokes a choked one.
    for peer in set("abcde") - choked:
        node.receive(peer, codec.encode({0: PRUNE, 1: TOPIC, 2: 60}), 1.5)
    node.handle_timer(2.0)
    unchoked = [dst for dst, f in node.frames_to_send(2.0) if decode_message(f)[0] == UNCHOKE]
    assert len(unchoked) == 1 and unchoked[0] in choked


def test_a_peer_that_choked_us_gets_ids_and_the_others_bodies() -> None:
    node = lone_node(GossipConfig(eager_max=None, lazy_fanout=0))
    with_peers(node, "src", "a", "b", "c")
    node.receive("a", codec.encode({0: CHOKE, 1: TOPIC}), 0.0)
    message = sign_message(AUTHOR, TOPIC, 0, b"small")
    node.receive("src", publish_frame(message), 0.0)
    sent = {dst: decode_message(f) for dst, f in node.frames_to_send(0.0)}
    assert sent["a"] == (IHAVE, {"type": IHAVE, "topic": TOPIC, "ids": [message.id]})
    assert sent["b"][0] == PUBLISH and sent["c"][0] == PUBLISH and "src" not in sent
    node.receive("a", codec.encode({0: UNCHOKE, 1: TOPIC}), 0.1)
    later = sign_message(AUTHOR, TOPIC, 1, b"small again")
    node.receive("src", publish_frame(later), 0.1)
    assert {
        dst: kind
        for dst, (kind, _) in [(d, decode_message(f)) for d, f in node.frames_to_send(0.1)]
    }["a"] == PUBLISH


def test_lazy_ids_go_at_once_to_a_few_peers_outside_the_mesh() -> None:
    node = lone_node(GossipConfig(lazy_fanout=2))
    with_peers(node, "src")
    for peer in ("x", "y", "z", "w"):  # topic peers, not in the mesh
        node.add_peer(peer, 0.0)
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    node.frames_to_send(0.0)
    node.receive("src", publish_frame(sign_message(AUTHOR, TOPIC, 0, b"news")), 0.0)
    told = [dst for dst, f in node.frames_to_send(0.0) if decode_message(f)[0] == IHAVE]
    assert len(told) == 2 and set(told) < {"x", "y", "z", "w"}


def test_an_announcement_from_a_choked_peer_waits_for_the_eager_copy() -> None:
    node = choking_node()
    choked = [dst for dst, f in node.frames_to_send(1.0) if decode_message(f)[0] == CHOKE]
    eager = sorted(set("abcde") - set(choked))
    message = sign_message(AUTHOR, TOPIC, 0, b"coming eagerly")
    node.receive(choked[0], codec.encode({0: IHAVE, 1: TOPIC, 2: [message.id]}), 1.1)
    assert node.frames_to_send(1.1) == []  # no request yet
    due = node.get_timer()
    assert due is not None and 1.1 < due < 2.0
    node.receive(eager[0], publish_frame(message), 1.12)  # the eager copy comes in time
    node.frames_to_send(1.12)
    node.handle_timer(due)
    assert [decode_message(f)[0] for _, f in node.frames_to_send(due)] == []
    assert node.stats["publish_rx"] == 1  # one copy, nothing pulled


def test_a_choked_announcer_is_asked_after_the_wait_and_made_eager() -> None:
    node = choking_node()
    choked = [dst for dst, f in node.frames_to_send(1.0) if decode_message(f)[0] == CHOKE]
    message = sign_message(AUTHOR, TOPIC, 0, b"the eager copy was lost")
    node.receive(choked[0], codec.encode({0: IHAVE, 1: TOPIC, 2: [message.id]}), 1.1)
    node.frames_to_send(1.1)
    due = node.get_timer()
    assert due is not None
    node.handle_timer(due)
    sent = [(dst, decode_message(f)[0]) for dst, f in node.frames_to_send(due)]
    assert (choked[0], IWANT) in sent and (choked[0], UNCHOKE) in sent
    node.receive(choked[0], publish_frame(message), due + 0.05)
    (delivery,) = [e for e in events_of(node) if isinstance(e, Delivered)]
    assert delivery.via == "pull" and delivery.from_peer == choked[0]


def test_an_unpushed_announcement_is_pulled_at_once() -> None:
    node = choking_node()
    choked = [dst for dst, f in node.frames_to_send(1.0) if decode_message(f)[0] == CHOKE]
    big = sign_message(AUTHOR, TOPIC, 0, bytes(4000))
    node.receive(choked[0], codec.encode({0: IHAVE, 1: TOPIC, 2: [big.id], 3: True}), 1.1)
    assert [(dst, decode_message(f)[0]) for dst, f in node.frames_to_send(1.1)] == [
        (choked[0], IWANT)
    ]


def test_large_messages_are_announced_unpushed() -> None:
    node = lone_node()
    with_peers(node, "src", "a")
    big = sign_message(AUTHOR, TOPIC, 0, bytes(4000))
    node.receive("src", publish_frame(big), 0.0)
    ihave = [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "a"][-1]
    assert ihave == {"type": IHAVE, "topic": TOPIC, "ids": [big.id], "unpushed": True}


def test_a_choke_flood_is_bounded_and_penalised() -> None:
    node = lone_node(GossipConfig(max_chokes=8))
    with_peers(node, "noisy", "calm")
    for i in range(40):
        kind = CHOKE if i % 2 else UNCHOKE
        node.receive("noisy", codec.encode({0: kind, 1: TOPIC}), 0.0)
    assert node.stats["rejected_GOSSIP_CHOKE_LIMIT"] == 32
    assert set(penalties(node, "noisy")) == {ErrorCode.GOSSIP_CHOKE_LIMIT}
    assert node.penalty("calm") == 0.0
    # A CHOKE for a topic the node is not in, or from a peer outside its mesh, changes
    # nothing and costs nothing.
    node.add_peer("outsider", 0.0)
    node.receive("outsider", codec.encode({0: CHOKE, 1: TOPIC}), 0.0)
    node.receive("calm", codec.encode({0: CHOKE, 1: OTHER_TOPIC}), 0.0)
    node.frames_to_send(0.0)
    message = sign_message(AUTHOR, TOPIC, 0, b"still pushed to calm")
    node.receive("outsider", publish_frame(message), 0.0)
    sent = {dst: decode_message(f)[0] for dst, f in node.frames_to_send(0.0)}
    assert sent["calm"] == PUBLISH
    assert node.penalty("outsider") == 0.0 and node.penalty("calm") == 0.0


def test_announcing_without_delivering_is_penalised_after_the_wait_too() -> None:
    node = choking_node(iwant_timeout=1.0)
    choked = [dst for dst, f in node.frames_to_send(1.0) if decode_message(f)[0] == CHOKE]
    liar = choked[0]
    events_of(node)
    message = sign_message(AUTHOR, TOPIC, 0, b"promised, never sent")
    node.receive(liar, codec.encode({0: IHAVE, 1: TOPIC, 2: [message.id]}), 1.1)
    due = node.get_timer()
    assert due is not None
    node.handle_timer(due)
    assert (liar, IWANT) in [(dst, decode_message(f)[0]) for dst, f in node.frames_to_send(due)]
    node.handle_timer(2.0)
    assert penalties(node, liar) == []
    node.handle_timer(3.0)
    assert penalties(node, liar) == [ErrorCode.GOSSIP_PROMISE_BROKEN]


def test_choked_links_cut_copies_and_the_wave_survives_a_silent_crash() -> None:
    def copies(net: Net) -> float:
        received = sum(n.stats["publish_rx"] for n in net.nodes.values())
        delivered = sum(n.stats["delivered"] for n in net.nodes.values())
        return received / delivered

    def traffic(net: Net, count: int, seed: int) -> list[tuple[bytes, str]]:
        rng = random.Random(seed)
        sent = []
        live = sorted({a for a, _ in net.links})
        for _ in range(count):
            publisher = rng.choice(live)
            sent.append((net.publish(publisher, rng.randbytes(200)), publisher))
            net.run(0.25)
        return sent

    plain = random_network(60, 6, GossipConfig(eager_max=None))
    plain.run(8.0)
    traffic(plain, 20, 1)
    plain.run(3.0)
    # No heartbeat gossip, no anti-entropy: only the wave (eager pushes, IDs sent on
    # receipt and pulls after the short wait) can deliver.
    net = random_network(60, 6, GossipConfig(d_lazy=0, gossip_factor=0.0, sync_every=None))
    net.run(8.0)
    traffic(net, 20, 1)
    net.run(3.0)
    eager_max = GossipConfig().eager_max
    assert eager_max is not None
    for node in net.nodes.values():
        state = node._topics[TOPIC]
        assert len(set(state.mesh) - set(state.choking)) <= eager_max + 1  # one being tried
    assert copies(net) < 0.6 * copies(plain)
    # Half the nodes vanish without notice (their sessions stay up on the other side):
    # every survivor still gets the new messages within two heartbeats.
    dead = set(random.Random(5).sample(sorted(net.nodes), 30))
    net.links = {(a, b) for a, b in net.links if a not in dead and b not in dead}
    for name in net.nodes:
        net.events[name].clear()
    sent = traffic(net, 4, 2)
    net.run(2.0 - 0.25)
    for name in set(net.nodes) - dead:
        got = {d.message_id for d in net.delivered(name)}
        assert got == {mid for mid, publisher in sent if publisher != name}, name


def test_a_small_message_from_its_author_is_relayed_to_every_topic_peer() -> None:
    node = lone_node(GossipConfig(lazy_fanout=0))
    node.add_peer("author", 0.0, peer_id=AUTHOR.peer_id.raw)
    node.add_peer("relay", 0.0, peer_id=key("relay").peer_id.raw)
    for peer in ("author", "relay"):
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    with_peers(node, "a", "b")
    for peer in ("x", "y"):  # topic peers outside the mesh
        node.add_peer(peer, 0.0)
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    node.receive("a", codec.encode({0: CHOKE, 1: TOPIC}), 0.0)
    node.frames_to_send(0.0)
    straight = sign_message(AUTHOR, TOPIC, 0, b"from the author")
    node.receive("author", publish_frame(straight), 0.0)
    bodies = {dst for dst, f in node.frames_to_send(0.0) if decode_message(f)[0] == PUBLISH}
    assert bodies == {"relay", "a", "b", "x", "y"}  # choked "a" and non-mesh peers too
    relayed = sign_message(AUTHOR, TOPIC, 1, b"from the author, via a relay")
    node.receive("relay", publish_frame(relayed), 0.0)
    sent = {dst: decode_message(f)[0] for dst, f in node.frames_to_send(0.0)}
    assert sent == {"a": IHAVE, "b": PUBLISH}  # as any forwarded message
    big = sign_message(AUTHOR, TOPIC, 2, bytes(4000))
    node.receive("author", publish_frame(big), 0.0)
    assert PUBLISH not in [decode_message(f)[0] for _, f in node.frames_to_send(0.0)]


# ----------------------------------------------------------------------------- hop counts


def hop_frame(message: Message, hops: object) -> bytes:
    return codec.encode({0: PUBLISH, 1: message.raw, 3: hops})  # type: ignore[dict-item]


def test_a_publish_carries_its_hop_count_and_each_forwarder_adds_one() -> None:
    node = lone_node(GossipConfig(eager_max=None, lazy_fanout=0, quiet_hops=None, silent_hops=None))
    with_peers(node, "src", "a")
    node.publish(TOPIC, b"own", 0.0)
    (own,) = [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "a"]
    assert own is not None and own["hops"] == 1  # the first link
    for sent, forwarded in ((1, 2), (3, 4), (254, 255), (255, 255)):
        message = sign_message(AUTHOR, TOPIC, sent, b"relayed")
        node.receive("src", hop_frame(message, sent), 0.0)
        (fields,) = [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "a"]
        assert fields == {"type": PUBLISH, "message": message.raw, "hops": forwarded}
    # A copy without a hop count (an older node's) is passed on without one.
    plain = sign_message(AUTHOR, TOPIC, 1000, b"from an older node")
    node.receive("src", publish_frame(plain), 0.0)
    assert [f for dst, f in node.frames_to_send(0.0) if dst == "a"] == [plain.frame]
    # An IWANT is answered with the hop count the requester's copy will have.
    counted = sign_message(AUTHOR, TOPIC, 1001, b"asked for")
    node.receive("src", hop_frame(counted, 5), 0.0)
    node.frames_to_send(0.0)
    node.add_peer("asker", 0.0)
    node.frames_to_send(0.0)  # its SUBSCRIBE
    node.receive("asker", codec.encode({0: IWANT, 1: [counted.id, plain.id]}), 0.0)
    answers = [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "asker"]
    assert answers == [
        {"type": PUBLISH, "message": counted.raw, "hops": 6},
        {"type": PUBLISH, "message": plain.raw},
    ]


def test_a_message_late_in_its_wave_is_announced_not_pushed_and_later_not_at_once() -> None:
    config = GossipConfig(eager_max=None, lazy_fanout=1, quiet_hops=6, silent_hops=7, d_low=2, d=3)
    node = lone_node(config)
    with_peers(node, "src", "a", "b")
    node.add_peer("x", 0.0)  # a topic peer outside the mesh
    node.receive("x", codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    node.frames_to_send(0.0)
    sent_at_once = {}
    for hops in (5, 6, 7, 40):
        message = sign_message(AUTHOR, TOPIC, hops, b"small")
        node.receive("src", hop_frame(message, hops), 0.0)
        sent_at_once[hops] = {dst: decode_message(f)[0] for dst, f in node.frames_to_send(0.0)}
    assert sent_at_once == {
        5: {"a": PUBLISH, "b": PUBLISH, "x": IHAVE},
        6: {"a": IHAVE, "b": IHAVE, "x": IHAVE},  # the mesh hears of it at once
        7: {},  # past the wave's last hop: heartbeats announce it
        40: {},
    }
    node.handle_timer(1.0)
    (ihave,) = [decode_message(f)[1] for dst, f in node.frames_to_send(1.0) if dst == "x"]
    assert ihave is not None and len(ihave["ids"]) == 4  # type: ignore[arg-type]
    # Without a hop count a node cannot tell how late it is: it pushes as usual.
    plain = sign_message(AUTHOR, TOPIC, 100, b"no count")
    node.receive("src", publish_frame(plain), 1.0)
    sent = {dst: decode_message(f)[0] for dst, f in node.frames_to_send(1.0)}
    assert sent == {"a": PUBLISH, "b": PUBLISH, "x": IHAVE}


def test_a_late_message_announced_by_an_eager_link_is_pulled_at_once() -> None:
    net = Net()
    config = GossipConfig(quiet_hops=1, silent_hops=2, lazy_fanout=0, d_low=1, d=1, d_high=2)
    for name in ("author", "relay", "tail"):
        net.add(name, config)
    net.connect("author", "relay")
    net.connect("relay", "tail")
    net.run(1.5)
    mid = net.publish("author", b"two hops")
    net.run(0.5)
    (delivery,) = net.delivered("tail")
    assert delivery.message_id == mid and delivery.via == "pull"  # relay (hop 1) announced
    kinds_sent = [
        decode_message(f)[0] for src, dst, f in net.sent if (src, dst) == ("relay", "tail")
    ]
    assert IHAVE in kinds_sent and kinds_sent.count(PUBLISH) == 1  # the answer only
    assert net.nodes["tail"].stats["publish_rx"] == 1


@pytest.mark.parametrize(
    ("hops", "code"),
    [
        (0, ErrorCode.SCHEMA_VALUE),
        (256, ErrorCode.SCHEMA_VALUE),
        (2**64 - 1, ErrorCode.SCHEMA_VALUE),
        (-1, ErrorCode.SCHEMA_VALUE),
        (b"\x01", ErrorCode.SCHEMA_TYPE),
        (True, ErrorCode.SCHEMA_TYPE),
    ],
)
def test_an_absurd_hop_count_is_refused_and_penalised_and_poisons_nothing(
    hops: object, code: ErrorCode
) -> None:
    node = lone_node(GossipConfig(eager_max=None, lazy_fanout=0))
    with_peers(node, "evil", "honest", "a")
    message = sign_message(AUTHOR, TOPIC, 0, b"a message with a lying hop count")
    with pytest.raises(CodecError) as caught:
        decode_message(hop_frame(message, hops))
    assert caught.value.code is code
    node.receive("evil", hop_frame(message, hops), 0.0)
    assert node.frames_to_send(0.0) == []  # not delivered, not forwarded
    assert penalties(node, "evil") == [code] and node.stats["delivered"] == 0
    # The message itself is not refused: an honest copy of it is accepted and forwarded.
    node.receive("honest", hop_frame(message, 2), 0.0)
    assert node.stats["delivered"] == 1 and penalties(node, "honest") == []
    assert [decode_message(f)[1] for dst, f in node.frames_to_send(0.0) if dst == "a"] == [
        {"type": PUBLISH, "message": message.raw, "hops": 3}
    ]


def test_the_publish_fast_path_agrees_with_the_general_decoder_on_hop_counts() -> None:
    for size in (0, 23, 24, 256):
        for hops in (1, 23, 24, 255):
            frame = codec.encode({0: PUBLISH, 1: bytes(size), 3: hops})
            expected = {"type": PUBLISH, "message": bytes(size), "hops": hops}
            assert decode_message(frame) == (PUBLISH, expected)
            assert codec.decode(frame, codec.DecodeLimits()) == {
                0: PUBLISH,
                1: bytes(size),
                3: hops,
            }
    near_misses = [
        b"\xa3\x00\x0a\x01\x42\x00\x00\x03\x18\x05",  # hop count 5 in one extra byte
        b"\xa3\x00\x0a\x01\x42\x00\x00\x03\x00",  # hop count 0
        b"\xa3\x00\x0a\x01\x42\x00\x00\x03\x19\x01\x00",  # 256
        b"\xa3\x00\x0a\x01\x42\x00\x00\x05\x01",  # key 5, not 3: another map
        b"\xa3\x00\x0a\x01\x43\x00\x00\x03\x01",  # the message swallows the key
    ]
    for frame in near_misses:
        try:
            _, fields = decode_message(frame)
        except CodecError:
            continue
        # Accepted only by the general decoder, as the same map it would give anyone.
        assert fields is not None and "hops" not in fields, frame.hex()


# ----------------------------------------------------------------------------- suspect peers


def test_a_suspect_mesh_peer_leaves_the_mesh_at_once_for_a_peer_heard_lately() -> None:
    """[GSP-R47] A session that reports its data unacknowledged: the peer is pruned at
    once (not at the 30 s idle timeout), a replacement is grafted at once, a peer heard
    from lately before the silent ones, and the suspect peer is told nothing until the
    session says it answers again."""
    node = lone_node(GossipConfig(d=4, d_low=4, d_high=8, lazy_fanout=20, eager_max=None))
    with_peers(node, *"abcd")
    quiet = [f"quiet{i}" for i in range(6)]
    for peer in ["lately", *quiet]:  # topic peers outside the mesh
        node.add_peer(peer, 0.0)
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    node.receive("lately", codec.encode({0: IHAVE, 1: TOPIC, 2: []}), 209.5)
    node.frames_to_send(209.5)
    assert node.mesh(TOPIC) == set("abcd")

    node.receive("a", codec.encode({0: IHAVE, 1: TOPIC, 2: []}), 207.0)  # a's last word
    node.set_peer_suspect("a", True, 210.0)
    frames = [(dst, decode_message(f)) for dst, f in node.frames_to_send(210.0)]
    sent = [(dst, kind) for dst, (kind, _) in frames]
    # No backoff and no hints: either side may graft again once the session answers.
    assert ("a", (PRUNE, {"type": PRUNE, "topic": TOPIC, "backoff": 0})) in frames
    assert ("lately", GRAFT) in sent and not any(k == GRAFT for d, k in sent if d != "lately")
    assert node.mesh(TOPIC) == {"b", "c", "d", "lately"}
    assert node.stats["suspected"] == 1
    # What the dark link should have brought: a catch-up with the peer heard from lately,
    # since shortly before a was last heard from (10 s of margin for authors' clocks).
    syncs = [(dst, fields) for dst, (kind, fields) in frames if kind == SYNC]
    assert syncs == [("lately", {"type": SYNC, "topic": TOPIC, "since": 197_000})]

    # A message from b: IDs to every topic peer outside the mesh but the suspect one.
    node.receive("b", publish_frame(sign_message(AUTHOR, TOPIC, 210_100, b"news")), 210.1)
    told = {dst for dst, f in node.frames_to_send(210.1) if decode_message(f)[0] == IHAVE}
    assert told == set(quiet)
    # Its IHAVE is not followed up while it is suspect; another announcer's is.
    later = sign_message(AUTHOR, TOPIC, 210_200, b"more news")
    node.receive("a", codec.encode({0: IHAVE, 1: TOPIC, 2: [later.id], 3: True}), 210.2)
    assert not [f for dst, f in node.frames_to_send(210.2) if decode_message(f)[0] == IWANT]
    node.receive("quiet0", codec.encode({0: IHAVE, 1: TOPIC, 2: [later.id], 3: True}), 210.2)
    asked = [dst for dst, f in node.frames_to_send(210.2) if decode_message(f)[0] == IWANT]
    assert asked == ["quiet0"]

    # The session answers again: the peer hears of new messages again, and may be
    # grafted again when the mesh needs peers.
    node.set_peer_suspect("a", False, 210.5)
    assert node.stats["unsuspected"] == 1
    node.receive("c", publish_frame(sign_message(AUTHOR, TOPIC, 210_600, b"again")), 210.6)
    told = {dst for dst, f in node.frames_to_send(210.6) if decode_message(f)[0] == IHAVE}
    assert told == {"a", *quiet}
    for peer in "bcd":
        node.receive(peer, codec.encode({0: PRUNE, 1: TOPIC, 2: 60}), 210.7)
    node.handle_timer(211.0)
    assert "a" in node.mesh(TOPIC)  # heard from lately (its IHAVE), no backoff


def test_a_catch_up_for_a_dark_link_sent_to_a_dead_peer_is_asked_again_of_a_live_one() -> None:
    """[GSP-R47] Right after a crash every peer was heard from a moment ago, dead or
    not: the catch-up goes to a peer heard from after the lost one, and if that one
    turns suspect too before it answers, to another."""
    node = lone_node(GossipConfig(d=2, d_low=2, d_high=4, eager_max=None))
    with_peers(node, "a", "b")
    for peer in ("x", "y", "z"):
        node.add_peer(peer, 0.0)
        node.receive(peer, codec.encode({0: SUBSCRIBE, 1: [TOPIC]}), 0.0)
    node.receive("a", codec.encode({0: IHAVE, 1: TOPIC, 2: []}), 100.0)  # a's last word
    node.receive("z", codec.encode({0: IHAVE, 1: TOPIC, 2: []}), 99.0)  # before a's
    for peer in ("x", "y"):  # both heard from after a
        node.receive(peer, codec.encode({0: IHAVE, 1: TOPIC, 2: []}), 100.5)
    node.frames_to_send(100.5)

    def synced(now: float) -> list[str]:
        return [dst for dst, f in node.frames_to_send(now) if decode_message(f)[0] == SYNC]

    node.set_peer_suspect("a", True, 101.0)
    first = synced(101.0)
    assert len(first) == 1 and first[0] in ("x", "y")  # never z, heard before a went dark
    node.set_peer_suspect(first[0], True, 101.5)  # it is gone too, and never answered
    second = synced(101.5)
    assert second == [({"x", "y"} - {first[0]}).pop()]
    assert node.stats["repairs"] == 2
