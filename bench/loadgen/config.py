"""What a load run is: its :class:`LoadConfig`, the loopback guard, the fake STT's expected
tokens and the audio each session sends."""

from __future__ import annotations

import ipaddress
import math
import random
import re
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

__all__ = [
    "AudioSource",
    "DEFAULT_STEPS",
    "LATE_FRAME_S",
    "LoadConfig",
    "NotLoopbackError",
    "SEG_TOKEN",
    "check_loopback",
    "expected_token",
    "load_fixture",
]


SEG_TOKEN: Final = re.compile(r"\bseg(\d+) ([0-9a-f]{8})\b")


PCM_CODECS: Final = frozenset({"pcm8", "pcm16"})


CLIENTS: Final = frozenset({"raw", "trio-websocket"})


#: A frame sent later than this behind its schedule counts as late (the generator is saturated).
LATE_FRAME_S: Final = 0.05


#: Spreads fixture start offsets between sessions (a prime number of samples).
FIXTURE_SESSION_STRIDE_SAMPLES: Final = 7919


DISCONNECT_TIMEOUT_S: Final = 5.0


MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


DEFAULT_STEPS: Final = (10, 25, 50, 100, 200, 400, 800)


#: Worker processes stop this much before the parent's bound, so their reports still arrive.
WORKER_MARGIN_S: Final = 3.0


class NotLoopbackError(ValueError):
    """A URL's host is not a loopback address; the load generator never leaves the machine."""


def check_loopback(url: str) -> None:
    """Raise :class:`NotLoopbackError` unless ``url``'s host is 127.0.0.0/8, ::1 or localhost."""
    host = urlsplit(url).hostname
    if host is None:
        raise NotLoopbackError(f"no host in {url!r}")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopbackError(f"refusing a non-loopback host: {host!r}")


def expected_token(index: int, second: bytes) -> str:
    """The fake STT's text for the ``index``-th second of a stream."""
    return f"seg{index} {zlib.crc32(second):08x}"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load run. Times are seconds; ``duration_s`` is whole seconds of audio per session.

    Attributes:
        url: ``ws://`` URL of ``/v4/listen`` (query parameters are added from the fields).
        tokens: bearer tokens; session ``i`` uses ``tokens[i % len(tokens)]``.
        ramp_s: session starts are spread evenly over this time.
        fixture: a WAV (mono, 16-bit, ``sample_rate``) or raw PCM16 file, looped; each session
            starts at a different offset. None: deterministic pseudo-random audio.
        grace_s: after the audio, how long to wait for the missing segments.
        hold_s: after the grace, keep the connection open (idle) this long, e.g. to see
            ``memory_created`` events.
        max_total_s: hard bound of the whole run; a cut run is marked ``truncated``.
        server_pid: sample this process's RSS, threads and CPU from /proc.
        stats_url: poll this loopback JSON endpoint (``loop_lag`` is extracted).
        processes: spread the sessions over this many worker processes (1: this process).
        worker_prefix: a command that starts those worker processes, e.g. ``("chrt", "-f",
            "1")`` so that a busy server on the same machine cannot make the generator late
            (the caller checks that it works here: ``bench.scenarios.generator_prefix``).
        client: ``raw`` (default: pre-encoded frames from one ticker, ``bench.fastload``) or
            ``trio-websocket`` (one connection object and task per session, the old driver).
    """

    url: str
    tokens: tuple[str, ...]
    sessions: int = 10
    ramp_s: float = 1.0
    duration_s: int = 10
    frame_ms: int = 100
    sample_rate: int = 16000
    codec: str = "pcm16"
    language: str = "en"
    fixture: Path | None = None
    seed: int = 0
    grace_s: float = 3.0
    hold_s: float = 0.0
    max_total_s: float = 120.0
    connect_timeout_s: float = 10.0
    server_pid: int | None = None
    stats_url: str | None = None
    stats_token: str | None = None
    sample_interval_s: float = 1.0
    extra_query: tuple[tuple[str, str], ...] = ()
    processes: int = 1
    worker_prefix: tuple[str, ...] = ()
    client: str = "raw"

    def __post_init__(self) -> None:
        check_loopback(self.url)
        if self.stats_url is not None:
            check_loopback(self.stats_url)
        if self.sessions < 1 or not self.tokens or self.duration_s < 1:
            raise ValueError("need sessions >= 1, duration_s >= 1 and at least one token")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {sorted(CLIENTS)}")
        if self.codec not in PCM_CODECS:
            raise ValueError(f"codec must be one of {sorted(PCM_CODECS)}")
        if 1000 % self.frame_ms or self.bytes_per_second * self.frame_ms % 1000:
            raise ValueError("frame_ms must divide one second into whole samples")

    @property
    def bytes_per_second(self) -> int:
        """PCM16 mono bytes per second of audio."""
        return self.sample_rate * 2

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame."""
        return self.bytes_per_second * self.frame_ms // 1000

    def session_url(self) -> str:
        """``url`` with the listen query parameters."""
        parts = urlsplit(self.url)
        query = {"language": self.language, "sample_rate": str(self.sample_rate),
                 "codec": self.codec, "channels": "1", **dict(self.extra_query)}  # fmt: skip
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# -- audio --------------------------------------------------------------------------------------
def load_fixture(path: Path, sample_rate: int) -> bytes:
    """PCM16 mono bytes of a WAV or raw file (a WAV must match ``sample_rate``)."""
    if path.suffix.lower() != ".wav":
        return path.read_bytes()
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sample_rate):
            raise ValueError(f"{path}: need mono 16-bit {sample_rate} Hz")
        return wav.readframes(wav.getnframes())


class AudioSource:
    """The audio of one session, one second at a time (nothing is generated ahead)."""

    def __init__(self, config: LoadConfig, session: int, fixture: bytes | None) -> None:
        self._bps = config.bytes_per_second
        self._seed = f"{config.seed}:{session}"
        self._fixture = fixture
        self._offset = 0
        if fixture:
            self._offset = session * FIXTURE_SESSION_STRIDE_SAMPLES * 2 % len(fixture)

    def second(self, k: int) -> bytes:
        """Exactly one second of PCM16 audio: second ``k`` of this session."""
        if not self._fixture:
            return random.Random(f"{self._seed}:{k}").randbytes(self._bps)
        start = (self._offset + k * self._bps) % len(self._fixture)
        repeats = math.ceil((start + self._bps) / len(self._fixture))
        return (self._fixture * (repeats + 1))[start : start + self._bps]
