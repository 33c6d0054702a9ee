"""pytest fixtures that run a real trioscribe server inside a pytest-trio test.

Registered as the ``pytest11`` entry point ``server.testing`` (loaded automatically once
trioscribe is installed; ``-p server.testing`` or ``pytest_plugins = ["server.testing"]`` also
work and are no-ops when it is already loaded). Fixtures:

``trioscribe_server``
    a real :func:`server.serve.serve` on ``127.0.0.1`` port 0 with a temporary data directory,
    the fake STT, VAD off, no day summaries and loopback webhooks allowed. Change settings by
    overriding the ``trioscribe_settings`` fixture (a dict) or with
    ``@pytest.mark.trioscribe(stt="embedded", vad="active", ...)``. Shut down gracefully at the
    end of the test (hard-cancelled if that takes over ``TEARDOWN_S``).
``trioscribe_token``
    an API token of a fresh user ``trioscribe-user`` on that server.
``trioscribe_settings``
    the overrides (empty by default).
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio

from server.testing._client import ApiClient, ListenClient, open_api, open_listen

if TYPE_CHECKING:
    from server.serve import ServerHandle
    from server.settings import Settings

__all__ = [
    "TEST_ADMIN_TOKEN",
    "TrioscribeServer",
    "pytest_configure",
    "start_trioscribe",
    "trioscribe_server",
    "trioscribe_settings",
    "trioscribe_token",
]

TEST_ADMIN_TOKEN: Final = "trioscribe-test-admin"
TEST_USER: Final = "trioscribe-user"
#: Bound on the graceful shutdown at the end of a test before it is cancelled.
TEARDOWN_S: Final = 10.0


def test_defaults(data_dir: pathlib.Path) -> dict[str, Any]:
    """Settings of a test server (before overrides)."""
    return {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "stt": "fake",
        "vad": "off",
        "admin_token": TEST_ADMIN_TOKEN,
        "graceful_shutdown_s": 5.0,
        "drain_readiness_s": 0.0,
        "day_summary_hour_utc": -1,
        "allow_loopback_webhooks": True,
    }


@dataclass(frozen=True, eq=False)
class TrioscribeServer:
    """A running test server: its address, settings, and clients bound to it."""

    handle: ServerHandle
    admin_token: str

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self.handle.url

    @property
    def port(self) -> int:
        """The bound port."""
        return self.handle.port

    @property
    def settings(self) -> Settings:
        """The settings it runs with."""
        return self.handle.context.settings

    def api(self, *, timeout_s: float = 10.0) -> AbstractAsyncContextManager[ApiClient]:
        """``async with server.api() as api:`` an :class:`ApiClient` for this server."""
        return open_api(self.url, timeout_s=timeout_s)

    def listen(
        self, token: str | None = None, **params: Any
    ) -> AbstractAsyncContextManager[ListenClient]:
        """``async with server.listen(token) as session:`` a ``/v4/listen`` session
        (``codec=``, ``sample_rate=``, ``ticket=``, ``query=``, ``headers=`` ...)."""
        return open_listen(self.url, token=token, **params)

    async def create_token(self, user: str = TEST_USER) -> str:
        """Create ``user`` if needed and return a new API token of it."""
        async with self.api() as api:
            await api.request(
                "POST",
                "/v1/admin/users",
                token=self.admin_token,
                json_body={"name": user},
                expect=(201, 409),
            )
            return await api.create_token(self.admin_token, user)


async def start_trioscribe(
    nursery: trio.Nursery, data_dir: pathlib.Path, **overrides: Any
) -> TrioscribeServer:
    """Start a test server in ``nursery`` (see :func:`test_defaults`); return once it listens."""
    from server.serve import serve
    from server.settings import Settings

    settings = Settings(**{**test_defaults(data_dir), **overrides})
    handle: ServerHandle = await nursery.start(serve, settings)
    return TrioscribeServer(handle, settings.admin_token or "")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``trioscribe`` marker."""
    config.addinivalue_line(
        "markers", "trioscribe(**settings): settings overrides for the trioscribe_server fixture"
    )


@pytest.fixture
def trioscribe_settings() -> Mapping[str, Any]:
    """Settings overrides for ``trioscribe_server``; override this fixture to change them."""
    return {}


@pytest.fixture
async def trioscribe_server(
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    trioscribe_settings: Mapping[str, Any],
) -> AsyncIterator[TrioscribeServer]:
    """A real trioscribe server for this test (see the module docstring)."""
    overrides = dict(trioscribe_settings)
    for marker in reversed(list(request.node.iter_markers("trioscribe"))):
        overrides.update(marker.kwargs)
    async with trio.open_nursery() as nursery:
        server = await start_trioscribe(nursery, tmp_path / "trioscribe-data", **overrides)
        yield server
        server.handle.request_shutdown()
        nursery.cancel_scope.deadline = trio.current_time() + TEARDOWN_S


@pytest.fixture
async def trioscribe_token(trioscribe_server: TrioscribeServer) -> str:
    """An API token of the user ``trioscribe-user`` on ``trioscribe_server``."""
    return await trioscribe_server.create_token()
