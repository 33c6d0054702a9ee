"""Processing workers: embedded and OpenAI summaries, outbox rows, retries, failure, drain."""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Callable

import httpx
import trio
import trio.testing

import lanes
from server.clock import wall_now
from server.processing.summarise import Summariser
from server.processing.summarise_embedded import EmbeddedSummariser
from server.processing.summarise_openai import OpenAISummariser
from server.processing.worker import ProcessingConfig, ProcessingWorkers
from server.store import Conversation
from server.wakeup import Wakeup
from tests.fakes.webhook_world import World, add_endpoint, open_world, processing_conversation

GOOD_SUMMARY = {
    "title": "Launch Review",
    "overview": "The team planned the launch review.",
    "emoji": "🚀",
    "category": "work",
    "action_items": ["Send the budget report by Friday"],
    "events": [],
}


def workers_for(
    world: World, summariser: Summariser, completed: list[int] | None = None, **config: object
) -> ProcessingWorkers:
    done = completed if completed is not None else []
    return ProcessingWorkers(
        world.store,
        summariser,
        ProcessingConfig(**config),  # type: ignore[arg-type]
        world.drain,
        Wakeup(),
        world.on_event,
        lambda: done.append(1),
        rng=random.Random(3),
    )


def embedded() -> EmbeddedSummariser:
    return EmbeddedSummariser(lanes.ThreadLane("summarise", 1))


async def claim_one(world: World) -> Conversation:
    (conversation,) = await world.store.claim_for_processing(wall_now(), 90, 1)
    return conversation


async def test_embedded_summary_completes_and_queues_memory_created(
    tmp_path: pathlib.Path,
) -> None:
    async with open_world(tmp_path) as world:
        hook = await add_endpoint(world, "https://hooks.example/m", ["memory_created"])
        app = await add_endpoint(world, "https://app.example/m", ["memory_created"], owner="app")
        await add_endpoint(world, "https://hooks.example/rt", ["realtime_transcript"])
        conversation = await processing_conversation(world)
        completed: list[int] = []
        workers = workers_for(world, embedded(), completed)
        assert await workers.process(await claim_one(world)) == "completed"
        stored = await world.store.get_conversation(world.user.id, conversation.id)
        assert stored is not None and stored.status == "completed"
        assert stored.title and stored.overview and stored.category == "work"
        items = [item["description"] for item in stored.structured["action_items"]]  # type: ignore[index, union-attr]
        assert "I need to send the budget report to finance by Friday" in items
        deliveries = await world.repo.all_deliveries(world.user.id)
        assert sorted(d.endpoint_id for d in deliveries) == sorted([hook.id, app.id])
        assert len({d.message_id for d in deliveries}) == 1
        claimed = await world.repo.claim_due(wall_now(), 30, 10)
        body = json.loads(claimed[0].payload)
        assert body["id"] == conversation.id and body["status"] == "completed"
        assert body["structured"]["title"] == stored.title
        assert len(body["transcript_segments"]) == 5
        ((user_id, event),) = world.events
        assert user_id == world.user.id and event["type"] == "memory_created"
        assert event["memory"] == body and event["messages"] == []
        assert completed == [1] and workers.statistics().completed == 1


async def test_completion_and_outbox_are_one_transaction(tmp_path: pathlib.Path) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, "https://hooks.example/m", ["memory_created"])
        conversation = await processing_conversation(world)
        claimed = await claim_one(world)
        workers = workers_for(world, embedded())
        await world.store.fail_conversation(conversation.id, "taken by someone else", wall_now())
        assert await workers.process(claimed) == "lost"  # not processing any more: no write
        assert await world.repo.all_deliveries(world.user.id) == []
        assert world.events == []


async def run_openai(
    world: World,
    handler: Callable[[httpx.Request], object],
    *,
    rounds: int,
    timeout_s: float = 60,
) -> list[str]:
    """Process the conversation ``rounds`` times, jumping to each retry; return outcomes."""
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    outcomes: list[str] = []
    async with lanes.open_http_lane(
        "openai", lanes.HttpLaneSettings(failure_threshold=100), transport=transport
    ) as lane:
        summariser = OpenAISummariser(lane, base_url="https://llm.test/v1", model="m")
        workers = workers_for(world, summariser, summary_timeout_s=timeout_s)
        for _ in range(rounds):
            claimed = await world.store.claim_for_processing(wall_now(), 90, 1)
            while not claimed:
                await trio.sleep(1)
                claimed = await world.store.claim_for_processing(wall_now(), 90, 1)
            outcomes.append(await workers.process(claimed[0]))
    return outcomes


def completion(content: str) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})


async def test_openai_summary_completes(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        conversation = await processing_conversation(world)
        outcomes = await run_openai(world, lambda r: completion(json.dumps(GOOD_SUMMARY)), rounds=1)
        assert outcomes == ["completed"]
        stored = await world.store.get_conversation(world.user.id, conversation.id)
        assert stored is not None and (stored.title, stored.emoji) == ("Launch Review", "🚀")


async def test_malformed_json_is_retried_with_backoff_then_failed(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        conversation = await processing_conversation(world)
        times: list[float] = []

        def handler(request: httpx.Request) -> httpx.Response:
            times.append(trio.current_time())
            return completion("this is not json {")

        outcomes = await run_openai(world, handler, rounds=5)
        assert outcomes == ["retry"] * 4 + ["failed"]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        for gap, planned in zip(gaps, (5, 30, 120, 600), strict=True):
            assert planned * 0.8 <= gap <= planned * 1.2 + 1, gaps
        stored = await world.store.get_conversation(world.user.id, conversation.id)
        assert stored is not None and stored.status == "failed"
        assert "malformed summary" in (stored.failure_reason or "")
        assert stored.processing_attempts == 5


async def test_timeouts_are_retried_then_failed_with_the_reason(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        conversation = await processing_conversation(world)

        async def hang(request: httpx.Request) -> httpx.Response:
            await trio.sleep_forever()
            raise AssertionError

        outcomes = await run_openai(world, hang, rounds=5, timeout_s=10)
        assert outcomes == ["retry"] * 4 + ["failed"]
        stored = await world.store.get_conversation(world.user.id, conversation.id)
        assert stored is not None and stored.status == "failed"
        assert stored.failure_reason == "summary timed out after 10 s"


async def test_a_client_error_fails_at_once_and_retry_after_is_honoured(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        conversation = await processing_conversation(world)
        replies = [
            httpx.Response(429, headers={"Retry-After": "400"}),
            httpx.Response(401, json={"error": "bad key"}),
        ]
        times: list[float] = []

        def handler(request: httpx.Request) -> httpx.Response:
            times.append(trio.current_time())
            return replies.pop(0)

        assert await run_openai(world, handler, rounds=2) == ["retry", "failed"]
        assert times[1] - times[0] >= 400  # not the 5 s backoff
        stored = await world.store.get_conversation(world.user.id, conversation.id)
        assert stored is not None and stored.failure_reason == "summary model answered HTTP 401"


async def test_workers_wake_up_process_and_return_on_drain(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, "https://hooks.example/m", ["memory_created"])
        wakeup = Wakeup()
        completed: list[int] = []
        all_done = trio.Event()

        def on_completed() -> None:
            completed.append(1)
            if len(completed) == 3:
                all_done.set()

        workers = ProcessingWorkers(
            world.store,
            embedded(),
            ProcessingConfig(workers=2, poll_interval_s=3600),
            world.drain,
            wakeup,
            world.on_event,
            on_completed,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(workers.run)
            await trio.sleep(10)
            started = trio.current_time()
            for _ in range(3):
                await processing_conversation(world)
            wakeup.set()
            with trio.fail_after(5):
                await all_done.wait()
            assert trio.current_time() - started < 1  # woken, not polled
            world.drain.request(30)
        page = await world.store.list_conversations(world.user.id, status="completed")
        assert len(page.items) == 3
        assert len(await world.repo.all_deliveries(world.user.id)) == 3
