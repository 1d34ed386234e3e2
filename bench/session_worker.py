"""One side of the session benchmark, for the ``starling`` and ``raw_quic`` stacks.

``python -m bench.session_worker server --stack S [--reader R] [--cpu N]``
``python -m bench.session_worker client --stack S --server JSON --params JSON [--cpu N]``

The parent (``bench.session``) starts a server, reads its ``ready`` line (port,
peer ID), starts a client with it, and reads the client's result line; see
``bench/_common.py`` for that protocol. Each process is pinned to its own core.

Workloads (the client runs those named in ``params["workloads"]``, in this order):

* ``handshakes``: open sessions on fresh connections, ``concurrency`` in flight;
  a slot is free again as soon as its handshake completes (the close runs in
  the background), so the rate counts handshakes, not close timers.
* ``rtt``: 64-byte echo round trips on one established stream.
* ``throughput`` / ``throughput8``: stream ``bytes`` to a sink (on 1 or
  ``streams`` streams), which answers each stream with the SHA-256 of what it
  read; the clock runs from the first send to the last digest received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import ssl
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import (
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

SINK = "starling/bench-sink/1"
ECHO = "starling/bench-echo/1"
CPU = "starling/bench-cpu/1"  # answers the server process's CPU seconds, 8-byte float
RAW_ALPN = "bench"

Closer = Callable[[], Awaitable[Any]]
CpuProbe = Callable[[], Awaitable[float]]


# ----------------------------------------------------------------------------- workloads


async def measure_handshakes(
    connect_once: Callable[[], Awaitable[Closer]],
    n: int,
    warmup: int,
    concurrency: int,
    server_cpu: CpuProbe,
) -> dict[str, Any]:
    closing: set[asyncio.Task[Any]] = set()

    async def batch(count: int) -> tuple[float, list[float]]:
        remaining = count
        latencies: list[float] = []

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = now()
                close = await connect_once()
                latencies.append(now() - t0)
                task = asyncio.ensure_future(close())
                closing.add(task)
                task.add_done_callback(closing.discard)

        start = now()
        await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
        return now() - start, latencies

    await batch(warmup)
    await _drain_closes(closing)
    server_before, cpu = await server_cpu(), time.process_time()
    elapsed, latencies = await batch(n)
    await _drain_closes(closing)  # closing is part of a session's cost too
    server_after, cpu = await server_cpu(), time.process_time() - cpu
    return {
        **handshake_summary(n, elapsed, latencies),
        "client_cpu_ms_per_handshake": cpu / n * 1e3,
        "server_cpu_ms_per_handshake": (server_after - server_before) / n * 1e3,
    }


async def _drain_closes(closing: set[asyncio.Task[Any]]) -> None:
    if closing:
        await asyncio.wait(set(closing), timeout=30)
    await asyncio.sleep(0.05)  # let the server finish its side before the next phase


async def measure_rtt(
    roundtrip: Callable[[], Awaitable[None]], n: int, warmup: int
) -> dict[str, Any]:
    for _ in range(warmup):
        await roundtrip()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await roundtrip()
        samples.append(clock() - t0)
    return rtt_summary(samples)


async def measure_throughput(
    send_stream: Callable[[int], Awaitable[bytes]], total: int, streams: int, warmup: int
) -> dict[str, Any]:
    """``send_stream(nbytes)`` sends ``chunks(nbytes)`` on a new stream and returns the digest."""
    if warmup:
        got = await send_stream(warmup)
        if got != expected_digest(warmup):
            return {"hash_ok": False, "MBps": None}
    sizes = split(total, streams)
    expected = {size: expected_digest(size) for size in set(sizes)}
    start = now()
    digests = await asyncio.gather(*(send_stream(size) for size in sizes))
    elapsed = now() - start
    ok = all(d == expected[s] for d, s in zip(digests, sizes, strict=True))
    return {"hash_ok": ok, "MBps": total / 1e6 / elapsed, "seconds": elapsed, "bytes": total}


async def run_workloads(
    params: dict[str, Any],
    connect_once: Callable[[], Awaitable[Closer]],
    roundtrip: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
    send_stream: Callable[[int], Awaitable[bytes]],
    server_cpu: CpuProbe,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    work = params["workloads"]
    if "handshakes" in work:
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
        rt = await roundtrip()
        out.update(await measure_rtt(rt, params["rtt_n"], params["rtt_warmup"]))
    warm = params["tp_warmup_bytes"]
    if "throughput" in work:
        r = await measure_throughput(send_stream, params["bytes"], 1, warm)
        out["throughput_MBps"] = r["MBps"]
        out["throughput_hash_ok"] = r["hash_ok"]
    if "throughput8" in work:
        r = await measure_throughput(send_stream, params["bytes"], params["streams"], warm)
        out["throughput_8streams_MBps"] = r["MBps"]
        out["throughput_8streams_hash_ok"] = r["hash_ok"]
    return out


# ----------------------------------------------------------------------------- starling


def _starling_config(reader: str | None) -> Any:
    from starling.node.session import NodeConfig

    return NodeConfig(host=LOOPBACK) if reader is None else NodeConfig(host=LOOPBACK, reader=reader)


async def starling_server(reader: str | None) -> None:
    from starling.node.session import Node, Stream
    from starling.proto.identity import PrivateKey

    async def sink(stream: Stream) -> None:
        h = hashlib.sha256()
        while (frame := await stream.recv()) is not None:
            h.update(frame)
        await stream.send(h.digest())
        await stream.close()

    async def echo(stream: Stream) -> None:
        while (frame := await stream.recv()) is not None:
            await stream.send(frame)
        await stream.close()

    async def cpu(stream: Stream) -> None:
        await stream.send(struct.pack(">d", time.process_time()))
        await stream.close()

    node = await Node.start(
        PrivateKey(os.urandom(32)),
        _starling_config(reader),
        handlers={SINK: sink, ECHO: echo, CPU: cpu},
    )
    emit(
        {
            "ready": True,
            "port": node.addresses[0][1],
            "peer_id": node.peer_id.text(),
            "reader": node.config.reader,
        }
    )
    await _wait_stdin_closed()
    stats = {**node.stats, **{f"endpoint_{k}": v for k, v in node.endpoint.stats.items()}}
    await node.close()
    emit({"server_stats": {**stats, "cpu_s": time.process_time()}})


async def starling_client(
    server: dict[str, Any], params: dict[str, Any], reader: str | None
) -> dict[str, Any]:
    from starling.node.session import Node
    from starling.proto.identity import PeerId, PrivateKey

    node = await Node.start(PrivateKey(os.urandom(32)), _starling_config(reader))
    addr = (LOOPBACK, int(server["port"]))
    peer = PeerId.parse(server["peer_id"])
    session = None
    try:

        async def connect_once() -> Closer:
            s = await node.connect(addr, peer_id=peer)
            return s.close

        async def roundtrip() -> Callable[[], Awaitable[None]]:
            nonlocal session
            session = session or await node.connect(addr, peer_id=peer)
            stream = await session.open_stream(ECHO)
            msg = bytes(ECHO_SIZE)

            async def once() -> None:
                await stream.send(msg)
                got = await stream.recv()
                if got is None or len(got) != ECHO_SIZE:
                    raise RuntimeError(f"bad echo {got!r:.40}")

            return once

        async def send_stream(nbytes: int) -> bytes:
            nonlocal session
            session = session or await node.connect(addr, peer_id=peer)
            stream = await session.open_stream(SINK)
            for chunk in chunks(nbytes):
                await stream.send(chunk)
            await stream.close()
            digest = await stream.recv()
            return digest or b""

        async def server_cpu() -> float:
            nonlocal session
            session = session or await node.connect(addr, peer_id=peer)
            stream = await session.open_stream(CPU)
            return float(struct.unpack(">d", await stream.read_all())[0])

        out = await run_workloads(params, connect_once, roundtrip, send_stream, server_cpu)
        out["reader"] = node.config.reader
        out["client_stats"] = {
            **node.stats,
            **{f"endpoint_{k}": v for k, v in node.endpoint.stats.items()},
            **({f"session_{k}": v for k, v in session.stats.items()} if session else {}),
        }
        return out
    finally:
        await node.close()


# ----------------------------------------------------------------------------- raw aioquic


def _self_signed_p256() -> tuple[Any, Any]:
    """An ECDSA P-256 self-signed certificate, as a typical QUIC deployment would make."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert, key


async def raw_quic_server() -> None:
    from aioquic.asyncio import serve
    from aioquic.quic.configuration import QuicConfiguration

    cert, key = _self_signed_p256()

    def config() -> QuicConfiguration:
        c = QuicConfiguration(is_client=False, alpn_protocols=[RAW_ALPN])
        c.certificate = cert
        c.private_key = key
        return c

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while data := await reader.read(1 << 20):
            h.update(data)
        writer.write(h.digest())
        writer.write_eof()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                writer.write(await reader.readexactly(ECHO_SIZE))
        writer.write_eof()

    def cpu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack(">d", time.process_time()))
        writer.write_eof()

    # One server per workload, so the streams carry nothing but the workload's bytes.
    sink_server = await serve(
        LOOPBACK, 0, configuration=config(), stream_handler=lambda r, w: spawn(sink(r, w))
    )
    echo_server = await serve(
        LOOPBACK, 0, configuration=config(), stream_handler=lambda r, w: spawn(echo(r, w))
    )
    cpu_server = await serve(LOOPBACK, 0, configuration=config(), stream_handler=cpu)
    emit(
        {
            "ready": True,
            "port": sink_server._transport.get_extra_info("sockname")[1],
            "echo_port": echo_server._transport.get_extra_info("sockname")[1],
            "cpu_port": cpu_server._transport.get_extra_info("sockname")[1],
            "cert": "ECDSA P-256 self-signed (cryptography), SHA-256 signature",
        }
    )
    await _wait_stdin_closed()
    for s in (sink_server, echo_server, cpu_server):
        s.close()
    emit({"server_stats": {"cpu_s": time.process_time()}})


async def raw_quic_client(server: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    def config() -> QuicConfiguration:
        c = QuicConfiguration(is_client=True, alpn_protocols=[RAW_ALPN])
        c.verify_mode = ssl.CERT_NONE
        return c

    stack = contextlib.AsyncExitStack()
    conns: dict[int, Any] = {}

    async def connection(port: int) -> Any:
        if port not in conns:
            conns[port] = await stack.enter_async_context(
                connect(LOOPBACK, port, configuration=config())
            )
        return conns[port]

    async def connect_once() -> Closer:
        cm = connect(LOOPBACK, int(server["port"]), configuration=config())
        await cm.__aenter__()  # returns once the QUIC handshake is done

        async def close() -> None:
            await cm.__aexit__(None, None, None)

        return close

    async def roundtrip() -> Callable[[], Awaitable[None]]:
        proto = await connection(int(server["echo_port"]))
        reader, writer = await proto.create_stream()
        msg = bytes(ECHO_SIZE)

        async def once() -> None:
            writer.write(msg)
            await reader.readexactly(ECHO_SIZE)

        return once

    async def send_stream(nbytes: int) -> bytes:
        proto = await connection(int(server["port"]))
        reader, writer = await proto.create_stream()
        for chunk in chunks(nbytes):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        return await reader.readexactly(DIGEST_SIZE)

    async def server_cpu() -> float:
        proto = await connection(int(server["cpu_port"]))
        reader, writer = await proto.create_stream()
        writer.write_eof()
        return float(struct.unpack(">d", await reader.read())[0])

    async with stack:
        return await run_workloads(params, connect_once, roundtrip, send_stream, server_cpu)


# ----------------------------------------------------------------------------- plumbing


async def _wait_stdin_closed() -> None:
    """Serve until the parent closes our standard input."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session_worker")
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--stack", choices=["starling", "raw_quic"], required=True)
    p.add_argument("--reader", choices=["drain", "transport"], default=None)
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--server", default="{}", help="the server's ready line (client only)")
    p.add_argument("--params", default="{}", help="workload parameters (client only)")
    p.add_argument("--profile", metavar="PATH", help="run under cProfile, write the stats here")
    args = p.parse_args(argv)
    pin_cpu(args.cpu)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if args.role == "server":
            if args.stack == "starling":
                asyncio.run(starling_server(args.reader))
            else:
                asyncio.run(raw_quic_server())
            return 0
        server, params = json.loads(args.server), json.loads(args.params)
        if args.stack == "starling":
            result = asyncio.run(starling_client(server, params, args.reader))
        else:
            result = asyncio.run(raw_quic_client(server, params))
        emit(result)
        return 0
    except Exception as exc:
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
