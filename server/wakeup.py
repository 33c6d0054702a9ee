"""A coalescing wake-up signal between producers and polling workers."""

from __future__ import annotations

from typing import final

import trio

__all__ = ["Wakeup"]


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
