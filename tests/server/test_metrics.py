"""``GET /metrics``: parsed with prometheus_client's own parser, before and after a real session."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import server.metrics
from server.metrics import HOST_LABEL_LIMIT, _Families, _Walker
from server.testing import TrioscribeServer, pcm, start_trioscribe
from tests.fakes.receivers import open_receivers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAMILIES = {
    "trioscribe_sessions_live": "gauge",
    "trioscribe_sessions_frames": "counter",
    "trioscribe_sessions_bytes_in": "counter",
    "trioscribe_sessions_bad_frames": "counter",
    "trioscribe_sessions_vad_skipped_share": "gauge",
    "trioscribe_stt_final_latency_seconds": "histogram",
    "trioscribe_frame_to_segment_latency_seconds": "histogram",
    "trioscribe_conversations": "gauge",
    "trioscribe_processing_outcomes": "counter",
    "trioscribe_webhook_outcomes": "counter",
    "trioscribe_loop_lag_p99_seconds": "gauge",
    "trioscribe_thread_lane_running": "gauge",
    "trioscribe_thread_lane_completed": "counter",
    "trioscribe_http_lane_requests": "counter",
    "trioscribe_stt_finals": "counter",
}


async def _scrape(server: TrioscribeServer) -> tuple[dict[str, str], Samples]:
    async with server.api() as api:
        text = await api.metrics()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
async def test_families_exist_and_move_after_a_real_session(
    trioscribe_server: TrioscribeServer, trioscribe_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.metrics, "CONVERSATIONS_REFRESH_S", 0.0)
    with trio.fail_after(30):
        types, before = await _scrape(trioscribe_server)
        async with trioscribe_server.api() as api, open_receivers() as rx:
            hook_url = rx.url("/rt/p4th-s3cret") + "?key=qu3ry-s3cret"
            await api.create_webhook(trioscribe_token, "realtime_transcript", hook_url)
            async with trioscribe_server.listen(trioscribe_token) as session:
                await session.wait_ready()
                await session.send_frame(b"\x01\x02\x03")  # odd length: a bad PCM16 frame
                await session.send_pcm(pcm(2.0))
                await session.wait_for_text("seg1 ")
                while not rx.on("/rt/p4th-s3cret"):
                    await rx.wait_for_count("/rt/p4th-s3cret", 1)
                _, during = await _scrape(trioscribe_server)
            async with trioscribe_server.api() as api2:
                text = await api2.metrics()
        _, after = await _scrape(trioscribe_server)
        while _value(after, "trioscribe_sessions_live"):
            await trio.sleep(0.05)  # the session reads the close at its next read tick
            _, after = await _scrape(trioscribe_server)
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES
    assert _value(during, "trioscribe_sessions_live") == 1
    assert _value(after, "trioscribe_sessions_live") == 0
    assert _value(after, "trioscribe_sessions_frames_total") == 20 + 1 - 1  # 20 good frames
    assert _value(after, "trioscribe_sessions_bytes_in_total") == 64000 + 3
    assert _value(after, "trioscribe_sessions_bad_frames_total") == 1
    for name in ("stt_final_latency_seconds", "frame_to_segment_latency_seconds"):
        assert _value(before, f"trioscribe_{name}_count") == 0
        assert _value(after, f"trioscribe_{name}_count") == 2, name
    assert _value(before, "trioscribe_conversations", status="in_progress") == 0
    assert _value(after, "trioscribe_conversations", status="in_progress") == 1
    assert _value(after, "trioscribe_thread_lane_completed_total", lane="storage") > _value(
        before, "trioscribe_thread_lane_completed_total", lane="storage"
    )
    host = f"127.0.0.1:{rx.port}"
    assert _value(after, "trioscribe_http_target_succeeded_total", lane="webhooks", host=host) >= 1
    assert (
        _value(after, "trioscribe_breaker_state", lane="webhooks", host=host, state="closed") == 1
    )
    assert "s3cret" not in text and "/rt" not in text  # hosts only: no path, no query


@pytest.mark.slow
async def test_two_servers_in_one_process_keep_their_own_registries(
    nursery: trio.Nursery, tmp_path: pytest.TempPathFactory
) -> None:
    with trio.fail_after(20):
        first = await start_trioscribe(nursery, tmp_path / "a")  # type: ignore[operator]
        second = await start_trioscribe(nursery, tmp_path / "b")  # type: ignore[operator]
        token = await first.create_token()
        async with first.listen(token) as session:
            await session.wait_ready()
            await session.send_pcm(pcm(1.0))
            await session.wait_for_text("seg0 ")
        _, one = await _scrape(first)
        _, two = await _scrape(second)
    assert _value(one, "trioscribe_sessions_frames_total") == 10
    assert _value(two, "trioscribe_sessions_frames_total") == 0
    assert first.handle.context.metrics.registry is not second.handle.context.metrics.registry


def test_target_hosts_are_capped_and_never_carry_paths() -> None:
    families = _Families()
    targets = {
        f"https://user:pw@h{i}.example:443/hook/s3cret?token=x": {"requests": 1}
        for i in range(HOST_LABEL_LIMIT + 5)
    }
    _Walker(families).value("trioscribe_http_lane", "targets", targets, (("lane", "w"),))
    [family] = list(families.metrics())
    hosts = {sample.labels["host"]: sample.value for sample in family.samples}
    assert len(hosts) == HOST_LABEL_LIMIT + 1 and hosts["other"] == 5
    assert all("s3cret" not in h and "pw" not in h and "/" not in h for h in hosts)
