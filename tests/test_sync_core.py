"""The sans-IO sync core (proto/sync.py): two SyncSessions joined in memory."""

from __future__ import annotations

import hashlib

import pytest

from starling.proto import codec
from starling.proto import community as com
from starling.proto.errors import ErrorCode
from starling.proto.identity import PrivateKey
from starling.proto.sync import (
    DONE,
    ENTRIES,
    HAVE,
    HELLO,
    LIVE_AUTHORITY,
    LIVE_FEED,
    Entries,
    Have,
    Hello,
    LiveVerdict,
    Replica,
    SyncConfig,
    SyncDone,
    SyncError,
    SyncReceived,
    SyncSession,
    community_tag,
    decode_live,
    decode_message,
    encode_live,
)

T0 = 1_700_000_000_000
NOW = T0 + 10_000_000


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(("sync-core/" + label).encode()).digest())


ROOT, OWNER, ALICE, BOB = key("root"), key("owner"), key("alice"), key("bob")
COMMUNITY = ROOT.public_key.raw


def founded() -> tuple[list[bytes], bytes]:
    """Genesis, a channel, and Alice and Bob admitted by invite: the shared start."""
    entries = com.genesis(ROOT, OWNER.public_key.raw, T0, "club")
    chan = com.channel_add(OWNER, COMMUNITY, [entries[-1].id], T0 + 1, "general")
    cap = com.make_capability(OWNER, COMMUNITY, expires_ms=T0 + 10**9, nonce=b"\0" * 16, max_uses=9)
    ja = com.join(ALICE, cap, [chan.id], T0 + 2)
    jb = com.join(BOB, cap, [ja.id], T0 + 3)
    return [e.raw for e in (*entries, chan, ja, jb)], chan.id


def replica(raws: list[bytes]) -> Replica:
    r = Replica(COMMUNITY)
    r.take(raws, [], NOW)
    return r


def pump(a: SyncSession, b: SyncSession, now: float = 0.0) -> tuple[int, int]:
    """Move frames both ways until both are quiet; returns the frames each received."""
    got_a = got_b = 0
    while True:
        to_b, to_a = a.frames_to_send(), b.frames_to_send()
        if not to_a and not to_b:
            return got_a, got_b
        for frame in to_b:
            b.receive(frame, now, NOW)
            got_b += 1
        for frame in to_a:
            a.receive(frame, now, NOW)
            got_a += 1


def events(s: SyncSession) -> list[object]:
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


def test_offline_writes_on_both_sides_merge_and_exactly_the_lacking_entries_move() -> None:
    base, chan = founded()
    ra, rb = replica(base), replica(base)
    wa, wb = ra.feeds.writer(ALICE, b"A" * 8), rb.feeds.writer(BOB, b"B" * 8)
    for i in range(30):
        wa.post(chan, f"a{i}", T0 + 100 + i)
    for i in range(20):
        wb.post(chan, f"b{i}", T0 + 100 + i)
    # Authority written apart: Bob renames himself, the owner (on A's copy) adds a channel.
    ra.take([com.channel_add(OWNER, COMMUNITY, ra.authority.heads(), T0 + 50, "dev").raw], [], NOW)
    rb.take([com.profile(BOB, COMMUNITY, rb.authority.heads(), T0 + 51, "Bob").raw], [], NOW)
    sa, sb = SyncSession({COMMUNITY: ra}, 0.0), SyncSession({COMMUNITY: rb}, 0.0)
    sa.hello(b"\x01" * 16)
    sb.hello(b"\x02" * 16)
    pump(sa, sb)
    got_a = [e for e in events(sa) if isinstance(e, SyncReceived)]
    got_b = [e for e in events(sb) if isinstance(e, SyncReceived)]
    # Each side received exactly what it lacked: 1 authority entry and the other's feed.
    assert sum(len(e.intake.authority) for e in got_a) == 1
    assert sum(len(e.intake.feeds) for e in got_a) == 20
    assert sum(len(e.intake.authority) for e in got_b) == 1
    assert sum(len(e.intake.feeds) for e in got_b) == 30
    assert ra.authority.heads() == rb.authority.heads()
    assert ra.feeds.lengths() == rb.feeds.lengths()
    assert ra.feeds.page(chan, None, 100) == rb.feeds.page(chan, None, 100)
    assert len(ra.feeds.page(chan, None, 100)) == 50
    # A second round moves nothing.
    sa.request(COMMUNITY)
    pump(sa, sb)
    assert all(not e.intake for e in events(sa) if isinstance(e, SyncReceived))


def test_a_hello_reveals_no_community_the_peer_does_not_hold() -> None:
    base, _ = founded()
    other = key("other-root").public_key.raw
    secret = Replica(other)
    sa = SyncSession({COMMUNITY: replica(base), other: secret}, 0.0)
    sb = SyncSession({COMMUNITY: replica(base)}, 0.0)
    sa.hello(b"\x05" * 16)
    (hello,) = sa.frames_to_send()
    message = decode_message(hello)
    assert isinstance(message, Hello)
    # Only tags go out, never a key; the tag of the secret community depends on the nonce.
    assert other not in hello and COMMUNITY not in hello
    assert community_tag(b"\x05" * 16, other) in message.tags
    assert community_tag(b"\x06" * 16, other) != community_tag(b"\x05" * 16, other)
    sb.receive(hello, 0.0, NOW)
    replies = sb.frames_to_send()
    assert [decode_message(f).community for f in replies] == [COMMUNITY]  # type: ignore[union-attr]
    assert sb.shared == {COMMUNITY}
    assert all(other not in f for f in replies)


def test_a_joiner_with_an_empty_log_gets_everything_parents_first_in_bounded_batches() -> None:
    base, chan = founded()
    full = replica(base)
    writer = full.feeds.writer(ALICE, b"A" * 8)
    for i in range(600):
        writer.post(chan, f"message {i} " + "x" * 100, T0 + 100 + i)
    empty = Replica(COMMUNITY)
    sa, sb = SyncSession({COMMUNITY: full}, 0.0), SyncSession({COMMUNITY: empty}, 0.0)
    sb.hello(b"\x07" * 16)
    sa.hello(b"\x08" * 16)
    frames: list[bytes] = []
    while True:
        to_a, to_b = sb.frames_to_send(), sa.frames_to_send()
        if not to_a and not to_b:
            break
        for f in to_a:
            sa.receive(f, 0.0, NOW)
        for f in to_b:
            frames.append(f)
            sb.receive(f, 0.0, NOW)
    entries = [decode_message(f) for f in frames if codec.decode(f)[0] == ENTRIES]  # type: ignore[index]
    assert len(entries) > 1 and all(len(f) <= 65519 for f in frames)
    assert codec.decode(frames[-1])[0] == DONE  # type: ignore[index]
    assert any(isinstance(e, SyncDone) for e in events(sb))
    assert empty.authority.heads() == full.authority.heads()
    assert empty.feeds.lengths() == full.feeds.lengths()
    assert not empty.authority.pending()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xff", ErrorCode.SYNC_MALFORMED),
        (codec.encode({0: HELLO, 1: b"short", 2: []}), ErrorCode.SYNC_MALFORMED),
        (codec.encode({0: HAVE, 1: COMMUNITY, 2: [b"x"], 3: []}), ErrorCode.SYNC_MALFORMED),
        (codec.encode({0: 12, 1: COMMUNITY}), ErrorCode.SYNC_MALFORMED),
        (codec.encode({0: HELLO, 1: b"\0" * 16, 2: [b"\0" * 16] * 257}), ErrorCode.SYNC_MALFORMED),
        (b"\x40" * 70000, ErrorCode.SYNC_TOO_LARGE),
        (Entries(COMMUNITY, (b"a",) * 600, (b"f",) * 600).encode(), ErrorCode.SYNC_MALFORMED),
        (Entries(COMMUNITY, (), ()).encode(), ErrorCode.SYNC_UNEXPECTED),
        (codec.encode({0: DONE, 1: COMMUNITY}), ErrorCode.SYNC_UNEXPECTED),
    ],
)
def test_bad_sync_messages_fail_with_their_codes(frame: bytes, code: ErrorCode) -> None:
    base, _ = founded()
    s = SyncSession({COMMUNITY: replica(base)}, 0.0)
    with pytest.raises(SyncError) as info:
        s.receive(frame, 0.0, NOW)
    assert info.value.code == code


def test_an_unknown_odd_message_type_is_ignored() -> None:
    base, _ = founded()
    s = SyncSession({COMMUNITY: replica(base)}, 0.0)
    s.receive(codec.encode({0: 13, 1: b"later"}), 0.0, NOW)
    assert s.frames_to_send() == []


def test_a_peer_that_floods_requests_is_limited() -> None:
    base, _ = founded()
    s = SyncSession({COMMUNITY: replica(base)}, 0.0, SyncConfig(burst=4, rate=1.0))
    have = Have(COMMUNITY, (), ()).encode()
    for _ in range(4):
        s.receive(have, 0.0, NOW)
    with pytest.raises(SyncError) as info:
        s.receive(have, 0.0, NOW)
    assert info.value.code == ErrorCode.SYNC_LIMIT
    s.receive(have, 2.0, NOW)  # refilled: served again


def test_too_many_invalid_entries_end_the_session() -> None:
    base, _ = founded()
    r = replica(base)
    s = SyncSession({COMMUNITY: r}, 0.0, SyncConfig(max_invalid=3))
    s.request(COMMUNITY)  # nothing: the peer has not shown it holds the community
    assert s.frames_to_send() == []
    s.receive(Have(COMMUNITY, tuple(r.authority.heads()), ()).encode(), 0.0, NOW)
    s.frames_to_send()
    forged = []
    for i in range(1, 4):
        bad = bytearray(base[-1])
        bad[-i] ^= 1
        forged.append(bytes(bad))
    junk = Entries(COMMUNITY, tuple(forged), (b"\xa0",)).encode()
    with pytest.raises(SyncError) as info:
        s.receive(junk, 0.0, NOW)
    assert info.value.code == ErrorCode.SYNC_LIMIT


def test_live_entries_accept_ignore_and_reject() -> None:
    base, chan = founded()
    r = replica(base)
    from starling.proto.sync import Intake

    # A feed entry from a member: accepted. Again (say its live message comes after
    # sync brought the entry): accepted to spread on, nothing taken twice [COM-R67].
    other = replica(base)
    raw = other.feeds.writer(ALICE, b"A" * 8).post(chan, "hi", T0 + 500)
    intake = Intake()
    assert r.take_live(LIVE_FEED, raw, NOW, intake)[0] is LiveVerdict.ACCEPT
    assert len(intake.feeds) == 1 and intake.changes[0].message.text == "hi"
    again = Intake()
    assert r.take_live(LIVE_FEED, raw, NOW, again)[0] is LiveVerdict.ACCEPT
    assert not again and not again.changes
    # An authority entry whose parent we lack: ignored, and sync is asked for.
    a1 = com.profile(ALICE, COMMUNITY, other.authority.heads(), T0 + 600, "Al")
    other.take([a1.raw], [], NOW)
    a2 = com.profile(ALICE, COMMUNITY, [a1.id], T0 + 601, "Alice")
    intake = Intake()
    assert r.take_live(LIVE_AUTHORITY, a2.raw, NOW, intake)[0] is LiveVerdict.IGNORE
    assert intake.missing and r.authority.missing() == [a1.id]
    # Self-promotion: rejected with its code.
    promo = com.role_grant(BOB, COMMUNITY, r.authority.heads(), T0 + 700, BOB.public_key.raw, 3)
    intake = Intake()
    verdict, error = r.take_live(LIVE_AUTHORITY, promo.raw, NOW, intake)
    assert verdict is LiveVerdict.REJECT and error is not None
    assert error.code == ErrorCode.COMMUNITY_NOT_PERMITTED
    # A stranger's feed entry waits (no blame) and is taken once its author joins.
    carol = key("carol")
    stranger_raw = Replica(COMMUNITY).feeds.writer(carol, b"C" * 8).post(chan, "early", T0 + 800)
    intake = Intake()
    assert r.take_live(LIVE_FEED, stranger_raw, NOW, intake)[0] is LiveVerdict.IGNORE
    assert intake.missing and not intake.rejected
    cap = com.make_capability(OWNER, COMMUNITY, expires_ms=T0 + 10**9, nonce=b"\1" * 16)
    intake = Intake()
    join = com.join(carol, cap, r.authority.heads(), T0 + 801)
    assert r.take_live(LIVE_AUTHORITY, join.raw, NOW, intake)[0] is LiveVerdict.ACCEPT
    assert [e.raw for e in intake.feeds] == [stranger_raw]
    # Malformed live data.
    with pytest.raises(SyncError) as info:
        decode_live(b"\xa1\x00\x05")
    assert info.value.code == ErrorCode.SYNC_MALFORMED
    assert decode_live(encode_live(LIVE_FEED, raw)) == (LIVE_FEED, raw)


def test_a_have_larger_than_one_message_spans_several() -> None:
    base, chan = founded()
    r = Replica(COMMUNITY, max_feeds=8)  # (1,024 on the wire; 8 keeps the test quick)
    r.take(base, [], NOW)
    for i in range(20):  # 20 feeds of one entry each: three HAVE messages
        device = i.to_bytes(8, "big")
        r.feeds.writer(ALICE, device).post(chan, f"{i}", T0 + 1000 + i)
    haves = r.have()
    assert [h.more for h in haves] == [True, True, False]
    empty_side = SyncSession({COMMUNITY: replica(base)}, 0.0)
    full_side = SyncSession({COMMUNITY: r}, 0.0)
    empty_side.hello(b"\x09" * 16)
    full_side.hello(b"\x0a" * 16)
    pump(empty_side, full_side)
    assert empty_side.replicas[COMMUNITY].feeds.lengths() == r.feeds.lengths()


def test_a_lack_learnt_while_a_have_is_outstanding_is_asked_for_after_its_done() -> None:
    """COM-R66: the answer under way may predate what we learnt we lack; one more HAVE
    follows its DONE (a lost wake-up would leave the gap until the next session)."""
    from starling.proto.sync import Intake

    base, chan = founded()
    ra, rb = replica(base), replica(base)
    sa, sb = SyncSession({COMMUNITY: ra}, 0.0), SyncSession({COMMUNITY: rb}, 0.0)
    sa.hello(b"\x01" * 16)
    sb.hello(b"\x02" * 16)
    pump(sa, sb)
    events(sa)
    # A asks; B answers at once (nothing is lacking yet), the answer still on its way ...
    assert sa.request(COMMUNITY)
    for frame in sa.frames_to_send():
        sb.receive(frame, 0.0, NOW)
    answer = sb.frames_to_send()
    assert [type(decode_message(f)).__name__ for f in answer] == ["Done"]  # nothing lacking
    # ... when B writes three posts and the third reaches A live: a gap.
    wb = rb.feeds.writer(BOB, b"B" * 8)
    raws = [wb.post(chan, f"b{i}", T0 + 900 + i) for i in range(3)]
    intake = Intake()
    assert ra.take_live(LIVE_FEED, raws[2], NOW, intake)[0] is LiveVerdict.IGNORE
    assert intake.missing and ra.lacks()
    assert not sa.request(COMMUNITY)  # one HAVE outstanding at a time ...
    for frame in answer:
        sa.receive(frame, 0.0, NOW)
    assert sa.stats["have_again"] == 1  # ... and another after its DONE
    pump(sa, sb)
    assert ra.feeds.lengths()[(BOB.public_key.raw, b"B" * 8)] == 3 and not ra.lacks()
    # Nothing lacking any more: a request under way and a DONE do not ask again.
    assert sa.request(COMMUNITY) and not sa.request(COMMUNITY)
    pump(sa, sb)
    assert sa.stats["have_again"] == 1


def test_a_sync_reply_is_taken_one_frame_at_a_time_in_order() -> None:
    """``next_frame`` hands out a reply's ENTRIES one by one (each encoded when taken, so
    that the first can leave before the last is encoded), then its DONE; the frames carry
    exactly what the peer lacks, in order, as ``frames_to_send`` would."""
    base, chan = founded()
    full = replica(base)
    writer = full.feeds.writer(ALICE, b"A" * 8)
    for i in range(600):
        writer.post(chan, f"message {i} " + "x" * 100, T0 + 100 + i)
    sa, sb = SyncSession({COMMUNITY: full}, 0.0), SyncSession({COMMUNITY: replica(base)}, 0.0)
    sb.hello(b"\x07" * 16)
    sa.hello(b"\x08" * 16)
    for frame in sb.frames_to_send():
        sa.receive(frame, 0.0, NOW)  # HELLO: sa sends its HAVE
    for frame in sa.frames_to_send():
        sb.receive(frame, 0.0, NOW)  # HELLO and HAVE: sb sends its HAVE
    for frame in sb.frames_to_send():
        sa.receive(frame, 0.0, NOW)  # sb's HAVE: sa's reply is queued, not yet encoded
    taken: list[bytes] = []
    first = sa.next_frame()
    assert first is not None and codec.decode(first)[0] == ENTRIES  # type: ignore[index]
    assert not isinstance(sa._out[0], bytes)  # the rest of the reply is still to encode
    taken.append(first)
    while (frame := sa.next_frame()) is not None:
        taken.append(frame)
    assert sa.next_frame() is None and sa.frames_to_send() == []
    kinds = [codec.decode(f)[0] for f in taken]  # type: ignore[index]
    assert kinds == [ENTRIES] * (len(taken) - 1) + [DONE] and len(taken) > 3
    carried = [raw for f in taken[:-1] for raw in decode_message(f).feeds]  # type: ignore[union-attr]
    assert carried == full.feeds.lacking({})
