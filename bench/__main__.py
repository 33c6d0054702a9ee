"""``python -m bench <command>``: ``listen`` (load generator), ``scenarios``, ``report``.

python -m bench listen --token T --sessions 50 ...   # bench.loadgen.main_listen
python -m bench scenarios [--quick] [--only P1,P3]   # writes bench/results/<P>.json
python -m bench scenarios --only P1M                 # P1 per machine (2 workers each)
python -m bench scenarios --only STT                 # bench.stt_capacity -> STT.json
python -m bench report                               # results/*.json -> report.md + PNGs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from bench._proc import pin_self, unpin_self

RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_ONLY: Final = "P1,P2,P3,P4"
STT_TIMEOUT_S: Final = 300.0
#: Scenarios measured on the whole machine: neither the servers nor the generator are pinned.
WHOLE_MACHINE: Final = frozenset({"P1M"})
KNOWN: Final = frozenset({"P1", "P2", "P3", "P4", "P1M", "STT"})


def _run_stt_capacity() -> dict[str, Any]:
    """Run ``python -m bench.stt_capacity`` (bounded) and parse the JSON it prints first."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.stt_capacity"],
        capture_output=True, text=True, timeout=STT_TIMEOUT_S, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    report, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())
    return dict(report)


def _run_scenarios(names: Sequence[str], quick: bool, out_dir: Path) -> int:
    from bench.scenarios import SCENARIOS, Plan

    plan = Plan.quick() if quick else Plan()
    out_dir.mkdir(parents=True, exist_ok=True)
    # STT first and unpinned: its worker processes would inherit this process's CPU 1 pinning.
    for name in sorted(names, key=lambda n: n != "STT"):
        started = time.monotonic()
        if name == "STT":
            data = _run_stt_capacity()
        else:
            # The servers inherit nothing from here (they are pinned with taskset, or not at
            # all); the generator's worker processes do inherit this process's CPU set.
            if name in WHOLE_MACHINE:
                unpin_self()
            else:
                pin_self(1)
            data = trio.run(SCENARIOS[name], plan)
        data["meta"] = {"quick": quick, "wall_s": round(time.monotonic() - started, 1),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {data['meta']['wall_s']} s -> {path}", flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    """Dispatch one command; returns the exit status."""
    if argv and argv[0] == "listen":
        from bench.loadgen import main_listen

        return main_listen(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=("listen", "scenarios", "report"))
    parser.add_argument("--quick", action="store_true", help="the few-minute variants")
    parser.add_argument("--only", default=DEFAULT_ONLY, help="comma-separated: P1..P4, P1M, STT")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    if args.command == "report":
        from bench.report import write_report

        print(write_report(args.results))
        return 0
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - KNOWN
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    return _run_scenarios(names, args.quick, args.results)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
