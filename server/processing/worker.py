"""Processing workers: durable, leased summarisation of conversations in ``processing``.

A conversation enters ``processing`` when its listen session (or the sweeper) closes it; that
state change is durable, so a restart picks it up. ``workers`` tasks each lease one conversation
at a time with ``claim_for_processing`` (a worker that dies leaves the lease to expire, and
another worker takes the conversation), summarise it within ``summary_timeout_s``, and then:

* success: ``completed`` with the summary, and in the **same transaction** one
  ``memory_created`` outbox row per subscribed endpoint; then the apps registered with
  ``delivery = once`` are tried once, right away and concurrently (as Omi does before it
  answers), and the user's live sessions get a ``memory_created`` event whose ``messages`` are
  the apps' replies (to this post and to the conversation's realtime posts) as Omi chat
  messages; then the delivery workers are woken for the rest;
* retryable failure: rescheduled after a jittered backoff (5 s, 30 s, 2 min, 10 min by
  default; never sooner than an upstream's ``Retry-After``);
* permanent failure, or the backoff exhausted: ``failed`` with the reason. Never stuck.

Workers wake on the :class:`~server.wakeup.Wakeup` the listen side sets, or every
``poll_interval_s``; once the server drains they take no new work, finish what they hold and
return (an idle worker returns at once).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, final

import trio

from lanes import LaneError
from server.clock import wall_now
from server.drain import Drain
from server.logs import log_context
from server.processing.summarise import Summariser, Summary, SummaryError
from server.store import Conversation, Store
from server.views import conversation_json
from server.wakeup import Wakeup, wait_any
from server.webhooks.payloads import dumps
from server.webhooks.replies import AppReplies
from server.webhooks.repository import outbox_hook
from server.webhooks.signing import new_message_id

__all__ = [
    "DEFAULT_BACKOFF_S",
    "ProcessingConfig",
    "ProcessingStatistics",
    "ProcessingWorkers",
    "ProcessOutcome",
]

LOGGER = logging.getLogger(__name__)

#: Delay before each retry of a failed summary; attempts = len(...) + 1.
DEFAULT_BACKOFF_S: Final = (5.0, 30.0, 120.0, 600.0)

ProcessOutcome = Literal["completed", "retry", "failed", "lost"]
EventSink = Callable[[str, dict[str, object]], object]
#: ``deliver_now(message_id)``: try a message's ``once`` apps now; their replies as chat messages.
DeliverNow = Callable[[str], Awaitable[list[dict[str, object]]]]
#: ``once`` app deliveries wait this long for ``deliver_now`` before the workers take them.
ONCE_HOLD_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """How conversations are processed.

    Attributes:
        workers: conversations summarised at once.
        backoff_s: delay before each retry; a conversation gets ``len(backoff_s) + 1`` attempts.
        jitter: each delay is multiplied by a random factor in ``1 +- jitter``.
        summary_timeout_s: the deadline of one summary.
        lease_margin_s: a lease lasts ``summary_timeout_s`` plus this.
        poll_interval_s: how often the store is polled when no wake-up came.
        max_retry_after_s: the longest upstream ``Retry-After`` honoured.
    """

    workers: int = 2
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    jitter: float = 0.2
    summary_timeout_s: float = 60.0
    lease_margin_s: float = 30.0
    poll_interval_s: float = 5.0
    max_retry_after_s: float = 3600.0

    @property
    def max_attempts(self) -> int:
        """Attempts before a conversation is failed."""
        return len(self.backoff_s) + 1


@dataclass(frozen=True, slots=True)
class ProcessingStatistics:
    """Counters of the processing workers.

    Attributes:
        workers: worker tasks.
        busy: conversations being summarised now.
        completed: conversations completed.
        retried: failed attempts rescheduled.
        failed: conversations marked failed.
        lost: results not written because the conversation was no longer ``processing``.
        last_error: the most recent failure's reason.
    """

    workers: int
    busy: int
    completed: int
    retried: int
    failed: int
    lost: int
    last_error: str | None


@final
class ProcessingWorkers:
    """Leases and summarises conversations (see the module docstring).

    Args:
        store: the conversation store.
        summariser: embedded or OpenAI-compatible.
        config: limits and backoff.
        drain: stop taking work once ``drain.requested`` is set.
        wakeup: set by the listen side when a conversation reaches ``processing``.
        on_event: ``on_event(user_id, event)`` pushes an event to the user's live sessions.
        on_completed: called after a completion committed (wakes webhook delivery).
        rng: jitter source.
        replies: apps' realtime replies, taken into ``memory_created.messages``.
        deliver_now: tries the ``once`` apps of a ``memory_created`` message at once.
    """

    def __init__(
        self,
        store: Store,
        summariser: Summariser,
        config: ProcessingConfig,
        drain: Drain,
        wakeup: Wakeup,
        on_event: EventSink,
        on_completed: Callable[[], None],
        *,
        rng: random.Random | None = None,
        replies: AppReplies | None = None,
        deliver_now: DeliverNow | None = None,
    ) -> None:
        self._replies = replies
        self._deliver_now = deliver_now
        self._store = store
        self._summariser = summariser
        self._config = config
        self._drain = drain
        self._wakeup = wakeup
        self._on_event = on_event
        self._on_completed = on_completed
        self._rng = rng or random.Random()
        self._busy = 0
        self._counts: dict[str, int] = dict.fromkeys(("completed", "retry", "failed", "lost"), 0)
        self._last_error: str | None = None

    async def run(  # noqa: ASYNC114 -- started by Components.start_workers
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``workers`` worker tasks until the server drains and they are idle."""
        async with trio.open_nursery() as nursery:
            for index in range(self._config.workers):
                nursery.start_soon(self._worker, name=f"processing-{index}")
            task_status.started()

    async def _worker(self) -> None:
        await trio.lowlevel.checkpoint()
        lease_s = self._config.summary_timeout_s + self._config.lease_margin_s
        while not self._drain.requested.is_set():
            try:
                claimed = await self._store.claim_for_processing(wall_now(), lease_s, 1)
            except Exception:  # the store is busy or failing: poll again later
                LOGGER.exception("leasing conversations for processing failed")
                claimed = []
            if not claimed:
                await wait_any(
                    self._config.poll_interval_s, self._wakeup.wait, self._drain.requested.wait
                )
                continue
            conversation = claimed[0]
            with log_context(conversation_id=conversation.id, user_id=conversation.user_id):
                try:
                    await self.process(conversation)
                except Exception:  # writing the result failed: the lease expires, it is retried
                    LOGGER.exception("processing conversation %s failed", conversation.id)

    async def process(self, conversation: Conversation) -> ProcessOutcome:
        """Summarise one leased conversation and write the outcome."""
        self._busy += 1
        try:
            summary = await self._summarise(conversation)
        finally:
            self._busy -= 1
        if isinstance(summary, SummaryError):
            return await self._failed(conversation, summary)
        return await self._complete(conversation, summary)

    async def _summarise(self, conversation: Conversation) -> Summary | SummaryError:
        await trio.lowlevel.checkpoint()
        try:
            with trio.fail_after(self._config.summary_timeout_s):
                return await self._summariser.summarise(
                    conversation.segments, language=conversation.language
                )
        except trio.TooSlowError:
            limit = self._config.summary_timeout_s
            return SummaryError(f"summary timed out after {limit:g} s", retryable=True)
        except SummaryError as exc:
            return exc
        except LaneError as exc:
            return SummaryError(f"summariser unavailable: {exc}", retryable=True)
        except Exception as exc:  # a bug in a summariser must not leave the conversation stuck
            LOGGER.exception("summariser crashed on conversation %s", conversation.id)
            return SummaryError(f"summariser error: {type(exc).__name__}: {exc}", retryable=True)

    async def _complete(self, conversation: Conversation, summary: Summary) -> ProcessOutcome:
        now = wall_now()
        message_id = new_message_id()
        hook = outbox_hook(
            "memory_created",
            _memory_payload,
            now,
            message_id=message_id,
            defer_once_apps_s=ONCE_HOLD_S if self._deliver_now is not None else 0.0,
        )
        done = await self._store.complete_conversation(
            conversation.id, summary.fields(), now, extra=hook
        )
        if done is None:
            self._counts["lost"] += 1
            return "lost"
        self._counts["completed"] += 1
        memory = conversation_json(done)
        messages = await self._messages(done.id, message_id)
        self._on_event(
            done.user_id, {"type": "memory_created", "memory": memory, "messages": messages}
        )
        self._on_completed()
        return "completed"

    async def _messages(self, conversation_id: str, message_id: str) -> list[dict[str, object]]:
        """The conversation's app replies: realtime ones kept so far, then the ``once`` apps'
        answers to ``memory_created`` (a failure there only loses the replies, never the event)."""
        await trio.lowlevel.checkpoint()
        messages = self._replies.take(conversation_id) if self._replies is not None else []
        if self._deliver_now is None:
            return messages
        try:
            messages.extend(await self._deliver_now(message_id))
        except Exception:
            LOGGER.exception("delivering memory_created %s to apps failed", message_id)
        return messages

    async def _failed(self, conversation: Conversation, error: SummaryError) -> ProcessOutcome:
        now = wall_now()
        reason = str(error)[:1000]
        self._last_error = reason
        attempts = conversation.processing_attempts
        if not error.retryable or attempts >= self._config.max_attempts:
            written = await self._store.fail_conversation(conversation.id, reason, now)
            self._counts["failed" if written else "lost"] += 1
            return "failed" if written else "lost"
        delay = self._delay_s(attempts, error.retry_after_s)
        written = await self._store.reschedule_processing(conversation.id, now + delay, reason)
        self._counts["retry" if written else "lost"] += 1
        return "retry" if written else "lost"

    def _delay_s(self, attempts: int, retry_after_s: float | None) -> float:
        config = self._config
        base = config.backoff_s[min(attempts, len(config.backoff_s)) - 1]
        delay = base * self._rng.uniform(1 - config.jitter, 1 + config.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, config.max_retry_after_s))
        return delay

    def statistics(self) -> ProcessingStatistics:
        """A snapshot of the counters."""
        return ProcessingStatistics(
            workers=self._config.workers,
            busy=self._busy,
            completed=self._counts["completed"],
            retried=self._counts["retry"],
            failed=self._counts["failed"],
            lost=self._counts["lost"],
            last_error=self._last_error,
        )


def _memory_payload(completed: Conversation) -> bytes:
    return dumps(conversation_json(completed))
