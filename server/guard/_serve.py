"""hypercorn's trio worker loop with the guard in front of every connection, and the ASGI
middleware that makes an early answer safe for keep-alive.

:func:`serve_guarded` is ``hypercorn.trio.serve`` (0.18, plain TCP only) with one difference:
each accepted stream goes through :meth:`ConnectionGuard.handle`, which wraps it in a
:class:`~server.guard._stream.GuardedStream` before hypercorn's ``TCPServer`` sees it.
hypercorn offers no hook for this, so the ~30 lines of its ``worker_serve`` are repeated here
(lifespan, listeners, the graceful window); its connection code is used unchanged.

:func:`guard_asgi`: when the application answers before the request body has fully arrived
(401, 404, 413, 429 ...), the answer waits up to ``drain_s`` for a remainder of at most
``drain_max_bytes`` (Quart keeps reading it), so the connection stays usable; otherwise the
answer carries ``Connection: close`` and the connection ends after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, Framework
from hypercorn.utils import repr_socket_addr, wrap_app

from server.guard._guard import SCOPE_KEY, ConnectionGuard
from server.guard._stream import GuardedStream

__all__ = ["guard_asgi", "serve_guarded"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long an early answer waits for a short request-body remainder.
DRAIN_S: Final = 1.0
#: The largest remainder an early answer waits for (beyond it: ``Connection: close``).
DRAIN_MAX_BYTES: Final = 64 * 1024
#: After the application is done with a connection that cannot be reused (a WebSocket, an
#: answer with ``Connection: close``), hypercorn gets this long to finish with it.
END_GRACE_S: Final = 1.0


async def serve_guarded(
    app: Framework,
    config: Config,
    guard: ConnectionGuard,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then give open connections
    ``config.graceful_timeout`` seconds before cancelling them.

    Cancellation: cancelling the caller cancels every connection; each one's socket is still
    closed by the guard (shielded, bounded).
    """
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    def serve_connection(stream: GuardedStream) -> Awaitable[None]:
        state = ConnectionState(lifespan_state.copy())
        server = TCPServer(asgi, config, context, state, stream)  # type: ignore[arg-type]
        return server.run()

    async def on_accept(raw: trio.SocketStream) -> None:
        await guard.handle(raw, serve_connection)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = _listeners(config)
            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            on_accept,
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()  # noqa: ASYNC102 -- sets an Event, never blocks
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listeners(config: Config) -> tuple[list[trio.SocketListener], list[str]]:
    sockets = config.create_sockets()
    if sockets.secure_sockets or sockets.quic_sockets:
        raise ValueError("serve_guarded serves plain TCP only")
    listeners, binds = [], []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


def guard_asgi(app: AsgiApp, guard: ConnectionGuard) -> AsgiApp:
    """Wrap ``app``: attach each request's connection record (for ``mark_authenticated``)
    and make early answers safe (see the module docstring)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        conn = guard.lookup(scope.get("client"))
        if conn is not None:
            scope[SCOPE_KEY] = conn
        if scope["type"] == "websocket":
            try:
                await app(scope, receive, send)
            finally:
                if conn is not None:
                    conn.end_within(END_GRACE_S)
            return
        watch = _BodyWatch(scope, receive, send)
        try:
            await app(scope, watch.receive, watch.send)
        finally:
            if conn is not None and watch.closing:
                conn.end_within(END_GRACE_S)

    return guarded


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _BodyWatch:
    """Observes the request body as the app reads it; holds an early answer briefly."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._expected = _content_length(scope)
        self._received = 0
        self._done = trio.Event()
        #: The answer said ``Connection: close`` (the body had not fully arrived).
        self.closing = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message.get("type")
        if kind == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._done.set()
        elif kind == "http.disconnect":
            self._done.set()
        return message

    async def send(self, message: Message) -> None:
        if message.get("type") == "http.response.start" and not self._done.is_set():
            remaining = None if self._expected is None else self._expected - self._received
            if remaining is not None and remaining <= DRAIN_MAX_BYTES:
                with trio.move_on_after(DRAIN_S):
                    await self._done.wait()
            if not self._done.is_set():
                self.closing = True
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
        await self._send(message)
