"""The user API under ``/v1``: conversations and WebSocket tickets."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from urllib.parse import urlencode

from quart import Blueprint, Response, request

from server.clock import wall_now
from server.errors import ApiError
from server.routes.deps import ctx_of, current_user, json_response, read_json_object
from server.store import MAX_OFFSET, Conversation, ValidationError
from server.views import conversation_json

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__, url_prefix="/v1")

STATUSES = frozenset({"in_progress", "processing", "completed", "failed"})
#: Omi's default when ``statuses`` is absent or empty (in-progress ones are the live session's).
DEFAULT_STATUSES = frozenset({"processing", "completed"})
DEFAULT_PAGE = 100
MAX_PAGE = 100
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _bad(name: str, what: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name} {what}")


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise _bad(name, "must be a Unix time in seconds") from None


def _date_arg(name: str) -> float | None:
    """An ISO 8601 date-time (naive = UTC; what Omi's app sends) or Unix seconds."""
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad(name, "must be an ISO 8601 date-time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _bool_arg(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise _bad(name, "must be true or false")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer >= ``low``; values above ``high`` are clamped to it (pages are capped)."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) < low:
        raise _bad(name, f"must be an integer >= {low}")
    return min(int(raw), high)


def _statuses_arg() -> frozenset[str]:
    """``statuses=a,b`` (Omi), else the older ``status=a``, else processing + completed."""
    raw = request.args.get("statuses", "") or request.args.get("status", "")
    wanted = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = wanted - STATUSES
    if unknown:
        allowed = ", ".join(sorted(STATUSES))
        raise _bad("statuses", f"must be among {allowed} (got {sorted(unknown)[0][:20]!r})")
    return wanted or DEFAULT_STATUSES


def _until_arg() -> float | None:
    """``end_date`` is inclusive (Omi); the older ``until`` is exclusive."""
    end = _date_arg("end_date")
    if end is not None:
        return math.nextafter(end, math.inf)
    return _float_arg("until")


def _next_link(cursor: str) -> str:
    """``Link: <...>; rel="next"``: the same query with ``cursor`` and without ``offset``."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("cursor", "offset")]
    return f'<{request.path}?{urlencode([*args, ("cursor", cursor)])}>; rel="next"'


@blueprint.get("/conversations")
async def list_conversations() -> Response:
    """Omi's list: a bare JSON array, newest first, items with ``transcript_segments``.

    Filters: ``statuses`` (default processing,completed), ``include_discarded`` (default
    true), ``starred``, ``start_date``/``end_date`` (inclusive); paging by ``limit`` +
    ``offset`` (Omi) or by keyset: the next page's cursor is in ``X-Next-Cursor`` and ``Link``.
    """
    user = await current_user()
    since = _date_arg("start_date")
    try:
        page = await ctx_of().store.list_conversations(
            user.id,
            statuses=_statuses_arg(),
            since=since if since is not None else _float_arg("since"),
            until=_until_arg(),
            include_discarded=_bool_arg("include_discarded") is not False,
            starred=_bool_arg("starred"),
            cursor=request.args.get("cursor") or None,
            offset=_int_arg("offset", 0, 0, MAX_OFFSET),
            limit=_int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE),
            with_segments=True,
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from exc
    headers = {}
    if page.next_cursor is not None:
        headers = {"X-Next-Cursor": page.next_cursor, "Link": _next_link(page.next_cursor)}
    return json_response([conversation_json(c) for c in page.items], headers=headers)


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
    if "structured" in fields:  # edited through Omi's sub-routes (events, action-items) only
        raise ApiError(422, "invalid_field", "structured: is not an editable field")
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
