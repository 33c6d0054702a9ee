"""The layers above the core: listen sessions, STT, processing, webhooks.

:func:`open_services` opens the long-lived components those layers need (owned by ``serve()``,
closed after every user of them ended) and returns the ``/v4/listen`` ASGI handler;
:func:`start_workers` starts the background workers in the work nursery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from server.app import AsgiApp
from server.context import AppContext
from server.integrations import Integrations, open_integrations
from server.listen.handler import ListenDeps, make_listen_handler
from server.listen.registry import SessionRegistry
from server.listen.sweeper import Sweeper
from server.metrics import ServerMetrics
from server.settings import Settings
from server.stt.base import SttProvider
from server.wakeup import Wakeup

__all__ = ["open_services", "open_stt_provider", "start_workers"]


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
async def open_services(
    ctx: AppContext, *, stt_provider: SttProvider | None = None
) -> AsyncIterator[AsgiApp]:
    """Open the services of one run and yield the ``/v4/listen`` handler.

    Args:
        ctx: the run's context; services register their statistics and blueprints in it.
        stt_provider: use this provider instead of opening the configured one (tests).
    """
    settings = ctx.settings
    registry = SessionRegistry(
        max_sessions=settings.max_sessions, max_per_user=settings.max_sessions_per_user
    )
    processing = Wakeup()
    ctx.services["sessions"] = registry
    ctx.services["processing"] = processing
    ctx.stats["sessions"] = registry.statistics
    async with (
        _provider(settings, stt_provider) as provider,
        open_integrations(ctx, registry, processing) as integrations,
    ):
        ctx.stats["stt"] = provider.statistics
        ctx.services["integrations"] = integrations
        ctx.blueprints.extend(b for b in integrations.blueprints if b not in ctx.blueprints)
        metrics: ServerMetrics | None = ctx.services.get("metrics")
        latency = metrics.latency_sinks() if metrics is not None else None
        deps = ListenDeps(registry, provider, integrations.hooks, processing.set, latency)
        yield make_listen_handler(ctx, deps)


@asynccontextmanager
async def _provider(settings: Settings, given: SttProvider | None) -> AsyncIterator[SttProvider]:
    if given is not None:
        await trio.lowlevel.checkpoint()
        yield given
        return
    async with open_stt_provider(settings) as provider:
        yield provider


async def start_workers(ctx: AppContext, nursery: trio.Nursery) -> None:
    """Start the background workers in ``nursery``; each ends once drained and idle."""
    registry: SessionRegistry = ctx.services["sessions"]
    processing: Wakeup = ctx.services["processing"]
    sweeper = Sweeper(
        ctx.store, registry, processing, ctx.drain, interval_s=ctx.settings.sweeper_interval_s
    )
    ctx.stats["sweeper"] = sweeper.statistics
    ctx.services["sweeper"] = sweeper
    await nursery.start(sweeper.run)
    integrations: Integrations = ctx.services["integrations"]
    await integrations.start_workers(nursery)
