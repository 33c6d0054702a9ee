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
from typing import Any, Final

import trio
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
from server.webhooks.models import Delivery, Endpoint, OwnerKind
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
