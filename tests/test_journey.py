"""The journey through real NAT (issue #8), driven only by the ``starling`` command.

A public bootstrap/relay node and three people behind an endpoint-independent, a
port-restricted and a symmetric NAT: create and invite, join, the inviter offline while
a third joins through the second, 100 messages each, one offline and catching up, a ban
whose later posts are refused, identical views at the end. ``bench/journey.py`` holds
the scenario (and asserts every step); this runs it in CI as root. Skips elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lab import netlab

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import journey  # noqa: E402

UNAVAILABLE = netlab.unavailable_reason()


@pytest.mark.slow
@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"NAT lab needs root: {UNAVAILABLE}")
def test_journey_through_three_nats(tmp_path: Path) -> None:
    result = journey.run(delay_ms=20, messages=100, workdir=tmp_path)
    steps = [s["step"] for s in result["steps"]]
    assert steps == [
        "nodes up",
        "B joined through A's invite",
        "C joined through B's invite, A offline",
        "all chatted",
        "C caught up",
        "B banned; A and C identical",
    ]
    # 1 welcome + 100 each + 50 more from A and B; B's posts after the ban are not there.
    assert result["final_messages"] == 1 + 3 * 100 + 2 * 50
    assert result["join_to_first_message_ms"] > 0
    assert result["node_rss_mb_idle"] > 0
