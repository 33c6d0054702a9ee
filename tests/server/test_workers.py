"""``python -m server --workers N``: processes sharing one port on PostgreSQL, supervised."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, auth

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRACE_S = 3.0


def _env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TRIOSCRIBE_DATA_DIR": str(tmp_path / "data"),
        "TRIOSCRIBE_PORT": "0",
        "TRIOSCRIBE_STT": "fake",
        "TRIOSCRIBE_VAD": "off",
        "TRIOSCRIBE_GRACEFUL_SHUTDOWN_S": str(GRACE_S),
        "TRIOSCRIBE_DRAIN_READINESS_S": "0",
        "TRIOSCRIBE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
        **extra,
    }


class _Log:
    """The supervisor's stderr, read in the background."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.text = ""
        self.changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(4096):
            self.text += chunk.decode(errors="replace")
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        await trio.lowlevel.checkpoint()
        while len(found := list(re.finditer(pattern, self.text))) < count:
            assert self.process.returncode is None, self.text
            await self.changed.wait()
        return found


async def _pids_serving(url: str, connections: int) -> set[int]:
    """Ask ``/v1/stats`` over ``connections`` fresh TCP connections; which pids answered."""
    await trio.lowlevel.checkpoint()
    pids: set[int] = set()
    for _ in range(connections):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))
            assert response.status_code == 200, response.text
            pids.add(response.json()["process"]["pid"])
    return pids


async def test_sqlite_refuses_more_than_one_worker(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "server", "--workers", "2"],
            cwd=ROOT,
            env=_env(tmp_path),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--database-url" in lines[0], lines


async def test_two_workers_share_the_port_restart_and_drain(
    tmp_path: pathlib.Path, pg_url: str
) -> None:
    env = _env(tmp_path, TRIOSCRIBE_DATABASE_URL=pg_url, TRIOSCRIBE_WORKERS="2")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    log = _Log(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.pump)
            with trio.fail_after(60):
                (match,) = await log.wait_for(r"listening on [^:]+:(\d+) with 2 worker")
                url = f"http://127.0.0.1:{match.group(1)}"
                await log.wait_for(r"w\d server.serve: listening on", count=2)
                pids = await _pids_serving(url, 24)
                assert len(pids) == 2, "both workers answer on the one port"

                # A worker that dies is logged and replaced; the port keeps being served.
                victim = min(pids)
                os.kill(victim, signal.SIGKILL)
                await log.wait_for(rf"pid {victim}\) exited with -9; restarting")
                await log.wait_for(r"w\d server.serve: listening on", count=3)
                replaced = await _pids_serving(url, 24)
                assert victim not in replaced and len(replaced) == 2

                # SIGTERM reaches every worker; all drain and the parent exits 0 in time.
                started = trio.current_time()
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0, log.text
                assert trio.current_time() - started < GRACE_S + 2.0
                assert log.text.count("server.serve: stopped") == 2, log.text
                assert len(re.findall(r"worker \d exited \(0\)", log.text)) == 2
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
