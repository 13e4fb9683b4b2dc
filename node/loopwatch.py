"""Event-loop lag probe: how long the node's trio loop was unable to run a ready task.

Why: the node runs consensus, the network and the API on one event loop, so
any work done on it without yielding (decoding a peer's frame, loading blocks
for a sync request) freezes all of them at once. That stall is the cost an
attacker imposes per frame, and issue 11 bounds it (10 ms per attacker
frame); this probe makes it visible on every node, all the time, and is what
the hostile-peer tests and benchmarks/hostile.py read.

How: one task sleeps until a deadline `interval_s` ahead and, on waking,
records how late it woke up. A loop that is free wakes it within a fraction
of a millisecond; a loop busy for 2 s without yielding wakes it about 2 s
late. The lag is observed into a histogram and folded into a running maximum
that the `..._lag_max_seconds` gauge reports and resets at each scrape, so a
scraper sees the worst stall since its previous scrape (with several
scrapers each sees a share; the histogram is the one to aggregate).

Cost: 100 wake-ups a second. Measured on the 2-core test machine, a bare
`trio.sleep(0.01)` loop costs 3.5 % of one core when the process is
otherwise idle (trio's own wake-up; recording adds about 1.5 us a tick), and
less on a working node, whose loop is awake anyway. That is the price of the
10 ms resolution issue 11 asks for, so it always runs. Time is trio's clock,
so a test can drive it with `trio.testing.MockClock`.
"""

from __future__ import annotations

import trio

from node.logging import get_logger
from node.metrics import Metrics

log = get_logger(__name__)

# Tick period of the probe: the resolution of a stall it can see, and the
# figure issue 11 asks for ("a probe that ticks every 10 ms").
LOOP_TICK_S = 0.010
# A stall this long is logged (once per stall): long enough that a loaded but
# healthy node never logs it, short enough to name a freeze a peer caused.
LOOP_STALL_LOG_S = 1.0


class LoopWatch:
    """Service: samples event-loop lag every `tick_s` into the node's metrics."""

    name = "loopwatch"

    def __init__(
        self,
        metrics: Metrics,
        *,
        tick_s: float = LOOP_TICK_S,
        stall_log_s: float = LOOP_STALL_LOG_S,
    ) -> None:
        assert tick_s > 0
        self._histogram = metrics.event_loop_lag
        self._tick_s = tick_s
        self._stall_log_s = stall_log_s
        self._max_lag_s = 0.0
        self.samples = 0
        metrics.event_loop_lag_max.set_function(self.take_max_lag_s)

    def take_max_lag_s(self) -> float:
        """The largest lag since the previous call (0.0 if none); resets it."""
        value, self._max_lag_s = self._max_lag_s, 0.0
        return value

    def record(self, lag_s: float) -> None:
        self.samples += 1
        self._histogram.observe(lag_s)
        if lag_s > self._max_lag_s:
            self._max_lag_s = lag_s
        if lag_s >= self._stall_log_s:
            log.warning("event loop stalled", lag_ms=round(lag_s * 1000))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        tick_s = self._tick_s
        while True:
            deadline = trio.current_time() + tick_s
            await trio.sleep_until(deadline)
            self.record(max(0.0, trio.current_time() - deadline))
