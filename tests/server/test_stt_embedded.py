"""Embedded pocketsphinx STT in worker processes, on a flite speech fixture (real clock)."""

from __future__ import annotations

import os
import pathlib
import signal
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from server.stt.base import (
    SttCapacityError,
    SttEvent,
    SttProvider,
    SttResult,
    SttStatus,
    SttUnavailableError,
)
from server.stt.embedded import EmbeddedStream, EmbeddedSttProvider, open_embedded_stt
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "speech"
AUDIO = (FIXTURES / "two_sentences.raw").read_bytes()
REFERENCE = (FIXTURES / "two_sentences.txt").read_text().split()
RATE = 16000
FRAME = RATE * 2 // 10  # 100 ms
DURATION_S = len(AUDIO) / (RATE * 2)
DEADLINE_S = 30.0


def recall(finals: list[SttResult]) -> float:
    """The fraction of reference words found in the finals (multiset intersection)."""
    heard = [word.text for result in finals for word in result.words]
    hits = 0
    for word in REFERENCE:
        if word in heard:
            heard.remove(word)
            hits += 1
    return hits / len(REFERENCE)


def to_8k(audio: bytes) -> bytes:
    """Average sample pairs: a crude low-pass + decimation to 8 kHz."""
    samples = array("h")
    samples.frombytes(audio)
    return array(
        "h", [(samples[i] + samples[i + 1]) // 2 for i in range(0, len(samples) - 1, 2)]
    ).tobytes()


class Run:
    """Events of one stream, and how much audio had been sent when each arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, SttEvent]] = []
        self.sent_s = 0.0

    @property
    def finals(self) -> list[SttResult]:
        return [e for _, e in self.events if isinstance(e, SttResult) and e.is_final]


@asynccontextmanager
async def consuming(stream: EmbeddedStream) -> AsyncIterator[Run]:
    run = Run()

    async def collect() -> None:
        async for event in stream.events():
            run.events.append((run.sent_s, event))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        yield run


async def stream_audio(stream: EmbeddedStream, run: Run, audio: bytes, rate: int = RATE) -> None:
    frame = rate * 2 // 10
    await trio.lowlevel.checkpoint()
    for begin in range(0, len(audio), frame):
        await stream.send_audio(audio[begin : begin + frame])
        run.sent_s += len(audio[begin : begin + frame]) / (rate * 2)


async def transcribe(provider: EmbeddedSttProvider, audio: bytes, rate: int = RATE) -> Run:
    async with provider.open_stream(sample_rate=rate, language="en") as stream:
        async with consuming(stream) as run:
            await stream_audio(stream, run, audio, rate)
            await stream.close()
    return run


async def test_transcribes_fixture_with_timely_finals_and_sane_word_times() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_embedded_stt(workers=1, streams_per_worker=2) as provider:
            run = await transcribe(provider, AUDIO)
            stats = provider.statistics()
    assert len(run.finals) == 2, run.finals  # one per sentence, cut at the pause
    assert recall(run.finals) >= 0.7, [f.text for f in run.finals]
    words = [w for f in run.finals for w in f.words]
    assert all(0 <= w.start_s < w.end_s <= DURATION_S for w in words)
    assert all(a.end_s <= b.start_s for a, b in zip(words, words[1:], strict=False))
    for sent_s, event in run.events:
        if isinstance(event, SttResult) and event.is_final:
            assert sent_s - event.end_s < 1.0  # final within ~1 s of audio after the pause
            assert event.text == " ".join(w.text for w in event.words)
    assert any(not e.is_final for _, e in run.events if isinstance(e, SttResult))
    assert (stats.finals, stats.streams_open, stats.decoders_created) == (2, 0, 1)


async def test_pooled_decoder_reuse_and_capacity_refusal() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_embedded_stt(workers=1, streams_per_worker=2) as provider:
            started = trio.current_time()
            async with provider.open_stream(sample_rate=RATE, language="en") as first:
                cold_open_s = trio.current_time() - started
                assert not first.reused_decoder
            started = trio.current_time()
            async with provider.open_stream(sample_rate=RATE, language="en-US") as second:
                warm_open_s = trio.current_time() - started
                assert second.reused_decoder
                async with provider.open_stream(sample_rate=RATE, language="en"):
                    with pytest.raises(SttCapacityError):
                        async with provider.open_stream(sample_rate=RATE, language="en"):
                            pass  # pragma: no cover
            as_protocol: SttProvider = provider  # type-checks the structural interface
            with pytest.raises(SttUnavailableError):
                async with as_protocol.open_stream(sample_rate=RATE, language="de"):
                    pass  # pragma: no cover
            with pytest.raises(SttUnavailableError):
                async with provider.open_stream(sample_rate=96000, language="en"):
                    pass  # pragma: no cover
            stats = provider.statistics()
    assert warm_open_s < cold_open_s
    assert (stats.decoders_reused, stats.decoders_created, stats.streams_refused) == (1, 2, 1)


async def test_close_flushes_the_utterance_in_progress() -> None:
    cut = int(3.0 * RATE) * 2  # inside the first sentence's speech
    with trio.fail_after(DEADLINE_S):
        async with open_embedded_stt(workers=1, streams_per_worker=1) as provider:
            async with provider.open_stream(sample_rate=RATE, language="en") as stream:
                async with consuming(stream) as run:
                    await stream_audio(stream, run, AUDIO[:cut])
                    assert not run.finals  # still speaking: nothing final yet
                    await stream.close()
    assert len(run.finals) == 1
    assert len(run.finals[0].words) >= 4
    assert run.finals[0].end_s <= 3.0


async def test_8khz_audio_is_resampled() -> None:
    second = AUDIO[int(4.6 * RATE) * 2 :]  # "please remind me to call the doctor tomorrow morning"
    with trio.fail_after(DEADLINE_S):
        async with open_embedded_stt(workers=1, streams_per_worker=1) as provider:
            run = await transcribe(provider, to_8k(second), rate=8000)
    heard = {w.text for f in run.finals for w in f.words}
    assert len(heard & {"remind", "call", "doctor", "tomorrow", "morning"}) >= 3, heard
    assert all(w.end_s <= len(second) / (RATE * 2) for f in run.finals for w in f.words)


async def test_worker_crash_degrades_then_recovers_with_aligned_times() -> None:
    first_sentence = int(4.6 * RATE) * 2
    with trio.fail_after(DEADLINE_S):
        async with open_embedded_stt(workers=1, streams_per_worker=1) as provider:
            async with provider.open_stream(sample_rate=RATE, language="en") as stream:
                async with consuming(stream) as run:
                    await stream_audio(stream, run, AUDIO[:FRAME])
                    (pid,) = provider.statistics().worker_pids
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    await stream.send_audio(AUDIO[FRAME : 2 * FRAME])  # fails: degraded
                    await wait_until(lambda: provider.statistics().workers_alive == 1)
                    run.sent_s = 0.2
                    await stream_audio(stream, run, AUDIO[2 * FRAME : first_sentence])
                    await stream.close()
    statuses = [e for _, e in run.events if isinstance(e, SttStatus)]
    assert [(s.degraded, s.reason) for s in statuses] == [
        (True, "worker crashed"),
        (False, "recovered"),
    ]
    assert statuses[1].details["offset_s"] == pytest.approx(0.2)
    assert run.finals and run.finals[0].start_s >= 0.2
    assert recall(run.finals) >= 0.3  # most of the first sentence


def test_finalize_at_a_vad_pause_then_the_silent_tail_yields_no_final_and_no_error() -> None:
    """The VAD finalizes while the endpointer is still in speech; the tail it then returns
    decodes to no hypothesis (``seg()`` is ``None``): no final, no exception, next words fine."""
    from server.stt._sphinx_worker import SphinxSession

    session = SphinxSession(RATE, 1)
    first = int(3.6 * RATE) * 2
    for begin in range(0, first, FRAME):
        session.feed(AUDIO[begin : min(begin + FRAME, first)])
    finals = session.finalize()
    silence = bytes(FRAME)
    for _ in range(20):
        assert session.feed(silence) == []
        assert session.finalize() == []
    rest = [r for b in range(first, len(AUDIO), FRAME) for r in session.feed(AUDIO[b : b + FRAME])]
    finals += [r for r in rest + session.flush() if r.is_final]
    session.close()
    assert len(finals) == 2 and recall(finals) >= 0.7, [f.text for f in finals]
