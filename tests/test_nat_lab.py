"""Sessions through real Linux NAT (tests/lab/): relayed first, then direct where NATs allow.

One lab for the module: a relay (also the DHT bootstrap, whose PONGs tell each peer its
public address) on the lab's internet and two sites per NAT behaviour. Every unordered
pairing of behaviours (``lab.matrix.PAIRS``) is one scenario: both sites' behaviour is
checked, B reserves a slot on the relay and publishes its record, A connects to B by peer
ID through the record, keeps a stream flowing, and the session ends up on the path
``lab.matrix.EXPECTED`` says, with the stream's hash matching. The scenarios run side by
side (each on its own ports) to keep the module short. Needs root; skips elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from lab import netlab
from lab.matrix import BEHAVIOURS, PAIRS, HostedMatrix, MatrixLab, NodeProcess, seed
from lab.netlab import Lab, Nat

UNAVAILABLE = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"NAT lab needs root and nftables: {UNAVAILABLE}"
)

# Scenarios that also force the direct path away while the stream flows: the session
# must fall back to the relay without losing a byte (make before break).
FALLBACKS = {
    ("eim", "port-preserving"): "drop",  # A's router drops UDP to and from B's address
    ("eim", "symmetric"): "flush",  # B's symmetric router forgets its mapping
}
PARALLEL = 5


@pytest.fixture(scope="module")
def matrix() -> Iterator[MatrixLab]:
    with Lab(delay_ms=25) as lab:
        matrix = MatrixLab(lab)
        try:
            yield matrix
        finally:
            matrix.close()


@pytest.fixture(scope="module")
def results(matrix: MatrixLab) -> dict[tuple[str, str], dict[str, Any]]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {
            pair: pool.submit(matrix.run_pair, *pair, index, fallback=FALLBACKS.get(pair))
            for index, pair in enumerate(PAIRS)
        }
        return {pair: future.result() for pair, future in futures.items()}


def kinds(result: dict[str, Any]) -> list[str]:
    history = [kind for _, kind, _ in result["history"]]
    return [k for i, k in enumerate(history) if i == 0 or history[i - 1] != k]


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pairing_connects_on_the_expected_path(
    results: dict[tuple[str, str], dict[str, Any]], a: str, b: str
) -> None:
    result = results[a, b]
    shown = json.dumps(result, indent=1, default=str)
    assert "error" not in result and result["ok"], shown  # connected, the hash matched
    assert result["outcome"] == result["expected"], shown
    assert kinds(result)[0] == "relay", shown  # B's record names only its relay
    if result["expected"] == "relay":
        assert "direct" not in kinds(result), shown
        assert result["stats"].get("punch_failed", 0) >= 1, shown  # it tried, and gave up


def test_a_stream_survives_the_upgrade_and_a_dropped_direct_path(
    results: dict[tuple[str, str], dict[str, Any]],
) -> None:
    result = results["eim", "port-preserving"]
    shown = json.dumps(result, indent=1, default=str)
    assert result["ok"] and result["fallback"]["reached"], shown
    assert kinds(result) == ["relay", "direct", "relay"], shown
    assert result["stats"]["paths_lost"] == 1, shown


def test_a_stream_survives_a_flushed_conntrack(
    results: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # B's symmetric router forgets its mappings: B's next datagrams leave from a new port.
    # A either loses the direct path and falls back to the relay, or follows B's PINGs to
    # the new port (a validated rebinding); the relay does the same for its session with
    # B, so the circuit lives on. Either way not a byte of the stream is lost.
    result = results["eim", "symmetric"]
    shown = json.dumps(result, indent=1, default=str)
    assert result["ok"] and result["fallback"]["reached"], shown
    moved = kinds(result)[:3] == ["relay", "direct", "relay"] or result["stats"].get("rebinds")
    assert moved, shown


def test_a_relay_over_its_per_ip_cap_refuses_with_its_code_and_serves_others(
    matrix: MatrixLab,
) -> None:
    lab = matrix.lab
    relay_host = lab.internet_host("relay-cap")
    router = lab.router("cap", Nat.PORT_PRESERVING)
    first, second = lab.host("cap-h1", router), lab.host("cap-h2", router)
    lab.check(router)
    relay = NodeProcess(
        relay_host,
        {
            "seed": seed("relay-cap"),
            "host": relay_host.address,
            "port": 4000,
            "relay": True,
            "limits": {"max_reservations_per_ip": 1},
        },
    )
    via = [relay_host.address, 4000, relay.info["peer_id"]]
    nodes = [relay]
    try:
        nodes.append(served := NodeProcess(first, _peer("cap-1", first.address, via)))
        nodes.append(refused := NodeProcess(second, _peer("cap-2", second.address, via)))
        assert "record" in served.info, served.info
        # Both sit behind one public address: the second is over the cap.
        assert refused.info.get("refused") == "NAT_RELAY_IP_LIMIT", refused.info
        source_host = matrix.sites["eim", 1]
        nodes.append(source := NodeProcess(source_host, _peer("cap-src", source_host.address, via)))
        opened = source.ask(
            {"op": "open", "peer": served.info["peer_id"], "record": served.info["record"]}
        )
        assert opened["first_path"] == "relay", opened
        assert opened["history"][0][2] == f"('{relay_host.address}', 4000)", opened
        assert source.ask({"op": "finish"})["ok"]
    finally:
        for node in reversed(nodes):
            node.stop()


def _peer(label: str, address: str, via: list[Any]) -> dict[str, Any]:
    return {"seed": seed(label), "host": address, "port": 7000, "via": via}


# -- hosts that decide by themselves, dialling by peer ID through the DHT ------------------

# What each host should conclude about itself (spec/04 section 4.5). The EIM router
# filters endpoint-independently (a full cone): a dial-back from a helper's second socket
# gets in, so a host behind it is reachable and says so. Every other NAT here filters by
# address and port: the probe is dropped, the dial-backs time out, the host is private.
REACHABILITY = {
    "eim": "public",
    "port-preserving": "private",
    "symmetric": "private",
    "double-nat": "private",
    "udp-blocked": "private",
}


@pytest.fixture(scope="module")
def hosted(
    matrix: MatrixLab,
) -> Iterator[tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]]:
    hosts = HostedMatrix(matrix)
    try:
        status = hosts.settle()
        by_dialler = {a: [p for p in PAIRS if p[0] == a] for a in BEHAVIOURS}

        def dial(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
            return [hosts.connect(a, b) for a, b in pairs]  # one dialler: one at a time

        with ThreadPoolExecutor(len(by_dialler)) as pool:
            done = {a: pool.submit(dial, pairs) for a, pairs in by_dialler.items()}
            connected = {
                pair: result
                for a, future in done.items()
                for pair, result in zip(by_dialler[a], future.result(), strict=True)
            }
        yield status, connected
    finally:
        hosts.close()


def test_hosts_find_out_their_reachability_from_dht_reports_and_dial_backs(
    hosted: tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]],
) -> None:
    status, _ = hosted
    shown = json.dumps(status, indent=1)
    for label in ("seed", "dht2", "dht3"):  # told they are public: the network's servers
        assert status[label]["reachability"] == "public", shown
        assert status[label]["dht"]["mode"] == "server", shown
    # Told nothing: three servers confirm its address, two dial-backs reach it.
    pub = status["pub"]
    assert pub["settled"] and not pub["forced"], shown
    assert (pub["reachability"], pub["dht"]["mode"]) == ("public", "server"), shown
    assert pub["relay"]["serving"] and pub["external"] == [[pub["listen"][0][0], 8000]], shown
    for (behaviour, n), s in _sites(status):
        want = REACHABILITY[behaviour]
        assert s["settled"] and s["reachability"] == want, (behaviour, n, shown)
        assert s["dht"]["mode"] == ("server" if want == "public" else "client"), shown
        if want == "private":
            assert s["relay"]["reservations_held"], shown  # and its record names them
            assert not s["relay"]["serving"], shown
    # The NAT's mapping, from the same reports.
    for n in (1, 2):
        assert status[f"symmetric/{n}"]["nat_mapping"] == "endpoint-dependent", shown
        assert status[f"port-preserving/{n}"]["nat_mapping"] == "endpoint-independent", shown
    assert status["seed"]["relay"]["reservations_served"] >= 1, shown


def _sites(status: dict[str, dict[str, Any]]) -> list[tuple[tuple[str, int], dict[str, Any]]]:
    out = []
    for label, s in status.items():
        behaviour, _, n = label.partition("/")
        if n:
            out.append(((behaviour, int(n)), s))
    return out


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_hosts_connect_by_peer_id_alone_on_the_expected_path(
    hosted: tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]],
    a: str,
    b: str,
) -> None:
    result = hosted[1][a, b]
    shown = json.dumps(result, indent=1, default=str)
    assert "error" not in result and result["ok"], shown  # resolved, connected, hash matched
    assert not result["reused"], shown  # a new session, from the peer ID alone
    assert result["outcome"] == result["expected"], shown
    if result["expected"] == "relay":
        assert "direct" not in [k for _, k, _ in result["history"]], shown
