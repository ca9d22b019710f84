"""What a travelling deadline costs a request/reply round trip.

One replier process, one requester process, 64-byte bodies over tcp loopback, one
request in flight. Interleaved rounds of three variants, so that load on a shared
machine hits them alike:

* ``plain``: ``request()`` with no deadline in effect (the frame carries none);
* ``scoped``: the same under ``trio.move_on_after(60)`` (the frame carries the time
  left, and the replier turns it into ``Request.deadline``);
* ``explicit``: ``request(..., deadline=60)``.

Reports p50/p99 per variant, the ratio of each to ``plain``, CPU microseconds per
request in the requester, and ``uptime``. Run it against another checkout with
``PYTHONPATH=/path/to/src python benchmarks/deadlines.py`` to compare the plain path
across versions (``explicit`` needs a shoal that knows ``deadline=``).

    python benchmarks/deadlines.py [--rounds 7] [--count 3000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import time
from multiprocessing.connection import Connection

import trio

import shoal

BODY = b"x" * 64


def serve(conn: Connection) -> None:
    async def main() -> None:
        async with shoal.open_replier(bind="tcp://127.0.0.1:*") as rep:
            conn.send(rep.endpoints[0])
            async for req in rep:
                if req.body == b"stop":
                    await req.reply(b"")
                    break
                await req.reply(req.body)
    trio.run(main)


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


async def client(endpoint: str, rounds: int, count: int, variants: list[str]) -> None:
    samples: dict[str, list[int]] = {v: [] for v in variants}
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    # A bound, not a measurement: a lost message ends the run instead of hanging it.
    # SIGALRM, not trio.fail_after: a cancel scope's deadline would travel with every
    # request, and "plain" would not be plain.
    signal.alarm(int(60 + rounds * count * len(variants) * 0.01))
    await _measure(endpoint, rounds, count, variants, samples, cpu)
    signal.alarm(0)
    base = statistics.median(samples["plain"])
    print(f"{'variant':10} {'p50 us':>8} {'p99 us':>8} {'p50/plain':>9} {'cpu us/req':>10}")
    for v in variants:
        s = sorted(samples[v])
        print(f"{v:10} {percentile(s, 0.5):8.1f} {percentile(s, 0.99):8.1f} "
              f"{statistics.median(s) / base:9.3f} {cpu[v] / len(s) * 1e6:10.1f}")


async def _measure(endpoint: str, rounds: int, count: int, variants: list[str],
                   samples: dict[str, list[int]], cpu: dict[str, float]) -> None:
    async with shoal.open_requester(connect=endpoint) as c:
        for _ in range(500):
            await c.request(BODY)
        for _ in range(rounds):
            for v in variants:
                got = samples[v]
                k0 = time.process_time()
                if v == "plain":
                    for _ in range(count):
                        t0 = time.perf_counter_ns()
                        await c.request(BODY)
                        got.append(time.perf_counter_ns() - t0)
                elif v == "scoped":
                    for _ in range(count):
                        t0 = time.perf_counter_ns()
                        with trio.move_on_after(60):
                            await c.request(BODY)
                        got.append(time.perf_counter_ns() - t0)
                else:
                    for _ in range(count):
                        t0 = time.perf_counter_ns()
                        await c.request(BODY, deadline=60)
                        got.append(time.perf_counter_ns() - t0)
                cpu[v] += time.process_time() - k0
        await c.request(b"stop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--no-explicit", action="store_true",
                    help="skip deadline= (for a shoal that does not know it)")
    args = ap.parse_args()
    variants = ["plain", "scoped"] + ([] if args.no_explicit else ["explicit"])
    print("shoal from", os.path.dirname(shoal.__file__))
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    parent, child = mp.Pipe()
    proc = mp.Process(target=serve, args=(child,))
    proc.start()
    try:
        trio.run(client, parent.recv(), args.rounds, args.count, variants)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
