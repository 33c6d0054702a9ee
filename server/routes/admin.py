"""Admin endpoints (``ADMIN_TOKEN``): create users and API tokens over HTTP."""

from __future__ import annotations

import re

from quart import Blueprint, Response

from server.clock import wall_now
from server.errors import ApiError
from server.routes.deps import ctx_of, json_response, read_json_object, require_admin
from server.store import ConflictError

__all__ = ["blueprint"]

blueprint = Blueprint("admin", __name__, url_prefix="/v1/admin")

USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _label(body: dict[str, object]) -> str:
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > 100:
        raise ApiError(422, "invalid_field", "label must be a string of at most 100 characters")
    return label


@blueprint.post("/users")
async def create_user() -> Response:
    """Create a user: ``{"name": "alice"}`` -> 201 ``{"id", "name"}``."""
    require_admin()
    body = await read_json_object()
    name = body.get("name")
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise ApiError(422, "invalid_field", "name must be 1-64 characters of [A-Za-z0-9_.@-]")
    try:
        user = await ctx_of().store.create_user(name, wall_now())
    except ConflictError as exc:
        raise ApiError(409, "conflict", f"user {name!r} already exists") from exc
    return json_response({"id": user.id, "name": user.name}, 201)


@blueprint.post("/users/<name>/tokens")
async def create_token(name: str) -> Response:
    """Create an API token for a user; the raw token is shown once, here."""
    require_admin()
    body = await read_json_object(optional=True)
    store = ctx_of().store
    user = await store.get_user_by_name(name)
    if user is None:
        raise ApiError(404, "not_found", f"no user {name!r}")
    raw, info = await store.create_token(user.id, _label(body), wall_now())
    headers = {"Cache-Control": "no-store"}
    return json_response({"token": raw, "id": info.id, "user": user.name}, 201, headers)
