"""The webhook layer's value types: endpoints, queued deliveries, and their attempt log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "APP_TRIGGERS",
    "DEFAULT_DELIVERY",
    "DELIVERY_MODES",
    "DURABLE_KINDS",
    "OWNER_KINDS",
    "REALTIME_KINDS",
    "WEBHOOK_KINDS",
    "Attempt",
    "Delivery",
    "DeliveryMode",
    "DeliveryStatus",
    "DueDelivery",
    "Endpoint",
    "OwnerKind",
]

OwnerKind = Literal["webhook", "app"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
#: ``once``: one try (Omi apps' expectation: they do not deduplicate); ``at_least_once``:
#: retried on the schedule until a 2xx, receivers deduplicate on ``webhook-id``.
DeliveryMode = Literal["once", "at_least_once"]

DELIVERY_MODES: Final = frozenset({"once", "at_least_once"})
#: The mode a registration gets when it names none: Omi apps expect one try.
DEFAULT_DELIVERY: Final[dict[OwnerKind, DeliveryMode]] = {
    "app": "once",
    "webhook": "at_least_once",
}

OWNER_KINDS: Final = frozenset({"webhook", "app"})
#: Developer webhook kinds (Omi's ``WebhookType``).
WEBHOOK_KINDS: Final = frozenset(
    {"memory_created", "realtime_transcript", "audio_bytes", "day_summary"}
)
#: What an app can be triggered by.
APP_TRIGGERS: Final = frozenset({"memory_created", "realtime_transcript", "audio_bytes"})
#: Delivered through the outbox: at-least-once, retried, survive restarts.
DURABLE_KINDS: Final = frozenset({"memory_created", "day_summary"})
#: Delivered live: best-effort, latest-wins, never retried.
REALTIME_KINDS: Final = frozenset({"realtime_transcript", "audio_bytes"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered webhook or app endpoint.

    Attributes:
        owner_kind: ``webhook`` (one kind) or ``app`` (several triggers).
        kinds: the event kinds it receives.
        interval_s: seconds of audio per ``audio_bytes`` post.
        secret: the current signing secret (``whsec_...``).
        previous_secret: the secret before the last rotation, still signed with until
            ``previous_secret_until`` (Unix seconds).
        disabled_reason: why it was disabled (``410 Gone``, by the user, ...).
        delivery: ``once`` or ``at_least_once`` for durable kinds (``memory_created``,
            ``day_summary``); realtime kinds are best-effort either way.
    """

    id: str
    user_id: str
    owner_kind: OwnerKind
    name: str
    url: str
    kinds: tuple[str, ...]
    interval_s: float
    secret: str
    previous_secret: str | None
    previous_secret_until: float | None
    enabled: bool
    disabled_reason: str | None
    created_at: float
    updated_at: float
    delivery: DeliveryMode = "at_least_once"

    def secrets_at(self, now: float) -> tuple[str, ...]:
        """The secrets to sign with at ``now`` (two during a rotation's grace period)."""
        until = self.previous_secret_until
        if self.previous_secret and until is not None and now < until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt as recorded in the log (``status`` is ``None`` without an answer)."""

    attempt: int
    started_at: float
    duration_s: float
    status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One queued message for one endpoint, with its attempt log when loaded."""

    id: str
    endpoint_id: str
    user_id: str
    kind: str
    message_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    attempt_log: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A leased delivery with what an attempt needs: its endpoint and the exact payload bytes."""

    delivery: Delivery
    endpoint: Endpoint
    payload: bytes
    content_type: str
