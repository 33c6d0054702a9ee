"""The store contract (every operation, tokens, pagination, isolation, leases, concurrency) run
against every backend in ``STORE_BACKENDS`` through the :class:`~server.store.Store` protocol,
plus the SQLite backend's own guarantees (pragmas, its lane, cleanup) on ``sqlite_store``.

A second backend joins the contract tests by adding its opener to ``STORE_BACKENDS``; the tests
themselves use only the protocol (``run_in_transaction`` hands them the backend's connection,
so the few raw-SQL checks use the ``?`` paramstyle shared by sqlite3).
"""

from __future__ import annotations

import gc
import hashlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from lanes import ThreadLane
from server.store import (
    ConflictError,
    Conversation,
    NotFoundError,
    SegmentRow,
    SqliteStore,
    Store,
    StoreClosedError,
    SummaryFields,
    User,
    ValidationError,
    open_sqlite_store,
)
from server.store.postgres import open_postgres_store
from tests.helpers import wait_until

T0 = 1_700_000_000.0


@pytest.fixture(name="db_path")
def _db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "store.db"


def _open_postgresql(request: pytest.FixtureRequest, _: Path) -> AbstractAsyncContextManager[Store]:
    """A store on the session's real PostgreSQL (``tests/pg.py``), in a schema of its own."""
    return open_postgres_store(request.getfixturevalue("pg_url"))


#: Every backend the contract tests run against: name -> opener of a fresh, empty store.
STORE_BACKENDS: dict[
    str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[Store]]
] = {
    "sqlite": lambda _, path: open_sqlite_store(path),
    "postgresql": _open_postgresql,
}


@pytest.fixture(name="store", params=sorted(STORE_BACKENDS))
async def _store(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Store]:
    async with STORE_BACKENDS[request.param](request, db_path) as store:
        yield store


@pytest.fixture(name="sqlite_store")
async def _sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(db_path) as store:
        yield store


async def _user(store: Store, name: str = "alice") -> User:
    return await store.create_user(name, T0)


async def _conversation(store: Store, user: User, now: float = T0) -> Conversation:
    return await store.create_conversation(
        user.id, source="omi", language="en", timeout_s=120.0, now=now
    )


def _segment(conversation_id: str, idx: int, *, text: str = "", end_s: float = 1.0) -> SegmentRow:
    return SegmentRow(
        id=f"seg-{idx}",
        conversation_id=conversation_id,
        idx=idx,
        text=text or f"words {idx}",
        speaker="SPEAKER_00",
        speaker_id=0,
        is_user=idx % 2 == 0,
        person_id=None,
        start_s=end_s - 1.0,
        end_s=end_s,
        stt_provider="fake",
    )


async def _spoken(store: Store, user: User, now: float = T0) -> Conversation:
    """A conversation with one segment, last speech at ``now + 5``."""
    conversation = await _conversation(store, user, now)
    await store.save_segments(conversation.id, [_segment(conversation.id, 0)], [], now + 5)
    return conversation


async def _count(store: Store, sql: str, *args: object) -> int:
    return await store.run_in_transaction(lambda conn: int(conn.execute(sql, args).fetchone()[0]))


# -- opening, pragmas, closing -------------------------------------------------------------------


async def test_opens_in_wal_with_the_measured_settings(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    store = sqlite_store

    def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
        names = ("synchronous", "busy_timeout", "foreign_keys")
        return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names)

    assert db_path.parent.is_dir()
    assert await store.run_in_transaction(pragmas) == (1, 5000, 1)  # 1 = NORMAL
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


async def test_every_call_goes_through_the_lane_and_the_cm_closes_connections(
    db_path: Path,
) -> None:
    lane = ThreadLane("storage-test", 3)
    async with open_sqlite_store(db_path, lane=lane) as store:
        before = lane.statistics().completed
        user = await _user(store)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(store.get_user, user.id)
        stats = store.statistics()
        assert lane.statistics().completed - before == 11
        assert stats.calls == 11 and stats.failed == 0
        assert 1 <= stats.connections_open <= 3 and stats.connections_created <= 3
    assert store.statistics().connections_open == 0
    gc.collect()  # an unclosed connection would warn here (warnings are errors)
    assert await lane.run_sync(lambda: "the caller's lane stays open") != ""
    with pytest.raises(StoreClosedError):
        await store.get_user(user.id)


async def test_own_lane_is_closed_on_exit(db_path: Path) -> None:
    async with open_sqlite_store(db_path, threads=2) as store:
        assert store.statistics().lane.capacity == 2
    assert store.statistics().connections_open == 0


# -- users and tokens ------------------------------------------------------------------------------


async def test_users(store: Store) -> None:
    bob = await store.create_user("bob", T0)
    alice = await store.create_user("alice", T0 + 1)
    assert await store.get_user(bob.id) == bob
    assert await store.get_user_by_name("alice") == alice
    assert await store.get_user("nope") is None and await store.get_user_by_name("x") is None
    assert await store.list_users() == [alice, bob]
    with pytest.raises(ConflictError, match="alice"):
        await store.create_user("alice", T0 + 2)


async def test_tokens_are_stored_hashed_only(sqlite_store: SqliteStore, db_path: Path) -> None:
    store = sqlite_store
    alice = await _user(store)
    raw, info = await store.create_token(alice.id, "laptop", T0)
    assert raw.startswith("ts_") and len(raw) == 46 and raw.startswith(info.prefix)
    assert await store.authenticate(raw, T0 + 1) == alice
    files = [db_path, db_path.with_name(db_path.name + "-wal")]
    data = b"".join(path.read_bytes() for path in files if path.exists())
    assert raw.encode() not in data
    assert hashlib.sha256(raw.encode()).hexdigest().encode() in data  # the hash really is there
    with pytest.raises(NotFoundError):
        await store.create_token("no-such-user", "x", T0)


async def test_authenticate_rejects_unknown_and_revoked(store: Store) -> None:
    alice, bob = await _user(store), await _user(store, "bob")
    raw, info = await store.create_token(alice.id, "", T0)
    raw_b, _ = await store.create_token(bob.id, "", T0)
    for wrong in ("", "ts_", raw[:-1], raw + "x", "Bearer " + raw, "x" * 10_000):
        assert await store.authenticate(wrong, T0) is None
    assert await store.revoke_token(bob.id, info.id, T0) is False  # not bob's
    assert await store.authenticate(raw, T0 + 1) == alice
    assert await store.revoke_token(alice.id, info.id, T0 + 2) is True
    assert await store.revoke_token(alice.id, info.id, T0 + 3) is True  # idempotent
    assert await store.authenticate(raw, T0 + 4) is None
    assert await store.authenticate(raw_b, T0 + 4) == bob
    [listed] = await store.list_tokens(alice.id)
    assert listed.revoked_at == T0 + 2 and listed.id == info.id


async def test_last_used_is_written_at_most_once_a_minute(store: Store) -> None:
    alice = await _user(store)
    raw, _ = await store.create_token(alice.id, "", T0)

    async def last_used() -> float | None:
        [info] = await store.list_tokens(alice.id)
        return info.last_used_at

    assert await last_used() is None
    await store.authenticate(raw, T0 + 100)
    assert await last_used() == T0 + 100
    await store.authenticate(raw, T0 + 159)
    assert await last_used() == T0 + 100
    await store.authenticate(raw, T0 + 160)
    assert await last_used() == T0 + 160


# -- the live conversation --------------------------------------------------------------------------


async def test_create_and_resume_in_progress(store: Store) -> None:
    alice = await _user(store)
    assert await store.get_in_progress(alice.id) is None
    first = await _conversation(store, alice, T0)
    second = await _conversation(store, alice, T0 + 1)
    assert (second.status, second.started_at, second.finished_at) == ("in_progress", None, None)
    assert await store.get_in_progress(alice.id) == second
    with pytest.raises(NotFoundError):
        await _conversation(store, User("ghost", "ghost", T0))
    with pytest.raises(ValidationError, match="timeout_s"):
        await store.create_conversation(alice.id, source="omi", language="en", timeout_s=0, now=T0)
    assert first.id != second.id and len(first.id) == 32


async def test_save_segments_upserts_removes_and_extends(store: Store) -> None:
    alice = await _user(store)
    conv = await _conversation(store, alice)
    rows = [_segment(conv.id, i, end_s=i + 1.0) for i in range(3)]
    await store.save_segments(conv.id, rows, [], T0 + 13.0)
    changed = _segment(conv.id, 1, text="changed", end_s=2.0)
    await store.save_segments(conv.id, [changed], ["seg-2"], T0 + 10.0)
    got = await store.get_conversation(alice.id, conv.id)
    assert got is not None
    assert [s.text for s in got.segments] == ["words 0", "changed"]
    assert got.segments[0] == rows[0]
    assert got.started_at == T0 + 10.0  # derived once: last speech minus the last end_s
    assert got.finished_at == T0 + 13.0  # never moves back
    await store.save_segments(conv.id, [], [], T0 + 20, started_at=T0)
    again = await store.get_conversation(alice.id, conv.id, with_segments=False)
    assert again is not None and again.segments == ()
    assert (again.started_at, again.finished_at) == (T0 + 10.0, T0 + 20)


async def test_save_segments_errors_are_atomic(store: Store) -> None:
    alice = await _user(store)
    conv = await _conversation(store, alice)
    with pytest.raises(NotFoundError):
        await store.save_segments("missing", [], [], T0)
    with pytest.raises(ValidationError, match="upserts"):
        await store.save_segments(conv.id, [_segment("other", 0)], [], T0)
    broken = [_segment(conv.id, 0), _segment(conv.id, 1, text="x")]
    broken[1] = replace(broken[1], text=None)  # type: ignore[arg-type]
    with pytest.raises(ConflictError):  # NOT NULL fails on the second row: nothing lands
        await store.save_segments(conv.id, broken, [], T0 + 5)
    got = await store.get_conversation(alice.id, conv.id)
    assert got is not None and got.segments == () and got.finished_at is None
    assert store.statistics().failed == 2  # the validation error never reached the lane


async def test_close_discards_empty_and_processes_spoken(store: Store) -> None:
    alice = await _user(store)
    empty = await _conversation(store, alice)
    assert await store.close_conversation(empty.id, T0 + 1) == "discarded"
    assert await store.get_conversation(alice.id, empty.id) is None
    spoken = await _spoken(store, alice)
    assert await store.close_conversation(spoken.id, T0 + 9) == "processing"
    closed = await store.get_conversation(alice.id, spoken.id)
    assert closed is not None
    assert (closed.status, closed.next_attempt_at, closed.updated_at) == (
        "processing",
        T0 + 9,
        T0 + 9,
    )
    assert await store.close_conversation(spoken.id, T0 + 50) == "processing"  # idempotent
    unchanged = await store.get_conversation(alice.id, spoken.id)
    assert unchanged is not None and unchanged.next_attempt_at == T0 + 9
    assert await store.close_conversation("missing", T0) == "discarded"
    assert await store.get_in_progress(alice.id) is None


async def test_find_expired_in_progress(store: Store) -> None:
    alice = await _user(store)
    silent = await _conversation(store, alice, T0)  # no speech: measured from created_at
    spoken = await _spoken(store, alice, T0)  # last speech T0 + 5
    closed = await _spoken(store, alice, T0 - 1000)
    await store.close_conversation(closed.id, T0)
    assert await store.find_expired_in_progress(T0 + 119, 10) == []
    assert [c.id for c in await store.find_expired_in_progress(T0 + 120, 10)] == [silent.id]
    expired = await store.find_expired_in_progress(T0 + 125, 10)
    assert [c.id for c in expired] == [silent.id, spoken.id]
    assert [c.id for c in await store.find_expired_in_progress(T0 + 125, 1)] == [silent.id]


# -- processing -----------------------------------------------------------------------------------


async def test_claim_lease_expires_and_attempts_count(store: Store) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    assert await store.claim_for_processing(T0 + 10, 30, 10) == []  # still in progress
    await store.close_conversation(conv.id, T0 + 10)
    [claimed] = await store.claim_for_processing(T0 + 10, 30, 10)
    assert claimed.id == conv.id and claimed.processing_attempts == 1
    assert claimed.next_attempt_at == T0 + 40 and len(claimed.segments) == 1
    assert await store.claim_for_processing(T0 + 39, 30, 10) == []  # leased
    [again] = await store.claim_for_processing(T0 + 40, 30, 10)  # the worker died: lease expired
    assert again.processing_attempts == 2 and again.next_attempt_at == T0 + 70


async def test_complete_runs_extra_in_the_same_transaction(store: Store) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    await store.close_conversation(conv.id, T0 + 10)

    def failing_outbox(conn: sqlite3.Connection, completed: Conversation) -> None:
        conn.execute("CREATE TABLE outbox (conversation_id TEXT)")
        raise RuntimeError("outbox broke")

    summary = SummaryFields("Title", "Overview", "📅", "work", {"action_items": []})
    with pytest.raises(RuntimeError):
        await store.complete_conversation(conv.id, summary, T0 + 20, extra=failing_outbox)
    rolled_back = await store.get_conversation(alice.id, conv.id)
    assert rolled_back is not None and rolled_back.status == "processing"
    seen: list[Conversation] = []

    def outbox(conn: sqlite3.Connection, completed: Conversation) -> None:
        seen.append(completed)
        conn.execute("CREATE TABLE outbox (conversation_id TEXT)")
        conn.execute("INSERT INTO outbox VALUES (?)", (completed.id,))

    done = await store.complete_conversation(conv.id, summary, T0 + 20, extra=outbox)
    assert (
        await _count(store, "SELECT count(*) FROM outbox WHERE conversation_id = ?", conv.id) == 1
    )
    assert done is not None and seen == [done]
    assert done == await store.get_conversation(alice.id, conv.id)  # what was written, segments too
    assert done.status == "completed" and done.next_attempt_at is None and len(done.segments) == 1
    assert (done.title, done.overview, done.emoji, done.category) == (
        "Title",
        "Overview",
        "📅",
        "work",
    )
    assert done.structured == {"action_items": []}
    assert await store.complete_conversation(conv.id, summary, T0 + 30, extra=outbox) is None
    assert len(seen) == 1  # no rerun of the hook either
    with pytest.raises(ValidationError, match="structured"):
        bad = SummaryFields("", "", "", "", {"x": object()})
        await store.complete_conversation(conv.id, bad, T0)


async def test_fail_and_reschedule(store: Store) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    assert await store.reschedule_processing(conv.id, T0 + 99, "early") is False  # not processing
    await store.close_conversation(conv.id, T0 + 10)
    assert await store.reschedule_processing(conv.id, T0 + 60, "summariser 503") is True
    assert await store.claim_for_processing(T0 + 59, 30, 10) == []
    [claimed] = await store.claim_for_processing(T0 + 60, 30, 10)
    assert claimed.failure_reason == "summariser 503"
    assert await store.fail_conversation(conv.id, "gave up", T0 + 61) is True
    assert await store.fail_conversation(conv.id, "again", T0 + 62) is False
    failed = await store.get_conversation(alice.id, conv.id)
    assert failed is not None
    assert (failed.status, failed.failure_reason, failed.next_attempt_at) == (
        "failed",
        "gave up",
        None,
    )
    assert await store.claim_for_processing(T0 + 1000, 30, 10) == []


# -- the user API ----------------------------------------------------------------------------------


async def _pages(store: Store, user: User, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await store.list_conversations(user.id, cursor=cursor, limit=4, **filters)  # type: ignore[arg-type]
        pages.append([c.id for c in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def test_keyset_pagination_newest_first_and_stable(store: Store) -> None:
    alice = await _user(store)
    made = [await _conversation(store, alice, T0 + i // 3) for i in range(10)]  # ties in time
    expected = [c.id for c in sorted(made, key=lambda c: (c.created_at, c.id), reverse=True)]
    pages = await _pages(store, alice)
    assert [len(p) for p in pages] == [4, 4, 2]
    assert sum(pages, []) == expected
    first = await store.list_conversations(alice.id, limit=4)
    for _ in range(3):  # newer conversations arrive while the client pages
        await _conversation(store, alice, T0 + 100)
    second = await store.list_conversations(alice.id, limit=4, cursor=first.next_cursor)
    assert [c.id for c in second.items] == expected[4:8]
    assert all(c.segments == () for c in second.items)


async def test_list_filters_by_status_and_time(store: Store) -> None:
    alice = await _user(store)
    made = [await _spoken(store, alice, T0 + i * 10) for i in range(6)]
    for conv in made[::2]:
        await store.close_conversation(conv.id, T0 + 100)
    processing = await store.list_conversations(alice.id, status="processing")
    assert [c.id for c in processing.items] == [made[4].id, made[2].id, made[0].id]
    window = await store.list_conversations(alice.id, since=T0 + 10, until=T0 + 40)
    assert [c.id for c in window.items] == [made[3].id, made[2].id, made[1].id]
    both = await _pages(store, alice, status="in_progress", since=T0 + 10)
    assert both == [[made[5].id, made[3].id, made[1].id]]


async def test_list_omi_filters_offset_and_segments(store: Store) -> None:
    """Omi's list: several statuses, discarded and starred filters, offset, with segments."""
    alice = await _user(store)
    made = [await _spoken(store, alice, T0 + i * 10) for i in range(5)]
    await store.close_conversation(made[0].id, T0 + 100)
    await store.update_conversation(alice.id, made[1].id, {"discarded": True})
    await store.update_conversation(alice.id, made[2].id, {"starred": True})
    ids = lambda page: [c.id for c in page.items]  # noqa: E731
    live = await store.list_conversations(alice.id, statuses={"in_progress", "processing"})
    assert ids(live) == [c.id for c in reversed(made)]
    assert ids(await store.list_conversations(alice.id, statuses={"processing"})) == [made[0].id]
    both = await store.list_conversations(alice.id, status="processing", statuses={"completed"})
    assert both.items == ()
    kept = await store.list_conversations(alice.id, include_discarded=False)
    assert made[1].id not in ids(kept) and len(kept.items) == 4
    assert ids(await store.list_conversations(alice.id, starred=True)) == [made[2].id]
    page = await store.list_conversations(alice.id, offset=1, limit=2, with_segments=True)
    assert ids(page) == [made[3].id, made[2].id] and page.next_cursor is not None
    assert [len(c.segments) for c in page.items] == [1, 1]
    assert (await store.list_conversations(alice.id, offset=9)).items == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"status": "done"}, "status"),
        ({"statuses": ["completed", "done"]}, "status"),
        ({"offset": -1}, "offset"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4IiwxXQ"}, "cursor"),  # valid base64 JSON, wrong shape
        ({"since": float("nan")}, "since"),
    ],
)
async def test_list_rejects_bad_arguments(
    store: Store, kwargs: dict[str, object], field: str
) -> None:
    alice = await _user(store)
    with pytest.raises(ValidationError) as info:
        await store.list_conversations(alice.id, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_a_user_never_sees_another_users_conversation(store: Store) -> None:
    alice, bob = await _user(store), await _user(store, "bob")
    conv = await _spoken(store, alice)
    assert await store.get_conversation(bob.id, conv.id) is None
    assert await store.update_conversation(bob.id, conv.id, {"title": "mine"}) is None
    assert await store.update_conversation(bob.id, conv.id, {}) is None
    assert await store.delete_conversation(bob.id, conv.id) is False
    assert (await store.list_conversations(bob.id)).items == ()
    assert await store.get_in_progress(bob.id) is None
    kept = await store.get_conversation(alice.id, conv.id)
    assert kept is not None and kept.title == "" and len(kept.segments) == 1


async def test_delete_cascades_to_segments(store: Store) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    assert await _count(store, "SELECT count(*) FROM transcript_segments") == 1
    assert await store.delete_conversation(alice.id, conv.id) is True
    assert await store.delete_conversation(alice.id, conv.id) is False
    assert await _count(store, "SELECT count(*) FROM transcript_segments") == 0


async def test_update_editable_fields(store: Store) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    fields = {
        "title": "Standup",
        "overview": "o",
        "emoji": "🚀",
        "category": "work",
        "starred": True,
        "visibility": "shared",
        "discarded": True,
    }
    updated = await store.update_conversation(alice.id, conv.id, fields, now=T0 + 50)
    assert updated is not None and len(updated.segments) == 1 and updated.updated_at == T0 + 50
    assert {name: getattr(updated, name) for name in fields} == fields
    assert await store.update_conversation(alice.id, "missing", {"title": "x"}) is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"status": "completed"}, "status"),
        ({"user_id": "bob"}, "user_id"),
        ({"title": 5}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"starred": 1}, "starred"),
        ({"visibility": "everyone"}, "visibility"),
        ({"title": "ok", "discarded": "yes"}, "discarded"),
    ],
)
async def test_update_rejects_bad_fields(
    store: Store, fields: dict[str, object], field: str
) -> None:
    alice = await _user(store)
    conv = await _spoken(store, alice)
    with pytest.raises(ValidationError, match=field) as info:
        await store.update_conversation(alice.id, conv.id, fields)
    assert info.value.field == field
    unchanged = await store.get_conversation(alice.id, conv.id)
    assert unchanged is not None and unchanged.title == "" and not unchanged.discarded


# -- concurrency --------------------------------------------------------------------------------------


async def test_fifty_concurrent_writers_all_land(store: Store) -> None:
    alice = await _user(store)
    shared = await _conversation(store, alice)
    own = [await _conversation(store, alice) for _ in range(25)]

    async def write(i: int) -> None:
        target = shared.id if i % 2 else own[i // 2].id
        rows = [replace(_segment(target, j), id=f"w{i}-{j}") for j in range(5)]
        await store.save_segments(target, rows, [], T0 + i)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(write, i)
            for _ in range(10):
                nursery.start_soon(store.list_conversations, alice.id)
    assert await _count(store, "SELECT count(*) FROM transcript_segments") == 250
    full = await store.get_conversation(alice.id, shared.id)
    assert full is not None and len(full.segments) == 125 and full.finished_at == T0 + 49
    stats = store.statistics()
    assert stats.failed == 0 and stats.lane.failed == 0


async def test_an_abandoned_call_closes_its_connection_when_it_returns(db_path: Path) -> None:
    release, started = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        started.set()
        release.wait(10)
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])

    lane = ThreadLane("storage-abandon", 2, abandon_on_cancel=True)
    with trio.fail_after(20):
        async with open_sqlite_store(db_path, lane=lane) as store:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.run_in_transaction, slow)
                await wait_until(started.is_set)
                nursery.cancel_scope.cancel()
            assert lane.statistics().abandoned == 1
        assert store.statistics().connections_open == 1  # still in use by the abandoned thread
        release.set()
        await wait_until(lambda: store.statistics().connections_open == 0)
        await lane.aclose()
