"""What membership costs as a group of nodes grows: N hosts, one node each.

Usage (root, from the repository root)::

    python benchmarks/scale.py                          # N = 10, 20, 40 with mDNS
    python benchmarks/scale.py --discovery static,mdns --json scale.json
    python benchmarks/scale.py --sizes 50 --discovery static --no-restart

For each discovery (``mdns``: ``MDNS()`` on every interface of each namespace;
``static``: every node is given every other node's control endpoint) and each N, a lab
of N hosts (``tests/lab/netlab.py``: network namespaces on a private bridge, permanent
neighbour entries above 32 hosts; nothing touches the root namespace) runs one
``tests/lab/lab_node.py`` process per host, with the default heartbeat (0.5 s) and peer
timeout (2 s). Every node subscribes to one channel; the node on the first host also
publishes a tick there every ``--publish-every`` seconds. Measured:

* membership: from the last node's ``open_node`` call (it prints ``starting`` right
  before) until every node sees the N-1 others (its ``joined`` events); also how long
  the N processes took to start (first spawn to last ``starting``). Start-up traffic
  per host, from the lab's creation until full membership: packets on ``eth0``, and
  UDP datagrams sent and delivered to sockets (``/proc/net/snmp`` ``Udp OutDatagrams``,
  ``InDatagrams``; mDNS is the lab's only UDP).
* steady state, over a ``--window`` seconds window that starts ``--settle`` seconds
  (plus 0.15 s per node) after full membership: CPU per node (``/proc/PID/stat`` utime +
  stime, all threads, in % of one core), packets/s and bytes/s per host (``eth0`` in +
  out, from the namespace's ``/proc/net/dev``), control messages received per node per
  second (the node's ``statistics().control_received``), and at the window's end the
  established TCP connections per host (the namespace's ``/proc/net/tcp``) and the open
  file descriptors per node (``/proc/PID/fd``); mDNS datagrams sent and delivered per
  host per second (the ``Udp`` counters above, over the window); all nodes' CPU together
  in % of the machine, the driver's own CPU, and how long the ``stats`` round trip to
  all nodes took (a backlog shows there). Also checked: nobody reported anybody gone,
  and the ticks each subscriber received in the window.
* false departures: then ``--false-window`` seconds (default 30) in which nothing is
  done to the group; every ``left`` event in it, or in the steady window, is a false
  departure (counted, with who gave up whom).
* failure detection: the last node is SIGKILLed at a random point of the heartbeat
  period; from the kill until each other node reports it ``left``.
* restart-all (unless ``--no-restart``): every node is SIGKILLed, then all are started
  again (same names, so same node ids, new epochs); from the last one's start until
  full membership again.

Per N, medians and maxima over nodes (or hosts), each next to its target where it has
one (``!`` marks a miss: membership 5 s, CPU 0.3 % of a core per node, 20 packets/s per
host, no false departure, detection 3 s, restart-all 10 s); then how each figure grows
from one N to the next (and from the smallest to the largest): the ratio, and the
exponent ``log(ratio) / log(N ratio)`` (0: flat, 1: linear in N, 2: quadratic).
``--report A.json B.json`` prints that summary for earlier runs together.

Large N on a small machine: ``--batch K`` starts the nodes K at a time (each batch once
the previous one is ready) instead of all at once; every deadline grows with N.

The machine may be shared: ``uptime`` is recorded before and after each N; CPU per node
is the steadier figure. ``--json FILE`` writes every figure, per node and per host too.

Every namespace and process is removed at the end, also on Ctrl-C, SIGTERM or a failed
run. Exit status: 0 done, 1 a run failed (a deadline passed; what was measured before
it is printed and written), 2 labs cannot be built here (the reason is printed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests" / "lab"
sys.path.insert(0, str(TESTS))

from labtools import LabNode, LabTimeout, is_event  # noqa: E402
from membership import CHANNEL, Membership, start_group  # noqa: E402
from netlab import Lab, namespaces_available  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
STATS_TIMEOUT = 15.0
"""A node answers a ``stats`` command within this, plus ``STATS_PER_NODE`` per node
(asked all at once, N nodes answer on a machine they may saturate)."""
STATS_PER_NODE = 0.2
SETTLE_PER_NODE = 0.15
"""Added to ``--settle`` per node: on a small machine the start-up of N interpreters
leaves a backlog that takes longer to drain as N grows."""
SATURATED = 90.0
"""Above this % of the machine used by the nodes in the steady window, the summary says
the run saturated it."""
FALSE_POLL = 1.0
"""Seconds between two reads of the nodes' events during the false-departure window."""
HEARTBEAT = 0.5
"""The nodes' heartbeat (lab_node.py's default, the library's): the kill falls at a
random point of one period."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False)
    return done.stdout.strip()


# -- reading a node's process and namespace from /proc -------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of ``pid``, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


@dataclass(frozen=True, slots=True)
class Traffic:
    """``eth0`` counters of one namespace."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int


def traffic(pid: int, device: str = "eth0") -> Traffic:
    """The counters of ``device`` in the network namespace of process ``pid``."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == device:
                v = [int(x) for x in rest.split()]
                return Traffic(rx_packets=v[1], tx_packets=v[9], rx_bytes=v[0], tx_bytes=v[8])
    raise LookupError(f"no {device} in /proc/{pid}/net/dev")


def udp_counters(pid: int) -> tuple[int, int]:
    """``Udp OutDatagrams`` and ``InDatagrams`` of the network namespace of process
    ``pid`` (a datagram delivered to several sockets counts once for each)."""
    with open(f"/proc/{pid}/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    udp = dict(zip(rows[0], rows[1], strict=True))
    return int(udp["OutDatagrams"]), int(udp["InDatagrams"])


def tcp_established(pid: int) -> int:
    """Established TCP connections in the network namespace of process ``pid``."""
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                count += sum(1 for line in f if line.split()[3] == "01")
        except FileNotFoundError:
            pass
    return count


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- figures --------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and maximum (and minimum) of per-node or per-host values."""
    if not values:
        return {"median": math.nan, "max": math.nan, "min": math.nan}
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def stats_of(nodes: Sequence[LabNode], tag: str) -> dict[str, dict[str, Any]]:
    """Every node's ``statistics()``, asked of all at once."""
    marks = {n.name: n.mark() for n in nodes}
    for node in nodes:
        node.send({"cmd": "stats", "tag": tag})
    deadline = time.monotonic() + STATS_TIMEOUT + STATS_PER_NODE * len(nodes)
    return {n.name: n.wait_for(is_event("stats", tag=tag),
                               max(0.1, deadline - time.monotonic()), after=marks[n.name])
            for n in nodes}


def wait_starting(nodes: Sequence[LabNode]) -> float:
    """The last node's ``starting`` stamp (right before its ``open_node``)."""
    return max(float(n.wait_for(is_event("starting"), 5.0)["t"]) for n in nodes)


def converge(nodes: Sequence[LabNode], timeout: float) -> tuple[Membership, dict[str, float]]:
    view = Membership(nodes)
    last_start = wait_starting(nodes)
    first_spawn = min(n.spawned for n in nodes)
    full = view.wait_full(timeout)
    return view, {"membership_s": full - last_start, "start_span_s": last_start - first_spawn,
                  "from_first_spawn_s": full - first_spawn}


def startup_traffic(nodes: Sequence[LabNode]) -> dict[str, Any]:
    """Per host, counted since the namespaces were created (counters start at zero)."""
    per_host = [(traffic(n.proc.pid), udp_counters(n.proc.pid)) for n in nodes]
    packets = [t.rx_packets + t.tx_packets for t, _ in per_host]
    sent = [float(u[0]) for _, u in per_host]
    delivered = [float(u[1]) for _, u in per_host]
    return {"packets_per_host": spread(packets), "udp_sent_per_host": spread(sent),
            "udp_delivered_per_host": spread(delivered),
            "per_host": {n.name: {"packets": p, "udp_sent": s, "udp_delivered": d}
                         for n, p, s, d in zip(nodes, packets, sent, delivered, strict=True)}}


def driver_cpu() -> float:
    """CPU seconds this process (the driver: its reader threads too) has used."""
    t = os.times()
    return t.user + t.system


def steady(nodes: Sequence[LabNode], view: Membership, window: float) -> dict[str, Any]:
    """CPU, traffic (mDNS too) and control messages over ``window`` seconds;
    connections and fds at its end; departures and ticks during it."""
    departures = len(view.lefts)
    asked = time.monotonic()
    s0 = stats_of(nodes, "w0")
    stats_s = time.monotonic() - asked
    marks = [n.mark() for n in nodes]
    load0 = os.getloadavg()
    t0 = time.monotonic()
    me0 = driver_cpu()
    ticks0 = {n.name: cpu_ticks(n.proc.pid) for n in nodes}
    net0 = {n.name: traffic(n.proc.pid) for n in nodes}
    udp0 = {n.name: udp_counters(n.proc.pid) for n in nodes}
    time.sleep(window)
    ticks1 = {n.name: cpu_ticks(n.proc.pid) for n in nodes}
    net1 = {n.name: traffic(n.proc.pid) for n in nodes}
    udp1 = {n.name: udp_counters(n.proc.pid) for n in nodes}
    me1 = driver_cpu()
    t1 = time.monotonic()
    ticks = {n.name: len(n.find(is_event("msg", channel=CHANNEL), mark))
             for n, mark in zip(nodes, marks, strict=True)}
    load1 = os.getloadavg()
    s1 = stats_of(nodes, "w1")
    span = t1 - t0
    per: dict[str, dict[str, float]] = {}
    for node in nodes:
        a, b = net0[node.name], net1[node.name]
        ca, cb = s0[node.name], s1[node.name]
        ua, ub = udp0[node.name], udp1[node.name]
        per[node.name] = {
            "cpu_pct": 100.0 * (ticks1[node.name] - ticks0[node.name]) / HZ / span,
            "packets_per_s": (b.rx_packets + b.tx_packets - a.rx_packets - a.tx_packets) / span,
            "bytes_per_s": (b.rx_bytes + b.tx_bytes - a.rx_bytes - a.tx_bytes) / span,
            "mdns_sent_per_s": (ub[0] - ua[0]) / span,
            "mdns_delivered_per_s": (ub[1] - ua[1]) / span,
            "control_per_s": ((cb["control_received"] - ca["control_received"])
                              / (cb["t"] - ca["t"])),
            "tcp_established": tcp_established(node.proc.pid),
            "fds": open_fds(node.proc.pid),
            "links": cb["links"],
            "peers": cb["peers"],
            "ticks_received": ticks[node.name],
        }
    figures = {key: spread([p[key] for p in per.values()]) for key in next(iter(per.values()))}
    lefts = [(obs, ev["name"]) for obs, ev in view.lefts[departures:]]
    all_cpu = sum(p["cpu_pct"] for p in per.values())
    return {"window_s": span, **figures, "departures": len(lefts),
            "departures_seen": lefts[:20], "incomplete_views": len(view.missing()),
            "nodes_cpu_pct_of_machine": all_cpu / CORES,
            "driver_cpu_pct": 100.0 * (me1 - me0) / span,
            "stats_round_trip_s": stats_s,
            "loadavg_start": load0, "loadavg_end": load1, "per_node": per}


def false_departures(nodes: Sequence[LabNode], view: Membership,
                     window: float) -> dict[str, Any]:
    """Nothing is done to the group for ``window`` seconds: every ``left`` event in it
    is a false departure (a live node given up). Counted, with who gave up whom, and
    how many views are incomplete at its end."""
    departures = len(view.lefts)
    t0 = time.monotonic()
    end = t0 + window
    while (now := time.monotonic()) < end:
        time.sleep(min(FALSE_POLL, end - now))
        view.update()  # keeps the driver's per-poll work small
    span = time.monotonic() - t0
    lefts = view.lefts[departures:]
    pairs = sorted({(obs, str(ev["name"])) for obs, ev in lefts})
    return {"window_s": span, "count": len(lefts),
            "per_node_per_hour": 3600.0 * len(lefts) / span / max(1, len(nodes)),
            "reasons": sorted({str(ev.get("reason")) for _, ev in lefts}),
            "pairs": pairs[:50], "pairs_total": len(pairs),
            "incomplete_views_at_end": len(view.missing()),
            "loadavg_end": os.getloadavg()}


def kill_one(nodes: Sequence[LabNode], view: Membership, timeout: float) -> dict[str, Any]:
    victim = nodes[-1]
    departures = len(view.lefts)
    time.sleep(random.uniform(0.0, HEARTBEAT))
    killed = victim.kill()
    try:
        gone = view.wait_gone(victim, timeout)
    except LabTimeout as exc:
        return {"victim": victim.name, "error": str(exc)}
    delays = [float(ev["t"]) - killed for ev in gone.values()]
    others = [(obs, ev["name"]) for obs, ev in view.lefts[departures:]
              if ev["name"] != victim.name]
    return {"victim": victim.name, "detect_s": spread(delays),
            "reasons": sorted({str(ev["reason"]) for ev in gone.values()}),
            "other_departures": len(others), "samples_s": delays}


def restart_all(lab: Lab, nodes: list[LabNode], discovery: str, publish_every: float,
                ready_timeout: float, timeout: float,
                batch: int | None) -> tuple[list[LabNode], dict[str, Any]]:
    for node in nodes:
        node.kill()
    killed = time.time()
    fresh = start_group(lab.hosts, discovery=discovery, publish_every=publish_every,
                        ready_timeout=ready_timeout, batch=batch)
    _, times = converge(fresh, timeout)
    return fresh, {**times, "from_kill_s": times["from_first_spawn_s"]
                   + min(n.spawned for n in fresh) - killed}


# -- one size -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    window: float
    settle: float
    publish_every: float
    restart: bool
    detect_timeout: float
    false_window: float
    batch: int
    """Spawn this many nodes at a time (0: all at once)."""


def run_size(n: int, discovery: str, cfg: Settings) -> dict[str, Any]:
    began = time.monotonic()
    out: dict[str, Any] = {"n": n, "discovery": discovery, "uptime_before": uptime(),
                           "loadavg_before": os.getloadavg()}
    ready_timeout = 30.0 + 2.0 * n
    converge_timeout = 60.0 + n
    batch = cfg.batch or None
    out["batch"] = cfg.batch
    try:
        with Lab.create(n) as lab:
            out["lab_build_s"] = time.monotonic() - began
            nodes: list[LabNode] = []
            try:
                nodes = start_group(lab.hosts, discovery=discovery,
                                    publish_every=cfg.publish_every, ready_timeout=ready_timeout,
                                    batch=batch)
                view, out["start"] = converge(nodes, converge_timeout)
                out["startup_traffic"] = startup_traffic(nodes)
                progress(f"  N={n} {discovery}: full membership "
                         f"{out['start']['membership_s']:.2f} s after the last start "
                         f"(starts took {out['start']['start_span_s']:.1f} s)")
                out["settle_s"] = cfg.settle + SETTLE_PER_NODE * n
                time.sleep(out["settle_s"])
                out["steady"] = steady(nodes, view, cfg.window)
                st = out["steady"]
                progress(f"  N={n} {discovery}: CPU/node median {st['cpu_pct']['median']:.2f} %"
                         f" (all nodes {st['nodes_cpu_pct_of_machine']:.0f} % of the "
                         f"{CORES} cores), packets/s/host median "
                         f"{st['packets_per_s']['median']:.0f}")
                if cfg.false_window > 0:
                    out["false"] = false_departures(nodes, view, cfg.false_window)
                    progress(f"  N={n} {discovery}: {out['false']['count']} false departures"
                             f" in {out['false']['window_s']:.0f} s")
                lefts = out["steady"]["departures"] + out.get("false", {}).get("count", 0)
                span = out["steady"]["window_s"] + out.get("false", {}).get("window_s", 0.0)
                out["false_departures"] = {"count": lefts, "window_s": span}
                out["kill"] = kill_one(nodes, view, cfg.detect_timeout)
                if "error" in out["kill"]:
                    progress(f"  N={n} {discovery}: kill detection FAILED: {out['kill']['error']}")
                else:
                    progress(f"  N={n} {discovery}: kill detected, max "
                             f"{out['kill']['detect_s']['max']:.2f} s")
                if cfg.restart:
                    nodes, out["restart"] = restart_all(
                        lab, nodes, discovery, cfg.publish_every, ready_timeout,
                        converge_timeout, batch)
                    progress(f"  N={n} {discovery}: restart-all full membership "
                             f"{out['restart']['membership_s']:.2f} s after the last start")
            except LabTimeout as exc:
                out["error"] = str(exc)
                progress(f"  N={n} {discovery}: FAILED: {exc}")
            finally:
                for node in nodes:
                    node.close()
    finally:
        out["elapsed_s"] = time.monotonic() - began
        out["uptime_after"] = uptime()
        out["loadavg_after"] = os.getloadavg()
    return out


# -- report ---------------------------------------------------------------------------


def dig(run: dict[str, Any], path: str) -> float:
    """``run["a"]["b"]...`` for ``"a.b..."``, or NaN where the run has no such figure."""
    value: Any = run
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return float(value) if isinstance(value, int | float) else math.nan


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary: a figure, and the target it is held to (if any)."""

    label: str
    path: str
    spec: str
    target: float | None = None
    """The figure must not exceed this (None: reported, no target)."""


ROWS: list[Row] = [
    Row("full membership after last start", "start.membership_s", "{:.2f} s", 5.0),
    Row("  the N starts took", "start.start_span_s", "{:.1f} s"),
    Row("start-up packets per host (median)", "startup_traffic.packets_per_host.median",
        "{:.0f}"),
    Row("start-up UDP (mDNS) sent per host (median)",
        "startup_traffic.udp_sent_per_host.median", "{:.0f}"),
    Row("start-up UDP delivered per host (median)",
        "startup_traffic.udp_delivered_per_host.median", "{:.0f}"),
    Row("CPU per node, % of a core (median)", "steady.cpu_pct.median", "{:.2f}", 0.3),
    Row("CPU per node, % of a core (max)", "steady.cpu_pct.max", "{:.2f}", 0.3),
    Row("  all nodes, % of the machine", "steady.nodes_cpu_pct_of_machine", "{:.0f}"),
    Row("  the driver, % of a core", "steady.driver_cpu_pct", "{:.1f}"),
    Row("  stats asked of all nodes, answered in", "steady.stats_round_trip_s", "{:.2f} s"),
    Row("control msgs received per node per s (median)", "steady.control_per_s.median",
        "{:.1f}"),
    Row("control msgs received per node per s (max)", "steady.control_per_s.max", "{:.1f}"),
    Row("packets/s per host (median)", "steady.packets_per_s.median", "{:.0f}", 20.0),
    Row("packets/s per host (max)", "steady.packets_per_s.max", "{:.0f}", 20.0),
    Row("bytes/s per host (median)", "steady.bytes_per_s.median", "{:.0f}"),
    Row("bytes/s per host (max)", "steady.bytes_per_s.max", "{:.0f}"),
    Row("steady mDNS datagrams sent/s per host (median)", "steady.mdns_sent_per_s.median",
        "{:.2f}"),
    Row("steady mDNS datagrams sent/s per host (max)", "steady.mdns_sent_per_s.max", "{:.2f}"),
    Row("steady mDNS delivered/s per host (median)", "steady.mdns_delivered_per_s.median",
        "{:.2f}"),
    Row("steady mDNS delivered/s per host (max)", "steady.mdns_delivered_per_s.max",
        "{:.2f}"),
    Row("TCP connections per host (median)", "steady.tcp_established.median", "{:.0f}"),
    Row("TCP connections per host (max)", "steady.tcp_established.max", "{:.0f}"),
    Row("fds per node (median)", "steady.fds.median", "{:.0f}"),
    Row("fds per node (max)", "steady.fds.max", "{:.0f}"),
    Row("ticks received per node in the window (min)", "steady.ticks_received.min", "{:.0f}"),
    Row("false departures (steady + false windows)", "false_departures.count", "{:.0f}", 0.0),
    Row("  over seconds", "false_departures.window_s", "{:.0f} s"),
    Row("SIGKILL -> every other node: left (median)", "kill.detect_s.median", "{:.2f} s"),
    Row("SIGKILL -> every other node: left (max)", "kill.detect_s.max", "{:.2f} s", 3.0),
    Row("restart-all: full membership after last start", "restart.membership_s", "{:.2f} s",
        10.0),
    Row("restart-all: full membership after the kill", "restart.from_kill_s", "{:.2f} s"),
]
GROWTH = {"start.membership_s", "startup_traffic.packets_per_host.median",
          "startup_traffic.udp_sent_per_host.median",
          "startup_traffic.udp_delivered_per_host.median", "steady.cpu_pct.median",
          "steady.cpu_pct.max", "steady.control_per_s.median", "steady.packets_per_s.median",
          "steady.packets_per_s.max", "steady.bytes_per_s.median",
          "steady.mdns_sent_per_s.median", "steady.mdns_delivered_per_s.median",
          "steady.tcp_established.median", "steady.fds.median", "kill.detect_s.max",
          "restart.membership_s"}


def fmt(spec: str, value: float) -> str:
    return "-" if math.isnan(value) else spec.format(value)


def cell(row: Row, value: float) -> str:
    """The value, with ``!`` after it when it misses the row's target."""
    text = fmt(row.spec, value)
    if row.target is not None and not math.isnan(value) and value > row.target:
        text += "!"
    return text


def growth(small: dict[str, Any], large: dict[str, Any], path: str) -> str:
    """``xRATIO (exponent)`` of a figure from one run to a larger one, or ``-``."""
    a, b = dig(small, path), dig(large, path)
    if math.isnan(a) or math.isnan(b) or a <= 0 or b <= 0:
        return "-"
    ratio = b / a
    return f"x{ratio:.2f} ({math.log(ratio) / math.log(large['n'] / small['n']):+.2f})"


def report(runs: Sequence[dict[str, Any]]) -> None:
    for discovery in dict.fromkeys(r["discovery"] for r in runs):
        mine = sorted((r for r in runs if r["discovery"] == discovery), key=lambda r: r["n"])
        print(f"\nshoal membership, {discovery} discovery, one node per host "
              "(heartbeat 0.5 s, peer_timeout 2 s); target: the figure must not exceed it, "
              "! marks a miss")
        sizes = [r["n"] for r in mine]
        print(f"  {'N':<48}{'target':>9}" + "".join(f"{n:>11}" for n in sizes))
        for row in ROWS:
            target = "" if row.target is None else f"{row.target:g}"
            print(f"  {row.label:<48}{target:>9}"
                  + "".join(f"{cell(row, dig(r, row.path)):>11}" for r in mine))
        for r in mine:
            print(f"  N={r['n']}: {r['elapsed_s']:.0f} s; before: {r['uptime_before']}; "
                  f"after: {r['uptime_after']}")
            if "error" in r:
                print(f"  N={r['n']}: FAILED: {r['error'].splitlines()[0]}")
            if "error" in r.get("kill", {}):
                print(f"  N={r['n']}: kill detection FAILED: {r['kill']['error']}")
            busy = dig(r, "steady.nodes_cpu_pct_of_machine")
            if busy > SATURATED:
                print(f"  N={r['n']}: the nodes kept the machine {busy:.0f} % busy in the "
                      "steady window: it is saturated, so CPU per node is capped (the "
                      "nodes want more) and other figures may suffer from it")
            pairs = r.get("false", {}).get("pairs", [])
            if pairs:
                print(f"  N={r['n']}: false departures (observer gave up peer), first ones: "
                      + ", ".join(f"{o}->{p}" for o, p in pairs[:8]))
        ok = [r for r in mine if "error" not in r]
        if len(ok) < 2:
            continue
        steps = list(itertools.pairwise(ok))
        if len(ok) > 2:
            steps.append((ok[0], ok[-1]))
        print("  growth with N: ratio (exponent: 0 flat, 1 linear, 2 quadratic)")
        heads = [f"{a['n']}->{b['n']}" for a, b in steps]
        print(f"    {'':<46}" + "".join(f"{h:>18}" for h in heads))
        for row in ROWS:
            if row.path in GROWTH:
                print(f"    {row.label:<46}"
                      + "".join(f"{growth(a, b, row.path):>18}" for a, b in steps))


def growth_table(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for discovery in dict.fromkeys(r["discovery"] for r in runs):
        ok = sorted((r for r in runs if r["discovery"] == discovery and "error" not in r),
                    key=lambda r: r["n"])
        if len(ok) < 2:
            continue
        small, large = ok[0], ok[-1]
        for path in sorted(GROWTH):
            a, b = dig(small, path), dig(large, path)
            if a > 0 and b > 0:
                out[f"{discovery}.{path}"] = {
                    "from_n": small["n"], "to_n": large["n"], "ratio": b / a,
                    "exponent": math.log(b / a) / math.log(large["n"] / small["n"])}
    return out


def parse_list(text: str, convert: Callable[[str], Any]) -> list[Any]:
    return [convert(x) for x in text.split(",") if x.strip()]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", default="10,20,40", help="numbers of hosts (default 10,20,40)")
    p.add_argument("--discovery", default="mdns",
                   help="mdns, static or both, comma-separated (default mdns)")
    p.add_argument("--window", type=float, default=20.0, help="steady window, s (default 20)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="wait after full membership before the window, s, plus "
                        f"{SETTLE_PER_NODE} s per node (default 5)")
    p.add_argument("--publish-every", type=float, default=1.0,
                   help="seconds between the publisher's ticks (default 1)")
    p.add_argument("--detect-timeout", type=float, default=15.0,
                   help="give up waiting for a killed node to be reported after this (s)")
    p.add_argument("--false-window", type=float, default=30.0, metavar="SECONDS",
                   help="after the steady window, this long with nothing done: every "
                        "left event in it is a false departure (default 30; 0: skip)")
    p.add_argument("--batch", type=int, default=0, metavar="K",
                   help="start the nodes K at a time, each batch once the previous one "
                        "is ready (default 0: all at once)")
    p.add_argument("--no-restart", dest="restart", action="store_false",
                   help="skip the restart-all measurement")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--report", nargs="+", metavar="FILE",
                   help="run nothing: print the summary of earlier --json files together")
    args = p.parse_args(argv)
    if args.report:
        report([r for f in args.report for r in json.loads(Path(f).read_text())["runs"]])
        return 0
    try:
        sizes = parse_list(args.sizes, int)
        discoveries = parse_list(args.discovery, str)
    except ValueError:
        p.error("--sizes takes numbers, e.g. 10,20,40")
    if not sizes or any(not 2 <= n <= 250 for n in sizes):
        p.error("--sizes: each size is 2..250 hosts")
    if not discoveries or any(d not in ("mdns", "static") for d in discoveries):
        p.error("--discovery: mdns, static, or mdns,static")
    if args.window <= 0 or args.settle < 0 or args.publish_every <= 0:
        p.error("--window and --publish-every must be > 0, --settle >= 0")
    if args.false_window < 0 or args.batch < 0:
        p.error("--false-window and --batch must be >= 0")
    reason = namespaces_available()
    if reason is not None:
        print(f"benchmarks/scale.py: cannot build a namespace lab: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    cfg = Settings(window=args.window, settle=args.settle, publish_every=args.publish_every,
                   restart=args.restart, detect_timeout=args.detect_timeout,
                   false_window=args.false_window, batch=args.batch)

    runs: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        for discovery in discoveries:
            for n in sizes:
                progress(f"N={n}, {discovery} discovery ({uptime()})")
                runs.append(run_size(n, discovery, cfg))
    except KeyboardInterrupt:
        # run_size's `with` blocks have killed the nodes and deleted the namespaces
        progress("benchmarks/scale.py: interrupted; the lab is cleaned up")
        return 130
    elapsed = time.monotonic() - began
    report(runs)
    print(f"total {elapsed:.0f} s")
    if args.json:
        doc = {"settings": vars(args), "hz": HZ, "elapsed_s": elapsed, "runs": runs,
               "growth": growth_table(runs)}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=repr) + "\n")
        print(f"wrote {args.json}")
    failed = any("error" in r or "error" in r.get("kill", {}) for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
