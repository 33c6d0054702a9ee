"""Audio codecs of ``/v4/listen``: client frames in, PCM16 little-endian mono out.

Omi's codecs (``codec`` query parameter):

``pcm8`` / ``pcm16``
    Raw linear16 little-endian mono. The digits are kHz, but only as a label: the audio's rate
    is ``sample_rate`` (as in Omi), so ``pcm8`` at 16000 Hz is accepted. Decoding returns the
    frame itself: no copy, no allocation.
``aac``
    AAC-LC in ADTS framing (the self-describing stream form): a frame carries one or more
    ADTS frames, or a part of one (FFmpeg's parser, through PyAV, reassembles them). Decoded by
    FFmpeg's AAC decoder and resampled to PCM16 mono at ``sample_rate`` (the stream's own rate
    comes from its headers). PyAV is imported on the first ``aac`` session only (~0.3 s).
    ~1 ms of CPU per 64 ms frame at 16 kHz (measured), inline like Opus.
``lc3_fs1030``
    The Friend pendant's LC3: 10 ms frames of 30 bytes (Omi's ``transcribe.py``:
    ``lc3_chunk_size = 30``, ``lc3_frame_duration_us = 10000``), decoded by liblc3 (``lc3py``)
    at ``sample_rate``. A message may hold one frame or several of 30 bytes each; a message of
    another length is decoded as one frame (LC3 frames may be 20..400 bytes). liblc3 conceals a
    corrupt frame (it returns silence-like output) rather than failing; only an invalid frame
    size is a :class:`BadFrameError`.
``opus`` / ``opus_fs320``
    One Opus packet per frame (160- or 320-sample frames on Omi devices; the suffix is only a
    hint, packets describe their own duration). One stateful libopus decoder per stream,
    decoding straight into a buffer reused for every frame: one ``bytes`` allocation per frame,
    ~20 us per 20 ms packet (measured, 16 kHz). Omi decodes Opus only at 16000 Hz; libopus
    decodes at any rate it supports, so this module takes 8000 and 16000 Hz for every codec.
    Packets of 2.5 to 120 ms are accepted; packet-loss concealment is not used.

Errors (one tree): :class:`CodecError` ▸ :class:`UnsupportedCodecError` (bad session
parameters, raised before the session starts, with a WebSocket close code) and
:class:`BadFrameError` (one undecodable frame: the session counts it and skips it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import lc3
import opuslib_next
from opuslib_next.api import decoder as opus_api

if TYPE_CHECKING:
    import av

__all__ = [
    "SUPPORTED_CHANNELS",
    "SUPPORTED_CODECS",
    "SUPPORTED_SAMPLE_RATES",
    "AacDecoder",
    "AudioDecoder",
    "BadFrameError",
    "CodecError",
    "CodecParams",
    "DecoderStatistics",
    "Lc3Decoder",
    "OpusDecoder",
    "PcmDecoder",
    "UnsupportedCodecError",
    "make_decoder",
    "parse_codec_params",
]

PCM_CODECS: Final = frozenset({"pcm8", "pcm16"})
OPUS_CODECS: Final = frozenset({"opus", "opus_fs320"})
AAC_CODEC: Final = "aac"
LC3_CODEC: Final = "lc3_fs1030"
SUPPORTED_CODECS: Final = PCM_CODECS | OPUS_CODECS | {AAC_CODEC, LC3_CODEC}
#: Omi's ``lc3_fs1030``: 10 ms frames of 30 bytes.
LC3_FRAME_US: Final = 10_000
LC3_FRAME_BYTES: Final = 30
#: liblc3's frame sizes (bytes per frame and channel).
LC3_MIN_FRAME_BYTES: Final = 20
LC3_MAX_FRAME_BYTES: Final = 400
SUPPORTED_SAMPLE_RATES: Final = (8000, 16000)
SUPPORTED_CHANNELS: Final = 1
BYTES_PER_SAMPLE: Final = 2
#: The longest legal Opus packet; decoding with room for it accepts every packet duration.
OPUS_MAX_PACKET_MS: Final = 120
#: WebSocket close codes for refused parameters (RFC 6455): data we cannot take / policy.
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY: Final = 1008


class CodecError(Exception):
    """Base class of codec errors."""


class UnsupportedCodecError(CodecError):
    """A session parameter is not supported; ``param`` names it, ``close_code`` is for the WS."""

    def __init__(self, param: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.close_code = close_code


class BadFrameError(CodecError):
    """One frame could not be decoded (count it and skip it; the stream goes on)."""


@dataclass(frozen=True, slots=True)
class CodecParams:
    """Validated codec parameters of a session."""

    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class DecoderStatistics:
    """Counters of one decoder.

    Attributes:
        frames: frames decoded.
        bad_frames: frames refused with :class:`BadFrameError`.
        bytes_in: bytes of every frame received, bad ones included.
        bytes_out: PCM16 bytes produced.
    """

    frames: int
    bad_frames: int
    bytes_in: int
    bytes_out: int


def parse_codec_params(codec: str, sample_rate: int, channels: int) -> CodecParams:
    """Validate a session's codec parameters.

    Raises:
        UnsupportedCodecError: naming the bad parameter; ``close_code`` is 1003 for a codec or
            channel layout we cannot take, 1008 for a sample rate outside 8000/16000.
    """
    if codec not in SUPPORTED_CODECS:
        raise UnsupportedCodecError(
            "codec",
            f"codec {codec[:20]!r} is not supported (use {', '.join(sorted(SUPPORTED_CODECS))})",
            CLOSE_UNSUPPORTED_DATA,
        )
    if channels != SUPPORTED_CHANNELS:
        raise UnsupportedCodecError(
            "channels",
            f"channels={channels} is not supported: send mono audio (channels=1)",
            CLOSE_UNSUPPORTED_DATA,
        )
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise UnsupportedCodecError(
            "sample_rate",
            f"sample_rate must be 8000 or 16000 (got {sample_rate})",
            CLOSE_POLICY,
        )
    return CodecParams(codec, sample_rate, channels)


class AudioDecoder(Protocol):
    """Turns the frames of one stream into PCM16 little-endian mono at ``sample_rate``."""

    codec: str
    sample_rate: int

    def decode(self, frame: bytes) -> bytes:
        """Decode one frame; raises :class:`BadFrameError` for an undecodable frame."""
        ...

    def statistics(self) -> DecoderStatistics:
        """Counters of this decoder."""
        ...


class _Counters:
    """Shared counting for the decoders."""

    __slots__ = ("_bad_frames", "_bytes_in", "_bytes_out", "_frames")

    def __init__(self) -> None:
        self._frames = 0
        self._bad_frames = 0
        self._bytes_in = 0
        self._bytes_out = 0

    def _bad(self, frame_len: int, why: str) -> BadFrameError:
        self._bad_frames += 1
        self._bytes_in += frame_len
        return BadFrameError(why)

    def _good(self, frame_len: int, pcm_len: int) -> None:
        self._frames += 1
        self._bytes_in += frame_len
        self._bytes_out += pcm_len

    def statistics(self) -> DecoderStatistics:
        """Counters of this decoder."""
        return DecoderStatistics(self._frames, self._bad_frames, self._bytes_in, self._bytes_out)


class PcmDecoder(_Counters):
    """``pcm8`` / ``pcm16``: the frame already is PCM16; only its length is checked."""

    __slots__ = ("codec", "sample_rate")

    def __init__(self, codec: str, sample_rate: int) -> None:
        super().__init__()
        self.codec = codec
        self.sample_rate = sample_rate

    def decode(self, frame: bytes) -> bytes:
        """Return ``frame`` itself (no copy); an odd length is a :class:`BadFrameError`."""
        n = len(frame)
        if n % BYTES_PER_SAMPLE:
            raise self._bad(n, f"PCM16 frame of odd length {n}")
        self._good(n, n)
        return frame


class OpusDecoder(_Counters):
    """``opus`` / ``opus_fs320``: one libopus decoder per stream (it keeps state)."""

    __slots__ = ("_buffer", "_decoder", "_max_samples", "_pointer", "codec", "sample_rate")

    def __init__(self, codec: str, sample_rate: int) -> None:
        super().__init__()
        self.codec = codec
        self.sample_rate = sample_rate
        self._decoder = opuslib_next.Decoder(sample_rate, SUPPORTED_CHANNELS)
        self._max_samples = sample_rate * OPUS_MAX_PACKET_MS // 1000
        self._buffer = (ctypes.c_int16 * self._max_samples)()
        self._pointer = ctypes.cast(self._buffer, ctypes.POINTER(ctypes.c_int16))

    def decode(self, frame: bytes) -> bytes:
        """Decode one packet into PCM16; corrupt or empty packets raise :class:`BadFrameError`.

        Calls libopus directly (opuslib_next's ``Decoder.decode`` builds a Python list of every
        sample: 2.5x slower) into the reused buffer, then copies the samples out once.
        """
        n = len(frame)
        if n == 0:
            raise self._bad(0, "empty Opus packet")
        samples = opus_api.libopus_decode(
            self._decoder.decoder_state, frame, n, self._pointer, self._max_samples, 0
        )
        if samples < 0:
            raise self._bad(n, f"undecodable Opus packet ({_opus_reason(samples)})")
        pcm = ctypes.string_at(self._buffer, samples * BYTES_PER_SAMPLE)
        self._good(n, len(pcm))
        return pcm


class Lc3Decoder(_Counters):
    """``lc3_fs1030``: one liblc3 decoder per stream (see the module docstring)."""

    __slots__ = ("_decoder", "codec", "sample_rate")

    def __init__(self, codec: str, sample_rate: int) -> None:
        super().__init__()
        self.codec = codec
        self.sample_rate = sample_rate
        self._decoder = lc3.Decoder(LC3_FRAME_US, sample_rate)

    def decode(self, frame: bytes) -> bytes:
        """Decode one message (one or more LC3 frames) into PCM16."""
        n = len(frame)
        if n % LC3_FRAME_BYTES == 0:
            chunks = [frame[i : i + LC3_FRAME_BYTES] for i in range(0, n, LC3_FRAME_BYTES)]
        elif LC3_MIN_FRAME_BYTES <= n <= LC3_MAX_FRAME_BYTES:
            chunks = [frame]
        else:
            raise self._bad(n, f"LC3 message of {n} bytes is not a frame (20..400 or 30 x k)")
        try:
            pcm = b"".join(self._decoder.decode(chunk, bit_depth=16) for chunk in chunks)
        except lc3.BaseError as exc:
            raise self._bad(n, f"undecodable LC3 frame ({exc})") from None
        self._good(n, len(pcm))
        return pcm


class AacDecoder(_Counters):
    """``aac``: ADTS-framed AAC through FFmpeg (PyAV); see the module docstring."""

    __slots__ = ("_av", "_context", "_resampler", "codec", "sample_rate")

    def __init__(self, codec: str, sample_rate: int) -> None:
        super().__init__()
        import av

        self.codec = codec
        self.sample_rate = sample_rate
        self._av = av
        self._context: av.AudioCodecContext = av.AudioCodecContext.create("aac", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)

    def decode(self, frame: bytes) -> bytes:
        """Decode what the message completes; may return ``b""`` (a partial ADTS frame)."""
        n = len(frame)
        out = bytearray()
        try:
            for packet in self._context.parse(frame):
                for audio in self._context.decode(packet):
                    for resampled in self._resampler.resample(audio):
                        out += _s16_mono_bytes(resampled)
        except self._av.FFmpegError as exc:
            raise self._bad(n, f"undecodable AAC frame ({exc})") from None
        self._good(n, len(out))
        return bytes(out)


def _s16_mono_bytes(frame: av.AudioFrame) -> bytes:
    """The samples of a packed s16 mono frame (planes may be padded past the samples)."""
    return bytes(frame.planes[0])[: frame.samples * BYTES_PER_SAMPLE]


def _opus_reason(code: int) -> str:
    try:
        return str(opuslib_next.OpusError(code))
    except Exception:  # the message table is libopus's; never let it hide the frame error
        return f"libopus error {code}"


def make_decoder(codec: str, sample_rate: int) -> AudioDecoder:
    """Create the decoder of one stream (validate with :func:`parse_codec_params` first).

    Raises:
        UnsupportedCodecError: for a codec or sample rate this module does not take.
    """
    params = parse_codec_params(codec, sample_rate, SUPPORTED_CHANNELS)
    if params.codec in PCM_CODECS:
        return PcmDecoder(params.codec, params.sample_rate)
    if params.codec == AAC_CODEC:
        return AacDecoder(params.codec, params.sample_rate)
    if params.codec == LC3_CODEC:
        return Lc3Decoder(params.codec, params.sample_rate)
    return OpusDecoder(params.codec, params.sample_rate)
