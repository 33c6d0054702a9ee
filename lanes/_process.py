"""ProcessLane: a fixed set of worker processes hosting pinned, stateful sessions.

For CPU work that holds the GIL (threads cannot scale it), e.g. a speech decoder per stream::

    async with open_process_lane("stt", factory="pkg.mod:Decoder", workers=2,
                                 sessions_per_worker=3) as lane:
        async with lane.open_session(16000) as session:     # Decoder(16000) in a worker
            text = await session.call("feed", pcm)          # session_obj.feed(pcm) there

Design:

- **Workers.** ``workers`` child processes (``python .../lanes/_process_worker.py FACTORY``), spawned
  with :func:`trio.lowlevel.open_process`; no threads, no pools. Each speaks length-prefixed
  pickle frames over its stdin/stdout (see :mod:`lanes._process_worker`) and handles one request
  at a time. The lane's own nursery holds, per worker, a supervisor task with one reader and one
  writer task. The parent's ``sys.path`` is passed as ``PYTHONPATH`` so the child imports the
  same modules.
- **Sessions.** ``open_session(*args)`` creates ``factory(*args)`` in the least-loaded worker
  (ties: the lowest index) and pins it there for life. There are ``workers x
  sessions_per_worker`` slots. When all are taken, up to ``max_waiting`` callers wait for one;
  beyond that :class:`LaneFullError` is raised at once (``max_waiting=0``: never wait).
  Calls on one session are serialized (a lock); closing the session calls the object's
  ``close()`` in the worker, if it has one.
- **Errors.** An exception raised by the remote object is re-raised in the parent as
  :class:`RemoteCallError` carrying the remote type name, message and traceback text (never the
  unpickled original: the parent may not be able to import its type, and one error tree keeps
  the boundary honest). The session stays usable.
- **Crashes.** A worker that dies (``os._exit``, a signal, a segfault) makes every in-flight and
  later call on its sessions raise :class:`WorkerCrashedError`; the lane starts a replacement
  (after ``RESTART_DELAY_S``, doubling up to ``RESTART_DELAY_CAP_S`` while replacements die before
  they are ready) and counts ``crashes`` / ``restarts``. New sessions go to live workers.
- **Cancellation.** A caller cancelled mid-call returns at once; the worker finishes the request
  and its reply is discarded. Later calls on the session queue behind it, in order.
- **Shutdown.** Leaving ``open_process_lane`` (any way) closes every worker's stdin, which makes
  it close its sessions and exit; each worker gets ``EXIT_GRACE_S`` (shielded, own deadline),
  then it is killed and reaped (the lane's nursery gets the same deadline, so a worker stuck in a
  long call cannot hold the exit). No process outlives the block.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, NoReturn, final

import trio

from ._errors import (
    LaneClosedError,
    LaneError,
    LaneFullError,
    RemoteCallError,
    WorkerCrashedError,
)
from ._process_worker import HEADER, MAX_FRAME_BYTES
from ._stats import LatencyWindow

__all__ = [
    "ProcessLane",
    "ProcessLaneStatistics",
    "ProcessSession",
    "open_process_lane",
]

LOGGER = logging.getLogger(__name__)

#: Run by path, not ``-m lanes._process_worker``: that would import the whole ``lanes`` package
#: (trio, httpx: ~0.4 s) into every worker, which needs only the stdlib and its factory.
WORKER_SCRIPT: Final = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "_process_worker.py"
)
#: Frames waiting for one worker's stdin; a full buffer makes senders wait (backpressure).
WRITE_BUFFER: Final = 64
#: How long a worker may take to exit after its stdin closed, before it is killed.
EXIT_GRACE_S: Final = 5.0
#: Bound on reaping a killed worker (SIGKILL is immediate; this only guards the wait).
KILL_WAIT_S: Final = 2.0
#: How long closing a session waits for the worker's answer (shielded).
SESSION_CLOSE_GRACE_S: Final = 5.0
RESTART_DELAY_S: Final = 0.1
RESTART_DELAY_CAP_S: Final = 5.0
READ_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class ProcessLaneStatistics:
    """A snapshot of a :class:`ProcessLane`.

    Attributes:
        name: the lane's name.
        workers: configured worker processes.
        workers_alive: workers running and ready now.
        capacity: session slots (``workers * sessions_per_worker``).
        sessions_open: sessions holding a slot now.
        sessions_opened: sessions opened in total.
        waiting: callers waiting for a slot.
        rejected: ``open_session`` calls refused with :class:`LaneFullError`.
        calls: calls answered (successfully or with a remote error).
        failed_calls: calls answered with :class:`RemoteCallError`.
        crashes: workers that died while the lane was open.
        restarts: replacement workers started.
        worker_loads: sessions per worker slot.
        worker_pids: the current process id per worker slot (None while starting).
        call_p50_s / call_p99_s: round-trip time of calls (recent window).
    """

    name: str
    workers: int
    workers_alive: int
    capacity: int
    sessions_open: int
    sessions_opened: int
    waiting: int
    rejected: int
    calls: int
    failed_calls: int
    crashes: int
    restarts: int
    worker_loads: tuple[int, ...]
    worker_pids: tuple[int | None, ...]
    call_p50_s: float
    call_p99_s: float


@final
class _Pending:
    """One request waiting for its reply (or for its worker to die)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: tuple[Any, ...] = ("crashed",)

    def resolve(self, reply: tuple[Any, ...]) -> None:
        self.reply = reply
        self.done.set()


@final
class _Worker:
    """One worker process generation: its request channel and unanswered requests."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.ready = trio.Event()
        self.settled = trio.Event()  # set once ready or dead
        self.dead = False
        self.pending: dict[int, _Pending] = {}
        self.send, self.receive = trio.open_memory_channel[tuple[Any, ...]](WRITE_BUFFER)

    async def request(self, req: int, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send ``message`` and wait for its reply frame; ``("crashed",)`` if the worker died."""
        await trio.lowlevel.checkpoint()
        if self.dead:
            return ("crashed",)
        pending = self.pending[req] = _Pending()
        try:
            try:
                await self.send.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return ("crashed",)
            await pending.done.wait()
        finally:
            self.pending.pop(req, None)
        return pending.reply

    def fail_all(self) -> None:
        """Mark the worker dead and wake every caller still waiting for it."""
        self.dead = True
        self.settled.set()
        self.send.close()
        for pending in self.pending.values():
            pending.resolve(("crashed",))
        self.pending.clear()


@final
class _Slot:
    """A worker position: the current process generation and the sessions pinned to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker = _Worker(index)
        self.replaced = trio.Event()
        self.load = 0

    def replace(self) -> _Worker:
        """Start a new generation and wake whoever waits for one."""
        old_event, self.replaced = self.replaced, trio.Event()
        self.worker = _Worker(self.index)
        old_event.set()
        return self.worker

    async def live_worker(self) -> _Worker:
        """Wait until this slot has a ready worker (the caller owns the time) and return it."""
        while True:
            worker = self.worker
            await worker.settled.wait()
            if not worker.dead:
                return worker
            await self.replaced.wait()


@final
class ProcessSession:
    """A stateful object living in one worker process (see :class:`ProcessLane`)."""

    def __init__(self, lane: ProcessLane, sid: int, worker: _Worker) -> None:
        self._lane = lane
        self.id = sid
        self._worker = worker
        self._lock = trio.Lock()
        self._closed = False

    @property
    def worker_index(self) -> int:
        """The worker slot this session is pinned to."""
        return self._worker.index

    @property
    def pid(self) -> int | None:
        """The process id of the worker that hosts this session."""
        return self._worker.pid

    async def call(self, method: str, *args: object) -> Any:
        """Run ``obj.method(*args)`` in the worker and return its (pickled) result.

        Raises:
            RemoteCallError: the method raised; the session stays usable.
            WorkerCrashedError: the worker died (now or earlier); the session is gone.
            LaneClosedError: the session was closed.
        """
        async with self._lock:
            if self._closed:
                raise LaneClosedError(f"{self._lane.name}/session-{self.id}")
            return await self._lane._request(self._worker, ("call", self.id, method, args))

    async def _close(self) -> None:
        """Close the object in the worker; failures are logged (the slot is freed anyway)."""
        self._closed = True
        await trio.lowlevel.checkpoint()
        if self._worker.dead:
            return
        try:
            await self._lane._request(self._worker, ("close", self.id))
        except LaneError as exc:
            LOGGER.warning(
                "lane %r: closing session %d failed: %s",
                self._lane.name,
                self.id,
                exc,
                extra={"lane": self._lane.name},
            )


@final
class ProcessLane:
    """Worker processes with pinned sessions; made by :func:`open_process_lane`.

    Args:
        name: shown in statistics and errors.
        factory: ``"package.module:callable"`` imported in each worker; ``open_session(*args)``
            calls it to make a session object.
        workers: worker processes (>= 1).
        sessions_per_worker: session slots per worker (>= 1).
        max_waiting: callers allowed to wait for a slot when all are taken (>= 0).
    """

    def __init__(
        self, name: str, factory: str, workers: int, sessions_per_worker: int, max_waiting: int
    ) -> None:
        if workers < 1 or sessions_per_worker < 1:
            raise ValueError("workers and sessions_per_worker must be >= 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.name = name
        self._command = [sys.executable, WORKER_SCRIPT, factory]
        self._slots = [_Slot(index) for index in range(workers)]
        self._sessions_per_worker = sessions_per_worker
        self._free = trio.Semaphore(workers * sessions_per_worker)
        self._max_waiting = max_waiting
        self._ids = itertools.count(1)
        self._closing = False
        self._shutdown_deadline: float | None = None
        self._calls = LatencyWindow()
        self._counts = {"opened": 0, "rejected": 0, "failed": 0, "crashes": 0, "restarts": 0}

    @asynccontextmanager
    async def open_session(self, *args: object) -> AsyncIterator[ProcessSession]:
        """Create ``factory(*args)`` in the least-loaded worker; close it on exit.

        Raises:
            LaneFullError: every slot is taken and ``max_waiting`` callers already wait.
            LaneClosedError: the lane is closing.
            RemoteCallError: the factory raised in the worker.
            WorkerCrashedError: the chosen worker died while creating the session.
        """
        self._admit()
        async with self._free:
            slot = min(self._slots, key=lambda s: (s.worker.dead, s.load, s.index))
            slot.load += 1
            try:
                session = await self._create(await slot.live_worker(), args)
                try:
                    yield session
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(SESSION_CLOSE_GRACE_S):
                        await session._close()
            finally:
                slot.load -= 1

    def _admit(self) -> None:
        if self._closing:
            raise LaneClosedError(self.name)
        waiting = self._free.statistics().tasks_waiting
        if self._free.value == 0 and waiting >= self._max_waiting:
            self._counts["rejected"] += 1
            raise LaneFullError(self.name, waiting)

    async def _create(self, worker: _Worker, args: tuple[object, ...]) -> ProcessSession:
        sid = next(self._ids)
        await self._request(worker, ("open", sid, args))
        self._counts["opened"] += 1
        return ProcessSession(self, sid, worker)

    async def _request(self, worker: _Worker, body: tuple[Any, ...]) -> Any:
        """Send ``(kind, req, *rest)`` built from ``body``; map the reply to a value or error."""
        req = next(self._ids)
        started = trio.current_time()
        reply = await worker.request(req, (body[0], req, *body[1:]))
        if reply[0] == "crashed":
            raise WorkerCrashedError(f"lane {self.name!r}: worker {worker.index} died")
        self._calls.record(trio.current_time() - started)
        if reply[0] == "err":
            self._counts["failed"] += 1
            raise RemoteCallError(self.name, reply[2], reply[3], reply[4])
        return reply[2]

    def statistics(self) -> ProcessLaneStatistics:
        """Return a frozen snapshot of this lane's counters."""
        alive = [s for s in self._slots if s.worker.ready.is_set() and not s.worker.dead]
        counts = self._counts
        return ProcessLaneStatistics(
            name=self.name, workers=len(self._slots), workers_alive=len(alive),
            capacity=len(self._slots) * self._sessions_per_worker,
            sessions_open=sum(s.load for s in self._slots), sessions_opened=counts["opened"],
            waiting=self._free.statistics().tasks_waiting, rejected=counts["rejected"],
            calls=self._calls.count, failed_calls=counts["failed"], crashes=counts["crashes"],
            restarts=counts["restarts"], worker_loads=tuple(s.load for s in self._slots),
            worker_pids=tuple(s.worker.pid for s in self._slots),
            call_p50_s=self._calls.percentile(0.5), call_p99_s=self._calls.percentile(0.99),
        )  # fmt: skip

    # -- workers --------------------------------------------------------------------------------

    async def _supervise(  # noqa: ASYNC114, ASYNC128 -- _read_loop calls started()
        self, slot: _Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the slot's worker; replace it whenever it dies, until the lane closes."""
        await self._run_worker(slot.worker, task_status)
        delay = RESTART_DELAY_S
        while not self._closing:
            self._counts["crashes"] += 1
            LOGGER.warning(
                "lane %r: worker %d died; restarting",
                self.name,
                slot.index,
                extra={"lane": self.name},
            )
            await trio.sleep(delay)
            if not self._closing:  # (mypy cannot see that the sleep may change it)
                self._counts["restarts"] += 1
                ready = await self._run_worker(slot.replace(), None)
                delay = RESTART_DELAY_S if ready else min(delay * 2, RESTART_DELAY_CAP_S)

    async def _run_worker(  # noqa: ASYNC114, ASYNC128 -- _read_loop calls started()
        self, worker: _Worker, task_status: trio.TaskStatus[None] | None
    ) -> bool:
        """Run one worker process until it exits; return whether it became ready."""
        process = await trio.lowlevel.open_process(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env()
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_loop, worker, process)
                await self._read_loop(worker, process, task_status)
                nursery.cancel_scope.cancel()
        finally:
            worker.fail_all()
            with trio.CancelScope(shield=True):
                await _reap(process, self._exit_deadline())
        if task_status is not None and not worker.ready.is_set():
            raise WorkerCrashedError(
                f"lane {self.name!r}: worker exited before it was ready (status "
                f"{process.returncode}); see its stderr"
            )
        return worker.ready.is_set()

    async def _read_loop(  # noqa: ASYNC114 -- no project-wide startable list is configured
        self,
        worker: _Worker,
        process: trio.Process,
        task_status: trio.TaskStatus[None] | None,
    ) -> None:
        """Dispatch reply frames until the worker's stdout ends or speaks garbage."""
        assert process.stdout is not None
        frames = _FrameReader(process.stdout)
        while (frame := await frames.next_frame(self.name)) is not None:
            if frame[0] == "ready":
                worker.pid = frame[1]
                worker.ready.set()
                worker.settled.set()
                if task_status is not None:
                    task_status.started()
                continue
            pending = worker.pending.pop(frame[1], None)
            if pending is not None:  # None: its caller was cancelled
                pending.resolve(frame)

    def _exit_deadline(self) -> float:
        """When a worker whose input ended must be gone: the lane's shutdown deadline if set."""
        if self._shutdown_deadline is not None:
            return self._shutdown_deadline
        return trio.current_time() + EXIT_GRACE_S

    def _close(self) -> float:
        """Refuse new sessions, let every worker see the end of its input; return the deadline."""
        self._closing = True
        if self._shutdown_deadline is None:
            self._shutdown_deadline = trio.current_time() + EXIT_GRACE_S
        for slot in self._slots:
            slot.worker.send.close()
        return self._shutdown_deadline


@final
class _FrameReader:
    """Length-prefixed pickle frames from a byte stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_frame(self, lane: str) -> tuple[Any, ...] | None:
        """The next frame; None at end of stream or on a protocol error (logged)."""
        await trio.lowlevel.checkpoint()
        try:
            size = HEADER.unpack(await self._read_exactly(HEADER.size))[0]
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {size} bytes")
            frame: tuple[Any, ...] = pickle.loads(await self._read_exactly(size))
        except EOFError:
            return None
        except (ValueError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
            LOGGER.error("lane %r: bad frame from a worker: %s", lane, exc, extra={"lane": lane})
            return None
        return frame

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(READ_SIZE)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data  # noqa: ASYNC910 -- next_frame checkpoints once per frame


async def _write_loop(worker: _Worker, process: trio.Process) -> None:
    """Write queued frames to the worker's stdin; close stdin when the queue is closed."""
    assert process.stdin is not None
    try:
        async with worker.receive:
            async for message in worker.receive:
                payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
                await process.stdin.send_all(HEADER.pack(len(payload)) + payload)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the worker is gone; its reader sees the end and fails the callers
    finally:
        await process.stdin.aclose()


async def _reap(process: trio.Process, deadline: float) -> None:
    """Let the worker exit by itself until ``deadline`` (its stdin is closed), then kill; reap."""
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_at(deadline):
        await process.wait()
    if process.returncode is None:
        process.kill()
    with trio.move_on_after(KILL_WAIT_S):
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


def _child_env() -> Mapping[str, str]:
    """The parent's environment, with its ``sys.path`` as ``PYTHONPATH`` for the worker."""
    env = dict(os.environ)
    paths = [path for path in sys.path if path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@asynccontextmanager
async def open_process_lane(
    name: str,
    *,
    factory: str,
    workers: int,
    sessions_per_worker: int,
    max_waiting: int = 0,
) -> AsyncIterator[ProcessLane]:
    """Start ``workers`` worker processes; yield the lane once all are ready; stop them on exit.

    Raises:
        WorkerCrashedError: a worker exited before it was ready (e.g. ``factory`` failed to
            import); the others are stopped.
    """
    lane = ProcessLane(name, factory, workers, sessions_per_worker, max_waiting)
    try:
        async with trio.open_nursery() as nursery:
            try:
                for slot in lane._slots:
                    await nursery.start(lane._supervise, slot)
                yield lane
            finally:
                nursery.cancel_scope.deadline = lane._close()
    except BaseExceptionGroup as group:
        _raise_single(group)


def _raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the only exception of ``group`` as itself (the caller's error stays visible)."""
    if len(group.exceptions) != 1:
        raise group
    only = group.exceptions[0]
    raise only from only.__cause__
