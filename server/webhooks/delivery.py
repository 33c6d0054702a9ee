"""Durable webhook delivery: outbox rows leased from the store, signed, sent, retried, logged.

The promise (published in docs/webhooks.md) depends on the registration's ``delivery``:
``at_least_once`` (developer webhooks' default) or ``once`` (Omi apps' default: one attempt,
never retried, not even after a crash mid-attempt; failures are logged). For
``at_least_once``: a message is written to the
outbox in the same transaction as the event that caused it (a conversation's completion, a day
summary), so it cannot be lost; a worker leases it, sends it, and records the attempt; a worker
that dies mid-attempt leaves the lease to expire and the message is sent again, with the same
``webhook-id`` (receivers dedupe on it) and a fresh ``webhook-timestamp`` and signature.

Per attempt::

    2xx                      delivered (an app's JSON ``message`` is relayed to the user)
    410 Gone                 failed; the endpoint is disabled
    429 / 503 + Retry-After  retried no sooner than Retry-After (capped)
    3xx                      failure: redirects are never followed
    other status, timeout,   retried on the schedule (Svix's by default: immediately, 5 s,
    refused, breaker open,   5 min, 30 min, 2 h, 5 h, 10 h, 10 h; each delay jittered);
    SSRF guard refusal       after the last attempt the delivery is failed

Concurrency: at most ``workers`` attempts run at once; each is bounded by ``timeout_s`` (the
caller-owned deadline around the lane call) and the HTTP lane's per-target bulkheads and
breakers keep one slow endpoint from taking every worker's time for long.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

import trio

import lanes
from server.clock import wall_now
from server.drain import Drain
from server.logs import log_context
from server.wakeup import Wakeup, wait_any
from server.webhooks.models import Attempt, DeliveryStatus, DueDelivery
from server.webhooks.payloads import append_query, attempt_headers, chat_message, reply_message
from server.webhooks.repository import WebhookRepository
from server.webhooks.ssrf import SsrfError

__all__ = [
    "SVIX_SCHEDULE_S",
    "DeliveryConfig",
    "DeliveryStatistics",
    "DeliveryWorkers",
    "Outcome",
    "next_delay_s",
]

LOGGER = logging.getLogger(__name__)

#: Delay before each attempt (the first is immediate): Svix's published schedule.
SVIX_SCHEDULE_S: Final = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: Budget for writing an attempt's outcome even while the worker is being cancelled.
RECORD_BUDGET_S: Final = 2.0

EventSink = Callable[[str, dict[str, object]], object]


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How durable deliveries are scheduled.

    Attributes:
        schedule_s: delay before each attempt; its length is the number of attempts.
        jitter: each delay is multiplied by a random factor in ``1 +- jitter``.
        timeout_s: the deadline of one attempt (connect to last body byte).
        workers: attempts in flight at once.
        poll_interval_s: the longest idle wait without a wake-up (other writers, clock drift);
            workers also wake when the earliest pending delivery is due.
        lease_margin_s: a lease lasts ``timeout_s`` plus this (crash -> resent after it).
        max_retry_after_s: the longest ``Retry-After`` honoured.
    """

    schedule_s: tuple[float, ...] = SVIX_SCHEDULE_S
    jitter: float = 0.2
    timeout_s: float = 15.0
    workers: int = 8
    poll_interval_s: float = 5.0
    lease_margin_s: float = 15.0
    max_retry_after_s: float = 86_400.0

    def __post_init__(self) -> None:
        if not self.schedule_s or min(self.schedule_s) < 0:
            raise ValueError("schedule_s must be a non-empty list of delays >= 0")
        if not 0 <= self.jitter < 1 or self.timeout_s <= 0 or self.workers < 1:
            raise ValueError("need 0 <= jitter < 1, timeout_s > 0, workers >= 1")


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    """Counters of the durable delivery workers.

    Attributes:
        in_flight: attempts running now (at most ``workers``).
        attempts: attempts made.
        delivered: messages delivered (2xx).
        retried: failed attempts with another one scheduled.
        failed: messages given up (schedule exhausted, 410, endpoint disabled).
        disabled_endpoints: endpoints disabled by a 410 answer.
        timeouts: attempts that hit ``timeout_s``.
        breaker_rejections: attempts refused by an open circuit (nothing was sent).
        app_messages: reply messages relayed to users.
    """

    in_flight: int
    attempts: int
    delivered: int
    retried: int
    failed: int
    disabled_endpoints: int
    timeouts: int
    breaker_rejections: int
    app_messages: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    body: bytes = b""

    @property
    def gone(self) -> bool:
        """The endpoint answered 410 Gone."""
        return self.status == 410


def next_delay_s(
    config: DeliveryConfig, attempts: int, retry_after_s: float | None, rng: random.Random
) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or ``None``: give up."""
    if attempts >= len(config.schedule_s):
        return None
    delay = config.schedule_s[attempts] * rng.uniform(1 - config.jitter, 1 + config.jitter)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, config.max_retry_after_s))
    return delay


@final
class DeliveryWorkers:
    """Leases due outbox rows and attempts them, ``config.workers`` at a time.

    Args:
        repo: the outbox.
        lane: the webhook HTTP lane (SSRF-pinned transport, bulkheads, breakers).
        config: schedule and limits.
        drain: stop taking work once ``drain.requested`` is set.
        on_event: ``on_event(user_id, event)`` relays an app's reply to the user (sync).
        rng: jitter source (tests pass a seeded one).
    """

    def __init__(
        self,
        repo: WebhookRepository,
        lane: lanes.HttpLane,
        config: DeliveryConfig,
        drain: Drain,
        on_event: EventSink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.wakeup = Wakeup()
        self._repo = repo
        self._lane = lane
        self._config = config
        self._drain = drain
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._slots = trio.Semaphore(config.workers)
        self._in_flight = 0
        self._counts = dict.fromkeys(
            ("attempts", "delivered", "retried", "failed", "disabled", "timeouts", "breaker"), 0
        )
        self._app_messages = 0

    async def run(  # noqa: ASYNC114 -- started by Components.start_workers
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until drained; attempts already running finish (each within ``timeout_s``)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while not self._drain.requested.is_set():
                await self._slots.acquire()
                if not await self._claim_into(nursery):
                    self._slots.release()
                    if not self._drain.requested.is_set():
                        await self._idle()

    async def _claim_into(self, nursery: trio.Nursery) -> bool:
        """Lease one due delivery and start its attempt; ``False`` if there was none."""
        await trio.lowlevel.checkpoint()
        if self._drain.requested.is_set():
            return False
        lease_s = self._config.timeout_s + self._config.lease_margin_s
        try:
            due = await self._repo.claim_due(wall_now(), lease_s, 1)
        except Exception:  # the store is busy or failing: poll again later
            LOGGER.exception("leasing webhook deliveries failed")
            return False
        if not due:
            return False
        self._in_flight += 1
        nursery.start_soon(self._attempt_then_release, due[0])
        return True

    async def _idle(self) -> None:
        """Wait for a wake-up, the drain, the next due delivery, or the poll interval."""
        wait_s = self._config.poll_interval_s
        try:
            due = await self._repo.next_due()
        except Exception:
            LOGGER.exception("reading the outbox's next due time failed")
            due = None
        if due is not None:
            wait_s = min(wait_s, max(0.0, due - wall_now()))
        await wait_any(wait_s, self.wakeup.wait, self._drain.requested.wait)

    async def _attempt_then_release(self, due: DueDelivery) -> None:
        await trio.lowlevel.checkpoint()
        context = log_context(user_id=due.delivery.user_id, webhook_id=due.endpoint.id)
        try:
            with context:
                await self.attempt(due)
        except Exception:  # a store failure: the lease expires and the message is sent again
            LOGGER.exception("webhook delivery %s: recording the attempt failed", due.delivery.id)
        finally:
            self._in_flight -= 1
            self._slots.release()
            self.wakeup.set()  # the idle loop re-reads the next due time (a retry was scheduled)

    async def deliver_now(self, message_id: str) -> list[dict[str, object]]:
        """Attempt one message's ``once`` app deliveries now, concurrently; return the apps'
        replies as Omi chat messages (for the ``memory_created`` event).

        Each attempt is bounded by ``timeout_s``; the whole call by that too (plus the store's
        time). Cancellation: attempts in flight are cancelled; their leases expire and the
        workers then fail them without sending (``once`` is never sent twice).
        """
        lease_s = self._config.timeout_s + self._config.lease_margin_s
        claimed = await self._repo.claim_message(message_id, wall_now(), lease_s)
        replies: list[dict[str, object]] = []

        async def one(due: DueDelivery) -> None:
            await trio.lowlevel.checkpoint()
            try:
                outcome = await self.attempt(due, relay=False)
            except Exception:  # recording failed: the lease expires, the workers fail it
                LOGGER.exception(
                    "webhook delivery %s: recording the attempt failed", due.delivery.id
                )
                return
            message = self._relay(due, outcome.body) if outcome.ok else None
            if message is not None:
                replies.append(chat_message(due.endpoint.id, message, wall_now()))

        self._in_flight += len(claimed)
        try:
            async with trio.open_nursery() as nursery:
                for due in claimed:
                    nursery.start_soon(one, due)
        finally:
            self._in_flight -= len(claimed)
        return replies

    async def attempt(self, due: DueDelivery, *, relay: bool = True) -> Outcome:
        """Send one leased delivery, record the attempt, and schedule what comes next.

        A ``once`` delivery leased a second time (the first attempt's worker died before
        recording it) is failed without being sent.
        """
        delivery, endpoint = due.delivery, due.endpoint
        started = wall_now()
        if endpoint.delivery == "once" and delivery.attempts > 1:
            outcome = Outcome(False, None, "not retried: delivery is 'once'")
            log = Attempt(delivery.attempts, started, 0.0, None, outcome.error)
            self._counts["failed"] += 1
            await self._store_outcome(due, log, "failed", None, None)
            return outcome
        headers = attempt_headers(
            endpoint.secrets_at(started),
            delivery.message_id,
            int(started),
            due.payload,
            due.content_type,
        )
        url = append_query(endpoint.url, {"uid": delivery.user_id})
        outcome = await self.send(url, headers, due.payload)
        finished = wall_now()
        log = Attempt(delivery.attempts, started, finished - started, outcome.status, outcome.error)
        await self._record(due, log, outcome, finished)
        if relay and outcome.ok and endpoint.owner_kind == "app":
            self._relay(due, outcome.body)
        return outcome

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        """POST ``body`` once within ``timeout_s`` and classify the result (never raises)."""
        self._counts["attempts"] += 1
        with trio.move_on_after(self._config.timeout_s):
            await trio.lowlevel.checkpoint()
            try:
                response = await self._lane.request("POST", url, content=body, headers=headers)
            except lanes.UpstreamStatusError as exc:
                note = " (redirects are not followed)" if 300 <= exc.status < 400 else ""
                return Outcome(False, exc.status, f"HTTP {exc.status}{note}", exc.retry_after_s)
            except lanes.BreakerOpenError as exc:
                self._counts["breaker"] += 1
                return Outcome(False, None, "circuit open: endpoint failing", exc.retry_after_s)
            except lanes.LaneError as exc:
                return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
            except SsrfError as exc:
                return Outcome(False, None, f"refused by the SSRF guard: {exc}"[:500])
            return Outcome(True, response.status, None, None, response.body)
        self._counts["timeouts"] += 1
        return Outcome(False, None, f"timed out after {self._config.timeout_s:g} s")

    async def _record(self, due: DueDelivery, log: Attempt, outcome: Outcome, now: float) -> None:
        status, next_at, disable = self._decide(due, outcome, now)
        await self._store_outcome(due, log, status, next_at, disable)

    async def _store_outcome(
        self,
        due: DueDelivery,
        log: Attempt,
        status: DeliveryStatus,
        next_at: float | None,
        disable: str | None,
    ) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_BUDGET_S):
            await self._repo.record_attempt(
                due.delivery.id,
                log,
                outcome=status,
                next_attempt_at=next_at,
                disable_reason=disable,
            )

    def _decide(
        self, due: DueDelivery, outcome: Outcome, now: float
    ) -> tuple[DeliveryStatus, float | None, str | None]:
        if outcome.ok:
            self._counts["delivered"] += 1
            return "delivered", None, None
        if outcome.gone:
            self._counts["failed"] += 1
            self._counts["disabled"] += 1
            return "failed", None, "410 Gone"
        if due.endpoint.delivery == "once":
            self._counts["failed"] += 1
            return "failed", None, None
        delay = next_delay_s(self._config, due.delivery.attempts, outcome.retry_after_s, self._rng)
        if delay is None:
            self._counts["failed"] += 1
            return "failed", None, None
        self._counts["retried"] += 1
        return "pending", now + delay, None

    def _relay(self, due: DueDelivery, body: bytes) -> str | None:
        """Push an app's reply to the user as ``app_message``; return the reply text."""
        message = reply_message(body)
        if message is None:
            return None
        self._app_messages += 1
        event: dict[str, object] = {
            "type": "app_message",
            "app_id": due.endpoint.id,
            "name": due.endpoint.name,
            "message": message,
        }
        self._on_event(due.delivery.user_id, event)
        return message

    def statistics(self) -> DeliveryStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return DeliveryStatistics(
            in_flight=self._in_flight,
            attempts=c["attempts"],
            delivered=c["delivered"],
            retried=c["retried"],
            failed=c["failed"],
            disabled_endpoints=c["disabled"],
            timeouts=c["timeouts"],
            breaker_rejections=c["breaker"],
            app_messages=self._app_messages,
        )
