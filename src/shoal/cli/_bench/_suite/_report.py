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
            value, limit = fmt_ratio(record["value"]), f"{record['limit']:g}x"
        else:
            value = f"{fmt_cpu(record['value'])} {record['unit']}"
            limit = f"{record['limit']:g} {record['unit']}"
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


def rr_line(size: int, variant: str, rows: list[Result], row: Result) -> str:
    p50s = [r["p50_us"] for r in measured(rows)]
    spread = f"{min(p50s):.1f}..{max(p50s):.1f}" if p50s else "n/a"
    return (f"   {fmt_size(size):>7}  {variant:<17} {row['p50_us']:>8.1f} "
            f"{row['p99_us']:>8.1f} {row['p999_us']:>8.1f} {spread:>15} "
            f"{fmt_cpu(row['cpu_client_us']):>9} {fmt_cpu(row['cpu_server_us']):>7}"
            f"   main {fmt_cpu(row['main_client_us']):>6} {fmt_cpu(row['main_server_us']):>6}")


def tp_line(size: int, variant: str, count: int, rows: list[Result], row: Result) -> str:
    rates = [r["rate"] for r in measured(rows) if not math.isnan(r["rate"])]
    spread = f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "n/a"
    note = ""
    if any(r.get("approx_end") for r in measured(rows)):
        note += "  (end time approximate: loss)"
    if not row["body_ok"]:
        note += "  (WRONG BODY SIZE)"
    return (f"   {fmt_size(size):>7}  {variant:<17} {count:>7} {fmt_rate(row['rate']):>10} "
            f"{row['rate'] * size / 1e6:>7.1f} {spread:>21} {fmt_rate(row['send_rate']):>10} "
            f"{row['lost_total']:>5} {fmt_cpu(row['cpu_send_us']):>6} "
            f"{fmt_cpu(row['cpu_recv_us']):>6}   main {fmt_cpu(row['main_send_us']):>5} "
            f"{fmt_cpu(row['main_recv_us']):>5}{note}")


def rr_ratios(size: int, by: dict[str, Result], ratios: dict[str, Any], targets: Targets,
              out: Callable[[str], None]) -> None:
    def p50(variant: str) -> float:
        return float(by.get(variant, {}).get("p50_us", math.nan))

    label = fmt_size(size)
    info = {"shoal/pyzmq p50": p50("shoal") / p50("pyzmq"),
            "shoal/pyzmq.asyncio p50": p50("shoal") / p50("pyzmq.asyncio"),
            "trio FD/pyzmq p50": p50("trio FD") / p50("pyzmq"),
            "shoal reliable/shoal p50": p50("shoal reliable") / p50("shoal")}
    ratios.update(info)
    out(f"   {label:>7}  ratio p50 " + ", ".join(
        f"{k.removesuffix(' p50')} {fmt_ratio(v)}" for k, v in info.items()))
    for name, value, limit in (
            ("shoal/trio FD p50", p50("shoal") / p50("trio FD"), RR_FD_TARGET),
            ("shoal busy-poll/pyzmq p50", p50("shoal busy-poll") / p50("pyzmq"),
             RR_BUSY_TARGET)):
        ratios[name] = value
        out(f"   {label:>7}  " + targets.check(f"request/reply {label}", name, value, "<=",
                                              limit))


def tp_ratios(bench: str, size: int, by: dict[str, Result], ratios: dict[str, Any],
              targets: Targets, out: Callable[[str], None]) -> None:
    def rate(variant: str) -> float:
        return float(by.get(variant, {}).get("rate", math.nan))

    label = fmt_size(size)
    raw = rate("pyzmq")
    parts = []
    for variant in VARIANTS[bench][:-1]:
        ratios[f"{variant}/pyzmq"] = r = rate(variant) / raw
        parts.append(f"{variant}/pyzmq {fmt_ratio(r)}")
    out(f"   {label:>7}  ratio " + ", ".join(parts))
    candidates = [v for v in BEST_EFFORT if not math.isnan(rate(v))]
    if not candidates:
        out(f"   {label:>7}  no shoal best-effort figure: no target checked")
        return
    best = max(candidates, key=rate)
    ratios["best shoal best effort"] = best
    where = f"{'push/pull' if bench == 'pp' else 'pub/sub'} {label}"
    if (bench, size) in TP_TARGETS:
        out(f"   {label:>7}  " + targets.check(
            where, f"msgs/s {best}/pyzmq", rate(best) / raw, ">=", TP_TARGETS[bench, size],
            variant=best))
    else:
        out(f"   {label:>7}  best shoal best effort: {best} (no throughput target at "
            f"{label})")
    if bench == "ps" and size == 64 and not math.isnan(rate("shoal wildcard")):
        out(f"   {label:>7}  " + targets.check(
            where, "msgs/s shoal wildcard/shoal batch",
            rate("shoal wildcard") / rate("shoal batch"), ">=", WILDCARD_TARGET,
            variant="shoal wildcard"))
    reliable = [v for v in RELIABLE if not math.isnan(rate(v))]
    best_reliable = max(reliable, key=rate) if reliable else "shoal reliable"
    out(f"   {label:>7}  " + targets.check(
        where, f"msgs/s {best_reliable}/{best}", rate(best_reliable) / rate(best), ">=",
        RELIABLE_TARGET, variant=best))
    if (bench, size) in CPU_TARGETS:
        send_max, recv_max = CPU_TARGETS[bench, size]
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} sending", by[best]["main_send_us"],
            "<=",
            send_max, unit="us", variant=best))
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} receiving",
            by[best]["main_recv_us"], "<=",
            recv_max, unit="us", variant=best))


def summarize(cfg: Config, results: Results, out: Callable[[str], None]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Print the tables; return the medians and ratios, and the targets' records."""
    summary: dict[str, Any] = {}
    targets = Targets()
    for bench in cfg.only:
        variants = VARIANTS[bench]
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
            out(f"   {'body':>7}  {'variant':<17} {'p50':>8} {'p99':>8} {'p99.9':>8} "
                f"{'p50 min..max':>15} {'cpu:client':>9} {'server':>7}")
        else:
            out(f"   messages/s counted by the receiver after warmup, {cfg.rounds} rounds, "
                f"median over rounds; high-water mark {example.hwm};")
            out("   CPU us per message in the sending and the receiving process (cpu: every "
                "thread, libzmq's I/O thread included; main: the thread that runs Python)")
            out(f"   {'body':>7}  {'variant':<17} {'msgs':>7} {'msgs/s':>10} {'MB/s':>7} "
                f"{'min..max msgs/s':>21} {'sender/s':>10} {'lost':>5} {'cpu:send':>6} "
                f"{'recv':>6}")
        for size in cfg.sizes:
            by: dict[str, Result] = {}
            for variant in variants:
                rows = results.get((bench, size, variant), [])
                why = next((r["unavailable"] for r in rows if "unavailable" in r), None)
                if why is not None:
                    out(f"   {fmt_size(size):>7}  {variant:<17} {why}")
                    summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = {
                        "unavailable": why}
                    continue
                failed = len(rows) - len(measured(rows))
                note = f"  ({failed} failed)" if failed else ""
                row = variant_row(bench, rows)
                if bench == "rr":
                    out(rr_line(size, variant, rows, row) + note)
                else:
                    count = cfg.spec(bench, variant, size).count
                    out(tp_line(size, variant, count, rows, row) + note)
                by[variant] = row
                summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = row
            ratios = summary.setdefault(bench, {}).setdefault(str(size), {}).setdefault(
                "ratios", {})
            if bench == "rr":
                rr_ratios(size, by, ratios, targets, out)
            else:
                tp_ratios(bench, size, by, ratios, targets, out)
    out("")
    out("== targets (information, not assertions)")
    for t in targets.records:
        out(f"   {t['verdict']:<4}  {t['target']}: {Targets.shown(t)}")
    return summary, targets.records


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "trio": trio.__version__,
        "shoal": shoal.__version__,
    }
