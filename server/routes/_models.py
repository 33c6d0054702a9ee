"""The typed request and response models of the ``/v1`` API (pydantic v2).

These classes are the contract: :func:`server.routes.operation` parses every request body and
query string into them (strictly: JSON types are not coerced, unknown fields are refused,
numbers must be finite and in range, strings and lists have a maximum length), and the OpenAPI
document at ``/openapi.json`` is generated from the very same classes, so the two cannot drift.

Request bodies are parsed from the raw bytes by pydantic's JSON parser, which refuses unpaired
surrogates (``"\\ud800"``) and nesting deeper than 200 levels as malformed JSON before anything
reaches a handler or the store; the models themselves nest at most three levels.

Models that describe a partial update (``*Patch``) are ``total=False`` typed dicts: a field is
either absent (left alone) or present with a valid value; ``null`` is not a value.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from server.store import CONVERSATION_STATUSES, VISIBILITIES
from server.webhooks.models import DELIVERY_MODES

__all__ = [
    "MAX_PAGE",
    "ActionItemDelete",
    "ActionItemEdit",
    "ActionItemsPatch",
    "AppCreate",
    "AppList",
    "AppOut",
    "AppPatch",
    "AssignBulk",
    "ConversationOut",
    "ConversationPatch",
    "ConversationQuery",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryList",
    "DeliveryQuery",
    "ErrorBody",
    "ErrorDetail",
    "EventsPatch",
    "Health",
    "Ignored",
    "Me",
    "NewToken",
    "NewUser",
    "Processed",
    "Readiness",
    "Redelivery",
    "SegmentTextEdit",
    "StarredQuery",
    "Statistics",
    "StatusOk",
    "StatusOkConversation",
    "Ticket",
    "TitleQuery",
    "TokenCreated",
    "TranscriptSegment",
    "VisibilityQuery",
    "WebhookCreate",
    "WebhookList",
    "WebhookOut",
    "WebhookPatch",
]

#: Largest page of ``GET /v1/conversations``.
MAX_PAGE: Final = 100

_STRICT_IN: Final = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_PATCH: Final = ConfigDict(
    extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra={"minProperties": 1}
)
_OUT: Final = ConfigDict(extra="forbid")

ConversationStatus = Literal["in_progress", "processing", "completed", "failed"]
Visibility = Literal["private", "shared", "public"]
WebhookKind = Literal["memory_created", "realtime_transcript", "audio_bytes", "day_summary"]
AppTrigger = Literal["memory_created", "realtime_transcript", "audio_bytes"]
#: Durable kinds: ``once`` = one try, never retried (Omi apps' default: they do not
#: deduplicate); ``at_least_once`` = retried on the schedule (developer webhooks' default).
DeliveryMode = Literal["once", "at_least_once"]

#: An ISO 8601 UTC timestamp as this API writes it (``2026-12-01T22:39:15.123456Z``).
Timestamp = Annotated[str, Field(description="ISO 8601 UTC time")]
#: Unix seconds in a query string (finite; about 1970..2286).
UnixSeconds = Annotated[float, Field(ge=0, le=1e10, allow_inf_nan=False)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
IntervalS = Annotated[float, Field(ge=1.0, le=60.0, description="seconds of audio per post")]

assert set(ConversationStatus.__args__) == CONVERSATION_STATUSES  # type: ignore[attr-defined]
assert set(Visibility.__args__) == VISIBILITIES  # type: ignore[attr-defined]
assert set(DeliveryMode.__args__) == DELIVERY_MODES  # type: ignore[attr-defined]


# -- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable ``code`` and a message naming the field."""

    model_config = _OUT

    code: str = Field(examples=["invalid_field"])
    message: str = Field(examples=["visibility: Input should be 'private', 'shared' or 'public'"])


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    model_config = _OUT

    error: ErrorDetail


# -- probes ------------------------------------------------------------------------------------


class Health(BaseModel):
    """The process answers."""

    model_config = _OUT

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether to send work here (``false`` with a reason, status 503, once draining)."""

    model_config = _OUT

    ready: bool
    reason: str | None = None


# -- users, tokens, tickets --------------------------------------------------------------------


class Me(BaseModel):
    """A user."""

    model_config = _OUT

    id: str
    name: str


class NewUser(BaseModel):
    """A user to create."""

    model_config = _STRICT_IN

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", examples=["alice"])


class NewToken(BaseModel):
    """An API token to create (the body may be omitted)."""

    model_config = _STRICT_IN

    label: str = Field(default="", max_length=100, examples=["laptop"])


class TokenCreated(BaseModel):
    """A new API token: ``token`` is shown once, here."""

    model_config = _OUT

    token: str
    id: str
    user: str


class Ticket(BaseModel):
    """A single-use ticket for ``/v4/listen?ticket=...`` (browsers cannot set headers)."""

    model_config = _OUT

    ticket: str
    expires_in_s: float


class Statistics(BaseModel):
    """Every registered component's ``statistics()`` snapshot, by name."""

    model_config = ConfigDict(extra="allow")


# -- conversations -----------------------------------------------------------------------------


def _unix_or_iso(value: object) -> object:
    """Unix seconds, or an ISO 8601 date-time (naive means UTC: what Omi's app sends)."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError("must be finite")
        return number
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time or Unix seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: A date in a query string: ISO 8601 (``2026-12-01T10:00:00Z``; naive = UTC) or Unix seconds.
DateParam = Annotated[
    float,
    BeforeValidator(_unix_or_iso),
    Field(ge=-62135596800, le=253402300799),
    WithJsonSchema(
        {"type": "string", "maxLength": 64, "description": "ISO 8601 date-time or Unix seconds"}
    ),
]
#: Conversation statuses in a query string, comma-separated (``processing,completed``).
StatusesParam = Annotated[
    list[ConversationStatus],
    BeforeValidator(_comma_list),
    Field(max_length=4),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "description": "comma-separated: in_progress, processing, completed, failed",
        }
    ),
]


class _Query(BaseModel):
    """A query string: unknown parameters are ignored, ``name=`` means absent."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data


class ConversationQuery(_Query):
    """Omi's list filters (``statuses``, ``include_discarded``, ``starred``, ``start_date``,
    ``end_date`` inclusive, ``limit``/``offset``) plus keyset paging (``cursor``) and the
    older ``status``, ``since``, ``until`` (exclusive)."""

    statuses: StatusesParam | None = Field(default=None, description="default processing,completed")
    status: StatusesParam | None = Field(default=None, description="older spelling of statuses")
    include_discarded: bool = True
    starred: bool | None = None
    start_date: DateParam | None = None
    end_date: DateParam | None = Field(default=None, description="inclusive")
    since: UnixSeconds | None = Field(default=None, description="created at or after (Unix s)")
    until: UnixSeconds | None = Field(default=None, description="created before (Unix s)")
    limit: int = Field(
        default=MAX_PAGE, ge=1, le=1_000_000, description=f"pages hold at most {MAX_PAGE}"
    )
    offset: int = Field(default=0, ge=0, le=100_000)
    cursor: str | None = Field(
        default=None, max_length=512, description="``X-Next-Cursor`` of the previous page"
    )


@with_config(_PATCH)
class ConversationPatch(TypedDict, total=False):
    """The user-editable fields of a conversation; at least one."""

    title: Annotated[str, Field(max_length=500)]
    overview: Annotated[str, Field(max_length=20_000)]
    emoji: Annotated[str, Field(max_length=16)]
    category: Annotated[str, Field(max_length=64)]
    starred: bool
    visibility: Visibility
    discarded: bool


class TranscriptSegment(BaseModel):
    """A transcript segment in Omi's ``TranscriptSegment`` shape (times in seconds)."""

    model_config = _OUT

    id: str
    text: str
    speaker: str
    speaker_id: int
    is_user: bool
    person_id: str | None
    start: float
    end: float
    translations: list[Any]
    speech_profile_processed: bool
    stt_provider: str | None


class Structured(BaseModel):
    """The summary: title, overview, emoji, category, action items, events (+ extras)."""

    model_config = ConfigDict(extra="allow")

    title: str
    overview: str
    emoji: str
    category: str
    action_items: list[Any]
    events: list[Any]


class ConversationOut(BaseModel):
    """A conversation in Omi's ``Conversation`` shape (``transcript_segments`` on one item)."""

    model_config = _OUT

    id: str
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    status: ConversationStatus
    source: str
    language: str
    structured: Structured
    starred: bool
    visibility: Visibility
    discarded: bool
    failure_reason: str | None
    transcript_segments: list[TranscriptSegment]


# -- webhooks and apps -------------------------------------------------------------------------


class WebhookCreate(BaseModel):
    """A developer webhook to register."""

    model_config = _STRICT_IN

    kind: WebhookKind
    url: Url = Field(examples=["https://example.com/hooks/trioscribe"])
    interval_s: IntervalS = 5.0
    enabled: bool = True
    delivery: DeliveryMode = "at_least_once"


class AppCreate(BaseModel):
    """An app to register: a named endpoint with one or more triggers."""

    model_config = _STRICT_IN

    name: Name
    url: Url = Field(examples=["https://example.com/hooks/trioscribe"])
    triggers: list[AppTrigger] = Field(min_length=1, max_length=8)
    interval_s: IntervalS = 5.0
    enabled: bool = True
    delivery: DeliveryMode = "once"


@with_config(_PATCH)
class WebhookPatch(TypedDict, total=False):
    """The changeable fields of a webhook; at least one."""

    url: Url
    interval_s: IntervalS
    enabled: bool
    delivery: DeliveryMode


@with_config(_PATCH)
class AppPatch(TypedDict, total=False):
    """The changeable fields of an app; at least one."""

    name: Name
    url: Url
    triggers: Annotated[list[AppTrigger], Field(min_length=1, max_length=8)]
    interval_s: IntervalS
    enabled: bool
    delivery: DeliveryMode


class _EndpointOut(BaseModel):
    model_config = _OUT

    id: str
    url: str
    interval_s: float
    enabled: bool
    delivery: DeliveryMode
    disabled_reason: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    previous_secret_valid_until: Timestamp | None
    secret: str | None = Field(
        default=None, description="only when created or rotated: the signing secret (whsec_...)"
    )


class WebhookOut(_EndpointOut):
    """A registered webhook (its secret only when created or rotated)."""

    kind: WebhookKind


class AppOut(_EndpointOut):
    """A registered app (its secret only when created or rotated)."""

    name: str
    triggers: list[AppTrigger]


class WebhookList(BaseModel):
    """The caller's webhooks."""

    model_config = _OUT

    webhooks: list[WebhookOut]


class AppList(BaseModel):
    """The caller's apps."""

    model_config = _OUT

    apps: list[AppOut]


class DeliveryQuery(BaseModel):
    """How many deliveries to show, newest first."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=20, ge=1, le=100)


class DeliveryAttempt(BaseModel):
    """One attempt: when, how long, the HTTP status (``null`` without an answer), the error."""

    model_config = _OUT

    attempt: int
    at: Timestamp | None
    duration_s: float
    status: int | None
    error: str | None


class Delivery(BaseModel):
    """One queued message for one endpoint and its attempt log."""

    model_config = _OUT

    id: str
    kind: str
    message_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: Timestamp | None
    last_status: int | None
    last_error: str | None
    created_at: Timestamp | None
    finished_at: Timestamp | None
    attempt_log: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    """The delivery log of one endpoint."""

    model_config = _OUT

    deliveries: list[Delivery]


class Redelivery(BaseModel):
    """A delivery queued again."""

    model_config = _OUT

    delivery: Delivery


# -- Omi's conversation sub-routes -------------------------------------------------------------

#: Omi's app sends fields these routes do not read (e.g. ``completed`` with a delete): ignored.
_OMI_IN: Final = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
Index = Annotated[int, Field(ge=0, le=100_000)]


class Ignored(BaseModel):
    """Any JSON object (its fields are not read); the body may be omitted."""

    model_config = ConfigDict(extra="ignore")


class Processed(BaseModel):
    """The processed conversation (``memory`` for the app, ``conversation`` for newer Omi);
    ``null`` when it was empty and discarded."""

    model_config = _OUT

    memory: ConversationOut | None
    conversation: ConversationOut | None
    messages: list[Any]


class StatusOk(BaseModel):
    """Omi's acknowledgement."""

    model_config = _OUT

    status: Literal["Ok"]


class StatusOkConversation(StatusOk):
    """Omi's acknowledgement with the updated conversation."""

    conversation: ConversationOut


class TitleQuery(BaseModel):
    """The new title (``title=`` is an empty one)."""

    model_config = ConfigDict(extra="ignore")

    title: str = Field(max_length=500)


class StarredQuery(_Query):
    """Star or unstar."""

    starred: bool


class VisibilityQuery(_Query):
    """Who may see it."""

    value: Visibility


class EventsPatch(BaseModel):
    """Mark calendar events created: ``values[i]`` for the event at ``events_idx[i]``."""

    model_config = _OMI_IN

    events_idx: list[Index] = Field(max_length=1000)
    values: list[bool] = Field(max_length=1000)


class ActionItemsPatch(BaseModel):
    """Mark action items completed: ``values[i]`` for the item at ``items_idx[i]``."""

    model_config = _OMI_IN

    items_idx: list[Index] = Field(max_length=1000)
    values: list[bool] = Field(max_length=1000)


class ActionItemEdit(BaseModel):
    """Reword the action item whose description is ``old_description``."""

    model_config = _OMI_IN

    old_description: str = Field(max_length=2000)
    description: str = Field(max_length=2000)


class ActionItemDelete(BaseModel):
    """Remove the action items with this description."""

    model_config = _OMI_IN

    description: str = Field(max_length=2000)


class SegmentTextEdit(BaseModel):
    """Correct one segment's text."""

    model_config = _OMI_IN

    segment_id: str = Field(max_length=128)
    text: str = Field(max_length=20_000)


class AssignBulk(BaseModel):
    """Who spoke the segments: the user (``is_user``) or a person (``person_id``)."""

    model_config = _OMI_IN

    segment_ids: list[Annotated[str, Field(max_length=128)]] = Field(max_length=10_000)
    assign_type: Literal["is_user", "person_id"]
    value: Annotated[str, Field(max_length=128)] | bool | None = None
