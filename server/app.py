"""The ASGI application: a thin dispatcher in front of a quart-trio app.

``/v4/listen`` WebSocket upgrades go straight to the raw-ASGI listen handler (the per-frame hot
path must not pay Quart's per-message overhead); everything else, lifespan included, goes to the
quart-trio app built by :func:`create_quart_app`. No I/O happens at import or in the factory.
"""

from __future__ import annotations

import logging
from typing import cast

from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from lanes import LaneClosedError, LaneFullError
from server.context import AppContext
from server.errors import ApiError, error_body
from server.listen.wire import AsgiApp, Receive, Scope, Send
from server.routes import admin, api, console, docs, health, metrics, omi, webhooks
from server.routes.deps import ctx_of, json_response

__all__ = ["create_app", "create_quart_app"]

LOGGER = logging.getLogger(__name__)

#: WebSocket paths served by the raw-ASGI listen handler (``/v4/web/listen``: browsers).
LISTEN_PATHS = frozenset({"/v4/listen", "/v4/web/listen"})
#: Paths that keep answering while the server drains (probes must see the truth).
DRAIN_EXEMPT = frozenset({"/health", "/ready", "/metrics"})


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
    app = QuartTrio("trioscribe")
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.http_max_body_bytes
    app.config["BODY_TIMEOUT"] = ctx.settings.http_body_timeout_s  # a slow body gets 408
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["trioscribe"] = ctx
    app.before_request(_drain_gate)
    _install_error_handlers(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(omi.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(console.blueprint)
    return app


def create_app(ctx: AppContext, listen_handler: AsgiApp | None = None) -> AsgiApp:
    """The ASGI app served by hypercorn: ``/v4/listen`` and ``/v4/web/listen`` to
    ``listen_handler``, the rest to Quart."""
    quart_app = create_quart_app(ctx)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            listen_handler is not None
            and scope["type"] == "websocket"
            and scope["path"] in LISTEN_PATHS
        ):
            await listen_handler(scope, receive, send)
        else:
            # Quart types its ASGI arguments as TypedDicts; hypercorn hands us the same dicts.
            await cast(AsgiApp, quart_app)(scope, receive, send)

    return dispatch
