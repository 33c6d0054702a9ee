"""Sampling the server process during a run, and folding the sessions into one :class:`LoadResult`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import trio

from bench._stats import LatencySummary, summarise
from bench.loadgen.config import LoadConfig
from bench.loadgen.session import SessionRecord

__all__ = [
    "LoadResult",
    "Sampler",
    "ServerSample",
    "SessionSummary",
    "build_result",
    "format_table",
    "read_proc",
]


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
class Sampler:
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


def build_result(
    config: LoadConfig, sessions: Sequence[SessionSummary], sampler: Sampler, wall_s: float,
    truncated: bool, token_sent_at: Mapping[str, float], generator_cpu_s: float,
) -> LoadResult:  # fmt: skip
    """Fold the sessions' summaries and the server samples into one :class:`LoadResult`."""
    live = [one for one in sessions if one.connected]
    has_lag = config.stats_url is not None and sampler.stats is not None
    return LoadResult(
        sessions=config.sessions,
        connected=len(live),
        succeeded=sum(1 for one in live if one.error is None),
        failed=_failures(config, sessions),
        latency=summarise(x for one in live for x in one.latencies),
        **_segment_counts(live),
        **_send_figures(sessions, live),
        events=_events(sessions),
        wall_s=wall_s,
        truncated=truncated,
        server=sampler.summary(wall_s),
        loop_lag_p99_max_s=sampler.lag_p99_max_s if has_lag else None,
        loop_lag_max_s=sampler.lag_max_s if has_lag else None,
        stats=sampler.stats,
        generator_cpu_s=round(generator_cpu_s, 3),
        token_sent_at=token_sent_at,
    )


def _failures(config: LoadConfig, sessions: Sequence[SessionSummary]) -> dict[str, int]:
    """Sessions that failed or never started, by reason."""
    failed: dict[str, int] = {}
    for one in sessions:
        if one.error or not one.connected:
            reason = one.error or "not started"
            failed[reason] = failed.get(reason, 0) + 1
    failed["not started"] = failed.get("not started", 0) + config.sessions - len(sessions)
    return {reason: n for reason, n in failed.items() if n}


def _events(sessions: Sequence[SessionSummary]) -> dict[str, int]:
    """Server events seen, by type, over every session."""
    events: dict[str, int] = {}
    for one in sessions:
        for kind, n in one.events.items():
            events[kind] = events.get(kind, 0) + n
    return events


def _segment_counts(live: Sequence[SessionSummary]) -> dict[str, int]:
    """Segment totals of the sessions that connected."""
    names = ("expected", "received", "lost", "reordered", "mismatched", "unexpected")
    totals = {name: sum(getattr(one, name) for one in live) for name in names}
    return {
        "segments_expected": totals["expected"],
        "segments_received": totals["received"],
        **{name: totals[name] for name in names[2:]},
    }


def _send_figures(
    sessions: Sequence[SessionSummary], live: Sequence[SessionSummary]
) -> dict[str, Any]:
    """Frames sent, the per-session frame rate, and how far sending fell behind schedule."""
    stream_s = sum(one.stream_s for one in live)
    live_frames = sum(one.frames_sent for one in live)
    return {
        "frames_sent": sum(one.frames_sent for one in sessions),
        "frame_rate_per_session": live_frames / stream_s if stream_s else 0.0,
        "send_lag_max_s": max((one.send_lag_max_s for one in sessions), default=0.0),
        "late_frames": sum(one.late_frames for one in sessions),
    }


# -- output and CLI -----------------------------------------------------------------------------
def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def format_table(result: LoadResult) -> str:
    """A short human-readable table of one result."""
    lat = result.latency
    rows = [
        ("sessions", f"{result.connected}/{result.sessions} connected, {result.succeeded} ok"),
        ("failed", ", ".join(f"{k}: {v}" for k, v in sorted(result.failed.items())) or "none"),
        ("latency p50/p95/p99", f"{format_ms(lat.p50_s)} / {format_ms(lat.p95_s)} / {format_ms(lat.p99_s)}"),
        ("latency max", format_ms(lat.max_s)),
        ("segments", f"{result.segments_received}/{result.segments_expected} received"),
        ("lost/reordered/bad", f"{result.lost} / {result.reordered} / {result.mismatched}"),
        ("frames", f"{result.frames_sent} at {result.frame_rate_per_session:.2f}/s per session"),
        ("send lag max", f"{format_ms(result.send_lag_max_s)} ({result.late_frames} late frames)"),
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
        rows.append(("loop lag p99/max", f"{format_ms(result.loop_lag_p99_max_s)} / "
                                         f"{format_ms(result.loop_lag_max_s)}"))  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
