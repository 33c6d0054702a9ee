"""The API contract against a real server on port 0: malformed input is a 4xx naming the field
(each 500 of issue 15 item 2 as a regression case), and /openapi.json + /docs describe every
/v1 route."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import httpx
import pytest
import trio
from openapi_spec_validator import validate

from server.app import create_quart_app
from server.serve import ServerHandle
from tests.conftest import ADMIN_TOKEN, auth, create_user_token

DEEP = b"[" * 5000 + b"]" * 5000
HUGE_INT = b"9" * 400
URL = b'"http://127.0.0.1:9/hook"'


def _cursor(raw: bytes) -> str:
    return quote(base64.urlsafe_b64encode(raw).decode().rstrip("="))


#: (what, method, path, body, status, words the message must contain). ``{conv}`` and ``{hook}``
#: are replaced by ids of the caller's conversation and webhook.
CASES: list[tuple[str, str, str, bytes | None, int, str]] = [
    # issue 15 item 2, each once a 500
    ("kind list", "POST", "/v1/webhooks", b'{"kind": ["day_summary"], "url": ' + URL + b"}", 422, "kind"),
    ("kind object", "POST", "/v1/webhooks", b'{"kind": {"a": 1}, "url": ' + URL + b"}", 422, "kind"),
    ("400-digit interval", "POST", "/v1/webhooks",
     b'{"kind": "day_summary", "url": ' + URL + b', "interval_s": ' + HUGE_INT + b"}", 422, "interval_s"),
    ("5000-deep url", "POST", "/v1/webhooks", b'{"kind": "day_summary", "url": ' + DEEP + b"}", 400, "recursion"),
    ("lone surrogate url", "POST", "/v1/webhooks",
     b'{"kind": "day_summary", "url": "http://127.0.0.1:9/\\ud800"}', 422, "url"),
    ("visibility list", "PATCH", "/v1/conversations/{conv}", b'{"visibility": ["public"]}', 422, "visibility"),
    ("lone surrogate title", "PATCH", "/v1/conversations/{conv}", b'{"title": "a\\udc00"}', 422, "title"),
    ("40-digit limit", "GET", "/v1/conversations?limit=" + "9" * 40, None, 400, "limit"),
    ("superscript limit", "GET", "/v1/conversations?limit=%C2%B2", None, 400, "limit"),
    ("huge-number cursor", "GET", "/v1/conversations?cursor=" + _cursor(b"[" + HUGE_INT + b',"x"]'), None, 400, "cursor"),
    ("deep cursor", "GET", "/v1/conversations?cursor=" + _cursor(b"[" * 300 + b"]" * 300), None, 400, "cursor"),
    ("surrogate cursor", "GET", "/v1/conversations?cursor=" + _cursor(b'[1.0,"\\ud800"]'), None, 400, "cursor"),
    ("trigger list", "POST", "/v1/apps", b'{"name": "a", "url": ' + URL + b', "triggers": [["x"]]}', 422, "triggers.0"),
    ("trigger object", "POST", "/v1/apps", b'{"name": "a", "url": ' + URL + b', "triggers": [{}]}', 422, "triggers.0"),
    ("superscript log limit", "GET", "/v1/webhooks/{hook}/deliveries?limit=%C2%B2", None, 400, "limit"),
    # the same classes elsewhere
    ("patch interval huge", "PATCH", "/v1/webhooks/{hook}", b'{"interval_s": ' + HUGE_INT + b"}", 422, "interval_s"),
    ("patch enabled string", "PATCH", "/v1/webhooks/{hook}", b'{"enabled": "yes"}', 422, "enabled"),
    ("patch triggers object", "PATCH", "/v1/apps/{app}", b'{"triggers": {"a": 1}}', 422, "triggers"),
    ("patch unknown field", "PATCH", "/v1/conversations/{conv}", b'{"owner": "eve"}', 422, "owner"),
    ("patch null", "PATCH", "/v1/conversations/{conv}", b'{"title": null}', 422, "title"),
    ("patch nothing", "PATCH", "/v1/conversations/{conv}", b"{}", 422, "no fields"),
    ("patch array", "PATCH", "/v1/conversations/{conv}", b"[1, 2]", 400, "JSON object"),
    ("starred string", "PATCH", "/v1/conversations/{conv}", b'{"starred": "true"}', 422, "starred"),
    ("not utf-8", "PATCH", "/v1/conversations/{conv}", b'{"title": "\xff"}', 400, "JSON"),
    ("NaN since", "GET", "/v1/conversations?since=nan", None, 400, "since"),
    ("infinite until", "GET", "/v1/conversations?until=1e999", None, 400, "until"),
    ("unknown status", "GET", "/v1/conversations?status=%F0%9F%98%80", None, 400, "status"),
    ("repeated limit", "GET", "/v1/conversations?limit=1&limit=2", None, 400, "limit"),
    ("interval NaN", "POST", "/v1/webhooks", b'{"kind": "day_summary", "url": ' + URL + b', "interval_s": NaN}', 422, "interval_s"),
    ("empty trigger list", "POST", "/v1/apps", b'{"name": "a", "url": ' + URL + b', "triggers": []}', 422, "triggers"),
]  # fmt: skip

ADMIN_CASES: list[tuple[str, str, str, bytes | None, int, str]] = [
    ("user name surrogate", "POST", "/v1/admin/users", b'{"name": "\\ud800"}', 422, "name"),
    ("user name int", "POST", "/v1/admin/users", b'{"name": 1}', 422, "name"),
    ("token label deep", "POST", "/v1/admin/users/alice/tokens", b'{"label": ' + DEEP + b"}", 400, "JSON"),
    ("token label long", "POST", "/v1/admin/users/alice/tokens", b'{"label": "' + b"x" * 101 + b'"}', 422, "label"),
]  # fmt: skip


def _error(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


async def _fixtures(server: ServerHandle, client: httpx.AsyncClient, token: str) -> dict[str, str]:
    """A conversation, a webhook and an app of the caller, for the ``{conv}``-style paths."""
    store = server.context.store
    user = await store.get_user_by_name("alice")
    assert user is not None
    conversation = await store.create_conversation(
        user.id, source="omi", language="en", timeout_s=120, now=1000.0
    )
    hook = await client.post(
        "/v1/webhooks",
        json={"kind": "day_summary", "url": "http://127.0.0.1:9/hook"},
        headers=auth(token),
    )
    app = await client.post(
        "/v1/apps",
        json={"name": "a", "url": "http://127.0.0.1:9/app", "triggers": ["memory_created"]},
        headers=auth(token),
    )
    assert hook.status_code == 201 and app.status_code == 201, (hook.text, app.text)
    return {"conv": conversation.id, "hook": hook.json()["id"], "app": app.json()["id"]}


@pytest.mark.slow
async def test_malformed_input_is_a_4xx_naming_the_field(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    failures = []
    with trio.fail_after(30):
        token = await create_user_token(client, "alice")
        ids = await _fixtures(server, client, token)
        for cases, headers in ((CASES, auth(token)), (ADMIN_CASES, auth(ADMIN_TOKEN))):
            for what, method, path, body, status, words in cases:
                response = await client.request(
                    method,
                    path.format(**ids),
                    content=body,
                    headers={**headers, "Content-Type": "application/json"},
                )
                message = _error(response)["message"] if response.status_code >= 400 else ""
                if response.status_code != status or words not in message:
                    failures.append((what, response.status_code, response.text[:200]))
        health = await client.get("/health")
    assert not failures, "\n".join(map(str, failures))
    assert health.status_code == 200


async def test_nothing_malformed_reaches_the_store(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        token = await create_user_token(client, "alice")
        ids = await _fixtures(server, client, token)
        path = f"/v1/conversations/{ids['conv']}"
        good = await client.patch(
            path, json={"title": "ok 😀", "starred": True}, headers=auth(token)
        )
        stored = await client.get(path, headers=auth(token))
    assert good.status_code == 200, good.text
    assert stored.json()["structured"]["title"] == "ok 😀" and stored.json()["starred"] is True


def _v1_rules(server: ServerHandle) -> set[tuple[str, str]]:
    app = create_quart_app(server.context)
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or rule.websocket:
            continue
        path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
        found |= {(m.lower(), path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return found


@pytest.mark.slow
async def test_openapi_document_validates_and_covers_every_v1_route(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"].startswith("3.1")
    operations = {
        (method, path): op for path, ops in document["paths"].items() for method, op in ops.items()
    }
    assert _v1_rules(server) <= set(operations), _v1_rules(server) - set(operations)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), op in operations.items():
        if not path.startswith("/v1/"):
            continue
        [requirement] = op["security"]
        scheme = "adminToken" if "/admin/" in path or path == "/v1/stats" else "userToken"
        assert set(requirement) == {scheme}, (method, path)
        for status in ("401", "503"):
            content = op["responses"][status]["content"]["application/json"]
            assert content["schema"] == error_ref, (method, path, status)
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
    title = operations[("patch", "/v1/conversations/{conversation_id}/title")]["parameters"]
    assert {"name": "title", "in": "query", "required": True} == {
        k: v for k, v in title[1].items() if k in ("name", "in", "required")
    }
    assert set(document["components"]["securitySchemes"]) == {"userToken", "adminToken"}
    assert "/v4/listen" in document["info"]["description"]
    assert "1008" in document["info"]["description"]


async def test_docs_page_lists_every_operation_without_external_resources(
    client: httpx.AsyncClient,
) -> None:
    with trio.fail_after(20):
        document = (await client.get("/openapi.json")).json()
        page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    for path, operations in document["paths"].items():
        for op in operations.values():
            assert f"id={op['operationId']}>" in html, path
    assert "<script" not in html and "src=" not in html
    assert "/v4/listen" in html


def test_error_messages_never_echo_a_huge_input() -> None:
    """pydantic messages are emitted without the input (a 1 MB string stays out of the log)."""
    from pydantic import TypeAdapter, ValidationError

    from server.routes._contract import _body_error
    from server.routes._models import WebhookCreate

    try:
        TypeAdapter(WebhookCreate).validate_json(json.dumps({"kind": "x" * 100_000, "url": "u"}))
    except ValidationError as exc:
        error = _body_error(exc.errors(include_input=False, include_url=False)[0])
    assert error.status == 422 and len(error.message) < 200
