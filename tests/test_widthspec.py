"""One reader of width specifications for every command and the Python API."""

from __future__ import annotations

import json

import pytest
import torch

import slimmable
from slimmable.cli import main
from slimmable.search import SearchResult, TargetResult
from slimmable.widthspec import as_width, parse_width, parse_widths

MAP = {"features.0": 0.25, "*": 0.5}


def search_file(tmp_path):
    results = [
        TargetResult("50%", 300, 290, {"a": 8}, {"features.0": 0.25, "*": 1.0}, 0.9, 0.3, 4),
        TargetResult("25%", 150, 140, {"a": 8}, {"features.0": 0.25, "*": 0.5}, 0.8, 0.5, 9),
    ]
    head = ("us_small_cnn", {}, [1, 8, 8], 8, "accuracy", False, 64, 600, 100, [])
    found = SearchResult(*head, results)
    return found.save(tmp_path / "search.json")


def test_lists_grids_and_repeats():
    assert parse_widths("0.5,0.25,1") == [0.5, 0.25, 1.0]  # the order given
    assert parse_widths("0.5 0.25") == [0.5, 0.25]
    assert parse_widths(["0.25:1.0:0.25", "0.33", "0.5"]) == [0.25, 0.5, 0.75, 1.0, 0.33]
    grid = parse_widths("0.25:1.0:0.025")
    assert len(grid) == 31 and grid[0] == 0.25 and grid[-1] == 1.0 and grid[3] == 0.325
    assert parse_widths([0.5, MAP, 0.5, dict(MAP)]) == [0.5, MAP]


def test_maps_inline_in_files_and_search_results(tmp_path):
    assert parse_widths(json.dumps(MAP)) == [MAP]
    assert parse_widths(json.dumps([0.5, MAP])) == [0.5, MAP]
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    (tmp_path / "widths.yaml").write_text("- 0.25\n- {features.0: 0.25, '*': 0.5}\n")
    assert parse_widths(str(tmp_path / "map.json")) == [MAP]
    assert parse_widths(str(tmp_path / "widths.yaml")) == [0.25, MAP]
    assert parse_widths(json.dumps({"width": 0.5})) == [0.5]  # a record with a width
    path = search_file(tmp_path)
    both = parse_widths(str(path))
    assert both == [{"features.0": 0.25, "*": 1.0}, {"features.0": 0.25, "*": 0.5}]
    assert parse_widths(f"{path}@25%") == [both[1]]
    assert parse_width(f"{path}@50%") == both[0]
    assert parse_width("0.5") == 0.5 and parse_width(MAP) == MAP


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a", "not a comma-separated list"),
        ("1:0:0.1", "a grid is lo:hi:step"),
        ("0.2:1:0", "a grid is lo:hi:step"),
        ("", "no widths given"),
        ("{bad", "not valid JSON"),
        ("missing.json", "does not exist"),
        ("-0.5", "positive"),
        ("nan", "positive"),
        ('{"features.0": "x"}', "not a width"),
        ('{"features.0": true}', "not a width"),
    ],
)
def test_bad_specifications_say_what_to_write(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        parse_widths(spec)


def test_one_width_and_search_targets(tmp_path):
    path = search_file(tmp_path)
    with pytest.raises(ValueError, match="expected one width"):
        parse_width(str(path))
    with pytest.raises(ValueError, match="no result for target 10%"):
        parse_widths(f"{path}@10%")
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    with pytest.raises(ValueError, match="not a search result"):
        parse_widths(f"{tmp_path / 'map.json'}@50%")
    with pytest.raises(ValueError, match="not the string"):
        as_width("abc")
    with pytest.raises(ValueError, match="not a width"):
        as_width(True)


def test_the_python_api_takes_specifications_too():
    model = slimmable.create_model("us_small_cnn", num_classes=10, in_chans=1)
    rows = slimmable.profile(model, 8, "0.25:1:0.25").widths
    assert [r.width for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert slimmable.parse_widths is parse_widths
    batches = [torch.randn(16, 1, 8, 8)]
    slimmable.calibrate(model, batches, parse_widths(["0.3,0.7", json.dumps(MAP)]))
    assert slimmable.calibrated_widths(model) == [0.3, 0.7]


def test_profile_takes_a_grid_and_a_search_result(tmp_path, capsys):
    """profile --widths reads what eval --widths reads."""
    assert main(["profile", "us_small_cnn", "--widths", "0.25:1:0.025", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert len(rows) == 31 and rows[0]["width"] == 0.25 and rows[-1]["width"] == 1.0
    path = search_file(tmp_path)
    assert main(["profile", "us_small_cnn", "--widths", "1.0", f"{path}@25%", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert rows[1]["width"] is None and rows[1]["width_map"] == {"features.0": 0.25, "*": 0.5}
    assert rows[1]["macs"] < rows[0]["macs"]
