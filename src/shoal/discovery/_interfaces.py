"""The machine's network interfaces, as discovery needs them.

``multicast_addresses()``: the IPv4 addresses of interfaces that are up and can do
multicast (what mDNS uses by default, and what a node listening on every interface
advertises). ``local_networks(addresses)``: the networks those addresses sit on, so
that a node can pick, of a peer's addresses, one on a shared network.

Linux tells "up" and "multicast" in ``/sys/class/net/*/flags``; elsewhere every
non-loopback interface counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import ifaddr

__all__ = ["local_networks", "multicast_addresses"]

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def _ipv4(adapter: ifaddr.Adapter) -> list[tuple[str, int]]:
    return [(ip.ip, ip.network_prefix) for ip in adapter.ips if isinstance(ip.ip, str)]


def multicast_addresses() -> list[str]:
    """IPv4 addresses of the interfaces that are up, not loopback, and multicast-capable."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        flags = _flags(adapter.name)
        for ip, _ in _ipv4(adapter):
            if ipaddress.ip_address(ip).is_loopback:
                continue
            if flags is not None and (
                not flags & _IFF_UP or not flags & _IFF_MULTICAST or flags & _IFF_LOOPBACK
            ):
                continue
            out.append(ip)
    return out


def local_networks(addresses: Iterable[str]) -> list[Network]:
    """The networks (address/prefix) that the given local addresses belong to."""
    wanted = set(addresses)
    nets: list[Network] = []
    for adapter in ifaddr.get_adapters():
        for ip, prefix in _ipv4(adapter):
            if ip in wanted:
                nets.append(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    for a in wanted:  # an address no adapter reports (e.g. 127.0.0.2): itself at least
        ip_obj = ipaddress.ip_address(a)
        if not any(ip_obj in n for n in nets if n.version == ip_obj.version):
            nets.append(ipaddress.ip_network("127.0.0.0/8" if ip_obj.is_loopback else a))
    return nets
