"""The store's value types: frozen dataclasses handed to and returned by every backend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from lanes import ThreadLaneStatistics
from server.store._group import GroupCommitStatistics

__all__ = [
    "CONVERSATION_STATUSES",
    "DEFAULT_CATEGORY",
    "DEFAULT_EMOJI",
    "VISIBILITIES",
    "CloseOutcome",
    "Conversation",
    "ConversationStatus",
    "ListQuery",
    "Page",
    "SegmentRow",
    "StoreStatistics",
    "SummaryFields",
    "TokenInfo",
    "User",
]

ConversationStatus = Literal["in_progress", "processing", "completed", "failed"]
CloseOutcome = Literal["processing", "discarded"]

CONVERSATION_STATUSES: Final = frozenset({"in_progress", "processing", "completed", "failed"})
VISIBILITIES: Final = frozenset({"private", "shared", "public"})
DEFAULT_EMOJI: Final = "🧠"
DEFAULT_CATEGORY: Final = "other"


@dataclass(frozen=True, slots=True)
class User:
    """A user: owns API tokens and conversations."""

    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about an API token (never the token itself, never its hash).

    Attributes:
        id: the token's id (used to revoke it).
        user_id: its owner.
        prefix: the first characters of the raw token, for recognising it in lists.
        label: a free-form note ("laptop", "ci").
        created_at: Unix seconds.
        last_used_at: Unix seconds of the last successful use, at most a minute stale.
        revoked_at: Unix seconds it was revoked, or ``None`` while valid.
    """

    id: str
    user_id: str
    prefix: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One persisted transcript segment; times are seconds relative to the conversation's start."""

    id: str
    conversation_id: str
    idx: int
    text: str
    speaker: str
    speaker_id: int
    is_user: bool
    person_id: str | None
    start_s: float
    end_s: float
    stt_provider: str | None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation and, when asked for, its transcript segments (ordered by ``idx``).

    Attributes:
        status: ``in_progress`` -> ``processing`` -> ``completed`` | ``failed``.
        created_at: Unix seconds the conversation was opened.
        updated_at: Unix seconds of the last change.
        started_at: Unix seconds of the first speech (``None`` before any).
        finished_at: Unix seconds of the last speech (``None`` before any).
        timeout_s: seconds of silence after which it is closed.
        structured: the summary's structured result (JSON object), empty until completed.
        discarded: the user marked it as not worth keeping (it is still stored).
        failure_reason: the last processing error, if any.
        processing_attempts: how many times a worker claimed it.
        next_attempt_at: when a worker may claim it (next) while ``processing``.
        segments: the transcript when loaded with segments, else empty.
    """

    id: str
    user_id: str
    status: ConversationStatus
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    source: str
    language: str
    timeout_s: float
    title: str = ""
    overview: str = ""
    emoji: str = DEFAULT_EMOJI
    category: str = DEFAULT_CATEGORY
    structured: Mapping[str, object] = field(default_factory=dict)
    starred: bool = False
    visibility: str = "private"
    discarded: bool = False
    failure_reason: str | None = None
    processing_attempts: int = 0
    next_attempt_at: float | None = None
    segments: tuple[SegmentRow, ...] = ()


@dataclass(frozen=True, slots=True)
class SummaryFields:
    """What completing a conversation writes: its summary's columns and structured JSON.

    Attributes:
        structured: the summary's structured result (a JSON object; ``ValidationError`` if not
            serialisable).
    """

    title: str
    overview: str
    emoji: str
    category: str
    structured: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters of a conversation list (built by the store from its keyword arguments).

    ``statuses``: ``None`` for any status. ``since <= created_at < until``.
    """

    statuses: frozenset[str] | None = None
    since: float | None = None
    until: float | None = None
    include_discarded: bool = True
    starred: bool | None = None
    offset: int = 0
    with_segments: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a keyset-paginated list; pass ``next_cursor`` back for the next page."""

    items: tuple[Conversation, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store: its lane and its own counters.

    Attributes:
        lane: the storage lane's statistics.
        calls: store operations started.
        failed: operations that raised a store error.
        connections_open: database connections open now.
        connections_created: connections opened since the start.
        segment_writes: the group commit of segment writes (one lane call per batch).
    """

    lane: ThreadLaneStatistics
    calls: int
    failed: int
    connections_open: int
    connections_created: int
    segment_writes: GroupCommitStatistics
