"""``/v4/listen`` WebSocket upgrades served on the guarded TCP stream, without hypercorn.

hypercorn's WebSocket path costs a task switch, a memory channel, an ASGI dict and a pure-Python
unmasking (wsproto) per frame; at 100 ms audio frames that was a fifth of the server's CPU. Here
the session's own task reads the socket and parses frames with ``websockets``' sans-I/O
:class:`~websockets.server.ServerProtocol` (C-accelerated unmasking), so a frame costs one
``receive_some`` (which often carries several frames) and a parse.

**Framing.** This module cuts the byte stream into whole frames itself and hands ``websockets``
only whole frames, so its parser is always at a frame boundary. One kind of frame it does not
hand over: a final, masked binary frame with no reserved bits, within the size limit, while the
connection is open and no fragmented message is in progress (an audio frame: nearly every frame
of a session). Its payload is unmasked with ``websockets``' own C ``apply_mask`` and buffered as
the message; ``websockets`` would do no more for it (no state changes for such a frame). Every
other frame (text, fragments, control frames, anything malformed) goes to ``websockets``, whose
checks and close codes are the ones a client meets; a frame header over the size limit hands it
the rest of the stream (it closes 1009). Taking a 100 ms audio frame (two per read, parsed and
returned by :meth:`~FastWebSocket.receive_nowait`) costs 2.0-2.6 µs this way against 4.8-6.4 µs
through ``websockets``' generator-based parser (``python -m bench.framing``, 2026-12-02): at 10
frames per session-second, ~3% of a session's CPU.

:func:`serve_websocket` is what :func:`server.guard.serve_guarded` calls (through
``ListenHandler.serve_upgrade``) when a connection's first request line is
``GET <listen path>``: if the head is a WebSocket upgrade, it answers the handshake (400 with a
JSON error if invalid, as hypercorn refuses it) and runs the listen handler on a
:class:`FastWebSocket`; anything else goes back to hypercorn unchanged.

:class:`FastWebSocket` has :class:`~server.listen.wire.AsgiWebSocket`'s interface (the one
listen handler drives both):

- **pull**: :meth:`~FastWebSocket.receive` reads the socket only when no parsed frame is
  buffered; the buffer holds what one read (at most ``RECV_BYTES``) carried, so it is bounded
  by construction; :meth:`~FastWebSocket.receive_nowait` returns buffered frames, then once
  takes what the kernel already holds (the drain's backlog, see ``ListenSession``);
- **messages**: binary and text (UTF-8 checked: 1007), fragments joined; over
  ``max_message_bytes`` (fragments counted together) closes 1009; ping is answered with pong;
  a protocol error closes 1002; a client close is echoed;
- **writes** go straight to the :class:`~server.guard.GuardedStream` under a lock (the session's
  sender, replies to pings and the final close may race); each write has the guard's deadline
  and is never cut halfway; no permessage-deflate (audio does not compress).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Final, final

import trio
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

try:  # websockets' C unmasking, as websockets.frames picks it
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover -- a build without the extension
    from websockets.utils import apply_mask

from server.guard import GuardedStream, abort_connection
from server.listen.poller import ReadPoller
from server.listen.wire import ClientGone, Message, fit_reason

__all__ = ["END_GRACE_S", "RECV_BYTES", "FastWebSocket", "serve_websocket"]

#: The most one read takes from the socket (the parsed-frame buffer holds at most this).
RECV_BYTES: Final = 64 * 1024
#: After the handler is done, the client gets this long to answer the close frame.
END_GRACE_S: Final = 1.0
#: A real checkpoint (a chance for other tasks) at least every this many buffered messages;
#: between them a buffered message is returned after a cancellation check only.
YIELD_EVERY: Final = 16

#: ``websockets`` logs every connection at INFO; ours stay quiet below WARNING.
_PROTOCOL_LOGGER: Final = logging.getLogger(__name__ + ".protocol")
_PROTOCOL_LOGGER.setLevel(logging.WARNING)

_OP_BINARY: Final = Opcode.BINARY
_OP_TEXT: Final = Opcode.TEXT
_OP_CONT: Final = Opcode.CONT
_OP_CLOSE: Final = Opcode.CLOSE
#: The first header byte of a final binary frame without reserved bits, and the mask bit of the
#: second: the frames :meth:`FastWebSocket._frames` unmasks itself.
_FIN_BINARY: Final = 0x80 | Opcode.BINARY.value
_MASK_BIT: Final = 0x80
_OPEN: Final = State.OPEN


class _Nothing:
    """No buffered message (distinct from ``None``: the client left)."""


_NOTHING: Final = _Nothing()

#: Serves one accepted-or-not listen WebSocket (``ListenHandler.serve``).
WebSocketApp = Callable[["FastWebSocket"], Awaitable[None]]


@final
class FastWebSocket:
    """One listen WebSocket on a guarded stream (see the module docstring).

    Args:
        scope: the ASGI-shaped request (path, query, headers, client and the guard's record).
        stream: the connection; the guard owns and closes it.
        protocol: the handshake's protocol state (``CONNECTING`` until :meth:`accept`).
        response: the ``101`` to send on :meth:`accept`.
        rest: the bytes that arrived after the request head (frames, maybe a partial one).
        poller: where reads wait once the socket is drained (``None``: on the socket itself);
            the caller registers the socket with it for this object's lifetime.
        max_message_bytes: the largest message; the protocol's ``max_size`` (1009 over it).

    Cancellation: a cancelled read loses nothing (frames are parsed after the read returns); a
    write is never cut halfway (the guard's deadline bounds it, :meth:`abort` wakes it).
    """

    __slots__ = (
        "_buffered",
        "_drained",
        "_eof",
        "_fragments",
        "_fragments_text",
        "_handed_over",
        "_in_message",
        "_max_size",
        "_nowait_read",
        "_partial",
        "_poller",
        "_protocol",
        "_response",
        "_send_lock",
        "_since_yield",
        "_stream",
        "accepted",
        "closed",
        "scope",
    )

    #: After our close frame, the client's last frames are still read (see ``ListenSession``).
    reads_after_close = True

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        stream: GuardedStream,
        protocol: ServerProtocol,
        response: Response,
        rest: bytes = b"",
        poller: ReadPoller | None = None,
        *,
        max_message_bytes: int,
    ) -> None:
        self.scope = scope
        self._stream = stream
        self._protocol = protocol
        self._response = response
        #: parsed messages: an audio frame's payload (the fast path), or a websockets frame
        self._buffered: deque[bytes | Frame] = deque()
        self._partial = b""  # an incomplete frame's bytes, not yet handed to anyone
        self._in_message = False  # websockets holds the first fragments of a message
        self._handed_over = False  # websockets takes every byte from now on
        self._max_size = max_message_bytes
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._send_lock = trio.Lock()
        self._since_yield = 0
        self._nowait_read = False
        self._eof = False
        self._poller = poller
        self._drained = True  # the last read took everything the kernel held
        self.accepted = False
        self.closed = False
        if rest:
            self._feed(rest)

    # -- the handshake ------------------------------------------------------------------------

    async def wait_connect(self) -> None:
        """Nothing to wait for: the request head was read before this object existed."""
        await trio.lowlevel.checkpoint()

    async def accept(self) -> None:
        """Send the ``101 Switching Protocols``."""
        async with self._send_lock:
            if self.accepted or self.closed:
                return
            self._protocol.send_response(self._response)
            self.accepted = True
            try:
                await self._send_pending()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise ClientGone(str(exc)) from exc

    # -- receiving ----------------------------------------------------------------------------

    async def receive(self) -> Message | None:
        """The next data message, or ``None`` once the client left (or the connection failed:
        oversized 1009, bad UTF-8 1007, protocol error 1002; the close frame is already sent).
        """
        while True:
            await self._pace()  # before a message is taken: a cancellation here loses none
            message = self._pop()
            if message is None or (message is _NOTHING and self._gone()):
                await self._flush()  # the answer to a close, or the close of a failure
                return None
            if message is not _NOTHING:
                return message  # type: ignore[return-value]  # not _NOTHING
            await self._read()

    def receive_nowait(self) -> Message | None:
        """A buffered message; once the buffer is empty, the first call also takes what the
        kernel already holds for this socket (at most ``RECV_BYTES``, never waiting).
        ``None`` if the client left.

        Raises:
            trio.WouldBlock: nothing is there (or the one read was taken already).
        """
        message = self._pop()
        if message is _NOTHING and not self._gone() and not self._nowait_read:
            self._nowait_read = True
            try:
                data = self._stream.receive_nowait(RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._feed(data)  # replies (pong, close) go out with the next write
            message = self._pop()
        if message is not _NOTHING:
            return message  # type: ignore[return-value]  # not _NOTHING
        if self._gone():
            return None
        raise trio.WouldBlock

    async def _read_after_poll(self, poller: ReadPoller) -> bytes | None:
        """Wait for the poller to find the socket readable, then read without waiting."""
        await poller.wait_readable(self._stream.fileno)
        try:
            return self._stream.receive_nowait(RECV_BYTES)
        except trio.WouldBlock:
            return None

    async def _pace(self) -> None:
        """Checkpoint before taking a message: a cancellation check, a real yield sometimes
        (a read, which yields, restarts the count)."""
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def _gone(self) -> bool:
        if not self.closed and (self._eof or self._protocol.state >= State.CLOSING):
            self.closed = True
        return self.closed

    async def _read(self) -> None:
        """One read from the socket into the buffer (or none, if a poll found the socket
        readable and a read then found nothing); replies it caused are sent."""
        try:
            if self._poller is not None and self._drained:
                data = await self._read_after_poll(self._poller)
                if data is None:
                    return
            else:
                data = await self._stream.receive_some_unwoken(RECV_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.lowlevel.checkpoint()
            data = b""
        self._drained = len(data) < RECV_BYTES
        self._since_yield = 0
        self._feed(data)
        if self._protocol.writes:  # a pong, or the answer to a close
            await self._flush()

    async def _flush(self) -> None:
        """Send what the protocol queued itself (pongs, close frames); errors mean the peer
        is gone."""
        async with self._send_lock:
            try:
                await self._send_pending()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._eof = True

    def _feed(self, data: bytes) -> None:
        """Take what a read returned (``b""``: EOF): whole frames are parsed, an incomplete
        one waits for the next read (see "Framing" in the module docstring)."""
        if self._eof:
            return
        protocol = self._protocol
        if not data:
            self._eof = True
            protocol.receive_eof()  # at a frame boundary: an incomplete frame is a 1006
            self._take_events()
            return
        if self._partial:
            data, self._partial = self._partial + data, b""
        if self._handed_over:
            protocol.receive_data(data)
            self._take_events()
            return
        self._partial = self._frames(data)

    def _frames(self, data: bytes) -> bytes:
        """Parse the whole frames at the start of ``data``; return the incomplete rest."""
        view = memoryview(data)
        size, pos = len(data), 0
        buffered, protocol = self._buffered, self._protocol
        while size - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length, start = second & 0x7F, pos + 2
            if length == 126:
                start += 2
                length = int.from_bytes(data[pos + 2 : start]) if size >= start else -1
            elif length == 127:
                start += 8
                length = int.from_bytes(data[pos + 2 : start]) if size >= start else -1
            if length < 0:
                break  # the extended length is still on its way
            if length > self._max_size:
                self._handed_over = True  # websockets fails it from the header (1009)
                protocol.receive_data(data[pos:])
                self._take_events()
                return b""
            if second & _MASK_BIT:
                start += 4
            end = start + length
            if end > size:
                break
            if (
                first == _FIN_BINARY
                and second & _MASK_BIT
                and not self._in_message
                and protocol.state is _OPEN
            ):
                buffered.append(apply_mask(view[start:end], data[start - 4 : start]))
            else:
                self._hand_frame(first, data[pos:end])
            pos = end
        return data[pos:] if pos else data

    def _hand_frame(self, first: int, frame: bytes) -> None:
        """Give ``websockets`` one whole frame (``first``: its first byte) and take its events."""
        opcode, fin = first & 0x0F, first & 0x80
        if opcode in (_OP_TEXT.value, _OP_BINARY.value) and not fin:
            self._in_message = True
        elif opcode == _OP_CONT.value and fin:
            self._in_message = False
        self._protocol.receive_data(frame)
        self._take_events()

    def _take_events(self) -> None:
        events = self._protocol.events_received()
        if events:
            self._buffered.extend(events)  # type: ignore[arg-type]  # frames once open

    def _pop(self) -> Message | None | _Nothing:
        """The next buffered data message; ``None`` at a close frame or a failure."""
        buffered = self._buffered
        while buffered:
            frame = buffered.popleft()
            if isinstance(frame, bytes):  # the hot path: one audio frame (see _frames)
                return frame
            if frame.opcode is _OP_BINARY and frame.fin:
                data = frame.data
                return data if type(data) is bytes else bytes(data)
            message = self._assemble(frame)
            if message is not _NOTHING:
                return message
        return _NOTHING

    def _assemble(self, frame: Frame) -> Message | None | _Nothing:
        opcode = frame.opcode
        if opcode is _OP_CLOSE:
            self.closed = True  # the protocol answered it (sent with the next write)
            return None
        if opcode is _OP_TEXT or opcode is _OP_BINARY:
            if not frame.fin:
                self._fragments, self._fragments_text = [bytes(frame.data)], opcode is _OP_TEXT
                return _NOTHING
            return self._text(bytes(frame.data)) if opcode is _OP_TEXT else bytes(frame.data)
        if opcode is _OP_CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return _NOTHING
            data, self._fragments = b"".join(self._fragments), None
            return self._text(data) if self._fragments_text else data
        return _NOTHING  # ping (answered by the protocol) or pong

    def _text(self, data: bytes) -> str | None:
        try:
            return data.decode()
        except UnicodeDecodeError:
            self._protocol.fail(1007, "invalid UTF-8 in a text message")
            self._buffered.clear()
            self.closed = True
            return None

    # -- sending ------------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send a text frame; raises :class:`ClientGone` if the connection is gone."""
        async with self._send_lock:
            if self.closed or self._protocol.state is not State.OPEN:
                self.closed = True
                raise ClientGone("closed")
            self._protocol.send_text(text.encode())
            try:
                await self._send_pending()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise ClientGone(str(exc)) from exc

    async def _send_pending(self) -> None:
        """Write what the protocol queued (frames, then a half-close if it queued one); the
        caller holds the lock.

        Cancellation: only before anything is taken from the protocol (it then stays queued
        for the next write). Once taken it is written whole, bounded by the guard's write
        deadline: ``GuardedStream.send_all`` is not cancellable past its first check, which
        cannot fire here (nothing yields between ours and its), and ``send_eof`` never is. A
        close frame taken and then cancelled used to be lost (the client saw 1006).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        chunks = self._protocol.data_to_send()
        if not chunks:
            await trio.lowlevel.checkpoint()
            return
        half_close = not chunks[-1]  # websockets queues b"" last, for its EOF
        data = b"".join(chunks)  # one chunk (the usual case) is not copied
        if data:
            await self._stream.send_all(data)
        if half_close:
            await self._stream.send_eof()

    def abort(self) -> None:
        """Reset the TCP connection now, without a close frame; wakes a blocked send."""
        self.closed = True
        if not abort_connection(self.scope):
            self._stream.abort()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (accepting first, so the client sees the code, not HTTP 403)."""
        if self.closed:
            await self._flush()  # what the protocol still owes the peer (a close answer)
            return
        self.closed = True
        async with self._send_lock:
            protocol = self._protocol
            if not self.accepted:
                protocol.send_response(self._response)
                self.accepted = True
            if protocol.state is State.OPEN:
                protocol.send_close(code, fit_reason(reason))
            try:
                await self._send_pending()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._eof = True  # the peer is already gone: nothing left to tell it

    async def receive_after_close(self) -> Message | None:
        """After :meth:`close`: the next data message the client sent before it saw our close
        frame; ``None`` at its close frame or EOF. Unbounded: the caller bounds it."""
        while True:
            await trio.lowlevel.checkpoint()  # before a message is taken (see receive)
            message = self._pop()
            if message is not _NOTHING:
                return message  # type: ignore[return-value]  # not _NOTHING
            if self._eof or self._protocol.close_rcvd is not None:
                return None
            await self._read()

    async def finish(self) -> None:
        """The handler is done: close 1000 if it did not close, then wait for the client's
        close frame (or EOF). Unbounded: the caller bounds it."""
        await self.close(1000)
        protocol = self._protocol
        while protocol.close_rcvd is None and not self._eof and protocol.state is State.CLOSING:
            await self._read()
            self._buffered.clear()


def _header_tokens(headers: Headers, name: str) -> list[str]:
    return [t.strip().lower() for value in headers.get_all(name) for t in value.split(",")]


def _is_upgrade(request: Request) -> bool:
    """hypercorn's test (GET is known): ``Connection: upgrade`` and ``Upgrade: websocket``."""
    return "upgrade" in _header_tokens(request.headers, "Connection") and _header_tokens(
        request.headers, "Upgrade"
    ) == ["websocket"]


def _scope(request: Request, base: MutableMapping[str, Any]) -> dict[str, Any]:
    path, _, query = request.path.partition("?")
    return {
        **base,
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ],
        "subprotocols": [],
    }


def _refusal(reason: str) -> bytes:
    body = json.dumps(
        {"error": {"code": "bad_websocket_handshake", "message": reason[:200]}},
        separators=(",", ":"),
    ).encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def serve_websocket(
    stream: GuardedStream,
    head: bytes,
    base_scope: MutableMapping[str, Any],
    *,
    app: WebSocketApp,
    max_message_bytes: int,
    poller: ReadPoller | None = None,
) -> bytes | None:
    """Serve the connection whose first bytes ``head`` hold a whole request head for a listen
    path: ``None`` once served; or, if it is not a WebSocket upgrade, ``head`` back untouched
    for hypercorn to serve.

    With a ``poller``, the socket is registered with it while the handler runs (see
    :mod:`server.listen.poller`).

    Cancellation: cancelling it ends the connection (the guard closes the socket).
    """
    protocol = ServerProtocol(max_size=max_message_bytes, logger=_PROTOCOL_LOGGER)
    end = head.find(b"\r\n\r\n") + 4  # the request head; frames after it are ours to cut
    rest = head[end:] if end >= 4 else b""
    protocol.receive_data(head[:end] if end >= 4 else head)
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request) or not _is_upgrade(events[0]):
        await trio.lowlevel.checkpoint()
        return head
    request = events[0]
    response = protocol.accept(request)  # no extensions offered: no permessage-deflate
    if response.status_code != 101:
        try:
            await stream.send_all(_refusal(str(protocol.handshake_exc or "invalid handshake")))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.lowlevel.checkpoint()
        return None
    scope = _scope(request, base_scope)
    ws = FastWebSocket(scope, stream, protocol, response, rest, poller,
                       max_message_bytes=max_message_bytes)  # fmt: skip
    if poller is None:
        await _run(ws, app)
        return None
    fd = stream.fileno
    with poller.registered(fd):
        stream.on_abort = partial(poller.notify_closing, fd)
        try:
            await _run(ws, app)
        finally:
            stream.on_abort = None
    return None


async def _run(ws: FastWebSocket, app: WebSocketApp) -> None:
    """The handler, then the client's bounded chance to answer the close."""
    await app(ws)
    with trio.move_on_after(END_GRACE_S):
        await ws.finish()
