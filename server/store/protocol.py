"""The repository interface every storage backend implements (SQLite now, PostgreSQL later).

Handlers and workers depend on :class:`Store` only. Every method is async; a backend runs its
blocking I/O off the event loop (the SQLite backend through the storage ``ThreadLane``).
Methods that need the current time take ``now`` (Unix seconds) from the caller, who derives it
from the Trio clock (``server.clock.wall_now``) so tests can run on a virtual clock. Each
method is one transaction: a method that writes several rows writes all of them or none.

Errors: :class:`~server.store.errors.StoreError` and its subclasses; the storage lane's
``LaneFullError`` / ``LaneClosedError`` pass through unchanged (the app maps them to 503).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from server.store._db import DbConnection
from server.store.models import (
    CloseOutcome,
    Conversation,
    Page,
    SegmentRow,
    StoreStatistics,
    SummaryFields,
    TokenInfo,
    User,
)

__all__ = ["CompletionHook", "Store", "TransactionHook"]

RetT = TypeVar("RetT")

#: Runs inside a store method's transaction, on the backend's connection, in the storage
#: thread (for :class:`~server.store.sqlite.SqliteStore`: a ``DbConnection``). This is how
#: later work adds rows atomically with a state change (e.g. outbox rows with a completion).
TransactionHook = Callable[[DbConnection], None]
#: Runs inside :meth:`Store.complete_conversation`'s transaction with the completed conversation
#: (segments included): the place to queue a ``memory_created`` outbox row atomically.
CompletionHook = Callable[[DbConnection, Conversation], None]


class Store(Protocol):
    """Users, API tokens, conversations and their transcript segments."""

    async def run_in_transaction(self, fn: Callable[[DbConnection], RetT]) -> RetT:
        """Run ``fn(conn)`` in one write transaction on the backend's connection (storage lane).

        How companion repositories (the webhook outbox) add operations of their own; backend
        errors map to ``StoreError``, other exceptions roll back and pass through.
        """
        ...

    # -- users and tokens ------------------------------------------------------------------

    async def create_user(self, name: str, now: float) -> User:
        """Create a user; raise ``ConflictError`` if the name is taken."""
        ...

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, or ``None``."""
        ...

    async def get_user_by_name(self, name: str) -> User | None:
        """The user with this name, or ``None``."""
        ...

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        ...

    async def create_token(self, user_id: str, label: str, now: float) -> tuple[str, TokenInfo]:
        """Create an API token; return the raw token (shown once, never stored) and its info."""
        ...

    async def authenticate(self, raw_token: str, now: float) -> User | None:
        """The owner of a valid, unrevoked token, or ``None``; records use at most once a minute."""
        ...

    async def list_tokens(self, user_id: str) -> list[TokenInfo]:
        """The user's tokens (revoked ones too), oldest first."""
        ...

    async def revoke_token(self, user_id: str, token_id: str, now: float) -> bool:
        """Revoke one of the user's tokens; ``False`` if the user has no such token."""
        ...

    # -- the live conversation -------------------------------------------------------------

    async def get_in_progress(self, user_id: str) -> Conversation | None:
        """The user's newest ``in_progress`` conversation (without segments), or ``None``."""
        ...

    async def create_conversation(
        self, user_id: str, *, source: str, language: str, timeout_s: float, now: float
    ) -> Conversation:
        """Open a new ``in_progress`` conversation for the user."""
        ...

    async def save_segments(
        self,
        conversation_id: str,
        upserts: Sequence[SegmentRow],
        removed_ids: Sequence[str],
        finished_at: float,
        *,
        started_at: float | None = None,
    ) -> None:
        """Upsert and delete segments and extend ``finished_at``, in one transaction."""
        ...

    async def close_conversation(self, conversation_id: str, now: float) -> CloseOutcome:
        """End an ``in_progress`` conversation: ``processing``, or deleted if it has no segments."""
        ...

    async def find_expired_in_progress(self, now: float, limit: int) -> list[Conversation]:
        """``in_progress`` conversations whose silence timeout has passed (oldest first)."""
        ...

    # -- processing ------------------------------------------------------------------------

    async def claim_for_processing(
        self, now: float, lease_s: float, limit: int
    ) -> list[Conversation]:
        """Lease due ``processing`` conversations (with segments) for ``lease_s`` seconds."""
        ...

    async def complete_conversation(
        self,
        conversation_id: str,
        summary: SummaryFields,
        now: float,
        *,
        extra: CompletionHook | None = None,
    ) -> Conversation | None:
        """Mark a ``processing`` conversation ``completed`` with ``summary``.

        ``extra(conn, completed)`` runs in the same transaction, only when the transition
        happens; if it raises, nothing is committed.

        Returns:
            the completed conversation with its segments, or ``None`` if it was gone or not
            ``processing`` (nothing is written then).
        """
        ...

    async def fail_conversation(self, conversation_id: str, reason: str, now: float) -> bool:
        """Mark a ``processing`` conversation ``failed``; ``False`` if it was not processing."""
        ...

    async def reschedule_processing(
        self, conversation_id: str, next_attempt_at: float, reason: str
    ) -> bool:
        """Retry a ``processing`` conversation at ``next_attempt_at``, noting why."""
        ...

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
        """The user's conversations newest first (keyset pagination; ``offset`` rows skipped
        after the cursor). ``status`` and ``statuses`` both filter (a status must be in both);
        ``since <= created_at < until``; discarded ones only with ``include_discarded``;
        ``starred`` filters when given; segments only ``with_segments``."""
        ...

    async def get_conversation(
        self, user_id: str, conversation_id: str, *, with_segments: bool = True
    ) -> Conversation | None:
        """One of the user's conversations, or ``None`` (also for another user's)."""
        ...

    async def delete_conversation(self, user_id: str, conversation_id: str) -> bool:
        """Delete one of the user's conversations and its segments; ``False`` if none."""
        ...

    async def update_conversation(
        self,
        user_id: str,
        conversation_id: str,
        fields: Mapping[str, object],
        *,
        now: float | None = None,
    ) -> Conversation | None:
        """Change user-editable fields; ``None`` if not the user's; ``ValidationError`` if bad."""
        ...

    # -- nodes, live sessions and tickets (shared by every server process) -----------------

    async def register_node(self, node_id: str, now: float) -> None:
        """Insert (or revive) a server process's row."""
        ...

    async def heartbeat_node(self, node_id: str, now: float, ttl_s: float) -> int:
        """Refresh a node's heartbeat; delete nodes silent for ``ttl_s``; return how many."""
        ...

    async def remove_node(self, node_id: str) -> None:
        """Delete a node and its live sessions (clean shutdown)."""
        ...

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
        ...

    async def close_live_session(self, session_id: str) -> None:
        """Forget a live session (idempotent)."""
        ...

    async def create_ticket(
        self, ticket_hash: str, user_id: str, expires_at: float, now: float
    ) -> None:
        """Store a single-use ticket's hash until ``expires_at``."""
        ...

    async def redeem_ticket(self, ticket_hash: str, now: float) -> str | None:
        """Consume a ticket (once, cluster-wide): its user id, or ``None``."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's counters."""
        ...
