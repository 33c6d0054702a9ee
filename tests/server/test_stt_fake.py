"""The fake STT provider: exact, derivable results; ordering; flush on close; failure knobs."""

from __future__ import annotations

import zlib

import pytest
import trio

from server.stt.base import SttCapacityError, SttEvent, SttProvider, SttResult, SttStatus
from server.stt.fake import FakeSttProvider, fake_text, open_fake_stt

RATE = 16000
SECOND = RATE * 2  # bytes of one second of PCM16 mono


def pattern(n_bytes: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-per-chunk audio bytes."""
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(n_bytes))


async def run(
    provider: FakeSttProvider, audio: bytes, *, piece: int, finalize_at: int = -1
) -> list[SttEvent]:
    events: list[SttEvent] = []
    async with provider.open_stream(sample_rate=RATE, language="en") as stream:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                async for event in stream.events():
                    events.append(event)

            nursery.start_soon(collect)
            for begin in range(0, len(audio), piece):
                await stream.send_audio(audio[begin : begin + piece])
                if begin + piece == finalize_at:
                    await stream.finalize()
            await stream.close()
    return events


async def test_exact_texts_times_and_order_regardless_of_framing() -> None:
    audio = pattern(int(2.5 * SECOND))
    async with open_fake_stt() as provider:
        by_frames = await run(provider, audio, piece=3200)
        by_odd_pieces = await run(provider, audio, piece=777)
    chunks = [audio[:SECOND], audio[SECOND : 2 * SECOND], audio[2 * SECOND :]]
    expected = [f"seg{i} {zlib.crc32(c):08x}" for i, c in enumerate(chunks)]
    for events in (by_frames, by_odd_pieces):
        finals = [e for e in events if isinstance(e, SttResult)]
        assert [r.text for r in finals] == expected
        assert all(r.is_final and r.provider == "fake" for r in finals)
        assert [(r.start_s, r.end_s) for r in finals] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
        assert [w.text for w in finals[2].words] == expected[2].split(" ")
        assert finals[2].words[0].start_s == 2.0 and finals[2].words[1].end_s == 2.5
    assert fake_text(1, chunks[1]) == expected[1]


async def test_finalize_cuts_a_chunk_and_close_flushes_the_rest() -> None:
    audio = pattern(SECOND, seed=3)
    cut = 12800  # 0.4 s
    events = await run(FakeSttProvider(), audio, piece=3200, finalize_at=cut)
    texts = [e.text for e in events if isinstance(e, SttResult)]
    assert texts == [fake_text(0, audio[:cut]), fake_text(1, audio[cut:])]
    times = [(e.start_s, e.end_s) for e in events if isinstance(e, SttResult)]
    assert times == [(0.0, 0.4), (0.4, 1.0)]


async def test_interim_at_half_a_chunk() -> None:
    audio = pattern(SECOND // 2 + 3200)
    provider = FakeSttProvider(chunk_ms=500, interim=True)
    events = await run(provider, audio, piece=3200)
    kinds = [(e.text, e.is_final) for e in events if isinstance(e, SttResult)]
    assert kinds == [
        ("seg0 ...", False),
        (fake_text(0, audio[: SECOND // 2]), True),
        (fake_text(1, audio[SECOND // 2 :]), True),  # 0.1 s tail: below half, no interim
    ]
    assert provider.statistics()["interims"] == 1


async def test_fail_after_chunks_degrades_and_drops() -> None:
    provider = FakeSttProvider(fail_after_chunks=1)
    events = await run(provider, pattern(3 * SECOND), piece=SECOND // 2)
    assert isinstance(events[0], SttResult) and events[0].is_final
    assert events[1:] == [SttStatus(degraded=True, reason="fake failure")]
    assert provider.statistics().dropped_audio_bytes == 2 * SECOND


async def test_capacity_refusal_and_statistics() -> None:
    provider: SttProvider = FakeSttProvider(open_capacity=1)
    async with provider.open_stream(sample_rate=RATE, language="en"):
        with pytest.raises(SttCapacityError):
            async with provider.open_stream(sample_rate=RATE, language="en"):
                pass  # pragma: no cover
        assert provider.statistics()["streams_open"] == 1
    async with provider.open_stream(sample_rate=RATE, language="en"):
        pass
    stats = dict(provider.statistics())
    assert (stats["streams_opened"], stats["streams_refused"], stats["streams_open"]) == (2, 1, 0)


async def test_send_after_close_is_refused() -> None:
    async with FakeSttProvider().open_stream(sample_rate=8000, language="en") as stream:
        await stream.send_audio(pattern(8000))  # 0.5 s at 8 kHz
        await stream.close()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_audio(b"\0\0")
        events = [event async for event in stream.events()]
    assert [e.end_s for e in events if isinstance(e, SttResult)] == [0.5]
