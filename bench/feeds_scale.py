"""Member feeds at 100,000 messages: time per 10,000-message block (spec/06-community.md 8).

Run: ``python -m bench.feeds_scale [--messages 100000] [--baseline]``. Prints JSON.

* ``write``: one author's :class:`Feed` posts (HLC, pycrdt transaction, Yjs update
  captured, entry signed) into one channel;
* ``receive``: a second member's :class:`FeedSet` takes those entries (parse, verify,
  apply the update, index);
* ``page_ms``: a 100-message page at the end and in the middle of the channel;
* ``--baseline``: the same writes into a nested pycrdt ``Map`` per message, the shape
  this design avoids (it grows quadratically).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

from pycrdt import Doc, Map

from starling.proto import community as com
from starling.proto.feeds import FeedSet
from starling.proto.identity import PrivateKey

T0 = 1_700_000_000_000
BLOCK = 10_000


def _key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(("feeds-scale/" + label).encode()).digest())


def _community() -> tuple[com.AuthorityLog, bytes, PrivateKey]:
    root, owner = _key("root"), _key("owner")
    log = com.AuthorityLog(root.public_key.raw)
    entries = com.genesis(root, owner.public_key.raw, T0)
    chan = com.channel_add(owner, root.public_key.raw, [entries[-1].id], T0 + 1, "general")
    for e in [*entries, chan]:
        log.add(e.raw)
    return log, chan.id, owner


def run(messages: int, baseline: bool) -> dict[str, Any]:
    log, channel, owner = _community()
    writer_set = FeedSet(log)
    feed = writer_set.writer(owner, b"\x01" * 8)
    reader = FeedSet(log)
    write_blocks, receive_blocks, raws = [], [], []
    for block in range(messages // BLOCK):
        t = time.perf_counter()
        batch = [
            feed.post(channel, f"message {i}", T0 + 1000 + i)
            for i in range(block * BLOCK, (block + 1) * BLOCK)
        ]
        write_blocks.append(round(time.perf_counter() - t, 3))
        t = time.perf_counter()
        for raw in batch:
            reader.add(raw, T0 + 10**9)
        receive_blocks.append(round(time.perf_counter() - t, 3))
        raws.extend(batch)
    pages = {}
    middle = reader.page(channel, None, messages // 2)[0].cursor
    for name, before in (("end", None), ("middle", middle)):
        t = time.perf_counter()
        page = reader.page(channel, before, 100)
        pages[name] = round((time.perf_counter() - t) * 1000, 3)
        assert len(page) == 100
    result: dict[str, Any] = {
        "messages": messages,
        "write_s_per_10k": write_blocks,
        "receive_s_per_10k": receive_blocks,
        "page_ms": pages,
        "entry_bytes_mean": round(sum(map(len, raws)) / len(raws), 1),
    }
    if baseline:
        result["baseline_s_per_10k"] = _baseline(messages)
    return result


def _baseline(messages: int) -> dict[str, list[float]]:
    """Bare pycrdt, with the update of each transaction captured as the writer does: a
    nested Map per message against the plain array per message chosen here."""
    out: dict[str, list[float]] = {}
    for shape in ("map_per_message", "plain_array"):
        doc: Doc[Any] = Doc(client_id=1)
        root = doc.get("messages", type=Map)
        updates: list[bytes] = []
        doc.observe(lambda event, u=updates: u.append(event.update))
        blocks = []
        for block in range(messages // BLOCK):
            t = time.perf_counter()
            for i in range(block * BLOCK, (block + 1) * BLOCK):
                with doc.transaction():
                    if shape == "plain_array":
                        root[f"{i:032x}"] = [b"x" * 32, i.to_bytes(8, "big"), f"m {i}", None, None]
                    else:
                        root[f"{i:032x}"] = Map({"c": "x" * 64, "h": i, "t": f"m {i}"})
            blocks.append(round(time.perf_counter() - t, 3))
            updates.clear()
        out[shape] = blocks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.messages, args.baseline), indent=1))


if __name__ == "__main__":
    main()
