"""The SQLite backend: :class:`SqliteStore` and :func:`open_sqlite_store`, which owns it.

Every SQLite call runs in a thread of the storage :class:`~lanes.ThreadLane`
(``await lane.run_sync(...)``); nothing touches SQLite on the event loop. Each call borrows a
connection of its own from a small pool (see :mod:`server.store._pool`), so no connection is
shared by two concurrent calls, and the database runs in WAL mode with ``synchronous=NORMAL``
(durable across process crashes; the last commits can be lost on power loss),
``busy_timeout=5000`` and foreign keys on.

Extension points for later steps (outbox, webhooks, apps):
    * schema: append a step to :data:`server.store.migrations.MIGRATIONS`;
    * atomic side rows: pass ``extra=`` to :meth:`SqliteStore.complete_conversation` (runs in its
      transaction), or call :meth:`SqliteStore.run_in_transaction` with a function of a
      ``sqlite3.Connection`` for new operations of a SQLite-specific companion repository.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar, TypeVarTuple, Unpack, final

import trio

from lanes import LaneError, ThreadLane
from server.store import _cluster as cluster, _conversations as conv, _users as users
from server.store._db import DbConnection
from server.store._group import GroupCommit
from server.store._pool import ConnectionPool
from server.store._tx import write_transaction
from server.store._validate import (
    check_editable,
    check_list_args,
    check_positive,
    structured_json,
)
from server.store.errors import StoreError, ValidationError
from server.store.migrations import MIGRATIONS, apply_migrations
from server.store.models import (
    CloseOutcome,
    Conversation,
    ListQuery,
    Page,
    SegmentRow,
    StoreStatistics,
    SummaryFields,
    TokenInfo,
    User,
)
from server.store.protocol import CompletionHook

if TYPE_CHECKING:
    from server.store._pg import PgPool

__all__ = ["DB_FILENAME", "DEFAULT_MAX_WAITING", "SqliteStore", "open_sqlite_store"]

LOGGER = logging.getLogger(__name__)

#: The database's file name inside the data directory.
DB_FILENAME: Final = "trioscribe.db"
#: Callers allowed to wait for the store's own lane (when none is passed); more get
#: ``LaneFullError`` at once (load shedding) instead of queueing without bound.
DEFAULT_MAX_WAITING: Final = 1000
#: Shielded budget for closing the connections (and the store's own lane) on exit.
CLOSE_BUDGET_S: Final = 10.0

RetT = TypeVar("RetT")
PoolT = TypeVar("PoolT", bound="ConnectionPool | PgPool")
ArgsT = TypeVarTuple("ArgsT")


@final
class SqliteStore:
    """One class for both backends (named for the default): the pool decides. With a
    :class:`~server.store._pg.PgPool` (:func:`server.store.postgres.open_postgres_store`) the
    same methods and SQL run on PostgreSQL.

    The :class:`~server.store.protocol.Store` on SQLite; made by :func:`open_sqlite_store`."""

    def __init__(
        self,
        lane: ThreadLane,
        pool: ConnectionPool | PgPool,
        *,
        pressure: Callable[[], float] | None = None,
    ) -> None:
        self._lane = lane
        self._pool = pool
        self._calls = 0
        self._failed = 0
        # segment writes share storage calls; under pressure a batch lingers for more
        self._segment_writes = GroupCommit(self._save_segments_batch, pressure=pressure)

    async def _run(self, fn: Callable[[DbConnection, Unpack[ArgsT]], RetT], *args: *ArgsT) -> RetT:
        self._calls += 1
        try:
            return await self._lane.run_sync(self._pool.run, fn, *args)
        except StoreError:
            self._failed += 1
            raise

    async def run_in_transaction(self, fn: Callable[[DbConnection], RetT]) -> RetT:
        """Run ``fn(conn)`` inside one write transaction, in the storage lane.

        The hook for SQLite-specific companions (e.g. an outbox repository); ``sqlite3`` errors
        are mapped to :class:`StoreError`, other exceptions roll back and pass through.
        """
        return await self._run(_in_transaction, fn)

    # -- users and tokens ------------------------------------------------------------------

    async def create_user(self, name: str, now: float) -> User:
        """Create a user; ``ConflictError`` if the name is taken."""
        return await self._run(users.create_user, name, now)

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, or ``None``."""
        return await self._run(users.get_user, user_id)

    async def get_user_by_name(self, name: str) -> User | None:
        """The user with this name, or ``None``."""
        return await self._run(users.get_user_by_name, name)

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        return await self._run(users.list_users)

    async def create_token(self, user_id: str, label: str, now: float) -> tuple[str, TokenInfo]:
        """Create a token; return the raw token (never stored) and its info."""
        return await self._run(users.create_token, user_id, label, now)

    async def authenticate(self, raw_token: str, now: float) -> User | None:
        """The owner of a valid, unrevoked token, or ``None``."""
        return await self._run(users.authenticate, raw_token, now)

    async def list_tokens(self, user_id: str) -> list[TokenInfo]:
        """The user's tokens (revoked ones too), oldest first."""
        return await self._run(users.list_tokens, user_id)

    async def revoke_token(self, user_id: str, token_id: str, now: float) -> bool:
        """Revoke one of the user's tokens; ``False`` if the user has no such token."""
        return await self._run(users.revoke_token, user_id, token_id, now)

    # -- the live conversation -------------------------------------------------------------

    async def get_in_progress(self, user_id: str) -> Conversation | None:
        """The user's newest ``in_progress`` conversation (without segments), or ``None``."""
        return await self._run(conv.get_in_progress, user_id)

    async def create_conversation(
        self, user_id: str, *, source: str, language: str, timeout_s: float, now: float
    ) -> Conversation:
        """Open a new ``in_progress`` conversation; ``NotFoundError`` for an unknown user."""
        check_positive("timeout_s", timeout_s)
        return await self._run(conv.create_conversation, user_id, source, language, timeout_s, now)

    async def save_segments(
        self,
        conversation_id: str,
        upserts: Sequence[SegmentRow],
        removed_ids: Sequence[str],
        finished_at: float,
        *,
        started_at: float | None = None,
    ) -> None:
        """Upsert segments by id, delete ``removed_ids``, extend ``finished_at``: one transaction.

        ``started_at`` (first speech, Unix seconds) is set only once; when omitted it is derived
        as ``finished_at - max(end_s)`` of the upserts (segment times are relative to it).

        Raises:
            NotFoundError: the conversation does not exist (it was deleted or discarded).
            ValidationError: a row names another conversation.
        """
        for row in upserts:
            if row.conversation_id != conversation_id:
                message = f"segment {row.id!r} belongs to conversation {row.conversation_id!r}"
                raise ValidationError("upserts", message)
        write = (conversation_id, tuple(upserts), tuple(removed_ids), finished_at, started_at)
        self._calls += 1
        try:
            await self._segment_writes.submit(write)
        except StoreError:
            self._failed += 1
            raise

    async def _save_segments_batch(
        self, writes: Sequence[conv.SegmentWrite]
    ) -> list[Exception | None]:
        """Every session's concurrent segment writes in one lane call and one transaction
        (counted per write by :meth:`save_segments`, not here)."""
        return await self._lane.run_sync(self._pool.run, conv.save_segments_batch, tuple(writes))

    async def close_conversation(self, conversation_id: str, now: float) -> CloseOutcome:
        """End an ``in_progress`` conversation atomically.

        Returns ``"discarded"`` if it had no segments (it is deleted) or no longer exists, and
        ``"processing"`` if it is now due for processing (``next_attempt_at = now``) or had
        already been closed (idempotent: a later status is left unchanged).
        """
        return await self._run(conv.close_conversation, conversation_id, now)

    async def find_expired_in_progress(self, now: float, limit: int) -> list[Conversation]:
        """``in_progress`` conversations with ``(finished_at or created_at) + timeout_s <= now``.

        Longest-silent first, without segments. The caller skips those a live session holds.
        """
        return await self._run(conv.find_expired_in_progress, now, limit)

    # -- processing ------------------------------------------------------------------------

    async def claim_for_processing(
        self, now: float, lease_s: float, limit: int
    ) -> list[Conversation]:
        """Lease up to ``limit`` due ``processing`` conversations, with their segments.

        Each claimed row gets ``next_attempt_at = now + lease_s`` and one more
        ``processing_attempts``: if the worker dies, the lease expires and another claims it.
        """
        check_positive("lease_s", lease_s)
        return await self._run(conv.claim_for_processing, now, lease_s, limit)

    async def complete_conversation(
        self,
        conversation_id: str,
        summary: SummaryFields,
        now: float,
        *,
        extra: CompletionHook | None = None,
    ) -> Conversation | None:
        """Mark a ``processing`` conversation ``completed`` with its summary.

        ``extra(conn, completed)`` runs inside the same transaction only when the transition
        happens (the place to add outbox rows atomically); if it raises, nothing is committed.

        Returns:
            The completed conversation with its segments; ``None`` if it is gone or not
            ``processing`` (e.g. already completed by a worker whose lease had expired);
            nothing is written then.
        """
        payload = structured_json(summary.structured)
        return await self._run(
            conv.complete_conversation, conversation_id, payload, summary, now, extra
        )

    async def fail_conversation(self, conversation_id: str, reason: str, now: float) -> bool:
        """Mark a ``processing`` conversation ``failed``; ``False`` if it was not processing."""
        return await self._run(conv.fail_conversation, conversation_id, reason, now)

    async def reschedule_processing(
        self, conversation_id: str, next_attempt_at: float, reason: str
    ) -> bool:
        """Retry a ``processing`` conversation at ``next_attempt_at``; ``False`` if not processing."""
        return await self._run(conv.reschedule_processing, conversation_id, next_attempt_at, reason)

    async def count_conversations_by_status(self) -> dict[str, int]:
        """How many conversations are in each status (metrics; a full scan, call it rarely)."""
        return await self._run(conv.count_by_status)

    # -- the user API ----------------------------------------------------------------------

    async def list_conversations(
        self,
        user_id: str,
        *,
        status: str | None = None,
        statuses: Collection[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        include_discarded: bool = True,
        starred: bool | None = None,
        cursor: str | None = None,
        offset: int = 0,
        limit: int = 20,
        with_segments: bool = False,
    ) -> Page:
        """The user's conversations, newest first (``created_at``, then ``id``).

        ``since <= created_at < until``. ``cursor`` is a page's ``next_cursor``: keyset
        pagination, so pages stay stable while new conversations are created; ``offset`` rows
        after the cursor's position are skipped (Omi's offset paging). ``status`` and
        ``statuses`` both filter. Segments are read (in the same transaction) only
        ``with_segments``.

        Raises:
            ValidationError: bad status, ``limit`` (1..1000), ``offset``, time bound or
                ``cursor``.
        """
        query = ListQuery(
            statuses=_statuses(status, statuses),
            since=since,
            until=until,
            include_discarded=include_discarded,
            starred=starred,
            offset=offset,
            with_segments=with_segments,
        )
        asked = [*([status] if status is not None else []), *(statuses or ())]
        check_list_args(asked, since, until, limit, offset)
        if query.statuses == frozenset():  # no status is in both filters
            await trio.lowlevel.checkpoint()
            return Page((), None)
        return await self._run(conv.list_conversations, user_id, query, cursor, limit)

    async def get_conversation(
        self, user_id: str, conversation_id: str, *, with_segments: bool = True
    ) -> Conversation | None:
        """One of the user's conversations, or ``None`` (also when it is another user's)."""
        return await self._run(conv.get_conversation, user_id, conversation_id, with_segments)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> bool:
        """Delete one of the user's conversations and its segments; ``False`` if none."""
        return await self._run(conv.delete_conversation, user_id, conversation_id)

    async def update_conversation(
        self,
        user_id: str,
        conversation_id: str,
        fields: Mapping[str, object],
        *,
        now: float | None = None,
    ) -> Conversation | None:
        """Change user-editable fields and return the conversation (with segments).

        Editable: ``title``, ``overview``, ``emoji``, ``category`` (strings), ``starred``,
        ``discarded`` (booleans), ``visibility`` (``private`` | ``shared`` | ``public``),
        ``structured`` (a JSON object, replacing the summary). ``now`` (optional) moves
        ``updated_at``.

        Returns:
            ``None`` if the user has no such conversation.

        Raises:
            ValidationError: an unknown field or a bad value (the message names the field).
        """
        values = check_editable(fields)
        return await self._run(conv.update_conversation, user_id, conversation_id, values, now)

    # -- nodes, live sessions and tickets (what several server processes share) -----------

    async def register_node(self, node_id: str, now: float) -> None:
        """Insert (or revive) a server process's row."""
        await self._run(cluster.register_node, node_id, now)

    async def heartbeat_node(self, node_id: str, now: float, ttl_s: float) -> int:
        """Refresh a node's heartbeat; delete nodes silent for ``ttl_s``; return how many."""
        return await self._run(cluster.heartbeat_node, node_id, now, ttl_s)

    async def remove_node(self, node_id: str) -> None:
        """Delete a node and its live sessions (clean shutdown)."""
        await self._run(cluster.remove_node, node_id)

    async def open_live_session(
        self,
        session_id: str,
        node_id: str,
        user_id: str,
        *,
        max_per_user: int,
        now: float,
        ttl_s: float,
    ) -> bool:
        """Admit a session unless the user has ``max_per_user`` on live nodes (any node)."""
        return await self._run(
            cluster.open_live_session, session_id, node_id, user_id, max_per_user, now, ttl_s
        )

    async def close_live_session(self, session_id: str) -> None:
        """Forget a live session (idempotent)."""
        await self._run(cluster.close_live_session, session_id)

    async def create_ticket(
        self, ticket_hash: str, user_id: str, expires_at: float, now: float
    ) -> None:
        """Store a single-use ticket's hash until ``expires_at``."""
        await self._run(cluster.create_ticket, ticket_hash, user_id, expires_at, now)

    async def redeem_ticket(self, ticket_hash: str, now: float) -> str | None:
        """Consume a ticket (once, cluster-wide): its user id, or ``None``."""
        return await self._run(cluster.redeem_ticket, ticket_hash, now)

    def statistics(self) -> StoreStatistics:
        """The lane's statistics and the store's counters."""
        return StoreStatistics(
            lane=self._lane.statistics(),
            calls=self._calls,
            failed=self._failed,
            connections_open=self._pool.open_count,
            connections_created=self._pool.created,
            segment_writes=self._segment_writes.statistics(),
        )


def _in_transaction(conn: DbConnection, fn: Callable[[DbConnection], RetT]) -> RetT:
    with write_transaction(conn):
        return fn(conn)


def _prepare(path: Path, pool: ConnectionPool) -> int:
    """Create the directory and apply migrations (in a lane thread); return the schema version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return pool.run(apply_migrations, MIGRATIONS)


@asynccontextmanager
async def open_sqlite_store(
    path: Path,
    *,
    lane: ThreadLane | None = None,
    threads: int = 4,
    pressure: Callable[[], float] | None = None,
) -> AsyncIterator[SqliteStore]:
    """Open (creating if needed) and migrate the database at ``path``; close it on exit.

    Args:
        path: the database file; its directory is created.
        lane: the storage lane every SQLite call goes through. It stays the caller's (not
            closed here). ``None``: the store makes its own lane of ``threads`` threads
            (``DEFAULT_MAX_WAITING`` waiters) and closes it on exit.
        threads: the size of the store's own lane when ``lane`` is ``None``.
        pressure: how much of its linger a group commit of segment writes waits, 0-1 (see
            :class:`~server.store._group.GroupCommit`); ``None``: all of it.

    Raises:
        SchemaTooNewError: the database was written by a newer server (its schema is not changed).
        StoreError: the file cannot be opened or migrated.
    """
    async with serving_store(
        lambda _: ConnectionPool(path),
        lambda pool: _prepare(path, pool),
        str(path),
        lane=lane,
        threads=threads,
        pressure=pressure,
    ) as store:
        yield store


@asynccontextmanager
async def serving_store(
    make_pool: Callable[[ThreadLane], PoolT],
    prepare: Callable[[PoolT], int],
    where: str,
    *,
    lane: ThreadLane | None,
    threads: int,
    pressure: Callable[[], float] | None = None,
) -> AsyncIterator[SqliteStore]:
    """The lifecycle both backends share: make the pool for the lane, ``prepare`` it in a lane
    thread (connect, migrate; returns the schema version), yield the store; on exit close the
    pool in a lane thread (a private one if the lane is unusable) and the lane if it is the
    store's own, shielded, at most ``CLOSE_BUDGET_S``.

    Args:
        where: what the log line names (a path, a redacted URL).
        lane: the caller's storage lane (not closed here), or ``None``: a lane of ``threads``
            threads (``DEFAULT_MAX_WAITING`` waiters) owned and closed by the store.
        pressure: passed to the store (see :func:`open_sqlite_store`).
    """
    own_lane = lane is None
    lane = lane or ThreadLane("storage", threads, max_waiting=DEFAULT_MAX_WAITING)
    pool = make_pool(lane)
    try:
        version = await lane.run_sync(prepare, pool)
        LOGGER.info("store open: %s (schema version %d)", where, version)
        yield SqliteStore(lane, pool, pressure=pressure)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S) as budget:
            await _close(lane, pool, own_lane)
        if budget.cancelled_caught:
            LOGGER.warning("closing the store took over %.0f s; gave up waiting", CLOSE_BUDGET_S)


async def _close(lane: ThreadLane, pool: ConnectionPool | PgPool, own_lane: bool) -> None:
    """Close the pool's connections in a lane thread (a private one if the lane is unusable)."""
    try:
        await lane.run_sync(pool.close)
    except LaneError:
        fallback = ThreadLane("storage-close", 1)
        await fallback.run_sync(pool.close)
        await fallback.aclose()
    if own_lane:
        await lane.aclose()


def _statuses(status: str | None, statuses: Collection[str] | None) -> frozenset[str] | None:
    """The statuses both filters allow (``None``: any)."""
    if status is None:
        return None if statuses is None else frozenset(statuses)
    if statuses is None:
        return frozenset({status})
    return frozenset({status}) & frozenset(statuses)
