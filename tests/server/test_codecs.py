"""Codecs of /v4/listen: PCM passes through, Opus round-trips, bad frames are counted and refused."""

from __future__ import annotations

import array
import math

import opuslib_next
import pytest

from server.listen.codecs import (
    SUPPORTED_CODECS,
    AacDecoder,
    BadFrameError,
    CodecError,
    Lc3Decoder,
    OpusDecoder,
    PcmDecoder,
    UnsupportedCodecError,
    make_decoder,
    parse_codec_params,
)

#: Opus packets libopus refuses: a code-3 packet with 63 CELT frames (1.26 s > 120 ms), and a
#: code-3 packet that is cut off before its frame count.
CORRUPT_OPUS = [b"\xff\xff\xff\xff", b"\x03"]


def sine(sample_rate: int, seconds: float, hz: float = 440.0, amplitude: int = 8000) -> bytes:
    n = int(sample_rate * seconds)
    samples = array.array(
        "h", (int(amplitude * math.sin(2 * math.pi * hz * i / sample_rate)) for i in range(n))
    )
    return samples.tobytes()


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def opus_packets(pcm: bytes, sample_rate: int, frame_ms: float) -> list[bytes]:
    encoder = opuslib_next.Encoder(sample_rate, 1, opuslib_next.APPLICATION_VOIP)
    frame_samples = int(sample_rate * frame_ms / 1000)
    step = frame_samples * 2
    return [encoder.encode(pcm[i : i + step], frame_samples) for i in range(0, len(pcm), step)]


@pytest.mark.parametrize("codec", ["pcm8", "pcm16"])
def test_pcm_passes_through_without_a_copy(codec: str) -> None:
    decoder = make_decoder(codec, 16000)
    frame = sine(16000, 0.1)
    assert decoder.decode(frame) is frame
    assert decoder.statistics().frames == 1
    assert decoder.statistics().bytes_out == len(frame)


def test_odd_length_pcm_is_a_counted_bad_frame() -> None:
    decoder = make_decoder("pcm8", 8000)
    decoder.decode(b"\x01\x00\x02\x00")
    with pytest.raises(BadFrameError, match="odd length 3"):
        decoder.decode(b"\x01\x02\x03")
    stats = decoder.statistics()
    assert (stats.frames, stats.bad_frames, stats.bytes_in, stats.bytes_out) == (1, 1, 7, 4)
    assert issubclass(BadFrameError, CodecError)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
@pytest.mark.parametrize("frame_ms", [10, 20, 60])
def test_opus_round_trip_keeps_length_and_energy(sample_rate: int, frame_ms: int) -> None:
    pcm = sine(sample_rate, 1.2)
    packets = opus_packets(pcm, sample_rate, frame_ms)
    decoder = make_decoder("opus", sample_rate)
    decoded = b"".join(decoder.decode(p) for p in packets)
    assert len(decoded) == len(pcm)
    assert all(len(decoder.decode(p)) == sample_rate * frame_ms // 1000 * 2 for p in packets[:3])
    # Skip the codec's start-up, then compare loudness: a 440 Hz tone survives Opus closely.
    start = len(decoded) // 4
    assert rms(decoded[start:]) == pytest.approx(rms(pcm[start:]), rel=0.25)
    stats = decoder.statistics()
    assert stats.bad_frames == 0 and stats.frames == len(packets) + 3
    assert stats.bytes_out == len(decoded) + 3 * (sample_rate * frame_ms // 1000 * 2)
    assert stats.bytes_in == sum(len(p) for p in packets) + sum(len(p) for p in packets[:3])


def test_opus_fs320_and_mixed_packet_durations_share_one_decoder() -> None:
    pcm = sine(16000, 0.6)
    decoder = make_decoder("opus_fs320", 16000)
    assert isinstance(decoder, OpusDecoder)
    lengths = []
    for frame_ms, part in ((20, pcm[:6400]), (60, pcm[6400:12160]), (10, pcm[12160:])):
        lengths += [len(decoder.decode(p)) for p in opus_packets(part, 16000, frame_ms)]
    assert sum(lengths) == len(pcm)
    assert set(lengths) == {320, 640, 1920}


@pytest.mark.parametrize("packet", [*CORRUPT_OPUS, b""], ids=["too-long", "truncated", "empty"])
def test_garbage_opus_is_a_counted_bad_frame(packet: bytes) -> None:
    decoder = make_decoder("opus", 16000)
    good = opus_packets(sine(16000, 0.04), 16000, 20)
    decoder.decode(good[0])
    with pytest.raises(BadFrameError, match="Opus packet"):
        decoder.decode(packet)
    assert len(decoder.decode(good[1])) == 640  # the stream goes on
    stats = decoder.statistics()
    assert (stats.frames, stats.bad_frames) == (2, 1)
    assert stats.bytes_in == len(good[0]) + len(packet) + len(good[1])


def test_make_decoder_picks_the_decoder_per_codec() -> None:
    assert isinstance(make_decoder("pcm16", 8000), PcmDecoder)
    assert isinstance(make_decoder("opus", 8000), OpusDecoder)
    assert isinstance(make_decoder("aac", 16000), AacDecoder)
    assert isinstance(make_decoder("lc3_fs1030", 16000), Lc3Decoder)
    assert SUPPORTED_CODECS == {"pcm8", "pcm16", "opus", "opus_fs320", "aac", "lc3_fs1030"}


@pytest.mark.parametrize(
    ("codec", "rate", "channels", "param", "code", "message"),
    [
        ("mp3", 16000, 1, "codec", 1003, "codec 'mp3' is not supported (use aac, lc3_fs1030,"),
        ("lc3", 16000, 1, "codec", 1003, "codec 'lc3' is not supported"),
        ("pcm16", 16000, 2, "channels", 1003, "channels=2 is not supported: send mono audio"),
        ("opus", 44100, 1, "sample_rate", 1008, "sample_rate must be 8000 or 16000 (got 44100)"),
        ("pcm8", 0, 1, "sample_rate", 1008, "sample_rate must be 8000 or 16000 (got 0)"),
    ],
)
def test_parameter_validation_names_the_bad_parameter(
    codec: str, rate: int, channels: int, param: str, code: int, message: str
) -> None:
    with pytest.raises(UnsupportedCodecError) as info:
        parse_codec_params(codec, rate, channels)
    assert info.value.param == param
    assert info.value.close_code == code
    assert str(info.value).startswith(message)
    assert isinstance(info.value, CodecError)


def test_valid_parameters_are_returned_and_make_decoder_validates() -> None:
    params = parse_codec_params("opus", 8000, 1)
    assert (params.codec, params.sample_rate, params.channels) == ("opus", 8000, 1)
    with pytest.raises(UnsupportedCodecError, match="sample_rate"):
        make_decoder("pcm16", 22050)
