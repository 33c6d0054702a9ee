"""Users and hashed API tokens: the synchronous SQLite side (run in storage-lane threads).

A raw token is ``ts_`` + ``secrets.token_urlsafe(32)`` (256 random bits). Only its SHA-256 is
stored, with a short display prefix. Lookup is by that hash through a unique index: timing can
at most reveal something about a *hash* an attacker chose, which says nothing about any valid
token (finding a token with a given hash prefix is a preimage search), so the lookup is safe
without a constant-time comparison of the raw token.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from server.store._db import DbConnection, DbRow
from server.store._tx import new_id, write_transaction
from server.store.errors import ConflictError, NotFoundError
from server.store.models import TokenInfo, User

__all__ = [
    "LAST_USED_RESOLUTION_S",
    "TOKEN_PREFIX",
    "authenticate",
    "create_token",
    "create_user",
    "get_user",
    "get_user_by_name",
    "hash_token",
    "list_tokens",
    "list_users",
    "revoke_token",
]

TOKEN_PREFIX: Final = "ts_"
TOKEN_RANDOM_BYTES: Final = 32
#: Characters of the raw token kept for display ("ts_" + 8 random characters).
DISPLAY_PREFIX_CHARS: Final = 11
#: Longest string ever looked up as a token (real ones are 46 characters).
MAX_TOKEN_CHARS: Final = 200
#: ``last_used_at`` is written at most this often per token (not on every request).
LAST_USED_RESOLUTION_S: Final = 60.0

_TOKEN_COLUMNS: Final = "id, user_id, prefix, label, created_at, last_used_at, revoked_at"


def hash_token(raw_token: str) -> str:
    """The stored form of a raw token: its SHA-256 as hex."""
    return hashlib.sha256(raw_token.encode()).hexdigest()


def _user(row: DbRow) -> User:
    return User(id=row["id"], name=row["name"], created_at=row["created_at"])


def _token(row: DbRow) -> TokenInfo:
    return TokenInfo(**{key: row[key] for key in row.keys()})


def create_user(conn: DbConnection, name: str, now: float) -> User:
    """Insert a user; ``ConflictError`` if the name is taken."""
    user = User(id=new_id(), name=name, created_at=now)
    with write_transaction(conn):
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise ConflictError(f"user {name!r} already exists")
        conn.execute(
            "INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)",
            (user.id, user.name, user.created_at),
        )
    return user


def get_user(conn: DbConnection, user_id: str) -> User | None:
    """The user with this id, or ``None``."""
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    return _user(row) if row else None


def get_user_by_name(conn: DbConnection, name: str) -> User | None:
    """The user with this name, or ``None``."""
    row = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    return _user(row) if row else None


def list_users(conn: DbConnection) -> list[User]:
    """Every user, by name."""
    return [_user(row) for row in conn.execute("SELECT * FROM users ORDER BY name")]


def create_token(conn: DbConnection, user_id: str, label: str, now: float) -> tuple[str, TokenInfo]:
    """Insert a token's hash; return the raw token and its info."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)
    info = TokenInfo(new_id(), user_id, raw[:DISPLAY_PREFIX_CHARS], label, now, None, None)
    with write_transaction(conn):
        if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
            raise NotFoundError(f"no user {user_id!r}")
        conn.execute(
            "INSERT INTO api_tokens (id, user_id, token_hash, prefix, label, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (info.id, user_id, hash_token(raw), info.prefix, label, now),
        )
    return raw, info


def authenticate(conn: DbConnection, raw_token: str, now: float) -> User | None:
    """The owner of an unrevoked token; refreshes ``last_used_at`` once a minute at most."""
    if not raw_token.startswith(TOKEN_PREFIX) or len(raw_token) > MAX_TOKEN_CHARS:
        return None
    row = conn.execute(
        "SELECT t.id AS token_id, t.last_used_at, u.id, u.name, u.created_at"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = ? AND t.revoked_at IS NULL",
        (hash_token(raw_token),),
    ).fetchone()
    if row is None:
        return None
    last = row["last_used_at"]
    if last is None or now - last >= LAST_USED_RESOLUTION_S:
        conn.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE id = ?"
            " AND (last_used_at IS NULL OR last_used_at <= ?)",
            (now, row["token_id"], now - LAST_USED_RESOLUTION_S),
        )
    return _user(row)


def list_tokens(conn: DbConnection, user_id: str) -> list[TokenInfo]:
    """The user's tokens, oldest first (revoked ones included)."""
    rows = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ? ORDER BY created_at, id",
        (user_id,),
    )
    return [_token(row) for row in rows]


def revoke_token(conn: DbConnection, user_id: str, token_id: str, now: float) -> bool:
    """Revoke the user's token (idempotent); ``False`` if the user has no such token."""
    with write_transaction(conn):
        row = conn.execute(
            "SELECT revoked_at FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, user_id)
        ).fetchone()
        if row is None:
            return False
        if row["revoked_at"] is None:
            conn.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
    return True
