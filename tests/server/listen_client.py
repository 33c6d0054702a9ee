"""A small /v4/listen test client over trio-websocket (it always closes its TCP stream)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from server.serve import ServerHandle

RATE = 16000
FRAME_BYTES = RATE * 2 // 10  # 100 ms of PCM16 mono at 16 kHz


def pcm(seconds: float, seed: int = 1) -> bytes:
    """Deterministic pseudo-random PCM16 (so every second has a different CRC)."""
    rng = random.Random(seed)
    return rng.randbytes(int(RATE * seconds) * 2)


def frames(audio: bytes, size: int = FRAME_BYTES) -> list[bytes]:
    """``audio`` cut into frames of ``size`` bytes."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


@dataclass
class Received:
    """Everything a session received, by kind."""

    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    close_code: int | None = None
    close_reason: str | None = None

    def texts(self) -> list[str]:
        """Segment texts in first-seen order (latest version of each)."""
        return [self.segments[i]["text"] for i in self.order]

    def joined(self) -> str:
        """All segment texts joined: fake STT finals of one speaker merge into one segment
        (Omi's merge rules), so tests compare the joined text."""
        return " ".join(self.texts())

    def has(self, text: str) -> bool:
        """Whether ``text`` (e.g. ``"seg2 "``) was received."""
        return text in self.joined() + " "

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def add(self, message: str | bytes) -> None:
        if message == "ping":
            self.pings += 1
            return
        value = json.loads(message)
        if isinstance(value, list):
            for segment in value:
                if segment["id"] not in self.segments:
                    self.order.append(segment["id"])
                self.segments[segment["id"]] = segment
        else:
            self.events.append(value)


@asynccontextmanager
async def open_listen(
    server: ServerHandle,
    query: str = "codec=pcm16&sample_rate=16000",
    token: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """Connect to ``/v4/listen?query`` with an optional bearer token."""
    extra = list(headers or [])
    if token is not None:
        extra.append((b"Authorization", f"Bearer {token}".encode()))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{server.port}",
                f"/v4/listen?{query}",
                extra_headers=extra,
                message_queue_size=256,
            )
            yield ws
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def read_until(
    ws: WebSocketConnection, received: Received, done: Callable[[Received], bool]
) -> Received:
    """Read messages into ``received`` until ``done(received)`` or the server closes."""
    await trio.lowlevel.checkpoint()
    while not done(received):
        try:
            received.add(await ws.get_message())
        except ConnectionClosed as exc:
            received.close_code = exc.reason.code
            received.close_reason = exc.reason.reason
            break
    return received


async def read_to_close(ws: WebSocketConnection) -> Received:
    """Read until the server closes the connection."""
    return await read_until(ws, Received(), lambda r: False)
