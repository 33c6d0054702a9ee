"""``python -m bench listen``: the load generator's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from bench.loadgen.aggregate import format_ms, format_table
from bench.loadgen.config import CLIENTS, DEFAULT_STEPS, LoadConfig
from bench.loadgen.run import find_max_sessions, run_listen_load

__all__ = ["main_listen"]


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
        print(f"\nmax sessions with p99 < {format_ms(args.p99_limit)}: {best}")
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
