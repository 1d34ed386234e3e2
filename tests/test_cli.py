"""The `starling` command as a user and a script see it: output, --json, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    out = run("node", "--json", env={"STARLING_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["created"] is True
    assert (tmp_path / "identity.key").exists()
    second = json.loads(run("node", "--json", env={"STARLING_DATA_DIR": str(tmp_path)}).stdout)
    assert second["created"] is False
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
