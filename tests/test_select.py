"""Budget selector and latency measurement."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch
from test_export import small_checkpoint

import slimmable
from slimmable.checkpoint import load_checkpoint, save_checkpoint
from slimmable.cli import main
from slimmable.latency import interleaved_timings, latency_measure
from slimmable.select import eval_rows, parse_count

pytestmark = pytest.mark.usefixtures("one_thread")


EVAL = {
    "widths": [
        {"width": 0.25, "top1": 0.531, "top5": 0.77, "macs": 41_000_000},
        {"width": 0.5, "top1": 0.648, "top5": 0.86, "macs": 150_000_000},
        {"width": 0.75, "top1": 0.695, "top5": 0.89, "macs": 317_000_000},
        {"width": 1.0, "top1": 0.715, "top5": 0.90, "macs": 569_000_000},
    ]
}


@pytest.mark.parametrize(
    "text, value",
    [("150M", 150e6), ("1.2G", 1.2e9), ("300k", 3e5), ("5e8", 5e8), ("150 MMACs", 150e6),
     ("2.5g", 2.5e9), (41_000_000, 41e6), ("0.5T", 5e11), ("1200", 1200.0)],
)  # fmt: skip
def test_parse_count_human_units(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["150X", "", "M", "-5M", "0", "1,2G", "nan"])
def test_parse_count_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_count(text)


@pytest.mark.parametrize(
    "budget, width",
    [("569M", 1.0), ("568M", 0.75), ("317M", 0.75), ("1.2G", 1.0), ("150M", 0.5), (41e6, 0.25)],
)
def test_select_by_macs_picks_most_accurate_that_fits(budget, width):
    assert slimmable.select_width(EVAL, max_macs=budget)["width"] == width


def test_nothing_fits_names_the_cheapest():
    with pytest.raises(ValueError, match=r"cheapest, width 0\.25, costs 41M MACs"):
        slimmable.select_width(EVAL, max_macs="40M")


def test_select_prefers_accuracy_not_size():
    # a nonmonotone table (e.g. an undertrained width): the cheaper, better width wins
    rows = [dict(r) for r in EVAL["widths"]]
    rows[1]["top1"] = 0.70
    assert slimmable.select_width(rows, max_macs="400M")["width"] == 0.5
    rows[2]["top1"] = 0.70  # a tie goes to the cheaper one
    assert slimmable.select_width(rows, max_macs="400M")["width"] == 0.5
    assert slimmable.select_width(rows, max_macs="400M", metric="top5")["width"] == 0.75


def test_select_by_latency_and_both_budgets():
    latency = [
        {"width": 0.25, "latency_ms": 2.0},
        {"width": 0.5, "latency_ms": 4.0},
        {"width": 0.75, "latency_ms": 7.0},
        {"width": 1.0, "latency_ms": 11.0},
    ]
    pick = slimmable.select_width(EVAL, max_latency_ms=8, latency=latency)
    assert pick["width"] == 0.75 and pick["latency_ms"] == 7.0 and pick["macs"] == 317_000_000
    both = slimmable.select_width(EVAL, max_latency_ms=8, max_macs="200M", latency=latency)
    assert both["width"] == 0.5
    with pytest.raises(ValueError, match=r"max_latency_ms=1\.5: the cheapest, width 0\.25"):
        slimmable.select_width(EVAL, max_latency_ms=1.5, latency=latency)
    with pytest.raises(ValueError, match="no latency for width 1"):
        slimmable.select_width(EVAL, max_latency_ms=8, latency=latency[:3])
    with pytest.raises(ValueError, match="measure_latency"):
        slimmable.select_width(EVAL, max_latency_ms=8)
    with pytest.raises(ValueError, match="give a budget"):
        slimmable.select_width(EVAL)


def test_macs_from_a_profile_table_and_nonuniform_widths():
    mapped = {"features.0": 0.5, "*": 0.75}
    rows = [{"width": 0.5, "top1": 0.6}, {"width": mapped, "top1": 0.65}]
    with pytest.raises(ValueError, match="no MACs"):
        slimmable.select_width(rows, max_macs="1G")
    profile = [{"width": 0.5, "macs": 1e8, "params": 1}, {"width": dict(mapped), "macs": 2e8}]
    assert slimmable.select_width(rows, max_macs="250M", macs=profile)["width"] == mapped
    assert slimmable.select_width(rows, max_macs="150M", macs=profile)["width"] == 0.5


def test_eval_rows_accepts_what_eval_writes(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(EVAL))
    assert eval_rows(path) == EVAL["widths"]
    assert eval_rows(EVAL["widths"]) == EVAL["widths"]
    assert eval_rows([{"epoch": 1, **EVAL}, EVAL])[0]["width"] == 0.25
    with pytest.raises(ValueError, match="evaluation table"):
        eval_rows({"rows": []})
    with pytest.raises(FileNotFoundError, match="slimmable eval"):
        eval_rows(tmp_path / "missing.json")


# ---- latency -----------------------------------------------------------------------------------


def test_measure_latency_rows_and_restores_state():
    model = slimmable.create_model("us_small_cnn", num_classes=10, in_chans=1).train()
    slimmable.set_width(model, 0.5)
    torch.set_num_threads(2)  # the module fixture restores its own setting afterwards
    threads = torch.get_num_threads()
    rows = slimmable.measure_latency(
        model, 8, [0.25, 1.0], batch_size=2, warmup=1, repeats=3, threads=1
    )
    assert [r["width"] for r in rows] == [0.25, 1.0]
    for r in rows:
        assert r["threads"] == 1 and r["batch_size"] == 2 and r["repeats"] == 3
        assert 0 < r["min_ms"] <= r["latency_ms"] and r["p25_ms"] <= r["p75_ms"]
    # uncalibrated US widths can be timed; the model keeps its width, mode, BN policy, threads
    assert slimmable.get_width(model) == 0.5 and model.training
    assert torch.get_num_threads() == threads
    model.eval()
    with pytest.raises(RuntimeError, match="calibrat"), torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
    dense = slimmable.extract_subnet(slimmable.create_model("s_small_cnn", in_chans=1), 0.5)
    (row,) = slimmable.measure_latency(dense, (1, 8, 8), warmup=0, repeats=2)
    assert row["width"] is None and row["batch_size"] == 1


def test_latency_measure_is_a_profile_column():
    model = slimmable.create_model("s_small_cnn", in_chans=1).eval()
    measure = latency_measure((1, 8, 8), batch_size=2, warmup=0, repeats=2, threads=1)
    with slimmable.set_width(model, 0.5):
        entry = measure(model, 0.5)
        assert slimmable.get_width(model) == 0.5
    assert set(entry) == {"latency_ms"} and entry["latency_ms"] > 0


def test_interleaved_timings_go_through_every_order():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = interleaved_timings(fns, warmup=1, repeats=6)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    rounds = ["".join(calls[i : i + 3]) for i in range(3, len(calls), 3)]
    assert calls[:3] == list("abc")  # warm-up
    assert sorted(rounds) == ["abc", "acb", "bac", "bca", "cab", "cba"]  # every order once


FAULTS_AFTER_FREE = """
import resource, sys, torch
from slimmable.latency import keep_freed_memory

def faults_refilling(n=16 * 2**20):  # a 64 MB tensor, freed, then allocated and filled again
    torch.ones(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(n)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_refilling()
applied = keep_freed_memory()
# kept blocks are faulted in once, until the heap reaches its steady state
print(applied, default, min(faults_refilling() for _ in range(4)))
"""


def test_keep_freed_memory_stops_refaulting_activations():
    run = subprocess.run(
        [sys.executable, "-c", FAULTS_AFTER_FREE], capture_output=True, text=True, check=True
    )
    applied, default, kept = run.stdout.split()
    if applied == "False":  # only glibc has these settings
        assert platform.libc_ver()[0] != "glibc"
        return
    assert int(default) > 10_000  # 64 MB is 16k pages, unmapped on free and faulted in again
    assert int(kept) < int(default) // 10


# ---- the command line --------------------------------------------------------------------------


def checkpoint_with_eval(tmp_path):
    path = small_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt["eval"] = EVAL
    save_checkpoint(path, ckpt)
    return path


def test_cli_select_by_macs(tmp_path, capsys):
    ckpt = checkpoint_with_eval(tmp_path)
    assert main(["select", str(ckpt), "--max-macs", "320M"]) == 0
    assert capsys.readouterr().out.strip() == "selected: width 0.75, top-1 69.50%, 317M MACs"
    assert main(["select", str(ckpt), "--max-macs", "1.2G", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 1.0


def test_cli_select_from_eval_json_and_errors(tmp_path, capsys):
    table = tmp_path / "eval.json"
    table.write_text(json.dumps(EVAL))
    assert main(["select", str(table), "--max-macs", "150M"]) == 0
    assert "width 0.5," in capsys.readouterr().out
    assert main(["select", str(table), "--max-macs", "20M"]) == 2
    err = capsys.readouterr().err
    assert "cheapest, width 0.25, costs 41M MACs" in err and err.count("\n") == 1
    assert main(["select", str(table)]) == 2
    assert "--max-macs" in capsys.readouterr().err
    bare = small_checkpoint(tmp_path / "bare")
    assert main(["select", str(bare), "--max-macs", "1G"]) == 2
    assert "slimmable eval" in capsys.readouterr().err


def test_cli_select_by_measured_latency(tmp_path, capsys):
    ckpt = checkpoint_with_eval(tmp_path)
    # budgets far from any real time: what is measured must not decide the test
    argv = ["select", str(ckpt), "--max-latency-ms", "1e9", "--repeats", "2", "--json"]
    assert main(argv) == 0
    pick = json.loads(capsys.readouterr().out)
    assert pick["width"] == 1.0 and pick["latency_ms"] > 0
    assert main(["select", str(ckpt), "--max-latency-ms", "1e-9", "--repeats", "2"]) == 2
    err = capsys.readouterr().err
    assert "no width fits max_latency_ms=1e-09: the cheapest, width" in err and " ms" in err


def test_cli_profile_latency_column(capsys):
    argv = ["profile", "us_small_cnn", "--image-size", "8", "--latency", "--repeats", "2"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert [r["width"] for r in rows] == [1.0, 0.75, 0.5, 0.25]
    assert all(r["latency_ms"] > 0 and r["macs"] > 0 for r in rows)
    assert main(argv) == 0
    assert "latency_ms" in capsys.readouterr().out.splitlines()[1]


def test_macs_straight_from_the_profiler():
    model = slimmable.create_model("s_small_cnn", in_chans=1)
    mapped = {"features.0": 0.25, "*": 0.5}
    table = slimmable.profile(model, 8, [0.25, 0.5, mapped, 1.0])
    acc = [{"width": 0.25, "top1": 0.5}, {"width": 0.5, "top1": 0.7}]
    acc += [{"width": mapped, "top1": 0.69}, {"width": 1.0, "top1": 0.9}]
    costs = {row.width if row.width is not None else "map": row.macs for row in table.widths}
    assert costs[0.25] < costs["map"] < costs[0.5] < costs[1.0]
    pick = slimmable.select_width(acc, max_macs=costs["map"], macs=table)
    assert pick["width"] == mapped and pick["macs"] == costs["map"]
    as_json = table.to_dict("s_small_cnn")
    assert slimmable.select_width(acc, max_macs=costs[0.5], macs=as_json)["width"] == 0.5


def test_cli_select_counts_macs_when_the_table_has_none(tmp_path, capsys):
    path = small_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt["eval"] = {"widths": [{k: v for k, v in r.items() if k != "macs"} for r in EVAL["widths"]]}
    save_checkpoint(path, ckpt)
    model = slimmable.create_model("s_small_cnn", num_classes=10, in_chans=1)
    counted = {r.width: r.macs for r in slimmable.profile(model, (1, 8, 8)).widths}
    assert main(["select", str(path), "--max-macs", str(counted[0.5]), "--json"]) == 0
    pick = json.loads(capsys.readouterr().out)
    assert pick["width"] == 0.5 and pick["macs"] == counted[0.5]
