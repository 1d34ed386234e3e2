"""``python -m bench NAME [options]``: run one benchmark, chosen by name from a table.

A benchmark is a module with ``main(argv) -> int``; add a row to ``BENCHMARKS``
to add one (``community``, ``journey`` are planned).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "session": (
        "bench.session",
        "handshakes/s, throughput and RTT of Starling sessions vs raw aioquic and py-libp2p",
    ),
    "dht": (
        "bench.dht",
        "DHT lookups on the simulator (1,000 and 10,000 nodes) vs the kademlia package",
    ),
    "gossip": (
        "bench.gossip",
        "gossip on the simulator vs naive push and GossipSub v1.1; real sockets vs py-libp2p",
    ),
    "nat": (
        "bench.nat",
        "every pairing of NAT behaviours through the Linux NAT lab: path, timings (root)",
    ),
    "community_store": (
        "bench.community_store",
        "SQLite community store: bytes per message, channel page latency, ingest, post ack",
    ),
    "community": (
        "bench.community",
        "communities on loopback: 10k catch-up, post-to-visible across 10 members, pages",
    ),
    "journey": (
        "bench.journey",
        "the whole journey through the NAT lab by the CLI: join to first message, RSS (root)",
    ),
}


def usage() -> str:
    lines = ["usage: python -m bench NAME [options]   (python -m bench NAME --help)", ""]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "--list"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    entry = BENCHMARKS.get(name)
    if entry is None:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
