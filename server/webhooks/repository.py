"""The async repository of endpoints, the outbox and the delivery log, over the SQLite store.

Each method is one transaction through :meth:`SqliteStore.run_in_transaction` (the storage
lane). Outbox rows that must commit together with a conversation's completion are written by
:func:`outbox_hook`, passed as ``extra=`` to ``Store.complete_conversation``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final, Protocol, TypeVar, final

from server.store import TransactionHook
from server.webhooks import _sql
from server.webhooks._sql import LimitReachedError
from server.webhooks.models import Attempt, Delivery, DeliveryStatus, DueDelivery, Endpoint

__all__ = [
    "JSON_CONTENT_TYPE",
    "LimitReachedError",
    "Transactional",
    "WebhookRepository",
    "outbox_hook",
]

JSON_CONTENT_TYPE: Final = "application/json"

RetT = TypeVar("RetT")


class Transactional(Protocol):
    """A store that can run a function of a ``sqlite3.Connection`` in one write transaction."""

    async def run_in_transaction(self, fn: Callable[[sqlite3.Connection], RetT]) -> RetT:
        """Run ``fn(conn)`` atomically in the storage lane."""
        ...


def outbox_hook(
    user_id: str,
    kind: str,
    payload: bytes,
    now: float,
    *,
    dedupe_key: str | None = None,
    message_id: str | None = None,
    defer_once_apps_s: float = 0.0,
) -> TransactionHook:
    """A transaction hook that queues ``payload`` for the user's endpoints of ``kind``.

    ``message_id`` names the message (its ``webhook-id``) so the caller can attempt the
    ``once`` apps' deliveries itself (see :func:`server.webhooks._sql.enqueue`).
    """

    def hook(conn: sqlite3.Connection) -> None:
        _sql.enqueue(
            conn,
            user_id,
            kind,
            payload,
            JSON_CONTENT_TYPE,
            now,
            dedupe_key,
            message_id=message_id,
            defer_once_apps_s=defer_once_apps_s,
        )

    return hook


@final
class WebhookRepository:
    """Endpoints, queued deliveries and their log (see the module docstring)."""

    def __init__(self, store: Transactional) -> None:
        self._store = store

    async def create_endpoint(self, endpoint: Endpoint, max_per_user: int) -> None:
        """Insert ``endpoint``; :class:`LimitReachedError` past ``max_per_user``."""
        await self._store.run_in_transaction(
            partial(_sql.insert_endpoint, endpoint=endpoint, max_per_user=max_per_user)
        )

    async def list_endpoints(self, user_id: str, owner_kind: str) -> list[Endpoint]:
        """The user's endpoints of ``owner_kind``, oldest first."""
        return await self._store.run_in_transaction(
            partial(_sql.list_endpoints, user_id=user_id, owner_kind=owner_kind)
        )

    async def get_endpoint(
        self, user_id: str, owner_kind: str, endpoint_id: str
    ) -> Endpoint | None:
        """One of the user's endpoints, or ``None``."""
        return await self._store.run_in_transaction(
            partial(
                _sql.get_endpoint, user_id=user_id, owner_kind=owner_kind, endpoint_id=endpoint_id
            )
        )

    async def update_endpoint(
        self,
        user_id: str,
        owner_kind: str,
        endpoint_id: str,
        values: Mapping[str, object],
        now: float,
    ) -> Endpoint | None:
        """Change validated fields; ``None`` if the user has no such endpoint."""
        return await self._store.run_in_transaction(
            partial(
                _sql.update_endpoint,
                user_id=user_id,
                owner_kind=owner_kind,
                endpoint_id=endpoint_id,
                values=dict(values),
                now=now,
            )
        )

    async def delete_endpoint(self, user_id: str, owner_kind: str, endpoint_id: str) -> bool:
        """Delete an endpoint, its queue and its log."""
        return await self._store.run_in_transaction(
            partial(
                _sql.delete_endpoint,
                user_id=user_id,
                owner_kind=owner_kind,
                endpoint_id=endpoint_id,
            )
        )

    async def rotate_secret(
        self,
        user_id: str,
        owner_kind: str,
        endpoint_id: str,
        secret: str,
        grace_until: float,
        now: float,
    ) -> Endpoint | None:
        """Make ``secret`` current, keeping the old one signed with until ``grace_until``."""
        return await self._store.run_in_transaction(
            partial(
                _sql.rotate_secret,
                user_id=user_id,
                owner_kind=owner_kind,
                endpoint_id=endpoint_id,
                secret=secret,
                grace_until=grace_until,
                now=now,
            )
        )

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: float) -> bool:
        """Disable an endpoint; ``False`` if it was already disabled or is gone."""
        return await self._store.run_in_transaction(
            partial(_sql.disable_endpoint, endpoint_id=endpoint_id, reason=reason, now=now)
        )

    async def realtime_endpoints(self, user_id: str | None = None) -> list[Endpoint]:
        """Enabled endpoints with a realtime kind (of one user, or of everyone)."""
        return await self._store.run_in_transaction(
            partial(_sql.realtime_endpoints, user_id=user_id)
        )

    async def day_summary_users(self) -> list[str]:
        """Users with an enabled ``day_summary`` endpoint."""
        return await self._store.run_in_transaction(_sql.day_summary_users)

    async def enqueue(
        self,
        user_id: str,
        kind: str,
        payload: bytes,
        now: float,
        *,
        dedupe_key: str | None = None,
    ) -> int:
        """Queue a JSON message for the user's endpoints of ``kind``; return how many."""
        hook = partial(
            _sql.enqueue,
            user_id=user_id,
            kind=kind,
            payload=payload,
            content_type=JSON_CONTENT_TYPE,
            now=now,
            dedupe_key=dedupe_key,
        )
        return await self._store.run_in_transaction(hook)

    async def claim_due(self, now: float, lease_s: float, limit: int) -> list[DueDelivery]:
        """Lease due deliveries (see :func:`server.webhooks._sql.claim_due`)."""
        return await self._store.run_in_transaction(
            partial(_sql.claim_due, now=now, lease_s=lease_s, limit=limit)
        )

    async def claim_message(self, message_id: str, now: float, lease_s: float) -> list[DueDelivery]:
        """Lease one message's ``once`` app deliveries (see :func:`_sql.claim_message`)."""
        return await self._store.run_in_transaction(
            partial(_sql.claim_message, message_id=message_id, now=now, lease_s=lease_s)
        )

    async def record_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        *,
        outcome: DeliveryStatus,
        next_attempt_at: float | None,
        disable_reason: str | None = None,
    ) -> None:
        """Log an attempt and move the delivery on, atomically."""
        await self._store.run_in_transaction(
            partial(
                _sql.record_attempt,
                delivery_id=delivery_id,
                attempt=attempt,
                outcome=outcome,
                next_attempt_at=next_attempt_at,
                disable_reason=disable_reason,
            )
        )

    async def list_deliveries(
        self, user_id: str, owner_kind: str, endpoint_id: str, limit: int
    ) -> list[Delivery] | None:
        """The endpoint's newest deliveries with attempts; ``None`` if not the user's."""
        return await self._store.run_in_transaction(
            partial(
                _sql.list_deliveries,
                user_id=user_id,
                owner_kind=owner_kind,
                endpoint_id=endpoint_id,
                limit=limit,
            )
        )

    async def redeliver(
        self, user_id: str, owner_kind: str, endpoint_id: str, delivery_id: str, now: float
    ) -> Delivery | None:
        """Queue a logged delivery again with the same ``webhook-id``; ``None`` if unknown."""
        return await self._store.run_in_transaction(
            partial(
                _sql.redeliver,
                user_id=user_id,
                owner_kind=owner_kind,
                endpoint_id=endpoint_id,
                delivery_id=delivery_id,
                now=now,
            )
        )

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempt log."""
        return await self._store.run_in_transaction(
            partial(_sql.get_delivery, delivery_id=delivery_id)
        )

    async def all_deliveries(self, user_id: str) -> list[Delivery]:
        """Every delivery of a user, oldest first, with attempts."""
        return await self._store.run_in_transaction(partial(_sql.all_deliveries, user_id=user_id))

    async def next_due(self) -> float | None:
        """When the earliest pending delivery is due (or its lease ends), or ``None``."""
        return await self._store.run_in_transaction(_sql.next_due)

    async def count_pending(self) -> int:
        """Deliveries still pending."""
        return await self._store.run_in_transaction(_sql.count_pending)
