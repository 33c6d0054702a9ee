"""Log lines as text or JSON, carrying the context of the work, with secrets redacted.

Context: :func:`log_context` binds fields (``session_id``, ``user_id``, ``conversation_id``,
``lane``, ...) in a :class:`contextvars.ContextVar`. Trio copies the current context into every
task started with ``start_soon``/``start`` (and ``trio.to_thread`` into its thread), so fields
bound around a session's nursery are on every line its tasks log. A field's value may be a
zero-argument callable, evaluated when a line is logged (the conversation of a session changes
while it runs).

Secrets: no code path logs a token, ticket, webhook secret or API key on purpose; as a second
line of defence every formatted line (message and traceback) goes through :func:`redact`, which
masks the known secret shapes (``ts_...`` API tokens, ``tk_...`` tickets, ``whsec_...`` signing
secrets, ``Bearer ...``, ``?ticket=`` / ``key=`` style query values, URL credentials) and every
literal secret registered by :func:`configure_logging` (the admin token, provider API keys).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Final, TextIO

__all__ = [
    "LOG_CONTEXT",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "current_log_context",
    "log_context",
    "redact",
]

LOG_CONTEXT: Final[contextvars.ContextVar[Mapping[str, object]]] = contextvars.ContextVar(
    "trioscribe_log_context", default=MappingProxyType({})
)

_MASK: Final = "[redacted]"
_PATTERNS: Final = (
    # API tokens, WebSocket tickets, webhook signing secrets (server/store, server/auth,
    # server/webhooks) and common provider key shapes.
    re.compile(r"\b(?:ts|tk)_[A-Za-z0-9_-]{12,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"),
    re.compile(r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    # name=value secrets in query strings, headers or reprs.
    re.compile(
        r"(?i)(?:(?<=[?&;\s,(\"'])|^)(?:ticket|token|api[_-]?key|key|secret|password|signature|"
        r"authorization)[\"']?\s*[=:]\s*[\"']?[^&\s\"',)]+"
    ),
    # credentials in URLs: scheme://user:password@host
    re.compile(r"(?<=://)[^/\s@:]+:[^/\s@]+(?=@)"),
)


def redact(text: str, literals: Iterable[str] = ()) -> str:
    """``text`` with every known secret shape and every literal in ``literals`` masked."""
    for literal in literals:
        if literal:
            text = text.replace(literal, _MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(_mask_match, text)
    return text


def _mask_match(match: re.Match[str]) -> str:
    found = match.group(0)
    for sep in "=:":
        name, eq, _value = found.partition(sep)
        if eq and name.strip("\"' ").replace("-", "_").isidentifier():
            return f"{name}{eq}{_MASK}"
    return _MASK


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Bind ``fields`` to every line logged inside the block (and by tasks started in it).

    Values may be zero-argument callables, evaluated per line. Nesting merges; leaving the
    block restores the outer fields.
    """
    token = LOG_CONTEXT.set(MappingProxyType({**LOG_CONTEXT.get(), **fields}))
    try:
        yield
    finally:
        LOG_CONTEXT.reset(token)


def current_log_context() -> dict[str, object]:
    """The bound fields with callables evaluated and ``None`` values left out."""
    out: dict[str, object] = {}
    for key, value in LOG_CONTEXT.get().items():
        if callable(value):
            try:
                value = value()
            except Exception:  # a broken field must never break logging
                value = "?"
        if value is not None:
            out[key] = value
    return out


class ContextFilter(logging.Filter):
    """Attach :func:`current_log_context` to each record as ``record.context``.

    Lane libraries that cannot import this module pass ``extra={"lane": name}``; that field is
    merged in too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_log_context()
        lane = getattr(record, "lane", None)
        if lane is not None:
            context.setdefault("lane", lane)
        record.context = context
        return True


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, literals: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._literals = tuple(s for s in literals if s)

    def _redact(self, text: str) -> str:
        return redact(text, self._literals)


class TextFormatter(_Redacting):
    """``time LEVEL logger: message [key=value ...]`` with secrets masked."""

    def __init__(self, *, literals: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", literals=literals)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context: Mapping[str, object] = getattr(record, "context", {})
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return self._redact(text)


class JsonFormatter(_Redacting):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the bound context fields, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        millis = int(record.msecs)
        payload: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        for key, value in getattr(record, "context", {}).items():
            payload.setdefault(key, value if isinstance(value, int | float | bool) else str(value))
        if record.exc_info:
            payload["exception"] = self._redact(self.formatException(record.exc_info))
        elif record.stack_info:
            payload["stack"] = self._redact(self.formatStack(record.stack_info))
        line = json.dumps(payload, ensure_ascii=False, default=str)
        return self._redact(line) if self._literals else line


FORMATTERS: Final[dict[str, Callable[[Iterable[str]], logging.Formatter]]] = {
    "text": lambda literals: TextFormatter(literals=literals),
    "json": lambda literals: JsonFormatter(literals=literals),
}


def configure_logging(
    level: str,
    log_format: str,
    *,
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every log record to one stream handler (``stderr``) in ``log_format``.

    Replaces the root logger's handlers (calling it again reconfigures). ``secrets`` are
    literal values masked in every line on top of the known shapes (pass the settings'
    secret fields).
    """
    literals = [s for s in secrets if s]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format](literals))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
