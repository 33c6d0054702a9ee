"""A deterministic, almost free :class:`~server.stt.base.SttProvider` for tests and benchmarks.

The stream cuts its audio into *chunks* and answers each with one final result whose text is
derived from the chunk's bytes, so a test (or a load generator) can compute every expected
result itself and check ordering and loss::

    text   = f"seg{index} {zlib.crc32(chunk):08x}"        (see fake_text())
    words  = (Word(f"seg{index}", start, mid), Word(f"{crc:08x}", mid, end))
    start  = audio bytes before the chunk / (2 * sample_rate);  end = start + chunk duration

``index`` counts the stream's finals from 0. A chunk ends every ``chunk_ms`` of audio (counted
in bytes: ``sample_rate * 2 * chunk_ms / 1000`` rounded down to whole samples, regardless of how ``send_audio`` splits it),
and at :meth:`FakeStream.finalize` / :meth:`FakeStream.close` if the pending audio is not empty
(an empty chunk yields nothing). With ``interim=True`` a chunk that reaches half its length
first yields ``SttResult(f"seg{index} ...", is_final=False)``.

Failure knobs for pipeline tests: ``fail_after_chunks=N`` makes every stream report
``SttStatus(degraded=True, reason="fake failure")`` after its N-th final and drop (and count)
all later audio; ``open_capacity=K`` makes ``open_stream`` raise :class:`SttCapacityError` while
K streams are open.

Events go through a channel of ``EVENT_BUFFER``; when it is full ``send_audio`` waits
(backpressure, nothing dropped).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import trio

from server.stt.base import (
    StatisticsMapping,
    SttCapacityError,
    SttEvent,
    SttResult,
    SttStatus,
    Word,
)

__all__ = [
    "FakeStream",
    "FakeSttProvider",
    "FakeSttStatistics",
    "fake_result",
    "fake_text",
    "open_fake_stt",
]

PROVIDER_NAME: Final = "fake"
EVENT_BUFFER: Final = 64
BYTES_PER_SAMPLE: Final = 2
DEFAULT_CHUNK_MS: Final = 1000


def fake_text(index: int, chunk: bytes) -> str:
    """The text of the ``index``-th final of a stream whose audio for it was ``chunk``."""
    return f"seg{index} {zlib.crc32(chunk):08x}"


def fake_result(index: int, chunk: bytes, start_s: float, bytes_per_s: int) -> SttResult:
    """The final result for ``chunk`` starting at ``start_s`` stream seconds."""
    end_s = start_s + len(chunk) / bytes_per_s
    mid_s = (start_s + end_s) / 2
    text = fake_text(index, chunk)  # one CRC of the chunk (~8 µs per second of audio)
    label, crc = text.split(" ")
    words = (Word(label, start_s, mid_s, 1.0), Word(crc, mid_s, end_s, 1.0))
    return SttResult(text, start_s, end_s, True, words, provider=PROVIDER_NAME)


@dataclass(frozen=True, slots=True)
class FakeSttStatistics(StatisticsMapping):
    """Provider counters; also readable as a mapping (``/v1/stats``)."""

    streams_open: int
    streams_opened: int
    streams_refused: int
    finals: int
    interims: int
    audio_bytes: int
    dropped_audio_bytes: int


@dataclass(slots=True)
class _Counters:
    streams_open: int = 0
    streams_opened: int = 0
    streams_refused: int = 0
    finals: int = 0
    interims: int = 0
    audio_bytes: int = 0
    dropped_audio_bytes: int = 0


class FakeSttProvider:
    """Opens :class:`FakeStream` s (see the module docstring for the exact results).

    Args:
        chunk_ms: audio per final result (> 0).
        interim: also yield one interim result per chunk, at half its length.
        fail_after_chunks: degrade every stream after this many finals (None: never).
        open_capacity: refuse streams beyond this many open at once (None: no bound).
    """

    name = PROVIDER_NAME

    def __init__(
        self,
        *,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        interim: bool = False,
        fail_after_chunks: int | None = None,
        open_capacity: int | None = None,
    ) -> None:
        if chunk_ms <= 0:
            raise ValueError("chunk_ms must be > 0")
        self._chunk_ms = chunk_ms
        self._interim = interim
        self._fail_after = fail_after_chunks
        self._capacity = open_capacity
        self._counters = _Counters()

    @asynccontextmanager
    async def open_stream(self, *, sample_rate: int, language: str) -> AsyncIterator[FakeStream]:
        """Open a stream; raises :class:`SttCapacityError` beyond ``open_capacity``."""
        await trio.lowlevel.checkpoint()
        c = self._counters
        if self._capacity is not None and c.streams_open >= self._capacity:
            c.streams_refused += 1
            raise SttCapacityError(f"fake STT is full ({c.streams_open} streams open)")
        chunk_bytes = max(2, sample_rate * BYTES_PER_SAMPLE * self._chunk_ms // 1000 // 2 * 2)
        stream = FakeStream(sample_rate, chunk_bytes, self._interim, self._fail_after, c)
        c.streams_open += 1
        c.streams_opened += 1
        try:
            yield stream
        finally:
            c.streams_open -= 1
            stream._abandon()

    def statistics(self) -> FakeSttStatistics:
        """A snapshot of the counters of every stream this provider opened."""
        c = self._counters
        return FakeSttStatistics(
            streams_open=c.streams_open, streams_opened=c.streams_opened,
            streams_refused=c.streams_refused, finals=c.finals, interims=c.interims,
            audio_bytes=c.audio_bytes, dropped_audio_bytes=c.dropped_audio_bytes,
        )  # fmt: skip


class FakeStream:
    """One fake stream (see :class:`~server.stt.base.SttStream` and the module docstring)."""

    def __init__(
        self,
        sample_rate: int,
        chunk_bytes: int,
        interim: bool,
        fail_after: int | None,
        counters: _Counters,
    ) -> None:
        self._bytes_per_s = sample_rate * BYTES_PER_SAMPLE
        self._chunk_bytes = chunk_bytes
        self._interim = interim
        self._fail_after = fail_after
        self._counters = counters
        self._pending = bytearray()
        self._start_bytes = 0  # stream position of the pending chunk
        self._index = 0
        self._interim_sent = False
        self._degraded = False
        self._closing = False
        self._send, self._receive = trio.open_memory_channel[SttEvent](EVENT_BUFFER)

    async def send_audio(self, pcm16: bytes) -> None:
        """Take audio; yields a final for every completed chunk (dropped while degraded)."""
        if self._closing:
            raise trio.ClosedResourceError("the stream is closing")
        self._counters.audio_bytes += len(pcm16)
        if self._degraded:
            self._counters.dropped_audio_bytes += len(pcm16)
            await trio.lowlevel.checkpoint()
            return
        view = memoryview(pcm16)
        pending, chunk_bytes = self._pending, self._chunk_bytes
        while view:
            room = chunk_bytes - len(pending)
            pending += view[:room]
            view = view[room:]
            if len(pending) >= chunk_bytes:
                await self._emit_final()
            elif self._interim and not self._interim_sent and len(pending) * 2 >= chunk_bytes:
                await self._emit_interim()
        # A cancellation point only, as a remote provider's buffered send would be: the
        # session's receive loop has just yielded to read this frame (a full schedule point
        # here was a second trip through Trio's scheduler per frame).
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _emit_interim(self) -> None:
        self._interim_sent = True
        self._counters.interims += 1
        start_s = self._start_bytes / self._bytes_per_s
        end_s = start_s + len(self._pending) / self._bytes_per_s
        text = f"seg{self._index} ..."
        await self._send.send(SttResult(text, start_s, end_s, False, provider=PROVIDER_NAME))

    async def _emit_final(self) -> None:
        chunk = bytes(self._pending)
        start_s = self._start_bytes / self._bytes_per_s
        result = fake_result(self._index, chunk, start_s, self._bytes_per_s)
        self._start_bytes += len(chunk)
        self._pending.clear()
        self._index += 1
        self._interim_sent = False
        self._counters.finals += 1
        await self._send.send(result)
        if self._fail_after is not None and self._index >= self._fail_after:
            self._degraded = True
            await self._send.send(SttStatus(degraded=True, reason="fake failure"))

    async def finalize(self) -> None:
        """End the current chunk now: a final for the pending audio, if there is any."""
        if self._pending and not self._degraded and not self._closing:
            await self._emit_final()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Flush the pending chunk as a final, then end :meth:`events`."""
        if not self._closing:
            await self.finalize()
            self._closing = True
            self._send.close()
        await trio.lowlevel.checkpoint()

    def events(self) -> trio.MemoryReceiveChannel[SttEvent]:
        """Results and status changes in order; ends after :meth:`close`."""
        return self._receive

    def _abandon(self) -> None:
        """Leaving ``open_stream`` without ``close()``: end events without flushing."""
        self._closing = True
        self._send.close()


@asynccontextmanager
async def open_fake_stt(
    *,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    interim: bool = False,
    fail_after_chunks: int | None = None,
    open_capacity: int | None = None,
) -> AsyncIterator[FakeSttProvider]:
    """Yield a :class:`FakeSttProvider` (it owns no resources; the CM mirrors the real ones)."""
    await trio.lowlevel.checkpoint()
    yield FakeSttProvider(
        chunk_ms=chunk_ms,
        interim=interim,
        fail_after_chunks=fail_after_chunks,
        open_capacity=open_capacity,
    )
