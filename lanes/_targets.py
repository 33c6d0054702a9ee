"""Names of HTTP targets: the key a lane isolates them by, and the label it shows them by.

A webhook URL's path is often its secret (``https://hooks.example/services/T0/B0/Xk2...``), so
the key (``scheme://host:port/path``: one breaker and bulkhead per endpoint) never leaves the
lane as text: statistics, breaker names and error messages carry :func:`target_label`, where
the path is a short digest. Two paths on one host stay two labels; the path cannot be read back.
"""

from __future__ import annotations

import hashlib
from typing import Final

import httpx

__all__ = ["target_key", "target_label"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Hex digits of the path's digest in a label (48 bits: no collision among a lane's targets).
_DIGEST_HEX: Final = 12


def target_key(url: str) -> str:
    """Return ``scheme://host:port/path`` of ``url``: no credentials, query, or fragment.

    Raises:
        ValueError: ``url`` is not an absolute http(s) URL.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL: {exc}") from exc
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"not an absolute http(s) URL: {parsed.scheme}://{parsed.host}")
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}:{port}{parsed.path}"


def target_label(key: str) -> str:
    """``scheme://host:port`` of a target key, its path replaced by a digest (``/`` stays).

    A key that is not a URL is a name the caller chose (``target="app-7"``): shown as it is.
    """
    scheme, sep, rest = key.partition("://")
    if not sep:
        return key
    authority, slash, path = rest.partition("/")
    if not path:
        return f"{scheme}://{authority}{slash}"
    return f"{scheme}://{authority}/~{_digest(path)}"


def _digest(text: str) -> str:
    return hashlib.blake2s(text.encode(), digest_size=_DIGEST_HEX // 2).hexdigest()
