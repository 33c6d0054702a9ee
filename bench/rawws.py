"""A minimal WebSocket client for load generation: pre-encoded frames written straight to sockets.

trio-websocket (over wsproto) costs the load generator about as much CPU per frame as the server
spends receiving it, so a one-core generator saturates before either server does and the
benchmark measures the client. This client does the least a conforming client must (RFC 6455):

- the opening handshake is one pre-built HTTP request; a non-101 answer raises
  :class:`RawRejected` with the status;
- outgoing data frames are **encoded once, ahead of time** (:func:`encode_frame`: header plus
  masked payload) and written with one ``send_all``; masking uses one big-integer XOR, in C;
- incoming frames (unmasked, from the server) are parsed from a buffer; text and binary
  messages are returned whole (continuations joined); a server ping is answered with a pong;
  a close frame is echoed and raises :class:`RawClosed` with the code, as does EOF (code 1006).

It offers no extensions (so the server never compresses) and never sends fragmented messages.
Sends are serialised by a lock, because the receiver may answer a ping while the sender writes.
The caller owns the TCP stream: the caller of :func:`connect_raw_websocket` closes it on every path.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Sequence
from typing import Final

import trio

__all__ = [
    "RawClosed",
    "RawRejected",
    "RawWebSocket",
    "connect_raw_websocket",
    "encode_frame",
]

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
MAX_HANDSHAKE_BYTES: Final = 64 * 1024
RECEIVE_BYTES: Final = 65536


class RawClosed(Exception):
    """The connection closed (a close frame with ``code``, or 1006 for EOF without one)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class RawRejected(Exception):
    """The server answered the handshake with ``status_code`` instead of 101."""

    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.status_code = status_code


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(len(payload), "little")


def encode_frame(payload: bytes, opcode: int = OP_BINARY, mask_key: bytes | None = None) -> bytes:
    """One final, masked client frame (RFC 6455 5.2); ``mask_key`` defaults to 4 random bytes."""
    key = mask_key if mask_key is not None else os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + key + _mask(payload, key)


def _close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class RawWebSocket:
    """A connected client WebSocket on ``stream`` (made by :func:`open_raw_websocket`)."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self._stream = stream
        self._buffer = bytearray(buffered)
        self._send_lock = trio.Lock()
        self._fragments: list[bytes] = []
        self._fragment_op = OP_TEXT
        self._close_sent = False
        self.closed: RawClosed | None = None

    async def send_encoded(self, frame: bytes) -> None:
        """Write one frame made by :func:`encode_frame` (raises :class:`RawClosed` once closed)."""
        if self.closed is not None:
            raise self.closed
        async with self._send_lock:
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RawClosed(1006, "send failed") from exc

    async def send_text(self, text: str) -> None:
        """Encode and send one text message."""
        await self.send_encoded(encode_frame(text.encode(), OP_TEXT))

    async def get_message(self) -> str | bytes:
        """The next whole text or binary message; raises :class:`RawClosed` at the end."""
        while True:
            frame = self._next_frame()
            if frame is None:
                await self._fill()
                continue
            message = await self._on_frame(*frame)
            if message is not None:
                return message

    async def send_close(self, code: int = 1000) -> None:
        """Start the closing handshake; the reader then gets :class:`RawClosed` with the
        server's answering close frame (the stream stays the caller's to close)."""
        await self.send_encoded(encode_frame(_close_payload(code), OP_CLOSE))
        self._close_sent = True

    async def _fill(self) -> None:  # noqa: ASYNC910 -- receive_some checkpoints, raising too
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = RawClosed(1006, "connection lost")
            raise self.closed
        self._buffer += data

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        """Pop one whole frame (fin, opcode, payload) from the buffer, or None if incomplete."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, size, offset = bool(buf[1] & 0x80), buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, offset = struct.unpack_from("!H", buf, 2)[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, offset = struct.unpack_from("!Q", buf, 2)[0], 10
        key = bytes(buf[offset : offset + 4]) if masked else b""
        offset += len(key)
        if len(buf) < offset + size:
            return None
        payload = bytes(buf[offset : offset + size])
        del buf[: offset + size]
        return fin, opcode, _mask(payload, key) if masked else payload

    async def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> str | bytes | None:
        if opcode == OP_PING:
            await self.send_encoded(encode_frame(payload, OP_PONG))
            return None
        if opcode == OP_PONG:
            await trio.lowlevel.checkpoint()
            return None
        if opcode == OP_CLOSE:
            await self._on_close(payload)
        if opcode != OP_CONT:
            self._fragment_op = opcode
        self._fragments.append(payload)
        await trio.lowlevel.checkpoint()
        if not fin:
            return None
        whole, self._fragments = b"".join(self._fragments), []
        return whole.decode() if self._fragment_op == OP_TEXT else whole

    async def _on_close(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        if self.closed is None and not self._close_sent:
            try:
                await self.send_encoded(encode_frame(_close_payload(code), OP_CLOSE))
            except RawClosed:
                pass
        self.closed = RawClosed(code, payload[2:].decode(errors="replace"))
        raise self.closed


def _handshake_request(host: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers)]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_handshake(stream: trio.SocketStream) -> bytes:
    """Read the server's handshake answer; return the bytes after it (the first frames)."""
    data = await stream.receive_some(4096)
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk or len(data) > MAX_HANDSHAKE_BYTES:
            raise RawRejected(0)
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    if status != 101:
        raise RawRejected(status)
    return rest


async def connect_raw_websocket(
    stream: trio.SocketStream, host: str, target: str, headers: Sequence[tuple[str, str]] = ()
) -> RawWebSocket:
    """Handshake on ``stream`` (which the caller owns and closes); return the client."""
    await stream.send_all(_handshake_request(host, target, headers))
    return RawWebSocket(stream, await _read_handshake(stream))
