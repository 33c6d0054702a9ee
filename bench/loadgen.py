"""A ``/v4/listen`` load generator: N real-time PCM16 sessions against a loopback server.

Each session opens the WebSocket with ``Authorization: Bearer``, streams one frame every
``frame_ms`` on an absolute trio-clock schedule (no drift), and reads what comes back. The
server is expected to run the ``fake`` STT (server/stt/fake.py), so every second ``k`` of audio
has a known transcript token ``f"seg{k} {zlib.crc32(second):08x}"``; the audio is deterministic
pseudo-random per (seed, session, second), so tokens also differ between sessions.

Per session: latency of index ``k`` = first arrival of ``seg{k}`` (segments may be merged, so a
text can carry several tokens) - send time of the last frame of second ``k``. After the audio,
a bounded grace (``grace_s``) waits for the rest; indices sent but never seen are *lost*;
indices first seen after a higher one are *reordered*; tokens whose crc differs are
*mismatched*. Optionally the server process is sampled (RSS, threads, CPU from ``/proc``) and
a stats URL is polled (``loop_lag``).

Bounds: every run is cut at ``max_total_s``; only loopback hosts are accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import re
import sys
import time
import wave
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError

from bench._stats import LatencySummary, summarise
from bench.fastload import run_raw_sessions

__all__ = [
    "LoadConfig",
    "LoadResult",
    "NotLoopbackError",
    "ServerSample",
    "SessionSummary",
    "check_loopback",
    "expected_token",
    "find_max_sessions",
    "format_table",
    "main_listen",
    "run_listen_load",
]

SEG_TOKEN: Final = re.compile(r"\bseg(\d+) ([0-9a-f]{8})\b")
PCM_CODECS: Final = frozenset({"pcm8", "pcm16"})
CLIENTS: Final = frozenset({"raw", "trio-websocket"})
#: A frame sent later than this behind its schedule counts as late (the generator is saturated).
LATE_FRAME_S: Final = 0.05
#: Spreads fixture start offsets between sessions (a prime number of samples).
FIXTURE_SESSION_STRIDE_SAMPLES: Final = 7919
DISCONNECT_TIMEOUT_S: Final = 5.0
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
DEFAULT_STEPS: Final = (10, 25, 50, 100, 200, 400, 800)
#: Worker processes stop this much before the parent's bound, so their reports still arrive.
WORKER_MARGIN_S: Final = 3.0


class NotLoopbackError(ValueError):
    """A URL's host is not a loopback address; the load generator never leaves the machine."""


def check_loopback(url: str) -> None:
    """Raise :class:`NotLoopbackError` unless ``url``'s host is 127.0.0.0/8, ::1 or localhost."""
    host = urlsplit(url).hostname
    if host is None:
        raise NotLoopbackError(f"no host in {url!r}")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopbackError(f"refusing a non-loopback host: {host!r}")


def expected_token(index: int, second: bytes) -> str:
    """The fake STT's text for the ``index``-th second of a stream."""
    return f"seg{index} {zlib.crc32(second):08x}"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load run. Times are seconds; ``duration_s`` is whole seconds of audio per session.

    Attributes:
        url: ``ws://`` URL of ``/v4/listen`` (query parameters are added from the fields).
        tokens: bearer tokens; session ``i`` uses ``tokens[i % len(tokens)]``.
        ramp_s: session starts are spread evenly over this time.
        fixture: a WAV (mono, 16-bit, ``sample_rate``) or raw PCM16 file, looped; each session
            starts at a different offset. None: deterministic pseudo-random audio.
        grace_s: after the audio, how long to wait for the missing segments.
        hold_s: after the grace, keep the connection open (idle) this long, e.g. to see
            ``memory_created`` events.
        max_total_s: hard bound of the whole run; a cut run is marked ``truncated``.
        server_pid: sample this process's RSS, threads and CPU from /proc.
        stats_url: poll this loopback JSON endpoint (``loop_lag`` is extracted).
        processes: spread the sessions over this many worker processes (1: this process).
        client: ``raw`` (default: pre-encoded frames from one ticker, ``bench.fastload``) or
            ``trio-websocket`` (one connection object and task per session, the old driver).
    """

    url: str
    tokens: tuple[str, ...]
    sessions: int = 10
    ramp_s: float = 1.0
    duration_s: int = 10
    frame_ms: int = 100
    sample_rate: int = 16000
    codec: str = "pcm16"
    language: str = "en"
    fixture: Path | None = None
    seed: int = 0
    grace_s: float = 3.0
    hold_s: float = 0.0
    max_total_s: float = 120.0
    connect_timeout_s: float = 10.0
    server_pid: int | None = None
    stats_url: str | None = None
    stats_token: str | None = None
    sample_interval_s: float = 1.0
    extra_query: tuple[tuple[str, str], ...] = ()
    processes: int = 1
    client: str = "raw"

    def __post_init__(self) -> None:
        check_loopback(self.url)
        if self.stats_url is not None:
            check_loopback(self.stats_url)
        if self.sessions < 1 or not self.tokens or self.duration_s < 1:
            raise ValueError("need sessions >= 1, duration_s >= 1 and at least one token")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {sorted(CLIENTS)}")
        if self.codec not in PCM_CODECS:
            raise ValueError(f"codec must be one of {sorted(PCM_CODECS)}")
        if 1000 % self.frame_ms or self.bytes_per_second * self.frame_ms % 1000:
            raise ValueError("frame_ms must divide one second into whole samples")

    @property
    def bytes_per_second(self) -> int:
        """PCM16 mono bytes per second of audio."""
        return self.sample_rate * 2

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame."""
        return self.bytes_per_second * self.frame_ms // 1000

    def session_url(self) -> str:
        """``url`` with the listen query parameters."""
        parts = urlsplit(self.url)
        query = {"language": self.language, "sample_rate": str(self.sample_rate),
                 "codec": self.codec, "channels": "1", **dict(self.extra_query)}  # fmt: skip
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# -- audio --------------------------------------------------------------------------------------
def load_fixture(path: Path, sample_rate: int) -> bytes:
    """PCM16 mono bytes of a WAV or raw file (a WAV must match ``sample_rate``)."""
    if path.suffix.lower() != ".wav":
        return path.read_bytes()
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sample_rate):
            raise ValueError(f"{path}: need mono 16-bit {sample_rate} Hz")
        return wav.readframes(wav.getnframes())


class AudioSource:
    """The audio of one session, one second at a time (nothing is generated ahead)."""

    def __init__(self, config: LoadConfig, session: int, fixture: bytes | None) -> None:
        self._bps = config.bytes_per_second
        self._seed = f"{config.seed}:{session}"
        self._fixture = fixture
        self._offset = 0
        if fixture:
            self._offset = session * FIXTURE_SESSION_STRIDE_SAMPLES * 2 % len(fixture)

    def second(self, k: int) -> bytes:
        """Exactly one second of PCM16 audio: second ``k`` of this session."""
        if not self._fixture:
            return random.Random(f"{self._seed}:{k}").randbytes(self._bps)
        start = (self._offset + k * self._bps) % len(self._fixture)
        repeats = math.ceil((start + self._bps) / len(self._fixture))
        return (self._fixture * (repeats + 1))[start : start + self._bps]


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
        """Record one ``seg{index} {crc}`` token."""
        if index in self.first_seen:
            return
        self.first_seen[index] = now
        want = self.expected.get(index)
        if want is None:
            self.unexpected += 1
        elif want != f"seg{index} {crc}":
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


def _handle_text(rec: SessionRecord, text: str, now: float) -> None:
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
                _handle_text(rec, message, trio.current_time())
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


async def _run_session(
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


# -- server sampling ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerSample:
    """The server process over the run (from /proc)."""

    rss_max_bytes: int
    rss_end_bytes: int
    threads_max: int
    cpu_s: float
    cpu_percent: float


def read_proc(pid: int) -> tuple[int, int, float]:
    """``(rss_bytes, threads, cpu_seconds)`` of a process (procfs reads never block)."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as status:  # procfs is in memory
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, threads, (int(fields[11]) + int(fields[12])) / ticks


@dataclass(slots=True)
class _Sampler:
    config: LoadConfig
    samples: list[tuple[int, int, float]] = field(default_factory=list)
    started_at: float = 0.0
    stats: dict[str, Any] | None = None
    lag_p99_max_s: float = 0.0
    lag_max_s: float = 0.0

    async def run(self) -> None:
        """Sample until cancelled."""
        self.started_at = trio.current_time()
        headers = {"authorization": f"Bearer {self.config.stats_token}"}
        async with httpx.AsyncClient(headers=headers if self.config.stats_token else None) as http:
            while True:
                self._sample_proc()
                await self._poll_stats(http)
                await trio.sleep(self.config.sample_interval_s)

    def _sample_proc(self) -> None:
        if self.config.server_pid is None:
            return
        try:
            self.samples.append(read_proc(self.config.server_pid))
        except (OSError, ValueError, IndexError):
            pass  # the process ended: keep what we have

    async def _poll_stats(self, http: httpx.AsyncClient) -> None:
        await trio.lowlevel.checkpoint()
        if self.config.stats_url is None:
            return
        try:
            response = await http.get(self.config.stats_url, timeout=5.0)
            self.stats = response.json()
        except (httpx.HTTPError, ValueError):
            return
        lag = self.stats.get("loop_lag") if isinstance(self.stats, dict) else None
        if isinstance(lag, dict):
            self.lag_p99_max_s = max(self.lag_p99_max_s, float(lag.get("p99_s", 0.0)))
            self.lag_max_s = max(self.lag_max_s, float(lag.get("max_s", 0.0)))

    def summary(self, wall_s: float) -> ServerSample | None:
        """RSS/threads/CPU over the run, or None without a pid."""
        self._sample_proc()
        if len(self.samples) < 2:
            return None
        cpu_s = self.samples[-1][2] - self.samples[0][2]
        return ServerSample(
            rss_max_bytes=max(s[0] for s in self.samples),
            rss_end_bytes=self.samples[-1][0],
            threads_max=max(s[1] for s in self.samples),
            cpu_s=cpu_s,
            cpu_percent=100.0 * cpu_s / wall_s if wall_s > 0 else 0.0,
        )


# -- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadResult:
    """The outcome of one run (``to_json()`` for files; ``format_table`` for people)."""

    sessions: int
    connected: int
    succeeded: int
    failed: Mapping[str, int]
    latency: LatencySummary
    segments_expected: int
    segments_received: int
    lost: int
    reordered: int
    mismatched: int
    unexpected: int
    frames_sent: int
    frame_rate_per_session: float
    send_lag_max_s: float
    late_frames: int
    events: Mapping[str, int]
    wall_s: float
    truncated: bool
    server: ServerSample | None
    loop_lag_p99_max_s: float | None
    loop_lag_max_s: float | None
    stats: Mapping[str, Any] | None
    #: CPU seconds the generator itself used (all its processes): compare with ``server.cpu_s``.
    generator_cpu_s: float = 0.0
    #: token text ("segN crc") -> send time of its last frame, to join webhook deliveries.
    token_sent_at: Mapping[str, float] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (without ``token_sent_at``)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.pop("token_sent_at")
        data["latency"] = self.latency.to_json()
        data["server"] = asdict(self.server) if self.server else None
        data["failed"] = dict(self.failed)
        data["events"] = dict(self.events)
        return data


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What one session contributes to a :class:`LoadResult` (JSON-able, for workers)."""

    index: int
    connected: bool
    error: str | None
    latencies: tuple[float, ...]
    expected: int
    received: int
    lost: int
    reordered: int
    mismatched: int
    unexpected: int
    frames_sent: int
    stream_s: float
    send_lag_max_s: float
    late_frames: int
    events: Mapping[str, int]

    @classmethod
    def of(cls, rec: SessionRecord) -> SessionSummary:
        """Summarise a finished (or cut) session."""
        return cls(
            rec.index, rec.connected, rec.error, tuple(rec.latencies()),
            len(rec.last_frame_at), len(rec.first_seen), rec.lost(), rec.reordered,
            rec.mismatched, rec.unexpected, rec.frames_sent, rec.stream_s, rec.send_lag_max_s,
            rec.late_frames, dict(rec.events),
        )  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionSummary:
        """The inverse of ``asdict``."""
        return cls(**{**data, "latencies": tuple(data["latencies"])})


def _aggregate(
    config: LoadConfig, sessions: Sequence[SessionSummary], sampler: _Sampler, wall_s: float,
    truncated: bool, token_sent_at: Mapping[str, float], generator_cpu_s: float,
) -> LoadResult:  # fmt: skip
    failed: dict[str, int] = {}
    events: dict[str, int] = {}
    for one in sessions:
        if one.error or not one.connected:
            reason = one.error or "not started"
            failed[reason] = failed.get(reason, 0) + 1
        for kind, n in one.events.items():
            events[kind] = events.get(kind, 0) + n
    failed["not started"] = failed.get("not started", 0) + config.sessions - len(sessions)
    live = [one for one in sessions if one.connected]
    stream_s = sum(one.stream_s for one in live)
    has_lag = config.stats_url is not None and sampler.stats is not None
    return LoadResult(
        sessions=config.sessions,
        connected=len(live),
        succeeded=sum(1 for one in live if one.error is None),
        failed={k: v for k, v in failed.items() if v},
        latency=summarise(x for one in live for x in one.latencies),
        segments_expected=sum(one.expected for one in live),
        segments_received=sum(one.received for one in live),
        lost=sum(one.lost for one in live),
        reordered=sum(one.reordered for one in live),
        mismatched=sum(one.mismatched for one in live),
        unexpected=sum(one.unexpected for one in live),
        frames_sent=sum(one.frames_sent for one in sessions),
        frame_rate_per_session=sum(one.frames_sent for one in live) / stream_s if stream_s else 0.0,
        send_lag_max_s=max((one.send_lag_max_s for one in sessions), default=0.0),
        late_frames=sum(one.late_frames for one in sessions),
        events=events,
        wall_s=wall_s,
        truncated=truncated,
        server=sampler.summary(wall_s),
        loop_lag_p99_max_s=sampler.lag_p99_max_s if has_lag else None,
        loop_lag_max_s=sampler.lag_max_s if has_lag else None,
        stats=sampler.stats,
        generator_cpu_s=round(generator_cpu_s, 3),
        token_sent_at=token_sent_at,
    )


async def _run_local(config: LoadConfig, records: Sequence[SessionRecord]) -> None:
    """Run ``records``' sessions in this process; session ``i`` starts at ``i`` ramp steps."""
    fixture = load_fixture(config.fixture, config.sample_rate) if config.fixture else None
    if config.client == "raw":
        await run_raw_sessions(config, records, fixture)
        return
    start = trio.current_time()
    step = config.ramp_s / config.sessions
    async with trio.open_nursery() as session_nursery:
        for rec in records:
            at = start + rec.index * step
            session_nursery.start_soon(_run_session, config, rec, at, fixture)


def _config_json(config: LoadConfig) -> str:
    data = asdict(config)
    data["fixture"] = str(config.fixture) if config.fixture else None
    return json.dumps(data)


def _config_from_json(text: str) -> LoadConfig:
    data = json.loads(text)
    data["tokens"] = tuple(data["tokens"])
    data["extra_query"] = tuple(tuple(pair) for pair in data["extra_query"])
    data["fixture"] = Path(data["fixture"]) if data["fixture"] else None
    return LoadConfig(**data)


async def _run_worker_process(
    config: LoadConfig, worker: int, out: list[SessionSummary], cut: list[bool], cpu: list[float]
) -> None:
    """One ``python -m bench.loadgen worker`` process running every ``processes``-th session."""
    worker_config = replace(config, max_total_s=max(1.0, config.max_total_s - WORKER_MARGIN_S),
                            server_pid=None, stats_url=None)  # fmt: skip
    argv = [sys.executable, "-m", "bench.loadgen", "worker", _config_json(worker_config),
            str(worker), str(config.processes)]  # fmt: skip
    done = await trio.run_process(argv, capture_stdout=True, check=False)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        cut.append(True)
        return
    cut.append(bool(report["truncated"]))
    cpu.append(float(report["cpu_s"]))
    out.extend(SessionSummary.from_json(one) for one in report["sessions"])


async def _run_workers(config: LoadConfig) -> tuple[list[SessionSummary], bool, float]:
    out: list[SessionSummary] = []
    cut: list[bool] = []
    cpu: list[float] = []
    async with trio.open_nursery() as worker_nursery:
        for worker in range(config.processes):
            worker_nursery.start_soon(_run_worker_process, config, worker, out, cut, cpu)
    return out, any(cut) or len(cut) < config.processes, sum(cpu)


async def run_listen_load(config: LoadConfig) -> LoadResult:
    """Run ``config.sessions`` sessions (ramped), bounded by ``config.max_total_s``.

    With ``config.processes > 1`` the sessions are spread over that many worker processes
    (``python -m bench.loadgen worker``), so the generator does not become the bottleneck;
    ``token_sent_at`` is then empty (clocks differ between processes).
    """
    records = [SessionRecord(i) for i in range(config.sessions)]
    sampler = _Sampler(config)
    start = trio.current_time()
    cpu_start = time.process_time()
    summaries: list[SessionSummary] | None = None
    truncated = True
    workers_cpu_s = 0.0
    with trio.move_on_after(config.max_total_s):
        async with trio.open_nursery() as run_nursery:
            run_nursery.start_soon(sampler.run)
            if config.processes > 1:
                summaries, truncated, workers_cpu_s = await _run_workers(config)
            else:
                await _run_local(config, records)
                truncated = False
            run_nursery.cancel_scope.cancel()
    wall_s = trio.current_time() - start
    cpu_s = time.process_time() - cpu_start + workers_cpu_s
    if summaries is not None:
        return _aggregate(config, summaries, sampler, wall_s, truncated, {}, cpu_s)
    token_sent_at = {r.expected[k]: t for r in records for k, t in r.last_frame_at.items()}
    sessions = [SessionSummary.of(r) for r in records]
    return _aggregate(config, sessions, sampler, wall_s, truncated, token_sent_at, cpu_s)


async def _worker_main(config: LoadConfig, worker: int, processes: int) -> dict[str, Any]:
    records = [SessionRecord(i) for i in range(worker, config.sessions, processes)]
    truncated = True
    cpu_start = time.process_time()
    with trio.move_on_after(config.max_total_s):
        await _run_local(config, records)
        truncated = False
    return {"truncated": truncated, "cpu_s": time.process_time() - cpu_start,
            "sessions": [asdict(SessionSummary.of(r)) for r in records]}  # fmt: skip


async def find_max_sessions(
    base: LoadConfig,
    *,
    steps: Sequence[int] = DEFAULT_STEPS,
    p99_limit_s: float = 0.2,
    budget_s: float = 600.0,
) -> tuple[int, list[LoadResult]]:
    """The largest session count in ``steps`` whose run is clean with p99 below the limit.

    Clean: every session succeeded, nothing lost or mismatched, not truncated. Steps run in
    order and stop at the first failing one or when ``budget_s`` is spent.
    """
    await trio.lowlevel.checkpoint()
    best = 0
    results: list[LoadResult] = []
    with trio.move_on_after(budget_s):  # noqa: ASYNC912 -- every step awaits a whole run
        for n in steps:
            result = await run_listen_load(replace(base, sessions=n))
            results.append(result)
            if not _clean(result, n, p99_limit_s):
                break
            best = n
    return best, results


def _clean(result: LoadResult, n: int, p99_limit_s: float) -> bool:
    ok = result.succeeded == n and not result.truncated
    ok = ok and result.lost == 0 and result.mismatched == 0
    return ok and result.latency.p99_s < p99_limit_s


# -- output and CLI -----------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def format_table(result: LoadResult) -> str:
    """A short human-readable table of one result."""
    lat = result.latency
    rows = [
        ("sessions", f"{result.connected}/{result.sessions} connected, {result.succeeded} ok"),
        ("failed", ", ".join(f"{k}: {v}" for k, v in sorted(result.failed.items())) or "none"),
        ("latency p50/p95/p99", f"{_ms(lat.p50_s)} / {_ms(lat.p95_s)} / {_ms(lat.p99_s)}"),
        ("latency max", _ms(lat.max_s)),
        ("segments", f"{result.segments_received}/{result.segments_expected} received"),
        ("lost/reordered/bad", f"{result.lost} / {result.reordered} / {result.mismatched}"),
        ("frames", f"{result.frames_sent} at {result.frame_rate_per_session:.2f}/s per session"),
        ("send lag max", f"{_ms(result.send_lag_max_s)} ({result.late_frames} late frames)"),
        ("events", ", ".join(f"{k}: {v}" for k, v in sorted(result.events.items())) or "none"),
        ("wall", f"{result.wall_s:.1f} s{' (TRUNCATED)' if result.truncated else ''}"),
        ("generator cpu", f"{result.generator_cpu_s:.2f} s"
                          f"{' (GENERATOR-BOUND: late frames)' if result.late_frames else ''}"),
    ]  # fmt: skip
    if result.server is not None:
        srv = result.server
        rows.append(("server rss max", f"{srv.rss_max_bytes / 2**20:.1f} MiB"))
        rows.append(("server threads max", str(srv.threads_max)))
        rows.append(("server cpu", f"{srv.cpu_s:.2f} s ({srv.cpu_percent:.0f}% of one core)"))
    if result.loop_lag_p99_max_s is not None:
        rows.append(("loop lag p99/max", f"{_ms(result.loop_lag_p99_max_s)} / "
                                         f"{_ms(result.loop_lag_max_s)}"))  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench listen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--url", default="ws://127.0.0.1:8000/v4/listen")
    p.add_argument("--token", action="append", required=True, help="bearer token (repeatable)")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--ramp", type=float, default=1.0, help="seconds to start all sessions")
    p.add_argument("--duration", type=int, default=10, help="whole seconds of audio/session")
    p.add_argument("--frame-ms", type=int, default=100)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--fixture", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grace", type=float, default=3.0)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--max-total", type=float, default=120.0, help="hard bound of a run (s)")
    p.add_argument("--pid", type=int, default=None, help="server pid to sample from /proc")
    p.add_argument("--stats-url", default=None)
    p.add_argument("--stats-token", default=None)
    p.add_argument("--query", action="append", default=[], help="extra key=value parameter")
    p.add_argument("--processes", type=int, default=1, help="load generator processes")
    p.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                   help="session driver (default: %(default)s, see bench/fastload.py)")  # fmt: skip
    p.add_argument("--find-max", action="store_true", help="grow --steps until p99 >= limit")
    p.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)))
    p.add_argument("--p99-limit", type=float, default=0.2, help="seconds")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for --find-max")
    p.add_argument("--json", type=Path, default=None, help="write the result(s) here")
    return p


def _config(args: argparse.Namespace) -> LoadConfig:
    query = tuple((k, v) for k, _, v in (q.partition("=") for q in args.query if "=" in q))
    return LoadConfig(
        url=args.url, tokens=tuple(args.token), sessions=args.sessions, ramp_s=args.ramp,
        duration_s=args.duration, frame_ms=args.frame_ms, sample_rate=args.sample_rate,
        fixture=args.fixture, seed=args.seed, grace_s=args.grace, hold_s=args.hold,
        max_total_s=args.max_total, server_pid=args.pid, stats_url=args.stats_url,
        stats_token=args.stats_token, extra_query=query, processes=args.processes,
        client=args.client,
    )  # fmt: skip


def main_listen(argv: Sequence[str]) -> int:
    """``python -m bench listen ...``: 0 clean, 1 failures or losses, 2 bad arguments."""
    args = _parser().parse_args(list(argv))
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"bench listen: {exc}", file=sys.stderr)
        return 2
    if args.find_max:
        steps = [int(s) for s in args.steps.split(",") if s]
        best, results = trio.run(lambda: find_max_sessions(
            config, steps=steps, p99_limit_s=args.p99_limit, budget_s=args.budget))  # fmt: skip
        for result in results:
            print(f"\n== {result.sessions} sessions\n{format_table(result)}")
        print(f"\nmax sessions with p99 < {_ms(args.p99_limit)}: {best}")
        _write(args.json, {"best": best, "runs": [r.to_json() for r in results]})
        return 0
    result = trio.run(run_listen_load, config)
    print(format_table(result))
    _write(args.json, result.to_json())
    clean = result.succeeded == result.sessions and not result.lost and not result.truncated
    return 0 if clean else 1


def _write(path: Path | None, data: Mapping[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    # Worker mode (used by run_listen_load with processes > 1): config JSON, worker, processes.
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        cfg, worker_index, count = (
            _config_from_json(sys.argv[2]),
            int(sys.argv[3]),
            int(sys.argv[4]),
        )
        print(json.dumps(trio.run(_worker_main, cfg, worker_index, count)))
        raise SystemExit(0)
    raise SystemExit(main_listen(sys.argv[1:]))
