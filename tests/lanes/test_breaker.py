"""CircuitBreaker state machine on Trio's virtual clock: thresholds, probes, cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lanes import BreakerOpenError, BreakerState, CircuitBreaker


class Boom(Exception):
    """A failure of the guarded call."""


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().record_failure()


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().record_success()


async def test_opens_at_exactly_the_failure_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker("t", failure_threshold=3)
    fail(breaker, 2)
    assert breaker.statistics().state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.statistics().state is BreakerState.OPEN
    with pytest.raises(BreakerOpenError) as info:
        breaker.acquire()
    assert info.value.name == "t"
    assert info.value.retry_after_s == pytest.approx(30.0)
    stats = breaker.statistics()
    assert (stats.failures, stats.rejected, stats.opened_count) == (3, 1, 1)


async def test_a_success_resets_the_consecutive_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker("t", failure_threshold=3)
    fail(breaker, 2)
    succeed(breaker)
    assert breaker.statistics().consecutive_failures == 0
    fail(breaker, 2)
    assert breaker.statistics().state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.statistics().state is BreakerState.OPEN


async def test_context_manager_classifies_exit(autojump_clock: trio.testing.MockClock) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker("t", failure_threshold=2)
    with breaker.acquire():
        pass
    with pytest.raises(Boom), breaker.acquire():
        raise Boom
    with breaker.acquire() as permit:
        permit.record_failure()  # explicit result wins over the normal exit
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.state) == (1, 2, BreakerState.OPEN)


async def test_half_opens_after_the_open_duration(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("t", failure_threshold=1, open_duration_s=30)
    fail(breaker)
    await trio.sleep(10)
    assert breaker.statistics().retry_after_s == pytest.approx(20.0)
    with pytest.raises(BreakerOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after_s == pytest.approx(20.0)
    await trio.sleep(19.5)
    assert breaker.statistics().state is BreakerState.OPEN
    await trio.sleep(0.5)
    assert breaker.statistics().state is BreakerState.HALF_OPEN


async def test_half_open_admits_exactly_k_probes(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("t", failure_threshold=1, open_duration_s=5, half_open_max_probes=2)
    fail(breaker)
    await trio.sleep(5)
    first, second = breaker.acquire(), breaker.acquire()
    assert (first.probe, second.probe) == (True, True)
    with pytest.raises(BreakerOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after_s == 0.0
    first.record_success()
    assert breaker.statistics().state is BreakerState.HALF_OPEN  # needs both probes to succeed
    with pytest.raises(BreakerOpenError):
        breaker.acquire()  # a finished probe does not free a slot in this period
    second.record_success()
    assert breaker.statistics().state is BreakerState.CLOSED
    succeed(breaker, 5)  # closed again: calls flow freely


async def test_probe_failure_reopens(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("t", failure_threshold=1, open_duration_s=5)
    fail(breaker)
    await trio.sleep(5)
    breaker.acquire().record_failure()
    assert breaker.statistics().state is BreakerState.OPEN
    assert breaker.statistics().opened_count == 2
    assert breaker.statistics().retry_after_s == pytest.approx(5.0)


async def test_cancelled_probe_releases_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    """The original bug: a probe cancelled between allow and record wedged the breaker."""
    breaker = CircuitBreaker("t", failure_threshold=1, open_duration_s=5)
    fail(breaker)
    await trio.sleep(5)
    with trio.move_on_after(1) as scope, breaker.acquire():
        await trio.sleep_forever()
    assert scope.cancelled_caught
    stats = breaker.statistics()
    assert (stats.state, stats.probes_in_flight, stats.ignored) == (BreakerState.HALF_OPEN, 0, 1)
    with breaker.acquire():  # the slot is free again
        pass
    assert breaker.statistics().state is BreakerState.CLOSED


async def test_cancellation_never_counts_as_failure(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("t", failure_threshold=1)
    for _ in range(3):
        with trio.move_on_after(1), breaker.acquire():
            await trio.sleep_forever()
    stats = breaker.statistics()
    assert (stats.state, stats.failures, stats.ignored, stats.calls) == (
        BreakerState.CLOSED,
        0,
        3,
        3,
    )


async def test_failure_rate_rule(autojump_clock: trio.testing.MockClock) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker(
        "t", failure_threshold=100, failure_rate_threshold=0.5, window_size=10, minimum_calls=6
    )
    for _ in range(2):  # F S F S: rate 50 % but only 4 calls < minimum 6
        fail(breaker)
        succeed(breaker)
    assert breaker.statistics().state is BreakerState.CLOSED
    succeed(breaker)  # 2/5
    assert breaker.statistics().state is BreakerState.CLOSED
    fail(breaker)  # 3/6 = 50 % with the minimum reached
    assert breaker.statistics().state is BreakerState.OPEN


async def test_sliding_window_forgets_old_failures(autojump_clock: trio.testing.MockClock) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker(
        "t", failure_threshold=100, failure_rate_threshold=0.5, window_size=4, minimum_calls=4
    )
    fail(breaker)
    succeed(breaker, 6)  # the failure has slid out of the 4-call window
    assert breaker.statistics().failure_rate == 0.0
    fail(breaker)  # 1/4
    assert breaker.statistics().state is BreakerState.CLOSED
    fail(breaker)  # 2/4
    assert breaker.statistics().state is BreakerState.OPEN


async def test_stale_permit_does_not_move_the_state(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("t", failure_threshold=1, open_duration_s=5)
    slow = breaker.acquire()  # issued while closed
    fail(breaker)
    await trio.sleep(5)
    slow.record_success()  # a late answer from before the trip is not a probe result
    assert breaker.statistics().state is BreakerState.HALF_OPEN
    assert breaker.statistics().successes == 1


async def test_resolving_twice_counts_once(autojump_clock: trio.testing.MockClock) -> None:
    await trio.lowlevel.checkpoint()  # in Trio: the breaker reads trio.current_time()
    breaker = CircuitBreaker("t")
    permit = breaker.acquire()
    permit.record_failure()
    permit.release()
    permit.record_success()
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (1, 0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"window_size": 0},
        {"window_size": 5, "minimum_calls": 6},
        {"open_duration_s": -1},
        {"half_open_max_probes": 0},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("t", **kwargs)  # type: ignore[arg-type]
