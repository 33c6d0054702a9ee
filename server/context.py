"""What request handlers and workers share: one :class:`AppContext` per server run.

It is built by :func:`server.serve.serve` after every resource in it was opened, and it never
opens or closes anything itself (ownership stays with ``serve``'s ``async with`` blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import Blueprint

from server.auth import RateLimiter, TicketBook
from server.drain import Drain
from server.settings import Settings

if TYPE_CHECKING:
    from server.jwt_auth import JwtVerifier
    from server.store import Store

__all__ = ["AppContext"]


@dataclass(eq=False)
class AppContext:
    """Shared, already-open resources of one server run.

    Attributes:
        settings: the run's settings.
        drain: shutdown coordination (readiness, deadline).
        store: the repository (SQLite by default).
        tickets: single-use WebSocket tickets.
        limiter: per-user API rate limits.
        services: named long-lived components added by later layers (listen registry, STT
            provider, webhook dispatcher, ...), looked up by handlers.
        stats: named ``statistics()`` callables exposed on ``GET /v1/stats``.
        blueprints: extra route blueprints registered by service layers (webhooks, apps).
        jwt: the JWT verifier when ``--auth-jwks-url`` is set (else ``None``).
    """

    settings: Settings
    drain: Drain
    store: Store
    tickets: TicketBook
    limiter: RateLimiter
    services: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Callable[[], object]] = field(default_factory=dict)
    blueprints: list[Blueprint] = field(default_factory=list)
    jwt: JwtVerifier | None = None
