"""Segmentation: metrics, digit canvases, VOC folders, joint augmentation, the seg_fpn family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from seg_data import make_voc

import slimmable
from slimmable.data import build_datasets, eval_loader
from slimmable.data import segmentation as segdata
from slimmable.data.segmentation import IGNORE_INDEX, SegmentationArrays, digit_canvases
from slimmable.export import export_subnet, extract_subnet, load_exported, slimmable_leftovers
from slimmable.segmentation import (
    confusion_matrix,
    evaluate_segmentation,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- metrics ----------------------------------------------------------------------------------


def test_iou_and_pixel_accuracy_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    c = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    # the ignored pixel is left out; rows are the true classes
    assert c.tolist() == [[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    ious = iou_per_class(c)
    assert ious[0] == pytest.approx(1 / 3)  # tp 1, fp 1 (a 2 read as 0), fn 1
    assert ious[1] == pytest.approx(2 / 4)
    assert ious[2] == pytest.approx(1 / 2)
    assert ious[3] == 0.0  # predicted, never true: counts, with IoU 0
    assert mean_iou(c) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert pixel_accuracy(c) == pytest.approx(4 / 7)
    absent = confusion_matrix(pred.clamp(max=2), target, num_classes=5, ignore_index=255)
    assert iou_per_class(absent)[3:] == [None, None]  # neither true nor predicted: not scored


def test_a_label_beyond_the_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="class 7, outside 0..3"):
        confusion_matrix(torch.zeros(2, 2), torch.tensor([[0, 7], [1, 2]]), 4, 255)


# ---- digit canvases ---------------------------------------------------------------------------


def test_digit_canvases_are_fixed_and_label_the_ink() -> None:
    rng = np.random.default_rng(0)
    digits = rng.random((20, 28, 28)).astype(np.float32)
    labels = np.arange(20) % 10
    a = digit_canvases(digits, labels, 30, 32, seed=3)
    b = digit_canvases(digits, labels, 30, 32, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    images, masks = a
    assert images.shape == (30, 1, 32, 32) and masks.shape == (30, 32, 32)
    assert set(np.unique(masks)) <= set(range(11))
    assert (images[:, 0][masks > 0] > 0).all()  # labelled pixels carry ink
    assert (masks > 0).any(axis=(1, 2)).all()  # every canvas holds a digit
    with pytest.raises(ValueError, match="cannot hold"):
        digit_canvases(digits, labels, 1, 16, seed=0)


def test_train_and_test_canvases_come_from_disjoint_digits(monkeypatch) -> None:
    seen = []
    real = segdata.digit_canvases

    def spy(digits, labels, count, size, seed, **kw):
        seen.append(digits.reshape(len(digits), -1))
        return real(digits[:5], labels[:5], 4, size, seed, **kw)

    monkeypatch.setattr(segdata, "digit_canvases", spy)
    _, _, info = build_datasets("seg_digits")
    assert (info.task, info.num_classes, info.ignore_index) == ("segmentation", 11, IGNORE_INDEX)
    assert info.classes[0] == "background" and len(info.classes) == 11
    x_train, x_test = seen
    assert len(x_train) + len(x_test) == 1797
    shared = {r.tobytes() for r in x_train} & {r.tobytes() for r in x_test}
    duplicates = len(x_train) + len(x_test) - len({r.tobytes() for r in (*x_train, *x_test)})
    assert len(shared) <= duplicates  # only digits drawn identically twice in sklearn's set


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(1)
    images = torch.from_numpy((rng.random((16, 1, 12, 12)) > 0.6).astype(np.uint8) * 200)
    masks = (images[:, 0] > 0).to(torch.uint8) * 3  # the mask is the image's ink
    for fill in (0, IGNORE_INDEX):
        data = SegmentationArrays(
            images, masks, scale=1 / 255, mean=(0.0,), std=(1.0,), augment=True, pad=3,
            flip=True, fill=fill, seed=0,
        )  # fmt: skip
        moved = 0
        for x, m in data.__getitems__(list(range(16))):
            ink = x[0] > 0
            assert torch.equal(m == 3, ink)
            assert set(m.unique().tolist()) <= {0, 3, fill}
            moved += int(not torch.equal(ink, images[0, 0] > 0))
        assert moved > 0
    plain = SegmentationArrays(images, masks, scale=1 / 255, mean=(0.0,), std=(1.0,))
    x, m = plain[5]
    assert torch.equal(m, masks[5].long()) and m.dtype == torch.int64


# ---- VOC-style folders ------------------------------------------------------------------------


def test_voc_folder_loads_masks_and_augments_them_with_the_image(tmp_path) -> None:
    make_voc(tmp_path / "VOC2012", ["a", "b", "c"])
    train, test, info = build_datasets("voc", str(tmp_path), image_size=32, seed=0)
    assert (info.num_classes, info.in_chans, info.task) == (3, 3, "segmentation")
    assert (len(train), len(test)) == (2, 1)
    x, m = test[0]
    assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.int64
    assert (m[25:] == IGNORE_INDEX).all()  # letterbox: the padded bottom scores nothing
    assert set(m.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    for _ in range(6):  # augmented: where the mask says class 1, the pixels are red
        x, m = train[0]
        cls1 = m == 1
        if cls1.sum() > 4:
            assert (x[0][cls1] > x[1][cls1]).float().mean() > 0.9


def test_voc_errors_name_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation"):
        build_datasets("voc", str(tmp_path))
    make_voc(tmp_path / "rgb", ["a", "b"], rgb_mask=True)
    with pytest.raises(ValueError, match="one class index per pixel"):
        build_datasets("voc", str(tmp_path / "rgb"))
    with pytest.raises(ValueError, match="no data.path"):
        build_datasets("seg_digits", str(tmp_path))


# ---- the seg_fpn family -----------------------------------------------------------------------

SETTING = [(16, 2), (16, 1), (32, 2), (32, 1)]


def _seg(kind: str, **kw) -> torch.nn.Module:
    return slimmable.create_model(
        f"{kind}_seg_fpn", num_classes=5, in_chans=1, backbone="small_cnn",
        backbone_kwargs={"setting": SETTING}, channels=16, image_size=24, **kw,
    )  # fmt: skip


def test_seg_fpn_runs_at_every_width_with_a_slimming_head() -> None:
    model = _seg("s").eval()
    x = torch.randn(2, 1, 24, 24)
    assert model.default_cfg["input_size"] == (1, 24, 24)
    seen = []
    hook = model.classifier.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    for w in (0.25, 0.5, 0.75, 1.0):
        with slimmable.set_width(model, w), torch.no_grad():
            assert model(x).shape == (2, 5, 24, 24)
    hook.remove()
    assert seen == [8, 8, 16, 16]  # the head's channels follow the width (multiples of 8)
    macs = [r.macs for r in slimmable.profile(model, widths=[0.25, 0.5, 1.0]).widths]
    assert macs[0] < macs[1] < macs[2]
    assert ["neck.laterals.0.0", "neck.laterals.1.0"] in model.channel_groups()


def test_seg_fpn_extracts_and_exports_one_width(tmp_path) -> None:
    model = _seg("us")
    x = torch.randn(4, 1, 24, 24)
    slimmable.calibrate(model, [x], widths=[0.4])
    model.eval()
    with slimmable.set_width(model, 0.4), torch.no_grad():
        ref = model(x)
    net = extract_subnet(model, 0.4)
    assert slimmable_leftovers(net) == []
    path = export_subnet(net, tmp_path / "seg.onnx", "onnx")
    torch.testing.assert_close(load_exported(path)(x), ref, rtol=1e-4, atol=1e-4)


def test_evaluate_segmentation_scores_every_width() -> None:
    model = _seg("s")
    images = torch.randn(6, 1, 24, 24)
    masks = torch.randint(0, 5, (6, 24, 24))
    masks[0, :2] = IGNORE_INDEX
    data = list(zip(images, masks, strict=True))
    rows = evaluate_segmentation(
        model, eval_loader(data, 4), [0.25, 1.0], 5, ignore_index=IGNORE_INDEX
    )
    assert [r["width"] for r in rows] == [0.25, 1.0]
    model.eval()
    for r, w in zip(rows, (0.25, 1.0), strict=True):
        with slimmable.set_width(model, w), torch.no_grad():
            pred = model(images).argmax(1)
        c = confusion_matrix(pred, masks, 5, IGNORE_INDEX)
        assert r["miou"] == pytest.approx(mean_iou(c))
        assert r["pixel_acc"] == pytest.approx(pixel_accuracy(c))
        assert r["macs"] > 0 and len(r["iou"]) == 5
    assert rows[0]["macs"] < rows[1]["macs"]
