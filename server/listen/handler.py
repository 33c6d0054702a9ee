"""The ``/v4/listen`` handler: admission, then one :class:`ListenSession`.

One handler for both transports: :class:`ListenHandler` is a raw-ASGI app (hypercorn's
WebSocket path) and serves a :class:`~server.listen.wire.ListenSocket` directly (the fast path,
:mod:`server.listen.fastws`).

Every refusal happens *after* accepting the upgrade, so the client sees a WebSocket close code
with a reason rather than hypercorn's bare HTTP 403: 1008 for auth and invalid parameters,
1003 for audio formats we cannot take, 1013 when a capacity is reached, 1001 while draining,
1011 for an unexpected server error. Oversized messages are closed 1009 by hypercorn
(``websocket_max_message_size``) or by :mod:`server.listen.fastws`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, final
from urllib.parse import parse_qsl

import trio

from lanes import LaneError
from server.auth import TICKET_PREFIX, TicketBook, bearer_token
from server.clock import wall_now
from server.cluster import CLEANUP_BUDGET_S, Node
from server.drain import Drain
from server.guard import GuardedStream, mark_authenticated, mark_websocket
from server.identity import AuthFailed, JwtAuth, authenticate_bearer
from server.listen.codecs import SUPPORTED_CODECS, make_decoder
from server.listen.conversation import ConversationTracker
from server.listen.fastws import serve_websocket
from server.listen.hooks import RealtimeHooks
from server.listen.params import (
    ListenParams,
    ParamError,
    note_stt_preference,
    parse_listen_params,
)
from server.listen.poller import ReadPoller
from server.listen.registry import AdmissionError, SessionRegistry
from server.listen.session import LatencySinks, ListenSession, SessionConfig
from server.listen.vad import VadGate
from server.listen.wire import AsgiWebSocket, ClientGone, ListenSocket, Receive, Scope, Send
from server.logs import log_context
from server.settings import Settings
from server.store import Store, StoreError
from server.stt.base import SttCapacityError, SttError, SttProvider
from server.views import conversation_json

__all__ = [
    "WEB_LISTEN_PATH",
    "ListenContext",
    "ListenDeps",
    "ListenHandler",
    "make_listen_handler",
]

LOGGER = logging.getLogger(__name__)

#: Omi's browser endpoint: no Authorization header, the first message authenticates.
WEB_LISTEN_PATH = "/v4/web/listen"


class ListenContext(Protocol):
    """The run-wide resources a session uses (``server.context.AppContext`` has them)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def drain(self) -> Drain: ...
    @property
    def store(self) -> Store: ...
    @property
    def tickets(self) -> TicketBook: ...
    @property
    def node(self) -> Node: ...
    @property
    def jwt(self) -> JwtAuth | None: ...


@dataclass(eq=False)
class ListenDeps:
    """What the listen handler needs besides the app context."""

    registry: SessionRegistry
    provider: SttProvider
    hooks: RealtimeHooks
    wake_processing: Callable[[], None]
    latency: LatencySinks | None = None
    #: the fast transport's reads wait here (``None``: on each socket)
    poller: ReadPoller | None = None


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


async def _authenticate(
    ctx: ListenContext, headers: Mapping[str, str], query: Mapping[str, str]
) -> str:
    token = bearer_token(headers)
    if token is not None:
        try:
            user = await authenticate_bearer(ctx, token)
        except AuthFailed as exc:
            raise _Refused(1008, exc.reason[:100]) from None
        return user.id
    ticket = query.get("ticket")
    if ticket:
        user_id = await ctx.tickets.redeem(ticket)
        if user_id is None:
            raise _Refused(1008, "invalid, expired or already used ticket")
        return user_id
    await trio.lowlevel.checkpoint()
    raise _Refused(1008, "missing Authorization: Bearer token (or ?ticket= for browsers)")


async def _first_message_auth(ctx: ListenContext, ws: ListenSocket) -> str:
    """``/v4/web/listen`` (Omi's browser endpoint): accept, then the first message must be
    ``{"type": "auth", "token": ...}`` within ``web_auth_timeout_s``; it is answered with
    ``{"type": "auth_response", "success": true|false}`` as Omi does. A malformed first message
    or the timeout closes 1008 without an answer; a refused token answers ``success: false``
    and closes 1008. The token is an API token, a JWT (if configured) or a ticket.
    """
    await ws.accept()
    message: str | bytes | None = None
    with trio.move_on_after(ctx.settings.web_auth_timeout_s) as deadline:
        message = await ws.receive()
    if deadline.cancelled_caught:
        raise _Refused(1008, "auth timeout: send {type: auth, token} first")
    if message is None:
        raise ClientGone("left before authenticating")
    token = _auth_token(message)
    try:
        user_id: str | None = await _user_of_token(ctx, token)
        refusal = ""
    except AuthFailed as exc:
        user_id, refusal = None, exc.reason
    await ws.send_text(_AUTH_OK if user_id is not None else _AUTH_FAILED)
    if user_id is None:
        raise _Refused(1008, refusal[:100])
    return user_id


_AUTH_OK = json.dumps({"type": "auth_response", "success": True}, separators=(",", ":"))
_AUTH_FAILED = json.dumps({"type": "auth_response", "success": False}, separators=(",", ":"))


def _auth_token(message: str | bytes) -> str:
    try:
        value = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        value = None
    token = value.get("token") if isinstance(value, dict) and value.get("type") == "auth" else None
    if not isinstance(token, str) or not token:
        raise _Refused(1008, 'the first message must be {"type": "auth", "token": "..."}')
    return token


async def _user_of_token(ctx: ListenContext, token: str) -> str:
    if token.startswith(TICKET_PREFIX):
        await trio.lowlevel.checkpoint()
        user_id = await ctx.tickets.redeem(token)
        if user_id is None:
            raise AuthFailed("invalid, expired or already used ticket")
        return user_id
    return (await authenticate_bearer(ctx, token)).id


def _params(ctx: ListenContext, deps: ListenDeps, query: Mapping[str, str]) -> ListenParams:
    try:
        params = parse_listen_params(
            query, default_timeout_s=ctx.settings.conversation_timeout_s, codecs=SUPPORTED_CODECS
        )
    except ParamError as exc:
        raise _Refused(exc.code, exc.reason) from exc
    note_stt_preference(params.stt_service, deps.provider.name)
    return params


@final
class ListenHandler:
    """Serves ``/v4/listen`` and ``/v4/web/listen`` WebSocket upgrades, whatever the transport.

    Calling it is the raw-ASGI app (hypercorn's WebSocket path); :meth:`serve` takes a
    :class:`ListenSocket` directly.
    """

    __slots__ = ("_ctx", "_deps")

    def __init__(self, ctx: ListenContext, deps: ListenDeps) -> None:
        self._ctx = ctx
        self._deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(AsgiWebSocket(scope, receive, send))

    async def serve_upgrade(
        self, stream: GuardedStream, head: bytes, base_scope: Scope
    ) -> bytes | None:
        """The fast transport (:func:`server.listen.fastws.serve_websocket`): a
        :class:`server.guard.Takeover`'s ``serve``."""
        return await serve_websocket(
            stream,
            head,
            base_scope,
            app=self.serve,
            max_message_bytes=self._ctx.settings.ws_max_message_bytes,
            poller=self._deps.poller,
        )

    async def serve(self, ws: ListenSocket) -> None:
        """Admit and run one session on ``ws``; every refusal is a close code. Returns once
        the close was sent (or the client left). Cancellation ends the session."""
        await trio.lowlevel.checkpoint()
        try:
            await ws.wait_connect()
            await _serve(self._ctx, self._deps, ws)
        except ClientGone:
            return
        except _Refused as exc:
            await ws.close(exc.code, exc.reason)
        except Exception:
            LOGGER.exception("listen session failed")
            await ws.close(1011, "internal error")


def make_listen_handler(ctx: ListenContext, deps: ListenDeps) -> ListenHandler:
    """Build the handler for ``/v4/listen`` WebSocket upgrades."""
    return ListenHandler(ctx, deps)


def _session(
    ctx: ListenContext, deps: ListenDeps, ws: ListenSocket, user_id: str, params: ListenParams
) -> ListenSession:
    settings = ctx.settings
    session: ListenSession

    async def emit(event: dict[str, object]) -> None:
        await session.emit(event)

    tracker = ConversationTracker(
        ctx.store,
        user_id,
        params,
        wake_processing=deps.wake_processing,
        emit=emit,
        conversation_json=conversation_json,
    )
    session = ListenSession(
        ws=ws,
        user_id=user_id,
        params=params,
        config=SessionConfig(
            settings.heartbeat_interval_s,
            settings.idle_timeout_s,
            max_frames_per_s=settings.ws_max_frames_per_s,
            frame_burst=settings.ws_frame_burst,
        ),
        decoder=make_decoder(params.codec, params.sample_rate),
        gate=VadGate(settings.vad, params.sample_rate),
        tracker=tracker,
        hooks=deps.hooks,
        drain_deadline=lambda: ctx.drain.deadline,
        provider_name=deps.provider.name,
        latency=deps.latency,
    )
    return session


async def _serve(ctx: ListenContext, deps: ListenDeps, ws: ListenSocket) -> None:
    if ctx.drain.draining:
        raise _Refused(1001, "server shutting down")
    headers, query = _headers(ws.scope), _query(ws.scope)
    try:
        if ws.scope.get("path") == WEB_LISTEN_PATH:
            user_id = await _first_message_auth(ctx, ws)
        else:
            user_id = await _authenticate(ctx, headers, query)
    except (LaneError, StoreError) as exc:
        raise _Refused(1013, "server busy; try again later") from exc
    mark_authenticated(ws.scope)
    mark_websocket(ws.scope)
    params = _params(ctx, deps, query)
    del headers, query  # this frame lives as long as the session: hold no request copies
    if not ws.accepted:
        await ws.accept()
    session = _session(ctx, deps, ws, user_id, params)
    try:
        deps.registry.admit(session)
    except AdmissionError as exc:
        raise _Refused(1001 if ctx.drain.draining else 1013, exc.reason) from exc
    try:
        await _admit_in_cluster(ctx, session)
        try:
            with log_context(
                session_id=session.session_id,
                user_id=user_id,
                conversation_id=lambda: session.conversation_id,
            ):
                await _run_admitted(ctx, deps, ws, session, params)
        finally:  # this node first (the sweeper's view), then the cluster: shielded, bounded
            deps.registry.release(session)
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_BUDGET_S):
                await _release_in_cluster(ctx, session)
    finally:
        deps.registry.release(session)
        deps.hooks.on_session_end(user_id, session.session_id)


async def _release_in_cluster(ctx: ListenContext, session: ListenSession) -> None:
    """Forget the session in the store; a failure is logged (the node retries it later)."""
    try:
        await ctx.node.release(session.session_id)
    except (LaneError, StoreError):
        LOGGER.warning("listen: releasing the session in the store failed; retried later")
        await trio.lowlevel.checkpoint()


async def _admit_in_cluster(ctx: ListenContext, session: ListenSession) -> None:
    """The per-user cap across every node sharing the store (see :mod:`server.cluster`)."""
    try:
        admitted = await ctx.node.admit(session.session_id, session.user_id)
    except (LaneError, StoreError) as exc:
        raise _Refused(1013, "storage busy; try again later") from exc
    if not admitted:
        limit = ctx.settings.max_sessions_per_user
        raise _Refused(1013, f"too many live sessions for this user (limit {limit})")


async def _run_admitted(
    ctx: ListenContext,
    deps: ListenDeps,
    ws: ListenSocket,
    session: ListenSession,
    params: ListenParams,
) -> None:
    await session.emit(
        {"type": "service_status", "status": "initiating", "status_text": "Service Starting"}
    )
    try:
        await session.tracker.start(wall_now())
        last = await ctx.store.list_conversations(session.user_id, status="completed", limit=1)
        if last.items:
            await session.emit({"type": "last_memory", "memory_id": last.items[0].id})
    except (LaneError, StoreError) as exc:
        LOGGER.warning("listen: storage unavailable at session start: %s", exc)
        raise _Refused(1013, "storage busy; try again later") from exc
    await session.emit(
        {
            "type": "service_status",
            "status": "stt_initiating",
            "status_text": "STT Service Starting",
        }
    )
    try:
        async with deps.provider.open_stream(
            sample_rate=params.sample_rate, language=params.language
        ) as stream:
            cause = await session.run(stream)
    except SttCapacityError as exc:
        raise _Refused(1013, "transcription capacity reached; try again later") from exc
    except SttError as exc:
        raise _Refused(1011, f"transcription unavailable: {exc}"[:100]) from exc
    await ws.close(cause.code, cause.reason)
