"""Standard Webhooks v1 signing: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The signed content is ``f"{msg_id}.{timestamp}."`` followed by the exact body bytes sent;
the signature is ``v1,<base64(HMAC-SHA256(secret, content))>``. Secrets are shown as
``whsec_<base64>``; the prefix is optional wherever a secret is accepted. During a key rotation
the sender signs with every active secret and sends the signatures space-separated; a receiver
accepts the message if any one matches (https://www.standardwebhooks.com/, spec v1.0.0).

``webhook-id`` stays the same across retries of one message (receivers dedupe on it);
``webhook-timestamp`` is the time of each *attempt*, so every retry is signed afresh.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "SECRET_PREFIX",
    "TOLERANCE_S",
    "SignatureError",
    "new_message_id",
    "new_secret",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32  # the spec asks for 24..64 bytes of randomness
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64
MESSAGE_ID_BYTES: Final = 18
TOLERANCE_S: Final = 5 * 60  # every reference receiver accepts +-5 min of clock skew
SIGNATURE_VERSION: Final = "v1"


class SignatureError(ValueError):
    """A webhook's headers do not verify (missing, malformed, stale, or no matching signature)."""


def new_secret() -> str:
    """Return a fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_message_id() -> str:
    """Return a fresh message id: ``msg_`` + URL-safe random text (never contains a dot)."""
    return "msg_" + secrets.token_urlsafe(MESSAGE_ID_BYTES)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``v1,<base64>`` signature of one message attempt.

    Args:
        secret: the endpoint secret, with or without the ``whsec_`` prefix.
        msg_id: the message id (``webhook-id``); must be non-empty and contain no dot.
        timestamp: Unix seconds of this attempt (``webhook-timestamp``).
        body: the exact bytes that will be sent.

    Raises:
        ValueError: the secret is not base64 of 24..64 bytes, or the id/timestamp is invalid.
    """
    key = _secret_bytes(secret)
    _check_id_and_timestamp(msg_id, timestamp)
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(
    secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one attempt.

    Args:
        secret: one secret, or several during a rotation (one signature each, space-separated).
        msg_id: the message id, the same on every retry.
        timestamp: Unix seconds of this attempt.
        body: the exact bytes that will be sent.

    Raises:
        ValueError: no secret was given, or :func:`sign` refused one.
    """
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise ValueError("at least one secret is needed")
    signature = " ".join(sign(key, msg_id, timestamp, body) for key in keys)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> None:
    """Check a received webhook like a Standard Webhooks receiver does (tests and docs).

    Args:
        secret: the receiver's secret, with or without ``whsec_``.
        headers: the request headers (names in any case).
        body: the raw request body.
        now: the receiver's clock in Unix seconds (default: ``time.time()``).

    Raises:
        SignatureError: a header is missing or malformed, the timestamp is more than
            :data:`TOLERANCE_S` away from ``now``, or no ``v1`` signature matches.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id, stamp, signatures = (
        lowered.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (msg_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    timestamp = _parse_timestamp(stamp, time.time() if now is None else now)
    try:
        expected = sign(secret, msg_id, timestamp, body).encode()
    except ValueError as exc:
        raise SignatureError(str(exc)) from exc
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError("no matching signature")


def _parse_timestamp(stamp: str, now: float) -> int:
    if not stamp.isdigit():
        raise SignatureError(f"webhook-timestamp {stamp[:20]!r} is not Unix seconds")
    timestamp = int(stamp)
    if abs(timestamp - now) > TOLERANCE_S:
        raise SignatureError(f"webhook-timestamp is {timestamp - now:+.0f} s from now")
    return timestamp


def _secret_bytes(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    encoded += "=" * (-len(encoded) % 4)  # tolerate unpadded base64, as the reference libs do
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"webhook secret must be {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes")
    return key


def _check_id_and_timestamp(msg_id: str, timestamp: int) -> None:
    if not msg_id or "." in msg_id:
        raise ValueError("message id must be non-empty and contain no '.'")
    if timestamp < 0:
        raise ValueError("timestamp must be Unix seconds (>= 0)")
