"""The HTTP API against a real server on port 0: statuses, auth, isolation, pagination."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
import trio

from server.serve import ServerHandle
from server.settings import Settings
from tests.conftest import ADMIN_TOKEN, auth, create_user_token, start_server


def _error(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


ALL = "statuses=in_progress,processing,completed,failed"


async def _conversation(
    server: ServerHandle, user: str, *, now: float, status: str = "in_progress", title: str = ""
) -> str:
    """Create a conversation with one segment straight through the store."""
    store = server.context.store
    found = await store.get_user_by_name(user)
    assert found is not None
    conversation = await store.create_conversation(
        found.id, source="omi", language="en", timeout_s=120, now=now
    )
    from server.store import SegmentRow

    row = SegmentRow(
        id=f"s-{conversation.id}",
        conversation_id=conversation.id,
        idx=0,
        text=f"hello from {user}",
        speaker="SPEAKER_00",
        speaker_id=0,
        is_user=False,
        person_id=None,
        start_s=0.0,
        end_s=1.0,
        stt_provider="fake",
    )
    await store.save_segments(conversation.id, [row], [], now + 1)
    if status != "in_progress":
        assert await store.close_conversation(conversation.id, now + 2) == "processing"
    if title:
        await store.update_conversation(found.id, conversation.id, {"title": title})
    return conversation.id


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


async def test_auth_errors(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        missing = await client.get("/v1/conversations")
        wrong = await client.get("/v1/conversations", headers=auth("ts_not-a-token"))
        token = await create_user_token(client, "alice")
        forbidden = await client.post("/v1/admin/users", json={"name": "eve"}, headers=auth(token))
    assert missing.status_code == 401 and _error(missing)["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert forbidden.status_code == 403 and _error(forbidden)["code"] == "forbidden"


async def test_not_found_and_method_not_allowed_are_json(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        missing = await client.get("/v1/conversations/nope", headers=auth(token))
        no_route = await client.get("/v1/nothing-here", headers=auth(token))
        wrong_method = await client.put("/v1/conversations/nope", headers=auth(token))
    assert missing.status_code == 404 and _error(missing)["code"] == "not_found"
    assert no_route.status_code == 404 and _error(no_route)
    assert wrong_method.status_code == 405 and _error(wrong_method)
    assert "PATCH" in wrong_method.headers["allow"]


async def test_bad_requests(server: ServerHandle, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        cid = await _conversation(server, "alice", now=1_000.0)
        malformed = await client.patch(
            f"/v1/conversations/{cid}", content=b"{oops", headers=auth(token)
        )
        not_object = await client.patch(f"/v1/conversations/{cid}", json=[1], headers=auth(token))
        bad_limit = await client.get("/v1/conversations?limit=0", headers=auth(token))
        bad_status = await client.get("/v1/conversations?status=weird", headers=auth(token))
        bad_since = await client.get("/v1/conversations?since=yesterday", headers=auth(token))
        unknown_field = await client.patch(
            f"/v1/conversations/{cid}", json={"status": "completed"}, headers=auth(token)
        )
        wrong_type = await client.patch(
            f"/v1/conversations/{cid}", json={"starred": "yes"}, headers=auth(token)
        )
    for response in (malformed, not_object, bad_limit, bad_status, bad_since):
        assert response.status_code == 400, response.text
        _error(response)
    assert unknown_field.status_code == 422 and "status" in _error(unknown_field)["message"]
    assert wrong_type.status_code == 422 and "starred" in _error(wrong_type)["message"]


async def test_body_too_large(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(http_max_body_bytes=2048))
    async with httpx.AsyncClient(base_url=server.url) as client:
        with trio.fail_after(10):
            token = await create_user_token(client, "alice")
            response = await client.patch(
                "/v1/conversations/x",
                content=b"{" + b" " * 10_000 + b"}",
                headers={**auth(token), "content-type": "application/json"},
            )
    assert response.status_code == 413
    _error(response)


async def test_rate_limit_gives_429_with_retry_after(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(api_burst=3, api_rate_per_s=0.5))
    async with httpx.AsyncClient(base_url=server.url) as client:
        with trio.fail_after(10):
            token = await create_user_token(client, "alice")
            statuses = [(await client.get("/v1/me", headers=auth(token))) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    assert _error(statuses[-1])["code"] == "rate_limited"


async def test_draining_server_answers_503_and_not_ready(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(drain_readiness_s=5.0))
    async with httpx.AsyncClient(base_url=server.url) as client:
        with trio.fail_after(10):
            token = await create_user_token(client, "alice")
            server.drain.request(30)  # begin draining; readiness stays visible for 5 s
            busy = await client.get("/v1/me", headers=auth(token))
            ready = await client.get("/ready")
            health = await client.get("/health")
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert _error(busy)["code"] == "shutting_down"
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert health.status_code == 200


async def test_users_never_see_each_others_conversations(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        alice = await create_user_token(client, "alice")
        bob = await create_user_token(client, "bob")
        mine = await _conversation(server, "alice", now=1_000.0)
        theirs = await _conversation(server, "bob", now=1_001.0)
        listed = (
            await client.get("/v1/conversations?statuses=in_progress", headers=auth(alice))
        ).json()
        get_other = await client.get(f"/v1/conversations/{theirs}", headers=auth(alice))
        patch_other = await client.patch(
            f"/v1/conversations/{theirs}", json={"title": "x"}, headers=auth(alice)
        )
        delete_other = await client.delete(f"/v1/conversations/{theirs}", headers=auth(alice))
        still_there = await client.get(f"/v1/conversations/{theirs}", headers=auth(bob))
    assert [c["id"] for c in listed] == [mine]
    assert {get_other.status_code, patch_other.status_code, delete_other.status_code} == {404}
    assert still_there.status_code == 200
    assert still_there.json()["transcript_segments"][0]["text"] == "hello from bob"


async def test_pagination_newest_first_with_filters(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        ids = [
            await _conversation(
                server,
                "alice",
                now=1_000.0 + 100 * i,
                status="processing" if i % 2 else "in_progress",
            )
            for i in range(5)
        ]
        seen: list[str] = []
        links: list[str] = []
        cursor = None
        while True:
            query = f"/v1/conversations?limit=2&{ALL}" + (f"&cursor={cursor}" if cursor else "")
            page = await client.get(query, headers=auth(token))
            seen += [c["id"] for c in page.json()]
            cursor = page.headers.get("x-next-cursor")
            if cursor is None:
                break
            links.append(page.headers["link"])
        processing = (
            await client.get("/v1/conversations?status=processing", headers=auth(token))
        ).json()
        window = (
            await client.get(f"/v1/conversations?since=1150&until=1350&{ALL}", headers=auth(token))
        ).json()
    assert seen == list(reversed(ids))
    assert len(links) == 2 and links[0].endswith('>; rel="next"') and "cursor=" in links[0]
    assert [c["id"] for c in processing] == [ids[3], ids[1]]
    assert {c["id"] for c in window} == {ids[2], ids[3]}


async def test_get_patch_delete_round_trip(server: ServerHandle, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        cid = await _conversation(server, "alice", now=1_000.0)
        got = (await client.get(f"/v1/conversations/{cid}", headers=auth(token))).json()
        patched = await client.patch(
            f"/v1/conversations/{cid}",
            json={"title": "Standup", "starred": True},
            headers=auth(token),
        )
        deleted = await client.delete(f"/v1/conversations/{cid}", headers=auth(token))
        gone = await client.get(f"/v1/conversations/{cid}", headers=auth(token))
    assert got["id"] == cid and got["status"] == "in_progress"
    assert got["transcript_segments"][0]["speaker"] == "SPEAKER_00"
    assert patched.status_code == 200
    assert patched.json()["structured"]["title"] == "Standup" and patched.json()["starred"] is True
    assert deleted.status_code == 204 and gone.status_code == 404


async def test_tickets_and_tokens_stay_out_of_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        response = await client.post("/v1/listen/tickets", headers=auth(token))
        await client.get("/v1/me", headers=auth(token))
        await client.get("/v1/me", headers=auth("ts_wrong"))
    assert response.status_code == 201
    assert response.json()["ticket"].startswith("tk_") and response.json()["expires_in_s"] > 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in text and response.json()["ticket"] not in text and ADMIN_TOKEN not in text


async def test_stats_needs_admin(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        token = await create_user_token(client, "alice")
        denied = await client.get("/v1/stats", headers=auth(token))
        stats = await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))
    assert denied.status_code == 403
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert {"storage", "loop_lag", "sessions", "stt", "sweeper"} <= set(body)
    assert body["storage"]["capacity"] == 4 and body["sessions"]["live"] == 0
