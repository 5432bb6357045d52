"""The switchable ONNX export: one file, every width once, the width as an input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_extract import TinyMobileNetV2, TinyResNet, TinyShuffleNet, build, calibrated

import slimmable
from slimmable.checkpoint import save_checkpoint
from slimmable.cli import main
from slimmable.export import load_exported
from slimmable.serve import load_backend
from slimmable.switchable import (
    ERROR_NODE,
    SwitchableSession,
    export_switchable,
    held_widths,
    load_switchable,
    verify_switchable,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "arch, kind",
    [(TinyMobileNetV2, "s"), (TinyShuffleNet, "s"), (TinyResNet, "us")],
    ids=["mobilenet_v2-s", "shufflenet-s", "resnet-us"],
)
def test_every_held_width_runs_in_onnxruntime_as_in_pytorch(tmp_path, arch, kind):
    """Depthwise, grouped, residual adds, concat, shuffle, S-BN and US-BN, at every width."""
    model = build(arch, kind)
    if kind == "us":
        calibrated(model, [0.25, 0.5, 1.0])
    assert held_widths(model) == ([0.35, 0.5, 0.75, 1.0] if kind == "s" else [0.25, 0.5, 1.0])
    # every held width (two of them for the slowest export: each width is one torch.onnx run)
    widths = [0.5, 1.0] if arch is TinyMobileNetV2 else None
    path = export_switchable(model, tmp_path / "m.onnx", widths, input_size=16, metadata={"x": 1})
    widths = widths or held_widths(model)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["slimmable.widths"]) == widths
    assert meta["slimmable.format"] == "switchable" and meta["slimmable.x"] == "1"
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["input", "width"]
    x = torch.randn(5, 3, 16, 16)  # another batch size than the export's example
    for w in widths:
        with torch.no_grad(), slimmable.set_width(model, w):
            ref = model(x)
        logits, used = sess.run(None, {"input": x.numpy(), "width": np.asarray(w, np.float32)})
        assert float(used) == pytest.approx(w)
        assert np.abs(logits - ref.numpy()).max() <= 1e-4 * max(1.0, ref.abs().max().item())
    # between held widths the file runs the widest one below; the loader refuses
    between = (widths[0] + widths[1]) / 2
    _, used = sess.run(None, {"input": x.numpy(), "width": np.asarray(between, np.float32)})
    assert float(used) == pytest.approx(widths[0])
    assert isinstance(load_exported(path), SwitchableSession)  # the package's one loader
    loaded = load_switchable(path)
    with pytest.raises(ValueError, match="is not held by m.onnx"):
        loaded(x, between)
    # below the smallest held width it fails, in a node that says so
    with pytest.raises(Exception, match=ERROR_NODE):
        sess.run(None, {"input": x.numpy(), "width": np.asarray(widths[0] / 2, np.float32)})


def test_uncalibrated_us_model_is_refused_with_the_fix(tmp_path):
    model = build(TinyResNet, "us")
    with pytest.raises(ValueError, match="slimmable calibrate CKPT --widths"):
        export_switchable(model, tmp_path / "m.onnx", input_size=16)
    calibrated(model, [0.5, 1.0])
    with pytest.raises(ValueError, match=r"width 0.25 has no calibrated BN statistics"):
        export_switchable(model, tmp_path / "m.onnx", [0.25, 1.0], input_size=16)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_all_widths_holds_the_weights_once(tmp_path, capsys):
    """The file is within 1.15x of the full-width export, not the sum of the widths."""
    torch.manual_seed(0)
    model = slimmable.create_model("s_resnet20", num_classes=10)
    ckpt = tmp_path / "ck.pt"
    save_checkpoint(
        ckpt,
        {
            "model": {"name": "s_resnet20", "kwargs": {"num_classes": 10}},
            "state_dict": model.state_dict(),
            "input_size": [3, 32, 32],
            "eval": [{"width": 1.0, "top1": 0.9}, {"width": 0.25, "top1": 0.7}],
        },
    )
    assert main(["export", str(ckpt), "--all-widths", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "widths 0.25, 0.5, 0.75, 1" in out and "verified at every width" in out
    assert main(["export", str(ckpt), "--width", "1.0", "--out", str(tmp_path / "full.onnx")]) == 0
    switchable, full = (tmp_path / "m.onnx").stat().st_size, (tmp_path / "full.onnx").stat().st_size
    assert switchable <= 1.15 * full, (switchable, full)
    card = load_switchable(tmp_path / "m.onnx").metadata["card"]
    assert [w["top1"] for w in card["widths"]] == [0.7, None, None, 0.9]
    assert [w["width"] for w in card["widths"]] == [0.25, 0.5, 0.75, 1.0]

    # slimmable serve runs the file as it is, with the checkpoint's facts from its metadata
    backend = load_backend(str(tmp_path / "m.onnx"))
    assert backend.card.top1_source == "checkpoint" and backend.card.input_size == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), slimmable.set_width(model.eval(), 0.5):
        ref = model(x).numpy()
    assert np.abs(backend.run(x.numpy(), 0.5) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    with pytest.raises(ValueError, match="not held"):
        backend.check_width(0.6)

    code = main(["export", str(ckpt), "--all-widths", "--out", str(tmp_path / "m.ts")])
    err = capsys.readouterr().err
    assert code == 2 and "--all-widths writes ONNX only" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["densenet", "inception", "unet"])
def test_converted_models_with_concatenations_switch_in_one_file(name, tmp_path):
    """A concatenation's consumers gather each part's first channels: the file does too."""
    import byom

    model, x = byom.build(name), torch.randn(2, *byom.INPUT)
    slimmable.convert(model, x, widths=[0.25, 0.5, 1.0])
    path = export_switchable(model, tmp_path / f"{name}.onnx", input_size=byom.INPUT)
    assert verify_switchable(model, path) < 1e-4  # every held width


def test_converted_channels_last_linears_are_refused_in_one_file(tmp_path):
    import byom

    model, x = byom.build("convnext"), torch.randn(2, *byom.INPUT)
    slimmable.convert(model, x, widths=[0.5, 1.0])
    with pytest.raises(ValueError, match="export each width on its own"):
        export_switchable(model, tmp_path / "c.onnx", input_size=byom.INPUT)
