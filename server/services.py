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

__all__ = ["open_services", "start_workers"]


@asynccontextmanager
async def open_services(ctx: AppContext) -> AsyncIterator[AsgiApp | None]:
    """Open the services of one run; yield the ``/v4/listen`` handler (``None``: not served)."""
    yield None


async def start_workers(ctx: AppContext, nursery: trio.Nursery) -> None:
    """Start the background workers in ``nursery``; each ends once drained and idle."""
    await trio.lowlevel.checkpoint()
