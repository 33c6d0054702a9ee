"""The VAD gate: silence is skipped, speech goes through with pre-roll and hangover, and STT
stream times map back to session times exactly.

Synthetic audio: loud white noise (webrtcvad calls it speech) between stretches of near-silence
(noise with sigma 3, which it calls silence; unlike digital silence every frame is unique, so a
forwarded frame can be found in the input to check its time). The expected decisions come from a
separate webrtcvad instance run on the same frames: webrtcvad keeps a few frames of its own
hangover, which the tests must not guess.
"""

from __future__ import annotations

import array
import random

import pytest
import webrtcvad

from server.listen.vad import (
    DEFAULT_HANGOVER_MS,
    DEFAULT_PRE_ROLL_MS,
    VadGate,
    WallTimeMapper,
)

FRAME_MS = 30


def noise(rng: random.Random, seconds: float, sample_rate: int, sigma: float) -> bytes:
    n = round(seconds * sample_rate)
    return array.array(
        "h", (max(-32768, min(32767, round(rng.gauss(0, sigma)))) for _ in range(n))
    ).tobytes()


def conversation(sample_rate: int, pattern: list[tuple[float, bool]], seed: int = 7) -> bytes:
    """Audio of (seconds, is_speech) stretches."""
    rng = random.Random(seed)
    return b"".join(noise(rng, s, sample_rate, 3000 if loud else 3) for s, loud in pattern)


def frame_bytes(sample_rate: int) -> int:
    return sample_rate * FRAME_MS // 1000 * 2


def reference_decisions(pcm: bytes, sample_rate: int, aggressiveness: int = 2) -> list[bool]:
    vad, size = webrtcvad.Vad(aggressiveness), frame_bytes(sample_rate)
    return [
        vad.is_speech(pcm[i : i + size], sample_rate) for i in range(0, len(pcm) - size + 1, size)
    ]


def speech_runs(decisions: list[bool]) -> list[tuple[int, int]]:
    """(first, last) frame index of each run of speech frames."""
    runs: list[tuple[int, int]] = []
    for i, speech in enumerate(decisions):
        if not speech:
            continue
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def feed(gate: VadGate, pcm: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    """Feed ``pcm`` in random chunk sizes; return everything forwarded and where hints came."""
    out, hints, i = bytearray(), [], 0
    while i < len(pcm):
        chunk = pcm[i : i + rng.randrange(1, 4000)]
        i += len(chunk)
        result = gate.process(chunk)
        out += result.forward
        if result.speech_ended:
            hints.append(i)
    return bytes(out), hints


def test_silence_is_skipped_and_counted() -> None:
    pcm = conversation(16000, [(3.0, False)])
    gate = VadGate("active", 16000)
    forwarded, hints = feed(gate, pcm, random.Random(1))
    stats = gate.statistics()
    held = DEFAULT_PRE_ROLL_MS // FRAME_MS * frame_bytes(16000)
    assert forwarded == b"" and hints == []
    assert stats.frames == 100 and stats.speech_frames == 0
    assert stats.skipped_bytes == len(pcm) - held and stats.forwarded_bytes == 0
    assert stats.skipped_share == 1.0


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_speech_is_forwarded_with_pre_roll_and_hangover(sample_rate: int) -> None:
    pcm = conversation(sample_rate, [(1.5, False), (0.9, True), (3.0, False)])
    decisions = reference_decisions(pcm, sample_rate)
    [(first, last)] = speech_runs(decisions)
    assert last - first + 1 >= 30  # all of the loud stretch is speech
    gate = VadGate("active", sample_rate)
    forwarded, _ = feed(gate, pcm, random.Random(2))
    size = frame_bytes(sample_rate)
    start = (first - DEFAULT_PRE_ROLL_MS // FRAME_MS) * size
    end = (last + 1 + DEFAULT_HANGOVER_MS // FRAME_MS) * size
    assert forwarded == pcm[start:end]
    stats = gate.statistics()
    assert stats.speech_frames == sum(decisions)
    assert stats.forwarded_bytes == end - start
    assert stats.skipped_bytes == len(pcm) // size * size - (end - start) - 10 * size
    assert stats.skipped_share == pytest.approx(
        stats.skipped_bytes / (stats.skipped_bytes + stats.forwarded_bytes)
    )


def test_speech_ended_is_hinted_once_per_pause_after_the_finalize_delay() -> None:
    pcm = conversation(16000, [(0.6, False), (0.6, True), (2.4, False), (0.6, True), (0.3, False)])
    runs = speech_runs(reference_decisions(pcm, 16000))
    assert len(runs) == 2
    gate = VadGate("active", 16000, finalize_after_ms=300)
    size = frame_bytes(16000)
    hints = [i for i in range(0, len(pcm), size) if gate.process(pcm[i : i + size]).speech_ended]
    # The 10th silent frame after the first run; the second run's pause is still too short.
    assert hints == [(runs[0][1] + 10) * size]
    assert gate.statistics().speech_ended_hints == 1


def test_no_hint_when_speech_resumes_within_the_finalize_delay() -> None:
    pcm = conversation(16000, [(0.3, False), (0.6, True), (0.12, False), (0.6, True)])
    gate = VadGate("active", 16000, finalize_after_ms=600)
    _, hints = feed(gate, pcm, random.Random(3))
    assert hints == []


def test_stream_times_map_back_exactly_across_skipped_gaps() -> None:
    pattern = [(1.2, False), (0.6, True), (4.0, False), (0.9, True), (6.0, False), (0.3, True)]
    pcm = conversation(16000, pattern)
    gate = VadGate("active", 16000, hangover_ms=600)
    forwarded, _ = feed(gate, pcm, random.Random(4))
    size = frame_bytes(16000)
    assert len(forwarded) < len(pcm) // 2  # most of it was skipped
    assert gate.statistics().checkpoints == 3
    for offset in range(0, len(forwarded), size):
        frame = forwarded[offset : offset + size]
        session_byte = pcm.find(frame)
        assert session_byte >= 0 and pcm.find(frame, session_byte + 1) == -1
        stream_s = offset / 2 / 16000
        for within_s in (0.0, 0.011):  # the frame's start and a point inside it
            mapped = gate.to_session_s(stream_s + within_s)
            assert mapped == pytest.approx(session_byte / 2 / 16000 + within_s, abs=1e-9)


def test_mode_off_forwards_everything_as_is() -> None:
    pcm = conversation(8000, [(1.0, False), (0.5, True)])
    gate = VadGate("off", 8000)
    out = gate.process(pcm)
    assert out.forward is pcm and not out.speech_ended
    assert gate.to_session_s(1.25) == 1.25
    stats = gate.statistics()
    assert (stats.frames, stats.forwarded_bytes, stats.skipped_bytes) == (0, len(pcm), 0)


def test_shadow_forwards_everything_and_counts_what_active_would_skip() -> None:
    pcm = conversation(16000, [(2.0, False), (0.6, True), (3.0, False)])
    shadow, active = VadGate("shadow", 16000), VadGate("active", 16000)
    forwarded, hints = feed(shadow, pcm, random.Random(5))
    feed(active, pcm, random.Random(5))
    assert forwarded == pcm and hints == []
    assert shadow.to_session_s(2.0) == 2.0  # nothing was skipped, so no time moved
    s, a = shadow.statistics(), active.statistics()
    assert (s.forwarded_bytes, s.skipped_bytes, s.speech_frames) == (
        a.forwarded_bytes,
        a.skipped_bytes,
        a.speech_frames,
    )
    assert s.skipped_share > 0.5


def test_without_pre_roll_speech_starts_at_its_first_frame() -> None:
    pcm = conversation(16000, [(0.9, False), (0.6, True), (0.3, False)])
    [(first, _)] = speech_runs(reference_decisions(pcm, 16000))
    gate = VadGate("active", 16000, pre_roll_ms=0, hangover_ms=0)
    forwarded, _ = feed(gate, pcm, random.Random(6))
    size = frame_bytes(16000)
    assert forwarded.startswith(pcm[first * size : (first + 1) * size])
    assert gate.to_session_s(0.0) == pytest.approx(first * FRAME_MS / 1000)


def test_mapper_keeps_a_bounded_number_of_checkpoints() -> None:
    mapper = WallTimeMapper(1000, max_checkpoints=3)
    for run in range(1, 10):  # runs of 100 samples, each after a gap of 50 more samples
        mapper.record(run * 100, run * 150)
    mapper.record(950, 1400)  # same offset as the last one: merged, not stored
    assert len(mapper) == 3 and mapper.evicted == 7
    assert mapper.to_session_s(0.95) == pytest.approx(1.4)  # recent times stay exact
    assert mapper.to_session_s(0.75) == pytest.approx(1.1)  # run 7 starts at stream 0.7
    with pytest.raises(ValueError, match="stream order"):
        mapper.record(500, 2000)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("loud", 16000), {}, "VAD mode must be one of off, shadow, active"),
        (("active", 11025), {}, "sample_rate"),
        (("active", 16000), {"hangover_ms": -1}, "hangover_ms must be >= 0"),
        (("active", 16000), {"aggressiveness": 4}, "aggressiveness"),
    ],
)
def test_bad_settings_are_refused(
    args: tuple[str, int], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VadGate(*args, **kwargs)
