"""Who a bearer token belongs to: a trioscribe API token, or (if configured) a JWT's ``sub``.

Used by the HTTP routes and the WebSocket handlers alike. A JWT's ``sub`` maps to the user
named ``jwt:<sub>``, created on first use; :class:`JwtAuth` remembers the mapping (bounded) so a
request costs one signature check and no store call once the user is known.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final, Protocol, final

import trio

from server.clock import wall_now
from server.jwt_auth import JwtError, JwtVerifier, JwtVerifierStatistics, looks_like_jwt
from server.store import ConflictError, Store, User

__all__ = [
    "AuthFailed",
    "IdentityContext",
    "JwtAuth",
    "authenticate_bearer",
    "jwt_user_name",
]

LOGGER = logging.getLogger(__name__)

#: ``sub`` -> user remembered (least recently used forgotten beyond this).
MAX_CACHED_SUBJECTS: Final = 10_000


class AuthFailed(Exception):
    """The token is not accepted; ``reason`` is safe to show (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@final
class JwtAuth:
    """A JWT verifier and the users of the subjects it has accepted (a bounded cache).

    Owns nothing that needs closing: the verifier's lane and refresher belong to whoever opened
    it (:func:`server.jwt_auth.open_jwt_verifier`).
    """

    def __init__(self, verifier: JwtVerifier) -> None:
        self.verifier = verifier
        self._users: OrderedDict[str, User] = OrderedDict()

    def cached(self, sub: str) -> User | None:
        """The user of ``sub`` if known (and mark it recently used)."""
        user = self._users.get(sub)
        if user is not None:
            self._users.move_to_end(sub)
        return user

    def remember(self, sub: str, user: User) -> None:
        """Remember the user of ``sub``, forgetting the least recently used beyond the bound."""
        self._users[sub] = user
        self._users.move_to_end(sub)
        while len(self._users) > MAX_CACHED_SUBJECTS:
            self._users.popitem(last=False)

    def statistics(self) -> JwtVerifierStatistics:
        """The verifier's counters."""
        return self.verifier.statistics()


class IdentityContext(Protocol):
    """What authentication needs from the run (``server.context.AppContext`` has it)."""

    @property
    def store(self) -> Store: ...
    @property
    def jwt(self) -> JwtAuth | None: ...


def jwt_user_name(sub: str) -> str:
    """The name of the user a JWT ``sub`` maps to."""
    return f"jwt:{sub}"


async def authenticate_bearer(ctx: IdentityContext, token: str) -> User:
    """The user of ``token``.

    Raises:
        AuthFailed: unknown, revoked, expired or otherwise invalid token.
        LaneError: the storage lane is full or closed (the caller answers 503 / 1013).
    """
    if ctx.jwt is not None and looks_like_jwt(token):
        try:
            sub = await ctx.jwt.verifier.verify(token)
        except JwtError as exc:
            LOGGER.info("JWT refused: %s", exc)
            raise AuthFailed(str(exc)) from None
        return await _user_for_sub(ctx.store, ctx.jwt, sub)
    user = await ctx.store.authenticate(token, wall_now())
    if user is None:
        raise AuthFailed("invalid or revoked token")
    return user


async def _user_for_sub(store: Store, jwt: JwtAuth, sub: str) -> User:
    user = jwt.cached(sub)
    if user is None:
        user = await _get_or_create(store, jwt_user_name(sub))
    else:
        await trio.lowlevel.checkpoint()
    jwt.remember(sub, user)
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
