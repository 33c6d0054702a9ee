"""The server's HTTP error type and its JSON shape: ``{"error": {"code": ..., "message": ...}}``.

Handlers raise :class:`ApiError`; the app maps it (and every werkzeug/Quart ``HTTPException``,
and the lanes' load-shedding errors) to a JSON response once, in :mod:`server.app`.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """An HTTP error with a stable machine-readable ``code`` and a human ``message``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, object]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}}
