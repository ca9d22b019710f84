"""The machine's network interfaces, as discovery needs them.

``interfaces()``: every interface with its IPv4 addresses and its flags (up,
loopback, multicast). ``multicast_addresses()``: the IPv4 addresses of interfaces
that are up and can do multicast (what mDNS uses by default, and what a node
listening on every interface advertises). ``local_networks(addresses)``: the networks
those addresses sit on, so that a node can pick, of a peer's addresses, one on a
shared network. ``resolve_interfaces(items)``: interface names (``lo``, ``eth0``)
turned into their IPv4 addresses, so that wherever an address is asked for a name
does too.

Flags come from the kernel (``SIOCGIFFLAGS`` on a socket), not from
``/sys/class/net/NAME/flags``: sysfs shows the network namespace that mounted it, so
a process that entered another namespace without remounting it (``nsenter``,
``unshare -n``, many container runtimes) reads the flags of the wrong interfaces, or
of none. A socket always belongs to the caller's namespace. Linux only; elsewhere the
flags are unknown (``None``) and every non-loopback interface counts as up and
multicast-capable.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import ifaddr

from shoal.errors import LocalProtocolError

__all__ = ["Interface", "interface_flags", "interfaces", "local_networks",
           "multicast_addresses", "resolve_interfaces", "unknown_addresses"]

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000  # Linux's value (BSDs use 0x8000; their flags are not read)

_SIOCGIFFLAGS = 0x8913
_IFNAMSIZ = 16
# struct ifreq: the name, then a union of which ifr_flags (a short) is the first
# member; 40 bytes on 64-bit Linux, 32 on 32-bit: pass the larger.
_IFREQ = struct.Struct(f"{_IFNAMSIZ}sH22x")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def interface_flags(name: str) -> int | None:
    """The kernel's flags (``IFF_*``) of the interface ``name`` in this process's
    network namespace; None where they cannot be read (not Linux, no such interface)."""
    if sys.platform != "linux":
        return None
    raw = name.encode(errors="replace")
    if not raw or len(raw) >= _IFNAMSIZ:
        return None
    import fcntl

    try:
        # Opening a datagram socket sends nothing; it only gives the ioctl a handle in
        # this namespace.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(raw, 0))
    except OSError:
        return None
    flags: int = _IFREQ.unpack(answer)[1]
    return flags


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface: its name, IPv4 addresses and kernel flags."""

    name: str
    ipv4: tuple[str, ...]
    flags: int | None
    """``IFF_*`` bits, or None where they could not be read."""

    @property
    def up(self) -> bool | None:
        """Whether the interface is up (None: the flags could not be read)."""
        return None if self.flags is None else bool(self.flags & IFF_UP)

    @property
    def multicast(self) -> bool | None:
        """Whether the interface has the multicast flag (loopback has not, yet mDNS
        works over it between the processes of one host)."""
        return None if self.flags is None else bool(self.flags & IFF_MULTICAST)

    @property
    def loopback(self) -> bool:
        """Whether the interface is a loopback one (by its flag, or by its addresses)."""
        return bool(self.flags is not None and self.flags & IFF_LOOPBACK) or any(
            ipaddress.ip_address(ip).is_loopback for ip in self.ipv4)


def _ipv4(adapter: ifaddr.Adapter) -> list[tuple[str, int]]:
    return [(ip.ip, ip.network_prefix) for ip in adapter.ips if isinstance(ip.ip, str)]


def interfaces() -> list[Interface]:
    """Every interface of this machine (this network namespace): those with addresses
    in the system's order, then those without (which the address listing leaves out,
    though an interface that is down is worth showing)."""
    found = {a.name: tuple(ip for ip, _ in _ipv4(a)) for a in ifaddr.get_adapters()}
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):  # not every platform has it
        names = []
    found.update((name, ()) for name in names if name not in found)
    return [Interface(name, ipv4, interface_flags(name)) for name, ipv4 in found.items()]


def multicast_addresses() -> list[str]:
    """IPv4 addresses of the interfaces that are up, not loopback, and multicast-capable."""
    out: list[str] = []
    for iface in interfaces():
        if iface.flags is not None and (not iface.up or not iface.multicast
                                        or iface.flags & IFF_LOOPBACK):
            continue
        out += [ip for ip in iface.ipv4 if not ipaddress.ip_address(ip).is_loopback]
    return out


def resolve_interfaces(items: Iterable[str]) -> list[str]:
    """IPv4 addresses for ``items``, each an IPv4 address (kept as it is) or the name
    of an interface (replaced by its IPv4 addresses: ``lo`` gives ``127.0.0.1``).
    Duplicates are dropped, the order kept.

    Raises ``LocalProtocolError`` for an item that is neither (naming the interfaces
    there are), for an interface without an IPv4 address, and for an IPv6 address
    (discovery is IPv4 only). Whether an address belongs to this machine is not
    checked here (see ``unknown_addresses``).
    """
    out: list[str] = []
    adapters: list[Interface] | None = None
    for item in items:
        text = item.strip()
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            if ip.version != 4:
                raise LocalProtocolError(
                    f"{item!r} is an IPv6 address; discovery is IPv4 only: give an IPv4 "
                    "address or an interface name")
            out.append(str(ip))
            continue
        if adapters is None:
            adapters = interfaces()
        match = next((a for a in adapters if a.name == text), None)
        if match is None:
            names = ", ".join(a.name for a in adapters) or "none"
            raise LocalProtocolError(
                f"{item!r} is neither an IPv4 address nor an interface of this machine "
                f"(interfaces: {names})")
        if not match.ipv4:
            raise LocalProtocolError(
                f"interface {text} has no IPv4 address; give another interface or an "
                "address")
        out += match.ipv4
    return list(dict.fromkeys(out))


def unknown_addresses(addresses: Iterable[str]) -> list[str]:
    """Of IPv4 ``addresses``, those no interface of this machine has. Loopback
    addresses (127.0.0.0/8) all count as this machine's: the kernel answers on each."""
    known = {ip for iface in interfaces() for ip in iface.ipv4}
    return [a for a in addresses
            if a not in known and not ipaddress.ip_address(a).is_loopback]


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
