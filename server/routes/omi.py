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
from quart import Blueprint, Response, request

from server.clock import wall_now
from server.context import AppContext
from server.errors import ApiError
from server.routes.deps import ctx_of, current_user, json_response, read_json_object
from server.store import VISIBILITIES, Conversation, SegmentRow, ValidationError
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
async def process_in_progress() -> Response:
    """End the caller's in-progress conversation, process it, answer ``{memory, messages}``.

    A live session holding the conversation ends it itself (as its timeout would, so it emits
    ``memory_processing_started`` and opens a new conversation with the next speech); otherwise
    it is closed here. The answer waits for processing up to :data:`PROCESS_WAIT_S` (then the
    conversation is returned with ``status: processing``). 404 if nothing is in progress; an
    empty conversation is discarded and answered with ``memory: null``.

    Cancellation: if the client goes away, the conversation is still closed and processed (both
    are durable in the store); only the wait ends.
    """
    user = await current_user()
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


async def _owned(conversation_id: str) -> tuple[str, Conversation]:
    user = await current_user()
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


def _query(name: str) -> str:
    value = request.args.get(name)
    if value is None:
        raise ApiError(422, "invalid_field", f"{name}: the query parameter is required")
    return value


def _query_bool(name: str) -> bool:
    value = _query(name).lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(422, "invalid_field", f"{name}: must be true or false")
    return value in ("true", "1")


def _list_of(body: dict[str, object], name: str, kind: type) -> list[object]:
    value = body.get(name)
    if not isinstance(value, list) or not all(
        isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in value
    ):
        raise ApiError(422, "invalid_field", f"{name}: must be a list of {kind.__name__}")
    return value


def _string(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"{name}: must be a string")
    return value


def _items(conversation: Conversation, key: str) -> list[dict[str, object]]:
    raw = conversation.structured.get(key)
    return [dict(item) for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []


async def _set_structured(
    user_id: str, conversation: Conversation, key: str, items: list[dict[str, object]]
) -> None:
    await _update(user_id, conversation.id, {"structured": {**conversation.structured, key: items}})


# -- PATCH sub-routes ----------------------------------------------------------------------------


@blueprint.patch("/conversations/<conversation_id>/title")
async def patch_title(conversation_id: str) -> Response:
    """``?title=``: rename; answers ``{"status": "Ok", "conversation": ...}``."""
    user_id, _ = await _owned(conversation_id)
    updated = await _update(user_id, conversation_id, {"title": _query("title")})
    return json_response({**_OK, "conversation": conversation_json(updated)})


@blueprint.patch("/conversations/<conversation_id>/starred")
async def patch_starred(conversation_id: str) -> Response:
    """``?starred=true|false``; answers ``{"status": "Ok", "conversation": ...}``."""
    user_id, _ = await _owned(conversation_id)
    updated = await _update(user_id, conversation_id, {"starred": _query_bool("starred")})
    return json_response({**_OK, "conversation": conversation_json(updated)})


@blueprint.patch("/conversations/<conversation_id>/visibility")
async def patch_visibility(conversation_id: str) -> Response:
    """``?value=private|shared|public``; answers ``{"status": "Ok"}``."""
    value = _query("value")
    if value not in VISIBILITIES:
        allowed = ", ".join(sorted(VISIBILITIES))
        raise ApiError(422, "invalid_field", f"value: must be one of {allowed}")
    user_id, _ = await _owned(conversation_id)
    await _update(user_id, conversation_id, {"visibility": value})
    return json_response(_OK)


async def _flags(conversation_id: str, key: str, index_name: str, apply: _Apply) -> Response:
    body = await read_json_object()
    indexes = _list_of(body, index_name, int)
    values = _list_of(body, "values", bool)
    if len(indexes) != len(values):
        raise ApiError(422, "invalid_field", f"{index_name} and values must have the same length")
    user_id, conversation = await _owned(conversation_id)
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
async def patch_events(conversation_id: str) -> Response:
    """``{"events_idx": [..], "values": [..]}``: mark calendar events created."""
    return await _flags(conversation_id, "events", "events_idx", _Apply("created", stamp=False))


@blueprint.patch("/conversations/<conversation_id>/action-items")
async def patch_action_items(conversation_id: str) -> Response:
    """``{"items_idx": [..], "values": [..]}``: mark action items completed."""
    apply = _Apply("completed", stamp=True)
    return await _flags(conversation_id, "action_items", "items_idx", apply)


@blueprint.patch("/conversations/<conversation_id>/action-items/<int:item_idx>")
async def patch_action_item(conversation_id: str, item_idx: int) -> Response:
    """``{"old_description", "description"}``: reword the item with the old description."""
    del item_idx  # Omi matches by description, not by the index in the path
    body = await read_json_object()
    old, new = _string(body, "old_description"), _string(body, "description")
    user_id, conversation = await _owned(conversation_id)
    items = _items(conversation, "action_items")
    match = next((item for item in items if item.get("description") == old), None)
    if match is None:
        raise ApiError(404, "not_found", "no action item with that description")
    match["description"] = new
    await _set_structured(user_id, conversation, "action_items", items)
    return json_response(_OK)


@blueprint.delete("/conversations/<conversation_id>/action-items")
async def delete_action_item(conversation_id: str) -> Response:
    """``{"description"}``: remove the action items with that description (204)."""
    description = _string(await read_json_object(), "description")
    user_id, conversation = await _owned(conversation_id)
    items = _items(conversation, "action_items")
    kept = [item for item in items if item.get("description") != description]
    await _set_structured(user_id, conversation, "action_items", kept)
    return Response(b"", status=204)


async def _save_segments(conversation: Conversation, rows: list[SegmentRow]) -> None:
    finished = conversation.finished_at or conversation.created_at
    await ctx_of().store.save_segments(conversation.id, rows, [], finished)


@blueprint.patch("/conversations/<conversation_id>/segments/text")
async def patch_segment_text(conversation_id: str) -> Response:
    """``{"segment_id", "text"}``: correct one segment's text."""
    body = await read_json_object()
    segment_id, text = _string(body, "segment_id"), _string(body, "text")
    _, conversation = await _owned(conversation_id)
    row = next((r for r in conversation.segments if r.id == segment_id), None)
    if row is None:
        raise ApiError(404, "not_found", "no such segment")
    await _save_segments(conversation, [replace(row, text=text)])
    return json_response(_OK)


@blueprint.patch("/conversations/<conversation_id>/segments/assign-bulk")
async def assign_segments(conversation_id: str) -> Response:
    """``{"segment_ids", "assign_type": "is_user"|"person_id", "value"}``: who spoke."""
    body = await read_json_object()
    ids = set(_list_of(body, "segment_ids", str))
    kind, value = body.get("assign_type"), body.get("value")
    if kind not in ("is_user", "person_id"):
        raise ApiError(400, "invalid_parameter", "assign_type must be is_user or person_id")
    if value == "null" or value is False:
        value = None
    if value is not None and not isinstance(value, str | bool):
        raise ApiError(422, "invalid_field", "value: must be a string or null")
    user_id, conversation = await _owned(conversation_id)
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
