"""A last-resort exit for a shutdown that overruns its deadline.

``faulthandler.dump_traceback_later(..., exit=True)`` runs in a C watchdog thread: it fires even
if the event loop is stuck, writes every thread's traceback to stderr (what hung is on record)
and ends the process with ``_exit(1)``. Durable state is already committed when it can fire:
every state change is one SQLite transaction, which is either committed (and durable, WAL) or
rolled back on the next open; nothing durable lives only in memory.
"""

from __future__ import annotations

import faulthandler
import sys

__all__ = ["arm_watchdog", "disarm_watchdog"]


def arm_watchdog(seconds: float) -> None:
    """End the process (exit code 1, tracebacks to stderr) unless disarmed within ``seconds``.
    Re-arming replaces the previous timer."""
    faulthandler.dump_traceback_later(max(0.01, seconds), exit=True, file=sys.stderr)


def disarm_watchdog() -> None:
    """Cancel a pending :func:`arm_watchdog`."""
    faulthandler.cancel_dump_traceback_later()
