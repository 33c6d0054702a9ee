"""A bounded window of latency samples with cheap percentiles, for ``statistics()`` records."""

from __future__ import annotations

from collections import deque
from typing import Final, final

__all__ = ["LatencyWindow"]

#: How many recent samples a window keeps: enough for a stable p99, small enough to sort cheaply.
DEFAULT_WINDOW: Final = 2048


@final
class LatencyWindow:
    """The last ``size`` durations (seconds) and the all-time maximum.

    Memory is bounded: old samples fall out of the window as new ones arrive.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample."""
        self._samples.append(seconds)
        self.count += 1
        if seconds > self.max_s:
            self.max_s = seconds

    def percentile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the window, nearest-rank; 0.0 when empty."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]
