"""HTTP lane against a real loopback server and httpx.MockTransport: mapping, breaker, bulkheads."""

from __future__ import annotations

import contextlib
import email.utils
import json as jsonlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from lanes import (
    BreakerOpenError,
    BreakerState,
    HttpLane,
    HttpLaneSettings,
    LaneClosedError,
    LaneFullError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    open_http_lane,
    parse_retry_after,
    target_key,
    target_label,
)
from tests.fakes.http_targets import HttpTargets, open_http_targets

#: Real-clock bound for every socket test: a hang fails the test instead of the suite.
NETWORK_DEADLINE_S = 10


@pytest.fixture(name="targets")
async def _targets() -> AsyncIterator[HttpTargets]:
    async with open_http_targets() as targets:
        yield targets


@pytest.fixture(name="lane")
async def _lane() -> AsyncIterator[HttpLane]:
    settings = HttpLaneSettings(failure_threshold=3, read_timeout_s=5)
    async with open_http_lane("test", settings) as lane:
        yield lane


# -- the real server ------------------------------------------------------------------------------


async def test_ok_returns_a_bounded_frozen_response(targets: HttpTargets, lane: HttpLane) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S):
        response = await lane.request(
            "POST",
            targets.url("/echo"),
            json={"a": 1},
            headers={"X-Trace": "t1"},
            params={"q": "2"},
        )
    assert response.status == 200
    assert jsonlib.loads(response.body) == {"a": 1}
    assert response.headers["x-echo-method"] == "POST"
    assert response.elapsed_s > 0
    seen = targets.requests[-1]
    assert (seen.method, seen.path, seen.query) == ("POST", "/echo", {"q": ["2"]})
    assert seen.headers["x-trace"] == "t1"
    assert seen.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "status", "retry_after_s"),
    [
        ("/500", 500, None),
        ("/503", 503, 7.0),
        ("/429", 429, 3.0),
        ("/410", 410, None),
        ("/redirect", 302, None),
    ],
)
async def test_non_2xx_raises_status_error(
    targets: HttpTargets, lane: HttpLane, path: str, status: int, retry_after_s: float | None
) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S), pytest.raises(UpstreamStatusError) as info:
        await lane.request("GET", targets.url(path))
    error = info.value
    assert (error.status, error.retry_after_s) == (status, retry_after_s)
    assert error.target == f"http://127.0.0.1:{targets.port}{path}"
    assert error.body == f"status {status}".encode()
    assert targets.count("/ok") == 0  # the redirect was not followed


async def test_client_errors_do_not_count_against_the_target(
    targets: HttpTargets, lane: HttpLane
) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S):
        for _ in range(5):
            with pytest.raises(UpstreamStatusError):
                await lane.request("GET", targets.url("/410"))
    stats = lane.statistics().targets[_label(targets.url("/410"))]
    assert (stats.state, stats.failed, stats.breaker.failures) == (BreakerState.CLOSED, 5, 0)


async def test_hang_times_out(targets: HttpTargets) -> None:
    settings = HttpLaneSettings(read_timeout_s=0.2)
    with trio.fail_after(NETWORK_DEADLINE_S):
        async with open_http_lane("t", settings) as lane:
            with pytest.raises(UpstreamTimeoutError) as info:
                await lane.request("GET", targets.url("/hang"))
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("path", ["/close", "/garbage"])
async def test_broken_http_is_a_protocol_error(
    targets: HttpTargets, lane: HttpLane, path: str
) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S), pytest.raises(UpstreamProtocolError):
        await lane.request("GET", targets.url(path))


async def test_connection_refused(lane: HttpLane) -> None:
    with socket.socket() as probe:  # take a free port, then close it: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(NETWORK_DEADLINE_S), pytest.raises(UpstreamConnectError) as info:
        await lane.request("GET", f"http://127.0.0.1:{port}/x")
    assert info.value.target == f"http://127.0.0.1:{port}/x"


async def test_read_limit_stops_reading(targets: HttpTargets) -> None:
    settings = HttpLaneSettings(read_limit_bytes=64 * 1024)
    with trio.fail_after(NETWORK_DEADLINE_S):
        async with open_http_lane("t", settings) as lane:
            response = await lane.request("GET", targets.url("/big"))
            assert len(response.body) == 64 * 1024
            again = await lane.request("GET", targets.url("/ok"))  # the lane still works
    assert again.body == b"ok"


async def test_breaker_opens_then_fails_fast_without_sending(
    targets: HttpTargets, lane: HttpLane
) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S):
        for _ in range(3):
            with pytest.raises(UpstreamStatusError):
                await lane.request("GET", targets.url("/500"))
        for _ in range(5):
            with pytest.raises(BreakerOpenError) as info:
                await lane.request("GET", targets.url("/500"))
        assert info.value.retry_after_s > 25
        assert targets.count("/500") == 3
        assert (await lane.request("GET", targets.url("/ok"))).status == 200  # other targets flow
    stats = lane.statistics()
    assert (stats.requests, stats.failed, stats.rejected_breaker, stats.succeeded) == (9, 3, 5, 1)
    assert stats.targets[_label(targets.url("/500"))].state is BreakerState.OPEN


async def test_hanging_target_does_not_delay_healthy_ones(targets: HttpTargets) -> None:
    """The hang target fills its bulkhead and queues more callers there, not at the lane cap."""
    settings = HttpLaneSettings(
        max_concurrency=3, per_target_concurrency=2, per_target_max_waiting=10, read_timeout_s=30
    )
    with trio.fail_after(NETWORK_DEADLINE_S):
        async with open_http_lane("iso", settings) as lane, trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(_ignore_errors, lane, targets.url("/hang"))
            await targets.wait_for_count("/hang", 2)
            hang = lane.statistics().targets[_label(targets.url("/hang"))]
            assert (hang.in_flight, hang.waiting, hang.rejected_full) == (12, 10, 0)
            started = trio.current_time()
            for _ in range(20):
                assert (await lane.request("GET", targets.url("/ok"))).status == 200
            assert trio.current_time() - started < 5  # typically a few ms
            with pytest.raises(LaneFullError) as shed:  # the 13th hang caller is shed at once
                await lane.request("GET", targets.url("/hang"))
            nursery.cancel_scope.cancel()
    assert _label(targets.url("/hang")) in str(shed.value) and "/hang" not in str(shed.value)
    assert targets.count("/hang") == 2
    stats = lane.statistics()
    assert stats.targets[_label(targets.url("/hang"))].cancelled == 12
    assert stats.targets[_label(targets.url("/hang"))].breaker.failures == 0


async def _ignore_errors(lane: HttpLane, url: str) -> None:
    await trio.lowlevel.checkpoint()
    with contextlib.suppress(LaneFullError):
        await lane.request("GET", url)


async def test_client_closed_after_normal_exit(targets: HttpTargets) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S):
        async with open_http_lane("t") as lane:
            await lane.request("GET", targets.url("/ok"))
            closed_inside = lane.is_closed
    assert not closed_inside
    assert lane.is_closed
    with pytest.raises(LaneClosedError):
        await lane.request("GET", targets.url("/ok"))


async def test_client_closed_after_error_in_body(targets: HttpTargets) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S), pytest.raises(KeyError):
        async with open_http_lane("t") as lane:
            await lane.request("GET", targets.url("/ok"))
            raise KeyError("boom")
    assert lane.is_closed


async def test_client_closed_after_cancellation(targets: HttpTargets) -> None:
    with trio.fail_after(NETWORK_DEADLINE_S):
        with trio.move_on_after(0.3) as scope:
            async with open_http_lane("t") as lane:
                await lane.request("GET", targets.url("/hang"))
        assert scope.cancelled_caught
    assert lane.is_closed
    stats = lane.statistics()
    assert (stats.cancelled, stats.failed, stats.in_flight) == (1, 0, 0)


# -- MockTransport ----------------------------------------------------------------------------


Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def mock_lane(handler: Handler, **settings: Any) -> AbstractAsyncContextManager[HttpLane]:
    return open_http_lane(
        "mock", HttpLaneSettings(**settings), transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize(
    ("exc", "mapped"),
    [
        (httpx.ConnectTimeout("t"), UpstreamTimeoutError),
        (httpx.PoolTimeout("t"), UpstreamTimeoutError),
        (httpx.ConnectError("refused"), UpstreamConnectError),
        (httpx.ReadError("reset"), UpstreamConnectError),
        (httpx.RemoteProtocolError("bad"), UpstreamProtocolError),
        (httpx.DecodingError("gzip"), UpstreamProtocolError),
    ],
)
async def test_httpx_errors_are_mapped_once(exc: Exception, mapped: type[UpstreamError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with mock_lane(handler) as lane:
        with pytest.raises(mapped) as info:
            await lane.request("GET", "http://upstream.test/a?secret=1")
    assert info.value.__cause__ is exc
    assert info.value.target == "http://upstream.test:80/a"


async def test_explicit_target_shares_one_breaker(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502)

    async with mock_lane(handler, failure_threshold=2) as lane:
        for path in ("/a", "/b"):
            with pytest.raises(UpstreamStatusError):
                await lane.request("POST", f"http://hooks.test{path}", target="app-7")
        with pytest.raises(BreakerOpenError) as info:
            await lane.request("POST", "http://hooks.test/c", target="app-7")
    assert info.value.name == "app-7"


async def test_half_open_probe_recovers(autojump_clock: trio.testing.MockClock) -> None:
    healthy = False

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if healthy else 503)

    async with mock_lane(handler, failure_threshold=1, open_duration_s=30) as lane:
        with pytest.raises(UpstreamStatusError):
            await lane.request("GET", "http://t.test/")
        with pytest.raises(BreakerOpenError):
            await lane.request("GET", "http://t.test/")
        await trio.sleep(30)
        healthy = True
        assert (await lane.request("GET", "http://t.test/")).status == 200
        state = lane.statistics().targets["http://t.test:80/"].state
    assert state is BreakerState.CLOSED


async def test_cancelled_probe_does_not_wedge_the_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mode = "fail"

    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        if mode == "hang":
            await trio.sleep_forever()
        return httpx.Response(200 if mode == "ok" else 500)

    async with mock_lane(handler, failure_threshold=1, open_duration_s=10) as lane:
        with pytest.raises(UpstreamStatusError):
            await lane.request("GET", "http://t.test/")
        await trio.sleep(10)
        mode = "hang"
        with trio.move_on_after(1):
            await lane.request("GET", "http://t.test/")  # the probe, cancelled
        mode = "ok"
        assert (await lane.request("GET", "http://t.test/")).status == 200


async def test_registry_is_bounded_and_evicts_least_recent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async with mock_lane(handler, max_targets=3) as lane:
        for path in ("/1", "/2", "/3", "/1", "/4"):
            await lane.request("GET", f"http://t.test{path}")
        keys = set(lane.statistics().targets)
    assert keys == {_label(f"http://t.test/{n}") for n in (1, 3, 4)}


async def test_registry_forgets_idle_targets(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async with mock_lane(handler, target_idle_s=3600) as lane:
        await lane.request("GET", "http://t.test/old")
        await trio.sleep(3000)
        await lane.request("GET", "http://t.test/recent")
        await trio.sleep(700)
        await lane.request("GET", "http://t.test/new")
        keys = set(lane.statistics().targets)
    assert keys == {_label("http://t.test/recent"), _label("http://t.test/new")}


async def test_registry_never_evicts_a_busy_target(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    async with mock_lane(handler, max_targets=1) as lane, trio.open_nursery() as nursery:
        nursery.start_soon(lane.request, "GET", "http://t.test/busy")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LaneFullError):
            await lane.request("GET", "http://t.test/other")
        release.set()
    assert set(lane.statistics().targets) == {_label("http://t.test/busy")}
    assert lane.statistics().rejected_full == 1


async def test_bulkhead_with_no_waiting_sheds_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(5)
        return httpx.Response(200)

    settings = {"per_target_concurrency": 1, "per_target_max_waiting": 0}
    async with mock_lane(handler, **settings) as lane, trio.open_nursery() as nursery:
        nursery.start_soon(lane.request, "GET", "http://t.test/")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LaneFullError):
            await lane.request("GET", "http://t.test/")
        assert (await lane.request("GET", "http://other.test/")).status == 200
    breaker = lane.statistics().targets["http://t.test:80/"].breaker
    assert (breaker.successes, breaker.failures, breaker.ignored) == (1, 0, 1)


async def test_rejects_relative_and_non_http_urls() -> None:
    async with mock_lane(lambda request: httpx.Response(200)) as lane:
        for url in ("/relative", "ftp://files.test/x"):
            with pytest.raises(ValueError):
                await lane.request("GET", url)


def test_target_key_strips_credentials_query_and_fragment() -> None:
    assert target_key("http://user:pw@Example.COM/a/b?q=1#f") == "http://example.com:80/a/b"
    assert target_key("https://x.test") == "https://x.test:443/"
    assert target_key("http://[::1]:8080/p?x=1") == "http://[::1]:8080/p"


def _label(url: str) -> str:
    return target_label(target_key(url))


def test_a_target_is_shown_without_its_path() -> None:
    secret = "https://hooks.test/services/T0/B0/Xk2sEcReT"
    label = target_label(target_key(secret))
    assert label.startswith("https://hooks.test:443/~") and "sEcReT" not in label
    assert label == target_label(target_key(secret + "?q=1"))  # the key's own rules apply
    assert label != target_label(target_key("https://hooks.test/services/T0/B0/other"))
    assert target_label("https://x.test:443/") == "https://x.test:443/"
    assert target_label("app-7") == "app-7"  # a caller's own name for a target


async def test_statistics_and_errors_never_carry_a_path(targets: HttpTargets) -> None:
    """The key isolates each path; what leaves the lane as text names the host only."""
    settings = HttpLaneSettings(failure_threshold=1, minimum_calls=1, open_duration_s=60)
    url = targets.url("/500?token=q")
    async with open_http_lane("w", settings) as lane:
        with trio.fail_after(NETWORK_DEADLINE_S):
            with pytest.raises(UpstreamStatusError) as failed:
                await lane.request("POST", url)
            with pytest.raises(BreakerOpenError) as refused:
                await lane.request("POST", url)
        stats = lane.statistics()
    assert failed.value.target == target_key(url)  # for code: the key itself
    texts = [str(failed.value), str(refused.value), repr(stats)]
    assert all("/500" not in text and "token" not in text for text in texts)
    assert list(stats.targets) == [_label(url)]
    assert stats.targets[_label(url)].breaker.name == _label(url)


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (parse_retry_after(future) or 0) <= 120


async def test_lane_wide_cap_bounds_all_targets(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return httpx.Response(200)

    async with mock_lane(handler, max_concurrency=2) as lane, trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(lane.request, "GET", f"http://t{index}.test/")
        await trio.testing.wait_all_tasks_blocked()
        assert lane.statistics().in_flight == 6
    assert peak == 2
    stats = lane.statistics()
    assert (stats.succeeded, stats.in_flight) == (6, 0)
    assert stats.latency_max_s == pytest.approx(1)
    assert trio.current_time() == pytest.approx(3)
