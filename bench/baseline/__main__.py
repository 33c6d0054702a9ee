"""``python -m bench.baseline``: run the baseline on uvicorn (1 worker), print ``LISTENING <port>``.

The socket is bound (port 0 picks a free one) before uvicorn starts, and the line is printed
once the app's lifespan has started, so a harness can start this as a subprocess and connect
as soon as it reads the line. Signals are uvicorn's own (SIGTERM/SIGINT: graceful shutdown).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from bench.baseline.app import create_app, settings_from_env

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


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        db_path = args.db or str(Path(tmp) / "baseline.sqlite")
        settings = settings_from_env(args.token, db_path, args.min_conversation_timeout)
        settings = type(settings)(
            settings.tokens,
            settings.db_path,
            settings.min_conversation_timeout_s,
            on_started=lambda: print(f"LISTENING {port}", flush=True),
        )
        config = uvicorn.Config(
            create_app(settings),
            workers=1,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
            # uvicorn's defaults ("auto") pick the uvicorn[standard] extras: uvloop, httptools,
            # and the websockets (sans-I/O) protocol.
            loop="auto",
            http="auto",
            ws="auto",
        )
        uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
