"""Member feeds (spec/06-community.md section 8): entries, intake, documents, views.

What is checked here:

* entries: round trip, every structural fault with its code, forgery, another
  community, an entry signed by one member claiming another's feed;
* edits and deletes only by the author: a member's document only takes updates
  from its own feeds, so another member's "edit" of a message ID stays theirs;
* bans: a banned member's later entries are refused (``FEED_AUTHOR_BANNED``) and,
  when the ban arrives after them, cut from its feeds; the views agree;
* posting rights: a read-only channel hides a member's posts; strangers refused;
* sequence: gaps wait, duplicates are ignored, forks and HLC regressions refused;
* two devices of one member converge (concurrent edits of one message included);
* arrival order: any permutation of a set of entries gives the same view
  (hypothesis);
* the future rule: held beyond ``now + 60 s``, accepted by ``tick`` later;
* sync helpers: ``lengths``, ``entries_since``, ``lacking``;
* the 100k-message structure: one plain array per message in one flat map (no
  timing asserts; ``python -m bench.feeds_scale`` measures).
"""

from __future__ import annotations

import functools
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Map

from starling.proto import codec, identity
from starling.proto import community as com
from starling.proto import feeds as fd
from starling.proto.community import AuthorityLog, Role
from starling.proto.errors import ErrorCode, LocalProtocolError, StarlingError
from starling.proto.feeds import FeedSet, Outcome
from starling.proto.identity import PrivateKey

T0 = 1_700_000_000_000
FAR = T0 + 10**9  # a receiver clock after everything here
DEV_A, DEV_B = b"\xaa" * 8, b"\xbb" * 8


@functools.cache
def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(("feeds-test/" + label).encode()).digest())


def pub(label: str) -> bytes:
    return key(label).public_key.raw


class World:
    """A community with an owner, members alice, bob, carol and two channels."""

    def __init__(self) -> None:
        self.root = key("root")
        self.K = self.root.public_key.raw
        self.entries: list[com.Entry] = list(com.genesis(self.root, pub("owner"), T0))
        self.time = T0
        self.general = self.add(com.channel_add(key("owner"), self.K, self.heads(), T0, "general"))
        self.news = self.add(com.channel_add(key("owner"), self.K, self.heads(), T0, "news"))
        for i, name in enumerate(("alice", "bob", "carol")):
            cap = com.make_capability(
                key("owner"), self.K, expires_ms=T0 + 10**10, nonce=bytes([i]) * 16
            )
            self.add(com.join(key(name), cap, self.heads(), T0))

    def heads(self) -> list[bytes]:
        return [self.entries[-1].id]

    def add(self, entry: com.Entry) -> bytes:
        self.entries.append(entry)
        return entry.id

    def log(self, upto: int | None = None) -> AuthorityLog:
        log = AuthorityLog(self.K)
        for entry in self.entries[:upto]:
            assert log.add(entry.raw).code is None, entry
        return log

    def ban(self, member: str, time_ms: int) -> com.Entry:
        entry = com.ban(key("owner"), self.K, self.heads(), time_ms, pub(member))
        self.add(entry)
        return entry


@pytest.fixture
def world() -> World:
    return World()


def view_of(feeds: FeedSet, channel: bytes) -> list[tuple[bytes, bytes, str | None, int]]:
    return [(m.author, m.id, m.text, m.hlc) for m in feeds.view(channel).all()]


# ----------------------------------------------------------------------------- entries


def test_round_trip_and_fields(world: World) -> None:
    feeds = FeedSet(world.log())
    raw = feeds.writer(key("alice"), DEV_A).post(world.general, "hello", T0 + 5)
    entry = fd.parse_feed_entry(raw, world.K)
    assert (entry.author, entry.device, entry.seq, entry.prev) == (pub("alice"), DEV_A, 1, None)
    assert fd.hlc_physical(entry.hlc) == T0 + 5
    assert entry.id == fd.feed_entry_id(raw)
    other = FeedSet(world.log())
    assert other.add(raw, FAR).outcome is Outcome.ACCEPTED
    [msg] = other.page(world.general)
    assert (msg.author, msg.text, msg.id) == (pub("alice"), "hello", DEV_A + (1).to_bytes(8, "big"))


def _payload(**over: object) -> bytes:
    body: dict[int, codec.Value] = {0: 2, 1: pub("root"), 2: DEV_A, 3: 1, 5: T0 << 16, 6: b""}
    for k, v in over.items():
        idx = int(k[1:])
        if v is None:
            body.pop(idx, None)
        else:
            assert isinstance(v, bytes | int | list)
            body[idx] = v
    return codec.encode(body)


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"k3": 0}, ErrorCode.FEED_ENTRY_MALFORMED),  # seq 0
        ({"k3": 2}, ErrorCode.FEED_ENTRY_MALFORMED),  # seq 2 without prev
        ({"k4": b"\x00" * 32}, ErrorCode.FEED_ENTRY_MALFORMED),  # seq 1 with prev
        ({"k2": b"\x00" * 7}, ErrorCode.FEED_ENTRY_MALFORMED),  # short device
        ({"k6": None}, ErrorCode.FEED_ENTRY_MALFORMED),  # no update
        ({"k0": 4}, ErrorCode.FEED_ENTRY_MALFORMED),  # unknown even type
        ({"k8": 1}, ErrorCode.FEED_ENTRY_MALFORMED),  # unknown even key
        ({"k1": b"\x01" * 32}, ErrorCode.FEED_WRONG_COMMUNITY),
    ],
)
def test_structural_faults(world: World, over: dict[str, object], code: ErrorCode) -> None:
    raw = identity.seal(key("alice"), fd.FEED_DOMAIN, _payload(**over))
    result = FeedSet(world.log()).add(raw, FAR)
    assert (result.outcome, result.code) == (Outcome.REFUSED, code)


def test_too_large_and_not_cbor(world: World) -> None:
    feeds = FeedSet(world.log())
    assert feeds.add(b"\xa0" * (fd.MAX_ENTRY_SIZE + 1), FAR).code is ErrorCode.FEED_ENTRY_TOO_LARGE
    assert feeds.add(b"\xff", FAR).code is ErrorCode.FEED_ENTRY_MALFORMED


def test_forged_and_writing_into_anothers_feed(world: World) -> None:
    feeds = FeedSet(world.log())
    payload = _payload()
    # Mallory signs a payload but names alice as the signer: the signature fails.
    forged = codec.encode(
        {1: pub("alice"), 2: payload, 3: key("bob").sign(fd.FEED_DOMAIN, payload)}
    )
    assert feeds.add(forged, FAR).code is ErrorCode.FEED_ENTRY_FORGED
    # Another domain's signature does not count either.
    wrong_domain = identity.seal(key("alice"), com.ENTRY_DOMAIN, payload)
    assert feeds.add(wrong_domain, FAR).code is ErrorCode.FEED_ENTRY_FORGED
    # A valid entry, one bit flipped in the payload.
    raw = bytearray(FeedSet(world.log()).writer(key("alice"), DEV_A).post(world.general, "x", T0))
    raw[raw.index(b"x")] ^= 1
    assert feeds.add(bytes(raw), FAR).code is ErrorCode.FEED_ENTRY_FORGED
    assert feeds.lengths() == {}


def test_stranger_refused(world: World) -> None:
    feeds = FeedSet(world.log())
    raw = FeedSet(world.log()).writer(key("stranger"), DEV_A).post(world.general, "hi", T0)
    assert feeds.add(raw, FAR).code is ErrorCode.FEED_NOT_MEMBER


# ----------------------------------------------------------------------------- documents


def test_edits_and_deletes_only_by_the_author(world: World) -> None:
    log = world.log()
    alice, bob = FeedSet(log), FeedSet(log)
    a = alice.writer(key("alice"), DEV_A)
    post = a.post(world.general, "original", T0 + 1)
    mid = DEV_A + (1).to_bytes(8, "big")
    bob.add(post, FAR)
    b = bob.writer(key("bob"), DEV_B)
    with pytest.raises(LocalProtocolError):
        b.edit(mid, "hijacked", T0 + 2)  # not bob's message
    with pytest.raises(LocalProtocolError):
        b.delete(mid, T0 + 2)
    # Bob crafts an update that writes alice's message key: it lands in bob's own
    # document, as bob's message, and alice's stays as she wrote it.
    b._doc.map[mid.hex()] = [world.general, (5).to_bytes(8, "big"), "hijacked", None, None]
    crafted = b._updates[-1]
    entry = fd.sign_feed_entry(key("bob"), world.K, DEV_B, 1, None, (T0 + 3) << 16, crafted)
    reader = FeedSet(log)
    reader.add(post, FAR)
    assert reader.add(entry.raw, FAR).outcome is Outcome.ACCEPTED
    texts = {(m.author, m.text) for m in reader.page(world.general)}
    assert (pub("alice"), "original") in texts
    assert reader.messages(pub("alice"))[mid].text == "original"
    # Alice edits and deletes her own.
    edit = a.edit(mid, "edited", T0 + 4)
    reader.add(edit, FAR)
    assert reader.messages(pub("alice"))[mid].text == "edited"
    assert reader.messages(pub("alice"))[mid].edited is not None
    reader.add(a.delete(mid, T0 + 5), FAR)
    assert reader.messages(pub("alice"))[mid].deleted
    assert all(m.author != pub("alice") for m in reader.page(world.general))


def test_two_devices_converge(world: World) -> None:
    log = world.log()
    d1, d2 = FeedSet(log), FeedSet(log)
    w1, w2 = d1.writer(key("alice"), DEV_A), d2.writer(key("alice"), DEV_B)
    e1 = w1.post(world.general, "from phone", T0 + 1)
    e2 = w2.post(world.general, "from laptop", T0 + 1)
    d1.add(e2, FAR)
    d2.add(e1, FAR)
    mid = DEV_A + (1).to_bytes(8, "big")
    # Concurrent edits of one message from both devices, then exchange.
    x1 = w1.edit(mid, "phone edit", T0 + 2)
    x2 = w2.edit(mid, "laptop edit", T0 + 2)
    d1.add(x2, FAR)
    d2.add(x1, FAR)
    assert d1.document(pub("alice")) == d2.document(pub("alice"))
    assert view_of(d1, world.general) == view_of(d2, world.general)
    assert len(view_of(d1, world.general)) == 2
    # A third member sees the same.
    d3 = FeedSet(log)
    for raw in [x2, e1, x1, e2]:
        d3.add(raw, FAR)
    assert view_of(d3, world.general) == view_of(d1, world.general)
    assert d1.lengths() == d3.lengths() == {(pub("alice"), DEV_A): 2, (pub("alice"), DEV_B): 2}


# ----------------------------------------------------------------------------- sequence


def test_gaps_wait_duplicates_ignored_forks_refused(world: World) -> None:
    log = world.log()
    w = FeedSet(log).writer(key("alice"), DEV_A)
    raws = [w.post(world.general, f"m{i}", T0 + i) for i in range(5)]
    feeds = FeedSet(log)
    assert feeds.add(raws[2], FAR).outcome is Outcome.PENDING
    assert feeds.add(raws[2], FAR).outcome is Outcome.DUPLICATE
    assert feeds.add(raws[0], FAR).outcome is Outcome.ACCEPTED
    assert feeds.lengths() == {(pub("alice"), DEV_A): 1}
    assert feeds.add(raws[1], FAR).outcome is Outcome.ACCEPTED
    assert feeds.lengths() == {(pub("alice"), DEV_A): 3}
    assert feeds.add(raws[1], FAR).outcome is Outcome.DUPLICATE
    # Another entry 4 (a second writer with the same device ID): a fork.
    other = FeedSet(log)
    for raw in raws[:3]:
        other.add(raw, FAR)
    ow = other.writer(key("alice"), DEV_A)
    fork = ow.post(world.general, "fork", T0 + 100)
    assert feeds.add(raws[3], FAR).outcome is Outcome.ACCEPTED
    assert feeds.add(fork, FAR).code is ErrorCode.FEED_FORK
    assert feeds.entries_since(pub("alice"), DEV_A, 2) == raws[2:4]
    assert feeds.lacking({(pub("alice"), DEV_A): 1}) == raws[1:4]


def test_hlc_must_increase_and_bad_update(world: World) -> None:
    feeds = FeedSet(world.log())
    first = fd.sign_feed_entry(key("alice"), world.K, DEV_A, 1, None, (T0 + 5) << 16, b"")
    assert feeds.add(first.raw, FAR).code is ErrorCode.FEED_BAD_UPDATE
    empty = FeedSet(world.log()).writer(key("alice"), DEV_A)
    raw = empty.post(world.general, "ok", T0 + 5)
    assert feeds.add(raw, FAR).outcome is Outcome.ACCEPTED
    entry = fd.parse_feed_entry(raw)
    back = fd.sign_feed_entry(
        key("alice"), world.K, DEV_A, 2, entry.id, entry.hlc, entry.update or b""
    )
    assert feeds.add(back.raw, FAR).code is ErrorCode.FEED_HLC_REGRESSION


def test_a_batch_applies_as_entries_one_by_one(world: World) -> None:
    """``add_many`` applies an author's updates in one transaction: the same documents,
    views and outcomes as ``add`` entry by entry; a bad update in the middle refuses only
    that entry, the feed going on with the right entry 3 (the transaction is not spoilt),
    and one change per message (posted and edited in the batch)."""
    log = world.log()
    a = FeedSet(log).writer(key("alice"), DEV_A)
    b = FeedSet(log).writer(key("bob"), DEV_B)
    raws = [a.post(world.general, "a1", T0 + 1), b.post(world.news, "b1", T0 + 1)]
    raws += [
        a.post(world.general, "a2", T0 + 2),
        a.edit(DEV_A + (1).to_bytes(8, "big"), "a1!", T0 + 3),
    ]
    raws += [b.post(world.general, "b2", T0 + 4)]
    last = fd.parse_feed_entry(raws[-1])
    bad = fd.sign_feed_entry(key("bob"), world.K, DEV_B, 3, last.id, (T0 + 5) << 16, b"\x01")
    after_bad = b.post(world.general, "b3", T0 + 6)  # the entry 3 bob really wrote
    one_by_one, batched = FeedSet(log), FeedSet(log)
    changes: list[tuple[bytes, str | None, bool]] = []
    batched.on_change = lambda m, before: changes.append((m.author, m.text, before is None))
    singles = [one_by_one.add(raw, FAR) for raw in [*raws, bad.raw, after_bad]]
    results = batched.add_many([*raws, bad.raw, after_bad], FAR)
    assert [r.outcome for r in results] == [r.outcome for r in singles]
    assert [r.code for r in results] == [r.code for r in singles]
    assert results[5].code is ErrorCode.FEED_BAD_UPDATE
    assert results[6].outcome is Outcome.ACCEPTED
    assert batched.lengths() == {(pub("alice"), DEV_A): 3, (pub("bob"), DEV_B): 3}
    for author in ("alice", "bob"):
        assert batched.document(pub(author)) == one_by_one.document(pub(author))
    for channel in (world.general, world.news):
        assert view_of(batched, channel) == view_of(one_by_one, channel)
    # Alice's changes first (her entry opened the batch), each message once, as it ends,
    # in message ID order.
    assert changes == [
        (pub("alice"), "a1!", True),
        (pub("alice"), "a2", True),
        (pub("bob"), "b1", True),
        (pub("bob"), "b2", True),
        (pub("bob"), "b3", True),
    ]
    # A later batch edits: the change carries the message as it was before.
    changes.clear()
    batched.add_many([a.edit(DEV_A + (2).to_bytes(8, "big"), "a2!", T0 + 7)], FAR)
    assert changes == [(pub("alice"), "a2!", False)]


# ----------------------------------------------------------------------------- authority


def test_banned_members_later_posts(world: World) -> None:
    before = world.log()
    writer = FeedSet(before).writer(key("carol"), DEV_A)
    early = [writer.post(world.general, f"early {i}", T0 + 10 + i) for i in range(3)]
    late = [writer.post(world.general, f"late {i}", T0 + 1000 + i) for i in range(3)]
    world.ban("carol", T0 + 500)
    after = world.log()
    # A member that knows the ban refuses the later entries with a code.
    knows = FeedSet(after)
    results = knows.add_many(early + late, FAR)
    assert [r.outcome for r in results[:3]] == [Outcome.ACCEPTED] * 3
    assert {r.code for r in results[3:]} == {ErrorCode.FEED_AUTHOR_BANNED}
    # A member that took them before the ban cuts them when the ban arrives.
    log = world.log(len(world.entries) - 1)
    late_news = FeedSet(log)
    late_news.add_many(early + late, FAR)
    assert len(late_news.page(world.general)) == 6
    log.add(world.entries[-1].raw)
    assert [m.text for m in late_news.page(world.general)] == ["early 0", "early 1", "early 2"]
    assert late_news.lengths() == knows.lengths() == {(pub("carol"), DEV_A): 3}
    assert view_of(late_news, world.general) == view_of(knows, world.general)
    assert late_news.document(pub("carol")) == knows.document(pub("carol"))


def test_read_only_channel_hides_posts(world: World) -> None:
    world.add(
        com.channel_permissions(
            key("owner"), world.K, world.heads(), T0, world.news, {Role.MEMBER: 0}
        )
    )
    log = world.log()
    feeds = FeedSet(log)
    feeds.add(feeds_post(log, "alice", world.news, "not allowed"), FAR)
    feeds.add(feeds_post(log, "owner", world.news, "announcement"), FAR)
    assert [m.text for m in feeds.page(world.news)] == ["announcement"]


def feeds_post(log: AuthorityLog, who: str, channel: bytes, text: str) -> bytes:
    return FeedSet(log).writer(key(who), DEV_A).post(channel, text, T0 + 7)


# ----------------------------------------------------------------------------- clocks


def test_future_rule_holds_then_accepts(world: World) -> None:
    feeds = FeedSet(world.log())
    raw = FeedSet(world.log()).writer(key("alice"), DEV_A).post(world.general, "soon", T0 + 120_000)
    result = feeds.add(raw, T0)
    assert (result.outcome, result.code) == (Outcome.HELD, ErrorCode.FEED_FROM_FUTURE)
    assert feeds.held() == [raw] and feeds.page(world.general) == []
    assert feeds.tick(T0 + 30_000) == []  # still 90 s ahead
    [later] = feeds.tick(T0 + 60_000)  # now exactly 60 s ahead: accepted
    assert later.outcome is Outcome.ACCEPTED
    assert [m.text for m in feeds.page(world.general)] == ["soon"]


def test_hlc_next() -> None:
    assert fd.hlc_next(0, 5) == 5 << 16
    assert fd.hlc_next(5 << 16, 5) == (5 << 16) | 1
    assert fd.hlc_next((9 << 16) | 3, 5) == (9 << 16) | 4  # the clock went back
    assert fd.hlc_next((9 << 16) | 0xFFFF, 5) == 10 << 16


def test_writer_follows_the_largest_seen_hlc(world: World) -> None:
    log = world.log()
    feeds = FeedSet(log)
    feeds.add(FeedSet(log).writer(key("bob"), DEV_B).post(world.general, "b", T0 + 50), FAR)
    raw = feeds.writer(key("alice"), DEV_A).post(world.general, "a", T0 + 10)  # slow clock
    assert [m.text for m in feeds.page(world.general)] == ["b", "a"]
    assert fd.parse_feed_entry(raw).hlc == ((T0 + 50) << 16) | 1


# ----------------------------------------------------------------------------- order


def _scenario() -> tuple[World, list[bytes]]:
    world = World()
    log = world.log()
    raws: list[bytes] = []
    for who, dev in (("alice", DEV_A), ("bob", DEV_B), ("alice", DEV_B)):
        w = FeedSet(log).writer(key(who), dev)
        for i in range(3):
            chan = world.general if i % 2 == 0 else world.news
            raws.append(w.post(chan, f"{who}/{dev.hex()[:2]}/{i}", T0 + 10 * i))  # HLC ties
        raws.append(w.edit(dev + (1).to_bytes(8, "big"), f"{who} edited", T0 + 40))
    return world, raws


_WORLD, _RAWS = _scenario()


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(_RAWS))))
def test_any_arrival_order_gives_the_same_views(order: list[int]) -> None:
    feeds = FeedSet(_WORLD.log())
    for i in order:
        assert feeds.add(_RAWS[i], FAR).outcome in (
            Outcome.ACCEPTED,
            Outcome.PENDING,
            Outcome.DUPLICATE,
        )
    got = (view_of(feeds, _WORLD.general), view_of(feeds, _WORLD.news), feeds.lengths())
    reference = FeedSet(_WORLD.log())
    reference.add_many(_RAWS, FAR)
    expected = (
        view_of(reference, _WORLD.general),
        view_of(reference, _WORLD.news),
        reference.lengths(),
    )
    assert got == expected
    general = expected[0]
    assert [k[3] for k in general] == sorted(k[3] for k in general)
    keys = [(m[3], m[0], m[1]) for m in general]
    assert keys == sorted(keys)  # HLC, then author, then message ID


# ----------------------------------------------------------------------------- scale


def test_flat_structure_and_paging_at_scale(world: World) -> None:
    """The chosen shape: one plain array per message in one flat root map; pages of a
    large channel come from the sorted index. (No timing here: bench.feeds_scale.)"""
    log = world.log()
    feeds = FeedSet(log)
    w = feeds.writer(key("alice"), DEV_A)
    n = 3000
    for i in range(n):
        w.post(world.general, f"m{i}", T0 + i)
    doc = feeds._docs[pub("alice")]
    assert isinstance(doc.map, Map)
    assert len(doc.map) == n
    for value in list(doc.map.values())[:50]:
        assert isinstance(value, list) and not isinstance(value, Map)  # a plain value
    assert len(feeds._channels[world.general].keys) == n
    last = feeds.page(world.general, limit=100)
    assert [m.text for m in last] == [f"m{i}" for i in range(n - 100, n)]
    prev = feeds.page(world.general, before=last[0].cursor, limit=100)
    assert [m.text for m in prev] == [f"m{i}" for i in range(n - 200, n - 100)]


def test_batch_signature_checks_judge_as_one_check_at_a_time() -> None:
    """``verify_serially`` (and ``failed_signatures``, what a node's worker processes
    answer, node/verifier.py) give each item the verdict ``PublicKey(key).verify`` gives
    it, with its code."""
    from starling.node.verifier import failed_signatures

    signer = PrivateKey(b"\x05" * 32)
    payload = b"a feed entry's payload"
    good = signer._key.sign(identity.signing_input(fd.FEED_DOMAIN, payload)).signature
    big_s = good[:32] + (identity._L + 1).to_bytes(32, "little")
    items = [
        (signer.public_key.raw, fd.FEED_DOMAIN, payload, good),
        (signer.public_key.raw, fd.FEED_DOMAIN, payload + b"!", good),  # altered
        (signer.public_key.raw, "starling/other-domain/1", payload, good),  # another domain
        (signer.public_key.raw, "not a domain", payload, good),
        (signer.public_key.raw, fd.FEED_DOMAIN, payload, good[:63]),  # short
        (signer.public_key.raw, fd.FEED_DOMAIN, payload, big_s),  # S not below L
        ((1).to_bytes(32, "little"), fd.FEED_DOMAIN, payload, good),  # small-order key
        (b"\xff" * 32, fd.FEED_DOMAIN, payload, good),  # not canonical
    ]

    def one(item: tuple[bytes, str, bytes, bytes]) -> ErrorCode | None:
        key, domain, data, signature = item
        try:
            identity.PublicKey(key).verify(domain, data, signature)
        except StarlingError as exc:
            return exc.code
        return None

    expected = [one(item) for item in items]
    assert expected[0] is None and all(code is not None for code in expected[1:])
    assert len(set(expected[1:])) >= 5  # the items fail for different reasons
    got = fd.verify_serially(items)
    assert [None if e is None else e.code for e in got] == expected
    assert failed_signatures(items) == list(range(1, len(items)))
