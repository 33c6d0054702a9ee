"""One ``/v4/listen`` session: a task group that owns everything the session started.

Tasks of a session (all in one nursery; when the session ends, all of them end)::

    receive loop   frames -> decode -> VAD gate -> STT stream        (this is the hot path)
    stt consumer   STT events -> segments -> store (group commit) -> client + realtime hooks
    sender         the bounded outbox -> WebSocket (the only task that writes to the socket)
    timers         "ping" every heartbeat_interval_s; idle_timeout_s without client data -> 1001;
                   conversation timeout -> persist, close durably, wake processing;
                   after a failed segment write, retries it every PERSIST_RETRY_S

Durability: a segment is committed before the client is sent it (the write joins the other
sessions' writes in one group-commit transaction, see ``server.store._group``), so a segment a
client has received survives the server dying the next instant. If the write fails (storage
unavailable), the client still gets the segment and the timers task retries the write; the session's
end writes whatever is still pending (shielded, bounded).

End of a session, whatever the cause (client gone, drain, idle, bad input): stop taking audio
(a drain first takes every frame the client sent before it saw the close frame, see
``_close_then_read_tail``, or on hypercorn's transport those already received, see
``_read_backlog``), flush the STT
stream (bounded), persist every segment (shielded, bounded), send the last segments, close with
the cause's code. The conversation stays resumable; only its timeout (here
or in the sweeper) closes it.

Text frames: JSON objects with a string ``type``. Anything else (not JSON, JSON that fails to
parse, nesting too deep for the parser, not an object) is ignored and counted
(``ignored_text``), as Omi ignores it. With ``custom_stt=enabled`` audio is not transcribed
here: ``{"type": "suggested_transcript", "segments": [{"text", "start", "end", "speaker",
"speaker_id", "is_user", ...}], "stt_provider": ...}`` messages (on-device STT, Omi's shape)
are the transcript, going through the same merge, storage and hooks as STT finals.

Queues: the outbox holds at most OUTBOX_SIZE messages. The session's own producers wait for room
(backpressure reaches the STT stream and then the client's TCP window: nothing is dropped);
events pushed from outside the session (processing, app messages) are dropped when it is full,
and counted.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import trio

from server.clock import wall_now
from server.listen.codecs import AudioDecoder, BadFrameError
from server.listen.conversation import ConversationTracker
from server.listen.hooks import RealtimeHooks
from server.listen.params import ListenParams
from server.listen.vad import GateOutput, VadGate
from server.listen.wire import ClientGone, ListenSocket
from server.stt.base import SttResult, SttStatus, SttStream, Word

__all__ = [
    "SESSION_COUNTERS",
    "CloseCause",
    "FrameBudget",
    "LatencySinks",
    "ListenSession",
    "SessionConfig",
]

LOGGER = logging.getLogger(__name__)

OUTBOX_SIZE: Final = 256
#: Delay between retries of a failed segment write (writes normally happen per final).
PERSIST_RETRY_S: Final = 0.5
LIFECYCLE_TICK_S: Final = 5.0
#: Bound on flushing the STT stream at the end of a session.
STT_FLUSH_S: Final = 3.0
#: Shielded bound on the last segment write of a session.
FINAL_PERSIST_S: Final = 2.0
#: Bound on delivering the last messages before the close frame.
FINAL_SEND_S: Final = 1.0
#: Draining: bound on transcribing the frames already received (see ``_read_backlog``).
BACKLOG_MAX_S: Final = 1.0
KEEPALIVE_MAX_BYTES: Final = 2
#: Each counter a session reports (:meth:`ListenSession.counter_values`, summed server-wide by
#: the registry; zeros before any session ran) and the attribute it is read from.
_COUNTER_SOURCES: Final = {
    "frames": "frames",
    "bytes_in": "bytes_in",
    "keepalives": "keepalives",
    "bad_frames": "bad_frames",
    "segments_sent": "segments_sent",
    "dropped_events": "dropped_events",
    "ignored_text": "ignored_text",
    "suggested_segments": "suggested_segments",
    "tail_frames": "tail_frames",
    "vad_forwarded_bytes": "_gate.forwarded_bytes",
    "vad_skipped_bytes": "_gate.skipped_bytes",
    "persisted_segments": "tracker.persisted_segments",
    "persist_failures": "tracker.persist_failures",
}
#: The counters' names, in the order of :meth:`ListenSession.counter_values`.
SESSION_COUNTERS: Final = tuple(_COUNTER_SOURCES)
#: All of them read in one C call.
_COUNTER_VALUES: Final = operator.attrgetter(*_COUNTER_SOURCES.values())
#: Frame arrival times kept to measure latencies (about a minute of 100 ms frames).
ARRIVALS_KEPT: Final = 600
MAX_TEXT_CHARS: Final = 64 * 1024
#: Segments of one ``suggested_transcript`` message beyond this are ignored.
MAX_SUGGESTED_SEGMENTS: Final = 100
MAX_SEGMENT_TEXT_CHARS: Final = 4000


@dataclass(frozen=True, slots=True)
class CloseCause:
    """Why a session ends: the close code and reason sent to the client."""

    code: int
    reason: str


CLIENT_GONE: Final = CloseCause(1000, "client closed")
DRAINING: Final = CloseCause(1001, "server shutting down")
IDLE: Final = CloseCause(1001, "no data received within the idle timeout")
STALLED: Final = CloseCause(1001, "the client did not read within the idle timeout")
OVER_BUDGET: Final = CloseCause(1008, "frame rate over budget")


@dataclass(frozen=True, slots=True)
class LatencySinks:
    """Where a session reports its latencies (once per STT final, never per frame).

    Attributes:
        stt_final: seconds from the arrival of the last audio frame a final covers to the
            final's arrival from STT.
        frame_to_segment: seconds from that frame's arrival to the segment queued for the client.
    """

    stt_final: Callable[[float], None]
    frame_to_segment: Callable[[float], None]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-session timing knobs (from settings)."""

    heartbeat_interval_s: float
    idle_timeout_s: float
    max_frames_per_s: float = math.inf
    frame_burst: int = 1000


class FrameBudget:
    """A token bucket of frames: ``rate`` per second, at most ``burst`` saved up."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = trio.current_time()

    def take(self) -> bool:
        """Spend one frame; False when the budget is exhausted."""
        now = trio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ListenSession:
    """A live listen session (see the module docstring)."""

    def __init__(
        self,
        *,
        ws: ListenSocket,
        user_id: str,
        params: ListenParams,
        config: SessionConfig,
        decoder: AudioDecoder,
        gate: VadGate,
        tracker: ConversationTracker,
        hooks: RealtimeHooks,
        drain_deadline: Callable[[], float],
        provider_name: str,
        latency: LatencySinks | None = None,
    ) -> None:
        self.session_id = uuid.uuid4().hex
        self.user_id = user_id
        self._ws = ws
        self._params = params
        self._config = config
        self._decoder = decoder
        self._gate = gate
        self.tracker = tracker
        self._hooks = hooks
        self._drain_deadline = drain_deadline
        self._provider_name = provider_name
        self._out_send, self._out_recv = trio.open_memory_channel[str](OUTBOX_SIZE)
        self._receive_scope = trio.CancelScope()
        self._receiving = False  # the receive loop waits for a message (nothing in hand)
        self._consumer_scope = trio.CancelScope()
        self._drained_outbox = trio.Event()
        self._outbox_closed = False
        self._cause: CloseCause | None = None
        self._last_client_data = trio.current_time()
        self._sending_since: float | None = None
        self._budget = FrameBudget(config.max_frames_per_s, config.frame_burst)
        self._audio_origin_wall: float | None = None
        self._latency = latency
        self._bytes_per_s = params.sample_rate * 2
        self._audio_s = 0.0
        #: (session audio seconds at the end of a frame, its arrival on the Trio clock)
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._end_requested = False
        self._conversation_ended = trio.Event()
        self._wake = trio.Event()
        self._retry_at: float | None = None
        self.frames = 0
        self.bytes_in = 0
        self.keepalives = 0
        self.bad_frames = 0
        self.dropped_events = 0
        self.segments_sent = 0
        self.ignored_text = 0
        self.suggested_segments = 0
        self.tail_frames = 0
        self._finals_lock = trio.Lock()

    # -- the registry's view ---------------------------------------------------------------

    def counter_values(self) -> tuple[int, ...]:
        """Cumulative counters of this session, in ``SESSION_COUNTERS`` order (what the
        registry sums: a scrape of ``/v1/stats`` or ``/metrics`` reads every live session)."""
        values: tuple[int, ...] = _COUNTER_VALUES(self)
        return values

    @property
    def conversation_id(self) -> str | None:
        """The conversation currently extended by this session."""
        return self.tracker.conversation_id

    def push_event(self, event: dict[str, object]) -> bool:
        """Queue an event from outside the session; dropped (False) if the outbox is full."""
        try:
            self._out_send.send_nowait(json.dumps(event, separators=(",", ":")))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_events += 1
            return False
        return True

    def request_drain(self) -> None:
        """Stop taking audio, flush, and close 1001."""
        self.end(DRAINING)

    def request_conversation_end(self) -> trio.Event:
        """End the current conversation now, as its timeout would (Omi's ``POST
        /v1/conversations``). The timers task does it; the returned event is set once the
        conversation is closed. Not set if the session ends first (its conversation then stays
        in progress for the caller to close)."""
        self._end_requested = True
        self._wake.set()
        return self._conversation_ended

    def end(self, cause: CloseCause) -> None:
        """Stop the receive loop; the first cause given wins.

        A drain does not cut a message the loop has in hand: it is taken whole (transcribed,
        stored) and the loop stops after it; cancelling there lost a frame or its result.
        Any other cause (idle, stalled, over budget, client gone) cuts it: the session cannot
        go on, and a stalled client may be what the loop waits for.
        """
        if self._cause is None:
            self._cause = cause
        if self._receiving or cause is not DRAINING:
            self._receive_scope.cancel()

    # -- running ------------------------------------------------------------------------------

    async def emit(self, event: dict[str, object]) -> None:
        """Queue an event from inside the session (waits for room: never dropped)."""
        await self._send_text(json.dumps(event, separators=(",", ":")))

    async def _send_text(self, text: str) -> None:
        if self._outbox_closed:  # the session is closing: nothing more goes out
            self.dropped_events += 1
            await trio.lowlevel.checkpoint()
            return
        await self._out_send.send(text)

    async def run(self, stream: SttStream) -> CloseCause:
        """Run the session until it ends; return why. The caller closes the socket."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            nursery.start_soon(self._timers)
            consumer_done = trio.Event()
            nursery.start_soon(self._consume_stt, stream, consumer_done)
            await self._status("ready", "Ready")
            with self._receive_scope:
                await self._receive_loop(stream)
            if self._cause is DRAINING and self._ws.reads_after_close:
                await self._close_then_read_tail(stream)
            elif self._cause is DRAINING:
                await self._read_backlog(stream)
            await self._finish(stream, consumer_done)
            nursery.cancel_scope.cancel()
        return self._cause or CLIENT_GONE

    async def _finish(self, stream: SttStream, consumer_done: trio.Event) -> None:
        flush_by = min(trio.current_time() + STT_FLUSH_S, self._drain_deadline())
        with trio.move_on_at(flush_by):
            await stream.close()
            await consumer_done.wait()
        self._consumer_scope.cancel()
        # The flush's storage call is the cancel point; only a failure before it skips it.
        with trio.CancelScope(shield=True), trio.move_on_after(FINAL_PERSIST_S):  # noqa: ASYNC912
            try:
                await self.tracker.flush()
            except Exception:
                LOGGER.error("session %s: last segment write failed", self.session_id)
        await self._close_outbox()

    async def _close_outbox(self) -> None:
        """Queue nothing more; wait (at most ``FINAL_SEND_S``) until the sender has written
        what is queued, else reset a client that does not read. Idempotent."""
        self._outbox_closed = True
        self._out_send.close()
        if self._ws.closed:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(FINAL_SEND_S) as sending:
            await self._drained_outbox.wait()
        if sending.cancelled_caught and self._sending_since is not None:
            self._ws.abort()  # the client does not read: nothing more can reach it

    async def _close_then_read_tail(self, stream: SttStream) -> None:
        """Draining, on a transport that reads after its close frame: nothing the client sent
        is lost.

        A real-time client streams until it sees the close frame, so frames are in flight
        whenever the server stops reading. Here the queued messages go out, then the close
        frame (1001), then every frame the client sent before it saw it is transcribed, up to
        its own close frame, at most ``BACKLOG_MAX_S`` and never past the drain deadline. The
        segments of that tail are stored but cannot be sent (nothing follows a close frame):
        the client reads them from the conversation, which stays resumable on any node.
        """
        await self._close_outbox()
        await self._ws.close(DRAINING.code, DRAINING.reason)
        until = min(trio.current_time() + BACKLOG_MAX_S, self._drain_deadline())
        with trio.move_on_at(until):
            while (message := await self._ws.receive_after_close()) is not None:
                await self._take(message, stream)
                self.tail_frames += 1

    async def _receive_loop(self, stream: SttStream) -> None:
        """The hot path: one ``receive`` per frame; the rest is sync unless STT gets audio."""
        ws = self._ws
        while True:
            self._receiving = True
            message = await ws.receive()
            self._receiving = False
            if message is None:
                self.end(CLIENT_GONE)
                return
            if not self._budget.take():
                self.end(OVER_BUDGET)
                return
            await self._take(message, stream)
            message = None  # an idle session holds no frame (a 100 ms frame is 3.2 KB)
            if self._cause is not None:  # a drain came while a message was in hand (see end)
                return

    async def _take(  # noqa: ASYNC910 -- the caller's receive checkpoints (hot path)
        self, message: bytes | str, stream: SttStream
    ) -> None:
        self._last_client_data = trio.current_time()
        if isinstance(message, str):
            for result in self._on_text(message):
                await self._on_final(result)
            return  # noqa: ASYNC910 -- see the def
        out = self._on_audio(message)
        if self._params.custom_stt:
            return  # noqa: ASYNC910 -- the client transcribes; audio only feeds hooks
        if out is not None and (out.forward or out.speech_ended):
            await self._feed(out, stream)

    async def _read_backlog(self, stream: SttStream) -> None:
        """Draining: transcribe the frames the server already received for this session.

        The transport holds frames the session has not taken yet (hypercorn queues up to
        ``max_app_queue_size`` of them; the fast transport what its last read carried plus one
        read of what the kernel holds, see ``FastWebSocket.receive_nowait``); cancelling the
        receive loop used to drop them. Only what is held now is taken (waiting for more delays
        the close, and a real-time client sends more meanwhile), at most ``BACKLOG_MAX_S`` and
        never past the drain deadline.
        """
        await trio.lowlevel.checkpoint()
        until = min(trio.current_time() + BACKLOG_MAX_S, self._drain_deadline())
        with trio.move_on_at(until):  # noqa: ASYNC912 -- nothing queued: nothing to wait for
            while not self._ws.closed:
                try:
                    message = self._ws.receive_nowait()
                except trio.WouldBlock:
                    return
                if message is None:
                    return
                await self._take(message, stream)

    def _on_audio(self, frame: bytes) -> GateOutput | None:
        self.bytes_in += len(frame)
        if len(frame) <= KEEPALIVE_MAX_BYTES:
            self.keepalives += 1
            return None
        try:
            pcm = self._decoder.decode(frame)
        except BadFrameError:
            self.bad_frames += 1
            return None
        self.frames += 1
        if not pcm:  # a codec that needs more input (a partial AAC frame)
            return None
        self._audio_s += len(pcm) / self._bytes_per_s
        self._arrivals.append((self._audio_s, self._last_client_data))
        if self._audio_origin_wall is None:
            self._audio_origin_wall = wall_now()
        self._hooks.on_audio(self.user_id, self.session_id, pcm, self._params.sample_rate)
        return self._gate.process(pcm)

    @staticmethod
    async def _feed(out: GateOutput, stream: SttStream) -> None:
        """Send what the gate let through; ``finalize`` at a pause (called only with either)."""
        if out.forward:
            await stream.send_audio(out.forward)
            if out.speech_ended:
                await stream.finalize()
        else:
            await stream.finalize()

    def _on_text(self, text: str) -> list[SttResult]:
        """Parse a text frame; return the results of a ``suggested_transcript`` to add."""
        try:
            message = json.loads(text) if len(text) <= MAX_TEXT_CHARS else None
        except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.ignored_text += 1
            return []
        if message["type"] == "suggested_transcript" and self._params.custom_stt:
            results = _suggested_results(message)
            self.suggested_segments += len(results)
            return results
        # Other Omi control messages (image chunks, speaker assignment, ...) are accepted and
        # ignored: this server has no image or speaker-profile pipeline.
        return []

    async def _consume_stt(self, stream: SttStream, done: trio.Event) -> None:
        with self._consumer_scope:
            try:
                async for event in stream.events():
                    if isinstance(event, SttStatus):
                        await self._on_stt_status(event)
                    elif event.is_final and event.text.strip():
                        await self._on_final(event)
            finally:
                done.set()

    async def _on_stt_status(self, status: SttStatus) -> None:
        if status.degraded:
            await self._status("stt_degraded", f"Transcription interrupted: {status.reason}"[:200])
        else:
            await self._status("ready", "Ready")

    async def _on_final(self, result: SttResult) -> None:
        """One final result (STT or suggested): merge, send, and hand its piece to the hooks.

        Serialised: the STT consumer and the receive loop (suggested transcripts) both call it.
        """
        async with self._finals_lock:
            if self._audio_origin_wall is None:
                self._audio_origin_wall = wall_now()
            origin = self._audio_origin_wall
            if self._params.custom_stt:
                mapped = result  # client times: no VAD gate in between
            else:
                mapped = _map_times(result, self._gate.to_session_s)
            arrived = None if self._params.custom_stt else self._arrival_of(mapped.end_s)
            if arrived is not None and self._latency is not None:
                self._latency.stt_final(trio.current_time() - arrived)
            update = await self.tracker.add_final(mapped, origin)
            await self._persist()  # before the client sees it (see the module docstring)
            if update.removed:  # a merge moved text out of these: clients drop them (Omi)
                await self.emit({"type": "segments_deleted", "segment_ids": update.removed})
            if update.updated:
                payload = [segment.to_json() for segment in update.updated]
                self.segments_sent += len(payload)
                await self._send_text(json.dumps(payload, separators=(",", ":")))
                if arrived is not None and self._latency is not None:
                    self._latency.frame_to_segment(trio.current_time() - arrived)
            if update.piece is not None:
                conversation_id = self.tracker.conversation_id
                piece = [update.piece.to_json()]
                self._hooks.on_segments(self.user_id, self.session_id, conversation_id, piece)

    def _arrival_of(self, end_s: float) -> float | None:
        """When the frame holding session second ``end_s`` arrived. Finals come in order, so
        older frames are dropped as they are passed (amortised O(1) per final)."""
        arrivals = self._arrivals
        while len(arrivals) > 1 and arrivals[0][0] < end_s - 1e-6:
            arrivals.popleft()
        return arrivals[0][1] if arrivals else None

    async def _status(self, status: str, text: str) -> None:
        await self.emit({"type": "service_status", "status": status, "status_text": text})

    async def _sender(self) -> None:
        """The only writer of the socket. After the client is gone it keeps draining the
        outbox (discarding) so that no producer waits for room that will never come."""
        try:
            async for text in self._out_recv:
                if self._ws.closed:
                    continue
                self._sending_since = trio.current_time()
                try:
                    await self._ws.send_text(text)
                except ClientGone:
                    self.end(CLIENT_GONE)
                finally:
                    self._sending_since = None
        finally:
            self._drained_outbox.set()

    def push_event_text(self, text: str) -> None:
        """Queue a bare text frame (the Omi heartbeat "ping"); skipped if the outbox is full."""
        try:
            self._out_send.send_nowait(text)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_events += 1

    async def _timers(self) -> None:
        """Every timer of the session in one task (a sleeping task costs ~3 KiB per session):
        the heartbeat and idle check, the conversation's timeout (and ends requested from
        outside), and retries of a failed segment write. Wakes at the earliest of them, or
        when ``_wake`` is set (an end request, a failed write)."""
        await trio.lowlevel.checkpoint()
        beat_s = min(self._config.heartbeat_interval_s, self._config.idle_timeout_s)
        next_beat = trio.current_time() + beat_s
        while True:
            now = trio.current_time()
            if now >= next_beat:
                if not self._beat(now):
                    return
                next_beat = now + beat_s
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                await self._persist()
            conversation_wait_s = self._conversation_wait_s()
            if conversation_wait_s <= 0:
                await self._roll_over()
                continue
            wake_at = min(next_beat, now + conversation_wait_s)
            if self._retry_at is not None:
                wake_at = min(wake_at, self._retry_at)
            with trio.move_on_at(wake_at):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()

    def _beat(self, now: float) -> bool:
        """Ping, or end the session (False) if the client sent nothing, or read nothing,
        for ``idle_timeout_s`` (a write-side stall counts as idle)."""
        idle_s = self._config.idle_timeout_s
        if now - self._last_client_data >= idle_s:
            self.end(IDLE)
            return False
        if self._sending_since is not None and now - self._sending_since >= idle_s:
            self.end(STALLED)
            return False
        self.push_event_text("ping")
        return True

    def _conversation_wait_s(self) -> float:
        """Seconds until the conversation must end (0: now), at most ``LIFECYCLE_TICK_S`` (the
        deadline is wall time and moves with speech)."""
        if self._end_requested:
            return 0.0
        deadline = self.tracker.deadline_wall()
        if deadline is None:
            return LIFECYCLE_TICK_S
        return max(0.0, min(deadline - wall_now(), LIFECYCLE_TICK_S))

    async def _roll_over(self) -> None:
        ended, requested = self._conversation_ended, self._end_requested
        if requested:
            self._end_requested, self._conversation_ended = False, trio.Event()
        await self.tracker.roll_over(wall_now())
        if requested:
            ended.set()

    async def _persist(self) -> None:
        """Write the pending segments now; on failure keep them and schedule a retry."""
        try:
            await self.tracker.flush()
        except Exception:  # kept pending (logged by the tracker): retried by ``_timers``
            await trio.lowlevel.checkpoint()
            if self._retry_at is None:
                self._retry_at = trio.current_time() + PERSIST_RETRY_S
                self._wake.set()


def _map_times(result: SttResult, to_session_s: Callable[[float], float]) -> SttResult:
    words = tuple(
        Word(w.text, to_session_s(w.start_s), to_session_s(w.end_s), w.confidence)
        for w in result.words
    )
    return replace(
        result, start_s=to_session_s(result.start_s), end_s=to_session_s(result.end_s), words=words
    )


def _suggested_results(message: dict[str, object]) -> list[SttResult]:
    """The segments of a ``suggested_transcript`` message as final results (Omi's shape:
    ``{"segments": [{"text", "start", "end", "speaker", "speaker_id", ...}], "stt_provider"}``).

    Lenient like Omi: a segment without usable text is skipped, missing times are 0, the
    speaker comes from ``speaker_id`` or ``SPEAKER_nn``.
    """
    segments = message.get("segments")
    provider = message.get("stt_provider")
    if not isinstance(segments, list):
        return []
    results: list[SttResult] = []
    for raw in segments[:MAX_SUGGESTED_SEGMENTS]:
        if not isinstance(raw, dict):
            continue
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        start, end = _seconds(raw.get("start")), _seconds(raw.get("end"))
        results.append(
            SttResult(
                text=text.strip()[:MAX_SEGMENT_TEXT_CHARS],
                start_s=start,
                end_s=max(start, end),
                is_final=True,
                speaker=_speaker(raw),
                provider=provider if isinstance(provider, str) else "",
            )
        )
    return results


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def _speaker(raw: dict[str, object]) -> int:
    speaker_id = raw.get("speaker_id")
    if isinstance(speaker_id, int) and not isinstance(speaker_id, bool) and 0 <= speaker_id < 100:
        return speaker_id
    speaker = raw.get("speaker")
    if isinstance(speaker, str):
        _, _, number = speaker.partition("_")
        if number.isdecimal() and int(number) < 100:
            return int(number)
    return 0
