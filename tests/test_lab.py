"""The NAT lab itself (tests/lab/): every router behaves as its kind promises, and goes away.

These build real namespaces, veths and nftables NAT, so they need root; elsewhere they skip.
One lab is shared by the module to keep the file fast; tests that change a router's state
(conntrack flushed, paths dropped) put it back or use a router of their own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab import netlab
from lab.netlab import (
    REFLECTOR_1,
    REFLECTOR_2,
    THIRD_PARTY,
    BehaviourMismatch,
    Filtering,
    Host,
    Lab,
    Mapping,
    Nat,
    Router,
)

UNAVAILABLE = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"NAT lab needs root and nftables: {UNAVAILABLE}"
)

ROOT_UDP_TIMEOUT = Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")


@dataclass
class World:
    lab: Lab
    relay: Host
    bootstrap: Host
    eim: Router
    a: Host
    pp: Router
    b: Host
    sym: Router
    c: Host
    cgn: Router
    home: Router
    d: Host
    corp: Router
    e: Host
    short: Router
    f: Host


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with Lab() as lab:
        relay = lab.internet_host("relay")
        bootstrap = lab.internet_host("bootstrap")
        eim = lab.router("eim", Nat.EIM)
        pp = lab.router("pp", Nat.PORT_PRESERVING)
        sym = lab.router("sym", Nat.SYMMETRIC)
        cgn = lab.carrier("cgn", Nat.EIM)
        home = lab.router("home", Nat.PORT_PRESERVING, behind=cgn)
        corp = lab.router("corp", Nat.UDP_BLOCKED, relays=[relay])
        short = lab.router("short", Nat.PORT_PRESERVING, udp_timeout=1)
        yield World(
            lab,
            relay,
            bootstrap,
            eim,
            lab.host("a", eim),
            pp,
            lab.host("b", pp),
            sym,
            lab.host("c", sym),
            cgn,
            home,
            lab.host("d", home),
            corp,
            lab.host("e", corp),
            short,
            lab.host("f", short),
        )


def test_eim_router_maps_and_filters_independently_of_the_endpoint(world: World) -> None:
    behaviour = world.lab.check(world.eim)
    assert behaviour.mapping is Mapping.ENDPOINT_INDEPENDENT
    assert behaviour.filtering is Filtering.ENDPOINT_INDEPENDENT
    assert behaviour.port_preserved
    port = behaviour.local[1]
    assert behaviour.seen == ((world.eim.address, port), (world.eim.address, port))
    # It is the explicit dynamic map that does it: the mapping is an element of @m.
    listing = world.eim.run(["nft", "list", "map", "ip", "lab_nat", "m"]).stdout
    assert re.search(rf"\b{port} expires \S+ : {re.escape(world.a.address)} \. {port}\b", listing)


def test_port_preserving_router_filters_by_address_and_port(world: World) -> None:
    behaviour = world.lab.check(world.pp)
    assert behaviour.mapping is Mapping.ENDPOINT_INDEPENDENT  # the port is kept toward both
    assert behaviour.port_preserved
    assert behaviour.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT


def test_symmetric_router_gives_each_destination_its_own_port(world: World) -> None:
    behaviour = world.lab.check(world.sym)
    assert behaviour.mapping is Mapping.ENDPOINT_DEPENDENT
    first, second = behaviour.seen
    assert first is not None and second is not None
    assert first[0] == second[0] == world.sym.address
    assert first[1] != second[1]
    assert behaviour.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT


def test_double_nat_works_end_to_end(world: World) -> None:
    behaviour = world.lab.check(world.d)
    # The home router's masquerade behind the carrier's EIM map: the strictest part filters.
    assert behaviour.seen[0] is not None
    assert behaviour.seen[0][0] == world.cgn.address == world.d.public_ip
    assert behaviour.mapping is Mapping.ENDPOINT_INDEPENDENT
    assert behaviour.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT
    assert behaviour.port_preserved
    # Two translations: the carrier saw the home router's 100.64/10 address, not the host's.
    assert f"src={world.home.address} " in world.cgn.conntrack()
    assert f"src={world.d.address} " in world.home.conntrack()
    # The carrier itself, checked from a host right behind it.
    world.lab.check(world.cgn)


def test_udp_blocked_network_reaches_only_relays(world: World) -> None:
    behaviour = world.lab.check(world.corp)
    assert not behaviour.udp_open
    assert behaviour.seen == (None, None)
    assert behaviour.relays_reachable
    with (
        world.lab.echo(world.bootstrap) as bootstrap,
        world.lab.echo(world.relay) as relay,
        world.lab.probe(world.e) as probe,
    ):
        assert probe.ask(bootstrap, tries=1) is None
        assert probe.ask(relay) == (world.corp.address, probe.local[1])


def test_conntrack_flush_changes_the_mapping_only_where_expected(world: World) -> None:
    lab = world.lab
    for router, host in ((world.eim, world.a), (world.pp, world.b), (world.sym, world.c)):
        with lab.probe(host) as probe:
            before = probe.ask(REFLECTOR_1)
            assert before is not None
            router.flush_conntrack()
            # The reflector answers late: only the EIM map still leads back to the host.
            lab.poke(REFLECTOR_1, before, "late reply")
            arrived = "late reply" in probe.listen(0.3, until="late reply")
            assert arrived == (router.kind is Nat.EIM), router.kind
            after = probe.ask(REFLECTOR_1)
            # Symmetric NAT draws a fresh random port; the others keep the host's port.
            assert (after != before) == (router.kind is Nat.SYMMETRIC), (before, after)
    # Flushing the EIM map as well closes it to third parties until the host sends again.
    with lab.probe(world.a) as probe:
        mapped = probe.ask(REFLECTOR_1)
        assert mapped is not None
        world.eim.flush_conntrack(nat_map=True)
        lab.poke(THIRD_PARTY, mapped, "stranger")
        assert "stranger" not in probe.listen(0.3, until="stranger")
        assert probe.ask(REFLECTOR_1) == mapped
        lab.poke(THIRD_PARTY, mapped, "stranger again")
        assert "stranger again" in probe.listen(0.3, until="stranger again")


def test_drop_direct_silences_a_path_until_restored(world: World) -> None:
    lab = world.lab
    for host in (world.a, world.relay):  # behind a router, and a public host (the core drops)
        with lab.probe(host) as probe:
            assert probe.ask(REFLECTOR_1) is not None
            host.drop_direct(REFLECTOR_1[0])
            try:
                assert probe.ask(REFLECTOR_1, tries=1) is None
                assert probe.ask(REFLECTOR_2) is not None
            finally:
                host.restore_direct()
            assert probe.ask(REFLECTOR_1) is not None


def test_short_udp_timeout_expires_mappings(world: World) -> None:
    root_timeout = ROOT_UDP_TIMEOUT.read_text()
    setting = world.short.run(["cat", str(ROOT_UDP_TIMEOUT)])  # read inside the router
    assert setting.stdout.strip() == "1"
    assert ROOT_UDP_TIMEOUT.read_text() == root_timeout != "1\n"  # the root namespace is untouched
    lab = world.lab
    with lab.probe(world.f) as probe:
        mapped = probe.ask(REFLECTOR_1)
        assert mapped is not None
        lab.poke(REFLECTOR_1, mapped, "in time")
        assert "in time" in probe.listen(0.5, until="in time")
        time.sleep(2.2)
        lab.poke(REFLECTOR_1, mapped, "too late")
        assert "too late" not in probe.listen(0.3, until="too late")


def test_check_refuses_a_router_that_does_not_behave(world: World) -> None:
    broken = world.lab.router("broken", Nat.EIM)
    world.lab.host("g", broken)
    broken.run(["nft", "flush", "chain", "ip", "lab_nat", "prerouting"])  # no more DNAT via @m
    with pytest.raises(BehaviourMismatch, match="filtering=endpoint-independent"):
        world.lab.check(broken)


# Run inside a namespace: ping a reflector one datagram at a time (the fastest round trip
# counts, so a busy machine only ever makes it look slower), then send a burst of numbered
# asks at once and report the order the answers came back in.
ROUND_TRIP = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
sock.settimeout(3)
to = (sys.argv[2], int(sys.argv[3]))
trips = []
for n in range(8):
    start = time.monotonic()
    sock.sendto(json.dumps({"ask": n}).encode(), to)
    while json.loads(sock.recv(2048))["ask"] != n:
        pass
    trips.append(time.monotonic() - start)
for n in range(1000, 1200):
    sock.sendto(json.dumps({"ask": n}).encode(), to)
order = []
try:
    while len(order) < 200:
        order.append(json.loads(sock.recv(2048))["ask"])
except TimeoutError:
    pass
print(json.dumps({"rtt_ms": min(trips) * 1000, "order": order}))
"""


def round_trip(lab: Lab, source: Host, target: Host) -> dict[str, Any]:
    """Real UDP from ``source`` to an echo on ``target``, across the internet core."""
    with lab.echo(target) as (ip, port):
        argv = [sys.executable, "-c", ROUND_TRIP, source.address, ip, str(port)]
        result: dict[str, Any] = json.loads(source.run(argv).stdout)
    return result


def test_wan_delay_holds_packets_for_both_links_in_order() -> None:
    # One lab, two paths through the same core: between two hosts whose links have no
    # delay, and between a host behind a NAT and a public host whose links have 25 ms
    # each. The second round trip crosses four delayed link passes, 100 ms in all.
    with Lab(delay_ms=25) as lab:
        description = lab.description()
        assert description["delay_requested_ms"] == 25
        if lab.delay_by is None:
            pytest.skip(f"no delay mechanism here: {lab.delay_note}")
        assert description["delay"]["by"] == lab.delay_by in ("netem", "tun")
        quick_a = lab.internet_host("quick-a", delay_ms=0)
        quick_b = lab.internet_host("quick-b", delay_ms=0)
        router = lab.router("r", Nat.PORT_PRESERVING)
        host = lab.host("h", router)
        far = lab.internet_host("far")
        assert lab.description()["delay"]["links_ms"] == {
            quick_a.address: 0,
            quick_b.address: 0,
            router.address: 25,
            far.address: 25,
        }
        if lab.delay_by == "netem":
            qdisc = router.run(["tc", "qdisc", "show", "dev", "wan"]).stdout
            assert "netem" in qdisc and "delay 25" in qdisc
        else:
            rules = lab.core.run(["ip", "rule"]).stdout
            assert "iif dly lookup main" in rules
        undelayed = round_trip(lab, quick_a, quick_b)
        delayed = round_trip(lab, host, far)
        assert delayed["rtt_ms"] - undelayed["rtt_ms"] >= 0.8 * 4 * 25
        # Order kept per flow: every numbered answer came back, in the order asked.
        assert delayed["order"] == list(range(1000, 1200))
        lab.check(router)  # the NAT behaves exactly as without delay
        delayer = None
        if lab.delay_by == "tun":
            stats = lab.delay_stats()
            assert stats is not None and stats["dropped"] == 0
            assert stats["held"] >= 2 * (8 + 8 + 200 + 200)
            delayer = lab.delay_process()
            assert delayer is not None and delayer.poll() is None
    assert lab.namespaces() == []
    if delayer is not None:
        assert delayer.poll() is not None  # the delay process went with the lab


def test_lab_without_delay_records_none() -> None:
    with Lab() as lab:
        assert lab.description()["delay"] == {"ms": None, "by": None, "links_ms": {}}
        with pytest.raises(netlab.LabError, match="per-link delay needs a lab with a delay"):
            lab.internet_host("x", delay_ms=10)
        assert lab.core.run(["ip", "link", "show", "dly"], check=False).returncode != 0


def veths_in_root_namespace() -> list[str]:
    return subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_teardown_leaves_no_namespaces_veths_or_processes() -> None:
    veths = veths_in_root_namespace()
    lab = Lab()
    router = lab.router("r", Nat.SYMMETRIC)
    host = lab.host("h", router)
    sleeper = host.popen(["sleep", "60"])
    assert len(lab.namespaces()) == 3
    assert veths_in_root_namespace() == veths  # veth ends are created inside the namespaces
    lab.close()
    assert lab.namespaces() == []
    assert sleeper.poll() is not None
    assert veths_in_root_namespace() == veths
    lab.close()  # idempotent


def test_sweeper_removes_what_a_crashed_run_left() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"stlab-{dead.pid}-c0ffee-x"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(
        ["ip", "-n", name, "link", "add", "name", "x0", "type", "veth", "peer", "name", "x1"],
        check=True,
    )
    orphan = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        assert name in netlab.sweep_stale()
        assert orphan.wait(timeout=10) != 0
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        assert name not in listed.stdout
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
