"""UDP reflector and probe for the NAT lab's behaviour check; runs inside a lab namespace.

The orchestrator (``netlab.Lab``) drives both modes over stdin/stdout, one JSON object per
line; each process first prints ``{"ready": [[ip, port], ...]}`` with the addresses it bound
and exits when its stdin closes. All datagrams are small JSON objects.

``serve ADDR:PORT...``
    One UDP socket per address (port 0 picks one). A datagram ``{"ask": n}`` is answered
    from the same socket with ``{"ask": n, "seen": [ip, port]}``: the source address the
    reflector saw, i.e. the sender's mapping on the outermost NAT.
    stdin ``{"op": "send", "from": [ip, port], "to": [ip, port], "token": t}`` sends
    ``{"token": t}`` from the socket bound at ``from`` (an unsolicited datagram, to test
    filtering); answers ``{"ok": true}``.

``probe ADDR:PORT``
    One UDP socket, the one whose mapping is being measured.
    stdin ``{"op": "ask", "to": [ip, port], "timeout": s, "tries": n}`` asks a reflector
    and answers ``{"seen": [ip, port]}``, or ``{"seen": null}`` when nothing came back.
    stdin ``{"op": "listen", "seconds": s, "until": t}`` collects token datagrams for up
    to ``s`` seconds (returning early once token ``t`` arrived) and answers
    ``{"tokens": [[token, [ip, port]], ...]}``, including any that arrived earlier.

By hand, in two shells (namespace names from ``Lab.description()``)::

    ip netns exec stlab-...-refl python3 tests/lab/reflector.py serve 203.0.113.201:3478
    ip netns exec stlab-...-a1 python3 tests/lab/reflector.py probe 10.1.0.10:0
    {"op": "ask", "to": ["203.0.113.201", 3478], "timeout": 0.5, "tries": 2}
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

Address = tuple[str, int]


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Lines:
    """Lines from a file descriptor, read with os.read so select() never misses buffered data."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def feed(self) -> list[str]:
        data = os.read(self.fd, 65536)
        if not data:
            self.closed = True
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines if line.strip()]

    def __iter__(self) -> Iterator[str]:
        while not self.closed:
            yield from self.feed()


def datagram(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def serve(binds: list[Address]) -> None:
    sockets: dict[Address, socket.socket] = {}
    selector = selectors.DefaultSelector()
    for address in binds:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(address)
        sockets[sock.getsockname()] = sock
        selector.register(sock, selectors.EVENT_READ)
    stdin = Lines(sys.stdin.fileno())
    selector.register(stdin.fd, selectors.EVENT_READ)
    emit({"ready": [list(address) for address in sockets]})
    while not stdin.closed:
        for key, _ in selector.select():
            if key.fileobj == stdin.fd:
                for line in stdin.feed():
                    command = json.loads(line)
                    source = sockets[tuple(command["from"])]  # type: ignore[index]
                    source.sendto(datagram({"token": command["token"]}), tuple(command["to"]))
                    emit({"ok": True})
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data, sender = sock.recvfrom(2048)
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if isinstance(message, dict) and "ask" in message:
                sock.sendto(datagram({"ask": message["ask"], "seen": list(sender)}), sender)


class Probe:
    def __init__(self, bind: Address) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.asked = 0
        self.tokens: list[list[Any]] = []

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """One datagram before the deadline (tokens are kept aside), or None."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            data, sender = self.sock.recvfrom(2048)
        except TimeoutError:
            return None
        try:
            message = json.loads(data)
        except ValueError:
            return {}
        if not isinstance(message, dict):
            return {}
        if "token" in message:
            self.tokens.append([message["token"], list(sender)])
        return message

    def ask(self, to: Address, timeout: float, tries: int) -> list[Any] | None:
        self.asked += 1
        for _ in range(tries):
            try:
                self.sock.sendto(datagram({"ask": self.asked}), to)
            except OSError:
                return None
            deadline = time.monotonic() + timeout
            while (message := self.receive(deadline)) is not None:
                if message.get("ask") == self.asked:
                    seen: list[Any] = message["seen"]
                    return seen
        return None

    def listen(self, seconds: float, until: str | None) -> list[list[Any]]:
        deadline = time.monotonic() + seconds
        while not any(token == until for token, _ in self.tokens):
            if self.receive(deadline) is None:
                break
        tokens, self.tokens = self.tokens, []
        return tokens


def probe(bind: Address) -> None:
    client = Probe(bind)
    emit({"ready": [list(client.sock.getsockname())]})
    for line in Lines(sys.stdin.fileno()):
        command = json.loads(line)
        if command["op"] == "ask":
            seen = client.ask(tuple(command["to"]), command["timeout"], command["tries"])  # type: ignore[arg-type]
            emit({"seen": seen})
        elif command["op"] == "listen":
            emit({"tokens": client.listen(command["seconds"], command.get("until"))})
        else:
            emit({"error": f"unknown op {command['op']!r}"})


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve([parse_address(text) for text in argv[1:]])
        return 0
    if len(argv) == 2 and argv[0] == "probe":
        probe(parse_address(argv[1]))
        return 0
    sys.stderr.write("usage: reflector.py serve ADDR:PORT... | reflector.py probe ADDR:PORT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
