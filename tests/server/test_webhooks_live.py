"""Webhooks driven by a real /v4/listen session on a real server (fake STT, loopback receivers)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import trio

from lanes import target_key, target_label
from server.settings import Settings
from server.stt.fake import fake_text
from server.testing import RATE, frames, open_listen, pcm
from tests.conftest import ADMIN_TOKEN, auth, create_user_token, start_server
from tests.fakes.receivers import json_reply, open_receivers
from tests.server.test_webhooks_api import insert_processing_conversation

SECOND = RATE * 2


async def test_a_live_session_feeds_webhooks_and_gets_their_events(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(webhook_timeout_s=5.0))
    audio = pcm(3.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(30):
            token = await create_user_token(client, "alice")
            user_id = (await client.get("/v1/me", headers=auth(token))).json()["id"]

            async def register(path: str, body: dict[str, object]) -> None:
                response = await client.post(path, json=body, headers=auth(token))
                assert response.status_code == 201, response.text

            for _ in range(6):
                await register(
                    "/v1/webhooks", {"kind": "realtime_transcript", "url": rx.url("/hang")}
                )
            await register("/v1/webhooks", {"kind": "realtime_transcript", "url": rx.url("/rt")})
            await register(
                "/v1/webhooks", {"kind": "audio_bytes", "url": rx.url("/audio"), "interval_s": 1}
            )
            rx.script("/app", default=json_reply({"message": "You sound productive today!"}))
            await register(
                "/v1/apps",
                {"name": "Coach", "url": rx.url("/app"), "triggers": ["realtime_transcript"]},
            )

            async with open_listen(server.url, token=token) as ws:
                received = ws.received
                await ws.read_until(lambda r: "ready" in [e.get("status") for e in r.events])
                for frame in frames(audio):
                    await ws.send_frame(frame)
                await ws.read_until(lambda r: r.has("seg2 "))
                segments_done = trio.current_time()
                while not any(b"seg2 " in q.body for q in rx.on("/rt")):
                    await rx.wait_for_count("/rt", len(rx.on("/rt")) + 1)
                rt_lag_s = trio.current_time() - segments_done
                await ws.read_until(lambda r: "app_message" in r.event_types())
                conversation_id = await insert_processing_conversation(
                    server,
                    user_id,
                    ["We will ship the beta on Friday.", "Priya will fix the sync bug."],
                )
                await ws.read_until(lambda r: "memory_created" in r.event_types())
                await rx.wait_for_count("/audio", 2)
            shown = (await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))).text
    expected = " ".join(fake_text(i, audio[i * SECOND : (i + 1) * SECOND]) for i in range(3))
    assert received.joined() == expected  # the session itself is unaffected by the hanging hooks
    assert rt_lag_s < 1.0
    # Omi's semantics: each post holds only pieces new since the last one; appended in order
    # (as Omi's plugins do) they are the transcript, every word once.
    posted = [s for r in rx.on("/rt") for s in json.loads(r.body)["segments"]]
    assert len({s["id"] for s in posted}) == len(posted)
    assert " ".join(s["text"] for s in posted) == expected
    (app_event,) = [e for e in received.events if e["type"] == "app_message"][:1]
    assert app_event["name"] == "Coach" and app_event["message"] == "You sound productive today!"
    (memory,) = [e for e in received.events if e["type"] == "memory_created"]
    assert memory["memory"]["id"] == conversation_id and memory["memory"]["status"] == "completed"
    assert all(len(q.body) == SECOND for q in rx.on("/audio"))
    assert all(q.query["sample_rate"] == ["16000"] for q in rx.on("/audio"))
    assert len(rx.on("/hang")) == 6
    # A webhook URL's path may be its secret: the operator's statistics show a digest of it.
    assert target_label(target_key(rx.url("/hang"))) in shown
    assert all(rx.url(path) not in shown for path in ("/hang", "/rt", "/app", "/audio"))
    stats = server.context.stats["webhooks_realtime"]()
    assert stats.sent >= 3  # type: ignore[attr-defined]
