"""A fleet of loopback webhook receivers with fault profiles, for benchmark runs.

One listener on ``127.0.0.1``; each endpoint has its own path ``/hook/<profile>/<n>``:

============  ===============================================================================
profile       behaviour
============  ===============================================================================
``healthy``   200 at once
``hanging``   reads the request, never answers; the handler ends when the client gives up
              (closes), after :data:`HANG_MAX_S`, or when the fleet is cancelled
``failing``   500 at once
``slow``      200 after ``slow_s`` (default :data:`SLOW_DELAY_S`)
============  ===============================================================================

Every request is recorded as a :class:`Delivery` (arrival time on the trio clock, path,
lower-case headers such as ``webhook-id``, body size, and for realtime transcript payloads the
``seg<N> <crc>`` tokens of the fake STT), so :func:`delivery_report` can join deliveries with
the load generator's send times (``LoadResult.token_sent_at``; both must run in the same trio
run) into per-profile delivery latency and drops. Records are bounded (:data:`MAX_RECORDS`,
the oldest are dropped and counted); connections are bounded (:data:`MAX_CONNECTIONS`, extra
ones are closed at once and counted).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import trio

from bench._stats import LatencySummary, summarise
from bench.loadgen import SEG_TOKEN, LoadConfig, LoadResult, check_loopback, run_listen_load
from bench.loopback_http import ConnectionLimit, Request, Response, serve_h11

__all__ = [
    "PROFILES",
    "Delivery",
    "FaultRunResult",
    "FleetStatistics",
    "ProfileReport",
    "ProfileStatistics",
    "ReceiverFleet",
    "delivery_report",
    "format_delivery",
    "register_fleet",
    "run_listen_with_receivers",
    "serve_receivers",
]

PROFILES: Final = ("healthy", "hanging", "failing", "slow")
SLOW_DELAY_S: Final = 2.0
#: A hanging handler gives up after this long even if the client never does.
HANG_MAX_S: Final = 300.0
#: Deliveries kept; beyond it the oldest record is dropped (and counted).
MAX_RECORDS: Final = 200_000
#: Concurrent connections served; extra ones are closed at once (and counted).
MAX_CONNECTIONS: Final = 2048
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
READ_CHUNK_BYTES: Final = 65536
#: After a load run, the fleet counts as settled once no request came for this long.
QUIET_S: Final = 1.0
_STATUS: Final = {"healthy": 200, "failing": 500, "slow": 200}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request a receiver got."""

    arrived_at: float
    profile: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body_bytes: int
    kind: str  # "realtime_transcript" | "memory_created" | "other"
    tokens: tuple[str, ...]

    def header(self, name: str) -> str | None:
        """A header's value (``name`` in lower case), or None."""
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True, slots=True)
class ProfileStatistics:
    """Counters of one profile."""

    endpoints: int
    requests: int
    answered: int
    hanging_now: int
    realtime: int
    memory_created: int
    body_bytes: int


@dataclass(frozen=True, slots=True)
class FleetStatistics:
    """Counters of the whole fleet."""

    profiles: Mapping[str, ProfileStatistics]
    connections_open: int
    connections_refused: int
    records_dropped: int


@dataclass(slots=True)
class _ProfileCounters:
    endpoints: int = 0
    requests: int = 0
    answered: int = 0
    hanging_now: int = 0
    realtime: int = 0
    memory_created: int = 0
    body_bytes: int = 0


@dataclass(eq=False)
class ReceiverFleet:
    """The running fleet: its URLs, what it received, and its counters."""

    port: int
    urls: Mapping[str, tuple[str, ...]]
    slow_s: float = SLOW_DELAY_S
    deliveries: deque[Delivery] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    _counters: dict[str, _ProfileCounters] = field(default_factory=dict)
    _connections: ConnectionLimit = field(
        default_factory=lambda: ConnectionLimit(trio.CapacityLimiter(MAX_CONNECTIONS))
    )
    _dropped: int = 0
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def wait_quiet(self, quiet_s: float) -> None:
        """Return once no request has arrived for ``quiet_s`` (the caller bounds the wait)."""
        while True:
            with trio.move_on_after(quiet_s) as quiet:
                await self._arrived.wait()
            if quiet.cancelled_caught:
                return

    def statistics(self) -> FleetStatistics:
        """A snapshot of the counters."""
        profiles = {
            name: ProfileStatistics(
                c.endpoints,
                c.requests,
                c.answered,
                c.hanging_now,
                c.realtime,
                c.memory_created,
                c.body_bytes,
            )
            for name, c in self._counters.items()
        }
        connections = self._connections
        return FleetStatistics(
            profiles, connections.limiter.borrowed_tokens, connections.refused, self._dropped
        )

    def all_urls(self) -> list[str]:
        """Every endpoint URL, profile by profile."""
        return [url for urls in self.urls.values() for url in urls]

    def _record(self, delivery: Delivery) -> None:
        self._arrived.set()
        self._arrived = trio.Event()
        if len(self.deliveries) == self.deliveries.maxlen:
            self._dropped += 1
        self.deliveries.append(delivery)
        c = self._counter(delivery.profile)
        c.requests += 1
        c.body_bytes += delivery.body_bytes
        c.realtime += delivery.kind == "realtime_transcript"
        c.memory_created += delivery.kind == "memory_created"

    def _counter(self, profile: str) -> _ProfileCounters:
        return self._counters.setdefault(profile, _ProfileCounters())


def _profile_of(path: str) -> str:
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "hook" and parts[2] in PROFILES:
        return parts[2]
    return "unknown"


def _classify(body: bytes) -> tuple[str, tuple[str, ...]]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        return "other", ()
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        texts = (str(s.get("text", "")) for s in data["segments"] if isinstance(s, dict))
        tokens = tuple(m.group(0) for text in texts for m in SEG_TOKEN.finditer(text))
        return "realtime_transcript", tokens
    if isinstance(data, dict) and "transcript_segments" in data:
        return "memory_created", ()
    return "other", ()


async def _hang(fleet: ReceiverFleet, stream: trio.SocketStream) -> None:
    """Answer nothing until the client closes, :data:`HANG_MAX_S` passes, or cancellation."""
    counter = fleet._counter("hanging")
    counter.hanging_now += 1
    try:
        with trio.move_on_after(HANG_MAX_S):
            while await stream.receive_some(READ_CHUNK_BYTES):
                pass
    finally:
        counter.hanging_now -= 1


async def _answer(
    fleet: ReceiverFleet, request: Request, stream: trio.SocketStream
) -> Response | None:
    """Record and answer one request; ``None`` ends the connection (hanging)."""
    profile = _profile_of(request.path)
    kind, tokens = _classify(request.body)
    fleet._record(
        Delivery(trio.current_time(), profile, request.path, request.query, request.headers,
                 len(request.body), kind, tokens)
    )  # fmt: skip
    if profile == "hanging":
        await _hang(fleet, stream)
        return None
    if profile == "slow":
        await trio.sleep(fleet.slow_s)
    else:
        await trio.lowlevel.checkpoint()
    status = _STATUS.get(profile, 404)
    fleet._counter(profile).answered += 1
    return Response(status, b"ok" if status == 200 else b"no", (("content-type", "text/plain"),))


async def serve_receivers(  # noqa: ASYNC114 -- no project-wide startable list is configured
    profiles: Mapping[str, int],
    *,
    slow_s: float = SLOW_DELAY_S,
    task_status: trio.TaskStatus[ReceiverFleet] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``profiles`` (name -> endpoint count) on 127.0.0.1 until cancelled.

    ``task_status.started(fleet)`` hands over the :class:`ReceiverFleet`; cancelling this task
    cancels every handler, hung ones included.
    """
    unknown = set(profiles) - set(PROFILES)
    if unknown:
        raise ValueError(f"unknown profiles: {sorted(unknown)}")
    fleet = ReceiverFleet(0, {}, slow_s)
    serve = partial(serve_h11, partial(_answer, fleet), max_request_bytes=MAX_REQUEST_BYTES,
                    limit=fleet._connections)  # fmt: skip
    async with trio.open_nursery() as nursery:
        fleet.port = await nursery.start(serve)
        fleet.urls = {
            name: tuple(f"http://127.0.0.1:{fleet.port}/hook/{name}/{n}" for n in range(count))
            for name, count in profiles.items()
        }
        for name, count in profiles.items():
            fleet._counter(name).endpoints = count
        task_status.started(fleet)


# -- analysis -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProfileReport:
    """Delivery of realtime transcript tokens to one profile's endpoints.

    Attributes:
        latency: first arrival of each token at each endpoint - send time of its last frame.
        expected: tokens x endpoints that should have arrived.
        delivered: of those, how many arrived at least once.
        dropped: ``expected - delivered``.
        duplicates: token arrivals beyond the first per endpoint (retries, resends).
    """

    latency: LatencySummary
    expected: int
    delivered: int
    dropped: int
    duplicates: int

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        return {"latency": self.latency.to_json(), "expected": self.expected,
                "delivered": self.delivered, "dropped": self.dropped,
                "duplicates": self.duplicates}  # fmt: skip


def delivery_report(
    fleet: ReceiverFleet, token_sent_at: Mapping[str, float], *, profiles: Iterable[str] = ()
) -> dict[str, ProfileReport]:
    """Per profile: delivery latency and drops of the given tokens at every endpoint.

    Assumes every endpoint of the reported profiles was registered (as ``realtime_transcript``)
    for the user of every session that produced ``token_sent_at``.
    """
    first: dict[str, dict[str, float]] = {}
    duplicates: dict[str, int] = {}
    for d in fleet.deliveries:
        seen = first.setdefault(d.path, {})
        for token in d.tokens:
            if token in seen:
                duplicates[d.profile] = duplicates.get(d.profile, 0) + 1
            else:
                seen[token] = d.arrived_at
    names = list(profiles) or list(fleet.urls)
    return {name: _report(fleet, name, first, duplicates.get(name, 0), token_sent_at)
            for name in names}  # fmt: skip


def _report(
    fleet: ReceiverFleet, profile: str, first: Mapping[str, Mapping[str, float]],
    duplicates: int, token_sent_at: Mapping[str, float],
) -> ProfileReport:  # fmt: skip
    latencies: list[float] = []
    paths = [urlsplit(url).path for url in fleet.urls.get(profile, ())]
    for path in paths:
        seen = first.get(path, {})
        latencies += [seen[t] - sent for t, sent in token_sent_at.items() if t in seen]
    expected = len(token_sent_at) * len(paths)
    return ProfileReport(summarise(latencies), expected, len(latencies),
                         expected - len(latencies), duplicates)  # fmt: skip


async def register_fleet(
    base_url: str, token: str, urls: Iterable[str], kind: str = "realtime_transcript"
) -> list[str]:
    """Register ``urls`` with ``POST {base_url}/v1/webhooks``; returns the endpoint ids."""
    check_loopback(base_url)
    ids: list[str] = []
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
        for url in urls:
            response = await http.post("/v1/webhooks", json={"kind": kind, "url": url})
            response.raise_for_status()
            ids.append(str(response.json()["id"]))
    return ids


@dataclass(frozen=True, slots=True)
class FaultRunResult:
    """A load run with a receiver fleet registered for every session's user."""

    load: LoadResult
    delivery: Mapping[str, ProfileReport]
    fleet: FleetStatistics
    deliveries: tuple[Delivery, ...] = field(repr=False, default=())

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        return {
            "load": self.load.to_json(),
            "delivery": {name: report.to_json() for name, report in self.delivery.items()},
            "fleet": asdict(self.fleet),
        }


async def run_listen_with_receivers(
    config: LoadConfig,
    profiles: Mapping[str, int],
    *,
    api_url: str,
    kinds: Iterable[str] = ("realtime_transcript", "memory_created"),
    settle_s: float = 5.0,
    slow_s: float = SLOW_DELAY_S,
) -> FaultRunResult:
    """Start a fleet, register it for every token's user, run the load, then report.

    After the load, deliveries still in flight get up to ``settle_s`` (less once no request
    arrived for :data:`QUIET_S`). The fleet is cancelled at the end, hung handlers included. The load must
    run in this process (``processes == 1``) so send and arrival times share one clock.
    """
    if config.processes != 1:
        raise ValueError("delivery latency needs processes == 1 (one clock)")
    async with trio.open_nursery() as fleet_nursery:
        fleet: ReceiverFleet = await fleet_nursery.start(
            partial(serve_receivers, profiles, slow_s=slow_s)
        )
        for token in dict.fromkeys(config.tokens):
            for kind in kinds:
                await register_fleet(api_url, token, fleet.all_urls(), kind)
        load = await run_listen_load(config)
        with trio.move_on_after(settle_s):
            await fleet.wait_quiet(QUIET_S)
        report = delivery_report(fleet, load.token_sent_at)
        fleet_nursery.cancel_scope.cancel()
    return FaultRunResult(load, report, fleet.statistics(), tuple(fleet.deliveries))


def format_delivery(result: FaultRunResult) -> str:
    """One line per profile: delivery latency and drops."""
    lines = []
    for name, r in result.delivery.items():
        lat = r.latency
        lines.append(
            f"{name:<8} delivered {r.delivered}/{r.expected} (dropped {r.dropped}, "
            f"dup {r.duplicates})  p50 {lat.p50_s * 1000:.0f} ms  p99 {lat.p99_s * 1000:.0f} ms"
            f"  max {lat.max_s * 1000:.0f} ms"
        )
    return "\n".join(lines)
