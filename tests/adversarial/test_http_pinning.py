"""HTTP peers that try to pin a connection: half-sent requests, early answers, slow heads,
idle and unauthenticated connections, many connections from one address, huge request lines.

Each test runs a real server on port 0 and talks to it over raw sockets; the guard's
``connections`` statistics (``GET /v1/stats``) show what the server still holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import h11
import httpx
import pytest
import trio

from server.guard import ConnectionGuard, GuardConfig, GuardedStream
from server.serve import ServerHandle
from server.settings import Settings
from tests.adversarial._raw import connect, eof_or_reset, read_response
from tests.conftest import ADMIN_TOKEN, auth, create_user_token, start_server
from tests.helpers import wait_until

pytestmark = pytest.mark.adversarial

HALF_SENT = (
    b"POST /v1/admin/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n%b\r\n{"
)


async def _stats(server: ServerHandle) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        response = await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))
        connections: dict[str, Any] = response.json()["connections"]
        return connections


def _guard(server: ServerHandle) -> Any:
    """The guard's statistics read in-process (an HTTP request would be a connection too)."""
    return server.context.stats["connections"]()


async def _patch_then_health(port: int, token: str | None) -> tuple[int, int]:
    """The issue's reproduction: an answer before the 17-byte body, then a second request."""
    stream = await connect(port)
    extra = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    await stream.send_all(
        b"PATCH /v1/webhooks/nonexistent HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 17\r\n" + extra + b"\r\n"
    )
    await trio.sleep(0.05)
    await stream.send_all(b'{"enabled":false}')
    buffer = bytearray()
    first = await read_response(stream, buffer)
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    second = await read_response(stream, buffer)
    await stream.aclose()
    return first.status, second.status


async def test_an_early_answer_keeps_the_connection_usable(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        token = await create_user_token(client, "alice")
    with trio.fail_after(10):
        assert await _patch_then_health(server.port, None) == (401, 200)
        assert await _patch_then_health(server.port, token) == (404, 200)


@pytest.mark.parametrize("token", [None, ADMIN_TOKEN], ids=["no-token", "admin-token"])
async def test_a_half_sent_body_gets_an_answer_and_a_close(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], token: str | None
) -> None:
    """Content-Length 100000 and one byte: without a token 401 at once, with one the body
    deadline answers 408; both say ``Connection: close`` and close."""
    server = await start_server(nursery, make_settings(http_body_timeout_s=0.5))
    stream = await connect(server.port)
    extra = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    await stream.send_all(HALF_SENT % extra)
    with trio.fail_after(5):
        response = await read_response(stream)
        assert response.status == (401 if token is None else 408)
        assert response.closes
        assert await eof_or_reset(stream)
    await stream.aclose()


@pytest.mark.slow
async def test_two_hundred_half_sent_requests_pin_nothing(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    before = await _stats(server)
    streams = []
    with trio.fail_after(20):
        for _ in range(200):
            stream = await connect(server.port)
            await stream.send_all(HALF_SENT % b"")
            streams.append(stream)
        for stream in streams:
            assert await eof_or_reset(stream)
            await stream.aclose()
        # The lingering closes end within linger_s.
        await wait_until(lambda: _guard(server).open <= before["open"], poll_s=0.05)
        after = await _stats(server)
    assert after["open_fds"] <= before["open_fds"] + 2, (before, after)
    assert after["unauthenticated"] == 0


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: "],
    ids=["nothing", "half-request-line", "half-headers"],
)
async def test_a_slow_or_silent_request_head_is_closed_at_the_keep_alive_deadline(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], sent: bytes
) -> None:
    server = await start_server(nursery, make_settings(http_keep_alive_s=0.3))
    stream = await connect(server.port)
    if sent:
        await stream.send_all(sent)
    started = trio.current_time()
    with trio.fail_after(3):
        assert await eof_or_reset(stream)
    assert trio.current_time() - started < 2.0
    await stream.aclose()


async def test_unauthenticated_keep_alive_ends_at_its_lifetime_and_authenticated_does_not(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(unauthenticated_timeout_s=0.6))
    anonymous, member = await connect(server.port), await connect(server.port)
    admin = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    buffers = bytearray(), bytearray()
    served = [0, 0]
    with trio.fail_after(10):
        await trio.lowlevel.checkpoint()
        deadline = trio.current_time() + 1.5
        while trio.current_time() < deadline:
            for i, (stream, extra) in enumerate(((anonymous, b""), (member, admin))):
                try:
                    await stream.send_all(
                        b"GET /v1/stats HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"
                    )
                    await read_response(stream, buffers[i])
                    served[i] += 1
                except (EOFError, trio.BrokenResourceError):
                    pass
            await trio.sleep(0.1)
    assert 1 <= served[0] < served[1], served  # the anonymous one was cut off at ~0.6 s
    assert (await _stats(server))["unauthenticated_timeouts"] == 1
    await anonymous.aclose()
    await member.aclose()


async def test_unauthenticated_connections_per_ip_are_capped_with_a_429(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """Idle connections count until they authenticate; a closed one is released at the
    latest at the keep-alive deadline (hypercorn notices a peer's EOF only then)."""
    settings = make_settings(max_unauthenticated_per_ip=4, http_keep_alive_s=2.0)
    server = await start_server(nursery, settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        stats_token = ADMIN_TOKEN  # the stats client authenticates: it stops counting
        await client.get("/v1/stats", headers=auth(stats_token))
        held = [await connect(server.port) for _ in range(4)]
        extra = await connect(server.port)
        with trio.fail_after(5):
            response = await read_response(extra)
            assert response.status == 429
            assert response.headers["retry-after"]
            assert response.body.startswith(b'{"error":')
            assert await eof_or_reset(extra)
        await held[0].aclose()
        with trio.fail_after(5):
            await wait_until(lambda: _guard(server).unauthenticated < 4, poll_s=0.05)
        again = await connect(server.port)
        await again.send_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            assert (await read_response(again)).status == 200
        stats = (await client.get("/v1/stats", headers=auth(stats_token))).json()["connections"]
    assert stats["refused_per_ip"] == 1  # also visible on GET /v1/stats
    for stream in [*held[1:], extra, again]:
        await stream.aclose()


async def test_an_oversized_request_line_gets_a_status(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings())
    stream = await connect(server.port)
    with trio.fail_after(5):
        await stream.send_all(b"GET /health?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        response = await read_response(stream)
        assert response.status in (414, 431)
        assert await eof_or_reset(stream)
    await stream.aclose()


async def test_a_connection_that_fails_is_contained() -> None:
    """hypercorn raises ``LocalProtocolError`` when a connection is cancelled mid-response (it
    tries to send a 500 after the headers); the guard counts it, closes the socket, and the
    error never reaches the server's nursery."""
    guard = ConnectionGuard(GuardConfig(1.0, 1.0, 4), drain_deadline=lambda: math.inf)
    left, right = trio.socket.socketpair()

    async def fails(stream: GuardedStream) -> None:
        await trio.lowlevel.checkpoint()
        raise h11.LocalProtocolError("can't handle event type Response in SEND_BODY")

    with trio.fail_after(5):
        await guard.handle(trio.SocketStream(left), fails)
        assert await right.recv(1) == b""  # the guard closed its end
    right.close()
    stats = guard.statistics()
    assert (stats.connection_errors, stats.open, stats.unauthenticated) == (1, 0, 0)
