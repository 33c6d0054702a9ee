"""LatestSlot: a one-item mailbox where a newer item replaces an unconsumed older one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, final

import trio

from ._errors import LaneClosedError

__all__ = ["LatestSlot", "LatestSlotStatistics", "start_latest_consumer"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LatestSlotStatistics:
    """A snapshot of a :class:`LatestSlot`.

    Attributes:
        name: the slot's name.
        put: items offered with ``put_nowait``.
        delivered: items handed to a consumer.
        dropped: items replaced by a newer one before anyone consumed them.
        pending: whether an item is waiting to be consumed.
        closed: whether ``close()`` was called.
    """

    name: str
    put: int
    delivered: int
    dropped: int
    pending: bool
    closed: bool


class _Empty:
    """Marks an empty slot (``None`` may be a legitimate item)."""


_EMPTY = _Empty()


@final
class LatestSlot(Generic[T]):
    """A mailbox that holds at most one item: the newest.

    Producers never wait: :meth:`put_nowait` replaces an item nobody has taken yet and counts it
    as dropped (latest-wins; memory is bounded to one item). Consumers wait for the newest item
    with :meth:`get` or ``async for item in slot``. After :meth:`close`, an item already in the
    slot is still delivered, then consumers see the end (``trio.EndOfChannel`` from ``get``, a
    clean end of ``async for``).

    Args:
        name: shown in statistics and errors.
    """

    def __init__(self, name: str = "latest") -> None:
        self.name = name
        self._item: T | _Empty = _EMPTY
        self._waiters = trio.lowlevel.ParkingLot()
        self._closed = False
        self._put = 0
        self._delivered = 0
        self._dropped = 0

    def put_nowait(self, item: T) -> None:
        """Offer ``item``; it replaces an unconsumed older item, which is counted as dropped.

        Raises:
            LaneClosedError: the slot was closed.
        """
        if self._closed:
            raise LaneClosedError(self.name)
        if not isinstance(self._item, _Empty):
            self._dropped += 1
        self._item = item
        self._put += 1
        self._waiters.unpark()

    async def get(self) -> T:
        """Wait for an item and take it (always the newest one); always checkpoints.

        Raises:
            trio.EndOfChannel: the slot is closed and empty.

        Cancellation: a cancelled ``get`` takes nothing; the item stays for the next consumer.
        """
        await trio.lowlevel.checkpoint()
        while isinstance(self._item, _Empty):
            if self._closed:
                raise trio.EndOfChannel
            await self._waiters.park()
        item, self._item = self._item, _EMPTY
        self._delivered += 1
        return item

    def close(self) -> None:
        """Refuse new items; consumers get what is left, then the end. Idempotent."""
        self._closed = True
        self._waiters.unpark_all()

    def __aiter__(self) -> LatestSlot[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> LatestSlotStatistics:
        """Return a frozen snapshot of this slot's counters."""
        return LatestSlotStatistics(
            name=self.name,
            put=self._put,
            delivered=self._delivered,
            dropped=self._dropped,
            pending=not isinstance(self._item, _Empty),
            closed=self._closed,
        )


def start_latest_consumer(
    nursery: trio.Nursery,
    slot: LatestSlot[T],
    fn: Callable[[T], Awaitable[object]],
    *,
    name: str | None = None,
) -> None:
    """Start a task in ``nursery`` that runs ``await fn(item)`` for the newest item, one at a time.

    While ``fn`` runs, newer items replace each other in the slot, so at most one call is in
    flight and at most one item waits; the rest are counted as dropped. The task ends when the
    slot is closed and empty. An exception from ``fn`` ends the task and propagates into
    ``nursery`` (wrap ``fn`` if a failure should be survived).

    Args:
        nursery: the owner of the consumer task.
        slot: the mailbox to drain.
        fn: the async function to run per item.
        name: the task's name (defaults to ``latest:<slot name>``).
    """
    nursery.start_soon(_consume, slot, fn, name=name or f"latest:{slot.name}")


async def _consume(slot: LatestSlot[T], fn: Callable[[T], Awaitable[object]]) -> None:
    async for item in slot:
        await fn(item)
