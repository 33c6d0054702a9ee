"""Raw-socket clients for the adversarial suite: they misbehave on purpose (half-sent
requests, never-read sockets, floods), which no well-behaved client library lets a test do."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio
import wsproto
import wsproto.events as ws_events

__all__ = [
    "Response",
    "connect",
    "eof_or_reset",
    "read_response",
    "ws_handshake",
]


@dataclass
class Response:
    """One parsed HTTP/1.1 response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def connect(port: int, *, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP stream to 127.0.0.1:``port``; ``rcvbuf`` shrinks the receive buffer first."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def read_response(stream: trio.SocketStream, buffer: bytearray | None = None) -> Response:
    """Read one response (``Content-Length`` framed). Raises ``EOFError`` if the server
    closes first. Leftover bytes stay in ``buffer``."""
    await trio.lowlevel.checkpoint()
    buf = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(bytes(body))
        body += chunk
    buf[:] = body[length:]
    return Response(int(lines[0].split()[1]), headers, bytes(body[:length]))


async def eof_or_reset(stream: trio.SocketStream) -> bool:
    """Read until the server closes; True once it did (EOF or RST). Bound it with a deadline."""
    await trio.lowlevel.checkpoint()
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def ws_handshake(
    stream: trio.SocketStream, port: int, target: str, token: str | None
) -> wsproto.WSConnection:
    """Upgrade ``stream`` to a WebSocket with wsproto and return the client connection."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    await stream.send_all(
        ws.send(ws_events.Request(host=f"127.0.0.1:{port}", target=target, extra_headers=headers))
    )
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError("closed during the handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, ws_events.AcceptConnection):
                return ws
            if isinstance(event, ws_events.RejectConnection):
                raise ConnectionError(f"rejected: {event.status_code}")
