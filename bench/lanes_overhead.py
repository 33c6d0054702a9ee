"""What the lanes cost per call: ThreadLane vs bare to_thread, HTTP lane vs bare httpx.

Run ``python -m bench.lanes_overhead`` (or ``python bench/lanes_overhead.py``). Calls are
sequential, so the numbers are per-call latency overhead, not throughput. Loopback only; the HTTP
server runs in the same process and event loop, so both variants pay for it equally.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

if not __package__:  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import trio

from bench.loopback_http import serve_ok
from lanes import HttpLaneSettings, ThreadLane, open_http_lane

THREAD_CALLS: Final = 2_000
HTTP_CALLS: Final = 1_000
WARMUP_CALLS: Final = 50


def _noop() -> None:
    """The blocking call being moved to a thread: nothing, so only overhead is measured."""


ROUNDS: Final = 4

Call = Callable[[], Awaitable[object]]


async def _compare(calls: int, bare: Call, laned: Call) -> tuple[float, float]:
    """Mean microseconds per call of each, measured in alternating rounds to spread drift."""
    await trio.lowlevel.checkpoint()
    totals = [0.0, 0.0]
    for fn in (bare, laned):
        for _ in range(WARMUP_CALLS):
            await fn()
    for _ in range(ROUNDS):
        for index, fn in enumerate((bare, laned)):
            started = time.perf_counter()
            for _ in range(calls // ROUNDS):
                await fn()
            totals[index] += time.perf_counter() - started
    per_call = calls // ROUNDS * ROUNDS
    return totals[0] / per_call * 1e6, totals[1] / per_call * 1e6


async def _bench_threads() -> dict[str, float]:
    lane = ThreadLane("bench", 4)

    async def bare() -> None:
        await trio.to_thread.run_sync(_noop)  # noqa: TID251 -- the baseline being measured

    async def laned() -> None:
        await lane.run_sync(_noop)

    bare_us, lane_us = await _compare(THREAD_CALLS, bare, laned)
    return {"bare_to_thread_us": bare_us, "thread_lane_us": lane_us}


async def _bench_http(url: str) -> dict[str, float]:
    async with (
        httpx.AsyncClient(trust_env=False) as client,
        open_http_lane("bench", HttpLaneSettings()) as lane,
    ):

        async def bare() -> None:
            (await client.get(url)).raise_for_status()

        async def laned() -> None:
            await lane.request("GET", url)

        bare_us, lane_us = await _compare(HTTP_CALLS, bare, laned)
    return {"bare_httpx_get_us": bare_us, "http_lane_get_us": lane_us}


def _report(results: dict[str, float]) -> dict[str, object]:
    thread_ratio = results["thread_lane_us"] / results["bare_to_thread_us"]
    http_ratio = results["http_lane_get_us"] / results["bare_httpx_get_us"]
    return {
        "python": platform.python_version(),
        "trio": trio.__version__,
        "httpx": httpx.__version__,
        "thread_calls": THREAD_CALLS,
        "http_calls": HTTP_CALLS,
        **{key: round(value, 1) for key, value in results.items()},
        "thread_lane_ratio": round(thread_ratio, 3),
        "http_lane_ratio": round(http_ratio, 3),
    }


def _table(report: dict[str, object]) -> str:
    rows = [
        ("trio.to_thread.run_sync (bare)", report["bare_to_thread_us"], ""),
        ("ThreadLane.run_sync", report["thread_lane_us"], report["thread_lane_ratio"]),
        ("httpx.AsyncClient.get (bare)", report["bare_httpx_get_us"], ""),
        ("HttpLane.request GET", report["http_lane_get_us"], report["http_lane_ratio"]),
    ]
    lines = [f"{'call':34} {'us/call':>9} {'x bare':>7}"]
    lines += [f"{name:34} {us:>9} {ratio!s:>7}" for name, us, ratio in rows]
    return "\n".join(lines)


async def main() -> None:
    """Run both benchmarks and print JSON, then a table."""
    results = await _bench_threads()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ok)
        results |= await _bench_http(f"http://127.0.0.1:{port}/ok")
        nursery.cancel_scope.cancel()
    report = _report(results)
    print(json.dumps(report, indent=2))
    print(_table(report))


if __name__ == "__main__":
    trio.run(main)
