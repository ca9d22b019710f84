"""The suite's tables, ratios to raw pyzmq and targets (information, never
assertions), from the rounds' figures: medians over rounds, each variant's spread.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import trio
import zmq

import shoal
from shoal.cli._bench._suite._common import (
    BEST_EFFORT,
    RELIABLE,
    TITLES,
    VARIANTS,
    WILDCARD_TARGET,
    Result,
    split_name,
    variant_name,
)
from shoal.cli._bench._suite._run import Config, Results


def measured(rows: list[Result]) -> list[Result]:
    return [r for r in rows if "failed" not in r and "unavailable" not in r]


def med(rows: list[Result], field: str) -> float:
    values = [r[field] for r in measured(rows) if r.get(field) is not None]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def fmt_rate(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.0f}"


def fmt_ratio(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}x"


def fmt_cpu(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}"


def fmt_size(size: int) -> str:
    if size >= 2**20 and not size % 2**20:
        return f"{size // 2**20} MiB"
    if size >= 2**10 and not size % 2**10:
        return f"{size // 2**10} KiB"
    return f"{size} B"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# The targets, printed as information (pass/fail), never asserted. Throughput of the
# best shoal best-effort variant over raw pyzmq's, by bench and body size:
TP_TARGETS = {("pp", 64): 0.6, ("ps", 64): 0.5, ("pp", 4096): 0.85, ("ps", 4096): 0.85,
              ("pp", 2**20): 0.9, ("ps", 2**20): 0.9}
RR_FD_TARGET = 1.15  # shoal p50 / trio FD p50, at most
RR_BUSY_TARGET = 1.2  # shoal busy-poll p50 / blocking pyzmq p50, at most
CPU_TARGETS = {("pp", 64): (0.7, 1.0)}  # CPU us per message, send and receive, at most
RELIABLE_TARGET = 0.6  # shoal reliable / best shoal best effort throughput, at least
# With more than one event loop (--backend):
RR_UVLOOP_TARGET = 1.1  # "shoal [uvloop]" p50 / "shoal" (trio) p50, at most
RR_ASYNCIO_TARGET = 1.0  # "shoal [asyncio]" p50 / pyzmq.asyncio p50, at most
TP_UVLOOP_TARGET = 1 / 1.1  # 64 B best effort msgs/s on uvloop / on trio, at least
TP_UVLOOP_SIZES = (64,)


class Targets:
    """The targets met so far in a summary: each a JSON-ready record."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def check(self, where: str, what: str, value: float, op: str, limit: float,
              unit: str = "x", **extra: Any) -> str:
        """Record ``value op limit`` as target ``where what`` (``where``: bench and
        size); return a table line that says how it went."""
        ok = (None if math.isnan(value)
              else value >= limit if op == ">=" else value <= limit)
        record = {"target": f"{where} {what}", "value": value, "op": op, "limit": limit,
                  "unit": unit, "verdict": verdict(ok), **extra}
        self.records.append(record)
        return f"{what} {self.shown(record)}: {verdict(ok)}"

    @staticmethod
    def shown(record: dict[str, Any]) -> str:
        """``0.62x (target >= 0.6x)`` or ``0.85 us (target <= 0.7 us)``."""
        if record["unit"] == "x":
            value, limit = fmt_ratio(record["value"]), f"{record['limit']:.3g}x"
        else:
            value = f"{fmt_cpu(record['value'])} {record['unit']}"
            limit = f"{record['limit']:.3g} {record['unit']}"
        return f"{value} (target {record['op']} {limit})"


def variant_row(bench: str, rows: list[Result]) -> Result:
    """A variant's medians over its rounds."""
    ok_rows = measured(rows)
    if bench == "rr":
        return {"p50_us": med(rows, "p50_us"), "p99_us": med(rows, "p99_us"),
                "p999_us": med(rows, "p999_us"), "rounds": len(ok_rows),
                "cpu_client_us": med(rows, "cpu_client_us"),
                "cpu_server_us": med(rows, "cpu_server_us"),
                "main_client_us": med(rows, "main_client_us"),
                "main_server_us": med(rows, "main_server_us")}
    return {"rate": med(rows, "rate"), "send_rate": med(rows, "send_rate"),
            "lost_total": sum(r["lost"] or 0 for r in ok_rows), "rounds": len(ok_rows),
            "body_ok": all(r.get("body_ok", False) for r in ok_rows),
            "cpu_send_us": med(rows, "cpu_send_us"), "cpu_recv_us": med(rows, "cpu_recv_us"),
            "main_send_us": med(rows, "main_send_us"),
            "main_recv_us": med(rows, "main_recv_us")}


def rr_line(size: int, variant: str, rows: list[Result], row: Result,
            width: int = 17) -> str:
    p50s = [r["p50_us"] for r in measured(rows)]
    spread = f"{min(p50s):.1f}..{max(p50s):.1f}" if p50s else "n/a"
    return (f"   {fmt_size(size):>7}  {variant:<{width}} {row['p50_us']:>8.1f} "
            f"{row['p99_us']:>8.1f} {row['p999_us']:>8.1f} {spread:>15} "
            f"{fmt_cpu(row['cpu_client_us']):>9} {fmt_cpu(row['cpu_server_us']):>7}"
            f"   main {fmt_cpu(row['main_client_us']):>6} {fmt_cpu(row['main_server_us']):>6}")


def tp_line(size: int, variant: str, count: int, rows: list[Result], row: Result,
            width: int = 17) -> str:
    rates = [r["rate"] for r in measured(rows) if not math.isnan(r["rate"])]
    spread = f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "n/a"
    note = ""
    if any(r.get("approx_end") for r in measured(rows)):
        note += "  (end time approximate: loss)"
    if not row["body_ok"]:
        note += "  (WRONG BODY SIZE)"
    return (f"   {fmt_size(size):>7}  {variant:<{width}} {count:>7} "
            f"{fmt_rate(row['rate']):>10} "
            f"{row['rate'] * size / 1e6:>7.1f} {spread:>21} {fmt_rate(row['send_rate']):>10} "
            f"{row['lost_total']:>5} {fmt_cpu(row['cpu_send_us']):>6} "
            f"{fmt_cpu(row['cpu_recv_us']):>6}   main {fmt_cpu(row['main_send_us']):>5} "
            f"{fmt_cpu(row['main_recv_us']):>5}{note}")


def rr_ratios(size: int, by: dict[str, Result], ratios: dict[str, Any], targets: Targets,
              out: Callable[[str], None], backends: list[str] | None = None) -> None:
    def p50(variant: str) -> float:
        return float(by.get(variant, {}).get("p50_us", math.nan))

    label = fmt_size(size)
    where = f"request/reply {label}"
    backends = backends or ["trio"]
    for backend in backends:
        shoal, reliable = (variant_name(v, backend) for v in ("shoal", "shoal reliable"))
        info = {f"{shoal}/pyzmq p50": p50(shoal) / p50("pyzmq"),
                f"{shoal}/pyzmq.asyncio p50": p50(shoal) / p50("pyzmq.asyncio")}
        if backend == "trio":
            info["trio FD/pyzmq p50"] = p50("trio FD") / p50("pyzmq")
        info[f"{reliable}/{shoal} p50"] = p50(reliable) / p50(shoal)
        ratios.update(info)
        out(f"   {label:>7}  ratio p50 " + ", ".join(
            f"{k.removesuffix(' p50')} {fmt_ratio(v)}" for k, v in info.items()))
    for backend in backends:
        busy = variant_name("shoal busy-poll", backend)
        checks = [(f"{busy}/pyzmq p50", p50(busy) / p50("pyzmq"), RR_BUSY_TARGET)]
        if backend == "trio":
            checks.insert(0, ("shoal/trio FD p50", p50("shoal") / p50("trio FD"),
                              RR_FD_TARGET))
        if backend == "uvloop" and "trio" in backends:
            checks.append(("shoal [uvloop]/shoal p50", p50("shoal [uvloop]") / p50("shoal"),
                           RR_UVLOOP_TARGET))
        if backend == "asyncio":
            checks.append(("shoal [asyncio]/pyzmq.asyncio p50",
                           p50("shoal [asyncio]") / p50("pyzmq.asyncio"), RR_ASYNCIO_TARGET))
        for name, value, limit in checks:
            ratios[name] = value
            out(f"   {label:>7}  " + targets.check(where, name, value, "<=", limit))


def tp_ratios(bench: str, size: int, by: dict[str, Result], ratios: dict[str, Any],
              targets: Targets, out: Callable[[str], None],
              backends: list[str] | None = None) -> None:
    def rate(variant: str) -> float:
        return float(by.get(variant, {}).get("rate", math.nan))

    label = fmt_size(size)
    raw = rate("pyzmq")
    where = f"{'push/pull' if bench == 'pp' else 'pub/sub'} {label}"
    backends = backends or ["trio"]
    best_of: dict[str, str] = {}
    for backend in backends:
        parts = []
        for variant in VARIANTS[bench][:-1]:
            name = variant_name(variant, backend)
            ratios[f"{name}/pyzmq"] = r = rate(name) / raw
            parts.append(f"{name}/pyzmq {fmt_ratio(r)}")
        out(f"   {label:>7}  ratio " + ", ".join(parts))
        best = tp_targets(bench, size, backend, rate, raw, by, ratios, targets, out)
        if best is not None:
            best_of[backend] = best
    if size in TP_UVLOOP_SIZES and {"trio", "uvloop"} <= set(backends):
        uv, tr = best_of.get("uvloop", "best effort [uvloop]"), best_of.get("trio", "trio's")
        out(f"   {label:>7}  " + targets.check(
            where, f"msgs/s {uv}/{tr}", rate(uv) / rate(tr), ">=", TP_UVLOOP_TARGET,
            variant=uv))


def tp_targets(bench: str, size: int, backend: str, rate: Callable[[str], float],
               raw: float, by: dict[str, Result], ratios: dict[str, Any], targets: Targets,
               out: Callable[[str], None]) -> str | None:
    """One event loop's throughput targets; return its best best-effort variant."""
    label = fmt_size(size)
    suffix = "" if backend == "trio" else f" [{backend}]"
    candidates = [n for v in BEST_EFFORT
                  if not math.isnan(rate(n := variant_name(v, backend)))]
    if not candidates:
        out(f"   {label:>7}  no shoal{suffix} best-effort figure: no target checked")
        return None
    best = max(candidates, key=rate)
    ratios["best shoal best effort" + suffix] = best
    where = f"{'push/pull' if bench == 'pp' else 'pub/sub'} {label}"
    if (bench, size) in TP_TARGETS:
        out(f"   {label:>7}  " + targets.check(
            where, f"msgs/s {best}/pyzmq", rate(best) / raw, ">=", TP_TARGETS[bench, size],
            variant=best))
    else:
        out(f"   {label:>7}  best shoal{suffix} best effort: {best} (no throughput target "
            f"at {label})")
    wildcard, batch = (variant_name(v, backend) for v in ("shoal wildcard", "shoal batch"))
    if bench == "ps" and size == 64 and not math.isnan(rate(wildcard)):
        out(f"   {label:>7}  " + targets.check(
            where, f"msgs/s {wildcard}/{batch}", rate(wildcard) / rate(batch), ">=",
            WILDCARD_TARGET, variant=wildcard))
    reliable = [n for v in RELIABLE if not math.isnan(rate(n := variant_name(v, backend)))]
    best_reliable = (max(reliable, key=rate) if reliable
                     else variant_name("shoal reliable", backend))
    out(f"   {label:>7}  " + targets.check(
        where, f"msgs/s {best_reliable}/{best}", rate(best_reliable) / rate(best), ">=",
        RELIABLE_TARGET, variant=best))
    if (bench, size) in CPU_TARGETS:
        send_max, recv_max = CPU_TARGETS[bench, size]
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} sending", by[best]["main_send_us"],
            "<=", send_max, unit="us", variant=best))
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} receiving",
            by[best]["main_recv_us"], "<=", recv_max, unit="us", variant=best))
    return best


def backends_note(backends: list[str]) -> str:
    """The line under a table's title that says which loop each shoal variant ran on."""
    others = " and ".join(b for b in backends if b != "trio")
    plain = "; the plain names run on trio" if "trio" in backends else ""
    return (f"   shoal variants on {others} are named 'variant [loop]' (both ends on "
            f"that loop){plain}")


def summarize(cfg: Config, results: Results, out: Callable[[str], None]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Print the tables; return the medians and ratios, and the targets' records."""
    summary: dict[str, Any] = {}
    targets = Targets()
    for bench in cfg.only:
        variants = cfg.names(bench)
        # 17 as ever on trio alone ("shoal reliable many" overflows it by two); wide
        # enough for "shoal reliable many [asyncio]" when other loops are shown.
        width = max([17, *(len(v) for v in variants if v != split_name(v)[0])])
        example = cfg.spec(bench, variants[0], cfg.sizes[0])
        out("")
        out(f"== {TITLES[bench]}")
        if bench == "rr":
            out(f"   {example.count} timed round trips per round after {example.warmup} "
                f"warmup, {cfg.rounds} rounds; microseconds, median over rounds;")
            for size in cfg.sizes[1:]:
                other = cfg.spec(bench, variants[0], size)
                if (other.count, other.warmup) != (example.count, example.warmup):
                    out(f"   {fmt_size(size)} bodies: {other.count} timed round trips "
                        f"after {other.warmup} warmup")
            out("   CPU us per round trip in each process (cpu: every thread, libzmq's "
                "I/O thread included; main: the thread that runs Python);")
            out(f"   shoal busy-poll: busy_poll={cfg.busy_poll:g} s on both ends")
            if cfg.backends != ["trio"]:
                out(backends_note(cfg.backends))
            out(f"   {'body':>7}  {'variant':<{width}} {'p50':>8} {'p99':>8} {'p99.9':>8} "
                f"{'p50 min..max':>15} {'cpu:client':>9} {'server':>7}")
        else:
            out(f"   messages/s counted by the receiver after warmup, {cfg.rounds} rounds, "
                f"median over rounds; high-water mark {example.hwm};")
            out("   CPU us per message in the sending and the receiving process (cpu: every "
                "thread, libzmq's I/O thread included; main: the thread that runs Python)")
            if cfg.backends != ["trio"]:
                out(backends_note(cfg.backends))
            out(f"   {'body':>7}  {'variant':<{width}} {'msgs':>7} {'msgs/s':>10} {'MB/s':>7} "
                f"{'min..max msgs/s':>21} {'sender/s':>10} {'lost':>5} {'cpu:send':>6} "
                f"{'recv':>6}")
        for size in cfg.sizes:
            by: dict[str, Result] = {}
            for variant in variants:
                rows = results.get((bench, size, variant), [])
                why = next((r["unavailable"] for r in rows if "unavailable" in r), None)
                if why is not None:
                    out(f"   {fmt_size(size):>7}  {variant:<{width}} {why}")
                    summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = {
                        "unavailable": why}
                    continue
                failed = len(rows) - len(measured(rows))
                note = f"  ({failed} failed)" if failed else ""
                row = variant_row(bench, rows)
                if bench == "rr":
                    out(rr_line(size, variant, rows, row, width) + note)
                else:
                    count = cfg.spec(bench, variant, size).count
                    out(tp_line(size, variant, count, rows, row, width) + note)
                by[variant] = row
                summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = row
            ratios = summary.setdefault(bench, {}).setdefault(str(size), {}).setdefault(
                "ratios", {})
            if bench == "rr":
                rr_ratios(size, by, ratios, targets, out, cfg.backends)
            else:
                tp_ratios(bench, size, by, ratios, targets, out, cfg.backends)
    out("")
    out("== targets (information, not assertions)")
    for t in targets.records:
        out(f"   {t['verdict']:<4}  {t['target']}: {Targets.shown(t)}")
    return summary, targets.records


def environment(backends: list[str] | None = None) -> dict[str, Any]:
    """Versions of what the figures depend on (AnyIO and uvloop when a shoal variant
    runs on asyncio or uvloop)."""
    env = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "trio": trio.__version__,
        "shoal": shoal.__version__,
    }
    others = [b for b in backends or [] if b != "trio"]
    if others:
        env["anyio"] = metadata.version("anyio")
    if "uvloop" in others:
        try:
            env["uvloop"] = metadata.version("uvloop")
        except metadata.PackageNotFoundError:
            env["uvloop"] = "not installed"
    return env
