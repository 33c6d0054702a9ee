"""Opaque keyset cursors for newest-first lists: ``(created_at, id)`` of the last item shown."""

from __future__ import annotations

import base64
import binascii
import json
import math

from server.store.errors import ValidationError

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(created_at: float, conversation_id: str) -> str:
    """An opaque, URL-safe cursor pointing just after ``(created_at, conversation_id)``."""
    raw = json.dumps([created_at, conversation_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, id)`` of a cursor; ``ValidationError`` naming ``cursor`` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, conversation_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise ValidationError("cursor", "is not a valid cursor") from None
    valid_time = isinstance(created_at, int | float) and not isinstance(created_at, bool)
    if not valid_time or not math.isfinite(created_at) or not isinstance(conversation_id, str):
        raise ValidationError("cursor", "is not a valid cursor")
    return float(created_at), conversation_id
