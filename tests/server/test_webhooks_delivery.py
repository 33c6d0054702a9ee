"""Durable delivery on the virtual clock: schedule, same webhook-id, 410, Retry-After, leases."""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import trio
import trio.testing
from standardwebhooks.webhooks import Webhook

import lanes
from server.clock import wall_now
from server.webhooks.delivery import SVIX_SCHEDULE_S, DeliveryConfig, DeliveryWorkers, next_delay_s
from server.webhooks.payloads import append_query, dumps, reply_message
from server.webhooks.signing import new_secret
from tests.fakes.webhook_world import World, add_endpoint, open_world

URL = "https://hooks.example/receive?team=7"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the mock endpoint received, with the virtual time it arrived."""

    at: float
    url: httpx.URL
    headers: dict[str, str]
    body: bytes


@dataclass(eq=False)
class Endpoints:
    """A scripted endpoint behind ``httpx.MockTransport``."""

    replies: list[Callable[[], httpx.Response]] = field(default_factory=list)
    default: Callable[[], httpx.Response] = lambda: httpx.Response(200, text="ok")
    hang: bool = False
    seen: list[Seen] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(trio.current_time(), request.url, dict(request.headers), request.content)
        self.seen.append(seen)
        self.arrived.set()
        self.arrived = trio.Event()
        if self.hang:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return self.replies.pop(0)() if self.replies else self.default()


def reference_signed(secret: str, seen: Seen) -> bool:
    """Check a request's signature with the standardwebhooks reference library's signer."""
    stamp = datetime.fromtimestamp(int(seen.headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(seen.headers["webhook-id"], stamp, seen.body.decode())
    return expected in seen.headers["webhook-signature"].split(" ")


@asynccontextmanager
async def delivering(
    world: World, endpoints: Endpoints, config: DeliveryConfig
) -> AsyncIterator[DeliveryWorkers]:
    """Run delivery workers against the mock endpoint for the block, then drain them."""
    transport = httpx.MockTransport(endpoints.handle)
    async with lanes.open_http_lane("webhooks", transport=transport) as lane:
        workers = DeliveryWorkers(
            world.repo, lane, config, world.drain, world.on_event, rng=random.Random(7)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(workers.run)
            yield workers
            world.drain.request(60)


async def queue_memory(world: World, body: object | None = None) -> None:
    payload = dumps(body if body is not None else {"id": "c1", "status": "completed"})
    assert await world.repo.enqueue(world.user.id, "memory_created", payload, wall_now()) >= 1


async def wait_for(endpoints: Endpoints, count: int) -> None:
    """Wait until ``count`` requests arrived (the caller bounds the wait)."""
    await trio.lowlevel.checkpoint()
    while len(endpoints.seen) < count:
        await endpoints.arrived.wait()


async def test_retry_schedule_keeps_the_webhook_id_and_signs_each_attempt(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        endpoint = await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(replies=[lambda: httpx.Response(500)] * 3)
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=3600)):
            await queue_memory(world)
            with trio.fail_after(4000):
                await wait_for(endpoints, 4)
                await trio.sleep(5)
        seen = endpoints.seen
        assert len(seen) == 4
        assert len({s.headers["webhook-id"] for s in seen}) == 1
        stamps = [int(s.headers["webhook-timestamp"]) for s in seen]
        assert stamps == sorted(stamps) and len(set(stamps)) == 4
        assert all(reference_signed(endpoint.secret, s) for s in seen)
        assert all(json.loads(s.body) == {"id": "c1", "status": "completed"} for s in seen)
        assert all(s.url.params.get("uid") == world.user.id for s in seen)
        assert all(s.url.params.get("team") == "7" for s in seen)
        gaps = [b.at - a.at for a, b in zip(seen, seen[1:], strict=False)]
        for gap, planned in zip(gaps, SVIX_SCHEDULE_S[1:], strict=False):
            assert planned * 0.8 - 0.5 <= gap <= planned * 1.2 + 0.5, (gaps, planned)
        (delivery,) = await world.repo.all_deliveries(world.user.id)
        assert (delivery.status, delivery.attempts, delivery.last_status) == ("delivered", 4, 200)
        assert [a.status for a in delivery.attempt_log] == [500, 500, 500, 200]
        assert [a.error for a in delivery.attempt_log][:3] == ["HTTP 500"] * 3


async def test_gives_up_after_the_last_attempt(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(default=lambda: httpx.Response(502))
        config = DeliveryConfig(schedule_s=(0, 10, 20), poll_interval_s=3600)
        async with delivering(world, endpoints, config) as workers:
            await queue_memory(world)
            with trio.fail_after(500):
                await wait_for(endpoints, 3)
                await trio.sleep(100)
        assert len(endpoints.seen) == 3
        (delivery,) = await world.repo.all_deliveries(world.user.id)
        assert (delivery.status, delivery.attempts) == ("failed", 3)
        assert workers.statistics().failed == 1


async def test_410_disables_the_endpoint_and_fails_what_is_queued(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        endpoint = await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(default=lambda: httpx.Response(410))
        await queue_memory(world, {"n": 1})
        await queue_memory(world, {"n": 2})
        async with delivering(world, endpoints, DeliveryConfig(workers=1)) as workers:
            with trio.fail_after(60):
                await wait_for(endpoints, 1)
                await trio.sleep(30)
            payload = dumps({"n": 3})
            assert await world.repo.enqueue(world.user.id, "memory_created", payload, 0) == 0
        assert len(endpoints.seen) == 1
        stored = await world.repo.get_endpoint(world.user.id, "webhook", endpoint.id)
        assert stored is not None and not stored.enabled
        assert stored.disabled_reason == "410 Gone"
        deliveries = await world.repo.all_deliveries(world.user.id)
        second, first = sorted(deliveries, key=lambda d: d.attempts)
        assert (first.status, first.last_status) == ("failed", 410)
        assert (second.status, second.last_error, second.attempts) == (
            "failed",
            "endpoint disabled",
            0,
        )
        assert workers.statistics().disabled_endpoints == 1


async def test_retry_after_on_503_and_429_is_honoured(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(
            replies=[
                lambda: httpx.Response(503, headers={"Retry-After": "120"}),
                lambda: httpx.Response(429, headers={"Retry-After": "900"}),
            ]
        )
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=3600)):
            await queue_memory(world)
            with trio.fail_after(3000):
                await wait_for(endpoints, 3)
        first, second, third = (s.at for s in endpoints.seen)
        assert 120 <= second - first <= 125  # not 5 s: Retry-After wins
        assert 900 <= third - second <= 905  # not 5 min: Retry-After wins


async def test_redirects_are_failures_and_never_followed(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(
            replies=[lambda: httpx.Response(302, headers={"Location": "https://elsewhere.test/"})]
        )
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=3600)):
            await queue_memory(world)
            with trio.fail_after(60):
                await wait_for(endpoints, 2)
        assert {s.url.host for s in endpoints.seen} == {"hooks.example"}
        (delivery,) = await world.repo.all_deliveries(world.user.id)
        assert delivery.attempt_log[0].status == 302
        assert "redirects are not followed" in (delivery.attempt_log[0].error or "")


async def test_a_hanging_endpoint_times_out_per_attempt(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"])
        endpoints = Endpoints(hang=True)
        config = DeliveryConfig(timeout_s=3, schedule_s=(0, 10), poll_interval_s=3600)
        async with delivering(world, endpoints, config) as workers:
            await queue_memory(world)
            with trio.fail_after(200):
                await wait_for(endpoints, 2)
                await trio.sleep(10)
        (delivery,) = await world.repo.all_deliveries(world.user.id)
        assert delivery.status == "failed"
        assert [a.error for a in delivery.attempt_log] == ["timed out after 3 s"] * 2
        assert all(2.9 <= a.duration_s <= 3.5 for a in delivery.attempt_log)
        assert workers.statistics().timeouts == 2


async def test_a_lease_lost_mid_attempt_is_sent_again_with_the_same_id(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"])
        await queue_memory(world)
        (first,) = await world.repo.claim_due(wall_now(), 30, 10)  # a worker that then dies
        assert await world.repo.claim_due(wall_now(), 30, 10) == []  # leased: nobody else
        await trio.sleep(31)
        (again,) = await world.repo.claim_due(wall_now(), 30, 10)
        assert again.delivery.message_id == first.delivery.message_id
        assert again.delivery.attempts == 2 and again.payload == first.payload


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        old = await add_endpoint(world, URL, ["memory_created"])
        new = new_secret()
        await world.repo.rotate_secret(
            world.user.id, "webhook", old.id, new, wall_now() + 3600, wall_now()
        )
        endpoints = Endpoints()
        async with delivering(world, endpoints, DeliveryConfig()):
            await queue_memory(world)
            with trio.fail_after(60):
                await wait_for(endpoints, 1)
            await trio.sleep(3601)
            await queue_memory(world)
            with trio.fail_after(60):
                await wait_for(endpoints, 2)
        during, after = endpoints.seen
        assert reference_signed(old.secret, during) and reference_signed(new, during)
        assert reference_signed(new, after) and not reference_signed(old.secret, after)


async def test_an_apps_reply_message_is_relayed_to_the_user(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        app = await add_endpoint(world, URL, ["memory_created"], owner="app", name="Coach")
        endpoints = Endpoints(default=lambda: httpx.Response(200, json={"message": "Nice talk!"}))
        async with delivering(world, endpoints, DeliveryConfig()):
            await queue_memory(world)
            with trio.fail_after(60):
                await wait_for(endpoints, 1)
                await trio.sleep(1)
        assert world.events == [
            (
                world.user.id,
                {"type": "app_message", "app_id": app.id, "name": "Coach", "message": "Nice talk!"},
            )
        ]


async def test_idle_workers_return_at_once_when_drained(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world, lanes.open_http_lane("w") as lane:
        workers = DeliveryWorkers(world.repo, lane, DeliveryConfig(), world.drain, world.on_event)
        async with trio.open_nursery() as nursery:
            await nursery.start(workers.run)
            await trio.sleep(1)
            started = trio.current_time()
            world.drain.request(30)
        assert trio.current_time() - started < 0.1


def test_next_delay_follows_the_schedule_with_bounded_jitter() -> None:
    config = DeliveryConfig()
    rng = random.Random(1)
    for attempts, planned in enumerate(SVIX_SCHEDULE_S[1:], start=1):
        delay = next_delay_s(config, attempts, None, rng)
        assert delay is not None and planned * 0.8 <= delay <= planned * 1.2
    assert next_delay_s(config, len(SVIX_SCHEDULE_S), None, rng) is None
    assert next_delay_s(config, 1, 60.0, rng) == 60.0
    assert next_delay_s(config, 1, 10**9, rng) == config.max_retry_after_s


def test_append_query_uses_the_right_separator() -> None:
    assert append_query("https://a.test/x", {"uid": "u 1"}) == "https://a.test/x?uid=u+1"
    assert append_query("https://a.test/x?k=v", {"uid": "u"}) == "https://a.test/x?k=v&uid=u"
    assert (
        append_query("https://a.test/x?k=v#frag", {"sample_rate": "16000", "uid": "u"})
        == "https://a.test/x?k=v&sample_rate=16000&uid=u"
    )


def test_reply_message_needs_more_than_five_characters() -> None:
    assert reply_message(b'{"message": "hello!"}') == "hello!"
    assert reply_message(b'{"message": "hello"}') is None
    assert reply_message(b"not json") is None
    assert reply_message(b'["message"]') is None
