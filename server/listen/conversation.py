"""The conversation a listen session extends: resume, append, persist, time out, roll over.

One :class:`ConversationTracker` per session. Final STT results become transcript segments
(:class:`server.listen.segments.SegmentAssembler` applies Omi's merge rules); new or changed
segments are queued for the store, coalesced by segment id (so the queue is bounded by the
conversation's size, never by time), and written by :meth:`ConversationTracker.flush`, which
the session calls after every final (before sending it) and again at its end. When the
conversation's silence timeout passes, it is persisted, closed durably (``processing``, or
deleted if empty) and the processing workers are woken; a new one opens with the next speech.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from server.listen.params import ListenParams
from server.listen.segments import SegmentAssembler, TranscriptSegment
from server.store import Conversation, SegmentRow, Store
from server.stt.base import SttResult, Word

__all__ = ["ConversationTracker", "SegmentUpdate"]

LOGGER = logging.getLogger(__name__)

EventSink = Callable[[dict[str, object]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SegmentUpdate:
    """What one final result changed.

    Attributes:
        updated: the conversation's new or changed segments (for the client and the store).
        removed: ids of segments a merge removed.
        piece: the result itself as a segment of its own (conversation times, its own id):
            what realtime integrations receive, once (Omi posts the batch's new segments, not
            the merged ones). ``None`` for an empty result.
    """

    updated: list[TranscriptSegment]
    removed: list[str]
    piece: TranscriptSegment | None


def _to_row(conversation_id: str, index: int, segment: TranscriptSegment) -> SegmentRow:
    return SegmentRow(
        id=segment.id,
        conversation_id=conversation_id,
        idx=index,
        text=segment.text,
        speaker=segment.speaker,
        speaker_id=segment.speaker_id,
        is_user=segment.is_user,
        person_id=segment.person_id,
        start_s=segment.start,
        end_s=segment.end,
        stt_provider=segment.stt_provider,
    )


class ConversationTracker:
    """The current conversation of one session and its not-yet-persisted segments."""

    def __init__(
        self,
        store: Store,
        user_id: str,
        params: ListenParams,
        *,
        wake_processing: Callable[[], None],
        emit: EventSink,
        conversation_json: Callable[[Conversation], dict[str, object]],
    ) -> None:
        self._store = store
        self._user_id = user_id
        self._params = params
        self._wake_processing = wake_processing
        self._emit = emit
        self._conversation_json = conversation_json
        self.conversation: Conversation | None = None
        self._assembler = SegmentAssembler()
        self._pending: dict[str, TranscriptSegment] = {}
        self._removed: set[str] = set()
        self._last_speech_wall = 0.0
        self._lock = trio.Lock()
        self.persisted_segments = 0
        self.persist_failures = 0

    @property
    def conversation_id(self) -> str | None:
        """The id of the conversation being extended, if one is open."""
        return self.conversation.id if self.conversation is not None else None

    @property
    def timeout_s(self) -> float:
        """Seconds of silence after which the conversation ends."""
        return self._params.conversation_timeout_s

    def deadline_wall(self) -> float | None:
        """Wall time at which the open conversation times out (``None``: none open)."""
        if self.conversation is None:
            return None
        return self._last_speech_wall + self.timeout_s

    async def start(self, now: float) -> None:
        """Resume the user's in-progress conversation, or close it if it expired, or open one."""
        existing = await self._store.get_in_progress(self._user_id)
        if existing is not None:
            last = existing.finished_at or existing.created_at
            if now - last >= existing.timeout_s:
                await self._close(existing, now)
            else:
                await self._resume(existing, last)
                return
        await self._open(now)

    async def _resume(self, conversation: Conversation, last_speech: float) -> None:
        full = await self._store.get_conversation(
            self._user_id, conversation.id, with_segments=True
        )
        self.conversation = full or conversation
        self._last_speech_wall = last_speech
        segments = [TranscriptSegment.from_row(row) for row in (full.segments if full else ())]
        self._assembler = SegmentAssembler(segments)

    async def _open(self, now: float) -> None:
        self.conversation = await self._store.create_conversation(
            self._user_id,
            source=self._params.source,
            language=self._params.language,
            timeout_s=self.timeout_s,
            now=now,
        )
        self._last_speech_wall = now
        self._assembler = SegmentAssembler()

    async def add_final(self, result: SttResult, audio_origin_wall: float) -> SegmentUpdate:
        """Turn a final result into segment updates.

        Args:
            result: a final result with times in *session audio seconds* (the VAD gate's
                skipped silence already mapped back).
            audio_origin_wall: wall time of the session's first audio byte.
        """
        speech_wall = audio_origin_wall + result.start_s
        if self.conversation is None:
            await self._open(speech_wall)
        assert self.conversation is not None
        if self.conversation.started_at is None:
            self.conversation = replace(self.conversation, started_at=speech_wall)
        origin = self.conversation.started_at
        assert origin is not None
        shifted = _shift(result, audio_origin_wall - origin)
        piece = TranscriptSegment.from_result(shifted) if shifted.text.strip() else None
        updated, removed = self._assembler.add_segments([piece]) if piece else ([], [])
        for segment in updated:
            self._pending[segment.id] = segment
        for segment_id in removed:
            self._pending.pop(segment_id, None)
            self._removed.add(segment_id)
        self._last_speech_wall = max(self._last_speech_wall, audio_origin_wall + result.end_s)
        await trio.lowlevel.checkpoint()
        return SegmentUpdate(updated, removed, piece)

    async def flush(self) -> None:
        """Write pending segments in one transaction; on failure keep them for the next try."""
        async with self._lock:
            if self.conversation is None or not (self._pending or self._removed):
                return
            pending, removed = self._pending, self._removed
            self._pending, self._removed = {}, set()
            order = self._assembler.index_of
            rows = [_to_row(self.conversation.id, order(s.id), s) for s in pending.values()]
            try:
                await self._store.save_segments(
                    self.conversation.id, rows, sorted(removed), self._last_speech_wall
                )
            except Exception:
                self.persist_failures += 1
                LOGGER.warning("segment write failed; will retry", exc_info=True)
                pending.update(self._pending)
                self._pending, self._removed = pending, removed | self._removed
                raise
            self.persisted_segments += len(rows)

    async def roll_over(self, now: float) -> None:
        """The conversation timed out: persist, close it durably, and start a fresh one later."""
        if self.conversation is None:
            await trio.lowlevel.checkpoint()
            return
        await self.flush()
        conversation, self.conversation = self.conversation, None
        self._assembler = SegmentAssembler()
        await self._close(conversation, now)

    async def _close(self, conversation: Conversation, now: float) -> None:
        # Read it *before* closing: once closed, a processing worker (or another node) may
        # complete it before a read-back; the event reports the transition to ``processing``.
        current = await self._store.get_conversation(self._user_id, conversation.id)
        outcome = await self._store.close_conversation(conversation.id, now)
        if outcome != "processing":
            return
        self._wake_processing()
        if current is not None:
            memory = self._conversation_json(
                replace(current, status="processing", updated_at=max(current.updated_at, now))
            )
            await self._emit(
                {"type": "memory_processing_started", "memory": memory, "messages": []}
            )


def _shift(result: SttResult, offset_s: float) -> SttResult:
    words = tuple(
        Word(w.text, w.start_s + offset_s, w.end_s + offset_s, w.confidence) for w in result.words
    )
    return replace(
        result, start_s=result.start_s + offset_s, end_s=result.end_s + offset_s, words=words
    )
