"""The DHT on a running node: ``proto.dht.DhtNode`` driven by the endpoint's control datagrams.

Thin glue in aioquic's protocol style: control datagrams from the node's one
UDP socket go into the core, whatever the core wants sent goes out through the
same socket, and one timer is re-armed after every interaction. Lookups are
exposed as coroutines that resolve when the core reports them done.

Warm restart: the routing table's contacts are saved as JSON in the data
directory (on ``close()`` and every few minutes); the next start bootstraps
from them as well as from the configured seeds. They are only addresses to
ask: every contact proves its ID again before it re-enters the table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from starling.proto.dht import DhtConfig, DhtNode, LookupDone, ObservedAddress, PutDone, Record
from starling.proto.identity import PrivateKey

from .endpoint import Address, Endpoint

log = logging.getLogger("starling.dht")

TABLE_FILE = "dht-table.json"
SAVE_INTERVAL = 300.0


class DhtService:
    """A node's DHT: bootstrap, lookups, records, persistence."""

    def __init__(
        self,
        identity: PrivateKey,
        endpoint: Endpoint,
        config: DhtConfig | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.core = DhtNode(identity, endpoint.network, os.urandom, self._loop.time(), config)
        self.state_dir = state_dir
        self.observed: dict[bytes, Address] = {}
        # Called with (reporter ID, reporter address, observed address) for every report
        # (spec/04, 4.1): the host's Reachability core listens here.
        self.on_observed: Callable[[bytes, Address, Address], None] | None = None
        self._source: Address | None = None  # the datagram being processed came from here
        self._waiters: dict[int, asyncio.Future[LookupDone | PutDone]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._save_task: asyncio.Task[None] | None = None
        endpoint.on_control = self._on_datagram

    @property
    def node_id(self) -> bytes:
        return self.core.node_id

    # -- lifecycle -----------------------------------------------------------------------

    async def bootstrap(self, seeds: Sequence[Address] = ()) -> LookupDone:
        """Join through ``seeds`` and the contacts saved by the last run."""
        known = list(dict.fromkeys([*seeds, *self.saved_contacts()]))
        result = await self._wait(self.core.bootstrap(known, self._loop.time()))
        assert isinstance(result, LookupDone)
        if self.state_dir is not None and self._save_task is None:
            self._save_task = self._loop.create_task(self._save_periodically())
        return result

    def saved_contacts(self) -> list[Address]:
        if self.state_dir is None:
            return []
        try:
            data = json.loads((self.state_dir / TABLE_FILE).read_text())
            return [(str(c["ip"]), int(c["port"])) for c in data["contacts"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", TABLE_FILE, exc)
            return []

    def save(self) -> None:
        """Write the routing table's contacts (atomically) for the next start."""
        if self.state_dir is None:
            return
        contacts = sorted(self.core.table.contacts(), key=lambda c: -c.last_seen)
        data = {
            "version": 1,
            "contacts": [
                {"id": c.node_id.hex(), "ip": c.addr[0], "port": c.addr[1]} for c in contacts
            ],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{TABLE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_dir / TABLE_FILE)

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            self.save()

    def close(self) -> None:
        if self._save_task is not None:
            self._save_task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self.save()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()

    # -- operations ----------------------------------------------------------------------

    async def find_node(self, target: bytes, disjoint: int = 1) -> LookupDone:
        result = await self._wait(self.core.find_node(target, self._loop.time(), disjoint))
        assert isinstance(result, LookupDone)
        return result

    async def get(self, key: bytes, disjoint: int = 1) -> list[Record]:
        """Every valid record stored under ``key``, newest sequence first per signer."""
        result = await self._wait(self.core.get(key, self._loop.time(), disjoint))
        assert isinstance(result, LookupDone)
        return result.records

    async def put(self, record: Record) -> PutDone:
        result = await self._wait(self.core.put(record, self._loop.time()))
        assert isinstance(result, PutDone)
        return result

    async def publish(self, record: Record) -> PutDone:
        """Store ``record`` and keep republishing it before it expires."""
        result = await self._wait(self.core.publish(record, self._loop.time()))
        assert isinstance(result, PutDone)
        return result

    # -- glue ----------------------------------------------------------------------------

    def _wait(self, lookup_id: int) -> asyncio.Future[LookupDone | PutDone]:
        future: asyncio.Future[LookupDone | PutDone] = self._loop.create_future()
        self._waiters[lookup_id] = future
        self._pump()  # the core may have finished at once (empty table)
        return future

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        try:
            self.core.receive_datagram(data, addr, self._loop.time())
        except Exception:  # a bug must not take the node's socket down with it
            log.exception("DHT core failed on a datagram from %s", addr)
        # An ObservedAddress drained now came from the node at ``addr`` (spec/04, 4.1).
        self._source = addr
        try:
            self._pump()
        finally:
            self._source = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._pump()

    def _pump(self) -> None:
        now = self._loop.time()
        for data, addr in self.core.datagrams_to_send(now):
            self.endpoint.sendto(data, addr)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, ObservedAddress):
                self.observed[event.reporter] = event.addr
                if self.on_observed is not None and self._source is not None:
                    self.on_observed(event.reporter, self._source, event.addr)
                continue
            waiter = self._waiters.pop(event.lookup_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        at = self.core.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if at is None else self._loop.call_at(at, self._on_timer)
            self._timer_at = at

    def stats(self) -> dict[str, int]:
        return dict(self.core.stats)

    @property
    def client_mode(self) -> bool:
        return self.core.config.client_mode

    @client_mode.setter
    def client_mode(self, value: bool) -> None:
        """Serve the DHT (False) or only ask (True); spec/04 NAT-R16 decides which."""
        self.core.config.client_mode = value


async def start_dht(
    identity: PrivateKey,
    endpoint: Endpoint,
    seeds: Sequence[Address] = (),
    config: DhtConfig | None = None,
    state_dir: Path | None = None,
) -> DhtService:
    """A DHT service on ``endpoint``, bootstrapped (if there is anyone to ask)."""
    service = DhtService(identity, endpoint, config, state_dir)
    if seeds or service.saved_contacts():
        await service.bootstrap(seeds)
    return service
