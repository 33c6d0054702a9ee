"""Query parameters of ``/v4/listen`` (Omi-compatible), validated with precise close reasons."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_SOURCE",
    "SOURCES",
    "ListenParams",
    "ParamError",
    "note_stt_preference",
    "parse_listen_params",
]

LOGGER = logging.getLogger(__name__)

#: Omi raises shorter conversation timeouts to 120 s and maps -1 to 4 h.
MIN_CONVERSATION_TIMEOUT_S: Final = 120.0
MAX_CONVERSATION_TIMEOUT_S: Final = 4 * 3600.0
MAX_LANGUAGE_CHARS: Final = 16
#: Distinct unknown ``stt_service`` values logged once each; beyond this they are not logged.
MAX_LOGGED_STT_SERVICES: Final = 64
MAX_STT_SERVICE_CHARS: Final = 40
#: Omi's ``ConversationSource`` values (backend/models/conversation_enums.py).
SOURCES: Final = frozenset(
    {
        "friend",
        "omi",
        "fieldy",
        "bee",
        "plaud",
        "frame",
        "friend_com",
        "apple_watch",
        "phone",
        "phone_call",
        "desktop",
        "openglass",
        "screenpipe",
        "workflow",
        "sdcard",
        "external_integration",
        "limitless",
        "onboarding",
    }
)
#: What an unknown ``source`` becomes (Omi's transcribe.py: an invalid value -> ``omi``).
DEFAULT_SOURCE: Final = "omi"


class ParamError(ValueError):
    """A parameter is invalid; ``code`` is the WebSocket close code (1003 or 1008)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ListenParams:
    """Validated session parameters."""

    language: str
    sample_rate: int
    codec: str
    channels: int
    conversation_timeout_s: float
    source: str
    stt_service: str | None
    custom_stt: bool = False


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ParamError(1008, f"{name} must be an integer (got {raw[:20]!r})") from None


def _timeout(query: Mapping[str, str], default_s: float) -> float:
    raw = query.get("conversation_timeout")
    if raw is None or raw == "":
        return max(MIN_CONVERSATION_TIMEOUT_S, default_s)
    try:
        value = float(raw)
    except ValueError:
        raise ParamError(1008, "conversation_timeout must be a number of seconds") from None
    if value == -1:
        return MAX_CONVERSATION_TIMEOUT_S
    if not math.isfinite(value) or value <= 0:
        raise ParamError(1008, "conversation_timeout must be > 0 seconds, or -1 for 4 hours")
    return min(MAX_CONVERSATION_TIMEOUT_S, max(MIN_CONVERSATION_TIMEOUT_S, value))


def _language(query: Mapping[str, str]) -> str:
    language = query.get("language") or "en"
    if len(language) > MAX_LANGUAGE_CHARS or not language.replace("-", "").isalnum():
        raise ParamError(1008, f"language {language[:20]!r} is not supported")
    return "multi" if language == "auto" else language


def parse_listen_params(
    query: Mapping[str, str], *, default_timeout_s: float, codecs: frozenset[str]
) -> ListenParams:
    """Validate the query of a ``/v4/listen`` upgrade.

    Raises:
        ParamError: with close code 1003 for an unsupported codec / channel layout (data we
            cannot take) and 1008 for any other invalid value; the reason names the parameter.
    """
    codec = query.get("codec") or "pcm8"
    if codec not in codecs:
        raise ParamError(
            1003, f"codec {codec[:20]!r} is not supported (use {', '.join(sorted(codecs))})"
        )
    channels = _int(query, "channels", 1)
    if channels != 1:
        raise ParamError(
            1003, f"channels={channels} is not supported: send mono audio (channels=1)"
        )
    sample_rate = _int(query, "sample_rate", 8000)
    if sample_rate not in (8000, 16000):
        raise ParamError(1008, f"sample_rate must be 8000 or 16000 (got {sample_rate})")
    source = query.get("source") or DEFAULT_SOURCE
    if source not in SOURCES:
        source = DEFAULT_SOURCE
    return ListenParams(
        language=_language(query),
        sample_rate=sample_rate,
        codec=codec,
        channels=channels,
        conversation_timeout_s=_timeout(query, default_timeout_s),
        source=source,
        stt_service=query.get("stt_service") or None,
        custom_stt=query.get("custom_stt") == "enabled",
    )


_logged_stt_services: set[str] = set()


def note_stt_preference(stt_service: str | None, provider: str) -> None:
    """``stt_service`` is the client's preference only (Omi's app always sends its favourite,
    e.g. ``soniox``): the configured provider serves every session. A value other than the
    provider's name is logged once per distinct value (at most :data:`MAX_LOGGED_STT_SERVICES`
    values, each cut to :data:`MAX_STT_SERVICE_CHARS` characters, so a client cannot flood the
    log or grow this set without bound).
    """
    if stt_service is None or stt_service == provider:
        return
    value = stt_service[:MAX_STT_SERVICE_CHARS]
    if value in _logged_stt_services or len(_logged_stt_services) >= MAX_LOGGED_STT_SERVICES:
        return
    _logged_stt_services.add(value)
    LOGGER.info(
        "stt_service=%r requested; serving with the configured %r provider", value, provider
    )
