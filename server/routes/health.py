"""Liveness, readiness and statistics endpoints."""

from __future__ import annotations

from quart import Blueprint, Response

from server.routes._contract import operation
from server.routes._models import Health, Readiness, Statistics
from server.routes.deps import ctx_of, json_response

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
@operation(auth="none", responses={200: Health}, tags=["probes"])
async def health() -> Response:
    """Liveness: the process answers (true while draining too)."""
    return json_response({"status": "ok"})


@blueprint.get("/ready")
@operation(auth="none", responses={200: Readiness, 503: Readiness}, tags=["probes"])
async def ready() -> Response:
    """Readiness: false (503) once shutdown began, so load balancers stop sending work."""
    drain = ctx_of().drain
    if drain.draining:
        return json_response({"ready": False, "reason": "draining"}, 503)
    return json_response({"ready": True})


@blueprint.get("/v1/stats")
@operation(auth="admin", responses={200: Statistics}, tags=["admin"])
async def stats() -> Response:
    """Every registered ``statistics()`` snapshot (admin only)."""
    ctx = ctx_of()
    return json_response({name: snapshot() for name, snapshot in sorted(ctx.stats.items())})
