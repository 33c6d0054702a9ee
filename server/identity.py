"""Who a bearer token belongs to: a trioscribe API token, or (if configured) a JWT's ``sub``.

Used by the HTTP routes and the WebSocket handlers alike. A JWT's ``sub`` maps to the user
named ``jwt:<sub>``, created on first use; the mapping is cached (bounded) so a request costs
one signature check and no store call once the user is known.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final

import trio

from server.clock import wall_now
from server.context import AppContext
from server.jwt_auth import JwtError, looks_like_jwt
from server.store import ConflictError, Store, User

__all__ = ["AuthFailed", "authenticate_bearer", "jwt_user_name"]

LOGGER = logging.getLogger(__name__)

#: ``sub`` -> user remembered per verifier (least recently used forgotten beyond this).
MAX_CACHED_SUBJECTS: Final = 10_000


class AuthFailed(Exception):
    """The token is not accepted; ``reason`` is safe to show (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def jwt_user_name(sub: str) -> str:
    """The name of the user a JWT ``sub`` maps to."""
    return f"jwt:{sub}"


async def authenticate_bearer(ctx: AppContext, token: str) -> User:
    """The user of ``token``.

    Raises:
        AuthFailed: unknown, revoked, expired or otherwise invalid token.
        LaneError: the storage lane is full or closed (the caller answers 503 / 1013).
    """
    if ctx.jwt is not None and looks_like_jwt(token):
        try:
            sub = await ctx.jwt.verify(token)
        except JwtError as exc:
            LOGGER.info("JWT refused: %s", exc)
            raise AuthFailed(str(exc)) from None
        return await _user_for_sub(ctx, sub)
    user = await ctx.store.authenticate(token, wall_now())
    if user is None:
        raise AuthFailed("invalid or revoked token")
    return user


async def _user_for_sub(ctx: AppContext, sub: str) -> User:
    cache = ctx.services.setdefault("jwt_users", OrderedDict())
    user: User | None = cache.get(sub)
    if user is None:
        user = await _get_or_create(ctx.store, jwt_user_name(sub))
    else:
        await trio.lowlevel.checkpoint()
    cache[sub] = user
    cache.move_to_end(sub)
    while len(cache) > MAX_CACHED_SUBJECTS:
        cache.popitem(last=False)
    return user


async def _get_or_create(store: Store, name: str) -> User:
    user = await store.get_user_by_name(name)
    if user is not None:
        return user
    try:
        created = await store.create_user(name, wall_now())
    except ConflictError:  # created concurrently by another request: read it below
        created = None
    if created is None:
        again = await store.get_user_by_name(name)
        if again is None:
            raise AuthFailed("could not create the user of this token")
        return again
    LOGGER.info("created user %s for a new JWT subject", created.id)
    return created
