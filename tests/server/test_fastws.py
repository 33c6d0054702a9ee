"""The fast ``/v4/listen`` transport (:mod:`server.listen.fastws`) and the guard's routing.

Real servers on port 0 with raw sockets and wsproto as the client (to send what well-behaved
client libraries do not: fragments, pings, broken UTF-8, bad handshakes), and the module itself
on a socket pair for what needs a controlled peer (a reader that never reads, the backlog).
"""

from __future__ import annotations

import base64
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import httpx
import pytest
import trio
import wsproto
import wsproto.events as ws_events
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

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


# -- the framing: the fast path against websockets' own parser ---------------------------------

_MAX = 65536


def _raw_frame(
    rng: random.Random,
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
) -> bytes:
    """One client frame, built by hand (to send what client libraries never do)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit, n = (0x80 if masked else 0), len(payload)
    if n < 126:
        head = bytes([first, mask_bit | n])
    elif n < 65536:
        head = bytes([first, mask_bit | 126]) + n.to_bytes(2)
    else:
        head = bytes([first, mask_bit | 127]) + n.to_bytes(8)
    if not masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + apply_mask(payload, key)


def _random_stream(rng: random.Random) -> bytes:
    """Frames a client may send (audio, text, fragments with control frames between them,
    the 126/127 length encodings), then perhaps something that ends the connection, then
    more frames (which must be discarded alike)."""
    out: list[bytes] = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice(["audio", "audio", "audio", "small", "text", "ping", "pong",
                           "fragments", "big", "empty"])  # fmt: skip
        if kind == "audio":
            out.append(_raw_frame(rng, 2, rng.randbytes(3200)))
        elif kind == "small":
            out.append(_raw_frame(rng, 2, rng.randbytes(rng.randint(1, 300))))
        elif kind == "empty":
            out.append(_raw_frame(rng, 2, b""))
        elif kind == "text":
            out.append(_raw_frame(rng, 1, '{"type": "ping", "é": 1}'.encode()))
        elif kind in ("ping", "pong"):
            out.append(_raw_frame(rng, 9 if kind == "ping" else 10, rng.randbytes(5)))
        elif kind == "big":
            out.append(_raw_frame(rng, 2, rng.randbytes(rng.choice([125, 126, 65535, _MAX]))))
        else:
            opcode = rng.choice([1, 2])
            parts = [b"ab", b"cd", b"ef"] if opcode == 1 else [rng.randbytes(700) for _ in "abc"]
            for i, part in enumerate(parts):
                if i and rng.random() < 0.5:
                    out.append(_raw_frame(rng, 9, b"mid"))
                out.append(_raw_frame(rng, opcode if i == 0 else 0, part, fin=i == len(parts) - 1))
    ending = rng.choice([None, "close", "unmasked", "rsv", "opcode", "oversized",
                         "stray-continuation", "binary-in-fragments", "bad-utf8"])  # fmt: skip
    if ending == "close":
        out.append(_raw_frame(rng, 8, (1000).to_bytes(2) + b"bye"))
    elif ending == "unmasked":
        out.append(_raw_frame(rng, 2, b"audio", masked=False))
    elif ending == "rsv":
        out.append(_raw_frame(rng, 2, b"audio", rsv=4))
    elif ending == "opcode":
        out.append(_raw_frame(rng, 3, b"audio"))
    elif ending == "oversized":
        out.append(_raw_frame(rng, 2, bytes(_MAX + 1)))
    elif ending == "stray-continuation":
        out.append(_raw_frame(rng, 0, b"audio"))
    elif ending == "binary-in-fragments":
        out += [_raw_frame(rng, 2, b"a", fin=False), _raw_frame(rng, 2, b"b")]
    elif ending == "bad-utf8":
        out.append(_raw_frame(rng, 1, b"\xff"))
    if ending:
        out.append(_raw_frame(rng, 2, rng.randbytes(3200)))  # after the end: discarded
    return b"".join(out)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut as reads may return it: single bytes, small and large pieces."""
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 100, 3000, 3214, 9000, 70_000])
        out.append(data[pos : pos + step])
        pos += step
    return out


class _NoReads:
    """The stream of a :class:`FastWebSocket` fed by hand: there is never more to read."""

    def receive_nowait(self, max_bytes: int) -> bytes:
        raise trio.WouldBlock


def _fed(chunks: list[bytes], *, websockets_only: bool) -> tuple[list[object], bytes]:
    """Feed ``chunks`` (then EOF) to an open :class:`FastWebSocket`; return its messages
    (``None`` once it closed) and what the protocol answered (pongs, the close frame)."""
    protocol = ServerProtocol(max_size=_MAX)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    protocol.receive_data(client.send(ws_events.Request(host="t", target=LISTEN)))
    response = protocol.accept(protocol.events_received()[0])  # type: ignore[arg-type]
    protocol.send_response(response)
    protocol.data_to_send()
    ws = FastWebSocket(
        {}, cast(GuardedStream, _NoReads()), protocol, response, max_message_bytes=_MAX
    )
    ws._handed_over = websockets_only  # the reference: every byte through websockets
    messages: list[object] = []
    for chunk in [*chunks, b""]:
        ws._feed(chunk)
        while True:
            try:
                message = ws.receive_nowait()
            except trio.WouldBlock:
                break
            messages.append(message)
            if message is None:
                return messages, b"".join(protocol.data_to_send())
    return messages, b"".join(protocol.data_to_send())


@pytest.mark.parametrize("seed", range(40))
def test_the_fast_framing_gives_what_websockets_gives(seed: int) -> None:
    """Random client streams, cut at random points: the same messages, the same pongs and
    the same close frame (code and reason) as ``websockets`` parsing every byte itself."""
    rng = random.Random(seed)
    for _ in range(10):
        data = _random_stream(rng)
        chunks = _chunks(rng, data)
        assert _fed(chunks, websockets_only=False) == _fed(chunks, websockets_only=True)


def test_audio_frames_cut_anywhere_are_whole_messages() -> None:
    """Every cut point of two audio frames (the 2-byte header, the mask, the payload)."""
    rng = random.Random(7)
    audio = [rng.randbytes(3200), rng.randbytes(3200)]
    data = b"".join(_raw_frame(rng, 2, a) for a in audio)
    for cut in range(1, len(data)):
        messages, _ = _fed([data[:cut], data[cut:]], websockets_only=False)
        assert messages[:2] == audio
