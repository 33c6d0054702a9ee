"""The cheap session driver of the load generator: one ticker writes every session's frames.

The classic driver (one trio-websocket connection and one sleeping task per session) costs the
generator ~140 us of CPU per frame, about what a server spends receiving it, so a one-core
generator saturates near 300 sessions and measures itself (``bench/results/gencost.json``).
Here:

- each session's frames are **encoded and masked once per second of audio**
  (:func:`bench.rawws.encode_frame`), not per send;
- one **ticker** task per process wakes ``SLOTS`` times per frame interval and writes the due
  frame of every session in that slot with a non-blocking ``socket.send`` (~10 us a frame);
  sessions are spread over the slots, so the server sees an even stream, not a burst per tick;
- a socket that will not take a whole frame (the server is not reading) gets a per-session
  **backlog** drained by its own task; its frames keep their scheduled times, so the server's
  backpressure shows as latency, never as generator lateness;
- the generator's own lateness is the ticker's: a slot that starts more than
  :data:`bench.loadgen.LATE_FRAME_S` behind schedule marks its frames late, and a step with any
  late frame is *generator-bound* (``bench.scenarios`` never lets it decide a figure).

Each session still reads and checks every server message (``handle_text``), as before.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio

from bench.rawws import RawClosed, RawRejected, RawWebSocket, connect_raw_websocket, encode_frame

if TYPE_CHECKING:
    from bench.loadgen import AudioSource, LoadConfig, SessionRecord

__all__ = ["run_raw_sessions"]

DISCONNECT_TIMEOUT_S: Final = 5.0
#: Slots per frame interval: session ``i`` sends in slot ``i % SLOTS``.
SLOTS: Final = 10


@dataclass(slots=True)
class _Live:
    """One connected session as the ticker sees it."""

    rec: SessionRecord
    ws: RawWebSocket
    fd: int
    source: AudioSource
    first_tick: int
    done: trio.Event = field(default_factory=trio.Event)
    frames: list[bytes] = field(default_factory=list)
    backlog: collections.deque[bytes] = field(default_factory=collections.deque)
    draining: bool = False
    failed: bool = False


class _Ticker:
    """Writes every registered session's frames on schedule (see the module docstring)."""

    def __init__(self, config: LoadConfig, nursery: trio.Nursery) -> None:
        from bench.loadgen import LATE_FRAME_S

        self._config = config
        self._nursery = nursery
        self._late_s = LATE_FRAME_S
        self._frame_s = config.frame_ms / 1000
        self._per_second = 1000 // config.frame_ms
        self._slots: list[list[_Live]] = [[] for _ in range(SLOTS)]
        self._start = trio.current_time()
        self._tick = 0  # frame intervals since start

    def add(self, live_index: int, make: _Live) -> None:
        """Register a session; it sends its first frame at the next tick of its slot."""
        make.first_tick = self._tick + 1
        self._slots[live_index % SLOTS].append(make)

    async def run(self) -> None:
        """Forever: for each tick and slot, send the due frames (cancelled by the owner)."""
        slot_s = self._frame_s / SLOTS
        while True:  # noqa: ASYNC913 -- each pass sleeps SLOTS (> 0) times
            self._tick += 1
            for slot, sessions in enumerate(self._slots):
                due = self._start + self._tick * self._frame_s + slot * slot_s
                await trio.sleep_until(due)
                now = trio.current_time()
                late = now - due > self._late_s
                for live in list(sessions):
                    self._send_due(live, now, due, late)
                sessions[:] = [s for s in sessions if not s.done.is_set()]

    def _send_due(self, live: _Live, now: float, due: float, late: bool) -> None:
        rec = live.rec
        n = self._tick - live.first_tick
        if n < 0:  # registered during this tick: it starts with the next one
            return
        k, f = divmod(n, self._per_second)
        if f == 0:
            self._encode_second(live, k)
        rec.send_lag_max_s = max(rec.send_lag_max_s, now - due)
        rec.late_frames += late
        self._write(live, live.frames[f])
        rec.frames_sent += 1
        if f == self._per_second - 1:
            rec.last_frame_at[k] = due
            if k + 1 == self._config.duration_s:
                rec.stream_s = due - (live.first_tick * self._frame_s + self._start) + self._frame_s
                self._finish(live)

    def _encode_second(self, live: _Live, k: int) -> None:
        from bench.loadgen import expected_token

        second = live.source.second(k)
        live.rec.expected[k] = expected_token(k, second)
        size = self._config.frame_bytes
        live.frames = [encode_frame(second[i : i + size]) for i in range(0, len(second), size)]

    def _finish(self, live: _Live) -> None:
        live.rec.sending_done = True
        if live.rec.complete():
            live.rec.all_received.set()
        live.done.set()

    def _write(self, live: _Live, frame: bytes) -> None:
        if live.failed:
            return
        if live.backlog or live.draining:
            live.backlog.append(frame)
            return
        try:
            sent = os.write(live.fd, frame)  # non-blocking: trio set O_NONBLOCK
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail(live, "closed:send")
            return
        if sent < len(frame):
            live.backlog.append(frame[sent:])
            live.draining = True
            self._nursery.start_soon(self._drain, live)

    async def _drain(self, live: _Live) -> None:
        await trio.lowlevel.checkpoint()
        try:
            while live.backlog:
                await live.ws.send_encoded(live.backlog.popleft())
        except RawClosed as exc:
            self._fail(live, f"closed:{exc.code}")
        finally:
            live.draining = False

    def _fail(self, live: _Live, error: str) -> None:
        live.failed = True
        live.rec.error = live.rec.error or error
        live.done.set()


async def _receive(live: _Live, ended: trio.Event) -> None:
    """Read and check every server message; a close before the audio ended fails the session."""
    from bench.loadgen.session import handle_text

    rec = live.rec
    await trio.lowlevel.checkpoint()
    try:
        while True:
            message = await live.ws.get_message()
            if isinstance(message, str):
                handle_text(rec, message, trio.current_time())
    except RawClosed as exc:
        rec.close_code = exc.code
        if not rec.sending_done:
            live.failed = True
            rec.error = rec.error or f"closed:{exc.code}"
            live.done.set()
    finally:
        ended.set()


async def _session(
    config: LoadConfig, ticker: _Ticker, rec: SessionRecord, start_at: float, source: AudioSource
) -> None:
    """One session: connect, register with the ticker, read until done, close; never raises."""
    await trio.sleep_until(start_at)
    parts = urlsplit(config.session_url())
    token = config.tokens[rec.index % len(config.tokens)]
    try:
        with trio.fail_after(config.connect_timeout_s):
            stream = await trio.open_tcp_stream(parts.hostname or "", parts.port or 80)
        async with stream:
            with trio.fail_after(config.connect_timeout_s):
                ws = await connect_raw_websocket(stream, parts.netloc,
                                                 f"{parts.path}?{parts.query}",
                                                 [("Authorization", f"Bearer {token}")])  # fmt: skip
            rec.connected = True
            await _connected(config, ticker, rec, ws, stream, source)
    except RawRejected as exc:
        rec.error = rec.error or f"rejected:{exc.status_code}"
    except trio.TooSlowError:
        rec.error = rec.error or "connect timeout"
    except OSError as exc:
        rec.error = rec.error or ("connect failed" if exc.errno is None else f"oserror:{exc.errno}")


async def _connected(
    config: LoadConfig, ticker: _Ticker, rec: SessionRecord, ws: RawWebSocket,
    stream: trio.SocketStream, source: AudioSource,
) -> None:  # fmt: skip
    live = _Live(rec, ws, stream.socket.fileno(), source, 0)
    ticker.add(rec.index, live)
    async with trio.open_nursery() as nursery:
        received = trio.Event()
        nursery.start_soon(_receive, live, received)
        await live.done.wait()
        if rec.error is None:
            with trio.move_on_after(config.grace_s):
                await rec.all_received.wait()
            await trio.sleep(config.hold_s)
        rec.closing = True
        # The receiver stays the only reader: it sees the server's answering close frame.
        with trio.move_on_after(DISCONNECT_TIMEOUT_S):
            with contextlib.suppress(RawClosed):
                await ws.send_close(1000)
            await received.wait()
        nursery.cancel_scope.cancel()


async def run_raw_sessions(
    config: LoadConfig, records: Sequence[SessionRecord], fixture: bytes | None
) -> None:
    """Run ``records``' sessions in this process; session ``i`` starts at ``i`` ramp steps."""
    from bench.loadgen import AudioSource

    start = trio.current_time()
    step = config.ramp_s / config.sessions
    async with trio.open_nursery() as ticker_nursery:
        ticker = _Ticker(config, ticker_nursery)
        ticker_nursery.start_soon(ticker.run)
        async with trio.open_nursery() as session_nursery:
            for rec in records:
                source = AudioSource(config, rec.index, fixture)
                at = start + rec.index * step
                session_nursery.start_soon(_session, config, ticker, rec, at, source)
        ticker_nursery.cancel_scope.cancel()
