"""schemathesis against the live server: every operation of /openapi.json, a user and an admin
token, bounded examples; no 5xx, no undocumented status, no response that breaks the schema."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable

import httpx
import pytest
import trio

from server.settings import Settings
from tests.conftest import ADMIN_TOKEN, create_user_token, start_server

#: Tokens are picked per operation from its ``security`` (OpenAPI-aware auth).
CONFIG = """
[auth.openapi.userToken]
bearer = "${ST_USER_TOKEN}"

[auth.openapi.adminToken]
bearer = "${ST_ADMIN_TOKEN}"

[[operations]]
include-path-regex = "^/v1/conversations/"
parameters = { conversation_id = "${ST_CONVERSATION_ID}" }
"""

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    ]
)
MAX_EXAMPLES = 5


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_schema_breach(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], tmp_path: pathlib.Path
) -> None:
    # Rate limits would answer most generated requests 429 (documented, but nothing learned).
    server = await start_server(nursery, make_settings(api_rate_per_s=1_000_000.0))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        token = await create_user_token(client, "alice")
    user = await server.context.store.get_user_by_name("alice")
    assert user is not None
    conversation = await server.context.store.create_conversation(
        user.id, source="omi", language="en", timeout_s=120, now=1000.0
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "ST_USER_TOKEN": token,
        "ST_ADMIN_TOKEN": ADMIN_TOKEN,
        "ST_CONVERSATION_ID": conversation.id,
        "NO_COLOR": "1",
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "10",
        "--seed",
        "20261201",
    ]
    with trio.fail_after(150):
        result = await trio.run_process(
            command, cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, output[-8000:]
    assert "0 generated" not in output, output[-3000:]
