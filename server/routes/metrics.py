"""``GET /metrics``: Prometheus text exposition of the server's statistics.

On the main port, unauthenticated, like ``/health``: the samples carry no user data and no
secret (labels are lane names, target *hosts*, statuses and outcomes), and one port keeps
probes and scrapes on the same listener. It keeps answering while the server drains.
"""

from __future__ import annotations

from quart import Blueprint, Response

from server.metrics import CONTENT_TYPE
from server.routes.deps import ctx_of

__all__ = ["blueprint"]

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Every metric family, read from the components' ``statistics()`` now."""
    return Response(await ctx_of().metrics.render(), status=200, content_type=CONTENT_TYPE)
