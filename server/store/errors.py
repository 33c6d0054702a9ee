"""The storage error tree, and the one place where driver (``sqlite3``, ``psycopg``) errors are
mapped onto it."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ConflictError",
    "NotFoundError",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
    "ValidationError",
    "map_pg_error",
    "map_sqlite_error",
]


class StoreError(Exception):
    """Base class of every error the store raises (lane errors pass through unchanged)."""


class NotFoundError(StoreError):
    """The row an operation needs does not exist (or belongs to someone else)."""


class ValidationError(StoreError):
    """An argument is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConflictError(StoreError):
    """A uniqueness rule was violated (for example a duplicate user name)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer version of the server; its schema is left as is."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this server supports ({supported});"
            " upgrade the server or use another data directory"
        )
        self.found = found
        self.supported = supported


class StoreUnavailableError(StoreError):
    """The database could not be used (locked past ``busy_timeout``, disk full, corrupt, ...)."""


class StoreClosedError(StoreError):
    """The store was closed; no new call is accepted."""


def map_sqlite_error(exc: sqlite3.Error) -> StoreError:
    """Translate a ``sqlite3`` exception into the store's error tree (call ``raise ... from exc``)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return ConflictError(f"constraint violated: {exc}")
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailableError(f"database unavailable: {exc}")
    return StoreError(f"database error: {type(exc).__name__}: {exc}")


def map_pg_error(exc: psycopg.Error) -> StoreError:
    """Translate a ``psycopg`` exception into the store's error tree (``raise ... from exc``)."""
    import psycopg.errors

    if isinstance(exc, psycopg.errors.IntegrityError):
        return ConflictError(f"constraint violated: {exc.sqlstate} {exc.diag.message_primary}")
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.QueryCanceled):
        return StoreUnavailableError(f"database unavailable: {type(exc).__name__}")
    return StoreError(f"database error: {type(exc).__name__}: {exc.diag.message_primary}")
