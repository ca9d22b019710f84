"""The suite's driver: two worker processes (spawned once, restarted after a failure),
which variant runs on which side, and the rounds (variants interleaved: A B C, then
B C A...; a shoal variant on each chosen event loop is one more variant of the same
rotation). Every measurement has a deadline; a stuck worker dumps its stack first.
"""

from __future__ import annotations

import faulthandler
import math
import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from shoal.cli._bench._common import busy_poll_missing, interleaved
from shoal.cli._bench._suite._common import (
    MEASURE_TIMEOUT_S,
    MIN_RR_COUNT,
    MIN_TP_COUNT,
    STACK_DUMP_S,
    Result,
    Spec,
    backend_missing,
    main_figures,
    names,
    split_name,
)
from shoal.cli._bench._suite._rr import (
    aio_rr_client,
    aio_rr_server,
    fd_rr_client,
    fd_rr_server,
    raw_rr_client,
    raw_rr_server,
    shoal_rr_client,
    shoal_rr_server,
)
from shoal.cli._bench._suite._throughput import (
    raw_pp_recv,
    raw_pp_send,
    raw_ps_pub,
    raw_ps_sub,
    shoal_pp_recv,
    shoal_pp_send,
    shoal_ps_pub,
    shoal_ps_sub,
    shoal_rps_pub,
    shoal_rps_sub,
)
from shoal.patterns import Publisher, Pusher, ReliablePublisher, ReliablePusher

Role = Callable[[Spec, Connection, Connection], Result]

ROLES: dict[tuple[str, str], tuple[Role, Role]] = {
    # (bench, variant): (binding side, connecting side)
    ("rr", "shoal"): (shoal_rr_server, shoal_rr_client),
    ("rr", "shoal busy-poll"): (shoal_rr_server, shoal_rr_client),
    ("rr", "shoal reliable"): (shoal_rr_server, shoal_rr_client),
    ("rr", "trio FD"): (fd_rr_server, fd_rr_client),
    ("rr", "pyzmq"): (raw_rr_server, raw_rr_client),
    ("rr", "pyzmq.asyncio"): (aio_rr_server, aio_rr_client),
    ("pp", "shoal batch"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal send_many"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal async-for"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal nowait-send"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal reliable"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal reliable many"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "pyzmq"): (raw_pp_recv, raw_pp_send),
    ("ps", "shoal batch"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal wildcard"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal send_many"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal nowait-send"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal reliable"): (shoal_rps_pub, shoal_rps_sub),
    ("ps", "shoal reliable many"): (shoal_rps_pub, shoal_rps_sub),
    ("ps", "pyzmq"): (raw_ps_pub, raw_ps_sub),
}


def unavailable(bench: str, variant: str) -> str | None:
    """Why this shoal cannot run ``variant`` (an API it does not have), or None."""
    if variant == "shoal busy-poll" and busy_poll_missing(("open_requester",
                                                           "open_replier")):
        return "not available: open_requester/open_replier take no busy_poll="
    if variant == "shoal reliable many":
        if bench == "pp" and not hasattr(ReliablePusher, "send_many"):
            return "not available: the reliable pusher has no send_many()"
        if bench == "ps" and not hasattr(ReliablePublisher, "publish_many"):
            return "not available: the reliable publisher has no publish_many()"
    if variant == "shoal send_many":
        if bench == "pp" and not hasattr(Pusher, "send_many"):
            return "not available: Pusher has no send_many()"
        if bench == "ps" and not hasattr(Publisher, "publish_many"):
            return "not available: Publisher has no publish_many()"
    return None


def worker_main(ctrl: Connection, peer: Connection) -> None:
    """Run measurements sent over ``ctrl`` until told to stop (``None``)."""
    while True:
        try:
            cmd = ctrl.recv()
        except EOFError:
            return
        if cmd is None:
            return
        side, spec = cmd
        # If this side gets stuck, its Python stack goes to stderr before the driver
        # gives up on it (the driver then kills both workers and starts new ones).
        faulthandler.dump_traceback_later(STACK_DUMP_S)
        try:
            role = ROLES[spec.bench, spec.variant][side]
            ctrl.send(("result", main_figures(role(spec, ctrl, peer))))
        except BaseException:
            ctrl.send(("error", traceback.format_exc()))
        finally:
            faulthandler.cancel_dump_traceback_later()


class MeasurementFailed(Exception):
    pass


class Workers:
    """Two spawned worker processes joined by a pipe; restarted after any failure."""

    def __init__(self) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._ctrls: list[Connection] = []
        self.start()

    def start(self) -> None:
        peer_a, peer_b = self._mp.Pipe()
        for peer in (peer_a, peer_b):
            mine, theirs = self._mp.Pipe()
            proc = self._mp.Process(target=worker_main, args=(theirs, peer), daemon=True)
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._ctrls.append(mine)
        peer_a.close()
        peer_b.close()

    def stop(self) -> None:
        for ctrl in self._ctrls:
            try:
                ctrl.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3)
        for ctrl in self._ctrls:
            ctrl.close()
        self._procs.clear()
        self._ctrls.clear()

    def restart(self) -> None:
        for proc in self._procs:
            proc.kill()  # a failed measurement may have left a worker stuck
        self.stop()
        self.start()

    @staticmethod
    def _expect(ctrl: Connection, what: str, deadline: float, side: str) -> Any:
        if not ctrl.poll(max(0.0, deadline - time.monotonic())):
            raise MeasurementFailed(
                f"timed out after {MEASURE_TIMEOUT_S:.0f} s waiting for the {side} "
                f"side's {what} (its stack was dumped to stderr)")
        try:
            kind, value = ctrl.recv()
        except EOFError:
            raise MeasurementFailed("a worker died") from None
        if kind == "error":
            raise MeasurementFailed(str(value))
        if kind != what:
            raise MeasurementFailed(f"worker sent {kind!r}, expected {what!r}")
        return value

    def measure(self, spec: Spec) -> tuple[Result, Result]:
        """Run one measurement; return (binding side's result, connecting side's)."""
        deadline = time.monotonic() + MEASURE_TIMEOUT_S
        bind_ctrl, connect_ctrl = self._ctrls
        try:
            bind_ctrl.send((0, spec))
            endpoint = self._expect(bind_ctrl, "endpoint", deadline, "binding")
            if not str(endpoint).startswith("tcp://127.0.0.1:"):
                raise MeasurementFailed(f"unexpected endpoint {endpoint!r}")
            connect_ctrl.send((1, replace(spec, endpoint=endpoint)))
            res_connect = self._expect(connect_ctrl, "result", deadline, "connecting")
            res_bind = self._expect(bind_ctrl, "result", deadline, "binding")
        except MeasurementFailed:
            self.restart()
            raise
        return res_bind, res_connect


# ---------------------------------------------------------------------------------
# the driver


@dataclass
class Config:
    rounds: int
    sizes: list[int]
    only: list[str]
    rr_count: int
    rr_warmup: int
    tp_count: int
    tp_bytes: int
    tp_warmup: int
    pp_hwm: int
    ps_hwm: int
    busy_poll: float = 0.001
    rr_hwm: int = 1000
    backends: list[str] = field(default_factory=lambda: ["trio"])

    def names(self, bench: str) -> list[str]:
        """The variants of ``bench`` as shown: shoal's once per backend."""
        return names(bench, self.backends)

    def spec(self, bench: str, name: str, size: int) -> Spec:
        """The measurement of variant ``name`` (as shown: "shoal [asyncio]" is "shoal"
        on asyncio) at ``size``."""
        variant, backend = split_name(name)
        return replace(self._spec(bench, variant, size), backend=backend)

    def _spec(self, bench: str, variant: str, size: int) -> Spec:
        if bench == "rr":
            # Large bodies: fewer round trips (each carries the body both ways), and a
            # warmup in proportion.
            count = min(self.rr_count, max(MIN_RR_COUNT, self.tp_bytes // (2 * size)))
            warmup = (self.rr_warmup if count == self.rr_count
                      else min(self.rr_warmup, count // 4))
            busy = self.busy_poll if variant == "shoal busy-poll" else 0.0
            return Spec(bench, variant, size, count, warmup, self.rr_hwm, busy_poll=busy)
        count = min(self.tp_count, max(MIN_TP_COUNT, self.tp_bytes // size))
        warmup = max(1, min(self.tp_warmup, count // 4))
        hwm = self.pp_hwm if bench == "pp" else self.ps_hwm
        return Spec(bench, variant, size, count, warmup, hwm)


def one_round_result(spec: Spec, res_bind: Result, res_connect: Result) -> Result:
    """Merge both sides' figures into the one row a round contributes."""
    if spec.bench == "rr":
        return {**res_connect, "cpu_server_us": res_bind.get("cpu_server_us", math.nan),
                "main_server_us": res_bind.get("main_server_us", math.nan)}
    if spec.bench == "pp":
        recv, send = res_bind, res_connect
    else:
        send, recv = res_bind, res_connect
    out = {**recv, "sent": send["sent"], "send_rate": send["send_rate"],
           "cpu_send_us": send.get("cpu_send_us", math.nan),
           "main_send_us": send.get("main_send_us", math.nan)}
    out["lost"] = send["sent"] - recv["received"] if recv["received"] >= 0 else None
    return out


Results = dict[tuple[str, int, str], list[Result]]


def run_all(cfg: Config, log: Callable[[str], None]) -> Results:
    results: Results = {}
    runnable: dict[str, list[str]] = {}
    for bench in cfg.only:
        runnable[bench] = []
        for name in cfg.names(bench):
            variant, backend = split_name(name)
            why = unavailable(bench, variant) or backend_missing(backend)
            if why is None:
                runnable[bench].append(name)
                continue
            log(f"  {bench} {name}: {why}")
            for size in cfg.sizes:
                results[bench, size, name] = [{"unavailable": why}]
    workers = Workers()
    try:
        for rnd in range(cfg.rounds):
            t_round = time.monotonic()
            for bench in cfg.only:
                variants = runnable[bench]
                for size in cfg.sizes:
                    for name in interleaved(variants, rnd):
                        spec = cfg.spec(bench, name, size)
                        key = (bench, size, name)
                        try:
                            res_bind, res_connect = workers.measure(spec)
                        except MeasurementFailed as exc:
                            log(f"  ! {bench} {name} {size} B failed: {exc}")
                            results.setdefault(key, []).append({"failed": str(exc)})
                            continue
                        results.setdefault(key, []).append(
                            one_round_result(spec, res_bind, res_connect))
            log(f"round {rnd + 1}/{cfg.rounds} done in {time.monotonic() - t_round:.1f} s")
    finally:
        workers.stop()
    return results
