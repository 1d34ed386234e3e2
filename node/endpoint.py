"""The node's UDP endpoint: one socket per address family carries everything.

Datagrams are classified by their first bytes (``starling.proto.network``):
QUIC packets go to the QUIC handler, path probes (PATH_PING, PATH_PONG) to the
probe handler (the node hands them to their session by tag), other control
datagrams of our network to the control handler (the DHT), and everything
else is dropped and counted, never raised.

Reading: asyncio's datagram transport reads one datagram per event-loop
iteration. The default ``reader="drain"`` instead registers the socket with
the loop and, when it becomes readable, reads until the socket is empty (up to
a cap, to stay fair to other work), which saves a loop iteration per datagram
under load. ``reader="transport"`` keeps asyncio's way for comparison; the
session benchmark measures both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starling.proto.nat import PATH_PING, PATH_PONG, peek_control_type
from starling.proto.network import DatagramKind, classify

Address = tuple[str, int]
Handler = Callable[[bytes, Address], None]

_DRAIN_CAP = 256  # datagrams per readiness callback before yielding to the loop
_RECV_SIZE = 65535
_PROBE_TYPES = (PATH_PING, PATH_PONG)


@dataclass
class _Socket:
    sock: socket.socket
    family: int
    transport: asyncio.DatagramTransport | None = None


class _TransportProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._endpoint._dispatch(data, (str(addr[0]), int(addr[1])))  # type: ignore[call-overload]

    def error_received(self, exc: Exception) -> None:
        self._endpoint.stats["recv_errors"] += 1


class Endpoint:
    """UDP sockets of one node; ``on_quic``/``on_control`` receive the classified datagrams."""

    def __init__(self, network: bytes, reader: str = "drain") -> None:
        if reader not in ("drain", "transport"):
            raise ValueError("reader must be 'drain' or 'transport'")
        self.network = network
        self.reader = reader
        self.on_quic: Handler = lambda data, addr: None
        self.on_control: Handler = lambda data, addr: None
        self.on_probe: Handler = lambda data, addr: None
        self.stats: Counter[str] = Counter()
        self._sockets: list[_Socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind ``host:port``; a wildcard host also binds IPv6 ``::`` where the host has it."""
        self._loop = asyncio.get_running_loop()
        if host in ("", "0.0.0.0", "*"):
            bound = self._bind(socket.AF_INET, "0.0.0.0", port)
            if socket.has_ipv6:
                # No IPv6 on this host, or the port is taken there: IPv4 only.
                with contextlib.suppress(OSError):
                    self._bind(socket.AF_INET6, "::", bound[1])
        elif host == "::" or ":" in host:
            self._bind(socket.AF_INET6, host, port)
        else:
            self._bind(socket.AF_INET, host, port)
        for s in self._sockets:
            if self.reader == "drain":
                self._loop.add_reader(s.sock.fileno(), self._drain, s.sock)
            else:
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _TransportProtocol(self), sock=s.sock
                )
                s.transport = transport

    def _bind(self, family: int, host: str, port: int) -> Address:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Generous kernel buffers: bursts of QUIC packets arrive faster than Python reads.
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets.append(_Socket(sock, family))
        name = sock.getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def addresses(self) -> list[Address]:
        out = []
        for s in self._sockets:
            name = s.sock.getsockname()
            out.append((str(name[0]), int(name[1])))
        return out

    def pause_reading(self) -> None:
        """Stop reading the sockets (datagrams queue in the kernel, then drop)."""
        assert self._loop is not None
        for s in self._sockets:
            if s.transport is not None:
                s.transport.pause_reading()  # type: ignore[attr-defined]
            else:
                self._loop.remove_reader(s.sock.fileno())

    def resume_reading(self) -> None:
        assert self._loop is not None
        for s in self._sockets:
            if s.transport is not None:
                s.transport.resume_reading()  # type: ignore[attr-defined]
            else:
                self._loop.add_reader(s.sock.fileno(), self._drain, s.sock)

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(_DRAIN_CAP):
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors surface here on Linux (ECONNREFUSED for an earlier send).
                self.stats["recv_errors"] += 1
                continue
            self._dispatch(data, (str(addr[0]), int(addr[1])))

    def _dispatch(self, data: bytes, addr: Address) -> None:
        kind = classify(data, self.network)
        if kind is DatagramKind.QUIC:
            self.stats["rx_quic"] += 1
            self.on_quic(data, addr)
        elif kind is DatagramKind.CONTROL:
            self.stats["rx_control"] += 1
            if peek_control_type(data) in _PROBE_TYPES:
                self.on_probe(data, addr)
            else:
                self.on_control(data, addr)
        else:
            self.stats[f"dropped_{kind.value}"] += 1

    def sendto(self, data: bytes, addr: Address) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        for s in self._sockets:
            if s.family == family:
                try:
                    s.sock.sendto(data, addr)
                    self.stats["tx"] += 1
                except BlockingIOError:
                    # Kernel buffer full: drop, QUIC's loss recovery resends.
                    self.stats["tx_dropped_full"] += 1
                except OSError as exc:
                    if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                        raise
                    self.stats["tx_errors"] += 1
                return
        self.stats["tx_no_socket"] += 1

    def close(self) -> None:
        for s in self._sockets:
            if s.transport is not None:
                s.transport.close()
            else:
                if self._loop is not None:
                    self._loop.remove_reader(s.sock.fileno())
                s.sock.close()
        self._sockets.clear()
