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
#: Most tickets outstanding at once; the oldest is forgotten beyond this (it simply expires early).
MAX_TICKETS: Final = 10_000
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


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


@dataclass(frozen=True, slots=True)
class TicketBookStatistics:
    """Counters of a :class:`TicketBook`."""

    outstanding: int
    issued: int
    redeemed: int
    rejected: int


@final
class TicketBook:
    """Short-lived, single-use tickets that let a browser open ``/v4/listen`` without headers.

    A browser cannot set ``Authorization`` on a WebSocket upgrade, and putting the long-lived
    API token in a URL would leak it into logs (RFC 6750 §2.3). Instead it asks
    ``POST /v1/listen/tickets`` (with its token) for a ticket valid ``ttl_s`` seconds, used once.
    Memory is bounded by :data:`MAX_TICKETS`.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._tickets: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._issued = 0
        self._redeemed = 0
        self._rejected = 0

    def issue(self, user_id: str) -> tuple[str, float]:
        """Return a new ticket for ``user_id`` and its lifetime in seconds."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._tickets[_digest(ticket)] = (user_id, trio.current_time() + self._ttl_s)
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.popitem(last=False)
        self._issued += 1
        return ticket, self._ttl_s

    def redeem(self, ticket: str) -> str | None:
        """Consume ``ticket``; return its user id, or ``None`` if unknown, used or expired."""
        entry = self._tickets.pop(_digest(ticket), None)
        if entry is None or entry[1] < trio.current_time():
            self._rejected += 1
            return None
        self._redeemed += 1
        return entry[0]

    def statistics(self) -> TicketBookStatistics:
        """A snapshot of the counters."""
        return TicketBookStatistics(
            len(self._tickets), self._issued, self._redeemed, self._rejected
        )


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
