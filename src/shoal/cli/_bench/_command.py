"""``shoal bench``: the command line of the benchmark (see ``shoal.cli._bench``).

Errors: bad arguments exit 2 with one line; a benchmark that cannot run or finish
exits 1 with one line. ``--busy-poll`` with a shoal whose resources take no
``busy_poll=`` says so in one line on stderr and measures without it (the JSON
records then say ``busy_poll: 0``).

``--backend trio|asyncio|uvloop`` picks the event loop of both ends (this process and
the server it starts; ``--serve`` takes it too). Raw pyzmq runs blocking sockets in
worker threads either way, so only shoal's figures depend on it. ``--hedge`` runs on
trio only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio

from shoal.cli._bench._common import (
    BACKENDS,
    BODY_MIN,
    BUSY_POLL_MAX,
    PATTERNS,
    BenchError,
    busy_poll_missing,
    run_on,
)
from shoal.cli._bench._run import Options, run
from shoal.discovery import resolve_interfaces
from shoal.errors import LocalProtocolError, ShoalError

Out = Callable[[str], None]


class UsageError(BenchError):
    """Arguments that do not make sense together (exit status 2)."""

EXAMPLES = """examples:
  shoal bench                                  every pattern, tcp, 64 B, vs raw pyzmq
  shoal bench --pattern rr --size 4096 --rate 2000 --seconds 10
  shoal bench --transport ipc --mode reliable --json > figures.jsonl
  shoal bench --plot latency.png
  shoal bench --hedge                          hedged requests vs a replier that stalls
  shoal bench --curve                          the same, every data connection encrypted
  shoal bench --pattern rr --busy-poll 0.001   shoal's receivers poll 1 ms before parking
  shoal bench --backend uvloop                 shoal on asyncio with uvloop, not trio
  shoal bench --serve tcp://0.0.0.0:5700       (host A)
  shoal bench --peer tcp://hostA:5700          (host B)
"""


def _csv(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}")
        return tuple(dict.fromkeys(items))
    return parse


class _Formatter(argparse.HelpFormatter):
    """Wraps the description to the terminal like argparse's default, but keeps the
    indented lines of the examples as they are written (RawDescriptionHelpFormatter
    would keep the description's one long line unwrapped too)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_bench_command(commands: Any) -> None:
    p = commands.add_parser(
        "bench", help="latency and throughput of each pattern, beside raw pyzmq",
        description="Measure request/reply round trips (rr), push/pull (pp) and pub/sub "
        "(ps) throughput and one-way latency, shoal best effort and reliable, with raw "
        "pyzmq measured in the same run with the same settings. Latency is an HDR "
        "histogram (p50 ... p99.99, max) in microseconds. Without --rate, push/pull and "
        "pub/sub send as fast as they can, so their one-way latency is latency under "
        "saturation: mostly time spent queued (the output says so); --rate N measures "
        "it at a set load. The serving end runs in a child process on this machine "
        "(tcp, ipc), in this process (inproc), or on another host (--peer).",
        epilog=EXAMPLES, formatter_class=_Formatter)
    p.add_argument("--pattern", type=_csv(PATTERNS), default=PATTERNS,
                   help="which patterns, e.g. rr,pp (default: rr,pp,ps)")
    p.add_argument("--mode", type=_csv(("best-effort", "reliable")),
                   default=("best-effort", "reliable"),
                   help="shoal modes to measure (default: best-effort,reliable)")
    p.add_argument("--compare", choices=("raw", "none"), default="raw",
                   help="measure raw pyzmq too and print ratios (default: raw)")
    p.add_argument("--transport", choices=("tcp", "ipc", "inproc"), default="tcp",
                   help="how the two ends connect: tcp (on --interface), ipc (a Unix "
                   "socket) or inproc (both ends in this process) (default: tcp)")
    p.add_argument("--size", type=int, default=64,
                   help=f"body size in bytes, at least {BODY_MIN} (default: 64)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--count", type=int,
                        help="timed messages per round (default: rr 5000, pp/ps 100000)")
    amount.add_argument("--seconds", type=float, help="timed duration per round instead")
    p.add_argument("--warmup", type=int, help="untimed messages first (default: rr 500, "
                   "pp/ps 5000)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="send at this many messages per second, latency counted from "
                   "when each was due (coordinated omission corrected); default: as "
                   "fast as possible, where one-way latency is mostly queueing")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds per variant, interleaved (default: 3)")
    p.add_argument("--hwm", type=int, help="high-water mark of both ends (default: "
                   "rr/pp 1000, ps 100000)")
    p.add_argument("--curve", action="store_true",
                   help="encrypt every data connection with CURVE, raw pyzmq and shoal "
                   "alike (tcp/ipc; run with and without to see its cost)")
    p.add_argument("--busy-poll", type=float, default=0.0, metavar="SECONDS",
                   help="busy_poll= of every shoal resource at both ends: a receiver "
                   "polls this long before parking on its socket (default: 0, off; raw "
                   "pyzmq is unchanged)")
    p.add_argument("--backend", choices=BACKENDS, default="trio",
                   help="event loop of shoal's side at both ends: trio, asyncio or "
                   "uvloop (asyncio with uvloop's loop) (default: trio; raw pyzmq "
                   "runs in threads either way; with --peer, the server keeps the loop "
                   "its --serve was given)")
    p.add_argument("--interface", default="127.0.0.1", metavar="IP|NAME",
                   help="address (or interface name, e.g. lo) the local server binds for "
                   "tcp (default: 127.0.0.1)")
    p.add_argument("--serve", metavar="ENDPOINT",
                   help="be the serving end for another host's --peer, e.g. "
                   "tcp://192.0.2.7:5700; runs until interrupted (or --for)")
    p.add_argument("--for", dest="serve_for", type=float, metavar="S",
                   help="with --serve: stop after S seconds")
    p.add_argument("--peer", metavar="ENDPOINT", help="measure against a server started "
                   "elsewhere with --serve")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up on one measurement after S seconds (default: 300)")
    p.add_argument("--hedge", action="store_true",
                   help="instead: hedged requests against a replier that stalls 50 ms on "
                   "10%% of requests, three variants (no stall, stall, stall+hedge), a "
                   "table and a text latency plot; takes --count (default 1000), "
                   "--rounds, --warmup (default 300), --size, --timeout, --json")
    p.add_argument("--json", action="store_true", help="one JSON object per variant")
    p.add_argument("--plot", metavar="FILE.png", help="draw latency by percentile")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (default: when stderr is a terminal)")


def _options(args: argparse.Namespace) -> Options:
    if args.size < BODY_MIN or args.size > 256 * 1024 * 1024:
        raise UsageError(f"--size must be between {BODY_MIN} and 268435456 bytes")
    if args.count is not None and args.count < 2:
        raise UsageError("--count must be at least 2")
    if args.seconds is not None and not 0 < args.seconds <= 86_400:
        raise UsageError("--seconds must be between 0 and 86400")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError("--warmup must be 0 or more")
    if args.rate < 0 or args.rounds < 1 or args.timeout <= 0:
        raise UsageError("--rate must be >= 0, --rounds >= 1 and --timeout > 0")
    if args.hwm is not None and args.hwm < 1:
        raise UsageError("--hwm must be at least 1")
    if not 0 <= args.busy_poll <= BUSY_POLL_MAX:
        raise UsageError(f"--busy-poll must be between 0 and {BUSY_POLL_MAX:g} seconds")
    if args.compare == "none" and not args.mode:
        raise UsageError("nothing to measure")
    if args.peer and not args.peer.startswith(("tcp://", "ipc://")):
        raise UsageError("--peer takes a tcp:// or ipc:// endpoint, e.g. tcp://hostA:5700")
    transport = args.transport
    if args.curve and transport == "inproc":
        raise UsageError("--curve needs --transport tcp or ipc (inproc does not encrypt)")
    if args.peer:
        transport = args.peer.split("://", 1)[0]
    try:
        interface = resolve_interfaces([args.interface])[0]
    except LocalProtocolError as exc:
        raise UsageError(f"--interface {exc}") from None
    return Options(patterns=args.pattern, modes=args.mode, compare_raw=args.compare == "raw",
                   transport=transport, size=args.size, count=args.count,
                   seconds=args.seconds or 0.0, warmup=args.warmup, rate=args.rate,
                   rounds=args.rounds, hwm=args.hwm, interface=interface,
                   peer=args.peer, timeout=args.timeout, curve=args.curve,
                   busy_poll=args.busy_poll, backend=args.backend)


class _Bar:
    """A one-line progress bar on stderr, redrawn in place."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, label: str, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        line = (f"\r[{bar}] {done}/{total}  {label:<24} "
                f"{time.monotonic() - self.start:6.1f} s")
        end = "\n" if done >= total else ""
        print(line + end, end="", file=sys.stderr, flush=True)


async def _serve(endpoint: str, seconds: float | None, out: Out) -> None:
    from shoal.cli._bench._server import BenchServer

    server = BenchServer(endpoint)
    with anyio.move_on_after(seconds if seconds else float("inf")):
        async with anyio.create_task_group() as tasks:
            bound: str = await tasks.start(server.serve)
            out(f"shoal bench serving on {bound}")


def _run_hedge(args: argparse.Namespace, out: Out) -> int:
    from shoal.cli._bench._hedge import HedgeOptions, run_hedge
    from shoal.cli._bench._hedge_report import describe, plot, records, table

    if args.peer or args.plot or args.curve or args.rate or args.seconds is not None \
            or args.busy_poll or args.transport != "tcp" or args.backend != "trio":
        raise UsageError("--hedge runs on tcp 127.0.0.1 under trio and takes no --peer, "
                         "--plot, --curve, --rate, --seconds, --busy-poll, --transport or "
                         "--backend")
    if args.count is not None and args.count < 2:
        raise UsageError("--count must be at least 2")
    if args.size < BODY_MIN or args.size > 1024 * 1024:
        raise UsageError(f"--size must be between {BODY_MIN} and 1048576 bytes with --hedge")
    if (args.warmup is not None and args.warmup < 0) or args.rounds < 1 \
            or args.timeout <= 0:
        raise UsageError("--warmup must be >= 0, --rounds >= 1 and --timeout > 0")
    opts = HedgeOptions(rounds=args.rounds, count=args.count or 1_000,
                        warmup=300 if args.warmup is None else args.warmup,
                        size=args.size, timeout=args.timeout)
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    before = os.getloadavg()
    variants = run_hedge(opts, _Bar() if show else None)
    load = {"before": [round(x, 2) for x in before],
            "after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        for rec in records(variants, opts, load):
            out(json.dumps(rec, sort_keys=True))
        return 0
    for line in describe(opts):
        out(line)
    out("load average (1, 5, 15 min): "
        f"{' '.join(f'{x:.2f}' for x in load['before'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in load['after'])} at the end")
    table(variants, opts, out)
    out("")
    plot(variants, out)
    return 0


def run_bench(args: argparse.Namespace, out: Out, err: Out) -> int:
    """Run ``shoal bench`` as parsed; return the exit status."""
    # Measurements end by closing resources with messages still in flight on purpose;
    # the library's warnings about that would only clutter the figures (losses are
    # counted and shown in the table).
    logging.getLogger("shoal").setLevel(logging.ERROR)
    try:
        if args.serve and args.peer:
            raise UsageError("--serve and --peer exclude each other")
        if args.serve:
            if args.serve_for is not None and args.serve_for <= 0:
                raise UsageError("--for must be more than 0 seconds")
            run_on(args.backend, _serve, args.serve, args.serve_for, out)
            return 0
        if args.hedge:
            return _run_hedge(args, out)
        opts = _options(args)
        if opts.busy_poll and (missing := busy_poll_missing()):
            err(f"shoal bench: --busy-poll skipped: {missing} take no busy_poll= in this "
                "shoal; measuring without it")
            opts = replace(opts, busy_poll=0.0)
        show = (args.progress == "always"
                or (args.progress == "auto" and sys.stderr.isatty()))
        variants, version = run_on(opts.backend, run, opts, _Bar() if show else None)
        from shoal.cli._bench._report import plot, records, table

        if args.json:
            for rec in records(variants, opts, version):
                out(json.dumps(rec, sort_keys=True))
        else:
            table(variants, opts, out)
        if args.plot:
            plot(variants, opts, args.plot)
            if not args.json:
                out(f"plot written to {args.plot}")
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        err(f"shoal bench: {exc}")
        return 2
    except (BenchError, ShoalError, OSError) as exc:
        err(f"shoal bench: {exc}")
        return 1
    return 0
