"""Request-level helpers shared by the route modules: auth, rate limits, JSON bodies."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from quart import request

from server.app import ctx_of
from server.auth import bearer_token, is_admin_token
from server.errors import ApiError
from server.identity import AuthFailed, authenticate_bearer

if TYPE_CHECKING:
    from server.store import User

__all__ = ["current_user", "read_json_object", "require_admin"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trioscribe"'}


def require_admin() -> None:
    """Raise 401/403 unless the request carries the configured admin token."""
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    if not is_admin_token(token, ctx_of().settings.admin_token):
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")


async def current_user() -> User:
    """The user of the request's bearer token, after its rate limit (401, 429)."""
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    ctx = ctx_of()
    try:
        user = await authenticate_bearer(ctx, token)
    except AuthFailed as exc:
        raise ApiError(401, "unauthorized", exc.reason, headers=_CHALLENGE) from None
    wait_s = ctx.limiter.try_acquire(user.id)
    if wait_s > 0:
        retry = str(max(1, math.ceil(wait_s)))
        raise ApiError(429, "rate_limited", "too many requests", headers={"Retry-After": retry})
    return user


async def read_json_object(*, optional: bool = False) -> dict[str, object]:
    """The request body as a JSON object (400 if malformed, 413 if too large).

    Args:
        optional: an empty body means ``{}`` instead of an error.
    """
    raw = await request.get_data(as_text=False)
    if not raw:
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return value
