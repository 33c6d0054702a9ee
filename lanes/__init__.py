"""lanes: named, bounded, cancellation-correct lanes for blocking work and outbound I/O.

Everything that could block the event loop or outlive its owner goes through a lane: blocking
calls through a :class:`ThreadLane` (or a process lane for GIL-holding CPU work), outbound HTTP
through an HTTP lane with per-target bulkheads and circuit breakers. Every lane has an owner
(an ``async with`` block or a nursery) and a frozen ``statistics()`` snapshot.
"""

from ._background import (
    BackgroundGroup as BackgroundGroup,
    BackgroundGroupStatistics as BackgroundGroupStatistics,
    open_background_group as open_background_group,
)
from ._breaker import (
    BreakerPermit as BreakerPermit,
    BreakerState as BreakerState,
    BreakerStatistics as BreakerStatistics,
    CircuitBreaker as CircuitBreaker,
)
from ._errors import (
    BreakerOpenError as BreakerOpenError,
    LaneClosedError as LaneClosedError,
    LaneError as LaneError,
    LaneFullError as LaneFullError,
    RemoteCallError as RemoteCallError,
    UpstreamConnectError as UpstreamConnectError,
    UpstreamError as UpstreamError,
    UpstreamProtocolError as UpstreamProtocolError,
    UpstreamStatusError as UpstreamStatusError,
    UpstreamTimeoutError as UpstreamTimeoutError,
    WorkerCrashedError as WorkerCrashedError,
)
from ._http import (
    HttpLane as HttpLane,
    HttpLaneSettings as HttpLaneSettings,
    HttpLaneStatistics as HttpLaneStatistics,
    HttpResponse as HttpResponse,
    HttpTargetStatistics as HttpTargetStatistics,
    open_http_lane as open_http_lane,
    parse_retry_after as parse_retry_after,
)
from ._lag import (
    LoopLagMonitor as LoopLagMonitor,
    LoopLagStatistics as LoopLagStatistics,
)
from ._latest import (
    LatestSlot as LatestSlot,
    LatestSlotStatistics as LatestSlotStatistics,
    start_latest_consumer as start_latest_consumer,
)
from ._process import (
    ProcessLane as ProcessLane,
    ProcessLaneStatistics as ProcessLaneStatistics,
    ProcessSession as ProcessSession,
    open_process_lane as open_process_lane,
)
from ._stats import LatencyWindow as LatencyWindow
from ._targets import target_key as target_key, target_label as target_label
from ._thread import ThreadLane as ThreadLane, ThreadLaneStatistics as ThreadLaneStatistics

__all__ = [
    "BackgroundGroup",
    "BackgroundGroupStatistics",
    "BreakerOpenError",
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "HttpLane",
    "HttpLaneSettings",
    "HttpLaneStatistics",
    "HttpResponse",
    "HttpTargetStatistics",
    "LaneClosedError",
    "LaneError",
    "LaneFullError",
    "LatencyWindow",
    "LatestSlot",
    "LatestSlotStatistics",
    "LoopLagMonitor",
    "LoopLagStatistics",
    "ProcessLane",
    "ProcessLaneStatistics",
    "ProcessSession",
    "RemoteCallError",
    "ThreadLane",
    "ThreadLaneStatistics",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "WorkerCrashedError",
    "open_background_group",
    "open_http_lane",
    "open_process_lane",
    "parse_retry_after",
    "start_latest_consumer",
    "target_key",
    "target_label",
]
