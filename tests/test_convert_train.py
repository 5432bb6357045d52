"""A user's model from a factory (``model.name: package.module:function``) trains, evaluates,
calibrates, exports and searches like a zoo model, and loads back from its checkpoint."""

import sys
import textwrap

import pytest
import torch
import yaml

import slimmable
import slimmable.cli
from slimmable.config import config_from_dict

FACTORY = """
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, bias=False)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


def net(num_classes=10, width=32):
    return Net(num_classes, width)
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets:net"
    sys.modules.pop("usernets", None)


def config(factory, mode, **model):
    return {
        "model": {"name": factory, **model},
        "data": {"name": "digits"},
        "train": {"mode": mode, "epochs": 1, "batch_size": 128, "progress": False, "threads": 1},
        "calibrate": {"images": 256},
        "eval": {"widths": [0.25, 0.5, 1.0]} if mode == "universal" else {},
        "convert": {"fixed": []},
    }


@pytest.mark.parametrize("mode", ["universal", "slimmable", "naive", "individual", "incremental"])
def test_a_factory_model_trains_and_loads_back(factory, mode, tmp_path):
    model = {"widths": [0.5]} if mode == "individual" else {}
    result = slimmable.train(config(factory, mode, **model), tmp_path / mode)
    widths = {"universal": [0.25, 0.5, 1.0], "individual": [0.5]}.get(mode, [0.25, 0.5, 0.75, 1.0])
    assert [r["width"] for r in result.results] == widths
    model = slimmable.load_model(tmp_path / mode)
    assert isinstance(model.conv1, slimmable.layers.WidthMixin)
    x = torch.randn(4, 1, 8, 8)
    w = 0.5
    with torch.no_grad(), slimmable.set_width(model, w), slimmable.set_width(result.model, w):
        result.model.eval()
        torch.testing.assert_close(model(x), result.model(x))
    net = slimmable.extract_subnet(model, w)
    assert net.conv1.out_channels == 16


def test_every_command_works_on_a_factory_run(factory, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config(factory, "universal")
    cfg["data"]["holdout"] = 100
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = str(run / "checkpoint.pt")
    commands = [
        ["train", str(tmp_path / "cfg.yaml"), "--out", str(run)],
        ["eval", ckpt, "--widths", "0.25:1:0.25", "--json"],
        ["calibrate", ckpt, "--widths", "0.3,0.6"],
        ["profile", ckpt, "--widths", "0.3,0.6"],
        ["export", ckpt, "--width", "0.6", "--out", str(tmp_path / "w.onnx")],
        ["select", ckpt, "--max-macs", "300K"],
        ["search", ckpt, "--targets", "60%", "--out", str(tmp_path / "search.json")],
        ["calibrate", ckpt, "--widths", str(tmp_path / "search.json")],
        [
            "export",
            ckpt,
            "--width",
            f"{tmp_path / 'search.json'}",
            "--out",
            str(tmp_path / "s.pt2"),
        ],
    ]
    for argv in commands:
        assert slimmable.cli.main(argv) == 0, argv
    assert (tmp_path / "w.onnx").is_file() and (tmp_path / "s.pt2").is_file()


def test_a_factory_model_converts_as_the_convert_section_says(factory, tmp_path):
    cfg = config(factory, "universal", width_range=[0.5, 1.0])
    cfg["convert"] = {"divisor": 4, "fixed": ["conv3"]}
    result = slimmable.train(cfg | {"eval": {"widths": [0.5, 1.0]}}, tmp_path / "run")
    model = result.model
    assert not model.conv3.is_width_knob and model.conv2.divisor == 4
    assert slimmable.width_bounds(model) == (0.5, 1.0)


def test_factory_mistakes_are_one_line_errors(factory, tmp_path):
    with pytest.raises(ValueError, match="cannot import 'nosuchpackage.models'"):
        slimmable.train(config("nosuchpackage.models:net", "universal"), tmp_path / "a")
    with pytest.raises(ValueError, match="'usernets' has no 'nett'"):
        slimmable.train(config("usernets:nett", "universal"), tmp_path / "b")
    with pytest.raises(ValueError, match="outputs 7 classes, the data set has 10"):
        slimmable.train(config(factory, "universal", kwargs={"num_classes": 7}), tmp_path / "c")
    with pytest.raises(ValueError, match="convert: applies to models from a factory"):
        config_from_dict({"model": {"name": "us_small_cnn"}, "convert": {"divisor": 4}})
    with pytest.raises(ValueError, match="for a factory write usernets:net"):
        config_from_dict({"model": {"name": "usernets.net"}})
