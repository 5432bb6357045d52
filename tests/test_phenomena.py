"""The papers' phenomena on digits: why switchable BN and BN calibration exist.

- S-Nets paper: one shared BN for all widths ("naive") trains fine but collapses at test time
  at the narrow widths, because the shared running statistics fit no width; private BN per
  width (switchable BN) does not.
- US-Nets paper: the shared running statistics of a US model are wrong at a given width;
  post-training calibration of that width's statistics fixes it.

A five-layer small CNN makes the statistics mismatch compound as in deeper networks.
"""

from __future__ import annotations

import pytest

from slimmable import USBatchNorm2d, evaluate, set_uncalibrated
from slimmable.data import build_datasets
from slimmable.data.loader import eval_loader
from slimmable.train import config_from_dict, train

DEEPER = [[32, 1], [32, 1], [64, 2], [64, 1], [128, 2]]


def run(tmp_path, mode: str, **model):
    cfg = config_from_dict(
        {
            "model": {"name": "small_cnn", "kwargs": {"setting": DEEPER}, **model},
            "train": {
                "mode": mode,
                "epochs": 3,
                "inplace_distill": False,
                "progress": False,
                "threads": 1,
            },
            "calibrate": {"images": 512},
            "eval": {"every": 0, "widths": [0.25, 0.5, 1.0]},
        }
    )
    return train(cfg, tmp_path / mode)


def top1(result, width: float) -> float:
    return next(r["top1"] for r in result.results if r["width"] == width)


def test_naive_shared_bn_collapses_at_narrow_widths_switchable_bn_does_not(tmp_path):
    widths = {"widths": [0.25, 0.5, 0.75, 1.0]}
    naive = run(tmp_path, "naive", **widths)
    slim = run(tmp_path, "slimmable", **widths)
    for width in (0.25, 0.5, 1.0):  # switchable BN: every width works
        assert top1(slim, width) > 0.9
    # shared BN: the full width still mostly works, the narrow one collapses
    assert top1(naive, 1.0) > 0.5
    assert top1(naive, 0.25) < 0.6  # collapsed (chance is 0.1)
    assert top1(naive, 0.25) < top1(slim, 0.25) - 0.3


def test_us_model_needs_calibrated_statistics(tmp_path):
    result = run(tmp_path, "universal", width_range=[0.25, 1.0])
    model = result.model
    _, test_set, _ = build_datasets("digits")
    calibrated = {r["width"]: r["top1"] for r in result.results}  # the trainer calibrated these
    assert min(calibrated.values()) > 0.9

    for bn in model.modules():  # forget the post-statistics: shared running statistics only
        if isinstance(bn, USBatchNorm2d):
            bn.reset_calibration()
    with pytest.raises(RuntimeError, match="no calibrated BN statistics"):
        evaluate(model, eval_loader(test_set, 256), [0.25], macs=False)
    set_uncalibrated(model, "running")
    shared = evaluate(model, eval_loader(test_set, 256), [0.25, 0.5, 1.0], macs=False)
    narrow = shared[0]["top1"]
    assert narrow < calibrated[0.25] - 0.2  # clearly worse without calibration
    assert sum(r["top1"] for r in shared) < sum(calibrated.values()) - 0.2
