"""Group commit: concurrent writes of one kind share one storage call and one transaction.

Every live session persists its new segments a few times a second. One storage-lane call per
session and flush costs a thread hop and a transaction each, and at a few hundred sessions the
lane's queue fills (``LaneFullError``: sessions refused with 1013, segment writes retried).
:class:`GroupCommit` turns N concurrent ``submit(item)`` calls into ``ceil(N / max_batch)``
calls of ``run_batch(items)``, which the backend runs as one transaction with a savepoint per
item, so one bad item (a conversation deleted meanwhile) fails alone.

How (no task of its own, so the store needs no nursery):

- The first caller to find no batch in flight becomes the **leader**: after one checkpoint
  (so callers made runnable at the same moment join) it takes up to ``max_batch`` pending
  items and runs them. **Under load** (a batch started less than ``busy_window_s`` ago) it
  first lingers up to ``linger_s`` instead, so the writes of that moment share the call: one
  storage-lane call is a thread hop (~135 µs of CPU here, more than the write itself) and a
  commit, and at a thousand live sessions each final result is a write. How much of
  ``linger_s`` follows ``pressure()`` (0-1; the server passes the event loop's
  :meth:`~server.loopload.LoopLoad.pressure`): with CPU to spare a leader lingers not at all,
  since the hops it would save cost less than the latency it adds (2026-12-02, 40 sessions:
  p50/p99 frame-to-segment 8/14 ms without the linger, 29/36 ms with it; at 150 sessions
  9/17 against 28/39 ms, CPU within the runs' noise). Idle, a write waits for nothing.
  Callers arriving meanwhile queue; when the batch ends the leader hands leadership to the
  oldest queued caller, whose batch then holds everything that queued.
  Under load the batch grows with the queue; idle, a write is one call, as before.
- **Results** are per item: ``submit`` returns when its item is committed, or raises the
  exception of its own item (or of the whole batch call, e.g. ``LaneFullError``).
- **Cancellation**: a queued caller that is cancelled withdraws its item (it was not written)
  and, if it had just been handed leadership, passes it on. A leader's batch runs shielded,
  because other callers' items are in it; the leader's own cancellation is delivered at its
  next checkpoint. The shield's bound is the backend's, not a Trio deadline: the batch is one
  storage-lane call whose every statement waits at most the database's lock timeout (SQLite's
  ``busy_timeout``, 5 s). A Trio-time budget was tried and removed: under a test's autojump
  clock, time jumps while the lane's thread works, so any finite budget expired at random.
- **Bounds**: ``max_pending`` queued items at most; more raise :class:`StoreUnavailableError`
  at once (the caller keeps its data and retries, as for a full lane).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import trio

from server.store.errors import StoreUnavailableError

__all__ = ["GroupCommit", "GroupCommitStatistics"]

ItemT = TypeVar("ItemT")

DEFAULT_MAX_BATCH: Final = 256
DEFAULT_MAX_PENDING: Final = 10_000
#: Under load, how long a leader waits for more items (bounds the latency it adds).
DEFAULT_LINGER_S: Final = 0.02
#: "Under load": the previous batch started less than this long ago.
DEFAULT_BUSY_WINDOW_S: Final = 0.1

#: Runs items in one transaction; returns, per item in order, ``None`` or the item's exception.
BatchRunner = Callable[[Sequence[ItemT]], Awaitable[Sequence[Exception | None]]]


@dataclass(frozen=True, slots=True)
class GroupCommitStatistics:
    """Counters of one :class:`GroupCommit`.

    Attributes:
        batches: ``run_batch`` calls made.
        items: items submitted to those calls.
        largest_batch: the most items one call carried.
        pending: items queued now (not yet in a batch).
        refused: submits refused because ``max_pending`` items were queued.
        withdrawn: queued items withdrawn by their cancelled caller.
        lingered: batches whose leader waited for more items (under load, see ``pressure``).
    """

    batches: int
    items: int
    largest_batch: int
    pending: int
    refused: int
    withdrawn: int
    lingered: int


@dataclass(eq=False, slots=True)
class _Slot(Generic[ItemT]):
    item: ItemT
    wake: trio.Event = field(default_factory=trio.Event)
    promoted: bool = False
    finished: bool = False
    error: Exception | None = None


class GroupCommit(Generic[ItemT]):
    """Coalesces concurrent :meth:`submit` calls into batched ``run_batch`` calls.

    Args:
        run_batch: runs items in one transaction (see :data:`BatchRunner`).
        max_batch: the most items one call carries; ``max_pending``: the most queued items.
        linger_s: the longest a leader waits for more items under load (0: never);
            ``busy_window_s``: "under load" is a batch started less than this long ago.
        pressure: called (in the event loop) when a leader would linger: the share of
            ``linger_s`` to wait, 0-1. ``None``: always all of it (a fixed linger).
    """

    def __init__(
        self,
        run_batch: BatchRunner[ItemT],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_pending: int = DEFAULT_MAX_PENDING,
        linger_s: float = DEFAULT_LINGER_S,
        busy_window_s: float = DEFAULT_BUSY_WINDOW_S,
        pressure: Callable[[], float] | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        if linger_s < 0 or busy_window_s < 0:
            raise ValueError("linger_s and busy_window_s must be >= 0")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._linger_s = linger_s
        self._busy_window_s = busy_window_s
        self._pressure = pressure
        self._last_batch_at = -math.inf
        self._pending: deque[_Slot[ItemT]] = deque()
        self._leading = False
        self._batches = self._items = self._largest = self._refused = self._withdrawn = 0
        self._lingered = 0

    async def submit(self, item: ItemT) -> None:
        """Write ``item`` in the next batch; return once committed, or raise its error."""
        if len(self._pending) >= self._max_pending:
            self._refused += 1
            raise StoreUnavailableError(f"group commit queue full ({self._max_pending} items)")
        slot = _Slot(item)
        self._pending.append(slot)
        if self._leading:
            await self._wait_turn(slot)
            if slot.finished:
                return self._result(slot)
        else:
            self._leading = slot.promoted = True
        await self._lead(slot)
        return self._result(slot)

    def statistics(self) -> GroupCommitStatistics:
        """A snapshot of the counters."""
        return GroupCommitStatistics(
            self._batches, self._items, self._largest, len(self._pending), self._refused,
            self._withdrawn, self._lingered,
        )  # fmt: skip

    async def _wait_turn(self, slot: _Slot[ItemT]) -> None:
        """Wait until the slot is finished by another batch or handed leadership."""
        try:
            await slot.wake.wait()
        except BaseException:
            self._withdraw(slot)
            raise

    async def _lead(self, slot: _Slot[ItemT]) -> None:
        """Run batches until ``slot`` is finished, then hand leadership on."""
        try:
            await self._gather()
        except BaseException:
            self._withdraw(slot)
            raise
        try:
            while not slot.finished:
                await self._run_one_batch()
        finally:
            self._hand_over()

    async def _gather(self) -> None:
        """Let more items join: one checkpoint (callers woken together), or under load
        :meth:`_linger_now` (cancellable: the caller's item is then withdrawn)."""
        linger_s = self._linger_now()
        if linger_s > 0:
            self._lingered += 1
            await trio.sleep(linger_s)
        else:
            await trio.lowlevel.checkpoint()

    def _linger_now(self) -> float:
        """``linger_s`` times the pressure if a batch started within ``busy_window_s``, else 0."""
        if self._linger_s <= 0 or trio.current_time() - self._last_batch_at >= self._busy_window_s:
            return 0.0
        if self._pressure is None:
            return self._linger_s
        return self._linger_s * min(1.0, max(0.0, self._pressure()))

    async def _run_one_batch(self) -> None:  # noqa: ASYNC910 -- run_batch is the checkpoint
        self._last_batch_at = trio.current_time()
        count = min(len(self._pending), self._max_batch)
        batch = [self._pending.popleft() for _ in range(count)]
        self._batches += 1
        self._items += count
        self._largest = max(self._largest, count)
        errors: Sequence[Exception | None] = [None] * count
        # Shielded: other callers' items are in it (bounded by the backend, see the docstring).
        with trio.CancelScope(shield=True):  # noqa: ASYNC912 -- run_batch awaits
            try:
                errors = await self._run_batch([s.item for s in batch])
            except Exception as exc:
                errors = [exc] * count
        for one, error in zip(batch, errors, strict=True):
            one.finished, one.error = True, error
            one.wake.set()

    def _withdraw(self, slot: _Slot[ItemT]) -> None:
        """A cancelled caller: drop its unwritten item; pass leadership on if it held it."""
        if slot in self._pending:
            self._pending.remove(slot)
            self._withdrawn += 1
        if slot.promoted:
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the oldest queued caller as the next leader, or mark that none leads."""
        if self._pending:
            head = self._pending[0]
            head.promoted = True
            head.wake.set()
        else:
            self._leading = False

    @staticmethod
    def _result(slot: _Slot[ItemT]) -> None:
        if slot.error is not None:
            raise slot.error
