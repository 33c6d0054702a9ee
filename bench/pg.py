"""A PostgreSQL for the benchmarks, started the way the tests start theirs, and its counters.

:func:`open_bench_postgres` starts PostgreSQL 16 from the ``pgserver`` wheel (as ``tests/pg.py``
does: as root it runs the server as a system user ``pgserver``) in a temporary directory, on a
Unix socket only, creates one database for the server under test, and stops the server and
deletes the directory on exit. Nothing is configured beyond ``initdb``'s defaults (``fsync`` and
``synchronous_commit`` on): the figures are those of a stock PostgreSQL on this machine's disk,
and :class:`BenchPostgres` records the settings that decide what a commit costs.

:class:`PgCounters` reads ``pg_stat_database`` for that database (from the ``postgres``
database, so the reads are not counted themselves). PostgreSQL publishes a busy backend's
counters at most once a second, so a rate over a window of a few seconds is accurate to about
one second's worth of commits.

Every call into ``pgserver`` and ``psycopg`` blocks: it runs in a :class:`lanes.ThreadLane`.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import trio

from lanes import ThreadLane

__all__ = ["BenchPostgres", "PgCounters", "PgSample", "open_bench_postgres"]

DATABASE: Final = "bench"
#: Settings recorded with every result: what one commit costs depends on them.
SHOWN: Final = ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
                "shared_buffers", "max_connections")  # fmt: skip
STOP_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class BenchPostgres:
    """A started PostgreSQL: the bench database's URL, the admin URL, the postmaster's pid."""

    url: str
    admin_url: str
    database: str
    pid: int
    settings: dict[str, str]


@dataclass(frozen=True, slots=True)
class PgSample:
    """``pg_stat_database`` counters of one database at ``at`` (``trio.current_time()``)."""

    at: float
    commits: int
    rollbacks: int
    rows_written: int  # inserted + updated + deleted


def _filesystem(path: Path) -> str:
    """The filesystem type ``path`` lives on (the longest matching mount in /proc/mounts)."""
    best, kind = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def _start(directory: Path) -> tuple[Any, BenchPostgres]:
    with warnings.catch_warnings():
        # platformdirs warns at import that XDG_RUNTIME_DIR is unset (CI): harmless here.
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(directory / "data", cleanup_mode="delete")
    try:
        admin = server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            settings = {name: str(_one(conn, f"SHOW {name}")) for name in SHOWN}
        settings["filesystem"] = _filesystem(directory)
        pid = int(server.get_pid())
        return server, BenchPostgres(server.get_uri(DATABASE), admin, DATABASE, pid, settings)
    except BaseException:
        server.cleanup()
        raise


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        conn.close()


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


@asynccontextmanager
async def open_bench_postgres() -> AsyncIterator[BenchPostgres]:
    """A PostgreSQL of its own in a temporary directory (see the module docstring).

    Ownership: the server and the directory are this context's; both are gone on exit, also
    on error or cancellation (``pgserver``'s ``pg_ctl stop -w`` bounds the stop; the shielded
    wait is a thread that cannot be interrupted, so its deadline is the stop's own).
    """
    lane = ThreadLane("bench-pg", 1)
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server, pg = await lane.run_sync(_start, Path(tmp))
        try:
            yield pg
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                await lane.run_sync(server.cleanup)


class PgCounters:
    """Reads one database's ``pg_stat_database`` row over one connection to ``postgres``.

    Ownership: ``async with`` owns the connection (opened and closed in a one-thread lane).
    """

    def __init__(self, admin_url: str, database: str) -> None:
        self._url = admin_url
        self._database = database
        self._lane = ThreadLane("bench-pg-counters", 1)
        self._conn: psycopg.Connection[Any] | None = None

    async def __aenter__(self) -> PgCounters:
        self._conn = await self._lane.run_sync(self._connect)
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
            await self._lane.run_sync(_close, conn)

    def _connect(self) -> psycopg.Connection[Any]:
        # autocommit: every read is its own transaction, so it sees fresh counters (within one
        # transaction PostgreSQL would keep returning the same snapshot).
        return psycopg.connect(self._url, autocommit=True, application_name="bench-counters")

    def _read(self) -> tuple[int, int, int]:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted + tup_updated + tup_deleted"
            " FROM pg_stat_database WHERE datname = %s",
            (self._database,),
        ).fetchone()
        return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))

    async def sample(self) -> PgSample:
        """The counters now."""
        commits, rollbacks, rows = await self._lane.run_sync(self._read)
        return PgSample(trio.current_time(), commits, rollbacks, rows)

    async def sample_every(self, interval_s: float, into: list[PgSample]) -> None:
        """Append a sample to ``into`` every ``interval_s`` until cancelled."""
        while True:
            into.append(await self.sample())
            await trio.sleep(interval_s)
