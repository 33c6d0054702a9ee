"""JWT bearer tokens: Firebase-style ID tokens (what Omi's app sends) signed by keys this test
generates and served from a loopback JWKS (the fake receiver). Covers a valid token on /v1/me and
/v4/listen, a user per ``sub``, key rotation, expiry, wrong issuer/audience, ``alg=none``,
HS256 signed with the public key, and unknown ``kid`` (refreshes are rate-limited).

Claims follow Firebase ID tokens (``iss`` https://securetoken.google.com/<project>, ``aud``
<project>, ``sub`` = the uid, ``auth_time``, ``user_id``, ``firebase``) as Omi's backend
verifies them (``backend/utils/other/endpoints.py``: ``auth.verify_id_token``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.serve import ServerHandle
from server.settings import Settings, SettingsError
from tests.conftest import auth, start_server
from tests.fakes.receivers import Receivers, json_reply, open_receivers
from tests.omi.test_web_listen import open_web
from tests.server.listen_client import Received, open_listen, read_to_close, read_until

PROJECT = "omi-test-project"
ISSUER = f"https://securetoken.google.com/{PROJECT}"


class Key:
    """An RSA signing key and its public JWK."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, sub: str = "uid-1", *, kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": PROJECT,
            "auth_time": now,
            "user_id": sub,
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "firebase": {"identities": {}, "sign_in_provider": "custom"},
        }
        claims.update(overrides)
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": kid or self.kid})


KEYS: dict[str, Key] = {}


def _key(kid: str) -> Key:
    if kid not in KEYS:  # 2048-bit generation costs ~50 ms: once per test session
        KEYS[kid] = Key(kid)
    return KEYS[kid]


def _jwks(*keys: Key) -> Any:
    return json_reply({"keys": [key.jwk for key in keys]})


def _b64(value: object) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@asynccontextmanager
async def _world(
    nursery: trio.Nursery, make_settings: Callable[..., Settings], **overrides: Any
) -> AsyncIterator[tuple[ServerHandle, Receivers, httpx.AsyncClient]]:
    async with open_receivers() as jwks:
        jwks.script("/jwks", default=_jwks(_key("k1")))
        settings = make_settings(
            auth_jwks_url=jwks.url("/jwks"),
            auth_issuer=ISSUER,
            auth_audience=PROJECT,
            **overrides,
        )
        server = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield server, jwks, client
        server.request_shutdown(1.0)


async def _me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/v1/me", headers=auth(token))


@pytest.mark.slow
async def test_firebase_token_opens_me_and_listen_with_a_user_per_sub(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    with trio.fail_after(20):
        async with _world(nursery, make_settings) as (server, jwks, client):
            first = await _me(client, _key("k1").token("uid-1"))
            again = await _me(client, _key("k1").token("uid-1", iat=int(time.time()) - 5))
            other = await _me(client, _key("k1").token("uid-2"))
            token = _key("k1").token("uid-1")
            async with open_listen(server, "codec=pcm16&sample_rate=16000", token) as ws:
                ready = await read_until(
                    ws, Received(), lambda r: "ready" in [e.get("status") for e in r.events]
                )
            async with open_web(server) as web:  # the browser endpoint takes it too
                await web.send_message(json.dumps({"type": "auth", "token": token}))
                web_reply = json.loads(await web.get_message())
            stats = (await client.get("/v1/stats", headers=auth("test-admin-token"))).json()
    assert first.status_code == 200, first.text
    assert first.json()["name"] == "jwt:uid-1" and again.json()["id"] == first.json()["id"]
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    assert ready.close_code is None
    assert web_reply == {"type": "auth_response", "success": True}
    assert len(jwks.on("/jwks")) == 1  # fetched once at start, never per request
    assert stats["jwt"]["verified"] >= 4 and stats["jwt"]["keys"] == 1


#: (case, token factory, words of the refusal reason)
BAD_TOKENS: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: _key("k1").token(exp=int(time.time()) - 120), "expired"),
    (
        "wrong issuer",
        lambda: _key("k1").token(iss="https://securetoken.google.com/other"),
        "issuer",
    ),
    ("wrong audience", lambda: _key("k1").token(aud="other-project"), "audience"),
    ("no sub", lambda: _key("k1").token(sub=""), "sub"),
    (
        "alg none",
        lambda: (
            f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}."
            f"{_b64({'sub': 'uid-1', 'iss': ISSUER, 'aud': PROJECT, 'exp': 2**40})}."
        ),
        "algorithm",
    ),
    ("HS256 with the public key", lambda: _hs256_with_public_key(_key("k1")), "algorithm"),
    ("signed by another key", lambda: _key("rogue").token(kid="k1"), "Signature"),
    ("unknown kid", lambda: _key("k9").token(), "unknown signing key"),
    ("garbage", lambda: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "token"),
]


async def test_bad_tokens_are_refused(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    refusals: dict[str, tuple[int, str, int | None]] = {}
    with trio.fail_after(30):
        async with _world(nursery, make_settings) as (server, _, client):
            good = await _me(client, _key("k1").token())
            for case, make_token, _words in BAD_TOKENS:
                token = make_token()
                refused = await _me(client, token)
                async with open_listen(server, "codec=pcm16&sample_rate=16000", token) as ws:
                    closed = await read_to_close(ws)
                message = refused.json()["error"]["message"]
                assert token not in refused.text and token not in (closed.close_reason or "")
                refusals[case] = (refused.status_code, message, closed.close_code)
    assert good.status_code == 200  # the same server accepts a good token
    for case, _, words in BAD_TOKENS:
        status, message, close_code = refusals[case]
        assert (status, close_code) == (401, 1008), case
        assert words in message, (case, message)


def _hs256_with_public_key(key: Key) -> str:
    """The classic confusion: sign HS256 with the RSA public key (PEM) as the HMAC secret."""
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    now = int(time.time())
    payload = _b64({"sub": "uid-1", "iss": ISSUER, "aud": PROJECT, "iat": now, "exp": now + 60})
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(key.public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


@pytest.mark.slow
async def test_rotation_picks_up_a_new_kid_and_refreshes_are_rate_limited(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    with trio.fail_after(20):
        async with _world(nursery, make_settings, auth_jwks_min_refresh_s=0.0) as (
            _,
            jwks,
            client,
        ):
            jwks.script("/jwks", default=_jwks(_key("k1"), _key("k2")))  # the issuer rotates
            rotated = await _me(client, _key("k2").token("uid-1"))
            old_still = await _me(client, _key("k1").token("uid-1"))
            fetches_after_rotation = len(jwks.on("/jwks"))
        async with _world(nursery, make_settings, auth_jwks_min_refresh_s=3600.0) as (
            _,
            limited_jwks,
            limited,
        ):
            limited_jwks.script("/jwks", default=_jwks(_key("k1"), _key("k2")))
            spray = [await _me(limited, _key(f"k{i}").token()) for i in (2, 3, 4)]
    assert rotated.status_code == 200 and old_still.status_code == 200
    assert fetches_after_rotation == 2  # start + one refresh for the unknown kid
    # Within the minimum interval an unknown kid never triggers a fetch: k2 is refused until
    # the next scheduled refresh, and a spray of unknown kids costs no fetches at all.
    assert [r.status_code for r in spray] == [401, 401, 401]
    assert len(limited_jwks.on("/jwks")) == 1


def test_settings_require_issuer_and_audience_with_a_jwks(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SettingsError, match="auth_issuer"):
        make_settings(auth_jwks_url="https://example.test/jwks", auth_audience=PROJECT)
    with pytest.raises(SettingsError, match="auth_audience"):
        make_settings(auth_jwks_url="https://example.test/jwks", auth_issuer=ISSUER)
