"""Logs: JSON lines with the work's context from contextvars, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
import trio

from server.logs import ContextFilter, JsonFormatter, TextFormatter, log_context, redact
from server.testing import open_api, open_listen, pcm
from tests.fakes.receivers import open_receivers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"tests.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


async def test_json_lines_carry_the_context_of_the_task_group() -> None:
    logger, stream = _capture(JsonFormatter())
    conversation = ["c1"]

    async def worker(name: str) -> None:
        await trio.lowlevel.checkpoint()
        logger.info("from %s", name)

    with log_context(session_id="s1", user_id="u1", conversation_id=lambda: conversation[0]):
        async with trio.open_nursery() as nursery:  # noqa: ASYNC112 -- a child task on purpose
            nursery.start_soon(worker, "child")
        conversation[0] = "c2"
        with log_context(lane="storage"):
            try:
                raise ValueError("boom ts_" + "x" * 43)
            except ValueError:
                logger.exception("failed")
    logger.warning("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["from child", "failed", "outside"]
    assert {k: lines[0][k] for k in ("session_id", "user_id", "conversation_id")} == {
        "session_id": "s1",
        "user_id": "u1",
        "conversation_id": "c1",
    }
    assert (lines[1]["conversation_id"], lines[1]["lane"]) == ("c2", "storage")
    assert "ValueError" in lines[1]["exception"] and "ts_x" not in lines[1]["exception"]
    assert "session_id" not in lines[2]
    assert set(lines[2]) == {"time", "level", "logger", "message"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[2]["time"])


def test_text_lines_append_the_context_and_literal_secrets_are_masked() -> None:
    logger, stream = _capture(TextFormatter(literals=["hunter2-admin"]))
    with log_context(session_id="s9"):
        logger.info("admin token hunter2-admin used")
    assert (
        stream.getvalue()
        .rstrip()
        .endswith("INFO " + logger.name + ": admin token [redacted] used [session_id=s9]")
    )


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("token ts_" + "A1b2" * 11, "A1b2A1b2"),
        ("GET /v4/listen?codec=pcm16&ticket=tk_abcdefghijklmnopqrstuvwx", "abcdefghijkl"),
        ("signing with whsec_c2VjcmV0c2VjcmV0", "c2VjcmV0"),
        ("Authorization: Bearer abc.def.ghi-jkl", "abc.def"),
        ("POST http://127.0.0.1:9/rt?key=s3cr3t&uid=u", "s3cr3t"),
        ("connect https://bob:pa55word@example.com/x", "pa55word"),
        ("openai key sk-proj-0123456789abcdef", "0123456789"),
    ],
)
def test_redact_masks_known_secret_shapes(line: str, secret: str) -> None:
    assert secret not in redact(line)
    assert "[redacted]" in redact(line)


def test_redact_leaves_ordinary_lines_alone() -> None:
    line = "session abc123: last segment write failed (token revoked for user alice)"
    assert redact(line) == line


async def _start(argv: list[str], env: dict[str, str]) -> tuple[trio.Process, int, list[bytes]]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server", *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    chunks: list[bytes] = []
    while True:
        chunk = await process.stderr.receive_some(65536)
        assert chunk, "server exited before listening:\n" + b"".join(chunks).decode()
        chunks.append(chunk)
        match = re.search(rb"listening on http://[^:]+:(\d+)", b"".join(chunks))
        if match:
            return process, int(match.group(1)), chunks


async def _drain(process: trio.Process, chunks: list[bytes]) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(65536):
        chunks.append(chunk)


@pytest.mark.slow
async def test_a_full_session_logs_json_lines_without_secrets(tmp_path: pathlib.Path) -> None:
    """``python -m server --log-format json --log-level DEBUG --allow-loopback-webhooks``: a
    session by token and one by ticket, with a realtime webhook whose URL carries a key; every
    stderr line parses, session lines carry their context, no secret appears anywhere."""
    admin = "adm_" + "Q" * 30
    env = {**os.environ, "TRIOSCRIBE_ADMIN_TOKEN": admin}
    argv = [
        "--port", "0", "--data-dir", str(tmp_path), "--stt", "fake", "--vad", "off",
        "--log-format", "json", "--log-level", "DEBUG", "--allow-loopback-webhooks",
        "--day-summary-hour-utc", "-1", "--graceful-shutdown-s", "3",
    ]  # fmt: skip
    url_key = "k3yInTheUrl0123"
    with trio.fail_after(60):
        process, port, chunks = await _start(argv, env)
        base = f"http://127.0.0.1:{port}"
        try:
            async with open_api(base) as api, open_receivers() as rx:
                await api.create_user(admin, "alice")
                token = await api.create_token(admin, "alice")
                user_id = (await api.me(token))["id"]
                hook = await api.create_webhook(
                    token, "realtime_transcript", rx.url("/rt") + f"?key={url_key}"
                )
                ticket = await api.ticket(token)
                async with open_listen(base, token=token) as session:
                    await session.wait_ready()
                    await session.send_pcm(pcm(2.0))
                    await session.wait_for_text("seg1 ")
                    while not rx.on("/rt"):
                        await rx.wait_for_count("/rt", 1)
                async with open_listen(base, ticket=ticket) as by_ticket:
                    await by_ticket.wait_ready()
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, process, chunks)
                    await process.wait()
    output = b"".join(chunks).decode()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    for secret in (admin, token, ticket, hook["secret"], url_key):
        assert secret not in output, secret
    in_session = [line for line in lines if "session_id" in line]
    assert in_session, "no line carried a session's context"
    assert all(line["user_id"] == user_id for line in in_session)
    assert any(line.get("conversation_id") for line in in_session)
    assert process.returncode == 0
