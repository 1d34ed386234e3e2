"""Userspace WAN delay for the NAT lab's internet core, for kernels without ``netem``.

Theory of operation
-------------------
Runs inside the core namespace (``<prefix>-inet``), attached to a TUN device the lab
created there (``ip tuntap add dly mode tun``). The lab's policy routing sends every
forwarded packet into the TUN, this process holds it, and writes it back to the same TUN;
the kernel then sees it arrive *from* the TUN, where ``ip rule iif dly lookup main`` sends
it on by the core's real /32 routes (and a second rule blackholes anything main cannot
route, so nothing ever loops back into the TUN)::

    cN --forward--> main: default dev dly --> [this process: hold] --> dly --> main: /32 --> cM

Each internet address (a node's /32 on one link into the core) has the one-way delay of
its link. A packet from S to D is held ``delay[S] + delay[D]`` milliseconds, so a path
across the core pays both of its links, as ``netem`` on both ends of every link would.
Addresses the table does not know (the core's own gateways) add nothing.

Order: a packet's release time is its arrival plus a delay fixed by its (source,
destination) pair, and the queue releases by (time, arrival number), so packets of one
flow leave in the order they came. The queue is bounded (``--limit`` packets, tail drop,
counted), like netem's ``limit``. Nothing here touches the packets: the routers' NAT and
conntrack never see this process, and the core has no NAT.

Control, one JSON object per line: stdin ``{"delays": {"203.0.113.10": 25, ...}}`` merges
into the table and answers ``{"ok": N}`` (N addresses known); ``{"stats": true}`` answers
``{"held": n, "released": n, "dropped": n, "queued": n}``. It first prints
``{"ready": "dly"}`` once attached, and exits when its stdin closes (the lab is gone).

By hand: ``ip netns exec <prefix>-inet python3 tests/lab/delay.py dly``.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import select
import struct
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535
DEFAULT_LIMIT = 10000


def open_tun(name: str) -> int:
    """Attach to the TUN device ``name`` (created beforehand by ``ip tuntap``)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """The held packets and the delay table; no I/O, time is passed in (seconds)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.delays: dict[bytes, float] = {}
        self._queue: list[tuple[float, int, bytes]] = []
        self._count = 0
        self.dropped = 0
        self.released = 0

    def set_delays(self, delays: dict[str, float]) -> None:
        for ip, ms in delays.items():
            self.delays[bytes(int(part) for part in ip.split("."))] = float(ms) / 1000

    def delay_of(self, packet: bytes) -> float:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return 0.0  # not IPv4 (the lab has no IPv6): pass it on at once
        return self.delays.get(packet[12:16], 0.0) + self.delays.get(packet[16:20], 0.0)

    def push(self, packet: bytes, now: float) -> bool:
        """Hold ``packet``; False (and counted) when the queue is full."""
        if len(self._queue) >= self.limit:
            self.dropped += 1
            return False
        self._count += 1
        heapq.heappush(self._queue, (now + self.delay_of(packet), self._count, packet))
        return True

    def due(self, now: float) -> list[bytes]:
        """The packets whose time has come, in release order."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        self.released += len(out)
        return out

    def next_release(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def stats(self) -> dict[str, int]:
        return {
            "held": self._count,
            "released": self.released,
            "dropped": self.dropped,
            "queued": len(self._queue),
        }


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(name: str, limit: int) -> int:
    fd = open_tun(name)
    line = DelayLine(limit)
    control = sys.stdin.fileno()
    os.set_blocking(control, False)
    pending = b""
    _answer({"ready": name})
    while True:
        now = time.monotonic()
        for packet in line.due(now):
            try:
                os.write(fd, packet)
            except OSError:
                line.dropped += 1  # e.g. no buffer space: lost, as on a congested link
        release = line.next_release()
        timeout = None if release is None else max(release - time.monotonic(), 0.0)
        readable, _, _ = select.select([fd, control], [], [], timeout)
        if fd in readable:
            now = time.monotonic()
            for _ in range(256):  # a burst, then look at the clock again
                try:
                    packet = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                line.push(packet, now)
        if control in readable:
            data = os.read(control, 65536)
            if not data:
                return 0  # the lab closed our stdin, or died
            pending += data
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                if not raw.strip():
                    continue
                command = json.loads(raw)
                if "delays" in command:
                    line.set_delays(command["delays"])
                    _answer({"ok": len(line.delays)})
                else:
                    _answer(line.stats())


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: delay.py TUN-NAME [LIMIT]", file=sys.stderr)
        return 2
    return serve(argv[0], int(argv[1]) if len(argv) == 2 else DEFAULT_LIMIT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
