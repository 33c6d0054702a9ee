"""The ceiling: a bare WebSocket echo on hypercorn's trio worker (raw ASGI, no framework).

``/`` echoes every message; ``/sink`` only counts binary frames (the one-way pattern of an
audio stream) and answers a text ``count`` with the total.

``python -m bench.echo_server`` prints ``LISTENING <port>`` once it listens, then echoes every
message until SIGTERM/SIGINT. It is what ``/v4/listen``'s per-frame cost is compared with.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import hypercorn.trio
import trio
from hypercorn.config import Config
from hypercorn.typing import Framework

Message = MutableMapping[str, Any]


async def echo_app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Accept every WebSocket and send each message straight back."""
    await trio.lowlevel.checkpoint()
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/sink":
        await _sink(receive, send)
        return
    while (message := await receive())["type"] == "websocket.receive":
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message.get("text") or ""})


async def _sink(
    receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """One-way, like an audio stream: count binary frames; a text "count" asks for the total."""
    frames = 0
    while (message := await receive())["type"] == "websocket.receive":
        if message.get("bytes") is not None:
            frames += 1
        else:
            await send({"type": "websocket.send", "text": str(frames)})


async def main() -> None:
    """Serve until a signal arrives."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                cast(Framework, echo_app),
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        print(f"LISTENING {binds[0].rsplit(':', 1)[1]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 2


if __name__ == "__main__":
    trio.run(main)
    sys.exit(0)
