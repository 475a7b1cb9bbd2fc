"""IP addresses and CIDR blocks, as the allowlists and the trusted-proxy list read them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """``"203.0.113.0/24"`` or a single address; raises ValueError naming a bad one."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address or CIDR block") from exc


def parse_networks(blocks: str | Iterable[str]) -> tuple[Network, ...]:
    """Comma-separated text (``"203.0.113.0/24, 198.51.100.7"``) or a list of blocks."""
    parts = blocks.split(",") if isinstance(blocks, str) else blocks
    return tuple(parse_network(part) for part in parts if part.strip())


def address_in(address: str, networks: Iterable[Network]) -> bool:
    """Whether ``address`` (text) lies in one of ``networks``; an IPv4 address written as
    IPv6 (``::ffff:10.0.0.1``, as dual-stack sockets report it) counts as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
