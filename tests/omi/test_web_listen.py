"""``/v4/web/listen``: Omi's browser endpoint, authenticated by its first message.

Shapes from Omi's ``backend/routers/transcribe.py`` (``web_listen_handler``): no Authorization
header; the first message is ``{"type": "auth", "token": ...}`` (5 s to arrive), answered with
``{"type": "auth_response", "success": true}``, then the ``/v4/listen`` protocol; a refused
token gets ``{"type": "auth_response", "success": false}`` and close 1008; a malformed first
message or the timeout closes 1008 without an answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from server.serve import ServerHandle
from server.settings import Settings
from server.testing import ListenClient, Received, frames, pcm
from tests.conftest import auth, create_user_token, start_server

QUERY = "sample_rate=16000&codec=pcm16&source=desktop&include_speech_profile=false"
AUTH_OK = {"type": "auth_response", "success": True}
AUTH_FAILED = {"type": "auth_response", "success": False}


@asynccontextmanager
async def open_web(server: ServerHandle, query: str = QUERY) -> AsyncIterator[WebSocketConnection]:
    """A browser-like connection: no Authorization header."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"127.0.0.1:{server.port}", f"/v4/web/listen?{query}"
            )
            yield ws
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def read_until(
    ws: WebSocketConnection, received: Received, done: Callable[[Received], bool]
) -> Received:
    """Read into ``received`` until ``done`` or the close."""
    client = ListenClient(ws)
    client.received = received
    return await client.read_until(done)


async def read_to_close(ws: WebSocketConnection) -> Received:
    """Read until the server closes the connection."""
    return await read_until(ws, Received(), lambda r: False)


async def _first_reply(ws: WebSocketConnection) -> object:
    return json.loads(await ws.get_message())


async def test_first_message_auth_then_the_listen_protocol(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        async with open_web(server) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            reply = await _first_reply(ws)
            received = await read_until(
                ws, Received(), lambda r: "ready" in [e.get("status") for e in r.events]
            )
            for frame in frames(pcm(2.0)):
                await ws.send_message(frame)
            await read_until(ws, received, lambda r: r.has("seg1 "))
        ticket = (await client.post("/v1/listen/tickets", headers=auth(token))).json()["ticket"]
        async with open_web(server) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": ticket}))
            by_ticket = await _first_reply(ws)
    assert reply == AUTH_OK and by_ticket == AUTH_OK
    statuses = [e["status"] for e in received.events if e["type"] == "service_status"]
    assert statuses == ["initiating", "stt_initiating", "ready"]


async def test_refused_tokens_get_auth_response_false_and_1008(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        await create_user_token(client, "alice")
        replies: list[tuple[object, int | None]] = []
        for token in ("ts_not-a-token", "tk_used-or-unknown"):
            async with open_web(server) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": token}))
                first = await _first_reply(ws)
                closed = await read_to_close(ws)
                replies.append((first, closed.close_code))
    assert replies == [(AUTH_FAILED, 1008), (AUTH_FAILED, 1008)]


async def test_malformed_first_messages_close_1008_without_an_answer(
    server: ServerHandle,
) -> None:
    bad: list[str | bytes] = [
        b"\x00\x01\x02\x03",  # audio before auth
        "not json",
        json.dumps({"type": "hello", "token": "x"}),
        json.dumps({"type": "auth"}),
        json.dumps({"type": "auth", "token": ""}),
    ]
    closes = []
    with trio.fail_after(20):
        await trio.lowlevel.checkpoint()
        for message in bad:
            async with open_web(server) as ws:
                await ws.send_message(message)
                closed = await read_to_close(ws)
                closes.append((closed.close_code, closed.events, closed.close_reason))
    for code, events, reason in closes:
        assert code == 1008 and events == [] and "auth" in (reason or "")


async def test_no_auth_message_times_out_with_1008(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(web_auth_timeout_s=0.2))
    with trio.fail_after(10):
        async with open_web(server) as ws:
            started = trio.current_time()
            closed = await read_to_close(ws)
            waited = trio.current_time() - started
    assert closed.close_code == 1008 and "timeout" in (closed.close_reason or "")
    assert 0.1 < waited < 5
    server.request_shutdown(1.0)
