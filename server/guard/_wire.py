"""Build the guard for one server run from its context (settings, drain, statistics)."""

from __future__ import annotations

from server.context import AppContext
from server.guard._guard import ConnectionGuard, GuardConfig

__all__ = ["make_guard"]


def make_guard(ctx: AppContext) -> ConnectionGuard:
    """A guard for ``ctx``'s run: its writes end at the drain deadline, a forced shutdown
    aborts every connection, and ``GET /v1/stats`` shows it as ``connections``."""
    settings = ctx.settings
    guard = ConnectionGuard(
        GuardConfig(
            # A write stalled for the session idle timeout counts as idle: never wait longer.
            send_timeout_s=min(settings.send_timeout_s, settings.idle_timeout_s),
            unauthenticated_timeout_s=settings.unauthenticated_timeout_s,
            max_unauthenticated_per_ip=settings.max_unauthenticated_per_ip,
        ),
        drain_deadline=lambda: ctx.drain.deadline,
    )
    ctx.drain.subscribe(on_request=guard.on_drain, on_force=guard.abort_all)
    ctx.stats["connections"] = guard.statistics
    ctx.services["connections"] = guard
    return guard
