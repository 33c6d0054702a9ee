"""Omi's conversations REST, driven the way Omi's app drives it.

The calls and their success codes are copied from ``app/lib/backend/http/api/conversations.dart``
into ``fixtures/rest_app_calls.json``; the shapes the app parses are JSON Schemas in
``fixtures/rest_*.schema.json`` (each cites the Omi files it was written from). A real server on
port 0 with the fake STT and the embedded summariser; the client streams with the app's query.
"""

from __future__ import annotations

import json
import pathlib
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from server.serve import ServerHandle
from server.store import SegmentRow
from server.testing import Received, frames, open_listen, pcm
from tests.conftest import auth, create_user_token
from tests.fakes.receivers import open_receivers

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
#: The query Omi's app opens /v4/listen with (transcription_service.dart).
APP_QUERY = (
    "language=en&sample_rate=16000&codec=pcm16&uid=u1&include_speech_profile=true"
    "&stt_service=soniox&conversation_timeout=120"
)
CALLS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "rest_app_calls.json").read_text())


def _schema(name: str) -> Draft202012Validator:
    schemas = {p.name: json.loads(p.read_text()) for p in FIXTURES.glob("rest_*.schema.json")}
    registry: Registry[Any] = Registry().with_resources(
        (file, Resource.from_contents(s)) for file, s in schemas.items()
    )
    return Draft202012Validator(schemas[name], registry=registry, format_checker=FormatChecker())


CONVERSATION = _schema("rest_server_conversation.schema.json")
CREATED = _schema("rest_create_conversation_response.schema.json")


def _valid(validator: Draft202012Validator, value: object) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, errors


def _fill(template: Any, values: dict[str, str]) -> Any:
    """The fixture's body with its ``{name}`` placeholders filled in."""
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template
    if isinstance(template, list):
        return [_fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: _fill(item, values) for key, item in template.items()}
    return template


def _ready(received: Received) -> bool:
    return "ready" in [e.get("status") for e in received.events]


async def _stream(server: ServerHandle, token: str, seconds: float) -> Received:
    """Stream ``seconds`` of audio with the app's parameters; return what came back."""
    async with open_listen(server.url, query=APP_QUERY, token=token) as ws:
        received = await ws.read_until(_ready)
        for frame in frames(pcm(seconds)):
            await ws.send_frame(frame)
        await ws.read_until(lambda r: r.has(f"seg{int(seconds) - 1} "))
    return received


async def _seed(server: ServerHandle, user: str, now: float, **fields: object) -> str:
    """A spoken conversation straight through the store (closed unless ``in_progress``)."""
    store = server.context.store
    found = await store.get_user_by_name(user)
    assert found is not None
    conversation = await store.create_conversation(
        found.id, source="omi", language="en", timeout_s=120, now=now
    )
    rows = [
        SegmentRow(
            f"s{i}",
            conversation.id,
            i,
            f"words {i}",
            "SPEAKER_00",
            0,
            False,
            None,
            i,
            i + 1,
            "fake",
        )
        for i in range(2)
    ]
    await store.save_segments(conversation.id, rows, [], now + 2)
    if not fields.pop("in_progress", False):
        await store.close_conversation(conversation.id, now + 3)
    if fields:
        await store.update_conversation(found.id, conversation.id, fields)
    return conversation.id


@pytest.mark.slow
async def test_app_lists_force_processes_and_reads(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    """Stream, see the live conversation with ``statuses=in_progress&limit=1``, force-process it
    with ``POST /v1/conversations`` (the app's "stop"), then list with the app's own query."""
    with trio.fail_after(30):
        token = await create_user_token(client, "alice")
        older = await _seed(server, "alice", 1_000.0)  # a finished one the live one must beat
        await _stream(server, token, 2.0)
        live = await client.get(
            "/v1/conversations?statuses=in_progress&limit=1", headers=auth(token)
        )
        processed = await client.post(
            "/v1/conversations", json=CALLS["process"]["body"], headers=auth(token)
        )
        listed = await client.get(
            f"/v1/conversations?{CALLS['list']['query']}", headers=auth(token)
        )
        again = await client.post("/v1/conversations", json={}, headers=auth(token))
    assert live.status_code == 200 and isinstance(live.json(), list) and len(live.json()) == 1
    [current] = live.json()
    _valid(CONVERSATION, current)
    assert current["status"] == "in_progress" and current["id"] != older
    assert "seg0" in current["transcript_segments"][0]["text"]
    assert processed.status_code == CALLS["process"]["ok"], processed.text
    body = processed.json()
    _valid(CREATED, body)
    assert body["memory"]["id"] == current["id"] and body["memory"]["status"] == "completed"
    assert body["memory"]["structured"]["title"] and body["messages"] == []
    assert listed.status_code == CALLS["list"]["ok"]
    items = listed.json()
    for item in items:
        _valid(CONVERSATION, item)
    assert [c["id"] for c in items] == [current["id"], older]  # newest first
    assert all(c["transcript_segments"] for c in items)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


async def test_process_closes_an_in_progress_conversation_without_a_session(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        cid = await _seed(server, "alice", 1_000.0, in_progress=True)
        processed = await client.post("/v1/conversations", json={}, headers=auth(token))
    assert processed.status_code == 200
    _valid(CREATED, processed.json())
    assert processed.json()["memory"]["id"] == cid
    assert processed.json()["memory"]["status"] == "completed"


async def test_list_filters_and_both_pagings(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        ids = [await _seed(server, "alice", 1_000.0 + 100 * i) for i in range(5)]
        live = await _seed(server, "alice", 2_000.0, in_progress=True)
        await _seed(server, "alice", 900.0, discarded=True, starred=True)

        async def get(query: str) -> httpx.Response:
            response = await client.get(f"/v1/conversations?{query}", headers=auth(token))
            assert response.status_code == 200, response.text
            return response

        default = (await get("")).json()
        offset_page = (await get("limit=2&offset=2")).json()
        kept = (await get("include_discarded=false")).json()
        starred = (await get("starred=true")).json()
        both = (await get("statuses=in_progress,failed")).json()
        window = (
            await get("start_date=1970-01-01T00:20:00Z&end_date=1970-01-01T00:23:20.000Z")
        ).json()
        pages: list[list[str]] = []
        query = "limit=2"
        while True:
            page = await get(query)
            pages.append([c["id"] for c in page.json()])
            if "x-next-cursor" not in page.headers:
                break
            link = page.headers["link"]
            assert link.startswith("</v1/conversations?") and link.endswith('>; rel="next"')
            query = link[len("</v1/conversations?") : -len('>; rel="next"')]
        bad = await client.get("/v1/conversations?statuses=done", headers=auth(token))
        bad_date = await client.get("/v1/conversations?start_date=tuesday", headers=auth(token))
    newest_first = list(reversed(ids))
    assert [c["id"] for c in default] == [*newest_first, default[-1]["id"]]  # + the discarded
    assert live not in [c["id"] for c in default]  # in_progress only when asked for
    assert [c["id"] for c in offset_page] == newest_first[2:4]
    assert [c["id"] for c in kept] == newest_first
    assert len(starred) == 1 and starred[0]["starred"] and starred[0]["discarded"]
    assert [c["id"] for c in both] == [live]
    assert [c["id"] for c in window] == [ids[4], ids[3], ids[2]]  # 1200..1400, both inclusive
    assert sum(pages, []) == [c["id"] for c in default] and len(pages) == 3
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"
    assert bad_date.status_code == 400


async def test_the_apps_patch_routes(server: ServerHandle, client: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        cid = await _seed(server, "alice", 1_000.0)
        user = await server.context.store.get_user_by_name("alice")
        assert user is not None
        start = datetime(2030, 1, 2, 15, tzinfo=UTC).isoformat()
        structured = {
            "action_items": [{"description": "send notes", "completed": False}],
            "events": [{"title": "Review", "start": start, "duration": 30}],
        }
        await server.context.store.update_conversation(user.id, cid, {"structured": structured})
        base = f"/v1/conversations/{cid}"

        async def call(name: str, **values: str) -> httpx.Response:
            spec = CALLS[name]
            path = spec["path"].replace("/v1/conversations/{id}", base)
            query = spec.get("query", "").format(**values)
            body = _fill(spec["body"], {"sid": "s0", **values}) if "body" in spec else None
            response = await client.request(
                spec["method"],
                path + (f"?{query}" if query else ""),
                json=body,
                headers=auth(token),
            )
            assert response.status_code == spec["ok"], (name, response.text)
            return response

        titled = await call("title", title="Standup")
        await call("starred", bool="true")
        await call("visibility")
        await call("segment_text", text="corrected words")
        assigned = await call("assign_bulk")
        await call("events")
        await call("action_items")
        await call("action_item_text", old="send notes", new="send the notes")
        after = (await client.get(base, headers=auth(token))).json()
        await call("action_item_delete", new="send the notes")
        final = (await client.get(base, headers=auth(token))).json()
        other = await create_user_token(client, "bob")
        foreign = await client.patch(f"{base}/title?title=x", headers=auth(other))
        missing = await client.patch(f"{base}/title", headers=auth(token))
        mismatch = await client.patch(
            f"{base}/events", json={"events_idx": [0, 1], "values": [True]}, headers=auth(token)
        )
        deleted = await call("delete")
    assert (
        titled.json()["status"] == "Ok"
        and titled.json()["conversation"]["structured"]["title"] == "Standup"
    )
    _valid(CONVERSATION, assigned.json())
    _valid(CONVERSATION, after)
    assert after["starred"] is True and after["visibility"] == "shared"
    first = after["transcript_segments"][0]
    assert (first["text"], first["is_user"]) == ("corrected words", True)
    assert after["structured"]["events"][0]["created"] is True
    item = after["structured"]["action_items"][0]
    assert (
        item["completed"] is True
        and item["completed_at"]
        and item["description"] == ("send the notes")
    )
    assert final["structured"]["action_items"] == []
    assert (foreign.status_code, missing.status_code, mismatch.status_code) == (404, 400, 422)
    assert deleted.status_code == 204


async def test_generic_patch_keeps_structured_out(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    field = "structured"
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        cid = await _seed(server, "alice", 1_000.0)
        response = await client.patch(
            f"/v1/conversations/{cid}", json={field: {}}, headers=auth(token)
        )
    assert response.status_code == 422 and field in response.json()["error"]["message"]


async def test_developer_webhook_routes_map_onto_registrations(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    """Omi's ``backend/routers/users.py`` developer-webhook routes, on /v1/webhooks rows."""
    base = "/v1/users/developer/webhook"
    with trio.fail_after(30):
        token = await create_user_token(client, "alice")
        h = auth(token)
        async with open_receivers() as receivers:
            memory_url, audio_url = receivers.url("/memory"), receivers.url("/audio")
            before = (await client.get("/v1/users/developer/webhooks/status", headers=h)).json()
            set_memory = await client.post(
                f"{base}/memory_created", json={"url": memory_url}, headers=h
            )
            set_audio = await client.post(
                f"{base}/audio_bytes", json={"url": f"{audio_url},10"}, headers=h
            )
            got_memory = (await client.get(f"{base}/memory_created", headers=h)).json()
            got_audio = (await client.get(f"{base}/audio_bytes", headers=h)).json()
            got_none = (await client.get(f"{base}/day_summary", headers=h)).json()
            registered = (await client.get("/v1/webhooks", headers=h)).json()["webhooks"]
            await _seed(server, "alice", 1_000.0, in_progress=True)
            processed = await client.post("/v1/conversations", json={}, headers=h)
            await receivers.wait_for_count("/memory", 1)
            await client.post(f"{base}/audio_bytes/disable", headers=h)
            after_disable = (
                await client.get("/v1/users/developer/webhooks/status", headers=h)
            ).json()
            await client.post(f"{base}/audio_bytes/enable", headers=h)
            await client.post(f"{base}/memory_created", json={"url": ""}, headers=h)
            final = (await client.get("/v1/users/developer/webhooks/status", headers=h)).json()
            bad = await client.post(f"{base}/nonsense", json={"url": memory_url}, headers=h)
    assert before == dict.fromkeys(
        ["audio_bytes", "day_summary", "memory_created", "realtime_transcript"], False
    )
    assert set_memory.json() == {"status": "ok"} and set_audio.status_code == 200
    assert got_memory == {"url": memory_url} and got_audio == {"url": f"{audio_url},10"}
    assert got_none == {"url": ""}
    assert sorted((w["kind"], w["interval_s"]) for w in registered) == [
        ("audio_bytes", 10.0),
        ("memory_created", 5.0),
    ]
    delivered = json.loads(receivers.on("/memory")[0].body)
    assert delivered["id"] == processed.json()["memory"]["id"]
    assert after_disable["audio_bytes"] is False and after_disable["memory_created"] is True
    assert final["audio_bytes"] is True and final["memory_created"] is False
    assert bad.status_code == 422
