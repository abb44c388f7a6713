"""Many scenes for the CLI: finding and pairing the input files, and a tile loader that reads while the model runs.

`--input MODALITY=PATH` takes a file, a folder (its *.tif files) or a glob in the file name (`data/*_S2.tif`); the
files of several modalities are paired by sample id (the file name without suffix, or the part a glob's first `*`
matched). `SceneTiles` is an `IterableDataset` for a `DataLoader` with workers: each worker reads and preprocesses
whole scenes, cuts them into tiles and yields batches of tiles that span scenes, so that reading, normalising and
tiling happen while the model computes. Scenes are split over processes (`rank`, `world_size`) and then workers.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

MAX_LISTED = 5


@dataclass(frozen=True)
class Scene:
    """One scene: its sample id and one file per modality."""

    id: str
    paths: dict[str, str]


@dataclass
class TileBatch:
    """A batch of tiles, possibly of several scenes: model inputs {modality: (n, C, tile, tile)} and per tile its
    scene, offsets and nodata patches; `error` instead when a scene could not be read."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    tiles: list[TileInfo] = field(default_factory=list)
    error: str | None = None


@dataclass
class TileInfo:
    """Where a tile lies: its scene (with the scene's facts), pixel offsets and side, and the (side/16, side/16) mask
    of patches without any input data."""

    scene: Scene
    facts: SceneFacts
    top: int
    left: int
    size: int
    empty: torch.Tensor


@dataclass
class SceneFacts:
    """What the writers need of a scene: its georeference profile, size, padded size and number of tiles."""

    profile: dict[str, Any]
    height: int
    width: int
    padded_height: int
    padded_width: int
    num_tiles: int


def _files(spec: str) -> dict[str, Path]:
    """Sample id -> file for one --input value: a file, a folder (*.tif) or a glob in the file name."""
    from ..data_terramind import index_folder

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


def read_scene_inputs(paths: Mapping[str, str], offsets: Mapping[str, float] | None = None):
    """A scene's rasters, processed inputs (padded to multiples of 16; `offsets` added to the standardization
    means) and a (H', W') mask, True where no input has data (nodata in every modality, or padding)."""
    from ..image_processing_terramind import TerraMindImageProcessor, nodata_mask_key
    from .geotiff import read_sample

    sample = read_sample(paths)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16, offset=dict(offsets) if offsets else None)
    batch = dict(processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata,
                           return_nodata_mask=True))  # fmt: skip
    masks = [batch.pop(nodata_mask_key(name)) for name in sample.images]
    no_data = masks[0][0]
    for mask in masks[1:]:
        no_data = no_data & mask[0]
    return sample, processor, batch, no_data


def scene_tiles(padded_height: int, padded_width: int, tile_size: int) -> tuple[int, list[tuple[int, int]]]:
    """The tile side (the tile size, or the scene's shorter padded side if smaller) and the tiles' (top, left):
    no overlap except the last row and column, which sit flush with the edge."""
    from .tiling import tile_starts

    side = min(tile_size, padded_height, padded_width)
    return side, [(t, x) for t in tile_starts(padded_height, side, side) for x in tile_starts(padded_width, side, side)]


class SceneTiles(IterableDataset):
    """Batches of tiles of many scenes, for a `DataLoader(batch_size=None, num_workers=...)`.

    Each worker reads its share of the scenes (after the process's share: `rank`, `world_size`), normalises and pads
    them, and yields `TileBatch`es of `batch_size` tiles of the same side, spanning scenes; the last batches are
    partial. A scene that cannot be read yields a batch with its `error` (so that the message reaches the user
    whole, not wrapped in a worker traceback)."""

    def __init__(self, scenes: Sequence[Scene], tile_size: int, batch_size: int, dtype: torch.dtype = torch.float32):
        self.scenes, self.tile_size, self.batch_size, self.dtype = list(scenes), tile_size, batch_size, dtype

    def _my_scenes(self) -> list[Scene]:
        worker = get_worker_info()
        return self.scenes if worker is None else shard(self.scenes, worker.id, worker.num_workers)

    def __iter__(self) -> Iterator[TileBatch]:
        pending: dict[int, TileBatch] = {}  # tile side -> batch being filled
        for scene in self._my_scenes():
            try:
                sample, _, inputs, no_data = read_scene_inputs(scene.paths)
            except (ValueError, OSError) as error:
                from ..errors import one_line

                yield TileBatch(error=f"scene {scene.id}: {one_line(error)}")
                return
            padded_h, padded_w = no_data.shape
            side, tiles = scene_tiles(padded_h, padded_w, self.tile_size)
            height, width = next(iter(sample.images.values())).shape[-2:]
            facts = SceneFacts(sample.profile, height, width, padded_h, padded_w, len(tiles))
            empty = no_data.reshape(padded_h // 16, 16, padded_w // 16, 16).all(dim=3).all(dim=1)
            for top, left in tiles:
                batch = pending.setdefault(side, TileBatch(inputs={name: [] for name in inputs}))
                for name, value in inputs.items():
                    batch.inputs[name].append(value[0, :, top : top + side, left : left + side].to(self.dtype))
                rows, cols = slice(top // 16, (top + side) // 16), slice(left // 16, (left + side) // 16)
                batch.tiles.append(TileInfo(scene, facts, top, left, side, empty[rows, cols].clone()))
                if len(batch.tiles) == self.batch_size:
                    yield _stacked(pending.pop(side))
        for batch in pending.values():
            yield _stacked(batch)


@dataclass
class SceneInputs:
    """A whole preprocessed scene (`read_scene_inputs`), or the `error` that reading it gave."""

    scene: Scene
    sample: Any = None
    inputs: dict[str, torch.Tensor] | None = None
    no_data: torch.Tensor | None = None
    error: str | None = None


class WholeScenes(IterableDataset):
    """Whole preprocessed scenes, read by `DataLoader(batch_size=None, num_workers=...)` workers while the model
    runs (generation, whose tiles overlap and blend within a scene)."""

    def __init__(self, scenes: Sequence[Scene], offsets: Mapping[str, float] | None = None):
        self.scenes = list(scenes)
        self.offsets = offsets

    def __iter__(self) -> Iterator[SceneInputs]:
        worker = get_worker_info()
        for scene in self.scenes if worker is None else shard(self.scenes, worker.id, worker.num_workers):
            try:
                sample, _, inputs, no_data = read_scene_inputs(scene.paths, self.offsets)
            except (ValueError, OSError) as error:
                from ..errors import one_line

                yield SceneInputs(scene, error=f"scene {scene.id}: {one_line(error)}")
                return
            yield SceneInputs(scene, sample, inputs, no_data)


def _stacked(batch: TileBatch) -> TileBatch:
    batch.inputs = {name: torch.stack(values) for name, values in batch.inputs.items()}
    return batch


__all__ = ["Scene", "SceneFacts", "SceneInputs", "SceneTiles", "TileBatch", "TileInfo", "WholeScenes", "find_scenes", "read_scene_inputs",
           "scene_tiles", "shard"]  # fmt: skip
