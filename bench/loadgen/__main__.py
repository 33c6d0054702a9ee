"""``python -m bench.loadgen``: the CLI, or worker mode (used by ``run_listen_load`` with
``processes > 1``: config JSON, worker index, process count; prints the worker's report).

A worker runs with the cyclic garbage collector off: its full collections paused the ticker past
the 50 ms lateness bound (P1 at 800 sessions: 33-170 late frames with it, 0 without, for either
server). Nearly everything a worker allocates is freed by reference counting, and a worker lives
one step (about a minute), so what cycles it leaves are bounded by the step.
"""

from __future__ import annotations

import gc
import json
import sys

import trio

from bench.loadgen.cli import main_listen
from bench.loadgen.run import config_from_json, worker_main

if len(sys.argv) == 5 and sys.argv[1] == "worker":
    gc.disable()
    cfg, worker_index, count = config_from_json(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(trio.run(worker_main, cfg, worker_index, count)))
    raise SystemExit(0)
raise SystemExit(main_listen(sys.argv[1:]))
