"""Small shared helpers for the test suite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


async def wait_until(predicate: Callable[[], bool], *, poll_s: float = 0.001) -> None:
    """Wait until ``predicate()`` is true.

    Only for conditions changed by *threads or other processes*, which cannot set a
    ``trio.Event``; Trio-side conditions use events. The caller bounds the wait with
    ``fail_after``.
    """
    await trio.lowlevel.checkpoint()
    while not predicate():  # noqa: ASYNC110 -- polled on purpose, see docstring
        await trio.sleep(poll_s)


async def wait_until_true(
    predicate: Callable[[], Awaitable[bool]], *, poll_s: float = 0.02
) -> None:
    """Like :func:`wait_until` for an async predicate (e.g. a store query)."""
    while not await predicate():  # noqa: ASYNC110 -- polled state lives outside Trio's view
        await trio.sleep(poll_s)
