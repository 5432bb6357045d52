"""Export of dense sub-networks: files that load without slimmable and compute the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from test_extract import S_WIDTHS, TinyShuffleNet, build

import slimmable
from slimmable.checkpoint import save_checkpoint
from slimmable.cli import main
from slimmable.export import export_subnet, load_exported
from slimmable.run import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


LOADER = r"""
import json, sys
sys.modules["slimmable"] = None  # any import of slimmable, direct or by unpickling, now fails
import numpy as np, torch
folder = sys.argv[1]
x = torch.from_numpy(np.load(folder + "/x.npy"))
out = {}
out["pt"] = torch.export.load(folder + "/net.pt2").module()(x)
out["torchscript"] = torch.jit.load(folder + "/net.ts")(x)
import onnxruntime
sess = onnxruntime.InferenceSession(folder + "/net.onnx", providers=["CPUExecutionProvider"])
out["onnx"] = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
for k, v in out.items():
    np.save(f"{folder}/out_{k}.npy", v.detach().numpy())
"""


def test_exported_files_load_and_run_without_slimmable(tmp_path):
    model = build(TinyShuffleNet, "s")  # channel shuffle reads x.shape: batch stays dynamic
    net = slimmable.extract_subnet(model, 0.5, fold_bn=True, input_size=16)
    for fmt, name in (("pt", "net.pt2"), ("torchscript", "net.ts"), ("onnx", "net.onnx")):
        export_subnet(net, tmp_path / name, fmt, input_size=16, metadata={"width": 0.5})
    x = torch.randn(5, 3, 16, 16)  # another batch size than the export's example
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        ref = model(x)
    for fmt in ("pt", "torchscript", "onnx"):
        out = torch.from_numpy(np.load(tmp_path / f"out_{fmt}.npy"))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=fmt)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_onnx_matches_in_onnxruntime_at_every_width(tmp_path):
    model = build(TinyShuffleNet, "s")
    x = torch.randn(2, 3, 16, 16)
    for w in (S_WIDTHS[0], S_WIDTHS[-1]):
        net = slimmable.extract_subnet(model, w, input_size=16)
        path = export_subnet(net, tmp_path / f"w{w}.onnx", "onnx", input_size=16)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad(), slimmable.set_width(model, w):
            ref = model(x)
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-5)
        assert len(onnx.load(str(path)).graph.initializer) > 0  # weights inside, one file


def test_export_refuses_slimmable_modules_and_bad_names(tmp_path):
    model = build(TinyShuffleNet, "s")
    with pytest.raises(ValueError, match="extract_subnet"):
        export_subnet(model, tmp_path / "m.onnx", "onnx", input_size=16)
    net = slimmable.extract_subnet(model, 1.0, input_size=16)
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_subnet(net, tmp_path / "m.pt", "pt", input_size=16)
    with pytest.raises(ValueError, match="format"):
        export_subnet(net, tmp_path / "m.bin", "tflite", input_size=16)
    assert list(tmp_path.iterdir()) == []


# ---- the command line --------------------------------------------------------------------------


def small_checkpoint(folder: Path, kind: str = "s") -> Path:
    torch.manual_seed(0)
    if kind == "s":
        spec = {"name": "s_small_cnn", "kwargs": {"num_classes": 10, "in_chans": 1}}
    else:
        spec = {"name": "us_small_cnn", "kwargs": {"num_classes": 10, "in_chans": 1}}
    model = slimmable.create_model(spec["name"], **spec["kwargs"])
    if kind == "us":
        batches = [torch.randn(16, 1, 8, 8) for _ in range(2)]
        slimmable.calibrate(model, batches, widths=[0.25, 0.5, 1.0])
    payload = {"model": spec, "state_dict": model.state_dict(), "input_size": [1, 8, 8]}
    return save_checkpoint(folder / "checkpoint.pt", payload)


def test_cli_export_onnx_with_folded_bn(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path)
    out = tmp_path / "deploy" / "half.onnx"
    assert main(["export", str(ckpt), "--width", "0.5", "--fold-bn", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "onnxruntime" in printed
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["slimmable.width"]) == 0.5 and meta["slimmable.fold_bn"] == "true"
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    model = load_model(ckpt)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        ref = model(x)
    torch.testing.assert_close(load_exported(out)(x), ref, rtol=1e-4, atol=1e-4)


def test_cli_export_nonuniform_map_from_json_file(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path)
    width_file = tmp_path / "width.json"
    width_file.write_text(json.dumps({"width": {"features.0": 0.25, "*": 0.75}}))
    out = tmp_path / "net.pt2"
    code = main(["export", str(ckpt), "--width", str(width_file), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as archive:
        names = [n for n in archive.namelist() if n.endswith("slimmable.json")]
        meta = json.loads(archive.read(names[0]))
    assert meta["width"] == {"features.0": 0.25, "*": 0.75} and meta["input_size"] == [1, 8, 8]
    net = torch.export.load(out).module()
    assert net.state_dict()["features.0.weight"].shape[0] == 8  # 32 channels at 0.25
    model = load_model(ckpt)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(), slimmable.set_width(model, {"features.0": 0.25, "*": 0.75}):
        torch.testing.assert_close(net(x), model(x))


def test_cli_export_uncalibrated_us_width_says_to_calibrate(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path, "us")
    out = tmp_path / "net.ts"
    code = main(["export", str(ckpt), "--width", "0.7", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "slimmable calibrate" in err and "0.25, 0.5, 1" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main(["export", str(ckpt), "--width", "0.5", "--out", str(out)]) == 0
    assert out.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width", "0.5", "--out", "x.pt"], ".pt2"),
        (["--width", "0.5", "--out", "x.bin"], "--format"),
        (["--width", "half", "--out", "x.onnx"], "not a comma-separated list"),
        (["--width", "0.6", "--out", "x.onnx"], "not one of"),
        (["--width", "0.5", "--out", "x.onnx", "--input-size", "a,b"], "--input-size"),
    ],
)
def test_cli_export_bad_input_is_one_line(tmp_path, capsys, argv, message):
    ckpt = small_checkpoint(tmp_path)
    assert main(["export", str(ckpt), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
