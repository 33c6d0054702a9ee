"""``python -m server`` as a real process, held by clients that never read: SIGTERM still exits
0 within ``graceful_shutdown_s`` + 1 s, and a second signal ends it within 1 s.

Reuses the process helpers of ``tests/server/test_shutdown_process.py``."""

from __future__ import annotations

import pathlib
import signal

import pytest
import trio
import wsproto.events as ws_events

from tests.adversarial._raw import connect, ws_handshake
from tests.server.listen_client import pcm
from tests.server.test_shutdown_process import _drain_stderr, _setup_user, _start

pytestmark = [pytest.mark.adversarial, pytest.mark.slow]

LISTEN = "/v4/listen?codec=pcm16&sample_rate=16000"


async def _stalled_clients(port: int, token: str, count: int) -> list[trio.SocketStream]:
    """``count`` sessions that sent audio as fast as the server took it and never read."""
    await trio.lowlevel.checkpoint()
    streams = []
    for _ in range(count):
        stream = await connect(port, rcvbuf=4096)
        ws = await ws_handshake(stream, port, LISTEN, token)
        frame = ws.send(ws_events.BytesMessage(data=pcm(1.0)))
        for _ in range(400):
            with trio.move_on_after(0.3) as stalled:
                await stream.send_all(frame)
            if stalled.cancelled_caught:
                break
        streams.append(stream)
    return streams


async def _signal_and_time(
    process: trio.Process, lines: list[str], signals: list[tuple[float, int]]
) -> float:
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_stderr, process, lines)
        for at, signum in signals:
            await trio.sleep_until(started + at)
            process.send_signal(signum)
        with trio.fail_after(30):
            await process.wait()
    return trio.current_time() - started


async def _run(
    tmp_path: pathlib.Path, signals: list[tuple[float, int]], **env: str
) -> tuple[float, int | None, str]:
    """Start the server, stall a never-reading session on it, send ``signals`` (at their
    offsets); return (seconds from the first signal to exit, exit code, server log)."""
    process, port, lines = await _start(
        tmp_path,
        TRIOSCRIBE_IDLE_TIMEOUT_S="15",
        TRIOSCRIBE_HEARTBEAT_INTERVAL_S="2",
        TRIOSCRIBE_MAX_SESSIONS_PER_USER="8",
        **env,
    )
    streams: list[trio.SocketStream] = []
    try:
        token = await _setup_user(f"http://127.0.0.1:{port}")
        with trio.fail_after(30):
            streams = await _stalled_clients(port, token, 1)
        elapsed = await _signal_and_time(process, lines, signals)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
        for stream in streams:  # the clients keep their sockets open until the very end
            await trio.aclose_forcefully(stream)
    return elapsed, process.returncode, "".join(lines)


async def test_sigterm_with_never_reading_clients_exits_zero_in_time(
    tmp_path: pathlib.Path,
) -> None:
    elapsed, code, log = await _run(
        tmp_path, [(0.0, signal.SIGTERM)], TRIOSCRIBE_GRACEFUL_SHUTDOWN_S="2"
    )
    print(f"SIGTERM with never-reading clients: exit {code} after {elapsed:.2f} s")
    assert code == 0, log
    assert elapsed <= 2.0 + 1.0, (elapsed, log)


async def test_a_second_signal_ends_it_within_a_second_whatever_clients_do(
    tmp_path: pathlib.Path,
) -> None:
    elapsed, code, log = await _run(
        tmp_path,
        [(0.0, signal.SIGTERM), (0.5, signal.SIGTERM)],
        TRIOSCRIBE_GRACEFUL_SHUTDOWN_S="30",
        TRIOSCRIBE_DRAIN_READINESS_S="20",
    )
    print(
        f"second SIGTERM: exit {code} {elapsed - 0.5:.2f} s after it, watchdog: {'Timeout (' in log}"
    )
    assert code == 1, log  # forced
    assert elapsed <= 0.5 + 1.0, (elapsed, log)
