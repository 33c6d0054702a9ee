"""Opaque keyset cursors for newest-first lists: ``(created_at, id)`` of the last item shown."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Final

from pydantic import Field, TypeAdapter, ValidationError as PydanticValidationError

from server.store.errors import ValidationError

__all__ = ["decode_cursor", "encode_cursor"]

#: What a cursor decodes to: parsed strictly by pydantic's JSON parser, so a tampered cursor
#: (a 400-digit number, deep nesting, an unpaired surrogate) is refused, never a 500.
_CURSOR: Final = TypeAdapter(
    tuple[
        Annotated[float, Field(ge=0, allow_inf_nan=False)],
        Annotated[str, Field(min_length=1, max_length=64)],
    ]
)
MAX_CURSOR_CHARS: Final = 512


def encode_cursor(created_at: float, conversation_id: str) -> str:
    """An opaque, URL-safe cursor pointing just after ``(created_at, conversation_id)``."""
    raw = _CURSOR.dump_json((created_at, conversation_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, id)`` of a cursor; ``ValidationError`` naming ``cursor`` if malformed."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValidationError("cursor", "is not a valid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, conversation_id = _CURSOR.validate_json(raw, strict=True)
    except (ValueError, binascii.Error, PydanticValidationError):
        raise ValidationError("cursor", "is not a valid cursor") from None
    return created_at, conversation_id
