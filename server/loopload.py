"""The event loop's load, and the **pressure** it puts on latency-for-CPU trades.

Two parts of the server trade latency for CPU: the listen read poller's tick (reads batched per
tick) and the group commit's linger (segment writes batched per storage call). Both are worth
it only when CPU is short: with headroom a frame waits for nothing and a write is one call;
under load each frame read and each thread hop saved is capacity. So both follow one figure:

- :class:`LoopLoad` measures the share of real time the event loop's thread ran or waited to
  run (:func:`thread_busy_s`), over windows of ``LOAD_WINDOW_S``;
- :func:`pressure` maps it to 0 (headroom: below ``LOW_LOAD``) .. 1 (loaded: from
  ``HIGH_LOAD`` on), in proportion between.

The composition root makes one :class:`LoopLoad` per process and hands it to both. A leaf
module: it imports nothing from the rest of the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

__all__ = [
    "HIGH_LOAD",
    "LOAD_WINDOW_S",
    "LOW_LOAD",
    "LoopLoad",
    "pressure",
    "thread_busy_s",
]

#: Below this load (share of real time the event loop's thread ran or waited to run), the
#: pressure is 0: reads and writes wait for nothing.
LOW_LOAD: Final = 0.3
#: From this share on, the pressure is 1 (in between: in proportion).
HIGH_LOAD: Final = 0.7
#: The load is measured over windows of this many (real) seconds.
LOAD_WINDOW_S: Final = 0.5

#: Where Linux keeps a thread's run time and run-queue wait (ns), see :func:`thread_busy_s`.
_SCHEDSTAT: Final = "/proc/thread-self/schedstat"


def thread_busy_s() -> float:
    """Seconds the calling thread has run or waited to run (Linux: CPU time plus run-queue
    wait, from ``/proc/thread-self/schedstat``; elsewhere CPU time only).

    The wait matters: on a machine whose cores are all busy the event loop gets only part of
    one, so its CPU share stays low while it falls behind (2026-12-02, P1M: two workers and
    the load generator on 2 cores, each loop at ~0.6 of a core, ticks short, 600 sessions held
    where a fixed 200 ms tick held 800). Reading the file is a procfs read (~11 µs), made once
    per load window.
    """
    try:
        with open(_SCHEDSTAT, "rb") as f:
            run_ns, wait_ns = f.read().split()[:2]
    except (OSError, ValueError):
        return time.thread_time()
    return (int(run_ns) + int(wait_ns)) / 1e9


def pressure(load: float) -> float:
    """0 below ``LOW_LOAD``, 1 from ``HIGH_LOAD`` on, in proportion between."""
    return min(1.0, max(0.0, (load - LOW_LOAD) / (HIGH_LOAD - LOW_LOAD)))


class LoopLoad:
    """The event loop's load: the share of real time its thread ran or waited to run
    (:func:`thread_busy_s`), per window of ``window_s``, averaged with the previous window's.
    Call it from the event loop's thread (the poller and the group commit do); callers share
    one, since it only reads the clocks once a window has passed.

    Calling it returns the current figure (0 until a window has passed); it reads the ``wall``
    clock, and the ``busy`` one once per window (both replaceable for tests).
    """

    __slots__ = ("_busy", "_busy_at", "_load", "_since", "_wall", "_window_s")

    def __init__(
        self,
        window_s: float = LOAD_WINDOW_S,
        *,
        wall: Callable[[], float] = time.monotonic,
        busy: Callable[[], float] = thread_busy_s,
    ) -> None:
        self._window_s = window_s
        self._wall, self._busy = wall, busy
        self._since = wall()
        self._busy_at = busy()
        self._load = 0.0

    def __call__(self) -> float:
        now = self._wall()
        if now - self._since >= self._window_s and now > self._since:
            busy = self._busy()
            # at most 1: the kernel brings schedstat up to date at scheduler ticks, so a window
            # can read up to a tick more than it lasted
            window = min(1.0, (busy - self._busy_at) / (now - self._since))
            self._load = (self._load + window) / 2
            self._since, self._busy_at = now, busy
        return self._load

    def pressure(self) -> float:
        """:func:`pressure` of the current load."""
        return pressure(self())
