"""The Deepgram provider against the fake Deepgram server, over real loopback sockets.

Timers run on the real clock with small intervals (keepalive 0.1 s, fake idle window 0.5 s,
backoff 10-200 ms) and generous ``fail_after`` bounds: autojump would fire while sockets are busy.
"""

from __future__ import annotations

from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from server.stt.base import SttEvent, SttResult, SttStatus, SttUnavailableError
from server.stt.deepgram import DeepgramSettings, DeepgramStream, DeepgramSttProvider
from tests.fakes.deepgram import (
    DROP_REASON,
    FAKE_API_KEY,
    FakeDeepgram,
    open_fake_deepgram,
)

RATE = 16000
AUTH = [(b"Authorization", f"Token {FAKE_API_KEY}".encode())]


def loud(seconds: float) -> bytes:
    """A square wave: every 250 ms of it is one fake word."""
    return array("h", [4000, -4000] * round(RATE * seconds / 2)).tobytes()


def silence(seconds: float) -> bytes:
    return bytes(round(RATE * seconds) * 2)


def make_provider(fake: FakeDeepgram, **overrides: Any) -> DeepgramSttProvider:
    options: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_jitter_s": 0.01}
    options.update(overrides)
    settings = DeepgramSettings(api_key=FAKE_API_KEY, url=fake.url, **options)
    return DeepgramSttProvider(settings, uniform=lambda: 0.5)


@asynccontextmanager
async def open_stream(provider: DeepgramSttProvider) -> AsyncIterator[DeepgramStream]:
    async with provider.open_stream(sample_rate=RATE, language="en") as stream:
        yield stream


async def until_final(stream: DeepgramStream) -> list[SttEvent]:
    """Receive events up to and including the next final result."""
    got: list[SttEvent] = []
    while not (got and isinstance(got[-1], SttResult) and got[-1].is_final):
        got.append(await stream.events().receive())
    return got  # noqa: ASYNC910 -- the loop runs at least once


def texts(events: list[SttEvent]) -> list[tuple[str, bool]]:
    return [(e.text, e.is_final) for e in events if isinstance(e, SttResult)]


async def test_handshake_carries_key_and_params() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            provider = make_provider(fake)
            async with provider.open_stream(sample_rate=8000, language="de") as stream:
                assert provider.statistics().streams_open == 1
                await stream.close()
    conn = fake.connections[0]
    assert conn.authorization == f"Token {FAKE_API_KEY}"
    assert conn.query == {
        "model": "nova-3",
        "language": "de",
        "encoding": "linear16",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "punctuate": "true",
        "smart_format": "true",
        "endpointing": "300",
    }
    assert conn.controls == ["CloseStream"]
    assert [m["type"] for m in conn.sent] == ["Metadata"]
    assert (conn.close_code, conn.closed_by) == (1000, "server")
    stats = provider.statistics()
    assert (stats.streams_open, stats.streams_opened, stats["reconnects"]) == (0, 1, 0)


async def test_interims_then_finals_with_word_times() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake, open_stream(make_provider(fake)) as stream:
            await stream.send_audio(b"")  # never sent as an (upstream-closing) empty frame
            await stream.send_audio(loud(1.0))
            first = await until_final(stream)
            await stream.send_audio(silence(0.25) + loud(0.5) + silence(0.25))
            second = await until_final(stream)
            await stream.close()
    assert texts(first) == [
        ("w1", False),
        ("w1 w2", False),
        ("w1 w2 w3", False),
        ("w1 w2 w3 w4", True),
    ]
    final = first[-1]
    assert isinstance(final, SttResult)
    assert (final.start_s, final.end_s, final.provider) == (0.0, 1.0, "deepgram")
    assert [(w.text, w.start_s, w.end_s) for w in final.words] == [
        ("w1", 0.0, 0.25), ("w2", 0.25, 0.5), ("w3", 0.5, 0.75), ("w4", 0.75, 1.0),
    ]  # fmt: skip
    assert final.words[0].confidence == pytest.approx(0.9)
    assert texts(second) == [("w5", False), ("w5 w6", False), ("w5 w6", True)]
    pause_final = second[-1]
    assert isinstance(pause_final, SttResult)
    assert (pause_final.start_s, pause_final.end_s) == (1.0, 2.0)
    conn = fake.accepted[0]
    assert conn.results[-1]["speech_final"] is True
    assert conn.empty_frames == 0
    assert conn.bytes_received == 2 * len(loud(1.0))


async def test_finalize_flushes_buffered_audio() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake, open_stream(make_provider(fake)) as stream:
            await stream.send_audio(loud(0.6))  # two whole words + 100 ms buffered upstream
            await fake.wait_for(lambda: len(fake.accepted[0].results) == 2)
            await stream.finalize()
            events = await until_final(stream)
            await stream.close()
    assert texts(events) == [("w1", False), ("w1 w2", False), ("w1 w2 w3", True)]
    final = events[-1]
    assert isinstance(final, SttResult)
    assert final.end_s == pytest.approx(0.6)
    conn = fake.accepted[0]
    assert conn.controls == ["Finalize", "CloseStream"]
    assert conn.results[2]["from_finalize"] is True


async def test_close_delivers_remaining_finals_then_ends_events() -> None:
    got: list[SttEvent] = []

    async def collect(stream: DeepgramStream) -> None:
        async for event in stream.events():
            got.append(event)

    with trio.fail_after(10):
        async with open_fake_deepgram() as fake, open_stream(make_provider(fake)) as stream:
            fake.result_delay_s = 0.1  # close() must wait for slow finals, not cut them off
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, stream)
                await stream.send_audio(loud(0.6))
                await stream.close()
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_audio(loud(0.1))
    assert [text for text, final in texts(got) if final] == ["w1 w2 w3"]
    conn = fake.accepted[0]
    assert [m["type"] for m in conn.sent[-2:]] == ["Results", "Metadata"]
    assert (conn.close_code, conn.closed_by) == (1000, "server")


async def test_diarized_speakers_are_mapped() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            async with open_stream(make_provider(fake, diarize=True)) as stream:
                await stream.send_audio(loud(2.0))
                first = (await until_final(stream))[-1]
                second = (await until_final(stream))[-1]
                await stream.close()
    assert fake.accepted[0].query["diarize"] == "true"
    assert isinstance(first, SttResult) and isinstance(second, SttResult)
    assert (first.text, first.speaker) == ("w1 w2 w3 w4", 0)
    assert (second.text, second.speaker) == ("w5 w6 w7 w8", 1)


async def test_oversized_upstream_message_degrades_the_stream() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            async with open_stream(make_provider(fake, max_message_bytes=256)) as stream:
                await stream.send_audio(loud(0.25))  # its interim Results is > 256 characters
                degraded = await stream.events().receive()
                recovered = await stream.events().receive()
                await stream.close()
    assert isinstance(degraded, SttStatus) and "1009" in degraded.reason
    assert isinstance(recovered, SttStatus) and not recovered.degraded
    assert fake.connections[0].close_code == 1009


async def test_keepalive_keeps_a_silent_stream_past_the_idle_window() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram(idle_timeout_s=0.5) as fake:
            provider = make_provider(fake, keepalive_interval_s=0.1)
            async with open_stream(provider) as stream:
                await stream.send_audio(loud(0.25))
                conn = fake.accepted[0]
                await fake.wait_for(lambda: conn.controls.count("KeepAlive") >= 8)  # >= 0.8 s
                assert conn.open
                await stream.send_audio(loud(0.75))
                events = await until_final(stream)
                await stream.close()
    assert texts(events)[-1] == ("w1 w2 w3 w4", True)
    assert not any(isinstance(e, SttStatus) for e in events)
    assert len(fake.connections) == 1
    assert provider.statistics().keepalives_sent >= 8


async def test_idle_close_without_keepalive_degrades_then_recovers() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram(idle_timeout_s=0.3) as fake:
            provider = make_provider(fake, keepalive_interval_s=60.0)
            async with open_stream(provider) as stream:
                degraded = await stream.events().receive()
                recovered = await stream.events().receive()
                await stream.close()
    assert isinstance(degraded, SttStatus) and degraded.degraded
    assert "1011" in degraded.reason and "net0001" in degraded.reason
    assert isinstance(recovered, SttStatus) and not recovered.degraded
    assert (fake.connections[0].close_code, fake.connections[0].closed_by) == (1011, "server")


async def test_reconnect_continues_timestamps_after_a_drop() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            provider = make_provider(fake, backoff_base_s=0.2)
            async with open_stream(provider) as stream:
                fake.drop_after_bytes = len(loud(0.5))
                fake.reject_next = 1  # the first reconnect attempt is refused with 503
                await stream.send_audio(loud(0.5))  # reaches the server, which then drops
                degraded = await stream.events().receive()
                await stream.send_audio(loud(0.25))  # during the outage: dropped, still counted
                recovered = await stream.events().receive()
                await stream.send_audio(loud(1.0))
                events = await until_final(stream)
                await stream.close()
    assert isinstance(degraded, SttStatus) and degraded.degraded
    assert DROP_REASON in degraded.reason
    assert isinstance(recovered, SttStatus) and not recovered.degraded
    assert recovered.details == {"attempts": 2, "offset_s": 0.75}
    final = events[-1]
    assert isinstance(final, SttResult)
    assert (final.text, final.start_s, final.end_s) == ("w1 w2 w3 w4", 0.75, 1.75)
    assert (final.words[0].start_s, final.words[-1].end_s) == (0.75, 1.75)
    assert [conn.rejected_status for conn in fake.connections] == [None, 503, None]
    stats = provider.statistics()
    assert (stats.reconnects, stats.dropped_audio_bytes) == (1, len(loud(0.25)))
    assert stats.bytes_sent == len(loud(0.5)) + len(loud(1.0))


async def test_bad_key_is_a_clear_error() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            settings = DeepgramSettings(api_key="wrong", url=fake.url)
            provider = DeepgramSttProvider(settings)
            with pytest.raises(SttUnavailableError, match=r"HTTP 401 \(Invalid credentials\.\)"):
                async with provider.open_stream(sample_rate=RATE, language="en"):
                    pass
    assert "wrong" not in repr(settings)
    assert fake.connections[0].authorization == "Token wrong"
    assert fake.connections[0].rejected_status == 401
    stats = provider.statistics()
    assert (stats.streams_refused, stats.streams_open, stats.streams_opened) == (1, 0, 0)


async def test_transient_refusal_at_open_starts_degraded() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            fake.reject_next = 1
            async with open_stream(make_provider(fake)) as stream:
                degraded = await stream.events().receive()
                recovered = await stream.events().receive()
                fake.drop()
                dropped = await stream.events().receive()
                await stream.close()
    assert isinstance(degraded, SttStatus) and "HTTP 503" in degraded.reason
    assert isinstance(recovered, SttStatus) and not recovered.degraded
    assert isinstance(dropped, SttStatus) and dropped.degraded and "1011" in dropped.reason


async def test_caller_errors_leave_open_stream_unwrapped() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            with pytest.raises(KeyError):
                async with open_stream(make_provider(fake)):
                    raise KeyError("caller bug")


@asynccontextmanager
async def raw_socket(fake: FakeDeepgram, query: str) -> AsyncIterator[WebSocketConnection]:
    """A bare client socket to the fake (this helper closes the TCP stream itself)."""
    stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"127.0.0.1:{fake.port}", f"/v1/listen?{query}", extra_headers=AUTH
            )
            yield ws
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def test_fake_refuses_bad_params_and_closes_on_empty_frame() -> None:
    with trio.fail_after(10):
        async with open_fake_deepgram() as fake:
            with pytest.RaisesGroup(ConnectionRejected) as refused:
                async with raw_socket(fake, "encoding=linear16"):
                    pass
            async with raw_socket(fake, "encoding=linear16&sample_rate=16000") as ws:
                await ws.send_message(b"")
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
    rejection = refused.value.exceptions[0]
    assert isinstance(rejection, ConnectionRejected)
    assert rejection.status_code == 400
    assert (b"dg-error", b"sample_rate is required with encoding") in rejection.headers
    assert closed.value.reason is not None and closed.value.reason.code == 1000
    assert [conn.rejected_status for conn in fake.connections] == [400, None]
    assert fake.connections[1].empty_frames == 1
