"""``python -m server`` as a real process: SIGTERM drains and exits 0 within the deadline."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, auth
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

GRACE_S = 2.0
ROOT = pathlib.Path(__file__).resolve().parents[2]


async def _start(data_dir: pathlib.Path, **extra_env: str) -> tuple[trio.Process, int, list[str]]:
    env = {
        **os.environ,
        "TRIOSCRIBE_DATA_DIR": str(data_dir),
        "TRIOSCRIBE_PORT": "0",
        "TRIOSCRIBE_STT": "fake",
        "TRIOSCRIBE_GRACEFUL_SHUTDOWN_S": str(GRACE_S),
        "TRIOSCRIBE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
        **extra_env,
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    lines: list[str] = []
    buffer = b""
    with trio.fail_after(30):
        while True:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, "server exited before listening:\n" + buffer.decode()
            buffer += chunk
            match = re.search(rb"listening on http://[^:]+:(\d+)", buffer)
            if match:
                lines.append(buffer.decode())
                return process, int(match.group(1)), lines


async def _drain_stderr(process: trio.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(4096):
        lines.append(chunk.decode(errors="replace"))


async def _keep_requesting(url: str, token: str, stop: trio.Event, statuses: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                statuses.append(
                    (await client.get("/v1/conversations", headers=auth(token))).status_code
                )
            except httpx.TransportError:
                statuses.append(-1)
                await trio.sleep(0.01)


async def _setup_user(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        admin = auth(ADMIN_TOKEN)
        assert (
            await client.post("/v1/admin/users", json={"name": "alice"}, headers=admin)
        ).status_code == 201
        response = await client.post("/v1/admin/users/alice/tokens", json={}, headers=admin)
        return str(response.json()["token"])


async def _wait_storage_busy(client: httpx.AsyncClient) -> None:
    """Poll ``/v1/stats`` (which needs no storage call) until a storage thread is busy."""
    while True:
        stats = (await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))).json()
        if stats["storage"]["running"] >= 1:
            return
        await trio.sleep(0.02)  # the state of another process: polled


def _port_closed(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _db_ok(data_dir: pathlib.Path) -> list[str]:
    with sqlite3.connect(data_dir / "trioscribe.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in db.execute("SELECT name FROM users")]


async def _stop_and_time(process: trio.Process, lines: list[str]) -> float:
    started = trio.current_time()
    process.send_signal(signal.SIGTERM)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_stderr, process, lines)
        with trio.fail_after(GRACE_S + 10):
            await process.wait()
    return trio.current_time() - started


async def test_sigterm_with_requests_in_flight_exits_zero_in_time(tmp_path: pathlib.Path) -> None:
    process, port, lines = await _start(tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        token = await _setup_user(url)
        statuses: list[int] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(_keep_requesting, url, token, stop, statuses)
            await wait_until(lambda: statuses.count(200) >= 8)  # requests are flowing
            elapsed = await _stop_and_time(process, lines)
            stop.set()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
    output = "".join(lines)
    assert process.returncode == 0, output
    assert elapsed <= GRACE_S + 1.0, (elapsed, output)
    assert 200 in statuses
    assert set(statuses) <= {200, 503, -1}, set(statuses)
    assert _port_closed(port)
    assert _db_ok(tmp_path) == ["alice"]


async def test_deadline_holds_with_a_slow_storage_call_in_flight(tmp_path: pathlib.Path) -> None:
    process, port, lines = await _start(tmp_path)
    url = f"http://127.0.0.1:{port}"
    blocker: sqlite3.Connection | None = None
    try:
        token = await _setup_user(url)
        # Hold the write lock from outside: the server's next write waits in busy_timeout (5 s),
        # far longer than the drain deadline.
        blocker = sqlite3.connect(tmp_path / "trioscribe.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):

            async def slow_write() -> None:
                await trio.lowlevel.checkpoint()
                try:
                    await client.post(
                        "/v1/admin/users", json={"name": "bob"}, headers=auth(ADMIN_TOKEN)
                    )
                except httpx.TransportError:
                    pass

            nursery.start_soon(slow_write)
            await _wait_storage_busy(client)  # the write is now blocked inside the storage lane
            elapsed = await _stop_and_time(process, lines)
            nursery.cancel_scope.cancel()
        assert token
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
    output = "".join(lines)
    assert process.returncode == 0, output
    assert elapsed <= GRACE_S + 1.0, (elapsed, output)
    assert _port_closed(port)
    assert _db_ok(tmp_path) == ["alice"]


async def test_a_second_signal_cancels_at_once(tmp_path: pathlib.Path) -> None:
    """A drain that would take 20 s (readiness window) is cut short by a second SIGTERM."""
    process, port, lines = await _start(
        tmp_path, TRIOSCRIBE_GRACEFUL_SHUTDOWN_S="30", TRIOSCRIBE_DRAIN_READINESS_S="20"
    )
    try:
        await _setup_user(f"http://127.0.0.1:{port}")
        started = trio.current_time()
        process.send_signal(signal.SIGTERM)
        await trio.sleep(0.5)
        assert process.returncode is None  # still draining
        process.send_signal(signal.SIGTERM)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_stderr, process, lines)
            with trio.fail_after(10):
                await process.wait()
        elapsed = trio.current_time() - started
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
    output = "".join(lines)
    assert process.returncode == 1, output  # forced: not a clean drain
    assert elapsed < 5.0, (elapsed, output)
    assert "second signal" in output
    assert _port_closed(port)
    assert _db_ok(tmp_path) == ["alice"]
