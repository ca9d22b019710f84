"""Hedged requests against a replier that stalls now and then (``shoal bench --hedge``,
``benchmarks/hedging.py``).

Two replier nodes, each in a child process of its own, and a requester node in this
process, on tcp 127.0.0.1 with static discovery (no multicast); one request in
flight. The node's requester sends each request to the replier with the fewest in
flight (``plain=True``: a plain ``open_requester`` connected to both, libzmq's
round-robin, which keeps feeding a stalled replier). Replier 1 stalls ``stall``
seconds (50 ms) on ``stall_share`` (10%) of the requests it gets whose body asks for
stalls (first byte ``S``); replier 2 never stalls. Three variants, interleaved round
by round (A B C, then B C A, ...):

* ``no stall``: nobody stalls, no hedging (the baseline);
* ``stall``: replier 1 stalls, no hedging (its stalls reach the tail);
* ``stall+hedge``: replier 1 stalls, ``hedge_after=`` (5 ms).

Each round trip is timed on its own (``perf_counter`` around ``request()``); the
figures are nearest-rank percentiles over every round, the requester's process CPU
time per request, and the hedges sent and replies wasted (``statistics()``; after a
hedged block, an untimed pause past a stall and two untimed requests read the late
losers' replies, so that they count in that block).
``_hedge_report`` shows them.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import trio

import shoal
from shoal.cli._bench._common import BenchError, interleaved
from shoal.discovery import Static

START_S = 30.0
"""How long a replier process may take to start, and the requester to find both."""

STOP_S = 5.0


@dataclass(frozen=True)
class HedgeOptions:
    rounds: int = 3
    count: int = 1_000          # timed requests per variant and round
    warmup: int = 300           # untimed requests first (no stalls)
    size: int = 64              # body bytes
    hedge_after: float = 0.005
    stall: float = 0.050
    stall_share: float = 0.10
    plain: bool = False         # a plain requester (round-robin) instead of a node's
    timeout: float = 300.0      # per variant and round


VARIANTS: tuple[tuple[str, bytes, bool], ...] = (
    # name, first byte of the body, hedged
    ("no stall", b"N", False),
    ("stall", b"S", False),
    ("stall+hedge", b"S", True),
)


@dataclass
class HedgeVariant:
    """One variant's round trips (seconds) over every round, and its counters."""

    name: str
    mark: bytes
    hedge_after: float | None
    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    hedged: int = 0
    hedge_wasted: int = 0

    def percentiles_us(self) -> dict[str, float]:
        """min, p50, p90, p99, p99.9, max and mean in microseconds (nearest rank)."""
        s = sorted(self.samples)
        if not s:
            return {}
        out = {f"p{q:g}": percentile(s, q) * 1e6 for q in (50, 90, 99, 99.9)}
        out["min"] = s[0] * 1e6
        out["max"] = s[-1] * 1e6
        out["mean"] = sum(s) / len(s) * 1e6
        return out

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / len(self.samples) * 1e6 if self.samples else 0.0


def percentile(sorted_s: list[float], q: float) -> float:
    """The nearest-rank ``q``th percentile of an ascending list."""
    return sorted_s[min(len(sorted_s) - 1, int(q / 100 * len(sorted_s)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(conn: Connection, stalls: bool, seed: int, port: int, stall: float,
          share: float) -> None:
    """A replier process: a node's replier on ``port`` and a plain one; sends the plain
    one's endpoint on ``conn`` and answers until a request says ``stop``."""
    logging.getLogger("shoal").setLevel(logging.ERROR)
    rng = random.Random(seed)

    async def answer(rep: shoal.Replier, done: trio.CancelScope) -> None:
        async for req in rep:
            body = req.body
            if body == b"stop":
                await req.reply(b"")
                done.cancel()
                return
            if stalls and body[:1] == b"S" and rng.random() < share:
                await trio.sleep(stall)
            await req.reply(body)

    async def main() -> None:
        async with (
            shoal.open_node(f"replier{seed}", discovery=Static([]),
                            interfaces=["127.0.0.1"], port=port) as node,
            node.open_replier("bench") as node_rep,
            shoal.open_replier(bind="tcp://127.0.0.1:*") as plain_rep,
            trio.open_nursery() as nursery,
        ):
            conn.send(plain_rep.endpoints[0])
            nursery.start_soon(answer, node_rep, nursery.cancel_scope)
            await answer(plain_rep, nursery.cancel_scope)

    trio.run(main)


Progress = Callable[[str, int, int], None]


async def _measure(c: shoal.Requester, opts: HedgeOptions, progress: Progress | None
                   ) -> list[HedgeVariant]:
    variants = [HedgeVariant(name, mark, opts.hedge_after if hedged else None)
                for name, mark, hedged in VARIANTS]
    filler = bytes(opts.size - 1)
    for _ in range(opts.warmup):
        await c.request(b"N" + filler)
    plan = [v for r in range(opts.rounds) for v in interleaved(variants, r)]
    for n, v in enumerate(plan):
        if progress is not None:
            progress(v.name, n, len(plan))
        body = v.mark + filler
        before = c.statistics()
        with trio.move_on_after(opts.timeout) as cs:
            k0 = time.process_time()
            for _ in range(opts.count):
                t0 = time.perf_counter()
                await c.request(body, hedge_after=v.hedge_after)
                v.samples.append(time.perf_counter() - t0)
            v.cpu_s += time.process_time() - k0
        if cs.cancelled_caught:
            raise BenchError(f"hedge {v.name} did not finish within {opts.timeout:g} s "
                             "(--timeout)")
        if v.hedge_after is not None:
            # The losers' replies of the last hedges come up to a stall later, and a
            # requester reads replies while a call waits: give them time, then read
            # them with two untimed requests, so that they count here.
            await trio.sleep(opts.stall + 0.01)
            for _ in range(2):
                await c.request(b"N" + filler)
        after = c.statistics()
        v.hedged += after.hedged - before.hedged
        v.hedge_wasted += after.hedge_wasted - before.hedge_wasted
    if progress is not None:
        progress("done", len(plan), len(plan))
    return variants


async def _client(endpoints: list[str], ports: list[int], opts: HedgeOptions,
                  progress: Progress | None) -> list[HedgeVariant]:
    try:
        if opts.plain:
            async with shoal.open_requester(connect=endpoints) as c:
                return await _measure(c, opts, progress)
        peers = Static([f"tcp://127.0.0.1:{p}" for p in ports])
        async with (
            shoal.open_node("hedge-client", discovery=peers, interfaces=["127.0.0.1"]) as node,
            node.open_requester("bench") as c,
        ):
            with trio.move_on_after(START_S) as cs:
                await node.wait_for_peers(len(ports), channel="bench")
            if cs.cancelled_caught:
                raise BenchError(f"the repliers were not found within {START_S:g} s")
            return await _measure(c, opts, progress)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_S):
            for endpoint in endpoints:
                async with shoal.open_requester(connect=endpoint) as stop:
                    await stop.request(b"stop")


def run_hedge(opts: HedgeOptions, progress: Progress | None = None) -> list[HedgeVariant]:
    """Start the two replier processes, measure every variant, stop them; return the
    variants in display order. Call it outside ``trio.run``."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    endpoints: list[str] = []
    ports: list[int] = []
    try:
        for i, stalls in enumerate((True, False)):
            parent, child = ctx.Pipe()
            ports.append(_free_port())
            p = ctx.Process(target=serve, daemon=True,
                            args=(child, stalls, i, ports[-1], opts.stall, opts.stall_share))
            p.start()
            procs.append(p)
            if not parent.poll(START_S):
                raise BenchError(f"replier {i + 1} did not start within {START_S:g} s")
            endpoints.append(parent.recv())
        return trio.run(_client, endpoints, ports, opts, progress)
    finally:
        for p in procs:
            p.join(STOP_S)
            if p.is_alive():
                p.kill()
                p.join(STOP_S)
