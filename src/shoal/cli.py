"""The ``shoal`` command line. Uses the public API only.

    shoal demo [--seconds N]           nodes talking over loopback mDNS
    shoal peers [--once]               the shoal nodes on the network
    shoal pub CHANNEL TOPIC [BODY]     publish (BODY as JSON, or lines of stdin)
    shoal sub CHANNEL [--topic P]...   print publications
    shoal push CHANNEL [BODY] / shoal pull CHANNEL
    shoal req CHANNEL BODY / shoal reply CHANNEL --echo
    shoal doctor                       why a peer might be invisible
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

import shoal
from shoal._cli_doctor import add_doctor_command, run_doctor
from shoal._cli_talk import add_talk_commands, run_talk


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="shoal: brokerless peer-to-peer messaging over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="nodes that find each other over loopback mDNS and talk",
        description="Start seven nodes on 127.0.0.1 (a sensor publishing and handing out "
        "jobs, two subscribers, two workers, a calculator and its client) that find "
        "each other over mDNS; one worker leaves and returns. Prints what flows.",
        epilog="example: shoal demo --seconds 10",
    )
    demo.add_argument("--seconds", type=float, default=10.0,
                      help="how long to run (default: 10)")
    add_talk_commands(commands)
    add_doctor_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shoal`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        if not 0 < args.seconds <= 3600:
            parser.error("--seconds must be between 0 and 3600")
        from shoal._demo import run_demo

        def out(line: str) -> None:
            print(line, flush=True)

        try:
            trio.run(lambda: run_demo(seconds=args.seconds, out=out))
        except KeyboardInterrupt:
            return 130
        return 0
    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.command == "doctor":
        return run_doctor(args, lambda line: print(line, flush=True), err)
    return run_talk(args, lambda line: print(line, flush=True), err)


if __name__ == "__main__":
    sys.exit(main())
