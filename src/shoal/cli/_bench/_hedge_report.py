"""How the hedging comparison shows its figures: a table, a text latency plot, and one
JSON object per variant.

The plot puts every variant on one logarithmic time axis, 50 us to 100 ms. Per
variant, a ``hist`` row is a histogram over that axis (one column per log-spaced
bucket, `` .:-=+*#%@`` from few to most requests, on a log count so that a 1% tail
still shows), and one row per percentile draws a bar from the left edge to that
round-trip time, its value in microseconds at the end. A stalled replier's tail shows
as marks and long bars near 50 ms; hedging pulls them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from shoal.cli._bench._hedge import HedgeOptions, HedgeVariant

Out = Callable[[str], None]

AXIS_LO = 50e-6
AXIS_HI = 100e-3
WIDTH = 60
RAMP = " .:-=+*#%@"
PLOT_ROWS = ("p50", "p90", "p99", "p99.9", "max")
TICKS = ((50e-6, "50us"), (100e-6, "100us"), (1e-3, "1ms"), (10e-3, "10ms"),
         (100e-3, "100ms"))
LABEL = 18  # left margin: variant name and row name


def column(seconds: float, width: int = WIDTH) -> int:
    """The column of ``seconds`` on the log axis, clamped to the plot."""
    if seconds <= AXIS_LO:
        return 0
    span = math.log10(AXIS_HI) - math.log10(AXIS_LO)
    x = (math.log10(seconds) - math.log10(AXIS_LO)) / span * (width - 1)
    return max(0, min(width - 1, round(x)))


def histogram_row(samples: list[float], width: int = WIDTH) -> str:
    """One character per log-spaced bucket: blank for none, then denser for more."""
    counts = [0] * width
    for s in samples:
        counts[column(s, width)] += 1
    top = max(counts, default=0)
    if not top:
        return " " * width
    steps = len(RAMP) - 1
    return "".join(
        RAMP[max(1, math.ceil(math.log1p(n) / math.log1p(top) * steps))] if n else " "
        for n in counts)


def axis_rows(width: int = WIDTH) -> tuple[str, str]:
    """The tick labels and the axis line under them."""
    labels = [" "] * (width + 6)
    line = ["-"] * width
    for seconds, text in TICKS:
        col = column(seconds, width)
        start = min(col, len(labels) - len(text)) if col else 0
        labels[start:start + len(text)] = text
        line[col] = "+"
    line[0] = line[-1] = "|"
    return "".join(labels).rstrip(), "".join(line)


def plot(variants: list[HedgeVariant], out: Out, width: int = WIDTH) -> None:
    """The text latency plot of every variant on one log time axis."""
    labels, line = axis_rows(width)
    out("round-trip time, log scale (hist: requests per bucket, ' .:-=+*#%@' few to "
        "most, log count; bars: each percentile, its value in us at the right)")
    out(" " * LABEL + labels)
    out(" " * LABEL + line)
    for v in variants:
        lat = v.percentiles_us()
        out(f"{v.name:<12}{'hist':<6}{histogram_row(v.samples, width)}".rstrip())
        for row in PLOT_ROWS:
            value = lat.get(row)
            if value is None:
                continue
            bar = "=" * (column(value / 1e6, width) + 1)
            if value / 1e6 > AXIS_HI:
                bar = bar[:-1] + ">"
            out(f"{'':<12}{row:<6}{bar:<{width}} {value:>8,.0f}")
    out(" " * LABEL + line)


def describe(opts: HedgeOptions) -> list[str]:
    requester = "a plain requester (round-robin)" if opts.plain else \
        "a node's requester (least-loaded)"
    return [f"hedging: two repliers in child processes, tcp 127.0.0.1, static discovery; "
            f"{requester}, one request in flight, {opts.size}-byte bodies",
            f"replier 1 stalls {opts.stall * 1e3:g} ms on {opts.stall_share:.0%} of its "
            f"requests in the stall variants; hedge_after={opts.hedge_after:g}; "
            f"{opts.rounds} rounds x {opts.count} requests per variant, interleaved"]


def table(variants: list[HedgeVariant], opts: HedgeOptions, out: Out) -> None:
    out(f"{'variant':<12} {'requests':>8} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} "
        f"{'p99.9 us':>9} {'max us':>8} {'cpu us/req':>10} {'hedged':>7} {'wasted':>7}")
    for v in variants:
        lat = v.percentiles_us()
        out(f"{v.name:<12} {len(v.samples):>8} {lat.get('p50', 0):>8,.0f} "
            f"{lat.get('p90', 0):>8,.0f} {lat.get('p99', 0):>8,.0f} "
            f"{lat.get('p99.9', 0):>9,.0f} {lat.get('max', 0):>8,.0f} {v.cpu_us:>10.1f} "
            f"{v.hedged:>7} {v.hedge_wasted:>7}")
    by = {v.name: v.percentiles_us() for v in variants}
    base, hedged = by.get("no stall", {}).get("p99"), by.get("stall+hedge", {}).get("p99")
    if base and hedged:
        out(f"stall+hedge p99 / no stall p99 = {hedged / base:.2f}x (target <= 3x)")


def records(variants: list[HedgeVariant], opts: HedgeOptions,
            load: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One JSON object per variant: its settings and raw percentiles in microseconds."""
    return [{
        "bench": "hedge",
        "variant": v.name,
        "stalls": v.mark == b"S",
        "hedge_after": v.hedge_after,
        "stall_s": opts.stall,
        "stall_share": opts.stall_share,
        "requester": "plain" if opts.plain else "node",
        "size": opts.size,
        "rounds": opts.rounds,
        "requests": len(v.samples),
        "latency_us": {k: round(x, 1) for k, x in v.percentiles_us().items()},
        "cpu_us": round(v.cpu_us, 2),
        "hedged": v.hedged,
        "hedge_wasted": v.hedge_wasted,
        "load": load,
    } for v in variants]
