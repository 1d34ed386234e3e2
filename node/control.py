"""The local control API: how ``starling`` commands talk to a running node.

Theory of operation
-------------------
A running node (``starling node``, or a command that started a node in-process
because none was running) listens on a Unix stream socket,
``<data dir>/control.sock``, created with mode 0600 inside the data directory
(mode 0700): only the owner of the data directory can drive the node. This is
a local interface between two programs of the same user, not part of the
network protocol, so it is plain JSON, one object per line (UTF-8, ``\\n``
terminated, at most 1 MiB a line).

Protocol, version 1:

1. On connect the node sends a greeting::

       {"starling_control": 1, "peer_id": "sp1...", "pid": 1234}

2. The client sends requests, the node answers each in order::

       {"id": 1, "method": "send", "params": {"community": "Book club", ...}}
       {"id": 1, "result": {...}}
       {"id": 1, "error": {"code": "not_found", "message": "no community ..."}}

   ``id`` is any JSON value the client chooses; it is echoed back.

3. A *streaming* method (``follow``, ``events``) first answers with a result,
   then sends ``{"id": 1, "event": {...}}`` lines until the client closes the
   connection; a streaming request takes the connection over.

Error codes: ``bad_request`` (malformed line, unknown method, wrong
parameters), ``not_found`` (no such community, channel or member),
``ambiguous`` (a name matches several), ``refused`` (the network or the
community's rules refused it; the message carries the registry code), and
``internal`` (a bug: the node logs it and keeps serving). The methods and their
parameters are listed in ``node/daemon.py`` (``Api``) and in README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("starling.control")

SOCKET_NAME = "control.sock"
PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20
# AF_UNIX paths are limited to 108 bytes on Linux (sun_path, NUL included).
MAX_SOCKET_PATH = 107


class ControlError(Exception):
    """A request the node refused; ``code`` is one of the codes in the module docstring."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NoNode(Exception):
    """No node is serving the control socket of this data directory."""


# A handler gets the params and returns the result; a streaming handler returns the
# result and an async iterator of events.
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], Awaitable[tuple[Any, AsyncIterator[Any]]]]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(
            "bad_request",
            f"the data directory's path is too long for a control socket ({path}); "
            "use a shorter --data-dir",
        )


class ControlServer:
    """Serves ``handlers`` (method name -> coroutine) on the data directory's socket."""

    def __init__(
        self,
        data_dir: Path,
        greeting: dict[str, Any],
        handlers: dict[str, Handler],
        streams: dict[str, StreamHandler],
    ) -> None:
        self.path = socket_path(data_dir)
        self.greeting = {"starling_control": PROTOCOL_VERSION, **greeting}
        self.handlers = handlers
        self.streams = streams
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one: the caller holds the data dir's lock)."""
        _check_length(self.path)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # The directory is 0700 already; 0600 on the socket itself as well.
            os.chmod(self.path, 0o600)
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        # Hang up on every client (cancelling the handler tasks instead makes asyncio's
        # stream protocol log their CancelledError); their handlers then end by themselves.
        for writer in list(self._writers):
            writer.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=5.0)
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._writers.add(writer)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, self.greeting)
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_LINE
                await _write(writer, _error(None, "bad_request", "request line too long"))
                return
            if not line:
                return
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                await _write(writer, _error(None, "bad_request", "each line must be a JSON object"))
                continue
            rid = request.get("id")
            method = request.get("method")
            params = request.get("params")
            params = {} if params is None else params
            if not isinstance(params, dict):
                await _write(writer, _error(rid, "bad_request", "params must be an object"))
                continue
            if method in self.streams:
                await self._stream(rid, self.streams[method], params, reader, writer)
                return
            handler = self.handlers.get(method) if isinstance(method, str) else None
            if handler is None:
                await _write(writer, _error(rid, "bad_request", f"unknown method {method!r}"))
                continue
            try:
                result = await handler(params)
            except ControlError as exc:
                await _write(writer, _error(rid, exc.code, exc.message))
                continue
            except Exception as exc:
                log.exception("control method %s failed", method)
                await _write(writer, _error(rid, "internal", f"{type(exc).__name__}: {exc}"))
                continue
            await _write(writer, {"id": rid, "result": result})

    async def _stream(
        self,
        rid: Any,
        handler: StreamHandler,
        params: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            result, events = await handler(params)
        except ControlError as exc:
            await _write(writer, _error(rid, exc.code, exc.message))
            return

        async def pump() -> None:
            async for event in events:
                await _write(writer, {"id": rid, "event": event})

        try:
            await _write(writer, {"id": rid, "result": result})
            # The stream ends when the client hangs up (EOF on the reader) or the events end.
            pumping = asyncio.ensure_future(pump())
            hangup = asyncio.ensure_future(reader.read())
            try:
                await asyncio.wait({pumping, hangup}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pumping, hangup):
                    task.cancel()
                for task in (pumping, hangup):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            # Unsubscribe, whatever happened (a subscription holds a queue on the node).
            close = getattr(events, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def _error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "error": {"code": code, "message": message}}


async def _write(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


class ControlClient:
    """One connection to a running node's control socket."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: dict[str, Any]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.greeting = greeting
        self._next = 0
        # Answers come in request order: one request in flight per connection.
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, data_dir: Path) -> ControlClient:
        """Connect; NoNode if nobody listens (no socket, or a stale one)."""
        path = socket_path(data_dir)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH or not path.exists():
            raise NoNode(str(path))
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
        except (ConnectionRefusedError, FileNotFoundError):
            raise NoNode(str(path)) from None
        try:
            line = await reader.readline()
            greeting = json.loads(line) if line else None
        except (ConnectionError, ValueError):
            greeting = None
        if not isinstance(greeting, dict) or greeting.get("starling_control") != PROTOCOL_VERSION:
            writer.close()
            raise ControlError(
                "bad_request",
                f"the node on {path} speaks another control protocol version; "
                "run the same starling version as the node",
            )
        return cls(reader, writer, greeting)

    async def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its result, or raise ControlError."""
        async with self._lock:
            self._next += 1
            await _write(self._writer, {"id": self._next, "method": method, "params": params})
            return _unwrap(await self._read())

    async def stream(self, method: str, **params: Any) -> tuple[Any, AsyncIterator[Any]]:
        """Start a streaming request: its result and an iterator of its events."""
        self._next += 1
        await _write(self._writer, {"id": self._next, "method": method, "params": params})
        result = _unwrap(await self._read())

        async def events() -> AsyncIterator[Any]:
            while True:
                message = await self._read()
                if "event" not in message:
                    _unwrap(message)
                    return
                yield message["event"]

        return result, events()

    async def _read(self) -> dict[str, Any]:
        line = await self._reader.readline()
        if not line:
            raise ControlError("internal", "the node closed the control connection")
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def _unwrap(message: dict[str, Any]) -> Any:
    if "error" in message:
        error = message["error"]
        raise ControlError(str(error.get("code")), str(error.get("message")))
    return message.get("result")
