"""Where partner notifications may go: public http(s) addresses only, unless allowed.

A notify URL is set by an operator but chosen by a partner, and the service POSTs to it
from inside our network. Without a check, a URL naming a loopback, private or
link-local address (or a cloud metadata service such as 169.254.169.254) would make
the service probe or call internal systems on the partner's behalf (SSRF). So a URL is
refused, when it is set and again at every send, if its host is, or resolves to, an
address that is not public; an app set with ``--allow-private`` (a partner on our own
network, or a test) skips the address check. At send time the request goes to the very
address that was checked, so a name that resolves differently a moment later (DNS
rebinding) cannot redirect it; redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import msgspec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud instance metadata services: never a partner, whatever the flag says. AWS, GCP and
# Azure answer on 169.254.169.254 (AWS also on fd00:ec2::254), Alibaba Cloud on
# 100.100.100.200.
METADATA = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class TargetRefused(ValueError):
    """A notify URL that must not be called; the message says why."""


class Target(msgspec.Struct, frozen=True):
    """A checked notify URL and how to reach it.

    ``urls`` name each checked address in place of the host name, to be tried in turn;
    ``host`` is the name (for the Host header, and as TLS server name for https);
    ``origin`` keys a client.
    """

    urls: list[httpx.URL]
    host: str
    headers: dict[str, str]
    extensions: dict[str, str]
    origin: tuple[str, str, int]


def parse_url(url: str) -> httpx.URL:
    """The URL if its shape may be a notify URL: http(s), a host, no credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise TargetRefused(f"not a URL: {exc}") from exc
    if parsed.scheme not in SCHEMES:
        raise TargetRefused("must be an http:// or https:// URL")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    if parsed.userinfo:
        raise TargetRefused("credentials in a URL are not allowed (they would be logged)")
    return parsed


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address a partner may use, or None."""
    address = _embedded_ipv4(address) or address
    if address in METADATA:
        return "a cloud metadata address"
    for reason, test in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # Shared (carrier-grade NAT), documentation, benchmarking and other special ranges.
        ("not public", not address.is_global),
    ):
        if test:
            return reason
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ascii_host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii")


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


def check_addresses(host: str, addresses: list[IPAddress], allow_private: bool) -> None:
    """Refuse unless every address ``host`` resolves to may be called. The metadata
    addresses are refused even with ``allow_private``."""
    if not addresses:
        raise TargetRefused(f"{host} resolves to no address")
    for address in addresses:
        reason = refusal_reason(address)
        if reason is None:
            continue
        if allow_private and address not in METADATA:
            continue
        resolved = "is" if _literal(host) == address else f"resolves to {address}, which is"
        hint = "" if address in METADATA else "; --allow-private allows it"
        raise TargetRefused(f"{host} {resolved} {reason}{hint}")


def _addresses(infos: list) -> list[IPAddress]:
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a scope ("fe80::1%eth0"): the address is before it.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def check_notify_url(url: str, allow_private: bool) -> None:
    """For ``topup app set --notify-url``: refuse a URL that the notifier would refuse."""
    parsed = parse_url(url)
    host = _ascii_host(parsed)
    literal = _literal(host)
    if literal is not None:
        check_addresses(host, [literal], allow_private)
        return
    try:
        infos = socket.getaddrinfo(host, _port(parsed), type=socket.SOCK_STREAM)
    except OSError as exc:
        if allow_private:
            return  # the operator vouches for it; the notifier checks again at each send
        raise TargetRefused(f"cannot resolve {host}: {exc}") from exc
    check_addresses(host, _addresses(infos), allow_private)


async def resolve_target(url: str, allow_private: bool) -> Target:
    """The notify URL checked now, pinned to the address that was checked."""
    parsed = parse_url(url)
    host = _ascii_host(parsed)
    port = _port(parsed)
    literal = _literal(host)
    if literal is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise TargetRefused(f"cannot resolve {host}: {exc}") from exc
        addresses = _addresses(infos)
    else:
        addresses = [literal]
    check_addresses(host, addresses, allow_private)
    netloc = parsed.netloc.decode("ascii")
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return Target(
        urls=[parsed.copy_with(host=str(address)) for address in addresses],
        host=host,
        headers={"Host": netloc},
        extensions=extensions,
        origin=(parsed.scheme, host, port),
    )
