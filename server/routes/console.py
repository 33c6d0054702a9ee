"""The web console: static HTML, CSS and ES modules from package data (``server/console/``).

``GET /`` is the console's page, ``GET /console/<name>`` its assets. There is no build step and
no third-party origin: the files are served as they are in the package, from an allow-list (no
path from the URL ever reaches the file system). Every response carries a Content-Security-
Policy that forbids inline script and any origin but this one.

Files are read once, on first request, through :class:`trio.Path` (Trio's thread-backed file
API) and kept in memory: they are a fixed set of small files shipped with the package.
"""

from __future__ import annotations

from typing import Final

import trio
from quart import Blueprint, Response

from server.errors import ApiError

__all__ = ["CONTENT_SECURITY_POLICY", "blueprint"]

blueprint = Blueprint("console", __name__)

_DIR: Final = trio.Path(__file__).parent.parent / "console"

#: The console's files and their content types (the only paths served).
_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "capture-worklet.js": "text/javascript; charset=utf-8",
    "conversations.js": "text/javascript; charset=utf-8",
    "webhooks.js": "text/javascript; charset=utf-8",
}

#: Same-origin only, no inline script or style, no framing. ``'self'`` in ``connect-src`` also
#: admits this origin's ``ws:``/``wss:`` URLs (CSP Level 3).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "media-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Permissions-Policy": "microphone=(self)",
}

_cache: dict[str, bytes] = {}


async def _file(name: str) -> Response:
    content_type = _FILES.get(name)
    if content_type is None:
        raise ApiError(404, "not_found", "no such console file")
    body = _cache.get(name)
    if body is None:
        body = await (_DIR / name).read_bytes()
        _cache[name] = body
    else:
        await trio.lowlevel.checkpoint()
    return Response(body, status=200, headers=_HEADERS, content_type=content_type)


@blueprint.get("/")
async def index() -> Response:
    """The console's single page (sign-in first)."""
    return await _file("index.html")


@blueprint.get("/console/<name>")
async def asset(name: str) -> Response:
    """One of the console's static files."""
    return await _file(name)
