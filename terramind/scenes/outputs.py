"""Outputs on the user's disk: written whole or not at all, never over an existing file unasked, nodata marked.

Every file (or folder) is written under a hidden temporary name next to its target and renamed into place when it
is complete (`os.replace`: atomic within a file system). An error or an interruption removes the temporary; a
killed process leaves at most a hidden `.<name>.partial-<host>-<pid>-<id>` sibling, removed by the next write of
the same target once its process is gone.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# The nodata value written for each output data type: outside what valid values of the outputs take.
NODATA_VALUES = {"int16": -32768, "uint8": 255, "float32": math.nan}
PARTIAL_MARK = ".partial-"
STALE_AFTER_S = 24 * 3600  # partials of another host (or of unknown origin) older than this are abandoned


def check_target(path: str | os.PathLike, overwrite: bool = False, folder: bool = False) -> Path:
    """`path` as a Path, if it may be written: FileExistsError if it exists and `overwrite` is False, and
    IsADirectoryError / NotADirectoryError when a folder stands where a file goes or the other way round."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{path}: {parent} is a file, not a folder.")
    if path.is_dir() and not folder:
        raise IsADirectoryError(f"{path} is a folder; give a file name.")
    if path.exists() and folder and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; give a folder.")
    if path.exists() and not overwrite and not (folder and not any(path.iterdir())):
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it.")
    return path


def partial_path(path: Path) -> Path:
    """A fresh hidden sibling of `path` for writing it (same suffix, so format detection by name still works); a
    partial of a partial is named after the final target too, so that leftovers are found by its name."""
    name = path.name
    if name.startswith(".") and PARTIAL_MARK in name:
        name = name[1 : name.index(PARTIAL_MARK)]
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{name}{PARTIAL_MARK}{tag}{path.suffix}")


def _owner_gone(name: str) -> bool:
    """Whether the process that wrote the partial `name` (`.<target>.partial-<host>-<pid>-<id>[suffix]`) no longer
    runs on this host."""
    tag = name[name.index(PARTIAL_MARK) + len(PARTIAL_MARK) :]
    host, _, pid = tag.rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def remove_stale_partials(path: Path, every_target: bool = False) -> None:
    """Remove leftovers of killed writes of `path` (with `every_target`, of anything in its folder): partials whose
    process is gone, or older than a day."""
    prefix = "." if every_target else f".{path.name}{PARTIAL_MARK}"
    if not path.parent.is_dir():
        return
    now = time.time()
    for candidate in path.parent.iterdir():
        if not candidate.name.startswith(prefix) or PARTIAL_MARK not in candidate.name:
            continue
        try:
            old = now - candidate.lstat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            continue
        if old or _owner_gone(candidate.name):
            remove(candidate)


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike], overwrite: bool = False) -> Iterator[dict[Path, Path]]:
    """Write several files as one: yields {target: temporary path}; after the block every temporary that was written
    replaces its target, on an error or interruption none does and the temporaries are removed. All targets are
    checked (`check_target`) before anything is written."""
    targets = [check_target(path, overwrite) for path in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target)
    temporaries = {target: partial_path(target) for target in targets}
    try:
        yield temporaries
        for target, temporary in temporaries.items():
            if temporary.exists():
                os.replace(temporary, target)
    finally:
        for temporary in temporaries.values():
            remove(temporary)


@contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write one file: yields the temporary path to write, renamed to `path` when the block ends without error."""
    with atomic_outputs([path], overwrite) as temporaries:
        yield next(iter(temporaries.values()))


@contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write a folder: yields an empty temporary folder that replaces `path` (an existing folder only with
    `overwrite`, an empty one always) when the block ends without error."""
    target = check_target(path, overwrite, folder=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    staging = partial_path(target)
    staging.mkdir()
    try:
        yield staging
        if target.exists():  # move the old folder aside first: a rename cannot replace a non-empty folder
            old = partial_path(target)
            os.replace(target, old)
            os.replace(staging, target)
            remove(old)
        else:
            os.replace(staging, target)
    finally:
        remove(staging)


__all__ = [
    "NODATA_VALUES",
    "atomic_file",
    "atomic_folder",
    "atomic_outputs",
    "check_target",
    "partial_path",
    "remove_stale_partials",
]
