"""The SSRF guard for user-supplied webhook URLs: check the URL, resolve, check every address.

A webhook URL is refused unless its scheme is https (http too in loopback mode), it carries no
credentials, and **every** address its host resolves to (A and AAAA) is public. Python's
``ipaddress.is_global`` misses several ranges that reach internal hosts, so they are denied
explicitly: NAT64 and 6to4 prefixes (they embed any IPv4 address), IETF protocol assignments,
shared address space (CGNAT), benchmarking, the reserved 240/4 block, multicast, site-local
IPv6 (fec0::/10), IPv4-translated IPv6, the newer IPv6 documentation block, and the Azure
WireServer address. Anything else must be ``is_global`` (the last check), so every range the
IANA special-purpose registries mark not globally reachable is refused. IPv4-mapped and IPv4-compatible IPv6 addresses are judged by the IPv4
address inside. Loopback mode (local development and tests) admits exactly ``127.0.0.0/8`` and
``::1``; private ranges stay refused.

Checking a name and then letting the HTTP client resolve it again would leave a DNS-rebinding
window, so :class:`PinnedTransport` connects to the address it checked: its network backend
resolves and checks the host for every new connection and opens the socket to that IP. The URL
keeps the host name, so the ``Host`` header, TLS SNI, certificate verification, and the
connection pool all use the original name (a pooled connection is never shared between two
names that resolve to the same IP). Redirects are the HTTP client's business: the lane never
follows them.

Errors (one tree, all ``ValueError``)::

    SsrfError                  base: this target must not be contacted
    ├── ForbiddenUrlError      scheme, credentials, host, or port not allowed
    ├── ForbiddenAddressError  an address is not public (``address``, ``reason``, ``host``)
    └── UnresolvableHostError  the name did not resolve (may be transient)
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import httpcore
import httpx
import trio

__all__ = [
    "ForbiddenAddressError",
    "ForbiddenUrlError",
    "IPAddress",
    "ParsedTarget",
    "PinnedBackend",
    "PinnedTransport",
    "PinnedTransportStatistics",
    "SsrfError",
    "UnresolvableHostError",
    "check_address",
    "check_url",
    "resolve_and_check",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Ranges ipaddress.is_global lets through (or names vaguely), with the reason shown in errors.
EXPLICIT_DENIES: Final[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]] = (
    (ipaddress.ip_network("0.0.0.0/8"), "in 'this network' (0.0.0.0/8)"),
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space (CGNAT, 100.64.0.0/10)"),
    (ipaddress.ip_network("192.0.0.0/24"), "an IETF protocol assignment (192.0.0.0/24)"),
    (ipaddress.ip_network("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"),
    (ipaddress.ip_network("240.0.0.0/4"), "reserved or broadcast (240.0.0.0/4)"),
    (ipaddress.ip_network("168.63.129.16/32"), "a cloud platform service address"),
    (ipaddress.ip_network("64:ff9b::/96"), "NAT64 (it can reach any IPv4 address)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64"),
    (ipaddress.ip_network("2002::/16"), "6to4 (it can reach any IPv4 address)"),
    (ipaddress.ip_network("192.88.99.0/24"), "the deprecated 6to4 relay anycast (192.88.99.0/24)"),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "IPv4-translated (SIIT, it embeds an IPv4 address)"),
    (ipaddress.ip_network("fec0::/10"), "site-local (fec0::/10, deprecated, still routed inside)"),
    (ipaddress.ip_network("3fff::/20"), "a documentation address (3fff::/20)"),
)
LOOPBACK_V4: Final = ipaddress.ip_network("127.0.0.0/8")
LOOPBACK_V6: Final = ipaddress.ip_address("::1")


class SsrfError(ValueError):
    """A webhook target must not be contacted (see the subclasses for why)."""


class ForbiddenUrlError(SsrfError):
    """The URL itself is not allowed: scheme, credentials, missing host, or port."""


class ForbiddenAddressError(SsrfError):
    """An address of the target is not public.

    Attributes:
        address: the offending address (as resolved, before unwrapping).
        reason: why it is refused, e.g. ``"private"``.
        host: the host name that resolved to it, or ``None`` for an IP literal.
    """

    def __init__(self, address: IPAddress, reason: str, host: str | None = None) -> None:
        where = f"{host!r} resolves to address" if host else "address"
        super().__init__(f"{where} {address} is {reason}")
        self.address = address
        self.reason = reason
        self.host = host


class UnresolvableHostError(SsrfError):
    """The host name did not resolve to any address."""


@dataclass(frozen=True, slots=True)
class ParsedTarget:
    """A syntactically allowed webhook URL, split into what the guard needs.

    Attributes:
        scheme: ``"https"`` (or ``"http"`` in loopback mode).
        host: the host name or IP literal, without brackets, as httpx normalises it.
        port: the explicit port, or the scheme's default.
        address: the IP when ``host`` is a literal (already checked), else ``None``.
    """

    scheme: str
    host: str
    port: int
    address: IPAddress | None


def check_url(url: str, *, allow_loopback: bool) -> ParsedTarget:
    """Check a webhook URL's syntax (and its address, when the host is an IP literal).

    Args:
        url: the user-supplied URL.
        allow_loopback: loopback mode: also allow ``http://`` and loopback addresses.

    Raises:
        ForbiddenUrlError: not https (or http in loopback mode), credentials present, no host,
            or a port outside 1..65535.
        ForbiddenAddressError: the host is an IP literal that is not public.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ForbiddenUrlError(f"invalid URL: {exc}") from exc
    allowed = ("https", "http") if allow_loopback else ("https",)
    if parsed.scheme not in allowed:
        raise ForbiddenUrlError(f"scheme {parsed.scheme!r} is not allowed (use {allowed[0]})")
    if parsed.userinfo:
        raise ForbiddenUrlError("credentials in the URL are not allowed")
    if not parsed.host:
        raise ForbiddenUrlError("the URL has no host")
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[parsed.scheme]
    if not 1 <= port <= 65535:
        raise ForbiddenUrlError(f"port {port} is not allowed")
    literal = _ip_literal(parsed.host)
    if literal is not None:
        check_address(literal, allow_loopback=allow_loopback)
    return ParsedTarget(parsed.scheme, parsed.host, port, literal)


def check_address(
    address: IPAddress | str, *, allow_loopback: bool, host: str | None = None
) -> IPAddress:
    """Return ``address`` as an IP if it is public (or loopback in loopback mode).

    Raises:
        ForbiddenAddressError: it is not; the message says why.
        ValueError: ``address`` is not an IP address at all.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    reason = forbidden_reason(ip, allow_loopback=allow_loopback)
    if reason is not None:
        raise ForbiddenAddressError(ip, reason, host)
    return ip


def forbidden_reason(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Say why ``address`` must not be contacted, or return ``None`` when it may be."""
    ip = _unwrap(address)
    if allow_loopback and (ip in LOOPBACK_V4 if ip.version == 4 else ip == LOOPBACK_V6):
        return None
    for network, reason in EXPLICIT_DENIES:
        if ip.version == network.version and ip in network:
            return reason
    return _category(ip)


async def resolve_and_check(host: str, port: int, *, allow_loopback: bool) -> list[IPAddress]:
    """Resolve ``host`` (A and AAAA) and return its addresses if every one of them is allowed.

    An IP literal is checked without a lookup. The caller owns the deadline for the lookup.

    Raises:
        ForbiddenAddressError: any address is not public (one bad address refuses the host).
        UnresolvableHostError: the name did not resolve.
    """
    literal = _ip_literal(host)
    if literal is not None:
        await trio.lowlevel.checkpoint()
        return [check_address(literal, allow_loopback=allow_loopback)]
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror is an OSError
        raise UnresolvableHostError(f"{host!r} did not resolve: {exc}") from exc
    addresses = _unique(ipaddress.ip_address(str(info[4][0])) for info in infos)
    if not addresses:
        raise UnresolvableHostError(f"{host!r} resolved to no address")
    return [check_address(ip, allow_loopback=allow_loopback, host=host) for ip in addresses]


@dataclass(frozen=True, slots=True)
class PinnedTransportStatistics:
    """Counters of a :class:`PinnedTransport`.

    Attributes:
        connects: new connections opened to a checked address.
        refused: connection attempts refused by the guard (URL or address).
        unresolved: connection attempts whose host did not resolve.
    """

    connects: int
    refused: int
    unresolved: int


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only opens TCP connections to checked addresses.

    ``connect_tcp(host, ...)`` resolves and checks ``host`` with :func:`resolve_and_check`,
    then connects to the checked IPs in order (the first that accepts wins). The host name
    never reaches the socket layer, so nothing resolves it a second time.

    Args:
        allow_loopback: loopback mode (see the module docstring).
        inner: the backend that opens the sockets (default: ``httpcore.TrioBackend()``).
    """

    def __init__(
        self, *, allow_loopback: bool, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.allow_loopback = allow_loopback
        self._inner = inner if inner is not None else httpcore.TrioBackend()
        self.connects = 0
        self.refused = 0
        self.unresolved = 0

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check, and connect within httpcore's connect ``timeout``."""
        with trio.move_on_after(math.inf if timeout is None else timeout):
            addresses = await self._checked(host, port)
            return await self._connect_first(addresses, port, local_address, socket_options)
        raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: webhooks only go to TCP addresses the guard checked."""
        await trio.lowlevel.checkpoint()
        raise ForbiddenUrlError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's retry backoff)."""
        await self._inner.sleep(seconds)

    async def _checked(self, host: str, port: int) -> list[IPAddress]:
        try:
            return await resolve_and_check(host, port, allow_loopback=self.allow_loopback)
        except UnresolvableHostError as exc:
            self.unresolved += 1
            raise httpcore.ConnectError(str(exc)) from exc
        except SsrfError:
            self.refused += 1
            raise

    async def _connect_first(
        self,
        addresses: list[IPAddress],
        port: int,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            self.connects += 1
            return stream  # noqa: ASYNC910 -- connect_tcp above is the checkpoint
        assert failure is not None  # resolve_and_check never returns an empty list
        raise failure


class PinnedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that refuses SSRF targets and connects only to checked addresses.

    Every request's URL is checked with :func:`check_url`; every new connection goes through
    :class:`PinnedBackend`, which resolves the host, checks all its addresses, and connects to
    one of them. Keep-alive connections are reused only for the same host name, and they lead
    to an address that was checked when the connection was opened. Refusals raise
    :class:`SsrfError` subclasses out of ``client.send`` (they are not ``httpx`` errors); a name
    that does not resolve is an ``httpx.ConnectError``.

    Use it as the ``transport=`` of :func:`lanes.open_http_lane` (which never follows redirects).

    Args:
        allow_loopback: loopback mode (see the module docstring).
        verify: TLS verification: ``True``, ``False``, or an ``ssl.SSLContext``.
        limits: connection-pool limits (the lane's own limits do not apply to a custom
            transport).
    """

    def __init__(
        self,
        *,
        allow_loopback: bool,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits if limits is not None else httpx.Limits()
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self.allow_loopback = allow_loopback
        self.backend = PinnedBackend(allow_loopback=allow_loopback)
        # httpx has no public hook for a network backend; rebuild the pool it made with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check the request's URL, then send it through the pinned pool."""
        try:
            check_url(str(request.url), allow_loopback=self.allow_loopback)
        except SsrfError:
            self.backend.refused += 1
            raise
        return await super().handle_async_request(request)

    def statistics(self) -> PinnedTransportStatistics:
        """Return a frozen snapshot of the guard's counters."""
        return PinnedTransportStatistics(
            connects=self.backend.connects,
            refused=self.backend.refused,
            unresolved=self.backend.unresolved,
        )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unwrap(ip: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped or IPv4-compatible IPv6 address."""
    if ip.version == 4:
        return ip
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d (deprecated), but not :: or ::1
        return ipaddress.IPv4Address(int(ip))
    return ip


def _category(ip: IPAddress) -> str | None:
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally reachable"),
    )
    return next((reason for matched, reason in checks if matched), None)


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))
