"""torch.compile: one graph for every width of a US-Net, the same numbers as eager mode."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train_engine import tiny
from torch._dynamo.utils import counters

import slimmable
from slimmable.checkpoint import load_checkpoint
from slimmable.train import train
from slimmable.train.engine import cpu_threads


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    with cpu_threads(1):
        yield
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def run_both(model, compiled, reference, width, x) -> None:
    """Forward and backward at ``width`` compiled and eager; outputs and gradients agree."""
    for m in (model, reference):
        slimmable.set_width(m, width)
        m.zero_grad(set_to_none=True)
    out = compiled(x)
    out.square().mean().backward()
    expected = reference(x)
    expected.square().mean().backward()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_us_model_compiles_one_graph_for_every_width():
    torch.manual_seed(0)
    model = slimmable.create_model("us_small_cnn", num_classes=10, in_chans=1).train()
    reference = copy.deepcopy(model)
    compiled = slimmable.compile_slimmable(model)
    x = torch.randn(6, 1, 12, 12)
    knobs = list(slimmable.width_knobs(model))
    nonuniform = {knobs[0]: 0.3, knobs[1]: 0.9, "*": 0.55}
    for width in (1.0, 0.25, 0.37, 0.61, 0.8, nonuniform, 0.999, 1.0):
        run_both(model, compiled, reference, width, x)
    assert graphs() == 1


def test_s_model_compiles_one_graph_per_switch():
    torch.manual_seed(0)
    model = slimmable.create_model("s_small_cnn", num_classes=10, in_chans=1, widths=[0.25, 0.5, 1])
    model.train()
    reference = copy.deepcopy(model)
    compiled = slimmable.compile_slimmable(model)
    x = torch.randn(6, 1, 12, 12)
    for width in (1.0, 0.5, 0.25) * 2:
        run_both(model, compiled, reference, width, x)
    assert graphs() == 3  # each switch has its own BN; the second round reuses them


def test_compiled_training_matches_eager(tmp_path):
    overrides = {"train": {"mode": "universal", "num_sample_widths": 4, "inplace_distill": True}}
    ends = {}
    for compiled in (False, True):
        cfg = tiny(**overrides)
        cfg.train.compile = compiled
        train(cfg, tmp_path / str(compiled), stop_after_steps=3)
        ends[compiled] = load_checkpoint(tmp_path / str(compiled) / "checkpoint.pt")["state_dict"]
    assert graphs() == 1  # 12 forwards at 8 or more distinct widths
    assert ends[True].keys() == ends[False].keys()
    for key, value in ends[False].items():
        torch.testing.assert_close(ends[True][key], value, rtol=1e-3, atol=1e-4, msg=key)
