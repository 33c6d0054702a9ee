"""The DB-API surface the store's SQL functions use, met by ``sqlite3`` and :class:`PgConnection`.

A structural type, so the same synchronous SQL functions run on either backend's connection
(see :mod:`server.store._pg` for how the shared SQL is translated for PostgreSQL).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final, Protocol

from server.store.errors import StoreError, map_pg_error, map_sqlite_error

__all__ = [
    "DIALECT",
    "SKIP_LOCKED",
    "DbConnection",
    "DbCursor",
    "DbRow",
    "is_postgres",
    "lock_clause",
    "map_driver_error",
]

#: ``conn.dialect`` of a PostgreSQL connection (a ``sqlite3.Connection`` has no such attribute).
DIALECT: Final = "postgresql"
#: The lease claims' lock: concurrent claimers (other nodes) skip each other's rows.
SKIP_LOCKED: Final = "FOR UPDATE SKIP LOCKED"


def is_postgres(conn: object) -> bool:
    """Whether ``conn`` is a PostgreSQL connection (else SQLite)."""
    return getattr(conn, "dialect", None) == DIALECT


def map_driver_error(exc: Exception) -> StoreError | None:
    """``exc`` as a store error if it is one or a database driver's; ``None`` for anything else."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return map_sqlite_error(exc)
    if "psycopg" in sys.modules:
        import psycopg

        if isinstance(exc, psycopg.Error):
            return map_pg_error(exc)
    return None


def lock_clause(conn: object, clause: str = "FOR UPDATE") -> str:
    """``" " + clause`` on PostgreSQL, ``""`` on SQLite (whose writers are already serialised)."""
    return f" {clause}" if is_postgres(conn) else ""


class DbRow(Protocol):
    """A result row: by index or column name, ``keys()``, iterable (``sqlite3.Row``, ``PgRow``)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class DbCursor(Protocol):
    """A cursor: rows as ``sqlite3.Row``-like objects (index, name, ``keys()``)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DbConnection(Protocol):
    """An autocommit connection with explicit transactions (``BEGIN`` ... ``commit()``)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> DbCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> DbCursor: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...
