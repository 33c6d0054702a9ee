"""A real loopback HTTP/1.1 server whose paths select fault profiles, for outbound-HTTP tests.

Served by :func:`bench.loopback_http.serve_h11` (raw Trio TCP + h11), so every fault is exact
(a hang really hangs, a reset really resets).
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
from urllib.parse import parse_qs

import trio

from bench.loopback_http import Request, Response, serve_h11

__all__ = ["HttpTargets", "RecordedRequest", "open_http_targets", "serve_targets"]

BIG_BODY_BYTES: Final = 1024 * 1024
MAX_REQUEST_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it (header names lower-case)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, request: Request) -> RecordedRequest:
        """The record of a request the loopback core parsed."""
        return cls(
            request.method, request.path, parse_qs(request.query), dict(request.headers),
            request.body,
        )  # fmt: skip


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
    serve = partial(serve_h11, partial(_answer, targets), host=host, port=port,
                    max_request_bytes=MAX_REQUEST_BYTES)  # fmt: skip
    async with trio.open_nursery() as nursery:
        targets.port = await nursery.start(serve)
        task_status.started(targets.port)


@asynccontextmanager
async def open_http_targets() -> AsyncIterator[HttpTargets]:
    """Run the server on a free loopback port for the duration of the block."""
    targets = HttpTargets()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_targets, targets)
        yield targets
        nursery.cancel_scope.cancel()


async def _answer(
    targets: HttpTargets, request: Request, stream: trio.SocketStream
) -> Response | None:
    recorded = RecordedRequest.of(request)
    targets.record(recorded)
    profile = _PROFILES.get(recorded.path, _status)
    return await profile(recorded, stream)


#: ``None``: drop the connection without an answer.
Profile = Callable[[RecordedRequest, trio.SocketStream], Awaitable[Response | None]]


async def _ok(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.lowlevel.checkpoint()
    return Response(200, b"ok", (("content-type", "text/plain"),))


async def _echo(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.lowlevel.checkpoint()
    return Response(200, request.body, (("x-echo-method", request.method),))


async def _hang(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.sleep_forever()


async def _slow(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.sleep(int(request.query.get("ms", ["100"])[0]) / 1000)
    return Response(200, b"slow")


async def _big(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.lowlevel.checkpoint()
    return Response(200, b"x" * BIG_BODY_BYTES)


async def _close(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.lowlevel.checkpoint()
    return None


async def _garbage(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await stream.send_all(b"this is not HTTP at all\r\n\r\n")
    return None


async def _status(request: RecordedRequest, stream: trio.SocketStream) -> Response | None:
    await trio.lowlevel.checkpoint()
    code = request.query.get("code", [request.path.lstrip("/")])[0]
    status = int(code) if code.isdigit() else 404
    return Response(status, f"status {status}".encode(), _FIXED_HEADERS.get(status, ()))


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
