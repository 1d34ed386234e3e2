"""The NAT lab: real Linux NAT between network namespaces, for tests of the path layer.

Theory of operation
-------------------
A ``Lab`` owns network namespaces named ``<prefix>-<node>``; the prefix
``stlab-<pid>-<6 hex>`` is unique per lab, so parallel runs never collide and a crashed
run's leftovers can be recognised (its pid is dead) and swept by the next one. Every
interface lives inside a lab namespace: veth pairs are created with both ends placed
straight into lab namespaces, so the root namespace's interfaces, routes and sysctls are
never touched, and deleting the namespaces deletes the veths.

The "internet" is a core router namespace (``<prefix>-inet``). Every node attached to it
gets one veth and a /32 address from the documentation ranges: public hosts (relays,
bootstrap nodes) in 203.0.113.0/24, router WAN addresses in 198.51.100.0/24, gateways
203.0.113.1 and 198.51.100.1 on the core's loopback. Traffic between two internet nodes
is always routed through the core, whose ``forward`` hook is the one place for loss and
for dropping a public host's direct path.

A router namespace has a ``wan`` veth and a ``lan`` bridge; hosts (or inner routers, for
double NAT) sit on that bridge with a private address and a default route. The NAT is
nftables in the router namespace, one ruleset per ``Nat`` kind (see ``_router_ruleset``).
Unsolicited datagrams to a router's WAN address are dropped silently, as home routers do.

``Lab.check`` verifies a router before a scenario uses it: reflectors on two internet
addresses report the source address they saw for datagrams from one socket behind the
NAT (mapping and port preservation), then a third address, and the first reflector's
address from another port, send unsolicited datagrams to that mapping (filtering).

WAN delay is a one-way delay per link into the core, so a datagram crossing the internet
waits for both of its links. Where the kernel has the ``netem`` qdisc it sits on both ends
of every link. Elsewhere (nothing else in the kernel holds a packet for a fixed time:
``tbf``/``htb`` only shape rate, nftables can drop but not delay) the core routes every
forwarded packet through a TUN device to ``delay.py``, which holds it for the sum of its
two links' delays and hands it back; policy routing (``iif dly``) sends it on by the real
routes. Either way the delay lives in the core only, so the routers' NAT and conntrack
are untouched. ``Lab.description()["delay"]`` says which (``by``: netem or tun), or why
there is none. Loss does not need netem: the core drops with nftables' ``numgen random``.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Address = tuple[str, int]

REFLECTOR_SCRIPT = Path(__file__).with_name("reflector.py")
DELAY_SCRIPT = Path(__file__).with_name("delay.py")
DELAY_TUN = "dly"  # the core's TUN device for the userspace delay
DELAY_TABLE = 200  # the core's routing table that sends everything into that TUN
PREFIX_PATTERN = re.compile(r"^(stlab-(\d+)-[0-9a-f]{6})-")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
REQUIRED_TOOLS = ("ip", "tc", "nft", "conntrack")

PUBLIC_HOSTS = ipaddress.IPv4Network("203.0.113.0/24")  # relays, bootstrap nodes, reflectors
ROUTER_WANS = ipaddress.IPv4Network("198.51.100.0/24")  # routers on the internet
GATEWAYS = {PUBLIC_HOSTS: "203.0.113.1", ROUTER_WANS: "198.51.100.1"}
CARRIER_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # shared address space, RFC 6598

# The behaviour check's reflectors: two addresses for the mapping, a third for filtering.
REFLECTOR_1: Address = ("203.0.113.201", 3478)
REFLECTOR_2: Address = ("198.51.100.201", 3478)
THIRD_PARTY: Address = ("203.0.113.202", 3478)
REFLECTOR_1_OTHER_PORT: Address = (REFLECTOR_1[0], 3479)


class LabError(RuntimeError):
    """The lab could not be built, driven or torn down."""


class BehaviourMismatch(LabError):
    """A router does not behave as its NAT kind promises; the scenario would test nothing."""


class Nat(enum.StrEnum):
    """The router behaviours of issue 5, item 6."""

    EIM = "eim"
    """Endpoint-independent mapping and filtering: an explicit nftables dynamic map."""
    PORT_PRESERVING = "port-preserving"
    """``masquerade`` (keeps the source port when free); address-and-port-dependent filtering."""
    SYMMETRIC = "symmetric"
    """``masquerade random``: a new random port per destination."""
    UDP_BLOCKED = "udp-blocked"
    """``masquerade``; UDP from the LAN dropped unless it goes to a relay address."""


class Mapping(enum.StrEnum):
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ENDPOINT_DEPENDENT = "endpoint-dependent"


class Filtering(enum.StrEnum):
    # Ordered from open to strict; a chain of NATs filters like its strictest member.
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


_FILTERING_ORDER = list(Filtering)

# What the behaviour check must measure behind one router of each kind. Fields left out are
# not constrained (a symmetric NAT may, rarely, pick the very port the host used).
_EXPECTED: dict[Nat, dict[str, Any]] = {
    Nat.EIM: {
        "udp_open": True,
        "mapping": Mapping.ENDPOINT_INDEPENDENT,
        "filtering": Filtering.ENDPOINT_INDEPENDENT,
        "port_preserved": True,
    },
    # Linux keeps the source port whenever the resulting tuple is free, so toward two
    # destinations the external port is the same: endpoint-independent as observed.
    Nat.PORT_PRESERVING: {
        "udp_open": True,
        "mapping": Mapping.ENDPOINT_INDEPENDENT,
        "filtering": Filtering.ADDRESS_AND_PORT_DEPENDENT,
        "port_preserved": True,
    },
    Nat.SYMMETRIC: {
        "udp_open": True,
        "mapping": Mapping.ENDPOINT_DEPENDENT,
        "filtering": Filtering.ADDRESS_AND_PORT_DEPENDENT,
    },
    Nat.UDP_BLOCKED: {"udp_open": False},
}


@dataclass(frozen=True)
class Behaviour:
    """What the behaviour check measured from one UDP socket on a host."""

    udp_open: bool
    """Both reflectors answered."""
    mapping: Mapping | None
    filtering: Filtering | None
    port_preserved: bool | None
    relays_reachable: bool | None
    """Only measured behind a UDP-blocked router with relays: every relay answered."""
    local: Address
    seen: tuple[Address | None, Address | None]
    """The source address reflector 1 and reflector 2 saw."""

    def summary(self) -> dict[str, Any]:
        """The measured fields as plain JSON values (addresses as "ip:port")."""
        summary: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "seen":
                summary[key] = [_text(address) for address in value]
            elif key == "local":
                summary[key] = _text(value)
            elif value is not None:
                summary[key] = str(value) if isinstance(value, enum.Enum) else value
        return summary

    def __str__(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.summary().items())


def _text(address: Address | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


def expected_behaviour(host: Host) -> dict[str, Any]:
    """The behaviour a host's chain of routers should show, composed inside out."""
    routers = host.routers
    if not routers:
        return {"udp_open": True, "port_preserved": True}
    blocking = [r for r in routers if r.kind is Nat.UDP_BLOCKED]
    if blocking:
        expected: dict[str, Any] = {"udp_open": False}
        if blocking[0].relays:
            expected["relays_reachable"] = True
        return expected
    parts = [_EXPECTED[r.kind] for r in routers]
    independent = all(p["mapping"] is Mapping.ENDPOINT_INDEPENDENT for p in parts)
    expected = {
        "udp_open": True,
        "mapping": Mapping.ENDPOINT_INDEPENDENT if independent else Mapping.ENDPOINT_DEPENDENT,
        "filtering": max((p["filtering"] for p in parts), key=_FILTERING_ORDER.index),
    }
    if all(p.get("port_preserved") for p in parts):
        expected["port_preserved"] = True
    return expected


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (not root, tools missing), or None."""
    if os.geteuid() != 0:
        return "not running as root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing " + ", ".join(missing) + " (apt-get install iproute2 nftables conntrack)"
    return None


def _run(
    argv: Sequence[str], *, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        shown = f"\n--- input ---\n{input}" if input else ""
        raise LabError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}{shown}"
        )
    return result


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    # Only ever namespaces this module created: whatever runs in them was started by a lab.
    pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_netns(names: Iterable[str]) -> None:
    for name in names:
        _kill_netns_processes(name)
    for name in names:
        _run(["ip", "netns", "del", name], check=False)


def sweep_stale() -> list[str]:
    """Delete lab namespaces left behind by runs whose process is gone; returns their names."""
    stale = []
    for name in _netns_list():
        match = PREFIX_PATTERN.match(name)
        if match and not _pid_alive(int(match.group(2))):
            stale.append(name)
    _delete_netns(stale)
    return stale


_LIVE: dict[str, Lab] = {}


@atexit.register
def _close_live_labs() -> None:
    for lab in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            lab.close()


class Node:
    """A network namespace in the lab: a host, a router, the core or the reflectors."""

    def __init__(self, lab: Lab, name: str, address: str, upstream: Router | None) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"{lab.prefix}-{name}"
        self.address = address
        """Its own IPv4 address on its uplink (a router's WAN address)."""
        self.upstream = upstream
        """The router it sits behind, or None when it is attached to the internet core."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.address} in {self.netns}>"

    @property
    def routers(self) -> list[Router]:
        """The routers between this node and the internet, innermost first."""
        chain = []
        router = self.upstream
        while router is not None:
            chain.append(router)
            router = router.upstream
        return chain

    @property
    def public_ip(self) -> str:
        """The address the internet sees this node's traffic come from."""
        routers = self.routers
        return routers[-1].address if routers else self.address

    def command(self, argv: Sequence[str], *, die_with_parent: bool = True) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        wrapped = ["ip", "netns", "exec", self.netns]
        if die_with_parent and shutil.which("setpriv"):
            # If the test process dies without cleaning up, its lab processes die with it.
            # The "parent" is the thread that started the process: start from a thread
            # that lives as long as the process should.
            wrapped += ["setpriv", "--pdeathsig", "KILL", "--"]
        return [*wrapped, *argv]

    def popen(
        self, argv: Sequence[str], *, die_with_parent: bool = True, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this namespace (kwargs go to Popen); the lab stops it on close."""
        process: subprocess.Popen[Any] = subprocess.Popen(
            self.command(argv, die_with_parent=die_with_parent), **kwargs
        )
        self.lab._processes.append(process)
        return process

    def python(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start this interpreter inside the namespace, e.g. ``["-m", "tests.peers.x"]``."""
        return self.popen([sys.executable, *args], **kwargs)

    def run(
        self, argv: Sequence[str], *, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace to completion, capturing text output."""
        return _run(self.command(argv, die_with_parent=False), input=input, check=check)

    def _ip(self, commands: Sequence[str]) -> None:
        _run(["ip", "-n", self.netns, "-batch", "-"], input="\n".join(commands) + "\n")

    def _nft(self, ruleset: str) -> None:
        _run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], input=ruleset)

    def _sysctl(self, settings: dict[str, object], optional: Sequence[str] = ()) -> None:
        # Written straight to /proc/sys (the sysctl tool is not always installed); net.*
        # there belongs to the namespace of the writing process. Optional keys may be
        # missing on some kernels (IPv6 or bridge netfilter not built).
        script = []
        for key, value in settings.items():
            path = "/proc/sys/" + key.replace(".", "/")
            write = f"echo {int(str(value))} > {path}"
            script.append(f"if [ -e {path} ]; then {write}; fi" if key in optional else write)
        _run(["ip", "netns", "exec", self.netns, "sh", "-ec", "\n".join(script)])

    def _first_hop(self) -> Node:
        """The namespace that forwards this node's traffic: its router, else the core."""
        return self.upstream if self.upstream is not None else self.lab.core

    def drop_direct(self, *peers: Node | str) -> None:
        """Silently drop UDP between this node and the peers' public addresses.

        The rule sits in the forward hook of this node's first hop (its router, or the
        internet core for a public host), so the node's own sockets see no error, only
        silence, as when a NAT mapping dies. Relays and everything else keep working.
        """
        hop = self._first_hop()
        for peer in peers:
            ip = peer.public_ip if isinstance(peer, Node) else str(ipaddress.IPv4Address(peer))
            for source, destination in ((self.address, ip), (ip, self.address)):
                hop._nft(
                    f"add rule ip lab_filter direct ip saddr {source} ip daddr {destination}"
                    f' meta l4proto udp drop comment "{self._drop_tag}"\n'
                )

    def restore_direct(self) -> None:
        """Remove the rules ``drop_direct`` added for this node (other nodes' stay)."""
        hop = self._first_hop()
        listing = hop.run(["nft", "-a", "list", "chain", "ip", "lab_filter", "direct"]).stdout
        handles = re.findall(rf'comment "{self._drop_tag}" # handle (\d+)', listing)
        hop._nft("".join(f"delete rule ip lab_filter direct handle {h}\n" for h in handles))

    @property
    def _drop_tag(self) -> str:
        return f"drop-direct {self.name}"


class Host(Node):
    """A host: a peer behind a router, or a public node (relay, bootstrap) on the internet."""


class Router(Node):
    """A NAT router: ``wan`` toward its upstream, ``lan`` bridge toward the hosts behind it."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        address: str,
        upstream: Router | None,
        *,
        kind: Nat,
        lan: ipaddress.IPv4Network,
        relays: Sequence[str],
        udp_timeout: int | None,
    ) -> None:
        super().__init__(lab, name, address, upstream)
        self.kind = kind
        self.lan = lan
        self.lan_ip = str(lan.network_address + 1)
        self.relays = list(relays)
        self.udp_timeout = udp_timeout
        self.downstream: list[Node] = []
        self._next_host = 10

    def _next_lan_address(self) -> str:
        address = self.lan.network_address + self._next_host
        if address not in self.lan or address == self.lan.broadcast_address:
            raise LabError(f"router {self.name}: no addresses left in {self.lan}")
        self._next_host += 1
        return str(address)

    def flush_conntrack(self, *, nat_map: bool = False) -> None:
        """``conntrack -F`` in this router: every flow forgets its mapping.

        An endpoint-independent router keeps its mappings in the nftables map as well;
        ``nat_map=True`` empties that too.
        """
        self.run(["conntrack", "-F"])
        if nat_map and self.kind is Nat.EIM:
            self._nft("flush map ip lab_nat m\n")

    def conntrack(self) -> str:
        """The router's UDP conntrack table, as ``conntrack -L -p udp`` prints it."""
        return self.run(["conntrack", "-L", "-p", "udp"]).stdout

    def allow_udp_to(self, *relays: str) -> None:
        """Add relay addresses a UDP-blocked router lets UDP through to."""
        for ip in relays:
            ipaddress.IPv4Address(ip)
            self.relays.append(ip)
            self._nft(f"add element ip lab_filter relays {{ {ip} }}\n")


def _chain(name: str, hook: str, rules: Sequence[str]) -> list[str]:
    return [
        f"    chain {name} {{",
        f"        {hook}",
        *(f"        {rule}" for rule in rules),
        "    }",
    ]


def _router_ruleset(router: Router) -> str:
    """The nftables rules that make a namespace the NAT ``router.kind`` promises."""
    wan = router.address
    nat: list[str] = []
    prerouting: list[str] = []
    postrouting: list[str] = []
    forward = ["jump direct"]
    if router.kind is Nat.EIM:
        # Issue 5, item 6: the explicit dynamic map. The first datagram of a flow from the
        # LAN records external port -> (host, port) and is SNATed with its port kept; a new
        # flow from anywhere to that port is DNATed back through the map (so filtering is
        # endpoint-independent too). An entry lives `timeout` after the last outbound
        # datagram from its port: the refresh chain updates it on every one, not only on
        # the first datagram of a flow, which is all a nat chain ever sees.
        timeout = f"{router.udp_timeout}s" if router.udp_timeout else "300s"
        nat += [
            "    map m { type inet_service : ipv4_addr . inet_service;"
            f" flags dynamic,timeout; timeout {timeout}; }}",
            *_chain(
                "refresh",
                "type filter hook forward priority filter - 1; policy accept;",
                ['oifname "wan" update @m { udp sport : ip saddr . udp sport }'],
            ),
        ]
        postrouting += [
            f'oifname "wan" update @m {{ udp sport : ip saddr . udp sport }} snat to {wan}',
            f'oifname "wan" snat to {wan}',
        ]
        prerouting.append(f'iifname "wan" ip daddr {wan} dnat to udp dport map @m')
    elif router.kind is Nat.SYMMETRIC:
        postrouting.append('oifname "wan" masquerade random')
    else:
        postrouting.append('oifname "wan" masquerade')
    if router.kind is Nat.UDP_BLOCKED:
        forward.append('oifname "wan" meta l4proto udp ip daddr != @relays drop')
    if router.kind is not Nat.EIM:
        # Only replies get in: address-and-port-dependent filtering.
        forward += ['iifname "wan" ct state established,related accept', 'iifname "wan" drop']
    relays = f"elements = {{ {', '.join(router.relays)} }}; " if router.relays else ""
    lines = [
        "table ip lab_nat {",
        *nat,
        *_chain(
            "prerouting", "type nat hook prerouting priority dstnat; policy accept;", prerouting
        ),
        *_chain(
            "postrouting", "type nat hook postrouting priority srcnat; policy accept;", postrouting
        ),
        "}",
        "table ip lab_filter {",
        f"    set relays {{ type ipv4_addr; {relays}}}",
        "    chain direct {",
        "    }",
        # Unsolicited datagrams to the router itself vanish instead of drawing an ICMP error.
        *_chain(
            "input",
            "type filter hook input priority filter; policy accept;",
            ['iifname "wan" meta l4proto udp drop'],
        ),
        *_chain("forward", "type filter hook forward priority filter; policy accept;", forward),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _core_ruleset(loss_pct: float) -> str:
    forward = ["jump direct"]
    if loss_pct > 0:
        # Once per datagram: with the userspace delay a packet is forwarded twice (into
        # the TUN, then out of it to its link); only the second pass may lose it.
        chance = round(loss_pct * 100)
        forward.append(f'oifname != "{DELAY_TUN}" numgen random mod 10000 < {chance} drop')
    lines = [
        "table ip lab_filter {",
        "    chain direct {",
        "    }",
        *_chain("forward", "type filter hook forward priority filter; policy accept;", forward),
        "}",
    ]
    return "\n".join(lines) + "\n"


class _Worker:
    """A reflector.py (or delay.py) process driven by JSON lines over its stdin and stdout."""

    def __init__(
        self,
        node: Node,
        args: Sequence[str],
        *,
        script: Path = REFLECTOR_SCRIPT,
        die_with_parent: bool = True,
    ) -> None:
        self.node = node
        self.script = script
        self.process = node.popen(
            [sys.executable, "-u", str(script), *args],
            die_with_parent=die_with_parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""
        ready = self.receive(timeout=20)["ready"]
        self.bound: list[Address] = (
            [(ip, port) for ip, port in ready] if isinstance(ready, list) else []
        )

    def receive(self, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([stdout], [], [], max(remaining, 0))
            data = os.read(stdout.fileno(), 65536) if readable else b""
            if not data:
                self.process.kill()
                self.process.wait(timeout=10)
                assert self.process.stderr is not None
                error = self.process.stderr.read().decode(errors="replace").strip()
                self.stop()
                why = "no answer in time" if not readable else "it exited"
                raise LabError(f"{self.script.name} in {self.node.netns}: {why}: {error}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, command: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        return self.receive(timeout)

    def stop(self) -> None:
        self.node.lab._stop(self.process)


class Probe:
    """One UDP socket on a host, asking reflectors what source address they see."""

    def __init__(self, host: Node) -> None:
        self.host = host
        self._worker = _Worker(host, ["probe", f"{host.address}:0"])
        self.local: Address = self._worker.bound[0]

    def ask(
        self, reflector: Address, *, timeout: float | None = None, tries: int = 3
    ) -> Address | None:
        """The source address ``reflector`` saw for a datagram from this socket, or None."""
        if timeout is None:
            timeout = 0.25 + self.host.lab._round_trip_s()
        seen = self._worker.call(
            {"op": "ask", "to": list(reflector), "timeout": timeout, "tries": tries},
            timeout=timeout * tries + 20,
        )["seen"]
        return None if seen is None else (seen[0], seen[1])

    def listen(self, seconds: float, until: str | None = None) -> dict[str, Address]:
        """Tokens of unsolicited datagrams received so far (waiting up to ``seconds``)."""
        tokens = self._worker.call(
            {"op": "listen", "seconds": seconds, "until": until}, timeout=seconds + 20
        )["tokens"]
        return {token: (source[0], source[1]) for token, source in tokens}

    def close(self) -> None:
        self._worker.stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lab:
    """A set of namespaces forming an internet with NAT routers; a context manager.

    ``delay_ms``: one-way delay on every link into the internet core (so a datagram
    crossing the internet waits 2 x delay_ms; ``internet_host``/``router`` take a per-link
    ``delay_ms`` too). By ``netem`` where the kernel has it, else by the core's TUN and
    ``delay.py``; ``description()["delay"]`` says which, or why there is none (no netem and
    no /dev/net/tun). ``loss_pct``: share of datagrams the core drops (nftables).
    """

    def __init__(self, *, delay_ms: int | None = None, loss_pct: float = 0.0) -> None:
        reason = unavailable_reason()
        if reason:
            raise LabError(f"the NAT lab needs root and nftables: {reason}")
        sweep_stale()
        self.prefix = f"stlab-{os.getpid()}-{secrets.token_hex(3)}"
        self.delay_requested_ms = delay_ms
        self.delay_ms: int | None = None
        self.delay_by: str | None = None
        """How the delay is applied: "netem", "tun" (userspace, ``delay.py``) or None."""
        self.delay_note = "no delay requested"
        self._link_delays: dict[str, int] = {}
        self._delay_worker: _Worker | None = None
        self._delay_lock = threading.Lock()
        self.loss_pct = loss_pct
        self.nodes: dict[str, Node] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self._processes: list[subprocess.Popen[Any]] = []
        self._links = 0
        self._public_hosts = 10
        self._router_wans = 10
        self._home_lans = 0
        self._carrier_lans = 0
        self._reflectors: _Worker | None = None
        self._closed = False
        _LIVE[self.prefix] = self
        try:
            self.core = Node(self, "inet", GATEWAYS[PUBLIC_HOSTS], None)
            self._add_netns(self.core)
            self.core._ip([f"address add {gateway}/32 dev lo" for gateway in GATEWAYS.values()])
            self.core._sysctl({"net.ipv4.ip_forward": 1})
            self.core._nft(_core_ruleset(loss_pct))
            if delay_ms:
                self._start_delay(delay_ms)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------

    def internet_host(
        self, name: str, address: str | None = None, *, delay_ms: int | None = None
    ) -> Host:
        """A public host on the internet (relay, bootstrap node), 203.0.113.10 onward.

        ``delay_ms``: this link's one-way delay instead of the lab's (needs a lab built
        with a delay, so that the mechanism is in place).
        """
        if address is None:
            address = str(PUBLIC_HOSTS.network_address + self._public_hosts)
            self._public_hosts += 1
        host = Host(self, self._name(name), address, None)
        self._attach_to_core(host, "eth0", delay_ms=delay_ms)
        return host

    def router(
        self,
        name: str,
        kind: Nat | str,
        *,
        behind: Router | None = None,
        lan: str | None = None,
        carrier: bool = False,
        relays: Iterable[Node | str] = (),
        udp_timeout: int | None = None,
        delay_ms: int | None = None,
    ) -> Router:
        """A NAT router, on the internet (WAN 198.51.100.10 onward) or ``behind`` another.

        ``lan``: its LAN prefix, by default 10.N.0.0/24, or 100.64.N.0/24 with
        ``carrier=True`` (a carrier-grade NAT other routers sit behind, for double NAT).
        ``relays``: for ``Nat.UDP_BLOCKED``, the addresses UDP may still go to.
        ``udp_timeout``: seconds an idle UDP flow keeps its mapping in this router
        (conntrack's unreplied and replied timeouts, and the EIM map's timeout).
        ``delay_ms``: the one-way delay of its WAN link into the core, instead of the lab's
        (routers on the internet only).
        """
        kind = Nat(kind)
        if lan is None:
            if carrier:
                self._carrier_lans += 1
                lan = f"100.64.{self._carrier_lans}.0/24"
            else:
                self._home_lans += 1
                lan = f"10.{self._home_lans}.0.0/24"
        network = ipaddress.IPv4Network(lan)
        if behind is None:
            address = str(ROUTER_WANS.network_address + self._router_wans)
            self._router_wans += 1
        else:
            address = behind._next_lan_address()
        relay_ips = [r.public_ip if isinstance(r, Node) else r for r in relays]
        router = Router(
            self,
            self._name(name),
            address,
            behind,
            kind=kind,
            lan=network,
            relays=relay_ips,
            udp_timeout=udp_timeout,
        )
        if behind is None:
            self._attach_to_core(router, "wan", delay_ms=delay_ms)
        elif delay_ms is not None:
            raise LabError(f"router {name}: only links into the core have a delay")
        else:
            self._attach_behind(router, behind, "wan")
        router._ip(
            [
                "link add lan type bridge",
                f"address add {router.lan_ip}/{network.prefixlen} dev lan",
                "link set lan up",
            ]
        )
        settings: dict[str, object] = {
            "net.ipv4.ip_forward": 1,
            "net.bridge.bridge-nf-call-iptables": 0,
        }
        if udp_timeout:
            settings["net.netfilter.nf_conntrack_udp_timeout"] = udp_timeout
            settings["net.netfilter.nf_conntrack_udp_timeout_stream"] = udp_timeout
        # Rules first: loading them loads conntrack where it is a module, and with it the
        # nf_conntrack sysctls.
        router._nft(_router_ruleset(router))
        router._sysctl(settings, optional=["net.bridge.bridge-nf-call-iptables"])
        return router

    def carrier(self, name: str, kind: Nat | str = Nat.EIM, **kwargs: Any) -> Router:
        """A carrier-grade NAT on the internet with a 100.64.0.0/10 LAN (RFC 6888: EIM)."""
        return self.router(name, kind, carrier=True, **kwargs)

    def host(self, name: str, router: Router, address: str | None = None) -> Host:
        """A host on ``router``'s LAN (10.N.0.10 onward), default route via the router."""
        host = Host(self, self._name(name), address or router._next_lan_address(), router)
        self._attach_behind(host, router, "eth0")
        return host

    def _name(self, name: str) -> str:
        if not NAME_PATTERN.match(name) or name in self.nodes or name in ("inet", "refl"):
            raise LabError(f"bad or duplicate node name {name!r} (lowercase letters, digits, -)")
        return name

    def _add_netns(self, node: Node) -> None:
        _run(["ip", "netns", "add", node.netns])
        self.nodes[node.name] = node
        node._ip(["link set lo up"])
        no_ipv6 = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
        node._sysctl(no_ipv6, optional=list(no_ipv6))

    def _attach_to_core(
        self,
        node: Node,
        device: str,
        extra: Sequence[str] = (),
        delay_ms: int | None = None,
    ) -> None:
        if delay_ms is not None and self.delay_by is None:
            raise LabError(
                f"{node.name}: a per-link delay needs a lab with a delay ({self.delay_note})"
            )
        self._add_netns(node)
        self._links += 1
        link = f"c{self._links}"
        addresses = [node.address, *extra]
        for ip in addresses:
            if not any(ipaddress.IPv4Address(ip) in net for net in GATEWAYS):
                raise LabError(f"{ip} is outside 203.0.113.0/24 and 198.51.100.0/24")
        gateway = next(
            g for net, g in GATEWAYS.items() if ipaddress.IPv4Address(node.address) in net
        )
        self.core._ip(
            [
                f"link add {link} type veth peer name {device} netns {node.netns}",
                f"link set {link} up",
                *(f"route add {ip}/32 dev {link}" for ip in addresses),
            ]
        )
        node._ip(
            [
                *(f"address add {ip}/32 dev {device}" for ip in addresses),
                f"link set {device} up",
                f"route add default via {gateway} dev {device} onlink",
            ]
        )
        delay = self.delay_ms if delay_ms is None else delay_ms
        if self.delay_by is not None:
            for ip in addresses:
                self._link_delays[ip] = delay or 0
        if self.delay_by == "netem" and delay:
            for namespace, dev in ((self.core, link), (node, device)):
                netem = ["qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay}ms"]
                _run(["tc", "-n", namespace.netns, *netem])
        elif self.delay_by == "tun":
            assert self._delay_worker is not None
            with self._delay_lock:
                self._delay_worker.call({"delays": dict.fromkeys(addresses, delay or 0)})

    def _attach_behind(self, node: Node, router: Router, device: str) -> None:
        self._add_netns(node)
        self._links += 1
        link = f"l{self._links}"
        router._ip(
            [
                f"link add {link} type veth peer name {device} netns {node.netns}",
                f"link set {link} master lan",
                f"link set {link} up",
            ]
        )
        node._ip(
            [
                f"address add {node.address}/{router.lan.prefixlen} dev {device}",
                f"link set {device} up",
                f"route add default via {router.lan_ip}",
            ]
        )
        router.downstream.append(node)

    def _start_delay(self, delay_ms: int) -> None:
        """netem where the kernel has it, else the userspace delay behind a TUN."""
        probe = ["tc", "-n", self.core.netns, "qdisc", "add", "dev", "lo", "root", "netem"]
        result = _run([*probe, "delay", f"{delay_ms}ms"], check=False)
        if result.returncode == 0:
            _run(["tc", "-n", self.core.netns, "qdisc", "del", "dev", "lo", "root"])
            self.delay_ms, self.delay_by = delay_ms, "netem"
            self.delay_note = f"netem delay {delay_ms}ms one way on both ends of every core link"
            return
        no_netem = f"this kernel has no netem qdisc ({result.stderr.strip()})"
        if not os.path.exists("/dev/net/tun"):
            self.delay_note = f"no WAN delay: {no_netem} and there is no /dev/net/tun"
            return
        self._start_tun_delay()
        self.delay_ms, self.delay_by = delay_ms, "tun"
        self.delay_note = (
            f"userspace delay ({no_netem}): the core routes forwarded packets through TUN "
            f"{DELAY_TUN} to delay.py, which holds each for its two links' delays "
            f"({delay_ms}ms one way per link)"
        )

    def _start_tun_delay(self) -> None:
        # Rule 0 (local table) keeps traffic to the core's own gateways undelayed. A packet
        # delay.py wrote back arrives with iif dly: rule 100 sends it on by main's /32
        # routes, and rule 101 blackholes what main cannot route, so it never falls
        # through to rule 200. Every other packet (arriving from a link, or sent by the
        # core itself) meets rule 200, whose table's only route is the TUN. accept_local:
        # the core's own packets (ICMP errors) come back from the TUN with a local source.
        self.core._ip([f"tuntap add dev {DELAY_TUN} mode tun"])
        self.core._sysctl(
            {
                "net.ipv4.conf.all.rp_filter": 0,
                f"net.ipv4.conf.{DELAY_TUN}.rp_filter": 0,
                f"net.ipv4.conf.{DELAY_TUN}.accept_local": 1,
            }
        )
        self.core._ip(
            [
                f"link set {DELAY_TUN} txqueuelen 10000 up",
                f"rule add iif {DELAY_TUN} lookup main pref 100",
                f"rule add iif {DELAY_TUN} blackhole pref 101",
                f"route add default dev {DELAY_TUN} table {DELAY_TABLE}",
                f"rule add lookup {DELAY_TABLE} pref 200",
            ]
        )
        # Not killed with the starting thread (the lab may outlive it): delay.py exits when
        # its stdin closes, i.e. when the lab closes or the test process dies.
        self._delay_worker = _Worker(
            self.core, [DELAY_TUN], script=DELAY_SCRIPT, die_with_parent=False
        )

    def delay_stats(self) -> dict[str, int] | None:
        """The userspace delay's counters (held, released, dropped, queued), or None."""
        if self._delay_worker is None:
            return None
        with self._delay_lock:
            return self._delay_worker.call({"stats": True})

    def delay_process(self) -> subprocess.Popen[Any] | None:
        """The userspace delay's process (``delay.py`` in the core), or None."""
        return None if self._delay_worker is None else self._delay_worker.process

    def _round_trip_s(self) -> float:
        # Worst case in the lab: host -> core -> core -> host crosses 2 delayed links each way.
        worst = max([self.delay_ms or 0, *self._link_delays.values()])
        return 4 * worst / 1000

    # -- processes --------------------------------------------------------------------

    def _stop(self, process: subprocess.Popen[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._processes.remove(process)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if process.poll() is None:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    # -- the behaviour check ------------------------------------------------------------

    def probe(self, host: Node) -> Probe:
        """A UDP socket on ``host`` for asking reflectors (starts them if needed)."""
        self.reflectors()
        return Probe(host)

    def reflectors(self) -> _Worker:
        """The reflector process (its namespace "refl" holds all three addresses)."""
        if self._reflectors is None:
            node = Node(self, "refl", REFLECTOR_1[0], None)
            self._attach_to_core(node, "eth0", extra=[REFLECTOR_2[0], THIRD_PARTY[0]])
            binds = [REFLECTOR_1, REFLECTOR_1_OTHER_PORT, REFLECTOR_2, THIRD_PARTY]
            self._reflectors = _Worker(node, ["serve", *(f"{ip}:{port}" for ip, port in binds)])
        return self._reflectors

    def poke(self, source: Address, to: Address, token: str) -> None:
        """Send an unsolicited datagram ``{"token": token}`` from a reflector address."""
        self.reflectors().call({"op": "send", "from": list(source), "to": list(to), "token": token})

    def _check_host(self, target: Node) -> Node:
        if not isinstance(target, Router):
            return target
        for node in target.downstream:
            if isinstance(node, Host):
                return node
        return self.host(f"{target.name}-chk", target)

    def measure(self, target: Node) -> Behaviour:
        """Classify the NAT behaviour seen from ``target`` (a host, or a router's host)."""
        host = self._check_host(target)
        blocking = [r for r in host.routers if r.kind is Nat.UDP_BLOCKED]
        relays = blocking[0].relays if blocking else []
        window = 0.3 + self._round_trip_s()
        with self.probe(host) as probe:
            seen = (probe.ask(REFLECTOR_1, tries=2), probe.ask(REFLECTOR_2, tries=2))
            relays_reachable = None
            if relays:
                relays_reachable = all(self._relay_answers(probe, ip) for ip in relays)
            first, second = seen
            if first is None or second is None:
                return Behaviour(False, None, None, None, relays_reachable, probe.local, seen)
            same = first == second
            mapping = Mapping.ENDPOINT_INDEPENDENT if same else Mapping.ENDPOINT_DEPENDENT
            preserved = first[1] == second[1] == probe.local[1]
            self.poke(THIRD_PARTY, first, "third-party")
            if "third-party" in probe.listen(window, until="third-party"):
                filtering = Filtering.ENDPOINT_INDEPENDENT
            else:
                self.poke(REFLECTOR_1_OTHER_PORT, first, "other-port")
                if "other-port" in probe.listen(window, until="other-port"):
                    filtering = Filtering.ADDRESS_DEPENDENT
                else:
                    filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
            return Behaviour(
                True, mapping, filtering, preserved, relays_reachable, probe.local, seen
            )

    def _relay_answers(self, probe: Probe, ip: str) -> bool:
        node = next((n for n in self.nodes.values() if n.address == ip and not n.upstream), None)
        if node is None:
            raise LabError(f"relay {ip} is not a host of this lab, so the check cannot reach it")
        with self.echo(node) as address:
            return probe.ask(address, tries=2) is not None

    @contextlib.contextmanager
    def echo(self, node: Node, port: int = 0) -> Iterator[Address]:
        """A UDP reflector on ``node``'s address while the block runs; yields its address."""
        worker = _Worker(node, ["serve", f"{node.address}:{port}"])
        try:
            yield worker.bound[0]
        finally:
            worker.stop()

    def check(self, target: Node) -> Behaviour:
        """Measure ``target``'s NAT behaviour; raise ``BehaviourMismatch`` unless as intended."""
        host = self._check_host(target)
        behaviour = self.measure(host)
        expected = expected_behaviour(host)
        self.checks[target.name] = behaviour.summary()
        wrong = {k: v for k, v in expected.items() if getattr(behaviour, k) != v}
        if wrong:
            chain = " behind ".join(f"{r.name} ({r.kind})" for r in host.routers) or "no NAT"
            raise BehaviourMismatch(
                f"{target.name}: {chain} should show "
                + ", ".join(f"{k}={v}" for k, v in wrong.items())
                + f" but the behaviour check measured {behaviour}"
            )
        return behaviour

    # -- reporting and teardown -----------------------------------------------------------

    def description(self) -> dict[str, Any]:
        """What the lab built and how it behaved, for logs and benchmark JSON."""
        nodes = {}
        for node in self.nodes.values():
            entry: dict[str, Any] = {"netns": node.netns, "address": node.address}
            if node.upstream is not None:
                entry["behind"] = node.upstream.name
            if isinstance(node, Router):
                entry.update(kind=str(node.kind), lan=str(node.lan))
                if node.relays:
                    entry["relays"] = node.relays
                if node.udp_timeout:
                    entry["udp_timeout_s"] = node.udp_timeout
            nodes[node.name] = entry
        return {
            "prefix": self.prefix,
            "delay_ms": self.delay_ms,
            "delay_requested_ms": self.delay_requested_ms,
            "delay_note": self.delay_note,
            "delay": {
                "ms": self.delay_ms,
                "by": self.delay_by,
                "links_ms": dict(self._link_delays),
            },
            "loss_pct": self.loss_pct,
            "nodes": nodes,
            "checks": self.checks,
        }

    def namespaces(self) -> list[str]:
        """The lab's namespaces that currently exist."""
        return [name for name in _netns_list() if name.startswith(self.prefix + "-")]

    def close(self) -> None:
        """Stop every process started in the lab and delete its namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in list(self._processes):
            self._stop(process)
        _delete_netns(self.namespaces())
        _LIVE.pop(self.prefix, None)
        left = self.namespaces()
        if left:
            raise LabError(f"could not delete namespaces {left}")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())


def main(argv: Sequence[str]) -> int:
    """By hand: ``sudo python3 tests/lab/netlab.py [--delay MS]``, or ``... sweep``.

    Builds one router of every kind with a host behind it (plus a double NAT, a relay and
    a bootstrap host), checks them, prints the description and waits for Enter, so the
    namespaces can be explored with ``ip netns exec``, ``nft list ruleset``, ``conntrack -L``.
    """
    if list(argv) == ["sweep"]:
        print("\n".join(sweep_stale()) or "nothing stale")
        return 0
    delay = int(argv[1]) if len(argv) == 2 and argv[0] == "--delay" else None
    with Lab(delay_ms=delay) as lab:
        relay = lab.internet_host("relay")
        lab.internet_host("bootstrap")
        routers = [
            lab.router("eim", Nat.EIM),
            lab.router("pp", Nat.PORT_PRESERVING),
            lab.router("sym", Nat.SYMMETRIC),
            lab.router("corp", Nat.UDP_BLOCKED, relays=[relay]),
        ]
        carrier = lab.carrier("cgn")
        routers.append(lab.router("home", Nat.PORT_PRESERVING, behind=carrier))
        for router in routers:
            lab.host(f"{router.name}-h", router)
        for router in [*routers, carrier]:
            lab.check(router)
        print(json.dumps(lab.description(), indent=2))
        with contextlib.suppress(KeyboardInterrupt, EOFError):
            input("lab is up; press Enter to tear it down ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
