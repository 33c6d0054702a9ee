"""The user API under ``/v1``: conversations and WebSocket tickets."""

from __future__ import annotations

import math
from typing import Any, Final
from urllib.parse import urlencode

from quart import Blueprint, Response, request

from server.clock import wall_now
from server.errors import ApiError
from server.routes._contract import operation
from server.routes._models import (
    MAX_PAGE,
    ConversationOut,
    ConversationPatch,
    ConversationQuery,
    Me,
    Ticket,
)
from server.routes.deps import ctx_of, json_response
from server.store import Conversation, User, ValidationError
from server.views import conversation_json

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__, url_prefix="/v1")

#: Omi's default when ``statuses`` is absent or empty (in-progress ones are the live session's).
DEFAULT_STATUSES: Final = frozenset({"processing", "completed"})
_NO_STORE: Final = {"Cache-Control": "no-store"}
_PAGE_HEADERS: Final = {
    "X-Next-Cursor": "the cursor of the next page (absent on the last page)",
    "Link": '`<...&cursor=...>; rel="next"`: the next page (absent on the last page)',
}


def _next_link(cursor: str) -> str:
    """``Link: <...>; rel="next"``: the same query with ``cursor`` and without ``offset``."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("cursor", "offset")]
    return f'<{request.path}?{urlencode([*args, ("cursor", cursor)])}>; rel="next"'


@blueprint.get("/conversations")
@operation(
    auth="user",
    query=ConversationQuery,
    responses={200: list[ConversationOut]},
    headers={200: _PAGE_HEADERS},
)
async def list_conversations(user: User, query: ConversationQuery) -> Response:
    """Omi's list: a bare JSON array, newest first, items with ``transcript_segments``.

    Filters: ``statuses`` (default processing,completed), ``include_discarded`` (default
    true), ``starred``, ``start_date``/``end_date`` (inclusive); paging by ``limit`` +
    ``offset`` (Omi) or by keyset: the next page's cursor is in ``X-Next-Cursor`` and ``Link``.
    """
    statuses = frozenset(query.statuses or query.status or DEFAULT_STATUSES)
    until = query.until
    if query.end_date is not None:
        until = math.nextafter(query.end_date, math.inf)
    try:
        page = await ctx_of().store.list_conversations(
            user.id,
            statuses=statuses,
            since=query.start_date if query.start_date is not None else query.since,
            until=until,
            include_discarded=query.include_discarded,
            starred=query.starred,
            cursor=query.cursor,
            offset=query.offset,
            limit=min(query.limit, MAX_PAGE),
            with_segments=True,
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from exc
    headers = {}
    if page.next_cursor is not None:
        headers = {"X-Next-Cursor": page.next_cursor, "Link": _next_link(page.next_cursor)}
    return json_response([conversation_json(c) for c in page.items], headers=headers)


async def _owned(user: User, conversation_id: str) -> Conversation:
    conversation = await ctx_of().store.get_conversation(user.id, conversation_id)
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
    """Change the user-editable fields (title, overview, emoji, category, starred, ...).

    ``structured`` is edited through Omi's sub-routes (events, action-items) only.
    """
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
    ticket, ttl_s = await ctx_of().tickets.issue(user.id)
    return json_response({"ticket": ticket, "expires_in_s": ttl_s}, 201, _NO_STORE)


@blueprint.get("/me")
@operation(auth="user", responses={200: Me})
async def me(user: User) -> Response:
    """Who the token belongs to."""
    return json_response({"id": user.id, "name": user.name})
