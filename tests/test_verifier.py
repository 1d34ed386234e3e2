"""Signature checks of large sync batches in worker processes (node/verifier.py and
``_Verifiers`` in node/community.py): real processes, a real session on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pickle
import time
from pathlib import Path

import pytest

from starling.node import community as community_module
from starling.node.verifier import READY, serve
from starling.proto import community as com
from starling.proto.errors import ErrorCode
from starling.proto.feeds import FEED_DOMAIN
from starling.proto.identity import PrivateKey, signing_input
from tests.test_community import Member, eventually, run


def _items(forged: set[int], n: int = 120) -> list[tuple[bytes, str, bytes, bytes]]:
    key = PrivateKey(b"\x07" * 32)
    out = []
    for i in range(n):
        payload = i.to_bytes(4, "big") * 20
        signature = key._key.sign(signing_input(FEED_DOMAIN, payload)).signature
        if i in forged:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        out.append((key.public_key.raw, FEED_DOMAIN, payload, signature))
    return out


def test_the_worker_answers_the_indexes_that_fail() -> None:
    requests = io.BytesIO()
    for batch in (_items({0, 77}), _items(set(), 5)):
        body = pickle.dumps(batch)
        requests.write(len(body).to_bytes(4, "big") + body)
    requests.seek(0)
    answers = io.BytesIO()
    serve(requests, answers)  # returns at the end of its input
    out = answers.getvalue()
    assert out[:1] == READY
    first_size = int.from_bytes(out[1:5], "big")
    assert pickle.loads(out[5 : 5 + first_size]) == [0, 77]
    rest = out[5 + first_size :]
    assert pickle.loads(rest[4:]) == [] and int.from_bytes(rest[:4], "big") == len(rest) - 4


def test_the_processes_find_the_forged_items() -> None:
    async def main() -> None:
        verifiers = community_module._VERIFIERS
        verifiers.start()
        await verifiers.ready()
        assert not verifiers.broken
        pids = [w.proc.pid for w in verifiers._workers]
        assert len(pids) == community_module.VERIFY_PROCESSES and os.getpid() not in pids
        loop = asyncio.get_running_loop()
        assert await verifiers.failed(loop, _items({3, 64, 119})) == [3, 64, 119]
        assert await verifiers.failed(loop, _items(set())) == []

    run(main)


def test_the_processes_start_with_a_large_batch_and_stop_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No worker runs until a large batch comes (it is checked on threads while they
    start); after VERIFY_IDLE seconds without one they exit, and the next starts them."""
    monkeypatch.setattr(community_module, "VERIFY_IDLE", 0.3)

    async def main() -> None:
        verifiers = community_module._Verifiers()  # not the node's: its own workers
        loop = asyncio.get_running_loop()
        try:
            assert not verifiers._workers
            assert await verifiers.failed(loop, _items({5})) is None  # threads check it
            assert verifiers.starts == 1 and len(verifiers._workers) == 2
            await verifiers.ready()
            procs = [w.proc for w in verifiers._workers]
            assert await verifiers.failed(loop, _items({5})) == [5]
            await eventually(lambda: not verifiers._workers, 10.0)
            await eventually(lambda: all(p.poll() is not None for p in procs), 10.0)
            assert await verifiers.failed(loop, _items(set())) is None
            assert verifiers.starts == 2
            await verifiers.ready()
            assert await verifiers.failed(loop, _items({0})) == [0]
        finally:
            verifiers._stop()

    run(main)


def test_a_forged_entry_in_a_large_sync_batch_is_refused_with_its_code(tmp_path: Path) -> None:
    """The owner holds 300 posts, the last one with an altered signature, that a member
    fetches by sync (two ENTRIES messages, checked in the worker processes): the 299
    hold, the forged one is refused with FEED_ENTRY_FORGED."""

    async def main() -> None:
        owner, member = [await Member(n, tmp_path).start() for n in ("owner", "member")]
        try:
            cid = await owner.api.create("Large")
            await owner.api.add_channel(cid, "general")
            await member.api.join(await owner.api.invite(cid, uses=1))
            await eventually(lambda: bool(member.api.peers_of(cid)))
            key_ = com.CommunityId.parse(cid).raw
            replica = owner.api._replicas[key_]
            channel = owner.api._channel(replica, "general")
            writer = owner.api._writer(key_, replica)
            now = int(time.time() * 1000)
            for i in range(300):
                writer.post(channel, f"bulk {i}", now + i)
            feed_key = (writer.author, writer.device)
            feed = replica.feeds._feeds[feed_key]
            last = feed.entries[-1]
            forged = last.raw[:-1] + bytes([last.raw[-1] ^ 1])
            feed.entries[-1] = dataclasses.replace(last, raw=forged)
            await member.api.ready()  # the workers run (else the first batch takes threads)
            checked = community_module._VERIFIERS.checked
            theirs = member.api._replicas[key_]
            assert member.api.resync() == 1
            await eventually(lambda: ErrorCode.FEED_ENTRY_FORGED in member.codes())
            await eventually(
                lambda: theirs.feeds.lengths().get(feed_key, 0) == len(feed.entries) - 1
            )
            assert community_module._VERIFIERS.checked - checked >= 300
            texts = [m.text for m in theirs.feeds.view(channel).all()]
            assert "bulk 298" in texts and "bulk 299" not in texts
        finally:
            await member.stop()
            await owner.stop()

    run(main)
