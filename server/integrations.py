"""Conversation processing and webhooks, as one layer the server opens and starts.

``open_integrations`` owns everything this layer needs for the whole run and yields an
:class:`Integrations`::

    open_integrations                  (inside serve(): opened after the store, closed before it)
    ├── thread lane "summarise"        long transcripts for the embedded summariser
    ├── HTTP lane "openai"             only with summariser=openai (256 KiB read limit)
    ├── HTTP lane "webhooks"           SSRF-pinned transport; per-target bulkheads + breakers
    └── realtime nursery               one consumer task per (session, endpoint, kind) stream

``serve()`` starts the workers in its work nursery with :meth:`Integrations.start_workers`:
processing workers, durable delivery workers and the day-summary scheduler; each stops taking
work once the server drains, finishes what it holds, and returns. The routes blueprint is
appended to ``ctx.blueprints`` (``serve()`` registers those; do not register
``Integrations.blueprints`` a second time).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, cast

import httpx
import trio
from quart import Blueprint

from lanes import HttpLane, HttpLaneSettings, ThreadLane, open_http_lane
from server.clock import wall_now
from server.context import AppContext
from server.listen.hooks import RealtimeHooks
from server.listen.registry import SessionRegistry
from server.processing.summarise import Summariser
from server.processing.summarise_embedded import EmbeddedSummariser
from server.processing.summarise_openai import OpenAISummariser
from server.processing.worker import ProcessingConfig, ProcessingWorkers
from server.settings import Settings
from server.wakeup import Wakeup
from server.webhooks import routes
from server.webhooks.day_summary import DaySummaryScheduler
from server.webhooks.delivery import DeliveryConfig, DeliveryWorkers
from server.webhooks.models import Endpoint
from server.webhooks.realtime import RealtimeConfig, RealtimeDispatcher
from server.webhooks.repository import Transactional, WebhookRepository
from server.webhooks.ssrf import PinnedTransport

__all__ = ["Integrations", "open_integrations"]

LOGGER = logging.getLogger(__name__)

OPENAI_READ_LIMIT_BYTES: Final = 256 * 1024
WEBHOOK_READ_LIMIT_BYTES: Final = 16 * 1024
#: Shielded budget for the summarise lane's threads to return when the layer closes.
CLOSE_BUDGET_S: Final = 2.0


@dataclass(eq=False)
class Integrations:
    """What the rest of the server uses of this layer.

    Attributes:
        hooks: the realtime hooks for listen sessions (never block).
        blueprints: the layer's routes (already appended to ``ctx.blueprints``).
        repo: endpoints, outbox and delivery log.
        processing: the conversation-processing workers.
        delivery: the durable webhook delivery workers.
        realtime: the realtime dispatcher (same object as ``hooks``).
        day_summary: the daily scheduler.
    """

    hooks: RealtimeHooks
    repo: WebhookRepository
    processing: ProcessingWorkers
    delivery: DeliveryWorkers
    realtime: RealtimeDispatcher
    day_summary: DaySummaryScheduler
    blueprints: list[Blueprint] = field(default_factory=list)

    async def start_workers(self, nursery: trio.Nursery) -> None:
        """Start processing, delivery and scheduling workers in ``nursery``."""
        await nursery.start(self.processing.run)
        await nursery.start(self.delivery.run)
        await nursery.start(self.day_summary.run)

    async def refresh_user(self, user_id: str) -> None:
        """Reload one user's realtime endpoints into the hooks' cache (after an API change)."""
        self.realtime.set_endpoints(user_id, await self.repo.realtime_endpoints(user_id))

    def wake_delivery(self) -> None:
        """Wake the durable delivery workers (new outbox rows)."""
        self.delivery.wakeup.set()


def webhook_lane_settings(settings: Settings) -> HttpLaneSettings:
    """The webhook lane's limits: small reads, short connects, bulkheads per endpoint."""
    return HttpLaneSettings(
        max_connections=256,
        max_keepalive_connections=32,
        max_concurrency=256,
        per_target_concurrency=8,
        per_target_max_waiting=16,
        connect_timeout_s=min(5.0, settings.webhook_timeout_s),
        read_timeout_s=settings.webhook_timeout_s,
        write_timeout_s=settings.webhook_timeout_s,
        pool_timeout_s=min(5.0, settings.webhook_timeout_s),
        read_limit_bytes=WEBHOOK_READ_LIMIT_BYTES,
    )


@asynccontextmanager
async def open_integrations(
    ctx: AppContext,
    registry: SessionRegistry,
    processing: Wakeup,
    *,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
    openai_transport: httpx.AsyncBaseTransport | None = None,
    processing_config: ProcessingConfig | None = None,
    delivery_config: DeliveryConfig | None = None,
) -> AsyncIterator[Integrations]:
    """Open the layer for one server run (see the module docstring).

    Args:
        ctx: the run's context (settings, drain, store, stats, blueprints).
        registry: live sessions, for ``memory_created`` and ``app_message`` events.
        processing: the wake-up the listen side sets when a conversation reaches processing.
        webhook_transport: instead of the SSRF-pinned network transport (tests).
        openai_transport: for the OpenAI summariser's lane (tests).
        processing_config: overrides the processing defaults (``workers`` from settings).
        delivery_config: overrides the delivery defaults (timeout and workers from settings).
    """
    settings = ctx.settings
    repo = WebhookRepository(cast(Transactional, ctx.store))
    transport = webhook_transport or PinnedTransport(
        allow_loopback=settings.allow_loopback_webhooks,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
    )
    if isinstance(transport, PinnedTransport):
        ctx.stats["webhook_ssrf"] = transport.statistics
    thread_lane = ThreadLane("summarise", 1, max_waiting=4 * settings.processing_workers)
    ctx.stats["summarise"] = thread_lane.statistics
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_close_lane, thread_lane)
        lane = await stack.enter_async_context(
            open_http_lane("webhooks", webhook_lane_settings(settings), transport=transport)
        )
        embedded = EmbeddedSummariser(thread_lane)
        summariser = await _open_summariser(stack, settings, embedded, openai_transport)
        nursery = await stack.enter_async_context(trio.open_nursery())
        realtime = _realtime(ctx, registry, repo, lane, nursery)
        stack.callback(nursery.cancel_scope.cancel)
        stack.callback(realtime.close_all)
        realtime.load(await repo.realtime_endpoints())
        integrations = _assemble(
            ctx, registry, processing, repo, lane, summariser, embedded, realtime,
            processing_config, delivery_config,
        )  # fmt: skip
        yield integrations


def _realtime(
    ctx: AppContext,
    registry: SessionRegistry,
    repo: WebhookRepository,
    lane: HttpLane,
    nursery: trio.Nursery,
) -> RealtimeDispatcher:
    def on_gone(endpoint: Endpoint) -> None:
        nursery.start_soon(_disable, repo, endpoint.id)

    return RealtimeDispatcher(
        lane,
        nursery,
        RealtimeConfig(timeout_s=ctx.settings.webhook_timeout_s),
        registry.push_to_user,
        on_gone,
    )


async def _disable(repo: WebhookRepository, endpoint_id: str) -> None:
    await trio.lowlevel.checkpoint()
    try:
        await repo.disable_endpoint(endpoint_id, "410 Gone", wall_now())
    except Exception:
        LOGGER.exception("disabling webhook endpoint %s failed", endpoint_id)


def _assemble(
    ctx: AppContext,
    registry: SessionRegistry,
    wakeup: Wakeup,
    repo: WebhookRepository,
    lane: HttpLane,
    summariser: Summariser,
    embedded: EmbeddedSummariser,
    realtime: RealtimeDispatcher,
    processing_config: ProcessingConfig | None,
    delivery_config: DeliveryConfig | None,
) -> Integrations:
    settings = ctx.settings
    delivery = DeliveryWorkers(
        repo,
        lane,
        delivery_config
        or DeliveryConfig(timeout_s=settings.webhook_timeout_s, workers=settings.webhook_workers),
        ctx.drain,
        registry.push_to_user,
    )
    processing = ProcessingWorkers(
        ctx.store,
        summariser,
        processing_config or ProcessingConfig(workers=settings.processing_workers),
        ctx.drain,
        wakeup,
        registry.push_to_user,
        delivery.wakeup.set,
    )
    day = DaySummaryScheduler(
        ctx.store, repo, embedded, ctx.drain, settings.day_summary_hour_utc, delivery.wakeup.set
    )
    integrations = Integrations(realtime, repo, processing, delivery, realtime, day)
    integrations.blueprints.append(routes.blueprint)
    if routes.blueprint not in ctx.blueprints:
        ctx.blueprints.append(routes.blueprint)
    ctx.services[routes.SERVICE_KEY] = integrations
    ctx.stats.update(
        processing=processing.statistics,
        webhooks=delivery.statistics,
        webhooks_realtime=realtime.statistics,
        webhook_lane=lane.statistics,
    )
    return integrations


async def _open_summariser(
    stack: AsyncExitStack,
    settings: Settings,
    embedded: EmbeddedSummariser,
    transport: httpx.AsyncBaseTransport | None,
) -> Summariser:
    await trio.lowlevel.checkpoint()
    if settings.summariser != "openai":
        return embedded
    lane = await stack.enter_async_context(
        open_http_lane(
            "openai",
            HttpLaneSettings(read_limit_bytes=OPENAI_READ_LIMIT_BYTES),
            transport=transport,
        )
    )
    return OpenAISummariser(
        lane,
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        api_key=settings.openai_api_key or "",
    )


async def _close_lane(lane: ThreadLane) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S):
        await lane.aclose()
