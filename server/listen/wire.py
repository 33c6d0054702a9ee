"""The listen session's WebSocket interface, and its implementation over raw ASGI messages.

:class:`ListenSocket` is what the listen handler and session use. Two transports provide it:
:class:`AsgiWebSocket` (hypercorn's ASGI ``receive``/``send``; Quart's WebSocket object would add
a task hop and a queue per message) and :class:`server.listen.fastws.FastWebSocket` (frames
parsed on the guarded TCP stream itself, the default).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol, final

import trio

from server.guard import abort_connection, connection_closed

__all__ = [
    "AsgiApp",
    "AsgiWebSocket",
    "ClientGone",
    "ListenSocket",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "fit_reason",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: A raw ASGI application (the listen handler, and the dispatcher in front of Quart).
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What :meth:`AsgiWebSocket.receive` returns: a binary frame or a text frame.
Message = bytes | str
#: A WebSocket close reason must fit in a 125-byte control frame (2 bytes are the code).
MAX_REASON_BYTES: Final = 123


class ClientGone(Exception):
    """The client closed the connection (or it broke)."""


def fit_reason(reason: str) -> str:
    """``reason`` cut to what a close frame can carry (whole UTF-8 characters)."""
    encoded = reason.encode()[:MAX_REASON_BYTES]
    return encoded.decode(errors="ignore")


class ListenSocket(Protocol):
    """A WebSocket as the listen handler and session drive it.

    ``scope`` is the ASGI-shaped request (``path``, ``query_string``, ``headers``, ``client``,
    and the guard's connection record). ``closed`` turns true once the client left, the
    connection broke, or a close was sent.
    """

    scope: MutableMapping[str, Any]
    accepted: bool
    closed: bool
    #: Whether :meth:`receive_after_close` can return the client's last frames.
    reads_after_close: bool

    async def wait_connect(self) -> None:
        """Wait for the upgrade request (raises :class:`ClientGone` if the client left)."""

    async def accept(self) -> None:
        """Complete the handshake."""

    async def receive(self) -> Message | None:
        """The next data message, or ``None`` once the client left."""

    def receive_nowait(self) -> Message | None:
        """A message the server already holds, without waiting (:class:`trio.WouldBlock`)."""

    async def send_text(self, text: str) -> None:
        """Send a text frame; raises :class:`ClientGone` if the connection is gone."""

    def abort(self) -> None:
        """Reset the connection now, without a close frame."""

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (accepting first if needed); a no-op once closed."""

    async def receive_after_close(self) -> Message | None:
        """After :meth:`close`: the next data message the client sent before it saw the close
        frame; ``None`` at its close frame, at EOF, or if the transport cannot read after its
        close (``reads_after_close`` false)."""


@final
class AsgiWebSocket:
    """One accepted-or-not WebSocket connection, driven by ASGI messages."""

    #: hypercorn ends the ASGI connection at ``websocket.close``: nothing is read after it.
    reads_after_close = False

    def __init__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.accepted = False
        self.closed = False

    async def wait_connect(self) -> None:
        """Consume the ``websocket.connect`` message."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise ClientGone(message["type"])

    async def accept(self) -> None:
        """Complete the handshake."""
        await self._send({"type": "websocket.accept"})
        self.accepted = True

    async def receive(self) -> Message | None:
        """The next data frame, or ``None`` once the client left."""
        return self._message(await self._receive())

    def receive_nowait(self) -> Message | None:
        """The next frame the ASGI server already holds for us, without waiting (hypercorn
        queues up to ``max_app_queue_size`` messages; its ``receive`` is that queue's bound
        ``receive``). Raises :class:`trio.WouldBlock` if none is queued, or if the ASGI server
        offers no such queue."""
        nowait = getattr(getattr(self._receive, "__self__", None), "receive_nowait", None)
        if nowait is None:
            raise trio.WouldBlock
        try:
            return self._message(nowait())
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise trio.WouldBlock from exc

    def _message(self, message: MutableMapping[str, Any]) -> Message | None:
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            if data is not None:
                return bytes(data)
            return str(message.get("text") or "")
        self.closed = True
        return None

    async def send_text(self, text: str) -> None:
        """Send a text frame; raises :class:`ClientGone` if the connection is gone."""
        if self.closed:
            raise ClientGone("closed")
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:  # hypercorn reports a broken transport this way
            self.closed = True
            raise ClientGone(str(exc)) from exc
        if connection_closed(self.scope):  # aborted at a write deadline: hypercorn is silent
            self.closed = True
            raise ClientGone("connection aborted")

    def abort(self) -> None:
        """Reset the TCP connection now, without a close frame (a client that does not read
        can be told nothing more); wakes a send blocked on it. Idempotent."""
        self.closed = True
        abort_connection(self.scope)

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (accepting first, so the client sees the code, not HTTP 403)."""
        await trio.lowlevel.checkpoint()
        if self.closed:
            return
        self.closed = True
        try:
            if not self.accepted:
                await self._send({"type": "websocket.accept"})
            await self._send(
                {"type": "websocket.close", "code": code, "reason": fit_reason(reason)}
            )
        except OSError:
            pass  # the peer is already gone: nothing left to tell it

    async def receive_after_close(self) -> Message | None:
        """Nothing: hypercorn ends the connection at ``websocket.close``."""
        await trio.lowlevel.checkpoint()
        return None
