"""Pieces every session-benchmark worker shares: payload, timing, the parent protocol.

Standard library only, on purpose: the py-libp2p worker runs in its own venv
(without Starling installed) and imports this file as a plain module.

Worker <-> parent protocol (one JSON object per stdout line):

* a server prints ``{"ready": true, "port": ..., ...}`` once it listens, then
  serves until its standard input closes, then prints ``{"server_stats": ...}``;
* a client prints its result object as its last stdout line and exits 0, or
  prints ``{"error": "..."}`` and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

FRAME = 65519  # Starling's largest frame plaintext; every stack sends chunks of this size
DIGEST_SIZE = 32
ECHO_SIZE = 64
LOOPBACK = "127.0.0.1"  # the benchmark never targets any other address

# Payload: a fixed pseudo-random block (so compression or dedup could never help)
# cut into FRAME-sized chunks, cycled until the requested size.
_BLOCK = hashlib.shake_256(b"starling-bench-payload").digest(FRAME * 16)


def chunks(total: int, size: int = FRAME) -> Iterator[bytes]:
    """``total`` bytes of payload as chunks of ``size`` (the last may be shorter)."""
    sent = 0
    offset = 0
    while sent < total:
        n = min(size, total - sent)
        if offset + n > len(_BLOCK):
            offset = 0
        yield _BLOCK[offset : offset + n]
        offset += n
        sent += n


def expected_digest(total: int) -> bytes:
    h = hashlib.sha256()
    for chunk in chunks(total):
        h.update(chunk)
    return h.digest()


def split(total: int, parts: int) -> list[int]:
    """``total`` bytes split as evenly as possible over ``parts`` streams."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.4999999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rtt_summary(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {
        "rtt_us_p50": percentile(us, 50),
        "rtt_us_p99": percentile(us, 99),
        "rtt_us_min": us[0],
        "rtt_us_mean": sum(us) / len(us),
        "rtt_samples": len(us),
    }


def handshake_summary(n: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    lat = sorted(x * 1e3 for x in latencies)
    return {
        "handshakes_per_s": n / elapsed,
        "handshakes": n,
        "handshake_ms_p50": percentile(lat, 50),
        "handshake_ms_p99": percentile(lat, 99),
    }


def pin_cpu(cpu: int | None) -> None:
    """Keep this process on one core (the machine has two: server on 0, client on 1)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    available = os.sched_getaffinity(0)
    if cpu in available and len(available) > 1:
        os.sched_setaffinity(0, {cpu})


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def now() -> float:
    return time.perf_counter()
