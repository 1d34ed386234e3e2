"""Baseline gossip models and the scenario harness of the gossip benchmark (simulator side).

Theory of operation
-------------------
The gossip benchmark compares Starling's gossip core with two baselines, all run
on the deterministic simulator (``starling.node.sim``) by one harness:

* ``naive_push``: a node that receives a message for the first time (or
  publishes one) pushes it once to ``fanout`` = 6 random topic peers from its
  member list, other than the peer it got it from. No pull, no repair: the
  classic epidemic whose reach is ``1 - s`` with ``s = exp(-6 (1 - s))``, about
  99.75% of a large community.
* ``gossipsub``: a model of GossipSub v1.1 with its specification's defaults,
  sans-IO like every Starling core (below).

Sessions are modelled as loss-free datagrams between established neighbours: a
datagram stands for one RPC on a libp2p stream (or one Starling frame), and its
length is the RPC's realistic wire size (protobuf fields, the length prefix and
the per-frame overhead of the secure multiplexed session). The first bytes of a
datagram hold the model's own fields (message index, origin, hop counter, ...);
the rest is zero padding up to the wire size. The hop counter and the
"pulled" flag are measurement fields: GossipSub has no hop counter on the wire,
so they live in bytes that stand for the real envelope (``seqno``, ``from``).

GossipSub v1.1, as modelled
---------------------------
Sources: libp2p/specs ``pubsub/gossipsub/gossipsub-v1.0.md`` ("Parameters",
"Router State", "Message Processing", "Heartbeat": mesh maintenance, gossip
emission) and ``pubsub/gossipsub/gossipsub-v1.1.md`` ("PRUNE Backoff and Peer
Exchange", "Flood Publishing", "Adaptive Gossip Dissemination", "Outbound Mesh
Quotas", "Overview of New Parameters", "Spam Protection Measures"); where the
spec leaves a constant to implementations, the defaults shared by
go-libp2p-pubsub (``gossipsub.go``) and js-libp2p-gossipsub (``constants``):
``GossipSubMaxIHaveLength`` 5000, ``GossipSubMaxIHaveMessages`` 10,
``GossipSubGossipRetransmission`` 3, ``GossipSubPrunePeers`` 16, ``D_out`` 2,
``D_score`` 4, and message ID = ``from || seqno`` (46 bytes).

| parameter | value | | parameter | value |
| --- | --- | --- | --- | --- |
| D | 6 | | mcache_len | 5 |
| D_lo | 4 | | mcache_gossip | 3 |
| D_hi | 12 | | seen_ttl | 120 s |
| D_lazy | 6 | | fanout_ttl | 60 s (no fanout: every publisher is subscribed) |
| D_out | 2 | | prune backoff | 60 s, sent in PRUNE |
| heartbeat | 1 s | | PX | 16 peers on every PRUNE but a backoff refusal |
| gossip_factor | 0.25 | | flood_publish | true |
| max_ihave_length | 5000 | | max_ihave_messages | 10 per peer per heartbeat |

Every node is subscribed to the one topic. On start it JOINs: D random known
peers become its mesh, each told by GRAFT. A GRAFT is refused with a PRUNE
(without PX) inside a backoff, and with a PRUNE with PX when the mesh already
holds D_hi peers and the grafting peer is not an outbound connection. The
heartbeat (each node at its own phase) grafts up to D when below D_lo, prunes to
D (keeping D_out outbound) above D_hi, grafts outbound peers while fewer than
D_out, then emits IHAVE for the last ``mcache_gossip`` windows to
``max(D_lazy, gossip_factor * |non-mesh peers|)`` random non-mesh peers, and
shifts the message cache. A node's own messages go to every topic peer (flood
publishing); received ones, once, to the mesh minus the sender and the origin.
IHAVE is answered with IWANT for unseen IDs (at most 10 IHAVEs and 5000 IDs per
peer per heartbeat); IWANT with the cached messages, at most 3 times per
message and peer. A PRUNE's PX peers that the node does not know yet get a
subscription announcement (libp2p's hello on a new connection); the answer
makes them topic peers on both sides.

Not modelled: peer scoring (every peer is honest and scores 0, so every
threshold passes, ``D_score`` selection is random and opportunistic grafting
never fires), IDONTWANT (v1.2), explicit peers, connection setup time for PX
peers (the hello exchange is the whole cost), fanout (no publisher is
unsubscribed), control piggybacking beyond one RPC per peer per heartbeat.

The harness
-----------
:func:`run_scenario` builds N nodes on one simulated network (one-way delays
uniform 10-50 ms, fixed per pair), where each node opens sessions to ``dials``
random members and accepts those opened to it (about 24 sessions each for 12
dials), lets the overlay settle, then either publishes messages of every size
from random members (``crash_fraction`` 0) or crashes that fraction of the
nodes at once and publishes from random survivors. A crashed node vanishes
without notice; each surviving neighbour notices only after a detection delay
drawn per session from ``detect_delay_s`` (default 20-30 s: Starling's QUIC
``max_idle_timeout`` is 30 s, spec/02-secure-session.md, counted from the last
datagram heard, and a live session hears something at least every 10 s).
A survivor left with fewer than 4 sessions it believes live then meets members
through presence records, as a node does (spec/06-community.md COM-R68; the
``meet_*`` fields of :class:`HarnessParams`), and both cores get ``peer_up``.

Any core with the shape of :class:`GossipCore` plugs in through a factory
``(NodeSetup) -> GossipCore``; it reports what it receives and sends through
the :class:`Probe` in its :class:`NodeSetup`. :func:`run_model` runs every
scenario for a list of seeds and :func:`summarize` pools them into the figures
of the issue (``coverage``, ``hops_max``, ``latency_ms_p50``/``_p99``,
``copies_per_delivery`` per size, ``control_bytes_per_msg``,
``coverage_over_time``, ``coverage_by_push``, ``coverage_after_two_heartbeats``).

``python -m bench.gossip_models --nodes 1000 --json out.json`` runs both
baselines; ``--quick`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import statistics
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from starling.node.sim import Address, LatencyModel, Simulator

__all__ = [
    "CRASH_FRACTIONS",
    "GOSSIPSUB_V11",
    "MODELS",
    "GossipCore",
    "GossipSubCore",
    "GossipSubParams",
    "HarnessParams",
    "NaivePushCore",
    "NodeSetup",
    "Probe",
    "RunData",
    "Topology",
    "control_wire_size",
    "gossipsub",
    "make_payload",
    "message_index",
    "message_wire_size",
    "naive_push",
    "run_model",
    "run_scenario",
    "summarize",
]

INF = math.inf

# --------------------------------------------------------------------------- wire sizes
#
# A datagram of the models is one pubsub RPC (libp2p pubsub ``RPC`` protobuf) on a
# Noise-secured yamux stream: a uvarint length prefix, the RPC, a 12-byte yamux
# header and a Noise transport frame (2-byte length, 16-byte Poly1305 tag).

SESSION_OVERHEAD = 12 + 2 + 16  # yamux header + Noise frame length + AEAD tag, per RPC
PEER_ID_LEN = 38  # an Ed25519 peer ID: identity multihash of the protobuf public key
SEQNO_LEN = 8
TOPIC_LEN = 52  # a community topic: base32 of a 32-byte key
SIGNATURE_LEN = 64  # Ed25519; the key is inlined in the peer ID, so ``key`` is omitted
MSG_ID_LEN = PEER_ID_LEN + SEQNO_LEN  # the default message ID: from || seqno
SIGNED_PEER_RECORD_LEN = 190  # PX: a signed peer record (public key, two addresses, signature)
PRUNE_BACKOFF_S = 60


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def _field(n: int) -> int:
    """Bytes of one length-delimited protobuf field (field number < 16) carrying ``n`` bytes."""
    return 1 + _varint_len(n) + n


def _rpc_on_wire(rpc_len: int) -> int:
    return SESSION_OVERHEAD + _varint_len(rpc_len) + rpc_len


@lru_cache(maxsize=64)
def message_wire_size(payload_len: int) -> int:
    """Bytes on the wire of one RPC carrying one message with ``payload_len`` bytes of data.

    ``Message{from, data, seqno, topic, signature}`` inside ``RPC.publish``.
    """
    envelope = (
        _field(PEER_ID_LEN)
        + _field(payload_len)
        + _field(SEQNO_LEN)
        + _field(TOPIC_LEN)
        + _field(SIGNATURE_LEN)
    )
    return _rpc_on_wire(_field(envelope))


@lru_cache(maxsize=4096)
def control_wire_size(
    *,
    graft: bool = False,
    prune: bool = False,
    px: int = 0,
    ihave: int = 0,
    iwant: int = 0,
    subscribe: bool = False,
) -> int:
    """Bytes on the wire of one RPC with these control messages (one topic)."""
    mid = _field(MSG_ID_LEN)
    control = 0
    if ihave:
        control += _field(_field(TOPIC_LEN) + ihave * mid)
    if iwant:
        control += _field(iwant * mid)
    if graft:
        control += _field(_field(TOPIC_LEN))
    if prune:
        peer_info = _field(_field(PEER_ID_LEN) + _field(SIGNED_PEER_RECORD_LEN))
        backoff = 1 + _varint_len(PRUNE_BACKOFF_S)
        control += _field(_field(TOPIC_LEN) + px * peer_info + backoff)
    rpc = _field(control) if control else 0
    if subscribe:
        rpc += _field(2 + _field(TOPIC_LEN))  # SubOpts{subscribe: true, topicid}
    return _rpc_on_wire(rpc)


# --------------------------------------------------------------------------- frames

_MSG = 0
_CTRL = 1
# kind, message index, origin node, hops, flags, payload length
_MSG_HDR = struct.Struct(">BIIHBI")
# kind, flags, backoff (s), IHAVE ids, IWANT ids, PX peers; then the ids and peers as u32
_CTRL_HDR = struct.Struct(">BBHHHH")
_PULLED = 1  # message flag: some hop of its path was an IWANT answer, not an eager push
_GRAFT = 1
_PRUNE = 2
_SUBSCRIBE = 4
_PAYLOAD_INDEX = struct.Struct(">I")


@lru_cache(maxsize=256)
def _u32s(n: int) -> struct.Struct:
    return struct.Struct(f">{n}I")


def make_payload(msg: int, size: int) -> bytes:
    """Payload of benchmark message ``msg``: its index (4 bytes), then zeros, ``size`` bytes."""
    return _PAYLOAD_INDEX.pack(msg).ljust(size, b"\0")


def message_index(payload: bytes) -> int:
    """The benchmark message index a payload made by :func:`make_payload` carries."""
    index: int = _PAYLOAD_INDEX.unpack_from(payload)[0]
    return index


# --------------------------------------------------------------------------- plug-in interface


class Probe:
    """The measurement sink every core of a run reports to (plain lists, no per-message objects).

    Per message: the publisher, size and publish time; per node, the first
    receipt time, its hop count and whether a copy reached the node along a
    path of eager pushes only; the number of full copies received; and, for
    the whole run, the payload bytes of every full copy sent.
    """

    __slots__ = (
        "copies",
        "eager_reached",
        "first",
        "hops",
        "messages",
        "n",
        "payload_sent",
        "push_reached",
    )

    def __init__(self, n: int) -> None:
        self.n = n
        self.messages: list[tuple[int, int, float]] = []  # (publisher, size, publish time)
        self.first: list[list[float]] = []
        self.hops: list[list[int]] = []
        self.push_reached: list[bytearray] = []
        self.eager_reached: list[bytearray] = []
        self.copies: list[int] = []
        self.payload_sent = 0

    def new_message(self, publisher: int, size: int, t: float) -> int:
        self.messages.append((publisher, size, t))
        self.first.append([INF] * self.n)
        self.hops.append([-1] * self.n)
        self.push_reached.append(bytearray(self.n))
        self.eager_reached.append(bytearray(self.n))
        self.copies.append(0)
        return len(self.messages) - 1

    def received(
        self, node: int, msg: int, now: float, hops: int, pushed: bool, eager: bool | None = None
    ) -> None:
        """Node ``node`` received a full copy of ``msg`` (every copy, duplicates included).

        ``hops`` is the number of links the copy travelled from the publisher
        (negative: unknown, left out of the hop figures). ``pushed``: the copy came
        by the publisher's **dissemination wave**: every link of its path was an
        eager push, or a pull asked for because of an announcement made in the
        wave (sent on receipt, not at a heartbeat), after at most the short wait
        for an eager copy; never heartbeat gossip, a retried request or a
        catch-up. ``eager`` (default: ``pushed``): every link was an eager push.
        """
        self.copies[msg] += 1
        row = self.first[msg]
        if row[node] == INF:
            row[node] = now
            self.hops[msg][node] = hops
        if pushed:
            self.push_reached[msg][node] = 1
        if pushed if eager is None else eager:
            self.eager_reached[msg][node] = 1

    def sent_payload(self, nbytes: int) -> None:
        """Payload bytes of full copies sent (the rest of every byte sent is control)."""
        self.payload_sent += nbytes


@dataclass(slots=True)
class Topology:
    """Who holds a session with whom: node ``i`` is ``addresses[i]``.

    ``neighbours`` is symmetric and mutable: a core that opens a new session
    (peer exchange) records it with :meth:`connect`, so a crash later notifies
    that neighbour too. ``outbound[i]`` holds the peers node ``i`` dialled.
    """

    addresses: list[Address]
    index_of: dict[Address, int]
    neighbours: list[set[int]]
    outbound: list[set[int]]

    @classmethod
    def random(cls, addresses: list[Address], dials: int, rng: random.Random) -> Topology:
        """Each node dials ``dials`` distinct random others; sessions are symmetric."""
        n = len(addresses)
        neighbours: list[set[int]] = [set() for _ in range(n)]
        outbound: list[set[int]] = [set() for _ in range(n)]
        k = min(dials, n - 1)
        for i in range(n):
            while len(outbound[i]) < k and len(neighbours[i]) < n - 1:
                j = rng.randrange(n)
                if j != i and j not in neighbours[i]:
                    outbound[i].add(j)
                    neighbours[i].add(j)
                    neighbours[j].add(i)
            # a peer that dialled i earlier may be dialled back: already a session, skipped
        return cls(list(addresses), {a: i for i, a in enumerate(addresses)}, neighbours, outbound)

    def connect(self, a: int, b: int) -> None:
        self.neighbours[a].add(b)
        self.neighbours[b].add(a)

    def degrees(self) -> list[int]:
        return [len(s) for s in self.neighbours]


@dataclass(frozen=True, slots=True)
class NodeSetup:
    """What a core factory gets for node ``index``."""

    index: int
    addr: Address
    peers: tuple[Address, ...]  # topic members it holds a session with (subscriptions known)
    outbound: frozenset[Address]  # those of them it dialled
    topology: Topology
    probe: Probe
    rng: random.Random  # the core's own stream, derived from the seed and the index
    now: float


class GossipCore(Protocol):
    """A sans-IO gossip core the harness can run (``starling.node.sim.Core`` plus two calls).

    * ``publish(payload, now)``: publish ``payload`` (made by :func:`make_payload`;
      :func:`message_index` reads the benchmark's message index back from it).
    * ``peer_down(peer, now)``: the session with ``peer`` is gone (the crash
      was detected); no datagram to or from it will pass again.
    * ``peer_up(peer, now, outbound)``: a new session with ``peer`` is up (a
      survivor met it after a crash); ``outbound``: this node dialled.
    * ``peer_suspect(peer, now)``: what this node sent ``peer`` has gone
      unacknowledged for a few probe timeouts (``peer`` crashed, its session
      has not timed out yet). A core whose protocol has no use for it ignores it.

    The core reports to ``setup.probe``: ``received(...)`` for every full copy
    of a message it receives, ``sent_payload(n)`` with the payload bytes of
    every full copy it sends. Optionally ``mesh_degree() -> int``.
    """

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def publish(self, payload: bytes, now: float) -> None: ...

    def peer_down(self, peer: Address, now: float) -> None: ...

    def peer_up(self, peer: Address, now: float, outbound: bool) -> None: ...

    def peer_suspect(self, peer: Address, now: float) -> None: ...


CoreFactory = Callable[[NodeSetup], GossipCore]


# --------------------------------------------------------------------------- naive push


class NaivePushCore:
    """Push once to ``fanout`` random topic peers on first receipt or publish; nothing else."""

    __slots__ = (
        "addrs",
        "fanout",
        "index_of",
        "me",
        "out",
        "peers",
        "probe",
        "rng",
        "seen",
        "seen_fifo",
        "seen_ttl",
    )

    def __init__(self, setup: NodeSetup, fanout: int = 6, seen_ttl: float = 120.0) -> None:
        topo = setup.topology
        self.me = setup.index
        self.addrs = topo.addresses
        self.index_of = topo.index_of
        self.peers = sorted(topo.index_of[a] for a in setup.peers)
        self.probe = setup.probe
        self.rng = setup.rng
        self.fanout = fanout
        self.seen_ttl = seen_ttl
        self.seen: dict[int, float] = {}
        self.seen_fifo: deque[tuple[float, int]] = deque()
        self.out: list[tuple[bytes, Address]] = []

    def publish(self, payload: bytes, now: float) -> None:
        msg = message_index(payload)
        self._mark_seen(msg, now)
        self._push(msg, self.me, 1, len(payload), message_wire_size(len(payload)), -1)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        _, msg, origin, hops, _, plen = _MSG_HDR.unpack_from(data)
        self.probe.received(self.me, msg, now, hops, True)
        if msg in self.seen:
            return
        self._mark_seen(msg, now)
        self._push(msg, origin, hops + 1, plen, len(data), self.index_of[addr])

    def _mark_seen(self, msg: int, now: float) -> None:
        fifo = self.seen_fifo
        while fifo and fifo[0][0] <= now:
            del self.seen[fifo.popleft()[1]]
        expiry = now + self.seen_ttl
        self.seen[msg] = expiry
        fifo.append((expiry, msg))

    def _push(self, msg: int, origin: int, hops: int, plen: int, wire: int, src: int) -> None:
        cands = [p for p in self.peers if p != src]
        targets = cands if len(cands) <= self.fanout else self.rng.sample(cands, self.fanout)
        if not targets:
            return
        frame = _MSG_HDR.pack(_MSG, msg, origin, hops, 0, plen).ljust(wire, b"\0")
        addrs = self.addrs
        self.out.extend((frame, addrs[p]) for p in targets)
        self.probe.sent_payload(plen * len(targets))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.out
        self.out = []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def peer_down(self, peer: Address, now: float) -> None:
        q = self.index_of[peer]
        if q in self.peers:
            self.peers.remove(q)

    def peer_up(self, peer: Address, now: float, outbound: bool) -> None:
        q = self.index_of[peer]
        if q not in self.peers:
            self.peers.append(q)

    def peer_suspect(self, peer: Address, now: float) -> None:
        return None  # push-once has no state a dead peer could be taken out of


def naive_push(setup: NodeSetup) -> NaivePushCore:
    """The ``naive_push`` baseline: push once to 6 random topic peers."""
    return NaivePushCore(setup)


# --------------------------------------------------------------------------- GossipSub v1.1


@dataclass(frozen=True, slots=True)
class GossipSubParams:
    d: int = 6
    d_lo: int = 4
    d_hi: int = 12
    d_lazy: int = 6
    d_out: int = 2
    heartbeat_s: float = 1.0
    gossip_factor: float = 0.25
    mcache_len: int = 5
    mcache_gossip: int = 3
    seen_ttl_s: float = 120.0
    fanout_ttl_s: float = 60.0  # unused: every publisher is subscribed to the topic
    prune_backoff_s: float = float(PRUNE_BACKOFF_S)
    backoff_slack_s: float = 1.0  # one heartbeat before regrafting after a backoff ends
    prune_peers: int = 16  # PX
    do_px: bool = True
    flood_publish: bool = True
    max_ihave_length: int = 5000
    max_ihave_messages: int = 10
    gossip_retransmission: int = 3

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


GOSSIPSUB_V11 = GossipSubParams()


class GossipSubCore:
    """One GossipSub v1.1 router subscribed to the benchmark's single topic (module docstring)."""

    __slots__ = (
        "addrs",
        "backoff",
        "cache",
        "hello_pending",
        "iasked",
        "index_of",
        "me",
        "mesh",
        "next_heartbeat",
        "out",
        "outbound",
        "p",
        "peerhave",
        "peers",
        "probe",
        "rng",
        "seen",
        "seen_fifo",
        "topology",
        "windows",
    )

    def __init__(self, setup: NodeSetup, params: GossipSubParams = GOSSIPSUB_V11) -> None:
        topo = setup.topology
        self.p = params
        self.me = setup.index
        self.topology = topo
        self.addrs = topo.addresses
        self.index_of = topo.index_of
        self.probe = setup.probe
        self.rng = setup.rng
        self.peers: set[int] = {topo.index_of[a] for a in setup.peers}
        self.outbound: set[int] = {topo.index_of[a] for a in setup.outbound}
        self.mesh: set[int] = set()
        self.backoff: dict[int, float] = {}  # peer -> end of backoff
        # mcache: windows of message indices, newest first; cache: msg -> (wire, plen, hops,
        # origin, flags, IWANT answers per peer)
        self.windows: deque[list[int]] = deque([[]])
        self.cache: dict[int, tuple[int, int, int, int, int, dict[int, int]]] = {}
        self.seen: dict[int, float] = {}
        self.seen_fifo: deque[tuple[float, int]] = deque()
        self.peerhave: dict[int, int] = {}  # IHAVEs received per peer this heartbeat
        self.iasked: dict[int, int] = {}  # IDs asked per peer this heartbeat
        self.hello_pending: set[int] = set()  # PX peers we announced ourselves to
        self.out: list[tuple[bytes, Address]] = []
        self.next_heartbeat = setup.now + self.rng.random() * params.heartbeat_s
        self._join()

    # -- application side

    def publish(self, payload: bytes, now: float) -> None:
        msg = message_index(payload)
        plen = len(payload)
        wire = message_wire_size(plen)
        self._mark_seen(msg, now)
        self.cache[msg] = (wire, plen, 0, self.me, 0, {})
        self.windows[0].append(msg)
        targets = self.peers if self.p.flood_publish else self.mesh
        if targets:
            frame = _MSG_HDR.pack(_MSG, msg, self.me, 1, 0, plen).ljust(wire, b"\0")
            addrs = self.addrs
            self.out.extend((frame, addrs[q]) for q in targets)
            self.probe.sent_payload(plen * len(targets))

    def mesh_degree(self) -> int:
        return len(self.mesh)

    # -- datagrams

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        src = self.index_of[addr]
        if data[0] == _MSG:
            self._on_message(data, src, now)
        else:
            self._on_control(data, src, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.out
        self.out = []
        return out

    def get_timer(self) -> float | None:
        return self.next_heartbeat

    def handle_timer(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.next_heartbeat += self.p.heartbeat_s
            self._heartbeat(now)

    def peer_down(self, peer: Address, now: float) -> None:
        q = self.index_of[peer]
        self.peers.discard(q)
        self.mesh.discard(q)
        self.outbound.discard(q)
        self.hello_pending.discard(q)

    def peer_up(self, peer: Address, now: float, outbound: bool) -> None:
        # A new connection: both ends learn the other's subscription (the hello); the
        # mesh takes it at a heartbeat if it needs peers.
        q = self.index_of[peer]
        self.peers.add(q)
        if outbound:
            self.outbound.add(q)
        self.hello_pending.discard(q)

    def peer_suspect(self, peer: Address, now: float) -> None:
        # GossipSub v1.1 takes a peer out of its mesh when the connection closes, and
        # has no signal before that: the model runs it as specified.
        return None

    # -- message processing (v1.0 "Message Processing")

    def _mark_seen(self, msg: int, now: float) -> None:
        expiry = now + self.p.seen_ttl_s
        self.seen[msg] = expiry
        self.seen_fifo.append((expiry, msg))

    def _on_message(self, data: bytes, src: int, now: float) -> None:
        _, msg, origin, hops, flags, plen = _MSG_HDR.unpack_from(data)
        self.probe.received(self.me, msg, now, hops, not flags & _PULLED)
        if msg in self.seen:
            return
        self._mark_seen(msg, now)
        self.cache[msg] = (len(data), plen, hops, origin, flags, {})
        self.windows[0].append(msg)
        targets = [q for q in self.mesh if q not in (src, origin)]
        if targets:
            frame = _MSG_HDR.pack(_MSG, msg, origin, hops + 1, flags, plen).ljust(len(data), b"\0")
            addrs = self.addrs
            self.out.extend((frame, addrs[q]) for q in targets)
            self.probe.sent_payload(plen * len(targets))

    def _on_control(self, data: bytes, src: int, now: float) -> None:
        _, flags, backoff, n_ihave, n_iwant, n_px = _CTRL_HDR.unpack_from(data)
        total = n_ihave + n_iwant + n_px
        ids = _u32s(total).unpack_from(data, _CTRL_HDR.size) if total else ()
        if flags & _SUBSCRIBE:
            self._on_subscribe(src)
        if src not in self.peers:
            return  # not a topic peer (yet): its control messages are ignored
        iwant = self._handle_ihave(src, ids[:n_ihave]) if n_ihave else []
        if n_iwant:
            self._handle_iwant(src, ids[n_ihave : n_ihave + n_iwant])
        refuse = self._handle_graft(src, now) if flags & _GRAFT else None
        if flags & _PRUNE:
            self._handle_prune(src, backoff, ids[n_ihave + n_iwant :], now)
        if iwant or refuse is not None:
            px = self._px_for(src) if refuse else ()
            self._send_control(src, _PRUNE if refuse is not None else 0, (), iwant, px)

    def _handle_ihave(self, src: int, ids: Sequence[int]) -> list[int]:
        p = self.p
        count = self.peerhave.get(src, 0) + 1
        self.peerhave[src] = count
        if count > p.max_ihave_messages:
            return []
        asked = self.iasked.get(src, 0)
        if asked >= p.max_ihave_length:
            return []
        seen = self.seen
        want = [m for m in ids if m not in seen]
        room = p.max_ihave_length - asked
        if len(want) > room:
            self.rng.shuffle(want)
            del want[room:]
        if want:
            self.iasked[src] = asked + len(want)
        return want

    def _handle_iwant(self, src: int, ids: Sequence[int]) -> None:
        addrs = self.addrs
        limit = self.p.gossip_retransmission
        for m in ids:
            entry = self.cache.get(m)
            if entry is None:
                continue
            wire, plen, hops, origin, flags, served = entry
            count = served.get(src, 0) + 1
            served[src] = count
            if count > limit:
                continue
            frame = _MSG_HDR.pack(_MSG, m, origin, hops + 1, flags | _PULLED, plen)
            self.out.append((frame.ljust(wire, b"\0"), addrs[src]))
            self.probe.sent_payload(plen)

    def _handle_graft(self, src: int, now: float) -> bool | None:
        """None: accepted (or already in the mesh); else refused, True if with PX."""
        if src in self.mesh:
            return None
        p = self.p
        end = self.backoff.get(src)
        if end is not None and now < end:
            self.backoff[src] = now + p.prune_backoff_s  # refresh, and no PX
            return False
        if len(self.mesh) >= p.d_hi and src not in self.outbound:
            self.backoff[src] = now + p.prune_backoff_s
            return p.do_px
        self.mesh.add(src)
        return None

    def _handle_prune(self, src: int, backoff: int, px: Sequence[int], now: float) -> None:
        self.mesh.discard(src)
        end = now + (backoff or self.p.prune_backoff_s)
        if end > self.backoff.get(src, 0.0):
            self.backoff[src] = end
        for q in px[: self.p.prune_peers]:
            if q != self.me and q not in self.peers and q not in self.hello_pending:
                self.hello_pending.add(q)
                self._send_control(q, _SUBSCRIBE, (), (), ())

    def _on_subscribe(self, src: int) -> None:
        if src in self.peers:
            return
        self.peers.add(src)
        self.topology.connect(self.me, src)
        if src in self.hello_pending:  # our PX dial, answered
            self.hello_pending.discard(src)
            self.outbound.add(src)
        else:  # a PX dial from them: announce our subscription back
            self._send_control(src, _SUBSCRIBE, (), (), ())

    def _px_for(self, pruned: int) -> list[int]:
        cands = [q for q in self.peers if q != pruned]
        n = self.p.prune_peers
        return cands if len(cands) <= n else self.rng.sample(cands, n)

    def _send_control(
        self,
        peer: int,
        flags: int,
        ihave: Sequence[int],
        iwant: Sequence[int],
        px: Sequence[int],
    ) -> None:
        self.out.append((self._control_frame(flags, ihave, iwant, px), self.addrs[peer]))

    def _control_frame(
        self, flags: int, ihave: Sequence[int], iwant: Sequence[int], px: Sequence[int]
    ) -> bytes:
        ids = (*ihave, *iwant, *px)
        backoff = int(self.p.prune_backoff_s) if flags & _PRUNE else 0
        head = _CTRL_HDR.pack(_CTRL, flags, backoff, len(ihave), len(iwant), len(px))
        if ids:
            head += _u32s(len(ids)).pack(*ids)
        wire = control_wire_size(
            graft=bool(flags & _GRAFT),
            prune=bool(flags & _PRUNE),
            px=len(px),
            ihave=len(ihave),
            iwant=len(iwant),
            subscribe=bool(flags & _SUBSCRIBE),
        )
        return head.ljust(wire, b"\0")

    # -- topic membership and heartbeat (v1.0 "Heartbeat", v1.1 extensions)

    def _join(self) -> None:
        cands = sorted(self.peers)
        pick = cands if len(cands) <= self.p.d else self.rng.sample(cands, self.p.d)
        self.mesh.update(pick)
        frame = self._control_frame(_GRAFT, (), (), ())
        addrs = self.addrs
        self.out.extend((frame, addrs[q]) for q in pick)

    def _heartbeat(self, now: float) -> None:
        p = self.p
        rng = self.rng
        self.peerhave.clear()
        self.iasked.clear()
        fifo = self.seen_fifo
        while fifo and fifo[0][0] <= now:
            expiry, m = fifo.popleft()
            if self.seen.get(m) == expiry:
                del self.seen[m]
        backoff = self.backoff
        if backoff:
            slack = p.backoff_slack_s
            for q in [q for q, end in backoff.items() if end + slack <= now]:
                del backoff[q]
        mesh = self.mesh
        graft: list[int] = []
        prune: list[int] = []
        if len(mesh) < p.d_lo:
            cands = [q for q in self.peers if q not in mesh and q not in backoff]
            need = p.d - len(mesh)
            pick = cands if len(cands) <= need else rng.sample(cands, need)
            mesh.update(pick)
            graft += pick
        elif len(mesh) > p.d_hi:
            order = list(mesh)
            rng.shuffle(order)  # all scores are equal: D_score picks at random too
            head, tail = order[: p.d], order[p.d :]
            outbound = self.outbound
            out_head = [q for q in head if q in outbound]
            if len(out_head) < p.d_out:  # bubble up outbound peers into the survivors
                extra = [q for q in tail if q in outbound][: p.d_out - len(out_head)]
                keep = (extra + out_head + [q for q in head if q not in outbound])[: p.d]
            else:
                keep = head
            kept = set(keep)
            for q in order:
                if q not in kept:
                    mesh.discard(q)
                    backoff[q] = now + p.prune_backoff_s
                    prune.append(q)
        if len(mesh) >= p.d_lo and p.d_out:
            have = sum(1 for q in mesh if q in self.outbound)
            if have < p.d_out:
                cands = [q for q in self.outbound if q not in mesh and q not in backoff]
                need = p.d_out - have
                pick = cands if len(cands) <= need else rng.sample(cands, need)
                mesh.update(pick)
                graft += pick
        # gossip emission: IHAVE of the last mcache_gossip windows to non-mesh peers
        ids = [m for window in itertools.islice(self.windows, p.mcache_gossip) for m in window]
        gossip_to: list[int] = []
        if ids:
            cands = [q for q in self.peers if q not in mesh]
            target = max(p.d_lazy, int(p.gossip_factor * len(cands)))
            gossip_to = cands if target >= len(cands) else rng.sample(cands, target)
        self._emit(graft, prune, gossip_to, ids)
        # shift the message cache
        self.windows.appendleft([])
        if len(self.windows) > p.mcache_len:
            cache = self.cache
            for m in self.windows.pop():
                cache.pop(m, None)

    def _emit(
        self, graft: list[int], prune: list[int], gossip_to: list[int], ids: list[int]
    ) -> None:
        """One RPC per peer with its GRAFT, PRUNE (+PX) and IHAVE, as v1.0 piggybacks them."""
        p = self.p
        flags: dict[int, int] = dict.fromkeys(gossip_to, 0)
        for q in graft:
            flags[q] = flags.get(q, 0) | _GRAFT
        for q in prune:
            flags[q] = flags.get(q, 0) | _PRUNE
        gossip = set(gossip_to)
        shared: bytes | None = None
        many = len(ids) > p.max_ihave_length
        addrs = self.addrs
        out = self.out
        for q, f in flags.items():
            ihave: Sequence[int] = ()
            if q in gossip:
                # past max_ihave_length, a different random subset per peer
                ihave = self.rng.sample(ids, p.max_ihave_length) if many else ids
            if f == 0 and not many:
                if shared is None:
                    shared = self._control_frame(0, ihave, (), ())
                out.append((shared, addrs[q]))
                continue
            px = self._px_for(q) if f & _PRUNE and p.do_px else ()
            out.append((self._control_frame(f, ihave, (), px), addrs[q]))


def gossipsub(setup: NodeSetup) -> GossipSubCore:
    """The ``gossipsub`` baseline: GossipSub v1.1 with the specification's defaults."""
    return GossipSubCore(setup, GOSSIPSUB_V11)


MODELS: dict[str, CoreFactory] = {"naive_push": naive_push, "gossipsub": gossipsub}

# --------------------------------------------------------------------------- harness

CRASH_FRACTIONS = (0.0, 0.2, 0.5, 0.8)


@dataclass(frozen=True, slots=True)
class HarnessParams:
    """What a scenario run does; the defaults are the benchmark's, :meth:`quick` a smoke run."""

    dials: int = 12  # sessions each node opens; it accepts about as many
    latency_ms: tuple[float, float] = (10.0, 50.0)  # one-way, uniform, fixed per pair
    warmup_s: float = 10.0  # the overlay settles (meshes form) before anything is published
    sizes: tuple[int, ...] = (200, 16384)
    messages_per_size: int = 20  # healthy network: messages of each size, sizes alternating
    publish_interval_s: float = 0.25
    settle_s: float = 10.0  # after the last publish (the mcache forgets after 5 heartbeats)
    crash_messages_per_size: int = 5
    crash_observe_s: float = 60.0  # after the last post-crash publish (meeting included)
    detect_delay_s: tuple[float, float] = (20.0, 30.0)  # per session, uniform
    coverage_times_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 45.0, 60.0)
    # Meeting members after a crash, as a node does (spec/06-community.md COM-R68): a
    # survivor whose sessions it believes live fall below ``meet_target`` (a loss it
    # detected) waits ``meet_delay_s``, looks the community's presence records up in
    # the DHT (``meet_lookup_s``, uniform: lookups then meet dead nodes and their
    # timeouts), and dials the members they name, freshest record first: one more each
    # time a dial ends or ``meet_stagger_s`` passes without an answer, until it has
    # ``meet_target``. A live member answers
    # after ``handshake_rtts`` round trips; a crashed one costs ``meet_dial_fail_s`` (5 s
    # by address, then 10 s by peer ID) and is not dialled again that run. The records
    # are those of ``meet_records`` members drawn once per run (a DHT node keeps at most
    # 32 per key, so every survivor reads the same few); each member republished its
    # record every ``presence_interval_s`` at a phase of its own, a crashed one until
    # the crash. ``meet_target`` 0: nobody makes a new session.
    meet_target: int = 4
    meet_delay_s: float = 1.0
    meet_lookup_s: tuple[float, float] = (1.0, 4.0)
    meet_records: int = 32
    meet_stagger_s: float = 0.25  # RFC 8305's connection attempt delay
    meet_dial_fail_s: float = 15.0
    presence_interval_s: float = 60.0
    handshake_rtts: float = 2.0
    heartbeat_s: float = 1.0  # "after two heartbeats" = coverage at 2 x this after publish
    # A session whose data goes unacknowledged becomes *suspect* long before it times
    # out (spec/02-secure-session.md 3.5): ``suspect_ptos`` probe timeouts after the
    # first unacknowledged send to a crashed peer, at least ``suspect_min_s``. The PTO
    # is 2 x RTT + 25 ms (smoothed RTT + 4 x RTT variance, taken as RTT / 4, + the
    # peer's maximum ACK delay). The sender's core hears of it by ``peer_suspect``;
    # ``suspect_ptos`` 0: never.
    suspect_ptos: float = 3.0
    suspect_min_s: float = 0.5

    @classmethod
    def quick(cls) -> HarnessParams:
        return cls(
            warmup_s=5.0,
            messages_per_size=4,
            settle_s=6.0,
            crash_messages_per_size=2,
            crash_observe_s=20.0,
            detect_delay_s=(3.0, 5.0),
            coverage_times_s=(0.5, 1.0, 2.0, 5.0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class RunData:
    """Raw figures of one run (one seed, one scenario), pooled by :func:`summarize`."""

    nodes: int
    seed: int
    crash_fraction: float
    online: int
    messages: int
    latencies_ms: list[float]
    hops: list[int]
    deliveries: int  # first receipts at online members other than the publisher
    expected: int  # (message, online member other than its publisher) pairs
    nodes_with_all: int  # online members holding every message
    reachable: list[float]  # per message: fraction of receivers with a live path from it
    copies_by_size: dict[int, int]
    deliveries_by_size: dict[int, int]
    coverage_at: dict[float, list[float]]  # time after publish -> per-message fractions
    by_push: list[float]  # per message: fraction reached by a path of eager pushes only
    by_push_by_size: dict[int, list[float]]  # the same, by payload size
    by_eager: list[float]  # per message: fraction reached by eager pushes only (no pull)
    by_eager_by_size: dict[int, list[float]]
    control_bytes: int
    payload_bytes: int
    bytes_sent: int
    wall_s: float
    events: int
    degrees: list[int]
    mesh_degrees: list[int] | None
    extra: dict[str, Any] = field(default_factory=dict)


def _total_bytes_sent(sim: Simulator) -> int:
    return sum(st.bytes_sent for st in sim.stats.values())


def run_scenario(
    factory: CoreFactory,
    nodes: int,
    seed: int,
    crash_fraction: float = 0.0,
    params: HarnessParams | None = None,
) -> RunData:
    """One network of ``nodes`` cores made by ``factory``: settle, (crash,) publish, measure.

    The topology, the publishers, the crashed nodes and the detection delays
    depend only on ``seed`` (and the crash fraction), never on the core, so
    every model sees the same network and the same workload.
    """
    params = params or HarnessParams()
    wall0 = time.perf_counter()
    sim = Simulator(seed, LatencyModel.uniform(*params.latency_ms, seed=seed))
    addresses = [sim.allocate_address() for _ in range(nodes)]
    topo = Topology.random(addresses, params.dials, sim.child_rng("topology"))
    degrees = topo.degrees()
    probe = Probe(nodes)
    cores: list[GossipCore] = []
    for i, addr in enumerate(addresses):
        peers = tuple(addresses[j] for j in sorted(topo.neighbours[i]))
        setup = NodeSetup(
            index=i,
            addr=addr,
            peers=peers,
            outbound=frozenset(addresses[j] for j in topo.outbound[i]),
            topology=topo,
            probe=probe,
            rng=sim.child_rng("node", i),
            now=sim.now,
        )
        core = factory(setup)
        cores.append(core)
        sim.add(addr, core)
    sim.run_until(params.warmup_s)

    rng = sim.child_rng("scenario", crash_fraction)
    online = bytearray(b"\x01") * nodes
    start = sim.now
    if crash_fraction > 0:
        victims = sorted(rng.sample(range(nodes), round(crash_fraction * nodes)))
        for v in victims:
            online[v] = 0
            sim.crash(addresses[v])
        reachable_before = _components(topo, online)
        meeting = _Meeting(sim, topo, cores, online, params, start)
        suspicion = _Suspicion(sim, topo, cores, online, params, start)
        if params.suspect_ptos > 0:
            sim.on_undeliverable = suspicion.undeliverable
        low, high = params.detect_delay_s
        for v in victims:
            for s in sorted(topo.neighbours[v]):
                if online[s]:
                    sim.call_at(start + rng.uniform(low, high), meeting.detected, s, v)
        per_size = params.crash_messages_per_size
        observe = params.crash_observe_s
    else:
        per_size = params.messages_per_size
        observe = params.settle_s
        reachable_before = None
        meeting = None
        suspicion = None
    live = [i for i in range(nodes) if online[i]]
    count = per_size * len(params.sizes)
    for j in range(count):
        size = params.sizes[j % len(params.sizes)]
        t = start + j * params.publish_interval_s
        publisher = rng.choice(live)
        msg = probe.new_message(publisher, size, t)
        payload = make_payload(msg, size)
        sim.call_at(t, _publish, sim, cores[publisher], addresses[publisher], payload)
    bytes0, payload0 = _total_bytes_sent(sim), probe.payload_sent
    end = start + (count - 1) * params.publish_interval_s + observe
    sim.run_until(end)
    sent = _total_bytes_sent(sim) - bytes0
    payload = probe.payload_sent - payload0

    mesh_degrees = None
    if live and hasattr(cores[live[0]], "mesh_degree"):
        mesh_degrees = [cores[i].mesh_degree() for i in live]  # type: ignore[attr-defined]
    data = _measure(probe, online, end, params, _components(topo, online))
    if reachable_before is not None:
        data["extra"] = {
            # the ceiling without new sessions: receivers with a path of live sessions
            # from the publisher right after the crash
            "reachable_before_meeting": _reachable(probe, online, reachable_before),
            **(meeting.figures() if meeting is not None else {}),
            "suspected_sessions": suspicion.suspected if suspicion is not None else 0,
        }
    return RunData(
        nodes=nodes,
        seed=seed,
        crash_fraction=crash_fraction,
        online=len(live),
        messages=count,
        control_bytes=sent - payload,
        payload_bytes=payload,
        bytes_sent=sent,
        wall_s=time.perf_counter() - wall0,
        events=sim.events_processed,
        degrees=degrees,
        mesh_degrees=mesh_degrees,
        **data,
    )


def _publish(sim: Simulator, core: GossipCore, addr: Address, payload: bytes) -> None:
    core.publish(payload, sim.now)
    sim.touch(addr)


@dataclass(slots=True)
class _Round:
    """One survivor's meeting round: the members it will dial, and how far it got."""

    queue: deque[int]
    have: int  # sessions it believed live when the lookup answered
    new: int = 0  # sessions this round made
    inflight: int = 0
    dials: int = 0  # dials started (a stagger timer acts only if none started since)


@dataclass(eq=False)
class _AfterCrash:
    """What the models of survivors' reactions to a crash share: the network, its
    cores, who is online, the harness parameters and when the crash was."""

    sim: Simulator
    topo: Topology
    cores: list[GossipCore]
    online: bytearray
    p: HarnessParams
    crash_at: float

    def __post_init__(self) -> None:
        """Each model sets up its own state here."""


class _Suspicion(_AfterCrash):
    """Survivors' transports noticing that what they send a crashed peer goes
    unacknowledged (see :class:`HarnessParams`, ``suspect_*``)."""

    def __post_init__(self) -> None:
        self.pairs: set[tuple[int, int]] = set()  # (sender, crashed peer) already timed
        self.suspected = 0

    def undeliverable(self, src: Address, dst: Address, now: float) -> None:
        index_of = self.topo.index_of
        s, d = index_of[src], index_of[dst]
        if not self.online[s] or (s, d) in self.pairs:
            return
        # The first unacknowledged datagram since the crash starts the clock: later
        # sends do not restart it (no acknowledgement came in between).
        self.pairs.add((s, d))
        lat = self.sim.latency
        one_way = lat.one_way(src, dst)
        rtt = one_way + lat.one_way(dst, src)
        pto = 2 * rtt + 0.025
        sent = now - one_way
        at = sent + max(self.p.suspect_ptos * pto, self.p.suspect_min_s)
        self.sim.call_at(max(now, at), self._suspect, s, d)

    def _suspect(self, s: int, d: int) -> None:
        addr = self.topo.addresses[s]
        self.suspected += 1
        self.cores[s].peer_suspect(self.topo.addresses[d], self.sim.now)
        self.sim.touch(addr)


class _Meeting(_AfterCrash):
    """Survivors noticing lost sessions and meeting members through presence records
    (see :class:`HarnessParams`, ``meet_*``): what a node does by spec/06 COM-R68."""

    def __post_init__(self) -> None:
        sim, topo, params = self.sim, self.topo, self.p
        self.rng = sim.child_rng("meeting")
        n = len(self.cores)
        # sessions each node believes live: every session until its loss is detected
        self.believed = [len(topo.neighbours[i]) for i in range(n)]
        self.phase = [self.rng.uniform(0.0, params.presence_interval_s) for _ in range(n)]
        self.records = self.rng.sample(range(n), min(params.meet_records, n))
        self.busy = bytearray(n)
        self.again = bytearray(n)
        self.unreached: list[set[int]] = [set() for _ in range(n)]
        self.lookups = 0
        self.dials = 0
        self.met = 0
        self.first_met: float | None = None
        self.last_met: float | None = None

    def figures(self) -> dict[str, Any]:
        return {
            "meet_lookups": self.lookups,
            "meet_dials": self.dials,
            "meet_sessions": self.met,
            "meet_first_s": None if self.first_met is None else self.first_met - self.crash_at,
            "meet_last_s": None if self.last_met is None else self.last_met - self.crash_at,
        }

    def detected(self, s: int, dead: int) -> None:
        """``s`` notices that its session with ``dead`` is gone."""
        sim = self.sim
        self.cores[s].peer_down(self.topo.addresses[dead], sim.now)
        sim.touch(self.topo.addresses[s])
        self.believed[s] -= 1
        if self.p.meet_target <= 0 or self.believed[s] >= self.p.meet_target:
            return
        if self.busy[s]:
            self.again[s] = 1
            return
        self.busy[s] = 1
        self._round(s)

    def _round(self, s: int) -> None:
        self.again[s] = 0
        lookup = self.rng.uniform(*self.p.meet_lookup_s)
        self.sim.call_at(self.sim.now + self.p.meet_delay_s + lookup, self._lookup_done, s)

    def _published(self, j: int, at: float) -> float:
        """When ``j`` last republished its presence record before ``at``."""
        if not self.online[j]:
            at = self.crash_at
        interval = self.p.presence_interval_s
        return at - ((at - self.phase[j]) % interval)

    def _lookup_done(self, s: int) -> None:
        self.lookups += 1
        now = self.sim.now
        neighbours = self.topo.neighbours[s]
        order = sorted(self.records, key=lambda j: (-self._published(j, now), j))
        queue = deque(
            j for j in order if j != s and j not in neighbours and j not in self.unreached[s]
        )
        state = _Round(queue, self.believed[s])
        if not self._next_dial(s, state):
            self._round_done(s)

    def _stagger(self, s: int, state: _Round, dials: int) -> None:
        if state.dials == dials:  # no answer and no new dial since: one more
            self._next_dial(s, state)

    def _next_dial(self, s: int, state: _Round) -> bool:
        queue = state.queue
        while queue and state.have + state.new < self.p.meet_target:
            j = queue.popleft()
            if j in self.topo.neighbours[s]:  # it dialled us meanwhile
                continue
            self.dials += 1
            state.inflight += 1
            state.dials += 1
            now = self.sim.now
            self.sim.call_at(now + self.p.meet_stagger_s, self._stagger, s, state, state.dials)
            if self.online[j]:
                lat = self.sim.latency
                a, b = self.topo.addresses[s], self.topo.addresses[j]
                rtt = lat.one_way(a, b) + lat.one_way(b, a)
                self.sim.call_at(now + self.p.handshake_rtts * rtt, self._dialled, s, j, state)
            else:
                self.sim.call_at(now + self.p.meet_dial_fail_s, self._dialled, s, j, state)
            return True
        return False

    def _dialled(self, s: int, j: int, state: _Round) -> None:
        state.inflight -= 1
        if not self.online[j]:
            self.unreached[s].add(j)
        elif j not in self.topo.neighbours[s]:
            now = self.sim.now
            self.topo.connect(s, j)
            a, b = self.topo.addresses[s], self.topo.addresses[j]
            self.cores[s].peer_up(b, now, True)
            self.cores[j].peer_up(a, now, False)
            self.sim.touch(a)
            self.sim.touch(b)
            self.believed[s] += 1
            self.believed[j] += 1
            state.new += 1
            self.met += 1
            self.first_met = now if self.first_met is None else self.first_met
            self.last_met = now
        if not self._next_dial(s, state) and state.inflight == 0:
            self._round_done(s)

    def _round_done(self, s: int) -> None:
        if self.again[s] and self.believed[s] < self.p.meet_target:
            self._round(s)
        else:
            self.busy[s] = 0
            self.again[s] = 0


def _components(topo: Topology, online: bytearray) -> list[int]:
    """Connected component of every online node in the live session graph (-1: offline)."""
    label = [-1] * len(online)
    for root in range(len(online)):
        if not online[root] or label[root] >= 0:
            continue
        label[root] = root
        stack = [root]
        while stack:
            v = stack.pop()
            for w in topo.neighbours[v]:
                if online[w] and label[w] < 0:
                    label[w] = root
                    stack.append(w)
    return label


def _reachable(probe: Probe, online: bytearray, component: list[int]) -> list[float]:
    """Per message: the fraction of its receivers (online members but its publisher) in
    the publisher's connected component of live sessions."""
    sizes: dict[int, int] = {}
    for c in component:
        if c >= 0:
            sizes[c] = sizes.get(c, 0) + 1
    receivers = max(1, sum(online) - 1)  # the publisher is online
    return [(sizes[component[publisher]] - 1) / receivers for publisher, _, _ in probe.messages]


def _measure(
    probe: Probe, online: bytearray, end: float, params: HarnessParams, component: list[int]
) -> dict[str, Any]:
    latencies: list[float] = []
    hops: list[int] = []
    copies: dict[int, int] = {}
    delivered_by_size: dict[int, int] = {}
    coverage_at: dict[float, list[float]] = {t: [] for t in params.coverage_times_s}
    by_push: list[float] = []
    by_push_by_size: dict[int, list[float]] = {}
    by_eager: list[float] = []
    by_eager_by_size: dict[int, list[float]] = {}
    expected = 0
    deliveries = 0
    live = [i for i in range(probe.n) if online[i]]
    missing = bytearray(probe.n)  # online members lacking some message
    for m, (publisher, size, t_pub) in enumerate(probe.messages):
        row = probe.first[m]
        hop_row = probe.hops[m]
        push_row = probe.push_reached[m]
        eager_row = probe.eager_reached[m]
        receivers = [v for v in live if v != publisher]
        got = []
        for v in receivers:
            t = row[v]
            if t == INF:
                missing[v] = 1
            else:
                got.append(t - t_pub)
                if hop_row[v] >= 0:
                    hops.append(hop_row[v])
        latencies.extend(x * 1000.0 for x in got)
        n_recv = len(receivers) or 1
        expected += len(receivers)
        deliveries += len(got)
        copies[size] = copies.get(size, 0) + probe.copies[m]
        delivered_by_size[size] = delivered_by_size.get(size, 0) + len(got)
        by_push.append(sum(push_row[v] for v in receivers) / n_recv)
        by_push_by_size.setdefault(size, []).append(by_push[-1])
        by_eager.append(sum(eager_row[v] for v in receivers) / n_recv)
        by_eager_by_size.setdefault(size, []).append(by_eager[-1])
        for t, fractions in coverage_at.items():
            if t_pub + t <= end + 1e-9:
                fractions.append(sum(1 for x in got if x <= t) / n_recv)
    return {
        "latencies_ms": latencies,
        "hops": hops,
        "deliveries": deliveries,
        "expected": expected,
        "nodes_with_all": sum(1 for v in live if not missing[v]),
        "copies_by_size": copies,
        "deliveries_by_size": delivered_by_size,
        "coverage_at": coverage_at,
        "by_push": by_push,
        "by_push_by_size": by_push_by_size,
        "by_eager": by_eager,
        "by_eager_by_size": by_eager_by_size,
        "reachable": _reachable(probe, online, component),
    }


# --------------------------------------------------------------------------- summary


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def scenario_name(crash_fraction: float) -> str:
    return "steady" if crash_fraction == 0 else f"crash{round(crash_fraction * 100)}"


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _spread(values: Sequence[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": statistics.fmean(values), "max": max(values)}


def summarize(runs: list[RunData], params: HarnessParams | None = None) -> dict[str, Any]:
    """The issue's figures for one scenario, pooled over the runs (one per seed).

    ``coverage``: online members holding every message / online members.
    ``delivery_ratio``: delivered (message, member) pairs / expected pairs.
    Latencies and hops are over every first receipt (publisher excluded) at an
    online member; ``copies_per_delivery`` = full copies received / first
    receipts, per payload size; ``control_bytes_per_msg`` = every byte sent
    while the messages spread (from the first publish to the end of the run)
    minus the payload bytes of full copies, per published message (network
    total), and per node in ``control_bytes_per_msg_per_node``.
    """
    params = params or HarnessParams()
    first = runs[0]
    latencies = [x for r in runs for x in r.latencies_ms]
    hops = [h for r in runs for h in r.hops]
    messages = sum(r.messages for r in runs)
    online = sum(r.online for r in runs)
    sizes = sorted({s for r in runs for s in r.copies_by_size})
    copies = {}
    for s in sizes:
        got = sum(r.deliveries_by_size.get(s, 0) for r in runs)
        sent = sum(r.copies_by_size.get(s, 0) for r in runs)
        copies[str(s)] = sent / got if got else None
    over_time = {}
    over_time_min = {}
    for t in params.coverage_times_s:
        fractions = [f for r in runs for f in r.coverage_at.get(t, [])]
        if fractions:
            over_time[f"{t:g}"] = statistics.fmean(fractions)
            over_time_min[f"{t:g}"] = min(fractions)
    two = 2 * params.heartbeat_s
    after_two = [f for r in runs for f in r.coverage_at.get(two, [])]
    control = sum(r.control_bytes for r in runs)
    return {
        "name": scenario_name(first.crash_fraction),
        "nodes": first.nodes,
        "crash_fraction": first.crash_fraction,
        "seeds": [r.seed for r in runs],
        "messages": messages,
        "online": online / len(runs),
        "coverage": sum(r.nodes_with_all for r in runs) / online if online else None,
        "delivery_ratio": (sum(r.deliveries for r in runs) / max(1, sum(r.expected for r in runs))),
        "hops_max": max(hops) if hops else None,
        "hops_p50": percentile([float(h) for h in hops], 50),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p99": percentile(latencies, 99),
        "copies_per_delivery": copies,
        "control_bytes_per_msg": control / messages if messages else None,
        "control_bytes_per_msg_per_node": control / messages / (online / len(runs))
        if messages and online
        else None,
        "payload_bytes_per_msg": sum(r.payload_bytes for r in runs) / messages
        if messages
        else None,
        "coverage_over_time": over_time,
        "coverage_over_time_min": over_time_min,
        "coverage_by_push": _mean([f for r in runs for f in r.by_push]),
        "coverage_by_push_by_size": {
            str(s): _mean([f for r in runs for f in r.by_push_by_size.get(s, [])]) for s in sizes
        },
        # pure eager push: every link of the path a PUBLISH (no pull at all)
        "coverage_by_eager_push": _mean([f for r in runs for f in r.by_eager]),
        "coverage_by_eager_push_by_size": {
            str(s): _mean([f for r in runs for f in r.by_eager_by_size.get(s, [])]) for s in sizes
        },
        "coverage_after_two_heartbeats": _mean(after_two),
        # the ceiling of any protocol without new sessions: receivers with a path of live
        # sessions from the publisher (below 1 only when a crash cut survivors off)
        "reachable": _mean([f for r in runs for f in r.reachable]),
        **_meeting_summary(runs),
        "detect_delay_s": list(params.detect_delay_s) if first.crash_fraction else None,
        "sessions_per_node": _spread([d for r in runs for d in r.degrees]),
        "mesh_degree": _spread([d for r in runs for d in (r.mesh_degrees or [])])
        if any(r.mesh_degrees for r in runs)
        else None,
        "wall_s": sum(r.wall_s for r in runs),
        "events": sum(r.events for r in runs),
    }


def _meeting_summary(runs: list[RunData]) -> dict[str, Any]:
    """Crash scenarios: the ceiling before survivors met anyone new, and the meeting."""
    if not any("reachable_before_meeting" in r.extra for r in runs):
        return {}
    firsts = [r.extra["meet_first_s"] for r in runs if r.extra.get("meet_first_s") is not None]
    lasts = [r.extra["meet_last_s"] for r in runs if r.extra.get("meet_last_s") is not None]
    return {
        "reachable_before_meeting": _mean(
            [f for r in runs for f in r.extra.get("reachable_before_meeting", [])]
        ),
        "meeting": {
            "sessions_per_run": _mean([r.extra["meet_sessions"] for r in runs]),
            "dials_per_run": _mean([r.extra["meet_dials"] for r in runs]),
            "lookups_per_run": _mean([r.extra["meet_lookups"] for r in runs]),
            "first_session_s": min(firsts) if firsts else None,
            "last_session_s": max(lasts) if lasts else None,
        },
        # sessions survivors found suspect before they timed out (spec/02 3.5)
        "suspected_sessions_per_run": _mean([r.extra["suspected_sessions"] for r in runs]),
    }


_WORKER_FACTORY: list[CoreFactory] = []  # the factory forked workers run (see run_model)


def _run_in_worker(nodes: int, seed: int, fraction: float, params: HarnessParams) -> RunData:
    return run_scenario(_WORKER_FACTORY[0], nodes, seed, fraction, params)


def run_model(
    factory: CoreFactory,
    nodes: int,
    seeds: Sequence[int],
    crash_fractions: Sequence[float] = CRASH_FRACTIONS,
    params: HarnessParams | None = None,
    log: Any = None,
    label: str = "",
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Every scenario (one per crash fraction, ``steady`` for 0) over ``seeds``, summarized.

    ``jobs`` > 1 runs the (scenario, seed) runs in that many forked processes; a run
    depends on its seed only, so the figures are the same as with one."""
    params = params or HarnessParams()
    tasks = [(fraction, seed) for fraction in crash_fractions for seed in seeds]
    done: dict[tuple[float, int], RunData] = {}

    def report(fraction: float, seed: int, run: RunData) -> None:
        done[(fraction, seed)] = run
        if log is not None:
            print(
                f"  {label or 'model'} n={nodes} {scenario_name(fraction)} seed={seed}: "
                f"{run.wall_s:.1f} s wall, {run.events} events, "
                f"coverage {run.nodes_with_all / max(1, run.online):.4f}",
                file=log,
                flush=True,
            )

    if jobs > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        _WORKER_FACTORY[:] = [factory]  # inherited by the forked workers, never pickled
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context) as pool:
                futures = {
                    pool.submit(_run_in_worker, nodes, seed, fraction, params): (fraction, seed)
                    for fraction, seed in tasks
                }
                for future in as_completed(futures):
                    report(*futures[future], future.result())
        finally:
            _WORKER_FACTORY.clear()
    else:
        for fraction, seed in tasks:
            report(fraction, seed, run_scenario(factory, nodes, seed, fraction, params))
    return [
        summarize([done[(fraction, seed)] for seed in seeds], params)
        for fraction in crash_fractions
    ]


def run_baselines(
    nodes: int,
    seeds: Sequence[int],
    crash_fractions: Sequence[float] = CRASH_FRACTIONS,
    params: HarnessParams | None = None,
    models: Sequence[str] = tuple(MODELS),
    log: Any = None,
    jobs: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """``{model: [scenario, ...]}`` for the baselines named in ``models``."""
    return {
        name: run_model(MODELS[name], nodes, seeds, crash_fractions, params, log, name, jobs)
        for name in models
    }


# --------------------------------------------------------------------------- command line


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_models", description=doc)
    parser.add_argument("--nodes", default=None, help="comma-separated sizes (default 1000)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per size (default 1)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument(
        "--crash", default=None, help="comma-separated crash fractions (default 0,0.2,0.5,0.8)"
    )
    parser.add_argument("--quick", action="store_true", help="200 nodes, short phases")
    parser.add_argument("--json", metavar="PATH", help="write the report here ('-': stdout)")
    args = parser.parse_args(argv)
    params = HarnessParams.quick() if args.quick else HarnessParams()
    sizes = [int(s) for s in (args.nodes or ("200" if args.quick else "1000")).split(",")]
    crash = [float(c) for c in args.crash.split(",")] if args.crash is not None else CRASH_FRACTIONS
    models = [m for m in args.models.split(",") if m]
    seeds = list(range(1, 1 + args.seeds))
    log = sys.stderr
    report: dict[str, Any] = {"benchmark": "gossip_models", "sizes": {}}
    for n in sizes:
        report["sizes"][str(n)] = run_baselines(n, seeds, crash, params, models, log)
        for model, scenarios in report["sizes"][str(n)].items():
            for s in scenarios:
                keys = (
                    "coverage",
                    "hops_max",
                    "latency_ms_p50",
                    "latency_ms_p99",
                    "copies_per_delivery",
                    "control_bytes_per_msg",
                    "coverage_by_push",
                    "coverage_after_two_heartbeats",
                )
                figures = ", ".join(f"{k} {_fmt(s[k])}" for k in keys)
                print(f"{model:<10} n={n} {s['name']:<8} {figures}", file=log)
    report["params"] = {
        "harness": params.as_dict(),
        "gossipsub": GOSSIPSUB_V11.as_dict(),
        "naive_push": {"fanout": 6, "seen_ttl_s": 120.0},
        "seeds": seeds,
    }
    report["environment"] = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
