"""JWT bearer tokens beside trioscribe's own: Firebase ID tokens (Omi's app) or any OIDC issuer.

A token is accepted when its signature verifies against a key of the configured JWKS, its
``iss`` and ``aud`` are the configured ones, it has not expired, and it names a ``sub``. Each
``sub`` is one user, created on first use (named ``jwt:<sub>``).

Keys: the JWKS is fetched by a background task through an HTTP lane (one owned client, a
breaker), at start, every ``refresh_s``, and when a token names an unknown ``kid`` (key
rotation) -- at most once per ``min_refresh_s``. A request never fetches: it reads the cached
key set, and only a token with an unknown ``kid`` waits (bounded) for the refresher's next
fetch. Only asymmetric algorithms are accepted, and only the one the key is for, so ``alg=none``
and HS256-signed-with-the-public-key tokens are refused.

For Firebase: ``--auth-jwks-url https://www.googleapis.com/service_accounts/v1/jwk/
securetoken@system.gserviceaccount.com --auth-issuer https://securetoken.google.com/<project>
--auth-audience <project>``. The audience check matters: that JWKS signs every project's tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import jwt
import trio

from lanes import HttpLane, HttpLaneSettings, LaneError, open_http_lane

__all__ = [
    "JwtError",
    "JwtSettings",
    "JwtVerifier",
    "JwtVerifierStatistics",
    "looks_like_jwt",
    "open_jwt_verifier",
]

LOGGER = logging.getLogger(__name__)

#: Signature algorithms accepted (asymmetric only: a JWKS holds public keys).
ALLOWED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: How long a token with an unknown ``kid`` waits for the refresher's fetch.
UNKNOWN_KID_WAIT_S: Final = 5.0
#: Largest JWKS document read.
JWKS_READ_LIMIT_BYTES: Final = 256 * 1024
#: Longest ``sub`` accepted (Firebase: 128).
MAX_SUB_CHARS: Final = 128
#: Clock skew tolerated on ``exp`` / ``iat`` / ``nbf``.
LEEWAY_S: Final = 30.0


class JwtError(Exception):
    """The token is refused; the message says why and never contains the token."""


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (``header.payload.signature``), not a trioscribe token."""
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """Where the keys are and what the tokens must say."""

    jwks_url: str
    issuer: str
    audience: str
    refresh_s: float = 3600.0
    min_refresh_s: float = 30.0


@dataclass(frozen=True, slots=True)
class JwtVerifierStatistics:
    """Counters of a :class:`JwtVerifier`."""

    keys: int
    fetches: int
    fetch_failures: int
    refreshes_for_unknown_kid: int
    unknown_kid_rate_limited: int
    verified: int
    rejected: int


@final
class JwtVerifier:
    """Verifies JWTs against a cached JWKS (see the module docstring)."""

    def __init__(self, settings: JwtSettings, lane: HttpLane) -> None:
        self._settings = settings
        self._lane = lane
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = -float("inf")
        self._refresh_wanted = trio.Event()
        self._fetched = trio.Event()
        self._fetches = 0
        self._fetch_failures = 0
        self._kid_refreshes = 0
        self._kid_limited = 0
        self._verified = 0
        self._rejected = 0

    # -- the refresher (a background task) --------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch the JWKS now, report started, then keep it fresh until cancelled."""
        await self._fetch()
        task_status.started()
        while True:
            with trio.move_on_after(self._settings.refresh_s):
                await self._refresh_wanted.wait()
            await trio.sleep_until(self._last_fetch + self._settings.min_refresh_s)
            self._refresh_wanted = trio.Event()
            await self._fetch()

    async def _fetch(self) -> None:
        await trio.lowlevel.checkpoint()
        self._last_fetch = trio.current_time()
        self._fetches += 1
        try:
            response = await self._lane.request("GET", self._settings.jwks_url)
            keys = _parse_jwks(response.body)
        except (LaneError, ValueError) as exc:
            self._fetch_failures += 1
            LOGGER.warning("JWKS fetch failed (keeping %d cached keys): %s", len(self._keys), exc)
        else:
            if keys.keys() != self._keys.keys():
                LOGGER.info("JWKS: %d signing keys", len(keys))
            self._keys = keys
        finally:
            self._fetched.set()
            self._fetched = trio.Event()

    async def _wait_for_new_keys(self) -> None:
        """An unknown ``kid``: ask for a fetch (rate-limited) and wait for it (bounded)."""
        if trio.current_time() - self._last_fetch < self._settings.min_refresh_s:
            self._kid_limited += 1
            await trio.lowlevel.checkpoint()
            return
        self._kid_refreshes += 1
        fetched = self._fetched
        self._refresh_wanted.set()
        with trio.move_on_after(UNKNOWN_KID_WAIT_S):
            await fetched.wait()

    # -- verification (the request path) ---------------------------------------------------

    async def verify(self, token: str) -> str:
        """Return the token's ``sub`` if it is valid.

        Raises:
            JwtError: refused (bad signature, expired, wrong issuer/audience, unknown key, ...).

        Cancellation: safe; only an unknown ``kid`` makes this wait (for the refresher).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            self._rejected += 1
            raise JwtError("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            self._rejected += 1
            raise JwtError(f"algorithm {str(alg)[:10]!r} is not accepted")
        if not isinstance(kid, str):
            self._rejected += 1
            raise JwtError("token names no signing key (kid)")
        if kid not in self._keys:
            await self._wait_for_new_keys()
        else:
            await trio.lowlevel.checkpoint()
        try:
            sub = self._decode(token, alg, kid)
        except JwtError:
            self._rejected += 1
            raise
        self._verified += 1
        return sub

    def _decode(self, token: str, alg: str, kid: str) -> str:
        key = self._keys.get(kid)
        if key is None:
            raise JwtError("unknown signing key")
        if key.algorithm_name != alg:
            raise JwtError("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise JwtError("token expired") from None
        except jwt.InvalidAudienceError:
            raise JwtError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise JwtError("token is from another issuer") from None
        except jwt.PyJWTError as exc:
            raise JwtError(f"invalid token: {type(exc).__name__}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUB_CHARS:
            raise JwtError("token has no valid sub")
        return sub

    def statistics(self) -> JwtVerifierStatistics:
        """A snapshot of the counters."""
        return JwtVerifierStatistics(
            keys=len(self._keys),
            fetches=self._fetches,
            fetch_failures=self._fetch_failures,
            refreshes_for_unknown_kid=self._kid_refreshes,
            unknown_kid_rate_limited=self._kid_limited,
            verified=self._verified,
            rejected=self._rejected,
        )


def _parse_jwks(body: bytes) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS document by ``kid`` (keys without a ``kid`` are skipped)."""
    try:
        document = json.loads(body)
        key_set = jwt.PyJWKSet.from_dict(document)
    except (ValueError, jwt.PyJWTError) as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None
    return {
        key.key_id: key
        for key in key_set.keys
        if key.key_id and key.algorithm_name in ALLOWED_ALGORITHMS
    }


@asynccontextmanager
async def open_jwt_verifier(settings: JwtSettings) -> AsyncIterator[JwtVerifier]:
    """Open the JWKS lane and its refresher; the first fetch is done (or failed) on entry.

    The lane ("jwks", its own client and breaker) and the refresher task are owned by this
    block and closed/cancelled when it ends.
    """
    lane_settings = HttpLaneSettings(
        read_limit_bytes=JWKS_READ_LIMIT_BYTES,
        max_concurrency=2,
        per_target_concurrency=1,
        per_target_max_waiting=1,
        read_timeout_s=10.0,
        write_timeout_s=10.0,
    )
    async with open_http_lane("jwks", lane_settings) as lane, trio.open_nursery() as nursery:
        verifier = JwtVerifier(settings, lane)
        await nursery.start(verifier.run)
        yield verifier
        nursery.cancel_scope.cancel()
