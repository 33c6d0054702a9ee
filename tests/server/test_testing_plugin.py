"""The pytest plugin ``server.testing``: its fixtures, its clients, and a user's suite."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import trio

from server.testing import (
    ApiError,
    ListenClosed,
    PolicyViolation,
    TrioscribeServer,
    TryAgainLater,
    pcm,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_fixtures_run_a_real_server_and_the_clients_speak_to_it(
    trioscribe_server: TrioscribeServer, trioscribe_token: str
) -> None:
    with trio.fail_after(20):
        async with trioscribe_server.listen(trioscribe_token) as session:
            await session.wait_ready()
            await session.send_pcm(pcm(2.0))
            texts = []
            async for segment in session.segments():
                texts.append(segment["text"])
                if "seg1 " in segment["text"] + " ":
                    break
            await session.close()
        async with trioscribe_server.api() as api:
            me = await api.me(trioscribe_token)
            conversations = await api.conversations(trioscribe_token, statuses="in_progress")
            with pytest.raises(ApiError) as denied:
                await api.me("ts_not-a-token")
    assert me["name"] == "trioscribe-user"
    assert texts[-1].startswith("seg0 ") and "seg1 " in texts[-1]
    assert conversations[0]["status"] == "in_progress"
    assert denied.value.status == 401


async def test_close_codes_are_exceptions(trioscribe_server: TrioscribeServer) -> None:
    with trio.fail_after(10):
        async with trioscribe_server.listen("ts_wrong") as session:
            with pytest.raises(PolicyViolation) as refused:
                await session.wait_ready()
    assert refused.value.code == 1008 and isinstance(refused.value, ListenClosed)


@pytest.mark.trioscribe(max_sessions_per_user=1)
async def test_the_marker_overrides_settings(
    trioscribe_server: TrioscribeServer, trioscribe_token: str
) -> None:
    assert trioscribe_server.settings.max_sessions_per_user == 1
    with trio.fail_after(10):
        async with trioscribe_server.listen(trioscribe_token) as first:
            await first.wait_ready()
            async with trioscribe_server.listen(trioscribe_token) as second:
                with pytest.raises(TryAgainLater):
                    await second.wait_ready()


def _readme_test() -> str:
    """The user test shown in the README (so the README cannot drift from the plugin)."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- user-test -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README lost its user-test block"
    return match.group(1)


@pytest.mark.slow
def test_a_users_suite_outside_the_repo_uses_the_fixtures(tmp_path: pathlib.Path) -> None:
    """What a team gets from ``pip install -e <repo>``: the package importable, the plugin
    loadable by name. The suite lives in a directory of its own, with its own pytest config."""
    suite = tmp_path / "user-suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (suite / "test_user.py").write_text(_readme_test())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "server.testing", "-p", "no:cacheprovider"],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
