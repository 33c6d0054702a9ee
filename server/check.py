"""``python -m server check``: is this deployment's configuration and store usable?

:func:`run_check` validates what the server would open at start without serving: the settings
are already valid when it is called (building :class:`~server.settings.Settings` validates
them); it reads the schema version of the store the settings name (SQLite in ``data_dir``, or
PostgreSQL with ``database_url``: :func:`server.store.store_target`, the server's own choice),
fails if migrations are pending unless asked to apply them (``--migrate``), and opens the store
the way the server does. It never creates a database or schema without ``--migrate``, and
names a PostgreSQL store by its URL without the password. Blocking access goes through a
one-thread lane.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import trio

from lanes import LaneError, ThreadLane
from server.settings import Settings
from server.store import LATEST_VERSION, StoreError, StoreTarget, store_target

__all__ = ["run_check"]

#: Shielded budget for the check's own thread lane to close.
CLOSE_BUDGET_S: Final = 5.0


async def run_check(settings: Settings, migrate: bool) -> tuple[bool, str]:
    """Check the store of ``settings``; return ``(ok, one line saying what was found)``.

    Cancellation: the caller's cancellation passes through; the lane closes under a shielded,
    bounded scope.
    """
    await trio.lowlevel.checkpoint()
    target = store_target(settings)
    lane = ThreadLane("check", 1)
    try:
        return await _check(lane, target, migrate)
    except (StoreError, LaneError, OSError, sqlite3.Error) as exc:
        return False, f"store {target.name}: {_one_line(exc)}"
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S):
            await lane.aclose()


async def _check(lane: ThreadLane, target: StoreTarget, migrate: bool) -> tuple[bool, str]:
    name = target.name
    before = await lane.run_sync(target.read_version)
    if before is not None and before > LATEST_VERSION:
        return False, (
            f"store {name} has schema {before}, newer than this server's {LATEST_VERSION}"
        )
    pending = LATEST_VERSION - (before or 0)
    if pending and not migrate:
        where = "no schema yet" if before is None else f"schema {before}"
        return False, (
            f"store {name}: {where}, {pending} migration(s) pending "
            "(run `python -m server check --migrate`)"
        )
    async with target.open(lane, 1, None) as store:
        await store.list_users()  # a real query through the store, as the server makes them
    if pending:
        return (
            True,
            f"settings valid; store {name} migrated from schema {before or 0} to {LATEST_VERSION}",
        )
    return True, f"settings valid; store {name} at schema {LATEST_VERSION} (up to date)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
