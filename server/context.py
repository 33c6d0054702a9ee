"""What request handlers share: one :class:`AppContext` per server run.

:func:`server.compose.open_components` builds it after every resource in it was opened; it never
opens or closes anything itself (ownership stays with ``open_components``' exit stack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from server.auth import RateLimiter, TicketBook
from server.cluster import Node
from server.drain import Drain
from server.identity import JwtAuth
from server.listen.registry import SessionRegistry
from server.metrics import ServerMetrics
from server.settings import Settings
from server.store import Store
from server.wakeup import Wakeup
from server.webhooks.service import WebhookApi

__all__ = ["AppContext"]


@dataclass(frozen=True, eq=False)
class AppContext:
    """Shared, already-open resources of one server run.

    Attributes:
        settings: the run's settings.
        drain: shutdown coordination (readiness, deadline).
        store: the repository (SQLite by default).
        tickets: single-use WebSocket tickets (in the store: valid on every node).
        node: this process in the cluster (heartbeat, per-user session caps across nodes).
        limiter: per-user API rate limits.
        sessions: the live ``/v4/listen`` sessions (admission, draining, pushes to users).
        webhooks: endpoints' storage and the nudges the webhook/app API needs.
        processing_wakeup: set when a conversation reaches ``processing`` (wakes the workers).
        metrics: the Prometheus registry of this run (``GET /metrics``), reading ``stats``.
        stats: named ``statistics()`` callables exposed on ``GET /v1/stats`` (filled while the
            run's components open; the serve tree adds its loop-lag monitor).
        jwt: JWT bearer-token auth when ``--auth-jwks-url`` is set (else ``None``).
    """

    settings: Settings
    drain: Drain
    store: Store
    tickets: TicketBook
    node: Node
    limiter: RateLimiter
    sessions: SessionRegistry
    webhooks: WebhookApi
    processing_wakeup: Wakeup
    metrics: ServerMetrics
    stats: dict[str, Callable[[], object]] = field(default_factory=dict)
    jwt: JwtAuth | None = None
