"""The ASGI application: a thin dispatcher in front of a quart-trio app.

``/v4/listen`` WebSocket upgrades go straight to the raw-ASGI listen handler (the per-frame hot
path must not pay Quart's per-message overhead); everything else, lifespan included, goes to the
quart-trio app built by :func:`create_quart_app`. No I/O happens at import or in the factory.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, cast

from quart import Quart, Response, current_app, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from lanes import LaneClosedError, LaneFullError
from server.context import AppContext
from server.errors import ApiError, error_body

__all__ = ["create_app", "create_quart_app", "ctx_of", "json_response"]

LOGGER = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that keep answering while the server drains (probes must see the truth).
DRAIN_EXEMPT = frozenset({"/health", "/ready"})


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact JSON response with the right content type."""
    body = json.dumps(payload, separators=(",", ":"), default=_json_default)
    return Response(body, status=status, headers=headers, content_type="application/json")


def _json_default(value: object) -> object:
    """Statistics records and friends: dataclasses (shallow, recursed by json), mappings,
    enums, sets; anything else as its string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def ctx_of(app: Quart | None = None) -> AppContext:
    """The :class:`AppContext` of the running app."""
    target = app if app is not None else current_app
    return target.extensions["trioscribe"]  # type: ignore[no-any-return]


def _drain_gate() -> Response | None:
    ctx = ctx_of()
    if ctx.drain.draining and request.path not in DRAIN_EXEMPT:
        retry = str(max(1, round(ctx.settings.graceful_shutdown_s)))
        return json_response(
            error_body("shutting_down", "the server is shutting down; retry on another instance"),
            503,
            {"Retry-After": retry},
        )
    return None


def _install_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return json_response(error_body(exc.code, exc.message), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        allowed = getattr(exc, "valid_methods", None)
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return json_response(error_body(code, exc.description or exc.name), status, headers)

    @app.errorhandler(LaneFullError)
    async def _overloaded(exc: LaneFullError) -> Response:
        LOGGER.warning("shedding load: %s", exc)
        body = error_body("overloaded", "the server is busy; retry shortly")
        return json_response(body, 503, {"Retry-After": "1"})

    @app.errorhandler(LaneClosedError)
    async def _closed(exc: LaneClosedError) -> Response:
        body = error_body("shutting_down", "the server is shutting down")
        return json_response(body, 503, {"Retry-After": "1"})


def create_quart_app(ctx: AppContext) -> QuartTrio:
    """Build the quart-trio app for ``ctx`` (routes, error mapping, limits). No I/O."""
    from server.routes import admin, api, health, omi

    app = QuartTrio("trioscribe")
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.http_max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["trioscribe"] = ctx
    app.before_request(_drain_gate)
    _install_error_handlers(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(omi.blueprint)
    app.register_blueprint(admin.blueprint)
    for blueprint in ctx.blueprints:
        app.register_blueprint(blueprint)
    return app


def create_app(ctx: AppContext, listen_handler: AsgiApp | None = None) -> AsgiApp:
    """The ASGI app served by hypercorn: ``/v4/listen`` to ``listen_handler``, the rest to Quart."""
    quart_app = create_quart_app(ctx)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            listen_handler is not None
            and scope["type"] == "websocket"
            and scope["path"] == "/v4/listen"
        ):
            await listen_handler(scope, receive, send)
        else:
            # Quart types its ASGI arguments as TypedDicts; hypercorn hands us the same dicts.
            await cast(AsgiApp, quart_app)(scope, receive, send)

    return dispatch
