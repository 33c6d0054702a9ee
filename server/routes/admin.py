"""Admin endpoints (``ADMIN_TOKEN``): create users and API tokens over HTTP."""

from __future__ import annotations

from quart import Blueprint, Response

from server.clock import wall_now
from server.errors import ApiError
from server.routes._contract import operation
from server.routes._models import Me, NewToken, NewUser, TokenCreated
from server.routes.deps import ctx_of, json_response
from server.store import ConflictError

__all__ = ["blueprint"]

blueprint = Blueprint("admin", __name__, url_prefix="/v1/admin")


@blueprint.post("/users")
@operation(auth="admin", body=NewUser, responses={201: Me}, errors=[409], tags=["admin"])
async def create_user(body: NewUser) -> Response:
    """Create a user: ``{"name": "alice"}`` -> 201 ``{"id", "name"}``."""
    try:
        user = await ctx_of().store.create_user(body.name, wall_now())
    except ConflictError as exc:
        raise ApiError(409, "conflict", f"user {body.name!r} already exists") from exc
    return json_response({"id": user.id, "name": user.name}, 201)


@blueprint.post("/users/<name>/tokens")
@operation(
    auth="admin",
    body=NewToken,
    body_required=False,
    responses={201: TokenCreated},
    errors=[404],
    headers={201: {"Cache-Control": "no-store"}},
    tags=["admin"],
)
async def create_token(name: str, body: NewToken) -> Response:
    """Create an API token for a user; the raw token is shown once, here."""
    store = ctx_of().store
    user = await store.get_user_by_name(name)
    if user is None:
        raise ApiError(404, "not_found", f"no user {name!r}")
    raw, info = await store.create_token(user.id, body.label, wall_now())
    headers = {"Cache-Control": "no-store"}
    return json_response({"token": raw, "id": info.id, "user": user.name}, 201, headers)
