"""The summary a finished conversation gets, the summariser interface, and its error tree.

Every summariser returns a :class:`Summary` in the shape of Omi's ``structured`` field (title,
overview, emoji, category, action items, events), so the embedded extractive summariser
(:mod:`server.processing.summarise_embedded`) and an OpenAI-compatible model
(:mod:`server.processing.summarise_openai`) are drop-in replacements for each other.

Errors (one tree; ``retryable`` tells the processing worker whether to try again before it marks
the conversation failed with the error's message as the reason)::

    SummaryError                base class; ``retryable``, ``retry_after_s``
    ├── MalformedSummaryError   the model's answer was not the JSON object we asked for
    └── SummaryUpstreamError    the model endpoint failed (status, timeout, breaker open, ...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from server.store import SummaryFields

__all__ = [
    "CATEGORIES",
    "DEFAULT_EMOJI",
    "MalformedSummaryError",
    "SegmentLike",
    "Summariser",
    "Summary",
    "SummaryError",
    "SummaryEvent",
    "SummaryUpstreamError",
    "Transcript",
    "normalise_category",
    "summary_from_json",
    "transcript_text",
]

#: Omi's ``CategoryEnum`` values (backend/models/conversation_enums.py); anything else -> other.
CATEGORIES: Final = frozenset(
    {
        "personal", "education", "health", "finance", "legal", "philosophy", "spiritual",
        "science", "entrepreneurship", "parenting", "romantic", "travel", "inspiration",
        "technology", "business", "social", "work", "sports", "politics", "literature",
        "history", "architecture", "music", "weather", "news", "entertainment", "psychology",
        "real", "design", "family", "economics", "environment", "other",
    }
)  # fmt: skip
DEFAULT_EMOJI: Final = "🧠"
DEFAULT_EVENT_DURATION_MIN: Final = 30
MAX_TITLE_CHARS: Final = 200
MAX_OVERVIEW_CHARS: Final = 4000
MAX_ACTION_ITEMS: Final = 20
MAX_ITEM_CHARS: Final = 500
MAX_EVENTS: Final = 10


class SummaryError(Exception):
    """A summary could not be made.

    Attributes:
        retryable: whether trying again later may succeed.
        retry_after_s: how long to wait first, when the upstream said so.
    """

    def __init__(
        self, message: str, *, retryable: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class MalformedSummaryError(SummaryError):
    """The model answered, but not with a JSON object of the expected shape (retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"malformed summary: {message}", retryable=True)


class SummaryUpstreamError(SummaryError):
    """The model endpoint failed; ``status`` is its HTTP status when it answered at all."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after_s=retry_after_s)
        self.status = status


@dataclass(frozen=True, slots=True)
class SummaryEvent:
    """A calendar event the conversation mentions (``start``: ISO 8601 UTC text).

    Omi's ``Event.start`` is a required datetime: its app drops a whole conversation with an
    event whose ``start`` is null, so events without a valid start are never emitted
    (:func:`summary_from_json` drops them, :meth:`Summary.to_json` skips them).
    """

    title: str
    description: str = ""
    start: str | None = None
    duration_min: int = DEFAULT_EVENT_DURATION_MIN


@dataclass(frozen=True, slots=True)
class Summary:
    """A conversation's structured summary (Omi's ``structured``)."""

    title: str
    overview: str
    emoji: str = DEFAULT_EMOJI
    category: str = "other"
    action_items: tuple[str, ...] = ()
    events: tuple[SummaryEvent, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        """Return the summary as Omi's ``structured`` JSON object."""
        return {
            "title": self.title,
            "overview": self.overview,
            "emoji": self.emoji,
            "category": self.category,
            "action_items": [
                {"description": item, "completed": False} for item in self.action_items
            ],
            "events": [
                {
                    "title": event.title,
                    "description": event.description,
                    "start": event.start,
                    "duration": event.duration_min,
                }
                for event in self.events
                if event.start
            ],
        }

    def fields(self) -> SummaryFields:
        """What the store writes when the conversation completes with this summary."""
        return SummaryFields(self.title, self.overview, self.emoji, self.category, self.to_json())


class SegmentLike(Protocol):
    """Anything with the text of a transcript segment (store rows, listen segments)."""

    @property
    def text(self) -> str: ...


Transcript = str | Sequence[SegmentLike]


class Summariser(Protocol):
    """Something that turns a transcript into a :class:`Summary`."""

    async def summarise(self, transcript: Transcript, *, language: str) -> Summary:
        """Summarise ``transcript`` (written in ``language``, a BCP 47 code such as ``"en"``).

        Raises:
            SummaryError: no summary could be made (see ``retryable``).
        """
        ...


def transcript_text(transcript: Transcript, *, speakers: bool = False) -> str:
    """Return a transcript as text: one line per segment (``"SPEAKER_00: ..."`` if asked)."""
    if isinstance(transcript, str):
        return transcript.strip()
    lines = []
    for segment in transcript:
        text = segment.text.strip()
        speaker = getattr(segment, "speaker", None)
        if text:
            lines.append(f"{speaker}: {text}" if speakers and speaker else text)
    return "\n".join(lines)


def normalise_category(value: str) -> str:
    """Return ``value`` as an Omi category, or ``"other"`` when it is not one."""
    candidate = value.strip().lower()
    return candidate if candidate in CATEGORIES else "other"


def summary_from_json(data: object) -> Summary:
    """Validate a model's parsed JSON answer strictly and build a :class:`Summary` from it.

    Required: ``title`` and ``overview`` strings, ``action_items`` a list of strings or of
    ``{"description": str}`` objects. Optional: ``emoji`` and ``category`` strings (an unknown
    category becomes ``"other"``), ``events`` a list of ``{"title": str, ...}`` objects.
    Over-long text is cut, not refused.

    Raises:
        MalformedSummaryError: anything else.
    """
    if not isinstance(data, Mapping):
        raise MalformedSummaryError(f"expected a JSON object, got {type(data).__name__}")
    title = _required_str(data, "title")[:MAX_TITLE_CHARS]
    overview = _required_str(data, "overview")[:MAX_OVERVIEW_CHARS]
    emoji = _optional_str(data, "emoji") or DEFAULT_EMOJI
    category = normalise_category(_optional_str(data, "category") or "other")
    items = tuple(_action_item(item) for item in _list(data, "action_items", required=True))
    parsed = (_event(event) for event in _list(data, "events", required=False))
    events = tuple(event for event in parsed if event.start)
    return Summary(
        title=title,
        overview=overview,
        emoji=emoji[:8],
        category=category,
        action_items=tuple(item for item in items if item)[:MAX_ACTION_ITEMS],
        events=events[:MAX_EVENTS],
    )


def _required_str(data: Mapping[object, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise MalformedSummaryError(f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _optional_str(data: Mapping[object, object], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedSummaryError(f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _list(data: Mapping[object, object], key: str, *, required: bool) -> list[object]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise MalformedSummaryError(f"{key!r} must be a list, got {type(value).__name__}")
    return value


def _action_item(item: object) -> str:
    if isinstance(item, Mapping):
        item = item.get("description")
    if not isinstance(item, str):
        raise MalformedSummaryError("each action item must be a string or have a 'description'")
    return item.strip()[:MAX_ITEM_CHARS]


def _iso_start(value: object) -> str | None:
    """An event's start as ISO 8601 UTC (naive times are taken as UTC); ``None`` if unusable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _event(event: object) -> SummaryEvent:
    if not isinstance(event, Mapping):
        raise MalformedSummaryError("each event must be an object")
    duration = event.get("duration", DEFAULT_EVENT_DURATION_MIN)
    if not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
        raise MalformedSummaryError("an event's 'duration' must be a positive integer (minutes)")
    start = _iso_start(event.get("start"))
    return SummaryEvent(
        title=_required_str(event, "title")[:MAX_TITLE_CHARS],
        description=_optional_str(event, "description")[:MAX_OVERVIEW_CHARS],
        start=start,
        duration_min=duration,
    )
