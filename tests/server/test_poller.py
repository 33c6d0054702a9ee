"""The listen read poller (:mod:`server.listen.poller`): batched wake-ups on real sockets.

Socket pairs in one process: a write lands in the kernel at once, so the poller's epoll sees it
without real time passing, and the autojump clock shows when each poll happened.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as ws_events

from server.guard import GuardedStream
from server.listen.fastws import FastWebSocket, serve_websocket
from server.listen.poller import (
    MIN_POLL_INTERVAL_S,
    SLOTS,
    ReadPoller,
    open_read_poller,
    polls_per_tick,
    tick_for,
)
from server.listen.wire import ClientGone
from server.loopload import HIGH_LOAD, LOW_LOAD
from tests.server.test_fastws import LISTEN

TICK_S = 0.05


def _pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    return trio.socket.socketpair()


async def test_a_reader_is_woken_once_per_tick_and_a_quiet_one_within_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    (a_in, a_out), (b_in, b_out) = _pair(), _pair()
    woken: list[tuple[str, float]] = []
    poll_s = TICK_S / polls_per_tick(TICK_S)

    async def reader(name: str, sock: trio.socket.SocketType, poller: ReadPoller) -> None:
        await trio.lowlevel.checkpoint()
        for _ in range(2 if name == "a" else 1):
            await poller.wait_readable(sock.fileno())
            woken.append((name, trio.current_time()))
            assert await sock.recv(10) == b"x"
            if name == "a":
                await a_out.send(b"x")  # at once: but a was just woken, it waits for its turn
                await b_out.send(b"x")  # b was never woken: read at the next poll

    async with open_read_poller(TICK_S) as poller:
        assert poller is not None
        with poller.registered(a_in.fileno()), poller.registered(b_in.fileno()):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, "a", a_in, poller)
                nursery.start_soon(reader, "b", b_in, poller)
                await trio.sleep(1.0)  # idle: nothing polled
                assert poller.statistics().polls == 0
                start = trio.current_time()
                await a_out.send(b"x")
            (_, a1), (_, b1), (_, a2) = sorted(woken, key=lambda w: w[1])
            assert [name for name, _ in sorted(woken, key=lambda w: w[1])] == ["a", "b", "a"]
            assert a1 - start < 0.001  # an idle poller reads at once
            assert b1 - a1 == pytest.approx(poll_s, abs=1e-3)  # quiet: the next poll
            assert 2 * poll_s < a2 - a1 <= TICK_S + 1e-3  # just woken: it waits for its turn
            assert poller.statistics().wakes == 3
        assert poller.statistics().registered == 0
    for sock in (a_in, a_out, b_in, b_out):
        sock.close()


@contextlib.asynccontextmanager
async def _busy_readers(poller: ReadPoller, count: int) -> AsyncIterator[list[int]]:
    """``count`` sockets with data always waiting, each with a reader parked in ``poller``
    that takes one byte per wake; yields the wake count of each (readers stop on exit)."""
    pairs = [_pair() for _ in range(count)]
    wakes = [0] * count

    async def reader(i: int, sock: trio.socket.SocketType) -> None:
        while True:
            await poller.wait_readable(sock.fileno())
            wakes[i] += 1
            await sock.recv(1)  # leaves more: the socket stays ready

    try:
        with contextlib.ExitStack() as stack:
            for sock_in, sock_out in pairs:
                stack.enter_context(poller.registered(sock_in.fileno()))
                await sock_out.send(b"x" * 1000)
            async with trio.open_nursery() as nursery:
                for i, (sock_in, _) in enumerate(pairs):
                    nursery.start_soon(reader, i, sock_in)
                yield wakes
                nursery.cancel_scope.cancel()
    finally:
        for sock_in, sock_out in pairs:
            sock_in.close()
            sock_out.close()


async def test_busy_sockets_are_woken_a_slot_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Forty sessions with data always waiting: each poll wakes only its slots' share of them
    (a fifth at this tick), so one Trio scheduling round never carries every session's work
    (loop lag)."""
    async with open_read_poller(TICK_S) as poller:
        assert poller is not None
        async with _busy_readers(poller, 40) as wakes:
            await trio.sleep(1.0)
        stats = poller.statistics()
    # the first poll wakes all forty (none woken for a tick yet); after it, a slot at a time
    assert stats.largest_wake == len(wakes)
    assert max(wakes) - min(wakes) <= 1
    assert 1.0 / TICK_S - 1 <= min(wakes) and max(wakes) <= 1.0 / TICK_S + 2
    steady = (stats.wakes - len(wakes)) / (stats.polls - 1)
    assert steady == pytest.approx(len(wakes) / polls_per_tick(TICK_S), rel=0.2)
    assert stats.polls == pytest.approx(polls_per_tick(TICK_S) / TICK_S, rel=0.1)


def test_polls_are_at_most_slots_per_tick_and_never_closer_than_the_interval() -> None:
    assert polls_per_tick(0.2) == SLOTS  # 20 ms apart
    assert polls_per_tick(0.05) == 5
    assert polls_per_tick(0.02) == 2  # 10 ms apart, each taking 5 slots' turns
    assert polls_per_tick(MIN_POLL_INTERVAL_S / 2) == 1


def test_the_tick_follows_the_load_between_its_bounds() -> None:
    assert tick_for(0.0, 0.02, 0.2) == tick_for(LOW_LOAD, 0.02, 0.2) == 0.02
    assert tick_for(HIGH_LOAD, 0.02, 0.2) == tick_for(1.5, 0.02, 0.2) == 0.2
    assert tick_for((LOW_LOAD + HIGH_LOAD) / 2, 0.02, 0.2) == pytest.approx(0.11)
    for bad in ({"min_tick_s": 0.0}, {"min_tick_s": 0.3}):
        with pytest.raises(ValueError):
            ReadPoller(0.2, **bad)


async def test_busy_sockets_are_read_sooner_with_headroom(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same busy sockets as above, with a tick that follows an injected load: idle, each
    is woken every ``min_tick``; loaded, once per tick (as with a fixed tick)."""
    load = [0.0]
    async with open_read_poller(TICK_S, min_tick_s=TICK_S / 5, load=lambda: load[0]) as poller:
        assert poller is not None
        async with _busy_readers(poller, 20) as wakes:
            before = sum(wakes)
            await trio.sleep(1.0)
            idle = sum(wakes) - before
            assert poller.statistics().tick_s == TICK_S / 5
            load[0] = 1.0
            await trio.sleep(TICK_S)  # the next polls see the new load
            before = sum(wakes)
            await trio.sleep(1.0)
            loaded = sum(wakes) - before
            stats = poller.statistics()
    assert (stats.tick_s, stats.load, stats.min_tick_s) == (TICK_S, 1.0, TICK_S / 5)
    assert idle == pytest.approx(len(wakes) * 5 / TICK_S, rel=0.1)
    assert loaded == pytest.approx(len(wakes) / TICK_S, rel=0.1)


async def test_a_busy_reader_is_woken_by_a_later_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Level-triggered: readiness found while the reader was not parked is not lost."""
    sock_in, sock_out = _pair()
    async with open_read_poller(TICK_S) as poller:
        assert poller is not None
        with poller.registered(sock_in.fileno()):
            await sock_out.send(b"x")
            await trio.sleep(0.2)  # polled (nobody parked) while the reader was busy
            polls = poller.statistics().polls
            assert polls >= 1
            with trio.fail_after(TICK_S + 0.01):
                await poller.wait_readable(sock_in.fileno())
            assert await sock_in.recv(10) == b"x"
    sock_in.close()
    sock_out.close()


async def test_closing_wakes_the_parked_reader_and_cancelling_unparks_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sock_in, sock_out = _pair()
    fd = sock_in.fileno()
    async with open_read_poller(TICK_S) as poller:
        assert poller is not None
        with poller.registered(fd):
            with trio.move_on_after(1.0):
                await poller.wait_readable(fd)
            assert poller.statistics().parked == 0  # the cancelled wait left nothing behind

            async def park() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await poller.wait_readable(fd)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(park)
                await trio.testing.wait_all_tasks_blocked()
                assert poller.statistics().parked == 1
                with pytest.raises(trio.BusyResourceError):  # one reader per socket
                    await poller.wait_readable(fd)
                poller.notify_closing(fd)  # as the guarded stream's abort does
            assert poller.statistics().registered == 0
            with pytest.raises(trio.ClosedResourceError):
                await poller.wait_readable(fd)  # no longer registered
    sock_in.close()
    sock_out.close()


async def test_a_reused_descriptor_keeps_its_new_registration() -> None:
    """A socket closed under its registration, and its number reused by the next socket: the
    old registration's exit must not unregister the new one."""
    async with open_read_poller(TICK_S) as poller:
        assert poller is not None
        old_in, old_out = _pair()
        fd = old_in.fileno()
        with poller.registered(fd):
            old_in.close()
            new_in, new_out = _pair()
            assert new_in.fileno() == fd  # the lowest free number is reused
            with poller.registered(fd):
                pass_through = poller.statistics().registered
        assert pass_through == 1
        with poller.registered(fd):
            await new_out.send(b"x")
            with trio.fail_after(5):
                await poller.wait_readable(fd)
    for sock in (old_out, new_in, new_out):
        sock.close()


async def test_no_poller_without_a_tick() -> None:
    async with open_read_poller(0) as poller:
        assert poller is None


async def test_an_aborted_connection_wakes_its_parked_reader() -> None:
    """The write deadline aborts the socket while the session's reader is parked in the
    poller: the reader sees the client gone instead of waiting forever."""
    server_sock, client_sock = trio.socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = GuardedStream(
        trio.SocketStream(server_sock), lambda: trio.current_time() + 0.3, lambda: None
    )
    client = trio.SocketStream(client_sock)
    received: list[object] = []

    async def app(sock: FastWebSocket) -> None:
        await sock.accept()

        async def read() -> None:
            received.append(await sock.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                while True:
                    await sock.send_text("x" * 16384)  # the client never reads
            except ClientGone:
                pass

    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await client.send_all(ws.send(ws_events.Request(host="t", target=LISTEN)))
    with trio.fail_after(5):
        async with open_read_poller(TICK_S) as poller:
            head = await stream.receive_some(65536)
            await serve_websocket(stream, head, {}, app=app, max_message_bytes=65536, poller=poller)
            assert poller is not None and poller.statistics().registered == 0
    assert stream.aborted and received == [None]
    await client.aclose()
