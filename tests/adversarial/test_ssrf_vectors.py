"""SSRF vectors against the webhook guard (``server/webhooks/ssrf.py``) and the API that uses
it: every spelling of loopback, private, link-local, CGNAT, NAT64, 6to4, mapped and translated
IPv6, site-local; schemes; credentials; names that resolve to internal addresses; redirects.

The resolver fixture and Svix's vectors come from ``tests/server/test_ssrf.py``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import trio

import lanes
from server.settings import Settings
from server.webhooks.ssrf import (
    ForbiddenAddressError,
    ForbiddenUrlError,
    PinnedTransport,
    SsrfError,
    check_url,
    resolve_and_check,
)
from tests.conftest import auth, create_user_token, start_server
from tests.fakes.http_targets import open_http_targets
from tests.server.test_ssrf import FakeResolver, _resolver  # noqa: F401 -- the fixture

pytestmark = pytest.mark.adversarial

# Host spellings in URLs; each must be refused without loopback mode.
REFUSED_LITERALS = [
    "127.0.0.1",
    "127.255.255.254",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::127.0.0.1]",
    "[::ffff:0:7f00:1]",  # IPv4-translated (SIIT)
    "0.0.0.0",
    "[::]",
    "10.0.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "[::ffff:192.168.0.1]",
    "169.254.169.254",  # cloud metadata
    "[::ffff:169.254.169.254]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 -> 169.254.169.254
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::a00:1]",
    "[2002:7f00:1::1]",  # 6to4 -> 127.0.0.1
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
    "[fc00::1]",
    "[fd12:3456:789a::1]",
    "[fec0::1]",  # site-local, deprecated but routed inside some networks
    "[feff::1]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[100::1]",
    "[ff02::1]",
    "224.0.0.251",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "192.88.99.1",
    "168.63.129.16",
]
# Numeric spellings only the C resolver understands: judged by what they resolve to.
RESOLVER_SPELLINGS = ["2130706433", "0x7f.1", "127.1", "0x7f000001", "017700000001", "0"]


@pytest.mark.parametrize("host", REFUSED_LITERALS)
def test_every_internal_literal_is_refused(host: str) -> None:
    with pytest.raises(ForbiddenAddressError):
        check_url(f"https://{host}/hook", allow_loopback=False)


@pytest.mark.parametrize("host", RESOLVER_SPELLINGS)
async def test_numeric_spellings_are_refused_by_what_they_resolve_to(host: str) -> None:
    target = check_url(f"https://{host}/hook", allow_loopback=False)
    with pytest.raises(ForbiddenAddressError):
        await resolve_and_check(target.host, target.port, allow_loopback=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com:70/_x",
        "ws://example.com/",
        "https://user:pass@example.com/",
        "https://user@example.com/",
        "https://example.com\\@127.0.0.1/",
        "https:///nohost",
        "https://example.com:0/",
    ],
)
def test_schemes_credentials_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(SsrfError):
        target = check_url(url, allow_loopback=False)
        if target.address is None:  # only reached for a public-looking name
            raise ForbiddenUrlError("unexpectedly admitted")


async def test_names_resolving_to_internal_addresses_are_refused(resolver: FakeResolver) -> None:
    internal = {
        "localhost.": [["127.0.0.1", "::1"]],
        "loop.test": [["127.0.0.1"]],
        "loop6.test": [["::1"]],
        "meta.test": [["169.254.169.254"]],
        "mapped.test": [["::ffff:10.0.0.1"]],
        "sitelocal.test": [["fec0::1"]],
        "nat64.test": [["64:ff9b::a00:1"]],
        "cgnat.test": [["100.64.1.1"]],
        "half.test": [["93.184.216.34", "10.1.2.3"]],
    }
    resolver.table.update(internal)
    await trio.lowlevel.checkpoint()
    for name in internal:
        with pytest.raises(ForbiddenAddressError):
            await resolve_and_check(name, 443, allow_loopback=False)


async def test_redirects_are_never_followed() -> None:
    """A 302 to another path is a failed delivery (``UpstreamStatusError``), never followed."""
    with trio.fail_after(10):
        async with open_http_targets() as targets:
            pinned = PinnedTransport(allow_loopback=True)
            async with lanes.open_http_lane("webhooks", transport=pinned) as lane:
                with pytest.raises(lanes.UpstreamStatusError) as raised:
                    await lane.request("POST", targets.url("/redirect"), content=b"x")
    assert raised.value.status == 302
    assert targets.count("/ok") == 0


async def test_the_api_refuses_internal_webhook_urls(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(allow_loopback_webhooks=False))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        token = await create_user_token(client, "alice")
        for host in ("[fec0::1]", "127.0.0.1", "[::ffff:169.254.169.254]", "localhost", "0x7f.1"):
            body = {"kind": "memory_created", "url": f"https://{host}/hook"}
            response = await client.post("/v1/webhooks", json=body, headers=auth(token))
            assert response.status_code == 422, (host, response.text)
            assert response.json()["error"]["code"] == "forbidden_url"
