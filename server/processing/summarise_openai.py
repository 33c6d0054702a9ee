"""A summariser backed by any OpenAI-compatible chat-completions endpoint, through an HTTP lane.

One ``POST {base_url}/chat/completions`` per transcript, asking for a JSON object
(``response_format: {"type": "json_object"}``) with Omi's ``structured`` fields. The answer is
validated strictly (:func:`~server.processing.summarise.summary_from_json`). Lane errors are
mapped once into the summary error tree, keeping whether a retry can help:

============================================  ==============================  =========
lane error                                    summary error                   retryable
============================================  ==============================  =========
UpstreamStatusError 408/425/429/5xx           SummaryUpstreamError (status)   yes
UpstreamStatusError other 4xx                 SummaryUpstreamError (status)   no
timeout / connect / protocol / breaker / full SummaryUpstreamError            yes
2xx with a body that is not the JSON we want  MalformedSummaryError           yes
============================================  ==============================  =========

Callers own time: wrap :meth:`OpenAISummariser.summarise` in ``trio.fail_after``; the lane's
settings bound each socket step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

import trio

import lanes
from server.processing.summarise import (
    CATEGORIES,
    MalformedSummaryError,
    Summary,
    SummaryError,
    SummaryUpstreamError,
    Transcript,
    summary_from_json,
    transcript_text,
)

__all__ = ["MAX_TRANSCRIPT_CHARS", "OpenAISummariser", "build_messages"]

#: Longer transcripts are cut (the head is kept) so the prompt fits common context windows.
MAX_TRANSCRIPT_CHARS: Final = 60_000
TEMPERATURE: Final = 0.2
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})

SYSTEM_PROMPT: Final = (
    "You summarise conversation transcripts. Answer with one JSON object and nothing else, "
    'with these keys: "title" (string, at most 8 words), "overview" (string, 1-3 sentences), '
    '"emoji" (string, one emoji), "category" (string, one of: {categories}), '
    '"action_items" (list of strings: concrete tasks someone committed to or was asked to do; '
    'empty if none), "events" (list of objects with "title", "description", "start" as ISO '
    '8601 date-time, "duration" in minutes; only events with a known date and time, empty '
    "if none). Write the title, overview and action "
    "items in the language with BCP 47 code {language!r}."
)


def build_messages(transcript: Transcript, *, language: str) -> list[dict[str, str]]:
    """Return the chat messages for one summary request."""
    text = transcript_text(transcript, speakers=True)[:MAX_TRANSCRIPT_CHARS]
    system = SYSTEM_PROMPT.format(categories=", ".join(sorted(CATEGORIES)), language=language)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Transcript:\n{text}"},
    ]


class OpenAISummariser:
    """The :class:`~server.processing.summarise.Summariser` backed by a chat-completions model.

    Args:
        lane: the HTTP lane requests go through (its breaker and bulkhead guard the endpoint).
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or a local server's ``/v1``.
        model: the model name sent with each request.
        api_key: sent as ``Authorization: Bearer``; empty for endpoints without auth.
    """

    name = "openai"

    def __init__(
        self, lane: lanes.HttpLane, *, base_url: str, model: str, api_key: str = ""
    ) -> None:
        self._lane = lane
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def summarise(self, transcript: Transcript, *, language: str) -> Summary:
        """Ask the model for a summary of ``transcript`` and validate its answer.

        An empty transcript gives an empty summary without a request.

        Raises:
            SummaryUpstreamError: the request failed (``retryable``, ``status``,
                ``retry_after_s`` say how).
            MalformedSummaryError: the model answered with something other than the
                expected JSON object.
        """
        if not transcript_text(transcript):
            await trio.lowlevel.checkpoint()
            return Summary(title="", overview="")
        payload = {
            "model": self._model,
            "messages": build_messages(transcript, language=language),
            "response_format": {"type": "json_object"},
            "temperature": TEMPERATURE,
        }
        try:
            response = await self._lane.request(
                "POST", self._url, json=payload, headers=self._headers
            )
        except lanes.LaneError as exc:
            raise _map_lane_error(exc) from exc
        return summary_from_json(_message_json(response.body))


def _message_json(body: bytes) -> object:
    """Return the parsed JSON inside ``choices[0].message.content`` of a completion."""
    try:
        completion = json.loads(body)
    except ValueError as exc:
        raise MalformedSummaryError(f"the response is not JSON ({exc})") from exc
    content = _content(completion)
    try:
        return json.loads(content)
    except ValueError as exc:
        raise MalformedSummaryError(f"the model's message is not JSON ({exc})") from exc


def _content(completion: object) -> str:
    content: object = None
    if isinstance(completion, Mapping):
        try:
            content = completion["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedSummaryError("the response has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise MalformedSummaryError("choices[0].message.content is not a string")
    return content


def _map_lane_error(exc: lanes.LaneError) -> SummaryError:
    if isinstance(exc, lanes.UpstreamStatusError):
        retryable = exc.status in RETRYABLE_STATUSES or exc.status >= 500
        return SummaryUpstreamError(
            f"summary model answered HTTP {exc.status}",
            retryable=retryable,
            status=exc.status,
            retry_after_s=exc.retry_after_s,
        )
    retry_after_s = exc.retry_after_s if isinstance(exc, lanes.BreakerOpenError) else None
    return SummaryUpstreamError(
        f"summary model unavailable: {exc}", retryable=True, retry_after_s=retry_after_s
    )
