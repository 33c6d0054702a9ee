"""``ConnectionGuard``: owns every accepted TCP connection and bounds what a peer can hold.

What it enforces (hypercorn has no knob for these):

- **per-IP cap** on concurrent *unauthenticated* connections: over it, the connection gets a
  raw ``429`` with ``Retry-After`` and is closed before hypercorn sees it;
- **unauthenticated lifetime**: a connection that has not carried one authenticated request
  within ``unauthenticated_timeout_s`` is cancelled and closed, whatever it is doing;
- **write deadlines** on the raw stream (see :mod:`server.guard._stream`), tightened to the
  drain deadline when shutdown begins; a forced shutdown aborts every socket at once;
- **closing** that cannot be cancelled or pinned: the guard closes the socket itself, after a
  bounded linger that lets an early answer reach the peer.

Header and keep-alive deadlines are hypercorn's own (``keep_alive_timeout`` also bounds an
incomplete request head); the body deadline is Quart's ``BODY_TIMEOUT``.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, final

import trio

from server.guard._stream import GuardedStream

__all__ = [
    "ConnectionGuard",
    "ConnectionGuardStatistics",
    "GuardConfig",
    "abort_connection",
    "connection_closed",
    "mark_authenticated",
    "mark_websocket",
]

LOGGER = logging.getLogger(__name__)

#: Where the guard puts a connection's record in the ASGI scope.
SCOPE_KEY: Final = "trioscribe.connection"

_REFUSAL_BODY: Final = (
    b'{"error":{"code":"too_many_connections",'
    b'"message":"too many unauthenticated connections from this address"}}'
)
_REFUSAL: Final = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"retry-after: 5\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSAL_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSAL_BODY
)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Bounds per connection (seconds, bytes, counts)."""

    send_timeout_s: float
    unauthenticated_timeout_s: float
    max_unauthenticated_per_ip: int
    linger_s: float = 0.5
    linger_max_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionGuardStatistics:
    """Counts of the guard (``open_fds`` is process-wide, -1 where unknown)."""

    open: int
    websocket: int
    unauthenticated: int
    busiest_ip_unauthenticated: int
    max_unauthenticated_per_ip: int
    accepted: int
    refused_per_ip: int
    unauthenticated_timeouts: int
    ended_after_app: int
    connection_errors: int
    write_timeouts: int
    aborted: int
    open_fds: int
    fd_limit: int


@final
class _Conn:
    __slots__ = ("authenticated", "ending", "guard", "ip", "scope", "stream", "websocket")

    def __init__(self, guard: ConnectionGuard, ip: str, stream: GuardedStream) -> None:
        self.guard = guard
        self.ip = ip
        self.stream = stream
        self.scope = trio.CancelScope()
        self.authenticated = False
        self.websocket = False
        self.ending = False

    def end_within(self, seconds: float) -> None:
        """The application is done with this connection: whatever hypercorn still does on it
        (a close handshake; or feeding buffered frames to an app that no longer reads, which
        would block forever) ends within ``seconds``."""
        self.ending = True
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + seconds)


def _peer(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return ("?", 0)
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return (str(address), 0)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own descriptor
    except OSError:
        return -1


@final
class ConnectionGuard:
    """The owner of every accepted connection (see the module docstring).

    Args:
        config: the bounds.
        drain_deadline: the drain's absolute deadline (``inf`` before shutdown begins).
    """

    def __init__(self, config: GuardConfig, drain_deadline: Callable[[], float]) -> None:
        self.config = config
        self._drain_deadline = drain_deadline
        self._conns: dict[tuple[str, int], _Conn] = {}
        self._unauth: Counter[str] = Counter()
        self._accepted = 0
        self._refused = 0
        self._unauth_timeouts = 0
        self._write_timeouts = 0
        self._aborted = 0
        self._ended_after_app = 0
        self._errors = 0

    # -- admission and ownership ------------------------------------------------------------

    async def handle(
        self,
        raw: trio.SocketStream,
        serve_connection: Callable[[GuardedStream], Awaitable[None]],
    ) -> None:
        """Serve one accepted connection and close it, whatever happens.

        Cancellation: cancelling the caller ends the connection (its socket is closed under a
        shielded, bounded scope).
        """
        key = _peer(raw)
        stream = GuardedStream(raw, lambda: self._send_deadline(), self._count_write_timeout)
        conn = _Conn(self, key[0], stream)
        self._accepted += 1
        if self._unauth[conn.ip] >= self.config.max_unauthenticated_per_ip:
            self._refused += 1
            await self._refuse(stream)
            return
        self._conns[key] = conn
        self._unauth[conn.ip] += 1
        conn.scope.deadline = trio.current_time() + self.config.unauthenticated_timeout_s
        try:
            await self._serve(conn, stream, serve_connection)
        finally:
            self._forget(key, conn)
            with trio.CancelScope(shield=True):  # bounded: linger_and_close has its deadline
                await stream.linger_and_close(self._linger_until(), self.config.linger_max_bytes)

    async def _serve(
        self,
        conn: _Conn,
        stream: GuardedStream,
        serve_connection: Callable[[GuardedStream], Awaitable[None]],
    ) -> None:
        await trio.lowlevel.checkpoint()
        try:
            with conn.scope:
                await serve_connection(stream)
        except* Exception as group:
            # One connection's failure never ends the server. hypercorn raises here when a
            # connection is cancelled mid-response (it tries to send a 500 after the headers).
            self._errors += 1
            LOGGER.info("connection from %s ended with %r", conn.ip, group.exceptions[0])
        if conn.scope.cancelled_caught:
            if conn.ending:
                self._ended_after_app += 1
            else:
                self._unauth_timeouts += 1

    async def _refuse(self, stream: GuardedStream) -> None:
        with trio.CancelScope(shield=True):  # bounded by the write deadline and the linger
            try:
                await stream.send_all(_REFUSAL)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await stream.linger_and_close(self._linger_until(), self.config.linger_max_bytes)

    def _forget(self, key: tuple[str, int], conn: _Conn) -> None:
        if self._conns.get(key) is conn:
            del self._conns[key]
        if not conn.authenticated:
            self._release_unauth(conn.ip)

    def _release_unauth(self, ip: str) -> None:
        self._unauth[ip] -= 1
        if self._unauth[ip] <= 0:
            del self._unauth[ip]

    def _linger_until(self) -> float:
        return min(trio.current_time() + self.config.linger_s, self._drain_deadline())

    def _send_deadline(self) -> float:
        return min(trio.current_time() + self.config.send_timeout_s, self._drain_deadline())

    def _count_write_timeout(self) -> None:
        self._write_timeouts += 1
        self._aborted += 1

    # -- what the application tells the guard ----------------------------------------------

    def lookup(self, client: object) -> _Conn | None:
        """The connection record of an ASGI scope's ``client`` (``None`` if unknown)."""
        if isinstance(client, list | tuple) and len(client) >= 2:
            return self._conns.get((str(client[0]), int(client[1])))
        return None

    def authenticated(self, conn: _Conn) -> None:
        """The connection carried an authenticated request: lift its lifetime bound."""
        if conn.authenticated:
            return
        conn.authenticated = True
        if not conn.ending:
            conn.scope.deadline = math.inf
        self._release_unauth(conn.ip)

    # -- shutdown -----------------------------------------------------------------------------

    def on_drain(self) -> None:
        """Shutdown began: bring every pending write's deadline forward to the drain's."""
        deadline = self._drain_deadline()
        for conn in list(self._conns.values()):
            conn.stream.tighten_send_deadline(deadline)

    def abort(self, conn: _Conn) -> None:
        """Reset ``conn`` now (RST): wakes the tasks blocked on its reads and writes."""
        if not conn.stream.aborted:
            self._aborted += 1
        conn.stream.abort()

    def abort_all(self) -> None:
        """Forced shutdown: reset every connection now."""
        for conn in list(self._conns.values()):
            self.abort(conn)

    def statistics(self) -> ConnectionGuardStatistics:
        """A snapshot of the guard's counts."""
        conns = list(self._conns.values())
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ConnectionGuardStatistics(
            open=len(conns),
            websocket=sum(1 for c in conns if c.websocket),
            unauthenticated=sum(self._unauth.values()),
            busiest_ip_unauthenticated=max(self._unauth.values(), default=0),
            max_unauthenticated_per_ip=self.config.max_unauthenticated_per_ip,
            accepted=self._accepted,
            refused_per_ip=self._refused,
            unauthenticated_timeouts=self._unauth_timeouts,
            ended_after_app=self._ended_after_app,
            connection_errors=self._errors,
            write_timeouts=self._write_timeouts,
            aborted=self._aborted,
            open_fds=_open_fds(),
            fd_limit=soft,
        )


def _conn_of(scope: Mapping[str, object]) -> _Conn | None:
    conn = scope.get(SCOPE_KEY)
    return conn if isinstance(conn, _Conn) else None


def mark_authenticated(scope: Mapping[str, object]) -> None:
    """Tell the guard that this request (ASGI ``scope``) authenticated; no-op without a guard."""
    conn = _conn_of(scope)
    if conn is not None:
        conn.guard.authenticated(conn)


def mark_websocket(scope: Mapping[str, object]) -> None:
    """Count the connection as a WebSocket in the statistics; no-op without a guard."""
    conn = _conn_of(scope)
    if conn is not None:
        conn.websocket = True


def connection_closed(scope: Mapping[str, object]) -> bool:
    """Whether the connection of ``scope`` was closed or aborted under the application (a
    write deadline passed): hypercorn then drops the app's sends silently."""
    conn = _conn_of(scope)
    return conn is not None and conn.stream.closed


def abort_connection(scope: Mapping[str, object]) -> bool:
    """Reset the connection of ``scope`` now (a peer that does not read); False without one."""
    conn = _conn_of(scope)
    if conn is None:
        return False
    conn.guard.abort(conn)
    return True
