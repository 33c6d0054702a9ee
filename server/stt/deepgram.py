"""Deepgram live streaming (``/v1/listen``) as an :class:`~server.stt.base.SttProvider`.

One WebSocket (trio-websocket) per stream. Every stream owns a nursery with::

    supervisor     connects, runs one connection at a time, reconnects with jittered backoff
    ├── reader     Deepgram messages -> SttResult -> bounded event channel
    └── keepalive  {"type":"KeepAlive"} text frame after ``keepalive_interval_s`` of not sending

The provider itself owns nothing that outlives a stream except counters.

Decisions (see docs/deepgram-live.md for the protocol):

- **Open.** A *permanent* handshake refusal (HTTP 4xx other than 408/429: bad key, bad params)
  makes :meth:`DeepgramSttProvider.open_stream` raise :class:`SttUnavailableError`: retrying
  cannot help and the session should tell its client. A *transient* failure (5xx, 408/429,
  refused, reset, timeout) opens the stream anyway, degraded: its first event is
  ``SttStatus(degraded=True)`` and it reconnects like a stream that lost its connection.
- **Outage.** Audio given to :meth:`DeepgramStream.send_audio` while no connection is up is
  dropped and counted (``dropped_audio_bytes``), not buffered: Deepgram would transcribe it late
  and the gap is already reported by the degraded status. Stream time keeps counting dropped
  audio, so a new connection's times are offset by the audio position when it opened and
  timestamps stay aligned with the caller's audio clock. Reconnects never give up (backoff is
  capped at ``backoff_cap_s``); the caller ends the stream.
- **Events.** A channel of ``EVENT_BUFFER`` events. When it is full the reader waits
  (backpressure onto Deepgram's socket); nothing is dropped. Empty transcripts are skipped.
  A Results' ``speaker`` is its most frequent word speaker (0 without diarization).
- **Close.** ``close()`` sends CloseStream and waits (the caller bounds it) until Deepgram has
  sent its last Results and Metadata and closed; then :meth:`DeepgramStream.events` ends.
  Leaving ``open_stream`` without ``close()`` cancels the stream's tasks.
- **Errors.** trio-websocket / OS errors are mapped once, in :func:`_describe` (reasons) and
  :meth:`DeepgramSttProvider.open_stream` (``SttUnavailableError``).
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn
from urllib.parse import urlencode, urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from server.stt.base import (
    StatisticsMapping,
    SttEvent,
    SttResult,
    SttStatus,
    SttUnavailableError,
    Word,
)

__all__ = [
    "DEFAULT_URL",
    "DeepgramSettings",
    "DeepgramStatistics",
    "DeepgramStream",
    "DeepgramSttProvider",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_URL: Final = "wss://api.deepgram.com/v1/listen"
PROVIDER_NAME: Final = "deepgram"
EVENT_BUFFER: Final = 16
BYTES_PER_SAMPLE: Final = 2
KEEPALIVE: Final = json.dumps({"type": "KeepAlive"})
FINALIZE: Final = json.dumps({"type": "Finalize"})
CLOSE_STREAM: Final = json.dumps({"type": "CloseStream"})
# Handshake statuses worth retrying; any other 4xx is a configuration error.
TRANSIENT_4XX: Final = frozenset({408, 429})
# Errors of one upstream connection attempt or of a live connection (mapped by _describe).
UPSTREAM_ERRORS: Final = (
    HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError, trio.TooSlowError
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeepgramSettings:
    """How to reach Deepgram and what to ask of it.

    Attributes:
        api_key: sent as ``Authorization: Token <api_key>``.
        url: the live endpoint (``ws://`` for local fakes).
        model / punctuate / smart_format / endpointing_ms / interim_results / diarize:
            Deepgram query parameters (``encoding=linear16``, ``channels=1`` are fixed).
        keepalive_interval_s: send KeepAlive after this long without sending anything
            (Deepgram closes after 10 s).
        connect_timeout_s / disconnect_timeout_s: WebSocket handshake bounds.
        max_message_bytes: largest message accepted from Deepgram (bigger closes 1009).
        max_audio_frame_bytes: larger ``send_audio`` chunks are split into frames of this size.
        backoff_base_s / backoff_jitter_s / backoff_cap_s: reconnect delay
            ``min(base * 2**attempt + U(0, jitter), cap)``.
    """

    api_key: str = field(repr=False)
    url: str = DEFAULT_URL
    model: str = "nova-3"
    punctuate: bool = True
    smart_format: bool = True
    endpointing_ms: int = 300
    interim_results: bool = True
    diarize: bool = False
    keepalive_interval_s: float = 5.0
    connect_timeout_s: float = 10.0
    disconnect_timeout_s: float = 5.0
    max_message_bytes: int = 1024 * 1024
    max_audio_frame_bytes: int = 16_000
    backoff_base_s: float = 0.5
    backoff_jitter_s: float = 0.5
    backoff_cap_s: float = 15.0

    def listen_url(self, *, sample_rate: int, language: str) -> str:
        """The URL with this stream's query parameters."""
        params = {
            "model": self.model,
            "language": language,
            "encoding": "linear16",
            "sample_rate": str(sample_rate),
            "channels": "1",
            "interim_results": _flag(self.interim_results),
            "punctuate": _flag(self.punctuate),
            "smart_format": _flag(self.smart_format),
            "endpointing": str(self.endpointing_ms),
        }
        if self.diarize:
            params["diarize"] = "true"
        separator = "&" if urlsplit(self.url).query else "?"
        return f"{self.url}{separator}{urlencode(params)}"

    def backoff_s(self, attempt: int, uniform: float) -> float:
        """Delay before reconnect ``attempt`` (0-based), ``uniform`` drawn from [0, 1)."""
        delay = self.backoff_base_s * 2.0 ** min(attempt, 30) + self.backoff_jitter_s * uniform
        return min(delay, self.backoff_cap_s)


def _flag(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True, slots=True)
class DeepgramStatistics(StatisticsMapping):
    """Provider counters; also a read-only mapping, as :class:`SttProvider` asks."""

    streams_open: int
    streams_opened: int
    streams_refused: int
    reconnects: int
    keepalives_sent: int
    results: int
    bytes_sent: int
    dropped_audio_bytes: int
    bad_messages: int


@dataclass(slots=True)
class _Counters:
    streams_open: int = 0
    streams_opened: int = 0
    streams_refused: int = 0
    reconnects: int = 0
    keepalives_sent: int = 0
    results: int = 0
    bytes_sent: int = 0
    dropped_audio_bytes: int = 0
    bad_messages: int = 0


class DeepgramSttProvider:
    """Opens Deepgram live streams; holds only settings and counters."""

    name = PROVIDER_NAME

    def __init__(
        self, settings: DeepgramSettings, *, uniform: Callable[[], float] = random.random
    ) -> None:
        """Check ``settings.url`` now; ``uniform`` draws the backoff jitter (tests pin it)."""
        if urlsplit(settings.url).scheme not in ("ws", "wss"):
            raise ValueError(f"Deepgram URL must be ws:// or wss://, got {settings.url!r}")
        self._settings = settings
        self._uniform = uniform
        self._counters = _Counters()

    @asynccontextmanager
    async def open_stream(
        self, *, sample_rate: int, language: str
    ) -> AsyncIterator[DeepgramStream]:
        """Connect a stream; raises :class:`SttUnavailableError` if Deepgram refuses it."""
        stream = DeepgramStream(
            self._settings, sample_rate, language, self._counters, self._uniform
        )
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                failure = await nursery.start(stream.supervise)
                if failure is None:
                    async with self._counted():
                        yield stream
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_single(group)
        if failure is not None:
            self._counters.streams_refused += 1
            raise SttUnavailableError(
                f"Deepgram refused the stream: {_describe(failure)}"
            ) from failure

    @asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        self._counters.streams_open += 1
        self._counters.streams_opened += 1
        try:
            yield
        finally:
            self._counters.streams_open -= 1

    def statistics(self) -> DeepgramStatistics:
        """A snapshot of the counters of every stream this provider opened."""
        c = self._counters
        return DeepgramStatistics(
            streams_open=c.streams_open, streams_opened=c.streams_opened,
            streams_refused=c.streams_refused, reconnects=c.reconnects,
            keepalives_sent=c.keepalives_sent, results=c.results, bytes_sent=c.bytes_sent,
            dropped_audio_bytes=c.dropped_audio_bytes, bad_messages=c.bad_messages,
        )  # fmt: skip


def _raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the only exception of ``group`` as itself (the caller's error stays visible)."""
    if len(group.exceptions) != 1:
        raise group
    only = group.exceptions[0]
    raise only from only.__cause__


class DeepgramStream:
    """One live Deepgram stream (see :class:`~server.stt.base.SttStream`)."""

    def __init__(
        self,
        settings: DeepgramSettings,
        sample_rate: int,
        language: str,
        counters: _Counters,
        uniform: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._url = settings.listen_url(sample_rate=sample_rate, language=language)
        self._bytes_per_s = sample_rate * BYTES_PER_SAMPLE
        self._counters = counters
        self._uniform = uniform
        self._events_send, self._events_receive = trio.open_memory_channel[SttEvent](EVENT_BUFFER)
        self._ws: WebSocketConnection | None = None
        self._offset_s = 0.0
        self._audio_bytes = 0
        self._last_send_at = 0.0
        self._closing = False
        self._outage_scope = trio.CancelScope()
        self._done = trio.Event()

    @property
    def degraded(self) -> bool:
        """True while no upstream connection is up."""
        return self._ws is None and not self._done.is_set()

    async def send_audio(self, pcm16: bytes) -> None:
        """Forward PCM16 mono audio; dropped (and counted) while degraded; empty is a no-op."""
        await trio.lowlevel.checkpoint()  # a schedule point even when everything is dropped
        if self._closing:
            raise trio.ClosedResourceError("the stream is closing")
        frame_bytes = self._settings.max_audio_frame_bytes
        for begin in range(0, len(pcm16), frame_bytes):
            frame = pcm16[begin : begin + frame_bytes]
            self._audio_bytes += len(frame)
            ws = self._ws
            if ws is None or not await self._send_audio_frame(ws, frame):
                self._counters.dropped_audio_bytes += len(frame)

    async def _send_audio_frame(self, ws: WebSocketConnection, frame: bytes) -> bool:
        try:
            await ws.send_message(frame)
        except ConnectionClosed:
            await trio.lowlevel.checkpoint()
            return False
        self._last_send_at = trio.current_time()
        self._counters.bytes_sent += len(frame)
        return True

    async def finalize(self) -> None:
        """Send Finalize: Deepgram answers with final results for the buffered audio."""
        ws = self._ws
        if ws is not None and not self._closing:
            await self._send_control(ws, FINALIZE)
        else:
            await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Send CloseStream, then wait until the last results arrived and events ended."""
        if not self._closing:
            self._closing = True
            ws = self._ws
            if ws is None:
                self._outage_scope.cancel()
            else:
                await self._send_control(ws, CLOSE_STREAM)
        await self._done.wait()

    def events(self) -> trio.MemoryReceiveChannel[SttEvent]:
        """Results and status changes in order; ends after :meth:`close` (or a cancel)."""
        return self._events_receive

    async def _send_control(self, ws: WebSocketConnection, text: str) -> bool:
        """Send a JSON control message; False if the connection is already closed."""
        try:
            await ws.send_message(text)
        except ConnectionClosed:
            await trio.lowlevel.checkpoint()
            return False
        self._last_send_at = trio.current_time()
        return True

    # ------------------------------------------------------------------ supervisor

    async def supervise(  # noqa: ASYNC114, ASYNC128 -- _first_connection calls started()
        self, task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run connections until closed; ``started(None)``, or ``started(error)`` if refused."""
        try:
            reason = await self._first_connection(task_status)
            while reason is not None and not self._closing:
                reason = await self._outage(reason)
        finally:
            self._ws = None
            self._events_send.close()
            self._done.set()

    async def _first_connection(  # noqa: ASYNC114 -- no project-wide startable list
        self, task_status: trio.TaskStatus[BaseException | None]
    ) -> str | None:
        started = False
        try:
            async with self._connect() as ws:
                task_status.started(None)
                started = True
                return await self._live(ws, reconnected=False)
        except UPSTREAM_ERRORS as exc:
            await trio.lowlevel.checkpoint()  # the attempt may fail before its first one
            if started:
                return _describe(exc)
            if _is_permanent(exc):
                task_status.started(exc)
                return None
            task_status.started(None)
            return _describe(exc)

    async def _outage(self, reason: str) -> str | None:
        """Report ``reason``, reconnect with backoff; return why the next connection ended."""
        self._outage_scope = scope = trio.CancelScope()
        with scope:
            LOGGER.warning("deepgram stream degraded: %s", reason)
            await self._events_send.send(SttStatus(degraded=True, reason=reason))
            attempt = 0
            while True:
                await trio.sleep(self._settings.backoff_s(attempt, self._uniform()))
                attempt += 1
                live = False
                try:
                    async with self._connect() as ws:
                        live = True
                        self._counters.reconnects += 1
                        return await self._live(ws, reconnected=True, attempts=attempt)
                except UPSTREAM_ERRORS as exc:
                    if live:  # recovered, then lost again: the next outage reports it
                        return _describe(exc)
                    LOGGER.info("deepgram reconnect %d failed: %s", attempt, _describe(exc))
        return None  # close() during the outage

    def _connect(self) -> AbstractAsyncContextManager[WebSocketConnection]:
        settings = self._settings
        return _open_upstream(
            self._url,
            headers=[(b"Authorization", f"Token {settings.api_key}".encode())],
            settings=settings,
        )

    async def _live(
        self, ws: WebSocketConnection, *, reconnected: bool, attempts: int = 0
    ) -> str | None:
        """Serve one open connection; return why it ended, or None if the stream is done."""
        self._ws = ws
        self._offset_s = self._audio_bytes / self._bytes_per_s
        self._last_send_at = trio.current_time()
        try:
            if reconnected:
                details = {"attempts": attempts, "offset_s": self._offset_s}
                await self._events_send.send(SttStatus(False, "reconnected", details))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, ws)
                reason = await self._read(ws)
                nursery.cancel_scope.cancel()
        finally:
            self._ws = None
        return None if self._closing else reason

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        await trio.lowlevel.checkpoint()
        interval = self._settings.keepalive_interval_s
        while not self._closing:
            due = self._last_send_at + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
            elif await self._send_control(ws, KEEPALIVE):
                self._counters.keepalives_sent += 1
            else:
                return

    async def _read(self, ws: WebSocketConnection) -> str:
        """Forward results until the connection closes; return the close as a reason."""
        while True:  # noqa: ASYNC913 -- get_message() checkpoints; it raises once closed
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return _describe(exc)  # noqa: ASYNC910 -- as above
            if isinstance(message, str):
                result = self._parse(message)
                if result is not None:
                    self._counters.results += 1
                    await self._events_send.send(result)

    def _parse(self, text: str) -> SttResult | None:
        try:
            message = json.loads(text)
            kind = message.get("type")
            if kind == "Results":
                return _to_result(message, self._offset_s)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            self._counters.bad_messages += 1
            LOGGER.warning("deepgram: unreadable message %.200s", text)
            return None
        if kind == "Error":
            LOGGER.warning("deepgram error: %.200s", text)
        return None


@asynccontextmanager
async def _open_upstream(
    url: str, *, headers: list[tuple[bytes, bytes]], settings: DeepgramSettings
) -> AsyncIterator[WebSocketConnection]:
    """Connect a WebSocket whose TCP stream this function owns and always closes.

    trio-websocket's ``open_websocket_url`` leaves the client socket open when the *server*
    closes first (it waits for the TCP close and never closes its stream), which Deepgram does
    after every CloseStream; owning the stream avoids leaking one socket per stream.
    """
    parts = urlsplit(url)
    host, secure = parts.hostname or "", parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
    connect_by = trio.current_time() + settings.connect_timeout_s
    with trio.fail_at(connect_by):
        stream = await _open_transport(host, port, secure=secure)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_at(connect_by):
                ws = await wrap_client_stream(
                    nursery, stream, host if port in (80, 443) else f"{host}:{port}", resource,
                    extra_headers=headers, max_message_size=settings.max_message_bytes,
                )  # fmt: skip
            try:
                yield ws
            finally:
                with trio.move_on_after(settings.disconnect_timeout_s):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_single(group)
    finally:
        await trio.aclose_forcefully(stream)


async def _open_transport(
    host: str, port: int, *, secure: bool
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if not secure:
        return await trio.open_tcp_stream(host, port)
    context = ssl.create_default_context()
    return await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=context, https_compatible=True
    )


def _to_result(message: dict[str, Any], offset_s: float) -> SttResult | None:
    """Map a Results message to an :class:`SttResult` shifted by ``offset_s``; None if empty."""
    best = message["channel"]["alternatives"][0]
    text = str(best.get("transcript", "")).strip()
    if not text:
        return None
    raw_words = best.get("words") or []
    words = tuple(_to_word(raw, offset_s) for raw in raw_words)
    start_s = offset_s + float(message.get("start", 0.0))
    speakers = Counter(int(raw["speaker"]) for raw in raw_words if "speaker" in raw)
    return SttResult(
        text=text,
        start_s=start_s,
        end_s=start_s + float(message.get("duration", 0.0)),
        is_final=bool(message.get("is_final", False)),
        words=words,
        speaker=speakers.most_common(1)[0][0] if speakers else 0,
        provider=PROVIDER_NAME,
    )


def _to_word(raw: dict[str, Any], offset_s: float) -> Word:
    confidence = raw.get("confidence")
    return Word(
        text=str(raw.get("punctuated_word") or raw["word"]),
        start_s=offset_s + float(raw["start"]),
        end_s=offset_s + float(raw["end"]),
        confidence=float(confidence) if confidence is not None else None,
    )


def _is_permanent(exc: BaseException) -> bool:
    """A handshake refusal that retrying cannot fix (bad key, bad parameters)."""
    if isinstance(exc, ConnectionRejected):
        return 400 <= exc.status_code < 500 and exc.status_code not in TRANSIENT_4XX
    return False


def _describe(exc: BaseException) -> str:
    """A short, secret-free reason for an upstream failure (the one error mapping)."""
    if isinstance(exc, ConnectionRejected):
        headers = {name.lower(): value for name, value in exc.headers}
        error = headers.get(b"dg-error", b"").decode("utf-8", "replace")
        return f"handshake rejected: HTTP {exc.status_code}" + (f" ({error})" if error else "")
    if isinstance(exc, (ConnectionTimeout, trio.TooSlowError)):
        return "connect timed out"
    if isinstance(exc, ConnectionClosed):
        if exc.reason is None:
            return "connection closed"
        detail = f": {exc.reason.reason}" if exc.reason.reason else ""
        return f"connection closed {exc.reason.code}{detail}"
    cause = exc.__cause__ if isinstance(exc, HandshakeError) and exc.__cause__ else exc
    return f"connection failed: {type(cause).__name__}: {cause}"
