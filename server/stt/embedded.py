"""Offline STT with pocketsphinx in worker processes, as an :class:`~server.stt.base.SttProvider`.

pocketsphinx holds the GIL for all its CPU work, so decoding runs in a :class:`lanes.ProcessLane`
(``workers`` processes x ``streams_per_worker`` pinned sessions); the event loop only moves
bytes. Worker-side behaviour (decoder pool, endpointing, interims, word times, resampling) is
described in :mod:`server.stt._sphinx_worker`. Ownership::

    open_embedded_stt(...)              the server's root owns it; closing stops the workers
    └── ProcessLane "stt-embedded"      worker processes, each with a pool of decoders
        └── open_stream()               one pinned session (one decoder) per stream

Decisions:

- **Capacity.** ``open_stream`` raises :class:`SttCapacityError` at once when every session slot
  is taken (the listen session closes 1013), :class:`SttUnavailableError` for an unsupported
  sample rate (outside 8-48 kHz) or a language other than English (``en``, ``en-*``, ``multi``:
  the shipped model is en-US only), or when the lane is closed or the worker fails to open it.
- **Audio path.** :meth:`EmbeddedStream.send_audio` sends at most ``MAX_CALL_S`` of audio per
  worker call and awaits its results (interims/finals), which keeps per-stream order and puts
  backpressure on the sender instead of queueing audio. Events go through a channel of
  ``EVENT_BUFFER``; when it is full ``send_audio`` waits (nothing is dropped).
- **Worker crash.** The stream reports ``SttStatus(degraded=True, reason="worker crashed")`` and
  drops (and counts) audio until a new session opens on a live worker (tried by ``send_audio``
  at most every ``RECOVER_INTERVAL_S``; it waits while the replacement worker starts); then it reports ``degraded=False`` and shifts the new session's times by the
  audio already sent, so stream times stay aligned. An utterance in progress is lost.
- **Close.** ``close()`` flushes: the last partial frame is decoded and the utterance ends, its
  final is delivered, then :meth:`EmbeddedStream.events` ends. Leaving ``open_stream`` without
  ``close()`` ends ``events()`` without a flush; the decoder goes back to its worker's pool.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from lanes import (
    LaneClosedError,
    LaneError,
    LaneFullError,
    ProcessLane,
    ProcessSession,
    WorkerCrashedError,
    open_process_lane,
)
from server.stt.base import (
    StatisticsMapping,
    SttCapacityError,
    SttEvent,
    SttResult,
    SttStatus,
    SttUnavailableError,
)

__all__ = [
    "EmbeddedStream",
    "EmbeddedSttProvider",
    "EmbeddedSttStatistics",
    "open_embedded_stt",
]

LOGGER = logging.getLogger(__name__)

PROVIDER_NAME: Final = "embedded"
LANE_NAME: Final = "stt-embedded"
FACTORY: Final = "server.stt._sphinx_worker:SphinxSession"
EVENT_BUFFER: Final = 32
BYTES_PER_SAMPLE: Final = 2
#: Most audio handed to a worker in one call (a longer send_audio is split).
MAX_CALL_S: Final = 0.5
#: While degraded, how often send_audio tries to open a new session.
RECOVER_INTERVAL_S: Final = 1.0
MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000
ENGLISH_ONLY_NOTE: Final = "the embedded model is English (en-US) only"


@dataclass(frozen=True, slots=True)
class EmbeddedSttStatistics(StatisticsMapping):
    """Provider and lane counters; also a read-only mapping, as :class:`SttProvider` asks."""

    streams_open: int
    streams_opened: int
    streams_refused: int
    streams_degraded: int
    finals: int
    interims: int
    audio_s: float
    dropped_audio_s: float
    decoders_reused: int
    decoders_created: int
    workers: int
    workers_alive: int
    capacity: int
    worker_crashes: int
    worker_restarts: int
    worker_pids: tuple[int | None, ...]
    call_p50_s: float
    call_p99_s: float


@dataclass(slots=True)
class _Counters:
    streams_open: int = 0
    streams_opened: int = 0
    streams_refused: int = 0
    streams_degraded: int = 0
    finals: int = 0
    interims: int = 0
    audio_s: float = 0.0
    dropped_audio_s: float = 0.0
    decoders_reused: int = 0
    decoders_created: int = 0


class EmbeddedSttProvider:
    """Opens :class:`EmbeddedStream` s on a process lane (made by :func:`open_embedded_stt`)."""

    name = PROVIDER_NAME

    def __init__(self, lane: ProcessLane, streams_per_worker: int) -> None:
        self._lane = lane
        self._pool_limit = streams_per_worker
        self._counters = _Counters()

    @asynccontextmanager
    async def open_stream(
        self, *, sample_rate: int, language: str
    ) -> AsyncIterator[EmbeddedStream]:
        """Open a stream on a free decoder slot; see the module docstring for the errors."""
        _check_request(sample_rate, language)
        stream = EmbeddedStream(self, sample_rate)
        async with stream._owned():
            await stream._open_session()
            self._counters.streams_open += 1
            self._counters.streams_opened += 1
            try:
                yield stream
            finally:
                self._counters.streams_open -= 1

    async def _new_session(
        self, stack: AsyncExitStack, sample_rate: int
    ) -> tuple[ProcessSession, bool]:
        """Open a worker session in ``stack``; return it and whether its decoder was pooled."""
        try:
            session = await stack.enter_async_context(
                self._lane.open_session(sample_rate, self._pool_limit)
            )
            info: dict[str, Any] = await session.call("info")
        except LaneFullError as exc:
            self._counters.streams_refused += 1
            raise SttCapacityError(f"embedded STT is full: {exc}") from exc
        except LaneClosedError as exc:
            raise SttUnavailableError("embedded STT is shut down") from exc
        except LaneError as exc:
            raise SttUnavailableError(f"embedded STT failed to open a stream: {exc}") from exc
        reused = bool(info["reused_decoder"])
        if reused:
            self._counters.decoders_reused += 1
        else:
            self._counters.decoders_created += 1
        return session, reused

    def statistics(self) -> EmbeddedSttStatistics:
        """A snapshot of the provider's and its lane's counters."""
        lane = self._lane.statistics()
        return EmbeddedSttStatistics(
            **dataclasses.asdict(self._counters),
            workers=lane.workers,
            workers_alive=lane.workers_alive,
            capacity=lane.capacity,
            worker_crashes=lane.crashes,
            worker_restarts=lane.restarts,
            worker_pids=lane.worker_pids,
            call_p50_s=lane.call_p50_s,
            call_p99_s=lane.call_p99_s,
        )


def _check_request(sample_rate: int, language: str) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise SttUnavailableError(
            f"embedded STT takes {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz audio, got {sample_rate}"
        )
    primary = language.lower().replace("_", "-").split("-")[0]
    if primary not in ("en", "multi"):
        raise SttUnavailableError(f"language {language!r} not supported: {ENGLISH_ONLY_NOTE}")


class EmbeddedStream:
    """One embedded stream (see :class:`~server.stt.base.SttStream` and the module docstring)."""

    def __init__(self, provider: EmbeddedSttProvider, sample_rate: int) -> None:
        self._provider = provider
        self._counters = provider._counters
        self._sample_rate = sample_rate
        self._bytes_per_s = sample_rate * BYTES_PER_SAMPLE
        self._call_bytes = int(MAX_CALL_S * sample_rate) * BYTES_PER_SAMPLE
        self._session: ProcessSession | None = None
        self._session_stack = AsyncExitStack()
        self._offset_s = 0.0  # stream time at which the current session started
        self._next_recovery = 0.0
        self._sent_bytes = 0
        self._closing = False
        self.reused_decoder = False
        self._events_send, self._events_receive = trio.open_memory_channel[SttEvent](EVENT_BUFFER)

    @property
    def degraded(self) -> bool:
        """True while the stream has no live worker session."""
        return self._session is None

    async def send_audio(self, pcm16: bytes) -> None:
        """Decode audio in the stream's worker; delivers the results it produced."""
        if self._closing:
            raise trio.ClosedResourceError("the stream is closing")
        await trio.lowlevel.checkpoint()
        for begin in range(0, len(pcm16), self._call_bytes):
            piece = pcm16[begin : begin + self._call_bytes]
            if self._session is None and trio.current_time() >= self._next_recovery:
                self._next_recovery = trio.current_time() + RECOVER_INTERVAL_S
                await self._recover()
            self._counters.audio_s += len(piece) / self._bytes_per_s
            await self._deliver(await self._call("feed", piece, dropped=len(piece)))
            self._sent_bytes += len(piece)

    async def finalize(self) -> None:
        """End the current utterance now: its final result is delivered before this returns."""
        if not self._closing:
            await self._deliver(await self._call("finalize"))
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Flush (decode the rest, deliver the last final), then end :meth:`events`."""
        if not self._closing:
            self._closing = True
            await self._deliver(await self._call("flush"))
            self._events_send.close()
        await trio.lowlevel.checkpoint()

    def events(self) -> trio.MemoryReceiveChannel[SttEvent]:
        """Results and status changes in order; ends after :meth:`close`."""
        return self._events_receive

    # -- sessions ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _owned(self) -> AsyncIterator[None]:
        """Own the stream's current session; on exit close it and end :meth:`events`."""
        try:
            yield
        finally:
            self._events_send.close()
            # Bounded: the lane's session close is shielded with its own deadline
            # (lanes._process.SESSION_CLOSE_GRACE_S); an outer bound could not cut it shorter.
            with trio.CancelScope(shield=True):
                await self._session_stack.aclose()

    async def _open_session(self) -> None:
        self._session_stack = AsyncExitStack()
        session, reused = await self._provider._new_session(self._session_stack, self._sample_rate)
        self._session = session
        self.reused_decoder = reused
        self._offset_s = self._sent_bytes / self._bytes_per_s

    async def _recover(self) -> None:
        """Try a new session after a worker crash; report recovery if it opened."""
        with trio.CancelScope(shield=True):  # bounded by the lane (see _owned)
            await self._session_stack.aclose()
        try:
            await self._open_session()
        except (SttCapacityError, SttUnavailableError) as exc:
            LOGGER.info("embedded stream still degraded: %s", exc)
            return
        await self._events_send.send(SttStatus(False, "recovered", {"offset_s": self._offset_s}))

    async def _call(self, method: str, *args: object, dropped: int = 0) -> list[SttResult]:
        """Call the session; on a worker failure go degraded and return no results."""
        session = self._session
        if session is None:
            self._counters.dropped_audio_s += dropped / self._bytes_per_s
            await trio.lowlevel.checkpoint()
            return []
        try:
            results: list[SttResult] = await session.call(method, *args)
        except LaneError as exc:
            self._counters.dropped_audio_s += dropped / self._bytes_per_s
            await self._degrade(exc)
            return []
        return results

    async def _degrade(self, exc: LaneError) -> None:
        self._session = None
        self._counters.streams_degraded += 1
        reason = "worker crashed" if isinstance(exc, WorkerCrashedError) else f"worker error: {exc}"
        LOGGER.warning("embedded stream degraded: %s", exc)
        await self._events_send.send(SttStatus(True, reason))

    async def _deliver(self, results: list[SttResult]) -> None:  # noqa: ASYNC910 -- _call checkpoints
        for result in results:
            if result.is_final:
                self._counters.finals += 1
            else:
                self._counters.interims += 1
            await self._events_send.send(_shifted(result, self._offset_s))


def _shifted(result: SttResult, offset_s: float) -> SttResult:
    """``result`` with its times moved by ``offset_s`` (a session opened mid-stream)."""
    if not offset_s:
        return result
    words = tuple(
        dataclasses.replace(w, start_s=w.start_s + offset_s, end_s=w.end_s + offset_s)
        for w in result.words
    )
    return dataclasses.replace(
        result, start_s=result.start_s + offset_s, end_s=result.end_s + offset_s, words=words
    )


@asynccontextmanager
async def open_embedded_stt(
    *, workers: int = 2, streams_per_worker: int = 3
) -> AsyncIterator[EmbeddedSttProvider]:
    """Start the decoder worker processes; yield the provider; stop the workers on exit.

    Args:
        workers: worker processes (about one per core; each decoder holds the GIL).
        streams_per_worker: streams (and pooled decoders, ~90 MiB each) per worker.
    """
    async with open_process_lane(
        LANE_NAME, factory=FACTORY, workers=workers, sessions_per_worker=streams_per_worker
    ) as lane:
        yield EmbeddedSttProvider(lane, streams_per_worker)
