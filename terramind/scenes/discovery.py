"""Many scenes for the CLI: finding and pairing the input files, and sharing them over processes.

`--input MODALITY=PATH` takes a file, a folder (its *.tif files) or a glob in the file name (`data/*_S2.tif`); the
files of several modalities are paired by sample id (the file name without suffix, or the part a glob's first `*`
matched). Scenes are split over processes (`rank`, `world_size`); the scene engine (`engine.py`) reads them.
`index_folder` (sample id -> file of a folder) serves the training datasets too.
"""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LISTED = 5


@dataclass(frozen=True)
class Scene:
    """One scene: its sample id and one file per modality."""

    id: str
    paths: dict[str, str]


def _sample_id(name: str, grep: str) -> str:
    """File name -> sample id: the part matched by the first '*' of the pattern ("*_S2.tif": "a_S2.tif" -> "a")."""
    prefix, _, rest = grep.partition("*")
    suffix = rest.rsplit("*", 1)[-1] if "*" in rest else rest
    return name[len(prefix) : len(name) - len(suffix) if suffix else None]


def index_folder(folder: str | Path, grep: str = "*.tif") -> dict[str, Path]:
    """Sample id -> file for the files of `folder` matching `grep`; ValueError if the folder is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Data folder {folder} does not exist.")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and fnmatch.fnmatch(path.name, grep):
            sample = _sample_id(path.name, grep)
            if sample in files:
                raise ValueError(f"Files {files[sample].name} and {path.name} in {folder} both give sample id "
                                 f"{sample!r}; make `grep` more specific.")  # fmt: skip
            files[sample] = path
    if not files:
        raise ValueError(f"No files matching {grep!r} in {folder}.")
    return files


def _files(spec: str) -> dict[str, Path]:
    """Sample id -> file for one --input value: a file, a folder (*.tif) or a glob in the file name."""
    path = Path(spec)
    if path.is_file():
        return {path.stem: path}
    if path.is_dir():
        return index_folder(path, "*.tif")
    if glob.has_magic(spec):
        if glob.has_magic(str(path.parent)):
            raise ValueError(f"input {spec}: wildcards go in the file name only (e.g. data/*_S2L2A.tif).")
        if not path.parent.is_dir():
            raise ValueError(f"input {spec}: folder {path.parent} does not exist.")
        return index_folder(path.parent, path.name)
    raise ValueError(f"input {spec} does not exist (give a GeoTIFF file, a folder or a glob such as dir/*.tif).")


def find_scenes(inputs: Mapping[str, str]) -> list[Scene]:
    """The scenes of {modality: file, folder or glob}, sorted by sample id. One file per modality is one scene,
    whatever the names; otherwise the modalities' files are paired by sample id, and every id needs every modality."""
    files = {modality: _files(spec) for modality, spec in inputs.items()}
    if all(Path(spec).is_file() for spec in inputs.values()):
        first = next(iter(files.values()))
        return [
            Scene(
                next(iter(first)), {modality: str(path) for modality, found in files.items() for path in found.values()}
            )
        ]
    ids = sorted(set().union(*files.values()))
    for modality, found in files.items():
        missing = [sample for sample in ids if sample not in found]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
            raise ValueError(f"--input {modality}={inputs[modality]} has no file for {len(missing)} of {len(ids)} "
                             f"scenes ({listed}); every scene needs a file of every modality, paired by file name.")  # fmt: skip
    return [Scene(sample, {modality: str(found[sample]) for modality, found in files.items()}) for sample in ids]


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The items process `rank` of `world_size` takes: every world_size-th, so that the shards' union is all items."""
    return list(items[rank::world_size])


__all__ = ["Scene", "find_scenes", "shard"]
