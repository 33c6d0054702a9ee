"""CircuitBreaker: a synchronous state machine on the Trio clock that stops calls to a sick target.

No tasks, no I/O, no locks: every method is plain ``def`` and runs to completion between Trio
checkpoints, so one breaker can be shared by any number of tasks of one ``trio.run``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Final, final

import trio

from ._errors import BreakerOpenError

__all__ = ["BreakerPermit", "BreakerState", "BreakerStatistics", "CircuitBreaker"]

#: Consecutive failures that open a closed breaker (pybreaker, purgatory and Envoy use 5).
DEFAULT_FAILURE_THRESHOLD: Final = 5
#: Seconds an open breaker refuses calls before it lets a probe through.
DEFAULT_OPEN_DURATION_S: Final = 30.0
#: Count-based sliding window for the optional failure-rate rule.
DEFAULT_WINDOW_SIZE: Final = 20
#: No failure rate is judged before this many calls are in the window.
DEFAULT_MINIMUM_CALLS: Final = 10


class BreakerState(enum.Enum):
    """Where a :class:`CircuitBreaker` is in its cycle."""

    #: Calls flow; failures are counted.
    CLOSED = "closed"
    #: Calls are refused at once with :class:`BreakerOpenError` until the open duration ends.
    OPEN = "open"
    #: A bounded number of probe calls may run; their outcome closes or re-opens the breaker.
    HALF_OPEN = "half_open"


class _Outcome(enum.Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker`.

    Attributes:
        name: the breaker's name.
        state: the current state (an expired open period already reads as half-open).
        consecutive_failures: failures since the last success in the closed state.
        failure_rate: failures / calls in the sliding window (0.0 when empty).
        calls: permits handed out (probes included).
        successes: permits that recorded a success.
        failures: permits that recorded a failure.
        rejected: calls refused with :class:`BreakerOpenError`.
        ignored: permits released without a result (cancelled, or never attempted).
        opened_count: how many times the breaker opened.
        probes_in_flight: half-open probes currently running.
        retry_after_s: seconds until an open breaker admits a probe (0.0 otherwise).
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    failure_rate: float
    calls: int
    successes: int
    failures: int
    rejected: int
    ignored: int
    opened_count: int
    probes_in_flight: int
    retry_after_s: float


@final
class CircuitBreaker:
    """A circuit breaker: after enough failures it refuses calls for a while, then probes.

    Think of a fuse that resets itself: while CLOSED, calls flow and failures are counted; when
    too many fail it trips OPEN and every call is refused at once (no waiting on a dead target);
    after ``open_duration_s`` it turns HALF_OPEN and lets ``half_open_max_probes`` trial calls
    through. If that many probes succeed it closes again; one probe failure re-opens it.

    Rules that open a closed breaker (either one suffices):
        * ``failure_threshold`` consecutive failures (a success resets the count);
        * if ``failure_rate_threshold`` is set: a failure rate >= that fraction over the last
          ``window_size`` calls, once at least ``minimum_calls`` calls are in the window
          (Resilience4j's count-based sliding window).

    Usage::

        with breaker.acquire() as permit:   # BreakerOpenError at once if open
            await call_target()            # Exception -> failure, normal exit -> success

    Cancellation:
        A call that ends with ``trio.Cancelled`` (any ``BaseException`` that is not an
        ``Exception``) counts as neither success nor failure, and its probe slot is released,
        so a cancelled probe cannot wedge the breaker half-open.

    Args:
        name: shown in statistics and in :class:`BreakerOpenError`.
        failure_threshold: consecutive failures that open the breaker (>= 1).
        failure_rate_threshold: fraction in (0, 1] that opens the breaker, or ``None`` to use
            only the consecutive rule.
        window_size: calls in the sliding window of the rate rule.
        minimum_calls: calls needed in the window before the rate is judged.
        open_duration_s: seconds the breaker stays open before probing.
        half_open_max_probes: probes admitted per half-open period; this many must succeed
            to close the breaker.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        failure_rate_threshold: float | None = None,
        window_size: int = DEFAULT_WINDOW_SIZE,
        minimum_calls: int = DEFAULT_MINIMUM_CALLS,
        open_duration_s: float = DEFAULT_OPEN_DURATION_S,
        half_open_max_probes: int = 1,
    ) -> None:
        _validate(failure_threshold, failure_rate_threshold, window_size, minimum_calls)
        if open_duration_s < 0:
            raise ValueError("open_duration_s must be >= 0")
        if half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be >= 1")
        self.name = name
        self._failure_threshold = failure_threshold
        self._rate_threshold = failure_rate_threshold
        self._minimum_calls = minimum_calls
        self._open_duration_s = open_duration_s
        self._max_probes = half_open_max_probes
        self._window: deque[bool] = deque(maxlen=window_size)
        self._window_failures = 0
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped on every transition; stale permits do not move the state
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes_started = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._opened_count = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up turns half-open on this read."""
        if self._state is BreakerState.OPEN and self._remaining_open_s() <= 0:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def acquire(self) -> BreakerPermit:
        """Ask to make one call; return a permit that must be resolved or released.

        Raises:
            BreakerOpenError: the breaker is open, or half-open with every probe slot taken.
        """
        state = self.state
        if state is BreakerState.OPEN:
            self._reject(self._remaining_open_s())
        probe = state is BreakerState.HALF_OPEN
        if probe:
            if self._probes_started >= self._max_probes:
                self._reject(0.0)
            self._probes_started += 1
            self._probes_in_flight += 1
        self._counts["calls"] += 1
        return BreakerPermit(self, self._epoch, probe=probe)

    def statistics(self) -> BreakerStatistics:
        """Return a frozen snapshot of this breaker."""
        state = self.state
        window = len(self._window)
        return BreakerStatistics(
            name=self.name,
            state=state,
            consecutive_failures=self._consecutive,
            failure_rate=self._window_failures / window if window else 0.0,
            opened_count=self._opened_count,
            probes_in_flight=self._probes_in_flight,
            retry_after_s=self._remaining_open_s() if state is BreakerState.OPEN else 0.0,
            calls=self._counts["calls"],
            successes=self._counts["successes"],
            failures=self._counts["failures"],
            rejected=self._counts["rejected"],
            ignored=self._counts["ignored"],
        )

    # -- called by BreakerPermit ----------------------------------------------------------------

    def _resolve(self, permit: BreakerPermit, outcome: _Outcome) -> None:
        self._counts[_COUNTER[outcome]] += 1
        current = permit.epoch == self._epoch
        if permit.probe and current:
            self._probes_in_flight -= 1
            if outcome is _Outcome.IGNORED:
                self._probes_started -= 1  # the slot is free for the next probe
        if not current or outcome is _Outcome.IGNORED:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._resolve_probe(outcome)
        elif self._state is BreakerState.CLOSED:
            self._record_closed(outcome is _Outcome.FAILURE)

    # -- internals ------------------------------------------------------------------------------

    def _resolve_probe(self, outcome: _Outcome) -> None:
        if outcome is _Outcome.FAILURE:
            self._transition(BreakerState.OPEN)
            return
        self._probe_successes += 1
        if self._probe_successes >= self._max_probes:
            self._transition(BreakerState.CLOSED)

    def _record_closed(self, failed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_failures -= 1  # subtract on evict: O(1) per call
        self._window.append(failed)
        self._window_failures += failed
        self._consecutive = self._consecutive + 1 if failed else 0
        if self._consecutive >= self._failure_threshold or self._rate_exceeded():
            self._transition(BreakerState.OPEN)

    def _rate_exceeded(self) -> bool:
        if self._rate_threshold is None or len(self._window) < self._minimum_calls:
            return False
        return self._window_failures / len(self._window) >= self._rate_threshold

    def _transition(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1
        self._probes_started = self._probes_in_flight = self._probe_successes = 0
        if state is BreakerState.OPEN:
            self._opened_at = trio.current_time()
            self._opened_count += 1
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.clear()
            self._window_failures = 0

    def _remaining_open_s(self) -> float:
        return max(0.0, self._opened_at + self._open_duration_s - trio.current_time())

    def _reject(self, retry_after_s: float) -> None:
        self._counts["rejected"] += 1
        raise BreakerOpenError(self.name, retry_after_s)


_COUNTERS: Final = ("calls", "successes", "failures", "rejected", "ignored")
_COUNTER: Final = {
    _Outcome.SUCCESS: "successes",
    _Outcome.FAILURE: "failures",
    _Outcome.IGNORED: "ignored",
}


def _validate(threshold: int, rate: float | None, window_size: int, minimum_calls: int) -> None:
    if threshold < 1:
        raise ValueError("failure_threshold must be >= 1")
    if rate is not None and not 0 < rate <= 1:
        raise ValueError("failure_rate_threshold must be in (0, 1] or None")
    if window_size < 1:
        raise ValueError("window_size must be >= 1")
    if not 1 <= minimum_calls <= window_size:
        raise ValueError("minimum_calls must be in [1, window_size]")


@final
class BreakerPermit:
    """Permission for one call through a :class:`CircuitBreaker`; resolve it exactly once.

    Resolve it with :meth:`record_success` / :meth:`record_failure` (for callers that classify
    results themselves, e.g. by HTTP status) or :meth:`release` (no result: the call was not
    made, or was cancelled). Used as a context manager it resolves itself on exit: normal exit
    records a success, an ``Exception`` a failure, anything else (``trio.Cancelled``,
    ``KeyboardInterrupt``) releases. Later resolutions are ignored, so ``release()`` in a
    ``finally`` is always safe.
    """

    __slots__ = ("_breaker", "_outcome", "epoch", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, probe: bool) -> None:
        self._breaker = breaker
        self._outcome = _Outcome.PENDING
        self.epoch = epoch
        self.probe = probe

    def record_success(self) -> None:
        """The call succeeded."""
        self._resolve(_Outcome.SUCCESS)

    def record_failure(self) -> None:
        """The call failed in a way that says the target is unhealthy."""
        self._resolve(_Outcome.FAILURE)

    def release(self) -> None:
        """Give the permit back without a result (counts neither way)."""
        self._resolve(_Outcome.IGNORED)

    def __enter__(self) -> BreakerPermit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.record_success()
        elif isinstance(exc, Exception):
            self.record_failure()
        else:
            self.release()

    def _resolve(self, outcome: _Outcome) -> None:
        if self._outcome is _Outcome.PENDING:
            self._outcome = outcome
            self._breaker._resolve(self, outcome)
