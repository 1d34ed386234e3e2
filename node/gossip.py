"""Gossip on a running node: ``proto.gossip.GossipNode`` over sessions.

Thin glue in the style of ``node/dht.py``. Each side of a session opens its
own ``starling/gossip/1`` stream and writes every frame for that peer on it;
what arrives on the stream the peer opened goes into the core. So no side
waits for the other to pick a stream, and the two directions stay in order.

* A session that comes up (and whose peer speaks gossip) becomes a core peer,
  keyed by its ``PeerId``, and gets a catch-up for every subscribed topic: the
  IDs the peer holds since we last heard from it (since the beginning for a
  peer we never met), of which we pull what we lack [GSP-R60].
* The core's frames leave through one writer task per peer. A peer that
  stays behind (more than ``max_queued_frames`` waiting) loses the frames
  beyond that: the core's lazy pull and the next catch-up repair what it
  missed, and a slow peer cannot make the node buffer without bound.
* A peer the core graylists has its session closed with ``GOSSIP_GRAYLISTED``.
* A session that reports itself suspect (what we send goes unacknowledged)
  makes its peer suspect in the core, which takes it out of the mesh at once
  instead of at the idle timeout [GSP-R47]; the next acknowledgement clears it.
* One asyncio timer follows ``core.get_timer()``.

Applications read delivered messages with ``messages()`` (an async iterator)
or ``add_listener``; ``publish`` signs and spreads one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable

from starling.proto.errors import ErrorCode
from starling.proto.gossip import (
    PROTOCOL_ID,
    CatchUpDone,
    Delivered,
    GossipConfig,
    GossipNode,
    Message,
    MessageStore,
    PeerExchange,
    PeerMisbehaved,
    Verdict,
)
from starling.proto.identity import PeerId
from starling.proto.session import Role

from .session import (
    Node,
    Session,
    SessionDown,
    SessionEvent,
    SessionSuspect,
    SessionUp,
    Stream,
    StreamClosed,
)

log = logging.getLogger("starling.gossip")

GossipEvent = Delivered | PeerMisbehaved | PeerExchange | CatchUpDone
Validator = Callable[..., Verdict]


RELINK_DELAY = 1.0  # seconds before a closed gossip stream is replaced on a live session


class _Link:
    """The sending half towards one peer: its stream, a queue, a writer task."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queue: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stream: Stream | None = None


class GossipService:
    """A node's gossip: topics, publishing, delivery, catch-up on every session."""

    def __init__(
        self,
        node: Node,
        config: GossipConfig | None = None,
        validator: Validator | None = None,
        store: MessageStore | None = None,
        max_queued_frames: int = 4096,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.node = node
        now = self._loop.time()
        self.core = GossipNode(
            node.identity,
            node.config.network_id,
            os.urandom,
            now,
            config,
            validator,
            store,
            epoch_offset=time.time() - now,
        )
        self.max_queued_frames = max_queued_frames
        self.stats: Counter[str] = Counter()
        self._links: dict[PeerId, _Link] = {}
        self._served: set[Session] = set()  # sessions whose peer has opened a gossip stream
        self._incoming: dict[Session, Stream] = {}  # the one open stream each peer opened
        self._last_heard_ms: dict[PeerId, int] = {}  # for the catch-up of a resumed session
        self._listeners: list[Callable[[GossipEvent], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        node.set_handler(PROTOCOL_ID, self._serve)
        node.add_listener(self._on_session_event)
        for session in node.sessions:  # sessions that were up before gossip started
            self._session_up(session)

    # -- API ------------------------------------------------------------------------

    def subscribe(self, topic: bytes) -> None:
        self.core.subscribe(topic, self._loop.time())
        for peer in list(self._links):
            self.core.catch_up(peer, topic, self._since(peer), self._loop.time())
        self._flush()

    def unsubscribe(self, topic: bytes) -> None:
        self.core.unsubscribe(topic, self._loop.time())
        self._flush()

    def publish(self, topic: bytes, data: bytes) -> bytes:
        """Sign ``data`` as our message on ``topic`` and spread it; returns its ID."""
        message_id = self.core.publish(topic, data, self._loop.time())
        self._flush()
        return message_id

    def accept_late(self, message: Message) -> bool:
        """Accept a message the validator ignored while it could not judge it (a
        dependency was missing), now that it can [GSP-R27]: keep, deliver, forward."""
        if self._closed:
            return False
        accepted = self.core.accept_late(message, self._loop.time())
        self._flush()
        return accepted

    def add_listener(self, listener: Callable[[GossipEvent], None]) -> None:
        """Call ``listener`` with every event of the core (Delivered, PeerMisbehaved, ...)."""
        self._listeners.append(listener)

    async def messages(self) -> AsyncIterator[Delivered]:
        """Messages delivered from now on, in delivery order."""
        queue: asyncio.Queue[Delivered] = asyncio.Queue()

        def put(event: GossipEvent) -> None:
            if isinstance(event, Delivered):
                queue.put_nowait(event)

        self._listeners.append(put)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(put)

    @property
    def peers(self) -> list[PeerId]:
        return list(self._links)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for peer in list(self._links):
            self._drop(peer)
        await asyncio.sleep(0)

    # -- sessions ---------------------------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if isinstance(event, SessionUp):
            self._session_up(event.session)
        elif isinstance(event, SessionSuspect):
            link = self._links.get(event.session.peer_id)
            if link is not None and link.session is event.session:
                self.core.set_peer_suspect(event.session.peer_id, event.suspect, self._loop.time())
                self._flush()
        elif isinstance(event, SessionDown):
            self._served.discard(event.session)
            self._incoming.pop(event.session, None)
            link = self._links.get(event.session.peer_id)
            if link is not None and link.session is event.session:
                self._drop(event.session.peer_id)
                # Another session to the same peer may still be up: carry on over it.
                for other in self.node.sessions:
                    if other.peer_id == event.session.peer_id and not other.closed:
                        self._session_up(other)
                        break

    def _session_up(self, session: Session) -> None:
        peer = session.peer_id
        if PROTOCOL_ID not in session.peer_protocols or peer in self._links:
            return
        link = _Link(session)
        self._links[peer] = link
        link.task = self._loop.create_task(self._write(peer, link))
        now = self._loop.time()
        self.core.add_peer(peer, now, outbound=session.role is Role.INITIATOR, peer_id=peer.raw)
        for topic in self.core.topics:
            self.core.catch_up(peer, topic, self._since(peer), now)
        self._flush()

    def _relink(self, session: Session) -> None:
        if not self._closed and not session.closed and session.peer_id not in self._links:
            self._session_up(session)

    def _drop(self, peer: PeerId) -> None:
        link = self._links.pop(peer, None)
        if link is None:
            return
        self._last_heard_ms[peer] = self._now_ms()
        if link.task is not None:
            link.task.cancel()
        self.core.remove_peer(peer, self._loop.time())
        self._flush()

    def _since(self, peer: PeerId) -> int:
        # Messages a peer received while we were apart: from a little before we last
        # heard from it (clocks differ), or everything it holds if we never met.
        last = self._last_heard_ms.get(peer)
        return 0 if last is None else max(0, last - 60_000)

    def _now_ms(self) -> int:
        return int((self._loop.time() + self.core.epoch_offset) * 1000)

    # -- streams ------------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        """The stream the peer opened: everything on it goes into the core."""
        session = stream.session
        peer = session.peer_id
        current = self._incoming.get(session)
        if current is not None:
            stream.reset()  # a second stream while the first is open: keep the first [GSP-R3]
            return
        self._incoming[session] = stream
        replacement = session in self._served
        self._served.add(session)
        if replacement and peer in self._links:
            # A replacement: the peer's previous stream on this session ended, and what it
            # wrote there may be lost. Pull it, as on a new session [GSP-R64].
            now = self._loop.time()
            for topic in self.core.topics:
                self.core.catch_up(peer, topic, self._since(peer), now)
            self._flush()
        try:
            async for frame in stream:
                if self._closed:
                    return
                self.core.receive(peer, frame, self._loop.time())
                self._flush()
        finally:
            if self._incoming.get(session) is stream:
                del self._incoming[session]

    async def _write(self, peer: PeerId, link: _Link) -> None:
        try:
            link.stream = await link.session.open_stream(PROTOCOL_ID)
            while True:
                while link.queue:
                    await link.stream.send(link.queue.popleft())
                link.wakeup.clear()
                await link.wakeup.wait()
        except StreamClosed as exc:
            # The stream ended under a live session (reset, refused, the peer's reader
            # gone): left alone, everything queued for this peer would wait forever while
            # the core counts it as connected. Take the link down, and after a pause open
            # a fresh one on the session if it is still up; its catch-up exchange brings
            # back whatever went missing meanwhile.
            log.info("gossip stream to %s closed: %s; opening a new one", peer, exc)
            if self._links.get(peer) is link:
                self._drop(peer)
                self._loop.call_later(RELINK_DELAY, self._relink, link.session)
        except asyncio.CancelledError:
            if link.stream is not None:
                with contextlib.suppress(StreamClosed):
                    await link.stream.close()
            raise

    # -- the core -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what the core wants sent, hand its events out, re-arm its timer."""
        for peer, frame in self.core.frames_to_send(self._loop.time()):
            link = self._links.get(peer)  # type: ignore[call-overload]
            if link is None:
                self.stats["tx_no_link"] += 1
                continue
            if len(link.queue) >= self.max_queued_frames:
                self.stats["tx_dropped_behind"] += 1
                continue
            link.queue.append(frame)
            link.wakeup.set()
        while (event := self.core.next_event()) is not None:
            self._on_event(event)
        timer_at = self.core.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if timer_at is None else self._loop.call_at(timer_at, self._tick)
            self._timer_at = timer_at

    def _on_event(self, event: GossipEvent) -> None:
        if isinstance(event, Delivered) and isinstance(event.from_peer, PeerId):
            self._last_heard_ms[event.from_peer] = self._now_ms()
        if isinstance(event, PeerMisbehaved) and event.graylisted:
            link = self._links.get(event.peer)  # type: ignore[call-overload]
            if link is not None:
                self.stats["graylisted"] += 1
                self._loop.create_task(
                    link.session.close(ErrorCode.GOSSIP_GRAYLISTED, event.reason[:100])
                )
        for listener in list(self._listeners):
            listener(event)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._closed:
            self.core.handle_timer(self._loop.time())
            self._flush()
