"""``delivery``: ``once`` (Omi apps: one try) and ``at_least_once`` (retried), on the virtual clock.

Omi's apps get ``memory_created`` once (``backend/utils/app_integrations.py``
``trigger_external_integrations``: one POST per app, no retry); its plugins do not deduplicate
on ``webhook-id`` (``plugins/basic/conversation_created.py`` notifies on every call), so a retry
notifies the user twice.
"""

from __future__ import annotations

import pathlib
import sqlite3

import httpx
import trio
import trio.testing

from server.clock import wall_now
from server.webhooks import _sql
from server.webhooks.delivery import DeliveryConfig
from server.webhooks.payloads import dumps
from server.webhooks.repository import JSON_CONTENT_TYPE
from tests.fakes.webhook_world import add_endpoint, open_world
from tests.omi.plugins import schema
from tests.server.test_webhooks_delivery import Endpoints, delivering, queue_memory, wait_for

URL = "https://plugin.example/conversation-feedback"


async def test_once_is_tried_once_and_at_least_once_is_retried(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        app = await add_endpoint(
            world, URL + "?app", ["memory_created"], owner="app", delivery="once"
        )
        hook = await add_endpoint(world, URL + "?dev", ["memory_created"])
        endpoints = Endpoints(default=lambda: httpx.Response(500))
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=3600)):
            await queue_memory(world)
            with trio.fail_after(200_000):
                await wait_for(endpoints, 5)  # the webhook's retries (Svix schedule)
                with trio.move_on_after(150_000):  # past the whole schedule
                    await trio.sleep_forever()
        by_endpoint = {d.endpoint_id: d for d in await world.repo.all_deliveries(world.user.id)}
    to_app = [s for s in endpoints.seen if "app" in s.url.params]
    assert len(to_app) == 1  # once: one POST, however long we wait
    assert (by_endpoint[app.id].status, by_endpoint[app.id].attempts) == ("failed", 1)
    assert by_endpoint[hook.id].attempts == len(DeliveryConfig().schedule_s)


async def test_a_once_delivery_whose_attempt_was_lost_is_failed_not_resent(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_world(tmp_path) as world:
        await add_endpoint(world, URL, ["memory_created"], owner="app", delivery="once")
        await queue_memory(world)
        await world.repo.claim_due(wall_now(), 30, 10)  # a worker that dies mid-attempt
        await trio.sleep(31)
        endpoints = Endpoints()
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=1)):
            await trio.sleep(60)
        (delivery,) = await world.repo.all_deliveries(world.user.id)
    assert endpoints.seen == []  # the first attempt may have reached the app: never a second
    assert delivery.status == "failed" and "once" in (delivery.last_error or "")


async def test_deliver_now_returns_the_apps_replies_as_omi_chat_messages(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    """What the processing worker does after a completion: the ``once`` apps are tried at once
    and their replies go into ``memory_created.messages``; the workers do not send them again."""
    async with open_world(tmp_path) as world:
        app = await add_endpoint(world, URL, ["memory_created"], owner="app", delivery="once")
        await add_endpoint(world, URL + "?dev", ["memory_created"])  # at_least_once: workers
        reply = {"message": "nice chat about the launch!"}
        endpoints = Endpoints(default=lambda: httpx.Response(200, json=reply))

        def enqueue(conn: sqlite3.Connection) -> int:  # what outbox_hook does at a completion
            return _sql.enqueue(
                conn, world.user.id, "memory_created", dumps({"id": "c1"}), JSON_CONTENT_TYPE,
                wall_now(), None, message_id="msg_1", defer_once_apps_s=120,
            )  # fmt: skip

        assert await world.store.run_in_transaction(enqueue) == 2
        async with delivering(world, endpoints, DeliveryConfig(poll_interval_s=1)) as workers:
            with trio.fail_after(30):
                messages = await workers.deliver_now("msg_1")
            await trio.sleep(600)
        deliveries = await world.repo.all_deliveries(world.user.id)
    assert len(endpoints.seen) == 2 and all(d.status == "delivered" for d in deliveries)
    (message,) = messages
    validator = schema("stream_server_message.schema.json")
    assert [e.message for e in validator.iter_errors(message)] == []
    assert message["text"] == reply["message"] and message["plugin_id"] == app.id
    assert ("app_message", reply["message"]) in [
        (e["type"], e["message"]) for _, e in world.events
    ]  # still relayed live as well
