"""The wall clock: what the node stamps its blocks and reports with, in milliseconds.

A proposer's block time comes from here, and validation bounds a block's
time against it; the driver's timers run on the monotonic clock it is given
(`now`), never on this one.

Test-only knob: `ARCHIPELAGO_TEST_CLOCK_OFFSET_MS` (read once, at import) adds
that many milliseconds (negative: behind) to every reading, so that the
perturbation runner (devnet/perturb.py) can give one node a skewed clock
without touching the machine's. It is the narrowest hook that reaches every
use of the wall clock in the node; an operator never sets it.
"""

from __future__ import annotations

import os
import time

CLOCK_OFFSET_ENV = "ARCHIPELAGO_TEST_CLOCK_OFFSET_MS"
CLOCK_OFFSET_MS_MAX = 3_600_000  # an hour either way: more is a typo, not a test


def _offset_ms_from_env() -> int:
    text = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return 0
    try:
        offset = int(text)
    except ValueError:
        offset = CLOCK_OFFSET_MS_MAX + 1
    if abs(offset) > CLOCK_OFFSET_MS_MAX:
        # At import, before any handler: one line and the usage exit code, as for a bad flag.
        raise SystemExit(
            f"archipelago: error: {CLOCK_OFFSET_ENV}={text!r}: expected an integer number of "
            f"milliseconds within +-{CLOCK_OFFSET_MS_MAX} (a test-only setting; unset it)"
        )
    return offset


_OFFSET_MS = _offset_ms_from_env()


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), from the system's real-time clock."""
    return time.time_ns() // 1_000_000 + _OFFSET_MS
