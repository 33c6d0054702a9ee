"""The console's files over HTTP from a real server: what is served, with which headers."""

from __future__ import annotations

import pathlib
import re

import httpx
import trio

from server.routes.console import CONTENT_SECURITY_POLICY

CONSOLE_DIR = pathlib.Path(__file__).resolve().parents[2] / "server" / "console"
TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}


async def test_every_console_file_is_served_with_its_type_and_the_csp(
    client: httpx.AsyncClient,
) -> None:
    names = sorted(p.name for p in CONSOLE_DIR.iterdir())
    assert "index.html" in names and "capture-worklet.js" in names
    with trio.fail_after(10):
        for name in names:
            response = await client.get(f"/console/{name}")
            assert response.status_code == 200, name
            assert response.content == (CONSOLE_DIR / name).read_bytes()
            assert response.headers["content-type"].startswith(TYPES[pathlib.Path(name).suffix])
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
        index = await client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert "Sign in" in index.text
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_the_page_has_no_inline_script_and_no_third_party_origin() -> None:
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!example\.com|www\.w3\.org)", text), path.name
        if path.suffix == ".html":
            scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S)
            assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
            assert not re.search(r"\son[a-z]+=", text), "inline event handlers are inline script"
            assert "style=" not in text


async def test_unknown_console_paths_are_json_404s(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for path in ("/console/nope.js", "/console/..%2Fapp.py", "/console/../routes/api.py"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
