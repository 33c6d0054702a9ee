"""Summaries: the embedded extractive summariser on fixture meetings, and the OpenAI path."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
import trio

import lanes
from server.processing.summarise import (
    CATEGORIES,
    MalformedSummaryError,
    Summary,
    SummaryUpstreamError,
    summary_from_json,
)
from server.processing.summarise_embedded import (
    EmbeddedSummariser,
    split_sentences,
    summarise_text,
)
from server.processing.summarise_openai import OpenAISummariser

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"
MEETING = (FIXTURES / "product_meeting.txt").read_text()
DOCTOR = (FIXTURES / "doctor_visit.txt").read_text()
BASE_URL = "https://llm.test/v1"


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    speaker: str = "SPEAKER_00"


# ---------------------------------------------------------------- embedded


def test_meeting_summary_is_sensible() -> None:
    summary = summarise_text(MEETING)
    assert "Landing Page" in summary.title
    assert 1 <= len(summary.title.split()) <= 6
    overview = split_sentences(summary.overview)
    assert 1 <= len(overview) <= 3
    assert all(sentence in MEETING for sentence in overview)
    assert (summary.category, summary.emoji) == ("work", "💼")


def test_meeting_action_items_are_found() -> None:
    items = summarise_text(MEETING).action_items
    assert "I need to send the budget report to finance by Friday" in items
    assert "Can you book the conference room for the launch review next Tuesday" in items
    assert "Priya will fix the sync interval before the next beta build" in items
    assert "Don't forget to update the launch checklist after the meeting" in items
    assert any(item.startswith("Let's schedule a follow-up call") for item in items)
    text = " ".join(items)
    for not_an_item in ("get started", "should have started", "old logo", "on track"):
        assert not_an_item not in text
    assert len(items) == 5


def test_doctor_visit() -> None:
    summary = summarise_text(DOCTOR)
    assert summary.category == "health"
    assert "Pain" in summary.title
    assert summary.action_items == (
        "I have to pick up the prescription from the pharmacy tomorrow",
        "Remind me to call the physiotherapist on Monday",
    )  # "should get better" is a prediction, not a task


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_transcript(text: str) -> None:
    summary = summarise_text(text)
    assert summary == Summary(title="", overview="")
    assert summary.to_json() == {
        "title": "",
        "overview": "",
        "emoji": "🧠",
        "category": "other",
        "action_items": [],
        "events": [],
    }


def test_unpunctuated_stt_text_is_chunked() -> None:
    words = re.sub(r"[^\w\s']", "", MEETING).lower().split()
    summary = summarise_text(" ".join(words))
    assert summary.overview
    assert len(summary.overview.split()) <= 3 * 40


def test_to_json_has_omi_structured_shape() -> None:
    data = summarise_text(MEETING).to_json()
    assert set(data) == {"title", "overview", "emoji", "category", "action_items", "events"}
    assert data["category"] in CATEGORIES
    assert isinstance(data["action_items"], list)
    assert data["action_items"][0] == {
        "description": "I need to send the budget report to finance by Friday",
        "completed": False,
    }
    json.dumps(data)  # serialisable as is


async def test_embedded_summariser_uses_the_lane_only_for_long_text() -> None:
    lane = lanes.ThreadLane("summaries", 1)
    summariser = EmbeddedSummariser(lane, inline_max_chars=2_000)
    segments = [Segment(sentence) for sentence in split_sentences(MEETING)]
    short = await summariser.summarise(segments, language="en")
    assert short == summarise_text(MEETING)
    assert lane.statistics().completed == 0
    with trio.fail_after(10):
        long = await summariser.summarise(MEETING * 3, language="en")
    assert lane.statistics().completed == 1
    assert "Landing Page" in long.title
    assert await summariser.summarise([], language="en") == Summary(title="", overview="")


# ---------------------------------------------------------------- strict validation


def test_summary_from_json_normalises_category_and_items() -> None:
    summary = summary_from_json(
        {
            "title": " Launch plan ",
            "overview": "We planned.",
            "category": "Astrology",
            "action_items": ["Send report", {"description": "Book room", "completed": False}],
            "events": [{"title": "Review", "start": "2026-04-07T10:00:00Z", "duration": 45}],
        }
    )
    assert summary.title == "Launch plan"
    assert summary.category == "other"
    assert summary.emoji == "🧠"
    assert summary.action_items == ("Send report", "Book room")
    assert summary.events[0].duration_min == 45


@pytest.mark.parametrize(
    "data",
    [
        ["not", "an", "object"],
        {"overview": "x", "action_items": []},
        {"title": 3, "overview": "x", "action_items": []},
        {"title": "t", "overview": "x", "action_items": "send the report"},
        {"title": "t", "overview": "x", "action_items": [{"task": "x"}]},
        {"title": "t", "overview": "x", "action_items": [], "category": 7},
        {"title": "t", "overview": "x", "action_items": [], "events": [{"duration": 5}]},
    ],
    ids=["list", "no-title", "title-int", "items-str", "item-shape", "category-int", "event"],
)
def test_summary_from_json_refuses_wrong_shapes(data: object) -> None:
    with pytest.raises(MalformedSummaryError) as caught:
        summary_from_json(data)
    assert caught.value.retryable


# ---------------------------------------------------------------- OpenAI-compatible

GOOD_ANSWER = {
    "title": "Spring Launch Planning",
    "overview": "The team reviewed the landing page and the launch budget.",
    "emoji": "🚀",
    "category": "work",
    "action_items": ["Send the budget report by Friday", "Book the conference room"],
    "events": [],
}


def _completion(content: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(name="seen")
def _seen() -> list[httpx.Request]:
    return []


async def _summarise(handler: Handler, transcript: object = MEETING) -> Summary:
    async with lanes.open_http_lane("llm", transport=httpx.MockTransport(handler)) as lane:
        summariser = OpenAISummariser(lane, base_url=BASE_URL + "/", model="m1", api_key="k")
        return await summariser.summarise(transcript, language="en")  # type: ignore[arg-type]


async def test_openai_good_answer(seen: list[httpx.Request]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_completion(json.dumps(GOOD_ANSWER)))

    summary = await _summarise(handler, [Segment("I need to send the report."), Segment("Ok.")])
    assert summary.title == "Spring Launch Planning"
    assert summary.action_items == tuple(GOOD_ANSWER["action_items"])
    assert (summary.emoji, summary.category) == ("🚀", "work")
    request = seen[0]
    assert str(request.url) == "https://llm.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    body = json.loads(request.content)
    assert body["model"] == "m1"
    assert body["response_format"] == {"type": "json_object"}
    assert "SPEAKER_00: I need to send the report." in body["messages"][-1]["content"]


async def test_openai_empty_transcript_sends_nothing(seen: list[httpx.Request]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    assert await _summarise(handler, "  ") == Summary(title="", overview="")
    assert seen == []


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, json=_completion("Sure! Here is your summary: {")), "not JSON"),
        (httpx.Response(200, content=b"<html>oops</html>"), "response is not JSON"),
        (httpx.Response(200, json={"choices": []}), "no choices"),
        (httpx.Response(200, json=_completion(json.dumps(["a", "b"]))), "JSON object"),
        (
            httpx.Response(200, json=_completion(json.dumps({**GOOD_ANSWER, "title": None}))),
            "'title' must be a string",
        ),
    ],
    ids=["malformed-content", "not-json", "no-choices", "list", "wrong-shape"],
)
async def test_openai_malformed_answers(response: httpx.Response, message: str) -> None:
    with pytest.raises(MalformedSummaryError, match=message) as caught:
        await _summarise(lambda request: response)
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after_s"),
    [
        (500, {}, True, None),
        (503, {"Retry-After": "7"}, True, 7.0),
        (429, {"Retry-After": "3"}, True, 3.0),
        (400, {}, False, None),
        (401, {}, False, None),
    ],
)
async def test_openai_status_errors(
    status: int, headers: dict[str, str], retryable: bool, retry_after_s: float | None
) -> None:
    with pytest.raises(SummaryUpstreamError) as caught:
        await _summarise(lambda request: httpx.Response(status, headers=headers))
    error = caught.value
    assert (error.status, error.retryable, error.retry_after_s) == (
        status,
        retryable,
        retry_after_s,
    )
    assert isinstance(error.__cause__, lanes.UpstreamStatusError)


async def test_openai_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("model too slow", request=request)

    with pytest.raises(SummaryUpstreamError, match="unavailable") as caught:
        await _summarise(handler)
    assert caught.value.retryable and caught.value.status is None
    assert isinstance(caught.value.__cause__, lanes.UpstreamTimeoutError)


async def test_openai_breaker_open_is_retryable_after_its_delay() -> None:
    settings = lanes.HttpLaneSettings(failure_threshold=2, open_duration_s=30.0)
    transport = httpx.MockTransport(lambda request: httpx.Response(502))
    async with lanes.open_http_lane("llm", settings, transport=transport) as lane:
        summariser = OpenAISummariser(lane, base_url=BASE_URL, model="m1")
        for _ in range(2):
            with pytest.raises(SummaryUpstreamError):
                await summariser.summarise(MEETING, language="en")
        with pytest.raises(SummaryUpstreamError) as caught:
            await summariser.summarise(MEETING, language="en")
    assert isinstance(caught.value.__cause__, lanes.BreakerOpenError)
    assert caught.value.retryable
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
