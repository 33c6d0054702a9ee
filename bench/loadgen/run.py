"""Running a load: sessions in this process or spread over worker processes, and the step search
for the most sessions that stay clean."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import trio

from bench.fastload import run_raw_sessions
from bench.loadgen.aggregate import LoadResult, Sampler, SessionSummary, build_result
from bench.loadgen.config import DEFAULT_STEPS, WORKER_MARGIN_S, LoadConfig, load_fixture
from bench.loadgen.session import SessionRecord, run_session

__all__ = ["config_from_json", "find_max_sessions", "run_listen_load", "run_local", "worker_main"]


async def run_local(config: LoadConfig, records: Sequence[SessionRecord]) -> None:
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
            session_nursery.start_soon(run_session, config, rec, at, fixture)


def _config_json(config: LoadConfig) -> str:
    data = asdict(config)
    data["fixture"] = str(config.fixture) if config.fixture else None
    return json.dumps(data)


def config_from_json(text: str) -> LoadConfig:
    data = json.loads(text)
    data["tokens"] = tuple(data["tokens"])
    data["extra_query"] = tuple(tuple(pair) for pair in data["extra_query"])
    data["worker_prefix"] = tuple(data["worker_prefix"])
    data["fixture"] = Path(data["fixture"]) if data["fixture"] else None
    return LoadConfig(**data)


async def _run_worker_process(
    config: LoadConfig, worker: int, out: list[SessionSummary], cut: list[bool], cpu: list[float]
) -> None:
    """One ``python -m bench.loadgen worker`` process running every ``processes``-th session."""
    worker_config = replace(config, max_total_s=max(1.0, config.max_total_s - WORKER_MARGIN_S),
                            server_pid=None, stats_url=None)  # fmt: skip
    argv = [*config.worker_prefix, sys.executable, "-m", "bench.loadgen", "worker", _config_json(worker_config),
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
    sampler = Sampler(config)
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
                await run_local(config, records)
                truncated = False
            run_nursery.cancel_scope.cancel()
    wall_s = trio.current_time() - start
    cpu_s = time.process_time() - cpu_start + workers_cpu_s
    if summaries is not None:
        return build_result(config, summaries, sampler, wall_s, truncated, {}, cpu_s)
    token_sent_at = {r.expected[k]: t for r in records for k, t in r.last_frame_at.items()}
    sessions = [SessionSummary.of(r) for r in records]
    return build_result(config, sessions, sampler, wall_s, truncated, token_sent_at, cpu_s)


async def worker_main(config: LoadConfig, worker: int, processes: int) -> dict[str, Any]:
    records = [SessionRecord(i) for i in range(worker, config.sessions, processes)]
    truncated = True
    cpu_start = time.process_time()
    with trio.move_on_after(config.max_total_s):
        await run_local(config, records)
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
