"""Which store the settings name, and opening it: the one place SQLite and PostgreSQL diverge.

:func:`store_target` reads ``database_url`` / ``data_dir`` of the settings once and returns a
:class:`StoreTarget`: how to open that store (migrating it, as every opener does), how to read
its schema version without changing anything, and a name that is safe to print (a PostgreSQL
URL without its password). The server (:mod:`server.compose`), ``python -m server check`` and
the ``token`` / ``user`` commands all open their store through it, so a ``--database-url``
means the same database everywhere and nothing is written to ``data_dir`` when one is given.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lanes import ThreadLane
from server.store.migrations import schema_version
from server.store.protocol import Store
from server.store.sqlite import DB_FILENAME, open_sqlite_store

if TYPE_CHECKING:
    from server.settings import Settings

__all__ = ["StoreTarget", "open_store", "store_target"]

#: ``(lane, threads, pressure) -> async context manager yielding the migrated store``.
Opener = Callable[
    [ThreadLane | None, int, Callable[[], float] | None], AbstractAsyncContextManager[Store]
]


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """The store named by the settings (see the module docstring).

    Attributes:
        name: the SQLite file, or the PostgreSQL URL with its password masked (safe to print).
        open: ``open(lane, threads, pressure)``: connect, migrate, yield the store, close on
            exit; the lane stays the caller's (``None``: the store makes its own of
            ``threads``); ``pressure`` as for :func:`open_store`.
        read_version: blocking (call it in a lane thread): the schema version, ``None`` when
            there is no database / no trioscribe schema yet. Creates and changes nothing.
    """

    name: str
    open: Opener
    read_version: Callable[[], int | None]


def store_target(settings: Settings) -> StoreTarget:
    """The store ``settings`` name: PostgreSQL with ``database_url``, else SQLite in ``data_dir``."""
    url = settings.database_url
    if url:
        from server.store import postgres  # psycopg is imported only when it is used

        return StoreTarget(
            name=postgres.redact_url(url),
            open=lambda lane, threads, pressure: postgres.open_postgres_store(
                url, lane=lane, threads=threads, pressure=pressure
            ),
            read_version=lambda: postgres.read_postgres_version(url),
        )
    path = settings.data_dir / DB_FILENAME
    return StoreTarget(
        name=str(path),
        open=lambda lane, threads, pressure: open_sqlite_store(
            path, lane=lane, threads=threads, pressure=pressure
        ),
        read_version=lambda: _read_sqlite_version(path),
    )


@asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    lane: ThreadLane | None = None,
    threads: int = 1,
    pressure: Callable[[], float] | None = None,
) -> AsyncIterator[Store]:
    """Open (and migrate) the store ``settings`` name; close it on exit.

    Args:
        settings: ``database_url`` selects PostgreSQL, otherwise SQLite in ``data_dir``.
        lane: the storage lane every call goes through (stays the caller's); ``None``: the
            store makes and closes its own lane of ``threads`` threads.
        threads: the size of the store's own lane when ``lane`` is ``None``.
        pressure: the event loop's pressure, 0-1 (the server's
            :meth:`~server.loopload.LoopLoad.pressure`): how much of its linger the group
            commit of segment writes waits under load. ``None``: all of it.

    Cancellation: as the backend's opener (the store closes under a shielded, bounded scope).
    """
    async with store_target(settings).open(lane, threads, pressure) as store:
        yield store


def _read_sqlite_version(path: Path) -> int | None:
    """The schema version of the SQLite file at ``path``; ``None`` if there is none (blocking)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return schema_version(conn)
    finally:
        conn.close()
