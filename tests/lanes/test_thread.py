"""ThreadLane with real threads: capacity, load shedding, cancellation, statistics."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from lanes import LaneClosedError, LaneFullError, ThreadLane
from tests.helpers import wait_until


async def test_returns_result_and_propagates_errors() -> None:
    lane = ThreadLane("t", 2)
    assert await lane.run_sync(lambda a, b: a + b, 2, 3) == 5

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await lane.run_sync(boom)
    stats = lane.statistics()
    assert (stats.completed, stats.failed, stats.running) == (1, 1, 0)


async def test_runs_in_a_named_thread_off_the_loop() -> None:
    name = await ThreadLane("storage", 1).run_sync(lambda: threading.current_thread().name)
    assert name == "lane:storage"
    assert name != threading.current_thread().name


async def test_capacity_never_exceeded_under_100_callers() -> None:
    lane = ThreadLane("cap", 4)
    lock = threading.Lock()
    active = 0
    peak = 0
    release = threading.Event()

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        release.wait(5)
        with lock:
            active -= 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(lane.run_sync, work)
            await wait_until(lambda: active == 4)  # all four threads are inside work()
            await trio.sleep(0.05)  # give a fifth thread the chance to (wrongly) start
            assert lane.statistics().waiting == 96
            assert peak == 4
            release.set()
    assert peak == 4
    assert lane.statistics().completed == 100


async def test_waiting_bound_rejects_at_once() -> None:
    lane = ThreadLane("shed", 1, max_waiting=2)
    release = threading.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # one runs, two wait
                nursery.start_soon(lane.run_sync, release.wait, 5)
            await wait_until(lambda: lane.statistics().waiting == 2)
            with pytest.raises(LaneFullError) as info:
                await lane.run_sync(print)
            assert info.value.waiting == 2
            release.set()
    stats = lane.statistics()
    assert (stats.rejected, stats.completed) == (1, 3)


async def test_cancelled_while_waiting_never_starts() -> None:
    lane = ThreadLane("q", 1)
    release = threading.Event()
    started: list[str] = []

    def record(tag: str) -> None:
        started.append(tag)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lane.run_sync, release.wait, 5)
            await wait_until(lambda: lane.statistics().running == 1)
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + 0.05
                await lane.run_sync(record, "late")
            assert scope.cancelled_caught
            release.set()
    assert started == []
    assert lane.statistics().waiting == 0


async def test_cancelled_while_running_waits_for_the_thread() -> None:
    lane = ThreadLane("wait", 1)
    finished = threading.Event()
    go = threading.Event()

    def slow() -> None:
        go.wait(5)
        finished.set()

    with trio.fail_after(10):
        with trio.move_on_after(0.05):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lane.run_sync, slow)
                await trio.sleep(0.02)
                go.set()  # the caller is cancelled soon; it must still wait for slow()
    assert finished.is_set()
    assert lane.statistics().running == 0


async def test_abandoning_lane_returns_at_once_but_keeps_the_desk() -> None:
    lane = ThreadLane("abandon", 1, abandon_on_cancel=True)
    release = threading.Event()
    with trio.fail_after(10):
        with trio.move_on_after(0.05) as scope:
            await lane.run_sync(release.wait, 5)
        assert scope.cancelled_caught
        stats = lane.statistics()
        assert (stats.abandoned, stats.running) == (1, 1)  # the thread still holds capacity
        release.set()
        await lane.aclose()  # waits for the abandoned thread
    assert lane.statistics().running == 0


async def test_closed_lane_refuses_new_calls() -> None:
    lane = ThreadLane("closed", 1)
    await lane.aclose()
    with pytest.raises(LaneClosedError):
        await lane.run_sync(print)


async def test_wait_time_is_measured() -> None:
    lane = ThreadLane("timing", 1)
    release = threading.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lane.run_sync, release.wait, 5)
            await wait_until(lambda: lane.statistics().running == 1)
            nursery.start_soon(lane.run_sync, print)
            await trio.sleep(0.05)
            release.set()
    assert lane.statistics().wait_max_s >= 0.04


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ThreadLane("x", 0)
    with pytest.raises(ValueError, match="max_waiting"):
        ThreadLane("x", 1, max_waiting=-1)
