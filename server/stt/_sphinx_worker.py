"""Worker-process side of the embedded STT: one :class:`SphinxSession` per stream.

Runs inside a :class:`lanes.ProcessLane` worker (factory ``server.stt._sphinx_worker:SphinxSession``),
never on the event loop: every method here is blocking, GIL-holding CPU work.

- **Decoder pool.** ``pocketsphinx.Decoder`` costs 0.3-0.55 s and ~90 MiB to create, so each
  worker process keeps the decoders of closed streams in a module-level pool (at most
  ``pool_limit``, the lane's sessions per worker) and a new stream takes one from there;
  ``start_utt``/``end_utt`` reset the search, and the live CMN carried over helps accuracy.
  Decoders are created lazily, on the first stream that finds the pool empty.
- **Utterances.** A ``pocketsphinx.Endpointer`` (WebRTC VAD, 0.3 s window, ratio 0.9) gates the
  decoder: speech frames are decoded, and the utterance ends ~0.3 s after the speaker pauses,
  which yields the FINAL result. :meth:`SphinxSession.finalize` forces the end of an utterance.
- **Interims.** While in an utterance, ``hyp()`` is read at most every ``INTERIM_INTERVAL_S`` of
  audio and an interim result is produced when its text changed.
- **Times.** Stream seconds: audio fed since the session began (after resampling to 16 kHz,
  which keeps durations). Word times come from ``seg()`` (10 ms frames from the utterance start);
  fillers (``<s>``, ``</s>``, ``<sil>``, ``[NOISE]``...) are dropped, ``word(2)`` becomes ``word``.
- **Sample rates.** Audio at another rate is resampled to 16 kHz by linear interpolation (cheap,
  pure Python, no anti-alias filter: fine for 8 kHz telephony upsampling, lossy for
  downsampling 32/48 kHz).
"""

from __future__ import annotations

import re
import sys
from array import array
from typing import Any, Final

from pocketsphinx import Decoder, Endpointer

from server.stt.base import SttResult, Word

__all__ = ["DECODER_RATE", "LinearResampler", "SphinxSession", "pool_statistics"]

DECODER_RATE: Final = 16000
BYTES_PER_SECOND: Final = DECODER_RATE * 2
DECODER_FRAMES_PER_S: Final = 100
INTERIM_INTERVAL_S: Final = 0.4
ENDPOINTER_WINDOW_S: Final = 0.3
ENDPOINTER_RATIO: Final = 0.9
PROVIDER_NAME: Final = "embedded"
_ALTERNATE: Final = re.compile(r"\(\d+\)$")

_POOL: list[Decoder] = []
_COUNTS: dict[str, int] = {"created": 0, "reused": 0}


def _acquire_decoder() -> tuple[Decoder, bool]:
    """A decoder from the pool (True) or a new one (False)."""
    if _POOL:
        _COUNTS["reused"] += 1
        return _POOL.pop(), True
    _COUNTS["created"] += 1
    return Decoder(samprate=DECODER_RATE, loglevel="FATAL"), False


def _release_decoder(decoder: Decoder, pool_limit: int) -> None:
    if len(_POOL) < pool_limit:
        _POOL.append(decoder)


def pool_statistics() -> dict[str, int]:
    """Decoders created / reused / pooled in this worker process."""
    return {**_COUNTS, "pooled": len(_POOL)}


class LinearResampler:
    """Streaming PCM16 mono resampler to 16 kHz by linear interpolation (state across chunks)."""

    def __init__(self, rate: int) -> None:
        self._step = rate / DECODER_RATE
        self._pos = 0.0  # read position in (tail + new samples)
        self._tail = array("h")  # last input sample, to interpolate across chunk edges
        self._odd = b""  # half a sample left over from the previous chunk

    def __call__(self, pcm: bytes) -> bytes:
        """Resample one chunk; returns whole 16 kHz samples (some input may be carried over)."""
        data = self._odd + pcm
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        samples = array("h")
        samples.frombytes(data[:whole])
        if sys.byteorder == "big":
            samples.byteswap()
        source = self._tail + samples
        out = array("h", self._interpolate(source))
        if len(source) > 0:
            self._pos -= len(source) - 1
            self._tail = source[-1:]
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()

    def _interpolate(self, source: array[int]) -> list[int]:
        pos, step, last = self._pos, self._step, len(source) - 1
        out: list[int] = []
        while pos < last:
            index = int(pos)
            left = source[index]
            out.append(int(left + (source[index + 1] - left) * (pos - index)))
            pos += step
        self._pos = pos
        return out


class SphinxSession:
    """One stream's decoding state in a worker process (see the module docstring).

    Args:
        sample_rate: the stream's input rate (resampled to 16 kHz if different).
        pool_limit: how many idle decoders this worker process keeps.
    """

    def __init__(self, sample_rate: int, pool_limit: int) -> None:
        self._decoder, self.reused_decoder = _acquire_decoder()
        self._pool_limit = pool_limit
        self._endpointer = Endpointer(window=ENDPOINTER_WINDOW_S, ratio=ENDPOINTER_RATIO)
        self._frame_bytes: int = self._endpointer.frame_bytes
        self._resample = LinearResampler(sample_rate) if sample_rate != DECODER_RATE else None
        self._pending = bytearray()  # 16 kHz audio short of a whole endpointer frame
        self._speech_pos_s = 0.0  # stream time of the next speech frame the endpointer returns
        self._in_utt = False
        self._utt_start_s = 0.0
        self._last_interim_s = 0.0
        self._last_text = ""

    def info(self) -> dict[str, Any]:
        """Whether this session got a pooled decoder, and the worker's pool counters."""
        return {"reused_decoder": self.reused_decoder, **pool_statistics()}

    def feed(self, pcm16: bytes) -> list[SttResult]:
        """Decode a chunk of audio; return the finals and interims it produced, in order."""
        audio = self._resample(pcm16) if self._resample is not None else pcm16
        self._pending += audio
        results: list[SttResult] = []
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        for begin in range(0, whole, size):
            self._step(bytes(self._pending[begin : begin + size]), results)
        del self._pending[:whole]
        self._maybe_interim(results)
        return results

    def finalize(self) -> list[SttResult]:
        """End the current utterance now (if any) and return its final result."""
        return self._end_utterance()

    def flush(self) -> list[SttResult]:
        """End of stream: decode the leftover audio, then end the utterance."""
        results: list[SttResult] = []
        if self._endpointer.in_speech:
            whole = len(self._pending) - len(self._pending) % 2
            # end_stream rejects an empty buffer; two bytes of silence flush the same way.
            speech = self._endpointer.end_stream(bytes(self._pending[:whole]) or b"\0\0")
            if speech:
                self._decode(speech, results)
        self._pending.clear()
        return results + self._end_utterance()

    def close(self) -> None:
        """Give the decoder back to the worker's pool."""
        if self._in_utt:
            self._decoder.end_utt()
            self._in_utt = False
        _release_decoder(self._decoder, self._pool_limit)

    def _step(self, frame: bytes, results: list[SttResult]) -> None:
        was_in_speech = self._endpointer.in_speech
        speech = self._endpointer.process(frame)
        if speech is None:
            return
        if not was_in_speech:
            self._speech_pos_s = self._endpointer.speech_start
        self._decode(speech, results)
        if not self._endpointer.in_speech:
            results.extend(self._end_utterance())

    def _decode(self, speech: bytes, results: list[SttResult]) -> None:
        if not self._in_utt:
            self._decoder.start_utt()
            self._in_utt = True
            self._utt_start_s = self._last_interim_s = self._speech_pos_s
            self._last_text = ""
        self._decoder.process_raw(speech, False, False)
        self._speech_pos_s += len(speech) / BYTES_PER_SECOND

    def _maybe_interim(self, results: list[SttResult]) -> None:
        if not self._in_utt or self._speech_pos_s - self._last_interim_s < INTERIM_INTERVAL_S:
            return
        self._last_interim_s = self._speech_pos_s
        hyp = self._decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if text and text != self._last_text:
            self._last_text = text
            results.append(SttResult(text, *self._span(), False, provider=PROVIDER_NAME))

    def _end_utterance(self) -> list[SttResult]:
        if not self._in_utt:
            return []
        self._decoder.end_utt()
        self._in_utt = False
        words = self._words()
        if not words:
            return []
        text = " ".join(word.text for word in words)
        return [SttResult(text, *self._span(), True, words, provider=PROVIDER_NAME)]

    def _span(self) -> tuple[float, float]:
        """The current utterance's start and end in stream seconds (ms precision)."""
        return round(self._utt_start_s, 3), round(self._speech_pos_s, 3)

    def _words(self) -> tuple[Word, ...]:
        """The ended utterance's words in stream seconds; none when it had no hypothesis.

        ``Decoder.seg()`` returns ``None`` (not an empty iterator) for an utterance that decoded
        to nothing, e.g. the endpointer's silent tail after a VAD pause already finalized the
        words before it.
        """
        start = self._utt_start_s
        words = []
        for seg in self._decoder.seg() or ():
            token = _ALTERNATE.sub("", seg.word)
            if token.startswith(("<", "[", "+")) or not token:
                continue
            begin_s = start + seg.start_frame / DECODER_FRAMES_PER_S
            end_s = start + (seg.end_frame + 1) / DECODER_FRAMES_PER_S
            words.append(Word(token, round(begin_s, 3), round(min(end_s, self._speech_pos_s), 3)))
        return tuple(words)
