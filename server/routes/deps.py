"""Request-level helpers shared by the route modules: the app context, auth, rate limits, JSON
bodies and responses."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from quart import Quart, Response, current_app, request

from server.auth import bearer_token, is_admin_token
from server.context import AppContext
from server.errors import ApiError
from server.guard import mark_authenticated
from server.identity import AuthFailed, authenticate_bearer

if TYPE_CHECKING:
    from server.store import User

__all__ = ["ctx_of", "current_user", "json_response", "read_json_object", "require_admin"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trioscribe"'}


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact JSON response with the right content type."""
    body = json.dumps(payload, separators=(",", ":"), default=_json_default)
    return Response(body, status=status, headers=headers, content_type="application/json")


def _json_default(value: object) -> object:
    """Statistics records and friends: dataclasses (shallow, recursed by json), mappings,
    enums, sets; anything else as its string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def ctx_of(app: Quart | None = None) -> AppContext:
    """The :class:`AppContext` of the running app."""
    target = app if app is not None else current_app
    return target.extensions["trioscribe"]  # type: ignore[no-any-return]


def require_admin() -> None:
    """Raise 401/403 unless the request carries the configured admin token."""
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    if not is_admin_token(token, ctx_of().settings.admin_token):
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")
    mark_authenticated(request.scope)


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
    mark_authenticated(request.scope)
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
