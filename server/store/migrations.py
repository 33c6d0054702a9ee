"""Versioned schema migrations, applied in order at start, one transaction per step.

The same steps build both backends: each statement is written in SQLite's dialect and, on
PostgreSQL, passed through :func:`server.store._pg.translate_ddl` (column types, ``WITHOUT
ROWID``). The schema version lives in ``PRAGMA user_version`` on SQLite (0 for an empty file)
and in the one-row table ``trioscribe_schema`` on PostgreSQL, where every step also holds a
transaction-scoped advisory lock, so nodes starting together migrate once. Each
:class:`Migration` moves the database from ``version - 1`` to ``version``; a database whose
version is higher than the last step known here was written by a newer server and is refused
with :class:`~server.store.errors.SchemaTooNewError` before any schema change.

Adding a step (webhooks, apps, outbox, deliveries, ...):
    Append ``Migration(N + 1, "what_it_adds", _SQL_...)`` to :data:`MIGRATIONS`. Never edit or
    reorder a step that has shipped: databases in the field already ran it. A step is plain SQL
    (several statements are fine, including ``CREATE TRIGGER``); it runs inside
    ``BEGIN IMMEDIATE ... COMMIT`` together with the version bump, so a failing step leaves the
    database at the previous version. Foreign keys are enforced during migrations; a step that
    rebuilds a table must copy rows in an order that satisfies them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from server.store._cluster import SQL_MIGRATION as _SQL_CLUSTER
from server.store._db import DbConnection, is_postgres
from server.store.errors import SchemaTooNewError, StoreError

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "apply_migrations", "schema_version"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``sql`` takes the database from ``version - 1`` to ``version``."""

    version: int
    name: str
    sql: str


_SQL_USERS_TOKENS: Final = """
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL
);
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash    TEXT NOT NULL UNIQUE,          -- sha256 hex of the raw token
    prefix        TEXT NOT NULL,                 -- display only
    label         TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX api_tokens_by_user ON api_tokens(user_id, created_at);
"""

_SQL_CONVERSATIONS: Final = """
CREATE TABLE conversations (
    id                   TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status               TEXT NOT NULL
        CHECK (status IN ('in_progress', 'processing', 'completed', 'failed')),
    created_at           REAL NOT NULL,
    updated_at           REAL NOT NULL,
    started_at           REAL,
    finished_at          REAL,
    source               TEXT NOT NULL,
    language             TEXT NOT NULL,
    timeout_s            REAL NOT NULL,
    title                TEXT NOT NULL DEFAULT '',
    overview             TEXT NOT NULL DEFAULT '',
    emoji                TEXT NOT NULL DEFAULT '🧠',
    category             TEXT NOT NULL DEFAULT 'other',
    structured_json      TEXT NOT NULL DEFAULT '{}',
    starred              INTEGER NOT NULL DEFAULT 0,
    visibility           TEXT NOT NULL DEFAULT 'private',
    discarded            INTEGER NOT NULL DEFAULT 0,
    failure_reason       TEXT,
    processing_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      REAL
);
CREATE INDEX conversations_by_user ON conversations(user_id, created_at DESC, id DESC);
CREATE INDEX conversations_by_status ON conversations(status, next_attempt_at);
CREATE TABLE transcript_segments (
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    id               TEXT NOT NULL,
    idx              INTEGER NOT NULL,
    text             TEXT NOT NULL,
    speaker          TEXT NOT NULL,
    speaker_id       INTEGER NOT NULL,
    is_user          INTEGER NOT NULL,
    person_id        TEXT,
    start_s          REAL NOT NULL,
    end_s            REAL NOT NULL,
    stt_provider     TEXT,
    PRIMARY KEY (conversation_id, id)
) WITHOUT ROWID;
CREATE INDEX transcript_segments_in_order ON transcript_segments(conversation_id, idx);
"""

_SQL_WEBHOOKS: Final = """
CREATE TABLE webhook_endpoints (
    id                     TEXT PRIMARY KEY,
    user_id                TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    owner_kind             TEXT NOT NULL CHECK (owner_kind IN ('webhook', 'app')),
    name                   TEXT NOT NULL DEFAULT '',
    url                    TEXT NOT NULL,
    kinds_json             TEXT NOT NULL,             -- JSON list of event kinds (triggers)
    interval_s             REAL NOT NULL DEFAULT 5,   -- audio_bytes batching interval
    secret                 TEXT NOT NULL,             -- whsec_..., needed to sign (symmetric)
    previous_secret        TEXT,                      -- still signed with until ...
    previous_secret_until  REAL,
    enabled                INTEGER NOT NULL DEFAULT 1,
    disabled_reason        TEXT,
    created_at             REAL NOT NULL,
    updated_at             REAL NOT NULL
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints(user_id, owner_kind, created_at);
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    message_id       TEXT NOT NULL,                   -- webhook-id, the same on every attempt
    dedupe_key       TEXT,                            -- e.g. day_summary:2026-11-29
    payload          BLOB NOT NULL,                   -- the exact bytes sent
    content_type     TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL,                            -- due time, or lease end while held
    last_status      INTEGER,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    finished_at      REAL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries(endpoint_id, created_at DESC);
CREATE UNIQUE INDEX webhook_deliveries_dedupe ON webhook_deliveries(endpoint_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    duration_s   REAL NOT NULL,
    status       INTEGER,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
"""

_SQL_DELIVERY_MODE: Final = """
-- Per-registration delivery of durable kinds: 'once' (Omi apps: one try, never retried) or
-- 'at_least_once' (retried until a 2xx). Apps default to 'once', developer webhooks to
-- 'at_least_once'; registrations made before this step follow the same defaults.
ALTER TABLE webhook_endpoints ADD COLUMN delivery TEXT NOT NULL DEFAULT 'at_least_once'
    CHECK (delivery IN ('once', 'at_least_once'));
UPDATE webhook_endpoints SET delivery = 'once' WHERE owner_kind = 'app';
"""

#: Every schema step, in order. Append only (see the module docstring).
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "users_and_api_tokens", _SQL_USERS_TOKENS),
    Migration(2, "conversations_and_segments", _SQL_CONVERSATIONS),
    Migration(3, "webhooks_outbox_and_delivery_log", _SQL_WEBHOOKS),
    Migration(4, "webhook_delivery_mode", _SQL_DELIVERY_MODE),
    Migration(5, "nodes_live_sessions_and_tickets", _SQL_CLUSTER),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


_PG_VERSION_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS trioscribe_schema (one INTEGER PRIMARY KEY CHECK (one = 1),"
    " version INTEGER NOT NULL)"
)
#: Serialises migrating starters on PostgreSQL (per schema, so test schemas do not contend).
_PG_LOCK: Final = (
    "SELECT pg_advisory_xact_lock(hashtext('trioscribe.migrate.' || current_schema()))"
)


def schema_version(conn: DbConnection) -> int:
    """The database's schema version (``PRAGMA user_version`` on SQLite; 0 for a new database)."""
    if is_postgres(conn):
        row = conn.execute("SELECT version FROM trioscribe_schema").fetchone()
        return int(row[0]) if row else 0
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def _begin_exclusive(conn: DbConnection) -> None:
    """Open a transaction that no other migrating starter runs concurrently with."""
    conn.execute("BEGIN IMMEDIATE")
    if is_postgres(conn):
        conn.execute(_PG_LOCK)
        conn.execute(_PG_VERSION_TABLE)


def _set_version(conn: DbConnection, version: int) -> None:
    if is_postgres(conn):
        conn.execute(
            "INSERT INTO trioscribe_schema (one, version) VALUES (1, ?)"
            " ON CONFLICT (one) DO UPDATE SET version = excluded.version",
            (version,),
        )
    else:
        conn.execute(f"PRAGMA user_version = {int(version)}")


def apply_migrations(conn: DbConnection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to the last of ``migrations``; return the resulting version.

    Idempotent and safe against a concurrent starter: each step re-reads the version inside its
    own ``BEGIN IMMEDIATE`` transaction and skips itself if another process already applied it.
    ``conn`` must be in autocommit mode (``isolation_level=None``).

    Raises:
        SchemaTooNewError: the database is newer than the last known step (the schema is not changed).
        StoreError: ``migrations`` are not numbered 1, 2, 3, ...
    """
    _check_numbering(migrations)
    latest = migrations[-1].version if migrations else 0
    found = _read_version(conn)
    if found > latest:
        raise SchemaTooNewError(found, latest)
    for step in migrations[found:]:
        _apply_step(conn, step, latest)
    return schema_version(conn)


def _read_version(conn: DbConnection) -> int:
    if not is_postgres(conn):
        return schema_version(conn)
    _begin_exclusive(conn)  # creates the version table once, under the lock
    try:
        return schema_version(conn)
    finally:
        conn.commit()


def _check_numbering(migrations: Sequence[Migration]) -> None:
    for expected, step in enumerate(migrations, start=1):
        if step.version != expected:
            raise StoreError(
                f"migration {step.name!r} has version {step.version}, expected {expected}"
            )


def _apply_step(conn: DbConnection, step: Migration, latest: int) -> None:
    _begin_exclusive(conn)
    try:
        current = schema_version(conn)
        if current > latest:
            raise SchemaTooNewError(current, latest)
        if current < step.version:
            for statement in _statements(step.sql):
                conn.execute(_dialect_ddl(conn, statement))
            _set_version(conn, step.version)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _dialect_ddl(conn: DbConnection, statement: str) -> str:
    if not is_postgres(conn):
        return statement
    from server.store._pg import translate_ddl

    return translate_ddl(statement)


def _statements(sql: str) -> Iterator[str]:
    """Split a script into complete statements (``sqlite3.complete_statement`` knows triggers)."""
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    leftover = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise StoreError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
