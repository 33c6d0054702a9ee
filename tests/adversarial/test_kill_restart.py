"""SIGKILL during live sessions: after a restart on the same data directory, every transcript
segment the clients had received (and that had time to reach the persister) is stored, and the
server serves again. Delivery across a SIGKILL is ``tests/server/test_webhooks_restart.py``;
the process helpers are ``tests/server/test_shutdown_process.py``'s."""

from __future__ import annotations

import pathlib
import sqlite3

import httpx
import pytest
import trio

from server.listen.session import PERSIST_INTERVAL_S
from server.testing import Received, frames, open_listen, pcm
from tests.server.test_shutdown_process import _setup_user, _start

pytestmark = [pytest.mark.adversarial, pytest.mark.slow]


def _stored_texts(data_dir: pathlib.Path) -> set[str]:
    with sqlite3.connect(data_dir / "trioscribe.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in db.execute("SELECT text FROM transcript_segments")}


SESSIONS = 3


async def _live_session(
    port: int, token: str, seed: int, got: list[Received], all_live: trio.Event
) -> None:
    async with open_listen(f"http://127.0.0.1:{port}", token=token) as ws:
        received = ws.received
        for frame in frames(pcm(3.0, seed=seed)):
            await ws.send_frame(frame)
        await ws.read_until(lambda r: r.has("seg2 "))
        got.append(received)
        if len(got) == SESSIONS:
            all_live.set()
        await trio.sleep_forever()  # live until the server dies


async def test_sigkill_during_live_sessions_loses_no_received_segment(
    tmp_path: pathlib.Path,
) -> None:
    process, port, _ = await _start(tmp_path, TRIOSCRIBE_MAX_SESSIONS_PER_USER="8")
    got: list[Received] = []
    all_live = trio.Event()
    try:
        token = await _setup_user(f"http://127.0.0.1:{port}")
        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for seed in range(SESSIONS):
                    clients.start_soon(_live_session, port, token, seed, got, all_live)
                await all_live.wait()
                await trio.sleep(2 * PERSIST_INTERVAL_S)  # the persister's batch interval
                process.kill()  # SIGKILL: no drain, no flush, no close
                await process.wait()
                clients.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
    received = {text for r in got for text in r.texts()}
    assert len(received) >= SESSIONS, [(r.close_code, r.close_reason) for r in got]
    restarted, port, _ = await _start(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/health")).status_code == 200
        stored = _stored_texts(tmp_path)
    finally:
        restarted.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await restarted.wait()
    missing = received - stored
    print(f"SIGKILL with 3 live sessions: {len(received)} received, {len(missing)} missing")
    assert not missing, missing
