"""The suite's command line (``benchmarks/run.py``): options, the run, the load
around it, the printed report and the JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from shoal.cli._bench._suite._common import BACKENDS, QUIET_LOAD, VARIANTS
from shoal.cli._bench._suite._report import environment, summarize
from shoal.cli._bench._suite._run import Config, run_all


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="shoal vs raw pyzmq over tcp://127.0.0.1, sender and receiver in "
                    "separate processes. See the module docstring for the method.")
    p.add_argument("--quick", action="store_true",
                   help="short run (under a minute): 3 rounds, smaller counts")
    p.add_argument("--rounds", type=int, help="rounds per variant (default 5, quick 3)")
    p.add_argument("--sizes", default="64,4096",
                   help="body sizes in bytes (default 64,4096; 1048576 is 1 MiB)")
    p.add_argument("--only", default="rr,pp,ps",
                   help="benchmarks to run: rr (req/rep latency), pp (push/pull), ps (pub/sub)")
    p.add_argument("--rr-count", type=int, help="timed round trips per round (5000; quick 3000)")
    p.add_argument("--rr-warmup", type=int, help="untimed round trips first (500; quick 200)")
    p.add_argument("--tp-count", type=int,
                   help="timed messages per throughput round (200000; quick 100000)")
    p.add_argument("--tp-bytes", type=int,
                   help="cap on count x body size per throughput round "
                        "(192 MiB; quick 64 MiB)")
    p.add_argument("--tp-warmup", type=int,
                   help="messages before the throughput clock starts (10000; quick 5000)")
    p.add_argument("--pp-hwm", type=int, default=1000, help="push/pull high-water mark")
    p.add_argument("--ps-hwm", type=int, default=100_000, help="pub/sub high-water mark")
    p.add_argument("--busy-poll", type=float, default=0.001, metavar="SECONDS",
                   help="busy_poll= of the 'shoal busy-poll' request/reply variant "
                        "(default 0.001)")
    p.add_argument("--backend", default="trio",
                   help="event loops each shoal variant runs on, a comma list of "
                        "trio, asyncio, uvloop (default trio); with more than one, a "
                        "variant on asyncio is shown as e.g. 'shoal [asyncio]'")
    p.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    a = p.parse_args(argv)
    q = a.quick

    def pick(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if q else full)

    only = [b.strip() for b in a.only.split(",") if b.strip()]
    for b in only:
        if b not in VARIANTS:
            p.error(f"--only: unknown benchmark {b!r}; use rr, pp, ps")
    chosen = {b.strip() for b in a.backend.split(",") if b.strip()}
    if not chosen or not chosen <= set(BACKENDS):
        p.error(f"--backend: give a comma list of {', '.join(BACKENDS)}, e.g. trio,asyncio")
    backends = [b for b in BACKENDS if b in chosen]  # the tables' order, whatever the input
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        p.error("--sizes: give positive byte counts, e.g. 64,4096")
    cfg = Config(
        rounds=pick(a.rounds, 5, 3),
        sizes=sizes,
        only=only,
        rr_count=pick(a.rr_count, 5000, 3000),
        rr_warmup=pick(a.rr_warmup, 500, 200),
        tp_count=pick(a.tp_count, 200_000, 100_000),
        tp_bytes=pick(a.tp_bytes, 192 * 2**20, 64 * 2**20),
        tp_warmup=pick(a.tp_warmup, 10_000, 5_000),
        pp_hwm=a.pp_hwm,
        ps_hwm=a.ps_hwm,
        busy_poll=a.busy_poll,
        backends=backends,
    )
    if cfg.rounds < 1 or cfg.rr_count < 1 or cfg.rr_warmup < 0 or cfg.tp_count < 1:
        p.error("rounds and counts must be positive")
    if not 0 < cfg.busy_poll <= 1:
        p.error("--busy-poll: give seconds, more than 0 and at most 1")
    return cfg, a


def load_report(before: tuple[float, float, float], after: tuple[float, float, float]
                ) -> dict[str, Any]:
    """The machine's load around the run, and whether it started quiet."""
    return {"before": list(before), "after": list(after),
            "label": "quiet" if before[0] < QUIET_LOAD else "loaded",
            "quiet_below": QUIET_LOAD}


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = environment(cfg.backends)
    load_before = os.getloadavg()
    t_start = time.monotonic()
    results = run_all(cfg, log)
    elapsed = time.monotonic() - t_start
    load = load_report(load_before, os.getloadavg())
    # Everything goes to stdout after the run, so that the load at its end can lead.
    print(f"{load['label']} run: load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load['before'])} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load['after'])} at the end "
          f"(quiet: 1-minute average below {QUIET_LOAD:g} at the start)")
    print("shoal benchmarks: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("transport tcp://127.0.0.1, sender and receiver in separate processes; bodies are "
          f"bytes of exactly {', '.join(map(str, cfg.sizes))} bytes (shoal sends bytes raw, "
          "no msgpack, inside its envelope: topic + NUL + 52-byte header); CPU time is "
          "the process's (libzmq's I/O thread included) over the timed part")
    summary, targets = summarize(cfg, results, print)
    print(f"\ntotal {elapsed:.0f} s")
    if args.json:
        doc = {
            "environment": env,
            "load": load,
            "config": asdict(cfg),
            "elapsed_s": elapsed,
            "summary": summary,
            "targets": targets,
            "rounds": [
                {"bench": b, "size": s, "variant": v, "results": rows}
                for (b, s, v), rows in results.items()
            ],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0
