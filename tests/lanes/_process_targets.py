"""Session objects for the ProcessLane tests (imported in the worker processes)."""

from __future__ import annotations

import os
import time


class Counter:
    """Keeps a running total per session, and misbehaves on request."""

    def __init__(self, start: int = 0) -> None:
        self.total = start

    def add(self, amount: int) -> int:
        """Add ``amount`` and return the new total."""
        self.total += amount
        return self.total

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def echo(self, value: object) -> object:
        """Return ``value`` unchanged (a round trip through pickle both ways)."""
        return value

    def fail(self, message: str) -> None:
        """Raise a ValueError with ``message``."""
        raise ValueError(message)

    def nap(self, seconds: float) -> str:
        """Block the worker for ``seconds`` (GIL-holding work stand-in)."""
        time.sleep(seconds)  # noqa: TID251 -- runs in a worker process, not on an event loop
        return "rested"

    def crash(self) -> None:
        """Kill the worker process at once."""
        os._exit(3)

    def close(self) -> None:
        """Record the close in a file named by the COUNTER_CLOSE_LOG environment variable."""
        log = os.environ.get("COUNTER_CLOSE_LOG")
        if log:
            with open(log, "a") as out:
                out.write(f"{self.total}\n")


def broken_factory() -> Counter:
    """A factory that always fails."""
    raise RuntimeError("factory refused")
