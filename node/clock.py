"""The wall clock: what the node stamps its blocks and reports with, in milliseconds.

A proposer's block time comes from here, and validation bounds a block's
time against it; the driver's timers run on the monotonic clock it is given
(`now`), never on this one.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), from the system's real-time clock."""
    return time.time_ns() // 1_000_000
