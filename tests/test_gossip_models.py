"""The gossip benchmark's baselines behave as theory says, and the harness reports every figure.

Small networks and short phases (``HarnessParams.quick()``): these tests check
behaviour (who is reached, mesh bounds, recovery after a crash), never speed.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import cast

import pytest

from bench import gossip_libp2p_worker, gossip_models
from bench.gossip_models import (
    GOSSIPSUB_V11,
    HarnessParams,
    NodeSetup,
    Probe,
    control_wire_size,
    gossipsub,
    make_payload,
    message_index,
    message_wire_size,
    naive_push,
    run_model,
    run_scenario,
    summarize,
)
from bench.session import LIBP2P_VENV
from starling.node.sim import Address

QUICK = HarnessParams.quick()
FIGURES = (
    "coverage",
    "hops_max",
    "latency_ms_p50",
    "latency_ms_p99",
    "copies_per_delivery",
    "control_bytes_per_msg",
    "coverage_over_time",
    "coverage_by_push",
    "coverage_after_two_heartbeats",
)


def test_wire_sizes_are_realistic_protobuf_rpcs() -> None:
    # 200 B of data: Message{from 38, data, seqno 8, topic 52, signature 64} in RPC.publish,
    # a uvarint length prefix, the yamux header and the Noise frame (length + tag).
    assert message_wire_size(200) == 408
    assert message_wire_size(16384) == 16595
    assert message_wire_size(16384) - 16384 > message_wire_size(200) - 200  # longer varints
    graft = control_wire_size(graft=True)
    assert 60 < graft < 120
    # each IHAVE'd ID is a 46-byte from||seqno string plus its field header
    assert control_wire_size(ihave=11) - control_wire_size(ihave=10) == 48
    assert control_wire_size(prune=True, px=16) > control_wire_size(prune=True) + 16 * 200


def test_payload_carries_its_message_index() -> None:
    payload = make_payload(1234, 200)
    assert len(payload) == 200
    assert message_index(payload) == 1234


def test_naive_push_misses_members_where_gossipsub_reaches_all() -> None:
    """Push once to 6 random peers leaves ~0.25% out at 1,000 nodes; IHAVE/IWANT does not."""
    naive = summarize([run_scenario(naive_push, 1000, seed=1, params=QUICK)], QUICK)
    assert 0.99 < naive["delivery_ratio"] < 1.0
    assert naive["coverage"] < 1.0
    assert naive["coverage_by_push"] == naive["delivery_ratio"]  # nothing but push
    assert naive["copies_per_delivery"]["200"] == pytest.approx(6.0, abs=0.2)

    gs = summarize([run_scenario(gossipsub, 1000, seed=1, params=QUICK)], QUICK)
    assert gs["coverage"] == 1.0
    assert gs["delivery_ratio"] == 1.0
    assert gs["hops_max"] < naive["hops_max"]


def test_gossipsub_mesh_degrees_stay_within_water_marks() -> None:
    run = run_scenario(gossipsub, 300, seed=2, params=QUICK)
    assert run.mesh_degrees is not None
    assert len(run.mesh_degrees) == 300
    assert min(run.mesh_degrees) >= GOSSIPSUB_V11.d_lo
    assert max(run.mesh_degrees) <= GOSSIPSUB_V11.d_hi
    assert run.coverage_at[0.5] and run.nodes_with_all == 300


def test_gossipsub_recovers_after_a_crash_and_naive_push_does_not() -> None:
    gs = summarize([run_scenario(gossipsub, 300, seed=1, crash_fraction=0.5, params=QUICK)])
    over_time = list(gs["coverage_over_time"].values())
    assert over_time == sorted(over_time)  # coverage only grows
    assert gs["coverage_by_push"] <= gs["coverage_after_two_heartbeats"] <= over_time[-1]
    assert gs["coverage"] == 1.0  # what push missed, IHAVE/IWANT from survivors pulled in
    assert gs["online"] == 150

    # 80%: pushes die at dead mesh peers; pull repairs what the live sessions allow
    gs80 = summarize([run_scenario(gossipsub, 300, seed=1, crash_fraction=0.8, params=QUICK)])
    assert gs80["coverage_by_push"] < gs80["coverage_over_time"]["5"]
    assert gs80["coverage_over_time"]["5"] <= gs80["reachable"] <= 1.0

    naive = summarize([run_scenario(naive_push, 300, seed=1, crash_fraction=0.5, params=QUICK)])
    assert naive["delivery_ratio"] < 0.99  # half the pushes go to the dead
    assert naive["coverage_over_time"]["5"] == naive["coverage_by_push"]  # and nothing repairs


def test_harness_reports_every_figure_for_both_baselines() -> None:
    params = HarnessParams.quick()
    for factory in (naive_push, gossipsub):
        scenarios = run_model(factory, 150, seeds=[1, 2], crash_fractions=(0.0, 0.5), params=params)
        assert [s["name"] for s in scenarios] == ["steady", "crash50"]
        for s in scenarios:
            assert s["nodes"] == 150 and s["seeds"] == [1, 2]
            for key in FIGURES:
                assert s[key] is not None, key
            assert set(s["copies_per_delivery"]) == {"200", "16384"}
            assert all(v > 0 for v in s["copies_per_delivery"].values())
            assert s["control_bytes_per_msg"] > 0
            assert 0.0 <= s["coverage"] <= 1.0
            assert s["latency_ms_p50"] <= s["latency_ms_p99"]
            assert s["latency_ms_p50"] >= 10.0  # one hop is at least 10 ms
            assert s["hops_max"] >= 1
            assert set(s["coverage_over_time"]) == {"0.5", "1", "2", "5"}
        assert scenarios[0]["detect_delay_s"] is None
        assert scenarios[1]["detect_delay_s"] == list(params.detect_delay_s)
        assert scenarios[1]["online"] == 75


def test_same_seed_same_figures() -> None:
    a = summarize([run_scenario(gossipsub, 120, seed=7, crash_fraction=0.2, params=QUICK)])
    b = summarize([run_scenario(gossipsub, 120, seed=7, crash_fraction=0.2, params=QUICK)])
    for s in (a, b):
        del s["wall_s"]
    assert a == b


class _FloodCore:
    """A core written against the plug-in interface only: forward every new message to all."""

    def __init__(self, setup: NodeSetup) -> None:
        self.setup = setup
        self.peers = list(setup.peers)
        self.seen: set[int] = set()
        self.out: list[tuple[bytes, Address]] = []

    def publish(self, payload: bytes, now: float) -> None:
        self.seen.add(message_index(payload))
        self._send(bytes([1]) + payload, exclude=None)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        msg = message_index(data[1:])
        self.setup.probe.received(self.setup.index, msg, now, data[0], True)
        if msg not in self.seen:
            self.seen.add(msg)
            self._send(bytes([data[0] + 1]) + data[1:], exclude=addr)

    def _send(self, frame: bytes, exclude: Address | None) -> None:
        targets = [p for p in self.peers if p != exclude]
        self.out += [(frame, p) for p in targets]
        self.setup.probe.sent_payload((len(frame) - 1) * len(targets))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def peer_down(self, peer: Address, now: float) -> None:
        self.peers.remove(peer)


def test_any_core_with_the_interface_plugs_in() -> None:
    s = summarize([run_scenario(_FloodCore, 100, seed=1, params=QUICK)], QUICK)
    assert s["coverage"] == 1.0
    # flooding: every node gets a copy from nearly every neighbour (~24 sessions)
    assert 15 < s["copies_per_delivery"]["200"] < s["sessions_per_node"]["mean"]
    assert s["control_bytes_per_msg"] > 0  # the one hop byte per copy
    assert s["mesh_degree"] is None
    assert s["hops_max"] <= math.ceil(math.log(100, 5)) + 2


def test_tiny_networks_get_a_full_mesh_of_sessions() -> None:
    """Fewer members than dials: everyone holds a session with everyone, nothing loops."""
    s = summarize([run_scenario(gossipsub, 5, seed=1, params=QUICK)], QUICK)
    assert s["sessions_per_node"] == {"min": 4, "mean": 4.0, "max": 4}
    assert s["coverage"] == 1.0


def test_probe_counts_first_receipts_and_copies() -> None:
    probe = Probe(3)
    m = probe.new_message(0, 200, 1.0)
    probe.received(1, m, 1.05, 1, True)
    probe.received(1, m, 1.07, 2, False)
    probe.received(2, m, 1.09, 2, False)
    assert probe.copies[m] == 3
    assert probe.first[m] == [math.inf, 1.05, 1.09]
    assert probe.hops[m] == [-1, 1, 2]  # -1: never received (or hops unknown)
    assert list(probe.push_reached[m]) == [0, 1, 0]


def test_command_line_quick(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    assert (
        gossip_models.main(["--quick", "--nodes", "80", "--crash", "0,0.5", "--json", str(out)])
        == 0
    )
    text = out.read_text()
    assert '"naive_push"' in text and '"gossipsub"' in text


def _libp2p_venv_ready() -> bool:
    python = LIBP2P_VENV / "bin" / "python"
    if not python.exists():
        return False
    probe = [str(python), "-c", "import libp2p, trio, multiaddr"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(
    not _libp2p_venv_ready(),
    reason=f"no py-libp2p venv at {LIBP2P_VENV}: `python -m bench session` or "
    "bench.gossip_libp2p_worker.run() builds it, which needs PyPI",
)
def test_libp2p_gossip_worker_reports_its_figures() -> None:
    params = {"nodes": 6, "messages": 6, "interval_s": 0.3, "settle_s": 2.0, "drain_s": 3.0}
    result = gossip_libp2p_worker.run(params, allow_install=False, timeout=120)
    assert result.get("error") is None, result.get("error")
    assert result["nodes"] == 6 and result["messages"] == 6
    assert result["coverage"] == 1.0
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"]
    assert set(result["copies_per_delivery"]) == {"200", "16384"}
    assert all(v >= 1.0 for v in result["copies_per_delivery"].values())
    assert result["config"]["degree"] == 6


def test_libp2p_run_without_venv_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.session

    monkeypatch.setattr(bench.session, "ensure_libp2p", lambda allow: (None, "no venv (test)"))
    result = gossip_libp2p_worker.run(allow_install=False)
    assert result["error"] == "no venv (test)"
    assert result["latency_ms_p50"] is None and result["copies_per_delivery"] is None


def test_probe_keeps_the_wave_and_pure_eager_push_apart() -> None:
    probe = Probe(3)
    m = probe.new_message(0, 200, 1.0)
    probe.received(1, m, 1.05, 1, True)  # eager: both
    probe.received(2, m, 1.09, 2, True, eager=False)  # a pull in the wave
    assert list(probe.push_reached[m]) == [0, 1, 1]
    assert list(probe.eager_reached[m]) == [0, 1, 0]


def test_starling_wave_counts_immediate_pulls_and_not_heartbeat_gossip() -> None:
    from bench.gossip import starling_factory
    from starling.proto.gossip import GossipConfig

    def crash50(config: GossipConfig) -> dict[str, object]:
        factory = starling_factory(config, QUICK)
        return summarize([run_scenario(factory, 300, seed=1, crash_fraction=0.5, params=QUICK)])

    ours = crash50(GossipConfig())
    by_push = ours["coverage_by_push_by_size"]
    eager = ours["coverage_by_eager_push_by_size"]
    assert isinstance(by_push, dict) and isinstance(eager, dict)
    # Large messages are pushed to nobody: their wave is announcements and pulls.
    assert eager["16384"] < 0.2 and by_push["16384"] >= 0.97
    assert eager["200"] <= by_push["200"] and by_push["200"] >= 0.97
    assert ours["coverage_after_two_heartbeats"] == 1.0
    # No mesh, no IDs sent on receipt, no author relay: past the author's own flood,
    # only heartbeat gossip announces, and none of it counts as the wave.
    no_wave = GossipConfig(d=0, d_low=0, d_high=0, d_out=0, lazy_fanout=0, author_relay=None)
    silent = crash50(no_wave)
    silent_push = silent["coverage_by_push_by_size"]
    over_time = silent["coverage_over_time"]
    assert isinstance(silent_push, dict) and isinstance(over_time, dict)
    assert silent_push["16384"] < 0.2 and silent_push["200"] < 0.2
    assert over_time["5"] > 0.9  # heartbeat gossip did reach them
    # The baselines have no wave pulls: their wave is their eager push.
    gs = summarize([run_scenario(gossipsub, 300, seed=1, crash_fraction=0.5, params=QUICK)])
    assert gs["coverage_by_push"] == gs["coverage_by_eager_push"]


def test_survivors_cut_off_by_a_crash_meet_members_and_catch_up() -> None:
    """After 80% crash, a few survivors keep no live session (``reachable_before_meeting``
    < 1). Meeting members through presence records (spec/06 COM-R68) gives them new
    sessions, and Starling's catch-up on a new session brings them every message; with
    no meeting (``meet_target`` 0) they stay cut off."""
    import dataclasses

    from bench.gossip import starling_factory

    def crash80(params: HarnessParams) -> dict[str, object]:
        factory = starling_factory(None, params)
        run = run_scenario(factory, 300, seed=14, crash_fraction=0.8, params=params)
        return summarize([run], params)

    met = crash80(QUICK)
    before = met["reachable_before_meeting"]
    assert isinstance(before, float) and before < 1.0  # this seed cuts survivors off
    meeting = met["meeting"]
    assert isinstance(meeting, dict) and meeting["sessions_per_run"] > 0
    assert meeting["first_session_s"] >= QUICK.detect_delay_s[0] + QUICK.meet_delay_s
    assert met["reachable"] == 1.0 and met["coverage"] == 1.0

    alone = crash80(dataclasses.replace(QUICK, meet_target=0))
    assert alone["meeting"] == {
        "sessions_per_run": 0.0,
        "dials_per_run": 0.0,
        "lookups_per_run": 0.0,
        "first_session_s": None,
        "last_session_s": None,
    }
    coverage = alone["coverage"]
    assert isinstance(coverage, float) and coverage < 1.0
    assert alone["reachable"] == before


def test_survivors_find_sessions_to_crashed_peers_suspect_before_they_time_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A survivor's transport sees what it sends a crashed peer go unacknowledged
    (spec/02 3.5) and tells the core long before the session times out, and Starling
    takes the peer out of its mesh at once (spec/05 GSP-R47). With the signal off
    (``suspect_ptos`` 0) the meshes keep their dead links until detection."""
    import dataclasses

    from bench.gossip import TOPIC, StarlingSimCore, starling_factory

    dead_links: list[int] = []
    detected = gossip_models._Meeting.detected

    def first_detection(self: gossip_models._Meeting, s: int, dead: int) -> None:
        if len(dead_links) < runs:  # count mesh links to crashed peers just before it
            index_of = self.topo.index_of
            dead_links.append(
                sum(
                    1
                    for i, core in enumerate(self.cores)
                    if self.online[i]
                    for peer in cast(StarlingSimCore, core).core.mesh(TOPIC)
                    if not self.online[index_of[peer]]
                )
            )
        detected(self, s, dead)

    monkeypatch.setattr(gossip_models._Meeting, "detected", first_detection)

    def crash50(params: HarnessParams) -> dict[str, object]:
        run = run_scenario(starling_factory(None, params), 200, 3, 0.5, params)
        return summarize([run], params)

    runs = 1
    on = crash50(QUICK)
    runs = 2
    off = crash50(dataclasses.replace(QUICK, suspect_ptos=0.0))
    suspected = on["suspected_sessions_per_run"]
    assert isinstance(suspected, float) and suspected > 0
    assert off["suspected_sessions_per_run"] == 0.0
    with_signal, without = dead_links
    assert without > 100  # half the mesh links of 100 survivors lead to the dead
    assert with_signal < without / 10


def test_parallel_runs_give_the_same_figures() -> None:
    """``jobs`` > 1 forks workers for the (scenario, seed) runs; a run depends on its seed
    only, so every figure but the wall time is the same as in one process."""
    from bench.gossip import starling_factory

    def strip(scenarios: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in s.items() if k != "wall_s"} for s in scenarios]

    for factory in (naive_push, starling_factory(None, QUICK)):
        one = run_model(factory, 120, seeds=[1, 2], crash_fractions=(0.0, 0.5), params=QUICK)
        two = run_model(
            factory, 120, seeds=[1, 2], crash_fractions=(0.0, 0.5), params=QUICK, jobs=2
        )
        assert strip(one) == strip(two)
        assert [s["seeds"] for s in two] == [[1, 2], [1, 2]]
