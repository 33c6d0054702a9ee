"""Shared fixtures: settings on a temporary data dir, and a real server on port 0."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

if TYPE_CHECKING:
    from server.serve import ServerHandle
    from server.settings import Settings

#: A real PostgreSQL (pgserver) for the tests that ask for ``pg_url``, started once per session.
pytest_plugins = ["tests.pg"]

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(name="make_settings")
def _make_settings(tmp_path: pathlib.Path) -> Callable[..., Settings]:
    """Build settings for a test server: port 0, temp data dir, fake STT, VAD off."""

    def make(**overrides: Any) -> Settings:
        from server.settings import Settings

        values: dict[str, Any] = {
            "port": 0,
            "data_dir": tmp_path / "data",
            "stt": "fake",
            "vad": "off",
            "admin_token": ADMIN_TOKEN,
            "graceful_shutdown_s": 5.0,
            "day_summary_hour_utc": -1,
            "allow_loopback_webhooks": True,
            # No node heartbeat within a test's few seconds unless it asks for one (a beat is
            # one more concurrent store call, which can grow the connection pool mid-test).
            "node_heartbeat_s": 60.0,
            "node_ttl_s": 120.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


async def start_server(nursery: trio.Nursery, settings: Settings) -> ServerHandle:
    """Start a real server in ``nursery`` and return its handle once it listens."""
    from server.serve import serve

    handle: ServerHandle = await nursery.start(serve, settings)
    return handle


@pytest.fixture(name="server")
async def _server(nursery: trio.Nursery, make_settings: Callable[..., Settings]) -> ServerHandle:
    return await start_server(nursery, make_settings())


@pytest.fixture(name="client")
async def _client(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def create_user_token(client: httpx.AsyncClient, name: str) -> str:
    """Create ``name`` through the admin API and return a fresh API token for it."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await client.post("/v1/admin/users", json={"name": name}, headers=admin)
    assert response.status_code in (201, 409), response.text
    response = await client.post(f"/v1/admin/users/{name}/tokens", json={}, headers=admin)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def auth(token: str) -> dict[str, str]:
    """Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}
