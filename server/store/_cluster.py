"""What several server processes share through the store: nodes, live sessions, tickets.

Synchronous SQL in the shared dialect (storage-lane threads; see :mod:`server.store._pg`).

* ``nodes``: one row per running server process, its ``heartbeat_at`` refreshed every
  ``node_heartbeat_s``. A node silent for ``ttl_s`` is dead: any node deletes its row, and its
  ``live_sessions`` rows go with it (``ON DELETE CASCADE``).
* ``live_sessions``: one row per admitted ``/v4/listen`` session, so the per-user cap holds
  across nodes. A session counts only while its node's heartbeat is fresh, so a killed node's
  sessions stop counting within ``ttl_s`` even before anyone deletes them.
* ``listen_tickets``: single-use WebSocket tickets (SHA-256 only), redeemed by a ``DELETE``
  that only one node can win.
"""

from __future__ import annotations

from server.store._db import DbConnection, lock_clause
from server.store._tx import write_transaction
from server.store.errors import NotFoundError

__all__ = [
    "close_live_session",
    "create_ticket",
    "heartbeat_node",
    "open_live_session",
    "redeem_ticket",
    "register_node",
    "remove_node",
]

SQL_MIGRATION = """
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL
);
CREATE TABLE live_sessions (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    started_at  REAL NOT NULL
);
CREATE INDEX live_sessions_by_user ON live_sessions(user_id);
CREATE INDEX live_sessions_by_node ON live_sessions(node_id);
CREATE TABLE listen_tickets (
    ticket_hash  TEXT PRIMARY KEY,                  -- sha256 hex of the raw ticket
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at   REAL NOT NULL
);
CREATE INDEX listen_tickets_by_expiry ON listen_tickets(expires_at);
"""


def register_node(conn: DbConnection, node_id: str, now: float) -> None:
    """Insert (or revive) this node's row."""
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (node_id, now, now),
        )


def heartbeat_node(conn: DbConnection, node_id: str, now: float, ttl_s: float) -> int:
    """Refresh this node's heartbeat and delete dead nodes (with their sessions); how many."""
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (node_id, now, now),
        )
        cursor = conn.execute(
            "DELETE FROM nodes WHERE heartbeat_at < ? AND id <> ?", (now - ttl_s, node_id)
        )
        return int(cursor.rowcount)


def remove_node(conn: DbConnection, node_id: str) -> None:
    """Delete this node's row and its sessions (clean shutdown)."""
    with write_transaction(conn):
        conn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))


def open_live_session(
    conn: DbConnection,
    session_id: str,
    node_id: str,
    user_id: str,
    max_per_user: int,
    now: float,
    ttl_s: float,
) -> bool:
    """Admit a session if the user has fewer than ``max_per_user`` on live nodes.

    The user's row is locked first (PostgreSQL), so two nodes admitting the same user at once
    count one after the other.
    """
    with write_transaction(conn):
        execute = conn.execute
        if not execute(
            f"SELECT 1 FROM users WHERE id = ?{lock_clause(conn)}", (user_id,)
        ).fetchone():
            raise NotFoundError(f"no user {user_id!r}")
        (live,) = execute(
            "SELECT COUNT(*) FROM live_sessions s JOIN nodes n ON n.id = s.node_id"
            " WHERE s.user_id = ? AND n.heartbeat_at >= ?",
            (user_id, now - ttl_s),
        ).fetchone()
        if int(live) >= max_per_user:
            return False
        execute(
            "INSERT INTO live_sessions (id, node_id, user_id, started_at) VALUES (?, ?, ?, ?)",
            (session_id, node_id, user_id, now),
        )
        return True


def close_live_session(conn: DbConnection, session_id: str) -> None:
    """Forget a session (idempotent)."""
    with write_transaction(conn):
        conn.execute("DELETE FROM live_sessions WHERE id = ?", (session_id,))


def create_ticket(
    conn: DbConnection, ticket_hash: str, user_id: str, expires_at: float, now: float
) -> None:
    """Store a ticket's hash; expired tickets are deleted on the way."""
    with write_transaction(conn):
        conn.execute("DELETE FROM listen_tickets WHERE expires_at < ?", (now,))
        conn.execute(
            "INSERT INTO listen_tickets (ticket_hash, user_id, expires_at) VALUES (?, ?, ?)",
            (ticket_hash, user_id, expires_at),
        )


def redeem_ticket(conn: DbConnection, ticket_hash: str, now: float) -> str | None:
    """Consume a ticket: its user id, or ``None`` if unknown, already used or expired.

    One ``DELETE ... RETURNING``: of several nodes redeeming the same ticket, one wins.
    """
    with write_transaction(conn):
        row = conn.execute(
            "DELETE FROM listen_tickets WHERE ticket_hash = ? RETURNING user_id, expires_at",
            (ticket_hash,),
        ).fetchone()
    if row is None or row[1] < now:
        return None
    return str(row[0])
