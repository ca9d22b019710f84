"""Hedged requests against a replier that stalls now and then.

Two replier nodes, each in a process of its own, and a requester node, on tcp
loopback with static discovery (no multicast); one request in flight, 64-byte
bodies. The node's requester sends each request to the replier with the fewest in
flight (``--plain``: a plain ``open_requester`` connected to both, libzmq's
round-robin, which keeps feeding a stalled replier). Replier 1 stalls 50 ms on 10%
of the requests it gets when the body asks for stalls; replier 2 never stalls. Three
variants, interleaved round by round:

* ``no stall``: nobody stalls, no hedging (the baseline);
* ``stall``: replier 1 stalls, no hedging (its stalls reach the p99);
* ``stall+hedge``: replier 1 stalls, ``hedge_after=0.005``.

Target: ``stall+hedge`` p99 <= 3x the ``no stall`` p99. Reports p50/p90/p99/p99.9/max,
CPU microseconds per request in the requester, hedges and wasted replies, a text
latency plot, and ``uptime`` before and after. The measurement itself lives in
``shoal.cli._bench._hedge``, shared with ``shoal bench --hedge``.

    python benchmarks/hedging.py [--rounds 3] [--count 1000] [--plain]
"""

from __future__ import annotations

import argparse
import subprocess

from shoal.cli._bench._hedge import HedgeOptions, run_hedge
from shoal.cli._bench._hedge_report import describe, plot, table


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True,
                          timeout=10, check=False).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--plain", action="store_true",
                    help="a plain requester (round-robin) instead of a node's")
    args = ap.parse_args()
    opts = HedgeOptions(rounds=args.rounds, count=args.count, plain=args.plain)
    for line in describe(opts):
        print(line)
    print(uptime())
    variants = run_hedge(opts)
    table(variants, opts, print)
    print()
    plot(variants, print)
    print(uptime())


if __name__ == "__main__":
    main()
