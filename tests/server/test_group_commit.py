"""Group commit: concurrent writes share batches; results, errors and cancellation stay per item."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from server.store import NotFoundError, StoreUnavailableError
from server.store._group import GroupCommit
from server.store.models import SegmentRow
from server.store.sqlite import open_sqlite_store


class Runner:
    """A backend double: records batches, takes ``delay_s`` each, fails items named ``bad``."""

    def __init__(self, delay_s: float = 1.0) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_whole: Exception | None = None

    async def __call__(self, items: Sequence[str]) -> list[Exception | None]:
        self.batches.append(list(items))
        await trio.sleep(self.delay_s)
        if self.fail_whole is not None:
            raise self.fail_whole
        return [ValueError(item) if item.startswith("bad") else None for item in items]


async def _submit_all(group: GroupCommit[str], items: Sequence[str]) -> dict[str, object]:
    outcome: dict[str, object] = {}

    async def one(item: str) -> None:
        await trio.lowlevel.checkpoint()
        try:
            await group.submit(item)
        except Exception as exc:
            outcome[item] = exc
        else:
            outcome[item] = "ok"

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    return outcome


async def test_writes_arriving_during_a_batch_share_the_next_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner()
    group = GroupCommit(runner, max_batch=100)
    items = [f"w{i}" for i in range(50)]
    outcome = await _submit_all(group, items)
    assert outcome == dict.fromkeys(items, "ok")
    assert sorted(i for batch in runner.batches for i in batch) == sorted(items)
    assert len(runner.batches) <= 3  # instead of 50 storage calls
    stats = group.statistics()
    assert (stats.batches, stats.items, stats.pending) == (len(runner.batches), 50, 0)


async def test_under_load_a_leader_lingers_so_writes_spread_in_time_share_a_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Writes arriving 5 ms apart (sessions' finals under load): idle, the first goes alone at
    once; then each leader waits ``linger_s`` and its call carries the writes of that window."""
    runner = Runner(delay_s=0.001)
    group = GroupCommit(runner, linger_s=0.02, busy_window_s=0.1)
    done: dict[str, float] = {}

    async def one(item: str, at: float) -> None:
        await trio.sleep(at)
        await group.submit(item)
        done[item] = trio.current_time() - start

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, f"w{i}", i * 0.005)
    assert runner.batches[0] == ["w0"]  # idle: no wait
    assert done["w0"] < 0.005
    assert len(runner.batches) <= 12  # instead of 40 calls
    assert max(len(b) for b in runner.batches) >= 4
    assert max(done[f"w{i}"] - i * 0.005 for i in range(40)) <= 0.02 + 0.001 + 0.005
    stats = group.statistics()
    assert stats.lingered == len(runner.batches) - 1
    await trio.sleep(1.0)  # idle again: the next write waits for nothing
    before = trio.current_time()
    await group.submit("late")
    assert trio.current_time() - before <= 0.001 + 1e-9


async def test_the_linger_follows_the_pressure(autojump_clock: trio.testing.MockClock) -> None:
    """The same writes 5 ms apart: with no pressure (CPU to spare) no leader lingers, each
    write waits only for the batch in flight; at half pressure a leader waits half the linger."""
    pressure = {"now": 0.0}

    async def run(share: float) -> tuple[GroupCommit[str], Runner, dict[str, float]]:
        pressure["now"] = share
        runner = Runner(delay_s=0.001)
        group = GroupCommit(
            runner, linger_s=0.02, busy_window_s=0.1, pressure=lambda: pressure["now"]
        )
        waited: dict[str, float] = {}

        async def one(item: str, at: float) -> None:
            await trio.sleep(at)
            before = trio.current_time()
            await group.submit(item)
            waited[item] = trio.current_time() - before

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, f"w{i}", i * 0.005)
        return group, runner, waited

    group, runner, waited = await run(0.0)
    assert group.statistics().lingered == 0
    assert len(runner.batches) == 40  # the writes never overlapped: one call each
    assert max(waited.values()) <= 0.001 + 1e-9
    group, runner, waited = await run(0.5)
    assert group.statistics().lingered == len(runner.batches) - 1
    # at most: the call in flight, half the linger, its own call
    assert 0.01 < max(waited.values()) <= 0.001 + 0.01 + 0.001 + 1e-9
    assert len(runner.batches) <= 20
    pressure["now"] = 7.0  # out of range: clamped to the whole linger
    await trio.sleep(0.05)
    before = trio.current_time()
    await group.submit("again")
    assert trio.current_time() - before == pytest.approx(0.02 + 0.001)


async def test_batches_are_capped_and_a_bad_item_fails_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner()
    group = GroupCommit(runner, max_batch=8)
    items = [f"w{i}" for i in range(30)] + ["bad1"]
    outcome = await _submit_all(group, items)
    assert isinstance(outcome.pop("bad1"), ValueError)
    assert set(outcome.values()) == {"ok"}
    assert max(len(b) for b in runner.batches) == 8 == group.statistics().largest_batch


async def test_a_failed_call_fails_every_item_of_its_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner()
    runner.fail_whole = StoreUnavailableError("lane full")
    outcome = await _submit_all(GroupCommit(runner), ["a", "b", "c"])
    assert all(isinstance(v, StoreUnavailableError) for v in outcome.values())


async def test_a_cancelled_queued_caller_withdraws_its_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner()
    group = GroupCommit(runner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.submit, "leader")
        await trio.sleep(0.1)  # the leader's batch is running
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.2
            await group.submit("withdrawn")
        nursery.start_soon(group.submit, "later")
    assert [i for b in runner.batches for i in b] == ["leader", "later"]
    assert scope.cancelled_caught and group.statistics().withdrawn == 1


async def test_a_cancelled_leader_finishes_its_batch_and_hands_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner()
    group = GroupCommit(runner)
    leader_scope = trio.CancelScope()
    done: list[str] = []

    async def leader() -> None:
        with leader_scope:
            await group.submit("leader")
            done.append("leader")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.sleep(0.1)  # the leader's batch is running
        nursery.start_soon(group.submit, "follower")
        await trio.sleep(0.1)
        leader_scope.cancel()
    assert runner.batches == [["leader"], ["follower"]]  # shielded, then handed over
    assert group.statistics().pending == 0


async def test_a_full_queue_refuses_at_once(autojump_clock: trio.testing.MockClock) -> None:
    runner = Runner()
    group = GroupCommit(runner, max_pending=2)
    outcome = await _submit_all(group, ["a", "b", "c", "d"])
    refused = [k for k, v in outcome.items() if isinstance(v, StoreUnavailableError)]
    assert refused and group.statistics().refused == len(refused)


def _row(conversation_id: str, i: int) -> SegmentRow:
    return SegmentRow(
        id=f"{conversation_id}-{i}", conversation_id=conversation_id, idx=i, text=f"word{i}",
        speaker="SPEAKER_00", speaker_id=0, is_user=False, person_id=None,
        start_s=float(i), end_s=float(i) + 0.5, stt_provider="fake",
    )  # fmt: skip


async def test_sqlite_many_sessions_share_transactions_and_a_deleted_conversation_fails_alone(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "db.sqlite") as store:
            user = await store.create_user("alice", 1000.0)
            convs = [
                await store.create_conversation(
                    user.id, source="omi", language="en", timeout_s=120, now=1000.0
                )
                for _ in range(40)
            ]
            gone = convs[7]
            assert await store.delete_conversation(user.id, gone.id)
            outcome: dict[str, object] = {}

            async def write(conversation_id: str) -> None:
                await trio.lowlevel.checkpoint()
                try:
                    rows = [_row(conversation_id, i) for i in range(3)]
                    await store.save_segments(conversation_id, rows, [], 1010.0)
                except NotFoundError as exc:
                    outcome[conversation_id] = exc
                else:
                    outcome[conversation_id] = "ok"

            async with trio.open_nursery() as nursery:
                for c in convs:
                    nursery.start_soon(write, c.id)
            stats = store.statistics()
            stored = await store.get_conversation(user.id, convs[0].id)
    assert isinstance(outcome.pop(gone.id), NotFoundError)
    assert set(outcome.values()) == {"ok"}
    assert stored is not None and [s.text for s in stored.segments] == ["word0", "word1", "word2"]
    assert stats.segment_writes.items == 40 and stats.segment_writes.batches < 40
    assert stats.failed == 1
