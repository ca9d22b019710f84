"""How ``shoal bench`` shows its figures: a table per pattern, one JSON object per
variant (``--json``), and a percentile-distribution plot (``--plot``).

Ratios compare a shoal variant with raw pyzmq measured in the same run with the same
settings (``vs_raw``), and shoal reliable with shoal best effort (``vs_best_effort``):
latency ratios above 1 mean shoal is slower, throughput ratios below 1 mean it moves
fewer messages per second, CPU ratios above 1 mean it spends more CPU time per
message (``cpu_<side>``, one per side of ``cpu_us``).

One-way latency without ``--rate`` is latency under saturation: the sender sends as
fast as backpressure allows, so most of each message's latency is the time it waits
behind the messages sent before it (queues in libzmq and the kernel), not the time
to cross. The table, the plot and the records say so (``latency_saturated``), so
that a figure like "pub/sub p50 100 ms" is not read as the latency of one message;
``--rate N`` measures latency at a set load.

Each record names the event loop shoal ran on (``backend``, ``--backend``); the table
says it when it is not trio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.cli._bench._common import CPU_SIDES, PATTERN_NAMES, BenchError
from shoal.cli._bench._run import Options, Variant

COLUMNS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")
SHORT = {"client": "cli", "server": "srv", "send": "snd", "receive": "rcv"}


SATURATED_NOTE = ("latency under saturation: sent as fast as possible, so it is mostly "
                  "time queued behind earlier messages; --rate N measures it at a set load")


def saturated(pattern: str, rate: float) -> bool:
    """Whether one-way latency was measured under saturation: push/pull or pub/sub
    sent as fast as possible (request/reply has one request in flight: no queue)."""
    return pattern != "rr" and not rate


def latency_label(pattern: str, kind: str | None, rate: float) -> str:
    """What a pattern's latency figures are, for the table header and the plot."""
    if kind is None:
        return "not measured (different clocks)"
    if not saturated(pattern, rate):
        return kind
    return f"{kind} under saturation (includes queueing)"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def _compare(v: Variant, base: Variant | None) -> dict[str, float | None] | None:
    if base is None or base is v:
        return None
    lat, base_lat = v.latency_us(), base.latency_us()
    out: dict[str, float | None] = {"throughput": _ratio(v.rate, base.rate)}
    for p in ("p50", "p99", "p99.9"):
        out[p] = _ratio(lat[p] if lat else None, base_lat[p] if base_lat else None)
    cpu, base_cpu = v.cpu_us(), base.cpu_us()
    for side in CPU_SIDES[v.spec.pattern]:
        out[f"cpu_{side}"] = _ratio(cpu[side], base_cpu[side])
    return out


def _round_cpu(cpu: dict[str, float | None]) -> dict[str, float | None]:
    return {side: None if us is None else round(us, 3) for side, us in cpu.items()}


def _bases(variants: list[Variant]) -> dict[str, dict[str, Variant]]:
    """Per pattern, its raw and shoal best-effort variants (where measured)."""
    out: dict[str, dict[str, Variant]] = {}
    for v in variants:
        key = "raw" if v.spec.stack == "raw" else ("reliable" if v.spec.reliable else "be")
        out.setdefault(v.spec.pattern, {})[key] = v
    return out


def records(variants: list[Variant], opts: Options, version: str) -> list[dict[str, Any]]:
    """One JSON-ready record per variant (the ``--json`` lines)."""
    bases = _bases(variants)
    out = []
    for v in variants:
        b = bases[v.spec.pattern]
        spec = v.spec
        out.append({
            "pattern": spec.pattern,
            "pattern_name": PATTERN_NAMES[spec.pattern],
            "stack": spec.stack,
            "reliable": spec.reliable,
            "label": spec.label,
            "transport": opts.transport,
            "backend": opts.backend,
            "curve": spec.curve,
            "busy_poll": spec.busy_poll,
            "size": spec.size,
            "rounds": opts.rounds,
            "rate_target": spec.rate or None,
            "sent": v.sent,
            "received": v.received,
            "timed": v.timed,
            "lost": v.lost,
            "throughput": round(v.rate, 1),
            "throughput_rounds": [round(r, 1) for r in v.rates],
            "latency": v.latency_kind,
            "latency_saturated": (None if v.latency_kind is None
                                  else saturated(spec.pattern, spec.rate)),
            "latency_us": (None if (lat := v.latency_us()) is None
                           else {k: round(x, 2) for k, x in lat.items()}),
            "cpu_us": _round_cpu(v.cpu_us()),
            "cpu_us_rounds": {side: [round(us, 3) for us in v.cpu_rounds.get(side, [])]
                              for side in CPU_SIDES[spec.pattern]},
            "vs_raw": _compare(v, b.get("raw")) if spec.stack == "shoal" else None,
            "vs_best_effort": _compare(v, b.get("be")) if spec.reliable else None,
            "extra": v.extra,
            "shoal_version": version,
        })
    return out


def _fmt(x: float | None, width: int = 8) -> str:
    if x is None:
        return "-".rjust(width)
    if x >= 10_000:
        return f"{x:>{width},.0f}"
    return f"{x:>{width}.1f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _fmt_cpu(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def table(variants: list[Variant], opts: Options, out: Callable[[str], None]) -> None:
    """Print one table per pattern, latency in microseconds."""
    recs = records(variants, opts, "")
    by_pattern: dict[str, list[tuple[Variant, dict[str, Any]]]] = {}
    for v, r in zip(variants, recs, strict=True):
        by_pattern.setdefault(v.spec.pattern, []).append((v, r))
    for pattern, rows in by_pattern.items():
        first = rows[0][0]
        kind = next((v.latency_kind for v, _ in rows if v.latency_kind), None)
        amount = (f"{first.spec.seconds:g} s" if first.spec.seconds
                  else f"{first.spec.count:,} messages")
        rate = f", {first.spec.rate:,.0f}/s" if first.spec.rate else ""
        secured = " with CURVE" if first.spec.curve else ""
        busy = (f", shoal busy_poll={opts.busy_poll:g} s" if opts.busy_poll else "")
        loop = f", shoal on {opts.backend}" if opts.backend != "trio" else ""
        out(f"{PATTERN_NAMES[pattern]} over {opts.transport}{secured}, "
            f"{first.spec.size} B bodies, "
            f"{opts.rounds} round(s) x {amount}{rate}{busy}{loop}; latency in µs: "
            f"{latency_label(pattern, kind, first.spec.rate)}")
        if kind is not None and saturated(pattern, first.spec.rate):
            out(f"  {SATURATED_NOTE}")
        sides = CPU_SIDES[pattern]
        unit = "round trip" if pattern == "rr" else "message"
        out(f"  cpu: µs of process CPU time per {unit} at each end "
            f"({' and '.join(sides)}), the median round"
            + ("; not measured over inproc (one process holds both ends)"
               if opts.transport == "inproc" else ""))
        width = max(15, *(len(v.spec.label) for v, _ in rows))
        cpu_heads = "".join(f"cpu:{SHORT[side]}".rjust(10) for side in sides)
        out(f"  {'':<{width}}" + "".join(c.rjust(9) for c in COLUMNS)
            + f"{'msg/s':>11}{'lost':>7}{cpu_heads}   vs raw: p50   p99  msg/s  cpu")
        for v, r in rows:
            lat = r["latency_us"] or {}
            cells = "".join(" " + _fmt(lat.get(c)) for c in COLUMNS)
            cpu = "".join(_fmt_cpu(r["cpu_us"][side]).rjust(10) for side in sides)
            vs = r["vs_raw"]
            ratios = ("" if vs is None else
                      f"   {_fmt_ratio(vs['p50']):>9} {_fmt_ratio(vs['p99']):>5} "
                      f"{_fmt_ratio(vs['throughput']):>6} "
                      + "/".join(_fmt_ratio(vs[f'cpu_{side}']) for side in sides))
            out(f"  {v.spec.label:<{width}}{cells}{_fmt(v.rate, 11)}{v.lost:>7}{cpu}{ratios}")
        for _v, r in rows:
            vb = r["vs_best_effort"]
            if vb is not None:
                cpu = ", ".join(f"{side} {_fmt_ratio(vb[f'cpu_{side}'])}" for side in sides)
                out(f"  shoal reliable / shoal: p50 {_fmt_ratio(vb['p50'])}, "
                    f"throughput {_fmt_ratio(vb['throughput'])}, cpu {cpu}")
        out("")


def plot(variants: list[Variant], opts: Options, path: str) -> None:
    """Draw each pattern's latency percentile distribution, one line per variant."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'shoal[cli]'") from None
    shown = [p for p in opts.patterns
             if any(v.spec.pattern == p and v.hist is not None for v in variants)]
    if not shown:
        raise BenchError("nothing to plot: no latency was measured")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    # x: 1 / (1 - percentile), log scale, so the tail gets the room it deserves.
    ticks = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    for ax, pattern in zip(axes[0], shown, strict=True):
        for v in variants:
            if v.spec.pattern != pattern or v.hist is None:
                continue
            xs, ys = [], []
            for step in range(0, 501):
                p = 100.0 * (1 - 10 ** (-step / 100))
                xs.append(1 / (1 - p / 100))
                ys.append(v.hist.get_value_at_percentile(p) / 1e3)
            style = "--" if v.spec.stack == "raw" else "-"
            ax.plot(xs, ys, style, label=v.spec.label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1 / (1 - t / 100) for t in ticks])
        ax.set_xticklabels([f"{t:g}%" for t in ticks])
        kind = next(v.latency_kind for v in variants
                    if v.spec.pattern == pattern and v.latency_kind)
        paced = f", {opts.rate:,.0f}/s" if opts.rate else ""
        what = latency_label(pattern, kind, opts.rate)
        ax.set_title(f"{PATTERN_NAMES[pattern]}, {opts.transport}, "
                     f"{variants[0].spec.size} B{paced}\n{what}", fontsize=10)
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (µs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("shoal bench: latency by percentile, shoal beside raw pyzmq")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
