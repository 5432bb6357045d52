"""Training a segmentation network: every mode, per-pixel distillation, resume, eval, export."""

from __future__ import annotations

import json

import pytest
import torch
from seg_data import make_voc

from slimmable.checkpoint import load_checkpoint
from slimmable.cli import main
from slimmable.tasks import Classification, Segmentation
from slimmable.train import config_from_dict, train

SETTING = [[8, 2], [16, 2]]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc(root, [f"im{i}" for i in range(17)])  # 16 training images, 1 for validation
    return root


def config(voc, mode: str, **train_overrides):
    width = {"width_range": [0.25, 1.0]} if mode == "universal" else {"widths": [0.5, 1.0]}
    if mode == "individual":
        width = {"widths": [0.5]}
    return config_from_dict(
        {
            "model": {
                "name": "seg_fpn",
                **width,
                "kwargs": {
                    "backbone": "small_cnn",
                    "backbone_kwargs": {"setting": SETTING},
                    "channels": 16,
                    "image_size": 32,
                },
            },
            "data": {"name": "voc", "path": str(voc), "image_size": 32},
            "train": {
                "mode": mode,
                "optimizer": "adamw",
                "lr": 0.003,
                "epochs": 2,
                "batch_size": 4,  # 4 steps per epoch
                "progress": False,
                "threads": 1,
                **train_overrides,
            },
            "calibrate": {"images": 16},
            "eval": {"every": 1},
        }
    )


@pytest.mark.parametrize("mode", ["slimmable", "universal", "naive", "individual"])
def test_every_mode_trains_and_reports_miou_per_width(tmp_path, voc, mode) -> None:
    result = train(config(voc, mode), tmp_path)
    assert result.finished and result.task.name == "segmentation"
    report = json.loads((tmp_path / "eval.json").read_text())
    rows = report["widths"]
    widths = {"universal": 8, "individual": 1}.get(mode, 2)
    assert len(rows) == widths
    for row in rows:
        assert {"width", "miou", "pixel_acc", "macs"} <= set(row)
        assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["pixel_acc"] <= 1.0
    assert [r["macs"] for r in rows] == sorted(r["macs"] for r in rows)
    assert (tmp_path / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(epoch["eval"][0]) == {"width", "miou", "pixel_acc", "loss"}
    if mode == "universal":
        assert load_checkpoint(tmp_path / "checkpoint.pt")["calibrated"]


def test_segmentation_resumed_mid_epoch_is_bitwise_equal(tmp_path, voc) -> None:
    straight = train(config(voc, "universal"), tmp_path / "straight")
    first = train(config(voc, "universal"), tmp_path / "resumed", stop_after_steps=6)
    assert not first.finished
    resumed = train(config(voc, "universal"), tmp_path / "resumed", resume=True)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert straight.results == resumed.results


def test_eval_and_export_commands_on_a_segmentation_run(tmp_path, voc, capsys) -> None:
    run = tmp_path / "run"
    train(config(voc, "slimmable", epochs=1), run)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert [r["width"] for r in rows] == [0.5, 1.0] and "miou" in rows[0]
    assert main(["eval", str(run)]) == 0
    assert "mIoU" in capsys.readouterr().out
    out = tmp_path / "half.onnx"
    assert main(["export", str(run), "--width", "0.5", "--out", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["select", str(run), "--max-macs", "1G"]) == 0
    assert "mIoU" in capsys.readouterr().out
    png = tmp_path / "modes.png"
    assert main(["plot", str(run), "--out", str(png)]) == 0  # plots mIoU: no top-1 here
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["search", str(run), "--targets", "50%"]) == 2
    assert "scores classification accuracy" in capsys.readouterr().err


def test_per_pixel_distillation_leaves_out_ignored_pixels() -> None:
    task = Segmentation(num_classes=3, ignore_index=255)
    logits = torch.randn(2, 3, 4, 4)
    teacher = task.soft_target(torch.randn(2, 3, 4, 4))
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :2] = 255
    keep = target != 255
    per_pixel = -(teacher * logits.log_softmax(1)).sum(1)
    expected = per_pixel[keep].mean()
    torch.testing.assert_close(task.distill_loss(logits, teacher, target), expected)
    assert task.loss(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target, ignore_index=255).item()
    )
    # classification: the same soft cross-entropy, per image
    c = Classification()
    flat, soft = logits[:, :, 0, 0], teacher[:, :, 0, 0]
    torch.testing.assert_close(
        c.distill_loss(flat, soft, target[:, 0, 0]), -(soft * flat.log_softmax(1)).sum(1).mean()
    )


def test_a_mask_class_beyond_the_model_is_refused(tmp_path, voc) -> None:
    cfg = config(voc, "slimmable")
    cfg.model.num_classes = 2  # the masks hold classes 0..2
    with pytest.raises(ValueError, match="masks hold class 2, but the model has 2 classes"):
        train(cfg, tmp_path)
