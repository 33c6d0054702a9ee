"""JSON shapes of stored objects, compatible with Omi's models (``Conversation``, segments)."""

from __future__ import annotations

from datetime import UTC, datetime

from server.store import Conversation, SegmentRow

__all__ = ["conversation_json", "iso", "segment_json"]


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def segment_json(row: SegmentRow) -> dict[str, object]:
    """A stored segment in Omi's ``TranscriptSegment`` shape."""
    return {
        "id": row.id,
        "text": row.text,
        "speaker": row.speaker,
        "speaker_id": row.speaker_id,
        "is_user": row.is_user,
        "person_id": row.person_id,
        "start": row.start_s,
        "end": row.end_s,
        "translations": [],
        "speech_profile_processed": True,
        "stt_provider": row.stt_provider,
    }


def _structured(c: Conversation) -> dict[str, object]:
    structured = dict(c.structured)
    structured.update(title=c.title, overview=c.overview, emoji=c.emoji, category=c.category)
    structured.setdefault("action_items", [])
    events = structured.get("events")
    # Omi's Event.start is a required datetime: the app drops a whole conversation (and plugins
    # answer 422) for one null start, so an event without one is never shown, whatever stored it.
    structured["events"] = (
        [e for e in events if isinstance(e, dict) and isinstance(e.get("start"), str)]
        if isinstance(events, list)
        else []
    )
    return structured


def conversation_json(c: Conversation, *, with_segments: bool = True) -> dict[str, object]:
    """A conversation in Omi's ``Conversation`` shape (the fields this server has)."""
    body: dict[str, object] = {
        "id": c.id,
        "created_at": iso(c.created_at),
        "started_at": iso(c.started_at),
        "finished_at": iso(c.finished_at),
        "status": c.status,
        "source": c.source,
        "language": c.language,
        "structured": _structured(c),
        "starred": c.starred,
        "visibility": c.visibility,
        "discarded": c.discarded,
        "failure_reason": c.failure_reason,
    }
    if with_segments:
        body["transcript_segments"] = [segment_json(row) for row in c.segments]
    return body
