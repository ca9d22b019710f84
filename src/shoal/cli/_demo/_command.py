"""``shoal demo`` on the command line: run the scenario, check what came of it, say so.

``run_demo`` runs the scenario under an overall deadline and prints the verdict: every
job processed exactly once, the jobs handed out again exactly those the killed worker
held, every request answered (the bad one with an error), every reading at its
subscribers without gaps. ``run_demo_command`` turns Ctrl-C into a cancellation (the
cleanup kills the workers) and the outcome into an exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

from shoal.cli._demo._panel import View, as_json, job_list
from shoal.cli._demo._scenario import Demo
from shoal.cli._demo._workers import JOB_MS, VICTIM, DemoFailed


def _verdict(summary: dict[str, Any]) -> tuple[list[tuple[str, str]], bool]:
    """What the summary shows, in words; and whether every check holds."""
    killed = summary["killed"] or {"name": VICTIM, "holding": []}
    lost = killed["holding"]
    redelivered = summary["redelivered"]
    jobs_ok = (not summary["missing"] and not summary["done_twice"]
               and summary["jobs_done"] == summary["jobs_sent"]
               and summary["handed_out_again"] == sorted(lost)
               and sorted(int(j) for j in redelivered) == sorted(lost))
    where = ", ".join(f"{j} -> {n}" for j, n in redelivered.items()) or "none"
    lines = []
    if jobs_ok:
        lines.append(("jobs", f"{summary['jobs_sent']} sent, {summary['jobs_done']} done: "
                      "every job was processed exactly once"))
    else:
        lines.append(("jobs", f"NOT as it should be: {summary['jobs_sent']} sent, "
                      f"{summary['jobs_done']} done, missing {job_list(summary['missing'])}, "
                      f"done twice {job_list(summary['done_twice'])}"))
    lines.append(("jobs", f"{killed['name']} was killed holding {job_list(lost)} unfinished; "
                  f"handed to another worker after the kill: {where} (jobs given out "
                  f"more than once: {job_list(summary['handed_out_again'])}; the pusher "
                  f"counted {summary['pusher_redelivered']} redelivered)"))
    failed = summary["failed_requests"]
    requests_ok = summary["replies"] == summary["requests"] > 0 and failed == 1
    lines.append(("requests", f"{summary['requests']} sent, {summary['replies']} answered, "
                  f"{failed} failed" + (" (the bad one)" if failed == 1
                                        else " (only the bad one should)")))
    pubsub_ok = summary["gaps"] == 0 and summary["received"] == summary["expected"]
    got = ", ".join(f"{n} {summary['received'][n]}/{e}"
                    for n, e in summary["expected"].items())
    lines.append(("pub/sub", f"{summary['published']} published; received: {got}; "
                  f"gaps {summary['gaps']}"))
    return lines, jobs_ok and requests_ok and pubsub_ok


async def run_demo(*, seconds: float = 20.0, out: Callable[[str], None] = print,
                   live: bool = False, job_ms: float = JOB_MS) -> dict[str, Any] | None:
    """Run the demo: about ``seconds`` of traffic once the nodes have found each other.

    ``out`` takes each line (live mode: each redraw, escape codes included). Returns
    the summary, with ``"ok"`` telling whether every check held; None if the output
    went away (a closed pipe). Raises ``DemoFailed`` (inside an ``ExceptionGroup``)
    if the demo cannot run. Every worker process is reaped before it returns or raises.
    """
    view = View(out, live=live, seconds=seconds)
    demo = Demo(seconds, view, job_ms=job_ms)
    try:
        with trio.CancelScope() as scope:
            view.on_gone = scope.cancel
            with trio.fail_after(seconds + 90):
                summary = await demo.run()
    except BaseException:
        view.close("stopped")
        raise
    view.close("done")
    if view.gone or scope.cancelled_caught:
        return None
    lines, ok = _verdict(summary)
    summary["ok"] = ok
    view.write("")
    for who, text in lines:
        view.write(f"[{who:<13}] {text}")
    if not live:
        view.write("summary        " + as_json(summary))
    return summary


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text}")
    return value


def add_demo_command(commands: Any) -> None:
    """Add ``shoal demo`` to the command line's sub-parsers."""
    demo = commands.add_parser(
        "demo",
        help="nodes on loopback that find each other, talk, and survive a killed worker",
        description="Start nine nodes on 127.0.0.1 that find each other over mDNS: an "
        "observer, a sensor publishing readings and handing out jobs (reliable "
        "push/pull), two subscribers, a calculator and its client, and three worker "
        "processes. One "
        "worker is killed (SIGKILL) while it holds jobs; they are redelivered to the "
        "others, and it comes back. On a terminal a live panel shows every node; "
        "otherwise one line per event.",
        epilog="example: shoal demo --seconds 10",
    )
    demo.add_argument("--seconds", type=_seconds, default=20.0,
                      help="how long the traffic runs once the nodes have found each "
                      "other (default: 20; start-up adds 2-4 s)")
    demo.add_argument("--plain", action="store_true",
                      help="one line per event, no live panel, even on a terminal")


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``shoal demo`` as parsed; return the exit status (130 after Ctrl-C)."""
    live = sys.stdout.isatty() and not args.plain

    def out(line: str) -> None:
        print(line, flush=True)

    async def main() -> int:
        interrupted = False
        failure = ""
        summary: dict[str, Any] | None = None
        # Ctrl-C cancels the demo (its cleanup kills the workers), rather than raising
        # KeyboardInterrupt wherever the signal lands.
        with trio.open_signal_receiver(signal.SIGINT) as signals, \
             trio.CancelScope() as demo_scope:
            async with trio.open_nursery() as nursery:
                async def on_interrupt() -> None:
                    nonlocal interrupted
                    async for _ in signals:  # later ones are swallowed while we clean up
                        interrupted = True
                        demo_scope.cancel()

                nursery.start_soon(on_interrupt)
                try:
                    summary = await run_demo(seconds=args.seconds, out=out, live=live)
                except* DemoFailed as group:
                    failure = str(_first_leaf(group))
                except* trio.TooSlowError:
                    failure = "the demo did not finish in time"
                finally:
                    nursery.cancel_scope.cancel()
        if interrupted:
            return 130
        if failure:
            print(f"shoal demo: {failure}", file=sys.stderr, flush=True)
            return 1
        return 0 if summary is not None and summary["ok"] else 1

    try:
        status = trio.run(main)
    except KeyboardInterrupt:
        status = 130
    if status == 130:
        print("shoal demo: interrupted", file=sys.stderr, flush=True)
    _quiet_closed_stdout()
    return status


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group`` that is not itself a group (nurseries nest)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _quiet_closed_stdout() -> None:
    """If the reader of stdout went away, point stdout at /dev/null so that Python's
    final flush does not complain."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
