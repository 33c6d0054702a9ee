"""Schema migrations: from empty, from a previous version, idempotent, atomic, future refused."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from server.store import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    SchemaTooNewError,
    StoreError,
    apply_migrations,
    open_sqlite_store,
)

T0 = 1_700_000_000.0


def _raw(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path, isolation_level=None))


def _version(path: Path) -> int:
    with _raw(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _tables(path: Path) -> set[str]:
    with _raw(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_steps_are_numbered_and_there_are_at_least_two() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == MIGRATIONS[-1].version >= 2


async def test_empty_database_is_migrated_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with open_sqlite_store(path) as store:
        user = await store.create_user("alice", T0)
        await store.create_conversation(user.id, source="omi", language="en", timeout_s=60, now=T0)
    assert _version(path) == LATEST_VERSION
    assert {"users", "api_tokens", "conversations", "transcript_segments"} <= _tables(path)


async def test_previous_version_database_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with _raw(path) as conn:
        assert apply_migrations(conn, MIGRATIONS[:1]) == 1
        conn.execute("INSERT INTO users (id, name, created_at) VALUES ('u1', 'old', ?)", (T0,))
    assert "conversations" not in _tables(path)
    async with open_sqlite_store(path) as store:
        user = await store.get_user_by_name("old")
        assert user is not None and (user.id, user.created_at) == ("u1", T0)
        conv = await store.create_conversation(
            user.id, source="omi", language="en", timeout_s=60, now=T0
        )
        assert await store.get_in_progress(user.id) == conv
    assert _version(path) == LATEST_VERSION


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    for attempt in range(3):
        async with open_sqlite_store(path) as store:
            await store.create_user(f"user{attempt}", T0)
            assert len(await store.list_users()) == attempt + 1
    with _raw(path) as conn:
        assert apply_migrations(conn) == LATEST_VERSION


async def test_a_database_from_the_future_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with _raw(path) as conn:
        conn.execute("CREATE TABLE something_new (x)")
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 7}")
    with pytest.raises(SchemaTooNewError) as info:
        async with open_sqlite_store(path):
            pytest.fail("a newer schema must not open")
    assert (info.value.found, info.value.supported) == (LATEST_VERSION + 7, LATEST_VERSION)
    assert "newer than this server supports" in str(info.value)
    assert _version(path) == LATEST_VERSION + 7
    assert _tables(path) == {"something_new"}


def test_a_failing_step_rolls_back_to_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    broken = Migration(
        LATEST_VERSION + 1,
        "half_done",
        "CREATE TABLE outbox (id TEXT PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    with _raw(path) as conn:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            apply_migrations(conn, (*MIGRATIONS, broken))
        assert not conn.in_transaction
    assert _version(path) == LATEST_VERSION
    assert "outbox" not in _tables(path)


def test_appending_a_step_with_a_trigger_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "next.db"
    step = Migration(
        LATEST_VERSION + 1,
        "outbox",
        """
        -- a later step, as someone will add it
        CREATE TABLE outbox (id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL);
        CREATE TRIGGER outbox_on_complete AFTER UPDATE OF status ON conversations
        WHEN NEW.status = 'completed'
        BEGIN
            INSERT INTO outbox (conversation_id) VALUES (NEW.id);
        END;
        -- trailing comment
        """,
    )
    with _raw(path) as conn:
        assert apply_migrations(conn, (*MIGRATIONS, step)) == LATEST_VERSION + 1
        assert apply_migrations(conn, (*MIGRATIONS, step)) == LATEST_VERSION + 1
    assert "outbox" in _tables(path)


def test_misnumbered_steps_are_a_programming_error(tmp_path: Path) -> None:
    with (
        _raw(tmp_path / "x.db") as conn,
        pytest.raises(StoreError, match=f"expected {LATEST_VERSION + 1}"),
    ):
        apply_migrations(conn, (*MIGRATIONS, Migration(LATEST_VERSION + 2, "gap", "")))
