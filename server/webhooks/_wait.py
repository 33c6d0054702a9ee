"""Waiting for the first of several wake-up sources, bounded by a poll interval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["wait_any"]


async def wait_any(poll_s: float, *waits: Callable[[], Awaitable[object]]) -> None:
    """Return when any of ``waits`` returns, or after ``poll_s`` seconds, whichever is first."""
    with trio.move_on_after(poll_s):
        async with trio.open_nursery() as nursery:
            for wait in waits:
                nursery.start_soon(_first, wait, nursery.cancel_scope)


async def _first(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()
