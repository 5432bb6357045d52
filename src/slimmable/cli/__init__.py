"""The ``slimmable`` command line: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``add_parser(subparsers)``, whose parser sets ``func(args) -> int``.
COMMANDS: list[str] = []
COMMANDS += ["train", "calibrate", "eval", "plot", "profile"]
COMMANDS += ["export", "select", "search", "serve"]

# Errors a user can fix; they print as one line instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimmable",
        description="Train once, run at any width: slimmable and universally slimmable networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"slimmable.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"slimmable {args.command}: error: {message}", file=sys.stderr)
        return 2
