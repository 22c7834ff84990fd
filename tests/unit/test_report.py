"""The shared table and JSON helpers every report uses."""

import json

import numpy as np

from tfedge.report import format_table, write_json


def test_write_json_turns_numpy_into_python_and_creates_folders(tmp_path):
    path = write_json(tmp_path / "a" / "b.json", {"x": np.float32(1.5), "y": np.arange(3)})
    assert json.loads(open(path).read()) == {"x": 1.5, "y": [0, 1, 2]}


def test_format_table_aligns_columns_and_right_aligns_numbers():
    text = format_table(["name", "value"], [["a", 1.0], ["longer", 22.5]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert lines[-1].endswith("22.5") and lines[-2].endswith("   1")
