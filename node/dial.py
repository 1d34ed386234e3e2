"""Dialling a peer by its ID (spec/04 section 8.2): resolve its record, race its paths.

``connect_peer(node, peer_id, record)`` is what ``Node.connect(peer_id)`` runs:
an open session with the peer is reused; otherwise the peer record (given, or
from ``node.resolver``) names direct addresses and relays. Direct addresses
are tried first; when no handshake completed within ``direct_head_start``
(250 ms) or the record has none, circuits through its relays are tried too,
vouchers that verified first and failed ones never [NAT-R60]. Whichever
session completes first is kept, the others are closed. The winner learns the
peer's relays, so its path layer can open a new circuit when a direct path
dies (node/path.py).

``attach_dht(node, dht)`` is the thin resolver: peer records from the DHT
(the newest of the peer's own), and the DHT's observed addresses as punch
candidates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from starling.proto.dht import KIND_PEER, Record
from starling.proto.errors import ErrorCode, NatError
from starling.proto.identity import PeerId
from starling.proto.nat import relays_of

from .endpoint import Address

if TYPE_CHECKING:
    from .dht import DhtService
    from .session import Node, Session

log = logging.getLogger("starling.dial")

__all__ = ["attach_dht", "connect_peer", "dial_plan"]


def dial_plan(record: Record, now_unix: float) -> tuple[list[Address], list[tuple[bytes, Address]]]:
    """The direct addresses and relays (ID, address) of a peer record, in dialling order:
    relays whose voucher verified, then those without one; failed vouchers are left out."""
    relays = relays_of(record, now_unix)
    checked = [(r.relay, r.address) for r in relays if r.voucher is not None]
    unchecked = [(r.relay, r.address) for r in relays if r.voucher is None and r.error is None]
    return record.addresses(), checked + unchecked


async def connect_peer(
    node: Node, peer_id: PeerId, record: Record | None = None, timeout: float | None = None
) -> Session:
    """A session with ``peer_id`` over the first path that works (spec/04, 8.2)."""
    existing = node.session_with(peer_id)
    if existing is not None:
        return existing
    if record is None:
        if node.resolver is None:
            raise LookupError("no resolver: give the peer record, or attach a DHT")
        record = await node.resolver(peer_id)
        if record is None:
            raise LookupError(f"no peer record for {peer_id}")
    if record.kind != KIND_PEER or record.signer_id != peer_id.raw:
        raise LookupError(f"not a peer record of {peer_id}")
    addresses, relays = dial_plan(record, time.time())
    winner = await dial_first(node, peer_id, addresses, relays, timeout)
    winner.path.relays = relays
    return winner


async def dial_first(
    node: Node,
    peer_id: PeerId,
    addresses: Sequence[Address],
    relays: Sequence[tuple[bytes, Address]],
    timeout: float | None = None,
    later: Sequence[Callable[[], Coroutine[Any, Any, Session]]] = (),
) -> Session:
    """The first session with ``peer_id`` that comes up: every direct address at once;
    after the head start (or at once when they have all failed), every relay and the
    ``later`` attempts too. Losers that came up anyway are closed: one session per peer
    (spec/04, 8.2)."""
    loop = asyncio.get_running_loop()
    attempts: list[asyncio.Task[Session]] = [
        loop.create_task(node.connect(addr, peer_id=peer_id, timeout=timeout)) for addr in addresses
    ]

    async def through(relay: bytes, address: Address) -> Session:
        if node.relay is None:
            raise NatError(ErrorCode.NAT_RELAY_NOT_SERVING, "this node has no relay service")
        circuit = await node.relay.open_circuit([(relay, address)], peer_id.raw)
        try:
            return await node.connect_via(circuit, peer_id, timeout)
        except BaseException:
            circuit.close()
            raise

    errors: list[BaseException] = []
    winner: Session | None = None
    pending: set[asyncio.Task[Session]] = set(attempts)

    async def first(deadline: float | None) -> Session | None:
        nonlocal pending
        while pending:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return None
            for task in done:
                error = task.exception()
                if error is None:
                    return task.result()
                errors.append(error)
        return None

    try:
        if attempts:
            winner = await first(loop.time() + node.config.direct_head_start)
        if winner is None:
            starts: list[Callable[[], Coroutine[Any, Any, Session]]] = [
                functools.partial(through, r, a) for r, a in relays
            ]
            for start in [*starts, *later]:
                task = loop.create_task(start())
                attempts.append(task)
                pending.add(task)
            winner = await first(None)
    finally:
        for task in attempts:
            if not task.done():
                task.cancel()
        for task in attempts:
            if (
                task.done()
                and not task.cancelled()
                and task.exception() is None
                and task.result() is not winner
            ):
                await task.result().close(ErrorCode.NO_ERROR, "another path won")
    if winner is None:
        raise errors[-1] if errors else LookupError(f"{peer_id} has no address and no relay")
    return winner


def attach_dht(node: Node, dht: DhtService) -> None:
    """Resolve peer records through ``dht``; its observed addresses become candidates."""

    async def resolve(peer_id: PeerId) -> Record | None:
        records = [r for r in await dht.get(peer_id.raw) if r.signer_id == peer_id.raw]
        return max(records, key=lambda r: r.seq, default=None)

    node.resolver = resolve
    node.reported = lambda: list(dict.fromkeys(dht.observed.values()))
