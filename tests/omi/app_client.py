"""A /v4/listen client with Omi's app's parameters and parsing rules.

Query: ``app/lib/services/sockets/transcription_service.dart`` (``language``, ``sample_rate``,
``codec``, ``uid``, ``include_speech_profile``, ``stt_service`` = the user's transcription model,
``conversation_timeout``, then ``source`` and ``custom_stt=enabled`` when set).

Parsing (``TranscriptSegmentSocketService.onMessage``): ``jsonDecode`` each text message; a
``FormatException`` (the bare ``"ping"``) is logged and ignored; a ``List`` is transcript
segments (``TranscriptSegment.fromJson``; the app upserts them by ``id``:
``TranscriptSegment.updateSegments``); a ``Map`` with ``type`` is a ``MessageEvent``
(``message_event.dart``; unknown types are ``UnknownEvent``). Every segment, event and
``memory_created`` message is checked against the fixtures' shapes; what does not fit is a
*problem* (the app would throw or drop it).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.omi.plugins import schema

__all__ = ["AppView", "app_query", "read_app"]

FIXTURES: Final = pathlib.Path(__file__).parent / "fixtures"
EVENTS: Final[dict[str, Any]] = json.loads((FIXTURES / "stream_message_events.json").read_text())
_JSON_TYPES: Final = {"string": str, "object": dict, "array": list}


def app_query(
    *,
    codec: str = "pcm16",
    sample_rate: int = 16000,
    language: str = "en",
    stt_service: str = "soniox",
    conversation_timeout: int = 120,
    source: str | None = None,
    custom_stt: bool = False,
) -> str:
    """The query string the app opens ``/v4/listen`` with (without the leading ``?``)."""
    query = (
        f"language={language}&sample_rate={sample_rate}&codec={codec}&uid=app-uid"
        f"&include_speech_profile=true&stt_service={stt_service}"
        f"&conversation_timeout={conversation_timeout}"
    )
    if source:
        query += f"&source={source}"
    if custom_stt:
        query += "&custom_stt=enabled"
    return query


@dataclass(eq=False)
class AppView:
    """What the app holds after the messages it parsed (see the module docstring)."""

    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    unknown_events: list[str] = field(default_factory=list)
    ignored: int = 0
    problems: list[str] = field(default_factory=list)
    close_code: int | None = None
    _segment_schema: Any = field(
        default_factory=lambda: schema("stream_transcript_segment.schema.json")
    )
    _message_schema: Any = field(
        default_factory=lambda: schema("stream_server_message.schema.json")
    )

    def transcript(self) -> str:
        """The segments' texts in order (the app's transcript view)."""
        return " ".join(self.segments[i]["text"] for i in self.order)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Events of ``kind``, in arrival order."""
        return [e for e in self.events if e["type"] == kind]

    def parse(self, message: str | bytes) -> None:
        """``onMessage`` for one message."""
        try:
            value = json.loads(message)
        except ValueError:
            self.ignored += 1  # the bare "ping": FormatException, logged and ignored
            return
        if isinstance(value, list):
            self._segments(value)
        elif isinstance(value, dict) and "type" in value:
            self._event(value)
        else:
            self.problems.append(f"unhandled message {str(value)[:80]}")

    def _segments(self, values: list[Any]) -> None:
        for value in values:
            errors = [e.message for e in self._segment_schema.iter_errors(value)]
            if errors:
                self.problems.append(f"segment {value.get('id')}: {errors}")
                continue
            if value["id"] not in self.segments:
                self.order.append(value["id"])
            self.segments[value["id"]] = value

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind not in EVENTS["known_types"]:
            self.unknown_events.append(kind)  # UnknownEvent: the app ignores it
            self.events.append(event)
            return
        for key, json_type in EVENTS["required"].get(kind, {}).items():
            if not isinstance(event.get(key), _JSON_TYPES[json_type]):
                self.problems.append(f"{kind}.{key} is not a {json_type}")
        if kind == "memory_created":
            for message in event.get("messages", []):
                errors = [e.message for e in self._message_schema.iter_errors(message)]
                if errors:
                    self.problems.append(f"memory_created message: {errors}")
        self.events.append(event)


async def read_app(ws: WebSocketConnection, view: AppView, done: Any) -> AppView:
    """Parse messages into ``view`` until ``done(view)`` or the server closes."""
    await trio.lowlevel.checkpoint()
    while not done(view):
        try:
            view.parse(await ws.get_message())
        except ConnectionClosed as exc:
            view.close_code = exc.reason.code
            break
    return view
