"""The /v1/webhooks and /v1/apps API on a real server, and memory_created end to end."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import trio
from standardwebhooks.webhooks import Webhook

from server.clock import wall_now
from server.routes.webhooks import MAX_ENDPOINTS_PER_USER
from server.serve import ServerHandle, serve
from server.settings import Settings
from server.store import SegmentRow, new_id
from server.webhooks.delivery import DeliveryConfig
from tests.conftest import auth, create_user_token, start_server
from tests.fakes.receivers import Reply, json_reply, open_receivers
from tests.helpers import wait_until, wait_until_true


async def test_webhook_crud_secrets_and_isolation(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(20):
            alice = auth(await create_user_token(client, "alice"))
            bob = auth(await create_user_token(client, "bob"))
            body = {"kind": "audio_bytes", "url": rx.url("/a?x=1"), "interval_s": 2}
            created = await client.post("/v1/webhooks", json=body, headers=alice)
            assert created.status_code == 201, created.text
            hook = created.json()
            assert hook["secret"].startswith("whsec_") and hook["interval_s"] == 2
            assert hook["kind"] == "audio_bytes" and hook["enabled"] is True
            listed = (await client.get("/v1/webhooks", headers=alice)).json()["webhooks"]
            assert [h["id"] for h in listed] == [hook["id"]]
            assert all("secret" not in h for h in listed)
            path = f"/v1/webhooks/{hook['id']}"
            assert (await client.get(path, headers=bob)).status_code == 404
            assert (
                await client.patch(path, json={"enabled": False}, headers=bob)
            ).status_code == 404
            assert (await client.delete(path, headers=bob)).status_code == 404
            assert (await client.get(f"{path}/deliveries", headers=bob)).status_code == 404
            patched = await client.patch(
                path, json={"interval_s": 9, "enabled": False}, headers=alice
            )
            assert patched.status_code == 200
            assert (patched.json()["interval_s"], patched.json()["enabled"]) == (9, False)
            rotated = await client.post(f"{path}/rotate-secret", headers=alice)
            assert rotated.status_code == 200
            assert rotated.json()["secret"] != hook["secret"]
            assert rotated.json()["previous_secret_valid_until"] is not None
            assert (await client.delete(path, headers=alice)).status_code == 204
            assert (await client.get(path, headers=alice)).status_code == 404


async def test_app_crud_refreshes_the_realtime_cache(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    realtime = server.context.stats["webhooks_realtime"]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(20):
            alice = auth(await create_user_token(client, "alice"))
            body = {"name": "Coach", "url": rx.url("/app"), "triggers": ["memory_created"]}
            created = await client.post("/v1/apps", json=body, headers=alice)
            assert created.status_code == 201, created.text
            app = created.json()
            assert app["triggers"] == ["memory_created"] and app["secret"].startswith("whsec_")
            assert realtime().endpoints == 0  # type: ignore[attr-defined]
            path = f"/v1/apps/{app['id']}"
            patch = {"triggers": ["realtime_transcript", "audio_bytes"], "name": "Coach 2"}
            patched = (await client.patch(path, json=patch, headers=alice)).json()
            assert patched["triggers"] == ["realtime_transcript", "audio_bytes"]
            assert realtime().endpoints == 1  # type: ignore[attr-defined]
            listed = (await client.get("/v1/apps", headers=alice)).json()["apps"]
            assert [(a["id"], a["name"]) for a in listed] == [(app["id"], "Coach 2")]
            assert (await client.get("/v1/webhooks", headers=alice)).json()["webhooks"] == []
            assert (await client.get(f"/v1/webhooks/{app['id']}", headers=alice)).status_code == 404
            await client.patch(path, json={"enabled": False}, headers=alice)
            assert realtime().endpoints == 0  # type: ignore[attr-defined]
            assert (await client.delete(path, headers=alice)).status_code == 204


async def test_bad_input_is_refused(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(20):
            alice = auth(await create_user_token(client, "alice"))
            good = rx.url("/hook")
            cases: list[tuple[Any, int, str]] = [
                (b"not json", 400, "invalid_json"),
                ({"kind": "nope", "url": good}, 422, "invalid_field"),
                ({"kind": "memory_created"}, 422, "invalid_field"),
                ({"kind": "memory_created", "url": good, "colour": 1}, 422, "invalid_field"),
                ({"kind": "audio_bytes", "url": good, "interval_s": 0}, 422, "invalid_field"),
                ({"kind": "audio_bytes", "url": good, "interval_s": True}, 422, "invalid_field"),
                ({"kind": "memory_created", "url": "ftp://x.test/"}, 422, "forbidden_url"),
                ({"kind": "memory_created", "url": "http://10.0.0.8/h"}, 422, "forbidden_url"),
                (
                    {"kind": "memory_created", "url": "http://169.254.169.254/"},
                    422,
                    "forbidden_url",
                ),
                ({"kind": "memory_created", "url": "http://u:p@127.0.0.1/"}, 422, "forbidden_url"),
                (
                    {"kind": "memory_created", "url": "http://[::ffff:10.0.0.1]/"},
                    422,
                    "forbidden_url",
                ),
            ]
            for body, status, code in cases:
                kwargs: dict[str, Any] = (
                    {"content": body} if isinstance(body, bytes) else {"json": body}
                )
                response = await client.post("/v1/webhooks", headers=alice, **kwargs)
                assert response.status_code == status, (body, response.text)
                assert response.json()["error"]["code"] == code
            app = {"name": "x", "url": good, "triggers": ["day_summary"]}
            assert (await client.post("/v1/apps", json=app, headers=alice)).status_code == 422
            assert (
                await client.post("/v1/webhooks", json={"kind": "memory_created", "url": good})
            ).status_code == 401


async def test_the_number_of_webhooks_per_user_is_capped(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with trio.fail_after(30):
            alice = auth(await create_user_token(client, "alice"))
            body = {"kind": "memory_created", "url": "http://127.0.0.1:9/h"}
            for _ in range(MAX_ENDPOINTS_PER_USER):
                assert (
                    await client.post("/v1/webhooks", json=body, headers=alice)
                ).status_code == 201
            over = await client.post("/v1/webhooks", json=body, headers=alice)
            assert over.status_code == 409 and over.json()["error"]["code"] == "limit_reached"


async def insert_processing_conversation(server: Any, user_id: str, texts: list[str]) -> str:
    store = server.context.store
    now = wall_now()
    conversation = await store.create_conversation(
        user_id, source="omi", language="en", timeout_s=60, now=now
    )
    rows = [
        SegmentRow(
            new_id(), conversation.id, i, text, "SPEAKER_00", 0, False, None, i, i + 0.9, "fake"
        )
        for i, text in enumerate(texts)
    ]
    await store.save_segments(conversation.id, rows, [], now)
    assert await store.close_conversation(conversation.id, now) == "processing"
    server.components.processing_wakeup.set()
    return conversation.id


async def test_memory_created_is_delivered_signed_logged_and_redeliverable(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    # The production schedule retries after 5 s; the same path runs here with a 0.2 s retry.
    short_retry = DeliveryConfig(schedule_s=(0.0, 0.2, 0.2), timeout_s=settings.webhook_timeout_s)
    server: ServerHandle = await nursery.start(
        partial(serve, settings, delivery_config=short_retry)
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(30):
            alice = auth(await create_user_token(client, "alice"))
            user_id = (await client.get("/v1/me", headers=alice)).json()["id"]
            rx.script("/m", Reply(500, b"boom"))
            hook = (
                await client.post(
                    "/v1/webhooks",
                    json={"kind": "memory_created", "url": rx.url("/m")},
                    headers=alice,
                )
            ).json()
            app = {"name": "Coach", "url": rx.url("/app"), "triggers": ["memory_created"]}
            rx.script("/app", default=json_reply({"message": "Great meeting, well done!"}))
            app_created = (await client.post("/v1/apps", json=app, headers=alice)).json()
            conversation_id = await insert_processing_conversation(
                server,
                user_id,
                ["I need to send the budget report by Friday.", "The launch review is on Tuesday."],
            )
            await rx.wait_for_count("/m", 2)  # 500 first, then the retry 0.2 s +- 20 % later
            await rx.wait_for_count("/app", 1)
        first, second = rx.on("/m")
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        body = Webhook(hook["secret"]).verify(second.body, second.headers)
        assert body["id"] == conversation_id and body["status"] == "completed"
        assert second.query == {"uid": [user_id]}
        Webhook(app_created["secret"]).verify(rx.on("/app")[0].body, rx.on("/app")[0].headers)
        log: list[dict[str, Any]] = []

        async def recorded() -> bool:  # the server records the retry's answer just after it
            nonlocal log
            url = f"/v1/webhooks/{hook['id']}/deliveries"
            log = (await client.get(url, headers=alice)).json()["deliveries"]
            return bool(log) and log[0]["status"] == "delivered"

        with trio.fail_after(10):
            await wait_until_true(recorded)
        (delivery,) = log
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
        assert [a["status"] for a in delivery["attempt_log"]] == [500, 200]
        again = await client.post(
            f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=alice
        )
        assert again.status_code == 202
        with trio.fail_after(10):
            await rx.wait_for_count("/m", 3)
        assert rx.on("/m")[2].headers["webhook-id"] == first.headers["webhook-id"]
        stats = server.context.stats
        with trio.fail_after(10):  # the app's reply is handled after the receiver answered
            await wait_until(lambda: stats["webhooks"]().app_messages > 0)  # type: ignore[attr-defined]
        assert stats["webhooks"]().app_messages == 1  # type: ignore[attr-defined]
        assert stats["processing"]().completed == 1  # type: ignore[attr-defined]
        conversation = (
            await client.get(f"/v1/conversations/{conversation_id}", headers=alice)
        ).json()
        assert conversation["status"] == "completed" and conversation["structured"]["action_items"]
