"""``starling node`` as an operator runs it: a subprocess on loopback, its control socket,
its config file, signals."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

from cliproc import NodeProcess, cli, cli_json, sessions, signal, wait_for


def test_node_bootstrap_status_and_clean_shutdown(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a")
    b = None
    try:
        assert a.banner["peer_id"].startswith("sp1")
        assert a.bootstrap.startswith(a.peer_id + "@127.0.0.1:")
        assert a.banner["identity_created"] is True
        sock = tmp_path / "a" / "control.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

        # A second node bootstraps from the first's string and holds a session with it.
        b = NodeProcess(tmp_path / "b", "--seed", a.bootstrap)
        wait_for(
            lambda: any(s["peer_id"] == a.peer_id for s in sessions(tmp_path / "b")),
            "b's session with a",
        )
        status = cli_json(tmp_path / "a", "status")
        assert status["peer_id"] == a.peer_id
        assert status["pid"] == a.proc.pid  # answered by the running node, not a new one
        assert any(s["peer_id"] == b.peer_id for s in status["host"]["sessions"])
        human = cli(tmp_path / "a", "status")
        assert human.returncode == 0
        assert "peers         1 (1 direct, 0 relayed)" in human.stdout
        assert f"running (pid {a.proc.pid}" in human.stdout
        # The periodic status line is logged.
        wait_for(lambda: "1 peers (1 direct, 0 relayed)" in b.log(), "b's status line")

        assert a.stop(signal.SIGTERM) == 0
        assert b.stop(signal.SIGINT) == 0
        assert not sock.exists()
        assert "stopped" in a.log()
    finally:
        a.kill()
        if b is not None:
            b.kill()

    # Identity and port are kept: the bootstrap string survives a restart.
    again = NodeProcess(tmp_path / "a")
    try:
        assert again.banner["identity_created"] is False
        assert again.bootstrap == a.bootstrap
    finally:
        assert again.stop() == 0


def test_one_node_per_data_directory(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a")
    try:
        second = cli(tmp_path / "a", "node", "--listen", "127.0.0.1")
        assert second.returncode == 1
        assert "already running" in second.stderr
        assert str(a.proc.pid) in second.stderr
        assert a.proc.poll() is None
    finally:
        assert a.stop() == 0


def test_control_socket_survives_bad_requests(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "a" / "control.sock"))
            f = s.makefile("rwb")
            greeting = json.loads(f.readline())
            assert greeting["starling_control"] == 1
            assert greeting["peer_id"] == a.peer_id
            for line, code in (
                (b"not json\n", "bad_request"),
                (b'{"id": 1, "method": "frobnicate"}\n', "bad_request"),
                (b'{"id": 2, "method": "send", "params": {}}\n', "bad_request"),
                (b'{"id": 3, "method": "status", "params": []}\n', "bad_request"),
            ):
                f.write(line)
                f.flush()
                answer = json.loads(f.readline())
                assert answer["error"]["code"] == code, answer
            f.write(b'{"id": 4, "method": "status"}\n')
            f.flush()
            answer = json.loads(f.readline())
            assert answer["id"] == 4
            assert answer["result"]["peer_id"] == a.peer_id
        assert cli_json(tmp_path / "a", "status")["peer_id"] == a.peer_id
    finally:
        assert a.stop() == 0


def test_config_file_and_flags(tmp_path: Path) -> None:
    data = tmp_path / "a"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text('[node]\nnetwork = "lab"\n[log]\njson = true\n')
    a = NodeProcess(data, status_interval=0.3)
    try:
        assert a.banner["network"] == "lab"
        wait_for(lambda: "peers" in a.log(), "a status line")
    finally:
        assert a.stop() == 0
    lines = [json.loads(line) for line in a.log().splitlines()]
    assert any(line["msg"] == "node started" for line in lines)
    status_lines = [line for line in lines if line["logger"] == "starling.status"]
    assert status_lines
    assert {"peers", "direct", "relayed", "dht_size", "relay_reservations"} <= set(status_lines[0])

    (data / "config.toml").write_text("[node]\nprot = 4000\n")
    bad = cli(data, "node")
    assert bad.returncode == 1
    assert "unknown key 'prot' in [node]" in bad.stderr
    assert "config.toml" in bad.stderr
    (data / "config.toml").write_text('[node]\nport = "x"\n')
    bad = cli(data, "status")
    assert bad.returncode == 1
    assert "port must be an integer" in bad.stderr
    missing = cli(data, "node", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_commands_start_a_node_in_process(tmp_path: Path) -> None:
    # No node is running: status starts one for its own duration and stops it.
    status = cli_json(tmp_path / "solo", "status", "--listen", "127.0.0.1")
    assert status["peer_id"].startswith("sp1")
    assert status["host"]["sessions"] == []
    assert not (tmp_path / "solo" / "control.sock").exists()
    human = cli(tmp_path / "solo", "status", "--listen", "127.0.0.1")
    assert "not running (this command started one for a moment)" in human.stdout
