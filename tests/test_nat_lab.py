"""Sessions through real Linux NAT (tests/lab/): relayed first, then direct where NATs allow.

A relay (also the DHT bootstrap, whose PONGs tell each peer its public address) on
the lab's internet; peers behind NAT routers reserve a slot on it and publish their
record; the dialler connects by peer ID through the record, sends a stream slowly,
and reports the session's path history. Needs root; skips elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lab import netlab
from lab.netlab import Host, Lab, Nat

UNAVAILABLE = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"NAT lab needs root and nftables: {UNAVAILABLE}"
)

ROOT = Path(__file__).resolve().parent.parent


def seed(label: str) -> str:
    return hashlib.sha256(b"nat lab " + label.encode()).hexdigest()


def spawn(host: Host, args: dict[str, Any]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = host.python(
        ["-m", "tests.peers.nat_node", json.dumps(args)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, read(process)


def read(process: subprocess.Popen[str]) -> Any:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"lab node exited with {process.poll()}"
    return json.loads(line)


def ask(process: subprocess.Popen[str], command: dict[str, Any]) -> Any:
    assert process.stdin is not None
    process.stdin.write(json.dumps(command) + "\n")
    process.stdin.flush()
    return read(process)


def dial(nat_a: Nat, nat_b: Nat, settle: float = 0.0) -> dict[str, Any]:
    """A behind ``nat_a`` dials B behind ``nat_b`` by peer ID; A's report of the session."""
    with Lab() as lab:
        relay_host = lab.internet_host("relay")
        a = lab.host("a", lab.router("nat-a", nat_a))
        b = lab.host("b", lab.router("nat-b", nat_b))
        lab.check(a)
        lab.check(b)
        _, relay = spawn(
            relay_host,
            {"seed": seed("relay"), "host": relay_host.address, "port": 4000, "relay": True},
        )
        via = [relay_host.address, 4000, relay["peer_id"]]
        _, info_b = spawn(b, {"seed": seed("b"), "host": b.address, "port": 5002, "via": via})
        node_a, _ = spawn(a, {"seed": seed("a"), "host": a.address, "port": 5001, "via": via})
        command = {"op": "dial", "peer": info_b["peer_id"], "record": info_b["record"]}
        report = ask(node_a, {**command, "size": 2 << 20, "pause": 0.02, "settle": settle})
        assert isinstance(report, dict)
        return report


def test_eim_and_port_restricted_go_direct_with_a_stream_across_the_upgrade() -> None:
    report = dial(Nat.EIM, Nat.PORT_PRESERVING)
    assert report["ok"], report
    kinds = [kind for _, kind, _ in report["history"]]
    assert kinds[0] == "relay", report
    assert "direct" in kinds and report["path"] == "direct", report


def test_symmetric_and_symmetric_stay_relayed() -> None:
    report = dial(Nat.SYMMETRIC, Nat.SYMMETRIC, settle=8.0)  # 3 punch rounds are over
    assert report["ok"], report
    assert report["stats"].get("punch_failed", 0) == 1  # the attempt ran and gave up
    assert [kind for _, kind, _ in report["history"]] == ["relay"], report
    assert report["path"] == "relay"
