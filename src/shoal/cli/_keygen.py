"""``shoal keygen``: make a CURVE key pair for a node, or show a key file's public key.

    shoal keygen PATH            write a new key pair to PATH (mode 0600), print the
                                 public key; refuses to replace PATH without --force
    shoal keygen --public PATH   print the public key of the key file at PATH

The public key is printed alone on one line (so ``$(shoal keygen --public k)``
works), or as one JSON object with ``--json``. Exit status: 0 done, 2 bad arguments,
1 failure (an existing file, a file others can read, a malformed file...), with one
line on stderr saying what to do. Never prints the secret key.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from shoal.security import SecurityError, generate_keypair, load_keypair

__all__ = ["add_keygen_command", "run_keygen"]

Out = Callable[[str], None]


def add_keygen_command(commands: Any) -> None:
    """Register ``keygen`` on the ``shoal`` parser's subparsers."""
    p = commands.add_parser(
        "keygen", help="make a CURVE key pair for a node",
        description="Write a new CURVE key pair to PATH (readable only by you) and print "
        "its public key, which peers list as trusted. With --public, print the public "
        "key of an existing key file instead.",
        epilog="example: shoal keygen ~/.config/shoal/node.key")
    p.add_argument("path", metavar="PATH", help="the key file")
    p.add_argument("--public", action="store_true",
                   help="print the public key of the existing key file PATH")
    p.add_argument("--force", action="store_true",
                   help="replace PATH if it exists (its key pair is lost)")
    p.add_argument("--json", action="store_true",
                   help='print {"path": ..., "public_key": ...} as one JSON line')


def run_keygen(args: argparse.Namespace, out: Out, err: Out) -> int:
    """Run ``shoal keygen`` with parsed ``args``; returns the exit status."""
    if not args.path:
        err("shoal keygen: PATH is empty; give the key file's path")
        return 2
    if args.public and args.force:
        err("shoal keygen: --force makes no sense with --public (nothing is written)")
        return 2
    try:
        if args.public:
            pair = load_keypair(args.path)
        else:
            pair = generate_keypair()
            pair.save(args.path, overwrite=args.force)
    except SecurityError as exc:
        err(f"shoal keygen: {exc}")
        return 1
    public = pair.public.decode()
    if args.json:
        out(json.dumps({"path": args.path, "public_key": public}))
    else:
        out(public)
    return 0
