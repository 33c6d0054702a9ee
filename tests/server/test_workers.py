"""``python -m server --workers N``: processes sharing one port on PostgreSQL, supervised."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import trio

from server.testing import open_listen
from tests.conftest import ADMIN_TOKEN, auth, create_user_token

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRACE_S = 3.0
PR_SET_CHILD_SUBREAPER = 36


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


async def _start_supervisor(tmp_path: pathlib.Path, pg_url: str) -> tuple[trio.Process, _Log]:
    """``python -m server --workers 2`` on PostgreSQL, its stderr not yet pumped."""
    env = _env(tmp_path, TRIOSCRIBE_DATABASE_URL=pg_url, TRIOSCRIBE_WORKERS="2")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    return process, _Log(process)


async def _until_both_listen(log: _Log) -> int:
    """Wait until the supervisor and both workers listen; return the port."""
    (match,) = await log.wait_for(r"listening on [^:]+:(\d+) with 2 worker")
    await log.wait_for(r"w\d server.serve: listening on", count=2)
    return int(match.group(1))


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
    process, log = await _start_supervisor(tmp_path, pg_url)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.pump)
            with trio.fail_after(60):
                url = f"http://127.0.0.1:{await _until_both_listen(log)}"
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


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``)
    for the block, so a killed supervisor's workers become our children and their exit codes
    can be read."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


async def _exit_code(pid: int) -> int:
    """Wait for our (adopted) child ``pid`` to exit and reap it."""
    pidfd = os.pidfd_open(pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return _reap(pid, os.WNOHANG)


def _reap(pid: int, options: int) -> int:
    reaped, status = os.waitpid(pid, options)
    assert reaped == pid
    return os.waitstatus_to_exitcode(status)


def _kill_and_reap(pid: int) -> None:
    """Clean up after a failed test: SIGKILL ``pid`` if it still runs, reap it if ours."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        _reap(pid, 0)  # a killed process: returns at once


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))  # no SO_REUSEPORT: fails while a worker listens
            sock.listen()
        except OSError:
            return False
    return True


async def test_workers_drain_and_free_the_port_when_the_supervisor_is_killed(
    tmp_path: pathlib.Path, pg_url: str
) -> None:
    workers: list[int] = []
    with _adopting_orphans():
        process, log = await _start_supervisor(tmp_path, pg_url)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(log.pump)
                with trio.fail_after(60):
                    port = await _until_both_listen(log)
                    url = f"http://127.0.0.1:{port}"
                    started = await log.wait_for(r"worker \d started \(pid (\d+)\)", count=2)
                    workers = [int(m.group(1)) for m in started]
                    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                        token = await create_user_token(client, "alice")
                    async with open_listen(url, token=token) as session:
                        await session.wait_ready()
                        process.kill()  # no chance to signal anyone
                        assert await process.wait() == -signal.SIGKILL
                        # Both drain as on SIGTERM, within the drain deadline (+ exit margin).
                        with trio.fail_after(GRACE_S + 1.0):
                            received = await session.read_to_close()
                            codes = [await _exit_code(pid) for pid in workers]
                    assert received.close_code == 1001, received
                    assert codes == [0, 0], log.text
                    assert _port_is_free(port)
                    assert log.text.count("supervisor gone: draining") == 2, log.text
                    assert log.text.count("server.serve: stopped") == 2, log.text
        finally:
            for pid in workers:
                _kill_and_reap(pid)
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await process.wait()
