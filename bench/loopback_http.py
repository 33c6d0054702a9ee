"""One keep-alive HTTP/1.1 server core on loopback (raw Trio TCP + h11), for fakes and benches.

Every loopback HTTP server of the test suite and the benchmarks (fault-profile targets,
scripted webhook receivers, the receiver fleet, the 200-"ok" server) is :func:`serve_h11` with
its own :data:`Handler`: raw sockets keep every fault exact (a hang really hangs, a drop really
drops), and the request parsing, keep-alive loop and error handling live here once.

A handler gets the whole request (body read up to ``max_request_bytes``; beyond it the
connection is dropped) and the stream, and returns the :class:`Response` to send, or ``None`` to
close the connection without an answer (it may write raw bytes to the stream first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

import h11
import trio

__all__ = [
    "ConnectionLimit",
    "Handler",
    "Request",
    "Response",
    "serve_connection",
    "serve_h11",
    "serve_ok",
]

READ_CHUNK_BYTES: Final = 65536
DEFAULT_MAX_REQUEST_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request (header names in lower case, as h11 gives them)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer; ``content-length`` is added from the body."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


#: Answers one request; ``None`` closes the connection without an answer.
Handler = Callable[[Request, trio.SocketStream], Awaitable[Response | None]]


@dataclass(eq=False)
class ConnectionLimit:
    """At most ``limiter.total_tokens`` connections at once; extra ones are closed at once and
    counted in ``refused``."""

    limiter: trio.CapacityLimiter
    refused: int = 0


async def serve_h11(  # noqa: ASYNC114 -- no project-wide startable list is configured
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    limit: ConnectionLimit | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` (0: a free port) until cancelled.

    ``task_status.started(port)`` once listening. Cancelling this task cancels every
    connection, hung handlers included.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    serve = partial(serve_connection, handler=handler, max_request_bytes=max_request_bytes)
    if limit is not None:
        serve = partial(_limited, serve=serve, limit=limit)
    await trio.serve_listeners(serve, listeners)


async def serve_connection(
    stream: trio.SocketStream, *, handler: Handler, max_request_bytes: int
) -> None:
    """Answer requests on one connection until it ends (keep-alive); always closes ``stream``."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read_request(conn, stream, max_request_bytes)
            if request is None:
                return
            response = await handler(request, stream)
            if response is None:
                return
            await stream.send_all(_encode(conn, response))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # noqa: ASYNC910 -- the finally block checkpoints
    finally:
        await trio.aclose_forcefully(stream)


async def serve_ok(  # noqa: ASYNC114, ASYNC128 -- task_status reaches started() in serve_h11
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer every request with 200 "ok" on ``127.0.0.1`` (free port) until cancelled."""
    await serve_h11(_ok, task_status=task_status)


async def _ok(request: Request, stream: trio.SocketStream) -> Response:
    await trio.lowlevel.checkpoint()
    return Response(200, b"ok", (("content-type", "text/plain"),))


async def _limited(
    stream: trio.SocketStream,
    *,
    serve: Callable[[trio.SocketStream], Awaitable[None]],
    limit: ConnectionLimit,
) -> None:
    try:
        limit.limiter.acquire_nowait()
    except trio.WouldBlock:
        limit.refused += 1
        await trio.aclose_forcefully(stream)
        return
    try:
        await serve(stream)
    finally:
        limit.limiter.release()


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, max_request_bytes: int
) -> Request | None:
    """The next complete request, or ``None`` when the client closed or sent too much."""
    head: h11.Request | None = None
    body = bytearray()
    while True:  # noqa: ASYNC913 -- each turn consumes buffered data or reads more
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_CHUNK_BYTES)))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_request_bytes:
                return None  # noqa: ASYNC910 -- h11 read when it needed data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _request(head, bytes(body))  # noqa: ASYNC910 -- as above
        else:  # ConnectionClosed, PAUSED
            return None  # noqa: ASYNC910 -- as above


def _request(head: h11.Request, body: bytes) -> Request:
    path, _, query = head.target.decode("latin-1").partition("?")
    headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers)
    return Request(head.method.decode("ascii"), path, query, headers, body)


def _encode(conn: h11.Connection, response: Response) -> bytes:
    headers = [("content-length", str(len(response.body))), *response.headers]
    data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
    data += conn.send(h11.Data(data=response.body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")
