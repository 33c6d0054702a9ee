"""The default path as a user meets it: ``python -m server`` with no flags, real speech, pauses.

The server runs as a real process on its embedded defaults (pocketsphinx STT, VAD active,
SQLite); only the port (0, so tests never collide) and the data directory (the process's working
directory, exactly as ``./data`` is for a user) come from the environment. The client is a stock
WebSocket client sending 100 ms PCM16 frames of flite speech with pauses between and after the
sentences, the way a wearable sends a person speaking, thinking, and speaking again.

Regression: each pause used to crash the STT worker's call ("worker error: ... 'NoneType' object
is not iterable"): the VAD finalized the utterance, the endpointer's silent tail then decoded to
no hypothesis and pocketsphinx's ``seg()`` returned ``None``.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
from typing import Any

import pytest
import trio

from server.testing import Received, open_listen
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "speech"
AUDIO = (FIXTURES / "two_sentences.raw").read_bytes()
SENTENCES = [line.split() for line in (FIXTURES / "two_sentences.txt").read_text().splitlines()]
RATE = 16000
FRAME = RATE * 2 // 10  # 100 ms of PCM16 mono, what Omi devices and the app send
FIRST_SENTENCE_END = int(3.6 * RATE) * 2
PAUSE = bytes(2 * RATE * 2)  # 2 s of digital silence
#: Frames are paced at 4x real time: the VAD and the endpointer run on audio time, not wall time.
FRAME_INTERVAL_S = 0.025
LAST_FINAL_WAIT_S = 20.0


async def _start_default_server(cwd: pathlib.Path) -> tuple[trio.Process, int]:
    """``python -m server`` in ``cwd``; its log goes to ``cwd/server.log`` (never a full pipe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCRIBE_")}
    env["TRIOSCRIBE_PORT"] = "0"
    log = cwd / "server.log"
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "server"], cwd=cwd, env=env, stderr=sink
        )
    pattern = re.compile(rb"listening on http://[^:]+:(\d+)")
    await wait_until(lambda: process.poll() is not None or bool(pattern.search(log.read_bytes())))
    match = pattern.search(log.read_bytes())
    assert match, "server exited before listening:\n" + log.read_text()
    return process, int(match.group(1))


async def _create_token(cwd: pathlib.Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCRIBE_")}
    result = await trio.run_process(
        [sys.executable, "-m", "server", "token", "create", "alice"],
        cwd=cwd,
        env=env,
        capture_stdout=True,
    )
    return result.stdout.decode().strip()


def _speech_with_pauses() -> bytes:
    return AUDIO[:FIRST_SENTENCE_END] + PAUSE + AUDIO[FIRST_SENTENCE_END:] + PAUSE


async def _stream_and_read(port: int, token: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Stream the speech; return every event and the final text of each segment id."""
    heard_all = trio.Event()
    async with open_listen(f"http://127.0.0.1:{port}", token=token, language="en") as session:

        async def read() -> None:
            async for value in session.messages():
                if isinstance(value, list) and _heard_every_sentence(_texts(session.received)):
                    heard_all.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            audio = _speech_with_pauses()
            for begin in range(0, len(audio), FRAME):
                await session.send_frame(audio[begin : begin + FRAME])
                await trio.sleep(FRAME_INTERVAL_S)
            # The last final comes after the trailing pause is decoded: a slow (loaded) worker
            # may need a moment more; a user's app keeps the socket open the same way.
            with trio.move_on_after(LAST_FINAL_WAIT_S):
                await heard_all.wait()
            await session.close()
    return session.received.events, _texts(session.received)


def _texts(received: Received) -> dict[str, str]:
    return {segment_id: segment["text"] for segment_id, segment in received.segments.items()}


def _heard_every_sentence(segments: dict[str, str]) -> bool:
    heard = " ".join(segments.values()).split()
    return all(_recall(sentence, heard) >= 0.7 for sentence in SENTENCES)


def _recall(reference: list[str], heard: list[str]) -> float:
    heard = list(heard)
    hits = 0
    for word in reference:
        if word in heard:
            heard.remove(word)
            hits += 1
    return hits / len(reference)


async def test_python_m_server_transcribes_speech_with_pauses_without_degrading(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(90):
        token = await _create_token(tmp_path)
        process, port = await _start_default_server(tmp_path)
        try:
            events, segments = await _stream_and_read(port, token)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 30):
                await process.wait()
    statuses = [e.get("status") for e in events if e.get("type") == "service_status"]
    assert "stt_degraded" not in statuses, (events, (tmp_path / "server.log").read_text())
    assert _heard_every_sentence(segments), (SENTENCES, segments)
    assert process.returncode == 0
    assert (tmp_path / "data").is_dir()  # the default ./data, relative to where it was started
