"""Percentile summaries for latency samples (nearest-rank, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = ["LatencySummary", "percentile", "summarise"]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank ``fraction`` percentile of already sorted values (0.0 when empty).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.0
    """
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count, p50/p95/p99 and max of a set of latencies, in seconds."""

    count: int
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float

    def to_json(self) -> dict[str, float]:
        """A plain dict."""
        return asdict(self)


def summarise(values: Iterable[float]) -> LatencySummary:
    """Summarise ``values`` (any order)."""
    data = sorted(values)
    return LatencySummary(
        count=len(data),
        p50_s=percentile(data, 0.50),
        p95_s=percentile(data, 0.95),
        p99_s=percentile(data, 0.99),
        max_s=data[-1] if data else 0.0,
    )
