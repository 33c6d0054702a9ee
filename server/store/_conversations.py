"""Conversations and transcript segments: the synchronous SQLite side (storage-lane threads)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

from server.store._db import SKIP_LOCKED, DbConnection, DbRow, lock_clause, map_driver_error
from server.store._paging import decode_cursor, encode_cursor
from server.store._tx import new_id, read_transaction, write_transaction
from server.store.errors import NotFoundError
from server.store.models import (
    CloseOutcome,
    Conversation,
    ListQuery,
    Page,
    SegmentRow,
    SummaryFields,
)
from server.store.protocol import CompletionHook

__all__ = [
    "SegmentWrite",
    "claim_for_processing",
    "close_conversation",
    "complete_conversation",
    "create_conversation",
    "delete_conversation",
    "fail_conversation",
    "find_expired_in_progress",
    "get_conversation",
    "get_in_progress",
    "list_conversations",
    "reschedule_processing",
    "save_segments",
    "save_segments_batch",
    "update_conversation",
]

_COLUMNS: Final = (
    "id, user_id, status, created_at, updated_at, started_at, finished_at, source, language,"
    " timeout_s, title, overview, emoji, category, structured_json, starred, visibility,"
    " discarded, failure_reason, processing_attempts, next_attempt_at"
)
_SEGMENT_COLUMNS: Final = (
    "id, conversation_id, idx, text, speaker, speaker_id, is_user, person_id, start_s, end_s,"
    " stt_provider"
)
_UPSERT_SEGMENT: Final = (
    f"INSERT INTO transcript_segments ({_SEGMENT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (conversation_id, id) DO UPDATE SET idx = excluded.idx,"
    " text = excluded.text, speaker = excluded.speaker, speaker_id = excluded.speaker_id,"
    " is_user = excluded.is_user, person_id = excluded.person_id, start_s = excluded.start_s,"
    " end_s = excluded.end_s, stt_provider = excluded.stt_provider"
)


def _segment(row: DbRow) -> SegmentRow:
    values = {key: row[key] for key in row.keys()}
    values["is_user"] = bool(values["is_user"])
    return SegmentRow(**values)


def _conversation(row: DbRow, segments: tuple[SegmentRow, ...] = ()) -> Conversation:
    values = {key: row[key] for key in row.keys() if key != "structured_json"}
    values["starred"] = bool(values["starred"])
    values["discarded"] = bool(values["discarded"])
    return Conversation(**values, structured=json.loads(row["structured_json"]), segments=segments)


def _segments(conn: DbConnection, conversation_id: str) -> tuple[SegmentRow, ...]:
    rows = conn.execute(
        f"SELECT {_SEGMENT_COLUMNS} FROM transcript_segments WHERE conversation_id = ?"
        " ORDER BY idx, start_s, id",
        (conversation_id,),
    )
    return tuple(_segment(row) for row in rows)


def _load(conn: DbConnection, conversation_id: str, with_segments: bool) -> Conversation | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        return None
    return _conversation(row, _segments(conn, conversation_id) if with_segments else ())


# -- the live conversation ---------------------------------------------------------------------


def get_in_progress(conn: DbConnection, user_id: str) -> Conversation | None:
    """The user's newest ``in_progress`` conversation, without segments."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM conversations WHERE user_id = ? AND status = 'in_progress'"
        " ORDER BY created_at DESC, id DESC LIMIT 1",
        (user_id,),
    ).fetchone()
    return _conversation(row) if row else None


def create_conversation(
    conn: DbConnection,
    user_id: str,
    source: str,
    language: str,
    timeout_s: float,
    now: float,
) -> Conversation:
    """Insert a new ``in_progress`` conversation."""
    conversation = Conversation(
        id=new_id(),
        user_id=user_id,
        status="in_progress",
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        source=source,
        language=language,
        timeout_s=timeout_s,
    )
    with write_transaction(conn):
        if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
            raise NotFoundError(f"no user {user_id!r}")
        conn.execute(
            "INSERT INTO conversations (id, user_id, status, created_at, updated_at, source,"
            " language, timeout_s) VALUES (?, ?, 'in_progress', ?, ?, ?, ?, ?)",
            (conversation.id, user_id, now, now, source, language, timeout_s),
        )
    return conversation


def _segment_values(row: SegmentRow) -> tuple[object, ...]:
    return (
        row.id,
        row.conversation_id,
        row.idx,
        row.text,
        row.speaker,
        row.speaker_id,
        int(row.is_user),
        row.person_id,
        row.start_s,
        row.end_s,
        row.stt_provider,
    )


def _first_speech(upserts: Sequence[SegmentRow], finished_at: float) -> float | None:
    """Segment times are relative to the first speech and ``finished_at`` is the last speech."""
    if not upserts:
        return None
    return finished_at - max(row.end_s for row in upserts)


def save_segments(
    conn: DbConnection,
    conversation_id: str,
    upserts: Sequence[SegmentRow],
    removed_ids: Sequence[str],
    finished_at: float,
    started_at: float | None,
) -> None:
    """Upsert/delete segments, extend ``finished_at``, set ``started_at`` once: one transaction."""
    with write_transaction(conn):
        _save_segments_in(conn, conversation_id, upserts, removed_ids, finished_at, started_at)


#: One :func:`save_segments` call's arguments (after the conversation id), for batches.
SegmentWrite = tuple[str, Sequence[SegmentRow], Sequence[str], float, float | None]


def save_segments_batch(
    conn: DbConnection, writes: Sequence[SegmentWrite]
) -> list[Exception | None]:
    """Many :func:`save_segments` in one transaction, each in a savepoint: one failing write
    (e.g. ``NotFoundError``) is rolled back alone; returns each write's error or ``None``."""
    errors: list[Exception | None] = []
    with write_transaction(conn):
        for write in writes:
            conn.execute("SAVEPOINT segment_write")
            try:
                _save_segments_in(conn, *write)
            except Exception as exc:
                mapped = map_driver_error(exc)
                if mapped is None:
                    raise
                conn.execute("ROLLBACK TO segment_write")
                errors.append(mapped)
            else:
                errors.append(None)
            conn.execute("RELEASE segment_write")
    return errors


def _save_segments_in(
    conn: DbConnection,
    conversation_id: str,
    upserts: Sequence[SegmentRow],
    removed_ids: Sequence[str],
    finished_at: float,
    started_at: float | None,
) -> None:
    first = started_at if started_at is not None else _first_speech(upserts, finished_at)
    if not conn.execute(
        f"SELECT 1 FROM conversations WHERE id = ?{lock_clause(conn)}", (conversation_id,)
    ).fetchone():
        raise NotFoundError(f"no conversation {conversation_id!r}")
    conn.executemany(_UPSERT_SEGMENT, [_segment_values(row) for row in upserts])
    conn.executemany(
        "DELETE FROM transcript_segments WHERE conversation_id = ? AND id = ?",
        [(conversation_id, segment_id) for segment_id in removed_ids],
    )
    conn.execute(
        "UPDATE conversations SET finished_at = MAX(COALESCE(finished_at, :f), :f),"
        " started_at = COALESCE(started_at, :s), updated_at = MAX(updated_at, :f)"
        " WHERE id = :id",
        {"f": finished_at, "s": first, "id": conversation_id},
    )


def close_conversation(conn: DbConnection, conversation_id: str, now: float) -> CloseOutcome:
    """``in_progress`` -> ``processing`` (due now), or delete it if it has no segments."""
    with write_transaction(conn):
        row = conn.execute(
            f"SELECT status FROM conversations WHERE id = ?{lock_clause(conn)}",
            (conversation_id,),
        ).fetchone()
        if row is None:
            return "discarded"
        if row["status"] != "in_progress":
            return "processing"
        spoken = conn.execute(
            "SELECT 1 FROM transcript_segments WHERE conversation_id = ? LIMIT 1",
            (conversation_id,),
        ).fetchone()
        if not spoken:
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return "discarded"
        conn.execute(
            "UPDATE conversations SET status = 'processing', next_attempt_at = ?,"
            " updated_at = MAX(updated_at, ?) WHERE id = ?",
            (now, now, conversation_id),
        )
    return "processing"


def find_expired_in_progress(conn: DbConnection, now: float, limit: int) -> list[Conversation]:
    """``in_progress`` conversations silent for ``timeout_s`` or more, longest-silent first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM conversations WHERE status = 'in_progress'"
        " AND COALESCE(finished_at, created_at) + timeout_s <= ?"
        " ORDER BY COALESCE(finished_at, created_at), id LIMIT ?",
        (now, limit),
    )
    return [_conversation(row) for row in rows]


# -- processing --------------------------------------------------------------------------------


def claim_for_processing(
    conn: DbConnection, now: float, lease_s: float, limit: int
) -> list[Conversation]:
    """Lease due ``processing`` conversations: push ``next_attempt_at`` out, count the attempt."""
    with write_transaction(conn):
        ids = [
            row["id"]
            for row in conn.execute(
                "SELECT id FROM conversations WHERE status = 'processing' AND next_attempt_at <= ?"
                f" ORDER BY next_attempt_at, id LIMIT ?{lock_clause(conn, SKIP_LOCKED)}",
                (now, limit),
            )
        ]
        conn.executemany(
            "UPDATE conversations SET next_attempt_at = ?, updated_at = MAX(updated_at, ?),"
            " processing_attempts = processing_attempts + 1 WHERE id = ?",
            [(now + lease_s, now, conversation_id) for conversation_id in ids],
        )
        claimed = [_load(conn, conversation_id, True) for conversation_id in ids]
    return [conversation for conversation in claimed if conversation is not None]


def complete_conversation(
    conn: DbConnection,
    conversation_id: str,
    structured_json: str,
    summary: SummaryFields,
    now: float,
    extra: CompletionHook | None,
) -> Conversation | None:
    """``processing`` -> ``completed`` with its summary; ``extra`` runs in the same transaction."""
    with write_transaction(conn):
        cursor = conn.execute(
            "UPDATE conversations SET status = 'completed', structured_json = ?, title = ?,"
            " overview = ?, emoji = ?, category = ?, failure_reason = NULL,"
            " next_attempt_at = NULL, updated_at = MAX(updated_at, ?)"
            " WHERE id = ? AND status = 'processing'",
            (
                structured_json,
                summary.title,
                summary.overview,
                summary.emoji,
                summary.category,
                now,
                conversation_id,
            ),
        )
        if cursor.rowcount == 0:
            return None
        completed = _load(conn, conversation_id, True)
        if completed is not None and extra is not None:
            extra(conn, completed)
    return completed


def fail_conversation(conn: DbConnection, conversation_id: str, reason: str, now: float) -> bool:
    """``processing`` -> ``failed``, keeping the reason."""
    with write_transaction(conn):
        cursor = conn.execute(
            "UPDATE conversations SET status = 'failed', failure_reason = ?,"
            " next_attempt_at = NULL, updated_at = MAX(updated_at, ?)"
            " WHERE id = ? AND status = 'processing'",
            (reason, now, conversation_id),
        )
    return cursor.rowcount == 1


def reschedule_processing(
    conn: DbConnection, conversation_id: str, next_attempt_at: float, reason: str
) -> bool:
    """Move a ``processing`` conversation's next attempt, noting the last failure."""
    with write_transaction(conn):
        cursor = conn.execute(
            "UPDATE conversations SET next_attempt_at = ?, failure_reason = ?"
            " WHERE id = ? AND status = 'processing'",
            (next_attempt_at, reason, conversation_id),
        )
    return cursor.rowcount == 1


def count_by_status(conn: DbConnection) -> dict[str, int]:
    """How many conversations are in each status (one scan; for metrics, not hot paths)."""
    rows = conn.execute("SELECT status, COUNT(*) AS n FROM conversations GROUP BY status")
    return {str(row["status"]): int(row["n"]) for row in rows}


# -- the user API ------------------------------------------------------------------------------


def list_conversations(
    conn: DbConnection, user_id: str, query: ListQuery, cursor: str | None, limit: int
) -> Page:
    """The user's conversations, newest first, ``limit`` per page (keyset on created_at, id).

    ``query.offset`` rows are skipped after the cursor's position (Omi's offset paging).
    With ``query.with_segments`` the page is read in one transaction with its segments.
    """
    clauses, params = _list_clauses(user_id, query)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend([after_time, after_time, after_id])
    with read_transaction(conn):
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM conversations WHERE {' AND '.join(clauses)}"
            " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, limit + 1, query.offset),
        ).fetchall()
        segments = _segments_of(conn, [row["id"] for row in rows[:limit]], query.with_segments)
    items = tuple(_conversation(row, segments.get(row["id"], ())) for row in rows[:limit])
    more = len(rows) > limit
    return Page(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)


def _list_clauses(user_id: str, query: ListQuery) -> tuple[list[str], list[object]]:
    clauses: list[str] = ["user_id = ?"]
    params: list[object] = [user_id]
    if query.statuses is not None:
        clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
        params.extend(sorted(query.statuses))
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created_at < ?")
        params.append(query.until)
    if not query.include_discarded:
        clauses.append("discarded = 0")
    if query.starred is not None:
        clauses.append("starred = ?")
        params.append(int(query.starred))
    return clauses, params


def _segments_of(
    conn: DbConnection, ids: Sequence[str], wanted: bool
) -> dict[str, tuple[SegmentRow, ...]]:
    """The segments of every conversation in ``ids`` (one query), in transcript order."""
    if not wanted or not ids:
        return {}
    grouped: dict[str, list[SegmentRow]] = {cid: [] for cid in ids}
    rows = conn.execute(
        f"SELECT {_SEGMENT_COLUMNS} FROM transcript_segments"
        f" WHERE conversation_id IN ({', '.join('?' * len(ids))})"
        " ORDER BY conversation_id, idx, start_s, id",
        tuple(ids),
    )
    for row in rows:
        grouped[row["conversation_id"]].append(_segment(row))
    return {cid: tuple(rows_of) for cid, rows_of in grouped.items()}


def get_conversation(
    conn: DbConnection, user_id: str, conversation_id: str, with_segments: bool
) -> Conversation | None:
    """One of the user's conversations (a consistent snapshot with its segments)."""
    with read_transaction(conn):
        conversation = _load(conn, conversation_id, with_segments)
    if conversation is None or conversation.user_id != user_id:
        return None
    return conversation


def delete_conversation(conn: DbConnection, user_id: str, conversation_id: str) -> bool:
    """Delete one of the user's conversations; its segments cascade."""
    with write_transaction(conn):
        cursor = conn.execute(
            "DELETE FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
        )
    return cursor.rowcount == 1


def update_conversation(
    conn: DbConnection,
    user_id: str,
    conversation_id: str,
    values: Mapping[str, object],
    now: float | None,
) -> Conversation | None:
    """Set already-validated editable columns (names come from a fixed allow-list)."""
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    if now is not None:
        assignments += (", " if assignments else "") + "updated_at = MAX(updated_at, :now)"
    with write_transaction(conn):
        if assignments:
            conn.execute(
                f"UPDATE conversations SET {assignments} WHERE id = :id AND user_id = :user_id",
                {**values, "now": now, "id": conversation_id, "user_id": user_id},
            )
        conversation = _load(conn, conversation_id, True)
    if conversation is None or conversation.user_id != user_id:
        return None
    return conversation
