"""LoopLagMonitor: how late the event loop wakes a sleeping task (scheduling latency)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NoReturn, final

import trio

from ._stats import LatencyWindow

__all__ = ["LoopLagMonitor", "LoopLagStatistics"]

#: How often the monitor wakes up: often enough to catch 100 ms stalls, cheap enough to ignore.
DEFAULT_INTERVAL_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class LoopLagStatistics:
    """A snapshot of a :class:`LoopLagMonitor`.

    Attributes:
        interval_s: how long the monitor asks to sleep each round.
        samples: rounds measured so far.
        p50_s: median lag over the recent window.
        p99_s: 99th percentile lag over the recent window.
        max_s: the largest lag ever seen.
    """

    interval_s: float
    samples: int
    p50_s: float
    p99_s: float
    max_s: float


@final
class LoopLagMonitor:
    """Measures how late the event loop runs a task whose sleep has ended.

    A task that sleeps until ``t`` should run at ``t``; if some code blocks the loop (a
    synchronous call, a CPU-heavy loop without checkpoints), every task waits, and the monitor
    wakes up late by about that long. Run it in a long-lived nursery::

        monitor = LoopLagMonitor()
        await daemons.start(monitor.run)

    Args:
        interval_s: seconds between measurements (> 0).
    """

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self._lags = LatencyWindow()

    async def run(  # noqa: ASYNC114 -- no project-wide startable list is configured
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Measure forever; reports started at once.

        Cancellation: cancel the owning nursery to stop it; nothing needs cleaning up.
        """
        task_status.started()
        while True:
            due = trio.current_time() + self.interval_s
            await trio.sleep_until(due)
            self._lags.record(max(0.0, trio.current_time() - due))

    def statistics(self) -> LoopLagStatistics:
        """Return a frozen snapshot of the lag seen so far."""
        return LoopLagStatistics(
            interval_s=self.interval_s,
            samples=self._lags.count,
            p50_s=self._lags.percentile(0.50),
            p99_s=self._lags.percentile(0.99),
            max_s=self._lags.max_s,
        )
