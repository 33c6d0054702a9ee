"""Several nodes on one PostgreSQL: leases, outbox, sessions moving, caps, tickets, a dead node.

"Nodes" here are real: each is its own store (its own connection pool and storage lane) or a
whole ``serve()``; the one killed with SIGKILL is a ``python -m server`` subprocess.
"""

from __future__ import annotations

import os
import pathlib
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import psycopg
import pytest
import trio
import trio.testing

import lanes
from server.clock import wall_now
from server.drain import Drain
from server.serve import ServerHandle
from server.settings import Settings
from server.store import (
    LATEST_VERSION,
    SchemaTooNewError,
    SegmentRow,
    SqliteStore,
    Store,
    SummaryFields,
    open_sqlite_store,
)
from server.store._tx import new_id
from server.store.migrations import schema_version
from server.store.postgres import open_postgres_store
from server.webhooks.delivery import DeliveryConfig, DeliveryWorkers
from server.webhooks.models import Endpoint
from server.webhooks.payloads import dumps
from server.webhooks.repository import WebhookRepository
from server.webhooks.signing import new_secret
from tests.conftest import ADMIN_TOKEN, auth, create_user_token, start_server
from tests.helpers import wait_until, wait_until_true
from tests.server.listen_client import Received, frames, open_listen, pcm, read_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
SUMMARY = SummaryFields("t", "o", "e", "other", {})


@asynccontextmanager
async def _open(backend: str, tmp_path: pathlib.Path, pg_url: str) -> AsyncIterator[SqliteStore]:
    if backend == "sqlite":
        async with open_sqlite_store(tmp_path / "store.db") as store:
            yield store
    else:
        async with open_postgres_store(pg_url) as store:
            yield store


@pytest.fixture(name="pg_url_lazy")
def _pg_url_lazy(request: pytest.FixtureRequest) -> Callable[[], str]:
    return lambda: str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_live_sessions_count_on_live_nodes_only(
    backend: str, tmp_path: pathlib.Path, pg_url_lazy: Callable[[], str]
) -> None:
    url = pg_url_lazy() if backend == "postgresql" else ""
    async with _open(backend, tmp_path, url) as store:
        user = await store.create_user("alice", T0)
        await store.register_node("a", T0)
        await store.register_node("b", T0)
        cap = {"max_per_user": 2, "ttl_s": 30.0}
        assert await store.open_live_session("s1", "a", user.id, now=T0, **cap)
        assert await store.open_live_session("s2", "b", user.id, now=T0 + 1, **cap)
        assert not await store.open_live_session("s3", "b", user.id, now=T0 + 2, **cap)
        await store.close_live_session("s2")
        await store.close_live_session("s2")  # idempotent
        assert await store.open_live_session("s3", "b", user.id, now=T0 + 3, **cap)
        # Node "a" stops beating: its session stops counting after the ttl, before any cleanup.
        assert await store.heartbeat_node("b", T0 + 25, 30.0) == 0
        assert not await store.open_live_session("s4", "b", user.id, now=T0 + 29, **cap)
        assert await store.open_live_session("s4", "b", user.id, now=T0 + 31, **cap)
        # The next heartbeat of any node deletes the dead one, and its sessions with it.
        assert await store.heartbeat_node("b", T0 + 40, 30.0) == 1
        await store.remove_node("b")
        await store.register_node("c", T0 + 41)
        assert await store.open_live_session("s5", "c", user.id, now=T0 + 41, **cap)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_tickets_are_single_use_and_expire(
    backend: str, tmp_path: pathlib.Path, pg_url_lazy: Callable[[], str]
) -> None:
    url = pg_url_lazy() if backend == "postgresql" else ""
    async with _open(backend, tmp_path, url) as store:
        user = await store.create_user("alice", T0)
        await store.create_ticket("h1", user.id, T0 + 60, T0)
        await store.create_ticket("h2", user.id, T0 + 60, T0)
        assert await store.redeem_ticket("h1", T0 + 1) == user.id
        assert await store.redeem_ticket("h1", T0 + 2) is None
        assert await store.redeem_ticket("h2", T0 + 61) is None  # expired
        assert await store.redeem_ticket("nope", T0) is None


async def _processing(store: Store, user_id: str, count: int) -> list[str]:
    await trio.lowlevel.checkpoint()
    ids = []
    for i in range(count):
        conversation = await store.create_conversation(
            user_id, source="omi", language="en", timeout_s=120, now=T0 + i
        )
        row = SegmentRow(new_id(), conversation.id, 0, f"words {i}", "S", 0, False, None, 0, 1, "f")
        await store.save_segments(conversation.id, [row], [], T0 + i + 1)
        assert await store.close_conversation(conversation.id, T0 + i + 2) == "processing"
        ids.append(conversation.id)
    return ids


async def test_two_nodes_never_hold_the_same_processing_lease(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        user = await a.create_user("alice", T0)
        ids = await _processing(a, user.id, 40)
        claimed: list[str] = []
        completed: list[object] = []

        async def work(store: Store) -> None:
            while batch := await store.claim_for_processing(T0 + 100, 600.0, 3):
                claimed.extend(c.id for c in batch)
                for conversation in batch:
                    done = await store.complete_conversation(conversation.id, SUMMARY, T0 + 101)
                    completed.append(done)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for store in (a, b, a, b):
                    nursery.start_soon(work, store)
        assert sorted(claimed) == sorted(ids), "each conversation leased exactly once"
        assert all(completed) and len(completed) == len(ids)
        page = await b.list_conversations(user.id, status="completed", limit=100)
        assert {c.processing_attempts for c in page.items} == {1}
        # A second completion (a worker whose lease expired) changes nothing.
        assert await b.complete_conversation(ids[0], SUMMARY, T0 + 200) is None


class _Receiver:
    """A webhook endpoint behind ``httpx.MockTransport``: the first attempt of even messages
    fails (500), everything else succeeds."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.by_node: Counter[str] = Counter()

    def transport(self, node: str) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            await trio.lowlevel.checkpoint()
            message_id = request.headers["webhook-id"]
            self.seen[message_id] += 1
            self.by_node[node] += 1
            number = int(request.content.decode().split('"n":')[1].split("}")[0])
            fail = number % 2 == 0 and self.seen[message_id] == 1
            return httpx.Response(500 if fail else 200)

        return httpx.MockTransport(handle)


async def test_two_nodes_deliver_each_message_once_per_attempt(pg_url: str) -> None:
    receiver = _Receiver()
    config = DeliveryConfig(schedule_s=(0.0, 0.2, 0.2), jitter=0.0, timeout_s=5.0, workers=4)
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(open_postgres_store(pg_url)) for _ in range(2)]
        repos = [WebhookRepository(store) for store in stores]
        user = await stores[0].create_user("alice", T0)
        now = wall_now()
        endpoint = Endpoint(new_id(), user.id, "webhook", "", "https://hooks.example/in",
                            ("memory_created",), 5.0, new_secret(), None, None, True, None,
                            now, now)  # fmt: skip
        await repos[0].create_endpoint(endpoint, 10)
        for n in range(30):
            await repos[n % 2].enqueue(user.id, "memory_created", dumps({"n": n}), now)
        drains = [Drain(), Drain()]
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i, (repo, drain) in enumerate(zip(repos, drains, strict=True)):
                    lane = await stack.enter_async_context(
                        lanes.open_http_lane(
                            f"webhooks-{i}",
                            # The scripted 500s are not an outage: keep the breaker closed.
                            lanes.HttpLaneSettings(failure_threshold=1000),
                            transport=receiver.transport(str(i)),
                        )
                    )
                    workers = DeliveryWorkers(
                        repo, lane, config, drain, lambda *_: 0, rng=random.Random(i)
                    )
                    await nursery.start(workers.run)
                await wait_until_true(lambda: _all_delivered(repos[1], user.id, 30), poll_s=0.05)
                for drain in drains:
                    drain.request(5)
        deliveries = await repos[0].all_deliveries(user.id)
    assert len(receiver.seen) == 30
    for delivery in deliveries:
        # One request per scheduled attempt: even messages fail once, then succeed.
        assert receiver.seen[delivery.message_id] == delivery.attempts
        assert delivery.status == "delivered"
        assert len(delivery.attempt_log) == delivery.attempts
    assert sorted(receiver.seen.values()) == [1] * 15 + [2] * 15
    assert receiver.by_node["0"] > 0 and receiver.by_node["1"] > 0, receiver.by_node


async def _all_delivered(repo: WebhookRepository, user_id: str, count: int) -> bool:
    deliveries = await repo.all_deliveries(user_id)
    return len(deliveries) == count and all(d.status == "delivered" for d in deliveries)


# -- whole servers -------------------------------------------------------------------------------


def _ready(received: Received) -> bool:
    return "ready" in [e.get("status") for e in received.events]


async def test_a_session_moves_to_another_node_and_caps_and_tickets_hold_across_nodes(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], pg_url: str
) -> None:
    settings = make_settings(database_url=pg_url, max_sessions_per_user=1)
    node_a = await start_server(nursery, settings)
    node_b = await start_server(nursery, settings)
    with trio.fail_after(30):
        async with httpx.AsyncClient(base_url=node_a.url) as client:
            token = await create_user_token(client, "alice")
        # Speak on A, disconnect, reconnect to B: B resumes the same conversation.
        first, second = Received(), Received()
        async with open_listen(node_a, token=token) as ws:
            await read_until(ws, first, _ready)
            for frame in frames(pcm(1.0, seed=1)):
                await ws.send_message(frame)
            await read_until(ws, first, lambda r: r.has("seg0 "))
            # While it is live on A, the user's cap (1) refuses a session on B.
            async with open_listen(node_b, token=token) as refused:
                closed = await read_until(refused, Received(), lambda r: False)
            assert closed.close_code == 1013 and "too many live sessions" in str(
                closed.close_reason
            )
        registry = node_a.context.sessions
        await wait_until(lambda: registry.statistics().live == 0)
        async with open_listen(node_b, token=token) as ws:
            await read_until(ws, second, _ready)
            for frame in frames(pcm(1.0, seed=2)):
                await ws.send_message(frame)
            await read_until(ws, second, lambda r: r.has("seg0 "))
        async with httpx.AsyncClient(base_url=node_b.url) as client:
            listed = (
                await client.get("/v1/conversations?statuses=in_progress", headers=auth(token))
            ).json()
            (conversation,) = listed
            full = await client.get(f"/v1/conversations/{conversation['id']}", headers=auth(token))
            segments = full.json()["transcript_segments"]
            # A ticket issued by B is redeemed on A, once.
            ticket = (await client.post("/v1/listen/tickets", headers=auth(token))).json()["ticket"]
    assert conversation["status"] == "in_progress"
    ids = [s["id"] for s in segments]
    assert len(ids) == len(set(ids)), "no duplicate segment ids"
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    words = " ".join(s["text"] for s in segments).split()
    # Both sessions' words, in order (B's may have merged into A's last segment: same speaker).
    said_on_a, said_on_b = first.joined().split()[-1], second.joined().split()[-1]
    assert words.index(said_on_a) < words.index(said_on_b)
    with trio.fail_after(10):
        async with open_listen(
            node_a, query=f"codec=pcm16&sample_rate=16000&ticket={ticket}"
        ) as ws:
            await read_until(ws, Received(), _ready)
        async with open_listen(
            node_b, query=f"codec=pcm16&sample_rate=16000&ticket={ticket}"
        ) as ws:
            reused = await read_until(ws, Received(), lambda r: False)
    assert reused.close_code == 1008


async def _start_node_process(
    tmp_path: pathlib.Path, pg_url: str
) -> tuple[trio.Process, int, list[str]]:
    env = {
        **os.environ,
        "TRIOSCRIBE_DATABASE_URL": pg_url,
        "TRIOSCRIBE_DATA_DIR": str(tmp_path / "node-a"),
        "TRIOSCRIBE_PORT": "0",
        "TRIOSCRIBE_STT": "fake",
        "TRIOSCRIBE_VAD": "off",
        "TRIOSCRIBE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
        "TRIOSCRIBE_MAX_SESSIONS_PER_USER": "1",
        "TRIOSCRIBE_NODE_HEARTBEAT_S": "0.5",
        "TRIOSCRIBE_NODE_TTL_S": "2",
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    buffer = b""
    while not (match := re.search(rb"listening on http://[^:]+:(\d+)", buffer)):
        chunk = await process.stderr.receive_some(4096)
        assert chunk, "node A exited before listening:\n" + buffer.decode()
        buffer += chunk
    return process, int(match.group(1)), [buffer.decode()]


@pytest.mark.slow
async def test_a_killed_node_loses_nothing_another_node_finishes_its_conversation(
    nursery: trio.Nursery,
    make_settings: Callable[..., Settings],
    pg_url: str,
    tmp_path: pathlib.Path,
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.rate = 1.0  # real speed; jump() skips the conversation's 120 s timeout on node B
    node_b = await start_server(
        nursery,
        make_settings(
            database_url=pg_url,
            sweeper_interval_s=0.5,
            node_heartbeat_s=0.5,
            node_ttl_s=2.0,
            max_sessions_per_user=1,
        ),
    )
    with trio.fail_after(125 + 60):
        process, port, _ = await _start_node_process(tmp_path, pg_url)
        try:
            node_a = ServerHandle("127.0.0.1", port, node_b.drain, node_b.context)
            async with httpx.AsyncClient(base_url=node_b.url) as client:
                token = await create_user_token(client, "alice")
            received = Received()
            async with open_listen(node_a, token=token) as ws:
                await read_until(ws, received, _ready)
                for frame in frames(pcm(3.0)):
                    await ws.send_message(frame)
                await read_until(ws, received, lambda r: r.has("seg2 "))
                acknowledged = received.joined().split()  # committed before it was sent
                for frame in frames(pcm(1.0, seed=9))[:5]:  # mid-stream...
                    await ws.send_message(frame)
                process.kill()  # ...node A dies (SIGKILL)
                assert await process.wait() == -signal.SIGKILL
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await process.wait()
        # Node B's sweeper closes A's conversation once its timeout passed; B processes it.
        mock_clock.jump(125)
        store = node_b.context.store
        user = await store.get_user_by_name("alice")
        assert user is not None

        async def completed() -> bool:
            page = await store.list_conversations(user.id, limit=10)
            return [c.status for c in page.items] == ["completed"]

        await wait_until_true(completed, poll_s=0.1)
        page = await store.list_conversations(user.id, limit=10)
        full = await store.get_conversation(user.id, page.items[0].id)
        assert full is not None
        stored = " ".join(s.text for s in full.segments).split()
        assert [w for w in acknowledged if w not in stored] == [], "acknowledged segments lost"

        # A's dead session stopped counting against the user's cap (1): B admits a new one.
        async def admitted() -> bool:
            async with open_listen(node_b, token=token) as ws:
                got = await read_until(ws, Received(), lambda r: _ready(r))
            return got.close_code is None

        await wait_until_true(admitted, poll_s=0.2)


async def test_nodes_starting_together_migrate_once_and_a_newer_schema_is_refused(
    pg_url: str,
) -> None:
    versions: list[int] = []

    async def start() -> None:
        async with open_postgres_store(pg_url) as store:
            versions.append(await store.run_in_transaction(lambda conn: schema_version(conn)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(start)
    assert versions == [LATEST_VERSION] * 3
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE trioscribe_schema SET version = %s", (LATEST_VERSION + 1,))
    with pytest.raises(SchemaTooNewError), trio.fail_after(30):
        async with open_postgres_store(pg_url):
            pass


async def test_a_realtime_webhook_registered_on_one_node_reaches_the_others_cache(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], pg_url: str
) -> None:
    settings = make_settings(database_url=pg_url, realtime_reload_s=0.2)
    node_a = await start_server(nursery, settings)
    node_b = await start_server(nursery, settings)
    with trio.fail_after(30):
        async with httpx.AsyncClient(base_url=node_a.url) as client:
            token = await create_user_token(client, "alice")
            body = {"kind": "realtime_transcript", "url": "http://127.0.0.1:9/hook"}
            created = await client.post("/v1/webhooks", json=body, headers=auth(token))
            assert created.status_code == 201, created.text
        async with httpx.AsyncClient(base_url=node_b.url) as client:

            async def seen_on_b() -> bool:
                stats = await client.get("/v1/stats", headers=auth(ADMIN_TOKEN))
                return bool(stats.json()["webhooks_realtime"]["endpoints"] == 1)

            await wait_until_true(seen_on_b, poll_s=0.05)
