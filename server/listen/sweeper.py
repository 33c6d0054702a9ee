"""The sweeper: closes conversations whose timeout passed while no session held them.

A disconnect leaves a conversation ``in_progress`` so the device can resume it; if it never
comes back, this worker (owned by the server's work nursery) closes it once its silence timeout
has passed, so nothing stays ``in_progress`` forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import trio

from server.clock import wall_now
from server.drain import Drain
from server.listen.registry import SessionRegistry
from server.store import Store
from server.wakeup import Wakeup

__all__ = ["Sweeper", "SweeperStatistics"]

LOGGER = logging.getLogger(__name__)

BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class SweeperStatistics:
    """Counters of the sweeper."""

    runs: int
    closed: int
    discarded: int
    skipped_live: int
    errors: int


class Sweeper:
    """Periodically closes expired, unattended ``in_progress`` conversations."""

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        processing: Wakeup,
        drain: Drain,
        *,
        interval_s: float,
    ) -> None:
        self._store = store
        self._registry = registry
        self._processing = processing
        self._drain = drain
        self._interval_s = interval_s
        self._counts = {"runs": 0, "closed": 0, "discarded": 0, "skipped_live": 0, "errors": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``interval_s`` until the server drains (then return at once)."""
        task_status.started()
        while True:
            with trio.move_on_after(self._interval_s):
                await self._drain.requested.wait()
            if self._drain.draining:
                return
            try:
                await self.sweep_once()
            except Exception:
                self._counts["errors"] += 1
                LOGGER.warning("sweep failed; retrying next interval", exc_info=True)

    async def sweep_once(self) -> int:
        """Close every expired, unattended conversation now; return how many were closed."""
        self._counts["runs"] += 1
        now = wall_now()
        expired = await self._store.find_expired_in_progress(now, limit=BATCH)
        live = self._registry.live_conversation_ids()
        closed = 0
        for conversation in expired:
            if conversation.id in live:
                self._counts["skipped_live"] += 1
                continue
            outcome = await self._store.close_conversation(conversation.id, now)
            key = "closed" if outcome == "processing" else "discarded"
            self._counts[key] += 1
            closed += 1
        if closed:
            self._processing.set()
        return closed

    def statistics(self) -> SweeperStatistics:
        """A snapshot of the counters."""
        return SweeperStatistics(**self._counts)
