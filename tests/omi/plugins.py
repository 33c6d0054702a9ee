"""Webhook receivers written the way Omi's own plugins are (behaviour copied, not code).

* :class:`Mentor` - ``plugins/basic/mentor.py``: validates the body as ``RealtimePluginRequest``
  (``plugins/models.py``; FastAPI answers 422 otherwise), answers 403 "session_id must match uid"
  unless ``session_id`` is the ``uid`` query parameter, then *appends* the posted segments to a
  per-uid buffer (``plugins/db.py`` ``get_upsert_segment_to_transcript_plugin``: ``extend``,
  keep the last 1000) and scans the new part for the codeword "hey Omi what do you think"; on a
  hit it answers ``{"session_id", "notification": {"prompt", "params"}}``, else ``{}``.
* :class:`CursingChecker` - ``plugins/example/basic/realtime.py``: looks at the posted segments
  only and answers ``{"message": "Do not curse"}`` when one contains a curse word, else ``{}``.
* :class:`ConversationFeedback` - ``plugins/basic/conversation_created.py``: validates the
  body as ``Conversation`` (``plugins/models.py``) and answers ``{"message": <feedback>}``.

Each records the status of every answer, so a test can check that *every* post was accepted.
"""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from jsonschema import Draft202012Validator, FormatChecker

from tests.fakes.http_targets import RecordedRequest
from tests.fakes.receivers import Reply, json_reply

__all__ = ["ConversationFeedback", "CursingChecker", "Mentor", "schema"]

FIXTURES: Final = pathlib.Path(__file__).parent / "fixtures"
CODEWORDS: Final = ("hey Omi what do you think",)
CURSE_WORDS: Final = ("shit", "fuck", "bitch", "bastard")
MAX_BUFFER: Final = 1000


def schema(name: str) -> Draft202012Validator:
    """A validator for ``fixtures/<name>`` (formats such as date-time are checked)."""
    loaded = json.loads((FIXTURES / name).read_text())
    return Draft202012Validator(loaded, format_checker=FormatChecker())


def _errors(validator: Draft202012Validator, value: object) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(value)]


def _normalize(text: str) -> str:
    return re.sub(r" +", " ", re.sub(r"[,?.!]", " ", text)).lower().strip()


@dataclass(eq=False)
class _Plugin:
    statuses: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _answered: trio.Event = field(default_factory=trio.Event)

    def _answer(self, reply: Reply) -> Reply:
        self.statuses.append(reply.status)
        self._answered.set()
        self._answered = trio.Event()
        return reply

    async def wait_answered(self) -> None:
        """Wait until the plugin answers its next request (the caller bounds the wait)."""
        await self._answered.wait()

    def _body(self, request: RecordedRequest, validator: Draft202012Validator) -> Any:
        try:
            body = json.loads(request.body)
        except ValueError:
            self.problems.append("body is not JSON")
            return None
        errors = _errors(validator, body)
        if errors:
            self.problems.extend(errors)
            return None
        return body


@dataclass(eq=False)
class Mentor(_Plugin):
    """``plugins/basic/mentor.py`` (see the module docstring)."""

    buffers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)
    notifications: int = 0
    _validator: Draft202012Validator = field(
        default_factory=lambda: schema("plugin_realtime_request.schema.json")
    )

    def __call__(self, request: RecordedRequest) -> Reply:
        uid = request.query.get("uid", [""])[0]
        data = self._body(request, self._validator)
        if data is None:
            return self._answer(json_reply({"detail": "validation error"}, 422))
        if data["session_id"] != uid:
            return self._answer(json_reply({"detail": "session_id must match uid"}, 403))
        segments = self.buffers.setdefault(uid, [])
        segments.extend(data["segments"])
        del segments[:-MAX_BUFFER]
        if len(segments) <= len(data["segments"]) or uid not in self.scanned:
            self.scanned[uid] = 0
        scan = segments[self.scanned[uid] :]
        text = _normalize(" ".join(s["text"] for s in scan))
        pattern = r"\b(?:" + "|".join(re.escape(_normalize(c)) for c in CODEWORDS) + r")\b"
        if not scan or not re.search(pattern, text):
            return self._answer(json_reply({}))
        self.scanned[uid] = len(segments)
        self.notifications += 1
        notification = {"prompt": "You are a mentor ...", "params": ["user_name", "user_facts"]}
        return self._answer(json_reply({"session_id": uid, "notification": notification}))

    def words(self, uid: str) -> list[str]:
        """Every word the buffer holds for ``uid``, in order."""
        return " ".join(s["text"] for s in self.buffers.get(uid, [])).split()


@dataclass(eq=False)
class CursingChecker(_Plugin):
    """``plugins/example/basic/realtime.py`` (see the module docstring)."""

    _validator: Draft202012Validator = field(
        default_factory=lambda: schema("plugin_realtime_request.schema.json")
    )

    def __call__(self, request: RecordedRequest) -> Reply:
        data = self._body(request, self._validator)
        if data is None:
            return self._answer(json_reply({"detail": "validation error"}, 422))
        transcript = " ".join(s["text"] for s in data["segments"]).lower()
        if re.search(r"\b(?:" + "|".join(CURSE_WORDS) + r")\b", transcript):
            return self._answer(json_reply({"message": "Do not curse"}))
        return self._answer(json_reply({}))


@dataclass(eq=False)
class ConversationFeedback(_Plugin):
    """``plugins/basic/conversation_created.py`` (see the module docstring)."""

    conversations: list[dict[str, Any]] = field(default_factory=list)
    _validator: Draft202012Validator = field(
        default_factory=lambda: schema("plugin_conversation.schema.json")
    )

    def __call__(self, request: RecordedRequest) -> Reply:
        data = self._body(request, self._validator)
        if data is None:
            return self._answer(json_reply({"detail": "validation error"}, 422))
        self.conversations.append(data)
        title = data["structured"]["title"] or "your conversation"
        return self._answer(json_reply({"message": f"nice chat about {title}!"}))
