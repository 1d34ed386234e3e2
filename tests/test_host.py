"""The composed host (node/host.py) on loopback: reachability decided from real DHT
reports and dial-backs, relays reserved by a private host, dialling by peer ID, status.

On loopback every peer sees 127.0.0.1 and loopback reporters count once per peer ID
(spec/04, 4.2), so a host that is left to decide confirms its address from three DHT
servers and passes dial-backs from their second sockets: it reads *public*. A host
behind a relay is made by forcing ``public=False`` and advertising no direct address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import cbor2
import pycddl
import pytest

from starling.node.host import Host, HostConfig, parse_bootstrap
from starling.node.session import NodeConfig, Stream
from starling.proto.errors import ErrorCode, NatError
from starling.proto.identity import PrivateKey
from starling.proto.nat import RelayConfig, format_bootstrap, relays_of

ROOT = Path(__file__).resolve().parent.parent
ECHO = "starling/test-echo/1"
SINK = "starling/test-sink/1"


def key(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(b"host test " + name.encode()).digest())


async def echo(stream: Stream) -> None:
    async for frame in stream:
        await stream.send(frame)
    await stream.close()


async def sink(stream: Stream) -> None:
    digest = hashlib.sha256()
    async for frame in stream:
        digest.update(frame)
    await stream.send(digest.digest())
    await stream.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start(name: str, i: int, tmp: Path, **kwargs: object) -> Host:
    config = HostConfig(
        key(name), host=f"127.0.0.{i}", data_dir=tmp / name, check_interval=0.5, **kwargs
    )  # type: ignore[arg-type]
    host = await Host.start(config)
    host.node.set_handler(ECHO, echo)
    host.node.set_handler(SINK, sink)
    return host


async def echoes(host: Host, peer: Host) -> bool:
    session = await host.connect(peer.peer_id)
    stream = await session.open_stream(ECHO)
    await stream.send(b"ping " + peer.peer_id.raw)
    answer = await asyncio.wait_for(stream.recv(), 10)
    await stream.close()
    return answer == b"ping " + peer.peer_id.raw


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_bootstrap_strings_round_trip_and_malformed_ones_fail_with_their_code() -> None:
    pid = key("s").peer_id
    text = format_bootstrap(pid, [("203.0.113.7", 4000), ("2001:db8::7", 4001)])
    assert text == f"{pid.text()}@203.0.113.7:4000,[2001:db8::7]:4001"
    assert parse_bootstrap("  " + text + "\n") == (
        pid,
        [("203.0.113.7", 4000), ("2001:db8::7", 4001)],
    )
    bad = [
        "",
        pid.text(),  # no addresses
        f"{pid.text()}@",
        f"{pid.text()}@203.0.113.7",  # no port
        f"{pid.text()}@203.0.113.7:0",
        f"{pid.text()}@203.0.113.7:04000",
        f"{pid.text()}@203.0.113.7:65536",
        f"{pid.text()}@2001:db8::7:4000",  # IPv6 without brackets
        f"{pid.text()}@[203.0.113.7]:4000",
        f"{pid.text()}@0.0.0.0:4000",
        f"{pid.text()}@203.0.113.7:4000,203.0.113.7:4000",
        f"{pid.text()}@ 203.0.113.7:4000",
        f"{pid.text()[:-1]}x@203.0.113.7:4000",  # checksum
        "@".join([pid.text(), ",".join(f"203.0.113.{i}:1" for i in range(1, 10))]),
    ]
    for text in bad:
        with pytest.raises(NatError) as info:
            parse_bootstrap(text)
        assert info.value.code is ErrorCode.NAT_BOOTSTRAP_MALFORMED, text
    # A host given a malformed seed refuses to start, with the code, before binding.
    config = HostConfig(key("x"), host="127.0.0.1", seeds=[f"{pid.text()}@203.0.113.7"])
    with pytest.raises(NatError) as info:
        asyncio.run(Host.start(config))
    assert info.value.code is ErrorCode.NAT_BOOTSTRAP_MALFORMED
    # The canonical form has the shape of the CDDL rule (spec/cddl/nat.cddl).
    cddl = (ROOT / "spec" / "cddl" / "nat.cddl").read_text(encoding="utf-8")
    schema = pycddl.Schema(f"root = bootstrap-string\n{cddl}")
    schema.validate_cbor(cbor2.dumps(format_bootstrap(pid, [("203.0.113.7", 4000)])))
    six = format_bootstrap(pid, [("2001:db8::7", 1)])
    schema.validate_cbor(cbor2.dumps(six))
    with pytest.raises(pycddl.ValidationError):
        schema.validate_cbor(cbor2.dumps(six.replace("@", "#")))


def test_hosts_decide_reachability_reserve_relays_and_connect_by_peer_id(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        seed = await start("seed", 1, tmp_path, public=True)
        boot = seed.bootstrap_string()
        assert parse_bootstrap(boot) == (seed.peer_id, seed.listen_addresses())
        a = await start("a", 2, tmp_path, public=True, seeds=[boot])
        b = await start("b", 3, tmp_path, public=True, seeds=[boot])
        c = await start("c", 4, tmp_path, seeds=[boot])  # decides by itself
        d = await start("d", 5, tmp_path, public=False, advertise=[], seeds=[boot])
        hosts = [seed, a, b, c, d]
        try:
            await until(lambda: c.status()["reachability"] == "public", "C's verdict")
            s = c.status()
            assert s["forced"] is False
            assert s["external"] == [list(c.listen_addresses()[0])]  # confirmed by 3
            assert s["advertised"] == s["external"]
            assert s["nat_mapping"] == "endpoint-independent"
            assert s["dht"]["mode"] == "server"
            assert s["relay"]["serving"] is True
            assert c.reachability.stats["dial_back_same_source"] == 0
            # Dial-backs from helpers in distinct prefixes (per peer on loopback) made it.
            assert c.stats["dial_backs_ok"] >= 2

            await until(lambda: len(d.status()["relay"]["reservations_held"]) == 2, "relays")
            await until(lambda: d.record is not None and len(relays_of(d.record, 0)) == 2, "record")
            s = d.status()
            assert (s["reachability"], s["dht"]["mode"]) == ("private", "client")
            assert s["relay"]["serving"] is False and s["advertised"] == []
            held = {r["relay"] for r in s["relay"]["reservations_held"]}
            assert seed.peer_id.text() in held  # seeds are asked first
            assert seed.status()["relay"]["reservations_served"] >= 1
            assert d.record is not None and d.record.addresses() == []
            assert all(r.voucher is not None for r in relays_of(d.record, 0))
            json.dumps([h.status() for h in hosts])  # JSON-able

            # The public seed serves the DHT; C joined the servers, D did not [NAT-R16].
            await until(lambda: c.peer_id.raw in seed.dht.core.table._index, "C as server")
            assert d.peer_id.raw not in seed.dht.core.table._index
            assert seed.status()["dht"]["routing_table"] >= 3
            assert seed.status()["dht"]["network_size_estimate"] >= 4

            # A newcomer that knows nothing but the seed and two peer IDs.
            e = await start("e", 6, tmp_path, public=True, seeds=[boot])
            hosts.append(e)
            assert e.node.sessions == []

            # D: through one of its relays first, then punched to a direct path.
            assert await echoes(e, d)
            session = e.node.session_with(d.peer_id)
            assert session is not None and session.path.history[0][1] == "relay"
            await until(lambda: session.path.kind == "direct", "E-D punched direct")
            assert await echoes(e, d)
            entry = next(x for x in e.status()["sessions"] if x["peer_id"] == d.peer_id.text())
            assert entry["path"] == "direct" and entry["suspect"] is False

            # C advertises its confirmed address: the session is direct from the start.
            assert await echoes(e, c)
            session = e.node.session_with(c.peer_id)
            assert session is not None
            assert [k for _, k, _ in session.path.history] == ["direct"]
            assert session.path.direct == c.listen_addresses()[0]

            # A relay goes away: D republishes at once, without it [NAT-R71].
            before = d.record
            assert before is not None
            other = next(h for h in (a, b, c) if h.peer_id.text() in held)
            await other.close()
            gone = other.peer_id.raw

            def republished() -> bool:
                record = d.record
                return (
                    record is not None
                    and record.seq > before.seq
                    and all(r.relay != gone for r in relays_of(record, 0))
                )

            await until(republished, "D's record without the relay that left")
            newest = d.record
            assert newest is not None
            for _ in range(100):  # the put may still be on its way
                found = await seed.dht.get(d.peer_id.raw)
                if newest.seq in {r.seq for r in found if r.signer_id == d.peer_id.raw}:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the new record never reached the DHT")
        finally:
            for host in hosts:
                await host.close()
        # Warm restart material: the DHT's contacts were saved in the data directory.
        saved = json.loads((tmp_path / "a" / "dht-table.json").read_text())
        assert seed.peer_id.raw.hex() in {c["id"] for c in saved["contacts"]}

    run(body)


def test_a_relayed_session_moves_to_a_new_circuit_before_the_old_one_hits_its_limit(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        relayed = NodeConfig(punch=False)  # stay on the relay: the circuit is the path
        limits = RelayConfig(circuit_duration=4)
        seed = await start("seed", 1, tmp_path, public=True, relay=limits)
        boot = seed.bootstrap_string()
        d = await start(
            "d", 5, tmp_path, public=False, advertise=[], max_relays=1, seeds=[boot], node=relayed
        )
        e = await start("e", 6, tmp_path, public=True, seeds=[boot], node=relayed)
        hosts = [seed, d, e]
        try:
            await until(lambda: d.record is not None, "D's record")
            session = await e.connect(d.peer_id)
            assert session.path.kind == "relay"
            first = session.path.circuit
            stream = await session.open_stream(SINK)
            digest = hashlib.sha256()
            loop = asyncio.get_running_loop()
            end = loop.time() + 5.0  # past the 4 s duration limit of the first circuit
            i = 0
            while loop.time() < end:
                chunk = bytes([i % 256]) * 2048
                await stream.send(chunk)
                digest.update(chunk)
                i += 1
                await asyncio.sleep(0.05)
            await stream.close()
            assert await asyncio.wait_for(stream.recv(), 10) == digest.digest()
            assert session.path.stats["circuits_renewed"] >= 1
            assert session.path.circuit is not first and first is not None and not first.open
            assert session.path.kind == "relay" and not session.closed
            # Make before break: no packet ever found the session without a circuit.
            assert session.path.stats["tx_no_path"] == 0
            assert seed.relay.core is not None and seed.relay.core.circuits >= 1
        finally:
            for host in hosts:
                await host.close()

    run(body)


def test_start_without_waiting_for_a_silent_seed(tmp_path: Path) -> None:
    """A long-lived node prints its peer ID at once: with ``wait_for_bootstrap=False``
    start() returns while the bootstrap towards a seed that never answers is still
    running, the host already serves sessions, and ``bootstrapped()`` waits for the end."""

    async def scenario() -> None:
        silent = key("silent").peer_id
        seed = f"{silent.text()}@127.0.0.9:9"  # nothing listens there: no answer ever
        config = HostConfig(
            key("eager"), host="127.0.0.1", data_dir=tmp_path / "eager", seeds=[seed]
        )
        host = await Host.start(config, wait_for_bootstrap=False)
        other = await start("other", 2, tmp_path, public=True)
        try:
            assert not host._bootstrap.done()  # still asking the silent seed
            host.node.set_handler(ECHO, echo)
            session = await other.node.connect(host.listen_addresses()[0], peer_id=host.peer_id)
            stream = await session.open_stream(ECHO)
            await stream.send(b"served while bootstrapping")
            assert await asyncio.wait_for(stream.recv(), 10) == b"served while bootstrapping"
            await stream.close()
            await asyncio.wait_for(host.bootstrapped(), 60)
            assert host._bootstrap.done() and not host._bootstrap.cancelled()
        finally:
            await other.close()
            await host.close()

    asyncio.run(scenario())


def test_concurrent_connects_share_one_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        target = await start("target", 3, tmp_path, public=True)
        dialer = await start("dialer", 4, tmp_path, public=True, seeds=[target.bootstrap_string()])
        try:
            first, second, third = await asyncio.gather(
                *(dialer.connect(target.peer_id) for _ in range(3))
            )
            assert first is second is third
            assert await echoes(dialer, target)
            assert [s for s in dialer.node.sessions if s.peer_id == target.peer_id] == [first]
        finally:
            await dialer.close()
            await target.close()

    asyncio.run(scenario())
