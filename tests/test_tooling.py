"""The project's static checks run as part of the suite: ruff, the sans-IO ban, mypy strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ruff_check() -> None:
    out = tool("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = tool("ruff", "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio\n",
        "import socket\n",
        "import time\n",
        "import random\n",
        "import threading\n",
        "from os import urandom\n",
        "import os\nos.urandom(32)\n",
        "from datetime import datetime\n",
    ],
)
def test_proto_bans_io_clock_and_randomness(source: str) -> None:
    # Lint a would-be file inside proto/ (read from stdin, nothing written to the tree).
    out = tool("ruff", "check", "--stdin-filename", "proto/_probe.py", "-", stdin=source)
    assert out.returncode == 1
    assert "TID251" in out.stdout


def test_the_ban_is_scoped_to_proto() -> None:
    out = tool("ruff", "check", "--stdin-filename", "node/_probe.py", "-", stdin="import asyncio\n")
    assert "TID251" not in out.stdout


def test_mypy_strict_on_proto() -> None:
    out = tool("mypy")
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_namespaced_packages_are_installed(tmp_path: Path) -> None:
    code = (
        "import importlib.util, starling.proto, starling.node\n"
        "assert importlib.util.find_spec('proto') is None, 'plain proto importable'\n"
        "assert importlib.util.find_spec('node') is None, 'plain node importable'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
