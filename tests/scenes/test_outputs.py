"""Outputs on the user's disk: all or nothing, no silent overwrite, leftovers of killed writes cleaned."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from terramind.scenes.outputs import atomic_file, atomic_folder, atomic_outputs, check_target, partial_path


def test_check_target_refuses_what_would_be_lost(tmp_path):
    (tmp_path / "old.tif").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="old.tif exists; pass --overwrite"):
        check_target(tmp_path / "old.tif")
    assert check_target(tmp_path / "old.tif", overwrite=True) == tmp_path / "old.tif"
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        check_target(tmp_path / "folder", overwrite=True)
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        check_target(tmp_path / "file" / "out.tif")
    assert check_target(tmp_path / "folder", folder=True) == tmp_path / "folder"  # an empty folder may be filled


def test_all_or_nothing(tmp_path):
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(RuntimeError), atomic_outputs([tmp_path / "a.txt", tmp_path / "b.txt"], overwrite=True) as out:
        out[tmp_path / "a.txt"].write_text("new a")
        out[tmp_path / "b.txt"].write_text("new b")
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and (tmp_path / "b.txt").read_text() == "old b"
    with atomic_outputs([tmp_path / "a.txt", tmp_path / "b.txt"], overwrite=True) as out:
        out[tmp_path / "a.txt"].write_text("new a")
        out[tmp_path / "b.txt"].write_text("new b")
        assert not (tmp_path / "a.txt").exists()  # nothing appears before the whole set is written
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_folder_replaced_only_when_complete(tmp_path):
    target = tmp_path / "converted"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_folder(target):
            pass
    with pytest.raises(ValueError), atomic_folder(target, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
        raise ValueError("conversion failed")
    assert (target / "config.json").read_text() == "old"
    with atomic_folder(target, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_partials_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "LULC.tif"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".LULC.tif.partial-{host}-{int(dead.stdout)}-deadbeef.tif"
    live = tmp_path / f".LULC.tif.partial-{host}-{os.getpid()}-0badcafe.tif"
    other_host = tmp_path / ".LULC.tif.partial-elsewhere-1-12345678.tif"
    for path in (stale, live, other_host):
        path.write_text("half")
    with atomic_file(target) as partial:
        assert partial.name.startswith(".LULC.tif.partial-") and partial.suffix == ".tif"
        assert partial_path(partial).name.startswith(".LULC.tif.partial-")  # leftovers stay findable by target
        partial.write_text("whole")
    assert target.read_text() == "whole"
    assert not stale.exists() and live.exists() and other_host.exists()  # running or unknown writers are left alone
