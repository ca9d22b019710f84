"""Discovery benchmarks on a namespace lab: how soon a new node delivers, how soon a dead
one is noticed, how soon a cut-off one is back.

Usage (root, from the repository root)::

    python benchmarks/discovery.py                 # 10 runs each, about 1.5 minutes
    python benchmarks/discovery.py --runs 20 --json out.json
    python benchmarks/discovery.py --flap-runs 0   # skip the link-flap measurement

Builds a 3-host lab (``tests/lab/netlab.py``: network namespaces on a private bridge; nothing
touches the root namespace) and runs one ``tests/lab/lab_node.py`` process per node, with
``MDNS()`` discovery on every interface of its namespace and the default heartbeat (0.5 s)
and peer timeout (2 s). Times are ``time.time()`` stamps printed by the nodes (the
namespaces share the kernel clock) or taken here around ``Popen`` / ``kill``.

(a) start-to-first-delivery. A subscriber node on h1 (channel ``bench``) and an unrelated
    node on h2 are running and registered. Each run starts a NEW node process on h0 (a
    fresh name, so a fresh id) that opens a publisher on ``bench``, waits for one
    subscriber and publishes at once (``--publish-on-ready``). Measured until h1's
    subscriber receives that message: from the new process's ``open_node`` call (it
    prints ``starting`` right before) and from its spawn (``Popen``, so including
    ``ip netns exec``, the interpreter and imports). Also shown: until h1 sees the new
    node join. The new node then exits cleanly (goodbye) before the next run.
    Target: p50 <= 500 ms from node start.
(b) SIGKILL detection. Nodes on h0 and h1 keep running; each run starts a fresh node on
    h2, waits until all three know each other, waits a random 0-0.5 s (so the kill
    falls anywhere in the heartbeat period), SIGKILLs it and measures from the kill to
    each survivor's ``left`` event (both samples count). Target: <= 3 s.
(c) link flap (``--flap-runs``, default 5). Three nodes run; each run pulls h2's cable
    for 3 s (longer than the peer timeout), plugs it back and measures from
    ``link_up`` to h0 and h1 seeing h2 join again (same incarnation).

Percentiles are nearest-rank over every sample. Exit status: 0 done, 1 a run failed
(a deadline passed), 2 labs cannot be built here (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests" / "lab"
sys.path.insert(0, str(TESTS))

from labtools import LabNode, LabTimeout, is_event, start_nodes  # noqa: E402
from netlab import Lab, namespaces_available  # noqa: E402

CHANNEL = "bench"
DEADLINE = 10.0
"""Upper bound for any one awaited event."""
TARGET_DELIVERY = 0.5
TARGET_KILL = 3.0
FLAP_DOWN = 3.0


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"n": len(samples), "p50": percentile(samples, 50), "p90": percentile(samples, 90),
            "max": max(samples) if samples else math.nan,
            "min": min(samples) if samples else math.nan}


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wait_mesh(nodes: Sequence[LabNode]) -> None:
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.wait_for(is_event("joined", name=other.name, epoch=other.epoch),
                              DEADLINE)


def bench_delivery(lab: Lab, runs: int) -> dict[str, list[float]]:
    h = lab.hosts
    sub, _other = start_nodes([(h[1], "subscriber", ["--sub", CHANNEL]),
                               (h[2], "bystander", [])])
    wait_mesh([sub, _other])
    time.sleep(1.0)  # both registered and announced: the steady state a newcomer meets
    out: dict[str, list[float]] = {"from_start": [], "from_spawn": [], "joined": [],
                                   "ready": []}
    for run in range(runs):
        mark = sub.mark()
        node = LabNode(h[0], f"publisher-{run}", ["--publish-on-ready", CHANNEL, "first"])
        try:
            starting = node.wait_for(is_event("starting"), DEADLINE)["t"]
            ready = node.wait_for(is_event("ready"), DEADLINE)["t"]
            msg = sub.wait_for(is_event("msg", channel=CHANNEL, topic="first"), DEADLINE,
                               after=mark)
            joined = sub.wait_for(is_event("joined", name=node.name), DEADLINE, after=mark)
            out["from_start"].append(msg["t"] - starting)
            out["from_spawn"].append(msg["t"] - node.spawned)
            out["joined"].append(joined["t"] - starting)
            out["ready"].append(ready - starting)
            progress(f"  (a) run {run + 1}/{runs}: {1000 * (msg['t'] - starting):.0f} ms "
                     f"from start, {1000 * (msg['t'] - node.spawned):.0f} ms from spawn")
            node.exit()
            sub.wait_for(is_event("left", name=node.name), DEADLINE, after=mark)
        finally:
            node.close()
    return out


def bench_kill(lab: Lab, runs: int) -> dict[str, list[float]]:
    h = lab.hosts
    survivors = start_nodes([(h[0], "survivor-0", []), (h[1], "survivor-1", [])])
    wait_mesh(survivors)
    out: dict[str, list[float]] = {"detect": []}
    for run in range(runs):
        victim = LabNode.start(h[2], f"victim-{run}")
        try:
            wait_mesh([*survivors, victim])
            time.sleep(random.uniform(0.0, 0.5))
            marks = [s.mark() for s in survivors]
            killed = victim.kill()
            got = []
            for s, mark in zip(survivors, marks, strict=True):
                ev = s.wait_for(is_event("left", name=victim.name), DEADLINE, after=mark)
                if ev["reason"] != "timeout":
                    raise LabTimeout(f"{s.name}: {victim.name} left with {ev['reason']!r}")
                got.append(ev["t"] - killed)
            out["detect"].extend(got)
            progress(f"  (b) run {run + 1}/{runs}: "
                     + ", ".join(f"{1000 * d:.0f} ms" for d in got))
        finally:
            victim.close()
    return out


def bench_flap(lab: Lab, runs: int) -> dict[str, list[float]]:
    h = lab.hosts
    nodes = start_nodes([(h[i], f"flap-{i}", []) for i in range(3)])
    wait_mesh(nodes)
    out: dict[str, list[float]] = {"rejoin": [], "left": []}
    for run in range(runs):
        marks = [n.mark() for n in nodes]
        down = time.time()
        h[2].link_down()
        try:
            for n, mark in zip(nodes[:2], marks[:2], strict=True):
                ev = n.wait_for(is_event("left", name="flap-2"), DEADLINE, after=mark)
                out["left"].append(ev["t"] - down)
            time.sleep(max(0.0, down + FLAP_DOWN - time.time()))
        finally:
            up = time.time()
            h[2].link_up()
        got = []
        for n, mark in zip(nodes[:2], marks[:2], strict=True):
            ev = n.wait_for(is_event("joined", name="flap-2", epoch=nodes[2].epoch),
                            DEADLINE + 5, after=mark)
            got.append(ev["t"] - up)
        out["rejoin"].extend(got)
        progress(f"  (c) run {run + 1}/{runs}: rejoined "
                 + ", ".join(f"{1000 * d:.0f} ms" for d in got) + " after link_up")
        # settle: h2 must know both others again before the next cut
        for n in nodes[:2]:
            nodes[2].wait_for(is_event("joined", name=n.name), DEADLINE, after=marks[2])
        time.sleep(1.0)
    return out


def in_lab(n_hosts: int, fn: Callable[[Lab, int], dict[str, list[float]]],
           runs: int) -> dict[str, list[float]]:
    with Lab.create(n_hosts) as lab:
        return fn(lab, runs)


def row(label: str, samples: Sequence[float], target: float | None = None,
        on: str = "p50") -> str:
    s = summary(samples)
    verdict = ""
    if target is not None:
        ok = s[on] <= target
        verdict = f"{'OK  ' if ok else 'MISS'} {on} <= {1000 * target:.0f} ms"
    return (f"  {label:<48} {s['n']:>4.0f} {1000 * s['p50']:>8.0f} {1000 * s['p90']:>8.0f} "
            f"{1000 * s['max']:>8.0f}   {verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=10, help="runs of (a) and (b) (default 10)")
    p.add_argument("--flap-runs", type=int, default=5, help="runs of (c) (default 5; 0: skip)")
    p.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = p.parse_args(argv)
    if args.runs < 1 or args.flap_runs < 0:
        p.error("--runs must be >= 1 and --flap-runs >= 0")
    reason = namespaces_available()
    if reason is not None:
        print(f"benchmarks/discovery.py: cannot build a namespace lab: {reason}",
              file=sys.stderr)
        return 2

    began = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        progress("(a) start-to-first-delivery")
        results["delivery"] = in_lab(3, bench_delivery, args.runs)
        progress("(b) SIGKILL detection")
        results["kill"] = in_lab(3, bench_kill, args.runs)
        if args.flap_runs:
            progress("(c) link flap")
            results["flap"] = in_lab(3, bench_flap, args.flap_runs)
    except LabTimeout as exc:
        print(f"benchmarks/discovery.py: a run failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - began

    print()
    print("shoal discovery on a 3-host namespace lab (MDNS(), heartbeat 0.5 s, "
          "peer_timeout 2 s)")
    print(f"  {'':<48} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    d = results["delivery"]
    print("(a) new publisher node -> first message at an existing subscriber")
    print(row("from open_node() (node start)", d["from_start"], TARGET_DELIVERY))
    print(row("from process spawn (incl. interpreter, imports)", d["from_spawn"]))
    print(row("  open_node() -> node and publisher open", d["ready"]))
    print(row("  open_node() -> subscriber sees it join", d["joined"]))
    print("(b) SIGKILL -> each survivor's left (timeout)")
    print(row("kill -> left", results["kill"]["detect"], TARGET_KILL, on="max"))
    if "flap" in results:
        f = results["flap"]
        print(f"(c) link flap: cable out {FLAP_DOWN:.0f} s, then back")
        print(row("link_down -> left (timeout)", f["left"]))
        print(row("link_up -> joined again (same epoch)", f["rejoin"]))
    print(f"total {elapsed:.0f} s")

    if args.json:
        doc: dict[str, Any] = {
            "runs": args.runs, "flap_runs": args.flap_runs, "elapsed_s": elapsed,
            "samples_s": results,
            "summary_s": {f"{k}.{m}": summary(v) for k, r in results.items()
                          for m, v in r.items()},
            "targets_s": {"delivery.from_start.p50": TARGET_DELIVERY,
                          "kill.detect.max": TARGET_KILL},
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
