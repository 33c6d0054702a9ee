"""BackgroundGroup: bounded start, failures survived, drain with a deadline, cancel the rest."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from lanes import LaneClosedError, LaneFullError, open_background_group


async def sleeper(seconds: float, done: list[float]) -> None:
    await trio.sleep(seconds)
    done.append(seconds)


async def test_runs_tasks_and_counts_them(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []
    async with open_background_group("bg", max_tasks=4) as group:
        for seconds in (3, 1, 2):
            group.start_soon(sleeper, seconds, done)
        assert group.statistics().running == 3
        await group.drain(trio.current_time() + 60)
    assert done == [1, 2, 3]
    stats = group.statistics()
    assert (stats.started, stats.completed, stats.running, stats.cancelled_on_drain) == (3, 3, 0, 0)


async def test_rejects_past_max_tasks(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []
    async with open_background_group("bg", max_tasks=2) as group:
        group.start_soon(sleeper, 1, done)
        group.start_soon(sleeper, 1, done)
        with pytest.raises(LaneFullError) as info:
            group.start_soon(sleeper, 1, done)
        assert info.value.name == "bg"
        await trio.sleep(2)
        group.start_soon(sleeper, 1, done)  # room again once they finished
        await group.drain(trio.current_time() + 5)
    assert group.statistics().rejected == 1
    assert len(done) == 3


async def test_failing_task_is_logged_and_survived(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[float] = []

    async def explode() -> None:
        await trio.sleep(1)
        raise RuntimeError("webhook target exploded")

    with caplog.at_level(logging.ERROR, logger="lanes._background"):
        async with open_background_group("hooks", max_tasks=4) as group:
            group.start_soon(explode)
            group.start_soon(sleeper, 2, done)
            await group.drain(trio.current_time() + 10)
    assert done == [2]
    stats = group.statistics()
    assert (stats.failed, stats.completed) == (1, 1)
    assert "webhook target exploded" in caplog.text
    assert "'hooks'" in caplog.text


async def test_drain_waits_until_the_deadline_then_cancels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[float] = []
    async with open_background_group("bg", max_tasks=4) as group:
        group.start_soon(sleeper, 1, done)
        group.start_soon(sleeper, 100, done)
        started = trio.current_time()
        await group.drain(started + 5)
        assert trio.current_time() - started == pytest.approx(5)
        with pytest.raises(LaneClosedError):
            group.start_soon(sleeper, 1, done)
    assert done == [1]
    stats = group.statistics()
    assert (stats.completed, stats.cancelled_on_drain, stats.running, stats.closed) == (
        1,
        1,
        0,
        True,
    )


async def test_leaving_the_block_cancels_what_still_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[float] = []
    started = trio.current_time()
    async with open_background_group("bg", max_tasks=4) as group:
        group.start_soon(sleeper, 1000, done)
    assert trio.current_time() == started  # no waiting for the forgotten task
    assert done == []
    assert group.statistics().cancelled_on_drain == 1


async def test_error_in_the_body_cancels_tasks_and_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[float] = []
    with pytest.RaisesGroup(KeyError, allow_unwrapped=True, flatten_subgroups=True):
        async with open_background_group("bg", max_tasks=4) as group:
            group.start_soon(sleeper, 10, done)
            await trio.sleep(1)
            raise KeyError("body")
    assert done == []


async def test_cancelled_drain_cancels_tasks(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []
    async with open_background_group("bg", max_tasks=4) as group:
        group.start_soon(sleeper, 100, done)
        with trio.move_on_after(1):
            await group.drain(trio.current_time() + 50)
        assert group.statistics().closed
    stats = group.statistics()
    assert (stats.cancelled_on_drain, stats.running) == (1, 0)
    assert trio.current_time() == pytest.approx(1)


async def test_rejects_bad_max_tasks() -> None:
    with pytest.raises(ValueError):
        async with open_background_group("bg", max_tasks=0):
            pass
