"""Hedged requests against a replier that stalls now and then.

Two replier nodes, each in a process of its own, and a requester node, on tcp
loopback with static discovery (no multicast); one request in flight, 64-byte
bodies. The node's requester sends each request to the replier with the fewest in
flight (``--plain``: a plain ``open_requester`` connected to both, libzmq's
round-robin, which keeps feeding a stalled replier). Replier 1 stalls 50 ms on 10% of the
requests it gets when the body asks for stalls (first byte ``S``); replier 2 never
stalls. Three variants, interleaved round by round:

* ``no stall``: nobody stalls, no hedging (the baseline);
* ``stall``: replier 1 stalls, no hedging (its stalls reach the p99);
* ``stall+hedge``: replier 1 stalls, ``hedge_after=0.005``.

Target: ``stall+hedge`` p99 <= 3x the ``no stall`` p99. Reports p50/p99/p99.9, CPU
microseconds per request in the requester, hedges and wasted replies, and ``uptime``.

    python benchmarks/hedging.py [--rounds 3] [--count 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import socket
import subprocess
import time
from multiprocessing.connection import Connection

import trio

import shoal
from shoal.discovery import Static

STALL = 0.050
STALL_SHARE = 0.10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(conn: Connection, stalls: bool, seed: int, port: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        async with (
            shoal.open_node(f"replier{seed}", discovery=Static([]), interfaces=["127.0.0.1"],
                            port=port) as node,
            node.open_replier("bench") as node_rep,
            shoal.open_replier(bind="tcp://127.0.0.1:*") as plain_rep,
            trio.open_nursery() as nursery,
        ):
            conn.send(plain_rep.endpoints[0])
            nursery.start_soon(answer, node_rep, nursery.cancel_scope)
            await answer(plain_rep, nursery.cancel_scope)

    async def answer(rep: shoal.Replier, done: trio.CancelScope) -> None:
        async for req in rep:
                body = req.body
                if body == b"stop":
                    await req.reply(b"")
                    done.cancel()
                    return
                if stalls and body[:1] == b"S" and rng.random() < STALL_SHARE:
                    await trio.sleep(STALL)
                await req.reply(body)
    trio.run(main)


def pct(sorted_s: list[float], q: float) -> float:
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1e6


VARIANTS = {"no stall": (b"N", None), "stall": (b"S", None), "stall+hedge": (b"S", 0.005)}


async def client(endpoints: list[str], ports: list[int], rounds: int, count: int,
                 plain: bool) -> None:
    with trio.fail_after(120 + rounds * count * 0.2):
        if plain:
            async with shoal.open_requester(connect=endpoints) as c:
                await measure(c, rounds, count, len(endpoints))
            return
        peers = Static([f"tcp://127.0.0.1:{p}" for p in ports])
        async with (
            shoal.open_node("client", discovery=peers, interfaces=["127.0.0.1"]) as node,
            node.open_requester("bench") as c,
        ):
            await node.wait_for_peers(len(ports), channel="bench")
            await measure(c, rounds, count, len(ports))
        # the plain repliers stop too
        async with shoal.open_requester(connect=endpoints) as c:
            for _ in endpoints:
                await c.request(b"stop")


async def measure(c: shoal.Requester, rounds: int, count: int, repliers: int) -> None:
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu = dict.fromkeys(VARIANTS, 0.0)
    for _ in range(300):
        await c.request(b"N" + bytes(63))
    before = c.statistics()
    for _ in range(rounds):
        for name, (mark, hedge) in VARIANTS.items():
            body = mark + bytes(63)
            got = samples[name]
            k0 = time.process_time()
            for _ in range(count):
                t0 = time.perf_counter()
                await c.request(body, hedge_after=hedge)
                got.append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - k0
    after = c.statistics()
    print(f"{'variant':12} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'cpu us/req':>10}")
    for name in VARIANTS:
        s = sorted(samples[name])
        print(f"{name:12} {pct(s, 0.5):8.0f} {pct(s, 0.99):8.0f} {pct(s, 0.999):9.0f} "
              f"{cpu[name] / len(s) * 1e6:10.1f}")
    base99 = pct(sorted(samples["no stall"]), 0.99)
    hedge99 = pct(sorted(samples["stall+hedge"]), 0.99)
    print(f"hedged {after.hedged - before.hedged}, wasted replies "
          f"{after.hedge_wasted - before.hedge_wasted}")
    print(f"stall+hedge p99 / no stall p99 = {hedge99 / base99:.2f}x (target <= 3x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--plain", action="store_true",
                    help="a plain requester (round-robin) instead of a node's")
    args = ap.parse_args()
    print("requester:", "plain (round-robin)" if args.plain else "node (least-loaded)")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    procs, endpoints, ports = [], [], []
    for i, stalls in enumerate((True, False)):
        parent, child = mp.Pipe()
        ports.append(free_port())
        p = mp.Process(target=serve, args=(child, stalls, i, ports[-1]))
        p.start()
        procs.append(p)
        endpoints.append(parent.recv())
    try:
        trio.run(client, endpoints, ports, args.rounds, args.count, args.plain)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
