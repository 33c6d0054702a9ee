"""Authentication helpers: bearer tokens, single-use WebSocket tickets, per-user rate limits.

Raw tokens and tickets never reach a log line: they are only compared (tickets by their SHA-256)
and handed to the store, which keeps hashes only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, final

import trio

from server.clock import wall_now

__all__ = [
    "TICKET_PREFIX",
    "RateLimiter",
    "TicketBook",
    "TicketBookStatistics",
    "bearer_token",
    "is_admin_token",
]

#: Every ticket starts with this (so a token field can be told apart from an API token).
TICKET_PREFIX: Final = "tk_"
#: Longest string ever looked up as a ticket (real ones are 35 characters).
MAX_TICKET_CHARS: Final = 200
#: Most users whose rate-limit buckets are remembered; the least recently seen is forgotten.
MAX_BUCKETS: Final = 10_000


class _Headers(Protocol):
    def get(self, key: str) -> str | None: ...


def bearer_token(headers: _Headers | Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    value = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_admin_token(token: str | None, admin_token: str | None) -> bool:
    """Constant-time check of ``token`` against the configured admin token (``None``: no admin)."""
    if not token or not admin_token:
        return False
    return hmac.compare_digest(token.encode(), admin_token.encode())


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TicketBookStatistics:
    """Counters of a :class:`TicketBook`."""

    issued: int
    redeemed: int
    rejected: int


class _TicketStore(Protocol):
    async def create_ticket(
        self, ticket_hash: str, user_id: str, expires_at: float, now: float
    ) -> None: ...

    async def redeem_ticket(self, ticket_hash: str, now: float) -> str | None: ...


@final
class TicketBook:
    """Short-lived, single-use tickets that let a browser open ``/v4/listen`` without headers.

    A browser cannot set ``Authorization`` on a WebSocket upgrade, and putting the long-lived
    API token in a URL would leak it into logs (RFC 6750 §2.3). Instead it asks
    ``POST /v1/listen/tickets`` (with its token) for a ticket valid ``ttl_s`` seconds, used once.
    Tickets live in the store (their SHA-256 only), so a ticket issued by one server process is
    redeemable on any other, and only once across all of them.

    Errors: the store's (``StoreError``, lane errors) pass through.
    """

    def __init__(self, store: _TicketStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._issued = 0
        self._redeemed = 0
        self._rejected = 0

    async def issue(self, user_id: str) -> tuple[str, float]:
        """Return a new ticket for ``user_id`` and its lifetime in seconds."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        now = wall_now()
        await self._store.create_ticket(_digest(ticket), user_id, now + self._ttl_s, now)
        self._issued += 1
        return ticket, self._ttl_s

    async def redeem(self, ticket: str) -> str | None:
        """Consume ``ticket``; return its user id, or ``None`` if unknown, used or expired."""
        user_id = None
        if len(ticket) <= MAX_TICKET_CHARS:
            user_id = await self._store.redeem_ticket(_digest(ticket), wall_now())
        else:
            await trio.lowlevel.checkpoint()
        if user_id is None:
            self._rejected += 1
            return None
        self._redeemed += 1
        return user_id

    def statistics(self) -> TicketBookStatistics:
        """A snapshot of this process's counters."""
        return TicketBookStatistics(self._issued, self._redeemed, self._rejected)


@final
class RateLimiter:
    """Per-key token buckets on the Trio clock: ``rate_per_s`` sustained, ``burst`` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.limited = 0

    def try_acquire(self, key: str) -> float:
        """Take one token for ``key``; return 0.0 if allowed, else seconds until one is free."""
        now = trio.current_time()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            self.limited += 1
            wait = (1.0 - tokens) / self._rate
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait
