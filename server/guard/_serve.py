"""hypercorn's trio worker loop with the guard in front of every connection, and the ASGI
middleware that makes an early answer safe for keep-alive.

:func:`serve_guarded` is ``hypercorn.trio.serve`` (0.18, plain TCP only) with one difference:
each accepted stream goes through :meth:`ConnectionGuard.handle`, which wraps it in a
:class:`~server.guard._stream.GuardedStream` before hypercorn's ``TCPServer`` sees it.
hypercorn offers no hook for this, so the ~30 lines of its ``worker_serve`` are repeated here
(lifespan, listeners, the graceful window); its connection code is used unchanged.

With a :class:`Takeover`, the guard first reads each connection's first request line (within
hypercorn's ``keep_alive_timeout`` and ``h11_max_incomplete_size``, as hypercorn bounds a head):
``GET`` to one of its paths goes to the takeover with the whole head (``/v4/listen`` WebSocket
upgrades, served without hypercorn's per-frame cost, see :mod:`server.listen.fastws`);
anything else is decided at its first differing byte and served by hypercorn, the bytes read
pushed back into the stream. A head that does not arrive in time, or is still pending when the
server stops, is closed without an answer, as hypercorn closes it.

:func:`guard_asgi`: when the application answers before the request body has fully arrived
(401, 404, 413, 429 ...), the answer waits up to ``drain_s`` for a remainder of at most
``drain_max_bytes`` (Quart keeps reading it), so the connection stays usable; otherwise the
answer carries ``Connection: close`` and the connection ends after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, Framework
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app

from server.guard._guard import SCOPE_KEY, ConnectionGuard
from server.guard._stream import GuardedStream

__all__ = ["Takeover", "guard_asgi", "serve_guarded"]

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
#: The most one read takes while looking at a request head.
HEAD_READ_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Takeover:
    """Requests the guard serves without hypercorn (see the module docstring).

    Attributes:
        paths: request paths (without the query) whose ``GET`` goes to ``serve``.
        serve: gets the stream, the bytes read so far (a whole request head, perhaps more) and
            a base ASGI scope (``client``, ``server``, the guard's record); returns ``None``
            once it served the connection, or the bytes for hypercorn to serve instead (it
            reads nothing more before deciding). Cancelling it ends the connection.
    """

    paths: frozenset[str]
    serve: Callable[[GuardedStream, bytes, Scope], Awaitable[bytes | None]]


async def serve_guarded(
    app: Framework,
    config: Config,
    guard: ConnectionGuard,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    takeover: Takeover | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then give open connections
    ``config.graceful_timeout`` seconds before cancelling them. ``takeover``: requests served
    without hypercorn.

    Cancellation: cancelling the caller cancels every connection; each one's socket is still
    closed by the guard (shielded, bounded).
    """
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    router = None if takeover is None else _Router(takeover, config, guard)

    async def serve_connection(stream: GuardedStream) -> None:
        if router is not None:
            if not await router.hand_to_hypercorn(stream):
                return
        state = ConnectionState(lifespan_state.copy())
        server = TCPServer(asgi, config, context, state, stream)  # type: ignore[arg-type]
        await server.run()

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
                    if router is not None:
                        router.stop()
            finally:
                await context.terminated.set()  # noqa: ASYNC102 -- sets an Event, never blocks
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class _Router:
    """Reads each connection's first request head and routes it (see the module docstring)."""

    def __init__(self, takeover: Takeover, config: Config, guard: ConnectionGuard) -> None:
        self._takeover = takeover
        self._targets = tuple(b"GET " + path.encode() for path in sorted(takeover.paths))
        self._timeout_s = float(config.keep_alive_timeout)
        self._max_bytes = int(config.h11_max_incomplete_size)
        self._guard = guard
        self._reading: set[trio.CancelScope] = set()
        self._stopped = False

    def stop(self) -> None:
        """The server stops: heads still awaited are not waited for any longer."""
        self._stopped = True
        for scope in self._reading:
            scope.cancel()

    async def hand_to_hypercorn(self, stream: GuardedStream) -> bool:
        """Route one connection: True if hypercorn is to serve it (the bytes read are pushed
        back), False if it was served (or its head never came)."""
        with trio.CancelScope(deadline=trio.current_time() + self._timeout_s) as reading:
            if self._stopped:
                reading.cancel()
            self._reading.add(reading)
            try:
                head, taken = await _read_head(stream, self._targets, self._max_bytes)
            finally:
                self._reading.discard(reading)
        if reading.cancelled_caught:
            return False
        if taken:
            rest = await self._takeover.serve(stream, head, self._scope(stream))
            if rest is None:
                return False
            head = rest
        stream.push_back(head)
        return True

    def _scope(self, stream: GuardedStream) -> Scope:
        sock = stream.socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
        except OSError:
            client = server = None
        scope: Scope = {"client": client, "server": server}
        conn = self._guard.lookup(client)
        if conn is not None:
            scope[SCOPE_KEY] = conn
        return scope


async def _read_head(
    stream: GuardedStream, targets: tuple[bytes, ...], max_bytes: int
) -> tuple[bytes, bool]:
    """Read until the first request line is known not to start with one of ``targets`` (False)
    or a whole head starting with one was read (True). Unbounded in time: the caller bounds it.
    A closed or broken stream, an EOF or more than ``max_bytes`` end it (False)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(HEAD_READ_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.lowlevel.checkpoint()
            return data, False
        if not chunk:
            return data, False
        data += chunk
        verdict = _verdict(data, targets)
        if verdict is False or len(data) > max_bytes:
            return data, False
        if verdict and (b"\r\n\r\n" in data or b"\n\n" in data):
            return data, True


def _verdict(data: bytes, targets: tuple[bytes, ...]) -> bool | None:
    """Whether ``data`` starts a request line ``<target>[ ?]...``; None while undecided."""
    undecided = False
    for target in targets:
        if len(data) > len(target):
            if data.startswith(target) and data[len(target)] in b" ?":
                return True
        elif target.startswith(data):
            undecided = True
    return None if undecided else False


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
