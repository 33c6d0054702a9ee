"""``serve()``: the server as one nursery tree with a guaranteed, bounded shutdown.

Ownership, outermost first (each line owns everything below it)::

    serve()
    └── open_components()          store (SQLite via the storage ThreadLane), STT provider,
        │                          lanes, realtime nursery — closed last, after every user
        │                          of them ended (see :mod:`server.compose`)
        └── daemons nursery        signal watcher (1st SIGTERM/SIGINT: drain; 2nd: cancel all
            │                      now), supervisor watcher (``--workers`` child: its parent
            │                      died -> drain as on SIGTERM), loop-lag monitor; cancelled
            │                      when the work is done
            └── work nursery       deadline = the drain deadline once shutdown begins
                ├── shutdown sequence  sessions get 1001 -> then hypercorn is told to stop
                ├── background workers sweeper, processing, webhook delivery, day summary;
                │                      each stops taking work on drain and ends when idle
                └── hypercorn          connection tasks; each /v4/listen session owns its
                                       own task group inside its connection task

Shutdown (graceful): readiness flips to false and new HTTP work gets 503; live sessions are told
to finish (they flush and close 1001); hypercorn then stops accepting and closes idle
connections; background workers stop taking work and finish what they hold until the deadline,
then are cancelled; durable state is already committed (every state change is a transaction);
lanes and clients close last, each under a shielded, bounded scope. ``serve()`` returns only when
everything it opened is closed.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from functools import partial
from typing import Final, Unpack, cast

import hypercorn.typing
import trio
from hypercorn.config import Config

from lanes import LoopLagMonitor
from server.app import LISTEN_PATHS, create_app
from server.compose import Components, Overrides, open_components
from server.context import AppContext
from server.drain import Drain
from server.guard import Takeover, arm_watchdog, guard_asgi, make_guard, serve_guarded
from server.settings import Settings
from server.supervisor import WORKER_ENV, reuse_port_socket

__all__ = ["ServerHandle", "serve"]

LOGGER = logging.getLogger(__name__)

#: hypercorn's own grace for connections still open after our sessions closed.
HYPERCORN_GRACE_S: Final = 1.0
#: Shielded budget for closing a resource after the deadline (lanes, store, clients).
CLOSE_BUDGET_S: Final = 0.5
#: The last-resort watchdog fires this long after the drain deadline / a second signal
#: (the promise is "+ 1 s"; the margin covers the interpreter's own exit).
WATCHDOG_AFTER_S: Final = 0.9


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """What ``nursery.start(serve, settings)`` returns: the bound address, a stop button, and
    the run's components (tests reach the registry, sweeper or store through them)."""

    host: str
    port: int
    drain: Drain
    components: Components

    @property
    def context(self) -> AppContext:
        """The run's shared context (settings, store, stats, ...)."""
        return self.components.context

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def request_shutdown(self, grace_s: float | None = None) -> None:
        """Begin a graceful shutdown, as SIGTERM would."""
        self.drain.request(
            grace_s if grace_s is not None else self.context.settings.graceful_shutdown_s
        )


def _process_info() -> dict[str, object]:
    """Which process answered (``--workers``: the worker's index, else ``None``)."""
    worker = os.environ.get(WORKER_ENV)
    return {"pid": os.getpid(), "worker": int(worker) if worker else None}


def _hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    if settings.workers > 1:
        # One of ``--workers`` siblings: bind with SO_REUSEPORT so they share the port (the
        # kernel spreads new connections over them); hypercorn takes the descriptor over.
        config.bind = [f"fd://{reuse_port_socket(settings.host, settings.port).detach()}"]
    config.graceful_timeout = HYPERCORN_GRACE_S
    config.keep_alive_timeout = settings.http_keep_alive_s  # also bounds a slow request head
    config.websocket_max_message_size = settings.ws_max_message_bytes
    config.accesslog = None  # URLs can carry single-use tickets: never log them
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


def _listen_takeover(components: Components) -> Takeover | None:
    """``--listen-transport fast``: ``/v4/listen`` upgrades bypass hypercorn (see
    :mod:`server.listen.fastws`); ``hypercorn``: everything goes through hypercorn."""
    if components.context.settings.listen_transport != "fast":
        return None
    return Takeover(LISTEN_PATHS, components.listen_handler.serve_upgrade)


def _begin_drain(drain: Drain, settings: Settings, why: str) -> None:
    """The first SIGTERM's effect: drain within ``graceful_shutdown_s``, watchdog armed."""
    LOGGER.info("%s: draining (deadline %.1f s)", why, settings.graceful_shutdown_s)
    arm_watchdog(settings.graceful_shutdown_s + WATCHDOG_AFTER_S)
    drain.request(settings.graceful_shutdown_s)


async def _watch_signals(drain: Drain, settings: Settings, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not drain.requested.is_set():
                _begin_drain(drain, settings, signal.Signals(signum).name)
            else:
                LOGGER.warning("second signal: cancelling everything now")
                arm_watchdog(WATCHDOG_AFTER_S)
                drain.force()
                root.cancel()


async def _watch_supervisor(lifeline: int, drain: Drain, settings: Settings) -> None:
    """Drain as on SIGTERM once the supervisor's end of ``lifeline`` (a pipe it never writes
    to) closes: the supervisor died without signalling (SIGKILL, OOM). Owns and closes the fd.

    Cancellation: returns when cancelled (the daemons nursery ends with the run).
    """
    async with trio.lowlevel.FdStream(lifeline) as stream:
        while await stream.receive_some(64):
            pass  # nothing is ever written; b"" is the end of the supervisor
    if not drain.requested.is_set():
        _begin_drain(drain, settings, "supervisor gone")


async def _shutdown_sequence(ctx: AppContext, stop_http: trio.Event) -> None:
    """On drain: close live sessions (1001) and keep answering 503 / ready=false for
    ``drain_readiness_s`` so load balancers notice; then let hypercorn stop accepting."""
    await ctx.drain.requested.wait()
    announce_until = trio.current_time() + ctx.settings.drain_readiness_s
    with trio.move_on_at(ctx.drain.deadline - HYPERCORN_GRACE_S - CLOSE_BUDGET_S):
        await ctx.sessions.drain_all()
        await trio.sleep_until(announce_until)
    stop_http.set()


async def serve(  # noqa: ASYNC128 -- task_status reaches started() in _run_work
    settings: Settings,
    *,
    handle_signals: bool = False,
    lifeline: int | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
    **overrides: Unpack[Overrides],
) -> None:
    """Run the server until a graceful shutdown completes (or the caller cancels it).

    Args:
        settings: the run's settings.
        handle_signals: watch SIGTERM/SIGINT (``python -m server`` does; tests don't).
        lifeline: a ``--workers`` child's pipe from its supervisor (the read end's fd, closed
            by its watcher once the server runs): its end of file drains the server as SIGTERM
            would (see :mod:`server.supervisor`).
        overrides: components to use instead of the configured ones (tests inject an open STT
            provider with failure knobs, or a short webhook retry schedule, this way; see
            :class:`server.compose.Overrides`).
        task_status: receives a :class:`ServerHandle` once the server listens.

    Cancellation: cancelling the caller's scope is a hard stop (like a second signal); cleanup
    still runs, shielded and bounded.
    """
    async with open_components(settings, **overrides) as components:
        await _run_root(components, handle_signals, lifeline, task_status)
    LOGGER.info("stopped")


async def _run_root(  # noqa: ASYNC128 -- task_status reaches started() in _run_work
    components: Components,
    handle_signals: bool,
    lifeline: int | None,
    task_status: trio.TaskStatus[ServerHandle],
) -> None:
    ctx = components.context
    settings = ctx.settings
    async with trio.open_nursery() as daemons:  # live for the whole run, cancelled at its end
        if handle_signals:
            daemons.start_soon(_watch_signals, ctx.drain, settings, daemons.cancel_scope)
        if lifeline is not None:
            daemons.start_soon(_watch_supervisor, lifeline, ctx.drain, settings)
        lag = LoopLagMonitor()
        ctx.stats["loop_lag"] = lag.statistics
        ctx.stats["process"] = _process_info
        await daemons.start(lag.run)
        with trio.CancelScope() as work_scope:
            await _run_work(components, work_scope, task_status)
        daemons.cancel_scope.cancel()


async def _run_work(
    components: Components,
    work_scope: trio.CancelScope,
    task_status: trio.TaskStatus[ServerHandle],
) -> None:
    """Workers and hypercorn: they end by themselves once drained, or at the deadline."""
    ctx = components.context
    async with trio.open_nursery() as work:
        await components.start_workers(work)
        stop_http = trio.Event()
        work.start_soon(_shutdown_sequence, ctx, stop_http)
        guard = make_guard(ctx.settings, ctx.drain)
        ctx.stats["connections"] = guard.statistics
        app = guard_asgi(create_app(ctx, components.listen_handler), guard)
        config = _hypercorn_config(ctx.settings)
        # hypercorn types the app with its TypedDict scopes; ours takes the same dicts.
        asgi = cast(hypercorn.typing.Framework, app)
        binds = await work.start(
            partial(
                serve_guarded,
                asgi,
                config,
                guard,
                shutdown_trigger=stop_http.wait,
                takeover=_listen_takeover(components),
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        LOGGER.info("listening on %s", binds[0])
        task_status.started(ServerHandle(ctx.settings.host, port, ctx.drain, components))
        await ctx.drain.requested.wait()
        work_scope.deadline = ctx.drain.deadline
