"""Gossip over real sessions on loopback (node/gossip.py driving proto/gossip.py)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable

from starling.node.gossip import GossipService
from starling.node.session import Node, NodeConfig
from starling.proto.gossip import PROTOCOL_ID, Delivered, GossipConfig, topic_id
from starling.proto.identity import PrivateKey
from starling.proto.network import MAIN_NETWORK_ID

TOPIC = topic_id(MAIN_NETWORK_ID, hashlib.sha256(b"test community").digest())


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(label.encode()).digest())


class Member:
    """One node with gossip, recording every message ID it has seen (own ones too)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[bytes] = set()
        self.node: Node | None = None
        self.gossip: GossipService | None = None

    async def start(self) -> None:
        self.node = await Node.start(key(self.name), NodeConfig())
        self.gossip = GossipService(self.node, GossipConfig())
        self.gossip.add_listener(self._on_event)
        self.gossip.subscribe(TOPIC)

    def _on_event(self, event: object) -> None:
        if isinstance(event, Delivered):
            assert event.topic == TOPIC
            self.seen.add(event.message_id)

    def publish(self, data: bytes) -> bytes:
        assert self.gossip is not None
        message_id = self.gossip.publish(TOPIC, data)
        self.seen.add(message_id)
        return message_id

    async def stop(self) -> None:
        if self.gossip is not None:
            await self.gossip.close()
        if self.node is not None:
            await self.node.close()
        self.node = self.gossip = None

    @property
    def online(self) -> bool:
        return self.node is not None


async def eventually(condition: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 240) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout))


async def connect(a: Member, b: Member) -> None:
    assert a.node is not None and b.node is not None
    await a.node.connect(b.node.addresses[0], peer_id=b.node.peer_id)


def test_thirty_nodes_five_hundred_messages_and_one_returns_after_missing_a_hundred() -> None:
    """30 nodes, 500 messages from random publishers; every node gets all 500.

    Node 7 goes offline after message 200 and comes back (a new process would
    look the same: a new node with the same identity and no gossip state) after
    message 300; its catch-up pulls the 100 it missed (and the rest) from the
    peers it dials again.
    """
    rng = random.Random(5)
    members = [Member(f"gossip-{i}") for i in range(30)]
    links = sorted(
        {(i, j) for i in range(1, 30) for j in [i - 1, *rng.sample(range(i), min(i, 2))]}
    )
    absent = members[7]

    async def main() -> None:
        try:
            for m in members:
                await m.start()
            await asyncio.gather(*(connect(members[i], members[j]) for i, j in links))
            await asyncio.sleep(2.5)  # a couple of heartbeats: meshes form
            for m in members:
                assert m.gossip is not None
                assert m.gossip.peers, f"{m.name} has no gossip peers"
            published: list[bytes] = []
            before_return: set[bytes] = set()
            for n in range(500):
                if n == 200:
                    before_return = set(absent.seen)
                    await absent.stop()
                if n == 300:
                    await absent.start()
                    neighbours = [members[j] for i, j in links if i == 7] + [
                        members[i] for i, j in links if j == 7
                    ]
                    await asyncio.gather(*(connect(absent, other) for other in neighbours))
                publisher = rng.choice([m for m in members if m.online])
                published.append(publisher.publish(f"message {n}".encode() + bytes(100)))
                await asyncio.sleep(0.01)
            everything = set(published)
            await eventually(lambda: all(m.seen >= everything for m in members), 120)
            # The returning node had the first messages before it left (all but the
            # last few, still in flight when it went) and none of the next 100, which
            # it caught up on after it came back.
            assert before_return >= set(published[:190])
            assert not before_return & set(published[200:300])
            assert absent.seen >= set(published[200:300])
            for m in members:
                assert m.gossip is not None
                assert m.gossip.core.stats["rejected_GOSSIP_MESSAGE_INVALID"] == 0
        finally:
            for m in members:
                await m.stop()

    run(main)


def test_peers_without_gossip_are_left_alone() -> None:
    """A session to a node that does not speak starling/gossip/1 adds no gossip peer."""

    async def main() -> None:
        plain = await Node.start(key("plain"), NodeConfig())
        member = Member("member")
        await member.start()
        try:
            assert member.node is not None
            session = await member.node.connect(plain.addresses[0], peer_id=plain.peer_id)
            assert PROTOCOL_ID not in session.peer_protocols
            await asyncio.sleep(0.2)
            assert member.gossip is not None and member.gossip.peers == []
        finally:
            await member.stop()
            await plain.close()

    run(main)


def test_a_closed_gossip_stream_is_replaced_and_nothing_is_lost() -> None:
    """When the gossip stream to a peer ends while the session lives on, the service opens
    a new one on the same session, and the catch-up on it brings back what was published
    while there was none: nothing stays queued behind a dead stream."""

    async def main() -> None:
        a, b = Member("relink a"), Member("relink b")
        await a.start()
        await b.start()
        try:
            await connect(a, b)
            assert a.gossip is not None and b.gossip is not None and a.node is not None
            await eventually(lambda: len(a.gossip.peers) == 1 and len(b.gossip.peers) == 1, 10)
            first = a.publish(b"before")
            await eventually(lambda: first in b.seen, 10)
            # End a's sending stream towards b; the session itself stays up.
            link = a.gossip._links[b.node.peer_id]  # type: ignore[union-attr]
            await eventually(lambda: link.stream is not None, 10)
            assert link.stream is not None
            link.stream.reset()
            during = [a.publish(f"during {i}".encode()) for i in range(20)]
            await eventually(lambda: all(m in b.seen for m in during), 20)
            assert not a.node.sessions[0].closed
            relinked = a.gossip._links[b.node.peer_id]  # type: ignore[union-attr]
            assert relinked is not link and relinked.session is link.session
        finally:
            await a.stop()
            await b.stop()

    run(main)


def test_a_peer_that_stops_acknowledging_leaves_the_mesh_long_before_its_session_ends() -> None:
    """[GSP-R47] [SES-R22] A mesh peer that stops answering (its host froze, its link
    went dark) is taken out of the mesh as soon as the session reports what was sent
    to it unacknowledged, not 30 s later at the idle timeout; the others still get
    every message, and once it answers again it gets it too and is back in the mesh."""

    async def main() -> None:
        a, b, c = Member("suspect a"), Member("suspect b"), Member("suspect c")
        for m in (a, b, c):
            await m.start()
        try:
            await connect(a, b)
            await connect(a, c)
            await connect(b, c)
            assert a.gossip is not None and a.node is not None and b.node is not None
            pb, pc = b.node.peer_id, c.node.peer_id
            await eventually(lambda: a.gossip.core.mesh(TOPIC) == {pb, pc}, 10)
            session = a.node.session_with(pb)
            assert session is not None
            b.node.endpoint.pause_reading()  # b hears nothing, so acknowledges nothing
            first = a.publish(b"while b is silent")
            await eventually(lambda: pb not in a.gossip.core.mesh(TOPIC), 10)
            assert session.suspect and not session.closed
            assert a.gossip.core.stats["suspected"] == 1
            await eventually(lambda: first in c.seen, 10)
            b.node.endpoint.resume_reading()
            await eventually(lambda: not session.suspect, 10)
            assert a.gossip.core.stats["unsuspected"] == 1
            # No backoff was set: b is back in the mesh at a heartbeat.
            await eventually(lambda: pb in a.gossip.core.mesh(TOPIC), 10)
            await eventually(lambda: first in b.seen, 10)
            second = a.publish(b"after")
            await eventually(lambda: second in b.seen and second in c.seen, 10)
        finally:
            for m in (a, b, c):
                await m.stop()

    run(main)
