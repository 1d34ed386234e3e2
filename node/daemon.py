"""The long-lived node: a Host (sessions, DHT, relay, gossip), the Store and Communities.

Theory of operation
-------------------
``starling node`` runs a :class:`Daemon` until SIGINT or SIGTERM. Client
commands (``starling send`` ...) talk to it over the control socket
(node/control.py). When no node is running for the data directory, a command
starts a Daemon in its own process for the command's duration
(:func:`connect`), which serves the same socket meanwhile; either way the
command speaks to the node through the one control protocol, so there is one
code path to test.

One data directory, one node: the daemon holds an exclusive ``flock`` on
``<data dir>/node.lock`` for its whole life (the kernel releases it if the
process dies), so a second node on the same directory fails at once with a
message, and a stale control socket is recognised and replaced.

Control methods (params -> result; names of communities and members are what
people type: a community's name or its ``sc1...`` ID, a member's display name
or peer ID):

=================  ==========================================  ===========================
method             params                                      result
=================  ==========================================  ===========================
``status``         ``{}``                                      node, network, communities
``communities``    ``{}``                                      ``{"communities": [...]}``
``create``         ``name``                                    ``{"community", "name"}``
``invite``         ``community, uses?, expires_s?, role?``     ``{"link", ...}``
``join``           ``link, display_name?``                     ``{"community", "name"}``
``channel_add``    ``community, name``                         ``{"community", "channel"}``
``send``           ``community, channel, text, reply_to?``     ``{"message_id"}``
``read``           ``community, channel, before?, limit?``     ``{"messages": [...]}``
``members``        ``community``                               ``{"members": [...]}``
``ban``/``unban``  ``community, member``                       ``{"member", ...}``
``set_name``       ``community, display_name``                 ``{"display_name"}``
``follow``         ``community, channel?`` (streaming)         events: new messages
=================  ==========================================  ===========================
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path
from typing import Any

from starling.proto.errors import StarlingError
from starling.proto.identity import PeerId, PrivateKey

from . import keyfile
from .config import Settings, save_state
from .control import ControlClient, ControlError, ControlServer, NoNode

log = logging.getLogger("starling.node")

LOCK_FILE_NAME = "node.lock"
DEFAULT_CHANNEL = "general"
RECONNECT_EVERY = 30.0
LINGER_S = 5.0  # a writing command's own node waits this long at most to reach its peers
COMMAND_WAIT_S = 60.0  # how long `starling node` waits for a command's own node to end


# ----------------------------------------------------------------------------- logging


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        if getattr(record, "terse", False):
            fields = {}
        extra = "".join(f" {k}={_scalar(v)}" for k, v in fields.items())
        text = f"{stamp} {record.levelname.lower():7} {record.getMessage()}{extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def _scalar(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def setup_logging(level: str, as_json: bool) -> None:
    """Structured logs on stderr: text by default, one JSON object a line with ``as_json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else _HumanFormatter())
    root = logging.getLogger("starling")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, message: str, **fields: Any) -> None:
    logger.info(message, extra={"fields": fields})


# ----------------------------------------------------------------------------- JSON views


def jsonable(value: Any) -> Any:
    """Views (dataclasses) as JSON: peer IDs as text, bytes as hex, enums by value."""
    if isinstance(value, PeerId):
        return value.text()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Enum):
        return value.value if isinstance(value.value, str | int) else value.name.lower()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# ----------------------------------------------------------------------------- the lock


class NodeRunning(Exception):
    """Another process runs a node on this data directory."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        pid, _, kind = holder.partition(" ")
        super().__init__(
            f"a node is already running on {data_dir} (pid {pid or 'unknown'}); "
            "stop it first (Ctrl-C or kill), or use another --data-dir"
        )
        self.pid = pid
        self.kind = kind or "node"  # "command": a command's in-process node, soon gone


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self, kind: str) -> None:
        """Take the lock; the file says who holds it: ``<pid> <node|command>``."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise NodeRunning(self.path.parent, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {kind}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------- the daemon


class Daemon:
    """A node with its identity, store, communities and control socket."""

    def __init__(self, settings: Settings, identity: PrivateKey, created: bool) -> None:
        self.settings = settings
        self.identity = identity
        self.identity_created = created
        self.started = time.monotonic()
        self.host: Any = None
        self.store: Any = None
        self.communities: Any = None
        self.control: ControlServer | None = None
        self._lock = DataDirLock(settings.data_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnected = asyncio.Event()  # the first reconnect() has finished

    @classmethod
    async def start(cls, settings: Settings, kind: str = "node") -> Daemon:
        """Lock the data directory, open everything, serve the control socket.

        ``kind`` is ``node`` for ``starling node``, ``command`` for a command's own node.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = DataDirLock(settings.data_dir)
        lock.acquire(kind)
        try:
            identity, created = keyfile.load_or_create(settings.data_dir)
            daemon = cls(settings, identity, created)
            daemon._lock = lock
            await daemon._open()
        except BaseException:
            lock.release()
            raise
        return daemon

    async def _open(self) -> None:
        from .host import Host, HostConfig
        from .store import Store

        s = self.settings
        try:
            self.host = await Host.start(
                self._host_config(HostConfig, s.port_to_bind()), wait_for_bootstrap=False
            )
        except OSError:
            if s.port:
                raise
            # The last run's port is taken now: any port will do.
            self.host = await Host.start(self._host_config(HostConfig, 0), wait_for_bootstrap=False)
        try:
            listen = self.host.listen_addresses()
            port = listen[0][1]
            save_state(s.data_dir, port=port)
            self.store = await Store.open(s.data_dir)
            await self.store.set_identity(keyfile.key_path(s.data_dir), self.identity.peer_id.raw)
            self.communities = await self._open_communities()
            # Peers are remembered, and dialled again on the next start (and every
            # RECONNECT_EVERY seconds while they are away), so that a node that was
            # offline catches up with its communities by itself.
            self.host.node.add_listener(self._on_session_event)
            self._tasks.append(asyncio.ensure_future(self._reconnect_loop()))
            api = Api(self)
            self.control = ControlServer(
                s.data_dir,
                {"peer_id": self.identity.peer_id.text(), "pid": os.getpid()},
                api.handlers(),
                api.streams(),
            )
            await self.control.start()
        except BaseException:
            await self.close()
            raise

    def _host_config(self, config_type: Any, port: int) -> Any:
        s = self.settings
        from starling.proto.nat import RelayConfig
        from starling.proto.network import network_id

        return config_type(
            identity=self.identity,
            network=network_id(s.network),
            host=s.listen,
            port=port,
            seeds=list(s.seeds),
            data_dir=s.data_dir,
            public=s.public,
            # No relaying for others: room for no reservation and no circuit.
            relay=None if s.relay else RelayConfig(max_reservations=0, max_circuits=0),
        )

    async def _open_communities(self) -> Any:
        try:
            from .community import Communities
        except ImportError:
            log.warning("communities are not available in this build")
            return None
        return await Communities.open(
            self.host.node,
            self.host.gossip,
            self.store,
            self.identity,
            dht=self.host.dht,
            clock=time.time,
        )

    def _on_session_event(self, event: Any) -> None:
        from .session import SessionUp

        if not isinstance(event, SessionUp) or self.store is None:
            return
        session = event.session
        direct = session.path.direct
        task = asyncio.ensure_future(
            self.store.put_peer(session.peer_id.raw, [direct] if direct else [])
        )
        task.add_done_callback(_log_failure)

    async def _reconnect_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.reconnect()
            self._reconnected.set()
            await asyncio.sleep(RECONNECT_EVERY)

    async def linger(self, limit: float = LINGER_S) -> None:
        """Before a command's own node stops: let it reach the known peers (bounded), and
        give what it just wrote a moment to go out to them."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reconnected.wait(), limit)
        if self.host is not None and self.host.node.sessions:
            await asyncio.sleep(0.5)

    async def reconnect(self, limit: int = 16) -> int:
        """Dial the most recently seen peers we have no session with; how many answered."""
        if self.store is None or self.host is None:
            return 0
        node = self.host.node
        wanted = [
            p
            for p in await self.store.peers(limit=limit)
            if p.peer_id != node.peer_id.raw and node.session_with(p.peer_id) is None
        ]

        async def dial(peer: Any) -> bool:
            pid = PeerId(peer.peer_id)
            with contextlib.suppress(Exception):
                await self.host.connect(pid, timeout=10.0)
                return True
            for address in peer.addresses:
                with contextlib.suppress(Exception):
                    await node.connect(tuple(address), peer_id=pid, timeout=5.0)
                    return True
            return False

        reached = sum(await asyncio.gather(*(dial(p) for p in wanted)))
        if wanted:
            event(log, "reconnected to known peers", tried=len(wanted), reached=reached)
        return reached

    async def close(self) -> None:
        """Stop serving, then close communities, store and host; release the lock."""
        for task in self._tasks:
            task.cancel()
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.communities is not None:
            with contextlib.suppress(Exception):
                await self.communities.close()
            self.communities = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.host is not None:
            await self.host.close()
            self.host = None
        self._lock.release()

    # -- what the node tells people -----------------------------------------------------

    def banner(self) -> dict[str, Any]:
        return {
            "peer_id": self.identity.peer_id.text(),
            "listen_addresses": [f"{_addr(a)}" for a in self.host.listen_addresses()],
            "bootstrap": self.host.bootstrap_string(),
            "network": self.settings.network,
            "data_dir": str(self.settings.data_dir),
            "identity_created": self.identity_created,
            "pid": os.getpid(),
        }

    async def status(self) -> dict[str, Any]:
        communities = self.communities.communities() if self.communities else []
        if asyncio.iscoroutine(communities):
            communities = await communities
        return {
            **self.banner(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "host": jsonable(self.host.status()),
            "communities": len(communities),
            # Diagnostics: what a failure report needs (nothing here is an interface).
            "counters": {
                "gossip": dict(self.host.gossip.stats),
                "gossip_core": dict(self.host.gossip.core.stats),
                "community": dict(self.communities.stats) if self.communities else {},
            },
        }

    def start_status_line(self) -> None:
        if self.settings.status_interval > 0:
            self._tasks.append(asyncio.ensure_future(self._status_loop()))

    async def _status_loop(self) -> None:
        status_log = logging.getLogger("starling.status")
        while True:
            await asyncio.sleep(self.settings.status_interval)
            try:
                status = await self.status()
            except Exception:
                log.exception("status failed")
                continue
            summary = status_summary(status)
            status_log.info(summary["text"], extra={"fields": summary["fields"], "terse": True})


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("remembering a peer failed: %s", task.exception())


def _addr(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def status_summary(status: dict[str, Any]) -> dict[str, Any]:
    """The one-line status: peers (direct/relayed), reachability, DHT, relays, communities."""
    host = status.get("host") or {}
    sessions = host.get("sessions") or []
    direct = sum(1 for s in sessions if s.get("path") == "direct")
    relayed = sum(1 for s in sessions if s.get("path") == "relay")
    dht = host.get("dht") or {}
    relay = host.get("relay") or {}
    reservations = relay.get("reservations_held") or []
    fields = {
        "peers": len(sessions),
        "direct": direct,
        "relayed": relayed,
        "reachability": host.get("reachability", "unknown"),
        "nat": host.get("nat_mapping", "unknown"),
        "dht_mode": dht.get("mode", "unknown"),
        "dht_size": dht.get("network_size_estimate", 0),
        "relay_reservations": len(reservations),
        "relay_serving": relay.get("reservations_served", 0),
        "communities": status.get("communities", 0),
    }
    text = (
        f"{fields['peers']} peers ({direct} direct, {relayed} relayed), "
        f"reachability {fields['reachability']}, DHT {fields['dht_mode']} "
        f"~{fields['dht_size']} nodes, {fields['relay_reservations']} relay reservations, "
        f"{fields['communities']} communities"
    )
    return {"text": text, "fields": fields}


# ----------------------------------------------------------------------------- the API


def _param(params: dict[str, Any], name: str, kind: type = str, required: bool = True) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise ControlError("bad_request", f"missing parameter {name!r}")
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ControlError("bad_request", f"parameter {name!r} must be a {kind.__name__}")
    return value


class Api:
    """The control methods, resolving what people type (names) to what the node uses."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def handlers(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "communities": self.list_communities,
            "create": self.create,
            "invite": self.invite,
            "join": self.join,
            "channel_add": self.channel_add,
            "send": self.send,
            "read": self.read,
            "members": self.members,
            "ban": self.ban,
            "unban": self.unban,
            "set_name": self.set_name,
        }

    def streams(self) -> dict[str, Any]:
        return {"follow": self.follow}

    @property
    def _c(self) -> Any:
        if self.daemon.communities is None:
            raise ControlError("refused", "communities are not available in this build")
        return self.daemon.communities

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self._c, method)(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
        except StarlingError as exc:
            raise ControlError("refused", f"{exc.reason} ({exc.code.name})") from None
        except (ValueError, KeyError, LookupError, PermissionError) as exc:
            raise ControlError("refused", str(exc) or type(exc).__name__) from None
        return result

    async def _communities(self) -> list[dict[str, Any]]:
        views = await self._call("communities")
        return [self._community_json(v) for v in views]

    @staticmethod
    def _community_json(view: Any) -> dict[str, Any]:
        return {
            "community": view.id,
            "name": view.name or "(unnamed)",
            "role": view.role,
            "channels": [c.name for c in view.channels],
            "channel_ids": {c.name: c.id.hex() for c in view.channels},
        }

    def _channel_names(self, community: dict[str, Any]) -> dict[bytes, str]:
        return {bytes.fromhex(h): n for n, h in community["channel_ids"].items()}

    async def _community(self, params: dict[str, Any]) -> dict[str, Any]:
        wanted = _param(params, "community").strip()
        found = await self._communities()
        exact = [c for c in found if c["community"] == wanted]
        if exact:
            return exact[0]
        named = [c for c in found if str(c["name"]).casefold() == wanted.casefold()]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise ControlError(
                "ambiguous",
                f"several communities are called {wanted!r}; use one of their IDs: "
                + ", ".join(c["community"] for c in named),
            )
        if found:
            names = ", ".join(repr(c["name"]) for c in found)
            hint = f"your communities: {names}"
        else:
            hint = "you are in no community yet: create one (starling community create NAME) "
            hint += "or join one (starling join LINK)"
        raise ControlError("not_found", f"no community {wanted!r}; {hint}")

    async def _member(self, community: str, wanted: str) -> dict[str, Any]:
        members = [jsonable(m) for m in await self._call("members", community)]
        wanted = wanted.strip().removeprefix("@")

        def peer(m: dict[str, Any]) -> str:
            return str(m["peer_id"])

        for m in members:
            if peer(m) == wanted:
                return m
        named = [m for m in members if str(m["display_name"] or "").casefold() == wanted.casefold()]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise ControlError(
                "ambiguous",
                f"several members are called {wanted!r}; use a peer ID: "
                + ", ".join(peer(m) for m in named),
            )
        raise ControlError(
            "not_found",
            f"no member {wanted!r} in this community; see: starling members COMMUNITY",
        )

    # -- methods -------------------------------------------------------------------------

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.daemon.status()

    async def list_communities(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"communities": await self._communities()}

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _param(params, "name").strip()
        if not name:
            raise ControlError("bad_request", "a community needs a name")
        community = await self._call("create", name)
        # People expect somewhere to talk right away: every new community gets #general.
        await self._call("add_channel", community, DEFAULT_CHANNEL)
        return {"community": community, "name": name, "channels": [DEFAULT_CHANNEL]}

    async def invite(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        options: dict[str, Any] = {}
        for name, kind in (("uses", int), ("expires_s", int), ("role", str)):
            value = _param(params, name, kind, required=False)
            if value is not None:
                options[name] = value
        link = await self._call("invite", c["community"], **options)
        return {"link": link, "community": c["community"], "name": c["name"], **options}

    async def join(self, params: dict[str, Any]) -> dict[str, Any]:
        link = _param(params, "link").strip()
        if not link.startswith("starling://join/"):
            raise ControlError(
                "bad_request",
                "that is not an invite link; invite links start with starling://join/",
            )
        name = _param(params, "display_name", required=False)
        kwargs = {"display_name": name} if name else {}
        community = await self._call("join", link, **kwargs)
        found = [c for c in await self._communities() if c["community"] == community]
        return found[0] if found else {"community": community, "name": "(unnamed)"}

    async def channel_add(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        name = _param(params, "name").strip().removeprefix("#")
        await self._call("add_channel", c["community"], name)
        return {"community": c["community"], "channel": name}

    async def send(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        channel = _param(params, "channel").removeprefix("#")
        text = _param(params, "text")
        reply_to = _param(params, "reply_to", required=False)
        kwargs = {"reply_to": bytes.fromhex(reply_to)} if reply_to else {}
        message_id = await self._call("post", c["community"], channel, text, **kwargs)
        return {"community": c["community"], "channel": channel, "message_id": jsonable(message_id)}

    async def read(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        channel = _param(params, "channel").removeprefix("#")
        limit = _param(params, "limit", int, required=False) or 100
        before = _param(params, "before", required=False)
        kwargs: dict[str, Any] = {"limit": limit}
        if before is not None:
            try:
                kwargs["before"] = bytes.fromhex(before)
            except ValueError:
                raise ControlError("bad_request", "before must be a message ID (hex)") from None
        messages = await self._call("page", c["community"], channel, **kwargs)
        names = self._channel_names(c)
        return {
            "community": c["community"],
            "name": c["name"],
            "channel": channel,
            "messages": [message_json(m, names) for m in messages],
        }

    async def members(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        members = await self._call("members", c["community"])
        return {"community": c["community"], "name": c["name"], "members": jsonable(members)}

    async def ban(self, params: dict[str, Any], unban: bool = False) -> dict[str, Any]:
        c = await self._community(params)
        member = await self._member(c["community"], _param(params, "member"))
        await self._call("unban" if unban else "ban", c["community"], member["peer_id"])
        return {"community": c["community"], "member": member, "banned": not unban}

    async def unban(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.ban(params, unban=True)

    async def set_name(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self._community(params)
        name = _param(params, "display_name").strip()
        await self._call("set_name", c["community"], name)
        return {"community": c["community"], "display_name": name}

    async def follow(self, params: dict[str, Any]) -> tuple[Any, AsyncIterator[Any]]:
        """New messages (of one channel, or all) and membership changes, as they happen."""
        c = await self._community(params)
        channel = _param(params, "channel", required=False)
        channel = channel.removeprefix("#") if channel else None
        # Subscribed before the answer goes out, so that a client reading history after
        # the answer misses nothing: the task runs up to its first wait right away.
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def collect() -> None:
            async for ev in self._c.events(c["community"]):
                queue.put_nowait(ev)

        collector = asyncio.ensure_future(collect())
        await asyncio.sleep(0)
        api = self

        async def matching() -> AsyncIterator[Any]:
            names = api._channel_names(c)
            while True:
                ev = await queue.get()
                if ev.message is not None:
                    if ev.message.channel not in names:
                        fresh = [
                            x for x in await api._communities() if x["community"] == c["community"]
                        ]
                        if fresh:
                            names = api._channel_names(fresh[0])
                    data = {"kind": ev.kind, **message_json(ev.message, names)}
                    if channel is not None and data["channel"] != channel:
                        continue
                    yield data
                elif ev.kind in ("member_joined", "member_banned", "member_unbanned"):
                    yield {"kind": ev.kind, "member": ev.member, **await api._name_of(c, ev.member)}
                elif ev.kind == "channel_added":
                    yield {"kind": ev.kind}

        answer = {"community": c["community"], "name": c["name"], "channel": channel}
        return answer, _Subscription(matching(), collector)

    async def _name_of(self, community: dict[str, Any], peer: str | None) -> dict[str, Any]:
        # A joiner's name is its next entry: give it a moment to arrive.
        for _ in range(20):
            for m in await self._call("members", community["community"]):
                if m.peer_id == peer and m.display_name:
                    return {"display_name": m.display_name}
            await asyncio.sleep(0.1)
        return {"display_name": None}


class _Subscription:
    """A stream's events; ``aclose()`` unsubscribes even if iteration never started."""

    def __init__(self, events: AsyncIterator[Any], collector: asyncio.Future[None]) -> None:
        self._events = events
        self._collector = collector

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events

    async def aclose(self) -> None:
        self._collector.cancel()
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


def message_json(m: Any, channels: dict[bytes, str]) -> dict[str, Any]:
    """A message as the control API shows it: the channel by name, IDs as hex."""
    return {
        "message_id": m.message_id.hex(),
        "author": m.author,
        "author_name": m.author_name,
        "time_ms": m.time_ms,
        "text": m.text,
        "reply_to": None if m.reply_to is None else m.reply_to.hex(),
        "edited": m.edited,
        "channel": channels.get(m.channel, m.channel.hex()),
    }


# ----------------------------------------------------------------------------- entry points


async def serve(settings: Settings, as_json: bool) -> int:
    """``starling node``: run until SIGINT/SIGTERM; 0 on a clean shutdown."""
    deadline = time.monotonic() + COMMAND_WAIT_S
    while True:
        try:
            daemon = await Daemon.start(settings)
            break
        except NodeRunning as exc:
            # A command started its own node a moment ago: it ends with the command.
            if exc.kind != "command" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        banner = daemon.banner()
        if as_json:
            print(json.dumps(banner), flush=True)
        else:
            print(
                ("Created a new node identity.\n" if daemon.identity_created else "")
                + f"peer ID    {banner['peer_id']}\n"
                + "".join(f"listening  {a}\n" for a in banner["listen_addresses"])
                + f"bootstrap  {banner['bootstrap']}\n"
                + f"data dir   {banner['data_dir']}\n"
                + "Others join this network with: starling node --seed "
                + f"'{banner['bootstrap']}'\nPress Ctrl-C to stop.",
                flush=True,
            )
        event(log, "node started", peer_id=banner["peer_id"], bootstrap=banner["bootstrap"])
        daemon.start_status_line()
        await stop.wait()
        event(log, "shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await daemon.close()
    event(log, "stopped")
    return 0


@contextlib.asynccontextmanager
async def connect(
    settings: Settings, *, wait_s: float = 5.0, linger: bool = False
) -> AsyncIterator[ControlClient]:
    """A control connection to the data directory's node, starting one in-process if none runs.

    The in-process node serves the control socket too, so other commands (another
    terminal) reach it meanwhile; it stops when the block ends.
    """
    deadline = time.monotonic() + wait_s
    daemon: Daemon | None = None
    while True:
        try:
            client = await ControlClient.connect(settings.data_dir)
            break
        except NoNode:
            pass
        try:
            daemon = await Daemon.start(settings, kind="command")
        except NodeRunning:
            # A node is starting (or stopping) on this directory: wait for its socket.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        client = await ControlClient.connect(settings.data_dir)
        break
    try:
        yield client
        if daemon is not None and linger:
            await daemon.linger()
    finally:
        await client.close()
        if daemon is not None:
            await daemon.close()
