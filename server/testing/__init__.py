"""trioscribe in your pytest-trio suite: fixtures and typed clients.

A complete test (pytest-trio installed; ``trio_mode = true`` or ``@pytest.mark.trio``)::

    async def test_transcribes(trioscribe_server, trioscribe_token):
        async with trioscribe_server.listen(trioscribe_token) as session:
            await session.wait_ready()
            await session.send_pcm(pcm(2.0))
            assert (await session.wait_for_text("seg1 ")).segments

The plugin is the ``pytest11`` entry point ``server.testing`` (see :mod:`server.testing._plugin`
for the fixtures); the clients work without pytest too.
"""

from server.testing._client import (
    FRAME_BYTES as FRAME_BYTES,
    RATE as RATE,
    ApiClient as ApiClient,
    ApiError as ApiError,
    GoingAway as GoingAway,
    InternalError as InternalError,
    InvalidPayload as InvalidPayload,
    ListenClient as ListenClient,
    ListenClosed as ListenClosed,
    MessageTooBig as MessageTooBig,
    PolicyViolation as PolicyViolation,
    Received as Received,
    TryAgainLater as TryAgainLater,
    Unsupported as Unsupported,
    frames as frames,
    listen_query as listen_query,
    open_api as open_api,
    open_listen as open_listen,
    pcm as pcm,
)
from server.testing._plugin import (
    TEST_ADMIN_TOKEN as TEST_ADMIN_TOKEN,
    TrioscribeServer as TrioscribeServer,
    pytest_configure as pytest_configure,
    start_trioscribe as start_trioscribe,
    trioscribe_server as trioscribe_server,
    trioscribe_settings as trioscribe_settings,
    trioscribe_token as trioscribe_token,
)

__all__ = [
    "FRAME_BYTES",
    "RATE",
    "TEST_ADMIN_TOKEN",
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
    "TrioscribeServer",
    "TryAgainLater",
    "Unsupported",
    "frames",
    "listen_query",
    "open_api",
    "open_listen",
    "pcm",
    "pytest_configure",
    "start_trioscribe",
    "trioscribe_server",
    "trioscribe_settings",
    "trioscribe_token",
]
