"""Transcript segments: Omi's JSON shape, the merge rules case by case, the assembler, and
properties that must hold for any input (no text lost, times in order, clients stay in sync)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from server.listen.segments import (
    LONG_SEGMENT_CHARS,
    MAX_SEGMENT_CHARS,
    SegmentAssembler,
    SegmentError,
    TranscriptSegment,
    Translation,
    combine_segments,
)
from server.stt.base import SttResult

OMI_FIELDS = [
    "id",
    "text",
    "speaker",
    "speaker_id",
    "is_user",
    "person_id",
    "start",
    "end",
    "translations",
    "speech_profile_processed",
    "stt_provider",
]

_ids = itertools.count()


def seg(
    text: str,
    start: float,
    end: float,
    speaker: int = 0,
    *,
    provider: str | None = "deepgram",
    is_user: bool = False,
) -> TranscriptSegment:
    return TranscriptSegment(
        id=f"s{next(_ids)}",
        text=text,
        speaker=f"SPEAKER_{speaker:02d}",
        speaker_id=speaker,
        is_user=is_user,
        start=start,
        end=end,
        stt_provider=provider,
    )


def texts(segments: list[TranscriptSegment]) -> list[str]:
    return [s.text for s in segments]


# -- the model ---------------------------------------------------------------------------------


def test_json_has_omi_field_names_in_order_and_round_trips() -> None:
    segment = TranscriptSegment(
        id="a1",
        text="Hello.",
        speaker="SPEAKER_01",
        speaker_id=1,
        person_id="p9",
        start=1.5,
        end=2.0,
        translations=(Translation("de", "Hallo."),),
        stt_provider="deepgram",
    )
    data = segment.to_json()
    assert list(data) == OMI_FIELDS
    assert data["translations"] == [{"lang": "de", "text": "Hallo."}]
    assert data["speech_profile_processed"] is True and data["is_user"] is False
    assert TranscriptSegment.from_json(data) == segment


def test_from_json_takes_omi_defaults() -> None:
    segment = TranscriptSegment.from_json(
        {"text": "hi", "speaker": "SPEAKER_03", "is_user": True, "start": 0, "end": 1}
    )
    assert segment.speaker_id == 3 and len(segment.id) == 36  # a uuid4 when missing
    assert (segment.translations, segment.stt_provider, segment.person_id) == ((), None, None)
    assert segment.start == 0.0 and isinstance(segment.start, float)
    assert (
        TranscriptSegment.from_json({"text": "x", "is_user": False, "start": 0, "end": 0}).speaker
        == "SPEAKER_00"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"is_user": False, "start": 0, "end": 1}, "'text' is missing"),
        ({"text": "x", "is_user": "no", "start": 0, "end": 1}, "'is_user' must be bool"),
        ({"text": "x", "is_user": False, "start": "0", "end": 1}, "'start' must be a number"),
        ({"text": "x", "is_user": False, "start": 0, "end": True}, "'end' must be a number"),
        ({"text": "x", "is_user": False, "start": 0, "end": 1, "speaker_id": 1.5}, "speaker_id"),
        (
            {"text": "x", "is_user": False, "start": 0, "end": 1, "translations": [{"lang": 1}]},
            "translations",
        ),
    ],
)
def test_from_json_names_the_bad_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(SegmentError, match=message):
        TranscriptSegment.from_json(data)


def test_from_result_labels_the_speaker_and_provider() -> None:
    result = SttResult(" hi there ", 1.0, 2.0, True, speaker=2, provider="embedded")
    segment = TranscriptSegment.from_result(result)
    assert (segment.text, segment.speaker, segment.speaker_id) == ("hi there", "SPEAKER_02", 2)
    assert (segment.start, segment.end, segment.stt_provider) == (1.0, 2.0, "embedded")
    assert TranscriptSegment.from_result(SttResult("x", 0, 1, True)).stt_provider is None


# -- merge rules ---------------------------------------------------------------------------------


def test_same_speaker_with_a_small_gap_merges_and_keeps_the_old_id() -> None:
    first = seg("Hello there", 0.0, 1.0)
    merged, updated, removed = combine_segments([first], [seg("how are you", 2.5, 3.5)])
    assert texts(merged) == ["Hello there how are you"]
    assert merged[0].id == first.id and (merged[0].start, merged[0].end) == (0.0, 3.5)
    assert updated == merged and removed == []


@pytest.mark.parametrize("gap", [3.0, 4.5])
def test_a_gap_of_three_seconds_or_more_does_not_merge(gap: float) -> None:
    first = seg("Hello there.", 0.0, 1.0)
    second = seg("How are you?", 1.0 + gap, 2.0 + gap)
    merged, updated, _ = combine_segments([first], [second])
    assert texts(merged) == ["Hello there.", "How are you?"]
    assert updated == [second]  # the unchanged old segment is not sent again


def test_different_speakers_do_not_merge() -> None:
    merged, _, _ = combine_segments([seg("Hello there.", 0, 1, 0)], [seg("Hi.", 1.2, 1.5, 1)])
    assert texts(merged) == ["Hello there.", "Hi."]


def test_both_user_segments_merge_across_speaker_labels() -> None:
    a, b = seg("Yes.", 0, 1, 0, is_user=True), seg("Sure.", 1.5, 2, 3, is_user=True)
    assert texts(combine_segments([a], [b])[0]) == ["Yes. Sure."]


def test_a_long_finished_sentence_closes_its_segment() -> None:
    long_text = "word " * (LONG_SEGMENT_CHARS // 5) + "end."
    assert len(long_text) >= LONG_SEGMENT_CHARS
    merged, _, _ = combine_segments([seg(long_text, 0, 8)], [seg("Next.", 8.5, 9)])
    assert len(merged) == 2
    unfinished = long_text[:-1]  # long but not finished: still merges
    assert len(combine_segments([seg(unfinished, 0, 8)], [seg("Next.", 8.5, 9)])[0]) == 1
    short = seg("Short one.", 0, 1)  # short finished sentences merge
    assert len(combine_segments([short], [seg("Next.", 1.5, 2)])[0]) == 1


def test_lowercase_continuation_bridges_a_longer_pause_but_not_forever() -> None:
    a = seg("and then we went", 0, 2)
    assert texts(combine_segments([a], [seg("to the store", 7, 8)])[0]) == [
        "and then we went to the store"
    ]
    assert len(combine_segments([a], [seg("to the store", 12.5, 13)])[0]) == 2
    assert len(combine_segments([a], [seg("To the store", 7, 8)])[0]) == 2
    finished = seg("We went.", 0, 2)
    assert len(combine_segments([finished], [seg("to the store", 7, 8)])[0]) == 2


def test_different_stt_providers_never_merge() -> None:
    a = seg("Hello there", 0, 1, provider="deepgram")
    for b in (seg("how are you", 1.2, 2, provider="embedded"), seg("ok", 1.2, 2, provider=None)):
        assert len(combine_segments([a], [b])[0]) == 2
    # not even sentence repair across speakers
    c = seg("I went to the", 0, 1, 0, provider="deepgram")
    d = seg("store. Then I left.", 1.1, 3, 1, provider="embedded")
    assert texts(combine_segments([c], [d])[0]) == ["I went to the", "store. Then I left."]


def test_no_merge_grows_a_segment_beyond_the_cap() -> None:
    big = seg("x" * (MAX_SEGMENT_CHARS - 3), 0, 60)
    assert len(combine_segments([big], [seg("more words", 60.5, 61)])[0]) == 2


# -- sentence repair across speakers ----------------------------------------------------------


def test_a_short_finished_first_sentence_moves_back_to_the_unfinished_one() -> None:
    a, b = seg("I went to the", 0, 1, 0), seg("store. Then I left.", 1.1, 3, 1)
    merged, updated, removed = combine_segments([a], [b])
    assert texts(merged) == ["I went to the store.", "Then I left."]
    assert [s.id for s in merged] == [a.id, b.id] and updated == merged and removed == []


def test_a_short_unfinished_segment_of_another_speaker_joins_the_sentence() -> None:
    a, b = seg("So what I was thinking about is", 0, 2, 0), seg("the plan", 2.1, 2.6, 1)
    merged, _, _ = combine_segments([a], [b])
    assert texts(merged) == ["So what I was thinking about is the plan"]
    assert merged[0].id == a.id and merged[0].end == 2.6


def test_a_short_unfinished_tail_moves_forward_to_the_next_speaker() -> None:
    a, b = seg("That is fine. But", 0, 2.5, 0), seg("we should really go home now.", 2.2, 4, 1)
    merged, _, _ = combine_segments([a], [b])
    assert texts(merged) == ["That is fine.", "But we should really go home now."]
    assert merged[0].end == 2.2 and merged[1].start == 2.2  # a now ends where b starts


def test_a_segment_that_was_only_a_tail_is_removed() -> None:
    a, b = seg("Well", 0, 0.5, 0), seg("I think we should go.", 0.6, 2, 1)
    merged, updated, removed = combine_segments([seg("Hi.", -3, -2, 1), a], [b])
    assert texts(merged) == ["Hi.", "Well I think we should go."]
    assert removed == [a.id] and updated == [merged[1]]
    assert merged[1].id == b.id and (merged[1].start, merged[1].end) == (0.0, 2.0)


def test_no_sentence_repair_across_a_long_pause_or_out_of_order() -> None:
    a = seg("I went to the", 0, 1, 0)
    late = seg("store. Then I left.", 4.5, 6, 1)
    assert texts(combine_segments([a], [late])[0]) == ["I went to the", "store. Then I left."]
    earlier = seg("store. Then I left.", -1, 0.5, 1)
    assert len(combine_segments([a], [earlier])[0]) == 2


def test_combine_segments_changes_nothing_it_was_given() -> None:
    existing = [seg("Hello there", 0, 1)]
    new = [seg("how are you", 1.5, 2)]
    before = (list(existing), list(new))
    combine_segments(existing, new)
    assert (existing, new) == before


# -- the assembler -----------------------------------------------------------------------------


def result(
    text: str, start: float, end: float, *, final: bool = True, speaker: int = 0
) -> SttResult:
    return SttResult(text, start, end, final, speaker=speaker, provider="fake")


def test_assembler_takes_finals_only_and_keeps_ids_stable() -> None:
    assembler = SegmentAssembler()
    assert assembler.add(result("hel", 0, 0.5, final=False)) == ([], [])
    assert assembler.add(result("  ", 0, 0.5)) == ([], [])
    [first], removed = assembler.add(result("Hello there.", 0, 1))
    [merged], _ = assembler.add(result("How are you?", 1.5, 2.5))
    assert merged.id == first.id and merged.text == "Hello there. How are you?"
    [other], _ = assembler.add(result("Fine.", 2.7, 3, speaker=1))
    assert removed == [] and assembler.index_of(first.id) == 0 and assembler.index_of(other.id) == 1
    stats = assembler.statistics()
    assert (stats.segments, stats.total, stats.results, stats.absorbed) == (2, 2, 3, 1)


def test_assembler_resumes_from_stored_segments() -> None:
    stored = [seg("Earlier.", 0, 1, 1), seg("and then", 1, 2, 0)]
    assembler = SegmentAssembler(stored)
    [updated], _ = assembler.add(SttResult("we left", 2.5, 3, True, provider="deepgram"))
    assert updated.id == stored[1].id and updated.text == "and then we left"
    assert assembler.index_of(updated.id) == 1


def test_assembler_memory_is_bounded_and_indexes_stay_absolute() -> None:
    assembler = SegmentAssembler(max_segments=3)
    ids = []
    for i in range(5):  # alternate speakers: nothing merges
        [segment], _ = assembler.add(result(f"Line {i}.", i * 10, i * 10 + 1, speaker=i % 2))
        ids.append(segment.id)
    assert [s.id for s in assembler.segments] == ids[2:]
    assert assembler.index_of(ids[4]) == 4
    with pytest.raises(KeyError):
        assembler.index_of(ids[0])
    stats = assembler.statistics()
    assert (stats.segments, stats.total, stats.evicted) == (3, 5, 2)


def test_a_removed_tail_gives_its_index_to_the_segment_that_took_its_text() -> None:
    assembler = SegmentAssembler()
    assembler.add(result("Hi.", 0, 1, speaker=1))
    [tail], _ = assembler.add(result("Well", 4.5, 5, speaker=0))
    updated, removed = assembler.add(result("I think we should go.", 5.1, 6, speaker=1))
    assert removed == [tail.id] and [s.text for s in updated] == ["Well I think we should go."]
    assert assembler.index_of(updated[0].id) == 1 and len(assembler) == 2


# -- properties --------------------------------------------------------------------------------

WORDS = ["hello", "World", "yes.", "no?", "and", "Then", "so!", "ok", "it", "Done."]


@st.composite
def segment_streams(draw: st.DrawFn) -> list[TranscriptSegment]:
    count = draw(st.integers(1, 25))
    time, out = 0.0, []
    for _ in range(count):
        time += draw(st.floats(-0.5, 5.0))
        duration = draw(st.floats(0.0, 3.0))
        words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6))
        out.append(
            seg(
                " ".join(words),
                time,
                time + duration,
                draw(st.integers(0, 2)),
                provider=draw(st.sampled_from(["dg", "dg", "dg", "local"])),
                is_user=draw(st.booleans()),
            )
        )
    out.sort(key=lambda s: s.start)
    return out


def squash(parts: list[str]) -> str:
    return "".join("".join(parts).split())


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(segment_streams(), st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_no_text_is_lost_times_stay_ordered_and_clients_stay_in_sync(
    inputs: list[TranscriptSegment], batch_sizes: list[int]
) -> None:
    assembler = SegmentAssembler()
    client: dict[str, TranscriptSegment] = {}  # a client upserting by id
    pure: list[TranscriptSegment] = []
    i = 0
    for size in itertools.cycle(batch_sizes):
        batch = inputs[i : i + size]
        if not batch:
            break
        i += size
        updated, removed = assembler.add_segments(batch)
        pure, pure_updated, pure_removed = combine_segments(pure, batch)
        assert (updated, removed) == (pure_updated, pure_removed)
        client.update((s.id, s) for s in updated)
        for segment_id in removed:
            del client[segment_id]
    final = list(assembler.segments)
    assert final == pure
    assert squash(texts(final)) == squash(texts(inputs))
    assert all(s.text and s.start <= s.end for s in final)
    assert all(a.start <= b.start for a, b in itertools.pairwise(final))
    assert sorted(client.values(), key=lambda s: assembler.index_of(s.id)) == final
    assert len({s.id for s in final}) == len(final)
