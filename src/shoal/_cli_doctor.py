"""``shoal doctor``: why might a peer be invisible? Looks at this machine's interfaces,
listens for shoal nodes over mDNS, checks that each one found can be reached, and
prints every finding with a suggested fix."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ifaddr
import trio

import shoal
from shoal.discovery import MDNS, Peer, Static

__all__ = ["add_doctor_command", "run_doctor"]

Out = Callable[[str], None]

_IFF_UP, _IFF_LOOPBACK, _IFF_MULTICAST = 0x1, 0x8, 0x1000


@dataclass(frozen=True)
class Finding:
    level: str
    """``ok``, ``warning`` or ``problem``."""
    what: str
    fix: str = ""


def add_doctor_command(commands: Any) -> None:
    p = commands.add_parser(
        "doctor", help="say why a peer might be invisible",
        description="Check the interfaces discovery would use, listen for shoal nodes "
        "over mDNS, check that each node found is reachable, and suggest fixes. Exits 1 "
        "if it found a problem.",
        epilog="example: shoal doctor --interface 127.0.0.1 --wait 3")
    p.add_argument("--interface", action="append", metavar="IP",
                   help="address of an interface to check and listen on (repeatable; "
                   "default: every multicast-capable interface)")
    p.add_argument("--static", action="append", default=[], metavar="tcp://IP:PORT",
                   help="also try these control endpoints")
    p.add_argument("--wait", type=float, default=3.0,
                   help="seconds to listen for nodes (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")


def _interfaces() -> list[dict[str, Any]]:
    out = []
    for adapter in ifaddr.get_adapters():
        try:
            flags: int | None = int(
                Path(f"/sys/class/net/{adapter.name}/flags").read_text().strip(), 16)
        except (OSError, ValueError):
            flags = None
        ips = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
        loopback = any(ipaddress.ip_address(ip).is_loopback for ip in ips) or bool(
            flags is not None and flags & _IFF_LOOPBACK)
        out.append({
            "name": adapter.name, "ipv4": ips,
            "up": None if flags is None else bool(flags & _IFF_UP),
            "multicast": None if flags is None else bool(flags & _IFF_MULTICAST),
            "loopback": loopback,
        })
    return out


async def _reachable(address: str, port: int) -> bool:
    with trio.move_on_after(1.0):
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def _diagnose(args: argparse.Namespace, emit: Callable[[str, dict[str, Any]], None],
                    findings: list[Finding]) -> None:
    interfaces = _interfaces()
    for iface in interfaces:
        emit("interface", iface)
    wanted = args.interface
    usable = [i for i in interfaces if i["ipv4"] and i["up"] is not False
              and i["multicast"] is not False and not i["loopback"]]
    if wanted:
        known = {ip for i in interfaces for ip in i["ipv4"]}
        for ip in wanted:
            if ip not in known:
                findings.append(Finding(
                    "problem", f"{ip} is not an address of this machine",
                    "pass --interface with one of the addresses listed above"))
    elif not usable:
        findings.append(Finding(
            "problem", "no interface is up and multicast-capable: mDNS cannot work here",
            "bring an interface up, or list peers with Static([...]) (--static)"))
    else:
        findings.append(Finding(
            "ok", "multicast-capable interfaces: "
            + ", ".join(f"{i['name']} {'/'.join(i['ipv4'])}" for i in usable)))
    if any(f.level == "problem" for f in findings) and not args.static:
        return
    sources: list[Any] = [MDNS(interfaces=wanted)]
    if args.static:
        sources.append(Static(args.static, interfaces=wanted))
    async with shoal.open_node(f"shoal-doctor-{os.getpid()}", discovery=sources) as node:
        await trio.sleep(args.wait)
        peers: list[Peer] = sorted(node.peers(), key=lambda p: (p.name, p.id))
        stats = node.statistics()
    if not peers:
        findings.append(Finding(
            "warning", f"no shoal node answered in {args.wait:g} s",
            "start one (e.g. shoal reply test --echo), make sure UDP port 5353 "
            "(mDNS) is allowed and the nodes share a network; where multicast is "
            "blocked, use Static([...]) / --static"))
    for peer in peers:
        ok = await _reachable(peer.address, peer.control_port)
        emit("node", {"name": peer.name, "id": peer.id, "epoch": peer.epoch,
                      "addresses": list(peer.addresses), "address": peer.address,
                      "control_port": peer.control_port, "reachable": ok,
                      "channels": [f"{c.name}:{c.role.value}" for c in peer.channels]})
        if ok:
            findings.append(Finding("ok", f"{peer.name} answers at "
                                          f"{peer.address}:{peer.control_port}"))
        else:
            findings.append(Finding(
                "problem", f"{peer.name} was announced at {peer.address}:"
                f"{peer.control_port} but that is not reachable over TCP",
                "check routing and firewalls between the hosts (TCP to that port)"))
    if stats.version_mismatches:
        findings.append(Finding(
            "problem", f"{stats.version_mismatches} control message(s) came from nodes "
            "on another shoal protocol version; they are ignored",
            "run the same shoal version on every node"))
    if stats.malformed:
        findings.append(Finding(
            "warning", f"{stats.malformed} malformed control message(s) were dropped",
            "something other than shoal talks to shoal's control ports"))


def run_doctor(args: argparse.Namespace, out: Out, err: Out) -> int:
    if not 0 < args.wait <= 600:
        err("shoal doctor: --wait must be between 0 and 600 seconds")
        return 2
    findings: list[Finding] = []

    def emit(kind: str, record: dict[str, Any]) -> None:
        if args.json:
            out(json.dumps({"event": kind, **record}))
        elif kind == "interface":
            state = ("up" if record["up"] else "down" if record["up"] is False else "?")
            mc = ("multicast" if record["multicast"] else "no multicast"
                  if record["multicast"] is False else "multicast ?")
            out(f"interface {record['name']:<12} {state:<4} {mc:<12} "
                f"{'loopback ' if record['loopback'] else ''}"
                f"{', '.join(record['ipv4']) or '(no IPv4)'}")
        else:
            out(f"node      {record['name']:<20} {record['address']}:"
                f"{record['control_port']} {'reachable' if record['reachable'] else 'UNREACHABLE'}"
                f"  {' '.join(record['channels']) or '-'}")

    try:
        trio.run(_diagnose, args, emit, findings)
    except shoal.errors.ShoalError as exc:
        err(f"shoal doctor: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    for f in findings:
        if args.json:
            out(json.dumps({"event": "finding", **asdict(f)}))
        else:
            out(f"{f.level:<9} {f.what}" + (f"\n          fix: {f.fix}" if f.fix else ""))
    return 1 if any(f.level == "problem" for f in findings) else 0
