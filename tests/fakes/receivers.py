"""A scripted loopback webhook receiver, and small builders shared by the webhook tests.

:class:`Receivers` answers each path from a script (a queue of replies consumed in order, then
a default reply), so "fail twice, then accept" or "410 from now on" are one line. ``/hang``
never answers and ``/slow?ms=N`` answers 200 after N ms. A path can also be answered by a
function of the request (:meth:`Receivers.handle`: receivers written like real plugins). Every request is recorded (method,
path, query, lower-case headers, body) like :mod:`tests.fakes.http_targets` does.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Final
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from tests.fakes.http_targets import RecordedRequest

__all__ = ["Receivers", "Reply", "json_reply", "open_receivers", "serve_receivers"]

READ_CHUNK_BYTES: Final = 65536
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
    listeners = await trio.open_tcp_listeners(receivers.port, host="127.0.0.1")
    receivers.port = listeners[0].socket.getsockname()[1]
    task_status.started(receivers.port)
    await trio.serve_listeners(partial(_connection, receivers), listeners)


@asynccontextmanager
async def open_receivers(port: int = 0) -> AsyncIterator[Receivers]:
    """Run a receiver on loopback (``port`` 0: a free one) for the block."""
    receivers = Receivers(port=port)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_receivers, receivers)
        yield receivers
        nursery.cancel_scope.cancel()


async def _connection(receivers: Receivers, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read(conn, stream)
            if request is None:
                return
            receivers._record(request)
            reply = await _answer_for(receivers, request)
            headers = [("content-length", str(len(reply.body))), *reply.headers]
            data = conn.send(h11.Response(status_code=reply.status, headers=headers)) or b""
            data += conn.send(h11.Data(data=reply.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _answer_for(receivers: Receivers, request: RecordedRequest) -> Reply:
    if request.path == "/hang":
        await trio.sleep_forever()
    if request.path == "/slow":
        await trio.sleep(int(request.query.get("ms", ["100"])[0]) / 1000)
        return Reply(200, b"slow")
    await trio.lowlevel.checkpoint()
    handler = receivers._handlers.get(request.path)
    if handler is not None:
        return handler(request)
    return receivers._reply(request.path)


async def _read(conn: h11.Connection, stream: trio.abc.Stream) -> RecordedRequest | None:
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
                return None  # noqa: ASYNC910 -- h11 read when it needed data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            split = urlsplit(head.target.decode("ascii"))
            return RecordedRequest(  # noqa: ASYNC910 -- as above
                method=head.method.decode("ascii"),
                path=split.path,
                query=parse_qs(split.query),
                headers={k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
                body=bytes(body),
            )
        else:
            return None  # noqa: ASYNC910 -- as above
