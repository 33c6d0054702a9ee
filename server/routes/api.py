"""The user API under ``/v1``: conversations and WebSocket tickets."""

from __future__ import annotations

from quart import Blueprint, Response, request

from server.app import ctx_of, json_response
from server.clock import wall_now
from server.errors import ApiError
from server.routes.deps import current_user, read_json_object
from server.store import Conversation, ValidationError
from server.views import conversation_json

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__, url_prefix="/v1")

STATUSES = frozenset({"in_progress", "processing", "completed", "failed"})
MAX_PAGE = 100


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a Unix time in seconds") from None


def _limit_arg() -> int:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "invalid_parameter", f"limit must be an integer in 1..{MAX_PAGE}")
    return int(raw)


def _status_arg() -> str | None:
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        allowed = ", ".join(sorted(STATUSES))
        raise ApiError(400, "invalid_parameter", f"status must be one of {allowed}")
    return status


@blueprint.get("/conversations")
async def list_conversations() -> Response:
    """The caller's conversations, newest first, with keyset pagination."""
    user = await current_user()
    try:
        page = await ctx_of().store.list_conversations(
            user.id,
            status=_status_arg(),
            since=_float_arg("since"),
            until=_float_arg("until"),
            cursor=request.args.get("cursor"),
            limit=_limit_arg(),
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from exc
    items = [conversation_json(c, with_segments=False) for c in page.items]
    return json_response({"conversations": items, "next_cursor": page.next_cursor})


async def _owned(conversation_id: str, *, with_segments: bool = True) -> Conversation:
    user = await current_user()
    conversation = await ctx_of().store.get_conversation(
        user.id, conversation_id, with_segments=with_segments
    )
    if conversation is None:
        raise ApiError(404, "not_found", "no such conversation")
    return conversation


@blueprint.get("/conversations/<conversation_id>")
async def get_conversation(conversation_id: str) -> Response:
    """One conversation with its transcript segments."""
    return json_response(conversation_json(await _owned(conversation_id)))


@blueprint.delete("/conversations/<conversation_id>")
async def delete_conversation(conversation_id: str) -> Response:
    """Delete a conversation and its segments."""
    user = await current_user()
    if not await ctx_of().store.delete_conversation(user.id, conversation_id):
        raise ApiError(404, "not_found", "no such conversation")
    return Response(b"", status=204)


@blueprint.patch("/conversations/<conversation_id>")
async def patch_conversation(conversation_id: str) -> Response:
    """Change the user-editable fields (title, overview, emoji, category, starred, ...)."""
    user = await current_user()
    fields = await read_json_object()
    if not fields:
        raise ApiError(422, "invalid_field", "no fields to update")
    try:
        updated = await ctx_of().store.update_conversation(
            user.id, conversation_id, fields, now=wall_now()
        )
    except ValidationError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from exc
    if updated is None:
        raise ApiError(404, "not_found", "no such conversation")
    return json_response(conversation_json(updated))


@blueprint.post("/listen/tickets")
async def create_ticket() -> Response:
    """A short-lived, single-use ticket for browsers: ``/v4/listen?ticket=...``."""
    user = await current_user()
    ticket, ttl_s = await ctx_of().tickets.issue(user.id)
    headers = {"Cache-Control": "no-store"}
    return json_response({"ticket": ticket, "expires_in_s": ttl_s}, 201, headers)


@blueprint.get("/me")
async def me() -> Response:
    """Who the token belongs to."""
    user = await current_user()
    return json_response({"id": user.id, "name": user.name})
