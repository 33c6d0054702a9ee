"""Omi transcript segments: the model, its merge rules, and the per-conversation assembler.

A :class:`TranscriptSegment` is what clients receive (a JSON array of the new or changed
segments per batch; clients upsert by ``id``) and what the store keeps. Times are seconds from
the conversation's start.

Merge rules (:func:`combine_segments`, after Omi's ``TranscriptSegment.combine_segments``). Only
the conversation's *last* segment can change; each new segment is joined onto the current last
one, ``a``, with the first rule that applies:

1. Never across ``stt_provider`` (or ``speech_profile_processed``) values.
2. Sentence repair across speakers (``a`` and ``b`` differ in speaker and are not both the
   user, ``b`` follows ``a`` in time within :data:`MERGE_GAP_S`, ``a`` ends in an unfinished
   sentence, its *tail*): diarization often flips speaker mid-sentence. If ``b``'s first
   sentence is finished, followed by more text and shorter than the tail, it moves to ``a``. If
   ``b`` is one unfinished (or lowercase-started) sentence shorter than the tail, all of ``b``
   joins ``a``. Otherwise, if the tail is shorter than ``b``, the tail moves to the front of
   ``b`` (``a`` ends where ``b`` starts; if nothing of ``a`` is left, ``a`` is removed and ``b``
   starts where ``a`` did).
3. Same speaker (or both the user), gap < :data:`MERGE_GAP_S`, and ``a`` is shorter than
   :data:`LONG_SEGMENT_CHARS` or does not end a sentence: ``b`` joins ``a``.
4. Lowercase continuation: same speaker, ``a`` does not end a sentence and ``b`` starts with a
   lowercase letter: ``b`` joins ``a`` across a gap of up to :data:`CONTINUATION_GAP_S`.

Deviations from Omi, on purpose: rule 4 has a gap bound (Omi has none: with an STT that never
punctuates, such as pocketsphinx, one speaker's whole conversation would become one segment);
no join may grow a segment past :data:`MAX_SEGMENT_CHARS`; joined ends are ``max(a.end,
b.end)`` so times never run backwards; ``removed_ids`` lists only ids of *existing* segments
(a new segment absorbed in its own batch was never seen by anyone).

Sentences end in ``.?!`` or their CJK/Arabic/Devanagari equivalents; a segment that starts with
a lowercase letter is a continuation, never a finished sentence.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, TypeVar

from server.stt.base import SttResult

if TYPE_CHECKING:
    from server.store import SegmentRow

__all__ = [
    "CONTINUATION_GAP_S",
    "LONG_SEGMENT_CHARS",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_CHARS",
    "MERGE_GAP_S",
    "AssemblerStatistics",
    "SegmentAssembler",
    "SegmentError",
    "TranscriptSegment",
    "Translation",
    "combine_segments",
]

#: Same-speaker segments closer than this merge (Omi: 3 s).
MERGE_GAP_S: Final = 3.0
#: A finished sentence at least this long closes its segment (Omi: 125 characters).
LONG_SEGMENT_CHARS: Final = 125
#: Largest gap a lowercase continuation bridges (Omi: unbounded).
CONTINUATION_GAP_S: Final = 10.0
#: No merge grows a segment beyond this many characters.
MAX_SEGMENT_CHARS: Final = 2000
#: Segments an assembler keeps in memory; older ones are dropped (never needed again).
MAX_SEGMENTS: Final = 2000

SENTENCE_ENDERS: Final = frozenset(".?!。！？؟۔।॥")
_FIRST_ENDER: Final = re.compile("[" + re.escape("".join(sorted(SENTENCE_ENDERS))) + "]+")

_T = TypeVar("_T")


class SegmentError(ValueError):
    """A segment's JSON is not a valid ``TranscriptSegment``."""


@dataclass(frozen=True, slots=True)
class Translation:
    """A segment's text in another language."""

    lang: str
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One transcript segment in Omi's model (immutable: merges return new objects)."""

    id: str
    text: str
    speaker: str = "SPEAKER_00"
    speaker_id: int = 0
    is_user: bool = False
    person_id: str | None = None
    start: float = 0.0
    end: float = 0.0
    translations: tuple[Translation, ...] = ()
    speech_profile_processed: bool = True
    stt_provider: str | None = None

    @classmethod
    def from_result(cls, result: SttResult, *, segment_id: str | None = None) -> TranscriptSegment:
        """A new segment (fresh uuid4 id) for one STT result; ``speaker`` n -> ``SPEAKER_0n``."""
        return cls(
            id=segment_id or str(uuid.uuid4()),
            text=result.text.strip(),
            speaker=f"SPEAKER_{result.speaker:02d}",
            speaker_id=result.speaker,
            start=result.start_s,
            end=max(result.start_s, result.end_s),
            stt_provider=result.provider or None,
        )

    @classmethod
    def from_row(cls, row: SegmentRow) -> TranscriptSegment:
        """The segment of a stored row."""
        return cls(
            id=row.id,
            text=row.text,
            speaker=row.speaker,
            speaker_id=row.speaker_id,
            is_user=row.is_user,
            person_id=row.person_id,
            start=row.start_s,
            end=row.end_s,
            stt_provider=row.stt_provider,
        )

    def to_json(self) -> dict[str, object]:
        """The segment in Omi's JSON shape (field names and order of Omi's model)."""
        return {
            "id": self.id,
            "text": self.text,
            "speaker": self.speaker,
            "speaker_id": self.speaker_id,
            "is_user": self.is_user,
            "person_id": self.person_id,
            "start": self.start,
            "end": self.end,
            "translations": [{"lang": t.lang, "text": t.text} for t in self.translations],
            "speech_profile_processed": self.speech_profile_processed,
            "stt_provider": self.stt_provider,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TranscriptSegment:
        """Parse Omi's JSON shape; missing optional fields take Omi's defaults.

        Raises:
            SegmentError: naming the first missing or mistyped field.
        """
        speaker = _optional(data, "speaker", str) or "SPEAKER_00"
        speaker_id = _optional(data, "speaker_id", int)
        start = _number(data, "start")
        return cls(
            id=_optional(data, "id", str) or str(uuid.uuid4()),
            text=_required(data, "text", str),
            speaker=speaker,
            speaker_id=speaker_id if speaker_id is not None else _speaker_number(speaker),
            is_user=_required(data, "is_user", bool),
            person_id=_optional(data, "person_id", str),
            start=start,
            end=_number(data, "end"),
            translations=_translations(data.get("translations")),
            speech_profile_processed=_optional(data, "speech_profile_processed", bool) is not False,
            stt_provider=_optional(data, "stt_provider", str),
        )


def _required(data: Mapping[str, object], name: str, kind: type[_T]) -> _T:
    value = _optional(data, name, kind)
    if value is None:
        raise SegmentError(f"segment field {name!r} is missing")
    return value


def _optional(data: Mapping[str, object], name: str, kind: type[_T]) -> _T | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SegmentError(f"segment field {name!r} must be {kind.__name__}")
    return value


def _number(data: Mapping[str, object], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SegmentError(f"segment field {name!r} must be a number of seconds")
    return float(value)


def _translations(value: object) -> tuple[Translation, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and isinstance(t.get("lang"), str) and isinstance(t.get("text"), str)
        for t in value
    ):
        raise SegmentError("segment field 'translations' must be a list of {lang, text}")
    return tuple(Translation(t["lang"], t["text"]) for t in value)


def _speaker_number(speaker: str) -> int:
    """Omi's ``speaker_id`` rule: the number after ``_`` in ``SPEAKER_nn`` (else 0)."""
    _, _, number = speaker.partition("_")
    return int(number) if number.isdecimal() else 0


# -- merge rules ------------------------------------------------------------------------------


def _ends_sentence(text: str) -> bool:
    return bool(text) and text[-1] in SENTENCE_ENDERS


def _starts_lowercase(text: str) -> bool:
    for char in text:
        if char.isalpha():
            return char.islower()
    return False


def _is_finished_sentence(text: str) -> bool:
    return _ends_sentence(text) and not _starts_lowercase(text)


def _split_tail(text: str) -> tuple[str, str]:
    """``(finished part, unfinished tail)``: the tail is the text after the last ender."""
    for i in range(len(text) - 1, -1, -1):
        if text[i] in SENTENCE_ENDERS:
            return text[: i + 1], text[i + 1 :].strip()
    return "", text


def _split_first_sentence(text: str) -> tuple[str, str]:
    """``(first sentence with its enders, the rest)``; no ender: ``(text, "")``."""
    match = _FIRST_ENDER.search(text)
    if match is None:
        return text, ""
    return text[: match.end()], text[match.end() :].strip()


def _joined_text(first: str, second: str) -> str:
    return f"{first} {second}" if first and second else first or second


def _fits(first: str, second: str) -> bool:
    return len(first) + 1 + len(second) <= MAX_SEGMENT_CHARS


def _same_speaker(a: TranscriptSegment, b: TranscriptSegment) -> bool:
    return a.speaker == b.speaker or (a.is_user and b.is_user)


def _absorb(a: TranscriptSegment, b: TranscriptSegment) -> TranscriptSegment:
    return replace(a, text=_joined_text(a.text, b.text), end=max(a.end, b.end))


_Pair = tuple[TranscriptSegment | None, TranscriptSegment | None]


def _merge(a: TranscriptSegment, b: TranscriptSegment) -> _Pair:
    """Join ``b`` onto ``a`` by the module's rules; ``None`` where a segment disappears."""
    if a.stt_provider != b.stt_provider or a.speech_profile_processed != b.speech_profile_processed:
        return a, b
    if not _same_speaker(a, b):
        return _repair_sentence(a, b)
    gap = b.start - a.end
    open_ended = not _ends_sentence(a.text)
    same_utterance = gap < MERGE_GAP_S and (len(a.text) < LONG_SEGMENT_CHARS or open_ended)
    continuation = gap < CONTINUATION_GAP_S and open_ended and _starts_lowercase(b.text)
    if (same_utterance or continuation) and _fits(a.text, b.text):
        return _absorb(a, b), None
    return a, b


def _repair_sentence(a: TranscriptSegment, b: TranscriptSegment) -> _Pair:
    """Rule 2: move an unfinished sentence's pieces across a speaker change."""
    follows = b.start >= a.start and b.end >= a.end and b.start - a.end < MERGE_GAP_S
    finished, tail = _split_tail(a.text)
    if not follows or not tail:
        return a, b
    first, rest = _split_first_sentence(b.text)
    if rest and len(first) < len(tail) and _fits(a.text, first):
        return replace(a, text=_joined_text(a.text, first)), replace(b, text=rest)
    if not rest and not _is_finished_sentence(first) and len(first) < len(tail):
        return (_absorb(a, b), None) if _fits(a.text, b.text) else (a, b)
    if len(tail) < len(b.text) and _fits(tail, b.text):
        moved = replace(b, text=_joined_text(tail, b.text))
        if not finished:
            return None, replace(moved, start=a.start)
        return replace(a, text=finished, end=max(a.start, min(a.end, b.start))), moved
    return a, b


@dataclass(frozen=True, slots=True)
class _Joined:
    segments: list[TranscriptSegment]  # what replaces the old last segment
    updated: list[TranscriptSegment]  # new or changed, in order
    removed_ids: list[str]
    absorbed: int  # new segments joined into another one


def _join(last: TranscriptSegment | None, new: Iterable[TranscriptSegment]) -> _Joined:
    joined: list[TranscriptSegment] = [last] if last is not None else []
    absorbed = 0
    for segment in new:
        if not segment.text:
            continue
        if not joined:
            joined.append(segment)
            continue
        a, b = _merge(joined[-1], segment)
        if a is None:
            joined.pop()
        else:
            joined[-1] = a
        if b is None:
            absorbed += 1
        else:
            joined.append(b)
    kept_last = last is not None and bool(joined) and joined[0].id == last.id
    removed = [last.id] if last is not None and not kept_last else []
    updated = joined[1:] if kept_last and joined[0] == last else joined
    return _Joined(joined, updated, removed, absorbed)


def combine_segments(
    existing: Sequence[TranscriptSegment], new: Iterable[TranscriptSegment]
) -> tuple[list[TranscriptSegment], list[TranscriptSegment], list[str]]:
    """Join ``new`` segments onto a conversation's ``existing`` ones (module docstring rules).

    Pure: the inputs are not changed. Costs one copy of ``existing`` (the
    :class:`SegmentAssembler` avoids it).

    Returns:
        ``(segments, updated, removed_ids)``: the whole new list; the new or changed segments
        (to send and persist; a changed segment keeps its id); ids of existing segments that
        disappeared. New segments with empty text are ignored.
    """
    last = existing[-1] if existing else None
    result = _join(last, new)
    head = list(existing[:-1]) if existing else []
    return head + result.segments, result.updated, result.removed_ids


# -- the assembler ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssemblerStatistics:
    """Counters of one :class:`SegmentAssembler`.

    Attributes:
        segments: segments held in memory (at most ``max_segments``).
        total: segments of the conversation so far, evicted ones included.
        evicted: old segments dropped from memory.
        results: final results taken.
        absorbed: results merged into another segment instead of starting one.
    """

    segments: int
    total: int
    evicted: int
    results: int
    absorbed: int


class SegmentAssembler:
    """The segments of one conversation, built from final STT results.

    Only final results are used: interim ones are ignored (as Omi does with
    ``interim_results=False``), so clients never see text that is later taken back. Results must
    come in time order with times in conversation seconds (the caller maps them).

    Memory is bounded: at most ``max_segments`` recent segments are kept; older ones are
    dropped. Merges only ever touch the last segment, and dropped ones were already returned
    (sent and persisted), so nothing is lost; :meth:`index_of` then fails for them.
    Cost per result: O(length of the last segment's text), no copy of the list.
    """

    def __init__(
        self, segments: Iterable[TranscriptSegment] = (), *, max_segments: int = MAX_SEGMENTS
    ) -> None:
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1 (got {max_segments})")
        self._max = max_segments
        self._segments: deque[TranscriptSegment] = deque()
        self._index: dict[str, int] = {}
        self._first = 0  # conversation index of self._segments[0]
        self._results = 0
        self._absorbed = 0
        self._append(segments)

    def __len__(self) -> int:
        return len(self._segments)

    @property
    def segments(self) -> tuple[TranscriptSegment, ...]:
        """The segments held in memory, oldest first (a copy)."""
        return tuple(self._segments)

    def index_of(self, segment_id: str) -> int:
        """The conversation index (order) of a held segment; ``KeyError`` if unknown/evicted."""
        return self._index[segment_id]

    def add(self, result: SttResult) -> tuple[list[TranscriptSegment], list[str]]:
        """Take one result; return ``(new or changed segments, removed ids)``."""
        return self.add_results((result,))

    def add_results(
        self, results: Iterable[SttResult]
    ) -> tuple[list[TranscriptSegment], list[str]]:
        """Take a batch of results (interim and empty ones are skipped); see :meth:`add`."""
        new = [TranscriptSegment.from_result(r) for r in results if r.is_final and r.text.strip()]
        if not new:
            return [], []
        return self.add_segments(new)

    def add_segments(
        self, new: Sequence[TranscriptSegment]
    ) -> tuple[list[TranscriptSegment], list[str]]:
        """Join ready-made segments (e.g. a client's suggested transcript); see :meth:`add`."""
        self._results += len(new)
        last = self._segments.pop() if self._segments else None
        if last is not None:
            del self._index[last.id]
        result = _join(last, new)
        self._absorbed += result.absorbed
        self._append(result.segments)
        return result.updated, result.removed_ids

    def _append(self, segments: Iterable[TranscriptSegment]) -> None:
        for segment in segments:
            self._index[segment.id] = self._first + len(self._segments)
            self._segments.append(segment)
        while len(self._segments) > self._max:
            dropped = self._segments.popleft()
            del self._index[dropped.id]
            self._first += 1

    def statistics(self) -> AssemblerStatistics:
        """Counters of this assembler."""
        return AssemblerStatistics(
            segments=len(self._segments),
            total=self._first + len(self._segments),
            evicted=self._first,
            results=self._results,
            absorbed=self._absorbed,
        )
