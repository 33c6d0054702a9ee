"""``GET /metrics``: Prometheus text exposition of the server's statistics.

On the main port, unauthenticated, like ``/health``: the samples carry no user data and no
secret (labels are lane names, target *hosts*, statuses and outcomes), and one port keeps
probes and scrapes on the same listener. It keeps answering while the server drains.
"""

from __future__ import annotations

from quart import Blueprint, Response

from server.app import ctx_of
from server.errors import ApiError
from server.metrics import CONTENT_TYPE, ServerMetrics

__all__ = ["blueprint"]

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Every metric family, read from the components' ``statistics()`` now."""
    registry: ServerMetrics | None = ctx_of().services.get("metrics")
    if registry is None:
        raise ApiError(404, "not_found", "metrics are not enabled")
    return Response(await registry.render(), status=200, content_type=CONTENT_TYPE)
