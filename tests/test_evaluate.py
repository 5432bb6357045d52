"""Per-width evaluation: accuracy against a by-hand count, MACs against the formula."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimmable import create_model, evaluate, set_width
from slimmable.evaluate import format_table, json_report
from slimmable.profile import count_macs as _macs
from slimmable.run import default_widths


def test_small_cnn_macs_follow_the_formula():
    model = create_model("us_small_cnn", num_classes=10, width_range=(0.25, 1.0))

    def expected(c1: int, c2: int, c3: int) -> int:  # 8x8 input, strides 1, 2, 2
        return 9 * (1 * c1 * 64 + c1 * c2 * 16 + c2 * c3 * 4) + c3 * 10

    assert _macs(model, (1, 8, 8), 1.0) == expected(32, 64, 128)
    assert _macs(model, (1, 8, 8), 0.5) == expected(16, 32, 64)
    assert _macs(model, (1, 8, 8), 0.25) == expected(8, 16, 32)


def test_evaluate_matches_a_hand_count():
    torch.manual_seed(0)
    model = create_model("s_small_cnn", widths=(0.5, 1.0), num_classes=10)
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    for w in (0.5, 1.0):  # BN statistics of random data, so that predictions vary
        with set_width(model, w):
            model(x)
    model.eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    results = evaluate(model, loader, [0.5, 1.0])
    for row in results:
        with torch.no_grad(), set_width(model, row["width"]):
            logits = model(x)
        top5 = logits.topk(5, 1).indices
        assert row["top1"] == int((logits.argmax(1) == y).sum()) / 50
        assert row["top5"] == int((top5 == y[:, None]).any(1).sum()) / 50
        assert 0 < row["top1"] < row["top5"] < 1
        expected = torch.nn.functional.cross_entropy(logits, y).item()
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
        assert row["macs"] == _macs(model, (1, 8, 8), row["width"])
    assert model.training is False
    report = json_report(results)
    assert [set(r) for r in report["widths"]] == [{"width", "top1", "top5", "macs"}] * 2
    assert "top-1" in format_table(results)


def test_default_widths():
    assert default_widths(create_model("s_small_cnn", widths=(0.5, 1.0))) == [0.5, 1.0]
    us = default_widths(create_model("us_small_cnn", width_range=(0.3, 1.0)))
    assert len(us) == 8 and us[0] == 0.3 and us[-1] == 1.0
