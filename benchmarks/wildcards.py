"""Wildcard subscriptions against plain prefixes: the subscriber's receive path.

Usage (from the repository root, with shoal installed)::

    python benchmarks/wildcards.py                 # 5 rounds of 200,000 messages, 64 B
    python benchmarks/wildcards.py --rounds 3 --count 100000 --size 64

The sender is a raw pyzmq PUB in another process that sends ready-made shoal frames
(topic ``site/3/temp``, 64-byte raw bodies, sequence numbers in order) as fast as it
can, so the subscriber is what limits the rate. Three subscribers, interleaved round
by round (A B C, A B C, ...), each counting what it receives after a warmup:

* ``prefix``: ``open_subscriber(topics=["site/"])``, the plain prefix path;
* ``wildcard``: ``open_subscriber(topics=["site/*/temp"])``: libzmq filters ``site/``
  and shoal matches the rest; every message matches;
* ``pyzmq``: a blocking pyzmq SUB on ``site/`` that only receives (no decoding).

Reported per variant, medians over rounds: messages per second counted by the
receiver, and CPU microseconds per message of the receiving thread (the one that
runs Python) and of the whole receiving process (libzmq's I/O thread included).
High-water marks are unlimited on both sides, so nothing is lost; the table says so
if something was. Loopback only.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection

import trio
import zmq

import shoal
from shoal._core import Kind, encode, encode_topic

TOPIC = "site/3/temp"
PROBE = "site/probe/temp"
VARIANTS = ("prefix", "wildcard", "pyzmq")
TOPICS = {"prefix": ["site/"], "wildcard": ["site/*/temp"]}


def frames(topic: str, n: int, size: int, start: int = 0) -> list[bytes]:
    body = b"x" * size
    t = encode_topic(topic)
    sender = os.urandom(16)
    return [encode(Kind.PUBLISH, t, body, sender=sender, epoch=1, stream=1, seq=start + i,
                   timestamp_ns=0) for i in range(n)]


def sender(ctrl: Connection, total: int, size: int) -> None:
    """Bind, then per round: probes until the subscriber hears one, then the frames."""
    timed = frames(TOPIC, total, size)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    ctrl.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    probe_seq = 0
    while ctrl.recv() == "round":
        while not ctrl.poll(0.001):
            [probe] = frames(PROBE, 1, 0, probe_seq)
            probe_seq += 1
            sock.send(probe)
        ctrl.recv()  # "ready"
        send = sock.send
        for f in timed:
            send(f)
        ctrl.send("sent")
    sock.close()
    ctx.term()


def cpu() -> tuple[float, float]:
    return time.thread_time(), time.process_time()


def result(got: int, c0: int, t0: float, t1: float, k0: tuple[float, float],
           k1: tuple[float, float], gaps: int = 0, filtered: int = 0) -> dict[str, float]:
    n = got - c0
    return {"rate": n / (t1 - t0), "main_us": (k1[0] - k0[0]) / n * 1e6,
            "cpu_us": (k1[1] - k0[1]) / n * 1e6, "gaps": gaps, "filtered": filtered}


def shoal_round(variant: str, endpoint: str, ctrl: Connection, total: int,
                warmup: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        async with shoal.open_subscriber(connect=endpoint, topics=TOPICS[variant],
                                         high_water_mark=0) as sub:
            with trio.fail_after(10):
                while (await sub.receive()).topic != PROBE:
                    pass
            ctrl.send("ready")
            got = 0
            t0 = c0 = -1.0
            k0 = cpu()
            with trio.fail_after(60):
                while got < total:
                    batch = await sub.receive_batch()
                    got += sum(1 for m in batch if m.topic == TOPIC)
                    if c0 < 0 and got >= warmup:
                        t0, c0, k0 = time.perf_counter(), got, cpu()
            t1, k1 = time.perf_counter(), cpu()
            ctrl.recv()  # "sent"
            st = sub.statistics()
            return result(got, int(c0), t0, t1, k0, k1, st.gaps, st.filtered)
    return trio.run(main)


def pyzmq_round(endpoint: str, ctrl: Connection, total: int, warmup: int) -> dict[str, float]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"site/")
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    probe = encode_topic(PROBE) + b"\0"
    while not sock.recv().startswith(probe):
        pass
    ctrl.send("ready")
    recv = sock.recv
    topic = encode_topic(TOPIC) + b"\0"
    got = 0
    while got < warmup:
        got += recv().startswith(topic)
    t0, c0, k0 = time.perf_counter(), got, cpu()
    while got < total:
        got += recv().startswith(topic)
    t1, k1 = time.perf_counter(), cpu()
    ctrl.recv()  # "sent"
    sock.close()
    return result(got, c0, t0, t1, k0, k1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=200_000, help="timed messages per round")
    p.add_argument("--warmup", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="body bytes")
    args = p.parse_args()
    total = args.count + args.warmup
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS:
            here, there = mp.Pipe()
            proc = mp.get_context("spawn").Process(target=sender,
                                                   args=(there, total, args.size))
            proc.start()
            endpoint = here.recv()
            here.send("round")
            if variant == "pyzmq":
                res = pyzmq_round(endpoint, here, total, args.warmup)
            else:
                res = shoal_round(variant, endpoint, here, total, args.warmup)
            here.send("stop")
            proc.join(10)
            rows[variant].append(res)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    print(f"{args.size} B bodies, {args.count} timed messages per round, medians of "
          f"{args.rounds} rounds; CPU per message of the receiving process")
    print(f"{'variant':<10} {'msgs/s':>10} {'min..max':>21} {'main us':>8} {'cpu us':>7} "
          f"{'gaps':>5} {'filtered':>8}")
    med = {v: {k: statistics.median(x[k] for x in rows[v]) for k in rows[v][0]}
           for v in VARIANTS}
    for v in VARIANTS:
        rates = [x["rate"] for x in rows[v]]
        m = med[v]
        print(f"{v:<10} {m['rate']:>10,.0f} {min(rates):>10,.0f}..{max(rates):<10,.0f} "
              f"{m['main_us']:>8.2f} {m['cpu_us']:>7.2f} {int(m['gaps']):>5} "
              f"{int(m['filtered']):>8}")
    ratio = med["wildcard"]["rate"] / med["prefix"]["rate"]
    print(f"wildcard/prefix msgs/s {ratio:.2f}x (target >= 0.9x); "
          f"prefix/pyzmq {med['prefix']['rate'] / med['pyzmq']['rate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
