"""The Omi devices' other codecs, round trip: speech encoded by the same libraries, decoded here.

``aac`` (ADTS, PyAV's FFmpeg encoder) and ``lc3_fs1030`` (liblc3 through ``lc3py``: 10 ms
frames of 30 bytes, Omi's ``backend/routers/transcribe.py``: ``lc3_chunk_size = 30``,
``lc3_frame_duration_us = 10000``). The fixture is tests/fixtures/speech (flite, 16 kHz).
"""

from __future__ import annotations

import io
import pathlib
from array import array
from collections.abc import Callable

import av
import httpx
import lc3
import pytest
import trio

from server.listen.codecs import BadFrameError, make_decoder
from server.settings import Settings
from tests.conftest import create_user_token, start_server
from tests.omi.app_client import AppView, app_query, read_app
from tests.server.listen_client import open_listen

SPEECH = pathlib.Path(__file__).parents[1] / "fixtures" / "speech"
AUDIO = (SPEECH / "two_sentences.raw").read_bytes()
REFERENCE = (SPEECH / "two_sentences.txt").read_text().split()
RATE = 16000
LC3_FRAME_SAMPLES = RATE // 100


def aac_frames(pcm: bytes) -> list[bytes]:
    """``pcm`` (s16le mono 16 kHz) as AAC-LC ADTS frames, one per list item."""
    out = io.BytesIO()
    with av.open(out, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono")
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data, frames, i = out.getvalue(), [], 0
    while i < len(data):
        assert data[i] == 0xFF and data[i + 1] & 0xF0 == 0xF0, "not an ADTS sync word"
        length = ((data[i + 3] & 3) << 11) | (data[i + 4] << 3) | (data[i + 5] >> 5)
        frames.append(data[i : i + length])
        i += length
    return frames


def lc3_frames(pcm: bytes) -> list[bytes]:
    """``pcm`` as the Friend pendant's LC3 frames (10 ms, 30 bytes each)."""
    encoder = lc3.Encoder(10_000, RATE)
    step = LC3_FRAME_SAMPLES * 2
    return [
        encoder.encode(pcm[i : i + step], 30, bit_depth=16)
        for i in range(0, len(pcm) - step + 1, step)
    ]


def _energy(pcm: bytes) -> float:
    samples = array("h", pcm)
    return sum(s * s for s in samples) / max(1, len(samples))


@pytest.mark.parametrize("codec", ["aac", "lc3_fs1030"])
def test_decoding_gives_back_the_speech(codec: str) -> None:
    encoded = aac_frames(AUDIO) if codec == "aac" else lc3_frames(AUDIO)
    decoder = make_decoder(codec, RATE)
    pcm = b"".join(decoder.decode(frame) for frame in encoded)
    assert abs(len(pcm) - len(AUDIO)) <= 2 * 2048  # codec delay / padding only
    assert 0.3 < _energy(pcm) / _energy(AUDIO) < 3
    stats = decoder.statistics()
    assert stats.frames == len(encoded) and stats.bad_frames == 0


def test_lc3_takes_several_frames_per_message_and_refuses_non_frames() -> None:
    frames = lc3_frames(AUDIO[: RATE * 2])
    one_by_one = make_decoder("lc3_fs1030", RATE)
    batched = make_decoder("lc3_fs1030", RATE)
    expected = b"".join(one_by_one.decode(f) for f in frames)
    got = b"".join(batched.decode(b"".join(frames[i : i + 4])) for i in range(0, len(frames), 4))
    assert got == expected
    with pytest.raises(BadFrameError):
        batched.decode(b"\x00" * 7)
    assert batched.statistics().bad_frames == 1


@pytest.mark.slow
async def test_aac_and_lc3_sessions_transcribe_real_speech(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """The default stack (VAD, pocketsphinx) behind each codec, with the app's query."""
    settings = make_settings(stt="embedded", vad="active", stt_workers=1, stt_streams_per_worker=2)
    server = await start_server(nursery, settings)
    silence = bytes(RATE * 2)  # one second, so the endpointer closes the last sentence
    words = set(REFERENCE)
    heard: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for codec, frames, per_pause in (
            ("aac", aac_frames(AUDIO + silence), 2),
            ("lc3_fs1030", lc3_frames(AUDIO + silence), 20),
        ):
            token = await create_user_token(client, f"device-{codec}")
            with trio.fail_after(60):
                async with open_listen(server, app_query(codec=codec), token) as ws:
                    view = await read_app(
                        ws, AppView(), lambda v: len(v.of_type("service_status")) >= 3
                    )
                    for n, frame in enumerate(frames):
                        await ws.send_message(frame)
                        if n % per_pause == per_pause - 1:
                            await trio.sleep(0.02)  # paced like a device, faster than real time
                    await read_app(
                        ws,
                        view,
                        lambda v: len(words & set(v.transcript().split())) >= 0.7 * len(words),
                    )
            assert view.problems == []
            heard[codec] = view.transcript().split()
    for codec, got in heard.items():
        assert len(words & set(got)) >= 0.7 * len(words), (codec, got)
