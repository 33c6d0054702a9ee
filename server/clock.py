"""Wall-clock time that follows the Trio clock, so virtual-clock tests see consistent dates.

Persisted timestamps are Unix seconds. They are read as ``time.time()`` at the first call in a
Trio run plus the Trio clock's progress since then; under ``trio.testing.MockClock`` this "wall
clock" jumps with the virtual clock, so conversation timeouts, retry schedules and TTLs are
testable without sleeping.
"""

from __future__ import annotations

import time
from typing import Final

import trio

__all__ = ["wall_now"]

_OFFSET: Final[trio.lowlevel.RunVar[float]] = trio.lowlevel.RunVar("trioscribe_wall_offset")


def wall_now() -> float:
    """Unix time in seconds, advancing with ``trio.current_time()`` (call inside ``trio.run``)."""
    now = trio.current_time()
    try:
        offset = _OFFSET.get()
    except LookupError:
        offset = time.time() - now
        _OFFSET.set(offset)
    return offset + now
