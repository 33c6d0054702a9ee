"""The async repository of endpoints, the outbox and the delivery log, over the store.

Each method is one transaction through :meth:`server.store.Store.run_in_transaction` (the
storage lane). The ``memory_created`` outbox row that must commit together with a
conversation's completion is written by :func:`outbox_hook`, passed as ``extra=`` to
``Store.complete_conversation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Concatenate, Final, ParamSpec, TypeVar, final

from server.store import CompletionHook, Conversation, DbConnection, Store
from server.webhooks import _sql
from server.webhooks._sql import LimitReachedError
from server.webhooks.models import Attempt, Delivery, DeliveryStatus, DueDelivery, Endpoint

__all__ = [
    "JSON_CONTENT_TYPE",
    "LimitReachedError",
    "WebhookRepository",
    "outbox_hook",
]

JSON_CONTENT_TYPE: Final = "application/json"

RetT = TypeVar("RetT")
ArgsP = ParamSpec("ArgsP")


def outbox_hook(
    kind: str,
    render: Callable[[Conversation], bytes],
    now: float,
    *,
    message_id: str | None = None,
    defer_once_apps_s: float = 0.0,
) -> CompletionHook:
    """A completion hook that queues ``render(completed)`` for the owner's endpoints of ``kind``.

    ``message_id`` names the message (its ``webhook-id``) so the caller can attempt the
    ``once`` apps' deliveries itself (see :func:`server.webhooks._sql.enqueue`).
    """

    def hook(conn: DbConnection, completed: Conversation) -> None:
        payload = render(completed)
        _sql.enqueue(
            conn,
            completed.user_id,
            kind,
            payload,
            JSON_CONTENT_TYPE,
            now,
            None,
            message_id=message_id,
            defer_once_apps_s=defer_once_apps_s,
        )

    return hook


@final
class WebhookRepository:
    """Endpoints, queued deliveries and their log (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def _run(
        self,
        fn: Callable[Concatenate[DbConnection, ArgsP], RetT],
        *args: ArgsP.args,
        **kwargs: ArgsP.kwargs,
    ) -> RetT:
        def call(conn: DbConnection) -> RetT:
            return fn(conn, *args, **kwargs)

        return await self._store.run_in_transaction(call)

    async def create_endpoint(self, endpoint: Endpoint, max_per_user: int) -> None:
        """Insert ``endpoint``; :class:`LimitReachedError` past ``max_per_user``."""
        await self._run(_sql.insert_endpoint, endpoint, max_per_user)

    async def list_endpoints(self, user_id: str, owner_kind: str) -> list[Endpoint]:
        """The user's endpoints of ``owner_kind``, oldest first."""
        return await self._run(_sql.list_endpoints, user_id, owner_kind)

    async def get_endpoint(
        self, user_id: str, owner_kind: str, endpoint_id: str
    ) -> Endpoint | None:
        """One of the user's endpoints, or ``None``."""
        return await self._run(_sql.get_endpoint, user_id, owner_kind, endpoint_id)

    async def update_endpoint(
        self,
        user_id: str,
        owner_kind: str,
        endpoint_id: str,
        values: Mapping[str, object],
        now: float,
    ) -> Endpoint | None:
        """Change validated fields; ``None`` if the user has no such endpoint."""
        return await self._run(
            _sql.update_endpoint, user_id, owner_kind, endpoint_id, dict(values), now
        )

    async def delete_endpoint(self, user_id: str, owner_kind: str, endpoint_id: str) -> bool:
        """Delete an endpoint, its queue and its log."""
        return await self._run(_sql.delete_endpoint, user_id, owner_kind, endpoint_id)

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
        return await self._run(
            _sql.rotate_secret, user_id, owner_kind, endpoint_id, secret, grace_until, now
        )

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: float) -> bool:
        """Disable an endpoint; ``False`` if it was already disabled or is gone."""
        return await self._run(_sql.disable_endpoint, endpoint_id, reason, now)

    async def realtime_endpoints(self, user_id: str | None = None) -> list[Endpoint]:
        """Enabled endpoints with a realtime kind (of one user, or of everyone)."""
        return await self._run(_sql.realtime_endpoints, user_id)

    async def day_summary_users(self) -> list[str]:
        """Users with an enabled ``day_summary`` endpoint."""
        return await self._run(_sql.day_summary_users)

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
        return await self._run(
            _sql.enqueue, user_id, kind, payload, JSON_CONTENT_TYPE, now, dedupe_key
        )

    async def claim_due(self, now: float, lease_s: float, limit: int) -> list[DueDelivery]:
        """Lease due deliveries (see :func:`server.webhooks._sql.claim_due`)."""
        return await self._run(_sql.claim_due, now, lease_s, limit)

    async def claim_message(self, message_id: str, now: float, lease_s: float) -> list[DueDelivery]:
        """Lease one message's ``once`` app deliveries (see :func:`_sql.claim_message`)."""
        return await self._run(_sql.claim_message, message_id, now, lease_s)

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
        await self._run(
            _sql.record_attempt,
            delivery_id,
            attempt,
            outcome=outcome,
            next_attempt_at=next_attempt_at,
            disable_reason=disable_reason,
        )

    async def list_deliveries(
        self, user_id: str, owner_kind: str, endpoint_id: str, limit: int
    ) -> list[Delivery] | None:
        """The endpoint's newest deliveries with attempts; ``None`` if not the user's."""
        return await self._run(_sql.list_deliveries, user_id, owner_kind, endpoint_id, limit)

    async def redeliver(
        self, user_id: str, owner_kind: str, endpoint_id: str, delivery_id: str, now: float
    ) -> Delivery | None:
        """Queue a logged delivery again with the same ``webhook-id``; ``None`` if unknown."""
        return await self._run(_sql.redeliver, user_id, owner_kind, endpoint_id, delivery_id, now)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempt log."""
        return await self._run(_sql.get_delivery, delivery_id)

    async def all_deliveries(self, user_id: str) -> list[Delivery]:
        """Every delivery of a user, oldest first, with attempts."""
        return await self._run(_sql.all_deliveries, user_id)

    async def next_due(self) -> float | None:
        """When the earliest pending delivery is due (or its lease ends), or ``None``."""
        return await self._run(_sql.next_due)

    async def count_pending(self) -> int:
        """Deliveries still pending."""
        return await self._run(_sql.count_pending)
