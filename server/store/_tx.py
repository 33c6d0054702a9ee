"""Transaction helpers for the synchronous SQL functions (run in storage-lane threads)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from server.store._db import DbConnection

__all__ = ["new_id", "read_transaction", "write_transaction"]


def new_id() -> str:
    """A new row id: a uuid4 as 32 hex characters."""
    return uuid.uuid4().hex


@contextmanager
def write_transaction(conn: DbConnection) -> Iterator[DbConnection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

    ``IMMEDIATE`` takes the write lock up front (waiting up to ``busy_timeout``), so a
    read-then-write transaction can never fail half-way with ``SQLITE_BUSY_SNAPSHOT``.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


@contextmanager
def read_transaction(conn: DbConnection) -> Iterator[DbConnection]:
    """A deferred transaction: several reads see one snapshot (WAL readers never block)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.rollback()
