"""The streaming STT interface every provider implements.

A provider opens *streams*; a stream takes PCM16 mono audio and yields events: interim and
final results with word timings, and status changes (degraded / recovered). Times are seconds of
*audio sent to this stream* since it opened; the listen session maps them to wall time (the VAD
gate skips silence, so stream time and wall time differ).

Life of a stream (all owned by the listen session's task group)::

    async with provider.open_stream(sample_rate=16000, language="en") as stream:
        # one task:                     # another task:
        await stream.send_audio(pcm)    async for event in stream.events():
        ...                                 handle(event)
        await stream.close()  # flush: remaining finals are delivered, then events() ends

Leaving the ``async with`` block without ``close()`` abandons whatever was not yet final.

Errors: ``open_stream`` raises :class:`SttCapacityError` when the provider is full (the session
closes 1013) and :class:`SttUnavailableError` when it cannot start at all. A failure *during* a
stream is reported as a :class:`SttStatus` event with ``degraded=True``; providers retry on their
own and report ``degraded=False`` when they recover. Audio sent while degraded may be lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "StatisticsMapping",
    "SttCapacityError",
    "SttError",
    "SttEvent",
    "SttProvider",
    "SttResult",
    "SttStatus",
    "SttStream",
    "SttUnavailableError",
    "Word",
]


class StatisticsMapping(Mapping[str, object]):
    """Mixin for frozen statistics dataclasses that are also read-only mappings
    (``SttProvider.statistics()`` returns a ``Mapping``; ``/v1/stats`` serialises it)."""

    __slots__ = ()
    __dataclass_fields__: dict[str, object]

    def __getitem__(self, key: str) -> object:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


class SttError(Exception):
    """Base class of STT errors."""


class SttCapacityError(SttError):
    """The provider has no room for another stream right now (try again later)."""


class SttUnavailableError(SttError):
    """The provider cannot open a stream (misconfigured, upstream down beyond retry)."""


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with its timing in stream seconds."""

    text: str
    start_s: float
    end_s: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class SttResult:
    """A transcript span.

    Interim results (``is_final=False``) may be revised by later ones covering the same span;
    final results are settled. ``speaker`` is a diarization index (0 when unknown).
    """

    text: str
    start_s: float
    end_s: float
    is_final: bool
    words: tuple[Word, ...] = ()
    speaker: int = 0
    provider: str = ""


@dataclass(frozen=True, slots=True)
class SttStatus:
    """The stream became degraded (``degraded=True``) or recovered, with a short reason."""

    degraded: bool
    reason: str = ""
    details: Mapping[str, object] = field(default_factory=dict)


SttEvent = SttResult | SttStatus


class SttStream(Protocol):
    """One audio stream (see the module docstring for its life cycle)."""

    async def send_audio(self, pcm16: bytes) -> None:
        """Send PCM16 little-endian mono audio at the stream's sample rate."""
        ...

    async def finalize(self) -> None:
        """Ask for final results of everything sent so far (e.g. at a VAD pause)."""
        ...

    async def close(self) -> None:
        """Flush: deliver the remaining final results, then end :meth:`events`."""
        ...

    def events(self) -> AsyncIterator[SttEvent]:
        """Results and status changes, in order; ends after :meth:`close`."""
        ...


class SttProvider(Protocol):
    """A source of STT streams."""

    name: str

    def open_stream(
        self, *, sample_rate: int, language: str
    ) -> AbstractAsyncContextManager[SttStream]:
        """Open a stream; raises :class:`SttCapacityError` / :class:`SttUnavailableError`."""
        ...

    def statistics(self) -> Mapping[str, object]:
        """Counters for ``/v1/stats`` (streams open, refused, errors, ...)."""
        ...
