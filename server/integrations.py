"""Conversation processing and webhooks, as one layer the server opens and starts.

``open_integrations`` owns everything this layer needs for the whole run (HTTP lanes, realtime
delivery slots) and yields an :class:`Integrations`; ``serve()`` starts its workers in the work
nursery and registers its blueprints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from quart import Blueprint

from server.context import AppContext
from server.listen.hooks import NO_HOOKS, RealtimeHooks
from server.listen.registry import SessionRegistry
from server.wakeup import Wakeup

__all__ = ["Integrations", "open_integrations"]


@dataclass(eq=False)
class Integrations:
    """What the rest of the server uses of this layer."""

    hooks: RealtimeHooks = NO_HOOKS
    blueprints: list[Blueprint] = field(default_factory=list)

    async def start_workers(self, nursery: trio.Nursery) -> None:
        """Start processing, delivery and scheduling workers in ``nursery``."""
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_integrations(
    ctx: AppContext, registry: SessionRegistry, processing: Wakeup
) -> AsyncIterator[Integrations]:
    """Open the layer for one server run (placeholder: no processing, no webhooks yet)."""
    yield Integrations()
