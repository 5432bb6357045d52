"""The training config: strict keys, typed values, YAML overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimmable.cli import main
from slimmable.train import Config, config_from_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_demo_config_load():
    cfg = config_from_dict({})
    assert cfg == Config()
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.train.mode == "universal"
    assert demo.train.inplace_distill is True
    assert demo.data.name == "digits"
    assert 0.33 in demo.eval.widths and 0.61 in demo.eval.widths


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.lrr=0.1", "train.lr"),
        ("trian.epochs=3", "train.epochs"),
        ("model.width=[0.5]", "model.widths"),
        ("calibrate.image=100", "calibrate.images"),
    ],
)
def test_unknown_key_suggests_the_close_match(override, suggestion):
    with pytest.raises(ValueError, match=f"did you mean '{suggestion}'"):
        load_config(None, [override])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  batchsize: 8\n")
    with pytest.raises(ValueError, match=r"train\.batchsize.*did you mean 'train\.batch_size'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=ten", "train.epochs must be int"),
        ("train.epochs=2.5", "train.epochs must be int"),
        ("train.epochs=true", "train.epochs must be int"),
        ("train.inplace_distill=3", "train.inplace_distill must be bool"),
        ("model.widths=0.5", "model.widths must be a list"),
        ("model.widths=[0.5, x]", r"model.widths\[1\] must be float"),
        ("train.mode=universl", "did you mean 'universal'"),
        ("train.schedule=step", "train.schedule must be one of"),
        ("model.width_range=[0.25]", r"\[lo, hi\]"),
    ],
)
def test_mistyped_values_are_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.distill_temperature=0"], "distill_temperature must be positive"),
        (["train.distill_warmup_epochs=-1"], "distill_warmup_epochs must be 0 or more"),
        (
            ["train.inplace_distill=false", "train.distill_temperature=2"],
            "shapes in-place distillation, which is off: set train.inplace_distill=true",
        ),
        (
            ["train.inplace_distill=false", "train.distill_warmup_epochs=5"],
            "train.distill_warmup_epochs shapes in-place distillation, which is off",
        ),
        (
            ["train.mode=individual", "model.widths=[0.5]", "train.distill_temperature=2"],
            "train.mode=individual trains one width per step",
        ),
    ],
)
def test_distillation_options_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)
    defaults = load_config(None).train  # the defaults leave distillation as it always was
    assert (defaults.distill_temperature, defaults.distill_warmup_epochs) == (1.0, 0.0)


def test_set_values_parse_as_yaml():
    cfg = load_config(
        None,
        [
            "model.widths=[0.25,1.0]",
            "train.lr=1",  # an int widens to float
            "train.nesterov=false",
            "data.path=null",
            "model.kwargs.setting=[[16, 1], [32, 2]]",
            "eval.widths=[0.3, 0.6]",
        ],
    )
    assert cfg.model.widths == [0.25, 1.0]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.nesterov is False
    assert cfg.data.path is None
    assert cfg.model.kwargs == {"setting": [[16, 1], [32, 2]]}
    assert cfg.eval.widths == [0.3, 0.6]


def test_set_needs_key_equals_value():
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.mode=slimmable", "model.widths=[0.5, 1.0]", "train.lr=0.05"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_a_config_typo_in_one_line(tmp_path, capsys):
    code = main(["train", str(ROOT / "configs" / "demo.yaml"), "--set", "train.epoch=1",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "did you mean 'train.epochs'" in err
    assert not (tmp_path / "run").exists()
