"""The embedded summariser: extractive TF-IDF, standard library only, no model, no network.

What it does, in order (docs/embedded-components.md, "Summaries without an LLM"):

1. Split the text into sentences (punctuation and line breaks; unpunctuated STT output is cut
   into chunks of at most :data:`MAX_SENTENCE_WORDS` words).
2. Overview: weigh every sentence's content words by TF-IDF (sentences as documents), score
   each sentence by its cosine similarity to the whole text's centroid, and keep the best
   :data:`OVERVIEW_SENTENCES` in their original order.
3. Title: the most repeated key phrases (content-word bigrams count double), title-cased,
   at most :data:`MAX_TITLE_WORDS` words.
4. Action items: sentences with a cue (``need to``, ``will``, ``let's``, ``can you``,
   ``remind me``, ``by Friday`` ...) and none of the negative cues (``should have``,
   ``I think``, ``let's get started`` ...).
5. Category: the Omi category whose keyword table matches most often (else ``other``).

The stop words and cues are English; other languages still get an overview and a title, but
rarely action items. :func:`summarise_text` is pure CPU work, linear in length (measured: 2 ms
for 200 words, 4 ms for 750, 270 ms for 30 000); :class:`EmbeddedSummariser` runs long
transcripts in a :class:`lanes.ThreadLane`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Final

import trio

from lanes import ThreadLane
from server.processing.summarise import DEFAULT_EMOJI, Summary, Transcript, transcript_text

__all__ = ["INLINE_MAX_CHARS", "EmbeddedSummariser", "summarise_text"]

OVERVIEW_SENTENCES: Final = 3
MAX_TITLE_WORDS: Final = 6
MAX_TITLE_PHRASES: Final = 3
MAX_SENTENCE_WORDS: Final = 40
MAX_ACTION_ITEMS: Final = 10
SHORT_SENTENCE_WORDS: Final = 6  # sentences with fewer content words score proportionally less
#: Transcripts up to this many characters are summarised on the event loop (a few ms at most).
INLINE_MAX_CHARS: Final = 4_000

STOP_WORDS: Final = frozenset(
    """a about above after again against all almost also am an and any are aren't as at be
    because been before being below between both but by can can't could couldn't did didn't do
    does doesn't doing don't down during each even ever every few for from further get gets
    getting got had hadn't has hasn't have haven't having he he'd he'll he's her here here's
    hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its
    itself just know let let's like made make many may me might more most much must mustn't my
    myself need needs next no nor not now of off oh ok okay on once one only or other ought our
    ours ourselves out over own really right said same say says see seems shall shan't she
    she'd she'll she's should shouldn't so some something still such take than that that's the
    their theirs them themselves then there there's these they they'd they'll they're they've
    thing things think this those though through to today too under until up upon us very was
    wasn't we we'd we'll we're we've well went were weren't what what's when when's where
    where's which while who who's whom why why's will with won't would wouldn't yeah yes yet
    you you'd you'll you're you've your yours yourself yourselves going go gonna want wanted
    actually basically maybe probably sure thanks thank good great lot lots new old last
    first main week weekly day days time yesterday tomorrow tonight monday tuesday wednesday
    thursday friday saturday sunday""".split()
)

_DAYS: Final = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
ACTION_CUES: Final = re.compile(
    r"\b(need to|needs to|have to|must|should|will|i'll|we'll|you'll|let's|let us|"
    r"don't forget|do not forget|remember to|remind me|can you|could you|would you mind|"
    r"please|make sure|action item|to-do|todo|follow up|follow-up|"
    rf"by (?:{_DAYS}|tomorrow|tonight|next week|the end of|end of|eod)|on (?:{_DAYS}))\b",
    re.IGNORECASE,
)
NEGATIVE_CUES: Final = re.compile(
    r"\b(should have|would have|could have|should've|would've|i think|i guess|i wonder|"
    r"what if|maybe|probably|in my opinion|just my opinion|"
    r"let's (?:get started|begin|start|move on|wrap up|see)|"
    r"(?:should|will|would) (?:probably )?(?:be|get|feel|look|seem)\b)",
    re.IGNORECASE,
)
LEADING_FILLER: Final = re.compile(
    r"^(?:(?:ok|okay|so|and|also|alright|right|well|oh|um|uh|yeah|and then)\b[,\s]*)+",
    re.IGNORECASE,
)
SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+|\n+")
WORD: Final = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

CATEGORY_KEYWORDS: Final[dict[str, frozenset[str]]] = {
    "work": frozenset(
        "meeting meetings team project deadline client clients report budget launch manager "
        "office colleague colleagues review roadmap sprint agenda presentation checklist "
        "deliverable deliverables stakeholder stakeholders standup".split()
    ),
    "business": frozenset(
        "business sales revenue customer customers market marketing startup pricing product "
        "products investors company deal partnership".split()
    ),
    "finance": frozenset(
        "money invest investment bank tax taxes loan mortgage savings expenses salary "
        "stocks portfolio rent payment".split()
    ),
    "health": frozenset(
        "doctor pain health exercise exercises sleep sleeping diet medicine prescription "
        "pharmacy hospital symptoms muscle therapy physiotherapist workout injury".split()
    ),
    "education": frozenset(
        "class course exam exams homework lecture study studying teacher school university "
        "student students assignment grade".split()
    ),
    "technology": frozenset(
        "software app code server bug bugs computer api database deploy model algorithm "
        "laptop programming".split()
    ),
    "travel": frozenset(
        "flight flights hotel trip airport vacation passport luggage booking train".split()
    ),
    "family": frozenset(
        "mom dad kids son daughter family parents brother sister grandma grandpa".split()
    ),
    "social": frozenset("party friends dinner birthday wedding drinks hangout".split()),
    "sports": frozenset("game match score football basketball soccer tennis coach gym".split()),
    "music": frozenset("song songs album band concert guitar piano music".split()),
    "entertainment": frozenset("movie movies show series episode netflix film".split()),
    "legal": frozenset("contract lawyer court lawsuit legal attorney".split()),
}
CATEGORY_EMOJI: Final = {
    "work": "💼",
    "business": "📈",
    "finance": "💰",
    "health": "🩺",
    "education": "📚",
    "technology": "💻",
    "travel": "✈️",
    "family": "🏠",
    "social": "🎉",
    "sports": "⚽",
    "music": "🎵",
    "entertainment": "🎬",
    "legal": "⚖️",
}
MIN_CATEGORY_HITS: Final = 2
_CATEGORY_OF: Final = {
    word: category for category, words in CATEGORY_KEYWORDS.items() for word in words
}


def summarise_text(text: str) -> Summary:
    """Summarise ``text`` extractively (pure function; see the module docstring).

    An empty or blank text gives an empty summary (no title, no overview, category ``other``).
    """
    sentences = split_sentences(text)
    if not sentences:
        return Summary(title="", overview="")
    tokens = [WORD.findall(sentence.lower()) for sentence in sentences]
    content = [[word for word in words if _is_content(word)] for words in tokens]
    category = _category([word for words in tokens for word in words])
    return Summary(
        title=_title(tokens),
        overview=" ".join(_overview(sentences, content)),
        emoji=CATEGORY_EMOJI.get(category, DEFAULT_EMOJI),
        category=category,
        action_items=tuple(_action_items(sentences)),
    )


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences; unpunctuated runs become chunks of bounded length."""
    sentences: list[str] = []
    for piece in SENTENCE_END.split(text):
        words = piece.split()
        for start in range(0, len(words), MAX_SENTENCE_WORDS):
            sentences.append(" ".join(words[start : start + MAX_SENTENCE_WORDS]))
    return sentences


class EmbeddedSummariser:
    """The :class:`~server.processing.summarise.Summariser` made of :func:`summarise_text`.

    Short transcripts are summarised on the event loop; longer ones (more than
    ``inline_max_chars`` characters) run in ``lane``, so a long conversation never stalls it.

    Args:
        lane: the thread lane for long transcripts (its errors, e.g. ``LaneFullError``,
            propagate unchanged).
        inline_max_chars: the longest text summarised without a thread.
    """

    name = "embedded"

    def __init__(self, lane: ThreadLane, *, inline_max_chars: int = INLINE_MAX_CHARS) -> None:
        self._lane = lane
        self._inline_max_chars = inline_max_chars

    async def summarise(self, transcript: Transcript, *, language: str) -> Summary:
        """Summarise ``transcript``; ``language`` is accepted for the interface (English cues)."""
        text = transcript_text(transcript)
        if len(text) > self._inline_max_chars:
            return await self._lane.run_sync(summarise_text, text)
        await trio.lowlevel.checkpoint()
        return summarise_text(text)


def _is_content(word: str) -> bool:
    return len(word) > 2 and word not in STOP_WORDS and not word.isdigit()


def _overview(sentences: Sequence[str], content: Sequence[list[str]]) -> list[str]:
    vectors = _tfidf(content)
    centroid: Counter[str] = Counter()
    for vector in vectors:
        centroid.update(vector)
    scores = [
        _cosine(vector, centroid) * min(1.0, len(words) / SHORT_SENTENCE_WORDS)
        for vector, words in zip(vectors, content, strict=True)
    ]
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    best = sorted(ranked[:OVERVIEW_SENTENCES])
    return [sentences[i] for i in best]


def _tfidf(content: Sequence[list[str]]) -> list[dict[str, float]]:
    frequency = Counter(word for words in content for word in set(words))
    count = len(content)
    idf = {word: math.log((1 + count) / (1 + df)) + 1.0 for word, df in frequency.items()}
    return [{word: tf * idf[word] for word, tf in Counter(words).items()} for words in content]


def _cosine(vector: dict[str, float], centroid: Counter[str]) -> float:
    dot = sum(weight * centroid[word] for word, weight in vector.items())
    norm = math.sqrt(sum(w * w for w in vector.values())) * math.sqrt(
        sum(w * w for w in centroid.values())
    )
    return dot / norm if norm else 0.0


def _title(tokens: Sequence[list[str]]) -> str:
    phrases: Counter[tuple[str, ...]] = Counter()
    first_seen: dict[tuple[str, ...], int] = {}
    position = 0
    for words in tokens:
        for i, word in enumerate(words):
            position += 1
            if not _is_content(word):
                continue
            for phrase in ((word,), (word, words[i + 1]) if i + 1 < len(words) else ()):
                if phrase and all(_is_content(w) for w in phrase):
                    phrases[phrase] += 1
                    first_seen.setdefault(phrase, position)
    return _pick_title(phrases, first_seen)


def _pick_title(phrases: Counter[tuple[str, ...]], first_seen: dict[tuple[str, ...], int]) -> str:
    repeated = [p for p, n in phrases.items() if n >= 2] or [p for p in phrases if len(p) == 1]
    ranked = sorted(repeated, key=lambda p: (-phrases[p] * len(p), first_seen[p]))
    chosen: list[tuple[str, ...]] = []
    used: set[str] = set()
    for phrase in ranked:
        words = sum(len(p) for p in chosen) + len(phrase)
        if used.intersection(phrase) or words > MAX_TITLE_WORDS:
            continue
        chosen.append(phrase)
        used.update(phrase)
        if len(chosen) == MAX_TITLE_PHRASES:
            break
    return ", ".join(" ".join(phrase).title() for phrase in chosen)


def _action_items(sentences: Sequence[str]) -> list[str]:
    items: list[str] = []
    for sentence in sentences:
        if not ACTION_CUES.search(sentence) or NEGATIVE_CUES.search(sentence):
            continue
        item = LEADING_FILLER.sub("", sentence).strip().rstrip(".!?").strip()
        if item and item.lower() not in (i.lower() for i in items):
            items.append(item[0].upper() + item[1:])
        if len(items) == MAX_ACTION_ITEMS:
            break
    return items


def _category(words: Sequence[str]) -> str:
    hits = Counter(_CATEGORY_OF[word] for word in words if word in _CATEGORY_OF)
    if not hits:
        return "other"
    category, count = max(hits.items(), key=lambda item: item[1])
    return category if count >= MIN_CATEGORY_HITS else "other"
