"""Deprecated shim: the listen client is :mod:`server.testing` (``ListenClient``).

Kept only so branches written against the old helpers keep importing; it delegates to
``server.testing.open_listen``. New tests use ``server.testing`` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from trio_websocket import WebSocketConnection

from server.serve import ServerHandle
from server.testing import (
    FRAME_BYTES,
    RATE,
    ListenClient,
    Received,
    frames,
    open_listen as _open_listen,
    pcm,
)

__all__ = ["FRAME_BYTES", "RATE", "Received", "frames", "open_listen", "pcm", "read_to_close",
           "read_until"]  # fmt: skip

_CLIENTS: dict[int, ListenClient] = {}


@asynccontextmanager
async def open_listen(
    server: ServerHandle,
    query: str = "codec=pcm16&sample_rate=16000",
    token: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """The raw connection of a :class:`ListenClient` (use ``server.testing.open_listen``)."""
    url = getattr(server, "url", None) or f"http://127.0.0.1:{server.port}"
    async with _open_listen(url, query=query, token=token, headers=headers or ()) as client:
        _CLIENTS[id(client.ws)] = client
        try:
            yield client.ws
        finally:
            del _CLIENTS[id(client.ws)]


async def read_until(
    ws: WebSocketConnection, received: Received, done: Callable[[Received], bool]
) -> Received:
    """Read into ``received`` until ``done`` or the close (``ListenClient.read_until``)."""
    client = _CLIENTS[id(ws)]
    client.received = received
    return await client.read_until(done)


async def read_to_close(ws: WebSocketConnection) -> Received:
    """``ListenClient.read_to_close``."""
    return await read_until(ws, Received(), lambda r: False)
