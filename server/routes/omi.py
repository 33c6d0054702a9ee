"""Omi's conversation routes that the stock app calls beside the plain REST resource.

Paths, query parameters, bodies and answers follow Omi's ``backend/routers/conversations.py``
as called by ``app/lib/backend/http/api/conversations.dart``:

- ``POST /v1/conversations``: end the caller's in-progress conversation now and process it;
  answers ``{"memory": <conversation>, "conversation": <same>, "messages": []}`` (the app reads
  ``memory``, Omi's newer backend writes ``conversation``).
- ``PATCH /v1/conversations/{id}/title?title=``, ``/starred?starred=``, ``/visibility?value=``;
  ``PATCH .../events`` and ``.../action-items`` (``{"events_idx"|"items_idx", "values"}``),
  ``PATCH .../action-items/{idx}`` (``{"old_description", "description"}``),
  ``DELETE .../action-items`` (``{"description"}``, 204 as the app expects),
  ``PATCH .../segments/text`` (``{"segment_id", "text"}``),
  ``PATCH .../segments/assign-bulk`` (``{"segment_ids", "assign_type", "value"}``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Final

import trio
from quart import Blueprint, Response

from server.clock import wall_now
from server.context import AppContext
from server.errors import ApiError
from server.routes._contract import operation
from server.routes._models import (
    ActionItemDelete,
    ActionItemEdit,
    ActionItemsPatch,
    AssignBulk,
    ConversationOut,
    EventsPatch,
    Ignored,
    Processed,
    SegmentTextEdit,
    StarredQuery,
    StatusOk,
    StatusOkConversation,
    TitleQuery,
    VisibilityQuery,
)
from server.routes.deps import ctx_of, json_response
from server.store import Conversation, SegmentRow, User, ValidationError
from server.views import conversation_json, iso

__all__ = ["blueprint"]

LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("omi_conversations", __name__, url_prefix="/v1")

#: How long ``POST /v1/conversations`` waits for a live session to close its conversation.
SESSION_END_WAIT_S: Final = 5.0
#: How long it waits for processing to finish before answering with ``status: processing``.
PROCESS_WAIT_S: Final = 30.0
#: Poll interval of that wait (the store is the source of truth).
PROCESS_POLL_S: Final = 0.25
_OK: Final = {"status": "Ok"}


# -- POST /v1/conversations: "stop and process now" ---------------------------------------------


@blueprint.post("/conversations")
@operation(auth="user", body=Ignored, body_required=False, responses={200: Processed}, errors=[404])
async def process_in_progress(user: User, body: Ignored) -> Response:
    """End the caller's in-progress conversation, process it, answer ``{memory, messages}``.

    A live session holding the conversation ends it itself (as its timeout would, so it emits
    ``memory_processing_started`` and opens a new conversation with the next speech); otherwise
    it is closed here. The answer waits for processing up to :data:`PROCESS_WAIT_S` (then the
    conversation is returned with ``status: processing``). 404 if nothing is in progress; an
    empty conversation is discarded and answered with ``memory: null``.

    Cancellation: if the client goes away, the conversation is still closed and processed (both
    are durable in the store); only the wait ends.
    """
    ctx = ctx_of()
    conversation_id = await _end_in_progress(ctx, user.id)
    if conversation_id is None:
        raise ApiError(404, "not_found", "no conversation in progress")
    conversation = await _wait_processed(ctx, user.id, conversation_id)
    memory = conversation_json(conversation) if conversation is not None else None
    return json_response({"memory": memory, "conversation": memory, "messages": []})


async def _end_in_progress(ctx: AppContext, user_id: str) -> str | None:
    """Close the user's in-progress conversation; return its id (``None``: there was none)."""
    registry = ctx.sessions
    ended: str | None = None
    for session in tuple(registry.sessions_of(user_id)):
        held = session.conversation_id
        if held is None:
            continue
        with trio.move_on_after(SESSION_END_WAIT_S):
            await session.request_conversation_end().wait()
        ended = held
    stored = await ctx.store.get_in_progress(user_id)
    live = registry.live_conversation_ids()
    if stored is not None and stored.id not in live and stored.id != ended:
        outcome = await ctx.store.close_conversation(stored.id, wall_now())
        if outcome == "processing":
            ctx.processing_wakeup.set()
        return stored.id
    return ended


async def _wait_processed(
    ctx: AppContext, user_id: str, conversation_id: str
) -> Conversation | None:
    """The conversation once it is no longer ``processing`` (or at the wait's end)."""
    give_up_at = trio.current_time() + PROCESS_WAIT_S
    conversation = await ctx.store.get_conversation(user_id, conversation_id)
    while (
        conversation is not None
        and conversation.status in ("processing", "in_progress")
        and trio.current_time() < give_up_at
        and not ctx.drain.draining
    ):
        await trio.sleep(PROCESS_POLL_S)
        conversation = await ctx.store.get_conversation(user_id, conversation_id)
    return conversation


# -- helpers -------------------------------------------------------------------------------------


async def _owned(user: User, conversation_id: str) -> tuple[str, Conversation]:
    conversation = await ctx_of().store.get_conversation(user.id, conversation_id)
    if conversation is None:
        raise ApiError(404, "not_found", "no such conversation")
    return user.id, conversation


async def _update(user_id: str, conversation_id: str, fields: dict[str, object]) -> Conversation:
    try:
        updated = await ctx_of().store.update_conversation(
            user_id, conversation_id, fields, now=wall_now()
        )
    except ValidationError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from exc
    if updated is None:
        raise ApiError(404, "not_found", "no such conversation")
    return updated


def _items(conversation: Conversation, key: str) -> list[dict[str, object]]:
    raw = conversation.structured.get(key)
    return [dict(item) for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []


async def _set_structured(
    user_id: str, conversation: Conversation, key: str, items: list[dict[str, object]]
) -> None:
    await _update(user_id, conversation.id, {"structured": {**conversation.structured, key: items}})


# -- PATCH sub-routes ----------------------------------------------------------------------------


_OMI: Final = ["omi"]


@blueprint.patch("/conversations/<conversation_id>/title")
@operation(
    auth="user",
    query=TitleQuery,
    responses={200: StatusOkConversation},
    errors=[404, 422],
    tags=_OMI,
)
async def patch_title(user: User, conversation_id: str, query: TitleQuery) -> Response:
    """``?title=``: rename; answers ``{"status": "Ok", "conversation": ...}``."""
    user_id, _ = await _owned(user, conversation_id)
    updated = await _update(user_id, conversation_id, {"title": query.title})
    return json_response({**_OK, "conversation": conversation_json(updated)})


@blueprint.patch("/conversations/<conversation_id>/starred")
@operation(
    auth="user",
    query=StarredQuery,
    responses={200: StatusOkConversation},
    errors=[404, 422],
    tags=_OMI,
)
async def patch_starred(user: User, conversation_id: str, query: StarredQuery) -> Response:
    """``?starred=true|false``; answers ``{"status": "Ok", "conversation": ...}``."""
    user_id, _ = await _owned(user, conversation_id)
    updated = await _update(user_id, conversation_id, {"starred": query.starred})
    return json_response({**_OK, "conversation": conversation_json(updated)})


@blueprint.patch("/conversations/<conversation_id>/visibility")
@operation(
    auth="user", query=VisibilityQuery, responses={200: StatusOk}, errors=[404, 422], tags=_OMI
)
async def patch_visibility(user: User, conversation_id: str, query: VisibilityQuery) -> Response:
    """``?value=private|shared|public``; answers ``{"status": "Ok"}``."""
    user_id, _ = await _owned(user, conversation_id)
    await _update(user_id, conversation_id, {"visibility": query.value})
    return json_response(_OK)


async def _flags(
    user: User,
    conversation_id: str,
    key: str,
    flags: tuple[str, list[int], list[bool]],
    apply: _Apply,
) -> Response:
    index_name, indexes, values = flags
    if len(indexes) != len(values):
        raise ApiError(422, "invalid_field", f"{index_name} and values must have the same length")
    user_id, conversation = await _owned(user, conversation_id)
    items = _items(conversation, key)
    for index, value in zip(indexes, values, strict=True):
        assert isinstance(index, int) and isinstance(value, bool)
        if 0 <= index < len(items):  # out of range is skipped, as Omi does
            apply(items[index], value, conversation)
    await _set_structured(user_id, conversation, key, items)
    return json_response(_OK)


class _Apply:
    """Sets one flag of a structured item (a small strategy, typed for the route helper)."""

    def __init__(self, field: str, *, stamp: bool) -> None:
        self._field = field
        self._stamp = stamp

    def __call__(self, item: dict[str, object], value: bool, conversation: Conversation) -> None:
        item[self._field] = value
        if self._stamp:  # Omi: completed_at follows completed; created_at back-filled
            item.setdefault("created_at", iso(conversation.created_at))
            item["completed_at"] = iso(wall_now()) if value else None


@blueprint.patch("/conversations/<conversation_id>/events")
@operation(auth="user", body=EventsPatch, responses={200: StatusOk}, errors=[404], tags=_OMI)
async def patch_events(user: User, conversation_id: str, body: EventsPatch) -> Response:
    """``{"events_idx": [..], "values": [..]}``: mark calendar events created."""
    flags = ("events_idx", body.events_idx, body.values)
    return await _flags(user, conversation_id, "events", flags, _Apply("created", stamp=False))


@blueprint.patch("/conversations/<conversation_id>/action-items")
@operation(auth="user", body=ActionItemsPatch, responses={200: StatusOk}, errors=[404], tags=_OMI)
async def patch_action_items(user: User, conversation_id: str, body: ActionItemsPatch) -> Response:
    """``{"items_idx": [..], "values": [..]}``: mark action items completed."""
    apply = _Apply("completed", stamp=True)
    flags = ("items_idx", body.items_idx, body.values)
    return await _flags(user, conversation_id, "action_items", flags, apply)


@blueprint.patch("/conversations/<conversation_id>/action-items/<int:item_idx>")
@operation(auth="user", body=ActionItemEdit, responses={200: StatusOk}, errors=[404], tags=_OMI)
async def patch_action_item(
    user: User, conversation_id: str, item_idx: int, body: ActionItemEdit
) -> Response:
    """``{"old_description", "description"}``: reword the item with the old description."""
    del item_idx  # Omi matches by description, not by the index in the path
    old, new = body.old_description, body.description
    user_id, conversation = await _owned(user, conversation_id)
    items = _items(conversation, "action_items")
    match = next((item for item in items if item.get("description") == old), None)
    if match is None:
        raise ApiError(404, "not_found", "no action item with that description")
    match["description"] = new
    await _set_structured(user_id, conversation, "action_items", items)
    return json_response(_OK)


@blueprint.delete("/conversations/<conversation_id>/action-items")
@operation(auth="user", body=ActionItemDelete, responses={204: None}, errors=[404], tags=_OMI)
async def delete_action_item(user: User, conversation_id: str, body: ActionItemDelete) -> Response:
    """``{"description"}``: remove the action items with that description (204)."""
    description = body.description
    user_id, conversation = await _owned(user, conversation_id)
    items = _items(conversation, "action_items")
    kept = [item for item in items if item.get("description") != description]
    await _set_structured(user_id, conversation, "action_items", kept)
    return Response(b"", status=204)


async def _save_segments(conversation: Conversation, rows: list[SegmentRow]) -> None:
    finished = conversation.finished_at or conversation.created_at
    await ctx_of().store.save_segments(conversation.id, rows, [], finished)


@blueprint.patch("/conversations/<conversation_id>/segments/text")
@operation(auth="user", body=SegmentTextEdit, responses={200: StatusOk}, errors=[404], tags=_OMI)
async def patch_segment_text(user: User, conversation_id: str, body: SegmentTextEdit) -> Response:
    """``{"segment_id", "text"}``: correct one segment's text."""
    segment_id, text = body.segment_id, body.text
    _, conversation = await _owned(user, conversation_id)
    row = next((r for r in conversation.segments if r.id == segment_id), None)
    if row is None:
        raise ApiError(404, "not_found", "no such segment")
    await _save_segments(conversation, [replace(row, text=text)])
    return json_response(_OK)


@blueprint.patch("/conversations/<conversation_id>/segments/assign-bulk")
@operation(
    auth="user", body=AssignBulk, responses={200: ConversationOut}, errors=[404, 409], tags=_OMI
)
async def assign_segments(user: User, conversation_id: str, body: AssignBulk) -> Response:
    """``{"segment_ids", "assign_type": "is_user"|"person_id", "value"}``: who spoke."""
    ids = set(body.segment_ids)
    kind, value = body.assign_type, body.value
    if value == "null" or value is False:
        value = None
    user_id, conversation = await _owned(user, conversation_id)
    known = {row.id for row in conversation.segments}
    if not ids <= known:
        raise ApiError(409, "conflict", "unknown segment ids")
    rows = [
        replace(row, is_user=value is not None, person_id=None)
        if kind == "is_user"
        else replace(row, is_user=False, person_id=str(value) if value is not None else None)
        for row in conversation.segments
        if row.id in ids
    ]
    await _save_segments(conversation, rows)
    updated = await ctx_of().store.get_conversation(user_id, conversation_id)
    if updated is None:
        raise ApiError(404, "not_found", "no such conversation")
    return json_response(conversation_json(updated))
