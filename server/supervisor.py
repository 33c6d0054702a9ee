"""``python -m server --workers N``: N ``serve()`` processes sharing one port.

The parent owns no application state. It reserves the port (binding it with ``SO_REUSEPORT`` and
never listening, which also resolves ``--port 0``), starts N children (``python -m server`` with
the same flags, the resolved port and :data:`WORKER_ENV` set), and supervises them:

* each child is a whole server with its own nursery tree; the kernel spreads new connections
  over the children's listening sockets (``SO_REUSEPORT``, set by hypercorn for ``workers > 1``);
* a child that exits while no shutdown was asked for is logged and started again (after
  :data:`RESTART_BACKOFF_S`, doubling up to :data:`MAX_RESTART_BACKOFF_S` while it keeps dying
  within :data:`STABLE_AFTER_S`);
* SIGTERM/SIGINT is forwarded to every child (they run in their own sessions, so a terminal's
  Ctrl-C reaches them once, through here); each drains within ``graceful_shutdown_s``; a child
  still running ``graceful_shutdown_s`` + :data:`KILL_MARGIN_S` after the signal is killed.
  A second signal is forwarded too (children then cancel at once);
* each child gets the read end of a pipe whose only write end the parent holds (its
  *lifeline*, fd number in :data:`LIFELINE_ENV`). The parent never writes to it: when the parent
  dies without a chance to signal (SIGKILL, the OOM killer), the kernel closes the write end,
  the child reads EOF and drains exactly as on SIGTERM (sessions closed with 1001, storage
  finished, exit 0 within ``graceful_shutdown_s``), so no orphan keeps the port.
  ``PR_SET_PDEATHSIG`` is not used: it is Linux-only, and it fires when the *thread* that
  forked the child exits, and ``trio.lowlevel.open_process`` forks from a cached worker thread
  that idles out on its own; a pipe's EOF depends only on the parent process.

The parent exits 0 once every child has exited 0 after the shutdown request, 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Final

import trio

from server.settings import Settings

__all__ = [
    "LIFELINE_ENV",
    "WORKER_ENV",
    "WorkerTag",
    "lifeline_fd",
    "reuse_port_socket",
    "run_workers",
]

LOGGER = logging.getLogger(__name__)

#: Set (to the worker's index) in a child's environment: that process serves, never supervises.
WORKER_ENV: Final = "TRIOSCRIBE_WORKER_INDEX"
#: Set in a child's environment: the fd number of its lifeline's read end (see the docstring).
LIFELINE_ENV: Final = "TRIOSCRIBE_WORKER_LIFELINE_FD"
RESTART_BACKOFF_S: Final = 0.5
MAX_RESTART_BACKOFF_S: Final = 30.0
#: A child that ran this long before dying is restarted after the initial backoff again.
STABLE_AFTER_S: Final = 30.0
#: After the drain deadline, how long a child may still take to exit before SIGKILL.
KILL_MARGIN_S: Final = 2.0


class WorkerTag(logging.Filter):
    """Prefix the logger name of a worker's records with ``w<index>`` (whose line it is)."""

    def __init__(self, index: str) -> None:
        super().__init__()
        self._prefix = f"w{index} "

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record (once) and keep it."""
        if not record.name.startswith(self._prefix):
            record.name = self._prefix + record.name
        return True


def lifeline_fd(environ: Mapping[str, str]) -> int | None:
    """The lifeline this process got from a supervisor (``None``: it has none)."""
    raw = environ.get(LIFELINE_ENV)
    return int(raw) if raw and raw.isdigit() else None


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (not listening yet).

    The parent keeps one (never listening) to hold the port and resolve port 0; each worker
    binds its own and listens on it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Supervisor:
    """The children, the shutdown state and the outcome (see the module docstring)."""

    def __init__(self, settings: Settings, argv: Sequence[str], port: int) -> None:
        self.settings = settings
        self.argv = [*argv, "--port", str(port)]
        self.stopping = False
        self.stop_deadline = float("inf")
        self.procs: dict[int, trio.Process] = {}
        self.failed_exits = 0
        self.restarts = 0
        self._scopes: set[trio.CancelScope] = set()

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "server", *self.argv]

    async def keep_worker(self, index: int) -> None:
        """Run worker ``index`` until a shutdown; restart it whenever it dies before one."""
        await trio.lowlevel.checkpoint()
        backoff = RESTART_BACKOFF_S
        while not self.stopping:
            started = trio.current_time()
            read_end, write_end = os.pipe()  # both close-on-exec: no sibling inherits them
            try:
                proc = await self._spawn(index, read_end)
            except BaseException:
                os.close(write_end)
                raise
            finally:
                os.close(read_end)  # the child has its copy
            self.procs[index] = proc
            if self.stop_requested():  # the signal came while this one was starting
                proc.send_signal(signal.SIGTERM)
            LOGGER.info("worker %d started (pid %d)", index, proc.pid)
            try:
                returncode = await self._wait(proc)
            finally:
                del self.procs[index]
                os.close(write_end)
            if self.stop_requested():
                if returncode != 0:
                    self.failed_exits += 1
                LOGGER.info("worker %d exited (%d)", index, returncode)
                return
            backoff = (
                RESTART_BACKOFF_S if trio.current_time() - started > STABLE_AFTER_S else backoff
            )
            LOGGER.error(
                "worker %d (pid %d) exited with %d; restarting in %.1f s",
                index,
                proc.pid,
                returncode,
                backoff,
            )
            self.restarts += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)

    async def _spawn(self, index: int, lifeline: int) -> trio.Process:
        """Start worker ``index`` with ``lifeline`` (a pipe's read end) as its only extra fd."""
        env = {**os.environ, WORKER_ENV: str(index), LIFELINE_ENV: str(lifeline)}
        return await trio.lowlevel.open_process(
            self._command(), env=env, start_new_session=True, pass_fds=(lifeline,)
        )

    async def _wait(self, proc: trio.Process) -> int:
        """Wait for ``proc``; once a shutdown began, kill it at the stop deadline."""
        with trio.CancelScope(deadline=self.stop_deadline) as scope:
            self._scopes.add(scope)
            try:
                await proc.wait()
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            LOGGER.warning("worker pid %d missed the drain deadline: killing it", proc.pid)
            proc.kill()
        with trio.CancelScope(shield=True):
            returncode = await proc.wait()
        return returncode

    def stop_requested(self) -> bool:
        """Whether a shutdown was asked for (a method: it changes across awaits)."""
        return self.stopping

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every live child; on the first one, fix the kill deadline."""
        if not self.stopping:
            self.stopping = True
            grace = self.settings.graceful_shutdown_s + KILL_MARGIN_S
            self.stop_deadline = trio.current_time() + grace
            for scope in self._scopes:
                scope.deadline = self.stop_deadline
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                proc.send_signal(signum)


async def _supervise(settings: Settings, argv: Sequence[str]) -> int:
    with reuse_port_socket(settings.host, settings.port) as reservation:
        port = int(reservation.getsockname()[1])
        supervisor = _Supervisor(settings, argv, port)
        LOGGER.info(
            "listening on %s:%d with %d worker processes", settings.host, port, settings.workers
        )
        async with trio.open_nursery() as daemons:
            daemons.start_soon(_forward_signals, supervisor)
            async with trio.open_nursery() as workers:
                for index in range(settings.workers):
                    workers.start_soon(supervisor.keep_worker, index)
            daemons.cancel_scope.cancel()
    LOGGER.info(
        "all workers stopped (%d restarts, %d unclean exits)",
        supervisor.restarts,
        supervisor.failed_exits,
    )
    return 0 if supervisor.failed_exits == 0 else 1


async def _forward_signals(supervisor: _Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            LOGGER.info("%s: stopping %d workers", name, len(supervisor.procs))
            supervisor.forward(signum)


def run_workers(settings: Settings, argv: Sequence[str]) -> int:
    """Supervise ``settings.workers`` children running ``python -m server *argv``; exit code."""
    return trio.run(_supervise, settings, argv)
