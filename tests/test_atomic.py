"""Atomic writes: the final name only ever holds a complete file."""

import pytest

from pipeline import atomic


def test_success_renames_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic.write_json(target, {"b": 1, "a": [1.5, "x"]})
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    "x"\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_stale_temp_from_killed_run_is_removed(tmp_path):
    stale = tmp_path / ".out.txt.abc123.tmp"
    stale.write_text("partial")
    other = tmp_path / ".other.txt.abc123.tmp"
    other.write_text("someone else's")
    atomic.write_text(tmp_path / "out.txt", "done")
    assert not stale.exists() and other.exists()


def test_json_is_canonical_and_refuses_nan(tmp_path):
    assert atomic.dumps_json({"z": 1, "a": 2}) == atomic.dumps_json({"a": 2, "z": 1})
    with pytest.raises(ValueError):
        atomic.dumps_json({"x": float("nan")})
