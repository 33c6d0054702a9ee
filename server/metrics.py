"""Prometheus metrics for ``GET /metrics``, read from the ``statistics()`` components keep anyway.

Nothing is counted twice: a custom collector calls every registered ``statistics()`` at scrape
time (the same callables ``GET /v1/stats`` shows) and turns each numeric field into a sample.
The only state of its own is two latency histograms, observed once per transcript *final* (not
per frame), and a cached count of conversations by status (one storage query per
``CONVERSATIONS_REFRESH_S`` at most, bounded by ``CONVERSATIONS_QUERY_S``).

Names (stable: derived from the statistics' component keys and field names)::

    trioscribe_<component>_<field>[_total]      e.g. trioscribe_sessions_frames_total,
                                                trioscribe_sessions_live
    trioscribe_thread_lane_<field>{lane}        every ThreadLane (storage, summarise, ...)
    trioscribe_http_lane_<field>{lane}          every HTTP lane (webhooks, openai)
    trioscribe_http_target_<field>{lane,host}   per target host (never a path, query or userinfo)
    trioscribe_breaker_<field>{lane,host}       the circuit breaker of each target host
    trioscribe_conversations{status}            conversations by status (cached)
    trioscribe_processing_outcomes_total{outcome}   completed, retried, failed, lost
    trioscribe_webhook_outcomes_total{outcome}      delivered, retried, failed, disabled
    trioscribe_stt_final_latency_seconds        histogram: last audio frame -> STT final
    trioscribe_frame_to_segment_latency_seconds histogram: last audio frame -> segment sent

Fields ending in ``_s`` become ``_seconds``; fields listed in :data:`COUNTER_FIELDS` and every
field of a ``totals`` mapping are counters (``_total``), all other numbers are gauges. A new numeric field of any ``statistics()`` appears
by itself. Each server has its own :class:`prometheus_client.CollectorRegistry`, so several
servers in one process (tests) never share or collide.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Final
from urllib.parse import urlsplit

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.listen.session import LatencySinks
from server.settings import version

__all__ = ["CONTENT_TYPE", "COUNTER_FIELDS", "ServerMetrics"]

LOGGER = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
PREFIX: Final = "trioscribe"
#: Cumulative fields (counters); every other number is a gauge.
COUNTER_FIELDS: Final = frozenset(
    """
    abandoned admitted app_messages attempts audio_bytes audio_chunks_dropped audio_s bad_frames
    breaker_rejections bytes_in calls cancelled closed coalesced completed connects crashes
    decoders_created decoders_reused delivered disabled_endpoints discarded dropped_audio_bytes
    dropped_audio_s dropped_events errors failed failures finals frames ignored interims issued
    keepalives lost opened_count persist_failures persisted_segments posts redeemed refused
    refused_draining refused_server_cap refused_user_cap rejected rejected_breaker rejected_full
    requests restarts retried runs segments_overflow segments_sent sent shed_full skipped_live
    streams_degraded streams_opened streams_refused streams_refused successes succeeded timeouts
    unresolved vad_forwarded_bytes vad_skipped_bytes worker_crashes worker_restarts
    """.split()
)
#: Distinct target hosts labelled per scrape; the rest are summed as ``host="other"``.
HOST_LABEL_LIMIT: Final = 50
CONVERSATIONS_REFRESH_S: Final = 15.0
CONVERSATIONS_QUERY_S: Final = 2.0
LATENCY_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROCESSING_OUTCOMES: Final = ("completed", "retried", "failed", "lost")
WEBHOOK_OUTCOMES: Final = (
    ("delivered", "delivered"),
    ("retried", "retried"),
    ("failed", "failed"),
    ("disabled", "disabled_endpoints"),
)

Labels = tuple[tuple[str, str], ...]


class _Families:
    """Samples grouped by family; samples with equal labels are summed (hosts, ``other``)."""

    def __init__(self) -> None:
        self._kinds: dict[str, bool] = {}  # name -> is a counter
        self._docs: dict[str, str] = {}
        self._samples: dict[str, dict[Labels, float]] = {}

    def add(
        self, name: str, value: float, labels: Labels = (), *, counter: bool, doc: str = ""
    ) -> None:
        if not math.isfinite(value):
            return
        if name not in self._kinds:
            self._kinds[name] = counter
            self._docs[name] = doc or name.removeprefix(PREFIX + "_").replace("_", " ")
            self._samples[name] = {}
        samples = self._samples[name]
        samples[labels] = samples.get(labels, 0.0) + value

    def metrics(self) -> Iterator[Metric]:
        for name, samples in self._samples.items():
            keys = [k for k, _ in next(iter(samples))] if samples else []
            family: GaugeMetricFamily | CounterMetricFamily
            if self._kinds[name]:
                family = CounterMetricFamily(name, self._docs[name], labels=keys)
            else:
                family = GaugeMetricFamily(name, self._docs[name], labels=keys)
            for labels, value in samples.items():
                family.add_metric([v for _, v in labels], value)
            yield family


def _fields(record: object) -> dict[str, object] | None:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if isinstance(record, Mapping):
        return {str(k): v for k, v in record.items()}
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _metric_field(field: str) -> str:
    return field[:-2] + "_seconds" if field.endswith("_s") else field


def _host(target: str) -> str:
    """``host:port`` of a target key or URL: never its path, query or credentials."""
    try:
        parts = urlsplit(target)
        host = parts.hostname or "unknown"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "unknown"


class _Walker:
    """Turns one scrape's statistics records into samples (see the module docstring)."""

    def __init__(self, families: _Families) -> None:
        self.families = families
        self.hosts: dict[str, str] = {}

    def host_label(self, target: str) -> str:
        host = _host(target)
        if host in self.hosts.values() or len(set(self.hosts.values())) < HOST_LABEL_LIMIT:
            return self.hosts.setdefault(target, host)
        return "other"

    def component(self, name: str, record: object) -> None:
        fields = _fields(record)
        if fields is None:
            if isinstance(record, int | float) and not isinstance(record, bool):
                self.families.add(f"{PREFIX}_{name}", float(record), counter=False)
            return
        self.record(f"{PREFIX}_{name}", record, fields, ())

    def record(
        self, prefix: str, record: object, fields: dict[str, object], labels: Labels
    ) -> None:
        kind = type(record).__name__
        lane = fields.get("name")
        if kind.endswith("LaneStatistics") and isinstance(lane, str):
            prefix = f"{PREFIX}_{_snake(kind.removesuffix('Statistics'))}"
            labels = (*labels, ("lane", lane))
        for field, value in fields.items():
            self.value(prefix, field, value, labels)

    def value(
        self, prefix: str, field: str, value: object, labels: Labels, *, total: bool = False
    ) -> None:
        if isinstance(value, bool):
            self.families.add(f"{prefix}_{field}", float(value), labels, counter=False)
        elif isinstance(value, int | float):
            name = f"{prefix}_{_metric_field(field)}"
            counter = total or field in COUNTER_FIELDS
            self.families.add(name, float(value), labels, counter=counter)
        elif field == "state" and isinstance(value, str | enum.Enum):
            self.state(f"{prefix}_state", value, labels)
        elif field == "targets" and isinstance(value, Mapping):
            for target, stats in value.items():
                nested = _fields(stats)
                if nested is not None:
                    host = (*labels, ("host", self.host_label(str(target))))
                    self.record(f"{PREFIX}_http_target", stats, nested, host)
        elif field == "breaker":
            nested = _fields(value)
            if nested is not None:
                self.record(f"{PREFIX}_breaker", value, nested, labels)
        elif field == "totals":
            nested = _fields(value)
            for key, item in (nested or {}).items():  # cumulative by definition
                self.value(prefix, key, item, labels, total=True)
        else:
            nested = _fields(value)
            if nested is not None:
                self.record(f"{prefix}_{field}", value, nested, labels)

    def state(self, name: str, value: str | enum.Enum, labels: Labels) -> None:
        current = value.value if isinstance(value, enum.Enum) else value
        states = [str(m.value) for m in type(value)] if isinstance(value, enum.Enum) else []
        for state in states or [str(current)]:
            sample = 1.0 if state == str(current) else 0.0
            self.families.add(name, sample, (*labels, ("state", state)), counter=False)


class _StatisticsCollector(Collector):
    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        return iter(self._owner.collect_families())


class ServerMetrics:
    """The metrics of one server run: a registry of its own, read at scrape time.

    Args:
        stats: the run's named ``statistics()`` callables (looked up at each scrape, so
            components registered later are included).
        store: the store, if it can ``count_conversations_by_status()``.
    """

    def __init__(self, stats: Mapping[str, Callable[[], object]], store: object = None) -> None:
        self._stats = stats
        self._count = getattr(store, "count_conversations_by_status", None)
        self._conversations: dict[str, int] = {}
        self._conversations_at = -math.inf
        self.scrape_errors = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.stt_final_latency = Histogram(
            f"{PREFIX}_stt_final_latency_seconds",
            "time from the last audio frame of a transcript final to the STT final's arrival",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.frame_to_segment_latency = Histogram(
            f"{PREFIX}_frame_to_segment_latency_seconds",
            "time from the last audio frame of a segment to the segment queued for the client",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatisticsCollector(self))

    def latency_sinks(self) -> LatencySinks:
        """The histograms' ``observe`` methods, for listen sessions."""
        return LatencySinks(self.stt_final_latency.observe, self.frame_to_segment_latency.observe)

    async def refresh(self) -> None:
        """Refresh the cached conversation counts if they are older than the refresh interval
        (bounded by ``CONVERSATIONS_QUERY_S``; on failure the last counts stay)."""
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        if self._count is None or now - self._conversations_at < CONVERSATIONS_REFRESH_S:
            return
        self._conversations_at = now
        # The count's storage call is the cancel point; only a failure before it skips it.
        with trio.move_on_after(CONVERSATIONS_QUERY_S) as scope:  # noqa: ASYNC912
            try:
                self._conversations = dict(await self._count())
            except Exception:  # busy or failing store: keep the last counts, count it
                self.scrape_errors += 1
                LOGGER.warning("metrics: counting conversations failed", exc_info=True)
        if scope.cancelled_caught:
            self.scrape_errors += 1

    async def render(self) -> bytes:
        """The text exposition of every metric (refreshing the cached counts first)."""
        await self.refresh()
        return generate_latest(self.registry)

    def collect_families(self) -> list[Metric]:
        """Every family of the statistics, built now (never raises for one bad component)."""
        families = _Families()
        walker = _Walker(families)
        snapshots: dict[str, object] = {}
        for name, statistics in sorted(self._stats.items()):
            try:
                snapshots[name] = statistics()
                walker.component(name, snapshots[name])
            except Exception:
                self.scrape_errors += 1
                LOGGER.warning("metrics: statistics of %s failed", name, exc_info=True)
        self._outcomes(families, snapshots)
        from server.store import CONVERSATION_STATUSES

        for status in sorted(CONVERSATION_STATUSES | set(self._conversations)):
            families.add(
                f"{PREFIX}_conversations",
                float(self._conversations.get(status, 0)),
                (("status", status),),
                counter=False,
                doc="conversations by status (cached for up to 15 s)",
            )
        families.add(f"{PREFIX}_build_info", 1.0, (("version", version()),), counter=False)
        families.add(f"{PREFIX}_metrics_scrape_errors", float(self.scrape_errors), counter=True)
        return list(families.metrics())

    @staticmethod
    def _outcomes(families: _Families, snapshots: Mapping[str, object]) -> None:
        processing = _fields(snapshots.get("processing")) or {}
        for outcome in PROCESSING_OUTCOMES:
            value = processing.get(outcome)
            if isinstance(value, int | float):
                families.add(
                    f"{PREFIX}_processing_outcomes",
                    float(value),
                    (("outcome", outcome),),
                    counter=True,
                    doc="conversation processing attempts by outcome",
                )
        webhooks = _fields(snapshots.get("webhooks")) or {}
        for outcome, field in WEBHOOK_OUTCOMES:
            value = webhooks.get(field)
            if isinstance(value, int | float):
                families.add(
                    f"{PREFIX}_webhook_outcomes",
                    float(value),
                    (("outcome", outcome),),
                    counter=True,
                    doc="durable webhook deliveries by outcome (disabled: endpoints disabled)",
                )
