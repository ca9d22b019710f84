"""``shoal.discovery._interfaces``: interface names resolved to their IPv4 addresses
(what ``--interface`` accepts), flags read from the kernel, and the checks that keep a
command from opening anything on an interface that is not there.

Nothing here sends a packet: the flags come from an ioctl on a socket that is never
used for traffic.
"""

from __future__ import annotations

import re
import socket
import sys

import anyio
import pytest

import shoal
from shoal.discovery import MDNS, Static
from shoal.discovery._interfaces import (
    IFF_LOOPBACK,
    IFF_UP,
    interface_flags,
    interfaces,
    resolve_interfaces,
    unknown_addresses,
)
from shoal.errors import LocalProtocolError

linux = pytest.mark.skipif(sys.platform != "linux", reason="flags are read on Linux only")


def _has_lo() -> bool:
    return "lo" in {name for _, name in socket.if_nameindex()}


def test_lo_resolves_to_127_0_0_1_and_addresses_stay_as_given() -> None:
    if not _has_lo():
        pytest.skip("no interface named lo here")
    assert resolve_interfaces(["lo"]) == ["127.0.0.1"]
    # duplicates dropped, order kept, surrounding spaces ignored
    assert resolve_interfaces(["127.0.0.1", " lo ", "10.1.2.3"]) == ["127.0.0.1",
                                                                   "10.1.2.3"]


@pytest.mark.parametrize(("item", "says"), [
    ("no-such-if0", "neither an IPv4 address nor an interface of this machine"),
    ("", "neither an IPv4 address nor an interface"),
    ("::1", "IPv6 address; discovery is IPv4 only"),
    ("300.1.1.1", "neither an IPv4 address nor an interface"),
])
def test_what_is_neither_an_address_nor_an_interface_is_refused(item: str,
                                                                says: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(says)):
        resolve_interfaces(["127.0.0.1", item])


def test_an_address_no_interface_has_is_unknown_but_loopback_ones_are_not() -> None:
    mine = next(ip for i in interfaces() for ip in i.ipv4)
    assert unknown_addresses([mine, "127.0.0.1", "127.9.9.9", "203.0.113.77"]) == [
        "203.0.113.77"]


@linux
def test_flags_come_from_the_kernel() -> None:
    if not _has_lo():
        pytest.skip("no interface named lo here")
    flags = interface_flags("lo")
    assert flags is not None
    assert flags & IFF_LOOPBACK
    lo = next(i for i in interfaces() if i.name == "lo")
    assert lo.loopback
    assert lo.up == bool(flags & IFF_UP)
    assert interface_flags("no-such-if0") is None
    assert interface_flags("x" * 40) is None  # longer than a kernel name can be


@pytest.mark.anyio
async def test_the_library_takes_interface_names_too() -> None:
    """``open_node(interfaces=[...])`` and ``MDNS(interfaces=[...])`` take names as the
    command line does; a wrong one is refused before anything opens."""
    if not _has_lo():
        pytest.skip("no interface named lo here")
    assert MDNS(interfaces=["lo"]).interfaces == ("127.0.0.1",)
    with pytest.raises(LocalProtocolError, match="neither an IPv4 address"):
        MDNS(interfaces=["no-such-if0"])
    with anyio.fail_after(10):
        async with shoal.open_node("n", discovery=Static([]), interfaces=["lo"]) as node:
            assert node.addresses == ("127.0.0.1",)
        with pytest.raises(LocalProtocolError, match="neither an IPv4 address"):
            async with shoal.open_node("n", discovery=Static([]),
                                       interfaces=["no-such-if0"]):
                pass
        with pytest.raises(LocalProtocolError, match="list of IPv4 addresses or interface"):
            async with shoal.open_node("n", discovery=Static([]),
                                       interfaces="lo"):
                pass
