"""Liveness, readiness and statistics endpoints."""

from __future__ import annotations

from quart import Blueprint, Response

from server.routes.deps import ctx_of, json_response, require_admin

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
async def health() -> Response:
    """Liveness: the process answers (true while draining too)."""
    return json_response({"status": "ok"})


@blueprint.get("/ready")
async def ready() -> Response:
    """Readiness: false (503) once shutdown began, so load balancers stop sending work."""
    drain = ctx_of().drain
    if drain.draining:
        return json_response({"ready": False, "reason": "draining"}, 503)
    return json_response({"ready": True})


@blueprint.get("/v1/stats")
async def stats() -> Response:
    """Every registered ``statistics()`` snapshot (admin only)."""
    require_admin()
    ctx = ctx_of()
    return json_response({name: snapshot() for name, snapshot in sorted(ctx.stats.items())})
