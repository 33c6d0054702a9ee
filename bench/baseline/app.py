"""Omi's asyncio ``/v4/listen`` core (PR #6377 era), re-created as a fair benchmark peer.

FastAPI on uvicorn, one event loop. Every piece follows shared/research/omi-realtime.md (the
README next to this file maps each piece to its section and lists the deliberate choices):

* ``WS /v4/listen``: ``Authorization: Bearer`` checked in a dependency that raises
  ``WebSocketException(1008)`` (§1.1); per-session tasks started with ``asyncio.create_task``
  and joined with one ``asyncio.gather``, coordinated by a ``websocket_active`` flag (§1.5).
* The fake STT is the one trioscribe uses (server/stt/fake.py): one final per second of PCM16,
  text ``f"seg{index} {zlib.crc32(chunk):08x}"``; audio reaches it in 30 ms STT chunks (§1.7).
* Webhooks go through ONE shared ``httpx.AsyncClient`` (30 s read / 2 s connect, 64/16
  connections), a 64-slot ``asyncio.Semaphore`` and a per-URL consecutive-failure breaker
  (5 failures -> open 30 s, one half-open probe), including the PR-era quirk that any HTTP
  response counts as a success (§4.3, §4.4).
* Blocking work: ``ThreadPoolExecutor(4, "storage")`` does real sqlite3 reads and writes,
  ``ThreadPoolExecutor(8, "critical")`` the conversation summary (§5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import statistics
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request, WebSocket, WebSocketException
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

__all__ = [
    "BaselineSettings",
    "CircuitBreaker",
    "FakeStt",
    "Storage",
    "app_from_env",
    "create_app",
    "tokens_to_uids",
]

log = logging.getLogger("bench.baseline")

# -- documented numbers (omi-realtime.md) -------------------------------------------------------
HEARTBEAT_INTERVAL_S: Final = 10.0  # §1.4 / §1.5
INACTIVITY_TIMEOUT_S: Final = 90.0  # §1.5
TRANSCRIPT_TICK_S: Final = 0.6  # §1.5 stream_transcript_process
LIFECYCLE_TICK_S: Final = 5.0  # §1.5 conversation_lifecycle_manager
USAGE_TICK_S: Final = 60.0  # §1.5 _record_usage_periodically
PENDING_DELAY_S: Final = 7.0  # §1.5 process_pending_conversations
SEGMENT_BUFFER_MAX: Final = 1000  # §1.5 deque(maxlen=1000)
STT_CHUNK_S: Final = 0.03  # §1.5 30 ms STT buffer
MIN_CONVERSATION_TIMEOUT_S: Final = 120.0  # §1.2
FOUR_HOURS_S: Final = 4 * 3600.0  # §1.2 conversation_timeout=-1
WEBHOOK_READ_TIMEOUT_S: Final = 30.0  # §4.3 (15 -> 30 in review)
WEBHOOK_CONNECT_TIMEOUT_S: Final = 2.0  # §4.3
WEBHOOK_MAX_CONNECTIONS: Final = 64  # §4.3
WEBHOOK_MAX_KEEPALIVE: Final = 16  # §4.3
WEBHOOK_SEMAPHORE: Final = 64  # §4.3
BREAKER_FAILURES: Final = 5  # §4.4
BREAKER_RECOVERY_S: Final = 30.0  # §4.4
BREAKER_HALF_OPEN_PROBES: Final = 1  # §4.4
CRITICAL_WORKERS: Final = 8  # §5 (4 -> 8)
STORAGE_WORKERS: Final = 4  # §5 (2 -> 4)
MERGE_GAP_S: Final = 3.0  # §2.1 combine_segments
LONG_SEGMENT_CHARS: Final = 125  # §2.1
# -- bench bookkeeping, not part of the re-created design ---------------------------------------
MAX_WEBHOOKS_PER_USER: Final = 20  # same limit as trioscribe's /v1/webhooks
LOOP_LAG_INTERVAL_S: Final = 0.1
LOOP_LAG_WINDOW: Final = 600  # samples kept: the last minute
WEBHOOK_KINDS: Final = frozenset({"realtime_transcript", "memory_created"})
PCM_CODECS: Final = frozenset({"pcm8", "pcm16"})

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BaselineSettings:
    """What a baseline process is configured with (``python -m bench.baseline --help``)."""

    tokens: Mapping[str, str]  # bearer token -> uid
    db_path: str
    min_conversation_timeout_s: float = MIN_CONVERSATION_TIMEOUT_S
    on_started: Callable[[], None] | None = None


def tokens_to_uids(tokens: list[str]) -> dict[str, str]:
    """Give each accepted bearer token a stable uid."""
    return {t: "uid-" + hashlib.sha256(t.encode()).hexdigest()[:12] for t in tokens}


# -- circuit breaker (§4.4, PR-era behaviour on purpose) ----------------------------------------
class CircuitBreaker:
    """Consecutive-failure breaker: closed -> open (5 failures) -> half_open after 30 s.

    Faithful to the PR: no lock (one loop), reading ``state`` moves open -> half_open and resets
    the in-flight count, and a probe cancelled between allow and record stays in flight.
    """

    def __init__(self) -> None:
        self._state = "closed"
        self.failures = 0
        self._last_failure = 0.0
        self._in_flight = 0

    @property
    def state(self) -> str:
        """The state, moving open -> half_open once the recovery time has passed."""
        if self._state == "open" and time.monotonic() - self._last_failure >= BREAKER_RECOVERY_S:
            self._state = "half_open"
            self._in_flight = 0
        return self._state

    def allow_request(self) -> bool:
        """Whether a request may go out now (a half-open breaker admits one probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._in_flight < BREAKER_HALF_OPEN_PROBES:
            self._in_flight += 1
            return True
        return False

    def record_success(self) -> None:
        """Close the breaker."""
        self.failures = 0
        self._in_flight = 0
        self._state = "closed"

    def record_failure(self) -> None:
        """Count a failure; open at the threshold (or on a failed probe)."""
        self.failures += 1
        self._last_failure = time.monotonic()
        if self._state == "half_open" or self.failures >= BREAKER_FAILURES:
            self._state = "open"


def breaker_key(url: str) -> str:
    """Scheme + host + path: every user of one endpoint shares its breaker (§4.4)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# -- fake STT (server/stt/fake.py semantics) ----------------------------------------------------
class FakeStt:
    """One final per ``sample_rate * 2`` bytes: ``f"seg{index} {crc32(chunk):08x}"``."""

    def __init__(self, sample_rate: int, on_segments: Callable[[list[dict[str, Any]]], None]):
        self._bytes_per_s = sample_rate * 2
        self._chunk_bytes = max(2, self._bytes_per_s // 2 * 2)
        self._pending = bytearray()
        self._start_bytes = 0
        self._index = 0
        self._on_segments = on_segments

    def send(self, pcm16: bytes) -> None:
        """Take audio (like the Deepgram socket's ``send``); emits completed seconds."""
        view = memoryview(pcm16)
        while view:
            room = self._chunk_bytes - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if len(self._pending) >= self._chunk_bytes:
                self._emit()

    def finish(self) -> None:
        """Flush the pending partial chunk as a final (like Deepgram's Finalize)."""
        if self._pending:
            self._emit()

    def _emit(self) -> None:
        chunk = bytes(self._pending)
        start = self._start_bytes / self._bytes_per_s
        end = start + len(chunk) / self._bytes_per_s
        text = f"seg{self._index} {zlib.crc32(chunk):08x}"
        self._start_bytes += len(chunk)
        self._pending.clear()
        self._index += 1
        # The shape Omi builds from a Deepgram result (§1.7).
        segment = {"speaker": "SPEAKER_00", "start": start, "end": end, "text": text,
                   "is_user": False, "person_id": None}  # fmt: skip
        self._on_segments([segment])


# -- segments (§2.1) ----------------------------------------------------------------------------
def transcript_segment(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A TranscriptSegment dict in Omi's field order (fresh uuid4 id)."""
    speaker = str(raw.get("speaker") or "SPEAKER_00")
    return {
        "id": str(uuid.uuid4()),
        "text": raw["text"],
        "speaker": speaker,
        "speaker_id": int(speaker.split("_")[-1]) if speaker[-1:].isdigit() else 0,
        "is_user": bool(raw.get("is_user")),
        "person_id": raw.get("person_id"),
        "start": float(raw["start"]),
        "end": float(raw["end"]),
        "translations": [],
        "speech_profile_processed": True,
        "stt_provider": None,
    }


def _joins(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    same = a["speaker"] == b["speaker"] or (a["is_user"] and b["is_user"])
    close = b["start"] - a["end"] < MERGE_GAP_S
    text = str(a["text"])
    open_ended = len(text) < LONG_SEGMENT_CHARS or not text.rstrip().endswith((".", "?", "!"))
    return bool(same and close and open_ended and a["stt_provider"] == b["stt_provider"])


def combine_segments(
    existing: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Omi's same-speaker merge: ``(all segments, updated ones, removed ids)`` (no size cap)."""
    segments = [dict(s) for s in existing]
    updated: dict[str, dict[str, Any]] = {}
    for seg in new:
        last = segments[-1] if segments else None
        if last is not None and _joins(last, seg):
            last["text"] = f"{last['text']} {seg['text']}"
            last["end"] = seg["end"]
            updated[last["id"]] = last
        else:
            segments.append(dict(seg))
            updated[seg["id"]] = segments[-1]
    return segments, list(updated.values()), []


# -- storage (sqlite3 behind the storage executor; Firestore documents in Omi) ------------------
class Storage:
    """Conversation documents in sqlite: the whole segment list is rewritten per batch."""

    def __init__(self, db_path: str) -> None:
        self._path = db_path
        self._local = threading.local()
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                "CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, uid TEXT,"
                " status TEXT, created_at REAL, started_at REAL, finished_at REAL,"
                " segments TEXT, structured TEXT, source TEXT, language TEXT);"
                "CREATE INDEX IF NOT EXISTS conv_uid ON conversations(uid, status);"
                "CREATE TABLE IF NOT EXISTS usage (uid TEXT, at REAL, seconds REAL, words INT);"
            )
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30.0, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def create_conversation(self, conv: Mapping[str, Any]) -> None:
        """Insert a new in-progress conversation stub."""
        with self._db() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?,?,?,?,?,?,?,?,?,?)",
                (conv["id"], conv["uid"], conv["status"], conv["created_at"], conv["started_at"],
                 conv["finished_at"], "[]", "{}", conv["source"], conv["language"]),
            )  # fmt: skip

    def get_conversation(self, conv_id: str) -> dict[str, Any] | None:
        """One conversation document, segments decoded."""
        row = (
            self._db()
            .execute(
                "SELECT id, uid, status, created_at, started_at, finished_at, segments,"
                " structured, source, language FROM conversations WHERE id=?",
                (conv_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        keys = ("id", "uid", "status", "created_at", "started_at", "finished_at",
                "transcript_segments", "structured", "source", "language")  # fmt: skip
        conv = dict(zip(keys, row, strict=True))
        conv["transcript_segments"] = json.loads(conv["transcript_segments"])
        conv["structured"] = json.loads(conv["structured"])
        return conv

    def update_segments(
        self, conv_id: str, segments: list[dict[str, Any]], started_at: float, finished_at: float
    ) -> None:
        """Rewrite the segment list and the times (Omi: update_conversation_segments + times)."""
        with self._db() as db:
            db.execute(
                "UPDATE conversations SET segments=?, started_at=?, finished_at=? WHERE id=?",
                (json.dumps(segments), started_at, finished_at, conv_id),
            )

    def set_status(self, conv_id: str, status: str, structured: Mapping[str, Any] | None) -> None:
        """Change the status (and the structured summary when given)."""
        with self._db() as db:
            if structured is None:
                db.execute("UPDATE conversations SET status=? WHERE id=?", (status, conv_id))
            else:
                db.execute(
                    "UPDATE conversations SET status=?, structured=? WHERE id=?",
                    (status, json.dumps(structured), conv_id),
                )

    def delete_conversation(self, conv_id: str) -> None:
        """Delete an empty conversation (§1.6 step 4)."""
        with self._db() as db:
            db.execute("DELETE FROM conversations WHERE id=?", (conv_id,))

    def processing_conversations(self, uid: str) -> list[str]:
        """Ids of the uid's conversations left in ``processing``."""
        rows = self._db().execute(
            "SELECT id FROM conversations WHERE uid=? AND status='processing'", (uid,)
        )
        return [r[0] for r in rows.fetchall()]

    def record_usage(self, uid: str, seconds: float, words: int) -> None:
        """One usage row (Omi: record_usage)."""
        with self._db() as db:
            db.execute("INSERT INTO usage VALUES (?,?,?,?)", (uid, time.time(), seconds, words))

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()


def summarise(conv: Mapping[str, Any]) -> dict[str, Any]:
    """A cheap Structured summary (stands in for the LLM step of process_conversation)."""
    words = " ".join(s["text"] for s in conv["transcript_segments"]).split()
    return {
        "title": " ".join(words[:6]),
        "overview": f"{len(words)} words in {len(conv['transcript_segments'])} segments",
        "emoji": "🧠",
        "category": "other",
        "action_items": [],
        "events": [],
    }


# -- shared services (module singletons in Omi; owned by the lifespan here) ---------------------
@dataclass(slots=True)
class WebhookCounters:
    """Delivery outcomes since start."""

    attempted: int = 0
    responded: int = 0
    non_2xx: int = 0
    failed: int = 0
    skipped_open: int = 0


@dataclass(slots=True)
class LoopLag:
    """Event-loop lag samples (bench instrumentation, comparable to trioscribe's loop_lag)."""

    samples: deque[float] = field(default_factory=lambda: deque(maxlen=LOOP_LAG_WINDOW))
    count: int = 0

    async def run(self) -> None:
        """Sleep a fixed interval and record how late the loop woke up."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            self.samples.append(max(0.0, loop.time() - before - LOOP_LAG_INTERVAL_S))
            self.count += 1

    def snapshot(self) -> dict[str, float]:
        """p50/p99/max of the recent window, in seconds."""
        data = sorted(self.samples)
        if not data:
            return {"interval_s": LOOP_LAG_INTERVAL_S, "samples": 0, "p50_s": 0.0,
                    "p99_s": 0.0, "max_s": 0.0}  # fmt: skip
        return {
            "interval_s": LOOP_LAG_INTERVAL_S,
            "samples": self.count,
            "p50_s": statistics.median(data),
            "p99_s": data[min(len(data) - 1, int(len(data) * 0.99))],
            "max_s": data[-1],
        }


@dataclass(slots=True)
class Services:
    """Everything the sessions share."""

    settings: BaselineSettings
    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    storage: Storage
    storage_executor: ThreadPoolExecutor
    critical_executor: ThreadPoolExecutor
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    webhooks: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    counters: WebhookCounters = field(default_factory=WebhookCounters)
    lag: LoopLag = field(default_factory=LoopLag)
    sessions_open: int = 0
    sessions_total: int = 0
    segments_sent: int = 0
    bg_tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def run(self, executor: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        """``loop.run_in_executor`` (§5 rule: named pools, never ad-hoc threads)."""
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def breaker(self, url: str) -> CircuitBreaker:
        """The breaker of ``url``'s endpoint (registry unbounded, as in the PR)."""
        return self.breakers.setdefault(breaker_key(url), CircuitBreaker())

    def urls(self, uid: str, kind: str) -> list[str]:
        """The uid's registered URLs of one kind."""
        return [url for _id, url in self.webhooks.get((uid, kind), [])]


async def post_webhook(services: Services, url: str, payload: Mapping[str, Any]) -> None:
    """One delivery: breaker gate, semaphore, shared client; any response is a success (§4.4)."""
    cb = services.breaker(url)
    counters = services.counters
    if not cb.allow_request():
        counters.skipped_open += 1
        return
    counters.attempted += 1
    try:
        async with services.semaphore:
            response = await services.client.post(url, json=payload)
        counters.responded += 1
        if response.status_code >= 300:
            counters.non_2xx += 1
        cb.record_success()  # quirk (a): even a 5xx closes the breaker
    except Exception as exc:
        counters.failed += 1
        cb.record_failure()
        log.debug("webhook %s failed: %r", url, exc)


async def trigger_realtime(services: Services, uid: str, segments: list[dict[str, Any]]) -> None:
    """Realtime transcript fan-out: ``asyncio.gather`` over the uid's endpoints (§4.2)."""
    payload = {"session_id": uid, "segments": segments}
    urls = services.urls(uid, "realtime_transcript")
    await asyncio.gather(*(post_webhook(services, f"{u}?uid={uid}", payload) for u in urls))


async def trigger_memory_created(services: Services, uid: str, conv: Mapping[str, Any]) -> None:
    """``memory_created`` fan-out with the conversation dict (§4.1)."""
    urls = services.urls(uid, "memory_created")
    await asyncio.gather(*(post_webhook(services, f"{u}?uid={uid}", conv) for u in urls))


# -- one /v4/listen session (§1.5: create_task + gather, flag-polled loops) ---------------------
@dataclass(frozen=True, slots=True)
class ListenParams:
    """The query parameters the baseline honours (§1.2)."""

    language: str
    sample_rate: int
    codec: str
    channels: int
    conversation_timeout: int
    source: str | None


def conversation_timeout_s(requested: int, minimum: float) -> float:
    """-1 -> 4 h; below the minimum -> the minimum; no upper clamp (§1.2)."""
    value = FOUR_HOURS_S if requested == -1 else float(requested)
    return max(value, minimum)


class ListenSession:
    """The state of one session and its concurrent tasks (closures in Omi, methods here)."""

    def __init__(self, ws: WebSocket, uid: str, params: ListenParams, services: Services) -> None:
        self.ws = ws
        self.uid = uid
        self.p = params
        self.s = services
        self.session_id = str(uuid.uuid4())
        self.websocket_active = True
        self.websocket_close_code = 1001
        self.segment_buffer: deque[dict[str, Any]] = deque(maxlen=SEGMENT_BUFFER_MAX)
        self.timeout_s = conversation_timeout_s(
            params.conversation_timeout, services.settings.min_conversation_timeout_s
        )
        self.conversation_id: str | None = None
        self.first_audio_ts: float | None = None
        self.last_activity_ts: float | None = None
        self.words_since_usage = 0
        self.stt = FakeStt(params.sample_rate, self.segment_buffer.extend)

    async def send_event(self, event: dict[str, Any]) -> bool:
        """``_asend_message_event``: JSON object with ``type``; False once the socket is gone."""
        if not self.websocket_active:
            return False
        try:
            await self.ws.send_json(event)
            return True
        except WebSocketDisconnect:
            self.websocket_active = False
        except Exception as exc:
            log.debug("cannot send event: %r", exc)
        return False

    def spawn_event(self, event: dict[str, Any]) -> None:
        """``_send_message_event``: fire-and-forget send."""
        if self.websocket_active:
            task = asyncio.create_task(self.send_event(event))
            self.s.bg_tasks.add(task)
            task.add_done_callback(self.s.bg_tasks.discard)

    async def create_conversation(self) -> None:
        """A new in-progress stub (§1.6 step 1)."""
        now = time.time()
        conv: dict[str, Any] = {"id": str(uuid.uuid4()), "uid": self.uid, "status": "in_progress",
                "created_at": now, "started_at": now, "finished_at": now,
                "source": self.p.source or "omi", "language": self.p.language}  # fmt: skip
        await self.s.run(self.s.storage_executor, self.s.storage.create_conversation, conv)
        self.conversation_id = conv["id"]

    # -- tasks --------------------------------------------------------------------------------
    async def send_heartbeat(self) -> None:
        """Text "ping" every 10 s; flags the session inactive after 90 s without messages."""
        try:
            while self.websocket_active:
                if self.ws.client_state != WebSocketState.CONNECTED:
                    break
                await self.ws.send_text("ping")
                idle = self.last_activity_ts and time.time() - self.last_activity_ts
                if idle and idle > INACTIVITY_TIMEOUT_S:
                    self.websocket_close_code = 1001
                    self.websocket_active = False
                    break
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        except WebSocketDisconnect:
            pass
        except Exception as exc:
            log.debug("heartbeat error: %r", exc)
            self.websocket_close_code = 1011
        finally:
            self.websocket_active = False

    async def receive_data(self) -> None:
        """Frames -> 30 ms STT buffer -> fake STT; text frames are parsed and ignored."""
        now = time.time()
        self.last_activity_ts = now
        stt_buffer = bytearray()
        flush_size = int(self.p.sample_rate * 2 * STT_CHUNK_S)
        try:
            while self.websocket_active:
                message = await self.ws.receive()
                self.last_activity_ts = time.time()
                if message.get("type") == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is not None:
                    if len(data) <= 2:  # keepalive
                        continue
                    if self.first_audio_ts is None:
                        self.first_audio_ts = self.last_activity_ts
                    stt_buffer.extend(data)
                    if len(stt_buffer) >= flush_size:
                        self.stt.send(bytes(stt_buffer))
                        stt_buffer.clear()
                elif message.get("text") is not None:
                    self._handle_text(str(message["text"]))
        except WebSocketDisconnect:
            pass
        except Exception as exc:
            log.debug("could not process data: %r", exc)
            self.websocket_close_code = 1011
        finally:
            if stt_buffer:
                self.stt.send(bytes(stt_buffer))
            self.stt.finish()
            self.websocket_active = False

    def _handle_text(self, text: str) -> None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            log.debug("non-json text message")
            return
        if isinstance(data, dict):
            log.debug("text message type %s ignored by the baseline", data.get("type"))

    async def stream_transcript_process(self) -> None:
        """Every 0.6 s: drain, shift, merge, store, send, then await realtime integrations."""
        while self.websocket_active or self.segment_buffer:
            await asyncio.sleep(TRANSCRIPT_TICK_S)
            if not self.segment_buffer or self.conversation_id is None:
                continue
            raw = list(self.segment_buffer)
            self.segment_buffer.clear()
            await self._process_batch(raw)

    async def _process_batch(self, raw: list[dict[str, Any]]) -> None:
        s = self.s
        conv = await s.run(s.storage_executor, s.storage.get_conversation, self.conversation_id)
        if conv is None or self.first_audio_ts is None:
            return
        if not conv["transcript_segments"]:
            conv["started_at"] = self.first_audio_ts + raw[0]["start"]
        offset = self.first_audio_ts - conv["started_at"]
        new = [transcript_segment({**r, "start": r["start"] + offset, "end": r["end"] + offset})
               for r in raw]  # fmt: skip
        self.words_since_usage += sum(len(seg["text"].split()) for seg in new)
        batch, _, _ = combine_segments([], new)
        merged, updated, _removed = combine_segments(conv["transcript_segments"], batch)
        await s.run(s.storage_executor, s.storage.update_segments, conv["id"], merged,
                    conv["started_at"], time.time())  # fmt: skip
        await self.ws.send_json(updated)
        s.segments_sent += len(new)
        try:
            await trigger_realtime(s, self.uid, batch)
        except Exception as exc:
            log.debug("realtime integrations failed: %r", exc)

    async def conversation_lifecycle_manager(self) -> None:
        """Every 5 s: process the conversation once it has been silent for the timeout."""
        while self.websocket_active:
            await asyncio.sleep(LIFECYCLE_TICK_S)
            if self.conversation_id is None:
                continue
            s = self.s
            conv = await s.run(s.storage_executor, s.storage.get_conversation, self.conversation_id)
            if conv is None or conv["status"] != "in_progress":
                await self.create_conversation()
                continue
            if time.time() - conv["finished_at"] >= self.timeout_s:
                await self.process_conversation(conv)
                await self.create_conversation()

    async def process_conversation(self, conv: dict[str, Any]) -> None:
        """Empty -> delete; else summary on the critical pool, then memory_created (§1.6)."""
        s = self.s
        if not conv["transcript_segments"]:
            await s.run(s.storage_executor, s.storage.delete_conversation, conv["id"])
            return
        await s.run(s.storage_executor, s.storage.set_status, conv["id"], "processing", None)
        conv["status"] = "processing"
        self.spawn_event({"type": "memory_processing_started", "memory": conv, "messages": []})
        structured = await s.run(s.critical_executor, summarise, conv)
        await s.run(s.storage_executor, s.storage.set_status, conv["id"], "completed", structured)
        conv.update(status="completed", structured=structured)
        self.spawn_event({"type": "memory_created", "memory": conv, "messages": []})
        await trigger_memory_created(s, self.uid, conv)

    async def record_usage_periodically(self) -> None:
        """Every 60 s: one usage row."""
        last = time.time()
        while self.websocket_active:
            await asyncio.sleep(USAGE_TICK_S)
            if not self.websocket_active:
                break
            now, words = time.time(), self.words_since_usage
            self.words_since_usage = 0
            s = self.s
            await s.run(s.storage_executor, s.storage.record_usage, self.uid, now - last, words)
            last = now

    async def process_pending_conversations(self) -> None:
        """Once, after 7 s: look up the uid's ``processing`` conversations (no pusher here)."""
        await asyncio.sleep(PENDING_DELAY_S)
        s = self.s
        pending = await s.run(s.storage_executor, s.storage.processing_conversations, self.uid)
        log.debug("%d conversations left in processing", len(pending))

    # -- the handler ----------------------------------------------------------------------------
    async def run(self) -> None:
        """``_stream_handler``: start the tasks, gather them, close with the session's code."""
        heartbeat = asyncio.create_task(self.send_heartbeat())
        self.spawn_event({"type": "service_status", "status": "initiating",
                          "status_text": "Service Starting"})  # fmt: skip
        try:
            await self.create_conversation()
            tasks = [
                asyncio.create_task(self.receive_data()),
                asyncio.create_task(self.stream_transcript_process()),
                heartbeat,
                asyncio.create_task(self.record_usage_periodically()),
                asyncio.create_task(self.conversation_lifecycle_manager()),
                asyncio.create_task(self.process_pending_conversations()),
            ]
            self.spawn_event({"type": "service_status", "status": "ready"})
            await asyncio.gather(*tasks)
        except Exception as exc:
            log.debug("error during websocket operation: %r", exc)
        finally:
            self.websocket_active = False
            if self.ws.client_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=self.websocket_close_code)


# -- the app ------------------------------------------------------------------------------------
def _bearer_uid(authorization: str | None, tokens: Mapping[str, str]) -> str | None:
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return tokens.get(authorization.removeprefix("Bearer ").strip())


def _services(request_or_ws: Request | WebSocket) -> Services:
    services: Services = request_or_ws.app.state.services
    return services


async def ws_uid(websocket: WebSocket) -> str:
    """The auth dependency: ``WebSocketException(1008)`` before accept, as in Omi (§1.1)."""
    header = websocket.headers.get("authorization")
    if not header:
        raise WebSocketException(code=1008, reason="Authorization header not found")
    uid = _bearer_uid(header, _services(websocket).settings.tokens)
    if uid is None:
        raise WebSocketException(code=1008, reason="Invalid authorization token")
    return uid


async def http_uid(request: Request, authorization: str | None = Header(default=None)) -> str:
    """Bearer auth for the HTTP routes (401 otherwise)."""
    uid = _bearer_uid(authorization, _services(request).settings.tokens)
    if uid is None:
        raise HTTPException(status_code=401, detail="invalid token")
    return uid


def _process_stats(services: Services) -> dict[str, Any]:
    rss_kb = 0
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {
        "rss_bytes": rss_kb * 1024,
        "threads": threading.active_count(),
        "asyncio_tasks": len(asyncio.all_tasks()),
        "background_tasks": len(services.bg_tasks),
    }


def _stats(services: Services) -> dict[str, Any]:
    c = services.counters
    states = [b.state for b in services.breakers.values()]
    return {
        "loop_lag": services.lag.snapshot(),
        "process": _process_stats(services),
        "sessions": {"open": services.sessions_open, "total": services.sessions_total,
                     "segments_sent": services.segments_sent},  # fmt: skip
        "webhooks": {
            "attempted": c.attempted, "responded": c.responded, "non_2xx": c.non_2xx,
            "failed": c.failed, "skipped_open": c.skipped_open,
            "breakers": {st: states.count(st) for st in ("closed", "open", "half_open")},
            "semaphore_free": services.semaphore._value,
        },
        "executors": {
            "critical_queued": services.critical_executor._work_queue.qsize(),
            "storage_queued": services.storage_executor._work_queue.qsize(),
        },
    }  # fmt: skip


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: BaselineSettings = app.state.settings
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(WEBHOOK_READ_TIMEOUT_S, connect=WEBHOOK_CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=WEBHOOK_MAX_CONNECTIONS,
                            max_keepalive_connections=WEBHOOK_MAX_KEEPALIVE),
    )  # fmt: skip
    services = Services(
        settings=settings,
        client=client,
        semaphore=asyncio.Semaphore(WEBHOOK_SEMAPHORE),
        storage=Storage(settings.db_path),
        storage_executor=ThreadPoolExecutor(STORAGE_WORKERS, thread_name_prefix="storage"),
        critical_executor=ThreadPoolExecutor(CRITICAL_WORKERS, thread_name_prefix="critical"),
    )
    app.state.services = services
    lag_task = asyncio.create_task(services.lag.run())
    if settings.on_started is not None:
        settings.on_started()
    try:
        yield
    finally:
        lag_task.cancel()
        await client.aclose()  # close_all_clients() on shutdown (§7 fix)
        for executor in (services.critical_executor, services.storage_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        services.storage.close()


def create_app(settings: BaselineSettings) -> FastAPI:
    """The FastAPI app: ``/health``, ``/v1/stats``, ``/v1/webhooks`` and ``WS /v4/listen``."""
    app = FastAPI(lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return _stats(_services(request))

    @app.post("/v1/webhooks", status_code=201)
    async def add_webhook(request: Request, uid: str = Depends(http_uid)) -> JSONResponse:
        body = await request.json()
        kind, url = body.get("kind"), body.get("url")
        if kind not in WEBHOOK_KINDS or not isinstance(url, str):
            raise HTTPException(status_code=422, detail="kind and url are required")
        if urlsplit(url).scheme not in ("http", "https"):
            raise HTTPException(status_code=422, detail="url must be http(s)")
        hooks = _services(request).webhooks.setdefault((uid, kind), [])
        if len(hooks) >= MAX_WEBHOOKS_PER_USER:
            raise HTTPException(status_code=409, detail="too many webhooks")
        hook_id = uuid.uuid4().hex
        hooks.append((hook_id, url))
        return JSONResponse({"id": hook_id, "kind": kind, "url": url}, status_code=201)

    @app.delete("/v1/webhooks/{hook_id}", status_code=204)
    async def delete_webhook(request: Request, hook_id: str, uid: str = Depends(http_uid)) -> None:
        for (owner, _kind), hooks in _services(request).webhooks.items():
            if owner == uid:
                hooks[:] = [h for h in hooks if h[0] != hook_id]

    @app.websocket("/v4/listen")
    async def listen_handler(
        websocket: WebSocket,
        uid: str = Depends(ws_uid),
        language: str = "en",
        sample_rate: int = 8000,
        codec: str = "pcm8",
        channels: int = 1,
        conversation_timeout: int = 120,
        source: str | None = None,
    ) -> None:
        await websocket.accept()
        if codec not in PCM_CODECS or channels != 1:
            await websocket.close(code=1008, reason="not re-created by the baseline")
            return
        params = ListenParams(language, sample_rate, codec, channels, conversation_timeout, source)
        services = _services(websocket)
        services.sessions_open += 1
        services.sessions_total += 1
        try:
            await ListenSession(websocket, uid, params, services).run()
        finally:
            services.sessions_open -= 1

    return app


#: ``--workers N``: what each spawned worker reads its settings from (set by the parent).
ENV_DB: Final = "BASELINE_DB"
ENV_MIN_TIMEOUT_S: Final = "BASELINE_MIN_CONVERSATION_TIMEOUT_S"
ENV_PORT: Final = "BASELINE_LISTEN_PORT"


def app_from_env() -> FastAPI:
    """The app of one ``--workers N`` worker (uvicorn's factory), configured from the
    environment the parent set; prints ``LISTENING <port> pid <pid>`` once started."""
    port = os.environ[ENV_PORT]
    settings = settings_from_env([], os.environ[ENV_DB], float(os.environ[ENV_MIN_TIMEOUT_S]))
    settings = BaselineSettings(
        settings.tokens,
        settings.db_path,
        settings.min_conversation_timeout_s,
        on_started=lambda: print(f"LISTENING {port} pid {os.getpid()}", flush=True),
    )
    return create_app(settings)


def settings_from_env(tokens: list[str], db_path: str, min_timeout_s: float) -> BaselineSettings:
    """Settings from CLI values plus ``BASELINE_TOKENS`` (comma-separated)."""
    env_tokens = [t for t in os.environ.get("BASELINE_TOKENS", "").split(",") if t]
    return BaselineSettings(tokens_to_uids(tokens + env_tokens), db_path, min_timeout_s)
