"""A small pool of SQLite connections: one per concurrent call, all closed by :meth:`close`.

A connection is taken from the pool by the worker thread that runs a store call and given back
when the call returns, so no connection is ever used by two calls at once, and the pool never
grows beyond the storage lane's capacity. Connections are opened with
``check_same_thread=False`` (``sqlite3.threadsafety == 3`` here) because successive calls run
on whichever lane thread is free. :meth:`close` closes the idle connections at once; one still
in use (its caller was cancelled and the lane abandoned the thread) is closed by that thread
when its call returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar, TypeVarTuple, Unpack, final

from server.store.errors import StoreClosedError, map_sqlite_error

__all__ = ["BUSY_TIMEOUT_MS", "ConnectionPool", "connect"]

LOGGER = logging.getLogger(__name__)

#: How long a writer waits for another writer's lock before ``database is locked``.
BUSY_TIMEOUT_MS: Final = 5000

RetT = TypeVar("RetT")
ArgsT = TypeVarTuple("ArgsT")


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL, ``synchronous=NORMAL``, FKs and a busy timeout.

    Blocking: call it in a storage-lane thread.
    """
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


@final
class ConnectionPool:
    """Connections to one database file; every method runs in a storage-lane thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self.open_count = 0
        self.created = 0

    def run(self, fn: Callable[[sqlite3.Connection, Unpack[ArgsT]], RetT], *args: *ArgsT) -> RetT:
        """Call ``fn(conn, *args)`` with a connection of its own; map ``sqlite3`` errors once."""
        try:
            conn = self._acquire()
            try:
                return fn(conn, *args)
            finally:
                self._release(conn)
        except sqlite3.Error as exc:
            raise map_sqlite_error(exc) from exc

    def close(self) -> None:
        """Refuse new calls and close every idle connection (busy ones close when released)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def _acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            if self._idle:
                return self._idle.pop()
            self.open_count += 1
            self.created += 1
        try:
            return connect(self._path)
        except BaseException:
            with self._lock:
                self.open_count -= 1
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        healthy = self._reset(conn)
        with self._lock:
            keep = healthy and not self._closed
            if keep:
                self._idle.append(conn)
        if not keep:
            self._discard(conn)

    def _reset(self, conn: sqlite3.Connection) -> bool:
        """Roll back a transaction a failed call left open; ``False`` if the connection is broken."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            return False
        return True

    def _discard(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error:
            LOGGER.warning("closing a database connection failed", exc_info=True)
        with self._lock:
            self.open_count -= 1
