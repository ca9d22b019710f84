"""``shoal doctor``: why might a peer be invisible, or its figures wrong? Looks at this
machine's interfaces, listens for shoal nodes over mDNS (and any ``--static``
endpoints), checks that each node found can be reached, compares each node's wall
clock with this host's, and prints every finding with a suggested fix.

Findings: ``ok``, ``warning`` (shoal works, but something is off) or ``problem``
(some peer cannot be seen or reached); the exit status is 1 if there is a problem.

Clock skew: every shoal message carries its sender's wall-clock send time
(``Message.timestamp``), so one-way latencies computed across hosts, and any
ordering of messages or logs by time, are off by the difference between the two
hosts' clocks. doctor asks each reachable node for its clock (a control-plane
clock query, ``Node.read_clock``) and estimates the offset as the node's reading
minus this host's clock at the midpoint of the exchange; the true offset is within
half the round trip of that. A node is reported when its clock is off by more than
``--skew-threshold`` seconds (default ``DEFAULT_SKEW_THRESHOLD``) even allowing for
that uncertainty. Skew is a warning, not a problem: discovery, liveness and delivery
use only each host's own monotonic clock and work whatever the wall clocks say.

Interfaces: their flags (up, multicast, loopback) are read from the kernel for this
network namespace (``shoal.discovery.interfaces()``), so they are right on every kind
of interface and inside namespaces and containers. Loopback counts: on a host whose
only interface that is up is ``lo``, nodes there still find each other over mDNS on
127.0.0.1 (that is where a node with default settings listens then), so doctor says
so and listens there; only a host with no interface up at all is a problem.
``--interface`` takes names (``lo``, ``eth0``) as well as addresses; something that
is neither exits 2 with one line.

Network safety: before anything is sent, an ``--interface`` that is not a local
address stops the run; mDNS goes only where ``--interface`` says (default: the
multicast-capable interfaces, like every node); TCP goes only to endpoints that
nodes announced or that ``--static`` lists.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import trio

import shoal
from shoal.discovery import MDNS, Peer, Static, interfaces, resolve_interfaces

__all__ = ["DEFAULT_SKEW_THRESHOLD", "add_doctor_command", "run_doctor"]

Out = Callable[[str], None]

DEFAULT_SKEW_THRESHOLD = 1.0
"""Seconds of clock offset between two hosts beyond which doctor reports skew. NTP
keeps LAN hosts within milliseconds; a second off means time sync is not running."""
TCP_TIMEOUT = 1.0
"""Seconds a TCP connection to a control port may take before it counts as blocked."""
CLOCK_TIMEOUT = 2.0
"""Seconds to wait for a node's answer to clock queries (older nodes never answer)."""


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
        "over mDNS, check that each node found is reachable and that its clock agrees "
        "with this host's, and suggest fixes. Exits 1 if it found a problem.",
        epilog="example: shoal doctor --interface 127.0.0.1 --wait 3")
    p.add_argument("--interface", action="append", metavar="IP|NAME",
                   help="an interface to check and listen on, by IPv4 address or name, "
                   "e.g. eth0 or lo (repeatable; default: every multicast-capable "
                   "interface, else loopback)")
    p.add_argument("--static", action="append", default=[], metavar="tcp://IP:PORT",
                   help="also try these control endpoints")
    p.add_argument("--wait", type=float, default=3.0,
                   help="seconds to listen for nodes (default: 3)")
    p.add_argument("--skew-threshold", type=float, default=DEFAULT_SKEW_THRESHOLD,
                   metavar="S",
                   help="report a node whose clock is off from this host's by more than "
                   f"S seconds (default: {DEFAULT_SKEW_THRESHOLD:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")


def _interfaces() -> list[dict[str, Any]]:
    return [{"name": i.name, "ipv4": list(i.ipv4), "up": i.up, "multicast": i.multicast,
             "loopback": i.loopback} for i in interfaces()]


async def _tcp(address: str, port: int) -> str:
    """``ok``, ``refused`` (nothing listens), ``timeout`` (packets dropped on the way:
    a firewall, a cable) or ``unreachable`` (no route)."""
    with trio.move_on_after(TCP_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            errnos = {getattr(e, "errno", None) for e in _leaves(exc)}
            if errno.ECONNREFUSED in errnos:
                return "refused"
            return "unreachable"
        await stream.aclose()
        return "ok"
    return "timeout"


def _leaves(exc: BaseException) -> list[BaseException]:
    # trio reports a failed connection as an OSError whose cause holds the attempts
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    cause = exc.__cause__
    return [exc, *(_leaves(cause) if cause is not None else [])]


def _split(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host.strip("[]"), int(port)


async def _resolve(host: str) -> set[str]:
    """The IPv4 addresses of a --static host (itself, if it is one)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, None, family=trio.socket.AF_INET)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def _announced(mdns: MDNS) -> dict[str, str]:
    """The control endpoints mDNS found, by DNS-SD instance name. Read from the source
    itself: a node announced over mDNS but never heard over TCP is exactly the case
    doctor is for, and the peer table only knows nodes that answered."""
    return mdns.found


async def _check_peer(node: shoal.Node, peer: Peer, out: dict[str, Any]) -> None:
    out["tcp"] = await _tcp(peer.address, peer.control_port)
    out["clock"] = None
    if out["tcp"] == "ok":
        with trio.move_on_after(CLOCK_TIMEOUT):
            try:
                out["clock"] = await node.read_clock(peer.control_endpoint)
            except shoal.errors.ShoalError:
                pass


async def _check_endpoint(endpoint: str, out: dict[str, Any]) -> None:
    out["tcp"] = await _tcp(*_split(endpoint))


def _peer_findings(peer: Peer, tcp: str, clock: Any, threshold: float) -> list[Finding]:
    where = f"{peer.address}:{peer.control_port}"
    if tcp != "ok":
        return [Finding(
            "problem", f"{peer.name} was announced at {where} but that is not reachable "
            f"over TCP ({tcp})",
            "check routing and firewalls between the hosts (TCP to that port)")]
    found = [Finding("ok", f"{peer.name} answers at {where}")]
    if clock is None:
        found.append(Finding(
            "warning", f"{peer.name} did not answer a clock query within "
            f"{CLOCK_TIMEOUT:g} s, so its clock was not compared",
            "nodes of an older shoal do not answer clock queries: upgrade that node"))
    elif abs(clock.offset) - clock.round_trip / 2 > threshold:
        side = "ahead of" if clock.offset > 0 else "behind"
        found.append(Finding(
            "warning", f"{peer.name}'s clock is {abs(clock.offset):.3f} s {side} this "
            f"host's (±{clock.round_trip / 2 * 1e3:.1f} ms; threshold {threshold:g} s): "
            "message timestamps and latencies measured across these hosts are off by "
            "that much",
            "enable NTP on both hosts (chrony, systemd-timesyncd or ntpd; check with "
            "`chronyc tracking` or `timedatectl`)"))
    return found


def _silent_findings(endpoint: str, source: str, label: str, tcp: str,
                     wait: float) -> Finding:
    """A control endpoint (announced over mDNS, or listed with --static) where no
    node answered: what the TCP check says about why."""
    port = _split(endpoint)[1]
    who = (f"{label} was announced over mDNS at {endpoint}" if source == "mdns"
           else f"--static {endpoint}")
    if tcp == "ok":
        return Finding(
            "warning", f"{who}: TCP connects, but no shoal node answered there in "
            f"{wait:g} s",
            "another program may hold that port, or the node speaks another shoal "
            "protocol version or is too busy to answer; try a longer --wait")
    if tcp == "refused":
        if source == "mdns":
            return Finding(
                "warning", f"{who}, but nothing listens there any more",
                "it probably stopped without unregistering: its announcement expires "
                "from mDNS caches; if it should be running, restart it")
        return Finding(
            "problem", f"{who}: nothing listens there (connection refused)",
            "check the address and port, that the node runs, and that it has a fixed "
            "control port (open_node(port=...))")
    if tcp == "timeout":
        return Finding(
            "problem", f"{who}, but TCP connections to it time out: the data path is "
            "blocked" + (" though mDNS gets through" if source == "mdns" else ""),
            f"check firewalls and routing between the hosts: allow TCP to port {port} "
            "(the node's control port) and to the ports of its channels")
    return Finding(
        "problem", f"{who}, but there is no route to it",
        "check that this host and the node share a network, or add a route")


async def _diagnose(args: argparse.Namespace, emit: Callable[[str, dict[str, Any]], None],
                    findings: list[Finding]) -> None:
    interfaces = _interfaces()
    for iface in interfaces:
        emit("interface", iface)
    wanted = args.interface
    usable = [i for i in interfaces if i["ipv4"] and i["up"] is not False
              and i["multicast"] is not False and not i["loopback"]]
    loopback = [i for i in interfaces if i["ipv4"] and i["loopback"] and i["up"] is not False]
    if wanted:
        known = {ip for i in interfaces for ip in i["ipv4"]}
        for ip in wanted:
            if ip not in known:
                findings.append(Finding(
                    "problem", f"{ip} is not an address of this machine",
                    "pass --interface with one of the addresses listed above"))
    elif usable:
        findings.append(Finding(
            "ok", "multicast-capable interfaces: "
            + ", ".join(f"{i['name']} {'/'.join(i['ipv4'])}" for i in usable)))
    elif loopback:
        # What a node with default settings does here too: mDNS on loopback.
        wanted = [ip for i in loopback for ip in i["ipv4"]
                  if ipaddress.ip_address(ip).is_loopback][:1] or loopback[0]["ipv4"][:1]
        findings.append(Finding(
            "ok", "no interface but loopback is up: nodes on this host find each other "
            f"over mDNS on {loopback[0]['name']} {wanted[0]} (listening there); nodes on "
            "other hosts cannot be seen",
            "to reach other hosts, bring up an interface on their network, or list "
            "them with Static([...]) (--static)"))
    else:
        findings.append(Finding(
            "problem", "no interface is up, not even loopback: mDNS cannot work here",
            "bring an interface up (ip link set lo up, for nodes on this host), or "
            "list peers with Static([...]) (--static)"))
    if any(f.level == "problem" for f in findings) and not args.static:
        return
    mdns = MDNS(interfaces=wanted)
    sources: list[Any] = [mdns]
    static = Static(args.static, interfaces=wanted) if args.static else None
    if static is not None:
        sources.append(static)
    async with shoal.open_node(f"shoal-doctor-{os.getpid()}", discovery=sources) as node:
        await trio.sleep(args.wait)
        peers: list[Peer] = sorted(node.peers(), key=lambda p: (p.name, p.id))
        stats = node.statistics()
        # a node answers on any of its addresses, not only the one the table chose
        answered = {(a, p.control_port) for p in peers for a in p.addresses}
        silent: dict[str, tuple[str, str]] = {}  # endpoint -> (source, label)
        for instance, endpoint in sorted(_announced(mdns).items()):
            if _split(endpoint) not in answered:
                silent[endpoint] = ("mdns", instance.removesuffix("." + mdns.service_type))
        for endpoint in static.peers if static is not None else ():
            host, port = _split(endpoint)
            if not {(ip, port) for ip in await _resolve(host)} & answered:
                silent[endpoint] = ("static", endpoint)
        peer_checks: list[dict[str, Any]] = [{} for _ in peers]
        silent_checks: dict[str, dict[str, Any]] = {ep: {} for ep in silent}
        async with trio.open_nursery() as nursery:
            for peer, result in zip(peers, peer_checks, strict=True):
                nursery.start_soon(_check_peer, node, peer, result)
            for endpoint, result in silent_checks.items():
                nursery.start_soon(_check_endpoint, endpoint, result)
    if not peers and not silent:
        findings.append(Finding(
            "warning", f"no shoal node answered in {args.wait:g} s",
            "start one (e.g. shoal reply test --echo), make sure UDP port 5353 "
            "(mDNS) is allowed and the nodes share a network; where multicast is "
            "blocked, use Static([...]) / --static"))
    compared: list[float] = []
    for peer, result in zip(peers, peer_checks, strict=True):
        clock = result["clock"]
        emit("node", {"name": peer.name, "id": peer.id, "epoch": peer.epoch,
                      "addresses": list(peer.addresses), "address": peer.address,
                      "control_port": peer.control_port, "reachable": result["tcp"] == "ok",
                      "channels": [f"{c.name}:{c.role.value}" for c in peer.channels],
                      "clock_offset_s": None if clock is None else clock.offset,
                      "clock_round_trip_s": None if clock is None else clock.round_trip})
        found = _peer_findings(peer, result["tcp"], clock, args.skew_threshold)
        findings.extend(found)
        if clock is not None and not any(f.level == "warning" for f in found):
            compared.append(clock.offset)
    if compared:
        worst = max(compared, key=abs)
        findings.append(Finding(
            "ok", f"clocks of {len(compared)} node(s) agree with this host's within "
            f"{args.skew_threshold:g} s (largest offset {_signed(worst)})"))
    for endpoint, (source, label) in silent.items():
        tcp = silent_checks[endpoint]["tcp"]
        emit("endpoint", {"endpoint": endpoint, "source": source, "name": label,
                          "answered": False, "tcp": tcp})
        findings.append(_silent_findings(endpoint, source, label, tcp, args.wait))
    if stats.version_mismatches:
        findings.append(Finding(
            "problem", f"{stats.version_mismatches} control message(s) came from nodes "
            "on another shoal protocol version; they are ignored",
            "run the same shoal version on every node"))
    if stats.malformed:
        findings.append(Finding(
            "warning", f"{stats.malformed} malformed control message(s) were dropped",
            "something other than shoal talks to shoal's control ports"))


def _signed(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:+.0f} µs"
    return f"{seconds * 1e3:+.1f} ms" if abs(seconds) < 1 else f"{seconds:+.3f} s"


def _clock_text(record: dict[str, Any]) -> str:
    offset = record["clock_offset_s"]
    if offset is None:
        return "clock ?" if record["reachable"] else ""
    return f"clock {_signed(offset)} ±{record['clock_round_trip_s'] / 2 * 1e3:.1f} ms"


def run_doctor(args: argparse.Namespace, out: Out, err: Out) -> int:
    if not 0 < args.wait <= 600:
        err("shoal doctor: --wait must be between 0 and 600 seconds")
        return 2
    if not 0 < args.skew_threshold <= 86400:
        err("shoal doctor: --skew-threshold must be between 0 and 86400 seconds")
        return 2
    findings: list[Finding] = []

    def emit(kind: str, record: dict[str, Any]) -> None:
        if args.json:
            out(json.dumps({"event": kind, **record}))
        elif kind == "interface":
            state = ("up" if record["up"] else "down" if record["up"] is False else "?")
            mc = ("multicast" if record["multicast"] else "no multicast"
                  if record["multicast"] is False else "multicast ?")
            # Loopback has no multicast flag, yet mDNS works over it on one host.
            mc = "loopback" if record["loopback"] else mc
            out(f"interface {record['name']:<12} {state:<4} {mc:<12} "
                f"{', '.join(record['ipv4']) or '(no IPv4)'}"
                + (" (this host only)" if record["loopback"] and record["ipv4"] else ""))
        elif kind == "node":
            out(f"node      {record['name']:<20} {record['address']}:"
                f"{record['control_port']} {'reachable' if record['reachable'] else 'UNREACHABLE'}"
                f"  {' '.join(record['channels']) or '-'}  {_clock_text(record)}".rstrip())
        else:
            via = ("mDNS " + record["name"] if record["source"] == "mdns" else "--static")
            out(f"endpoint  {record['endpoint']:<26} ({via}) no node answered; "
                f"TCP: {record['tcp']}")

    if args.interface:
        try:
            args.interface = resolve_interfaces(args.interface)
        except shoal.errors.LocalProtocolError as exc:
            err(f"shoal doctor: --interface {exc}")
            return 2
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
