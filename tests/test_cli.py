"""The `starling` command as a user and a script see it: output, --json, exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cliproc import STARLING, Lines, NodeProcess, cli, cli_json, wait_for

from starling.proto.identity import PeerId


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starling.node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_console_script_is_installed() -> None:
    script = shutil.which("starling", path=str(Path(sys.executable).parent))
    assert script is not None
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("starling ")


def test_id_new_then_show(tmp_path: Path) -> None:
    made = run("id", "new", "--data-dir", str(tmp_path), "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["created"] is True
    peer = PeerId.parse(created["peer_id"])
    assert peer.raw.hex() == created["peer_id_hex"]

    shown = run("id", "show", "--data-dir", str(tmp_path), "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["peer_id"] == created["peer_id"]

    human = run("id", "show", "--data-dir", str(tmp_path))
    assert created["peer_id"] in human.stdout


def test_id_new_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run("id", "new", "--data-dir", str(tmp_path)).returncode == 0
    before = (tmp_path / "identity.key").read_bytes()
    again = run("id", "new", "--data-dir", str(tmp_path))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (tmp_path / "identity.key").read_bytes() == before


def test_id_show_without_identity_says_what_to_do(tmp_path: Path) -> None:
    out = run("id", "show", "--data-dir", str(tmp_path / "none"))
    assert out.returncode == 1
    assert "starling id new" in out.stderr
    assert "Traceback" not in out.stderr


def test_data_dir_from_environment(tmp_path: Path) -> None:
    env = {"STARLING_DATA_DIR": str(tmp_path)}
    out = run("status", "--json", "--listen", "127.0.0.1", env=env)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["identity_created"] is True
    assert (tmp_path / "identity.key").exists()
    second = json.loads(run("status", "--json", "--listen", "127.0.0.1", env=env).stdout)
    assert second["identity_created"] is False
    assert second["peer_id"] == first["peer_id"]


def test_bad_key_file_is_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_text("garbage\n")
    key.chmod(0o600)
    out = run("id", "show", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "KEY_FILE_FORMAT" in out.stderr
    assert "Traceback" not in out.stderr


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("id", "frobnicate").returncode == 2


COMMANDS = [
    ("node",),
    ("status",),
    ("community", "create"),
    ("community", "list"),
    ("invite",),
    ("join",),
    ("channel", "add"),
    ("send",),
    ("read",),
    ("members",),
    ("ban",),
    ("unban",),
    ("chat",),
]


def test_every_command_has_help_with_json() -> None:
    for command in COMMANDS:
        out = run(*command, "--help")
        assert out.returncode == 0, command
        assert "--json" in out.stdout, command
        assert "--data-dir" in out.stdout, command


def test_durations() -> None:
    from starling.node.cli import parse_duration

    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("12h") == 43200
    assert parse_duration("7d") == 7 * 86400
    assert run("invite", "x", "--expires", "5x").returncode == 2
    assert "not a duration" in run("invite", "x", "--expires", "soon").stderr


def test_two_data_directories_walkthrough(tmp_path: Path) -> None:
    """README's walkthrough: two nodes on one machine, create, invite, join, send, read."""
    a_dir, b_dir = tmp_path / "alice", tmp_path / "bob"
    alice, bob = NodeProcess(a_dir), NodeProcess(b_dir)
    follow = None
    try:
        made = cli_json(a_dir, "community", "create", "Book club", "--name", "Alice")
        assert made["community"].startswith("sc1")
        assert made["channels"] == ["general"]
        assert cli_json(a_dir, "channel", "add", "Book club", "random")["channel"] == "random"
        invite = cli_json(a_dir, "invite", "Book club", "--uses", "5", "--expires", "1h")
        link = invite["link"]
        assert link.startswith("starling://join/")
        assert invite["uses"] == 5
        assert invite["expires_s"] == 3600
        qr = cli(a_dir, "invite", "Book club", "--qr")
        assert qr.returncode == 0
        assert "\u2588" in qr.stdout or "\u2580" in qr.stdout  # drawn with block characters
        assert qr.stdout.strip().splitlines()[-1].startswith("starling://join/")

        joined = cli(b_dir, "join", link, "--name", "Bob")
        assert joined.returncode == 0, joined.stderr
        assert "Joined Book club" in joined.stdout

        follow = subprocess.Popen(
            [*STARLING, "read", "Book club#general", "--follow", "--data-dir", str(b_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        sent = cli(a_dir, "send", "Book club#general", "hello from Alice")
        assert sent.returncode == 0, sent.stderr
        assert cli(b_dir, "send", "Book club#general", "hi Alice, Bob here").returncode == 0

        def texts(data_dir: Path) -> list[tuple[str, str]]:
            out = cli(data_dir, "read", "Book club#general", "--json")
            assert out.returncode == 0, out.stderr
            messages = [json.loads(line) for line in out.stdout.splitlines()]  # JSON lines
            return [(m["author_name"], m["text"]) for m in messages]

        both = [("Alice", "hello from Alice"), ("Bob", "hi Alice, Bob here")]
        wait_for(lambda: texts(b_dir) == both, "Bob to see both messages")
        wait_for(lambda: texts(a_dir) == both, "Alice to see both messages")

        # Human output: names and times, never keys.
        human = cli(b_dir, "read", "Book club#general")
        assert "] Alice: hello from Alice" in human.stdout
        assert "sp1" not in human.stdout and "sc1" not in human.stdout
        members = cli(a_dir, "members", "Book club")
        assert "Bob  (member, online)" in members.stdout
        assert "Alice  (owner, online)" in members.stdout
        assert "sp1" not in members.stdout

        # --follow printed Alice's message as it arrived.
        assert follow.stdout is not None
        lines = Lines(follow.stdout)
        followed = [lines.readline(), lines.readline()]
        assert any(line.endswith("] Alice: hello from Alice") for line in followed), followed
        assert any(line.endswith("] Bob: hi Alice, Bob here") for line in followed), followed

        # Without a running node, a command starts one for its duration; it reaches the
        # peers it knew and delivers what it wrote before it stops.
        assert bob.stop() == 0
        offline = cli(b_dir, "send", "Book club#general", "sent with no node running")
        assert offline.returncode == 0, offline.stderr
        assert not (b_dir / "control.sock").exists()
        wait_for(
            lambda: ("Bob", "sent with no node running") in texts(a_dir),
            "Alice to receive the message Bob's command delivered",
        )
        bob = NodeProcess(b_dir)

        # Alice bans Bob by display name; Bob's node learns it and refuses his posts.
        banned = cli_json(a_dir, "ban", "Book club", "Bob")
        assert banned["member"]["display_name"] == "Bob"

        def refused() -> bool:
            out = cli(b_dir, "send", "Book club#general", "am I still here?")
            return out.returncode == 1 and "may not post" in out.stderr

        wait_for(refused, "Bob's node to refuse his post after the ban")
        assert ("Bob", "am I still here?") not in texts(a_dir)
        view = cli_json(a_dir, "members", "Book club")["members"]
        assert [m["banned"] for m in view if m["display_name"] == "Bob"] == [True]
    finally:
        if follow is not None:
            follow.kill()
            follow.wait()
            if follow.stdout is not None:
                follow.stdout.close()
        assert alice.stop() == 0
        assert bob.stop() == 0


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "a")
    try:
        out = cli(tmp_path / "a", "send", "Nope#general", "x")
        assert out.returncode == 1
        assert "no community 'Nope'" in out.stderr
        assert "starling community create" in out.stderr
        out = cli(tmp_path / "a", "join", "https://example.org/x")
        assert out.returncode == 1
        assert "starling://join/" in out.stderr
        assert cli(tmp_path / "a", "community", "create", "Club").returncode == 0
        out = cli(tmp_path / "a", "ban", "Club", "Nobody")
        assert out.returncode == 1
        assert "no member 'Nobody'" in out.stderr
        out = cli(tmp_path / "a", "send", "Club#nochannel", "x")
        assert out.returncode == 1
        assert "COMMUNITY_UNKNOWN_CHANNEL" in out.stderr
        assert "general" in out.stderr
        for result in (out,):
            assert "Traceback" not in result.stderr
    finally:
        assert node.stop() == 0


def test_readme_walkthrough_by_copy_and_paste(tmp_path: Path) -> None:
    """README's walkthrough block, run by bash as pasted (data dirs moved under tmp_path)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)```\n<!-- /walkthrough -->", readme, re.S)
    assert block is not None
    script = (
        block.group(1)
        .replace(".venv/bin/starling", str(Path(sys.executable).parent / "starling"))
        .replace("/tmp/alice", str(tmp_path / "alice"))
        .replace("/tmp/bob", str(tmp_path / "bob"))
    )
    try:
        out = subprocess.run(
            ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert re.fullmatch(r"\[\d\d:\d\d\] Alice: Hello Bob, welcome!", lines[-2]), lines
        assert re.fullmatch(r"\[\d\d:\d\d\] Bob: Thanks Alice!", lines[-1]), lines
        assert "Joined Book club." in out.stdout
    finally:
        for who in ("alice", "bob"):
            lock = tmp_path / who / "node.lock"
            pid = lock.read_text().split()[0] if lock.exists() else ""
            if pid.isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
                socket_file = tmp_path / who / "control.sock"
                wait_for(lambda s=socket_file: not s.exists(), f"{who}'s node to stop")
