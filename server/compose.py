"""The composition root: everything one server run opens, in one place, top to bottom.

:func:`open_components` owns every long-lived resource of a run and yields a frozen, typed
:class:`Components` record::

    open_components                    (one AsyncExitStack; closed in reverse order)
    ├── loop load                      the event loop's load: the read tick and the
    │                                  group commit's linger follow it (server.loopload)
    ├── storage ThreadLane + store     SQLite (or PostgreSQL: --database-url) through the lane
    ├── node                           this process's heartbeat row (cluster-wide session caps)
    ├── HTTP lane "jwks" + refresher   only with --auth-jwks-url (JWT bearer tokens)
    ├── STT provider                   embedded workers, Deepgram client, or the fake
    ├── thread lane "summarise"        long transcripts for the embedded summariser
    ├── HTTP lane "webhooks"           SSRF-pinned transport; per-target bulkheads + breakers
    ├── HTTP lane "openai"             only with summariser=openai (256 KiB read limit)
    ├── listen read poller             the fast transport's batched reads (one epoll + task)
    └── realtime nursery               one consumer task per (session, endpoint, kind) stream

``serve()`` starts the workers in its work nursery with :meth:`Components.start_workers`
(sweeper, processing, durable delivery, day-summary scheduler); each stops taking work once the
server drains, finishes what it holds, and returns.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Final, TypedDict, Unpack

import httpx
import trio

from lanes import HttpLane, HttpLaneSettings, ThreadLane, open_http_lane
from server.auth import RateLimiter, TicketBook
from server.clock import wall_now
from server.cluster import Node, open_node
from server.context import AppContext
from server.drain import Drain
from server.identity import JwtAuth
from server.jwt_auth import JwtSettings, open_jwt_verifier
from server.listen.handler import ListenDeps, ListenHandler, make_listen_handler
from server.listen.poller import ReadPoller, open_read_poller
from server.listen.registry import SessionRegistry
from server.listen.sweeper import Sweeper
from server.loopload import LoopLoad
from server.metrics import ServerMetrics
from server.processing.day_summary import DaySummaryScheduler
from server.processing.summarise import Summariser
from server.processing.summarise_embedded import EmbeddedSummariser
from server.processing.summarise_openai import OpenAISummariser
from server.processing.worker import ProcessingConfig, ProcessingWorkers
from server.settings import Settings
from server.store import Store, open_store
from server.stt.base import SttProvider
from server.wakeup import Wakeup
from server.webhooks.delivery import DeliveryConfig, DeliveryWorkers
from server.webhooks.models import Endpoint
from server.webhooks.realtime import RealtimeConfig, RealtimeDispatcher
from server.webhooks.replies import AppReplies
from server.webhooks.repository import WebhookRepository
from server.webhooks.service import WebhookService
from server.webhooks.ssrf import PinnedTransport

__all__ = [
    "Components",
    "Overrides",
    "open_components",
    "open_stt_provider",
    "webhook_lane_settings",
]

LOGGER = logging.getLogger(__name__)

OPENAI_READ_LIMIT_BYTES: Final = 256 * 1024
WEBHOOK_READ_LIMIT_BYTES: Final = 16 * 1024
#: Shielded budget for the summarise lane's threads to return when the run closes.
CLOSE_BUDGET_S: Final = 2.0

Stats = dict[str, Callable[[], object]]


class Overrides(TypedDict, total=False):
    """What tests (and benchmarks) may put in place of the configured components.

    Attributes:
        stt_provider: an already-open provider instead of the configured one.
        webhook_transport: instead of the SSRF-pinned network transport.
        openai_transport: for the OpenAI summariser's lane.
        processing_config: overrides the processing defaults (``workers`` from settings).
        delivery_config: overrides the delivery defaults (timeout and workers from settings),
            e.g. a short retry schedule.
    """

    stt_provider: SttProvider
    webhook_transport: httpx.AsyncBaseTransport
    openai_transport: httpx.AsyncBaseTransport
    processing_config: ProcessingConfig
    delivery_config: DeliveryConfig


@dataclass(frozen=True, eq=False)
class Components:
    """The open components of one server run (owned by :func:`open_components`).

    Attributes:
        context: what request handlers share (settings, drain, store, sessions, webhooks, ...).
        listen_handler: the ``/v4/listen`` handler (a raw-ASGI app; ``serve`` for the fast
            transport).
        registry: the live listen sessions.
        provider: the STT provider.
        hooks: the realtime dispatcher listen sessions feed (never blocks).
        webhooks: endpoints' storage plus the realtime cache and delivery nudges.
        processing_wakeup: set when a conversation reaches ``processing``.
        processing: the conversation-processing workers.
        delivery: the durable webhook delivery workers.
        day_summary: the daily scheduler.
        sweeper: closes conversations whose silence timeout passed.
    """

    context: AppContext
    listen_handler: ListenHandler
    registry: SessionRegistry
    provider: SttProvider
    hooks: RealtimeDispatcher
    webhooks: WebhookService
    processing_wakeup: Wakeup
    processing: ProcessingWorkers
    delivery: DeliveryWorkers
    day_summary: DaySummaryScheduler
    sweeper: Sweeper

    @property
    def store(self) -> Store:
        """The run's store."""
        return self.context.store

    @property
    def stats(self) -> Stats:
        """Named ``statistics()`` callables (``GET /v1/stats``)."""
        return self.context.stats

    async def start_workers(self, nursery: trio.Nursery) -> None:
        """Start the sweeper, processing, delivery and scheduling workers in ``nursery``."""
        await nursery.start(self.sweeper.run)
        await nursery.start(self.processing.run)
        await nursery.start(self.delivery.run)
        await nursery.start(self.day_summary.run)
        settings = self.context.settings
        if settings.database_url:  # other nodes change registrations too
            await nursery.start(
                partial(
                    self.webhooks.reload_realtime, self.context.drain, settings.realtime_reload_s
                )
            )


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
async def open_components(
    settings: Settings, **overrides: Unpack[Overrides]
) -> AsyncIterator[Components]:
    """Open everything one server run needs (see the module docstring) and yield it.

    Args:
        settings: the run's settings.
        overrides: components to use instead of the configured ones (see :class:`Overrides`).

    Cancellation: every resource closes on every exit path, in reverse order, each under its
    own shielded, bounded scope.
    """
    stats: Stats = {}
    loop_load = LoopLoad()  # one per process: the read tick and the group commit follow it
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(_open_store(settings, stats, loop_load))
        node = await stack.enter_async_context(open_node(store, settings))
        stats["node"] = node.statistics
        jwt = await stack.enter_async_context(_open_jwt(settings, stats))
        provider = await stack.enter_async_context(
            _provider(settings, overrides.get("stt_provider"))
        )
        thread_lane = ThreadLane("summarise", 1, max_waiting=4 * settings.processing_workers)
        stack.push_async_callback(_close_lane, thread_lane)
        stats["summarise"] = thread_lane.statistics
        transport = _webhook_transport(settings, overrides.get("webhook_transport"), stats)
        lane = await stack.enter_async_context(
            open_http_lane("webhooks", webhook_lane_settings(settings), transport=transport)
        )
        embedded = EmbeddedSummariser(thread_lane)
        openai_transport = overrides.get("openai_transport")
        summariser = await _open_summariser(stack, settings, embedded, openai_transport, stats)
        poller = await stack.enter_async_context(
            open_read_poller(
                settings.listen_read_tick_ms / 1000,
                min_tick_s=min(settings.listen_read_min_tick_ms, settings.listen_read_tick_ms)
                / 1000,
                load=loop_load,
            )
        )
        if poller is not None:
            stats["listen_poller"] = poller.statistics
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        parts = _Parts(
            settings, Drain(), store, node, provider, lane, summariser, embedded, stats, jwt,
            poller,
        )  # fmt: skip
        components = _assemble(
            parts, nursery, overrides.get("processing_config"), overrides.get("delivery_config")
        )
        stack.callback(components.hooks.close_all)
        components.hooks.load(await components.webhooks.repo.realtime_endpoints())
        yield components


@dataclass(frozen=True)
class _Parts:
    settings: Settings
    drain: Drain
    store: Store
    node: Node
    provider: SttProvider
    lane: HttpLane
    summariser: Summariser
    embedded: EmbeddedSummariser
    stats: Stats
    jwt: JwtAuth | None
    poller: ReadPoller | None


@asynccontextmanager
async def _open_store(
    settings: Settings, stats: Stats, loop_load: LoopLoad
) -> AsyncIterator[Store]:
    lane = ThreadLane(
        "storage",
        settings.storage_threads,
        max_waiting=settings.storage_max_waiting,
        abandon_on_cancel=True,
    )
    async with open_store(settings, lane=lane, pressure=loop_load.pressure) as store:
        stats["storage"] = lane.statistics
        stats["store"] = store.statistics
        yield store


@asynccontextmanager
async def _open_jwt(settings: Settings, stats: Stats) -> AsyncIterator[JwtAuth | None]:
    """JWT auth if ``--auth-jwks-url`` is set (its first JWKS fetch done on entry), else None."""
    if not settings.auth_jwks_url:
        await trio.lowlevel.checkpoint()
        yield None
        return
    jwt_settings = JwtSettings(
        jwks_url=settings.auth_jwks_url,
        issuer=settings.auth_issuer or "",
        audience=settings.auth_audience or "",
        refresh_s=settings.auth_jwks_refresh_s,
        min_refresh_s=settings.auth_jwks_min_refresh_s,
    )
    async with open_jwt_verifier(jwt_settings) as verifier:
        jwt = JwtAuth(verifier)
        stats["jwt"] = jwt.statistics
        yield jwt


@asynccontextmanager
async def open_stt_provider(settings: Settings) -> AsyncIterator[SttProvider]:
    """Open the configured STT provider (embedded: starts its worker processes)."""
    if settings.stt == "embedded":
        from server.stt.embedded import open_embedded_stt

        async with open_embedded_stt(
            workers=settings.stt_workers, streams_per_worker=settings.stt_streams_per_worker
        ) as embedded:
            yield embedded
    elif settings.stt == "deepgram":
        from server.stt.deepgram import DeepgramSettings, DeepgramSttProvider

        await trio.lowlevel.checkpoint()
        yield DeepgramSttProvider(
            DeepgramSettings(url=settings.deepgram_url, api_key=settings.deepgram_api_key or "")
        )
    else:
        from server.stt.fake import open_fake_stt

        async with open_fake_stt() as fake:
            yield fake


@asynccontextmanager
async def _provider(settings: Settings, given: SttProvider | None) -> AsyncIterator[SttProvider]:
    if given is not None:
        await trio.lowlevel.checkpoint()
        yield given
        return
    async with open_stt_provider(settings) as provider:
        yield provider


def _webhook_transport(
    settings: Settings, given: httpx.AsyncBaseTransport | None, stats: Stats
) -> httpx.AsyncBaseTransport:
    transport = given or PinnedTransport(
        allow_loopback=settings.allow_loopback_webhooks,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
    )
    if isinstance(transport, PinnedTransport):
        stats["webhook_ssrf"] = transport.statistics
    return transport


def _assemble(
    parts: _Parts,
    nursery: trio.Nursery,
    processing_config: ProcessingConfig | None,
    delivery_config: DeliveryConfig | None,
) -> Components:
    settings, drain, store = parts.settings, parts.drain, parts.store
    registry = SessionRegistry(
        max_sessions=settings.max_sessions, max_per_user=settings.max_sessions_per_user
    )
    wakeup = Wakeup()
    repo = WebhookRepository(store)
    replies = AppReplies()
    realtime = _realtime(settings, registry, repo, parts.lane, nursery, replies)
    delivery = DeliveryWorkers(
        repo,
        parts.lane,
        delivery_config
        or DeliveryConfig(timeout_s=settings.webhook_timeout_s, workers=settings.webhook_workers),
        drain,
        registry.push_to_user,
    )
    processing = ProcessingWorkers(
        store,
        parts.summariser,
        processing_config or ProcessingConfig(workers=settings.processing_workers),
        drain,
        wakeup,
        registry.push_to_user,
        delivery.wakeup.set,
        replies=replies,
        deliver_now=delivery.deliver_now,
    )
    day = DaySummaryScheduler(
        store, repo, parts.embedded, drain, settings.day_summary_hour_utc, delivery.wakeup.set
    )
    sweeper = Sweeper(store, registry, wakeup, drain, interval_s=settings.sweeper_interval_s)
    webhooks = WebhookService(repo, realtime, delivery)
    metrics = ServerMetrics(parts.stats, store)
    context = AppContext(
        settings=settings,
        drain=drain,
        store=store,
        tickets=TicketBook(store, settings.ticket_ttl_s),
        node=parts.node,
        limiter=RateLimiter(settings.api_rate_per_s, settings.api_burst),
        sessions=registry,
        webhooks=webhooks,
        processing_wakeup=wakeup,
        metrics=metrics,
        stats=parts.stats,
        jwt=parts.jwt,
    )
    parts.stats.update(
        tickets=context.tickets.statistics,
        sessions=registry.statistics,
        stt=parts.provider.statistics,
        processing=processing.statistics,
        webhooks=delivery.statistics,
        webhooks_realtime=realtime.statistics,
        app_replies=replies.statistics,
        webhook_lane=parts.lane.statistics,
        sweeper=sweeper.statistics,
    )
    listen = ListenDeps(
        registry, parts.provider, realtime, wakeup.set, metrics.latency_sinks(), parts.poller
    )
    return Components(
        context=context,
        listen_handler=make_listen_handler(context, listen),
        registry=registry,
        provider=parts.provider,
        hooks=realtime,
        webhooks=webhooks,
        processing_wakeup=wakeup,
        processing=processing,
        delivery=delivery,
        day_summary=day,
        sweeper=sweeper,
    )


def _realtime(
    settings: Settings,
    registry: SessionRegistry,
    repo: WebhookRepository,
    lane: HttpLane,
    nursery: trio.Nursery,
    replies: AppReplies,
) -> RealtimeDispatcher:
    def on_gone(endpoint: Endpoint) -> None:
        nursery.start_soon(_disable, repo, endpoint.id)

    return RealtimeDispatcher(
        lane,
        nursery,
        RealtimeConfig(timeout_s=settings.webhook_timeout_s),
        registry.push_to_user,
        on_gone,
        replies,
    )


async def _disable(repo: WebhookRepository, endpoint_id: str) -> None:
    await trio.lowlevel.checkpoint()
    try:
        await repo.disable_endpoint(endpoint_id, "410 Gone", wall_now())
    except Exception:
        LOGGER.exception("disabling webhook endpoint %s failed", endpoint_id)


async def _open_summariser(
    stack: AsyncExitStack,
    settings: Settings,
    embedded: EmbeddedSummariser,
    transport: httpx.AsyncBaseTransport | None,
    stats: Stats,
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
    stats["openai_lane"] = lane.statistics
    return OpenAISummariser(
        lane,
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        api_key=settings.openai_api_key or "",
    )


async def _close_lane(lane: ThreadLane) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S):
        await lane.aclose()
