"""What the HTTP surface needs from the webhook layer: the :class:`WebhookApi` protocol the app
context names, and :class:`WebhookService`, its implementation for a server run."""

from __future__ import annotations

from typing import Protocol, final

from server.webhooks.delivery import DeliveryWorkers
from server.webhooks.realtime import RealtimeDispatcher
from server.webhooks.repository import WebhookRepository

__all__ = ["WebhookApi", "WebhookService"]


class WebhookApi(Protocol):
    """Endpoints' storage plus the two nudges an API change needs (``AppContext.webhooks``)."""

    @property
    def repo(self) -> WebhookRepository:
        """Endpoints, outbox and delivery log."""
        ...

    async def refresh_user(self, user_id: str) -> None:
        """Reload the user's endpoints into the realtime cache."""
        ...

    def wake_delivery(self) -> None:
        """Wake the durable delivery workers."""
        ...


@final
class WebhookService:
    """The :class:`WebhookApi` of a server run: the repository, the realtime cache, delivery."""

    def __init__(
        self, repo: WebhookRepository, realtime: RealtimeDispatcher, delivery: DeliveryWorkers
    ) -> None:
        self._repo = repo
        self._realtime = realtime
        self._delivery = delivery

    @property
    def repo(self) -> WebhookRepository:
        """Endpoints, outbox and delivery log."""
        return self._repo

    async def refresh_user(self, user_id: str) -> None:
        """Reload one user's realtime endpoints into the hooks' cache (after an API change)."""
        self._realtime.set_endpoints(user_id, await self._repo.realtime_endpoints(user_id))

    def wake_delivery(self) -> None:
        """Wake the durable delivery workers (new outbox rows)."""
        self._delivery.wakeup.set()
