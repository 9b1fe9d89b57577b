"""The ``geocanon`` command line: one sub-command per module in :mod:`geocanon.commands`.

Errors are printed as one line (``geocanon: error: ...``) with exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

#: sub-command modules; each defines ``register(subparsers)`` which sets ``func`` on its parser
COMMAND_MODULES = ("bench", "canonicalize", "check", "plot", "adapt")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands whose module is missing are skipped)."""
    parser = argparse.ArgumentParser(
        prog="geocanon",
        description="Exact learned canonicalization for SO(3), O(3), SE(3), E(3): benchmarks, tools and checks.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"geocanon.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"geocanon.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geocanon`` executable; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("geocanon: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for users; --debug for developers
        if args.debug:
            raise
        print(f"geocanon: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
