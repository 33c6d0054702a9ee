"""``python -m bench.loadgen``: the CLI, or worker mode (used by ``run_listen_load`` with
``processes > 1``: config JSON, worker index, process count; prints the worker's report)."""

from __future__ import annotations

import json
import sys

import trio

from bench.loadgen.cli import main_listen
from bench.loadgen.run import config_from_json, worker_main

if len(sys.argv) == 5 and sys.argv[1] == "worker":
    cfg, worker_index, count = config_from_json(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(trio.run(worker_main, cfg, worker_index, count)))
    raise SystemExit(0)
raise SystemExit(main_listen(sys.argv[1:]))
