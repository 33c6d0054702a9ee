"""Small shared helpers for the test suite."""

from __future__ import annotations

from collections.abc import Callable

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
