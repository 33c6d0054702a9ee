"""A real loopback HTTP/1.1 server whose paths select fault profiles, for outbound-HTTP tests.

Raw Trio TCP + h11, so every fault is exact (a hang really hangs, a reset really resets).
Profiles (any method)::

    /ok              200 "ok"
    /echo            200, the request body echoed back
    /hang            reads the request, never answers
    /slow?ms=N       200 "slow" after N ms
    /big             200 with a 1 MiB body
    /500  /503       500; 503 with ``Retry-After: 7``
    /429  /410       429 with ``Retry-After: 3``; 410
    /404             404
    /redirect        302 to /ok
    /close           closes the connection without answering
    /garbage         answers with bytes that are not HTTP
    /status?code=N   status N

Every request is recorded (method, path, query, headers, body) in :attr:`HttpTargets.requests`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Final
from urllib.parse import parse_qs, urlsplit

import h11
import trio

__all__ = ["HttpTargets", "RecordedRequest", "open_http_targets", "serve_targets"]

BIG_BODY_BYTES: Final = 1024 * 1024
MAX_REQUEST_BYTES: Final = 1024 * 1024
READ_CHUNK_BYTES: Final = 65536


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it (header names lower-case)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class _Abort(Exception):
    """The profile wants the connection dropped without an answer."""


class HttpTargets:
    """The server's shared state: what it received, and where it listens once started."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._arrived = trio.Event()

    def record(self, request: RecordedRequest) -> None:
        """Remember ``request`` and wake :meth:`wait_for_count` callers."""
        self.requests.append(request)
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_for_count(self, path: str, count: int) -> None:
        """Wait until at least ``count`` requests for ``path`` arrived (caller bounds the wait)."""
        await trio.lowlevel.checkpoint()
        while self.count(path) < count:
            await self._arrived.wait()

    def url(self, path: str) -> str:
        """Return ``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        """How many requests for ``path`` arrived."""
        return sum(1 for request in self.requests if request.path == path)


async def serve_targets(  # noqa: ASYNC114 -- no project-wide startable list is configured
    targets: HttpTargets,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the fault profiles until cancelled; ``task_status.started(port)`` once listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    targets.port = listeners[0].socket.getsockname()[1]
    task_status.started(targets.port)
    await trio.serve_listeners(partial(_serve_connection, targets), listeners)


@asynccontextmanager
async def open_http_targets() -> AsyncIterator[HttpTargets]:
    """Run the server on a free loopback port for the duration of the block."""
    targets = HttpTargets()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_targets, targets)
        yield targets
        nursery.cancel_scope.cancel()


async def _serve_connection(targets: HttpTargets, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read_request(conn, stream)
            if request is None:
                return
            targets.record(request)
            await _answer(conn, stream, request)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (_Abort, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> RecordedRequest | None:
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
            if len(body) > MAX_REQUEST_BYTES:
                raise _Abort
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _record(head, bytes(body))  # noqa: ASYNC910 -- h11 read when it needed data
        else:  # ConnectionClosed, PAUSED
            return None  # noqa: ASYNC910 -- as above


def _record(head: h11.Request, body: bytes) -> RecordedRequest:
    split = urlsplit(head.target.decode("ascii"))
    return RecordedRequest(
        method=head.method.decode("ascii"),
        path=split.path,
        query=parse_qs(split.query),
        headers={
            name.decode("ascii").lower(): value.decode("latin-1") for name, value in head.headers
        },
        body=body,
    )


async def _answer(conn: h11.Connection, stream: trio.abc.Stream, request: RecordedRequest) -> None:
    profile = _PROFILES.get(request.path, _status)
    reply = await profile(request, stream)
    headers = [("content-length", str(len(reply.body))), *reply.headers]
    data = conn.send(h11.Response(status_code=reply.status, headers=headers))
    data += conn.send(h11.Data(data=reply.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data or b"")


Profile = Callable[[RecordedRequest, trio.abc.Stream], Awaitable[_Reply]]


async def _ok(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.lowlevel.checkpoint()
    return _Reply(200, b"ok", (("content-type", "text/plain"),))


async def _echo(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.lowlevel.checkpoint()
    return _Reply(200, request.body, (("x-echo-method", request.method),))


async def _hang(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.sleep_forever()


async def _slow(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.sleep(int(request.query.get("ms", ["100"])[0]) / 1000)
    return _Reply(200, b"slow")


async def _big(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.lowlevel.checkpoint()
    return _Reply(200, b"x" * BIG_BODY_BYTES)


async def _close(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.lowlevel.checkpoint()
    raise _Abort


async def _garbage(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await stream.send_all(b"this is not HTTP at all\r\n\r\n")
    raise _Abort


async def _status(request: RecordedRequest, stream: trio.abc.Stream) -> _Reply:
    await trio.lowlevel.checkpoint()
    code = request.query.get("code", [request.path.lstrip("/")])[0]
    status = int(code) if code.isdigit() else 404
    return _Reply(status, f"status {status}".encode(), _FIXED_HEADERS.get(status, ()))


_FIXED_HEADERS: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    503: (("retry-after", "7"),),
    429: (("retry-after", "3"),),
    302: (("location", "/ok"),),
}

_PROFILES: Final[dict[str, Profile]] = {
    "/ok": _ok,
    "/echo": _echo,
    "/hang": _hang,
    "/slow": _slow,
    "/big": _big,
    "/close": _close,
    "/garbage": _garbage,
    "/redirect": lambda request, stream: _status(
        RecordedRequest(request.method, "/302", {}, {}, b""), stream
    ),
}
