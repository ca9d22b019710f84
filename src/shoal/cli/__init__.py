"""The ``shoal`` command line. Uses the public API only (``shoal``, ``shoal.patterns``,
``shoal.discovery``, ``shoal.errors``, ``shoal.security``) and its own modules; the
benchmarks (``_bench``) also open raw pyzmq sockets, as the baseline they measure.

    shoal demo [--seconds N] [--plain] nodes on loopback; a worker is killed, its jobs redelivered
    shoal peers [--once]               the shoal nodes on the network
    shoal pub CHANNEL TOPIC [BODY]     publish (BODY as JSON, or each line of stdin as it comes)
    shoal sub CHANNEL [--topic P]...   print publications
    shoal push CHANNEL [BODY] / shoal pull CHANNEL
    shoal req CHANNEL BODY / shoal reply CHANNEL [--exec CMD]  (echo by default)
    shoal doctor                       why a peer might be invisible
    shoal bench                        latency and throughput, beside raw pyzmq
    shoal keygen PATH                  a CURVE key pair for shoal.security
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shoal`` console script; returns the exit status. The
    command line runs on trio: without it installed, it says how to get it."""
    try:
        import trio  # noqa: F401
    except ImportError:
        import sys
        print("shoal: the command line runs on trio, which is not installed: "
              "pip install 'shoal[trio]'", file=sys.stderr)
        return 2
    from shoal.cli._main import main as run

    return run(argv)
