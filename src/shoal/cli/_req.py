"""``shoal req``: one request to one replier of a channel (``--hedge-after``: and to
a second one if the first is slow), or to every replier of it (``--all``).

It waits (up to ``--timeout``) until ``--expect`` repliers of the channel are known
(default 1). ``--all`` then sends the request to each replier known then and prints one line per
replier as the answers come: its reply, its error, or, at ``--within`` seconds, that
it is missing. Repliers are named by their node name (the id where the name is not
known). Exit status 1 when any replier failed or is missing (stderr says how many).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import trio

import shoal
from shoal.cli._show import dump, printable
from shoal.cli._stdin import UsageError
from shoal.patterns import Answer, AnswerStatus

__all__ = ["add_req_arguments", "check_req_args", "run_req"]

Out = Callable[[str], None]


def _hedge_after(value: str) -> float | str:
    """``--hedge-after``: seconds > 0, or a percentile ``p1``..``p99``."""
    if value[:1] == "p" and value[1:].isdigit() and 1 <= int(value[1:]) <= 99:
        return value
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(
            f"takes seconds (0 to 86400) or a percentile such as p95, not {value!r}")
    return seconds


def add_req_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``shoal req`` after the common ones."""
    p.add_argument("channel", help="the channel whose repliers answer")
    p.add_argument("body", help="the request, as JSON, e.g. '{\"a\": 1}' or '\"text\"'")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for a replier and its reply (default: 10)")
    p.add_argument("--retries", type=int, default=0,
                   help="send the request again (same id) this many times")
    p.add_argument("--hedge-after", type=_hedge_after, default=None,
                   metavar="SECONDS|pNN",
                   help="with no reply after SECONDS, send the request to another replier "
                   "too; the first answer wins (pNN: that percentile of this requester's "
                   "own round trips, which it has measured only after 20 of them, so a "
                   "single shoal req does not hedge with it)")
    p.add_argument("--all", action="store_true",
                   help="send the request to every replier of the channel and print each "
                   "one's answer (one line each), then the missing ones")
    p.add_argument("--within", type=float, default=None,
                   help="with --all: seconds to wait for the answers (default: 2)")
    p.add_argument("--expect", type=int, default=None,
                   help="wait (up to --timeout) until N repliers are known before sending "
                   "(default: 1)")


def check_req_args(args: argparse.Namespace) -> None:
    """The combinations ``shoal req`` refuses (before anything is opened)."""
    if not args.all and args.within is not None:
        raise UsageError("--within goes with --all")
    if args.all and (args.retries or args.hedge_after is not None):
        raise UsageError("--all sends the request once to every replier: drop --retries "
                         "and --hedge-after")
    if args.expect is not None and args.expect < 1:
        raise UsageError("--expect must be at least 1")


async def run_req(args: argparse.Namespace, body: Any, node: shoal.Node,
                  client: shoal.Requester, out: Out) -> None:
    """Send ``body`` through ``client`` as ``args`` say and print the answer(s)."""
    expect = 1 if args.expect is None else args.expect
    if not args.all:
        with trio.fail_after(args.timeout):
            await node.wait_for_peers(expect, channel=args.channel)
            reply = await client.request(
                body, retries=args.retries, hedge_after=args.hedge_after,
                retry_after=max(args.timeout / (args.retries + 1), 0.1))
        out(json.dumps({"reply": printable(reply)}, ensure_ascii=False, default=repr)
            if args.json else dump(reply))
        return
    with trio.fail_after(args.timeout):
        await node.wait_for_peers(expect, channel=args.channel)
    names = {peer.id: peer.name for peer in node.peers()}
    names[node.id] = args.name
    failed = missing = total = 0
    within = 2.0 if args.within is None else args.within
    async with aclosing(client.request_all(body, within=within)) as answers:
        async for answer in answers:
            total += 1
            failed += answer.status is AnswerStatus.FAILED
            missing += answer.status is AnswerStatus.MISSING
            out(_line(answer, names.get(answer.replier, answer.replier), args.json))
    if failed or missing:
        raise shoal.errors.ShoalError(
            f"{failed} of {total} repliers failed and {missing} did not answer within "
            f"{within:g} s")


def _line(answer: Answer, name: str, as_json: bool) -> str:
    """One replier's answer as a line: ``NAME: BODY``, ``NAME: error: TEXT``,
    ``NAME: missing: WHY``; with ``--json`` an object with ``replier`` (the id),
    ``name`` and ``reply``, ``error`` or ``missing``."""
    if as_json:
        record: dict[str, Any] = {"replier": answer.replier, "name": name}
        if answer.status is AnswerStatus.REPLIED:
            record["reply"] = printable(answer.body)
        elif answer.status is AnswerStatus.FAILED:
            record["error"] = answer.error
        else:
            record["missing"] = answer.error
        return json.dumps(record, ensure_ascii=False, default=repr)
    if answer.status is AnswerStatus.REPLIED:
        return f"{name}: {dump(answer.body)}"
    return f"{name}: {answer.status.value}: {answer.error}"
