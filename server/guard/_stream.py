"""``GuardedStream``: the raw TCP stream hypercorn talks through, with deadlines it lacks.

hypercorn 0.18 writes with ``send_all`` inside a *shielded* cancel scope and no timeout, so a
peer that never reads can hold a connection task (and with it, shutdown) forever. This wrapper
gives every write its own deadline inside that shield: ``min(now + send_timeout_s, drain
deadline)``. When it expires the socket is aborted (RST) and the write raises
``trio.BrokenResourceError``, which hypercorn handles as a closed connection. The write is
shielded here too (cancelling it halfway would cut a frame in two): its deadline bounds it.

Bytes read before hypercorn takes the connection (the guard looks at the first request line to
route ``/v4/listen`` upgrades, see :mod:`server.guard._serve`) are given back with
:meth:`GuardedStream.push_back`: the next read returns them first.

Closing is owned by :func:`server.guard._guard.ConnectionGuard.handle`, not by hypercorn:
``send_eof`` and ``aclose`` never raise ``trio.Cancelled`` (hypercorn calls them from tasks that
quart-trio may cancel at the same moment, which used to leave the socket open and the
connection pinned). ``aclose`` only marks the stream closed and wakes a pending read; the
owner then lingers briefly (so an early answer reaches the peer instead of being cut by a RST)
and closes the socket.
"""

from __future__ import annotations

import os
import socket as _socket
import struct
from collections.abc import Callable
from typing import final

import trio

__all__ = ["GuardedStream"]

_LINGER_ABORT = struct.pack("ii", 1, 0)


@final
class GuardedStream(trio.abc.HalfCloseableStream):
    """A ``trio.SocketStream`` whose writes have deadlines and whose close cannot be cancelled.

    Args:
        inner: the accepted stream; this wrapper and its owner own it.
        send_deadline: returns the absolute Trio time by which a write starting now must end.
        on_write_timeout: called once when a write deadline aborts the connection.

    It deliberately has no ``do_handshake`` (hypercorn takes that as "not TLS").
    """

    def __init__(
        self,
        inner: trio.SocketStream,
        send_deadline: Callable[[], float],
        on_write_timeout: Callable[[], None],
    ) -> None:
        self._inner = inner
        self._send_deadline = send_deadline
        self._on_write_timeout = on_write_timeout
        self._send_scope: trio.CancelScope | None = None
        self._read_scope: trio.CancelScope | None = None
        self._pushed_back = b""
        #: called once, just before :meth:`abort` closes the socket (a reader parked outside
        #: Trio's own waits, see :class:`server.listen.poller.ReadPoller`, is woken by it)
        self.on_abort: Callable[[], None] | None = None
        self.closed = False
        self.aborted = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def socket(self) -> trio.socket.SocketType:
        """The Trio socket (hypercorn reads the peer and local addresses from it)."""
        return self._inner.socket

    # -- writes ---------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` or abort the connection at the write deadline.

        Cancellation: only at its first check, before any byte is written; past it the write is
        not cancellable (it completes, or the deadline aborts the connection), so a caller that
        checked for cancellation itself just before loses nothing it handed over
        (``FastWebSocket._send_pending`` relies on this).

        Raises:
            trio.BrokenResourceError: the deadline passed (the socket is aborted) or the peer
                reset the connection.
            trio.ClosedResourceError: the stream was closed or aborted.
        """
        if self.closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream closed")
        if self._send_scope is None:  # no write in progress: try to hand it all over at once
            await trio.lowlevel.checkpoint_if_cancelled()
            sent = self._send_now(data)
            if sent == len(data):
                self.bytes_sent += sent
                await trio.lowlevel.cancel_shielded_checkpoint()  # sent: not cancellable now
                return
            self.bytes_sent += sent
            data = memoryview(data)[sent:]
        with trio.CancelScope(deadline=self._send_deadline(), shield=True) as scope:
            self._send_scope = scope
            try:
                await self._inner.send_all(data)
            finally:
                self._send_scope = None
        if scope.cancelled_caught:
            self._on_write_timeout()
            self.abort()
            raise trio.BrokenResourceError("write deadline passed: the peer does not read")
        self.bytes_sent += len(data)

    def _send_now(self, data: bytes | bytearray | memoryview) -> int:
        """What the kernel takes of ``data`` without waiting (the socket is non-blocking): a
        small message usually goes whole, and skips the deadline scope and Trio's write loop.

        Raises:
            trio.BrokenResourceError: the peer reset the connection.
        """
        try:
            return os.write(self.fileno, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    def tighten_send_deadline(self, deadline: float) -> None:
        """Bring a pending write's deadline forward (shutdown); later writes read it anew."""
        scope = self._send_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def wait_send_all_might_not_block(self) -> None:
        """As ``trio.SocketStream`` (bounded by the caller)."""
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close for writing. Never raises ``trio.Cancelled``: shutdown is not blocking."""
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._shutdown_write()

    def _shutdown_write(self) -> None:
        sock = self._inner.socket
        if self.aborted or sock.fileno() == -1 or sock.did_shutdown_SHUT_WR:
            return
        try:
            sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    # -- reads ----------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """As ``trio.SocketStream`` (bytes pushed back first); raises
        ``trio.ClosedResourceError`` once closed."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream closed")
        if self._pushed_back:
            await trio.lowlevel.checkpoint()
            return self._take_pushed_back(max_bytes)
        with trio.CancelScope() as scope:
            self._read_scope = scope
            try:
                data = await self._inner.receive_some(max_bytes)
            finally:
                self._read_scope = None
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("stream closed")
        self.bytes_received += len(data)
        return data

    async def receive_some_unwoken(self, max_bytes: int) -> bytes:
        """:meth:`receive_some` without its wake-up by :meth:`close_soon` (a cancel scope per
        read, ~5% of the server's CPU at 100 ms audio frames). For an owner that never calls
        ``close_soon``/``aclose`` (the fast listen path): only :meth:`abort` or cancelling the
        caller ends a pending read. Nothing may be pushed back."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream closed")
        data = await self._inner.receive_some(max_bytes)
        self.bytes_received += len(data)
        return data

    def receive_nowait(self, max_bytes: int) -> bytes:
        """What the kernel already holds for this stream (pushed-back bytes first), without
        waiting: ``b""`` at the peer's EOF.

        Raises:
            trio.WouldBlock: nothing is there yet.
            trio.ClosedResourceError: the stream was closed or aborted.
            trio.BrokenResourceError: the peer reset the connection.
        """
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        if self._pushed_back:
            return self._take_pushed_back(max_bytes)
        try:  # the socket is non-blocking (Trio's): this never waits
            data = os.read(self.fileno, max_bytes)
        except BlockingIOError:
            raise trio.WouldBlock from None
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        self.bytes_received += len(data)
        return data

    def push_back(self, data: bytes) -> None:
        """Give back ``data`` (read from this stream, not consumed): the next reads return it
        before anything new. Only bytes read first may be pushed back, once."""
        if self._pushed_back:
            raise RuntimeError("bytes were already pushed back")
        self._pushed_back = data

    def _take_pushed_back(self, max_bytes: int | None) -> bytes:
        data = self._pushed_back
        if max_bytes is not None and len(data) > max_bytes:
            data, self._pushed_back = data[:max_bytes], data[max_bytes:]
        else:
            self._pushed_back = b""
        return data

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Mark closed, half-close, wake a pending read. Never raises ``trio.Cancelled``.

        The socket itself is closed by the connection's owner after a bounded linger.
        """
        self.close_soon()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close_soon(self) -> None:
        """Synchronous :meth:`aclose`: no more reads or writes through this wrapper."""
        if self.closed:
            return
        self.closed = True
        self._shutdown_write()
        if self._read_scope is not None:
            self._read_scope.cancel()

    def abort(self) -> None:
        """Reset the connection now (RST): wakes every task blocked on the socket."""
        self.closed = True
        if self.aborted:
            return
        self.aborted = True
        if self.on_abort is not None:
            self.on_abort()
        sock = self._inner.socket
        if sock.fileno() != -1:
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ABORT)
            except OSError:
                pass
            sock.close()

    async def linger_and_close(self, until: float, max_bytes: int) -> None:
        """Read and discard what the peer still sends (up to ``max_bytes``, until its EOF or
        ``until``), then close the socket. Bounded by ``until``; the caller shields it."""
        sock = self._inner.socket
        if not self.aborted and sock.fileno() != -1:
            self._shutdown_write()
            with trio.move_on_at(until):
                await self._discard(max_bytes)
        if sock.fileno() != -1:
            sock.close()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _discard(self, max_bytes: int) -> None:
        await trio.lowlevel.checkpoint()
        seen = 0
        while seen < max_bytes:
            try:
                chunk = await self._inner.receive_some(64 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            seen += len(chunk)

    @property
    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._inner.socket.fileno()
