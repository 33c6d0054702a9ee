"""Connection guard: bounds on what one TCP peer can hold (fds, writes, shutdown time).

See :mod:`server.guard._guard` for what is enforced and :mod:`server.guard._serve` for how it
sits between hypercorn and the socket.
"""

from server.guard._guard import (
    ConnectionGuard as ConnectionGuard,
    ConnectionGuardStatistics as ConnectionGuardStatistics,
    GuardConfig as GuardConfig,
    abort_connection as abort_connection,
    connection_closed as connection_closed,
    mark_authenticated as mark_authenticated,
    mark_websocket as mark_websocket,
)
from server.guard._serve import (
    Takeover as Takeover,
    guard_asgi as guard_asgi,
    serve_guarded as serve_guarded,
)
from server.guard._stream import GuardedStream as GuardedStream
from server.guard._watchdog import arm_watchdog as arm_watchdog, disarm_watchdog as disarm_watchdog
from server.guard._wire import make_guard as make_guard

__all__ = [
    "ConnectionGuard",
    "ConnectionGuardStatistics",
    "GuardConfig",
    "GuardedStream",
    "Takeover",
    "abort_connection",
    "arm_watchdog",
    "connection_closed",
    "disarm_watchdog",
    "guard_asgi",
    "make_guard",
    "mark_authenticated",
    "mark_websocket",
    "serve_guarded",
]
