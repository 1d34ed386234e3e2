"""A node's store in its own process, for the kill -9 test (tests/test_store.py).

``python -m tests.peers.store_writer DATA_DIR {fsync,nofsync} START``

Opens ``DATA_DIR``'s store and posts forever from several concurrent authors,
each post one feed entry with one indexed message, starting at sequence number
``START`` (so successive runs on one directory add new posts). After each
``await store.put_feed_entry(...)`` returns, prints ``ack AUTHOR SEQ`` and
flushes: a printed line is an acknowledged post. The parent kills it with
SIGKILL at a moment of its choosing.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from starling.node.store import MessageRef, Store

AUTHORS = 4
COMMUNITY = hashlib.sha256(b"kill-9 community").digest()
CHANNELS = [hashlib.sha256(b"kill-9 channel %d" % i).digest() for i in range(2)]


def author(i: int) -> bytes:
    return hashlib.sha256(b"kill-9 author %d" % i).digest()


def raw(i: int, seq: int) -> bytes:
    """The entry bytes the parent expects for author ``i``, ``seq`` (~260 bytes)."""
    return hashlib.shake_256(b"post %d %d" % (i, seq)).digest(260)


def message(i: int, seq: int) -> MessageRef:
    mid = hashlib.sha256(b"message %d %d" % (i, seq)).digest()[:16]
    return MessageRef(CHANNELS[seq % 2], seq * 16 + i, mid)


async def poster(store: Store, i: int, start: int, fsync: bool) -> None:
    seq = start
    while True:
        await store.put_feed_entry(
            COMMUNITY, author(i), seq, raw(i, seq), messages=[message(i, seq)], fsync=fsync
        )
        sys.stdout.write(f"ack {i} {seq}\n")
        sys.stdout.flush()
        seq += 1


async def main(data_dir: str, mode: str, start: int) -> None:
    store = await Store.open(data_dir)
    print("open", flush=True)
    await asyncio.gather(*(poster(store, i, start, mode == "fsync") for i in range(AUTHORS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
