"""A coalescing wake-up signal between producers and polling workers, and waiting for the
first of several wake-up sources."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import final

import trio

__all__ = ["Wakeup", "wait_any"]


@final
class Wakeup:
    """Wakes every waiting worker; wake-ups while nobody waits are remembered once (coalesced).

    Workers poll durable state (the store) anyway; this only cuts the wait short, so a lost or
    merged wake-up can delay work by at most one poll interval, never lose it.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        """Wake the waiters (sync, never blocks)."""
        self._event.set()

    async def wait(self) -> None:
        """Wait for the next wake-up, then re-arm (always a checkpoint)."""
        await self._event.wait()
        self._event = trio.Event()


async def wait_any(poll_s: float, *waits: Callable[[], Awaitable[object]]) -> None:
    """Return when any of ``waits`` returns, or after ``poll_s`` seconds, whichever is first.

    Cancellation: the waits run in a nursery owned by this call and end with it.
    """
    with trio.move_on_after(poll_s):
        async with trio.open_nursery() as nursery:
            for wait in waits:
                nursery.start_soon(_first, wait, nursery.cancel_scope)


async def _first(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()
