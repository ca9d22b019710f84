"""The command line's parser and dispatch (``shoal.cli.main`` calls ``main`` here)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import shoal
from shoal.cli._bench._command import add_bench_command, run_bench
from shoal.cli._demo import add_demo_command, run_demo_command
from shoal.cli._doctor import add_doctor_command, run_doctor
from shoal.cli._keygen import add_keygen_command, run_keygen
from shoal.cli._talk import add_talk_commands, run_talk


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="shoal: brokerless peer-to-peer messaging over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_command(commands)
    add_talk_commands(commands)
    add_doctor_command(commands)
    add_bench_command(commands)
    add_keygen_command(commands)
    return parser


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"shoal: {record.levelname.lower()}: {super().format(record)}"


def configure_logging() -> None:
    """What the library logs at WARNING and above (items dropped at close, a peer
    ignored) reaches stderr as ``shoal: warning: ...`` lines. A program that set up
    logging itself keeps its own handlers."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_LineFormatter("%(message)s"))
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shoal`` console script; returns the exit status."""
    configure_logging()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        return run_demo_command(args, parser)

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.command == "bench":
        return run_bench(args, lambda line: print(line, flush=True), err)
    if args.command == "keygen":
        return run_keygen(args, lambda line: print(line, flush=True), err)
    if args.command == "doctor":
        return run_doctor(args, lambda line: print(line, flush=True), err)
    return run_talk(args, lambda line: print(line, flush=True), err)


if __name__ == "__main__":
    sys.exit(main())
