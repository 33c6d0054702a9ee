"""The SSRF guard: Svix's vectors, the ranges is_global misses, and pinned connections."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import httpcore
import httpx
import pytest
import trio

import lanes
from server.webhooks.ssrf import (
    ForbiddenAddressError,
    ForbiddenUrlError,
    ParsedTarget,
    PinnedBackend,
    PinnedTransport,
    UnresolvableHostError,
    check_address,
    check_url,
    resolve_and_check,
)
from tests.fakes.http_targets import open_http_targets

# svix/svix-webhooks server/svix-server/src/core/webhook_http_client.rs `is_allowed_test`
SVIX_REJECT = [
    "10.254.0.0",
    "192.168.10.65",
    "172.16.10.65",
    "0.1.2.3",
    "0.0.0.0",
    "127.0.0.1",
    "169.254.45.1",
    "255.255.255.255",
    "192.0.2.255",
    "198.51.100.65",
    "203.0.113.6",
    "100.100.0.0",
    "192.0.0.0",
    "192.0.0.255",
    "250.10.20.30",
    "198.18.0.0",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:0.0.0.1",
]
SVIX_ALLOW = ["1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"]
# Python's is_global says True for these, yet they reach internal hosts.
IS_GLOBAL_MISSES = [
    "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 -> 127.0.0.1
    "168.63.129.16",  # Azure WireServer
    "192.0.0.255",
    "224.0.0.1",  # multicast
    "::0.1.2.3",  # IPv4-compatible
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
]
STILL_DENIED_IN_LOOPBACK_MODE = ["10.0.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "fd00::1"]


@pytest.mark.parametrize("address", SVIX_REJECT + IS_GLOBAL_MISSES)
def test_rejects_non_public_addresses(address: str) -> None:
    with pytest.raises(ForbiddenAddressError) as caught:
        check_address(address, allow_loopback=False)
    assert str(caught.value).startswith(f"address {ipaddress.ip_address(address)} is ")


def test_is_global_really_misses_them() -> None:
    """Guards the reason for the explicit denies: drop one only if Python starts catching it."""
    misses = [a for a in IS_GLOBAL_MISSES if ipaddress.ip_address(a).is_global]
    assert len(misses) >= 6


@pytest.mark.parametrize("address", SVIX_ALLOW)
def test_allows_public_addresses(address: str) -> None:
    assert check_address(address, allow_loopback=False) == ipaddress.ip_address(address)


def test_message_says_why() -> None:
    with pytest.raises(ForbiddenAddressError, match=r"^address 10\.0\.0\.1 is private$"):
        check_address("10.0.0.1", allow_loopback=False)
    with pytest.raises(ForbiddenAddressError, match="NAT64"):
        check_address("64:ff9b::a9fe:a9fe", allow_loopback=False)
    with pytest.raises(ForbiddenAddressError, match="CGNAT"):
        check_address("100.100.0.0", allow_loopback=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"])
def test_loopback_mode_admits_loopback(address: str) -> None:
    check_address(address, allow_loopback=True)


@pytest.mark.parametrize("address", STILL_DENIED_IN_LOOPBACK_MODE)
def test_loopback_mode_still_refuses_private_ranges(address: str) -> None:
    with pytest.raises(ForbiddenAddressError):
        check_address(address, allow_loopback=True)


def test_check_url_parses_an_allowed_url() -> None:
    assert check_url("https://hooks.example.com/x?y=1", allow_loopback=False) == ParsedTarget(
        "https", "hooks.example.com", 443, None
    )
    target = check_url("http://[::1]:8080/hook", allow_loopback=True)
    assert target == ParsedTarget("http", "::1", 8080, ipaddress.ip_address("::1"))


@pytest.mark.parametrize(
    ("url", "allow_loopback", "message"),
    [
        ("http://hooks.example.com/", False, "scheme 'http'"),
        ("ftp://hooks.example.com/", True, "scheme 'ftp'"),
        ("file:///etc/passwd", True, "scheme 'file'"),
        ("https://user:pw@hooks.example.com/", False, "credentials"),
        ("https://user@hooks.example.com/", False, "credentials"),
        ("https:///path-only", False, "no host"),
        ("https://hooks.example.com:0/", False, "port 0"),
        ("https://hooks.example.com:99999/", False, "port 99999"),
        ("not a url", False, "scheme ''"),
    ],
)
def test_check_url_refuses(url: str, allow_loopback: bool, message: str) -> None:
    with pytest.raises(ForbiddenUrlError, match=message):
        check_url(url, allow_loopback=allow_loopback)


@pytest.mark.parametrize("url", ["https://10.0.0.1/", "https://[::ffff:169.254.169.254]/"])
def test_check_url_checks_ip_literals(url: str) -> None:
    with pytest.raises(ForbiddenAddressError):
        check_url(url, allow_loopback=True)


async def test_localhost_resolves_to_a_refused_address() -> None:
    with pytest.raises(ForbiddenAddressError, match="'localhost' resolves to address"):
        await resolve_and_check("localhost", 443, allow_loopback=False)
    addresses = await resolve_and_check("localhost", 443, allow_loopback=True)
    assert addresses and all(ip.is_loopback for ip in addresses)


async def test_numeric_host_forms_are_judged_by_what_they_resolve_to() -> None:
    """``2130706433`` is 127.0.0.1 to the C resolver, whatever a URL parser thinks."""
    with pytest.raises(ForbiddenAddressError, match="127.0.0.1"):
        await resolve_and_check("2130706433", 443, allow_loopback=False)


class FakeResolver(trio.abc.HostnameResolver):
    """Answers from a table; a list of answers is served one per lookup (DNS rebinding)."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | str | None, port: bytes | str | int | None, *args: object
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]]:
        await trio.lowlevel.checkpoint()
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.lookups.append(name)
        answers = self.table.get(name)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return [_info(address, int(port or 0)) for address in answer]

    async def getnameinfo(self, sockaddr: tuple[object, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


def _info(
    address: str, port: int
) -> tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


@pytest.fixture(name="resolver")
async def _resolver() -> AsyncIterator[FakeResolver]:  # noqa: ASYNC124 -- needs the Trio run
    resolver = FakeResolver(
        {
            "mixed.test": [["93.184.216.34", "2001:db8::1"]],
            "public.test": [["93.184.216.34", "2606:2800:220:1::1"]],
            "webhook.test": [["::1", "127.0.0.1"]],
            "rebind.test": [["127.0.0.1"], ["10.0.0.1"]],
        }
    )
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    yield resolver
    trio.socket.set_custom_hostname_resolver(previous)


async def test_one_bad_address_refuses_the_host(resolver: FakeResolver) -> None:
    with pytest.raises(ForbiddenAddressError, match="'mixed.test' resolves to address 2001:db8::1"):
        await resolve_and_check("mixed.test", 443, allow_loopback=False)
    addresses = await resolve_and_check("public.test", 443, allow_loopback=False)
    assert [str(ip) for ip in addresses] == ["93.184.216.34", "2606:2800:220:1::1"]


async def test_unresolvable_host(resolver: FakeResolver) -> None:
    with pytest.raises(UnresolvableHostError, match="did not resolve"):
        await resolve_and_check("gone.test", 443, allow_loopback=False)


class RecordingBackend(httpcore.AsyncMockBackend):
    """Records the host every connection is opened to; never touches the network."""

    def __init__(self) -> None:
        super().__init__([])
        self.hosts: list[str] = []

    async def connect_tcp(
        self, host: str, port: int, *args: object, **kwargs: object
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await super().connect_tcp(host, port)


async def test_backend_connects_to_the_checked_ip_and_rechecks_each_connection(
    resolver: FakeResolver,
) -> None:
    inner = RecordingBackend()
    backend = PinnedBackend(allow_loopback=True, inner=inner)
    stream = await backend.connect_tcp("rebind.test", 80)
    await stream.aclose()
    assert inner.hosts == ["127.0.0.1"]  # the name never reaches the socket layer
    with pytest.raises(ForbiddenAddressError, match="10.0.0.1 is private"):
        await backend.connect_tcp("rebind.test", 80)  # DNS changed: the new answer is checked
    assert inner.hosts == ["127.0.0.1"]
    assert (backend.connects, backend.refused) == (1, 1)


async def test_pinned_request_reaches_loopback_server_with_original_host(
    resolver: FakeResolver,
) -> None:
    """``webhook.test`` exists only in the fake resolver: the OS never resolves it."""
    transport = PinnedTransport(allow_loopback=True)
    with trio.fail_after(10):
        async with open_http_targets() as targets, httpx.AsyncClient(transport=transport) as client:
            url = f"http://webhook.test:{targets.port}/echo"
            response = await client.post(url, content=b"hello")
    assert (response.status_code, response.content) == (200, b"hello")
    assert targets.requests[0].headers["host"] == f"webhook.test:{targets.port}"
    assert transport.statistics().connects == 1  # ::1 refused the connection, 127.0.0.1 took it
    assert resolver.lookups == ["webhook.test"]  # resolved once, by the guard


async def test_refused_target_is_never_contacted() -> None:
    transport = PinnedTransport(allow_loopback=False)
    with trio.fail_after(10):
        async with open_http_targets() as targets, httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(ForbiddenAddressError, match="'localhost' resolves to"):
                await client.get(f"https://localhost:{targets.port}/ok")
            with pytest.raises(ForbiddenUrlError, match="scheme 'http'"):
                await client.get(f"http://localhost:{targets.port}/ok")
            with pytest.raises(ForbiddenAddressError, match="loopback"):
                await client.get(f"https://127.0.0.1:{targets.port}/ok")
    assert targets.requests == []
    assert transport.statistics().refused == 3


async def test_unresolvable_host_is_a_connect_error(resolver: FakeResolver) -> None:
    transport = PinnedTransport(allow_loopback=False)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError, match="did not resolve"):
            await client.get("https://gone.test/")
    assert transport.statistics().unresolved == 1


async def test_through_the_http_lane() -> None:
    """What the webhook worker sees: 2xx responses, and the guard's refusal unwrapped."""
    with trio.fail_after(10):
        async with open_http_targets() as targets:
            pinned = PinnedTransport(allow_loopback=True)
            async with lanes.open_http_lane("webhooks", transport=pinned) as lane:
                response = await lane.request(
                    "POST", f"http://localhost:{targets.port}/echo", content=b"x"
                )
                assert (response.status, response.body) == (200, b"x")
                with pytest.raises(ForbiddenAddressError, match="private"):
                    await lane.request("POST", "http://10.1.2.3/hook", content=b"x")
    assert len(targets.requests) == 1
