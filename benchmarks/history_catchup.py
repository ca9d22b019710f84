"""How long a late joiner takes to catch up with a history publisher.

A publisher with ``history=1000`` has published 5000 messages (64-byte bodies) on
one topic; a subscriber then connects over tcp loopback and the time from opening it
to holding the 1000 replayed messages is measured, for a number of joins in a row.
Publisher and subscriber run in one process (one trio loop), so the figure includes
both sides' Python. Reports the median, p90 and max. ``--reliable``: both sides
reliable (the replay is acknowledged and would be sent again if lost).

Usage: python benchmarks/history_catchup.py [--joins 30] [--depth 1000] [--topics 1]
       [--reliable]
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from shoal.patterns import ReliablePublisher, open_publisher, open_subscriber


async def run(joins: int, depth: int, topics: int, reliable: bool) -> list[float]:
    body = b"x" * 64
    times: list[float] = []
    async with open_publisher(bind="tcp://127.0.0.1:*", history=depth,
                              reliable=reliable) as pub:  # type: ignore[call-overload]
        for i in range(5 * depth):
            items = [(f"t/{k}", body) for k in range(topics)]
            if isinstance(pub, ReliablePublisher):
                await pub.publish_many(items)
            else:
                pub.publish_many_nowait(items)
            if i % 256 == 0:
                await trio.sleep(0)
        want = depth * topics
        for _ in range(joins):
            start = time.perf_counter()
            async with open_subscriber(connect=pub.endpoints[0], topics=["t/"],
                                       reliable=reliable) as sub:  # type: ignore[call-overload]
                got = 0
                while got < want:
                    got += len(await sub.receive_batch())
                times.append(time.perf_counter() - start)
                assert sub.statistics().replayed == want
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joins", type=int, default=30)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--topics", type=int, default=1)
    ap.add_argument("--reliable", action="store_true")
    args = ap.parse_args()
    times = sorted(trio.run(run, args.joins, args.depth, args.topics, args.reliable))
    ms = [t * 1000 for t in times]
    mode = "reliable" if args.reliable else "best effort"
    print(f"{mode} late joiner, history={args.depth} x {args.topics} topic(s), 64 B bodies, "
          f"tcp loopback, {args.joins} joins: median {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms (target: 50 ms)")


if __name__ == "__main__":
    main()
