"""Property tests (hypothesis, bounded): arbitrary JSON bodies and query values sent to every
operation of /openapi.json, and arbitrary /v4/listen query parameters, never produce a 5xx or a
1011, and the server is healthy afterwards. Each example runs against a fresh real server on
port 0 over the same data directory (so restarts over fuzzed data are exercised too)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import quote, urlencode

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from trio_websocket import ConnectionClosed

from server.serve import ServerHandle
from server.settings import Settings
from tests.conftest import ADMIN_TOKEN, auth, create_user_token, start_server
from tests.server.listen_client import Received, open_listen, read_until

FIELDS = [
    "name", "label", "title", "overview", "emoji", "category", "starred", "visibility",
    "discarded", "kind", "url", "interval_s", "enabled", "triggers",
]  # fmt: skip
PARAMS = ["limit", "cursor", "status", "since", "until", "offset", "statuses", "starred"]
LISTEN_PARAMS = [
    "codec", "sample_rate", "channels", "language", "conversation_timeout", "source",
    "stt_service", "ticket", "uid",
]  # fmt: skip

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
texts = st.one_of(st.text(max_size=40), surrogates, st.sampled_from(["", "²", "٣", "1e999"]))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5).map(json.dumps),
    json_values.map(json.dumps),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.binary(max_size=40),
)
query_values = st.one_of(texts, numbers.map(str), st.integers(0, 200).map(lambda n: "9" * n))
queries = st.dictionaries(st.sampled_from(PARAMS) | st.text(max_size=6), query_values, max_size=4)
path_ids = st.one_of(st.just(None), st.text(min_size=1, max_size=30))

FUZZ = settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # A failure is reported as generated: shrinking against a live server can take minutes.
    phases=[Phase.explicit, Phase.generate],
)


async def _operations(client: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    """(method, path template, scheme) of every operation in the live document."""
    document = (await client.get("/openapi.json")).json()
    found = []
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            scheme = next(iter(op["security"][0]), "none") if op["security"] else "none"
            found.append((method.upper(), path, scheme))
    return found


def _send_body(method: str) -> bool:
    return method in ("POST", "PATCH", "PUT")


async def _assert_healthy(client: httpx.AsyncClient, token: str) -> None:
    health = await client.get("/health")
    me = await client.get("/v1/me", headers=auth(token))
    assert health.status_code == 200 and me.status_code == 200, (health.text, me.text)


@pytest.mark.slow
@FUZZ
@given(body=bodies, query=queries, path_id=path_ids)
async def test_every_operation_answers_arbitrary_input_with_a_4xx(
    make_settings: Callable[..., Settings],
    body: str | bytes,
    query: dict[str, str],
    path_id: str | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_settings(api_rate_per_s=1_000_000.0))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            with trio.fail_after(60):
                token = await create_user_token(client, "alice")
                ids = await _real_ids(server)
                tokens = {"userToken": token, "adminToken": ADMIN_TOKEN, "none": token}
                for method, template, scheme in await _operations(client):
                    path = _fill(template, ids, path_id) + "?" + _encode(query)
                    response = await client.request(
                        method,
                        path,
                        content=body if _send_body(method) else None,
                        headers={**auth(tokens[scheme]), "Content-Type": "application/json"},
                    )
                    assert response.status_code < 500, (method, path, query, body, response.text)
                    if response.status_code >= 400 and response.status_code != 405:
                        assert set(response.json()) == {"error"}, response.text
                await _assert_healthy(client, token)
        nursery.cancel_scope.cancel()


async def _real_ids(server: ServerHandle) -> dict[str, str]:
    store = server.context.store
    user = await store.get_user_by_name("alice")
    assert user is not None
    conversation = await store.create_conversation(
        user.id, source="omi", language="en", timeout_s=120, now=1000.0
    )
    return {"conversation_id": conversation.id, "name": "alice"}


def _encode(query: dict[str, str]) -> str:
    """The query string, unpaired surrogates as their (invalid UTF-8) bytes."""
    return urlencode(query, errors="surrogatepass")


def _fill(template: str, ids: dict[str, str], path_id: str | None) -> str:
    def one(match: re.Match[str]) -> str:
        value = path_id if path_id is not None else ids.get(match.group(1), "x")
        return quote(value, safe="", errors="surrogatepass")

    return re.sub(r"\{([^}]+)\}", one, template)


listen_queries = st.dictionaries(
    st.sampled_from(LISTEN_PARAMS) | st.text(max_size=6), query_values, max_size=6
)
#: What a refused or finished session may be closed with; never 1011 for client input.
CLIENT_CLOSES = {1000, 1001, 1003, 1007, 1008, 1009, 1013}


@pytest.mark.slow
@FUZZ
@given(query=listen_queries)
async def test_listen_parameters_never_close_1011(
    make_settings: Callable[..., Settings], query: dict[str, str]
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_settings())
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            with trio.fail_after(30):
                token = await create_user_token(client, "alice")
                encoded = _encode(query)
                async with open_listen(server, encoded, token) as ws:
                    try:
                        await ws.send_message(b"\x00\x01" * 160)
                    except ConnectionClosed:
                        pass  # refused: the close frame came with the handshake; read it below
                    received = await read_until(ws, Received(), _closed_or_ready)
                assert received.close_code is None or received.close_code in CLIENT_CLOSES, (
                    query,
                    received.close_code,
                    received.close_reason,
                )
                await _assert_healthy(client, token)
        nursery.cancel_scope.cancel()


def _closed_or_ready(received: Received) -> bool:
    return any(e.get("status") == "ready" for e in received.events)
