"""ThreadLane: a named, capacity-limited way to run blocking calls off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple, Unpack, cast, final

import trio

from ._errors import LaneClosedError, LaneFullError
from ._stats import LatencyWindow

__all__ = ["ThreadLane", "ThreadLaneStatistics"]

RetT = TypeVar("RetT")
PosArgsT = TypeVarTuple("PosArgsT")


@dataclass(frozen=True, slots=True)
class ThreadLaneStatistics:
    """A snapshot of a :class:`ThreadLane`.

    Attributes:
        name: the lane's name.
        capacity: how many threads may run at once.
        running: threads running now (abandoned ones included until they return).
        waiting: callers waiting for a thread.
        completed: calls that returned a value.
        failed: calls whose function raised.
        rejected: calls refused because ``max_waiting`` callers were already waiting.
        abandoned: calls whose caller was cancelled and left the thread running.
        wait_p50_s: median time a call waited for a thread (recent window).
        wait_p99_s: 99th percentile of that wait.
        wait_max_s: longest wait ever seen.
    """

    name: str
    capacity: int
    running: int
    waiting: int
    completed: int
    failed: int
    rejected: int
    abandoned: int
    wait_p50_s: float
    wait_p99_s: float
    wait_max_s: float


@final
class ThreadLane:
    """A named bulkhead for blocking calls: its own ``CapacityLimiter`` and its own queue bound.

    Think of it as a small room with ``capacity`` desks: a call takes a desk for as long as its
    thread runs; callers without a desk wait at the door; when ``max_waiting`` callers are already
    at the door, a new caller is turned away at once with :class:`LaneFullError` (load shedding,
    never an unbounded queue).

    Cancellation:
        A caller cancelled while *waiting* leaves the queue and its function never starts.
        A caller cancelled while its thread *runs* waits for the thread to return (Python cannot
        interrupt a thread) — unless the lane was made with ``abandon_on_cancel=True``, in which
        case the caller returns at once and the thread keeps its desk until it finishes. Either
        way the capacity is never exceeded, and :meth:`aclose` waits for abandoned threads.

    Args:
        name: shown in statistics, errors, and thread names (``lane:<name>``).
        capacity: the most threads this lane runs at once (>= 1).
        max_waiting: the most callers allowed to wait; ``None`` means no bound (only for lanes
            whose callers are themselves bounded).
        abandon_on_cancel: whether a cancelled caller leaves its running thread behind.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        max_waiting: int | None = None,
        abandon_on_cancel: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_waiting is not None and max_waiting < 0:
            raise ValueError("max_waiting must be >= 0 or None")
        self.name = name
        self._limiter = trio.CapacityLimiter(capacity)
        self._max_waiting = max_waiting
        self._abandon_on_cancel = abandon_on_cancel
        self._waits = LatencyWindow()
        self._closed = False
        self._idle = trio.Event()
        self._idle.set()
        self._completed = 0
        self._failed = 0
        self._rejected = 0
        self._abandoned = 0

    async def run_sync(self, fn: Callable[[Unpack[PosArgsT]], RetT], *args: *PosArgsT) -> RetT:
        """Run ``fn(*args)`` in a worker thread of this lane and return its result.

        Raises:
            LaneClosedError: the lane was closed.
            LaneFullError: ``max_waiting`` callers are already waiting (nothing was started).
            Exception: whatever ``fn`` raised, unchanged.
        """
        self._admit()
        timed = _TimedLimiter(self)
        limiter = cast(trio.CapacityLimiter, timed)
        try:
            result = await trio.to_thread.run_sync(
                fn,
                *args,
                thread_name=f"lane:{self.name}",
                abandon_on_cancel=self._abandon_on_cancel,
                limiter=limiter,
            )
        except trio.Cancelled:
            if timed.held:  # cancelled while its thread runs: abandoned
                self._abandoned += 1
            raise
        except Exception:
            self._failed += 1
            raise
        self._completed += 1
        return result

    def _admit(self) -> None:
        if self._closed:
            raise LaneClosedError(self.name)
        stats = self._limiter.statistics()
        full = stats.borrowed_tokens >= stats.total_tokens
        if full and self._max_waiting is not None and stats.tasks_waiting >= self._max_waiting:
            self._rejected += 1
            raise LaneFullError(self.name, stats.tasks_waiting)

    def close(self) -> None:
        """Refuse new calls from now on; calls already admitted still run."""
        self._closed = True

    async def aclose(self) -> None:
        """Close the lane and wait until no thread of it is running (abandoned ones included).

        Cancellation: the wait is a cancel point; the caller owns the deadline.
        """
        self.close()
        await self._idle.wait()

    def statistics(self) -> ThreadLaneStatistics:
        """Return a frozen snapshot of this lane's counters."""
        stats = self._limiter.statistics()
        return ThreadLaneStatistics(
            name=self.name,
            capacity=int(stats.total_tokens),
            running=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
            completed=self._completed,
            failed=self._failed,
            rejected=self._rejected,
            abandoned=self._abandoned,
            wait_p50_s=self._waits.percentile(0.50),
            wait_p99_s=self._waits.percentile(0.99),
            wait_max_s=self._waits.max_s,
        )

    # -- called by _TimedLimiter, in the Trio thread --------------------------------------------

    def _on_acquired(self, waited_s: float) -> None:
        self._waits.record(waited_s)
        if self._idle.is_set():
            self._idle = trio.Event()

    def _on_released(self) -> None:
        if self._limiter.borrowed_tokens == 0:
            self._idle.set()


@final
class _TimedLimiter:
    """Adapts the lane's limiter for ``trio.to_thread.run_sync``, timing the wait for a token.

    ``to_thread.run_sync`` releases the token when the thread really finishes (even after its
    caller was abandoned), which is exactly when the lane's desk becomes free.
    """

    def __init__(self, lane: ThreadLane) -> None:
        self._lane = lane
        self.held = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        started = trio.current_time()
        await self._lane._limiter.acquire_on_behalf_of(self)
        self.held = True
        self._lane._on_acquired(trio.current_time() - started)

    def release_on_behalf_of(self, borrower: object) -> None:
        self.held = False
        self._lane._limiter.release_on_behalf_of(self)
        self._lane._on_released()
