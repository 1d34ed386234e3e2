"""One side of the session benchmark for the ``libp2p`` stack (py-libp2p, trio).

Runs with the python of a separate venv that has ``libp2p`` but not Starling
(``bench.session`` makes it under ``~/.cache/starling-bench/venv-libp2p``), as
a plain script, so it imports only the standard library, ``_common`` beside it
and libp2p:

``VENV/bin/python bench/libp2p_worker.py server|client ...`` (arguments as
``bench.session_worker``).

The host is libp2p's TCP transport, secured by Noise (``/noise``, the only
security option offered, so negotiation cannot pick another) and multiplexed
by yamux (``/yamux/1.0.0``). A handshake is ``swarm.dial_addr``: a new TCP
connection, multistream-select, the Noise XX handshake, multistream-select
again and the yamux upgrade, registered with the swarm; it is closed at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from _common import (  # type: ignore[import-not-found]
    DIGEST_SIZE,
    ECHO_SIZE,
    LOOPBACK,
    chunks,
    emit,
    expected_digest,
    handshake_summary,
    now,
    pin_cpu,
    rtt_summary,
    split,
)
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.rcmgr import ResourceManager
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

SINK = TProtocol("/starling-bench/sink/1")
ECHO = TProtocol("/starling-bench/echo/1")
CPU = TProtocol("/starling-bench/cpu/1")
READ_SIZE = 1 << 20
# The handshake workload dials one peer hundreds of times: libp2p's defaults allow
# 8 (resource manager) and 3 (connection manager) connections per peer and rate
# limit new connections to 10 per peer per second (burst 50), so those three
# anti-abuse limits are raised or switched off here, as is the total of 300
# connections (the server still counts closed ones until it reads their EOF).
# Everything else is libp2p's default.
PER_PEER_LIMIT = 256
MAX_CONNECTIONS = 1000


def make_host() -> Any:
    key_pair = create_new_key_pair(os.urandom(32))
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    limits = new_connection_limits_with_defaults()
    limits.max_established_per_peer = PER_PEER_LIMIT
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=[multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/0")],
        resource_manager=ResourceManager(
            connection_limits=limits, enable_memory_pooling=True, enable_rate_limiting=False
        ),
        connection_config=ConnectionConfig(
            max_connections_per_peer=PER_PEER_LIMIT, max_connections=MAX_CONNECTIONS
        ),
    )


async def read_exactly(stream: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        buf += await stream.read(n - len(buf))
    return buf


# ----------------------------------------------------------------------------- server


async def server() -> None:
    host = make_host()

    async def sink(stream: Any) -> None:
        h = hashlib.sha256()
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                h.update(data)
        except StreamEOF:
            pass
        await stream.write(h.digest())
        await stream.close()

    async def echo(stream: Any) -> None:
        try:
            while True:
                await stream.write(await read_exactly(stream, ECHO_SIZE))
        except StreamEOF:
            pass
        await stream.close()

    async def cpu(stream: Any) -> None:
        await stream.write(struct.pack(">d", time.process_time()))
        await stream.close()

    listen = [multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/0")]
    async with host.run(listen_addrs=listen):
        host.set_stream_handler(SINK, sink)
        host.set_stream_handler(ECHO, echo)
        host.set_stream_handler(CPU, cpu)
        addr = next(a for a in host.get_addrs() if a.value_for_protocol("tcp"))
        emit(
            {
                "ready": True,
                "port": int(addr.value_for_protocol("tcp")),
                "peer_id": host.get_id().to_base58(),
            }
        )
        await trio.to_thread.run_sync(sys.stdin.read)
        stats = {
            "connections_open_at_end": host.get_network().get_total_connections(),
            "cpu_s": time.process_time(),
        }
    emit({"server_stats": stats})


# ----------------------------------------------------------------------------- client


async def measure_handshakes(
    connect_once: Callable[[], Awaitable[Any]],
    n: int,
    warmup: int,
    concurrency: int,
    server_cpu: Callable[[], Awaitable[float]],
) -> dict[str, Any]:
    async def batch(count: int) -> tuple[float, list[float]]:
        remaining = count
        latencies: list[float] = []

        async def lane(closers: trio.Nursery) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = now()
                conn = await connect_once()
                latencies.append(now() - t0)
                closers.start_soon(conn.close)

        async with trio.open_nursery() as closers:
            start = now()
            async with trio.open_nursery() as lanes:
                for _ in range(min(concurrency, count)):
                    lanes.start_soon(lane, closers)
            elapsed = now() - start
        await trio.sleep(0.05)
        return elapsed, latencies

    await batch(warmup)
    server_before, cpu = await server_cpu(), time.process_time()
    elapsed, latencies = await batch(n)  # returns once every close has finished
    server_after, cpu = await server_cpu(), time.process_time() - cpu
    return {
        **handshake_summary(n, elapsed, latencies),
        "client_cpu_ms_per_handshake": cpu / n * 1e3,
        "server_cpu_ms_per_handshake": (server_after - server_before) / n * 1e3,
    }


async def client(srv: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    host = make_host()
    peer = ID.from_base58(srv["peer_id"])
    target = multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/{srv['port']}")
    out: dict[str, Any] = {}
    work = params["workloads"]
    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/0")]):
        swarm = host.get_network()
        await host.connect(PeerInfo(peer, [target]))
        if "handshakes" in work:

            async def connect_once() -> Any:
                return await swarm.dial_addr(target, peer)

            async def server_cpu() -> float:
                stream = await host.new_stream(peer, [CPU])
                value = struct.unpack(">d", await read_exactly(stream, 8))[0]
                await stream.close()
                return float(value)

            out.update(
                await measure_handshakes(
                    connect_once,
                    params["hs_n"],
                    params["hs_warmup"],
                    params["hs_concurrency"],
                    server_cpu,
                )
            )
        if "rtt" in work:
            stream = await host.new_stream(peer, [ECHO])
            msg = bytes(ECHO_SIZE)
            for _ in range(params["rtt_warmup"]):
                await stream.write(msg)
                await read_exactly(stream, ECHO_SIZE)
            samples = []
            for _ in range(params["rtt_n"]):
                t0 = time.perf_counter_ns()
                await stream.write(msg)
                await read_exactly(stream, ECHO_SIZE)
                samples.append(time.perf_counter_ns() - t0)
            await stream.close()
            out.update(rtt_summary(samples))

        async def send_stream(nbytes: int, into: list[bytes]) -> None:
            stream = await host.new_stream(peer, [SINK])
            for chunk in chunks(nbytes):
                await stream.write(chunk)
            await stream.close_write()
            into.append(await read_exactly(stream, DIGEST_SIZE))

        async def throughput(streams: int) -> tuple[float | None, bool]:
            warm = params["tp_warmup_bytes"]
            if warm:
                got: list[bytes] = []
                await send_stream(warm, got)
                if got != [expected_digest(warm)]:
                    return None, False
            sizes = split(params["bytes"], streams)
            digests: list[bytes] = []
            start = now()
            async with trio.open_nursery() as nursery:
                for size in sizes:
                    nursery.start_soon(send_stream, size, digests)
            elapsed = now() - start
            # All parts have the same size or differ by one byte: compare as sets.
            ok = sorted(digests) == sorted(expected_digest(s) for s in sizes)
            return params["bytes"] / 1e6 / elapsed, ok

        if "throughput" in work:
            out["throughput_MBps"], out["throughput_hash_ok"] = await throughput(1)
        if "throughput8" in work:
            mbps, ok = await throughput(params["streams"])
            out["throughput_8streams_MBps"], out["throughput_8streams_hash_ok"] = mbps, ok
        out["muxer"] = "yamux"
        out["security"] = str(NOISE_PROTOCOL_ID)
        await host.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="libp2p_worker.py")
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--stack", default="libp2p")
    p.add_argument("--reader", default=None)
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--server", default="{}")
    p.add_argument("--params", default="{}")
    args = p.parse_args(argv)
    pin_cpu(args.cpu)
    try:
        if args.role == "server":
            trio.run(server)
            return 0
        result = trio.run(client, json.loads(args.server), json.loads(args.params))
        from importlib.metadata import version

        result["libp2p_version"] = version("libp2p")
        emit(result)
        return 0
    except BaseException as exc:
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
