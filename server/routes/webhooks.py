"""The webhook and app registration API under ``/v1`` (see docs/webhooks.md).

Both surfaces share one implementation; they differ in what an endpoint subscribes to::

    /v1/webhooks   {"kind": one of memory_created | realtime_transcript | audio_bytes |
                    day_summary, "url": ..., "interval_s": 5}
    /v1/apps       {"name": ..., "url": ..., "triggers": [memory_created | realtime_transcript
                    | audio_bytes, ...], "interval_s": 5}

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
import math
from collections.abc import Mapping
from typing import Final

import trio
from quart import Blueprint, Response, request

from server.clock import wall_now
from server.errors import ApiError
from server.routes.deps import ctx_of, current_user, json_response, read_json_object
from server.store import new_id
from server.views import iso
from server.webhooks.models import APP_TRIGGERS, WEBHOOK_KINDS, Delivery, Endpoint, OwnerKind
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
MAX_URL_CHARS: Final = 2048
MAX_NAME_CHARS: Final = 100
DEFAULT_INTERVAL_S: Final = 5.0
MIN_INTERVAL_S: Final = 1.0
MAX_INTERVAL_S: Final = 60.0
RESOLVE_TIMEOUT_S: Final = 5.0
#: How long the previous secret keeps signing after a rotation.
ROTATION_GRACE_S: Final = 24 * 3600.0
DEFAULT_LOG_LIMIT: Final = 20
MAX_LOG_LIMIT: Final = 100

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


# -- validation --------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}")


def _check_fields(body: Mapping[str, object], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _string(body: Mapping[str, object], field: str, max_chars: int) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(field, "must be a non-empty string")
    if len(value) > max_chars:
        raise _invalid(field, f"must be at most {max_chars} characters")
    return value.strip()


def _interval(body: Mapping[str, object]) -> float:
    value = body.get("interval_s", DEFAULT_INTERVAL_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid("interval_s", "must be a number of seconds")
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        raise _invalid("interval_s", f"must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g}")
    return float(value)


def _kinds(body: Mapping[str, object], owner: OwnerKind) -> tuple[str, ...]:
    if owner == "webhook":
        kind = body.get("kind")
        if kind not in WEBHOOK_KINDS:
            raise _invalid("kind", f"must be one of {', '.join(sorted(WEBHOOK_KINDS))}")
        return (str(kind),)
    triggers = body.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        raise _invalid("triggers", "must be a non-empty list")
    if any(t not in APP_TRIGGERS for t in triggers):
        raise _invalid("triggers", f"each must be one of {', '.join(sorted(APP_TRIGGERS))}")
    return tuple(dict.fromkeys(str(t) for t in triggers))


def _enabled(body: Mapping[str, object]) -> bool:
    value = body.get("enabled", True)
    if not isinstance(value, bool):
        raise _invalid("enabled", "must be true or false")
    return value


async def _checked_url(body: Mapping[str, object]) -> str:
    """The body's ``url`` if the SSRF guard admits it and every address it resolves to."""
    url = _string(body, "url", MAX_URL_CHARS)
    allow = ctx_of().settings.allow_loopback_webhooks
    try:
        target = check_url(url, allow_loopback=allow)
        with trio.fail_after(RESOLVE_TIMEOUT_S):
            await resolve_and_check(target.host, target.port, allow_loopback=allow)
    except trio.TooSlowError:
        raise _invalid("url", "the host name did not resolve in time") from None
    except UnresolvableHostError as exc:
        raise _invalid("url", str(exc)) from exc
    except SsrfError as exc:
        raise ApiError(422, "forbidden_url", f"url: {exc}") from exc
    return url


_CREATE_FIELDS: Final = {
    "webhook": frozenset({"kind", "url", "interval_s", "enabled"}),
    "app": frozenset({"name", "url", "triggers", "interval_s", "enabled"}),
}
_PATCH_FIELDS: Final = {
    "webhook": frozenset({"url", "interval_s", "enabled"}),
    "app": frozenset({"name", "url", "triggers", "interval_s", "enabled"}),
}


async def _new_endpoint(owner: OwnerKind, user_id: str, body: Mapping[str, object]) -> Endpoint:
    _check_fields(body, _CREATE_FIELDS[owner])
    kinds = _kinds(body, owner)
    name = _string(body, "name", MAX_NAME_CHARS) if owner == "app" else ""
    interval_s, enabled = _interval(body), _enabled(body)
    url = await _checked_url(body)
    now = wall_now()
    return Endpoint(
        id=new_id(),
        user_id=user_id,
        owner_kind=owner,
        name=name,
        url=url,
        kinds=kinds,
        interval_s=interval_s,
        secret=new_secret(),
        previous_secret=None,
        previous_secret_until=None,
        enabled=enabled,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
    )


async def _patch_values(owner: OwnerKind, body: Mapping[str, object]) -> dict[str, object]:
    await trio.lowlevel.checkpoint()
    _check_fields(body, _PATCH_FIELDS[owner])
    values: dict[str, object] = {}
    if "name" in body:
        values["name"] = _string(body, "name", MAX_NAME_CHARS)
    if "triggers" in body:
        values["kinds_json"] = json.dumps(list(_kinds(body, owner)))
    if "interval_s" in body:
        values["interval_s"] = _interval(body)
    if "enabled" in body:
        values["enabled"] = int(_enabled(body))
    if "url" in body:
        values["url"] = await _checked_url(body)
    return values


def _not_found(owner: OwnerKind) -> ApiError:
    return ApiError(404, "not_found", f"no such {owner}")


def _log_limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_LOG_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOG_LIMIT:
        raise ApiError(400, "invalid_parameter", f"limit must be an integer in 1..{MAX_LOG_LIMIT}")
    return int(raw)


# -- handlers ----------------------------------------------------------------------------------


async def _create(owner: OwnerKind) -> Response:
    user = await current_user()
    endpoint = await _new_endpoint(owner, user.id, await read_json_object())
    api = _api()
    try:
        await api.repo.create_endpoint(endpoint, MAX_ENDPOINTS_PER_USER)
    except LimitReachedError as exc:
        raise ApiError(409, "limit_reached", str(exc)) from exc
    await api.refresh_user(user.id)
    return json_response({**endpoint_json(endpoint), "secret": endpoint.secret}, 201)


async def _list(owner: OwnerKind) -> Response:
    user = await current_user()
    endpoints = await _api().repo.list_endpoints(user.id, owner)
    return json_response({f"{owner}s": [endpoint_json(e) for e in endpoints]})


async def _get(owner: OwnerKind, endpoint_id: str) -> Response:
    user = await current_user()
    endpoint = await _api().repo.get_endpoint(user.id, owner, endpoint_id)
    if endpoint is None:
        raise _not_found(owner)
    return json_response(endpoint_json(endpoint))


async def _patch(owner: OwnerKind, endpoint_id: str) -> Response:
    user = await current_user()
    api = _api()
    if await api.repo.get_endpoint(user.id, owner, endpoint_id) is None:
        raise _not_found(owner)
    values = await _patch_values(owner, await read_json_object())
    endpoint = await api.repo.update_endpoint(user.id, owner, endpoint_id, values, wall_now())
    if endpoint is None:
        raise _not_found(owner)
    await api.refresh_user(user.id)
    return json_response(endpoint_json(endpoint))


async def _delete(owner: OwnerKind, endpoint_id: str) -> Response:
    user = await current_user()
    api = _api()
    if not await api.repo.delete_endpoint(user.id, owner, endpoint_id):
        raise _not_found(owner)
    await api.refresh_user(user.id)
    return Response(b"", status=204)


async def _rotate(owner: OwnerKind, endpoint_id: str) -> Response:
    user = await current_user()
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


async def _deliveries(owner: OwnerKind, endpoint_id: str) -> Response:
    user = await current_user()
    deliveries = await _api().repo.list_deliveries(user.id, owner, endpoint_id, _log_limit())
    if deliveries is None:
        raise _not_found(owner)
    return json_response({"deliveries": [delivery_json(d) for d in deliveries]})


async def _redeliver(owner: OwnerKind, endpoint_id: str, delivery_id: str) -> Response:
    user = await current_user()
    api = _api()
    delivery = await api.repo.redeliver(user.id, owner, endpoint_id, delivery_id, wall_now())
    if delivery is None:
        raise ApiError(404, "not_found", "no such delivery")
    api.wake_delivery()
    return json_response({"delivery": delivery_json(delivery)}, 202)


def _register(owner: OwnerKind) -> None:
    base = f"/{owner}s"
    item = f"{base}/<endpoint_id>"

    async def create() -> Response:
        return await _create(owner)

    async def list_() -> Response:
        return await _list(owner)

    async def get(endpoint_id: str) -> Response:
        return await _get(owner, endpoint_id)

    async def patch(endpoint_id: str) -> Response:
        return await _patch(owner, endpoint_id)

    async def delete(endpoint_id: str) -> Response:
        return await _delete(owner, endpoint_id)

    async def rotate(endpoint_id: str) -> Response:
        return await _rotate(owner, endpoint_id)

    async def deliveries(endpoint_id: str) -> Response:
        return await _deliveries(owner, endpoint_id)

    async def redeliver(endpoint_id: str, delivery_id: str) -> Response:
        return await _redeliver(owner, endpoint_id, delivery_id)

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
