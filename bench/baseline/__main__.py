"""``python -m bench.baseline``: run the baseline on uvicorn, print ``LISTENING <port>``.

The socket is bound (port 0 picks a free one) before uvicorn starts, and the line is printed
once the app's lifespan has started, so a harness can start this as a subprocess and connect
as soon as it reads the line. Signals are uvicorn's own (SIGTERM/SIGINT: graceful shutdown).

``--workers N`` (default 1, Omi's one worker per pod) runs uvicorn's own multi-process
supervisor, as ``uvicorn --workers N`` does: the parent binds the socket, N spawned children
accept on that one shared socket, and each prints its own ``LISTENING <port>`` line once its
lifespan has started (so a harness waits for N lines). The children read their settings from
the environment (:func:`bench.baseline.app.app_from_env`); the sqlite schema is created once,
by the parent, before they start. Per-process state and what it means for a benchmark: see
the README ("Several workers").
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from bench.baseline.app import (
    ENV_DB,
    ENV_MIN_TIMEOUT_S,
    ENV_PORT,
    Storage,
    create_app,
    settings_from_env,
)

LISTEN_BACKLOG = 2048  # uvicorn's default backlog


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", action="append", default=[], help="accepted bearer token")
    parser.add_argument("--db", default=None, help="sqlite file (default: a temporary one)")
    parser.add_argument(
        "--min-conversation-timeout",
        type=float,
        default=120.0,
        help="Omi raises shorter conversation_timeout values to this (seconds; Omi: 120)",
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=5,
        help="seconds uvicorn waits for sessions after SIGTERM before cancelling them",
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes on the one socket"
    )
    return parser.parse_args(argv)


def _bind(host: str, port: int) -> socket.socket:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to bind a non-loopback address: {host}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _config(app: Any, args: argparse.Namespace, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        # uvicorn's defaults ("auto") pick the uvicorn[standard] extras: uvloop, httptools,
        # and the websockets (sans-I/O) protocol.
        loop="auto",
        http="auto",
        ws="auto",
        **extra,
    )


def _run_workers(args: argparse.Namespace, sock: socket.socket, db_path: str) -> None:
    """uvicorn's multi-process supervisor over ``sock`` (what ``uvicorn --workers N`` runs)."""
    Storage(db_path).close()  # the schema exists before the workers race to create it
    os.environ[ENV_DB] = db_path
    os.environ[ENV_MIN_TIMEOUT_S] = str(args.min_conversation_timeout)
    os.environ[ENV_PORT] = str(sock.getsockname()[1])
    if args.token:
        previous = os.environ.get("BASELINE_TOKENS", "")
        os.environ["BASELINE_TOKENS"] = ",".join([*args.token, *filter(None, [previous])])
    config = _config("bench.baseline.app:app_from_env", args, factory=True, workers=args.workers)
    Multiprocess(config, sockets=[sock]).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        db_path = args.db or str(Path(tmp) / "baseline.sqlite")
        if args.workers > 1:
            _run_workers(args, sock, db_path)
            return 0
        settings = settings_from_env(args.token, db_path, args.min_conversation_timeout)
        settings = type(settings)(
            settings.tokens,
            settings.db_path,
            settings.min_conversation_timeout_s,
            on_started=lambda: print(f"LISTENING {port}", flush=True),
        )
        uvicorn.Server(_config(create_app(settings), args, workers=1)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
