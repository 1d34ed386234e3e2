"""The composed node (spec/04 sections 4, 8 and 9): one ``Host`` that decides by itself.

Theory of operation
-------------------
A ``Host`` is what an application starts: a ``Node`` (sessions on one UDP socket),
its ``DhtService``, ``RelayService`` and ``GossipService``, and the glue that turns
the NAT traversal pieces into behaviour. Nothing here makes a protocol decision; the
sans-IO ``proto.nat.Reachability`` does, and this module carries out its verdicts:

* **Reports** (4.1). Every ID proof the DHT receives says where the prover saw us;
  the DHT service hands (reporter, reporter address, observed address) to the
  ``Reachability`` core, which confirms an address once 3 distinct reporters name it
  [NAT-R10] and classifies the NAT's mapping [NAT-R12].
* **Dial-backs** (4.4). While the verdict is not settled (and every 30 minutes),
  the host asks DHT servers it knows, at most 3 at a time, for a dial-back to its
  confirmed address, or, with none confirmed, to the address that helper observed:
  only ever our own observed IP [NAT-R13]. As a helper it answers from a second UDP
  socket, never the session's [NAT-R14], and only while public.
* **Modes** (4.5). PUBLIC: the DHT serves requests and the relay accepts
  reservations. PRIVATE or UNKNOWN: DHT client mode, no relaying [NAT-R16], and a
  reservation is held on up to ``max_relays`` public relays (seeds first, then DHT
  servers), renewed before half its lifetime [NAT-R30]. ``HostConfig.public`` forces
  either verdict (a seed on a known public address; tests on loopback).
* **The peer record** (9, [NAT-R71]). Confirmed addresses (and, when public, the
  specific addresses the socket is bound to) plus the relays with their vouchers.
  It is republished as soon as any of these changes, its TTL never outlasting a
  voucher; the DHT republishes an unchanged record at half its TTL.
* **Dialling** (8.2). ``connect(peer_id)`` resolves the record through the DHT and
  races direct addresses and relays (``node/dial.py``); a relayed session punches
  (``node/path.py``). Keepalives: QUIC's every 10 s and path probes every 15 s stay
  below the ~30 s NAT mapping lifetime [NAT-R52].

On loopback every peer sees 127.0.0.1 and loopback reporters count per peer ID
(4.2), so a host there can confirm its address and pass a dial-back from a helper's
second socket: it reads PUBLIC. Tests that want a host behind a relay force
``public=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starling.proto.dht import DhtConfig, Record
from starling.proto.errors import ErrorCode, NatError, StarlingError
from starling.proto.identity import PeerId, PrivateKey
from starling.proto.nat import (
    DIAL_BACK_PROBE,
    DIAL_BACK_PROTOCOL,
    FRAME_LIMITS,
    AddressConfirmed,
    AddressRetracted,
    DialBackDone,
    DialBackServer,
    Reachability,
    ReachabilityChanged,
    ReachabilityConfig,
    RelayConfig,
    RelayEntry,
    Status,
    format_bootstrap,
    make_peer_record,
    parse_bootstrap,
    peek_control_type,
)
from starling.proto.network import MAIN_NETWORK_ID

from .dht import DhtService
from .dial import attach_dht, connect_peer
from .endpoint import Address
from .gossip import GossipService
from .relay import RelayService
from .session import Node, NodeConfig, Session, SessionClosed, Stream, StreamClosed

log = logging.getLogger("starling.host")

__all__ = ["Host", "HostConfig", "parse_bootstrap"]

DIAL_BACK_FRAME_LIMIT = FRAME_LIMITS[DIAL_BACK_PROTOCOL]
DIAL_BACK_EVERY = 1800.0  # ask again while an address stays confirmed (4.5)
HELPERS_PER_ROUND = 3


@dataclass
class HostConfig:
    """What a host needs; everything but the identity has a default."""

    identity: PrivateKey
    network: bytes = MAIN_NETWORK_ID
    host: str = "0.0.0.0"
    port: int = 0
    # Bootstrap strings (``<peer ID>@ip:port``) or bare (ip, port) addresses.
    seeds: list[str | Address] = field(default_factory=list)
    data_dir: Path | None = None  # DHT contacts are saved there
    public: bool | None = None  # None: decided by reachability; True/False: forced
    relay: RelayConfig | None = None  # our limits as a relay
    # Direct addresses for the peer record instead of the automatic ones (a forwarded
    # port, say); [] advertises relays only. None: confirmed addresses, and our socket's
    # specific addresses when ``public`` is True.
    advertise: list[Address] | None = None
    reachability: ReachabilityConfig | None = None
    node: NodeConfig | None = None  # session knobs; host, port and network come from here
    dht: DhtConfig | None = None
    max_relays: int = 2  # reservations a private host holds (9.1: at most 3)
    record_ttl: int = 3600
    check_interval: float = 5.0  # the upkeep runs at least this often (and on every change)
    republish_delay: float = 0.2  # gather changes that come together into one record


def _seed(seed: str | Address) -> tuple[PeerId | None, list[Address]]:
    if isinstance(seed, str):
        return parse_bootstrap(seed)
    return None, [(str(ipaddress.ip_address(seed[0])), int(seed[1]))]


def _outward_ip(family: int) -> str | None:
    """The source address the host's routes pick toward the Internet (no packet sent)."""
    probe = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
        except OSError:
            return None
        return str(sock.getsockname()[0])


def _log_bootstrap_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("DHT bootstrap failed: %s", task.exception())


class Host:
    """A node that finds out whether it is reachable and acts on it (module docstring)."""

    def __init__(self, config: HostConfig, node: Node) -> None:
        self.config = config
        self.node = node
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        dht_config = replace(config.dht) if config.dht is not None else DhtConfig()
        dht_config.client_mode = config.public is not True
        self.dht = DhtService(node.identity, node.endpoint, dht_config, config.data_dir)
        attach_dht(node, self.dht)
        relay_config = replace(config.relay) if config.relay is not None else RelayConfig()
        relay_config.serving = config.public is True
        self.relay = RelayService(node, serve=True, config=relay_config)
        self.gossip = GossipService(node)
        self.reachability = Reachability(os.urandom, now, config.reachability)
        self.dial_back = DialBackServer(node.config.network_id, now)
        self.dial_back.config.serving = config.public is True
        self.seeds: list[tuple[PeerId | None, list[Address]]] = [_seed(s) for s in config.seeds]
        self.record: Record | None = None
        self.started_at = now  # loop time; with ``verdict_at``, how long deciding took
        self.verdict_at: float | None = None  # when reachability last changed
        self.stats: dict[str, int] = {}
        self._record_key: object = None
        self._seq = 0
        self._keepers: dict[bytes, tuple[Address, asyncio.Task[None], float]] = {}
        self._failed_relays: dict[bytes, float] = {}
        self._asked: dict[bytes, float] = {}  # helper -> when we last asked it
        self._asked_for: list[Address] | None = None  # the confirmed set last asked about
        self._probe_sockets: dict[int, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._dialing: dict[PeerId, asyncio.Future[Session]] = {}
        self._bootstrap: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._bootstrap.set_result(None)
        self.dht.on_observed = self._on_observed
        self.relay.on_change = self._wake.set
        dht_control = node.endpoint.on_control
        node.endpoint.on_control = lambda data, addr: self._on_control(data, addr, dht_control)
        node.set_handler(DIAL_BACK_PROTOCOL, self._serve_dial_back, DIAL_BACK_FRAME_LIMIT)

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def start(cls, config: HostConfig, *, wait_for_bootstrap: bool = True) -> Host:
        """Bind, join the DHT through the seeds (and saved contacts), start deciding.

        With ``wait_for_bootstrap=False`` the DHT bootstrap runs in the background
        (``await host.bootstrapped()`` waits for it): a long-lived node prints its peer ID
        at once even when its seeds are slow or gone.
        """
        for seed in config.seeds:
            _seed(seed)  # a malformed bootstrap string fails here, before anything is bound
        base = config.node or NodeConfig()
        node_config = replace(base, host=config.host, port=config.port, network_id=config.network)
        node = await Node.start(config.identity, node_config)
        try:
            host = cls(config, node)
        except BaseException:
            await node.close()
            raise
        seeds = [a for _, addrs in host.seeds for a in addrs]
        host._bootstrap = asyncio.ensure_future(host._join_dht(seeds))
        host._bootstrap.add_done_callback(_log_bootstrap_failure)
        if wait_for_bootstrap:
            try:
                await asyncio.shield(host._bootstrap)
            except BaseException:
                await host.close()
                raise
        host._spawn(host._run())
        host._wake.set()
        return host

    async def _join_dht(self, seeds: list[Address]) -> None:
        if seeds or self.dht.saved_contacts():
            await self.dht.bootstrap(seeds)

    async def bootstrapped(self) -> None:
        """Wait until the start-up DHT bootstrap has finished (at once if it has)."""
        await asyncio.shield(self._bootstrap)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._bootstrap.done():
            self._bootstrap.cancel()
        with contextlib.suppress(BaseException):
            await self._bootstrap
        for task in list(self._tasks):
            task.cancel()
        for _, task, _ in self._keepers.values():
            task.cancel()
        await asyncio.gather(
            *self._tasks, *(t for _, t, _ in self._keepers.values()), return_exceptions=True
        )
        if self._timer is not None:
            self._timer.cancel()
        await self.gossip.close()
        self.relay.close()
        self.dht.close()
        await self.node.close()
        for sock in self._probe_sockets.values():
            sock.close()

    async def __aenter__(self) -> Host:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API -----------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.node.peer_id

    @property
    def reachable(self) -> Status:
        """PUBLIC or PRIVATE when forced by the configuration, else the core's verdict."""
        if self.config.public is not None:
            return Status.PUBLIC if self.config.public else Status.PRIVATE
        return self.reachability.status

    @property
    def public(self) -> bool:
        return self.reachable is Status.PUBLIC

    def listen_addresses(self) -> list[Address]:
        """The socket's addresses, a wildcard replaced by the address routes pick outward."""
        out: list[Address] = []
        for ip, port in self.node.addresses:
            addr = ipaddress.ip_address(ip)
            found: str | None = ip
            if addr.is_unspecified:
                family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
                found = _outward_ip(family) or ("127.0.0.1" if addr.version == 4 else None)
            if found is not None:
                out.append((found, port))
        return list(dict.fromkeys(out))

    def advertised_addresses(self) -> list[Address]:
        """The direct addresses of our peer record: confirmed ones [NAT-R10], and our own
        socket's specific addresses when configured public [NAT-R71] (a host that found
        itself public may sit behind a full-cone NAT: its socket's address is private)."""
        if self.config.advertise is not None:
            return list(dict.fromkeys(self.config.advertise))[:8]
        addresses = list(self.reachability.confirmed)
        if self.config.public:  # told it is public: its own addresses are reachable
            addresses += [
                a for a in self.node.addresses if not ipaddress.ip_address(a[0]).is_unspecified
            ]
        return list(dict.fromkeys(addresses))[:8]

    def bootstrap_string(self) -> str:
        """A line others paste to bootstrap from this host (spec/04, 9.3)."""
        addresses = list(dict.fromkeys([*self.advertised_addresses(), *self.listen_addresses()]))
        return format_bootstrap(self.peer_id, addresses[:8])

    async def connect(self, peer_id: PeerId | bytes, timeout: float | None = None) -> Session:
        """A session with ``peer_id``: its record from the DHT, direct addresses first,
        then its relays; a relayed session then punches (spec/04, 8.2)."""
        pid = peer_id if isinstance(peer_id, PeerId) else PeerId(bytes(peer_id))
        existing = self.node.session_with(pid)
        if existing is not None:
            return existing
        # Callers that ask for the same peer at once share one dial, hence one session.
        dialing = self._dialing.get(pid)
        if dialing is None:
            dialing = asyncio.ensure_future(self._dial(pid, timeout))
            self._dialing[pid] = dialing
            dialing.add_done_callback(lambda f: self._dial_done(pid, f))
        return await asyncio.shield(dialing)

    def _dial_done(self, pid: PeerId, dialing: asyncio.Future[Session]) -> None:
        self._dialing.pop(pid, None)
        if not dialing.cancelled():
            dialing.exception()  # retrieved: every caller got it, or none is left to care

    async def _dial(self, pid: PeerId, timeout: float | None) -> Session:
        try:
            return await connect_peer(self.node, pid, None, timeout)
        except LookupError:
            # No record (yet): a DHT server or seed we know by address is still reachable.
            address = self._known_address(pid)
            if address is None:
                found = await self.dht.find_node(pid.raw)
                address = next((a for i, a in found.closest if i == pid.raw), None)
            if address is None:
                raise
            return await self.node.connect(address, peer_id=pid, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """What a person or a monitor wants to know, JSON-able."""
        core = self.relay.core
        contacts = list(self.dht.core.table.contacts())
        return {
            "peer_id": self.peer_id.text(),
            "listen": [list(a) for a in self.listen_addresses()],
            "external": [list(a) for a in self.reachability.confirmed],
            "advertised": [list(a) for a in self.advertised_addresses()],
            "reachability": self.reachable.value,
            "forced": self.config.public is not None,
            "nat_mapping": self.reachability.mapping(4).value,
            "dht": {
                "mode": "client" if self.dht.client_mode else "server",
                "routing_table": len(contacts),
                "network_size_estimate": self._network_size(),
            },
            "sessions": [
                {
                    "peer_id": s.peer_id.text(),
                    "path": s.path.kind,
                    "address": list(s.path.direct) if s.path.direct else None,
                    "relay": s.path.circuit.relay.hex() if s.path.circuit else None,
                    # what we sent has gone unacknowledged for a while (spec/02 3.5)
                    "suspect": s.suspect,
                }
                for s in self.node.sessions
            ],
            "relay": {
                "serving": core is not None and core.config.serving,
                "reservations_held": [
                    {"relay": PeerId(r).text(), "address": list(a), "expires": g.expires}
                    for r, (a, g) in self.relay.reservations.items()
                ],
                "reservations_served": core.reservations if core is not None else 0,
                "circuits_served": core.circuits if core is not None else 0,
            },
            "record_seq": self.record.seq if self.record is not None else None,
        }

    # -- reports, dial-back probes -------------------------------------------------------

    def _on_observed(self, reporter: bytes, reporter_addr: Address, observed: Address) -> None:
        self.reachability.observe(reporter, reporter_addr, observed, self._loop.time())
        self._drain()

    def _on_control(self, data: bytes, addr: Address, dht_control: Any) -> None:
        if peek_control_type(data) == DIAL_BACK_PROBE:
            if self.reachability.receive_probe(data, addr, self._loop.time()):
                self._drain()
            return
        dht_control(data, addr)

    def _drain(self) -> None:
        """The Reachability core's events, then its timer; changes wake the main loop."""
        while (event := self.reachability.next_event()) is not None:
            log.info("%s: %r", self.peer_id, event)
            if isinstance(event, DialBackDone):
                name = "dial_backs_ok" if event.ok else f"dial_backs_{event.code.name}"
                self.stats[name] = self.stats.get(name, 0) + 1
            if isinstance(event, ReachabilityChanged):
                self.verdict_at = self._loop.time()
                self._apply_status()
            if isinstance(event, AddressConfirmed | AddressRetracted | ReachabilityChanged):
                self._wake.set()
        at = self.reachability.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if at is None else self._loop.call_at(at, self._on_timer)
            self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.reachability.handle_timer(self._loop.time())
        self._drain()

    # -- the main loop -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.check_interval)
            self._wake.clear()
            try:
                self._apply_status()
                self._keep_relays()
                self._ask_dial_backs()
                await asyncio.sleep(self.config.republish_delay)
                await self._republish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host maintenance failed")

    def _apply_status(self) -> None:
        """Public: serve the DHT, relay, help with dial-backs; else none of it [NAT-R16]."""
        public = self.public
        self.dht.client_mode = not public
        if self.relay.core is not None:
            self.relay.core.config.serving = public
        self.dial_back.config.serving = public

    def _known_address(self, peer: PeerId) -> Address | None:
        for pid, addrs in self.seeds:
            if pid == peer and addrs:
                return addrs[0]
        contact = self.dht.core.table._index.get(peer.raw)
        return contact.addr if contact is not None else None

    def _servers(self) -> list[tuple[bytes, Address]]:
        """Public nodes we know: seeds with a peer ID, then DHT servers, nearest first."""
        out: list[tuple[bytes, Address]] = [
            (pid.raw, addrs[0]) for pid, addrs in self.seeds if pid is not None and addrs
        ]
        seed_addresses = {a for _, addrs in self.seeds for a in addrs}
        own = int.from_bytes(self.peer_id.raw, "big")
        contacts = sorted(
            self.dht.core.table.contacts(), key=lambda c: int.from_bytes(c.node_id, "big") ^ own
        )
        out += [(c.node_id, c.addr) for c in contacts if c.addr in seed_addresses]
        out += [(c.node_id, c.addr) for c in contacts]
        seen: set[bytes] = set()
        unique = []
        for relay, address in out:
            if relay not in seen and relay != self.peer_id.raw:
                seen.add(relay)
                unique.append((relay, address))
        return unique

    def _keep_relays(self) -> None:
        """Private (or unknown): hold reservations on ``max_relays`` relays, replacing those
        that fail; public: none [NAT-R18]."""
        now = self._loop.time()
        if self.public:
            for relay in list(self._keepers):
                self._drop_keeper(relay)
            return
        for relay, (address, task, since) in list(self._keepers.items()):
            # A relay that has granted nothing for a while (refusing, unreachable) is
            # replaced by the next candidate.
            if relay in self.relay.reservations:
                self._keepers[relay] = (address, task, now)
            elif now - since > 20.0 or task.done():
                self._failed_relays[relay] = now
                self._drop_keeper(relay)
        for relay, address in self._servers():
            if len(self._keepers) >= self.config.max_relays:
                break
            failed = self._failed_relays.get(relay)
            if relay in self._keepers or (failed is not None and now - failed < 300.0):
                continue
            task = self.relay.keep_reserved(address, PeerId(relay))
            task.add_done_callback(lambda _: self._wake.set())
            self._keepers[relay] = (address, task, now)
            self.stats["relays_tried"] = self.stats.get("relays_tried", 0) + 1

    def _drop_keeper(self, relay: bytes) -> None:
        _, task, _ = self._keepers.pop(relay)
        task.cancel()
        self.relay.reservations.pop(relay, None)

    # -- dial-back: the requester ---------------------------------------------------------

    def _ask_dial_backs(self) -> None:
        if self.config.public is not None:
            return
        now = self._loop.time()
        confirmed = self.reachability.confirmed
        if confirmed != self._asked_for:  # a new address: everybody may be asked again
            self._asked.clear()
            self._asked_for = confirmed
        settled = self.reachable is not Status.UNKNOWN
        asked = 0
        for helper, address in self._servers():
            if asked >= HELPERS_PER_ROUND:
                break
            last = self._asked.get(helper)
            if last is not None and now - last < (DIAL_BACK_EVERY if settled else 60.0):
                continue
            target = confirmed[0] if confirmed else self.dht.observed.get(helper)
            if target is None:
                continue
            self._asked[helper] = now
            asked += 1
            self._spawn(self._dial_back(helper, address, target))

    async def _dial_back(self, helper: bytes, address: Address, target: Address) -> None:
        reach = self.reachability
        stream: Stream | None = None
        session = self.node.session_with(helper)
        opened = session is None  # a session only for this: closed once it is done
        try:
            if session is None:
                session = await self.node.connect(address, peer_id=PeerId(helper), timeout=5.0)
            if session.path.direct is None:
                return  # over a relay the helper would see the relay's address
            frame = reach.request_dial_back(helper, session.path.direct, target, self._loop.time())
            self._drain()
            stream = await session.open_stream(DIAL_BACK_PROTOCOL)
            await stream.send(frame)
            reply = await asyncio.wait_for(stream.recv(), reach.config.dial_back_timeout)
            if reply is None:
                raise NatError(ErrorCode.NAT_UNEXPECTED_MESSAGE, "the helper ended the stream")
            self.stats["dial_backs_answered"] = self.stats.get("dial_backs_answered", 0) + 1
            if reach.awaiting_response(helper):
                reach.receive_dial_back_response(helper, reply, self._loop.time())
        except NatError as exc:
            if stream is not None:
                stream.reset(exc.code)
            reach.dial_back_failed(helper, self._loop.time())
        except (StarlingError, SessionClosed, StreamClosed, OSError, TimeoutError) as exc:
            log.info("dial-back by %s: %s", PeerId(helper), exc)
            reach.dial_back_failed(helper, self._loop.time())
        finally:
            if stream is not None:
                with contextlib.suppress(StreamClosed):
                    await stream.close()
            self._drain()
            if opened and session is not None and helper not in self._keepers:
                # Let the probe arrive first: it may come just after the response.
                self._loop.call_later(
                    reach.config.dial_back_timeout,
                    lambda: self._spawn(self._close_idle(session, helper)),
                )

    async def _close_idle(self, session: Session, helper: bytes) -> None:
        if helper not in self._keepers and not session.closed:
            await session.close(ErrorCode.NO_ERROR, "dial-back done")

    # -- dial-back: the helper -------------------------------------------------------------

    async def _serve_dial_back(self, stream: Stream) -> None:
        frame = await stream.recv()
        if frame is None:
            return
        session = stream.session
        observed = session.path.direct
        if observed is None:
            # Through a relay we do not see the requester's own address [NAT-R17].
            observed = session.remote_address
            self.dial_back.config.serving = False
        reply = self.dial_back.handle(frame, observed, self._loop.time())
        self.dial_back.config.serving = self.public
        if reply.probe is not None and reply.to is not None:
            try:
                self._probe_socket(reply.to).sendto(reply.probe, reply.to)
            except OSError as exc:
                log.info("dial-back probe to %s: %s", reply.to, exc)
        with contextlib.suppress(StreamClosed):
            await stream.send(reply.response)
            await stream.close()

    def _probe_socket(self, to: Address) -> socket.socket:
        """A second UDP socket, never the session's, for dial-back probes [NAT-R14]."""
        family = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
        sock = self._probe_sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            bound = [a for a in self.node.addresses if (":" in a[0]) == (family == socket.AF_INET6)]
            sock.bind((bound[0][0] if bound else "", 0))
            self._probe_sockets[family] = sock
        return sock

    # -- the peer record -------------------------------------------------------------------

    def _relay_entries(self) -> list[RelayEntry]:
        if self.public:
            return []
        return self.relay.relay_entries()[: self.config.max_relays]

    async def _republish(self) -> None:
        """Publish a new peer record when its addresses or relays changed [NAT-R71]."""
        addresses = self.advertised_addresses()
        relays = self._relay_entries()
        key = (tuple(addresses), tuple(relays))
        if key == self._record_key or not (addresses or relays):
            return
        now = time.time()
        ttl = self.config.record_ttl
        for entry in relays:
            granted = self.relay.reservations.get(entry.relay)
            if granted is not None:
                ttl = min(ttl, int(granted[1].expires - now))
        if ttl < 60:
            return  # a reservation about to be renewed; its renewal republishes
        self._seq = max(self._seq + 1, int(now * 1000))
        record = make_peer_record(self.node.identity, self._seq, ttl, addresses, relays)
        self._record_key = key
        self.stats["records_published"] = self.stats.get("records_published", 0) + 1
        log.info(
            "%s: peer record %d: %s, %d relays", self.peer_id, self._seq, addresses, len(relays)
        )
        await self.dht.publish(record)
        self.record = record  # stored on the nodes closest to our ID (as far as they took it)

    # -- helpers ---------------------------------------------------------------------------

    def _network_size(self) -> int:
        """DHT servers in the network, estimated from the density of the k nearest
        contacts around our own ID; the table's size + 1 while it holds fewer than k."""
        own = int.from_bytes(self.peer_id.raw, "big")
        distances = sorted(
            int.from_bytes(c.node_id, "big") ^ own for c in self.dht.core.table.contacts()
        )
        k = self.dht.core.config.k
        if len(distances) < k:
            return len(distances) + (0 if self.dht.client_mode else 1)
        estimates = [(i + 1) * (1 << 256) / d for i, d in enumerate(distances[:k]) if d]
        return round(sum(estimates) / len(estimates)) if estimates else len(distances)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
