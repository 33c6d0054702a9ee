"""Summaries in the shapes Omi's app and plugins accept: an event always has a ``start``.

``plugins/models.py`` ``Event.start`` is a required datetime (a null is a 422 from every
plugin) and the app's ``GeneratedEvent`` reads it without a null check (it drops the whole
conversation); backend ``models/structured.py`` has the same ``Event``.
"""

from __future__ import annotations

from server.processing.summarise import Summary, SummaryEvent, summary_from_json
from server.store import Conversation
from server.views import conversation_json
from tests.omi.plugins import schema

ANSWER = {
    "title": "Launch review",
    "overview": "The team planned the launch.",
    "action_items": ["Send the budget report"],
    "events": [
        {"title": "Launch review", "start": "2026-12-08T10:00:00", "duration": 60},
        {"title": "Someday", "start": None, "duration": 30},
        {"title": "Vague", "start": "next Tuesday", "duration": 30},
        {"title": "Offset", "start": "2026-12-08T10:00:00+02:00", "duration": 30},
    ],
}


def test_the_model_answers_events_without_a_usable_start_are_dropped() -> None:
    summary = summary_from_json(ANSWER)
    assert [(e.title, e.start) for e in summary.events] == [
        ("Launch review", "2026-12-08T10:00:00Z"),
        ("Offset", "2026-12-08T08:00:00Z"),
    ]


def test_no_event_without_a_start_reaches_a_plugin_or_the_app() -> None:
    startless = Summary("t", "o", events=(SummaryEvent("no start"),))
    assert startless.to_json()["events"] == []
    stored = {  # written before the fix, or by a client: never shown without a start
        "events": [
            {"title": "x", "start": None, "duration": 30},
            *summary_from_json(ANSWER).to_json()["events"],
        ]
    }
    conversation = Conversation(
        id="c1", user_id="u1", status="completed", created_at=1.7e9, updated_at=1.7e9,
        started_at=1.7e9, finished_at=1.7e9 + 60, source="omi", language="en", timeout_s=120,
        title="Launch review", overview="planned", structured=stored,
    )  # fmt: skip
    body = conversation_json(conversation)
    events = body["structured"]["events"]
    assert [e["title"] for e in events] == ["Launch review", "Offset"]
    errors = [e.message for e in schema("plugin_conversation.schema.json").iter_errors(body)]
    assert errors == []
