"""The PostgreSQL backend: :func:`open_postgres_store`, selected by ``--database-url``.

The same store class, SQL and migrations as the SQLite default (see :mod:`server.store._pg` for
how the shared SQL is translated); only the connection pool differs. ``psycopg`` is a blocking
driver, so every call still goes through the storage :class:`~lanes.ThreadLane`, and the pool
holds at most one connection per lane thread.

Several server processes (``--workers``, or nodes on several machines) may share one database:
the migrations take an advisory lock, lease claims use ``FOR UPDATE SKIP LOCKED``, and every
state change is a conditional update inside one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg

from lanes import ThreadLane
from server.store._pg import PgPool
from server.store.errors import StoreError, StoreUnavailableError, map_pg_error
from server.store.migrations import MIGRATIONS, apply_migrations
from server.store.sqlite import SqliteStore, serving_store

__all__ = [
    "CONNECT_TIMEOUT_S",
    "URL_SCHEMES",
    "open_postgres_store",
    "read_postgres_version",
    "redact_url",
]

LOGGER = logging.getLogger(__name__)

#: How long the start waits for the first database connection.
CONNECT_TIMEOUT_S: Final = 15.0
#: URL schemes :func:`open_postgres_store` accepts.
URL_SCHEMES: Final = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """``url`` without its password, in the user part or as a ``password=`` parameter (safe to
    print and log)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        masked = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, safe="/*"))
    return parts.geturl()


def read_postgres_version(url: str) -> int | None:
    """The trioscribe schema version at ``url``; ``None`` if it has no trioscribe schema yet.

    Blocking (call it in a lane thread). One short-lived connection; reads only, creates nothing.

    Raises:
        StoreUnavailableError: no connection within :data:`CONNECT_TIMEOUT_S` (the message is
            libpq's, which never contains the password).
        StoreError: any other database error.
    """
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S))
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise StoreUnavailableError(f"cannot connect to PostgreSQL: {reason}") from None
    try:
        with conn:
            found = conn.execute("SELECT to_regclass('trioscribe_schema') IS NOT NULL").fetchone()
            if not (found and found[0]):
                return None
            row = conn.execute("SELECT version FROM trioscribe_schema").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise map_pg_error(exc) from exc


def _prepare(pool: PgPool) -> int:
    pool.open(CONNECT_TIMEOUT_S)
    return pool.run(apply_migrations, MIGRATIONS)


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    lane: ThreadLane | None = None,
    threads: int = 4,
    pressure: Callable[[], float] | None = None,
) -> AsyncIterator[SqliteStore]:
    """Connect to ``url``, migrate the schema, yield the store; close the pool on exit.

    Args:
        url: ``postgresql://user:password@host:port/db?...`` (libpq URL).
        lane: the storage lane every call goes through (stays the caller's); ``None``: the
            store makes and closes its own lane of ``threads`` threads.
        threads: the size of the store's own lane when ``lane`` is ``None``.
        pressure: as for :func:`~server.store.sqlite.open_sqlite_store`.

    Raises:
        StoreUnavailableError: the database cannot be reached within ``CONNECT_TIMEOUT_S``.
        SchemaTooNewError: the database was migrated by a newer server.
    """
    if urlsplit(url).scheme not in URL_SCHEMES:
        raise StoreError(f"not a PostgreSQL URL: {redact_url(url)}")
    async with serving_store(
        lambda lane: PgPool(url, lane.statistics().capacity + 2),  # + threads a cancel left
        _prepare,
        redact_url(url),
        lane=lane,
        threads=threads,
        pressure=pressure,
    ) as store:
        yield store
