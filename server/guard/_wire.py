"""Build the guard for one server run from its settings and drain."""

from __future__ import annotations

from server.drain import Drain
from server.guard._guard import ConnectionGuard, GuardConfig
from server.settings import Settings

__all__ = ["make_guard"]


def make_guard(settings: Settings, drain: Drain) -> ConnectionGuard:
    """A guard for one run: its writes end at the drain deadline and a forced shutdown aborts
    every connection. The caller shows its ``statistics`` (``GET /v1/stats`` ``connections``)."""
    guard = ConnectionGuard(
        GuardConfig(
            # A write stalled for the session idle timeout counts as idle: never wait longer.
            send_timeout_s=min(settings.send_timeout_s, settings.idle_timeout_s),
            unauthenticated_timeout_s=settings.unauthenticated_timeout_s,
            max_unauthenticated_per_ip=settings.max_unauthenticated_per_ip,
        ),
        drain_deadline=lambda: drain.deadline,
    )
    drain.subscribe(on_request=guard.on_drain, on_force=guard.abort_all)
    return guard
