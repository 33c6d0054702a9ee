"""A minimal keep-alive HTTP/1.1 server on loopback that answers every request with 200 "ok"."""

from __future__ import annotations

from typing import Final

import h11
import trio

__all__ = ["serve_ok"]

READ_CHUNK_BYTES: Final = 65536
_OK_HEADERS: Final = [("content-length", "2"), ("content-type", "text/plain")]


async def serve_ok(  # noqa: ASYNC114 -- no project-wide startable list is configured
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on ``127.0.0.1`` (free port) until cancelled; ``task_status.started(port)``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(_serve_connection, listeners)


async def _serve_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:  # noqa: ASYNC913 -- each turn consumes buffered data or reads more
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(READ_CHUNK_BYTES)))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(_answer(conn))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return  # noqa: ASYNC910 -- the finally block checkpoints
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # noqa: ASYNC910 -- the finally block checkpoints
    finally:
        await trio.aclose_forcefully(stream)


def _answer(conn: h11.Connection) -> bytes:
    data = conn.send(h11.Response(status_code=200, headers=_OK_HEADERS)) or b""
    data += conn.send(h11.Data(data=b"ok")) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")
