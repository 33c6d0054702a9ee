"""``python -m server check``: is this deployment's configuration and store usable?

:func:`run_check` validates what the server would open at start without serving: the settings
are already valid when it is called (building :class:`~server.settings.Settings` validates
them); it reads the store's schema version, fails if migrations are pending unless asked to
apply them (``--migrate``), and opens the store the way the server does. It never creates a
database without ``--migrate``. Blocking file access goes through a one-thread lane.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import trio

from lanes import LaneError, ThreadLane
from server.settings import Settings
from server.store import (
    DB_FILENAME,
    LATEST_VERSION,
    StoreError,
    open_sqlite_store,
)
from server.store.migrations import schema_version

__all__ = ["run_check"]

#: Shielded budget for the check's own thread lane to close.
CLOSE_BUDGET_S: Final = 5.0


def _read_version(path: Path) -> int | None:
    """The schema version of the database at ``path``; ``None`` if there is none (blocking)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return schema_version(conn)
    finally:
        conn.close()


async def run_check(settings: Settings, migrate: bool) -> tuple[bool, str]:
    """Check the store of ``settings``; return ``(ok, one line saying what was found)``.

    Cancellation: the caller's cancellation passes through; the lane closes under a shielded,
    bounded scope.
    """
    await trio.lowlevel.checkpoint()
    path = settings.data_dir / DB_FILENAME
    lane = ThreadLane("check", 1)
    try:
        return await _check(lane, path, migrate)
    except (StoreError, LaneError, OSError, sqlite3.Error) as exc:
        return False, f"store {path}: {_one_line(exc)}"
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S):
            await lane.aclose()


async def _check(lane: ThreadLane, path: Path, migrate: bool) -> tuple[bool, str]:
    before = await lane.run_sync(_read_version, path)
    if before is not None and before > LATEST_VERSION:
        return False, (
            f"store {path} has schema {before}, newer than this server's {LATEST_VERSION}"
        )
    pending = LATEST_VERSION - (before or 0)
    if pending and not migrate:
        where = "no database yet" if before is None else f"schema {before}"
        return False, (
            f"store {path}: {where}, {pending} migration(s) pending "
            "(run `python -m server check --migrate`)"
        )
    async with open_sqlite_store(path, lane=lane) as store:
        await store.list_users()  # a real query through the store, as the server makes them
    if pending:
        return (
            True,
            f"settings valid; store {path} migrated from schema {before or 0} to {LATEST_VERSION}",
        )
    return True, f"settings valid; store {path} at schema {LATEST_VERSION} (up to date)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
