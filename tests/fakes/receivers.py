"""A scripted loopback webhook receiver, and small builders shared by the webhook tests.

:class:`Receivers` answers each path from a script (a queue of replies consumed in order, then
a default reply), so "fail twice, then accept" or "410 from now on" are one line. ``/hang``
never answers and ``/slow?ms=N`` answers 200 after N ms. A path can also be answered by a
function of the request (:meth:`Receivers.handle`: receivers written like real plugins). Every
request is recorded (method,
path, query, lower-case headers, body) like :mod:`tests.fakes.http_targets` does; both are
served by :func:`bench.loopback_http.serve_h11`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import trio

from bench.loopback_http import Request, Response, serve_h11
from tests.fakes.http_targets import RecordedRequest

__all__ = ["Receivers", "Reply", "json_reply", "open_receivers", "serve_receivers"]

MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(value: object, status: int = 200) -> Reply:
    """A JSON answer."""
    return Reply(status, json.dumps(value).encode(), (("content-type", "application/json"),))


@dataclass(eq=False)
class Receivers:
    """The receiver's script and what it received."""

    requests: list[RecordedRequest] = field(default_factory=list)
    port: int = 0
    _scripts: dict[str, deque[Reply]] = field(default_factory=dict)
    _defaults: dict[str, Reply] = field(default_factory=dict)
    _handlers: dict[str, Callable[[RecordedRequest], Reply]] = field(default_factory=dict)
    _arrived: trio.Event = field(default_factory=trio.Event)

    def script(self, path: str, *replies: Reply, default: Reply | None = None) -> None:
        """Answer ``path`` with ``replies`` in order, then with ``default`` (200 "ok")."""
        self._scripts[path] = deque(replies)
        if default is not None:
            self._defaults[path] = default

    def handle(self, path: str, handler: Callable[[RecordedRequest], Reply]) -> None:
        """Answer ``path`` with ``handler(request)`` (called in the receiver's task)."""
        self._handlers[path] = handler

    def url(self, path: str) -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[RecordedRequest]:
        """The requests received for ``path``."""
        return [r for r in self.requests if r.path == path]

    async def wait_for_count(self, path: str, count: int) -> None:
        """Wait until ``count`` requests for ``path`` arrived (the caller bounds the wait)."""
        await trio.lowlevel.checkpoint()
        while len(self.on(path)) < count:
            await self._arrived.wait()

    def _record(self, request: RecordedRequest) -> None:
        self.requests.append(request)
        self._arrived.set()
        self._arrived = trio.Event()

    def _reply(self, path: str) -> Reply:
        queue = self._scripts.get(path)
        if queue:
            return queue.popleft()
        return self._defaults.get(path, Reply())


async def serve_receivers(  # noqa: ASYNC114 -- no project-wide startable list is configured
    receivers: Receivers,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started(port)`` once listening."""
    serve = partial(serve_h11, partial(_answer, receivers), port=receivers.port,
                    max_request_bytes=MAX_REQUEST_BYTES)  # fmt: skip
    async with trio.open_nursery() as nursery:
        receivers.port = await nursery.start(serve)
        task_status.started(receivers.port)


@asynccontextmanager
async def open_receivers(port: int = 0) -> AsyncIterator[Receivers]:
    """Run a receiver on loopback (``port`` 0: a free one) for the block."""
    receivers = Receivers(port=port)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_receivers, receivers)
        yield receivers
        nursery.cancel_scope.cancel()


async def _answer(receivers: Receivers, request: Request, stream: trio.SocketStream) -> Response:
    recorded = RecordedRequest.of(request)
    receivers._record(recorded)
    if recorded.path == "/hang":
        await trio.sleep_forever()
    if recorded.path == "/slow":
        await trio.sleep(int(recorded.query.get("ms", ["100"])[0]) / 1000)
        return Response(200, b"slow")
    await trio.lowlevel.checkpoint()
    handler = receivers._handlers.get(recorded.path)
    reply = handler(recorded) if handler is not None else receivers._reply(recorded.path)
    return Response(reply.status, reply.body, reply.headers)
