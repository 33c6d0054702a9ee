"""HTTP lane: one owned ``httpx.AsyncClient`` with a bulkhead and a circuit breaker per target.

Order of admission for every request (each step fails fast or waits only where it is safe)::

    breaker permit      BreakerOpenError at once if the target's breaker is open
    -> target bulkhead  wait for one of ``per_target_concurrency`` slots, or LaneFullError at
                        once when ``per_target_max_waiting`` callers already wait for that target
    -> lane-wide cap    wait for one of ``max_concurrency`` slots (only callers that already
                        hold a target slot wait here, so the wait is bounded by the bulkheads)
    -> send             httpx request, body read up to ``read_limit_bytes``

A dead or slow target can therefore hold at most ``per_target_concurrency`` lane-wide slots; its
other callers queue in *its* bulkhead (or are shed), never in front of healthy targets.
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, final

import httpx
import trio

from ._breaker import BreakerPermit, BreakerState, BreakerStatistics, CircuitBreaker
from ._errors import (
    BreakerOpenError,
    LaneClosedError,
    LaneError,
    LaneFullError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ._stats import LatencyWindow
from ._targets import target_key, target_label

__all__ = [
    "DEFAULT_CLIENT_ERROR_STATUSES",
    "HttpLane",
    "HttpLaneSettings",
    "HttpLaneStatistics",
    "HttpResponse",
    "HttpTargetStatistics",
    "open_http_lane",
    "parse_retry_after",
]

#: Statuses that mean "our request was wrong", not "the target is sick": they are raised as
#: :class:`UpstreamStatusError` but recorded as a *success* by the breaker (the target answered
#: sensibly, so it is alive). Every other non-2xx status (3xx, 408, 429, 5xx, ...) is a failure.
DEFAULT_CLIENT_ERROR_STATUSES: Final = frozenset({400, 401, 403, 404, 405, 409, 410, 413, 415, 422})
#: Shielded budget for closing the client's connections when the lane ends.
CLOSE_BUDGET_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class HttpLaneSettings:
    """Limits of one HTTP lane; every field has a unit in its name or is a count.

    Attributes:
        max_connections: connections the client's pool may open (all targets together).
        max_keepalive_connections: idle connections kept for reuse.
        keepalive_expiry_s: how long an idle connection is kept.
        max_concurrency: requests in flight across the whole lane.
        per_target_concurrency: requests in flight per target (the bulkhead).
        per_target_max_waiting: callers allowed to wait for a target slot; one more is refused
            with :class:`LaneFullError` at once (0 = never wait).
        failure_threshold: consecutive failures that open a target's breaker.
        failure_rate_threshold: optional failure-rate rule, see :class:`CircuitBreaker`.
        window_size: sliding window of the rate rule.
        minimum_calls: calls needed before the rate is judged.
        open_duration_s: how long an open breaker refuses calls before probing.
        half_open_max_probes: probes per half-open period.
        connect_timeout_s: TCP/TLS connect limit.
        read_timeout_s: limit for each read from the socket (not the whole response).
        write_timeout_s: limit for each write.
        pool_timeout_s: limit for waiting for a free pooled connection.
        read_limit_bytes: the most body bytes read; the rest is never read.
        max_targets: targets (breakers + bulkheads) remembered at once.
        target_idle_s: a target unused this long is forgotten.
        client_error_statuses: statuses that do not count against a target's health.
    """

    max_connections: int = 100
    max_keepalive_connections: int = 20
    keepalive_expiry_s: float = 5.0
    max_concurrency: int = 64
    per_target_concurrency: int = 8
    per_target_max_waiting: int = 16
    failure_threshold: int = 5
    failure_rate_threshold: float | None = None
    window_size: int = 20
    minimum_calls: int = 10
    open_duration_s: float = 30.0
    half_open_max_probes: int = 1
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    pool_timeout_s: float = 5.0
    read_limit_bytes: int = 64 * 1024
    max_targets: int = 500
    target_idle_s: float = 3600.0
    client_error_statuses: frozenset[int] = field(default=DEFAULT_CLIENT_ERROR_STATUSES)

    def __post_init__(self) -> None:
        counts = (self.max_concurrency, self.per_target_concurrency, self.max_targets)
        if min(counts) < 1:
            raise ValueError("max_concurrency, per_target_concurrency, max_targets must be >= 1")
        if self.per_target_max_waiting < 0 or self.read_limit_bytes < 0:
            raise ValueError("per_target_max_waiting and read_limit_bytes must be >= 0")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A 2xx answer.

    Attributes:
        status: the HTTP status code.
        headers: response headers, names lower-case (repeated headers joined with ", ").
        body: the body, at most ``read_limit_bytes`` long.
        elapsed_s: from sending the request to the end of the body read.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class HttpTargetStatistics:
    """A snapshot of one target of an :class:`HttpLane`.

    Attributes:
        target: the target's label (:func:`~lanes._targets.target_label`: its path is a digest).
        state: its breaker's state.
        in_flight: requests for it past the breaker (waiting for a slot or running).
        waiting: requests waiting for one of its bulkhead slots.
        requests, succeeded, failed, rejected_breaker, rejected_full, cancelled: counters,
            as in :class:`HttpLaneStatistics`.
        breaker: its breaker's full snapshot.
    """

    target: str
    state: BreakerState
    in_flight: int
    waiting: int
    requests: int
    succeeded: int
    failed: int
    rejected_breaker: int
    rejected_full: int
    cancelled: int
    breaker: BreakerStatistics


@dataclass(frozen=True, slots=True)
class HttpLaneStatistics:
    """A snapshot of an :class:`HttpLane`.

    Attributes:
        name: the lane's name.
        requests: calls to ``request``.
        succeeded: calls that returned a 2xx response.
        failed: calls that raised an :class:`UpstreamError` (timeouts, non-2xx, ...).
        rejected_breaker: calls refused by an open breaker.
        rejected_full: calls refused by a full bulkhead or a full target registry.
        cancelled: calls cancelled by their caller.
        in_flight: calls running now.
        latency_p50_s: median time to a complete answer (any status; recent window).
        latency_p99_s: 99th percentile of that time.
        latency_max_s: the longest ever seen.
        targets: per-target snapshots, by target label (never a path: see ``lanes._targets``).
    """

    name: str
    requests: int
    succeeded: int
    failed: int
    rejected_breaker: int
    rejected_full: int
    cancelled: int
    in_flight: int
    latency_p50_s: float
    latency_p99_s: float
    latency_max_s: float
    targets: Mapping[str, HttpTargetStatistics]


@final
class _Tally:
    """Outcome counters shared by the lane and each target."""

    __slots__ = (
        "cancelled",
        "failed",
        "rejected_breaker",
        "rejected_full",
        "requests",
        "succeeded",
    )

    def __init__(self) -> None:
        self.requests = self.succeeded = self.failed = 0
        self.rejected_breaker = self.rejected_full = self.cancelled = 0

    def count(self, exc: BaseException | None) -> None:
        if exc is None:
            self.succeeded += 1
        elif isinstance(exc, BreakerOpenError):
            self.rejected_breaker += 1
        elif isinstance(exc, LaneFullError):
            self.rejected_full += 1
        elif isinstance(exc, UpstreamError):
            self.failed += 1
        elif isinstance(exc, trio.Cancelled):
            self.cancelled += 1


@final
class _Target:
    """One endpoint's breaker, bulkhead, and counters."""

    def __init__(self, key: str, settings: HttpLaneSettings) -> None:
        self.key = key
        self.label = target_label(key)  # what leaves the lane as text (never the path)
        self.breaker = CircuitBreaker(
            self.label,
            failure_threshold=settings.failure_threshold,
            failure_rate_threshold=settings.failure_rate_threshold,
            window_size=settings.window_size,
            minimum_calls=settings.minimum_calls,
            open_duration_s=settings.open_duration_s,
            half_open_max_probes=settings.half_open_max_probes,
        )
        self.limiter = trio.CapacityLimiter(settings.per_target_concurrency)
        self.tally = _Tally()
        self.in_flight = 0
        self.last_used = trio.current_time()

    def statistics(self) -> HttpTargetStatistics:
        breaker = self.breaker.statistics()
        return HttpTargetStatistics(
            target=self.label,
            state=breaker.state,
            in_flight=self.in_flight,
            waiting=self.limiter.statistics().tasks_waiting,
            requests=self.tally.requests,
            succeeded=self.tally.succeeded,
            failed=self.tally.failed,
            rejected_breaker=self.tally.rejected_breaker,
            rejected_full=self.tally.rejected_full,
            cancelled=self.tally.cancelled,
            breaker=breaker,
        )


@final
class _Registry:
    """Targets by key, least recently touched first; bounded, and never drops a busy target."""

    def __init__(self, lane_name: str, settings: HttpLaneSettings) -> None:
        self._lane_name = lane_name
        self._settings = settings
        self._targets: OrderedDict[str, _Target] = OrderedDict()

    def checkout(self, key: str) -> _Target:
        """Return the target for ``key`` (made if new), marked busy until :meth:`checkin`.

        Raises:
            LaneFullError: ``max_targets`` targets are remembered and every one is busy.
        """
        self._evict_idle()
        target = self._targets.get(key)
        if target is None:
            if len(self._targets) >= self._settings.max_targets:
                self._evict_one()
            target = self._targets[key] = _Target(key, self._settings)
        target.in_flight += 1
        self._touch(target)
        return target

    def checkin(self, target: _Target) -> None:
        """Mark one call of ``target`` as finished."""
        target.in_flight -= 1
        self._touch(target)

    def snapshot(self) -> dict[str, HttpTargetStatistics]:
        return {target.label: target.statistics() for target in self._targets.values()}

    def _touch(self, target: _Target) -> None:
        target.last_used = trio.current_time()
        self._targets.move_to_end(target.key)

    def _evict_idle(self) -> None:
        horizon = trio.current_time() - self._settings.target_idle_s
        for key, target in list(self._targets.items()):
            if target.in_flight:
                continue
            if target.last_used > horizon:
                break  # everything after it was touched later
            del self._targets[key]

    def _evict_one(self) -> None:
        for key, target in self._targets.items():
            if not target.in_flight:
                del self._targets[key]
                return
        raise LaneFullError(self._lane_name, len(self._targets))


@final
class HttpLane:
    """Outbound HTTP through one shared client, guarded per target; made by :func:`open_http_lane`.

    Safe to share between any number of tasks. Callers own time: wrap calls in
    ``trio.move_on_after`` / ``fail_after``; the settings' timeouts only bound each socket step.
    """

    def __init__(self, name: str, settings: HttpLaneSettings, client: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings
        self._client = client
        self._registry = _Registry(name, settings)
        self._cap = trio.CapacityLimiter(settings.max_concurrency)
        self._tally = _Tally()
        self._latency = LatencyWindow()
        self._in_flight = 0
        self._closed = False

    @property
    def is_closed(self) -> bool:
        """Whether the lane's client has been closed (the lane then refuses calls)."""
        return self._client.is_closed

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        json: object = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        target: str | None = None,
    ) -> HttpResponse:
        """Send one request and return its 2xx response; never follows redirects.

        Args:
            method: the HTTP method.
            url: an absolute ``http://`` or ``https://`` URL.
            content: raw request body.
            json: a JSON-serialisable body (ignored when ``None``).
            headers: extra request headers.
            params: query parameters added to the URL.
            target: the breaker/bulkhead key; defaults to :func:`target_key` of ``url``.

        Raises:
            LaneClosedError: the lane was closed.
            BreakerOpenError: the target's breaker refuses calls (nothing was sent).
            LaneFullError: the target's bulkhead or the target registry is full (nothing sent).
            UpstreamStatusError: the answer was not 2xx (``status``, ``retry_after_s``,
                ``headers``, bounded ``body``).
            UpstreamTimeoutError, UpstreamConnectError, UpstreamProtocolError: transport failures.
            ValueError: ``url`` is not an absolute http(s) URL.

        Cancellation: nothing is counted against the target; the connection is dropped.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise LaneClosedError(self.name)
        key = target if target is not None else target_key(url)
        request = _Request(method, url, content, json, headers, params)
        self._tally.requests += 1
        self._in_flight += 1
        try:
            response = await self._request_target(key, request)
        except (LaneError, trio.Cancelled) as exc:
            self._tally.count(exc)
            raise
        finally:
            self._in_flight -= 1
        self._tally.count(None)
        return response

    def statistics(self) -> HttpLaneStatistics:
        """Return a frozen snapshot of the lane and its targets."""
        return HttpLaneStatistics(
            name=self.name,
            requests=self._tally.requests,
            succeeded=self._tally.succeeded,
            failed=self._tally.failed,
            rejected_breaker=self._tally.rejected_breaker,
            rejected_full=self._tally.rejected_full,
            cancelled=self._tally.cancelled,
            in_flight=self._in_flight,
            latency_p50_s=self._latency.percentile(0.50),
            latency_p99_s=self._latency.percentile(0.99),
            latency_max_s=self._latency.max_s,
            targets=MappingProxyType(self._registry.snapshot()),
        )

    # -- internals ------------------------------------------------------------------------------

    async def _request_target(self, key: str, request: _Request) -> HttpResponse:
        entry = self._registry.checkout(key)
        entry.tally.requests += 1
        try:
            response = await self._guarded(entry, request)
        except (LaneError, trio.Cancelled) as exc:
            entry.tally.count(exc)
            raise
        finally:
            self._registry.checkin(entry)
        entry.tally.count(None)
        return response

    async def _guarded(self, entry: _Target, request: _Request) -> HttpResponse:
        permit = entry.breaker.acquire()
        try:
            self._admit(entry)
            async with entry.limiter, self._cap:
                return await self._send(entry, permit, request)
        finally:
            permit.release()  # no-op when _send recorded a result; else counts neither way

    def _admit(self, entry: _Target) -> None:
        stats = entry.limiter.statistics()
        busy = stats.borrowed_tokens >= stats.total_tokens
        if busy and stats.tasks_waiting >= self.settings.per_target_max_waiting:
            raise LaneFullError(entry.label, stats.tasks_waiting)

    async def _send(self, entry: _Target, permit: BreakerPermit, request: _Request) -> HttpResponse:
        started = trio.current_time()
        try:
            async with self._client.stream(
                request.method,
                request.url,
                content=request.content,
                json=request.json,
                headers=request.headers,
                params=request.params,
            ) as response:
                body = await _read_limited(response, self.settings.read_limit_bytes)
        except httpx.HTTPError as exc:
            permit.record_failure()
            raise _map_error(entry.key, exc) from exc
        elapsed_s = trio.current_time() - started
        self._latency.record(elapsed_s)
        return self._classify(entry.key, permit, response, body, elapsed_s)

    def _classify(
        self,
        key: str,
        permit: BreakerPermit,
        response: httpx.Response,
        body: bytes,
        elapsed_s: float,
    ) -> HttpResponse:
        status = response.status_code
        headers = MappingProxyType({k.lower(): v for k, v in response.headers.items()})
        if 200 <= status < 300:
            permit.record_success()
            return HttpResponse(status, headers, body, elapsed_s)
        if status in self.settings.client_error_statuses:
            permit.record_success()  # the target is alive; the request was wrong
        else:
            permit.record_failure()
        retry_after_s = parse_retry_after(headers.get("retry-after"))
        raise UpstreamStatusError(key, status, retry_after_s, headers=headers, body=body)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    content: bytes | None
    json: object
    headers: Mapping[str, str] | None
    params: Mapping[str, str] | None


@asynccontextmanager
async def open_http_lane(
    name: str,
    settings: HttpLaneSettings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[HttpLane]:
    """Open an :class:`HttpLane` that owns one ``httpx.AsyncClient`` for the block's lifetime.

    The client never follows redirects and ignores proxy environment variables
    (``trust_env=False``). It is closed on every exit path (normal end, an error in the block,
    cancellation) under a shielded, bounded scope; afterwards calls raise
    :class:`LaneClosedError`.

    Args:
        name: shown in statistics and errors.
        settings: limits and breaker rules (defaults: :class:`HttpLaneSettings()`).
        transport: an httpx transport to use instead of the network (tests:
            ``httpx.MockTransport``); the pool limits then do not apply.
    """
    settings = settings or HttpLaneSettings()
    client = httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry_s,
        ),
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.write_timeout_s,
            pool=settings.pool_timeout_s,
        ),
        follow_redirects=False,
        trust_env=False,
        transport=transport,
    )
    lane = HttpLane(name, settings, client)
    try:
        yield lane
    finally:
        lane._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BUDGET_S):
            await client.aclose()


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` value (delay-seconds or HTTP-date) into seconds from now.

    Returns ``None`` when absent or unparseable; a date in the past gives 0.0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read at most ``limit`` body bytes; the rest is never read (the connection is dropped).

    httpx's body iterators are nested async generators (encode/httpx#3686): breaking out of
    them leaves the inner ones to the garbage collector, which Trio reports as a
    ``ResourceWarning``. So at the limit the response is closed and the loop runs on: the
    closed stream ends every generator in the chain (normally, or with ``httpx.ReadError``,
    which is expected then and dropped).
    """
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            if len(body) < limit:
                body += chunk[: limit - len(body)]
            if len(body) >= limit and not response.is_closed:
                await response.aclose()
    except httpx.HTTPError:
        if not response.is_closed or len(body) < limit:
            raise
    return bytes(body)  # noqa: ASYNC910 -- request() already checkpointed


def _map_error(key: str, exc: httpx.HTTPError) -> UpstreamError:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(key, message)
    if isinstance(exc, httpx.NetworkError):
        return UpstreamConnectError(key, message)
    return UpstreamProtocolError(key, message)
