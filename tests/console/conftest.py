"""Fixtures of the console's browser tests: one headless Chromium per session, a real server
process (``python -m server``, embedded STT), a loopback webhook receiver process.

The browser tests are synchronous (Playwright's sync API runs its own event loop, so it cannot
share a thread with a Trio server): the server runs as the README runs it, in its own process.

Where Chromium or Playwright is missing the tests skip with a reason naming the package;
``TRIOSCRIBE_REQUIRE_BROWSER=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEECH = ROOT / "tests" / "fixtures" / "speech" / "two_sentences.raw"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
START_TIMEOUT_S = 30.0


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return next((p for p in CHROMIUM_PATHS if os.path.exists(p)), None)


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the Python package `playwright` (pip install -e '.[test]')"
    if _chromium() is None:
        return "needs a Chromium browser: Debian package `chromium` (apt-get install -y chromium)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("TRIOSCRIBE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TRIOSCRIBE_REQUIRE_BROWSER=1 but the browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", name="artifacts")
def _artifacts(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Where screenshots go: $TRIOSCRIBE_ARTIFACTS_DIR, else a pytest temporary directory."""
    configured = os.environ.get("TRIOSCRIBE_ARTIFACTS_DIR")
    if configured:
        path = pathlib.Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture(scope="session", name="speech_wav")
def _speech_wav(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The spoken fixture (flite: two sentences, 16 kHz mono) as the WAV Chromium's fake
    microphone plays, in a loop."""
    path = tmp_path_factory.mktemp("speech") / "two_sentences.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(SPEECH.read_bytes())
    return path


@pytest.fixture(scope="module", name="browser")
def _browser(speech_wav: pathlib.Path) -> Iterator[Browser]:
    """One headless Chromium shared by every browser test (they live in one module, so the
    browser, like the server and the receiver, is gone before the rest of the suite runs), its
    microphone playing ``speech_wav``."""
    reason = _unavailable()
    if reason is not None:
        _skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


class ServerProcess:
    """A ``python -m server`` process (restartable on its port) and how to reach it."""

    def __init__(self, base: pathlib.Path) -> None:
        self.data_dir = base / "data"
        self.log = base / "server.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._env = {
            **{
                k: v for k, v in os.environ.items() if k not in ("TRIOSCRIBE_STT", "TRIOSCRIBE_VAD")
            },
            "TRIOSCRIBE_DATA_DIR": str(self.data_dir),
            "TRIOSCRIBE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TRIOSCRIBE_ALLOW_LOOPBACK_WEBHOOKS": "true",
            "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
            "TRIOSCRIBE_SWEEPER_INTERVAL_S": "0.25",
            "TRIOSCRIBE_GRACEFUL_SHUTDOWN_S": "5",
            "TRIOSCRIBE_STT_WORKERS": "1",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port the first time, on the same port after :meth:`stop`."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as sink:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "server"],
                cwd=ROOT,
                env={**self._env, "TRIOSCRIBE_PORT": str(self.port)},
                stdout=sink,
                stderr=sink,
            )
        pattern = r"listening on http://[^\s]+:(\d+)"
        self.port = int(_wait_for_line(self.log, pattern, self._process, offset))

    def stop(self) -> None:
        """SIGTERM (live sessions get 1001) and wait for the exit."""
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def admin(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=10)

    def token(self, name: str) -> str:
        """Create ``name`` (if needed) and return a fresh API token for it."""
        assert self.admin("POST", "/v1/admin/users", {"name": name}).status_code in (201, 409)
        response = self.admin("POST", f"/v1/admin/users/{name}/tokens", {})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def _wait_for_line(
    path: pathlib.Path, pattern: str, process: subprocess.Popen[bytes], offset: int = 0
) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    text = ""
    while time.monotonic() < deadline:
        text = path.read_bytes()[offset:].decode(errors="replace") if path.exists() else ""
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return match.group(1)
        assert process.poll() is None, f"exited with {process.returncode}:\n{text}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within {START_TIMEOUT_S} s:\n{text}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module", name="console_server")
def _console_server(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``python -m server`` with its defaults (embedded pocketsphinx STT, VAD on, SQLite) on a
    free port, loopback webhooks allowed, a fast sweeper. Depends on ``browser`` so that it is
    not started when the browser tests skip."""
    server = ServerProcess(tmp_path_factory.mktemp("console-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Receiver:
    """The loopback webhook receiver process: its URL and what it received."""

    url: str
    log: pathlib.Path

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@pytest.fixture(scope="module", name="receiver")
def _receiver(
    console_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Receiver]:
    base = tmp_path_factory.mktemp("receiver")
    log = base / "received.jsonl"
    out = base / "receiver.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.console._receiver", str(log)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_for_line(out, r"^(\d+)$", process)
        yield Receiver(f"http://127.0.0.1:{port}/hook", log)
    finally:
        _stop(process)
