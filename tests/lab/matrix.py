"""The pairing matrix of issue 5: which NAT behaviours should meet directly, and a driver.

Theory of operation
-------------------
``EXPECTED`` is the one table of expected outcomes, for every unordered pair of the
five behaviours (``BEHAVIOURS``), same-kind pairs included, each with the reason.
``MatrixLab`` builds, inside one ``Lab``, a relay (also the DHT bootstrap) and two
*sites* per behaviour (a router chain with one host behind it), so a same-kind pair
still has two routers and never needs hairpinning. ``MatrixLab.run_pair`` runs one
scenario: the behaviour check of both sites, two fresh ``tests/peers/nat_node.py``
processes (B reserves on the relay, A dials B by peer ID through B's record), a sink
stream that keeps flowing from A over the relayed session, the wait for the direct
path (or for the punch to give up), optionally a forced fallback to the relay, and
the hash check at the end. The test (tests/test_nat_lab.py) asserts on its result;
the benchmark (bench/nat.py) records it. Standard library only, like ``netlab``.

Each scenario uses its own UDP ports (``index``), so scenarios sharing a router (and,
for the EIM router, its port-keyed map) can run one after another or side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .netlab import Host, Lab, Nat, Router

ROOT = Path(__file__).resolve().parents[2]

BEHAVIOURS = ("eim", "port-preserving", "symmetric", "double-nat", "udp-blocked")

# The published matrices (RFC 4787 terms; e.g. Ford, Srisuresh, Kegel 2005, and libp2p's
# DCUtR measurements): a punch works when each side's probes reach the other side's
# mapping. An endpoint-independent mapping (EIM, port-preserving, double NAT made of two
# EIM layers) keeps the port the peer learned from the relay's PONGs; a symmetric NAT
# draws a new port toward the peer, which only an endpoint-independent filter accepts.
_DIRECT, _RELAY = "direct", "relay"
EXPECTED: dict[frozenset[str], tuple[str, str]] = {
    frozenset({"eim"}): (_DIRECT, "both open: either side's probes get in"),
    frozenset({"eim", "port-preserving"}): (
        _DIRECT,
        "the open side accepts anything; the restricted side's outbound opens its own filter",
    ),
    frozenset({"eim", "symmetric"}): (
        _DIRECT,
        "one strict side, the other open: the open side accepts the symmetric side's new "
        "port, and answers to that port",
    ),
    frozenset({"eim", "double-nat"}): (
        _DIRECT,
        "open side vs. two endpoint-independent layers: like eim + port-preserving",
    ),
    frozenset({"eim", "udp-blocked"}): (_RELAY, "no UDP leaves the blocked side except to relays"),
    frozenset({"port-preserving"}): (
        _DIRECT,
        "both keep their port toward every destination: simultaneous probes open both filters",
    ),
    frozenset({"port-preserving", "symmetric"}): (
        _RELAY,
        "symmetric with port-restricted: the port the restricted side probes is not the one "
        "the symmetric side uses toward it, and the restricted filter drops the new one",
    ),
    frozenset({"port-preserving", "double-nat"}): (
        _DIRECT,
        "both endpoint-independent and port-preserving (the carrier keeps the port too)",
    ),
    frozenset({"port-preserving", "udp-blocked"}): (_RELAY, "UDP blocked except to relays"),
    frozenset({"symmetric"}): (_RELAY, "symmetric with symmetric: neither port is predictable"),
    frozenset({"symmetric", "double-nat"}): (
        _RELAY,
        "symmetric with port-restricted (the double NAT filters like its home router)",
    ),
    frozenset({"symmetric", "udp-blocked"}): (_RELAY, "UDP blocked except to relays"),
    frozenset({"double-nat"}): (
        _DIRECT,
        "two endpoint-independent, port-preserving chains, behind different carriers",
    ),
    frozenset({"double-nat", "udp-blocked"}): (_RELAY, "UDP blocked except to relays"),
    frozenset({"udp-blocked"}): (_RELAY, "UDP blocked except to relays, on both sides"),
}

PAIRS: list[tuple[str, str]] = [
    (a, b) for i, a in enumerate(BEHAVIOURS) for b in BEHAVIOURS[i:]
]  # 15 unordered pairs, A (the dialler) first
assert {frozenset(p) for p in PAIRS} == set(EXPECTED)

RELAY_PORT = 4000
# The relay admits more reservations per IP than its default (4): scenarios side by side
# put several peers behind one router. tests/test_nat_lab.py checks the cap itself.
RELAY_LIMITS = {"max_reservations_per_ip": 64, "max_reservations": 512}
READ_TIMEOUT = 40.0


def expected(a: str, b: str) -> str:
    return EXPECTED[frozenset({a, b})][0]


def seed(label: str) -> str:
    return hashlib.sha256(b"nat lab " + label.encode()).hexdigest()


class NodeProcess:
    """One ``tests/peers/nat_node.py`` process: its first line, then commands."""

    def __init__(self, host: Host, args: dict[str, Any]) -> None:
        self.process: subprocess.Popen[str] = host.python(
            ["-m", "tests.peers.nat_node", json.dumps(args)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info: dict[str, Any] = self.read()

    def read(self, timeout: float = READ_TIMEOUT) -> Any:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"lab node gave no answer in {timeout} s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"lab node exited with {self.process.poll()}")
        return json.loads(line)

    def ask(self, command: dict[str, Any], timeout: float = READ_TIMEOUT) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class MatrixLab:
    """A relay and two sites per behaviour in ``lab``; runs the matrix's scenarios."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.relay_host = lab.internet_host("relay")
        self.relay = NodeProcess(
            self.relay_host,
            {
                "seed": seed("relay"),
                "host": self.relay_host.address,
                "port": RELAY_PORT,
                "relay": True,
                "limits": RELAY_LIMITS,
            },
        )
        self.via = [self.relay_host.address, RELAY_PORT, self.relay.info["peer_id"]]
        # For the hosts that decide by themselves (``HostedMatrix``): two more DHT servers
        # and relays, and a public host that is told nothing about itself. UDP-blocked
        # sites may reach all of them, as they may reach every relay.
        self.servers = [lab.internet_host("dht2"), lab.internet_host("dht3")]
        self.public_host = lab.internet_host("pub")
        self.sites: dict[tuple[str, int], Host] = {}
        for behaviour in BEHAVIOURS:
            for n in (1, 2):
                self.sites[behaviour, n] = lab.host(
                    f"{_short(behaviour)}{n}-h", self._router(behaviour, n)
                )
        self._check_lock = threading.Lock()
        # Started here, from the thread that builds the lab: lab processes die with the
        # thread that started them, and scenarios may run in short-lived worker threads.
        lab.reflectors()

    def _router(self, behaviour: str, n: int) -> Router:
        name = f"{_short(behaviour)}{n}"
        lab = self.lab
        if behaviour == "eim":
            return lab.router(name, Nat.EIM)
        if behaviour == "port-preserving":
            return lab.router(name, Nat.PORT_PRESERVING)
        if behaviour == "symmetric":
            return lab.router(name, Nat.SYMMETRIC)
        if behaviour == "double-nat":
            return lab.router(name, Nat.PORT_PRESERVING, behind=lab.carrier(f"cgn{n}"))
        if behaviour == "udp-blocked":
            relays = [self.relay_host, *self.servers, self.public_host]
            return lab.router(name, Nat.UDP_BLOCKED, relays=relays)
        raise ValueError(behaviour)

    def hosts(self, a: str, b: str) -> tuple[Host, Host]:
        """A on the first site of its behaviour, B on the second of its own."""
        return self.sites[a, 1], self.sites[b, 2]

    def check(self, host: Host) -> dict[str, Any]:
        """The behaviour check of ``host``'s router chain (raises ``BehaviourMismatch``)."""
        with self._check_lock:  # one reflector process serves every check
            return self.lab.check(host).summary()

    def run_pair(
        self,
        a: str,
        b: str,
        index: int,
        *,
        fallback: str | None = None,
        chunk: int = 4096,
        pause: float = 0.02,
        settle_timeout: float = 15.0,
    ) -> dict[str, Any]:
        """One scenario: A behind ``a`` dials B behind ``b``; the measured result.

        ``fallback``: after the direct path came up, ``"drop"`` drops UDP between A and
        B's public address in A's router, ``"flush"`` flushes conntrack in B's routers;
        the scenario then waits for A to move (back to the relay, or after a flush possibly
        to B's new address) before the hash check.
        """
        host_a, host_b = self.hosts(a, b)
        result: dict[str, Any] = {
            "a": a,
            "b": b,
            "expected": expected(a, b),
            "why": EXPECTED[frozenset({a, b})][1],
            "outcome": "failed",
            "time_to_first_byte_ms": None,
            "time_to_direct_ms": None,
            "rtt_ms_direct": None,
            "rtt_ms_relay": None,
        }
        nodes: list[NodeProcess] = []
        started = time.monotonic()
        try:
            result["checks"] = {"a": self.check(host_a), "b": self.check(host_b)}
            port = 6000 + 2 * index
            node_b = NodeProcess(
                host_b,
                {
                    "seed": seed(f"{a}/{b} b"),
                    "host": host_b.address,
                    "port": port + 1,
                    "via": self.via,
                },
            )
            nodes.append(node_b)
            node_a = NodeProcess(
                host_a,
                {"seed": seed(f"{a}/{b} a"), "host": host_a.address, "port": port, "via": self.via},
            )
            nodes.append(node_a)
            opened = node_a.ask(
                {
                    "op": "open",
                    "peer": node_b.info["peer_id"],
                    "record": node_b.info["record"],
                    "chunk": chunk,
                    "pause": pause,
                }
            )
            _merge(result, opened)
            result["first_path"] = opened["first_path"]
            settled = node_a.ask({"op": "wait", "until": "settled", "timeout": settle_timeout})
            _merge(result, settled)
            result["settled_path"] = settled["path"]
            direct = [t for t, kind, _ in settled["history"] if kind == "direct"]
            result["time_to_direct_ms"] = direct[0] if direct else None
            if fallback is not None and settled["path"] == "direct":
                if fallback == "drop":
                    host_a.drop_direct(host_b)
                elif fallback == "flush":
                    for router in host_b.routers:
                        router.flush_conntrack()
                else:
                    raise ValueError(fallback)
                # A dropped path ends on the relay; after a flush the peer's NAT may pick a
                # new port, which A may follow directly instead (node/path.py, rebinding).
                until = "relay" if fallback == "drop" else "moved"
                back = node_a.ask({"op": "wait", "until": until, "timeout": settle_timeout})
                result["fallback"] = {"how": fallback, "reached": back["reached"]}
                _merge(result, back)
                time.sleep(0.5)  # some data on the relay again before the stream ends
            finished = node_a.ask({"op": "finish"})
            result.update(
                ok=finished["ok"],
                bytes=finished["bytes"],
                history=finished["history"],
                stats=finished["stats"],
            )
            if finished["ok"]:
                result["outcome"] = settled["path"]
        except Exception as exc:  # the scenario failed: recorded, the test asserts on it
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if fallback == "drop":
                host_a.restore_direct()
            for node in nodes:
                node.stop()
        result["scenario_s"] = round(time.monotonic() - started, 2)
        return result

    def close(self) -> None:
        self.relay.stop()


def _short(behaviour: str) -> str:
    return {
        "eim": "eim",
        "port-preserving": "pp",
        "symmetric": "sym",
        "double-nat": "dbl",
        "udp-blocked": "udpb",
    }[behaviour]


def _merge(result: dict[str, Any], answer: dict[str, Any]) -> None:
    """Keep the first round trip measured on each kind of path."""
    for key in ("time_to_first_byte_ms", "rtt_ms_direct", "rtt_ms_relay"):
        if result.get(key) is None and answer.get(key) is not None:
            result[key] = answer[key]


HOST_SEED_PORT = 4100
HOST_PORT = 8000
# The lab's public hosts share 203.0.113.0/24: reporters and helpers count per address
# there, as spec/04 section 4.2 allows on a test network.
HOST_PREFIX_BITS = 32


class HostedMatrix:
    """``tests/peers/nat_node.py`` in ``hosted`` mode (node/host.py) on every site of a
    ``MatrixLab``: three public DHT servers and relays (``public`` forced: the seed on the
    relay's host, ``dht2``, ``dht3``), one public host left to decide (``pub``) and one
    host per site, each started with nothing but the seed's bootstrap string."""

    def __init__(self, matrix: MatrixLab) -> None:
        self.matrix = matrix
        self.nodes: dict[str, NodeProcess] = {}
        self.status: dict[str, dict[str, Any]] = {}
        try:
            seed_node = self._start("seed", matrix.relay_host, HOST_SEED_PORT, public=True)
            self.bootstrap = seed_node.info["bootstrap"]
            for server in matrix.servers:
                self._start(server.name, server, HOST_PORT, public=True)
            self._start("pub", matrix.public_host, HOST_PORT)
            for (behaviour, n), site in matrix.sites.items():
                self._start(f"{behaviour}/{n}", site, HOST_PORT)
        except BaseException:
            self.close()
            raise

    def _start(self, label: str, host: Host, port: int, **extra: Any) -> NodeProcess:
        args: dict[str, Any] = {
            "hosted": True,
            "seed": seed(f"hosted {label}"),
            "host": host.address,
            "port": port,
            "prefix_bits": HOST_PREFIX_BITS,
            "limits": RELAY_LIMITS,
            # One relay each, the seed: no site holds a session with another site before
            # the connect under test (a second relay could be a public site).
            "max_relays": 1,
            **extra,
        }
        if label != "seed":
            args["seeds"] = [self.bootstrap]
        node = NodeProcess(host, args)
        self.nodes[label] = node
        return node

    def settle(self, timeout: float = 40.0) -> dict[str, dict[str, Any]]:
        """Every host's status once it decided (or ``timeout`` passed), side by side."""
        for node in self.nodes.values():
            assert node.process.stdin is not None
            node.process.stdin.write(json.dumps({"op": "settle", "timeout": timeout}) + "\n")
            node.process.stdin.flush()
        self.status = {label: node.read(timeout + 20) for label, node in self.nodes.items()}
        return self.status

    def connect(self, a: str, b: str, timeout: float = 15.0) -> dict[str, Any]:
        """The host on A's first site connects to the host on B's second site by peer ID."""
        node_a, node_b = self.nodes[f"{a}/1"], self.nodes[f"{b}/2"]
        result: dict[str, Any] = {"a": a, "b": b, "expected": expected(a, b)}
        answer = node_a.ask(
            {"op": "connect", "peer": node_b.info["peer_id"], "timeout": timeout}, timeout + 60
        )
        result.update(answer)
        result["outcome"] = answer.get("path", "failed") if answer.get("ok") else "failed"
        return result

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
