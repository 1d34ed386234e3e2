"""Running ``starling`` as a person does, from tests: nodes as subprocesses, commands.

Shared by tests/test_daemon.py, test_cli.py, test_chat.py and test_journey.py.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARLING = [sys.executable, "-m", "starling.node"]


def cli(
    data_dir: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One command on ``data_dir``, as typed (``--data-dir`` added)."""
    return subprocess.run(
        [*STARLING, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def cli_json(data_dir: Path, *args: str, timeout: float = 60) -> Any:
    out = cli(data_dir, *args, "--json", timeout=timeout)
    assert out.returncode == 0, f"starling {' '.join(args)}: {out.stderr}"
    return json.loads(out.stdout)


class NodeProcess:
    """``starling node`` in a subprocess; ``banner`` is its first line of ``--json`` output."""

    def __init__(self, data_dir: Path, *extra: str, status_interval: float = 1.0) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *STARLING,
                "node",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1",
                "--json",
                "--status-interval",
                str(status_interval),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.banner: dict[str, Any] = json.loads(self._first_line(30.0))

    def _first_line(self, limit: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], limit)
        if not ready:
            self.kill()
            raise AssertionError(f"the node printed nothing in {limit} s: {self.log()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise AssertionError(f"the node exited with {self.proc.returncode}: {self.log()}")
        return line

    @property
    def bootstrap(self) -> str:
        return str(self.banner["bootstrap"])

    @property
    def peer_id(self) -> str:
        return str(self.banner["peer_id"])

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def wait_for(predicate: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll ``predicate`` until it returns something true (bounded: a failure, not a hang)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def sessions(data_dir: Path) -> list[dict[str, Any]]:
    status = cli_json(data_dir, "status")
    return list(status["host"]["sessions"])


__all__ = ["NodeProcess", "cli", "cli_json", "sessions", "signal", "wait_for"]


class Lines:
    """Lines from a subprocess's pipe with a time limit per line (select on the raw fd:
    a buffered reader's select would miss lines already in its buffer)."""

    def __init__(self, pipe: Any) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""

    def readline(self, limit: float = 30.0) -> str:
        deadline = time.monotonic() + limit
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no line within {limit} s (so far: {self.buffer!r})")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"the pipe closed (so far: {self.buffer!r})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()
