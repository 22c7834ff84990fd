"""The one file writer and bundle folders: nothing half-written, nothing of the user's deleted."""

import json
import os
import subprocess
import sys

import pytest

from tfedge.bundle_folder import check_out_dir, staged
from tfedge.report import write_atomic


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "model.tflite"
    write_atomic(path, b"old")
    write_atomic(path, "new")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["model.tflite"]
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_atomic(tmp_path, b"x")


def test_write_atomic_removes_what_killed_writers_left_but_not_live_ones(tmp_path):
    dead = tmp_path / f".model.tflite.{_dead_pid()}-1.tmp"
    live = tmp_path / f".model.tflite.{os.getpid()}-999.tmp"
    other = tmp_path / f".card.json.{_dead_pid()}-1.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"half")
    write_atomic(tmp_path / "model.tflite", b"whole")
    assert not dead.exists() and live.exists() and other.exists()


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    write_atomic(path, b"old")

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.tflite"]


def _bundle(folder, files=("model.tflite",)):
    os.makedirs(folder, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    (folder / "model_card.json").write_text(json.dumps(
        {"bundle": {"kind": "micro", "files": {n: {} for n in files}}}))


def test_check_out_dir_refuses_files_and_folders_with_the_users_files(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ValueError, match="--android .*taken.* is a file"):
        check_out_dir(tmp_path / "taken", "--android")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="not a tfedge bundle.*cat.jpg"):
        check_out_dir(tmp_path / "photos")
    _bundle(tmp_path / "bundle")
    assert check_out_dir(tmp_path / "bundle") == str(tmp_path / "bundle")
    (tmp_path / "bundle" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not in its manifest.*notes.txt"):
        check_out_dir(tmp_path / "bundle")


def test_staged_swaps_the_whole_folder_and_an_error_keeps_the_old_one(tmp_path):
    target = tmp_path / "micro"
    _bundle(target, ("model.tflite", "labels.txt"))
    with pytest.raises(RuntimeError):
        with staged(str(target)) as folder:
            (tmp_path / "x").write_text(folder)
            raise RuntimeError("verification failed")
    assert sorted(os.listdir(target)) == ["labels.txt", "model.tflite", "model_card.json"]
    with staged(str(target)) as folder:
        open(os.path.join(folder, "model.tflite"), "wb").write(b"new")
    assert os.listdir(target) == ["model.tflite"]  # the old labels.txt went with the old bundle
    assert sorted(os.listdir(tmp_path)) == ["micro", "x"]  # no staging folder left
