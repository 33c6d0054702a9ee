"""The server's drain state: readiness, the shutdown request, and its absolute deadline.

One :class:`Drain` is created by :func:`server.serve.serve` and shared (read-only, except for
:meth:`Drain.request`) with handlers and workers. Everything that must stop on shutdown watches
:attr:`Drain.requested`; everything that must finish by the deadline reads :attr:`Drain.deadline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
        self._on_request: list[Callable[[], None]] = []
        self._on_force: list[Callable[[], None]] = []

    def subscribe(
        self,
        *,
        on_request: Callable[[], None] | None = None,
        on_force: Callable[[], None] | None = None,
    ) -> None:
        """Call ``on_request`` when a graceful shutdown begins (the deadline is set by then)
        and ``on_force`` when it is forced. Callbacks are synchronous and must not block."""
        if on_request is not None:
            self._on_request.append(on_request)
        if on_force is not None:
            self._on_force.append(on_force)

    @property
    def draining(self) -> bool:
        """Whether new work must be refused (readiness is false)."""
        return self.requested.is_set()

    def request(self, grace_s: float) -> None:
        """Begin a graceful shutdown that must end within ``grace_s`` seconds (idempotent)."""
        if not self.requested.is_set():
            self.deadline = trio.current_time() + grace_s
            self.requested.set()
            for callback in self._on_request:
                callback()

    def force(self) -> None:
        """A second signal: give up on grace; subscribers abort what could still block."""
        self.forced = True
        for callback in self._on_force:
            callback()

    def seconds_left(self) -> float:
        """Seconds until the deadline (``inf`` while not draining, never negative)."""
        return max(0.0, self.deadline - trio.current_time())
