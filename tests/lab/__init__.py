"""The NAT lab: network namespaces, veth and nftables NAT for the path-layer tests.

See README.md beside this file; the API is in ``netlab``.
"""

from .netlab import (
    Behaviour,
    BehaviourMismatch,
    Filtering,
    Host,
    Lab,
    LabError,
    Mapping,
    Nat,
    Node,
    Probe,
    Router,
    expected_behaviour,
    sweep_stale,
    unavailable_reason,
)

__all__ = [
    "Behaviour",
    "BehaviourMismatch",
    "Filtering",
    "Host",
    "Lab",
    "LabError",
    "Mapping",
    "Nat",
    "Node",
    "Probe",
    "Router",
    "expected_behaviour",
    "sweep_stale",
    "unavailable_reason",
]
