"""The webhook and app registration API under ``/v1`` (see docs/webhooks.md).

Both surfaces share one implementation; they differ in what an endpoint subscribes to::

    /v1/webhooks   {"kind": one of memory_created | realtime_transcript | audio_bytes |
                    day_summary, "url": ..., "interval_s": 5, "delivery": "at_least_once"}
    /v1/apps       {"name": ..., "url": ..., "triggers": [memory_created | realtime_transcript
                    | audio_bytes, ...], "interval_s": 5, "delivery": "once"}

``delivery`` (durable kinds): ``once`` = one try, never retried (Omi apps' default: they do not
deduplicate); ``at_least_once`` = retried on the schedule (developer webhooks' default).

    POST   /v1/{webhooks,apps}                         201 {..., "secret": "whsec_..."} (once)
    GET    /v1/{webhooks,apps}                         list (no secrets)
    GET    /v1/{webhooks,apps}/<id>                    one
    PATCH  /v1/{webhooks,apps}/<id>                    url, interval_s, enabled (+ name, triggers)
    DELETE /v1/{webhooks,apps}/<id>                    204
    POST   /v1/{webhooks,apps}/<id>/rotate-secret      200 {"secret": ...}; old one signs 24 h more
    GET    /v1/{webhooks,apps}/<id>/deliveries         delivery log, newest first
    POST   /v1/{webhooks,apps}/<id>/deliveries/<delivery_id>/redeliver   202

Every URL passes the SSRF guard at registration (syntax, then every resolved address); it is
checked again on every connection by the delivery transport.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response

from server.clock import wall_now
from server.errors import ApiError
from server.routes._contract import operation
from server.routes._models import (
    AppCreate,
    AppList,
    AppOut,
    AppPatch,
    DeliveryList,
    DeliveryQuery,
    Redelivery,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookPatch,
)
from server.routes.deps import ctx_of, json_response
from server.store import User, new_id
from server.views import iso
from server.webhooks.models import WEBHOOK_KINDS, Delivery, Endpoint, OwnerKind
from server.webhooks.repository import LimitReachedError
from server.webhooks.service import WebhookApi
from server.webhooks.signing import new_secret
from server.webhooks.ssrf import (
    SsrfError,
    UnresolvableHostError,
    check_url,
    resolve_and_check,
)

__all__ = [
    "MAX_ENDPOINTS_PER_USER",
    "ROTATION_GRACE_S",
    "blueprint",
    "delivery_json",
    "endpoint_json",
]

MAX_ENDPOINTS_PER_USER: Final = 20
RESOLVE_TIMEOUT_S: Final = 5.0
#: How long the previous secret keeps signing after a rotation.
ROTATION_GRACE_S: Final = 24 * 3600.0

blueprint = Blueprint("webhooks", __name__, url_prefix="/v1")


def _api() -> WebhookApi:
    return ctx_of().webhooks


# -- JSON shapes -------------------------------------------------------------------------------


def endpoint_json(endpoint: Endpoint) -> dict[str, object]:
    """An endpoint as the API shows it (never its secrets)."""
    body: dict[str, object] = {"id": endpoint.id}
    if endpoint.owner_kind == "app":
        body.update(name=endpoint.name, triggers=list(endpoint.kinds))
    else:
        body["kind"] = endpoint.kinds[0]
    grace = endpoint.previous_secret_until
    body.update(
        url=endpoint.url,
        interval_s=endpoint.interval_s,
        enabled=endpoint.enabled,
        delivery=endpoint.delivery,
        disabled_reason=endpoint.disabled_reason,
        created_at=iso(endpoint.created_at),
        updated_at=iso(endpoint.updated_at),
        previous_secret_valid_until=iso(grace) if grace and grace > wall_now() else None,
    )
    return body


def delivery_json(delivery: Delivery) -> dict[str, object]:
    """A delivery and its attempts as the log shows them."""
    return {
        "id": delivery.id,
        "kind": delivery.kind,
        "message_id": delivery.message_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
        "attempt_log": [
            {
                "attempt": a.attempt,
                "at": iso(a.started_at),
                "duration_s": round(a.duration_s, 4),
                "status": a.status,
                "error": a.error,
            }
            for a in delivery.attempt_log
        ],
    }


# -- validation (shapes, types and ranges are the models'; here what needs the network) -----


async def _checked_url(url: str) -> str:
    """``url`` if the SSRF guard admits it and every address it resolves to."""
    allow = ctx_of().settings.allow_loopback_webhooks
    try:
        target = check_url(url, allow_loopback=allow)
        with trio.fail_after(RESOLVE_TIMEOUT_S):
            await resolve_and_check(target.host, target.port, allow_loopback=allow)
    except trio.TooSlowError:
        raise ApiError(422, "invalid_field", "url: the host name did not resolve in time") from None
    except UnresolvableHostError as exc:
        raise ApiError(422, "invalid_field", f"url: {exc}") from exc
    except SsrfError as exc:
        raise ApiError(422, "forbidden_url", f"url: {exc}") from exc
    return url


async def _new_endpoint(
    owner: OwnerKind, user_id: str, body: WebhookCreate | AppCreate
) -> Endpoint:
    kinds: tuple[str, ...]
    if isinstance(body, AppCreate):
        name, kinds = body.name, tuple(dict.fromkeys(body.triggers))
    else:
        name, kinds = "", (body.kind,)
    url = await _checked_url(body.url)
    now = wall_now()
    return Endpoint(
        id=new_id(),
        user_id=user_id,
        owner_kind=owner,
        name=name,
        url=url,
        kinds=kinds,
        interval_s=body.interval_s,
        secret=new_secret(),
        previous_secret=None,
        previous_secret_until=None,
        enabled=body.enabled,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
        delivery=body.delivery,
    )


async def _patch_values(body: Mapping[str, Any]) -> dict[str, object]:
    """The column values of a validated ``WebhookPatch`` / ``AppPatch``."""
    values: dict[str, object] = {}
    if "name" in body:
        values["name"] = body["name"]
    if "triggers" in body:
        values["kinds_json"] = json.dumps(list(dict.fromkeys(body["triggers"])))
    if "interval_s" in body:
        values["interval_s"] = float(body["interval_s"])
    if "enabled" in body:
        values["enabled"] = int(body["enabled"])
    if "delivery" in body:
        values["delivery"] = body["delivery"]
    if "url" in body:
        values["url"] = await _checked_url(body["url"])
    else:
        await trio.lowlevel.checkpoint()
    return values


def _not_found(owner: OwnerKind) -> ApiError:
    return ApiError(404, "not_found", f"no such {owner}")


# -- handlers ----------------------------------------------------------------------------------


async def _create(owner: OwnerKind, user: User, body: WebhookCreate | AppCreate) -> Response:
    endpoint = await _new_endpoint(owner, user.id, body)
    api = _api()
    try:
        await api.repo.create_endpoint(endpoint, MAX_ENDPOINTS_PER_USER)
    except LimitReachedError as exc:
        raise ApiError(409, "limit_reached", str(exc)) from exc
    await api.refresh_user(user.id)
    return json_response({**endpoint_json(endpoint), "secret": endpoint.secret}, 201)


async def _list(owner: OwnerKind, user: User) -> Response:
    endpoints = await _api().repo.list_endpoints(user.id, owner)
    return json_response({f"{owner}s": [endpoint_json(e) for e in endpoints]})


async def _get(owner: OwnerKind, user: User, endpoint_id: str) -> Response:
    endpoint = await _api().repo.get_endpoint(user.id, owner, endpoint_id)
    if endpoint is None:
        raise _not_found(owner)
    return json_response(endpoint_json(endpoint))


async def _patch(
    owner: OwnerKind, user: User, endpoint_id: str, body: Mapping[str, Any]
) -> Response:
    api = _api()
    if await api.repo.get_endpoint(user.id, owner, endpoint_id) is None:
        raise _not_found(owner)
    values = await _patch_values(body)
    endpoint = await api.repo.update_endpoint(user.id, owner, endpoint_id, values, wall_now())
    if endpoint is None:
        raise _not_found(owner)
    await api.refresh_user(user.id)
    return json_response(endpoint_json(endpoint))


async def _delete(owner: OwnerKind, user: User, endpoint_id: str) -> Response:
    api = _api()
    if not await api.repo.delete_endpoint(user.id, owner, endpoint_id):
        raise _not_found(owner)
    await api.refresh_user(user.id)
    return Response(b"", status=204)


async def _rotate(owner: OwnerKind, user: User, endpoint_id: str) -> Response:
    api = _api()
    now = wall_now()
    secret = new_secret()
    endpoint = await api.repo.rotate_secret(
        user.id, owner, endpoint_id, secret, now + ROTATION_GRACE_S, now
    )
    if endpoint is None:
        raise _not_found(owner)
    await api.refresh_user(user.id)
    return json_response({**endpoint_json(endpoint), "secret": secret})


async def _deliveries(
    owner: OwnerKind, user: User, endpoint_id: str, query: DeliveryQuery
) -> Response:
    deliveries = await _api().repo.list_deliveries(user.id, owner, endpoint_id, query.limit)
    if deliveries is None:
        raise _not_found(owner)
    return json_response({"deliveries": [delivery_json(d) for d in deliveries]})


async def _redeliver(owner: OwnerKind, user: User, endpoint_id: str, delivery_id: str) -> Response:
    api = _api()
    delivery = await api.repo.redeliver(user.id, owner, endpoint_id, delivery_id, wall_now())
    if delivery is None:
        raise ApiError(404, "not_found", "no such delivery")
    api.wake_delivery()
    return json_response({"delivery": delivery_json(delivery)}, 202)


_View = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Shapes:
    """The models of one surface (webhooks or apps)."""

    create: type[WebhookCreate] | type[AppCreate]
    patch: Any
    one: type[WebhookOut] | type[AppOut]
    many: type[WebhookList] | type[AppList]


_SHAPES: Final[Mapping[OwnerKind, _Shapes]] = {
    "webhook": _Shapes(WebhookCreate, WebhookPatch, WebhookOut, WebhookList),
    "app": _Shapes(AppCreate, AppPatch, AppOut, AppList),
}


def _register(owner: OwnerKind) -> None:
    """Declare the eight routes of ``/v1/{owner}s`` (typed, documented: see ``operation``)."""
    base = f"/{owner}s"
    item = f"{base}/<endpoint_id>"
    shapes = _SHAPES[owner]
    tags = [f"{owner}s"]

    def declare(name: str, **kwargs: Any) -> Callable[[_View], _View]:
        return operation(auth="user", operation_id=f"{owner}_{name}", tags=tags, **kwargs)

    @declare("create", body=shapes.create, responses={201: shapes.one}, errors=[409])
    async def create(user: User, body: WebhookCreate | AppCreate) -> Response:
        return await _create(owner, user, body)

    @declare("list", responses={200: shapes.many})
    async def list_(user: User) -> Response:
        return await _list(owner, user)

    @declare("get", responses={200: shapes.one}, errors=[404])
    async def get(user: User, endpoint_id: str) -> Response:
        return await _get(owner, user, endpoint_id)

    @declare("patch", body=shapes.patch, responses={200: shapes.one}, errors=[404])
    async def patch(user: User, endpoint_id: str, body: Mapping[str, Any]) -> Response:
        return await _patch(owner, user, endpoint_id, body)

    @declare("delete", responses={204: None}, errors=[404])
    async def delete(user: User, endpoint_id: str) -> Response:
        return await _delete(owner, user, endpoint_id)

    @declare("rotate_secret", responses={200: shapes.one}, errors=[404])
    async def rotate(user: User, endpoint_id: str) -> Response:
        return await _rotate(owner, user, endpoint_id)

    @declare("deliveries", query=DeliveryQuery, responses={200: DeliveryList}, errors=[404])
    async def deliveries(user: User, endpoint_id: str, query: DeliveryQuery) -> Response:
        return await _deliveries(owner, user, endpoint_id, query)

    @declare("redeliver", responses={202: Redelivery}, errors=[404])
    async def redeliver(user: User, endpoint_id: str, delivery_id: str) -> Response:
        return await _redeliver(owner, user, endpoint_id, delivery_id)

    rules = (
        (base, "create", create, ["POST"]),
        (base, "list", list_, ["GET"]),
        (item, "get", get, ["GET"]),
        (item, "patch", patch, ["PATCH"]),
        (item, "delete", delete, ["DELETE"]),
        (f"{item}/rotate-secret", "rotate", rotate, ["POST"]),
        (f"{item}/deliveries", "deliveries", deliveries, ["GET"]),
        (f"{item}/deliveries/<delivery_id>/redeliver", "redeliver", redeliver, ["POST"]),
    )
    for rule, name, view, methods in rules:
        blueprint.add_url_rule(rule, f"{owner}_{name}", view, methods=methods)


_register("webhook")
_register("app")


# -- Omi's developer-webhook routes (backend/routers/users.py) ----------------------------------
#
# Omi keeps one URL per webhook type; here that is the user's oldest registration of that kind
# (created on first use, its secret available through ``/v1/webhooks/<id>/rotate-secret``).
# ``audio_bytes`` URLs carry their interval as Omi stores them: ``"<url>,<seconds>"``.


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}")


def _developer_kind(wtype: str) -> str:
    if wtype not in WEBHOOK_KINDS:
        raise _invalid("type", f"must be one of {', '.join(sorted(WEBHOOK_KINDS))}")
    return wtype


async def _developer_endpoint(user_id: str, kind: str) -> Endpoint | None:
    endpoints = await _api().repo.list_endpoints(user_id, "webhook")
    mine = [e for e in endpoints if e.kinds == (kind,)]
    return min(mine, key=lambda e: (e.created_at, e.id)) if mine else None


def _omi_url(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return ""
    if endpoint.kinds == ("audio_bytes",):
        return f"{endpoint.url},{endpoint.interval_s:g}"
    return endpoint.url


def _split_omi_url(kind: str, raw: object) -> tuple[str, dict[str, object]]:
    """``(url, body for the registration)`` from Omi's ``{"url": ...}`` ("" = disable)."""
    if not isinstance(raw, str):
        raise _invalid("url", "must be a string")
    url, interval = raw.strip(), None
    if kind == "audio_bytes" and "," in url:
        url, _, seconds = url.rpartition(",")
        try:
            interval = float(seconds) if seconds.strip() else None
        except ValueError:
            raise _invalid("url", "must be '<url>,<seconds>' for audio_bytes") from None
    body: dict[str, object] = {"url": url}
    if interval is not None:
        body["interval_s"] = interval
    return url, body


def _developer_create(kind: str, body: Mapping[str, object]) -> WebhookCreate:
    try:
        return WebhookCreate.model_validate({**body, "kind": kind})
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "url"
        raise _invalid(field, error["msg"]) from None


async def _set_developer_webhook(user: User, wtype: str, raw_url: str) -> Response:
    """``POST /v1/users/developer/webhook/<type>`` ``{"url": ...}``; an empty URL disables."""
    kind = _developer_kind(wtype)
    url, body = _split_omi_url(kind, raw_url)
    api = _api()
    existing = await _developer_endpoint(user.id, kind)
    if not url:
        if existing is not None:
            values: dict[str, object] = {"enabled": 0}
            await api.repo.update_endpoint(user.id, "webhook", existing.id, values, wall_now())
    elif existing is None:
        endpoint = await _new_endpoint("webhook", user.id, _developer_create(kind, body))
        try:
            await api.repo.create_endpoint(endpoint, MAX_ENDPOINTS_PER_USER)
        except LimitReachedError as exc:
            raise ApiError(409, "limit_reached", str(exc)) from exc
    else:
        _developer_create(kind, body)  # the same checks as on creation
        values = await _patch_values(body)
        await api.repo.update_endpoint(user.id, "webhook", existing.id, values, wall_now())
    await api.refresh_user(user.id)
    return json_response({"status": "ok"})


async def _get_developer_webhook(user: User, wtype: str) -> Response:
    """``GET /v1/users/developer/webhook/<type>`` -> ``{"url": ...}`` (``""`` if none)."""
    kind = _developer_kind(wtype)
    return json_response({"url": _omi_url(await _developer_endpoint(user.id, kind))})


async def _toggle_developer_webhook(user: User, wtype: str, enabled: bool) -> Response:
    kind = _developer_kind(wtype)
    api = _api()
    existing = await _developer_endpoint(user.id, kind)
    if existing is not None:
        values: dict[str, object] = {"enabled": int(enabled)}
        await api.repo.update_endpoint(user.id, "webhook", existing.id, values, wall_now())
        await api.refresh_user(user.id)
    return json_response({"status": "ok"})


class DeveloperUrl(BaseModel):
    """Omi's ``{"url": ...}``: ``""`` disables; ``audio_bytes`` takes ``"<url>,<seconds>"``."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(max_length=2100)


class DeveloperAck(BaseModel):
    """Omi's acknowledgement (lower-case, as ``backend/routers/users.py`` answers)."""

    status: Literal["ok"]


class DeveloperUrlOut(BaseModel):
    """The URL of a developer webhook (``""`` if none)."""

    url: str


class DeveloperStatus(BaseModel):
    """Whether each developer webhook type is registered and enabled."""

    audio_bytes: bool
    day_summary: bool
    memory_created: bool
    realtime_transcript: bool


def _developer(**kwargs: Any) -> Callable[[_View], _View]:
    return operation(auth="user", tags=["omi developer webhooks"], **kwargs)


@blueprint.post("/users/developer/webhook/<wtype>")
@_developer(body=DeveloperUrl, responses={200: DeveloperAck}, errors=[409, 422])
async def set_developer_webhook(user: User, wtype: str, body: DeveloperUrl) -> Response:
    """Omi: set the URL of the developer webhook of ``wtype`` (``""`` disables it)."""
    return await _set_developer_webhook(user, wtype, body.url)


@blueprint.get("/users/developer/webhook/<wtype>")
@_developer(responses={200: DeveloperUrlOut}, errors=[422])
async def get_developer_webhook(user: User, wtype: str) -> Response:
    """Omi: the URL of the developer webhook of ``wtype``."""
    return await _get_developer_webhook(user, wtype)


@blueprint.post("/users/developer/webhook/<wtype>/disable")
@_developer(responses={200: DeveloperAck}, errors=[422])
async def disable_developer_webhook(user: User, wtype: str) -> Response:
    """Omi: stop calling the developer webhook of ``wtype`` (its URL is kept)."""
    return await _toggle_developer_webhook(user, wtype, False)


@blueprint.post("/users/developer/webhook/<wtype>/enable")
@_developer(responses={200: DeveloperAck}, errors=[422])
async def enable_developer_webhook(user: User, wtype: str) -> Response:
    """Omi: call the developer webhook of ``wtype`` again."""
    return await _toggle_developer_webhook(user, wtype, True)


@blueprint.get("/users/developer/webhooks/status")
@_developer(responses={200: DeveloperStatus})
async def developer_webhooks_status(user: User) -> Response:
    """Omi: ``{kind: enabled}`` for the four developer webhook types."""
    endpoints = await _api().repo.list_endpoints(user.id, "webhook")
    enabled = {kind for e in endpoints if e.enabled for kind in e.kinds}
    return json_response({kind: kind in enabled for kind in sorted(WEBHOOK_KINDS)})
