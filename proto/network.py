"""Network IDs and the kinds of datagram sharing one UDP socket (spec/02-secure-session.md).

Theory of operation
-------------------
A node has one UDP socket per address family, and everything arrives on it:
QUIC packets and Starling control datagrams (DHT RPCs, path probes). The
first byte tells them apart without parsing further [SES-R20]:

* QUIC (RFC 9000, 17) sets the "fixed bit" 0x40 in every packet's first byte
  (RFC 9287's grease aside, which Starling does not negotiate);
* a control datagram starts with the byte 0x0C (0x40 clear, and a value RFC
  9443 leaves unassigned, so it collides with neither QUIC, STUN, DTLS nor
  RTP), then a version byte, then the 4-byte network ID, then a CBOR body.

Anything else, and control datagrams of another version or network, are
dropped and counted, never answered [SES-R21]: two networks never merge by
accident, and a stray packet never costs more than a counter increment.
"""

from __future__ import annotations

import hashlib
from enum import Enum

NETWORK_ID_SIZE = 4
CONTROL_MAGIC = 0x0C
CONTROL_VERSION = 1
CONTROL_HEADER_SIZE = 2 + NETWORK_ID_SIZE
QUIC_FIXED_BIT = 0x40


def network_id(name: str) -> bytes:
    """The 4-byte network ID of a named network: SHA-256 of the UTF-8 name, first 4 bytes."""
    return hashlib.sha256(name.encode("utf-8")).digest()[:NETWORK_ID_SIZE]


MAIN_NETWORK_ID = network_id("starling")


class DatagramKind(Enum):
    QUIC = "quic"
    CONTROL = "control"
    UNKNOWN = "unknown"  # neither class: dropped
    SHORT = "short"  # a control header cut short: dropped
    OTHER_VERSION = "other_version"  # a control version we do not speak: dropped
    OTHER_NETWORK = "other_network"  # another network's control datagram: dropped


def classify(datagram: bytes, network: bytes) -> DatagramKind:
    """Which class a received datagram belongs to, from its first bytes only [SES-R20]."""
    if not datagram:
        return DatagramKind.SHORT
    first = datagram[0]
    if first & QUIC_FIXED_BIT:
        return DatagramKind.QUIC
    if first != CONTROL_MAGIC:
        return DatagramKind.UNKNOWN
    if len(datagram) < CONTROL_HEADER_SIZE:
        return DatagramKind.SHORT
    if datagram[1] != CONTROL_VERSION:
        return DatagramKind.OTHER_VERSION
    if datagram[2:CONTROL_HEADER_SIZE] != network:
        return DatagramKind.OTHER_NETWORK
    return DatagramKind.CONTROL


def control_header(network: bytes) -> bytes:
    """The six bytes that open every control datagram on ``network``."""
    return bytes((CONTROL_MAGIC, CONTROL_VERSION)) + network
