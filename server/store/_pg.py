"""PostgreSQL plumbing for the shared SQL: a translator, a ``sqlite3``-like connection, a pool.

The store's SQL is written once, in the SQLite dialect the embedded default speaks, and runs on
PostgreSQL through :class:`PgConnection`, which translates each statement (cached) with a small,
fixed set of rewrites -- anything else must already be portable SQL:

===============================  =============================================================
SQLite                           PostgreSQL
===============================  =============================================================
``?`` / ``:name`` parameters     ``%s`` / ``%(name)s`` (a literal ``%`` becomes ``%%``)
``BEGIN IMMEDIATE``              ``BEGIN`` (read committed; row locks where it matters, below)
``MAX(a, b)`` / ``MIN(a, b)``    ``GREATEST(a, b)`` / ``LEAST(a, b)`` (the scalar forms only)
``json_each(col)``               ``jsonb_array_elements_text(col::jsonb)`` (column ``value``)
``INSERT OR IGNORE INTO ...``    ``INSERT INTO ... ON CONFLICT DO NOTHING``
DDL ``REAL`` / ``BLOB``          ``DOUBLE PRECISION`` / ``BYTEA``; ``WITHOUT ROWID`` dropped
===============================  =============================================================

Row locking is the one thing SQLite has no syntax for (its writers are serialised by
``BEGIN IMMEDIATE``): SQL functions append :func:`server.store._db.lock_clause` (``FOR UPDATE [SKIP LOCKED]`` on
PostgreSQL, nothing on SQLite) where a read decides a write, and lease claims use
``FOR UPDATE SKIP LOCKED`` so concurrent nodes take disjoint rows.

Everything here runs in storage-lane threads. :class:`PgPool` is the backend's counterpart of
:class:`server.store._pool.ConnectionPool`: ``run(fn, *args)`` lends ``fn`` a connection,
retries it on a serialisation failure or deadlock (a whole transaction function is safe to run
again: nothing it did was committed), and maps ``psycopg`` errors onto the store's error tree.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar, TypeVarTuple, Unpack, final

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.adapt import Dumper
from psycopg.pq import TransactionStatus
from psycopg.rows import RowMaker

from server.store._db import DIALECT
from server.store.errors import StoreClosedError, StoreUnavailableError, map_pg_error

__all__ = [
    "PgConnection",
    "PgPool",
    "PgRow",
    "translate",
    "translate_ddl",
]

LOGGER = logging.getLogger(__name__)

#: How often a transaction function is run when PostgreSQL aborts it as a serialisation
#: failure or deadlock victim (the caller sees the last error after that).
TRANSIENT_RETRIES: Final = 4
#: Longest wait for a pooled connection before ``StoreUnavailableError``.
POOL_TIMEOUT_S: Final = 10.0

RetT = TypeVar("RetT")
ArgsT = TypeVarTuple("ArgsT")

_TRANSIENT = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


# -- translation -------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_UNSUPPORTED = re.compile(r"\bINSERT\s+OR\s+(REPLACE|ROLLBACK|ABORT|FAIL)\b|\bPRAGMA\b", re.I)
_SCALAR_MINMAX = re.compile(r"\b(MAX|MIN)\s*\(", re.IGNORECASE)
_JSON_EACH = re.compile(r"\bjson_each\s*\(", re.IGNORECASE)
_DDL_TYPES: Final = (
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)
_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT\s+ROWID", re.IGNORECASE)


def _placeholders(sql: str) -> str:
    """``?`` -> ``%s``, ``:name`` -> ``%(name)s``, ``%`` -> ``%%``, outside quotes and comments."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = sql.find(ch, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == ch:  # '' escapes a quote
                end = sql.find(ch, end + 2)
            end = n - 1 if end == -1 else end
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end  # comments are dropped
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == ":" and (match := _IDENT.match(sql, i + 1)) and not sql.startswith("::", i - 1):
            out.append(f"%({match.group()})s")
            i = match.end()
        elif ch == ":" and sql.startswith("::", i):
            out.append("::")
            i += 2
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _call_args(sql: str, open_paren: int) -> tuple[int, int]:
    """``(top-level commas, index of the matching ')')`` of the call opened at ``open_paren``."""
    depth, commas, i = 0, 0, open_paren
    while i < len(sql):
        ch = sql[i]
        if ch in "'\"":
            i = sql.find(ch, i + 1)
            if i == -1:
                break
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return commas, i
        elif ch == "," and depth == 1:
            commas += 1
        i += 1
    raise ValueError(f"unbalanced parentheses in SQL: {sql[:80]!r}")


def _scalar_minmax(sql: str) -> str:
    """``MAX(a, b)`` -> ``GREATEST(a, b)`` (aggregates, with one argument, are left alone)."""
    pos = 0
    while match := _SCALAR_MINMAX.search(sql, pos):
        commas, _ = _call_args(sql, match.end() - 1)
        if commas:
            name = "GREATEST" if match.group(1).upper() == "MAX" else "LEAST"
            sql = f"{sql[: match.start()]}{name}({sql[match.end() :]}"
        pos = match.start() + 1
    return sql


def _json_each(sql: str) -> str:
    while match := _JSON_EACH.search(sql):
        _, close = _call_args(sql, match.end() - 1)
        inner = sql[match.end() : close]
        sql = f"{sql[: match.start()]}jsonb_array_elements_text(({inner})::jsonb){sql[close + 1 :]}"
    return sql


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """One statement of the shared (SQLite) dialect in PostgreSQL's (see the module table).

    Raises:
        ValueError: the statement uses SQLite syntax with no translation here (a bug to fix in
            the statement: write it portably).
    """
    if _UNSUPPORTED.search(sql):
        raise ValueError(f"no PostgreSQL translation for: {sql[:80]!r}")
    text = _placeholders(sql).strip()
    if text.upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    text = _json_each(_scalar_minmax(text))
    if _INSERT_OR_IGNORE.match(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text, count=1).rstrip(";")
        text += " ON CONFLICT DO NOTHING"
    return text


def translate_ddl(sql: str) -> str:
    """A migration statement: column types and ``WITHOUT ROWID`` first, then :func:`translate`."""
    for pattern, replacement in _DDL_TYPES:
        sql = pattern.sub(replacement, sql)
    return _WITHOUT_ROWID.sub(")", sql)


# -- rows and connections ----------------------------------------------------------------------


@final
class PgRow(tuple[Any, ...]):
    """A result row read like ``sqlite3.Row``: by index, by column name, ``keys()``, unpacking."""

    _index: Mapping[str, int]

    def __new__(cls, values: Iterable[Any], index: Mapping[str, int]) -> PgRow:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    names = [column.name for column in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, index)

    return make


class _BoolAsIntDumper(Dumper):
    """Python ``bool`` -> ``int2``: flags are ``INTEGER`` columns, as on SQLite."""

    oid = psycopg.adapters.types["int2"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


def configure(conn: psycopg.Connection[Any]) -> None:
    """Set up a new pooled connection (adapters; the pool opens it in autocommit mode)."""
    conn.adapters.register_dumper(bool, _BoolAsIntDumper)


@final
class PgConnection:
    """The part of ``sqlite3.Connection`` the store's SQL functions use, over ``psycopg``.

    Statements are translated by :func:`translate`; transactions are explicit (``BEGIN`` ...
    ``commit()`` / ``rollback()``) on an autocommit connection, as with the SQLite pool.
    """

    dialect: Final = DIALECT

    def __init__(self, raw: psycopg.Connection[PgRow]) -> None:
        self._raw = raw

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> psycopg.Cursor[PgRow]:
        """Run one statement; the cursor iterates :class:`PgRow` rows and has ``rowcount``."""
        return self._raw.execute(translate(sql), params or None)

    def executemany(
        self, sql: str, seq: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> psycopg.Cursor[PgRow]:
        """Run one statement for every parameter set (in one pipeline)."""
        cursor = self._raw.cursor()
        params = list(seq)
        if params:
            cursor.executemany(translate(sql), params)
        return cursor

    def executescript(self, sql: str) -> None:
        """Run several parameterless statements (migrations)."""
        self._raw.execute(sql.encode())

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (also an aborted one)."""
        status = self._raw.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def commit(self) -> None:
        """Commit the open transaction."""
        self._raw.commit()

    def rollback(self) -> None:
        """Roll back the open transaction."""
        self._raw.rollback()


@final
class PgPool:
    """A ``psycopg_pool.ConnectionPool`` lent out one connection per storage-lane call.

    Its size is the storage lane's thread count, so a call never waits for a connection that a
    queued call holds. The pool's own maintenance thread (``psycopg_pool``'s) opens and checks
    connections; nothing here runs on the event loop. Every method blocks: call it in the lane.
    """

    def __init__(self, url: str, size: int, *, name: str = "trioscribe-storage") -> None:
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[PgRow]] = (
            psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=size,
                open=False,
                name=name,
                timeout=POOL_TIMEOUT_S,
                num_workers=1,
                kwargs={"autocommit": True, "row_factory": _row_factory},
                configure=configure,
            )
        )
        self.retries = 0

    def open(self, timeout_s: float) -> None:
        """Open the pool and wait for its first connection; ``StoreUnavailableError`` if none."""
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close(timeout=1.0)
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from None

    def run(self, fn: Callable[[PgConnection, Unpack[ArgsT]], RetT], *args: *ArgsT) -> RetT:
        """Call ``fn(conn, *args)`` with a pooled connection; retry transient aborts; map errors."""
        for attempt in range(1, TRANSIENT_RETRIES + 1):
            try:
                with self._pool.connection() as raw:
                    return fn(PgConnection(raw), *args)
            except _TRANSIENT as exc:
                if attempt == TRANSIENT_RETRIES:
                    raise map_pg_error(exc) from exc
                self.retries += 1
            except psycopg_pool.PoolClosed:
                raise StoreClosedError("the store is closed") from None
            except psycopg_pool.PoolTimeout as exc:
                raise StoreUnavailableError(f"no database connection: {exc}") from None
            except psycopg.Error as exc:
                raise map_pg_error(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Refuse new calls and close the connections (those in use close when returned)."""
        self._pool.close(timeout=5.0)

    @property
    def open_count(self) -> int:
        """Connections the pool holds now."""
        return int(self._pool.get_stats().get("pool_size", 0))

    @property
    def created(self) -> int:
        """Connections opened since the start."""
        return int(self._pool.get_stats().get("connections_num", 0))
