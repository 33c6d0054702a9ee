"""``/v4/listen`` peers that misbehave: never read, flood frames, churn through the caps.

Real server on port 0 (fake STT), raw sockets and wsproto for the misbehaving side, the
project's trio-websocket test client for the well-behaved canary."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import wsproto.events as ws_events
from trio_websocket import ConnectionClosed

from server.serve import ServerHandle
from server.settings import Settings
from tests.adversarial._raw import connect, eof_or_reset, ws_handshake
from tests.conftest import create_user_token, start_server
from tests.helpers import wait_until
from tests.server.listen_client import FRAME_BYTES, Received, open_listen, pcm, read_until

pytestmark = pytest.mark.adversarial

LISTEN = "/v4/listen?codec=pcm16&sample_rate=16000"
SECOND = 32000  # one second of 16 kHz PCM16


def _stats(server: ServerHandle, name: str) -> Any:
    return server.context.stats[name]()


def _server_socket_open(server_port: int, peer_port: int) -> bool:
    """Whether this process holds a TCP socket ``server_port`` <-> ``peer_port`` (from /proc)."""
    fds = pathlib.Path("/proc/self/fd")
    inodes = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            inodes.add(os.readlink(fd))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            ports = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
            if ports == (server_port, peer_port) and f"socket:[{inode}]" in inodes:
                return True
    return False


async def _token(server: ServerHandle, name: str = "alice") -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        return await create_user_token(client, name)


async def _send_until_stalled(stream: trio.SocketStream, ws: Any, limit: int) -> int:
    """Send one-second frames until a send stalls for 0.5 s (the server stopped reading)."""
    await trio.lowlevel.checkpoint()
    sent = 0
    frame = ws.send(ws_events.BytesMessage(data=pcm(1.0)))
    try:
        while sent < limit:
            with trio.move_on_after(0.5) as stalled:
                await stream.send_all(frame)
            if stalled.cancelled_caught:
                break
            sent += 1
    except trio.BrokenResourceError:  # already reset by the server (a loaded host)
        pass
    return sent


@pytest.mark.slow
async def test_a_client_that_never_reads_is_aborted_by_the_idle_timeout(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(idle_timeout_s=1.5, heartbeat_interval_s=0.5)
    server = await start_server(nursery, settings)
    token = await _token(server)
    stream = await connect(server.port, rcvbuf=4096)
    client_port = stream.socket.getsockname()[1]
    ws = await ws_handshake(stream, server.port, LISTEN, token)
    assert _server_socket_open(server.port, client_port)  # the check sees a live one
    started = trio.current_time()
    with trio.fail_after(20):
        sent = await _send_until_stalled(stream, ws, limit=2000)
        await wait_until(
            lambda: not (_stats(server, "sessions").live or _stats(server, "connections").open),
            poll_s=0.05,
        )
    ended_s = trio.current_time() - started
    guard = _stats(server, "connections")
    assert sent >= 10, sent  # it really sent a lot before the server stopped reading
    # idle (1.5 s) + STT flush (<= 3 s) + last persist + hypercorn end grace (1 s), with margin
    assert ended_s < 12.0, ended_s
    assert guard.aborted >= 1, guard
    with trio.fail_after(2):
        assert await eof_or_reset(stream)  # the server reset the connection
    await stream.aclose()
    # Its server-side socket is closed (not just forgotten). The process-wide fd count is not
    # the check: the store's connection pool may grow meanwhile (a legitimate extra fd).
    assert not _server_socket_open(server.port, client_port)
    # The server is healthy afterwards: a normal session works.
    async with open_listen(server, token=token) as canary:
        await canary.send_message(pcm(1.0))
        received = await read_until(canary, Received(), lambda r: bool(r.segments))
    assert received.segments


async def _flood(port: int, token: str, closes: list[int], stop: trio.Event) -> None:
    """Reconnect and blast 3-byte frames as fast as the socket takes them until ``stop``;
    record each close code the server sends."""
    await trio.lowlevel.checkpoint()
    while not stop.is_set():
        stream = await connect(port)
        try:
            ws = await ws_handshake(stream, port, LISTEN, token)
        except (EOFError, ConnectionError, trio.BrokenResourceError):
            await trio.aclose_forcefully(stream)
            continue
        burst = ws.send(ws_events.BytesMessage(data=b"abc")) * 200

        async def read_close(done: trio.CancelScope, ws: Any = ws, stream: Any = stream) -> None:
            await trio.lowlevel.checkpoint()
            while data := await stream.receive_some(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, ws_events.CloseConnection):
                        closes.append(event.code)
                        done.cancel()
                        return
            done.cancel()

        try:
            async with trio.open_nursery() as conn:
                conn.start_soon(read_close, conn.cancel_scope)
                while not stop.is_set():
                    await stream.send_all(burst)
                conn.cancel_scope.cancel()
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def _canary(server: ServerHandle, token: str, latencies: list[float]) -> None:
    """Real-time 100 ms frames; the fake STT answers every second of audio: latency is the time
    from the frame that completes a second to the segment that carries it."""
    async with open_listen(server, token=token) as ws:
        audio = pcm(3.0, seed=7)
        received = Received()
        for i in range(0, len(audio), FRAME_BYTES):
            await ws.send_message(audio[i : i + FRAME_BYTES])
            if (i + FRAME_BYTES) % SECOND == 0:
                sent_at = trio.current_time()
                want = f"seg{(i + FRAME_BYTES) // SECOND - 1} "
                await read_until(ws, received, lambda r, want=want: r.has(want))
                latencies.append(trio.current_time() - sent_at)
            else:
                await trio.sleep(0.1)


@pytest.mark.slow
async def test_a_frame_flood_is_closed_1008_and_a_canary_keeps_its_latency(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(max_sessions_per_user=8)
    server = await start_server(nursery, settings)
    flooder, member = await _token(server, "mallory"), await _token(server, "alice")
    quiet: list[float] = []
    with trio.fail_after(20):
        await _canary(server, member, quiet)
        closes: list[int] = []
        loud: list[float] = []
        stop = trio.Event()
        async with trio.open_nursery() as attack:
            attack.start_soon(_flood, server.port, flooder, closes, stop)
            attack.start_soon(_flood, server.port, flooder, closes, stop)
            await trio.sleep(0.3)
            await _canary(server, member, loud)
            stop.set()
    assert closes and set(closes) == {1008}, closes
    assert len(loud) == len(quiet) == 3
    # The flood loads this process (server and flooders share its loop), so the read tick grows
    # towards its maximum: under load a frame may wait one whole tick before it is read.
    tick_s = settings.listen_read_tick_ms / 1000
    assert max(loud) < max(0.5, 5 * max(quiet)) + tick_s, (quiet, loud)


@pytest.mark.slow
async def test_session_slots_are_released_under_churn(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """Sessions over the cap get 1013; sessions dropped without a close frame (abrupt TCP
    close) and ones that close cleanly all give their slot back."""
    server = await start_server(nursery, make_settings(max_sessions=3, max_sessions_per_user=3))
    token = await _token(server)
    codes: list[int] = []

    async def one(abrupt: bool) -> None:
        async with open_listen(server, token=token) as ws:
            try:
                await ws.send_message(pcm(0.1))
                with trio.move_on_after(0.2):
                    assert await ws.get_message()
            except ConnectionClosed as exc:
                codes.append(exc.reason.code)
                return
            if abrupt:
                stream: Any = ws._stream  # drop the TCP connection without a close frame
                await trio.aclose_forcefully(stream)

    with trio.fail_after(30):
        for round_ in range(6):
            async with trio.open_nursery() as wave:
                for i in range(5):
                    wave.start_soon(one, (round_ + i) % 2 == 0)
        await wait_until(lambda: not _stats(server, "sessions").live, poll_s=0.05)
        async with open_listen(server, token=token) as ws:
            await ws.send_message(pcm(1.0))
            received = await read_until(ws, Received(), lambda r: bool(r.segments))
    assert received.segments
    assert 1013 in codes, codes
    stats = _stats(server, "sessions")
    assert stats.refused_server_cap + stats.refused_user_cap >= 1
    assert _stats(server, "connections").open <= 1  # only the canary's, if still closing


@pytest.mark.slow
async def test_a_half_open_session_ends_at_the_idle_timeout(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """A peer that vanished without FIN or RST (here: sends nothing more, reads nothing) is
    closed 1001 at the idle timeout and its connection released."""
    server = await start_server(
        nursery, make_settings(idle_timeout_s=0.6, heartbeat_interval_s=0.2)
    )
    token = await _token(server)
    stream = await connect(server.port)
    ws = await ws_handshake(stream, server.port, LISTEN, token)
    await stream.send_all(ws.send(ws_events.BytesMessage(data=pcm(0.1))))
    started = trio.current_time()
    with trio.fail_after(10):
        await wait_until(lambda: not _stats(server, "connections").open, poll_s=0.05)
    assert trio.current_time() - started < 5.0
    code = None
    with trio.move_on_after(2):
        await trio.lowlevel.checkpoint()
        while code is None and (data := await stream.receive_some(65536)):
            ws.receive_data(data)
            code = next(
                (e.code for e in ws.events() if isinstance(e, ws_events.CloseConnection)), None
            )
    assert code == 1001
    await stream.aclose()
