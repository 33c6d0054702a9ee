"""The server's drain state: readiness, the shutdown request, and its absolute deadline.

One :class:`Drain` is created by :func:`server.serve.serve` and shared (read-only, except for
:meth:`Drain.request`) with handlers and workers. Everything that must stop on shutdown watches
:attr:`Drain.requested`; everything that must finish by the deadline reads :attr:`Drain.deadline`.
"""

from __future__ import annotations

import math
from typing import final

import trio

__all__ = ["Drain"]


@final
class Drain:
    """Shutdown coordination for one server run.

    Attributes:
        requested: set once a graceful shutdown was asked for (signal or ``request()``).
        deadline: the Trio-clock time by which everything must be finished (``inf`` before).
    """

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.deadline = math.inf
        self.forced = False

    @property
    def draining(self) -> bool:
        """Whether new work must be refused (readiness is false)."""
        return self.requested.is_set()

    def request(self, grace_s: float) -> None:
        """Begin a graceful shutdown that must end within ``grace_s`` seconds (idempotent)."""
        if not self.requested.is_set():
            self.deadline = trio.current_time() + grace_s
            self.requested.set()

    def seconds_left(self) -> float:
        """Seconds until the deadline (``inf`` while not draining, never negative)."""
        return max(0.0, self.deadline - trio.current_time())
