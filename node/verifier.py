"""A worker process that checks signatures for a node: ``python -m starling.node.verifier``.

``node/community.py`` starts two (shared by every ``Communities`` of a Python process)
and hands each one half of every large sync batch, so that the checks run beside the
event loop without waiting for its GIL (a checking thread must take the GIL back
after every signature, and the loop holds it while it applies and reads batches).

On its pipes, after one byte ``R`` (ready) from the worker, each request and each
answer is a 4-byte big-endian length and a pickle (trusted: the node's own child):
a list of ``(key, domain, payload, signature)`` in, the indexes of the items whose
signature does not hold out (checked by ``proto.identity.verify_batch``). The worker
exits at the end of its input, so it ends with its node, however the node ends. It
imports only the identity module (about 19 MB resident).
"""

from __future__ import annotations

import pickle
import sys
from typing import BinaryIO

from starling.proto.identity import verify_batch

READY = b"R"


def _read(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def failed_signatures(items: list[tuple[bytes, str, bytes, bytes]]) -> list[int]:
    """The indexes of ``items`` whose signature does not hold: the worker's answer (the
    node then judges those items itself, for their errors)."""
    return [i for i, error in enumerate(verify_batch(items)) if error is not None]


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    answers.write(READY)
    answers.flush()
    while (head := _read(requests, 4)) is not None:
        body = _read(requests, int.from_bytes(head, "big"))
        if body is None:
            return
        answer = pickle.dumps(failed_signatures(pickle.loads(body)))
        answers.write(len(answer).to_bytes(4, "big") + answer)
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
