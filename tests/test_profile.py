"""The profiler: MACs and parameters per width, the papers' numbers, and `slimmable profile`."""

from __future__ import annotations

import json

import pytest
import torch
from official_data import NUM_CLASSES, load_fixture, synthetic_state_dict

import slimmable
from slimmable import create_model, get_width, set_width
from slimmable.checkpoint import save_checkpoint
from slimmable.cli import main
from slimmable.profile import profile

pytestmark = pytest.mark.usefixtures("one_thread")


# SPEC.md / the papers' tables at 224x224: (widths, MACs per width, parameters of the shared
# model), as printed. MobileNet v1 0.75x is the authors' code's 325M (the paper prints 317M).
# Our widths 0.25/0.5/1.0 of S-ShuffleNet are the paper's 0.5x/1x/2x.
PAPER = {
    "s_mobilenet_v1": ([1.0, 0.75, 0.5, 0.25], ["569M", "325M", "150M", "41M"], "4.3M"),
    "s_mobilenet_v2": ([1.0, 0.75, 0.5, 0.35], ["301M", "209M", "97M", "59M"], "3.6M"),
    "s_shufflenet": ([1.0, 0.5, 0.25], ["524M", "138M", "38M"], "5.5M"),
    "s_resnet50": ([1.0, 0.75, 0.5, 0.25], ["4.1G", "2.3G", "1.1G", "278M"], "25.6M"),
}

# The US-Nets' published spectra (MFLOPs, i.e. millions of MACs, per width; the authors' README).
US_MOBILENET_V1 = dict(
    zip(
        [round(1.0 - 0.025 * i, 3) for i in range(31)],
        [568, 543, 517, 490, 466, 443, 421, 389, 366, 345, 325, 306, 287, 267, 249, 232, 217,
         201, 177, 162, 149, 136, 124, 114, 100, 89, 80, 71, 64, 48, 41],
        strict=True,
    )
)  # fmt: skip
US_MOBILENET_V2 = dict(
    zip(
        [round(1.0 - 0.025 * i, 3) for i in range(27)],
        [300, 299, 284, 274, 269, 268, 254, 235, 222, 213, 209, 185, 173, 165, 161, 161, 151,
         150, 106, 100, 97, 96, 88, 88, 80, 80, 59],
        strict=True,
    )
)  # fmt: skip


def value(printed: str) -> tuple[float, float]:
    """A printed figure ("4.1G") as a number and half a unit of its last digit."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}[printed[-1]]
    digits = printed[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * scale, 0.5 * 10.0**-decimals * scale


def matches(measured: int, printed: str) -> bool:
    """Within 1% of the printed figure, or rounding to it (the papers print 2-3 digits)."""
    target, half_unit = value(printed)
    return abs(measured - target) <= max(0.01 * target, half_unit)


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # no weights: building and counting take milliseconds
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", list(PAPER))
def test_macs_and_params_match_the_paper(name):
    widths, macs, params = PAPER[name]
    result = profile(meta_model(name), 224, widths)
    assert result.input_shape == (3, 224, 224)
    for row, printed in zip(result.widths, macs, strict=True):
        assert matches(row.macs, printed), f"{name} at {row.width}: {row.macs:,} vs {printed}"
    assert matches(result.total_params, params), f"{result.total_params:,} vs {params}"
    # the full width runs every shared weight; the stored model adds the other widths' BNs
    assert result.widths[0].params < result.total_params
    assert result.total_params - result.widths[0].params < 0.02 * result.total_params


def test_s_mnasnet_widths_are_torchvisions_mnasnets():
    """torchvision's mnasnet0_5 / 0_75 / 1_0 (MnasNet-B1 at depth multipliers 0.5 / 0.75 / 1.0,
    the same rounding) as published with their weights: parameters exactly, and GFLOPS, which
    torchvision prints cut to two decimals (0.75 is 215.5M MACs, printed 0.21)."""
    published = {0.5: (2_218_512, 0.10), 0.75: (3_170_208, 0.21), 1.0: (4_383_312, 0.31)}
    result = profile(meta_model("s_mnasnet"), 224, list(published))
    for row in result.widths:
        params, gmacs = published[row.width]
        assert row.params == params, row.width
        assert int(row.macs / 1e7) == round(gmacs * 100), (row.width, row.macs)


def test_mobilenet_v1_075_is_the_authors_325m():
    (row,) = profile(meta_model("s_mobilenet_v1"), 224, [0.75]).widths
    assert abs(row.macs - 325e6) < 0.01 * 325e6  # not the paper's 317M


@pytest.mark.parametrize(
    ("name", "spectrum"),
    [("us_mobilenet_v1", US_MOBILENET_V1), ("us_mobilenet_v2", US_MOBILENET_V2)],
)
def test_us_spectrum_matches_the_published_one(name, spectrum):
    """Every width in steps of 0.025: the rounding of channels (make_divisible, expansion
    multiples) reproduces the authors' counts, jumps included."""
    result = profile(meta_model(name), 224, list(spectrum))
    for row in result.widths:
        published = spectrum[row.width] * 1e6
        assert abs(row.macs - published) <= 0.01 * published, (row.width, row.macs, published)


def test_counts_of_a_small_cnn_by_hand():
    """s_small_cnn: 3x3 convs 1->32 (s1), 32->64 (s2), 64->128 (s2), BN each, linear to 10."""
    model = create_model("s_small_cnn", num_classes=10)
    for w in (0.5, 1.0):
        c1, c2, c3 = int(32 * w), int(64 * w), int(128 * w)
        macs = 8 * 8 * c1 * 1 * 9 + 4 * 4 * c2 * c1 * 9 + 2 * 2 * c3 * c2 * 9 + c3 * 10
        params = (c1 * 9 + c2 * c1 * 9 + c3 * c2 * 9) + 2 * (c1 + c2 + c3) + c3 * 10 + 10
        (row,) = profile(model, 8, [w]).widths
        assert (row.macs, row.params) == (macs, params)


def test_meta_and_real_counts_agree():
    model = create_model("us_resnet20")
    meta = profile(model, 32, [0.25, 0.6, 1.0])
    real = profile(model, 32, [0.25, 0.6, 1.0], device="cpu")
    assert [(r.macs, r.params) for r in meta.widths] == [(r.macs, r.params) for r in real.widths]


def test_profile_leaves_the_model_alone():
    """An uncalibrated US-Net profiles at any width; weights, statistics, widths, mode stay."""
    model = create_model("us_mobilenet_v2_cifar").eval()
    set_width(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = profile(model)  # default: its own input size, bounds and quarter widths
    assert result.input_shape == (3, 32, 32)
    assert [r.width for r in result.widths] == [1.0, 0.75, 0.5, 0.35]
    assert all(a.macs > b.macs for a, b in zip(result.widths, result.widths[1:], strict=False))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert get_width(model) == 0.5 and not model.training


def test_nonuniform_width_map():
    model = create_model("us_resnet20")
    first_stage = {"features.0.0": 0.25, "features.1.body.0": 0.25}
    first_stage.update({f"features.{i}.body.3": 0.25 for i in (1, 2, 3)})
    lo, mixed, hi = profile(model, 32, [0.25, {**first_stage, "*": 1.0}, 1.0]).widths
    assert mixed.width is None and mixed.width_map["*"] == 1.0
    assert lo.macs < mixed.macs < hi.macs and lo.params < mixed.params < hi.params
    assert mixed.to_dict()["width_map"]["features.0.0"] == 0.25


def test_measures_run_on_the_model_at_each_width():
    model = create_model("s_small_cnn")
    seen = []

    def fake_latency(m, width):
        seen.append((width, get_width(m)))
        return {"latency_ms": 10.0 * width}

    result = profile(model, 8, [0.25, 1.0], measures=[fake_latency])
    assert seen == [(0.25, 0.25), (1.0, 1.0)]
    assert result.widths[0].to_dict()["latency_ms"] == 2.5
    assert get_width(model) == 1.0


def test_profile_is_exported():
    assert slimmable.profile is profile


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        profile(create_model("s_small_cnn"), (1, 2, 8, 8))


# ---- the command line -----------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["profile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_schema(capsys):
    code, out, _ = run_cli(capsys, "s_mobilenet_v1", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"model", "image_size", "total_params", "widths"}
    assert data["model"] == "s_mobilenet_v1" and data["image_size"] == 224
    assert isinstance(data["total_params"], int)
    assert [row["width"] for row in data["widths"]] == [1.0, 0.75, 0.5, 0.25]
    for row in data["widths"]:
        assert set(row) == {"width", "macs", "params"}
        assert isinstance(row["width"], float)
        assert isinstance(row["macs"], int) and isinstance(row["params"], int)
    expected = profile(create_model("s_mobilenet_v1"), 224).to_dict("s_mobilenet_v1")
    assert data == expected


def test_cli_widths_and_image_size(capsys):
    code, out, _ = run_cli(
        capsys, "us_mobilenet_v2", "--widths", "0.35,0.6", "--image-size", "160", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["image_size"] == 160
    assert [row["width"] for row in data["widths"]] == [0.35, 0.6]
    at_224 = profile(create_model("us_mobilenet_v2"), 224, [0.35]).widths[0].macs
    assert data["widths"][0]["macs"] < at_224


def test_cli_table(capsys):
    code, out, _ = run_cli(capsys, "s_shufflenet")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("s_shufflenet: input 3x224x224")
    assert lines[1].split() == ["width", "MACs", "params"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "0.5", "0.25"]
    assert lines[2].split()[1] == "523.4M"


def test_cli_nonuniform_map_from_json_and_file(capsys, tmp_path):
    width_map = {"features.1.body.0": 0.5, "*": 1.0}
    code, out, _ = run_cli(capsys, "s_resnet20", "--widths", json.dumps(width_map), "--json")
    (row,) = json.loads(out)["widths"]
    assert code == 0 and row["width"] is None and row["width_map"] == width_map
    path = tmp_path / "widths.json"
    path.write_text(json.dumps([0.5, width_map]))
    code, out, _ = run_cli(capsys, "s_resnet20", "--widths", str(path), "--json")
    rows = json.loads(out)["widths"]
    assert code == 0 and rows[0]["width"] == 0.5 and rows[1]["macs"] == row["macs"]


def test_cli_checkpoint(capsys, tmp_path):
    model = create_model("us_small_cnn", num_classes=10)
    path = save_checkpoint(
        tmp_path / "ckpt.pt",
        {"model": {"name": "us_small_cnn", "kwargs": {"num_classes": 10}},
         "state_dict": model.state_dict()},
    )  # fmt: skip
    code, out, _ = run_cli(capsys, str(path), "--json", "--widths", "0.25,1")
    data = json.loads(out)
    assert code == 0 and data["model"] == "us_small_cnn" and data["image_size"] == 8
    assert data["widths"][1]["params"] == data["total_params"]


def test_cli_official(capsys, tmp_path):
    path = tmp_path / "s_mobilenet_v2_0.35_0.5_0.75_1.0.pt"
    theirs = synthetic_state_dict(load_fixture("s_mobilenet_v2")["keys"])
    torch.save({"model": {f"module.{k}": v for k, v in theirs.items()}}, path)
    argv = ["s_mobilenet_v2", "--official", str(path), "--json"]
    code, out, _ = run_cli(capsys, *argv, "--num-classes", str(NUM_CLASSES))
    assert code == 0 and json.loads(out)["widths"][0]["width"] == 1.0
    code, _, err = run_cli(capsys, *argv)  # 1000 classes: the checkpoint has 10
    assert code == 2 and "mis-shaped classifier.0.weight" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["s_mobilenet_v3"], "unknown model 's_mobilenet_v3'; did you mean"),
        (["s_resnet20", "--widths", "0.3"], "not one of this slimmable model's widths"),
        (["s_resnet20", "--widths", "half"], "comma-separated list of numbers"),
        (["s_resnet20", "--widths", "{bad json"], "not valid JSON"),
        (["s_resnet20", "--widths", "missing.json"], "does not exist"),
        (["s_resnet20", "--widths", '{"features.99": 0.5}'], "which is no slimmable layer"),
        (["s_resnet20", "--official", "nowhere.pt"], "no checkpoint at nowhere.pt"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("slimmable profile: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
