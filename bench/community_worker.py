"""The member that holds the messages, in its own process, for ``bench.community``'s catch-up.

``python -m bench.community_worker --data DIR --messages N --authors K --t0 MS``

It writes its SQLite store first (the community's authority and the ``N`` feed entries
of ``K`` authors, exactly as ``bench.community`` builds them from the same ``--t0``),
then starts a node with its ``Communities`` and prints one JSON line on stdout:
``{"ready": true, "port": ..., "peer_id": ..., "messages": N}``. Then it serves, with
its own event loop, until its standard input closes. Each ``cpu`` line read on stdin is
answered with ``{"cpu_s": <this process's CPU seconds>}``, so the parent can charge
the catch-up's CPU to each side. On a failure it prints ``{"error": "..."}``, exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from pathlib import Path

from bench._common import emit
from bench.community import _Member, prepare_catchup
from starling.node.session import NodeConfig


async def serve(data: Path, messages: int, authors: int, t0: int) -> None:
    server = _Member("server", data)
    await prepare_catchup(data, server, messages, authors, t0)
    await server.start(NodeConfig(host="127.0.0.1"))
    emit(
        {
            "ready": True,
            "port": server.node.addresses[0][1],
            "peer_id": server.node.peer_id.text(),
            "messages": messages // authors * authors,
        }
    )
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "cpu":
                emit({"cpu_s": time.process_time()})
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.community_worker")
    p.add_argument("--data", required=True, help="directory for this member's store")
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--authors", type=int, required=True)
    p.add_argument("--t0", type=int, required=True, help="the authors' base time (ms)")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(Path(args.data), args.messages, args.authors, args.t0))
        return 0
    except Exception as exc:
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
