"""Webhook bodies and URLs in Omi's shapes, and the signed headers of one attempt.

============================  =========================================  ====================
kind                          body                                       query
============================  =========================================  ====================
``memory_created``            the conversation JSON (``conversation_json``)  ``uid``
``realtime_transcript``       ``{"segments": [...], "session_id": ...}``     ``uid``
``audio_bytes``               raw PCM16 mono, ``application/octet-stream``   ``sample_rate``, ``uid``
``day_summary``               ``{"summary", "uid", "created_at"}``           ``uid``
============================  =========================================  ====================

Bodies are serialised once (compact JSON) and the exact bytes are signed and sent, so every
retry of a durable message carries identical bytes under the same ``webhook-id``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from server.webhooks.signing import signed_headers

__all__ = [
    "OCTET_STREAM",
    "append_query",
    "attempt_headers",
    "chat_message",
    "day_summary_body",
    "dumps",
    "realtime_transcript_body",
    "reply_message",
]

OCTET_STREAM: Final = "application/octet-stream"
#: A reply's ``message`` shorter than this is ignored (Omi: "longer than 5 characters").
MIN_MESSAGE_CHARS: Final = 6
MAX_MESSAGE_CHARS: Final = 2000
USER_AGENT: Final = "trioscribe-webhooks/1"


def dumps(value: object) -> bytes:
    """Compact UTF-8 JSON, the form every JSON body is sent in."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def append_query(url: str, params: Mapping[str, str]) -> str:
    """Add ``params`` to ``url``'s query, with ``?`` or ``&`` as the URL needs; keep a fragment out.

    >>> append_query("https://x.test/hook?a=1", {"uid": "u"})
    'https://x.test/hook?a=1&uid=u'
    """
    parts = urlsplit(url)
    extra = urlencode(dict(params))
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def realtime_transcript_body(session_id: str, segments: Sequence[Mapping[str, object]]) -> bytes:
    """The ``realtime_transcript`` body."""
    return dumps({"segments": list(segments), "session_id": session_id})


def day_summary_body(summary: str, uid: str, created_at: str) -> bytes:
    """The ``day_summary`` body (``created_at`` is ISO 8601)."""
    return dumps({"summary": summary, "uid": uid, "created_at": created_at})


def attempt_headers(
    secrets: Sequence[str], message_id: str, timestamp: int, body: bytes, content_type: str
) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks signature (fresh timestamp) and type."""
    headers = signed_headers(list(secrets), message_id, timestamp, body)
    headers["content-type"] = content_type
    headers["user-agent"] = USER_AGENT
    return headers


def reply_message(body: bytes) -> str | None:
    """The ``message`` of a receiver's JSON reply if it is longer than 5 characters."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    message = value.get("message") if isinstance(value, dict) else None
    if not isinstance(message, str) or len(message.strip()) < MIN_MESSAGE_CHARS:
        return None
    return message.strip()[:MAX_MESSAGE_CHARS]


def chat_message(app_id: str, text: str, now: float) -> dict[str, object]:
    """An app's reply as an Omi chat message (the app's ``ServerMessage.fromJson`` shape:
    ``app/lib/backend/schema/message.dart``; backend ``models/chat.py`` ``Message``)."""
    return {
        "id": str(uuid.uuid4()),
        "created_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "text": text,
        "sender": "ai",
        "type": "text",
        "app_id": app_id,
        "plugin_id": app_id,
        "from_external_integration": False,
        "from_integration": False,
        "memories_id": [],
        "memories": [],
        "files": [],
        "ask_for_nps": False,
    }
