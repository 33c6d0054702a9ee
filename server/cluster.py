"""This server process as one node of several sharing a store: heartbeat and per-user caps.

:func:`open_node` registers the process in the store's ``nodes`` table, refreshes its heartbeat
every ``node_heartbeat_s`` (a task in its own nursery) and removes the row on exit. Live
``/v4/listen`` sessions are admitted through :meth:`Node.admit`, which counts the user's
sessions on every node whose heartbeat is fresher than ``node_ttl_s`` -- so the per-user cap
holds across processes and machines, and a node that died (SIGKILL, power loss) stops counting
within ``node_ttl_s``; the next heartbeat of any node then deletes it and its sessions.

With SQLite (one process) the same tables are used, so the code path is the same everywhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import trio

from lanes import LaneError
from server.clock import wall_now
from server.settings import Settings
from server.store import Store, StoreError

__all__ = ["Node", "NodeStatistics", "open_node"]

LOGGER = logging.getLogger(__name__)

#: Shielded budget for one bookkeeping write after cancellation (a session's release, this
#: node's removal on exit): short, because it may run at the drain deadline; what it could not
#: write is retried (a release) or expires after ``node_ttl_s`` (the node's row).
CLEANUP_BUDGET_S: Final = 0.5
#: Most releases kept for retry when the store failed them (older ones are left to expire with
#: the node: they only over-count the user's sessions while this node lives).
MAX_PENDING_RELEASES: Final = 10_000


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters of a :class:`Node`."""

    node_id: str
    heartbeats: int
    heartbeat_failures: int
    dead_nodes_removed: int
    admitted: int
    refused_user_cap: int
    pending_releases: int


@final
class Node:
    """This process's identity in the store and its cluster-wide admission (see module doc)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.node_id = uuid.uuid4().hex
        self._store = store
        self._heartbeat_s = settings.node_heartbeat_s
        self._ttl_s = settings.node_ttl_s
        self._max_per_user = settings.max_sessions_per_user
        self._pending_releases: set[str] = set()
        self._counts = {"beats": 0, "failed": 0, "removed": 0, "admitted": 0, "refused": 0}

    async def admit(self, session_id: str, user_id: str) -> bool:
        """Record a live session; ``False`` if the user is at the cap across all nodes.

        Errors: ``StoreError`` and lane errors pass through (the caller refuses with 1013).
        """
        admitted = await self._store.open_live_session(
            session_id,
            self.node_id,
            user_id,
            max_per_user=self._max_per_user,
            now=wall_now(),
            ttl_s=self._ttl_s,
        )
        self._counts["admitted" if admitted else "refused"] += 1
        return admitted

    async def release(self, session_id: str) -> None:
        """Forget a live session; a failed release is retried with the next heartbeat.

        Cancellation: the caller shields it (it runs in the session's ``finally``) and bounds it
        with :data:`CLEANUP_BUDGET_S`; if that deadline passes, it is retried later too.
        """
        try:
            await self._store.close_live_session(session_id)
        except (StoreError, LaneError, trio.Cancelled):
            if len(self._pending_releases) < MAX_PENDING_RELEASES:
                self._pending_releases.add(session_id)
            raise

    async def run_heartbeat(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat every ``node_heartbeat_s`` until cancelled; a failed beat is logged and retried."""
        task_status.started()
        while True:
            await trio.sleep(self._heartbeat_s)
            try:
                await self.beat()
            except (StoreError, LaneError):
                self._counts["failed"] += 1
                LOGGER.warning("node heartbeat failed", exc_info=True)

    async def beat(self) -> None:
        """One heartbeat: refresh this node, delete dead ones, retry failed releases."""
        removed = await self._store.heartbeat_node(self.node_id, wall_now(), self._ttl_s)
        self._counts["beats"] += 1
        if removed:
            self._counts["removed"] += removed
            LOGGER.info("removed %d dead node(s) and their sessions", removed)
        for session_id in list(self._pending_releases):
            await self._store.close_live_session(session_id)
            self._pending_releases.discard(session_id)

    def statistics(self) -> NodeStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return NodeStatistics(
            self.node_id,
            c["beats"],
            c["failed"],
            c["removed"],
            c["admitted"],
            c["refused"],
            len(self._pending_releases),
        )


@asynccontextmanager
async def open_node(store: Store, settings: Settings) -> AsyncIterator[Node]:
    """Register this process as a node, keep its heartbeat, remove it on exit.

    Cancellation: the heartbeat task is cancelled on exit; the removal is shielded and bounded
    by :data:`CLEANUP_BUDGET_S` (if it fails, the row expires after ``node_ttl_s``).
    """
    node = Node(store, settings)
    await store.register_node(node.node_id, wall_now())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run_heartbeat)
            yield node
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_BUDGET_S):
            try:
                await store.remove_node(node.node_id)
            except (StoreError, LaneError):
                LOGGER.warning("removing this node from the store failed", exc_info=True)
