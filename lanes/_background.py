"""BackgroundGroup: an owner for bounded work that outlives the request that started it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVarTuple, Unpack, final

import trio

from ._errors import LaneClosedError, LaneFullError

__all__ = ["BackgroundGroup", "BackgroundGroupStatistics", "open_background_group"]

LOGGER = logging.getLogger(__name__)

PosArgsT = TypeVarTuple("PosArgsT")


@dataclass(frozen=True, slots=True)
class BackgroundGroupStatistics:
    """A snapshot of a :class:`BackgroundGroup`.

    Attributes:
        name: the group's name.
        max_tasks: the most tasks that may run at once.
        running: tasks running now.
        started: tasks accepted by ``start_soon``.
        completed: tasks that returned.
        failed: tasks that raised an ``Exception`` (logged, not propagated).
        cancelled_on_drain: tasks cancelled because the drain deadline passed or the group ended.
        rejected: ``start_soon`` calls refused because ``max_tasks`` were running.
        closed: whether the group refuses new tasks.
    """

    name: str
    max_tasks: int
    running: int
    started: int
    completed: int
    failed: int
    cancelled_on_drain: int
    rejected: int
    closed: bool


@final
class BackgroundGroup:
    """Runs fire-and-forget work (webhook deliveries, post-processing) under a visible owner.

    Made by :func:`open_background_group`. At most ``max_tasks`` run at once; past that,
    :meth:`start_soon` refuses at once with :class:`LaneFullError` (no queue).

    Error handling:
        A task that raises an ``Exception`` is logged (``logging.getLogger("lanes._background")``)
        and counted as failed; the group and its other tasks keep running, because background
        work must not take the server down. ``trio.Cancelled`` and other ``BaseException``\\ s
        propagate.
    """

    def __init__(self, name: str, nursery: trio.Nursery, max_tasks: int) -> None:
        self.name = name
        self._nursery = nursery
        self._max_tasks = max_tasks
        self._scopes: set[trio.CancelScope] = set()
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        self._started = self._completed = self._failed = self._cancelled = self._rejected = 0

    def start_soon(
        self,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[object]],
        *args: *PosArgsT,
        name: str | None = None,
    ) -> None:
        """Start ``await fn(*args)`` in the group.

        Raises:
            LaneClosedError: the group is draining or closed.
            LaneFullError: ``max_tasks`` tasks are already running (nothing was started).
        """
        if self._closed:
            raise LaneClosedError(self.name)
        if len(self._scopes) >= self._max_tasks:
            self._rejected += 1
            raise LaneFullError(self.name, len(self._scopes))
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._started += 1
        label = name or getattr(fn, "__qualname__", repr(fn))
        self._nursery.start_soon(self._run, scope, fn, args, name=f"{self.name}:{label}")

    async def drain(self, deadline: float) -> None:
        """Stop taking tasks, wait for running ones until ``deadline``, then cancel the rest.

        Args:
            deadline: absolute time on the Trio clock (``trio.current_time() + grace_s``).

        Cancellation: if the caller is cancelled, the running tasks are cancelled too.
        """
        self._closed = True
        try:
            with trio.move_on_at(deadline):
                await self._idle.wait()
        finally:
            self._cancel_all()
        await self._idle.wait()

    def statistics(self) -> BackgroundGroupStatistics:
        """Return a frozen snapshot of this group's counters."""
        return BackgroundGroupStatistics(
            name=self.name,
            max_tasks=self._max_tasks,
            running=len(self._scopes),
            started=self._started,
            completed=self._completed,
            failed=self._failed,
            cancelled_on_drain=self._cancelled,
            rejected=self._rejected,
            closed=self._closed,
        )

    def _cancel_all(self) -> None:
        self._closed = True
        for scope in self._scopes:
            scope.cancel()

    async def _run(
        self,
        scope: trio.CancelScope,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[object]],
        args: tuple[*PosArgsT],
    ) -> None:
        try:
            with scope:
                await self._call(fn, args)
            if scope.cancelled_caught:
                self._cancelled += 1
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._idle.set()

    async def _call(  # noqa: ASYNC910 -- checkpoints are fn's; an early raise is logged
        self,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[object]],
        args: tuple[*PosArgsT],
    ) -> None:
        try:
            await fn(*args)
        except Exception:
            self._failed += 1
            LOGGER.exception(
                "background task of group %r failed", self.name, extra={"lane": self.name}
            )
        else:
            self._completed += 1


@asynccontextmanager
async def open_background_group(name: str, *, max_tasks: int) -> AsyncIterator[BackgroundGroup]:
    """Open a :class:`BackgroundGroup` whose tasks live no longer than this block.

    Grant running tasks a grace period with ``await group.drain(deadline)`` before leaving the
    block; whatever still runs when the block ends is cancelled (and counted as
    ``cancelled_on_drain``), so a forgotten task cannot hold up shutdown.

    Args:
        name: shown in statistics, errors, logs, and task names.
        max_tasks: the most tasks running at once (>= 1).
    """
    if max_tasks < 1:
        raise ValueError("max_tasks must be >= 1")
    async with trio.open_nursery() as nursery:
        group = BackgroundGroup(name, nursery, max_tasks)
        try:
            yield group
        finally:
            group._cancel_all()
