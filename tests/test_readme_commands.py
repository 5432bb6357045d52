"""Every command block of the README runs as written, from a fresh folder, in order.

Training commands run with ``--set train.epochs=2`` appended (the rest of each command is as
written), so the whole README takes about a minute. Blocks marked
``<!-- readme-test: parse-only ... -->`` need what this machine lacks (ImageNet, GPUs, the
authors' files): their commands are parsed by the command line and their configs and ``--set``
overrides loaded, which catches a renamed flag, key or file. ``make demo`` / ``make test`` are
what the block beside them runs, so they are not run again here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PARSE_ONLY = "<!-- readme-test: parse-only"
SHORT = " --set train.epochs=2"


def blocks() -> list[tuple[bool, list[str]]]:
    """``(parse_only, commands)`` of every bash block, continuation lines joined."""
    text = README.read_text()
    found = []
    for match in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
        before = text[: match.start()].rstrip().splitlines()[-1:]
        parse_only = bool(before) and before[0].startswith(PARSE_ONLY)
        joined = match.group(1).replace("\\\n", " ")
        commands = []
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.startswith("#") else ""
            if line:
                commands.append(line)
        found.append((parse_only, commands))
    return found


def _slimmable_args(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "torchrun":  # torchrun [options] -m slimmable ARGS
        words = words[words.index("slimmable") + 1 :]
    elif words[0] == "slimmable":
        words = words[1:]
    else:
        raise AssertionError(f"README command is neither slimmable nor torchrun: {command}")
    return [w for w in words if w != "\\"]


def test_readme_has_command_blocks():
    found = blocks()
    assert sum(len(c) for _, c in found) >= 15
    assert any(p for p, _ in found) and any(not p for p, _ in found)


def test_parse_only_blocks_parse():
    from slimmable.cli import build_parser
    from slimmable.config import load_config

    parser = build_parser()
    for parse_only, commands in blocks():
        if not parse_only:
            continue
        for command in commands:
            args = parser.parse_args(_slimmable_args(command))
            if args.command == "train":
                load_config(ROOT / args.config, args.overrides)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "slimmable").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m slimmable "$@"\n')
    (shim / "slimmable").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    ran = 0
    for parse_only, commands in blocks():
        for command in commands:
            if parse_only or command.startswith("make "):
                continue
            if command.startswith("slimmable train"):
                command += SHORT
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            ran += 1
    assert ran >= 12
