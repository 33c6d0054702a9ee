"""How many realtime streams the embedded STT sustains on this machine.

Run ``python -m bench.stt_capacity`` (about 2-3 minutes; it stops by itself). Two measurements,
both on the speech fixture ``tests/fixtures/speech/two_sentences.raw`` (8.9 s, two sentences):

(a) **Cost of one stream**: one stream fed as fast as it accepts; CPU seconds of its worker
    process (``/proc/<pid>/stat``) per second of audio, after the decoder exists. The
    *physical limit* is ``cores / cost``: streams the CPUs could decode if nothing else ran.
(b) **Sustained realtime streams**: N streams at once (N = 1, 2, 3, ...), each paced in real
    time (100 ms frame ``k`` is sent at ``start + (k + 1) * 0.1 s``, i.e. once it would have been
    recorded; starts staggered over ``STAGGER_S``). Latency of a final = its arrival time minus
    the wall time its audio end (``end_s``) was recorded, so it includes the endpointer's
    ~0.3 s of trailing silence a user waits for anyway. A step passes when p99 < ``P99_LIMIT_S``
    and every final arrived. The ramp stops at the first failing step, at ``MAX_STREAMS``, or
    when the time budget (``BUDGET_S``) would be exceeded.

All decoders a step needs are opened before its paced period starts, so creating them (0.3-0.55 s
CPU each) is not counted as latency. The lane has one worker process per core.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

if not __package__:  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from server.stt.base import SttResult
from server.stt.embedded import EmbeddedStream, EmbeddedSttProvider, open_embedded_stt

__all__ = ["main", "measure_cost", "ramp", "run_step"]

FIXTURE: Final = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech" / "two_sentences.raw"
)
RATE: Final = 16000
FRAME_S: Final = 0.1
FRAME_BYTES: Final = int(RATE * FRAME_S) * 2
COST_PASSES: Final = 3  # fixture passes for the single-stream cost
P99_LIMIT_S: Final = 1.5
STAGGER_S: Final = 1.0
MAX_STREAMS: Final = 24
BUDGET_S: Final = 170.0
DRAIN_S: Final = 3.0  # after the last frame, how long a step waits for late finals
EXPECTED_FINALS: Final = 2  # per fixture pass: one per sentence


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers_cpu_s(provider: EmbeddedSttProvider) -> float:
    return sum(_cpu_s(pid) for pid in provider.statistics().worker_pids if pid is not None)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_cost(audio: bytes) -> dict[str, float]:
    """(a): CPU-s per audio-s of one stream, and how fast it runs unpaced."""
    async with open_embedded_stt(workers=1, streams_per_worker=1) as provider:
        async with provider.open_stream(sample_rate=RATE, language="en") as stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, stream)
                cpu_before, wall_before = _workers_cpu_s(provider), time.perf_counter()
                for _ in range(COST_PASSES):
                    for begin in range(0, len(audio), FRAME_BYTES):
                        await stream.send_audio(audio[begin : begin + FRAME_BYTES])
                await stream.close()
                cpu_s = _workers_cpu_s(provider) - cpu_before
                wall_s = time.perf_counter() - wall_before
    audio_s = COST_PASSES * len(audio) / (RATE * 2)
    cost = cpu_s / audio_s
    cores = os.cpu_count() or 1
    return {
        "audio_s": round(audio_s, 2),
        "cpu_s": round(cpu_s, 2),
        "cpu_s_per_audio_s": round(cost, 4),
        "unpaced_realtime_factor": round(audio_s / wall_s, 1),
        "cores": cores,
        "physical_limit_streams": round(cores / cost, 1),
    }


async def _drain(stream: EmbeddedStream) -> None:
    async for _ in stream.events():
        pass


@dataclass(slots=True)
class _StreamRun:
    offset_s: float
    start: float = 0.0
    latencies: list[float] = field(default_factory=list)
    finals: int = 0
    max_send_lag_s: float = 0.0


async def _paced(stream: EmbeddedStream, run: _StreamRun, audio: bytes, t0: float) -> None:
    run.start = t0 + run.offset_s
    for index, begin in enumerate(range(0, len(audio), FRAME_BYTES)):
        due = run.start + (index + 1) * FRAME_S
        await trio.sleep_until(due)
        run.max_send_lag_s = max(run.max_send_lag_s, trio.current_time() - due)
        await stream.send_audio(audio[begin : begin + FRAME_BYTES])
    await stream.close()


async def _collect(stream: EmbeddedStream, run: _StreamRun) -> None:
    async for event in stream.events():
        if isinstance(event, SttResult) and event.is_final:
            run.finals += 1
            run.latencies.append(trio.current_time() - (run.start + event.end_s))


async def run_step(provider: EmbeddedSttProvider, audio: bytes, streams: int) -> dict[str, object]:
    """(b), one step: ``streams`` paced streams at once; latency percentiles of their finals."""
    runs = [_StreamRun(offset_s=random.uniform(0, STAGGER_S)) for _ in range(streams)]
    cpu_before, wall_before = _workers_cpu_s(provider), time.perf_counter()
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(provider.open_stream(sample_rate=RATE, language="en"))
            for _ in runs
        ]
        paced_s = STAGGER_S + len(audio) / (RATE * 2)
        with trio.move_on_after(paced_s + DRAIN_S):
            async with trio.open_nursery() as nursery:
                t0 = trio.current_time()
                for stream, run in zip(opened, runs, strict=True):
                    nursery.start_soon(_paced, stream, run, audio, t0)
                    nursery.start_soon(_collect, stream, run)
    latencies = [lat for run in runs for lat in run.latencies]
    finals = sum(run.finals for run in runs)
    p99 = _percentile(latencies, 0.99)
    cores = os.cpu_count() or 1
    wall_s = time.perf_counter() - wall_before
    return {
        "streams": streams,
        "finals": finals,
        "expected_finals": EXPECTED_FINALS * streams,
        "p50_s": round(_percentile(latencies, 0.5), 3),
        "p99_s": round(p99, 3),
        "max_s": round(max(latencies, default=float("nan")), 3),
        "max_send_lag_s": round(max(run.max_send_lag_s for run in runs), 3),
        "worker_cpu_util": round((_workers_cpu_s(provider) - cpu_before) / wall_s / cores, 3),
        "ok": finals == EXPECTED_FINALS * streams and p99 < P99_LIMIT_S,
    }


async def ramp(audio: bytes) -> list[dict[str, object]]:
    """(b): N = 1, 2, 3, ... until a step fails, ``MAX_STREAMS``, or the budget runs out."""
    cores = os.cpu_count() or 1
    per_worker = -(-MAX_STREAMS // cores)
    steps: list[dict[str, object]] = []
    started = time.perf_counter()
    step_s = STAGGER_S + len(audio) / (RATE * 2) + 1.5
    async with open_embedded_stt(workers=cores, streams_per_worker=per_worker) as provider:
        for streams in range(1, MAX_STREAMS + 1):
            if time.perf_counter() - started + step_s + 0.6 * streams / cores > BUDGET_S:
                break
            step = await run_step(provider, audio, streams)
            steps.append(step)
            print(json.dumps(step), file=sys.stderr)
            if not step["ok"]:
                break
    return steps


def _table(report: dict[str, object]) -> str:
    cost = report["single_stream"]
    assert isinstance(cost, dict)
    lines = [
        f"one stream: {cost['cpu_s_per_audio_s']} CPU-s per audio-s, "
        f"{cost['unpaced_realtime_factor']}x realtime unpaced; physical limit "
        f"{cost['physical_limit_streams']} streams on {cost['cores']} cores",
        "",
        "streams  finals     p50_s   p99_s   max_s  send_lag_s  cpu_util  ok",
    ]
    ramp_steps = report["ramp"]
    assert isinstance(ramp_steps, list)
    for s in ramp_steps:
        lines.append(
            f"{s['streams']:>7}  {s['finals']:>3}/{s['expected_finals']:<3}  {s['p50_s']:>7}"
            f"  {s['p99_s']:>6}  {s['max_s']:>6}  {s['max_send_lag_s']:>10}"
            f"  {s['worker_cpu_util']:>8}  {s['ok']}"
        )
    lines.append(f"\nsustained realtime streams (p99 final latency < {P99_LIMIT_S} s): "
                 f"{report['sustained_streams']}")  # fmt: skip
    return "\n".join(lines)


async def main() -> None:
    """Measure (a) and (b); print JSON, then a table."""
    audio = FIXTURE.read_bytes()
    cost = await measure_cost(audio)
    print(json.dumps(cost), file=sys.stderr)
    steps = await ramp(audio)
    passed = [int(str(s["streams"])) for s in steps if s["ok"]]
    report: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cores": os.cpu_count()},
        "single_stream": cost,
        "ramp": steps,
        "p99_limit_s": P99_LIMIT_S,
        "sustained_streams": max(passed, default=0),
    }
    print(json.dumps(report, indent=2))
    print(_table(report))


if __name__ == "__main__":
    trio.run(main)
