"""Scenarios P1-P4: trioscribe against the asyncio baseline, on one pinned core each.

Every scenario starts the server under test in its own process pinned to CPU 0 (this
process, the load generator, runs on CPU 1), drives it with :mod:`bench.loadgen` (and
:mod:`bench.receivers` for webhooks), stops it, and returns a JSON-able dict with one entry
per server. ``python -m bench scenarios [--quick] [--only P1,P3]`` writes each scenario to
``bench/results/<name>.json``; ``python -m bench report`` turns them into a table.

- **P1** max realtime sessions with p99 frame->segment below a limit (0.2 s; also 1.0 s,
  the baseline's best achievable, since its 0.6 s batch tick makes 0.2 s impossible).
- **P2** the same kind of load with webhook endpoints 25% healthy / 50% hanging / 25%
  failing, against a run where all are healthy: healthy endpoints' delivery p99, loop lag.
- **P3** SIGTERM with live sessions: time to exit, conversations and segments lost.
- **P4** RSS per idle session, and RSS drift over a soak of session cycles.

Bounds: session counts are capped (:data:`MAX_SESSIONS`), every load run has ``max_total_s``,
and only loopback addresses are used (servers bind 127.0.0.1, the generator checks URLs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench._proc import (
    ServerProcess,
    machine_cpu_s,
    open_server_process,
    process_tree,
    rss_and_threads,
    start_ticks,
    tree_cpu_s,
)
from bench.loadgen import SEG_TOKEN, LoadConfig, LoadResult, run_listen_load
from bench.pg import BenchPostgres, PgCounters, PgSample, open_bench_postgres
from bench.receivers import run_listen_with_receivers

__all__ = [
    "SCENARIOS",
    "Plan",
    "Target",
    "generator_prefix",
    "best_under",
    "cpu_per_session_second",
    "cpu_summary",
    "generator_bound",
    "open_target",
    "p1m_server",
    "p3_server",
    "p4_server",
    "run_p1",
    "run_p1m",
    "run_p2",
    "run_p3",
    "run_p4",
]

MAX_SESSIONS: Final = 1600
ADMIN_TOKEN: Final = "bench-admin"
BASELINE_TOKEN: Final = "bench-baseline"
SERVERS: Final = ("trioscribe", "baseline")
#: P2's fault mix (endpoints per profile) and its no-fault control.
FAULT_MIX: Final = {"healthy": 1, "hanging": 2, "failing": 1}
NO_FAULT_MIX: Final = {"healthy": 4}
#: P1 session starts per second (faster ramps hit trioscribe's bounded storage queue: 1013).
RAMP_PER_S: Final = 50.0
#: P1M: seconds between CPU and commit-counter samples during a step.
P1M_SAMPLE_S: Final = 1.0
TRIOSCRIBE_LISTENING: Final = rb"listening on http://[^:]+:(\d+)"
BASELINE_LISTENING: Final = rb"LISTENING (\d+)"
WORKERS_START_TIMEOUT_S: Final = 60.0
#: P1M's generator processes: real-time FIFO at the lowest priority, else a lower niceness.
GENERATOR_FIFO: Final = ("chrt", "-f", "1")
GENERATOR_NICE: Final = ("nice", "-n", "-10")


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and time bounds of one run of the scenarios (``quick`` or full)."""

    #: Both servers passed 1,200 at p99 < 1 s on 2026-12-02 05:35: the steps go on to 1,600,
    #: 100 apart (a 200-session step at 1,000 was a 20% blind spot at trioscribe's edge).
    p1_steps: tuple[int, ...] = (
        50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1600,
    )  # fmt: skip
    p1_duration_s: int = 10
    p1_budget_s: float = 900.0
    #: P1's generator processes. In one process its loop was late (> 50 ms) from 300
    #: sessions on (2026-12-02: trioscribe's 300 step had p99 157 ms, 28 late frames, at
    #: real-time priority too: the lag is the generator's own loop); in 2, 0 late up to 400,
    #: and up to 1,200 once the workers ran without the cyclic GC (``bench/loadgen/__main__``).
    p1_generator_processes: int = 2
    cpu_sessions: int = 150
    #: CPU samples per server at ``cpu_sessions``, alternated between the servers (the order
    #: flips every pair); the figure is each server's median. One sample each was not enough:
    #: this VM's speed drifts by tens of percent between minutes (on 2026-12-02 single pairs
    #: gave ratios from 0.74x to 1.52x for the same code).
    cpu_runs: int = 5
    p2_sessions: int = 100
    p2_duration_s: int = 15
    p3_sessions: int = 500
    p3_stream_s: float = 8.0
    p4_idle_sessions: int = 200
    p4_soak_s: float = 600.0
    p4_soak_sessions: int = 50
    p4_cycle_audio_s: int = 5
    p4_idle_hold_s: float = 4.0
    p4_settle_s: float = 2.0
    p1m_steps: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 1000, 1200)
    p1m_budget_s: float = 900.0
    p1m_workers: int = 2
    p1m_generator_processes: int = 2
    #: The first of these command prefixes that works here starts the generator's processes.
    p1m_generator_prefixes: tuple[tuple[str, ...], ...] = (GENERATOR_FIFO, GENERATOR_NICE)

    @classmethod
    def quick(cls) -> Plan:
        """A plan that runs all scenarios in a few minutes."""
        return cls(
            p1_steps=(50, 100, 200, 300, 400, 600),
            p1_duration_s=5,
            p1_budget_s=150.0,
            cpu_sessions=100,
            cpu_runs=1,
            p2_sessions=40,
            p2_duration_s=6,
            p3_sessions=100,
            p3_stream_s=4.0,
            p4_idle_sessions=100,
            p4_soak_s=30.0,
            p4_soak_sessions=20,
            p4_cycle_audio_s=3,
            p1m_steps=(100, 200, 400, 600, 800),
            p1m_budget_s=240.0,
        )


# -- the servers under test ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """A started server: its process, base URL, listen URL, bearer tokens, database file."""

    name: str
    server: ServerProcess
    base_url: str
    tokens: tuple[str, ...]
    db_path: Path
    stats_token: str | None

    @property
    def listen_url(self) -> str:
        """The ``/v4/listen`` WebSocket URL."""
        return self.base_url.replace("http://", "ws://") + "/v4/listen"

    def config(self, sessions: int, **fields: Any) -> LoadConfig:
        """A load configuration against this server, sampling its process and stats."""
        return LoadConfig(
            url=self.listen_url,
            tokens=self.tokens,
            sessions=min(sessions, MAX_SESSIONS),
            server_pid=self.server.pid,
            stats_url=f"{self.base_url}/v1/stats",
            stats_token=self.stats_token,
            **fields,
        )


def _trioscribe_env(data_dir: str, extra: Mapping[str, str]) -> dict[str, str]:
    limit = str(MAX_SESSIONS + 50)
    return {
        "TRIOSCRIBE_DATA_DIR": data_dir,
        "TRIOSCRIBE_HOST": "127.0.0.1",
        "TRIOSCRIBE_PORT": "0",
        "TRIOSCRIBE_STT": "fake",
        "TRIOSCRIBE_VAD": "off",
        "TRIOSCRIBE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRIOSCRIBE_MAX_SESSIONS": limit,
        "TRIOSCRIBE_MAX_SESSIONS_PER_USER": limit,
        "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
        "TRIOSCRIBE_LOG_LEVEL": "WARNING",
        "TRIOSCRIBE_ALLOW_LOOPBACK_WEBHOOKS": "1",
        **extra,
    }


async def _trioscribe_tokens(base_url: str, users: int) -> tuple[str, ...]:
    """One user and bearer token per session (as one Omi device per user)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tokens: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, headers=admin, timeout=30) as http:
        for n in range(users):
            (await http.post("/v1/admin/users", json={"name": f"u{n}"})).raise_for_status()
            response = await http.post(f"/v1/admin/users/u{n}/tokens", json={})
            response.raise_for_status()
            tokens.append(str(response.json()["token"]))
    return tuple(tokens)


@asynccontextmanager
async def _open_trioscribe(
    data_dir: str, extra_env: Mapping[str, str], users: int, cpu: int | None, workers: int
) -> AsyncIterator[Target]:
    async with open_server_process(
        ["-m", "server", "--log-level", "INFO", "--workers", str(workers)],
        env=_trioscribe_env(data_dir, extra_env),
        cpu=cpu,
        port_pattern=TRIOSCRIBE_LISTENING,
        stream="stderr",
    ) as server:
        await _wait_listening(server, TRIOSCRIBE_LISTENING, workers)
        base = f"http://127.0.0.1:{server.port}"
        tokens = await _trioscribe_tokens(base, users)
        db = Path(data_dir) / "trioscribe.db"
        yield Target("trioscribe", server, base, tokens, db, ADMIN_TOKEN)


@asynccontextmanager
async def _open_baseline(
    data_dir: str, extra_args: Sequence[str], users: int, cpu: int | None, workers: int
) -> AsyncIterator[Target]:
    db = Path(data_dir) / "baseline.sqlite"
    tokens = tuple(f"{BASELINE_TOKEN}-{n}" for n in range(users))
    argv = ["-m", "bench.baseline", "--db", str(db), "--log-level", "critical",
            "--workers", str(workers), *extra_args]  # fmt: skip
    env = {"PYTHONUNBUFFERED": "1", "BASELINE_TOKENS": ",".join(tokens)}
    async with open_server_process(
        argv, env=env, cpu=cpu, port_pattern=BASELINE_LISTENING
    ) as server:
        await _wait_listening(server, BASELINE_LISTENING, workers)
        base = f"http://127.0.0.1:{server.port}"
        yield Target("baseline", server, base, tokens, db, tokens[0])


async def _wait_listening(server: ServerProcess, pattern: bytes, workers: int) -> None:
    """Wait until ``workers`` processes have each printed ``pattern`` (all of them serve)."""
    regex = re.compile(pattern.decode())
    with trio.fail_after(WORKERS_START_TIMEOUT_S):
        await trio.lowlevel.checkpoint()
        while len(regex.findall("".join(server.output))) < workers:
            if server.process.returncode is not None:
                raise RuntimeError("server exited while its workers started")
            await trio.sleep(0.1)


def _named(pids: Sequence[int]) -> list[tuple[int, int]]:
    """``(pid, start time)`` of each live pid: a pid reused later will not match."""
    out = []
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out.append((pid, start_ticks(pid)))
    return out


def _kill_leftovers(processes: Sequence[tuple[int, int]]) -> None:
    """SIGKILL the server's own processes that outlived it (workers in their own session
    whose parent was killed); processes already gone, or whose pid was reused, are skipped."""
    for pid, started in processes:
        with contextlib.suppress(OSError, IndexError, ValueError):
            if start_ticks(pid) == started:
                os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def open_target(
    name: str, *, users: int = 1, env: Mapping[str, str] | None = None,
    baseline_args: Sequence[str] = (), cpu: int | None = 0, workers: int = 1,
) -> AsyncIterator[Target]:  # fmt: skip
    """Start ``trioscribe`` or ``baseline`` (on CPU ``cpu``; None: unpinned) in a fresh data
    directory with ``users`` users (one bearer token each; session ``i`` uses token
    ``i % users``), with ``workers`` server processes on one port; stop it after.

    ``workers > 1`` for trioscribe needs ``TRIOSCRIBE_DATABASE_URL`` in ``env``. Returns once
    every worker listens; on exit any worker still alive after the stop is killed.
    """
    users = min(max(1, users), MAX_SESSIONS)
    processes: list[tuple[int, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as data_dir:
            if name == "trioscribe":
                opened = _open_trioscribe(data_dir, env or {}, users, cpu, workers)
            else:
                opened = _open_baseline(data_dir, baseline_args, users, cpu, workers)
            async with opened as target:
                processes = _named(process_tree(target.server.pid)[1:])
                yield target
    finally:
        _kill_leftovers(processes)


def _load_json(result: LoadResult) -> dict[str, Any]:
    """A load result without the last ``/v1/stats`` snapshot (large, and server-specific)."""
    data = result.to_json()
    data.pop("stats", None)
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- P1 ---------------------------------------------------------------------------------------
def generator_bound(run: Mapping[str, Any]) -> bool:
    """Whether the generator itself sent a frame late in this step (it measured itself)."""
    return bool(run["late_frames"])


def best_under(runs: Sequence[Mapping[str, Any]], limit_s: float) -> int:
    """The largest session count of the leading clean steps whose p99 is below ``limit_s``.

    A generator-bound step never decides a figure: the search stops before it.
    """
    best = 0
    for run in runs:
        clean = run["succeeded"] == run["sessions"] and not run["truncated"]
        clean = clean and run["lost"] == 0 and run["mismatched"] == 0
        if not clean or generator_bound(run) or run["latency"]["p99_s"] >= limit_s:
            break
        best = run["sessions"]
    return best


def cpu_per_session_second(run: Mapping[str, Any]) -> float | None:
    """Server CPU seconds per second of streamed session audio in one step (from /proc)."""
    server = run.get("server")
    audio_s = (
        run["frames_sent"] / run["frame_rate_per_session"] if run["frame_rate_per_session"] else 0
    )
    return server["cpu_s"] / audio_s if server and audio_s else None


def _step_config(target: Target, n: int, plan: Plan) -> LoadConfig:
    """Sessions start at :data:`RAMP_PER_S`; every session streams past the end of the ramp."""
    ramp_s = max(1.0, n / RAMP_PER_S)
    duration = int(ramp_s) + plan.p1_duration_s
    return target.config(n, duration_s=duration, ramp_s=ramp_s, grace_s=3.0,
                         max_total_s=ramp_s + duration + 40.0)  # fmt: skip


async def _p1_one(name: str, plan: Plan) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    rerun: list[dict[str, Any]] = []
    async with open_target(name, users=max(plan.p1_steps)) as target:
        with trio.move_on_after(plan.p1_budget_s):  # noqa: ASYNC912 -- each step awaits a run
            for n in plan.p1_steps:
                config = replace(_step_config(target, n, plan),
                                 processes=plan.p1_generator_processes)  # fmt: skip
                run = _load_json(await run_listen_load(config))
                if generator_bound(run):  # once: a passing stall of the machine ends no ramp
                    rerun.append(run)
                    run = _load_json(await run_listen_load(config))
                runs.append(run)
                # Both limits come from the same runs; stop once even 1 s is exceeded.
                if best_under(runs, 1.0) < n:
                    break
    best_1s = best_under(runs, 1.0)
    return {"runs": runs, "max_sessions_p99_200ms": best_under(runs, 0.2),
            "max_sessions_p99_500ms": best_under(runs, 0.5),
            "max_sessions_p99_1s": best_1s,
            "hit_step_cap": bool(runs) and best_1s == max(plan.p1_steps),
            "generator_bound_steps": [r["sessions"] for r in runs if generator_bound(r)],
            "generator_late_frames": sum(r["late_frames"] for r in runs),
            "rerun_generator_bound": rerun}  # fmt: skip


async def _p1_cpu(name: str, plan: Plan, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Server and generator CPU at one common load (:attr:`Plan.cpu_sessions`), fresh server."""
    async with open_target(name, users=plan.cpu_sessions, env=env) as target:
        run = _load_json(await run_listen_load(_step_config(target, plan.cpu_sessions, plan)))
    rate = run["frame_rate_per_session"]
    return {"sessions": plan.cpu_sessions,
            "session_s": round(run["frames_sent"] / rate, 1) if rate else 0.0,
            "server_cpu_s": run["server"]["cpu_s"] if run["server"] else None,
            "generator_cpu_s": run["generator_cpu_s"],
            "server_cpu_per_session_s": cpu_per_session_second(run),
            "generator_bound": generator_bound(run), "p99_s": run["latency"]["p99_s"],
            "lost": run["lost"]}  # fmt: skip


def cpu_summary(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One server's CPU figure from its samples: the median of ``server_cpu_per_session_s``
    (samples without one are left out), with the samples, their spread and any loss."""
    figures = sorted(
        s["server_cpu_per_session_s"] for s in samples if s["server_cpu_per_session_s"]
    )
    median = statistics.median(figures) if figures else None
    return {"sessions": samples[0]["sessions"] if samples else 0,
            "server_cpu_per_session_s": median,
            "min": figures[0] if figures else None, "max": figures[-1] if figures else None,
            "generator_bound": any(s["generator_bound"] for s in samples),
            "lost": sum(s["lost"] for s in samples), "samples": list(samples)}  # fmt: skip


def _pair_ratios(
    ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]
) -> list[float]:
    """Our figure over the baseline's within each alternated pair of samples."""
    return [
        round(t["server_cpu_per_session_s"] / b["server_cpu_per_session_s"], 3)
        for t, b in zip(ours, theirs, strict=True)
        if t["server_cpu_per_session_s"] and b["server_cpu_per_session_s"]
    ]


#: trioscribe's CPU series: its defaults, then its read tick fixed at the value it takes under
#: load (at the common load its tick is the 20 ms minimum: it spends CPU on latency, p99
#: ~20 ms; fixed at 300 ms its p99 is ~0.3 s, nearer the baseline's ~0.6 s by design).
FIXED_TICK_MS: Final = 300
_CPU_SERIES: Final = (
    ("trioscribe", "trioscribe", None),
    ("baseline", "baseline", None),
    ("fixed_tick", "trioscribe", {"TRIOSCRIBE_LISTEN_READ_MIN_TICK_MS": str(FIXED_TICK_MS),
                                  "TRIOSCRIBE_LISTEN_READ_TICK_MS": str(FIXED_TICK_MS)}),
)  # fmt: skip


async def _p1_cpu_alternated(plan: Plan) -> dict[str, dict[str, Any]]:
    """``plan.cpu_runs`` CPU samples per series (trioscribe, the baseline, trioscribe at a
    fixed tick), alternated (A B C, C B A, ...) so all see the same minutes of this machine;
    per server, :func:`cpu_summary`, and ``pair_ratios``: trioscribe's figure over the
    baseline's within each round. trioscribe's ``fixed_tick`` holds the third series."""
    await trio.lowlevel.checkpoint()
    samples: dict[str, list[dict[str, Any]]] = {series: [] for series, _, _ in _CPU_SERIES}
    for i in range(plan.cpu_runs):
        for series, name, env in _CPU_SERIES if i % 2 == 0 else _CPU_SERIES[::-1]:
            samples[series].append(await _p1_cpu(name, plan, env))
    out = {name: cpu_summary(samples[name]) for name in SERVERS}
    fixed = {**cpu_summary(samples["fixed_tick"]), "tick_ms": FIXED_TICK_MS}
    for summary, series in ((out["trioscribe"], "trioscribe"), (fixed, "fixed_tick")):
        summary["pair_ratios"] = _pair_ratios(samples[series], samples["baseline"])
    out["trioscribe"]["fixed_tick"] = fixed
    return out


async def run_p1(plan: Plan) -> dict[str, Any]:
    """P1: the session ramp for both servers, with the maxima at p99 < 0.2, 0.5 and 1 s, and
    CPU per session-second at a common load."""
    await trio.lowlevel.checkpoint()
    out: dict[str, Any] = {"steps": list(plan.p1_steps)}
    for name in SERVERS:
        out[name] = await _p1_one(name, plan)
    for name, cpu in (await _p1_cpu_alternated(plan)).items():
        out[name]["cpu"] = cpu
    return out


# -- P2 ---------------------------------------------------------------------------------------
async def _p2_run(name: str, plan: Plan, mix: Mapping[str, int]) -> dict[str, Any]:
    async with open_target(name, users=plan.p2_sessions) as target:
        config = target.config(plan.p2_sessions, duration_s=plan.p2_duration_s, ramp_s=2.0,
                               grace_s=5.0, max_total_s=plan.p2_duration_s + 60.0)  # fmt: skip
        result = await run_listen_with_receivers(
            config, mix, api_url=target.base_url, kinds=("realtime_transcript",), settle_s=5.0
        )
    data = result.to_json()
    data["load"].pop("stats", None)
    return data


async def run_p2(plan: Plan) -> dict[str, Any]:
    """P2: healthy endpoints' delivery latency and loop lag, without and with faults."""
    await trio.lowlevel.checkpoint()
    out: dict[str, Any] = {"sessions": plan.p2_sessions, "fault_mix": dict(FAULT_MIX),
                           "no_fault_mix": dict(NO_FAULT_MIX)}  # fmt: skip
    for name in SERVERS:
        out[name] = {"no_fault": await _p2_run(name, plan, NO_FAULT_MIX),
                     "fault": await _p2_run(name, plan, FAULT_MIX)}  # fmt: skip
    return out


# -- P3 ---------------------------------------------------------------------------------------
def stored_tokens(name: str, db_path: Path) -> tuple[int, set[str]]:
    """Conversations holding at least one segment token, and every stored token."""
    query = (
        "SELECT conversation_id, text FROM transcript_segments"
        if name == "trioscribe"
        else "SELECT id, segments FROM conversations"
    )
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute(query).fetchall()
    tokens: set[str] = set()
    conversations: set[str] = set()
    for conversation, text in rows:
        found = {m.group(0) for m in SEG_TOKEN.finditer(str(text or ""))}
        if found:
            conversations.add(conversation)
        tokens |= found
    return len(conversations), tokens


async def _sigterm_after(target: Target, delay_s: float, out: dict[str, Any]) -> None:
    await trio.sleep(delay_s)
    process = target.server.process
    started = time.monotonic()
    process.terminate()
    with trio.move_on_after(60.0):
        await process.wait()
    out["exit_s"] = time.monotonic() - started
    out["exit_code"] = process.returncode


async def p3_server(name: str, sessions: int, stream_s: float) -> dict[str, Any]:
    """P3 for one server: SIGTERM once every session has streamed ``stream_s``."""
    ramp_s = max(1.0, sessions / 100)
    timing: dict[str, Any] = {}
    async with open_target(name, users=sessions) as target:
        config = replace(target.config(sessions, duration_s=int(stream_s) + 60, ramp_s=ramp_s,
                                       grace_s=0.0, max_total_s=stream_s + 90.0),
                         stats_url=None)  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sigterm_after, target, ramp_s + stream_s, timing)
            result = await run_listen_load(config)
        conversations, tokens = stored_tokens(name, target.db_path)
    sent = set(result.token_sent_at)
    return {
        "sessions": sessions,
        "connected": result.connected,
        **timing,
        "tokens_sent": len(sent),
        "tokens_received_by_clients": result.segments_received,
        "tokens_stored": len(tokens & sent),
        "tokens_sent_not_stored": len(sent - tokens),
        "tokens_stored_all": len(tokens),
        # Tokens are unique per (session, second): clients saw more than the store holds.
        "received_not_stored": max(0, result.segments_received - len(tokens)),
        "conversations_stored": conversations,
        "conversations_lost": max(0, result.connected - conversations),
        "close": dict(result.failed),
    }


async def run_p3(plan: Plan) -> dict[str, Any]:
    """P3: SIGTERM while ``plan.p3_sessions`` sessions stream; exit time and what is lost."""
    await trio.lowlevel.checkpoint()
    return {name: await p3_server(name, plan.p3_sessions, plan.p3_stream_s) for name in SERVERS}


# -- P4 ---------------------------------------------------------------------------------------
async def _rss_after(pid: int, delay_s: float, into: list[int]) -> None:
    await trio.sleep(delay_s)
    into.append(rss_and_threads(pid)[0])


async def _p4_idle(target: Target, sessions: int, plan: Plan) -> dict[str, Any]:
    await trio.sleep(plan.p4_settle_s)
    before = rss_and_threads(target.server.pid)[0]
    ramp_s = max(1.0, sessions / 100)
    hold_s = ramp_s + plan.p4_idle_hold_s
    config = target.config(sessions, duration_s=1, ramp_s=ramp_s, grace_s=2.0, hold_s=hold_s,
                           max_total_s=ramp_s + hold_s + 30.0)  # fmt: skip
    during: list[int] = []
    async with trio.open_nursery() as nursery:
        # Sampled while every session is connected and idle (audio done, holding).
        at_s = ramp_s + 2.5 + plan.p4_idle_hold_s / 2
        nursery.start_soon(_rss_after, target.server.pid, at_s, during)
        result = await run_listen_load(config)
    per_session = (during[0] - before) / max(1, result.connected)
    return {"sessions": sessions, "connected": result.connected, "rss_before_bytes": before,
            "rss_idle_bytes": during[0], "rss_per_idle_session_bytes": per_session}  # fmt: skip


async def _p4_soak(target: Target, plan: Plan) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    samples: list[tuple[float, int]] = []
    start = trio.current_time()
    cycles = 0
    while trio.current_time() - start < plan.p4_soak_s:
        config = target.config(plan.p4_soak_sessions, duration_s=plan.p4_cycle_audio_s,
                               ramp_s=1.0, grace_s=2.0, max_total_s=60.0)  # fmt: skip
        config = replace(config, stats_url=None, seed=cycles)
        await run_listen_load(config)
        cycles += 1
        samples.append((trio.current_time() - start, rss_and_threads(target.server.pid)[0]))
    first, last = samples[0], samples[-1]
    minutes = (last[0] - first[0]) / 60
    return {"soak_s": plan.p4_soak_s, "cycles": cycles, "sessions_per_cycle": plan.p4_soak_sessions,
            "rss_first_cycle_bytes": first[1], "rss_last_cycle_bytes": last[1],
            "rss_drift_bytes": last[1] - first[1],
            "rss_drift_bytes_per_min": (last[1] - first[1]) / minutes if minutes else 0.0,
            "samples": samples}  # fmt: skip


async def p4_server(name: str, plan: Plan) -> dict[str, Any]:
    """P4 for one server: RSS per idle session, then the soak."""
    users = max(plan.p4_idle_sessions, plan.p4_soak_sessions)
    async with open_target(name, users=users) as target:
        idle = await _p4_idle(target, plan.p4_idle_sessions, plan)
        soak = await _p4_soak(target, plan)
    return {"idle": idle, "soak": soak}


async def run_p4(plan: Plan) -> dict[str, Any]:
    """P4: RSS per idle session, then RSS drift over a soak of session cycles."""
    await trio.lowlevel.checkpoint()
    return {name: await p4_server(name, plan) for name in SERVERS}


# -- P1M: P1 per machine -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Snapshot:
    """CPU seconds so far of the server's and PostgreSQL's process trees and of the machine."""

    at: float
    server: dict[int, float]
    pg: dict[int, float]
    machine_busy_s: float
    pg_counters: PgSample | None


async def _snapshot(root: int, pg_pid: int | None, counters: PgCounters | None) -> _Snapshot:
    await trio.lowlevel.checkpoint()
    sample = await counters.sample() if counters is not None else None
    busy, _total = machine_cpu_s()
    pg = tree_cpu_s(pg_pid) if pg_pid is not None else {}
    return _Snapshot(trio.current_time(), tree_cpu_s(root), pg, busy, sample)


def _tree_delta(before: Mapping[int, float], after: Mapping[int, float]) -> dict[int, float]:
    """CPU seconds per process between two readings (a process new since ``before``: all)."""
    return {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}


def _between(a: _Snapshot, b: _Snapshot) -> dict[str, Any]:
    """Rates between two snapshots: CPU in cores (CPU-s per s), commits and rows per s."""
    wall = b.at - a.at
    server = _tree_delta(a.server, b.server)
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "server_cores": sum(server.values()) / wall,
        "server_process_cores": sorted((round(c / wall, 3) for c in server.values()), reverse=True),
        "pg_cores": sum(_tree_delta(a.pg, b.pg).values()) / wall if b.pg else None,
        "machine_busy_cores": (b.machine_busy_s - a.machine_busy_s) / wall,
        "commits_per_s": None,
        "rows_written_per_s": None,
    }
    if a.pg_counters is not None and b.pg_counters is not None:
        out["commits_per_s"] = (b.pg_counters.commits - a.pg_counters.commits) / wall
        out["rows_written_per_s"] = (b.pg_counters.rows_written - a.pg_counters.rows_written) / wall
    return out


async def _sample_every(root: int, pg: BenchPostgres | None, counters: PgCounters | None,
                        into: list[_Snapshot]) -> None:  # fmt: skip
    """A snapshot every :data:`P1M_SAMPLE_S` until cancelled."""
    while True:
        into.append(await _snapshot(root, pg.pid if pg else None, counters))
        await trio.sleep(P1M_SAMPLE_S)


def _steady_window(
    samples: Sequence[_Snapshot], start: float, ramp_s: float, plan: Plan
) -> dict[str, Any] | None:
    """Rates over the seconds in which all the step's sessions stream (after the ramp, before
    the first session ends; the generator's worker processes start ~0.5 s late)."""
    first_at = start + ramp_s + 1.0
    last_at = start + int(ramp_s) + plan.p1_duration_s - 0.5
    inside = [s for s in samples if first_at <= s.at <= last_at]
    if len(inside) < 2 or inside[-1].at - inside[0].at < 1.5:
        return None
    return _between(inside[0], inside[-1])


async def _p1m_step(
    target: Target, n: int, plan: Plan, pg: BenchPostgres | None, counters: PgCounters | None,
    prefix: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    """One step of ``n`` sessions from ``plan.p1m_generator_processes`` generator processes
    (started with ``prefix``), with the server's, PostgreSQL's and the machine's CPU and the
    commit rate around it."""
    config = replace(_step_config(target, n, plan), server_pid=None, stats_url=None,
                     processes=plan.p1m_generator_processes,
                     worker_prefix=prefix)  # fmt: skip
    root = target.server.pid
    samples: list[_Snapshot] = []
    before = await _snapshot(root, pg.pid if pg else None, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_every, root, pg, counters, samples)
        result = await run_listen_load(config)
        nursery.cancel_scope.cancel()
    after = await _snapshot(root, pg.pid if pg else None, counters)
    run = _load_json(result)
    run["step"] = _between(before, after)
    run["steady"] = _steady_window(samples, before.at, config.ramp_s, plan)
    run["server_pids"] = sorted(after.server)
    return run


def _edge(runs: Sequence[Mapping[str, Any]], sessions: int) -> dict[str, Any] | None:
    """The figures of the step at the edge (``sessions``), steady window first."""
    for run in runs:
        if run["sessions"] == sessions:
            rates = run["steady"] or run["step"]
            return {"sessions": sessions, "p99_s": run["latency"]["p99_s"],
                    "window": "steady" if run["steady"] else "step", **rates}  # fmt: skip
    return None


def _p1m_figures(runs: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    best_1s = best_under(runs, 1.0)
    pid_sets = {tuple(r["server_pids"]) for r in runs}
    return {"runs": runs, "max_sessions_p99_200ms": best_under(runs, 0.2),
            "max_sessions_p99_500ms": best_under(runs, 0.5),
            "max_sessions_p99_1s": best_1s,
            "hit_step_cap": bool(runs) and best_1s == max(plan.p1m_steps),
            "edge_1s": _edge(runs, best_1s), "edge_500ms": _edge(runs, best_under(runs, 0.5)),
            "generator_bound_steps": [r["sessions"] for r in runs if generator_bound(r)],
            "generator_late_frames": sum(r["late_frames"] for r in runs),
            "server_processes_changed": len(pid_sets) > 1}  # fmt: skip


async def p1m_server(
    name: str, plan: Plan, pg: BenchPostgres | None, prefix: tuple[str, ...] = ()
) -> dict[str, Any]:
    """P1M for one server: ``plan.p1m_workers`` processes on the whole machine (trioscribe on
    ``pg``'s database), the steps of ``plan.p1m_steps`` until p99 reaches 1 s (a
    generator-bound step runs again once); the generator's processes start with ``prefix``."""
    env = {"TRIOSCRIBE_DATABASE_URL": pg.url} if pg is not None else {}
    runs: list[dict[str, Any]] = []
    rerun: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            open_target(name, users=max(plan.p1m_steps), env=env, cpu=None,
                        workers=plan.p1m_workers)
        )  # fmt: skip
        counters = None
        if pg is not None:
            counters = await stack.enter_async_context(PgCounters(pg.admin_url, pg.database))
        with trio.move_on_after(plan.p1m_budget_s):  # noqa: ASYNC912 -- each step awaits a run
            for n in plan.p1m_steps:
                run = await _p1m_step(target, n, plan, pg, counters, prefix)
                if generator_bound(run):  # once, as in P1: a passing stall ends no ramp
                    rerun.append(run)
                    run = await _p1m_step(target, n, plan, pg, counters, prefix)
                runs.append(run)
                if best_under(runs, 1.0) < n:
                    break
    return {**_p1m_figures(runs, plan), "rerun_generator_bound": rerun}


async def generator_prefix(candidates: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The first command prefix that starts a process at a higher priority than this one's
    (``chrt -f 1``: real-time FIFO; ``nice -n -10``); ``()`` if none may (both need root or
    CAP_SYS_NICE). Real-time wins over every normal process, autogroups included: with
    ``kernel.sched_autogroup_enabled``, a niceness only counts inside its own session's group,
    and trioscribe's workers run in sessions of their own."""
    await trio.lowlevel.checkpoint()
    probe = "import os; print(os.sched_getscheduler(0), os.nice(0))"
    for prefix in candidates:
        done = await trio.run_process([*prefix, sys.executable, "-c", probe], capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
        try:
            policy, nice = (int(x) for x in done.stdout.split())
        except ValueError:
            continue
        if done.returncode == 0 and (policy == os.SCHED_FIFO or nice < os.nice(0)):
            return tuple(prefix)
    return ()


async def run_p1m(plan: Plan) -> dict[str, Any]:
    """P1M: P1 on the whole machine, ``plan.p1m_workers`` processes per server: trioscribe on
    a PostgreSQL of its own (started here, stopped after), the baseline on uvicorn workers.
    The generator's processes run at a higher priority when this process may grant it."""
    prefix = await generator_prefix(plan.p1m_generator_prefixes)
    out: dict[str, Any] = {"steps": list(plan.p1m_steps), "workers": plan.p1m_workers,
                           "generator_processes": plan.p1m_generator_processes,
                           "generator_priority": " ".join(prefix) or "normal",
                           "cpus": os.cpu_count()}  # fmt: skip
    async with open_bench_postgres() as pg:
        out["postgres"] = dict(pg.settings)
        out["trioscribe"] = await p1m_server("trioscribe", plan, pg, prefix)
    out["baseline"] = await p1m_server("baseline", plan, None, prefix)
    return out


SCENARIOS: Final[Mapping[str, Callable[[Plan], Any]]] = {
    "P1": run_p1,
    "P2": run_p2,
    "P3": run_p3,
    "P4": run_p4,
    "P1M": run_p1m,
}
