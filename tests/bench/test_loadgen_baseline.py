"""The load generator, the receiver fleet and the baseline (a real uvicorn subprocess)."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import httpx
import pytest
import trio

from bench.loadgen import (
    LoadConfig,
    NotLoopbackError,
    check_loopback,
    expected_token,
    main_listen,
    run_listen_load,
)
from bench.receivers import (
    ReceiverFleet,
    register_fleet,
    run_listen_with_receivers,
    serve_receivers,
)
from tests.helpers import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "bench-token"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
FAST_STOP = ("--timeout-graceful-shutdown", "1")

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@asynccontextmanager
async def baseline() -> AsyncIterator[tuple[int, int]]:
    """``python -m bench.baseline`` on port 0: yields ``(port, pid)``; always stopped."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.baseline", "--token", TOKEN, *FAST_STOP],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(START_TIMEOUT_S):
            while not (match := re.search(rb"LISTENING (\d+)", buffer)):
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the baseline exited before listening"
                buffer += chunk
        yield int(match.group(1)), process.pid
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT_S):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


def _config(port: int, **overrides: object) -> LoadConfig:
    values: dict[str, object] = {
        "url": f"ws://127.0.0.1:{port}/v4/listen",
        "tokens": (TOKEN,),
        "sessions": 5,
        "ramp_s": 0.5,
        "duration_s": 2,
        "grace_s": 3.0,
        "max_total_s": 15.0,
    }
    values.update(overrides)
    return LoadConfig(**values)  # type: ignore[arg-type]


@pytest.mark.slow
async def test_every_session_gets_every_segment_in_order_from_the_baseline() -> None:
    """Sessions spread over two worker processes; the rejected run stays in this process."""
    with trio.fail_after(40):
        async with baseline() as (port, pid):
            stats_url = f"http://127.0.0.1:{port}/v1/stats"
            config = _config(port, server_pid=pid, stats_url=stats_url, processes=2)
            result = await run_listen_load(config)
            rejected = await run_listen_load(
                replace(config, tokens=("wrong",), sessions=2, duration_s=1, processes=1)
            )

    assert (result.connected, result.succeeded, dict(result.failed)) == (5, 5, {})
    assert (result.segments_expected, result.segments_received) == (10, 10)
    assert (result.lost, result.reordered, result.mismatched, result.unexpected) == (0, 0, 0, 0)
    assert result.latency.count == 10
    # Segments leave on the baseline's 0.6 s tick: never before the audio, at most ~a tick late.
    assert 0.0 < result.latency.p50_s <= result.latency.max_s < 2.0
    assert result.frames_sent == 5 * 20
    assert 9.0 < result.frame_rate_per_session < 11.0
    assert result.events.get("service_status", 0) >= 5
    assert not result.truncated
    assert result.server is not None and result.server.rss_max_bytes > 10 * 2**20
    assert result.server.threads_max >= 1
    assert result.loop_lag_p99_max_s is not None
    assert result.stats is not None and result.stats["sessions"]["total"] >= 5
    assert result.token_sent_at == {}  # clocks differ between processes
    assert dict(rejected.failed) == {"rejected:403": 2} and rejected.connected == 0


@pytest.mark.slow
async def test_receivers_get_the_realtime_transcripts_of_the_baseline() -> None:
    profiles = {"healthy": 2, "failing": 1, "slow": 1}
    with trio.fail_after(40):
        async with baseline() as (port, _pid):
            api = f"http://127.0.0.1:{port}"
            run = await run_listen_with_receivers(
                _config(port, sessions=2), profiles, api_url=api,
                kinds=("realtime_transcript",), slow_s=0.3,
            )  # fmt: skip
            async with httpx.AsyncClient() as http:
                stats = (await http.get(f"{api}/v1/stats")).json()

    assert (run.load.succeeded, run.load.lost) == (2, 0)
    healthy = run.delivery["healthy"]
    assert healthy.expected == healthy.delivered == 2 * 2 * 2  # endpoints x sessions x s
    assert healthy.latency.count == 8 and 0.0 < healthy.latency.p50_s < 2.0
    assert run.delivery["slow"].dropped == 0
    realtime = [d for d in run.deliveries if d.kind == "realtime_transcript"]
    assert realtime and all(d.query.startswith("uid=") for d in realtime)
    assert all(d.header("content-type") == "application/json" for d in realtime)
    # The PR-era quirk kept on purpose: a 500 counts as a success, so the breaker never opens.
    assert run.delivery["failing"].dropped == 0
    assert stats["webhooks"]["non_2xx"] > 0 and stats["webhooks"]["breakers"]["open"] == 0
    assert run.fleet.profiles["healthy"].realtime >= 2
    assert run.fleet.profiles["failing"].answered == run.fleet.profiles["failing"].requests


async def test_receiver_profiles_answer_as_named_and_hung_handlers_end_at_shutdown() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            profiles = {"healthy": 1, "failing": 1, "slow": 1, "hanging": 2}
            fleet: ReceiverFleet = await nursery.start(
                partial(serve_receivers, profiles, slow_s=0.2)
            )
            async with httpx.AsyncClient(timeout=5.0) as http:
                ok = await http.post(fleet.urls["healthy"][0], json={"segments": []})
                failed = await http.post(fleet.urls["failing"][0], content=b"x")
                start = trio.current_time()
                slow = await http.post(fleet.urls["slow"][0], json={})
                slow_s = trio.current_time() - start
            assert await _answer_within(fleet.urls["hanging"][0], 0.3) == b""
            await wait_until(lambda: fleet.statistics().profiles["hanging"].hanging_now == 0)
            # A client that never gives up is cut by the shutdown.
            nursery.start_soon(_answer_within, fleet.urls["hanging"][1], 60.0)
            await wait_until(lambda: fleet.statistics().profiles["hanging"].hanging_now == 1)
            nursery.cancel_scope.cancel()

    assert (ok.status_code, failed.status_code, slow.status_code) == (200, 500, 200)
    assert slow_s >= 0.2
    stats = fleet.statistics().profiles
    assert stats["hanging"].requests == 2 and stats["hanging"].answered == 0
    assert stats["healthy"].realtime == 1 and stats["failing"].answered == 1


async def _answer_within(url: str, wait_s: float) -> bytes:
    """POST to ``url`` on a raw connection; what came back within ``wait_s``, then close."""
    parts = httpx.URL(url)
    stream = await trio.open_tcp_stream(parts.host, parts.port or 80)
    try:
        request = f"POST {parts.path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}"
        await stream.send_all(request.encode())
        with trio.move_on_after(wait_s):
            return bytes(await stream.receive_some(4096))
        return b""
    finally:
        await trio.aclose_forcefully(stream)


async def test_the_load_generator_refuses_hosts_off_the_machine() -> None:
    for url in ("ws://10.0.0.1:80/v4/listen", "ws://example.com/v4/listen", "ws:///nohost"):
        with pytest.raises(NotLoopbackError):
            _config(0, url=url)
    for url in ("ws://localhost:1/x", "ws://127.9.9.9:1/x", "ws://[::1]:1/x"):
        check_loopback(url)
    with pytest.raises(NotLoopbackError):
        _config(1, stats_url="http://192.168.1.1/v1/stats")
    with pytest.raises(NotLoopbackError):
        await register_fleet("http://8.8.8.8", TOKEN, ["http://127.0.0.1:1/hook/healthy/0"])
    assert main_listen(["--url", "ws://10.0.0.1:1/v4/listen", "--token", TOKEN]) == 2


def test_expected_tokens_match_the_fake_stt_of_the_server() -> None:
    fake = pytest.importorskip("server.stt.fake")
    second = bytes(range(256)) * 125
    assert expected_token(7, second) == fake.fake_text(7, second)


def test_a_token_of_a_second_not_yet_sent_is_not_a_result() -> None:
    """A resumed conversation's merged text carries an earlier session's tokens: they count
    as unexpected, not as this session's results (they made latencies negative and could hide
    a loss); the real token, once its second is sent, is the one timed."""
    from bench.loadgen.session import SessionRecord

    rec = SessionRecord(0)
    rec.expected = {0: "seg0 0000000a", 1: "seg1 0000000b"}
    rec.last_frame_at[0] = 10.0
    rec.see(0, "0000000a", 10.02)
    rec.see(1, "0000000b", 10.03)  # an earlier session's seg1: second 1 is not sent yet
    assert (rec.unexpected, sorted(rec.first_seen)) == (1, [0])
    rec.writing_last_of = 1  # its last frame is being written: its answer may come first
    rec.see(1, "0000000b", 11.01)
    rec.last_frame_at[1] = 11.0
    assert rec.latencies() == pytest.approx([0.02, 0.01])
    assert (rec.lost(), rec.mismatched, rec.unexpected) == (0, 0, 1)
