"""ProcessLane: real worker processes, pinned sessions, crashes, shutdown (real clock)."""

from __future__ import annotations

import os
import pathlib

import pytest
import trio

import lanes._process
from lanes import (
    LaneClosedError,
    LaneFullError,
    ProcessLane,
    RemoteCallError,
    WorkerCrashedError,
    open_process_lane,
)
from tests.helpers import wait_until

FACTORY = "tests.lanes._process_targets:Counter"
DEADLINE_S = 15.0

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _pids(lane: ProcessLane) -> list[int]:
    pids = [pid for pid in lane.statistics().worker_pids if pid is not None]
    assert len(pids) == lane.statistics().workers
    return pids


async def test_round_trip_state_and_pinning() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=2, sessions_per_worker=2
        ) as lane:
            async with lane.open_session(10) as first, lane.open_session(100) as second:
                assert await first.call("echo", {"a": (1, b"x")}) == {"a": (1, b"x")}
                for _ in range(3):
                    await first.call("add", 1)
                    await second.call("add", 5)
                assert await first.call("add", 0) == 13
                assert await second.call("add", 0) == 115
                first_pids = {await first.call("pid") for _ in range(5)}
                assert first_pids == {first.pid}
                assert first.pid != second.pid  # least loaded: one per worker
                assert sorted(lane.statistics().worker_loads) == [1, 1]
            stats = lane.statistics()
    assert stats.sessions_open == 0
    assert stats.sessions_opened == 2
    assert stats.calls >= 2 + 2 + 6 + 2 + 5


async def test_capacity_refusal_and_slot_reuse() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=1, sessions_per_worker=2
        ) as lane:
            async with lane.open_session() as _a, lane.open_session() as _b:
                with pytest.raises(LaneFullError):
                    async with lane.open_session():
                        pass  # pragma: no cover
                assert lane.statistics().rejected == 1
            async with lane.open_session() as again:
                assert await again.call("add", 2) == 2


async def test_waiting_caller_gets_the_freed_slot() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=1, sessions_per_worker=1, max_waiting=1
        ) as lane:
            got: list[int] = []

            async def waiter() -> None:
                async with lane.open_session(7) as session:
                    got.append(await session.call("add", 0))

            async with trio.open_nursery() as nursery:
                async with lane.open_session():
                    nursery.start_soon(waiter)
                    await wait_until(lambda: lane.statistics().waiting == 1)
                    with pytest.raises(LaneFullError):
                        async with lane.open_session():
                            pass  # pragma: no cover
            assert got == [7]


async def test_remote_exception_is_mapped_and_session_survives() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=1, sessions_per_worker=1
        ) as lane:
            async with lane.open_session() as session:
                with pytest.raises(RemoteCallError) as info:
                    await session.call("fail", "boom")
                assert info.value.type_name == "builtins.ValueError"
                assert info.value.remote_message == "boom"
                assert (
                    "def fail" in info.value.remote_traceback
                    or "fail" in info.value.remote_traceback
                )
                with pytest.raises(RemoteCallError, match="AttributeError"):
                    await session.call("no_such_method")
                assert await session.call("add", 1) == 1
            assert lane.statistics().failed_calls == 2


async def test_factory_failure_and_bad_factory() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory="tests.lanes._process_targets:broken_factory", workers=1,
            sessions_per_worker=1,
        ) as lane:  # fmt: skip
            with pytest.raises(RemoteCallError, match="factory refused"):
                async with lane.open_session():
                    pass  # pragma: no cover
            assert lane.statistics().sessions_open == 0
        with pytest.raises(WorkerCrashedError, match="before it was ready"):
            async with open_process_lane(
                "t", factory="tests.lanes.no_such_module:X", workers=1, sessions_per_worker=1
            ):
                pass  # pragma: no cover


async def test_worker_crash_fails_calls_and_is_replaced() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=1, sessions_per_worker=2
        ) as lane:
            async with lane.open_session() as doomed, lane.open_session() as bystander:
                old_pid = doomed.pid
                assert old_pid is not None
                with pytest.raises(WorkerCrashedError):
                    await doomed.call("crash")
                with pytest.raises(WorkerCrashedError):  # pinned to the dead worker
                    await bystander.call("add", 1)
                with pytest.raises(WorkerCrashedError):
                    await doomed.call("add", 1)
            async with lane.open_session(1) as fresh:  # waits for the replacement
                assert await fresh.call("add", 1) == 2
                assert fresh.pid != old_pid
            stats = lane.statistics()
            assert (stats.crashes, stats.restarts, stats.workers_alive) == (1, 1, 1)
            await wait_until(lambda: _gone(old_pid))


async def test_cancelled_call_leaves_the_lane_usable() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=1, sessions_per_worker=1
        ) as lane:
            async with lane.open_session() as session:
                with trio.move_on_after(0.1) as scope:
                    await session.call("nap", 0.5)
                assert scope.cancelled_caught
                assert await session.call("add", 3) == 3  # queued behind the nap, in order
                assert await session.call("echo", "next") == "next"


async def test_shutdown_closes_sessions_and_leaves_no_processes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "closed.txt"
    monkeypatch.setenv("COUNTER_CLOSE_LOG", str(log))
    # A worker stuck in a 30 s call is killed after the (shortened) grace periods.
    monkeypatch.setattr(lanes._process, "SESSION_CLOSE_GRACE_S", 0.2)
    monkeypatch.setattr(lanes._process, "EXIT_GRACE_S", 0.3)
    with trio.fail_after(DEADLINE_S):
        async with open_process_lane(
            "t", factory=FACTORY, workers=2, sessions_per_worker=2
        ) as lane:
            pids = _pids(lane)
            async with lane.open_session(4) as session:
                await session.call("add", 1)
            assert log.read_text() == "5\n"  # close() ran in the worker
            cancelled = lane.open_session(40)  # left open when the body is cancelled
            with trio.move_on_after(0.2):
                async with cancelled as busy:
                    await busy.call("nap", 30)
        with pytest.raises(LaneClosedError):
            async with lane.open_session():
                pass  # pragma: no cover
    assert all(_gone(pid) for pid in pids)
    assert lane.statistics().sessions_open == 0


async def test_error_in_body_still_stops_workers() -> None:
    pids: list[int] = []
    with trio.fail_after(DEADLINE_S), pytest.raises(KeyError):
        async with open_process_lane(
            "t", factory=FACTORY, workers=2, sessions_per_worker=1
        ) as lane:
            pids = _pids(lane)
            raise KeyError("boom")
    assert pids and all(_gone(pid) for pid in pids)
