"""The NAT lab's userspace delay line (tests/lab/delay.py) on its own: no root, no TUN.

The end-to-end check (real UDP through the core's TUN, round trips with and without delay)
is ``test_wan_delay_holds_packets_for_both_links_in_order`` in ``tests/test_lab.py``.
"""

from __future__ import annotations

import struct

import pytest
from lab.delay import DelayLine


def ipv4(source: str, destination: str, payload: bytes = b"") -> bytes:
    """A minimal IPv4 header (checksum left zero: the delay line never looks at it)."""
    addresses = [bytes(int(part) for part in ip.split(".")) for ip in (source, destination)]
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0)
    return header + addresses[0] + addresses[1] + payload


def test_a_packet_waits_for_the_sum_of_its_two_links() -> None:
    line = DelayLine()
    line.set_delays({"203.0.113.10": 20, "198.51.100.10": 50})
    packet = ipv4("198.51.100.10", "203.0.113.10")
    assert line.push(packet, now=100.0)
    assert line.next_release() == pytest.approx(100.070)
    assert line.due(100.069) == []
    assert line.due(100.070) == [packet]
    assert line.next_release() is None


def test_unknown_addresses_and_non_ipv4_add_nothing() -> None:
    line = DelayLine()
    line.set_delays({"203.0.113.10": 30})
    to_gateway = ipv4("203.0.113.10", "203.0.113.1")
    not_ipv4 = b"\x60" + bytes(39)
    line.push(to_gateway, now=5.0)
    line.push(not_ipv4, now=5.0)
    assert line.due(5.0) == [not_ipv4]
    assert line.due(5.030) == [to_gateway]


def test_packets_of_a_flow_leave_in_the_order_they_came() -> None:
    line = DelayLine()
    line.set_delays({"203.0.113.10": 25, "198.51.100.10": 25, "203.0.113.11": 0})
    slow = [ipv4("198.51.100.10", "203.0.113.10", bytes([n])) for n in range(50)]
    quick = ipv4("203.0.113.11", "198.51.100.10")  # 25 ms: overtakes the 50 ms flow
    for packet in slow[:25]:
        line.push(packet, now=1.0)
    line.push(quick, now=1.0)
    for packet in slow[25:]:
        line.push(packet, now=1.0)
    assert line.due(1.025) == [quick]
    assert line.due(1.050) == slow


def test_the_queue_is_bounded_and_counts_what_it_drops() -> None:
    line = DelayLine(limit=3)
    line.set_delays({"203.0.113.10": 10})
    packets = [ipv4("203.0.113.10", "198.51.100.10", bytes([n])) for n in range(5)]
    assert [line.push(p, now=0.0) for p in packets] == [True, True, True, False, False]
    assert line.stats() == {"held": 3, "released": 0, "dropped": 2, "queued": 3}
    assert line.due(0.010) == packets[:3]
    assert line.push(packets[3], now=0.010)
    assert line.stats() == {"held": 4, "released": 3, "dropped": 2, "queued": 1}
