"""Realtime webhooks (``realtime_transcript``, ``audio_bytes``): best-effort and latest-wins.

:class:`RealtimeDispatcher` is the listen sessions' :class:`~server.listen.hooks.RealtimeHooks`.
Its hook methods are synchronous and O(endpoints of the user): they look the user's endpoints
up in an in-memory cache (refreshed by the API on every registration change, never a database
query per call), add the data to a per-(session, endpoint, kind) stream, and put a wake-up into
that stream's :class:`lanes.LatestSlot`. One consumer task per stream (owned by the
realtime nursery of :mod:`server.compose`) posts through the webhook HTTP lane, so at most one request per stream is
in flight and a slow endpoint only ever delays itself.

What is sent, and what can be lost:

* ``realtime_transcript`` - Omi's semantics (backend/utils/webhooks.py,
  backend/utils/app_integrations.py): body ``{"segments": [...], "session_id": <the user's
  id>}``, where ``segments`` are the transcript pieces **new since this endpoint's last
  delivery**: each final STT result (or suggested transcript segment) is one piece with its own
  id, sent exactly once, so a receiver that appends every post (Omi's mentor plugin) holds each
  spoken word once. (The client's segments, which merge and grow, are not what is posted.)
  **Accumulate, then latest-wins**: pieces collect in the stream's pending set until the
  consumer takes them all in one post; while a post is in flight newer pieces coalesce into the
  next one, and what a post took is never sent again. Lost only if more than
  ``max_pending_segments`` pile up (the oldest are dropped, counted as ``segments_overflow``) or
  the post itself fails (no retry, counted).
* A receiver's reply ``message`` (longer than 5 characters) goes to the user's sessions as an
  ``app_message`` event and is kept for the conversation's ``memory_created.messages``.
* ``audio_bytes`` - PCM16 is buffered per stream until ``interval_s`` seconds are collected,
  then handed to the slot as one chunk; a chunk still waiting when the next one is ready is
  replaced (``audio_chunks_dropped``). Memory per stream is bounded by two chunks.

Nothing here is retried or survives a restart; durable kinds go through the outbox instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, final

import trio

import lanes
from server.clock import wall_now
from server.webhooks.models import Endpoint
from server.webhooks.payloads import (
    OCTET_STREAM,
    append_query,
    attempt_headers,
    chat_message,
    realtime_transcript_body,
    reply_message,
)
from server.webhooks.replies import AppReplies
from server.webhooks.repository import JSON_CONTENT_TYPE
from server.webhooks.signing import new_message_id
from server.webhooks.ssrf import SsrfError

__all__ = ["RealtimeConfig", "RealtimeDispatcher", "RealtimeStatistics"]

LOGGER = logging.getLogger(__name__)

TRANSCRIPT: Final = "realtime_transcript"
AUDIO: Final = "audio_bytes"
BYTES_PER_SAMPLE: Final = 2

EventSink = Callable[[str, dict[str, object]], object]
GoneCallback = Callable[[Endpoint], None]
StreamKey = tuple[str, str, str]  # session id, endpoint id, kind


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """Limits of realtime delivery.

    Attributes:
        timeout_s: the deadline of one post.
        max_pending_segments: segments a transcript stream holds while a post is in flight.
        max_streams: (session, endpoint, kind) streams at once; more are not served.
        max_interval_s: the longest audio interval buffered per stream.
    """

    timeout_s: float = 15.0
    max_pending_segments: int = 500
    max_streams: int = 10_000
    max_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RealtimeStatistics:
    """Counters of realtime delivery.

    Attributes:
        endpoints: realtime endpoints in the cache.
        streams: live (session, endpoint, kind) streams.
        posts: posts attempted.
        sent: posts answered 2xx.
        failed: posts answered otherwise or not at all (never retried).
        timeouts: posts that hit ``timeout_s``.
        breaker_rejections: posts refused by an open circuit (nothing sent).
        shed_full: posts refused by a full per-target bulkhead.
        coalesced: transcript wake-ups merged into a pending post (no data lost).
        segments_overflow: pending segments dropped because the bound was reached.
        audio_chunks_dropped: audio chunks replaced by a newer one before they were sent.
        streams_refused: streams not created because ``max_streams`` were live.
        app_messages: reply messages relayed to users.
    """

    endpoints: int
    streams: int
    posts: int
    sent: int
    failed: int
    timeouts: int
    breaker_rejections: int
    shed_full: int
    coalesced: int
    segments_overflow: int
    audio_chunks_dropped: int
    streams_refused: int
    app_messages: int


@dataclass(eq=False)
class _Stream:
    """One session's feed to one endpoint for one kind."""

    key: StreamKey
    user_id: str
    endpoint: Endpoint
    slot: lanes.LatestSlot[bytes | None]
    pending: dict[str, dict[str, object]] = field(default_factory=dict)
    audio: bytearray = field(default_factory=bytearray)
    sample_rate: int = 16000
    conversation_id: str | None = None

    @property
    def session_id(self) -> str:
        return self.key[0]

    @property
    def kind(self) -> str:
        return self.key[2]


@final
class RealtimeDispatcher:
    """The realtime hooks and their consumers (see the module docstring).

    Args:
        lane: the webhook HTTP lane.
        nursery: owner of the per-stream consumer tasks.
        config: limits.
        on_event: ``on_event(user_id, event)`` relays a receiver's reply ``message``.
        on_gone: called with an endpoint that answered 410 (to disable it durably).
        replies: where replies are kept for the conversation's ``memory_created`` event.
    """

    def __init__(
        self,
        lane: lanes.HttpLane,
        nursery: trio.Nursery,
        config: RealtimeConfig,
        on_event: EventSink,
        on_gone: GoneCallback,
        replies: AppReplies | None = None,
    ) -> None:
        self._replies = replies or AppReplies()
        self._lane = lane
        self._nursery = nursery
        self._config = config
        self._on_event = on_event
        self._on_gone = on_gone
        self._by_user: dict[str, tuple[Endpoint, ...]] = {}
        self._streams: dict[StreamKey, _Stream] = {}
        self._by_session: dict[str, set[StreamKey]] = {}
        self._counts: dict[str, int] = {}

    # -- the endpoint cache --------------------------------------------------------------------

    def load(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the whole cache (at start)."""
        grouped: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            grouped.setdefault(endpoint.user_id, []).append(endpoint)
        for user_id in set(self._by_user) | set(grouped):
            self.set_endpoints(user_id, grouped.get(user_id, []))

    def set_endpoints(self, user_id: str, endpoints: Iterable[Endpoint]) -> None:
        """Replace one user's realtime endpoints; streams of removed ones are closed."""
        usable = tuple(e for e in endpoints if e.enabled and {TRANSCRIPT, AUDIO} & set(e.kinds))
        if usable:
            self._by_user[user_id] = usable
        else:
            self._by_user.pop(user_id, None)
        current = {e.id: e for e in usable}
        for key, stream in list(self._streams.items()):
            if stream.user_id != user_id:
                continue
            endpoint = current.get(key[1])
            if endpoint is None or key[2] not in endpoint.kinds:
                self._close(key)
            else:
                stream.endpoint = endpoint  # new URL, secret or interval apply at once

    # -- RealtimeHooks -------------------------------------------------------------------------

    def on_segments(
        self,
        user_id: str,
        session_id: str,
        conversation_id: str | None,
        segments: list[dict[str, object]],
    ) -> None:
        """Add new transcript pieces to each transcript stream and wake its consumer."""
        for endpoint in self._by_user.get(user_id, ()):
            if TRANSCRIPT not in endpoint.kinds:
                continue
            stream = self._stream(user_id, session_id, endpoint, TRANSCRIPT)
            if stream is None:
                continue
            stream.conversation_id = conversation_id or stream.conversation_id
            for segment in segments:
                stream.pending.pop(str(segment.get("id")), None)
                stream.pending[str(segment.get("id"))] = segment
            while len(stream.pending) > self._config.max_pending_segments:
                del stream.pending[next(iter(stream.pending))]
                self._count("segments_overflow")
            self._offer(stream, None, "coalesced")

    def on_audio(self, user_id: str, session_id: str, pcm16: bytes, sample_rate: int) -> None:
        """Buffer audio per stream; hand over a chunk every ``interval_s`` seconds."""
        for endpoint in self._by_user.get(user_id, ()):
            if AUDIO not in endpoint.kinds:
                continue
            stream = self._stream(user_id, session_id, endpoint, AUDIO)
            if stream is None:
                continue
            stream.sample_rate = sample_rate
            stream.audio += pcm16
            interval_s = min(endpoint.interval_s, self._config.max_interval_s)
            if len(stream.audio) >= int(interval_s * sample_rate) * BYTES_PER_SAMPLE:
                chunk = bytes(stream.audio)
                stream.audio.clear()
                self._offer(stream, chunk, "audio_chunks_dropped")

    def on_session_end(self, user_id: str, session_id: str) -> None:
        """Close the session's streams: what is queued is still sent, then consumers end."""
        for key in self._by_session.pop(session_id, set()):
            self._close(key)

    # -- internals -----------------------------------------------------------------------------

    def _stream(
        self, user_id: str, session_id: str, endpoint: Endpoint, kind: str
    ) -> _Stream | None:
        key = (session_id, endpoint.id, kind)
        stream = self._streams.get(key)
        if stream is not None:
            return stream
        if len(self._streams) >= self._config.max_streams:
            self._count("streams_refused")
            return None
        slot: lanes.LatestSlot[bytes | None] = lanes.LatestSlot(f"{kind}:{endpoint.id}")
        stream = self._streams[key] = _Stream(key, user_id, endpoint, slot)
        self._by_session.setdefault(session_id, set()).add(key)
        lanes.start_latest_consumer(
            self._nursery, slot, lambda item: self._consume(stream, item), name=f"rt:{kind}"
        )
        return stream

    def _offer(self, stream: _Stream, item: bytes | None, replaced_counter: str) -> None:
        if stream.slot.statistics().pending:
            self._count(replaced_counter)
        stream.slot.put_nowait(item)

    def _close(self, key: StreamKey) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            stream.slot.close()
            keys = self._by_session.get(key[0])
            if keys is not None:
                keys.discard(key)

    async def _consume(self, stream: _Stream, item: bytes | None) -> None:
        await trio.lowlevel.checkpoint()
        try:
            if stream.kind == TRANSCRIPT:
                batch = list(stream.pending.values())
                stream.pending.clear()
                if batch:
                    body = realtime_transcript_body(stream.user_id, batch)
                    await self._post(stream, body, JSON_CONTENT_TYPE, {})
            elif item:
                params = {"sample_rate": str(stream.sample_rate)}
                await self._post(stream, item, OCTET_STREAM, params)
        except Exception:  # best-effort: a bug here must not end the stream or the server
            LOGGER.exception("realtime webhook to %s failed unexpectedly", stream.endpoint.id)

    async def _post(
        self, stream: _Stream, body: bytes, content_type: str, params: dict[str, str]
    ) -> None:
        endpoint = stream.endpoint
        now = wall_now()
        headers = attempt_headers(
            endpoint.secrets_at(now), new_message_id(), int(now), body, content_type
        )
        url = append_query(endpoint.url, {**params, "uid": stream.user_id})
        self._count("posts")
        with trio.move_on_after(self._config.timeout_s):
            await trio.lowlevel.checkpoint()
            try:
                response = await self._lane.request("POST", url, content=body, headers=headers)
            except lanes.LaneError as exc:
                self._failed(stream, exc)
                return
            except SsrfError:
                self._count("failed")
                return
            self._count("sent")
            if stream.kind == TRANSCRIPT:
                self._relay(stream, response.body)
            return
        self._count("timeouts")
        self._count("failed")

    def _failed(self, stream: _Stream, exc: lanes.LaneError) -> None:
        if isinstance(exc, lanes.BreakerOpenError):
            self._count("breaker_rejections")
        elif isinstance(exc, lanes.LaneFullError):
            self._count("shed_full")
        else:
            self._count("failed")
        if isinstance(exc, lanes.UpstreamStatusError) and exc.status == 410:
            self.set_endpoints(
                stream.user_id,
                [e for e in self._by_user.get(stream.user_id, ()) if e.id != stream.endpoint.id],
            )
            self._on_gone(stream.endpoint)

    def _relay(self, stream: _Stream, body: bytes) -> None:
        message = reply_message(body)
        if message is None:
            return
        self._count("app_messages")
        endpoint = stream.endpoint
        event: dict[str, object] = {
            "type": "app_message",
            "app_id": endpoint.id,
            "name": endpoint.name,
            "message": message,
        }
        self._on_event(stream.user_id, event)
        if stream.conversation_id is not None:
            self._replies.add(
                stream.conversation_id, chat_message(endpoint.id, message, wall_now())
            )

    def _count(self, name: str) -> None:
        self._counts[name] = self._counts.get(name, 0) + 1

    def close_all(self) -> None:
        """Close every stream (the server run is ending)."""
        for key in list(self._streams):
            self._close(key)
        self._by_session.clear()

    def statistics(self) -> RealtimeStatistics:
        """A snapshot of the counters."""
        c = self._counts.get
        return RealtimeStatistics(
            endpoints=sum(len(endpoints) for endpoints in self._by_user.values()),
            streams=len(self._streams),
            posts=c("posts", 0),
            sent=c("sent", 0),
            failed=c("failed", 0),
            timeouts=c("timeouts", 0),
            breaker_rejections=c("breaker_rejections", 0),
            shed_full=c("shed_full", 0),
            coalesced=c("coalesced", 0),
            segments_overflow=c("segments_overflow", 0),
            audio_chunks_dropped=c("audio_chunks_dropped", 0),
            streams_refused=c("streams_refused", 0),
            app_messages=c("app_messages", 0),
        )
