"""The architecture is enforced by kept linters: planted violations must be caught."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")


def _ruff(source: str, filename: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            shutil.which("ruff") or "ruff",
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            "--stdin-filename",
            filename,
            "-",
        ],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("import threading\n\nthreading.Thread(target=print).start()\n", "TID251"),
        ("from concurrent.futures import ThreadPoolExecutor\n\nThreadPoolExecutor(4)\n", "TID251"),
        ("import requests\n\nrequests.get('http://x')\n", "TID251"),
        ("import time\n\ntime.sleep(1)\n", "TID251"),
        ("import asyncio\n\nasyncio.run(None)\n", "TID251"),
        ("import trio\n\n\nasync def f():\n    await trio.to_thread.run_sync(print)\n", "TID251"),
        (
            "import anyio.to_thread\n\n\nasync def f():\n    await anyio.to_thread.run_sync(print)\n",
            "TID251",
        ),
        ("import time\n\n\nasync def f():\n    time.sleep(1)\n", "ASYNC251"),
    ],
    ids=[
        "thread",
        "executor",
        "requests",
        "time-sleep",
        "asyncio",
        "trio-to-thread",
        "anyio-to-thread",
        "async-sleep",
    ],
)
def test_ruff_rejects_planted_violation_in_server(source: str, code: str) -> None:
    result = _ruff(source, "server/planted.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert code in result.stdout


def test_ruff_allows_threads_inside_the_thread_lane() -> None:
    source = "import trio\n\n\nasync def f() -> None:\n    await trio.to_thread.run_sync(print)\n"
    assert _ruff(source, "lanes/_thread.py").returncode == 0
    assert _ruff(source, "server/store.py").returncode == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flake8-async") is None, reason="flake8-async not installed")
def test_flake8_async_opt_in_checks_catch_missing_checkpoint(tmp_path: pathlib.Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import trio\n\n\nasync def maybe(flag: bool) -> None:\n"
        "    if flag:\n        await trio.sleep(1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flake8_async", "--enable=ASYNC910", str(planted)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "ASYNC910" in result.stdout, result.stdout + result.stderr
