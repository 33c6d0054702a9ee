"""LoopLagMonitor: a loop blocked by synchronous code shows up as lag (real clock)."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from lanes import LoopLagMonitor


def block_the_loop(seconds: float) -> None:
    """Busy-wait without a checkpoint: what an accidental blocking call does to the loop."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_reports_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run)
            await trio.sleep(0.005)  # the monitor is asleep now, due in ~5 ms
            block_the_loop(0.1)  # >= 90 ms late whenever it was due inside the block
            await trio.sleep(0.03)  # let it wake (late) and take a few normal samples
            nursery.cancel_scope.cancel()
    stats = monitor.statistics()
    assert stats.max_s >= 0.04
    assert stats.samples >= 2
    assert stats.p50_s <= stats.max_s


async def test_starts_empty(autojump_clock: trio.testing.MockClock) -> None:
    monitor = LoopLagMonitor(interval_s=1)
    assert monitor.statistics().samples == 0
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    stats = monitor.statistics()
    assert (stats.samples, stats.max_s, stats.interval_s) == (10, 0.0, 1)


def test_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(interval_s=0)
