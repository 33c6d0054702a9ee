"""The stock app's session and Omi's own plugins against a real server (fake STT, port 0).

The client uses the app's query and parsing rules (:mod:`tests.omi.app_client`); the receivers
are written like Omi's plugins (:mod:`tests.omi.plugins`). A conversation is force-processed
the way the sweeper does it (closed in the store, processing woken) while the app is connected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from server.clock import wall_now
from server.serve import ServerHandle
from server.settings import Settings
from server.stt.fake import fake_text
from tests.conftest import auth, create_user_token, start_server
from tests.fakes.receivers import Receivers, open_receivers
from tests.omi.app_client import AppView, app_query, read_app
from tests.omi.plugins import ConversationFeedback, CursingChecker, Mentor
from tests.server.listen_client import RATE, frames, open_listen, pcm

SECOND = RATE * 2
APP_STT = "soniox"  # the app sends its own model; Omi treats it as a hint (omirest)


async def _register(client: httpx.AsyncClient, token: str, path: str, body: Any) -> Any:
    response = await client.post(path, json=body, headers=auth(token))
    assert response.status_code == 201, response.text
    return response.json()


async def _plugins(client: httpx.AsyncClient, token: str, rx: Receivers) -> dict[str, Any]:
    """Mentor as an app and as a developer webhook, the cursing checker, conversation feedback."""
    mentor, dev_mentor, cursing, feedback = (
        Mentor(),
        Mentor(),
        CursingChecker(),
        ConversationFeedback(),
    )
    for path, plugin in (
        ("/mentor", mentor), ("/dev-mentor", dev_mentor), ("/cursing", cursing),
        ("/feedback", feedback),
    ):  # fmt: skip
        rx.handle(path, plugin)
    rt = ["realtime_transcript"]
    await _register(
        client, token, "/v1/apps", {"name": "Mentor", "url": rx.url("/mentor"), "triggers": rt}
    )
    await _register(
        client, token, "/v1/apps", {"name": "Curse", "url": rx.url("/cursing"), "triggers": rt}
    )
    app = await _register(
        client,
        token,
        "/v1/apps",
        {"name": "Feedback", "url": rx.url("/feedback"), "triggers": ["memory_created"]},
    )
    assert app["delivery"] == "once"  # Omi apps' default
    hook = await _register(
        client, token, "/v1/webhooks", {"kind": "realtime_transcript", "url": rx.url("/dev-mentor")}
    )
    assert hook["delivery"] == "at_least_once"  # developer webhooks' default
    return {"mentor": mentor, "dev": dev_mentor, "cursing": cursing, "feedback": feedback}


async def _force_process(server: ServerHandle, user_id: str, segments: int) -> str:
    """Close the user's live conversation once its segments are stored, and wake processing."""
    store = server.context.store
    registry = server.context.sessions
    (session,) = list(registry.sessions_of(user_id))
    conversation_id: str = session.conversation_id
    while True:
        stored = await store.get_conversation(user_id, conversation_id, with_segments=True)
        if stored is not None and len(stored.segments) >= segments:
            break
        await trio.sleep(0.05)
    assert await store.close_conversation(conversation_id, wall_now()) == "processing"
    server.context.processing_wakeup.set()
    return conversation_id


async def _words_posted(mentor: Mentor, uid: str, count: int) -> None:
    await trio.lowlevel.checkpoint()
    while len(mentor.words(uid)) < count:
        await mentor.wait_answered()


async def test_the_app_streams_and_omis_plugins_count_every_word_once(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(webhook_timeout_s=5.0))
    audio = pcm(6.0)
    spoken = " ".join(fake_text(i, audio[i * SECOND : (i + 1) * SECOND]) for i in range(6))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(30):
            token = await create_user_token(client, "alice")
            uid = (await client.get("/v1/me", headers=auth(token))).json()["id"]
            plugins = await _plugins(client, token, rx)
            query = app_query(stt_service=APP_STT, source="not-an-omi-source")
            async with open_listen(server, query, token) as ws:
                view = await read_app(ws, AppView(), lambda v: bool(v.of_type("service_status")))
                await ws.send_message("hello?")  # not JSON: Omi ignores it
                await ws.send_message("[" * 5000 + "]" * 5000)  # too deep to parse: ignored
                for n, frame in enumerate(frames(audio)):
                    await ws.send_message(frame)
                    if n % 10 == 9:
                        await trio.sleep(0.05)  # paced: several realtime posts, not one
                await read_app(ws, view, lambda v: "seg5 " in v.transcript() + " ")
                for name in ("mentor", "dev"):
                    await _words_posted(plugins[name], uid, len(spoken.split()))
                conversation_id = await _force_process(server, uid, 1)
                await read_app(ws, view, lambda v: bool(v.of_type("memory_created")))
            posts = [json.loads(r.body) for r in rx.on("/mentor")]
    assert view.problems == [] and view.close_code is None
    assert view.transcript() == spoken
    for name in ("mentor", "dev", "cursing"):
        plugin = plugins[name]
        assert plugin.problems == [] and set(plugin.statuses) == {200}, name
    assert len(posts) >= 2 and all(p["session_id"] == uid for p in posts)
    assert plugins["mentor"].words(uid) == spoken.split()  # every word exactly once
    assert plugins["dev"].words(uid) == spoken.split()
    (created,) = view.of_type("memory_created")
    memory = created["memory"]
    assert memory["id"] == conversation_id and memory["source"] == "omi"  # Omi's default
    assert all(e["start"] for e in memory["structured"]["events"])
    feedback = plugins["feedback"]
    assert len(feedback.conversations) == 1 and feedback.problems == []
    (message,) = created["messages"]  # the feedback app's reply as an Omi chat message
    assert message["text"].startswith("nice chat about") and message["sender"] == "ai"
    assert view.unknown_events.count("app_message") == 1  # the extra event, ignored by the app


@pytest.mark.slow
async def test_custom_stt_suggested_transcripts_are_the_transcript_and_replies_reach_the_app(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(webhook_timeout_s=5.0))
    said = [
        {"text": "Hey Omi, what do you think about the launch plan?", "start": 0.0, "end": 2.5},
        {"text": "Oh shit, I forgot the slides.", "start": 3.0, "end": 4.5, "speaker_id": 1},
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, open_receivers() as rx:
        with trio.fail_after(30):
            token = await create_user_token(client, "bob")
            uid = (await client.get("/v1/me", headers=auth(token))).json()["id"]
            plugins = await _plugins(client, token, rx)
            async with open_listen(
                server, app_query(stt_service=APP_STT, custom_stt=True), token
            ) as ws:
                view = await read_app(ws, AppView(), lambda v: bool(v.of_type("service_status")))
                for frame in frames(pcm(2.0)):  # audio still flows; the device transcribes it
                    await ws.send_message(frame)
                for segment in said:
                    message = {"type": "suggested_transcript", "segments": [segment]}
                    await ws.send_message(json.dumps({**message, "stt_provider": "on_device"}))
                await read_app(ws, view, lambda v: "slides" in v.transcript())
                await _words_posted(plugins["mentor"], uid, 14)
                while not rx.on("/cursing") or "app_message" not in view.unknown_events:
                    await read_app(ws, view, lambda v: "app_message" in v.unknown_events)
                await _force_process(server, uid, 2)
                await read_app(ws, view, lambda v: bool(v.of_type("memory_created")))
    assert view.problems == []
    assert view.transcript() == " ".join(s["text"] for s in said)  # no STT of the audio
    assert {s["stt_provider"] for s in view.segments.values()} == {"on_device"}
    assert plugins["mentor"].notifications == 1  # the codeword was heard, once
    (created,) = view.of_type("memory_created")
    texts = [m["text"] for m in created["messages"]]
    assert "Do not curse" in texts  # the realtime reply, kept for memory_created
    assert any(t.startswith("nice chat about") for t in texts)
