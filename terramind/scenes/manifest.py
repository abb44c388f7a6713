"""The resume record of a many-scene run, kept in its output folder.

`_run.json` holds the settings that shape the outputs (model, modalities, tile size, format, ...); a resumed run must
use the same. Every process appends a line to its own `_manifest-r<rank>.jsonl` once a scene's outputs are on disk
under their final names, so that a killed run loses at most the scenes it had not committed. A resumed run skips the
scenes listed by any process whose outputs still exist. Names starting with "_" are skipped by pyarrow's and
GDAL's readers of the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RUN_FILE = "_run.json"


def check_folder(folder: str | os.PathLike, settings: Mapping[str, Any], resume: bool, overwrite: bool) -> None:
    """Whether a run may write `folder`: a new or empty folder, the folder of an earlier run with the same settings
    (`resume`), or with `overwrite` the folder of an earlier run (never a folder of other files)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--output {folder} is a file; give a folder (or a name ending in .parquet).")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise FileExistsError(f"--output {folder} is a folder of other files (no {RUN_FILE} of an earlier run); "
                              "give a new or empty folder.")  # fmt: skip
    if overwrite:
        return
    if not resume:
        raise FileExistsError(f"--output {folder} holds an earlier run; pass --resume to continue it or --overwrite "
                              "to replace it.")  # fmt: skip
    earlier = json.loads(run_file.read_text())
    changed = sorted(key for key in set(earlier) | set(settings) if earlier.get(key) != settings.get(key))
    if changed:
        differences = ", ".join(f"{key}: {earlier.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise ValueError(f"--resume needs the settings of the earlier run in {folder} ({differences}).")


def start_folder(folder: str | os.PathLike, settings: Mapping[str, Any], resume: bool, overwrite: bool) -> None:
    """Prepare the folder (one process only, after `check_folder`): clear an earlier run with `overwrite`, record
    the settings."""
    folder = Path(folder)
    if overwrite and not resume and (folder / RUN_FILE).is_file():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / RUN_FILE).is_file():
        (folder / RUN_FILE).write_text(json.dumps(dict(settings), indent=1))


def finished_scenes(folder: str | os.PathLike) -> set[str]:
    """The scenes every process recorded as done whose outputs are all still there."""
    done = set()
    for manifest in sorted(Path(folder).glob("_manifest-r*.jsonl")):
        for line in manifest.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if all((Path(folder) / name).is_file() for name in entry["outputs"]):
                done.add(entry["scene"])
    return done


class Manifest:
    """The record one process appends to: a line per finished scene, flushed to disk at once."""

    def __init__(self, folder: str | os.PathLike, rank: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / f"_manifest-r{rank:05d}.jsonl"

    def record(self, scene: str, sources: Mapping[str, str], outputs: Sequence[str | os.PathLike]) -> None:
        names = [str(Path(output).relative_to(self.folder)) for output in outputs]
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"scene": scene, "sources": dict(sources), "outputs": names}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


__all__ = ["RUN_FILE", "Manifest", "check_folder", "finished_scenes", "start_folder"]
