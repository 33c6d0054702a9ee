"""The user API under ``/v1``: conversations and WebSocket tickets."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from server.app import ctx_of, json_response
from server.clock import wall_now
from server.errors import ApiError
from server.routes._contract import operation
from server.routes._models import (
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    ConversationQuery,
    Me,
    Ticket,
)
from server.store import Conversation, User, ValidationError
from server.views import conversation_json

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__, url_prefix="/v1")

_NO_STORE = {"Cache-Control": "no-store"}


@blueprint.get("/conversations")
@operation(auth="user", query=ConversationQuery, responses={200: ConversationPage})
async def list_conversations(user: User, query: ConversationQuery) -> Response:
    """The caller's conversations, newest first, with keyset pagination."""
    try:
        page = await ctx_of().store.list_conversations(
            user.id,
            status=query.status,
            since=query.since,
            until=query.until,
            cursor=query.cursor,
            limit=query.limit,
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from exc
    items = [conversation_json(c, with_segments=False) for c in page.items]
    return json_response({"conversations": items, "next_cursor": page.next_cursor})


async def _owned(user: User, conversation_id: str, *, with_segments: bool = True) -> Conversation:
    conversation = await ctx_of().store.get_conversation(
        user.id, conversation_id, with_segments=with_segments
    )
    if conversation is None:
        raise ApiError(404, "not_found", "no such conversation")
    return conversation


@blueprint.get("/conversations/<conversation_id>")
@operation(auth="user", responses={200: ConversationOut}, errors=[404])
async def get_conversation(user: User, conversation_id: str) -> Response:
    """One conversation with its transcript segments."""
    return json_response(conversation_json(await _owned(user, conversation_id)))


@blueprint.delete("/conversations/<conversation_id>")
@operation(auth="user", responses={204: None}, errors=[404])
async def delete_conversation(user: User, conversation_id: str) -> Response:
    """Delete a conversation and its segments."""
    if not await ctx_of().store.delete_conversation(user.id, conversation_id):
        raise ApiError(404, "not_found", "no such conversation")
    return Response(b"", status=204)


@blueprint.patch("/conversations/<conversation_id>")
@operation(auth="user", body=ConversationPatch, responses={200: ConversationOut}, errors=[404])
async def patch_conversation(user: User, conversation_id: str, body: dict[str, Any]) -> Response:
    """Change the user-editable fields (title, overview, emoji, category, starred, ...)."""
    try:
        updated = await ctx_of().store.update_conversation(
            user.id, conversation_id, body, now=wall_now()
        )
    except ValidationError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from exc
    if updated is None:
        raise ApiError(404, "not_found", "no such conversation")
    return json_response(conversation_json(updated))


@blueprint.post("/listen/tickets")
@operation(auth="user", responses={201: Ticket}, headers={201: {"Cache-Control": "no-store"}})
async def create_ticket(user: User) -> Response:
    """A short-lived, single-use ticket for browsers: ``/v4/listen?ticket=...``."""
    ticket, ttl_s = ctx_of().tickets.issue(user.id)
    return json_response({"ticket": ticket, "expires_in_s": ttl_s}, 201, _NO_STORE)


@blueprint.get("/me")
@operation(auth="user", responses={200: Me})
async def me(user: User) -> Response:
    """Who the token belongs to."""
    return json_response({"id": user.id, "name": user.name})
