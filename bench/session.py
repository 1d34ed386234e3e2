"""Session benchmark: Starling sessions side by side with raw aioquic and py-libp2p.

``python -m bench session --json PATH [--quick] [--stacks starling,raw_quic,libp2p] [--repeat K]``

Every measurement runs two processes on 127.0.0.1, a server pinned to core 0
and a client pinned to core 1 (``bench/session_worker.py``,
``bench/libp2p_worker.py``). Each repetition runs every stack once, in an order
rotated per repetition, so machine noise falls on all of them alike; each
figure is the median over the repetitions. What each figure means:
``bench/README.md``.

Exit status: 0 when every run finished and every SHA-256 check passed, 1 when a
hash check failed, 2 when a Starling or raw_quic run failed (libp2p that cannot
be installed or run only sets its figures to null, with the reason in ``notes``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = Path(os.environ.get("STARLING_BENCH_CACHE", Path.home() / ".cache" / "starling-bench"))
LIBP2P_VENV = CACHE / "venv-libp2p"
LIBP2P_REQUIREMENT = "libp2p>=0.8,<0.9"  # the worker is written against the 0.8 API

FULL = {
    "hs_n": 300,
    "hs_warmup": 20,
    "hs_concurrency": 8,
    "bytes": 50_000_000,
    "streams": 8,
    "tp_warmup_bytes": 2_000_000,
    "rtt_n": 2000,
    "rtt_warmup": 200,
}
QUICK = {
    "hs_n": 40,
    "hs_warmup": 5,
    "hs_concurrency": 8,
    "bytes": 4_000_000,
    "streams": 8,
    "tp_warmup_bytes": 500_000,
    "rtt_n": 200,
    "rtt_warmup": 20,
}
ALL_WORKLOADS = ["handshakes", "rtt", "throughput", "throughput8"]
STACKS = ("starling", "raw_quic", "libp2p")
SERVER_CPU, CLIENT_CPU = 0, 1


@dataclass
class Variant:
    """One server/client pair to run per repetition."""

    name: str  # key in the raw results
    stack: str
    workloads: list[str]
    reader: str | None = None  # Starling's NodeConfig.reader; None = the default


@dataclass
class Run:
    variant: str
    repetition: int
    result: dict[str, Any] | None = None
    error: str | None = None
    server_stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- processes


def worker_command(stack: str, python: str) -> list[str]:
    if stack == "libp2p":
        return [python, str(BENCH_DIR / "libp2p_worker.py")]
    return [python, "-m", "bench.session_worker"]


def _read_line(stream: Any, timeout: float) -> str | None:
    """One line from a pipe, or None after ``timeout`` seconds."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def run_pair(
    variant: Variant,
    params: dict[str, Any],
    python: str,
    rep: int,
    timeout: float,
    profile_dir: Path | None = None,
) -> Run:
    run = Run(variant.name, rep)
    base = worker_command(variant.stack, python)
    common = ["--stack", variant.stack]
    if variant.reader:
        common += ["--reader", variant.reader]

    def profile(role: str) -> list[str]:
        if profile_dir is None or variant.stack == "libp2p":
            return []
        name = f"{variant.name.replace(':', '-')}-{rep}-{role}.prof"
        return ["--profile", str(profile_dir / name)]

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with (
        tempfile.TemporaryFile("w+") as server_err,
        tempfile.TemporaryFile("w+") as client_err,
    ):
        server = subprocess.Popen(
            [*base, "server", *common, "--cpu", str(SERVER_CPU), *profile("server")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=server_err,
            text=True,
            cwd=REPO,
            env=env,
        )
        try:
            line = _read_line(server.stdout, 60)
            ready = _parse(line)
            if not ready.get("ready"):
                run.error = f"server did not start: {_tail(server_err) or line!r}"
                return run
            client_params = {**params, "workloads": variant.workloads}
            client = subprocess.run(
                [
                    *base,
                    "client",
                    *common,
                    *profile("client"),
                    "--cpu",
                    str(CLIENT_CPU),
                    "--server",
                    json.dumps(ready),
                    "--params",
                    json.dumps(client_params),
                ],
                stdout=subprocess.PIPE,
                stderr=client_err,
                text=True,
                cwd=REPO,
                env=env,
                timeout=timeout,
                check=False,
            )
            lines = [ln for ln in client.stdout.splitlines() if ln.strip()]
            result = _parse(lines[-1] if lines else None)
            if client.returncode != 0 or "error" in result or not result:
                run.error = result.get("error") or f"client exited {client.returncode}"
                run.error += f" | {_tail(client_err)}"
            else:
                run.result = result
        except subprocess.TimeoutExpired:
            run.error = f"client timed out after {timeout:g} s | {_tail(client_err)}"
        finally:
            run.server_stats = _stop_server(server)
    run.seconds = time.perf_counter() - started
    return run


def _stop_server(server: subprocess.Popen[str]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        assert server.stdin is not None
        server.stdin.close()  # the server's signal to stop
    line = _read_line(server.stdout, 10)
    if line:
        stats = _parse(line).get("server_stats", {})
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    return stats


def _parse(line: str | None) -> dict[str, Any]:
    if not line:
        return {}
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tail(f: Any, n: int = 600) -> str:
    f.flush()
    f.seek(0)
    text: str = f.read()
    return " ".join(text[-n:].split())


# ----------------------------------------------------------------------------- libp2p venv


def ensure_libp2p(allow_install: bool) -> tuple[str | None, str]:
    """The python of a venv with py-libp2p, made on first use; or None and why not."""
    python = LIBP2P_VENV / "bin" / "python"
    probe = [str(python), "-c", "import libp2p, trio, multiaddr"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return str(python), "reused"
    if not allow_install:
        return None, f"no py-libp2p venv at {LIBP2P_VENV} and --no-install given"
    print(f"[bench] installing {LIBP2P_REQUIREMENT} into {LIBP2P_VENV} ...", file=sys.stderr)
    base = getattr(sys, "_base_executable", None) or sys.executable
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [base, "-m", "venv", "--clear", str(LIBP2P_VENV)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if made.returncode != 0:
            return None, f"could not create venv: {made.stderr.strip()[-300:]}"
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", LIBP2P_REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing py-libp2p failed: {exc}"
    if pip.returncode != 0:
        err = [ln for ln in pip.stderr.splitlines() if not ln.startswith("WARNING")]
        return None, f"pip install {LIBP2P_REQUIREMENT} failed: {' '.join(err)[-400:]}"
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return None, "py-libp2p installed but does not import"
    return str(python), "installed"


# ----------------------------------------------------------------------------- report


def median(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def figure(runs: list[Run], variant: str, key: str) -> float | None:
    return median([r.result.get(key) for r in runs if r.variant == variant and r.result])


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for dist in ("aioquic", "cryptography", "noiseprotocol", "starling"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[f"{dist}_version"] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "node", "proto"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        env["starling_commit"] = head + ("+dirty" if dirty else "")
    return env


def build_report(
    runs: list[Run], stacks: list[str], params: dict[str, Any], notes: dict[str, list[str]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "session"}
    prefixes = {"starling": "", "raw_quic": "raw_quic_", "libp2p": "libp2p_"}
    for stack, prefix in prefixes.items():
        for key in ("handshakes_per_s", "throughput_MBps", "rtt_us_p50", "rtt_us_p99"):
            out[prefix + key] = figure(runs, stack, key) if stack in stacks else None
        if stack != "libp2p":
            v = figure(runs, stack, "throughput_8streams_MBps") if stack in stacks else None
            out[prefix + "throughput_8streams_MBps"] = v
    out["libp2p_throughput_8streams_MBps"] = (
        figure(runs, "libp2p", "throughput_8streams_MBps") if "libp2p" in stacks else None
    )
    # CPU per handshake on each side (process time, so other load on the machine
    # barely moves it): the figure to explain handshakes_per_s with.
    out["handshake_cpu_ms"] = {
        stack: {
            side: figure(runs, stack, f"{side}_cpu_ms_per_handshake")
            for side in ("client", "server")
        }
        for stack in prefixes
    }
    out["handshake_ms_p50"] = figure(runs, "starling", "handshake_ms_p50")
    out["raw_quic_handshake_ms_p50"] = figure(runs, "raw_quic", "handshake_ms_p50")
    out["libp2p_handshake_ms_p50"] = figure(runs, "libp2p", "handshake_ms_p50")
    out["throughput_MBps_drain"] = figure(runs, "starling:drain", "throughput_MBps")
    out["throughput_MBps_transport"] = figure(runs, "starling:transport", "throughput_MBps")
    out["recv_mode"] = {
        "drain_MBps": out["throughput_MBps_drain"],
        "transport_MBps": out["throughput_MBps_transport"],
        "drain_vs_transport": ratio(out["throughput_MBps_drain"], out["throughput_MBps_transport"]),
        "default_reader": _default_reader(runs),
    }
    out["handshakes_vs_raw"] = ratio(out["handshakes_per_s"], out["raw_quic_handshakes_per_s"])
    out["throughput_vs_raw"] = ratio(out["throughput_MBps"], out["raw_quic_throughput_MBps"])
    out["throughput_8streams_vs_raw"] = ratio(
        out["throughput_8streams_MBps"], out["raw_quic_throughput_8streams_MBps"]
    )
    out["rtt_vs_raw"] = ratio(out["rtt_us_p50"], out["raw_quic_rtt_us_p50"])

    def target(value: float | None, op: str, bound: float) -> dict[str, Any]:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        return {"ratio": value, "target": f"{op} {bound}x raw_quic", "met": met}

    out["targets"] = {
        "handshakes": target(out["handshakes_vs_raw"], ">=", 1.0),
        "throughput": target(out["throughput_vs_raw"], ">=", 1.0),
        "rtt_p50": target(out["rtt_vs_raw"], "<=", 1.2),
    }
    checks = [
        r.result[k]
        for r in runs
        if r.result
        for k in ("throughput_hash_ok", "throughput_8streams_hash_ok")
        if k in r.result
    ]
    out["hash_ok"] = all(checks)  # a failed run is reported in "errors", not here
    out["hash_checks"] = len(checks)
    out["errors"] = [f"{r.variant}#{r.repetition}: {r.error}" for r in runs if r.error]
    out["notes"] = notes
    out["params"] = params
    out["environment"] = environment()
    out["runs"] = [
        {
            "variant": r.variant,
            "repetition": r.repetition,
            "seconds": round(r.seconds, 2),
            "result": r.result,
            "error": r.error,
            "server_stats": r.server_stats,
        }
        for r in runs
    ]
    return out


def _default_reader(runs: list[Run]) -> str | None:
    for r in runs:
        if r.variant == "starling" and r.result:
            return r.result.get("reader")
    return None


def summary(report: dict[str, Any]) -> str:
    def f(v: float | None, fmt: str = "{:.1f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    rows = [("starling", ""), ("raw_quic", "raw_quic_"), ("libp2p", "libp2p_")]
    us = "{:.0f}us"
    lines = [
        f"{'stack':<10} {'hs/s':>8} {'MB/s':>8} {'MB/s x8':>8} {'rtt p50':>9} {'rtt p99':>9}",
    ]
    for name, p in rows:
        lines.append(
            f"{name:<10} {f(report[p + 'handshakes_per_s']):>8}"
            f" {f(report[p + 'throughput_MBps']):>8}"
            f" {f(report[p + 'throughput_8streams_MBps']):>8}"
            f" {f(report[p + 'rtt_us_p50'], us):>9} {f(report[p + 'rtt_us_p99'], us):>9}"
        )
    cpu = report["handshake_cpu_ms"]
    lines.append(
        "handshake CPU ms client/server: "
        + ", ".join(
            f"{name} {f(cpu[name]['client'], '{:.2f}')}/{f(cpu[name]['server'], '{:.2f}')}"
            for name, _ in rows
        )
    )
    lines.append(
        f"starling reader: drain {f(report['throughput_MBps_drain'])} MB/s,"
        f" transport {f(report['throughput_MBps_transport'])} MB/s"
    )
    for name, t in report["targets"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"target {name:<10} {f(t['ratio'], '{:.2f}x'):>7} ({t['target']}): {met}")
    lines.append(f"hash checks: {report['hash_checks']} {'ok' if report['hash_ok'] else 'FAILED'}")
    lines += [f"error: {e}" for e in report["errors"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench session", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the JSON report here ('-' for stdout)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, under a minute")
    p.add_argument(
        "--stacks", default=",".join(STACKS), help="comma-separated, of " + ",".join(STACKS)
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; median is reported")
    p.add_argument("--no-install", action="store_true", help="never create the py-libp2p venv")
    p.add_argument(
        "--only",
        metavar="WORKLOADS",
        help="comma-separated subset of " + ",".join(ALL_WORKLOADS) + " (for profiling)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="run starling/raw_quic workers under cProfile; .prof files go to DIR",
    )
    args = p.parse_args(argv)

    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = set(stacks) - set(STACKS)
    if unknown or not stacks:
        p.error(f"unknown stacks {sorted(unknown)}; choose from {', '.join(STACKS)}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    params = dict(QUICK if args.quick else FULL)
    timeout = 120.0 if args.quick else 900.0
    notes: dict[str, list[str]] = {s: [] for s in STACKS}
    notes["starling"].append(
        "default NodeConfig on 127.0.0.1 (Ed25519 self-signed cert, X25519-only key share,"
        " Noise XX on stream 0); throughput_MBps_drain/_transport rerun the 1-stream"
        " throughput with NodeConfig(reader=...) set explicitly"
    )
    notes["raw_quic"].append(
        "aioquic asyncio API with default QuicConfiguration (max_datagram_size 1200, all of"
        " aioquic's default key shares, max_data/max_stream_data 1 MiB); cert: ECDSA P-256"
        " self-signed, made with cryptography at server start; client verify_mode=CERT_NONE;"
        " ALPN 'bench'; sink and echo on separate servers so streams carry no framing"
    )

    pythons = {"starling": sys.executable, "raw_quic": sys.executable}
    if "libp2p" in stacks:
        python, how = ensure_libp2p(not args.no_install)
        if python is None:
            notes["libp2p"].append(f"libp2p figures are null: {how}")
            stacks.remove("libp2p")
        else:
            pythons["libp2p"] = python
            notes["libp2p"].append(
                f"py-libp2p from {LIBP2P_VENV} ({how}): TCP + Noise (/noise, the only security"
                " offered) + yamux; handshake = swarm.dial_addr (TCP connect, multistream,"
                " Noise XX, multistream, yamux, swarm registration), closed right after;"
                " per-peer connection limits raised to 256, the total to 1000, and the per-peer"
                " connection rate limit (10/s, burst 50) switched off, so the handshake loop"
                " is not refused;"
                " identify runs in the background on each new connection, as libp2p hosts do"
            )
    else:
        notes["libp2p"].append("libp2p not in --stacks: figures are null")

    workloads = ALL_WORKLOADS
    if args.only:
        workloads = [w.strip() for w in args.only.split(",") if w.strip()]
        if not set(workloads) <= set(ALL_WORKLOADS):
            p.error(f"--only takes a subset of {', '.join(ALL_WORKLOADS)}")
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    variants = [Variant(s, s, workloads) for s in stacks]
    if "starling" in stacks and "throughput" in workloads:
        variants += [
            Variant("starling:drain", "starling", ["throughput"], reader="drain"),
            Variant("starling:transport", "starling", ["throughput"], reader="transport"),
        ]

    runs: list[Run] = []
    for rep in range(args.repeat):
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:  # rotate: no stack always goes first
            print(f"[bench] rep {rep + 1}/{args.repeat}: {variant.name} ...", file=sys.stderr)
            run = run_pair(variant, params, pythons[variant.stack], rep, timeout, profile_dir)
            runs.append(run)
            if run.error:
                print(f"[bench]   failed: {run.error[:500]}", file=sys.stderr)
                if variant.stack == "libp2p":
                    notes["libp2p"].append(f"repetition {rep + 1} failed: {run.error[:300]}")

    report = build_report(runs, stacks, params, notes)
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text + "\n")
    print(summary(report), file=sys.stderr)

    if not report["hash_ok"]:
        return 1
    failed_core = [r for r in runs if r.error and not r.variant.startswith("libp2p")]
    return 2 if failed_core else 0


if __name__ == "__main__":
    sys.exit(main())
