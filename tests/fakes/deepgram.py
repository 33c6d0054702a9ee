"""A fake Deepgram live server (``/v1/listen``) on trio-websocket, for STT client tests.

It follows the contract in docs/deepgram-live.md:

- Handshake: path ``/v1/listen``; ``Authorization: Token <api_key>`` (else HTTP 401); a known
  ``encoding`` needs a ``sample_rate`` and ``sample_rate`` needs an ``encoding`` (else HTTP 400).
  Rejections carry ``dg-error`` and ``dg-request-id`` headers and a JSON body.
- Transcripts (``encoding=linear16`` only) are derived from the audio, deterministically: every
  250 ms slot of received audio that is *loud* (some ``|sample| > LOUD_THRESHOLD``) is one word,
  ``w1``, ``w2``, ... per connection (or the next word of ``script``). Each new word sends an
  interim Results (``is_final=false``, when ``interim_results=true``); four pending words send a
  final Results (``is_final=true``); a silent slot after words sends a final with
  ``speech_final=true``. ``start``/``duration`` are seconds of audio received on the connection.
- ``{"type":"KeepAlive"}``: no reply, resets the idle timer. ``{"type":"Finalize"}``: a final
  Results with ``from_finalize=true`` covering the buffered audio (sent even when empty).
  ``{"type":"CloseStream"}``: final Results for what is pending -> Metadata -> close 1000.
- ``idle_timeout_s`` (10 s) without any message -> close 1011 with the NET-0001 reason; an empty
  binary frame -> close 1000 ("empty binary frame").

Fault knobs (attributes of :class:`FakeDeepgram`, settable while it runs): ``reject_next`` /
``reject_status`` (refuse the next K handshakes), ``drop_after_bytes`` (one shot: the next
connection to receive that many bytes is closed with 1011), :meth:`FakeDeepgram.drop` (close every
open connection with 1011 now), ``result_delay_s`` (sleep before every Results).

Everything each connection saw and sent is recorded in :attr:`FakeDeepgram.connections`.
"""

from __future__ import annotations

import json
import uuid
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

__all__ = [
    "FAKE_API_KEY",
    "NET0001_REASON",
    "FakeConnection",
    "FakeDeepgram",
    "open_fake_deepgram",
    "serve_fake_deepgram",
]

FAKE_API_KEY: Final = "fake-deepgram-key"
LISTEN_PATH: Final = "/v1/listen"
IDLE_TIMEOUT_S: Final = 10.0
SLOT_S: Final = 0.25
FINAL_WORDS: Final = 4
LOUD_THRESHOLD: Final = 500
WORD_CONFIDENCE: Final = 0.9
NET0001_REASON: Final = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
DROP_REASON: Final = "fake: connection dropped"
ENCODINGS: Final = frozenset(
    {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus",
     "speex", "g729"}
)  # fmt: skip

Message = dict[str, Any]


@dataclass(eq=False)
class FakeConnection:
    """What one connection (or refused handshake) looked like from the server's side."""

    path: str
    query: dict[str, str]
    authorization: str | None
    rejected_status: int | None = None
    bytes_received: int = 0
    audio_frames: int = 0
    empty_frames: int = 0
    controls: list[str] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str = ""
    drop_requested: trio.Event = field(default_factory=trio.Event)

    @property
    def open(self) -> bool:
        """Accepted and not closed yet."""
        return self.rejected_status is None and self.close_code is None

    @property
    def results(self) -> list[Message]:
        """The Results messages sent on this connection."""
        return [message for message in self.sent if message["type"] == "Results"]


class FakeDeepgram:
    """The running fake: where it listens, what it saw, and its fault knobs."""

    def __init__(self, *, api_key: str, idle_timeout_s: float, script: Sequence[str] = ()) -> None:
        self.api_key = api_key
        self.idle_timeout_s = idle_timeout_s
        self.script = tuple(script)
        self.port = 0
        self.connections: list[FakeConnection] = []
        self.reject_next = 0
        self.reject_status = 503
        self.drop_after_bytes: int | None = None
        self.result_delay_s = 0.0
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        """The ``ws://`` URL of the listen endpoint."""
        return f"ws://127.0.0.1:{self.port}{LISTEN_PATH}"

    @property
    def accepted(self) -> list[FakeConnection]:
        """Connections whose handshake was accepted, oldest first."""
        return [conn for conn in self.connections if conn.rejected_status is None]

    def drop(self) -> None:
        """Close every open connection with 1011, as an upstream failure would."""
        for conn in self.connections:
            if conn.open:
                conn.drop_requested.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every recorded change."""
        await trio.lowlevel.checkpoint()
        while not predicate():
            await self._changed.wait()

    def notify(self) -> None:
        """Wake :meth:`wait_for` callers (called after every recorded change)."""
        self._changed.set()
        self._changed = trio.Event()

    def word(self, number: int) -> str:
        """The text of word ``number`` (1-based) on a connection."""
        if self.script:
            return self.script[(number - 1) % len(self.script)]
        return f"w{number}"

    def handshake_error(self, conn: FakeConnection) -> tuple[int, str] | None:
        """Why the handshake of ``conn`` is refused (status, dg-error), or None."""
        if self.reject_next > 0:
            self.reject_next -= 1
            return self.reject_status, "fake: handshake refused on request"
        if conn.path != LISTEN_PATH:
            return 404, f"unknown path {conn.path}"
        if conn.authorization != f"Token {self.api_key}":
            return 401, "Invalid credentials."
        return _params_error(conn.query)


def _params_error(query: dict[str, str]) -> tuple[int, str] | None:
    encoding = query.get("encoding")
    rate = query.get("sample_rate")
    if encoding is not None and encoding not in ENCODINGS:
        return 400, f"unknown encoding {encoding!r}"
    if encoding is not None and not (rate or "").isdigit():
        return 400, "sample_rate is required with encoding"
    if encoding is None and rate is not None:
        return 400, "sample_rate requires encoding"
    if not query.get("channels", "1").isdigit():
        return 400, "channels must be an integer"
    return None


class _Session:
    """Transcribes one accepted connection (see the module docstring for the rules)."""

    def __init__(self, fake: FakeDeepgram, conn: FakeConnection, ws: WebSocketConnection) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        query = conn.query
        channels = int(query.get("channels", "1"))
        rate = int(query.get("sample_rate", "16000"))
        self.bytes_per_s = rate * 2 * channels
        self.frame_bytes = 2 * channels
        self.slot_bytes = round(rate * SLOT_S) * self.frame_bytes
        self.transcribes = query.get("encoding") == "linear16"
        self.interim = query.get("interim_results") == "true"
        self.diarize = query.get("diarize") == "true"
        self.request_id = str(uuid.uuid4())
        self.buffer = bytearray()
        self.pos_s = 0.0
        self.span_start_s = 0.0
        self.pending: list[Message] = []
        self.words = 0
        self.segments = 0
        self.close: tuple[int, str | None] | None = None

    async def run(self) -> None:
        """Serve messages until the session decides to close or the client closes."""
        await trio.lowlevel.checkpoint()
        try:
            while self.close is None:
                with trio.move_on_after(self.fake.idle_timeout_s) as idle:
                    message = await self.ws.get_message()
                if idle.cancelled_caught:
                    self.close = (1011, NET0001_REASON)
                elif isinstance(message, bytes):
                    await self._on_bytes(message)
                else:
                    await self._on_text(message)
        except ConnectionClosed as exc:
            self.conn.close_code = exc.reason.code if exc.reason else 1006
            self.conn.close_reason = exc.reason.reason if exc.reason else None
            self.conn.closed_by = "client"

    async def _on_bytes(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        conn = self.conn
        if not data:
            conn.empty_frames += 1
            self.close = (1000, "empty binary frame")
            return
        conn.bytes_received += len(data)
        conn.audio_frames += 1
        self.fake.notify()
        limit = self.fake.drop_after_bytes
        if limit is not None and conn.bytes_received >= limit:
            self.fake.drop_after_bytes = None
            self.close = (1011, DROP_REASON)
            return
        if not self.transcribes:
            return
        self.buffer += data
        while len(self.buffer) >= self.slot_bytes:
            slot = bytes(self.buffer[: self.slot_bytes])
            del self.buffer[: self.slot_bytes]
            await self._on_slot(slot)

    async def _on_text(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            kind = None
        self.conn.controls.append(kind if isinstance(kind, str) else "invalid")
        self.fake.notify()
        if kind == "Finalize":
            self._flush_buffer()
            await self._final(from_finalize=True)
        elif kind == "CloseStream":
            self._flush_buffer()
            if self.pending:
                await self._final()
            await self._send(self._metadata())
            self.close = (1000, None)
        elif kind != "KeepAlive":
            await self._send({"type": "Error", "variant": "SchemaError", "message": text[:200]})

    async def _on_slot(self, slot: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._take_slot(slot):
            if len(self.pending) >= FINAL_WORDS:
                await self._final()
            elif self.interim:
                await self._send(self._results(is_final=False))
        elif self.pending:
            await self._final(speech_final=True)

    def _take_slot(self, slot: bytes) -> bool:
        """Advance over ``slot``; if it is loud, add a pending word and return True."""
        start_s = self.pos_s
        self.pos_s += len(slot) / self.bytes_per_s
        if not _is_loud(slot):
            return False
        self.words += 1
        word: Message = {
            "word": self.fake.word(self.words),
            "start": round(start_s, 4),
            "end": round(self.pos_s, 4),
            "confidence": WORD_CONFIDENCE,
            "punctuated_word": self.fake.word(self.words),
        }
        if self.diarize:
            word["speaker"] = self.segments % 2
        self.pending.append(word)
        return True

    def _flush_buffer(self) -> None:
        usable = len(self.buffer) - len(self.buffer) % self.frame_bytes
        if self.transcribes and usable:
            self._take_slot(bytes(self.buffer[:usable]))
        self.buffer.clear()

    async def _final(self, *, speech_final: bool = False, from_finalize: bool = False) -> None:
        message = self._results(
            is_final=True, speech_final=speech_final, from_finalize=from_finalize
        )
        self.pending = []
        self.span_start_s = self.pos_s
        self.segments += 1
        await self._send(message)

    def _results(
        self, *, is_final: bool, speech_final: bool = False, from_finalize: bool = False
    ) -> Message:
        words = list(self.pending)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "start": round(self.span_start_s, 4),
            "duration": round(self.pos_s - self.span_start_s, 4),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(word["punctuated_word"] for word in words),
                        "confidence": WORD_CONFIDENCE if words else 0.0,
                        "words": words,
                    }
                ]
            },
            "metadata": {"request_id": self.request_id, "model_info": {"name": "fake"}},
        }

    def _metadata(self) -> Message:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "",
            "created": "1970-01-01T00:00:00.000Z",
            "duration": round(self.pos_s, 4),
            "channels": 1,
        }

    async def _send(self, message: Message) -> None:
        if message["type"] == "Results" and self.fake.result_delay_s > 0:
            await trio.sleep(self.fake.result_delay_s)
        await self.ws.send_message(json.dumps(message))
        self.conn.sent.append(message)
        self.fake.notify()


def _is_loud(pcm: bytes) -> bool:
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    return any(abs(sample) > LOUD_THRESHOLD for sample in samples)


async def _handle(fake: FakeDeepgram, request: WebSocketRequest) -> None:
    split = urlsplit(request.path)
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers
    }
    conn = FakeConnection(
        path=split.path,
        query=dict(parse_qsl(split.query)),
        authorization=headers.get("authorization"),
    )
    fake.connections.append(conn)
    refusal = fake.handshake_error(conn)
    if refusal is not None:
        await _reject(fake, conn, request, *refusal)
        return
    ws = await request.accept()
    fake.notify()
    await _serve_session(_Session(fake, conn, ws))


async def _reject(
    fake: FakeDeepgram, conn: FakeConnection, request: WebSocketRequest, status: int, error: str
) -> None:
    conn.rejected_status = status
    fake.notify()
    body = json.dumps({"err_code": "FAKE", "err_msg": error}).encode()
    headers = [
        (b"dg-error", error.encode()),
        (b"dg-request-id", str(uuid.uuid4()).encode()),
        (b"content-type", b"application/json"),
    ]
    await request.reject(status, extra_headers=headers, body=body)


async def _serve_session(session: _Session) -> None:
    conn = session.conn
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_drop, session, nursery.cancel_scope)
        await session.run()
        nursery.cancel_scope.cancel()
    if session.close is not None and conn.close_code is None:
        conn.close_code, conn.close_reason = session.close
        conn.closed_by = "server"
        await session.ws.aclose(*session.close)
    session.fake.notify()


async def _watch_drop(session: _Session, session_scope: trio.CancelScope) -> None:
    await session.conn.drop_requested.wait()
    session.close = (1011, DROP_REASON)
    session_scope.cancel()


async def serve_fake_deepgram(  # noqa: ASYNC114 -- no project-wide startable list
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = FAKE_API_KEY,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    script: Sequence[str] = (),
    task_status: trio.TaskStatus[FakeDeepgram] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the fake until cancelled; ``task_status.started(fake)`` once it listens."""
    fake = FakeDeepgram(api_key=api_key, idle_timeout_s=idle_timeout_s, script=script)
    async with trio.open_nursery() as handler_nursery:
        server = await handler_nursery.start(
            partial(serve_websocket, partial(_handle, fake), host, port, None,
                    handler_nursery=handler_nursery)
        )  # fmt: skip
        fake.port = server.port
        task_status.started(fake)


@asynccontextmanager
async def open_fake_deepgram(**options: Any) -> AsyncIterator[FakeDeepgram]:
    """Run :func:`serve_fake_deepgram` on a free loopback port for the block's duration."""
    async with trio.open_nursery() as nursery:
        fake: FakeDeepgram = await nursery.start(partial(serve_fake_deepgram, **options))
        yield fake
        nursery.cancel_scope.cancel()
