"""The daily ``day_summary`` webhook: a scheduler task and the summary it queues.

Once a day at ``hour_utc`` (``-1``: off) the scheduler summarises, for every user with an
enabled ``day_summary`` endpoint, the conversations completed that UTC day (their titles and
overviews, with the embedded summariser) and queues ``{"summary", "uid", "created_at"}`` in
the outbox, so delivery is durable and retried like ``memory_created``. Each (endpoint, day)
is queued at most once (``dedupe_key``), so a restart in the same hour cannot send it twice.
Time comes from :func:`server.clock.wall_now`, so the schedule runs on a virtual clock in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, final

import trio

from server.clock import wall_now
from server.drain import Drain
from server.processing.summarise import Summariser
from server.store import Conversation, Store
from server.views import iso
from server.webhooks.payloads import day_summary_body
from server.webhooks.repository import WebhookRepository

__all__ = ["DaySummaryScheduler", "compose_summary", "day_start", "next_run_at"]

LOGGER = logging.getLogger(__name__)

#: The most conversations of one day that are summarised.
MAX_CONVERSATIONS: Final = 1000


def next_run_at(now: float, hour_utc: int) -> float:
    """The next ``hour_utc``:00:00 UTC strictly after ``now`` (Unix seconds)."""
    current = datetime.fromtimestamp(now, UTC)
    target = current.replace(hour=hour_utc, minute=0, second=0, microsecond=0)
    if target <= current:
        target += timedelta(days=1)
    return target.timestamp()


def day_start(now: float) -> float:
    """Midnight UTC of ``now``'s day."""
    current = datetime.fromtimestamp(now, UTC)
    return current.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def compose_summary(overview: str, conversations: list[Conversation]) -> str:
    """The day summary text: an overall overview, then one line per conversation."""
    lines = [
        f"- {c.emoji} {c.title or 'Conversation'}: {c.overview}".rstrip(": ") for c in conversations
    ]
    head = overview.strip()
    return f"{head}\n\n" + "\n".join(lines) if head else "\n".join(lines)


@final
class DaySummaryScheduler:
    """Queues each user's day summary once a day (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        repo: WebhookRepository,
        summariser: Summariser,
        drain: Drain,
        hour_utc: int,
        on_queued: Callable[[], None],
    ) -> None:
        self._store = store
        self._repo = repo
        self._summariser = summariser
        self._drain = drain
        self._hour_utc = hour_utc
        self._on_queued = on_queued
        self.runs = 0
        self.queued = 0

    async def run(  # noqa: ASYNC114 -- started by Components.start_workers
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sleep until each day's hour and queue the summaries; return when drained or off."""
        await trio.lowlevel.checkpoint()
        task_status.started()
        if self._hour_utc < 0:
            return
        while not self._drain.requested.is_set():
            now = wall_now()
            at = next_run_at(now, self._hour_utc)
            with trio.move_on_after(at - now):
                await self._drain.requested.wait()
            if self._drain.requested.is_set():
                return
            await self.run_once(at)

    async def run_once(self, now: float) -> int:
        """Queue the day summaries of every subscribed user for ``now``'s day; return how many."""
        self.runs += 1
        queued = 0
        for user_id in await self._repo.day_summary_users():
            if self._drain.requested.is_set():
                break
            try:
                queued += await self.summarise_user(user_id, now)
            except Exception:  # one user's failure must not stop the others
                LOGGER.exception("day summary for user %s failed", user_id)
        self.queued += queued
        if queued:
            self._on_queued()
        return queued

    async def summarise_user(self, user_id: str, now: float) -> int:
        """Queue one user's summary of ``now``'s day (nothing without completed conversations)."""
        start = day_start(now)
        page = await self._store.list_conversations(
            user_id, status="completed", since=start, until=now + 1, limit=MAX_CONVERSATIONS
        )
        conversations = sorted(page.items, key=lambda c: c.created_at)
        if not conversations:
            return 0
        text = "\n".join(f"{c.title}. {c.overview}" for c in conversations)
        summary = await self._summariser.summarise(text, language=conversations[0].language)
        body = day_summary_body(
            compose_summary(summary.overview, conversations), user_id, iso(now) or ""
        )
        day = datetime.fromtimestamp(start, UTC).date().isoformat()
        return await self._repo.enqueue(
            user_id, "day_summary", body, now, dedupe_key=f"day_summary:{day}"
        )
