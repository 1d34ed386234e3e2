"""A Starling node in its own process, for tests that need two processes.

Serves ``starling/sink/1``: reads a stream to its end and answers with the
SHA-256 of everything it read. Prints one JSON line with its address and peer
ID, then runs until its standard input closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

from starling.node.session import Node, NodeConfig, Stream
from starling.proto.identity import PrivateKey


async def sink(stream: Stream) -> None:
    digest = hashlib.sha256()
    async for frame in stream:
        digest.update(frame)
    await stream.send(digest.digest())
    await stream.close()


async def main() -> None:
    node = await Node.start(
        PrivateKey(os.urandom(32)), NodeConfig(), handlers={"starling/sink/1": sink}
    )
    host, port = node.addresses[0]
    print(json.dumps({"host": host, "port": port, "peer_id": node.peer_id.text()}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await node.close()


if __name__ == "__main__":
    asyncio.run(main())
