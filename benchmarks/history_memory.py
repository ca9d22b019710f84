"""What ten million distinct topics cost a publisher's memory: it must level off.

A best-effort publisher bound to tcp loopback, with no subscriber, publishes
``--topics`` distinct topics (``dev/00000000``, ``dev/00000001``, ...; 16-byte
bodies) in batches (``publish_many_nowait``), once with ``history=1`` and once
without history, each in a process of its own (so that one run's freed memory does
not hide the other's). The bounds are the defaults: ``history_bytes`` 64 MiB,
``history_topics`` and ``max_topics`` 100,000 (or as given). Every ``--every``
topics it samples the process's resident memory (``VmRSS`` in ``/proc/self/status``)
and the publisher's ``statistics()``.

It reports, per run, the RSS growth over the publisher's opening at each sample,
beside what the history says it holds (``history_bytes``) and its bound; and how
much the growth still moved over the second half of the run (levelled off: close
to 0), with the publishing rate and CPU time per publication. Linux only.

Usage: python benchmarks/history_memory.py [--topics 10000000] [--every 1000000]
       [--batch 10000] [--history-bytes N] [--history-topics N] [--max-topics N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import trio

from shoal.patterns import open_publisher

MIB = 1 << 20


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


async def publish(args: argparse.Namespace, history: int) -> list[dict[str, Any]]:
    body = b"v" * 16
    samples: list[dict[str, Any]] = []
    async with open_publisher(bind="tcp://127.0.0.1:*", history=history,
                              history_bytes=args.history_bytes,
                              history_topics=args.history_topics,
                              max_topics=args.max_topics) as pub:
        base = rss()
        wall, cpu = time.perf_counter(), time.process_time()
        done = 0
        while done < args.topics:
            n = min(args.batch, args.topics - done)
            pub.publish_many_nowait([(f"dev/{i:08d}", body) for i in range(done, done + n)])
            done += n
            if done % args.every == 0 or done == args.topics:
                s = pub.statistics()
                samples.append({
                    "topics_published": done, "rss_growth": rss() - base,
                    "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                    "table_topics": s.topics, "topic_resets": s.topic_resets,
                    "history_topics": s.history_topics, "history_bytes": s.history_bytes,
                    "history_evicted": s.history_evicted})
                await trio.lowlevel.checkpoint()
        assert pub.statistics().published == args.topics
    return samples


def report(name: str, args: argparse.Namespace, samples: list[dict[str, Any]]) -> None:
    print(f"\n{name}: {args.topics:,} distinct topics, batches of {args.batch:,}, "
          f"bounds history_bytes {args.history_bytes / MIB:.0f} MiB, history_topics "
          f"{args.history_topics:,}, max_topics {args.max_topics:,}")
    print(f"{'published':>12} {'RSS growth':>11} {'history holds':>14} {'hist. topics':>12} "
          f"{'table':>8} {'resets':>6} {'wall s':>7}")
    for s in samples:
        print(f"{s['topics_published']:>12,} {s['rss_growth'] / MIB:>8.1f} MiB "
              f"{s['history_bytes'] / MIB:>10.1f} MiB {s['history_topics']:>12,} "
              f"{s['table_topics']:>8,} {s['topic_resets']:>6} {s['wall']:>7.1f}")
    last = samples[-1]
    half = min(samples, key=lambda s: abs(s["topics_published"] - args.topics / 2))
    moved = last["rss_growth"] - half["rss_growth"]
    rate = last["topics_published"] / last["wall"]
    print(f"growth over the second half ({half['topics_published']:,} -> "
          f"{last['topics_published']:,}): {moved / MIB:+.1f} MiB; final growth "
          f"{last['rss_growth'] / MIB:.1f} MiB = {last['rss_growth'] / args.history_bytes:.2f}"
          f" x history_bytes; {rate / 1000:.0f}k publications/s, "
          f"{last['cpu'] / last['topics_published'] * 1e6:.2f} us CPU each")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=10_000_000)
    ap.add_argument("--every", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--history-bytes", type=int, default=64 * MIB)
    ap.add_argument("--history-topics", type=int, default=100_000)
    ap.add_argument("--max-topics", type=int, default=100_000)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # the history depth
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(trio.run(publish, args, args.child)))
        return
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    for name, depth in (("history=1", 1), ("no history", 0)):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(depth)],
                             capture_output=True, text=True, check=True)
        report(name, args, json.loads(out.stdout))


if __name__ == "__main__":
    main()
