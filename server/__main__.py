"""``python -m server``: run the server, or manage API tokens.

Usage::

    python -m server [--port 8000 --data-dir ./data --stt embedded ...]   # serve
    python -m server token create USER [--label L]                        # prints the token only
    python -m server token list [USER]
    python -m server token revoke TOKEN_ID

Every flag also reads ``TRIOSCRIBE_<NAME>`` from the environment (``python -m server --help``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from functools import partial

import trio

from server.settings import SettingsError, settings_from_argv

__all__ = ["main"]

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_USAGE = 2


def _run_server(argv: Sequence[str]) -> int:
    try:
        settings = settings_from_argv(argv, os.environ)
    except SettingsError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from server.supervisor import WORKER_ENV, run_workers

    worker = os.environ.get(WORKER_ENV)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {'w' + worker + ' ' if worker else ''}%(name)s: %(message)s",
    )
    if settings.workers > 1 and worker is None:
        return run_workers(settings, argv)
    from server.serve import serve

    handle_box: list[object] = []

    async def main() -> bool:
        from server.serve import ServerHandle

        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(
                partial(serve, settings, handle_signals=True)
            )
            handle_box.append(handle)
        return handle.drain.forced

    from server.guard import disarm_watchdog

    try:
        forced = trio.run(main)
    finally:
        disarm_watchdog()
    return EXIT_FORCED if forced else EXIT_OK


def _split_data_dir(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--data-dir DIR`` / ``--data-dir=DIR`` out of ``argv`` (it may stand anywhere)."""
    data_dir: str | None = None
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--data-dir":
            data_dir = next(args, None)
            if data_dir is None:
                raise SettingsError("invalid setting data_dir: --data-dir needs a value")
        elif arg.startswith("--data-dir="):
            data_dir = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return data_dir, rest


def _run_tokens(argv: Sequence[str]) -> int:
    from server.settings import ENV_PREFIX
    from server.tokens_cli import main as tokens_main

    try:
        data_dir, rest = _split_data_dir(argv)
    except SettingsError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    chosen = data_dir or os.environ.get(ENV_PREFIX + "DATA_DIR") or "data"
    return tokens_main(rest, data_dir=pathlib.Path(chosen))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _, rest = _split_data_dir(args)
    except SettingsError:
        rest = args
    if rest and rest[0] in {"token", "user"}:
        return _run_tokens(args)
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
