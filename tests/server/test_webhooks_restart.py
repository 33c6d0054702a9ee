"""``python -m server`` killed with SIGKILL mid-schedule: the retry comes after the restart.

The conversation, the user and the webhook are written to the database before the first start,
so the first server processes the conversation at once and queues ``memory_created`` in the
same transaction. The receiver fails the first attempt; the server is killed (-9) before the
retry (~5 s later); a second server on the same data directory sends it again with the same
``webhook-id``, and the delivery log shows both attempts.
"""

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
from standardwebhooks.webhooks import Webhook

from server.store import DB_FILENAME, SegmentRow, new_id, open_sqlite_store
from server.webhooks.repository import WebhookRepository
from tests.fakes.receivers import Receivers, Reply, open_receivers
from tests.fakes.webhook_world import MEETING, World, add_endpoint

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def start(data_dir: pathlib.Path) -> tuple[trio.Process, str]:
    env = {
        **os.environ,
        "TRIOSCRIBE_DATA_DIR": str(data_dir),
        "TRIOSCRIBE_PORT": "0",
        "TRIOSCRIBE_STT": "fake",
        "TRIOSCRIBE_GRACEFUL_SHUTDOWN_S": "2",
        "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
        "TRIOSCRIBE_ALLOW_LOOPBACK_WEBHOOKS": "true",
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    buffer = b""
    while True:
        chunk = await process.stderr.receive_some(4096)
        assert chunk, "server exited before listening:\n" + buffer.decode()
        buffer += chunk
        match = re.search(rb"listening on (http://[^\s]+)", buffer)
        if match:
            return process, match.group(1).decode()


async def prepare(data_dir: pathlib.Path, rx: Receivers) -> tuple[str, str, str]:
    """Write a user, a token, a memory_created webhook and a processing conversation."""
    async with open_sqlite_store(data_dir / DB_FILENAME) as store:
        user = await store.create_user("alice", 0.0)
        token, _ = await store.create_token(user.id, "test", 0.0)
        world = World(store, WebhookRepository(store), user)
        endpoint = await add_endpoint(world, rx.url("/m"), ["memory_created"])
        conversation = await store.create_conversation(
            user.id, source="omi", language="en", timeout_s=60, now=1.0
        )
        rows = [
            SegmentRow(new_id(), conversation.id, i, t, "S0", 0, False, None, i, i + 1, "fake")
            for i, t in enumerate(MEETING)
        ]
        await store.save_segments(conversation.id, rows, [], 10.0)
        assert await store.close_conversation(conversation.id, 10.0) == "processing"
    return token, endpoint.secret, endpoint.id


async def stop(process: trio.Process) -> int | None:
    """SIGTERM, then wait (shielded, bounded) for the exit; SIGKILL if it takes too long."""
    process.send_signal(signal.SIGTERM)
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        return await process.wait()
    process.kill()
    return None


async def drain_stderr(process: trio.Process) -> None:
    """Keep reading the server's log so a full pipe can never block it."""
    assert process.stderr is not None
    while await process.stderr.receive_some(65536):
        pass


async def attempts_logged(url: str, token: str, endpoint_id: str) -> list[dict[str, object]]:
    """The endpoint's delivery log, read through the API."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get(
            f"/v1/webhooks/{endpoint_id}/deliveries", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, object]] = response.json()["deliveries"]
    return deliveries


async def test_a_killed_server_resumes_the_retry_schedule(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    async with open_receivers() as rx, trio.open_nursery() as nursery:
        rx.script("/m", Reply(500, b"try again"))
        token, secret, endpoint_id = await prepare(data_dir, rx)
        with trio.fail_after(40):
            first_server, url = await start(data_dir)
            nursery.start_soon(drain_stderr, first_server)
            try:
                await rx.wait_for_count("/m", 1)
                while not (await attempts_logged(url, token, endpoint_id))[0]["attempt_log"]:  # noqa: ASYNC110 -- another process writes it
                    await trio.sleep(0.05)
            finally:
                first_server.kill()  # SIGKILL mid-schedule: no drain, no cleanup
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await first_server.wait()
            assert len(rx.on("/m")) == 1
            second_server, url = await start(data_dir)
            nursery.start_soon(drain_stderr, second_server)
            try:
                await rx.wait_for_count("/m", 2)
                (delivery,) = await attempts_logged(url, token, endpoint_id)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(12):
                    returncode = await stop(second_server)
    assert returncode == 0  # the second server drained and exited cleanly
    before, after = rx.on("/m")
    assert before.headers["webhook-id"] == after.headers["webhook-id"]
    assert before.body == after.body
    assert int(after.headers["webhook-timestamp"]) > int(before.headers["webhook-timestamp"])
    Webhook(secret).verify(after.body, after.headers)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
    assert [a["status"] for a in delivery["attempt_log"]] == [500, 200]  # type: ignore[attr-defined]
