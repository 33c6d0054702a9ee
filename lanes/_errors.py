"""The lanes error tree: every failure a lane reports is one of these.

Foreign errors (httpx, OS, worker processes) are translated once, at the lane boundary, into the
most specific class below and chained with ``raise X from exc``::

    LaneError                      base class: something a lane refused or could not do
    ├── LaneClosedError            *your* code closed the lane, then used it
    ├── LaneFullError              load shed: the lane's bound on waiting callers was reached
    ├── BreakerOpenError           a circuit breaker is open; ``retry_after_s`` says for how long
    ├── WorkerCrashedError         a worker process died while holding the call
    ├── RemoteCallError            the code run in a worker process raised (type, message)
    └── UpstreamError              an outbound HTTP call failed (``target`` names the endpoint)
        ├── UpstreamTimeoutError   connect/read/write/pool timeout
        ├── UpstreamConnectError   refused, unreachable, DNS failure, reset before a response
        ├── UpstreamProtocolError  the peer spoke broken HTTP
        └── UpstreamStatusError    the peer answered with a non-2xx status

``trio.Cancelled`` is never wrapped: cancellation always propagates as itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._targets import target_label

__all__ = [
    "BreakerOpenError",
    "LaneClosedError",
    "LaneError",
    "LaneFullError",
    "RemoteCallError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "WorkerCrashedError",
]


class LaneError(Exception):
    """Base class of every error raised by a lane."""


class LaneClosedError(LaneError):
    """The lane was closed by its owner and cannot take new work."""

    def __init__(self, name: str) -> None:
        super().__init__(f"lane {name!r} is closed")
        self.name = name


class LaneFullError(LaneError):
    """The lane sheds load: too many callers are already waiting for it.

    Callers should fail fast (HTTP 503 + ``Retry-After``, WebSocket close 1013) rather than queue.
    """

    def __init__(self, name: str, waiting: int) -> None:
        super().__init__(f"lane {name!r} is full ({waiting} callers already waiting)")
        self.name = name
        self.waiting = waiting


class BreakerOpenError(LaneError):
    """A circuit breaker refused the call without trying it.

    Attributes:
        name: the breaker's name (for HTTP lanes, the target).
        retry_after_s: seconds until the breaker will admit a probe again (0 if a probe slot
            may free up at any moment in the half-open state).
    """

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry after {retry_after_s:.1f} s")
        self.name = name
        self.retry_after_s = retry_after_s


class WorkerCrashedError(LaneError):
    """A worker process of a process lane died while it held the call."""


class RemoteCallError(LaneError):
    """The session object raised in its worker process.

    Attributes:
        type_name: the remote exception's ``module.QualName``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(self, lane: str, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"lane {lane!r}: {type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback_text


class UpstreamError(LaneError):
    """An outbound HTTP call failed.

    Attributes:
        target: ``scheme://host:port/path`` of the endpoint (no query string, no credentials).
            The message names it by its label only (the path is a digest: it may be a secret).
    """

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"{target_label(target)}: {message}")
        self.target = target


class UpstreamTimeoutError(UpstreamError):
    """The endpoint did not connect, accept, or answer in time."""


class UpstreamConnectError(UpstreamError):
    """The endpoint could not be reached (refused, unreachable, name not resolved, reset)."""


class UpstreamProtocolError(UpstreamError):
    """The endpoint's answer was not valid HTTP."""


class UpstreamStatusError(UpstreamError):
    """The endpoint answered with a status the caller treats as failure.

    Attributes:
        status: the HTTP status code.
        retry_after_s: the parsed ``Retry-After`` header in seconds, if any.
        headers: the response headers (lower-case names), when the lane read them.
        body: the start of the response body (at most the lane's read limit), when read.
    """

    def __init__(
        self,
        target: str,
        status: int,
        retry_after_s: float | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(target, f"HTTP {status}")
        self.status = status
        self.retry_after_s = retry_after_s
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.body = body
