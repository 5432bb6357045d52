"""Arguments the commands share, spelled one way: which run, which data, which widths, progress."""

from __future__ import annotations

import argparse
import sys

from ..widthspec import SPEC_HELP


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_run_arguments(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """``CKPT`` (a checkpoint or run folder) or ``--official PATH --model NAME``; with ``data``,
    the data set options that replace the run's (the authors' weights carry none)."""
    p.add_argument(
        "checkpoint",
        nargs="?",
        metavar="RUN",
        help="checkpoint.pt written by `slimmable train`, or its run folder",
    )
    p.add_argument(
        "--official",
        metavar="PATH",
        help="the authors' released weights (their .pt or .pt.zip) instead of a checkpoint",
    )
    p.add_argument("--model", metavar="NAME", help="with --official: the zoo model they fit")
    p.add_argument(
        "--num-classes", type=positive_int, help="with --official: classes (default: the data's)"
    )
    if data:
        group = p.add_argument_group("data (default: the run's own)")
        group.add_argument("--data", metavar="NAME", help="data set: digits, imagefolder, ...")
        group.add_argument("--data-path", metavar="PATH", help="where the data set lives")
        group.add_argument(
            "--image-size", type=positive_int, help="input side in pixels (default: the run's)"
        )


def open_run(args: argparse.Namespace):
    """The :class:`slimmable.run.Run` the run arguments name."""
    from ..run import open_run as open_

    return open_(
        args.checkpoint,
        official=args.official,
        model=args.model,
        num_classes=args.num_classes,
        data=getattr(args, "data", None),
        data_path=getattr(args, "data_path", None),
        image_size=getattr(args, "image_size", None),
    )


def add_widths_argument(p: argparse.ArgumentParser, *, default: str, required: bool = False):
    p.add_argument(
        "--widths",
        nargs="+",
        required=required,
        metavar="SPEC",
        help=f"{SPEC_HELP} (default: {default})",
    )


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on in a terminal, off in logs and pipes)",
    )


def progress_enabled(args: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress``, else whether stderr is a terminal."""
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


def add_debug_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
