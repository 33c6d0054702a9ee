"""The fast ``/v4/listen`` transport (:mod:`server.listen.fastws`) and the guard's routing.

Real servers on port 0 with raw sockets and wsproto as the client (to send what well-behaved
client libraries do not: fragments, pings, broken UTF-8, bad handshakes), and the module itself
on a socket pair for what needs a controlled peer (a reader that never reads, the backlog).
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
import wsproto
import wsproto.events as ws_events

from server.guard import GuardedStream
from server.listen.fastws import FastWebSocket, serve_websocket
from server.listen.session import ListenSession
from server.listen.wire import AsgiWebSocket, ClientGone
from server.serve import ServerHandle
from server.settings import Settings
from server.testing import frames, open_listen, pcm
from tests.adversarial._raw import connect, eof_or_reset, read_response, ws_handshake
from tests.conftest import create_user_token, start_server
from tests.helpers import wait_until

LISTEN = "/v4/listen?codec=pcm16&sample_rate=16000"


async def _token(server: ServerHandle) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        return await create_user_token(client, "alice")


async def _events(stream: trio.SocketStream, ws: wsproto.WSConnection) -> list[ws_events.Event]:
    """Events of the next read (empty at EOF)."""
    data = await stream.receive_some(65536)
    ws.receive_data(data or None)
    return list(ws.events())


async def _read_until(
    stream: trio.SocketStream, ws: wsproto.WSConnection, done: Callable[[ws_events.Event], bool]
) -> list[ws_events.Event]:
    await trio.lowlevel.checkpoint()
    seen: list[ws_events.Event] = []
    while not any(done(e) for e in seen):
        events = await _events(stream, ws)
        if not events and ws.state is wsproto.connection.ConnectionState.CLOSED:
            break
        seen += events
    return seen


@pytest.mark.parametrize(("transport", "tick_ms"), [("fast", 50), ("fast", 0), ("hypercorn", 50)])
async def test_both_transports_serve_a_session(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], transport: str, tick_ms: int
) -> None:
    """Fast with the read poller (the default), fast with a wait per socket, hypercorn."""
    settings = make_settings(listen_transport=transport, listen_read_tick_ms=tick_ms)
    server = await start_server(nursery, settings)
    with trio.fail_after(10):
        token = await _token(server)
        async with open_listen(server.url, token=token) as client:
            await client.send_pcm(pcm(1.0))
            await client.wait_for_text("seg0 ")
            (session,) = server.context.sessions._sessions.values()
            assert isinstance(session, ListenSession)
            kind = FastWebSocket if transport == "fast" else AsgiWebSocket
            assert type(session._ws) is kind
            polled = server.context.stats.get("listen_poller")
            assert (polled is not None) == (tick_ms > 0)
            if polled is not None:  # the default minimum (20 ms), within the maximum
                stats = polled()
                assert (stats.min_tick_s, stats.max_tick_s) == (0.02, tick_ms / 1000)


async def test_http_whose_first_bytes_look_like_listen_is_served_by_hypercorn(
    server: ServerHandle,
) -> None:
    """The guard reads a connection's first bytes to route it: a plain GET of the listen path
    and a path that only starts like it reach hypercorn with those bytes intact, and the
    connection stays usable (keep-alive)."""
    with trio.fail_after(10):
        plain = await connect(server.port)
        await plain.send_all(b"GET /v4/listen HTTP/1.1\r\nHost: t\r\n\r\n")
        buffer = bytearray()
        first = await read_response(plain, buffer)
        await plain.send_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        health = await read_response(plain, buffer)
        split = await connect(server.port)
        await split.send_all(b"GET /v4/list")
        await trio.sleep(0.05)  # the guard has read a prefix it cannot decide on yet
        await split.send_all(b"ening HTTP/1.1\r\nHost: t\r\n\r\n")
        buffer = bytearray()
        unknown = await read_response(split, buffer)
        await split.send_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        health_again = await read_response(split, buffer)
    assert 400 <= first.status < 500 and first.body.startswith(b'{"error":'), first
    assert unknown.status == 404 and unknown.body.startswith(b'{"error":'), unknown
    assert health.status == health_again.status == 200
    for stream in (plain, split):
        await stream.aclose()


def _upgrade(extra: bytes) -> bytes:
    return (
        b"GET " + LISTEN.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n" + extra + b"\r\n"
    )


@pytest.mark.parametrize("transport", ["fast", "hypercorn"])
async def test_bad_handshakes_get_400_as_hypercorn_gives(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], transport: str
) -> None:
    server = await start_server(nursery, make_settings(listen_transport=transport))
    key = b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
    bad = {
        "no key": _upgrade(b"Sec-WebSocket-Version: 13\r\n"),
        "version 8": _upgrade(key + b"Sec-WebSocket-Version: 8\r\n"),
    }
    for name, request in bad.items():
        with trio.fail_after(5):
            stream = await connect(server.port)
            await stream.send_all(request)
            response = await read_response(stream)
            assert response.status == 400, (name, response)
            if transport == "fast":  # hypercorn keeps the connection open
                assert response.body.startswith(b'{"error":'), response
                assert await eof_or_reset(stream)
        await stream.aclose()


async def test_fragments_ping_and_the_client_close_handshake(server: ServerHandle) -> None:
    """A message in fragments is one message; a ping gets its pong; a client's close is echoed
    and the session ends with its connection."""
    with trio.fail_after(10):
        token = await _token(server)
        stream = await connect(server.port)
        ws = await ws_handshake(stream, server.port, LISTEN, token)
        audio = pcm(1.0)
        third = len(audio) // 3
        for start in (0, third, 2 * third):
            last = start == 2 * third
            part = audio[start:] if last else audio[start : start + third]
            await stream.send_all(ws.send(ws_events.BytesMessage(part, message_finished=last)))
        await stream.send_all(ws.send(ws_events.Ping(b"hi")))
        seen = await _read_until(
            stream, ws, lambda e: isinstance(e, ws_events.TextMessage) and "seg0 " in e.data
        )
        assert ws_events.Pong(b"hi") in seen
        await stream.send_all(ws.send(ws_events.CloseConnection(1000, "bye")))
        seen = await _read_until(stream, ws, lambda e: isinstance(e, ws_events.CloseConnection))
        closing = [e for e in seen if isinstance(e, ws_events.CloseConnection)]
        assert closing and closing[0].code == 1000
        assert await eof_or_reset(stream)
        await wait_until(
            lambda: (
                not (
                    server.context.sessions.statistics().live
                    or server.context.stats["connections"]().open
                )
            ),
            poll_s=0.02,
        )
    await stream.aclose()


@pytest.mark.parametrize(
    ("send", "code"),
    [
        # fragments each under the limit (64 KiB), together over it
        (lambda ws: b"".join(ws.send(ws_events.BytesMessage(bytes(40_000), message_finished=False)) for _ in "ab"), 1009),
        # a one-byte text frame holding 0xff, masked with a zero key (wsproto cannot send it)
        (lambda ws: b"\x81\x81\x00\x00\x00\x00\xff", 1007),
    ],
    ids=["fragments-over-the-limit", "bad-utf8"],
)  # fmt: skip
async def test_bad_messages_close_with_their_code(
    server: ServerHandle, send: Callable[[wsproto.WSConnection], bytes], code: int
) -> None:
    with trio.fail_after(10):
        token = await _token(server)
        stream = await connect(server.port)
        ws = await ws_handshake(stream, server.port, LISTEN, token)
        await stream.send_all(send(ws))
        seen = await _read_until(stream, ws, lambda e: isinstance(e, ws_events.CloseConnection))
    assert [e.code for e in seen if isinstance(e, ws_events.CloseConnection)] == [code]
    await stream.aclose()


# -- the module on a socket pair ------------------------------------------------------------


async def _pair(
    send_timeout_s: float, timeouts: list[int], buffer_bytes: int = 4096
) -> tuple[GuardedStream, trio.SocketStream]:
    server_sock, client_sock = trio.socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    guarded = GuardedStream(
        trio.SocketStream(server_sock),
        lambda: trio.current_time() + send_timeout_s,
        lambda: timeouts.append(1),
    )
    await trio.lowlevel.checkpoint()
    return guarded, trio.SocketStream(client_sock)


async def _client_upgrade(client: trio.SocketStream) -> tuple[wsproto.WSConnection, bytes]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws.send(ws_events.Request(host="t", target=LISTEN))
    await client.send_all(request)
    return ws, request


async def _serve_with_client(
    stream: GuardedStream,
    client: trio.SocketStream,
    app: Callable[[FastWebSocket], Awaitable[None]],
    client_side: Callable[[wsproto.WSConnection], Awaitable[None]],
    *,
    first: bytes = b"",
) -> None:
    """Upgrade ``client`` (then send it ``first``), serve ``app`` on ``stream`` while
    ``client_side`` runs, then do the guard's part: linger, close."""
    with trio.fail_after(5):
        ws, _ = await _client_upgrade(client)
        head = await stream.receive_some(65536)
        if first:
            await client.send_all(first)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side, ws)
            await serve_websocket(stream, head, {}, app=app, max_message_bytes=65536)
        await stream.linger_and_close(trio.current_time() + 1.0, 65536)


async def test_a_reader_that_never_reads_is_aborted_at_the_write_deadline() -> None:
    timeouts: list[int] = []
    stream, client = await _pair(0.3, timeouts)
    outcome: list[float] = []

    async def app(sock: FastWebSocket) -> None:
        await sock.accept()
        started = trio.current_time()
        try:
            while True:
                await sock.send_text("x" * 16384)
        except ClientGone:
            outcome.append(trio.current_time() - started)

    with trio.fail_after(5):
        _ws, request = await _client_upgrade(client)
        head = await stream.receive_some(65536)
        assert head == request
        assert await serve_websocket(stream, head, {}, app=app, max_message_bytes=65536) is None
    assert outcome and outcome[0] < 2.0, outcome
    assert stream.aborted and timeouts == [1]
    await client.aclose()


async def test_a_cancelled_receive_loses_no_buffered_message() -> None:
    """Two frames arrive in one read; a receive cancelled after the first leaves the second
    buffered (it used to be taken, then lost at the checkpoint that followed)."""
    stream, client = await _pair(5.0, [], buffer_bytes=256 * 1024)
    got: list[object] = []

    async def app(sock: FastWebSocket) -> None:
        await sock.accept()
        got.append(await sock.receive())
        with trio.CancelScope() as scope:
            scope.cancel()
            got.append(await sock.receive())
        got.append(await sock.receive())
        await sock.close(1000)

    async def client_side(ws: wsproto.WSConnection) -> None:
        await _read_until(client, ws, lambda e: isinstance(e, ws_events.AcceptConnection))
        await client.send_all(
            ws.send(ws_events.BytesMessage(b"one")) + ws.send(ws_events.BytesMessage(b"two"))
        )
        await _read_until(client, ws, lambda e: isinstance(e, ws_events.CloseConnection))
        await client.send_all(ws.send(ws_events.CloseConnection(1000)))

    await _serve_with_client(stream, client, app, client_side)
    assert got == [b"one", b"two"]
    await client.aclose()


async def test_a_failure_close_survives_the_reader_being_cancelled() -> None:
    """The session's sender finds the connection failed and ends the session, cancelling the
    reader just as the send lock passes to it with the 1007 close queued: the close still
    goes out (it was taken, then lost: the client saw 1006)."""
    stream, client = await _pair(5.0, [], buffer_bytes=4096)
    seen: list[ws_events.Event] = []

    async def app(sock: FastWebSocket) -> None:
        await sock.accept()
        reading = trio.CancelScope()

        async def reader() -> None:
            with reading:
                await sock.receive()  # the bad frame: the close waits for the lock

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await sock.send_text("x" * 100_000)  # holds the lock until the client reads
            reading.cancel()  # the lock is the reader's now, not yet run: the session's end()

    async def client_side(ws: wsproto.WSConnection) -> None:
        await trio.testing.wait_all_tasks_blocked()  # the sender blocked, the reader parked
        seen.extend(
            await _read_until(client, ws, lambda e: isinstance(e, ws_events.CloseConnection))
        )

    # a one-byte text frame holding 0xff, sent after the head (not in it)
    await _serve_with_client(
        stream, client, app, client_side, first=b"\x81\x81\x00\x00\x00\x00\xff"
    )
    text = "".join(e.data for e in seen if isinstance(e, ws_events.TextMessage))
    assert len(text) == 100_000
    assert [e.code for e in seen if isinstance(e, ws_events.CloseConnection)] == [1007]
    await client.aclose()


async def test_receive_nowait_takes_what_the_kernel_holds_once() -> None:
    """The drain's backlog: buffered frames, then one read of what already arrived; frames
    sent later wait for ``receive``."""
    stream, client = await _pair(5.0, [], buffer_bytes=256 * 1024)
    got: list[object] = []
    sent = trio.Event()
    more = trio.Event()

    async def app(sock: FastWebSocket) -> None:
        await sock.accept()
        await sent.wait()
        while True:
            try:
                got.append(sock.receive_nowait())
            except trio.WouldBlock:
                break
        more.set()
        await trio.sleep(0.1)  # the later frame has arrived in the kernel
        with pytest.raises(trio.WouldBlock):
            sock.receive_nowait()
        got.append(await sock.receive())
        await sock.close(1001, "draining")

    async def client_side(ws: wsproto.WSConnection) -> None:
        await _read_until(client, ws, lambda e: isinstance(e, ws_events.AcceptConnection))
        for frame in frames(pcm(0.3)):
            await client.send_all(ws.send(ws_events.BytesMessage(frame)))
        await trio.sleep(0.1)
        sent.set()
        await more.wait()
        await client.send_all(ws.send(ws_events.BytesMessage(b"late")))
        await _read_until(client, ws, lambda e: isinstance(e, ws_events.CloseConnection))
        await client.send_all(ws.send(ws_events.CloseConnection(1001)))

    await _serve_with_client(stream, client, app, client_side)
    assert got == [*frames(pcm(0.3)), b"late"]
    await client.aclose()
