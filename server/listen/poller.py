"""``ReadPoller``: listen sockets' reads woken in batches, once per tick, by one epoll.

A session that waits on its own socket costs, per 100 ms audio frame, a wake-up of the process,
a re-arming of Trio's one-shot epoll registration, a read that finds nothing and a read that
finds the frame: on loopback with 150 sessions that was 63 µs of CPU per frame before any of the
session's own work, against 28-35 µs when one task reads every ready socket per 50-100 ms tick
(``bench/results/profile.md``). So the fast transport's sessions park here instead:

- every registered socket is in one **level-triggered** epoll of its own, registered once;
- the poller task waits (in Trio) until that epoll is readable, then polls it without blocking
  at most ``SLOTS`` times per tick, and wakes the sessions parked on ready sockets; a session
  that was busy is reported again at the next poll (level-triggered: nothing is missed);
- each socket has a **slot** (registrations go round-robin over ``SLOTS``), and the polls take
  turns: a ready socket is woken at its slot's turn, once per tick, so each poll wakes only its
  slots' share of the sessions (a tenth at 300 ms). Waking all of them at once made each Trio
  scheduling round as long as every session's work (P2's loop lag p99 went from 4 ms to
  27-80 ms). Polls are at least ``MIN_POLL_INTERVAL_S`` apart, so at a short tick one poll
  takes several slots' turns (at 20 ms: 2 polls of 5 slots). A poll costs a sleep, a wait on
  the epoll and a pass over every ready socket; 10 polls per 20 ms tick were ~5% of the
  server's CPU at 150 sessions;
- a socket not woken for a whole tick (a quiet session, or an idle process) is woken at the
  next poll, whatever its slot: the first frame after a quiet spell waits at most one poll
  interval (tick / :func:`polls_per_tick`). The added latency is at most one tick, and only
  under load.

The tick trades latency for CPU, so it **follows the load**: it is ``min_tick_s`` while the
event loop's thread uses less than ``LOW_LOAD`` of a core, ``tick_s`` from ``HIGH_LOAD`` on, and
in between in proportion (:mod:`server.loopload`: the load is the share of wall time that thread
ran or waited for a CPU; the group commit's linger follows the same figure). With headroom a
frame is read within a few milliseconds (CPU is spent on latency); a busy process reads three
100 ms frames per wake-up at the default 300 ms. Past the point where the CPU is short, fewer
wake-ups mean less queueing, so a longer tick *lowers* the tail: 200 ms at 800 sessions cost 19%
less CPU than 100 ms with the same p99 (0.65 s against 0.60 s); 300 ms at 1,200 sessions cost
13% less than 200 ms (0.82 against 0.95 ms per session-second) with p99 0.40-0.49 s against
0.44-1.02 s, and held 1,400 at 0.44-0.53 s (400 ms: no better). A fixed 200 ms tick at 100-150
sessions put the p99 frame-to-segment at ~220 ms where it had been 18-30 ms: the tick is the
maximum only from ``HIGH_LOAD`` on. ``--listen-read-tick-ms 0`` keeps one wait per socket (no
poller); equal minimum and maximum make the tick fixed. The server's defaults are 20 and 300 ms.

Ownership: :func:`open_read_poller` owns the epoll and the poller task (cancelled and closed on
exit; the composition root closes it after every session ended). A session registers its socket
with :meth:`ReadPoller.registered` for the time it reads, and parks with
:meth:`ReadPoller.wait_readable` (cancellable: a cancelled wait loses nothing, the data stays in
the kernel). Closing a registered socket under a parked reader must go through
:meth:`ReadPoller.notify_closing` (the guarded stream's abort hook does), which wakes it with
``trio.ClosedResourceError`` as Trio's own ``notify_closing`` would.
"""

from __future__ import annotations

import math
import select
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Final, final

import outcome
import trio

from server.loopload import LoopLoad, pressure

__all__ = [
    "MIN_POLL_INTERVAL_S",
    "SLOTS",
    "ReadPoller",
    "ReadPollerStatistics",
    "open_read_poller",
    "poller_supported",
    "polls_per_tick",
    "tick_for",
]

#: Slots per tick; a poll wakes the ready sockets of its slots (and the ones quiet for a tick).
SLOTS: Final = 10
#: Polls are at least this far apart (real seconds): at most ``SLOTS`` polls per tick, fewer
#: at a short tick, each then taking several slots' turns.
MIN_POLL_INTERVAL_S: Final = 0.01

#: Events asked for: data (and, always reported by epoll, hang-up and errors: EOF to read).
_EVENTS: Final = select.EPOLLIN if hasattr(select, "EPOLLIN") else 0


def poller_supported() -> bool:
    """Whether this platform has epoll (Linux); elsewhere each session waits on its socket."""
    return hasattr(select, "epoll")


def polls_per_tick(tick_s: float) -> int:
    """Polls in a tick of ``tick_s``: ``SLOTS``, or fewer so that they are at least
    ``MIN_POLL_INTERVAL_S`` apart (at least one)."""
    return max(1, min(SLOTS, int(tick_s / MIN_POLL_INTERVAL_S + 1e-9)))


def tick_for(load: float, min_tick_s: float, max_tick_s: float) -> float:
    """The tick at ``load``: from ``min_tick_s`` to ``max_tick_s`` with the load's
    :func:`~server.loopload.pressure`."""
    return min_tick_s + (max_tick_s - min_tick_s) * pressure(load)


@dataclass(frozen=True, slots=True)
class ReadPollerStatistics:
    """A snapshot of a :class:`ReadPoller`."""

    #: the tick now: polls are at least a ``SLOTS``-th of it apart (seconds)
    tick_s: float
    #: its bounds, and the load it follows (share of a core, see :class:`LoopLoad`)
    min_tick_s: float
    max_tick_s: float
    load: float
    #: sockets registered now
    registered: int
    #: readers parked now (waiting for their socket's next poll)
    parked: int
    #: polls since start, and readers they woke
    polls: int
    wakes: int
    #: the most readers one poll woke (about registered / ``SLOTS`` under steady load)
    largest_wake: int


@final
class _Registration:
    """One registered socket: its slot, and when its reader was last woken."""

    __slots__ = ("slot", "woken_at")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.woken_at = -math.inf


@final
class ReadPoller:
    """One epoll for the listen sockets of this process (see the module docstring).

    Args:
        tick_s: the tick under load, the most time between two wake-ups of a busy socket's
            reader (> 0); polls are ``tick / SLOTS`` apart at least.
        min_tick_s: the tick with headroom (0 < ``min_tick_s`` <= ``tick_s``; default
            ``tick_s``: a fixed tick). Not 0: a socket stays ready until its woken reader
            reads it, and the poller would poll it again and again meanwhile.
        load: returns the event loop's load (share of a core), called at every poll; default
            a :class:`LoopLoad` (only used when the tick can move).

    Only :func:`open_read_poller` makes one: it runs :meth:`run` and closes the epoll.
    """

    def __init__(
        self,
        tick_s: float,
        *,
        min_tick_s: float | None = None,
        load: Callable[[], float] | None = None,
    ) -> None:
        min_tick_s = tick_s if min_tick_s is None else min_tick_s
        if not 0 < min_tick_s <= tick_s:
            raise ValueError("need 0 < min_tick_s <= tick_s")
        self._max_tick_s = tick_s
        self._min_tick_s = min_tick_s
        self._load = (load or LoopLoad()) if min_tick_s < tick_s else None
        self._load_now = 0.0
        self._tick_s = min_tick_s if self._load is not None else tick_s
        self._epoll = select.epoll()
        #: fd -> the registration that owns it (an fd number is reused once closed)
        self._owners: dict[int, _Registration] = {}
        self._parked: dict[int, trio.lowlevel.Task] = {}
        self._next_slot = 0
        self._polls = 0
        self._wakes = 0
        self._largest_wake = 0

    @contextmanager
    def registered(self, fd: int) -> Iterator[None]:
        """Register ``fd`` (a connected, non-blocking socket) for the block's duration."""
        token = _Registration(self._next_slot)
        self._next_slot = (self._next_slot + 1) % SLOTS
        try:
            self._epoll.register(fd, _EVENTS)
        except FileExistsError:  # a closed socket's number, reused: take it over
            self._epoll.modify(fd, _EVENTS)
        self._owners[fd] = token
        try:
            yield
        finally:
            if self._owners.get(fd) is token:
                self.notify_closing(fd)

    def _forget(self, fd: int) -> None:
        del self._owners[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:  # already closed: the kernel dropped it
            pass

    async def wait_readable(self, fd: int) -> None:
        """Park until a poll finds ``fd`` readable (data, EOF or an error to read).

        Raises:
            trio.ClosedResourceError: ``fd`` is not registered, or was closed meanwhile.
            trio.BusyResourceError: another task already waits on ``fd``.
        """
        if fd not in self._owners:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("socket not registered (closed)")
        if fd in self._parked:
            await trio.lowlevel.checkpoint()
            raise trio.BusyResourceError("another task waits on this socket")
        self._parked[fd] = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            del self._parked[fd]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def notify_closing(self, fd: int) -> None:
        """``fd`` is about to be closed: unregister it and wake its reader with
        ``trio.ClosedResourceError``. Does nothing for an fd that is not registered."""
        if fd in self._owners:
            self._forget(fd)
        task = self._parked.pop(fd, None)
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("socket closed")))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll and wake, forever (see the module docstring). Cancel it to stop; parked
        readers are not woken (their own scopes end them)."""
        task_status.started()
        epoll = self._epoll
        next_poll = -math.inf
        turn = 0
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            now = trio.current_time()
            if now < next_poll:
                await trio.sleep_until(next_poll)
                now = trio.current_time()
            if self._load is not None:
                self._load_now = self._load()
                self._tick_s = tick_for(self._load_now, self._min_tick_s, self._max_tick_s)
            polls = polls_per_tick(self._tick_s)
            span = -(-SLOTS // polls)  # slots whose turn this poll is (all covered per tick)
            next_poll = now + self._tick_s / polls
            turn = (turn + span) % SLOTS
            self._wake_ready(epoll.poll(0, len(self._owners) + 1), turn, span, now)

    def _wake_ready(self, ready: list[tuple[int, int]], turn: int, span: int, now: float) -> None:
        """Wake the parked readers of ``ready`` sockets whose slot is one of the ``span``
        from ``turn``, or who were not woken for a tick."""
        parked, owners, reschedule = self._parked, self._owners, trio.lowlevel.reschedule
        quiet_since = now - self._tick_s
        woken = 0
        for fd, _events in ready:
            task = parked.get(fd)
            if task is None:
                continue
            owner = owners[fd]  # a parked reader's socket is registered (see notify_closing)
            if (owner.slot - turn) % SLOTS < span or owner.woken_at <= quiet_since:
                del parked[fd]
                owner.woken_at = now
                woken += 1
                reschedule(task)
        self._polls += 1
        self._wakes += woken
        self._largest_wake = max(self._largest_wake, woken)

    def statistics(self) -> ReadPollerStatistics:
        """A snapshot of the poller's counts."""
        return ReadPollerStatistics(
            tick_s=self._tick_s,
            min_tick_s=self._min_tick_s,
            max_tick_s=self._max_tick_s,
            load=self._load_now,
            registered=len(self._owners),
            parked=len(self._parked),
            polls=self._polls,
            wakes=self._wakes,
            largest_wake=self._largest_wake,
        )

    def _close(self) -> None:
        self._epoll.close()


@asynccontextmanager
async def open_read_poller(
    tick_s: float, *, min_tick_s: float | None = None, load: Callable[[], float] | None = None
) -> AsyncIterator[ReadPoller | None]:
    """A running :class:`ReadPoller` (arguments as there), or ``None`` when ``tick_s`` is 0 or
    the platform has no epoll (sessions then wait on their own sockets).

    Cancellation: on exit the poller task is cancelled and the epoll closed; close it only
    after every registered session ended (nothing wakes a parked reader afterwards).
    """
    if tick_s <= 0 or not poller_supported():
        await trio.lowlevel.checkpoint()
        yield None
        return
    poller = ReadPoller(tick_s, min_tick_s=min_tick_s, load=load)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            try:
                yield poller
            finally:
                nursery.cancel_scope.cancel()
    finally:
        poller._close()
