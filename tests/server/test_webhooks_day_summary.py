"""The day_summary scheduler on the virtual clock: once a day, durable, never twice."""

from __future__ import annotations

import json
import pathlib
from datetime import UTC, datetime

import trio
import trio.testing

import lanes
from server.clock import wall_now
from server.processing.day_summary import DaySummaryScheduler, day_start, next_run_at
from server.processing.summarise_embedded import EmbeddedSummariser
from server.processing.worker import ProcessingConfig, ProcessingWorkers
from server.wakeup import Wakeup
from tests.fakes.webhook_world import World, add_endpoint, open_world, processing_conversation

HOUR = 3600.0


def summariser() -> EmbeddedSummariser:
    return EmbeddedSummariser(lanes.ThreadLane("summarise", 1))


async def complete_one(world: World) -> str:
    conversation = await processing_conversation(world)
    workers = ProcessingWorkers(
        world.store,
        summariser(),
        ProcessingConfig(),
        world.drain,
        Wakeup(),
        world.on_event,
        lambda: None,
    )
    (claimed,) = await world.store.claim_for_processing(wall_now(), 60, 1)
    assert await workers.process(claimed) == "completed"
    stored = await world.store.get_conversation(world.user.id, conversation.id)
    assert stored is not None
    return stored.title


def scheduler(world: World, hour: int, queued: list[int]) -> DaySummaryScheduler:
    return DaySummaryScheduler(
        world.store, world.repo, summariser(), world.drain, hour, lambda: queued.append(1)
    )


async def go_to_half_past_midnight() -> None:
    now = wall_now()
    await trio.sleep(next_run_at(now, 0) + 0.5 * HOUR - now)


async def test_the_day_summary_is_queued_once_at_the_hour(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await go_to_half_past_midnight()
        title = await complete_one(world)
        endpoint = await add_endpoint(world, "https://hooks.example/day", ["day_summary"])
        await add_endpoint(world, "https://hooks.example/m", ["memory_created"])
        queued: list[int] = []
        day = scheduler(world, 2, queued)
        async with trio.open_nursery() as nursery:
            await nursery.start(day.run)
            await trio.sleep(1.5 * HOUR - 1)
            assert day.runs == 0
            await trio.sleep(2)
            assert (day.runs, day.queued, queued) == (1, 1, [1])
            assert await day.run_once(wall_now()) == 0  # same day again: deduplicated
            await trio.sleep(24 * HOUR)
            assert (day.runs, day.queued) == (3, 1)  # next day: nothing completed that day
            world.drain.request(30)
        due = await world.repo.claim_due(wall_now(), 30, 10)
        day_rows = [d for d in due if d.delivery.kind == "day_summary"]
        (row,) = day_rows
        assert row.endpoint.id == endpoint.id
        body = json.loads(row.payload)
        assert set(body) == {"summary", "uid", "created_at"}
        assert body["uid"] == world.user.id and title in body["summary"]
        created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
        assert (created.hour, created.minute) == (2, 0)


async def test_off_or_drained_schedulers_return_at_once(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        with trio.fail_after(0.1):
            await scheduler(world, -1, []).run()
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler(world, 5, []).run)
            await trio.sleep(10)
            started = trio.current_time()
            world.drain.request(30)
        assert trio.current_time() - started < 0.1


def test_next_run_is_strictly_after_now() -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    assert next_run_at(noon, 13) == noon + HOUR
    assert next_run_at(noon, 12) == noon + 24 * HOUR
    assert next_run_at(noon, 3) == noon + 15 * HOUR
    assert day_start(noon + 5) == noon - 12 * HOUR
