"""Every command block of the README runs as written, from a fresh folder, in order.

Training commands run with ``--set train.epochs=2`` appended (the rest of each command is as
written), through ``slimmable.cli.main`` in one process, so the whole README takes well under a
minute. Blocks marked
``<!-- readme-test: parse-only ... -->`` need what this machine lacks (ImageNet, GPUs, the
authors' files): their commands are parsed by the command line and their configs and ``--set``
overrides loaded, which catches a renamed flag, key or file. ``make demo`` / ``make test`` are
what the block beside them runs, so they are not run again here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PARSE_ONLY = "<!-- readme-test: parse-only"
SHORT = " --set train.epochs=2"  # the demo warms up for one epoch


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
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    """In order, in a fresh folder holding only configs/, through the command line's main."""
    from slimmable.cli import main

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ran = 0
    for parse_only, commands in blocks():
        for command in commands:
            if parse_only or command.startswith("make "):
                continue
            if command.startswith("slimmable train"):
                command += SHORT
            words = shlex.split(command)
            target = None
            if ">" in words:  # shell redirection of the output into a file
                words, target = words[: words.index(">")], words[words.index(">") + 1]
            code = main(_slimmable_args(shlex.join(words)))
            out, err = capsys.readouterr()
            assert code == 0, f"{command}\n{out}\n{err}"
            if target is not None:
                Path(target).write_text(out)
            ran += 1
    assert ran >= 12
    assert json.loads(Path("eval.json").read_text())["widths"]  # the redirected report


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Every ``python`` block of the README runs as written, in a fresh namespace."""
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(code) >= 2
    for block in code:
        exec(compile(block, "README.md", "exec"), {})
