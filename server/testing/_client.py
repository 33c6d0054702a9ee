"""Typed clients for a running trioscribe server: ``/v4/listen`` and the HTTP API.

:class:`ListenClient` speaks the Omi-compatible listen protocol over trio-websocket: send PCM or
Opus, read segments (upserted by id) and events, and get the server's close code as an
exception (:class:`ListenClosed` and its subclasses). :class:`ApiClient` is a small
``httpx.AsyncClient`` wrapper that raises :class:`ApiError` for ``{"error": ...}`` answers.

Both own their connection: use them through :func:`open_listen` / :func:`open_api` (``async
with``), which close it on every exit path.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

__all__ = [
    "FRAME_BYTES",
    "RATE",
    "ApiClient",
    "ApiError",
    "GoingAway",
    "InternalError",
    "InvalidPayload",
    "ListenClient",
    "ListenClosed",
    "MessageTooBig",
    "PolicyViolation",
    "Received",
    "TryAgainLater",
    "Unsupported",
    "frames",
    "listen_query",
    "open_api",
    "open_listen",
    "pcm",
]

RATE: Final = 16000
#: 100 ms of PCM16 mono at 16 kHz.
FRAME_BYTES: Final = RATE * 2 // 10
#: Messages trio-websocket buffers before it stops reading the socket (backpressure).
MESSAGE_QUEUE_SIZE: Final = 256


def pcm(seconds: float, seed: int = 1, rate: int = RATE) -> bytes:
    """Deterministic pseudo-random PCM16 mono (every chunk has a different CRC for the fake STT)."""
    rng = random.Random(seed)
    return rng.randbytes(int(rate * seconds) * 2)


def frames(audio: bytes, size: int = FRAME_BYTES) -> list[bytes]:
    """``audio`` cut into frames of ``size`` bytes (the last may be shorter)."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


# -- close codes as exceptions --------------------------------------------------------------


class ListenClosed(Exception):
    """The server closed the session with ``code`` (anything but a clean 1000)."""

    code: int = 0

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"closed {code}: {reason or ''}".rstrip(": "))
        self.code = code
        self.reason = reason or ""


class GoingAway(ListenClosed):
    """1001: the server shuts down, or no client data arrived within its idle timeout."""


class Unsupported(ListenClosed):
    """1003: an audio format (codec, channels) the server cannot take."""


class InvalidPayload(ListenClosed):
    """1007: a text frame that is not a JSON object with a ``type``."""


class PolicyViolation(ListenClosed):
    """1008: authentication failed or a parameter is invalid (the reason names it)."""


class MessageTooBig(ListenClosed):
    """1009: a message over the server's ``--ws-max-message-bytes``."""


class InternalError(ListenClosed):
    """1011: the server failed."""


class TryAgainLater(ListenClosed):
    """1013: a capacity was reached (sessions per user or server, STT, storage)."""


_CLOSE_TYPES: Final[dict[int, type[ListenClosed]]] = {
    1001: GoingAway,
    1003: Unsupported,
    1007: InvalidPayload,
    1008: PolicyViolation,
    1009: MessageTooBig,
    1011: InternalError,
    1013: TryAgainLater,
}


def closed_error(code: int, reason: str | None) -> ListenClosed:
    """The exception for close ``code``."""
    return _CLOSE_TYPES.get(code, ListenClosed)(code, reason)


# -- what a session received -----------------------------------------------------------------


@dataclass
class Received:
    """Everything a session received so far, by kind. Segments are upserted by ``id``."""

    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    close_code: int | None = None
    close_reason: str | None = None

    def texts(self) -> list[str]:
        """Segment texts in first-seen order (latest version of each)."""
        return [self.segments[i]["text"] for i in self.order]

    def joined(self) -> str:
        """All segment texts joined (finals of one speaker merge into one segment, Omi's rule)."""
        return " ".join(self.texts())

    def has(self, text: str) -> bool:
        """Whether ``text`` (e.g. ``"seg2 "``) was received."""
        return text in self.joined() + " "

    def event_types(self) -> list[str]:
        """The ``type`` of every event, in order."""
        return [e["type"] for e in self.events]

    def statuses(self) -> list[str]:
        """Every ``service_status`` status, in order."""
        return [e["status"] for e in self.events if e.get("type") == "service_status"]

    def add(self, message: str | bytes) -> list[dict[str, Any]] | dict[str, Any] | None:
        """Record one server message; return the segments or the event it carried."""
        if message == "ping":
            self.pings += 1
            return None
        value = json.loads(message)
        if isinstance(value, list):
            for segment in value:
                if segment["id"] not in self.segments:
                    self.order.append(segment["id"])
                self.segments[segment["id"]] = segment
            return value
        self.events.append(value)
        return dict(value)


class ListenClient:
    """One ``/v4/listen`` session (made by :func:`open_listen`).

    ``received`` accumulates what arrived. The ``read_*`` methods record a close in
    ``received.close_code`` and return; :meth:`expect`, :meth:`messages`, :meth:`segments` and
    :meth:`wait_ready` raise the close as a :class:`ListenClosed` subclass instead (a close
    after our own :meth:`close` ends iteration quietly).
    """

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.received = Received()

    # -- sending --------------------------------------------------------------------------

    async def send_frame(self, frame: bytes) -> None:
        """Send one binary audio frame as is (frames of <= 2 bytes are keepalives)."""
        await self.ws.send_message(frame)

    async def send_pcm(self, audio: bytes, frame_bytes: int = FRAME_BYTES) -> None:
        """Send PCM16 ``audio`` cut into frames of ``frame_bytes``."""
        await trio.lowlevel.checkpoint()
        for frame in frames(audio, frame_bytes):
            await self.ws.send_message(frame)

    async def send_opus(self, packets: Iterable[bytes]) -> None:
        """Send Opus packets, one per message (``codec=opus``)."""
        await trio.lowlevel.checkpoint()
        for packet in packets:
            await self.ws.send_message(packet)

    async def send_text(self, text: str) -> None:
        """Send a text frame as is."""
        await self.ws.send_message(text)

    async def send_json(self, message: Mapping[str, object]) -> None:
        """Send a JSON control message (it needs a string ``type``)."""
        await self.ws.send_message(json.dumps(message))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the session from our side."""
        await self.ws.aclose(code, reason)

    # -- receiving ------------------------------------------------------------------------

    async def _next(self) -> str | bytes | None:
        await trio.lowlevel.checkpoint()  # also when the connection is already closed
        try:
            return await self.ws.get_message()
        except ConnectionClosed as exc:
            # trio-websocket reports 1006 (no close frame) as a reason too; None never reaches here
            # in practice, but the type allows it.
            self.received.close_code = exc.reason.code if exc.reason else 1006
            self.received.close_reason = exc.reason.reason if exc.reason else None
            return None

    async def read_until(self, done: Callable[[Received], bool]) -> Received:
        """Read until ``done(received)`` or the server closes; return :attr:`received`."""
        await trio.lowlevel.checkpoint()
        while not done(self.received) and self.received.close_code is None:
            message = await self._next()
            if message is not None:
                self.received.add(message)
        return self.received

    async def read_to_close(self) -> Received:
        """Read until the session is closed (its code is in ``received.close_code``)."""
        return await self.read_until(lambda r: False)

    def _raise_if_closed(self) -> None:
        code = self.received.close_code
        if code is not None and code != 1000:
            raise closed_error(code, self.received.close_reason)

    async def expect(self, done: Callable[[Received], bool]) -> Received:
        """Like :meth:`read_until`, but a close before ``done`` raises :class:`ListenClosed`."""
        received = await self.read_until(done)
        if not done(received):
            self._raise_if_closed()
            raise ListenClosed(1000, "closed before the expected messages arrived")
        return received

    async def wait_ready(self) -> Received:
        """Wait for ``service_status: ready`` (the server takes audio from then on)."""
        return await self.expect(lambda r: "ready" in r.statuses())

    async def wait_for_text(self, text: str) -> Received:
        """Wait until the joined segment texts contain ``text``."""
        return await self.expect(lambda r: r.has(text))

    async def wait_for_event(self, kind: str) -> dict[str, Any]:
        """Wait for the next event of type ``kind`` not seen before; return it."""
        seen = self.received.event_types().count(kind)
        await self.expect(lambda r: r.event_types().count(kind) > seen)
        return [e for e in self.received.events if e["type"] == kind][-1]

    def messages(self) -> _Messages:
        """``async for message in session.messages():`` each segment batch (a list) or event
        (a dict) as it arrives; pings are skipped. Ends after a clean close; raises
        :class:`ListenClosed` for other codes. (An iterator object, not an async generator:
        ``break`` needs no cleanup.)"""
        return _Messages(self)

    def segments(self) -> _Segments:
        """``async for segment in session.segments():`` every new or changed segment as it
        arrives (see :meth:`messages`)."""
        return _Segments(self)

    async def _next_value(self) -> list[dict[str, Any]] | dict[str, Any]:
        while True:
            message = await self._next()
            if message is None:
                self._raise_if_closed()
                raise StopAsyncIteration
            value = self.received.add(message)
            if value is not None:
                return value


class _Messages:
    def __init__(self, client: ListenClient) -> None:
        self._client = client

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> list[dict[str, Any]] | dict[str, Any]:
        return await self._client._next_value()


class _Segments:
    def __init__(self, client: ListenClient) -> None:
        self._client = client
        self._pending: list[dict[str, Any]] = []

    def __aiter__(self) -> _Segments:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        while not self._pending:
            value = await self._client._next_value()
            if isinstance(value, list):
                self._pending.extend(value)
        return self._pending.pop(0)


def _ws_target(base_url: str, query: str) -> tuple[str, int, str, bool]:
    parts = urlsplit(base_url)
    secure = parts.scheme in ("https", "wss")
    port = parts.port or (443 if secure else 80)
    return parts.hostname or "127.0.0.1", port, f"/v4/listen?{query}", secure


def listen_query(
    *,
    codec: str = "pcm16",
    sample_rate: int = RATE,
    ticket: str | None = None,
    **params: object,
) -> str:
    """The ``/v4/listen`` query string (``language=``, ``conversation_timeout=``, ... as keywords)."""
    values: dict[str, object] = {"codec": codec, "sample_rate": sample_rate, **params}
    if ticket is not None:
        values["ticket"] = ticket
    return urlencode({k: v for k, v in values.items() if v is not None})


@asynccontextmanager
async def open_listen(
    base_url: str,
    *,
    token: str | None = None,
    query: str | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    **params: object,
) -> AsyncIterator[ListenClient]:
    """Connect to ``/v4/listen`` of the server at ``base_url`` (``http://host:port``).

    ``token`` is sent as ``Authorization: Bearer``; ``query`` is the raw query string, else it is
    built from ``params`` (``codec``, ``sample_rate``, ``ticket``, ``language``, ...). The TCP
    stream is closed on every exit path; the caller bounds the time (``trio.fail_after``).
    """
    host, port, target, secure = _ws_target(base_url, query or listen_query(**params))  # type: ignore[arg-type]
    if secure:
        raise ValueError("ListenClient speaks plain ws:// only (loopback test servers)")
    extra = list(headers)
    if token is not None:
        extra.append((b"Authorization", f"Bearer {token}".encode()))
    stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"{host}:{port}",
                target,
                extra_headers=extra,
                message_queue_size=message_queue_size,
            )
            yield ListenClient(ws)
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


# -- the HTTP API ----------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP API error answer: ``status`` and the body's ``error.code`` / ``error.message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ApiClient:
    """The ``/v1`` API as typed calls; JSON in, JSON out, errors as :class:`ApiError`.

    ``http`` is the underlying ``httpx.AsyncClient`` for anything not wrapped here.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def request(
        self, method: str, path: str, *, token: str | None = None, json_body: object = None,
        params: Mapping[str, Any] | None = None, expect: int | Sequence[int] = (200, 201, 202, 204),
    ) -> Any:  # fmt: skip
        """Send one request; return the decoded JSON (``None`` for no body).

        Raises:
            ApiError: the status is not in ``expect``.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.request(
            method, path, json=json_body, params=params, headers=headers
        )
        allowed = (expect,) if isinstance(expect, int) else tuple(expect)
        if response.status_code not in allowed:
            raise _api_error(response)
        return response.json() if response.content else None

    async def create_user(self, admin_token: str, name: str) -> dict[str, Any]:
        """``POST /v1/admin/users`` (an existing user is returned as the 409 body says)."""
        result: dict[str, Any] = await self.request(
            "POST", "/v1/admin/users", token=admin_token, json_body={"name": name}
        )
        return result

    async def create_token(self, admin_token: str, name: str, label: str = "") -> str:
        """``POST /v1/admin/users/{name}/tokens``; return the raw token."""
        body = await self.request(
            "POST",
            f"/v1/admin/users/{name}/tokens",
            token=admin_token,
            json_body={"label": label} if label else {},
        )
        return str(body["token"])

    async def me(self, token: str) -> dict[str, Any]:
        """``GET /v1/me``."""
        result: dict[str, Any] = await self.request("GET", "/v1/me", token=token)
        return result

    async def ticket(self, token: str) -> str:
        """``POST /v1/listen/tickets``; return the single-use ticket."""
        body = await self.request("POST", "/v1/listen/tickets", token=token)
        return str(body["ticket"])

    async def conversations(self, token: str, **params: Any) -> list[dict[str, Any]]:
        """``GET /v1/conversations`` (one page; ``status=``, ``limit=``, ...)."""
        body = await self.request("GET", "/v1/conversations", token=token, params=params)
        return list(body["conversations"] if isinstance(body, dict) else body)

    async def conversation(self, token: str, conversation_id: str) -> dict[str, Any]:
        """``GET /v1/conversations/{id}``."""
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/conversations/{conversation_id}", token=token
        )
        return result

    async def create_webhook(
        self, token: str, kind: str, url: str, **fields: Any
    ) -> dict[str, Any]:
        """``POST /v1/webhooks``; the answer carries the signing ``secret`` (shown only here)."""
        result: dict[str, Any] = await self.request(
            "POST", "/v1/webhooks", token=token, json_body={"kind": kind, "url": url, **fields}
        )
        return result

    async def stats(self, admin_token: str) -> dict[str, Any]:
        """``GET /v1/stats`` (admin)."""
        result: dict[str, Any] = await self.request("GET", "/v1/stats", token=admin_token)
        return result

    async def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text format)."""
        response = await self.http.get("/metrics")
        if response.status_code != 200:
            raise _api_error(response)
        return response.text


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200])


@asynccontextmanager
async def open_api(base_url: str, *, timeout_s: float = 10.0) -> AsyncIterator[ApiClient]:
    """An :class:`ApiClient` for the server at ``base_url``; its connections close on exit."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as http:
        yield ApiClient(http)
