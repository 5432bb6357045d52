"""Loading the authors' released checkpoints (keys as their code names them).

The fixtures were written by running the authors' own model code (see official_data.py): their
state-dict keys and shapes, and the logits their models compute with a synthetic state dict.
"""

from __future__ import annotations

import io
import re
import zipfile

import pytest
import torch
from official_data import NUM_CLASSES, load_fixture, sample_input, synthetic_state_dict

import slimmable
from slimmable import calibrated_widths, create_model, load_official, set_width
from slimmable.layers.norm import width_key

pytestmark = pytest.mark.usefixtures("one_thread")


OFFICIAL = [
    "s_mobilenet_v1",
    "s_mobilenet_v2",
    "s_shufflenet",
    "s_resnet50",
    "us_mobilenet_v1",
    "us_mobilenet_v2",
]
US_LISTS = {
    "us_mobilenet_v1": [round(0.25 + 0.025 * i, 3) for i in range(31)],
    "us_mobilenet_v2": [round(0.35 + 0.025 * i, 3) for i in range(27)],
}
# Their S-ShuffleNet's widths are 0.5x/1x/2x of ShuffleNet; ours are fractions of 2x.
WIDTH_SCALE = {"s_shufflenet": 2.0}


def official(name: str) -> dict[str, torch.Tensor]:
    """The authors' checkpoint of ``name``, synthetic values, as train.py saves it."""
    return synthetic_state_dict(load_fixture(name)["keys"])


def as_saved(state: dict[str, torch.Tensor]) -> dict:
    """Wrapped as their train.py writes it: under "model", with DataParallel's prefix."""
    return {"model": {f"module.{k}": v for k, v in state.items()}}


def our_key(key: str) -> str:
    """Where one of their keys lives in our model (ShuffleNet's head_0 / a_0 / c_0 are lists)."""
    return re.sub(r"(head|a|c)_(\d+)\.", r"\1.\2.", key)


@pytest.mark.parametrize("name", OFFICIAL)
def test_every_tensor_lands_where_it_must(name):
    theirs = official(name)
    model = load_official(create_model(name, num_classes=NUM_CLASSES), as_saved(theirs))
    ours = model.state_dict()
    us_widths = US_LISTS.get(name, [])
    checked = 0
    for key, tensor in theirs.items():
        us = re.fullmatch(r"(.+)\.bn\.(\d+)\.(running_mean|running_var|num_batches_tracked)", key)
        if us and name.startswith("us_"):  # their per-width BN statistics: our calibrated rows
            prefix, i, leaf = us.group(1), int(us.group(2)), us.group(3)
            keys = ours[f"{prefix}.calib_keys"].tolist()
            row = keys.index(width_key(us_widths[i]))
            if leaf == "num_batches_tracked":
                assert ours[f"{prefix}.calib_batches"][row] == tensor
            else:
                calib = ours[f"{prefix}.calib_{leaf.removeprefix('running_')}"][row]
                assert torch.equal(calib[: len(tensor)], tensor), key
        elif our_key(key) in ours:
            assert torch.equal(ours[our_key(key)], tensor), key
        else:  # a BN the authors share across widths: it fills every private BN / width
            prefix, leaf = key.rsplit(".", 1)
            if name.startswith("s_"):
                copies = [
                    v for k, v in ours.items() if re.fullmatch(rf"{prefix}\.bn\.\d+\.{leaf}", k)
                ]
                assert len(copies) == 4
            else:
                stat = {"running_mean": "calib_mean", "running_var": "calib_var",
                        "num_batches_tracked": "calib_batches"}[leaf]  # fmt: skip
                copies = list(ours[f"{prefix}.{stat}"])
                assert len(copies) == len(us_widths)
            assert all(torch.equal(c, tensor) for c in copies), key
        checked += 1
    assert checked == len(theirs)
    if name.startswith("us_"):
        assert calibrated_widths(model) == sorted(us_widths)


@pytest.mark.parametrize("name", OFFICIAL)
def test_their_weights_compute_their_outputs(name):
    """Logits of their code (fixture) and ours, same weights, every recorded width, eval mode."""
    fixture = load_fixture(name)
    model = create_model(name, num_classes=NUM_CLASSES)
    load_official(model, synthetic_state_dict(fixture["keys"])).eval()
    assert fixture["outputs"]
    for width, logits in fixture["outputs"].items():
        with torch.no_grad(), set_width(model, float(width) / WIDTH_SCALE.get(name, 1.0)):
            out = model(sample_input())
        expected = torch.tensor(logits)
        # float32 sums over ~50 layers round differently with thread count and load: allow
        # 1e-5 of the logits' scale (a wrong weight or width moves them by the whole scale)
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * scale)


def test_files_as_released(tmp_path):
    """A .pt file, and their GitHub release format: a .zip holding the .pt."""
    theirs = official("s_mobilenet_v1")
    buffer = io.BytesIO()
    torch.save(as_saved(theirs), buffer)
    pt = tmp_path / "s_mobilenet_v1.pt"
    pt.write_bytes(buffer.getvalue())
    zipped = tmp_path / "s_mobilenet_v1.pt.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("s_mobilenet_v1_0.25_0.5_0.75_1.0.pt", buffer.getvalue())
    for path in (pt, zipped, str(zipped)):
        model = load_official(create_model("s_mobilenet_v1", num_classes=NUM_CLASSES), path)
        assert torch.equal(model.classifier[0].weight, theirs["classifier.0.weight"])


def test_exported():
    assert slimmable.load_official is load_official


# ---- strictness ---------------------------------------------------------------------------
def fresh(name: str = "s_mobilenet_v1", **kwargs) -> torch.nn.Module:
    return create_model(name, num_classes=kwargs.pop("num_classes", NUM_CLASSES), **kwargs)


def test_missing_key_is_named():
    theirs = official("s_mobilenet_v1")
    del theirs["features.3.body.4.bn.2.running_var"]
    with pytest.raises(ValueError, match=r"missing keys features\.3\.body\.4\.bn\.2\.running_var"):
        load_official(fresh(), theirs)


def test_unexpected_key_is_named():
    theirs = official("s_resnet50")
    theirs["features.99.body.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys features\.99\.body\.0\.weight"):
        load_official(fresh("s_resnet50"), theirs)


def test_misshaped_key_is_named():
    with pytest.raises(ValueError, match=r"mis-shaped classifier\.0\.weight \[10, 1024\]"):
        load_official(fresh(num_classes=1000), official("s_mobilenet_v1"))


def test_other_widths_do_not_fit():
    with pytest.raises(ValueError, match=r"unexpected keys .*bn\.2.*mis-shaped"):
        load_official(fresh(widths=[0.5, 1.0]), official("s_mobilenet_v1"))


def test_a_failed_load_changes_nothing():
    model = fresh("s_shufflenet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theirs = official("s_shufflenet")
    del theirs["head_1.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys head_1\.0\.weight"):
        load_official(model, theirs)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_us_checkpoint_saved_during_training():
    """Before calibration their width_mult_list is the range's two ends: bn.0 and bn.1."""
    theirs = official("us_mobilenet_v1")
    two = {}
    for key, tensor in theirs.items():
        m = re.fullmatch(r"(.+\.bn\.)(\d+)(\..+)", key)
        if m is None:
            two[key] = tensor
        elif m.group(2) in ("0", "30"):
            two[f"{m.group(1)}{0 if m.group(2) == '0' else 1}{m.group(3)}"] = tensor
    model = load_official(fresh("us_mobilenet_v1"), two)
    assert calibrated_widths(model) == [0.25, 1.0]
    stem_bn = model.features[0][1]
    assert torch.equal(stem_bn.running_mean, two["features.0.1.bn.1.running_mean"])


def test_us_widths_must_match_the_checkpoint():
    theirs = official("us_mobilenet_v2")
    with pytest.raises(ValueError, match=r"27 widths .* widths= lists 3"):
        load_official(fresh("us_mobilenet_v2"), theirs, widths=[0.35, 0.5, 1.0])
    odd = {k: v for k, v in theirs.items() if not re.search(r"\.bn\.(2[0-6])\.", k)}
    with pytest.raises(ValueError, match=r"20 widths .* pass the width_mult_list"):
        load_official(fresh("us_mobilenet_v2"), odd)
    widths = US_LISTS["us_mobilenet_v2"][:20]
    model = load_official(fresh("us_mobilenet_v2"), odd, widths=widths)
    assert calibrated_widths(model) == widths


@pytest.mark.parametrize(
    "name", ["s_resnet18", "us_resnet50", "s_resnet20", "s_mobilenet_v2_cifar"]
)
def test_models_without_a_release(name):
    with pytest.raises(ValueError, match="checkpoints fit only"):
        load_official(fresh(name), official("s_resnet50"))


def test_widths_are_for_us_checkpoints():
    with pytest.raises(ValueError, match="leave widths out"):
        load_official(fresh(), official("s_mobilenet_v1"), widths=[0.25, 0.5, 0.75, 1.0])


def test_models_without_a_mapping():
    with pytest.raises(ValueError, match="no mapping for the authors' checkpoints"):
        load_official(fresh("s_small_cnn"), {})


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_text("not torch")
    with pytest.raises(ValueError, match="cannot read"):
        load_official(fresh(), path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_official(fresh(), tmp_path / "absent.pt")
