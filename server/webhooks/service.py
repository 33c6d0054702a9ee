"""What the HTTP surface needs from the webhook layer: the :class:`WebhookApi` protocol the app
context names, and :class:`WebhookService`, its implementation for a server run."""

from __future__ import annotations

import logging
from typing import Protocol, final

import trio

from lanes import LaneError
from server.drain import Drain
from server.store import StoreError
from server.webhooks.delivery import DeliveryWorkers
from server.webhooks.realtime import RealtimeDispatcher
from server.webhooks.repository import WebhookRepository

__all__ = ["WebhookApi", "WebhookService"]

LOGGER = logging.getLogger(__name__)


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

    async def reload_realtime(
        self,
        drain: Drain,
        interval_s: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reload every realtime endpoint into the cache each ``interval_s`` until the drain.

        With several nodes on one database, a registration changed through another node's API
        reaches this node's cache this way (this node's own API changes apply at once). A failed
        reload is logged and tried again at the next interval.
        """
        task_status.started()
        while True:
            with trio.move_on_after(interval_s):
                await drain.requested.wait()
            if drain.requested.is_set():
                return
            try:
                self._realtime.load(await self._repo.realtime_endpoints())
            except (StoreError, LaneError):
                LOGGER.warning("reloading realtime webhook endpoints failed", exc_info=True)
