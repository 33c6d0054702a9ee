"""Builders for webhook and processing tests: a real SQLite store, a user, endpoints, talk.

The store is the real :class:`SqliteStore` (same SQL, same migrations), but its lane runs each
call inline on the event loop instead of in a thread: with ``autojump_clock`` a thread would let
the virtual clock race ahead while SQLite works, so virtual-time tests would be flaky.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

import trio

from lanes import ThreadLane
from server.clock import wall_now
from server.drain import Drain
from server.store import (
    MIGRATIONS,
    Conversation,
    SegmentRow,
    SqliteStore,
    User,
    apply_migrations,
    new_id,
)
from server.store._pool import ConnectionPool
from server.webhooks.models import DeliveryMode, Endpoint, OwnerKind
from server.webhooks.repository import WebhookRepository
from server.webhooks.signing import new_secret

__all__ = [
    "MEETING",
    "InlineLane",
    "World",
    "add_endpoint",
    "open_world",
    "processing_conversation",
]

RetT = TypeVar("RetT")

MEETING: Final = (
    "Okay team, the product launch review is on Tuesday.",
    "I need to send the budget report to finance by Friday.",
    "Can you book the conference room for the launch review next Tuesday?",
    "The landing page copy still needs work before the launch.",
    "Priya will fix the sync interval before the next beta build.",
)


@dataclass(eq=False)
class World:
    """An open store with one user and the webhook repository over it."""

    store: SqliteStore
    repo: WebhookRepository
    user: User
    drain: Drain = field(default_factory=Drain)
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def on_event(self, user_id: str, event: dict[str, object]) -> int:
        """Record an event pushed to a user's live sessions."""
        self.events.append((user_id, event))
        return 1


class InlineLane:
    """A stand-in for the storage ``ThreadLane`` that runs calls on the event loop (tests only)."""

    name = "storage-inline"

    async def run_sync(self, fn: Callable[..., RetT], *args: object) -> RetT:
        """Run ``fn(*args)`` now, after a checkpoint."""
        await trio.lowlevel.checkpoint()
        return fn(*args)

    def statistics(self) -> object:
        """Nothing to report."""
        return None


@asynccontextmanager
async def open_world(tmp_path: pathlib.Path, name: str = "alice") -> AsyncIterator[World]:
    """Open a store in ``tmp_path`` with user ``name`` (inline lane, see the module docstring)."""
    pool = ConnectionPool(tmp_path / "world.db")
    try:
        pool.run(apply_migrations, MIGRATIONS)
        store = SqliteStore(cast(ThreadLane, InlineLane()), pool)
        user = await store.create_user(name, wall_now())
        yield World(store, WebhookRepository(store), user)
    finally:
        pool.close()


async def add_endpoint(
    world: World,
    url: str,
    kinds: Sequence[str],
    *,
    owner: OwnerKind = "webhook",
    name: str = "",
    interval_s: float = 5.0,
    user_id: str | None = None,
    delivery: DeliveryMode = "at_least_once",
) -> Endpoint:
    """Register an endpoint directly in the store (what the API does after its checks)."""
    now = wall_now()
    endpoint = Endpoint(
        id=new_id(),
        user_id=user_id or world.user.id,
        owner_kind=owner,
        name=name,
        url=url,
        kinds=tuple(kinds),
        interval_s=interval_s,
        secret=new_secret(),
        previous_secret=None,
        previous_secret_until=None,
        enabled=True,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
        delivery=delivery,
    )
    await world.repo.create_endpoint(endpoint, 100)
    return endpoint


async def processing_conversation(
    world: World, texts: Sequence[str] = MEETING, *, user_id: str | None = None
) -> Conversation:
    """A conversation with one segment per text, closed into ``processing`` (due now)."""
    store, now = world.store, wall_now()
    conversation = await store.create_conversation(
        user_id or world.user.id, source="omi", language="en", timeout_s=120, now=now
    )
    rows = [
        SegmentRow(new_id(), conversation.id, i, text, "SPEAKER_00", 0, False, None, i * 3.0,
                   i * 3.0 + 2.5, "fake")
        for i, text in enumerate(texts)
    ]  # fmt: skip
    await store.save_segments(conversation.id, rows, [], now)
    assert await store.close_conversation(conversation.id, now) == "processing"
    return conversation
