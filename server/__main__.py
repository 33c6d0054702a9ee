"""``python -m server``: run the server, check a deployment, or manage API tokens.

Usage::

    python -m server [--port 8000 --data-dir ./data --stt embedded ...]   # serve
    python -m server check [--migrate] [same flags]      # settings + store, one line, exit 0/1
    python -m server token create USER [--label L]       # prints the token only
    python -m server token list [USER]
    python -m server token revoke TOKEN_ID
    python -m server --version

Every flag also reads ``TRIOSCRIBE_<NAME>`` from the environment (``python -m server --help``);
a flag wins over its variable. ``check``, ``token`` and ``user`` open the store the server
would (:func:`server.store.open_store`: SQLite in ``--data-dir``, or PostgreSQL with
``--database-url``); settings flags may stand anywhere around a ``token``/``user`` command.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Final, NoReturn

import trio

from server.settings import SettingsError, parse_settings, settings_parser

__all__ = ["main"]

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

COMMANDS_EPILOG = """commands:
  check [--migrate]            validate the settings and open the store (pending schema
                               migrations fail the check; --migrate applies them); one line,
                               exit 0 or 1
  token create USER [--label L] | token list [USER] | token revoke ID
                               manage API tokens (see also: user list)
  Both use the server's store: SQLite in --data-dir, or PostgreSQL with --database-url.

Flags win over TRIOSCRIBE_* environment variables, which win over the defaults."""


def _run_server(argv: Sequence[str]) -> int:
    parser = settings_parser(
        description="Run the trioscribe server.",
        epilog=COMMANDS_EPILOG,
        usage="python -m server [check | token ... | user list] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        settings = parse_settings(parser.parse_args(list(argv)), os.environ)
    except SettingsError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from server.logs import configure_logging
    from server.supervisor import WORKER_ENV, WorkerTag, lifeline_fd, run_workers

    handler = configure_logging(
        settings.log_level, settings.log_format, secrets=settings.secret_values()
    )
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        handler.addFilter(WorkerTag(worker))
    if settings.workers > 1 and worker is None:
        return run_workers(settings, argv)
    from server.serve import serve

    lifeline = lifeline_fd(os.environ) if worker is not None else None

    async def main() -> bool:
        from server.serve import ServerHandle

        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(
                partial(serve, settings, handle_signals=True, lifeline=lifeline)
            )
            _tune_gc()
        return handle.drain.forced

    from server.guard import disarm_watchdog

    try:
        forced = trio.run(main)
    finally:
        disarm_watchdog()
    return EXIT_FORCED if forced else EXIT_OK


#: Container allocations (net) between young-generation collections; CPython's default is 700.
GC_YOUNG_THRESHOLD: Final = 10_000


def _tune_gc() -> None:
    """The server is up: what it holds now (modules, settings, the composition root) lives as
    long as the process, so the cyclic collector stops walking it (``gc.freeze``), and young
    collections run less often. At 150 sessions the collector took 2% of the server's CPU
    (0.135 s of 6.5 s in 20 s), and a full pass walked ~100k objects on the event loop's
    thread; frozen, with this threshold, 0.014 s (4 young collections). Garbage without cycles
    is freed by reference counting as before; cycles wait at most this many allocations."""
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class _CheckParser(argparse.ArgumentParser):
    """Usage errors of ``check`` are one line and exit 1 like every other failed check."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def _run_check(argv: Sequence[str]) -> int:
    parser = settings_parser(
        "python -m server check",
        parser_class=_CheckParser,
        description="Validate the settings and open the store; print one line; exit 0 or 1.",
    )
    parser.add_argument(
        "--migrate", action="store_true", help="apply pending schema migrations (else: fail)"
    )
    try:
        args = parser.parse_args(list(argv))
        settings = parse_settings(args, os.environ)
    except SettingsError as exc:
        print(f"check failed: {exc}")
        return EXIT_CHECK_FAILED
    from server.check import run_check
    from server.logs import redact

    ok, line = trio.run(run_check, settings, args.migrate)
    print(redact(("ok: " if ok else "check failed: ") + line, settings.secret_values()))
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _known_settings(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` into the settings flags (anywhere) and the rest, in order."""
    parser = settings_parser(add_help=False, allow_abbrev=False, parser_class=_CheckParser)
    return parser.parse_known_args(list(argv))


def _run_tokens(argv: Sequence[str]) -> int:
    """``token ...`` / ``user list`` with any settings flags mixed in (``--data-dir``,
    ``--database-url``, ...): the store is the one those settings name, as for the server."""
    from server.tokens_cli import main as tokens_main

    try:
        args, rest = _known_settings(argv)
        settings = parse_settings(args, os.environ)
    except SettingsError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return tokens_main(rest, settings=settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = _known_settings(args)[1][:1]
    except SettingsError:  # a bad flag: the server's parser reports it
        command = []
    if command in (["token"], ["user"]):
        return _run_tokens(args)
    if args and args[0] == "check":
        return _run_check(args[1:])
    return _run_server(args)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown. Everything the server opened is closed and
    every state change committed when ``main`` returns; tearing down the loaded modules takes
    0.5-1 s more on a busy host, time that would count against the shutdown deadline."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
