"""Conversation lifecycle on the virtual clock: timeouts, resume, sweeper, empty discards.

The MockClock runs at real speed (``rate = 1``) so sockets and threads work normally and
``fail_after`` still catches hangs; ``mock_clock.jump()`` skips the two-minute timeouts (each
test's ``fail_after`` budget is its jumps plus ~30 s of real time).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from server.serve import ServerHandle
from server.settings import Settings
from server.testing import Received, frames, open_listen, pcm
from tests.conftest import auth, create_user_token, start_server
from tests.helpers import wait_until, wait_until_true

JUMPS_S = 125.0
QUIET = {"idle_timeout_s": 100_000.0, "heartbeat_interval_s": 100_000.0}


@pytest.fixture(name="clock")
def _clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.rate = 1.0
    return mock_clock


async def _setup(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], **overrides: float
) -> tuple[ServerHandle, str]:
    server = await start_server(nursery, make_settings(**QUIET, **overrides))
    async with httpx.AsyncClient(base_url=server.url) as client:
        return server, await create_user_token(client, "alice")


async def _conversations(server: ServerHandle, token: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(
            "/v1/conversations?statuses=in_progress,processing,completed,failed",
            headers=auth(token),
        )
        return list(response.json())


def _ready(received: Received) -> bool:
    return "ready" in [e.get("status") for e in received.events]


async def test_timeout_closes_the_conversation_and_the_next_speech_opens_a_new_one(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], clock: trio.testing.MockClock
) -> None:
    server, token = await _setup(nursery, make_settings)
    with trio.fail_after(JUMPS_S + 30):
        async with open_listen(server.url, token=token) as ws:
            received = await ws.read_until(_ready)
            for frame in frames(pcm(2.0)):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: r.has("seg1 "))
            clock.jump(125)
            await ws.read_until(lambda r: "memory_processing_started" in r.event_types())
            for frame in frames(pcm(1.0, seed=2)):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: len(r.segments) == 2)
        conversations = await _conversations(server, token)
    started = next(e for e in received.events if e["type"] == "memory_processing_started")
    assert started["memory"]["status"] == "processing"
    memory_text = " ".join(s["text"] for s in started["memory"]["transcript_segments"])
    assert memory_text.startswith("seg0 ") and " seg1 " in memory_text
    newest, closed = (c["status"] for c in conversations)
    assert newest == "in_progress"
    assert closed in ("processing", "completed")  # the processing workers may already be done


async def test_reconnect_within_the_timeout_resumes_the_conversation(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], clock: trio.testing.MockClock
) -> None:
    server, token = await _setup(nursery, make_settings)
    registry = server.context.sessions
    with trio.fail_after(JUMPS_S + 30):
        for seed in (1, 2):
            async with open_listen(server.url, token=token) as ws:
                await ws.read_until(_ready)
                for frame in frames(pcm(1.0, seed=seed)):
                    await ws.send_frame(frame)
                await ws.read_until(lambda r: len(r.segments) == 1)
            # The server finishes the old session (flush, persist) before the device is back.
            await wait_until(lambda: registry.statistics().live == 0)
            clock.jump(60)
        conversations = await _conversations(server, token)
        async with httpx.AsyncClient(base_url=server.url) as client:
            full = (
                await client.get(f"/v1/conversations/{conversations[0]['id']}", headers=auth(token))
            ).json()
    assert len(conversations) == 1
    assert len(full["transcript_segments"]) == 2
    first, second = full["transcript_segments"]
    assert second["start"] - first["start"] == pytest.approx(61.0, abs=2.0)


async def test_sweeper_closes_abandoned_conversations(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], clock: trio.testing.MockClock
) -> None:
    server, token = await _setup(nursery, make_settings, sweeper_interval_s=30.0)
    store = server.context.store
    with trio.fail_after(JUMPS_S + 30):
        async with open_listen(server.url, token=token) as ws:
            await ws.read_until(_ready)
            for frame in frames(pcm(1.0)):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: len(r.segments) == 1)
        user = await store.get_user_by_name("alice")
        assert user is not None
        assert (await store.get_in_progress(user.id)) is not None
        # Abandoned means no live session: let the server finish the closed one (flush, persist)
        # first, or the jump expires its last write and the sweep skips a still-live session.
        await wait_until(lambda: server.context.sessions.statistics().live == 0)
        clock.jump(125)  # past the timeout: the next sweep closes it
        sweeper = server.components.sweeper
        await wait_until(lambda: sweeper.statistics().closed == 1)
        conversations = await _conversations(server, token)
    assert [c["status"] for c in conversations] in (["processing"], ["completed"])


async def test_sweeper_leaves_conversations_of_live_sessions_alone(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], clock: trio.testing.MockClock
) -> None:
    server, token = await _setup(nursery, make_settings, sweeper_interval_s=30.0)
    with trio.fail_after(JUMPS_S + 30):
        async with open_listen(server.url, token=token) as ws:
            await ws.read_until(_ready)
            for frame in frames(pcm(1.0)):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: len(r.segments) == 1)
            swept = await server.components.sweeper.sweep_once()
    assert swept == 0


async def test_empty_conversations_are_discarded(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], clock: trio.testing.MockClock
) -> None:
    server, token = await _setup(nursery, make_settings)
    with trio.fail_after(JUMPS_S + 30):
        async with open_listen(server.url, token=token) as ws:
            received = await ws.read_until(_ready)
            assert len(await _conversations(server, token)) == 1  # opened at session start
            clock.jump(125)
            await ws.send_frame(b"\x00")  # keepalive: wakes nothing, just proves liveness
            await wait_until(lambda: server.context.sessions.statistics().live == 1)
            store = server.context.store
            user = await store.get_user_by_name("alice")
            assert user is not None

            async def gone() -> bool:
                return await store.get_in_progress(user.id) is None

            await wait_until_true(gone)
        assert received.close_code is None
        assert await _conversations(server, token) == []
