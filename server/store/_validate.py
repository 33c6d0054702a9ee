"""Argument checks done on the event loop before a call is sent to the storage lane."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Final

from server.store.errors import ValidationError
from server.store.models import CONVERSATION_STATUSES, VISIBILITIES

__all__ = [
    "EDITABLE_FIELDS",
    "MAX_OFFSET",
    "MAX_PAGE_LIMIT",
    "check_editable",
    "check_list_args",
    "check_positive",
    "structured_json",
]

#: Largest page ``list_conversations`` returns.
MAX_PAGE_LIMIT: Final = 1000
#: Deepest ``offset`` ``list_conversations`` skips to (offsets cost a scan; use the cursor).
MAX_OFFSET: Final = 100_000

#: User-editable text fields and their longest length in characters.
_TEXT_FIELDS: Final = {"title": 500, "overview": 20_000, "emoji": 16, "category": 64}
_BOOL_FIELDS: Final = frozenset({"starred", "discarded"})
EDITABLE_FIELDS: Final = frozenset({*_TEXT_FIELDS, *_BOOL_FIELDS, "visibility", "structured"})


def check_editable(fields: Mapping[str, object]) -> dict[str, object]:
    """Validate user-editable fields; return the column values (booleans as 0/1)."""
    values: dict[str, object] = {}
    for name, value in fields.items():
        if name == "structured":  # Omi's events/action-items edits rewrite the summary object
            if not isinstance(value, Mapping):
                raise ValidationError(name, "must be a JSON object")
            values["structured_json"] = structured_json(value)
        else:
            values[name] = _editable_value(name, value)
    return values


def _editable_value(name: str, value: object) -> object:
    if name in _TEXT_FIELDS:
        if not isinstance(value, str):
            raise ValidationError(name, "must be a string")
        if len(value) > _TEXT_FIELDS[name]:
            raise ValidationError(name, f"must be at most {_TEXT_FIELDS[name]} characters")
        return value
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValidationError(name, "must be true or false")
        return int(value)
    if name == "visibility":
        if value not in VISIBILITIES:
            raise ValidationError(name, f"must be one of {', '.join(sorted(VISIBILITIES))}")
        return value
    raise ValidationError(name, "is not an editable field")


def check_list_args(
    statuses: Collection[str], since: float | None, until: float | None, limit: int, offset: int
) -> None:
    """Validate ``list_conversations`` filters (``statuses``: every status asked for)."""
    for status in statuses:
        if status not in CONVERSATION_STATUSES:
            raise ValidationError(
                "status", f"must be one of {', '.join(sorted(CONVERSATION_STATUSES))}"
            )
    for name, bound in (("since", since), ("until", until)):
        if bound is not None and not math.isfinite(bound):
            raise ValidationError(name, "must be a finite Unix time")
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValidationError("limit", f"must be an integer in 1..{MAX_PAGE_LIMIT}")
    if isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise ValidationError("offset", f"must be an integer in 0..{MAX_OFFSET}")


def check_positive(name: str, value: float) -> None:
    """A finite number greater than zero."""
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a positive number")


def structured_json(structured: Mapping[str, object]) -> str:
    """The JSON text of a structured summary (a JSON object)."""
    try:
        return json.dumps(dict(structured), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("structured", f"must be JSON-serialisable: {exc}") from None
