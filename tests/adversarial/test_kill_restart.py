"""SIGKILL during live sessions that are still streaming: after a restart on the same data
directory, every transcript word the clients had received is stored (a segment is committed
before it is sent), and the server serves again. Delivery across a SIGKILL is ``tests/server/test_webhooks_restart.py``;
the process helpers are ``tests/server/test_shutdown_process.py``'s."""

from __future__ import annotations

import pathlib
import sqlite3

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from server.testing import Received, frames, open_listen, pcm
from tests.conftest import create_user_token
from tests.server.test_shutdown_process import _start

pytestmark = [pytest.mark.adversarial, pytest.mark.slow]


def _stored_words(data_dir: pathlib.Path) -> set[str]:
    with sqlite3.connect(data_dir / "trioscribe.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT text FROM transcript_segments")
        return {word for (text,) in rows for word in text.split()}


SESSIONS = 3


async def _live_session(
    port: int, token: str, seed: int, got: list[Received], kill_now: trio.Event
) -> None:
    async with open_listen(f"http://127.0.0.1:{port}", token=token) as ws:
        got.append(ws.received)

        async def read() -> None:
            await ws.read_until(lambda r: r.has("seg3 "))
            kill_now.set()  # a segment has just reached a client: kill the server now
            await ws.read_to_close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                for index, frame in enumerate(frames(pcm(30.0, seed=seed))):
                    await ws.send_frame(frame)
                    if index >= 30:  # 3 s at once, then in real time
                        await trio.sleep(0.1)
            except (ConnectionClosed, trio.BrokenResourceError):
                pass  # the server died: what was received so far is the test's subject
            await trio.sleep_forever()


async def test_sigkill_during_live_sessions_loses_no_received_segment(
    tmp_path: pathlib.Path,
) -> None:
    process, port, _ = await _start(tmp_path)
    got: list[Received] = []
    kill_now = trio.Event()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # One user per session: one user's sessions share its in-progress conversation.
            tokens = [await create_user_token(client, f"user{i}") for i in range(SESSIONS)]
        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for seed in range(SESSIONS):
                    clients.start_soon(_live_session, port, tokens[seed], seed, got, kill_now)
                await kill_now.wait()
                process.kill()  # SIGKILL: no drain, no flush, no close
                await process.wait()
                clients.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
    received = {word for r in got for word in r.joined().split()}  # "segN" labels repeat
    assert len(received) >= 4 + 3 * SESSIONS, [(r.close_code, r.close_reason) for r in got]
    restarted, port, _ = await _start(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/health")).status_code == 200
        stored = _stored_words(tmp_path)
    finally:
        restarted.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await restarted.wait()
    missing = received - stored
    print(f"SIGKILL with 3 live sessions: {len(received)} received, {len(missing)} missing")
    assert not missing, sorted(missing)
