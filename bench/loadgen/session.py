"""One ``/v4/listen`` session of a load run: handshake, paced audio, and what came back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError

from bench.loadgen.config import (
    DISCONNECT_TIMEOUT_S,
    LATE_FRAME_S,
    MAX_MESSAGE_BYTES,
    SEG_TOKEN,
    AudioSource,
    LoadConfig,
    expected_token,
)

__all__ = ["SessionRecord", "handle_text", "run_session"]


# -- one session --------------------------------------------------------------------------------
@dataclass(slots=True)
class SessionRecord:
    """What one session saw (times are ``trio.current_time()``)."""

    index: int
    connected: bool = False
    error: str | None = None
    close_code: int | None = None
    frames_sent: int = 0
    stream_s: float = 0.0
    send_lag_max_s: float = 0.0
    late_frames: int = 0
    sending_done: bool = False
    closing: bool = False
    expected: dict[int, str] = field(default_factory=dict)
    last_frame_at: dict[int, float] = field(default_factory=dict)
    #: the second whose last frame is being written (its answer may be read before the
    #: sender resumes and records ``last_frame_at``)
    writing_last_of: int = -1
    first_seen: dict[int, float] = field(default_factory=dict)
    max_seen: int = -1
    reordered: int = 0
    mismatched: int = 0
    unexpected: int = 0
    pings: int = 0
    events: dict[str, int] = field(default_factory=dict)
    bad_messages: int = 0
    all_received: trio.Event = field(default_factory=trio.Event)

    def complete(self) -> bool:
        """Whether every fully sent second has been seen."""
        return self.sending_done and all(k in self.first_seen for k in self.last_frame_at)

    def see(self, index: int, crc: str, now: float) -> None:
        """Record one ``seg{index} {crc}`` token.

        A token for a second this session has not finished sending is not its result: it is
        counted as *unexpected* and does not mark the second seen. (A session that resumes its
        user's in-progress conversation gets segments whose merged text carries an earlier
        session's tokens: counted as results, they made latencies negative and would have
        hidden a loss.)
        """
        if index in self.first_seen:
            return
        if index not in self.last_frame_at and index != self.writing_last_of:
            self.unexpected += 1
            return
        self.first_seen[index] = now
        want = self.expected.get(index)
        if want != f"seg{index} {crc}":
            self.mismatched += 1
        if index < self.max_seen:
            self.reordered += 1
        self.max_seen = max(self.max_seen, index)
        if self.complete():
            self.all_received.set()

    def latencies(self) -> list[float]:
        """Arrival - last-frame send time, per index seen."""
        return [t - self.last_frame_at[k] for k, t in self.first_seen.items()
                if k in self.last_frame_at]  # fmt: skip

    def lost(self) -> int:
        """Fully sent indices never seen."""
        return sum(1 for k in self.last_frame_at if k not in self.first_seen)


def handle_text(rec: SessionRecord, text: str, now: float) -> None:
    if text == "ping":
        rec.pings += 1
        return
    try:
        data = json.loads(text)
    except ValueError:
        rec.bad_messages += 1
        return
    if isinstance(data, list):
        for segment in data:
            body = segment.get("text", "") if isinstance(segment, dict) else ""
            for match in SEG_TOKEN.finditer(str(body)):
                rec.see(int(match.group(1)), match.group(2), now)
    elif isinstance(data, dict):
        kind = str(data.get("type", "?"))
        rec.events[kind] = rec.events.get(kind, 0) + 1
    else:
        rec.bad_messages += 1


async def _receive(  # noqa: ASYNC910 -- get_message() checkpoints; the loop ends by raising
    ws: WebSocketConnection, rec: SessionRecord
) -> None:
    try:
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                handle_text(rec, message, trio.current_time())
    except ConnectionClosed as exc:
        rec.close_code = _close_code(exc)


async def _send_audio(
    ws: WebSocketConnection, rec: SessionRecord, source: AudioSource, config: LoadConfig
) -> None:
    await trio.lowlevel.checkpoint()
    frame_s = config.frame_ms / 1000
    per_second = 1000 // config.frame_ms
    fb = config.frame_bytes
    start = trio.current_time()
    sent_at = start
    for k in range(config.duration_s):
        second = source.second(k)
        rec.expected[k] = expected_token(k, second)
        for f in range(per_second):
            due = start + (k * per_second + f) * frame_s
            await trio.sleep_until(due)
            sent_at = trio.current_time()
            lag = sent_at - due
            rec.send_lag_max_s = max(rec.send_lag_max_s, lag)
            rec.late_frames += lag > LATE_FRAME_S
            if f == per_second - 1:
                rec.writing_last_of = k
            await ws.send_message(second[f * fb : (f + 1) * fb])
            rec.frames_sent += 1
        rec.last_frame_at[k] = sent_at
    rec.stream_s = trio.current_time() - start + frame_s  # the last frame's interval too
    rec.sending_done = True
    if rec.complete():
        rec.all_received.set()


async def _session_body(
    ws: WebSocketConnection, rec: SessionRecord, source: AudioSource, config: LoadConfig
) -> None:
    async with trio.open_nursery() as session_nursery:
        session_nursery.start_soon(_receive, ws, rec)
        try:
            await _send_audio(ws, rec, source, config)
        except ConnectionClosed as exc:
            rec.error = f"closed:{_close_code(exc)}"
            rec.close_code = _close_code(exc)
        else:
            with trio.move_on_after(config.grace_s):
                await rec.all_received.wait()
            await trio.sleep(config.hold_s)
        session_nursery.cancel_scope.cancel()


def _close_code(exc: ConnectionClosed) -> int | None:
    return exc.reason.code if exc.reason is not None else None


def _describe(exc: BaseException) -> str:
    if type(exc) is HandshakeError and exc.__cause__ is not None:
        exc = exc.__cause__  # trio-websocket wraps connect errors
    if isinstance(exc, ConnectionRejected):
        return f"rejected:{exc.status_code}"
    if isinstance(exc, ConnectionClosed):
        return f"closed:{_close_code(exc)}"
    if isinstance(exc, OSError):
        return "connect failed" if exc.errno is None else f"oserror:{exc.errno}"
    if isinstance(exc, trio.TooSlowError):
        return "connect timeout"
    return type(exc).__name__


async def _handshake(
    nursery: trio.Nursery, stream: trio.SocketStream, config: LoadConfig, token: str
) -> WebSocketConnection:
    parts = urlsplit(config.session_url())
    return await wrap_client_stream(
        nursery,
        stream,
        parts.netloc,
        f"{parts.path}?{parts.query}",
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        max_message_size=MAX_MESSAGE_BYTES,
    )


async def _connected_session(
    config: LoadConfig, rec: SessionRecord, stream: trio.SocketStream, source: AudioSource
) -> None:
    token = config.tokens[rec.index % len(config.tokens)]
    async with trio.open_nursery() as ws_nursery:
        try:
            with trio.fail_after(config.connect_timeout_s):
                ws = await _handshake(ws_nursery, stream, config, token)
            rec.connected = True
            await _session_body(ws, rec, source, config)
            rec.closing = True
            with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                await ws.aclose()
        finally:
            ws_nursery.cancel_scope.cancel()


async def run_session(
    config: LoadConfig, rec: SessionRecord, start_at: float, fixture: bytes | None
) -> None:
    """One session; the TCP stream is ours, so it is closed on every path (a rejected
    handshake included, which trio-websocket's ``open_websocket_url`` leaves open)."""
    await trio.sleep_until(start_at)
    parts = urlsplit(config.url)
    source = AudioSource(config, rec.index, fixture)
    try:
        with trio.fail_after(config.connect_timeout_s):
            stream = await trio.open_tcp_stream(parts.hostname or "", parts.port or 80)
        try:
            await _connected_session(config, rec, stream, source)
        finally:
            await trio.aclose_forcefully(stream)
    except* LocalProtocolError as group:
        # trio-websocket answers a server ping while closing with a Pong that wsproto refuses
        # (LOCAL_CLOSING); after the session's own work is done that race is harmless.
        if not rec.closing:
            rec.error = rec.error or f"protocol error: {group.exceptions[0]}"
    except* Exception as group:  # one broken session must not end the run
        rec.error = rec.error or _describe(group.exceptions[0])
