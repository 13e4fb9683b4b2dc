"""The event-loop lag probe (node/loopwatch.py) reports how long the loop was blocked.

What it proves: a free loop reads zero lag; a task that holds the loop for a
while is seen as one late tick of about that length, in the histogram and in
the max gauge; the gauge keeps reporting that stall, however often it is
read, until it is older than the window, and then reads zero again. Once on
trio's MockClock (exact), once on the real clock with a real blocking call.
The task gauge counts the tasks alive: ten more while ten sleep, none after.
"""

from __future__ import annotations

import time

import trio
import trio.testing

from node.loopwatch import LOOP_LAG_WINDOW_S, LOOP_TICK_S, LoopWatch
from node.metrics import Metrics

MAX_GAUGE = "archipelago_event_loop_lag_max_seconds"
HISTOGRAM = "archipelago_event_loop_lag_seconds"
TASKS = "archipelago_trio_tasks"


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return float(value)


async def test_a_stall_is_one_late_tick_of_its_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        await trio.sleep(1.0)
        assert watch.samples >= 1.0 / LOOP_TICK_S - 1
        assert _sample(metrics, MAX_GAUGE) == 0.0  # an idle loop is never late

        autojump_clock.jump(0.5)  # the clock moves while no task yields: a 0.5 s stall
        await trio.sleep(0.1)
        worst = _sample(metrics, MAX_GAUGE)
        assert 0.5 - LOOP_TICK_S <= worst <= 0.5
        assert _sample(metrics, f"{HISTOGRAM}_bucket", le="0.25") == watch.samples - 1
        assert _sample(metrics, f"{HISTOGRAM}_bucket", le="0.5") == watch.samples

        await trio.sleep(LOOP_LAG_WINDOW_S - 2)
        assert _sample(metrics, MAX_GAUGE) == worst  # reading it twice loses nothing
        await trio.sleep(2)
        assert _sample(metrics, MAX_GAUGE) == 0.0  # older than the window
        nursery.cancel_scope.cancel()


async def test_a_blocking_call_shows_on_the_real_clock() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        await trio.sleep(5 * LOOP_TICK_S)
        time.sleep(0.2)  # the stall under test: the loop cannot run the probe
        await trio.sleep(5 * LOOP_TICK_S)
        assert _sample(metrics, MAX_GAUGE) >= 0.2 - LOOP_TICK_S
        assert _sample(metrics, f"{HISTOGRAM}_count") == watch.samples
        nursery.cancel_scope.cancel()


async def test_the_task_gauge_counts_tasks_alive() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    assert _sample(metrics, TASKS) == 0.0  # not running yet
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        before = _sample(metrics, TASKS)
        assert before >= 2  # at least this test's task and the probe
        async with trio.open_nursery() as sleepers:
            for _ in range(10):
                sleepers.start_soon(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            assert _sample(metrics, TASKS) == before + 10
            sleepers.cancel_scope.cancel()
        assert _sample(metrics, TASKS) == before
        nursery.cancel_scope.cancel()
