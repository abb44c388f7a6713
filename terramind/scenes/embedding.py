"""`terramind embed` over many scenes: a tile loader with workers feeds the encoder, finished scenes go to a writer.

Writers: one file for one scene (GeoTIFF of D bands at 1/16 resolution, or safetensors), a GeoTIFF per scene in a
folder, or GeoParquet rows per tile or per patch (`geoparquet.py`). Folder outputs are resumable (`manifest.py`).
Patches without any input data are NaN, never made-up embeddings. With several processes (`accelerate launch`) each
rank embeds its share of the scenes and writes its own files; their union equals a one-process run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .discovery import Scene, SceneFacts, SceneTiles, TileBatch, TileInfo

Committed = list[tuple[Scene, list[Path]]]  # scenes whose outputs are on disk, with those outputs


@dataclass
class SceneEmbeddings:
    """The encoder's tokens of every tile of one scene."""

    scene: Scene
    facts: SceneFacts
    tiles: list[tuple[TileInfo, torch.Tensor]] = field(default_factory=list)  # (tile, (patches, D))

    @property
    def complete(self) -> bool:
        return len(self.tiles) == self.facts.num_tiles

    def grid(self) -> torch.Tensor:
        """(D, ceil(H/16), ceil(W/16)) embeddings of the scene's patches, NaN where no input has data."""
        facts = self.facts
        grid = None
        for tile, tokens in self.tiles:
            side = tile.size // 16
            if grid is None:
                grid = torch.zeros(tokens.shape[-1], facts.padded_height // 16, facts.padded_width // 16)
            values = tokens.reshape(side, side, -1).permute(2, 0, 1).clone()
            values[:, tile.empty] = math.nan
            grid[:, tile.top // 16 : tile.top // 16 + side, tile.left // 16 : tile.left // 16 + side] = values
        return grid[:, : -(-facts.height // 16), : -(-facts.width // 16)]

    def tile_means(self) -> torch.Tensor:
        """(tiles, D) mean embedding of each tile over its patches with data (NaN for a tile without data)."""
        means = []
        for tile, tokens in self.tiles:
            keep = ~tile.empty.reshape(-1)
            means.append(tokens[keep].mean(dim=0) if keep.any() else torch.full(tokens.shape[-1:], math.nan))
        return torch.stack(means)


def embed_batches(model: Any, loader: Iterable[TileBatch], device: str | torch.device,
                  dtype: torch.dtype) -> Iterator[SceneEmbeddings]:  # fmt: skip
    """Run the encoder on the loader's batches; yields each scene once all of its tiles are embedded."""
    open_scenes: dict[str, SceneEmbeddings] = {}
    with torch.inference_mode():
        for batch in loader:
            if batch.error:
                raise ValueError(batch.error)
            inputs = {name: value.to(device, dtype, non_blocking=True) for name, value in batch.inputs.items()}
            tokens = model(**inputs).last_hidden_state.float().cpu()
            for tile, values in zip(batch.tiles, tokens, strict=True):
                state = open_scenes.setdefault(tile.scene.id, SceneEmbeddings(tile.scene, tile.facts))
                state.tiles.append((tile, values))
                if state.complete:
                    yield open_scenes.pop(tile.scene.id)


def tile_loader(scenes: list[Scene], tile_size: int, batch_size: int, num_workers: int,
                dtype: torch.dtype = torch.float32) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader of `TileBatch`es: `num_workers` processes read and preprocess scenes while the model runs."""
    dataset = SceneTiles(scenes, tile_size, batch_size, dtype)
    workers = min(num_workers, len(scenes))
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                       prefetch_factor=4 if workers else None, persistent_workers=False)  # fmt: skip


def _as_is(batch: TileBatch) -> TileBatch:
    return batch


# ----------------------------------------------------------------------------- writers
class SceneFile:
    """One scene into one file: a GeoTIFF of D bands on the 16-pixel patch grid, or safetensors with its grid."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path, self.overwrite = Path(path), overwrite

    def add(self, result: SceneEmbeddings) -> Committed:
        from .geotiff import grid_transform, write_geotiff
        from .outputs import atomic_file

        grid = result.grid()
        # whole patches: the grid covers the scene padded to multiples of 16
        profile = dict(result.facts.profile, height=grid.shape[1] * 16, width=grid.shape[2] * 16)
        with atomic_file(self.path, self.overwrite) as partial:
            if self.path.suffix == ".safetensors":
                from safetensors.torch import save_file

                transform = grid_transform(profile, grid.shape[1], grid.shape[2])
                metadata = {"crs": str(profile.get("crs")), "transform": json.dumps(list(transform)[:6]),
                            "patch_size": "16", "modalities": ",".join(result.scene.paths), "nodata": "nan"}  # fmt: skip
                save_file({"embeddings": grid.contiguous()}, partial, metadata=metadata)
            else:
                write_geotiff(partial, grid.numpy(), profile, dtype="float32", nodata=math.nan)
        return [(result.scene, [self.path])]

    def close(self) -> Committed:
        return []

    def discard(self) -> None:
        pass


class SceneGeoTiffs(SceneFile):
    """A GeoTIFF per scene, `<folder>/<scene id>.tif` (a file of this run's folder may be replaced: it is one that
    a killed run wrote before recording it)."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__(folder, overwrite=True)
        self.folder = Path(folder)

    def add(self, result: SceneEmbeddings) -> Committed:
        self.path = self.folder / f"{result.scene.id}.tif"
        return super().add(result)


class SceneGeoParquet:
    """GeoParquet rows per tile (its mean over patches with data) or per patch, into this rank's part files."""

    def __init__(self, folder: str | os.PathLike, model_id: str, per_patch: bool = False, rank: int = 0,
                 rows_per_part: int | None = None):  # fmt: skip
        from .geoparquet import ROWS_PER_PART, GeoParquetParts

        self.parts = GeoParquetParts(folder, rank, rows_per_part or ROWS_PER_PART)
        self.model_id, self.per_patch = model_id, per_patch
        self.scenes: dict[str, Scene] = {}

    def add(self, result: SceneEmbeddings) -> Committed:
        import numpy as np

        from .geoparquet import embedding_schema, scene_table

        facts = result.facts
        height, width = facts.height, facts.width
        if self.per_patch:
            grid = result.grid()
            rows, cols = np.meshgrid(np.arange(grid.shape[1]) * 16, np.arange(grid.shape[2]) * 16, indexing="ij")
            tops, lefts, sizes = rows.reshape(-1), cols.reshape(-1), 16
            embeddings = grid.reshape(grid.shape[0], -1).T.numpy()
        else:
            tops = np.array([tile.top for tile, _ in result.tiles])
            lefts = np.array([tile.left for tile, _ in result.tiles])
            sizes = np.array([tile.size for tile, _ in result.tiles])
            embeddings = result.tile_means().numpy()
        boxes = np.stack([lefts, tops, np.minimum(lefts + sizes, width), np.minimum(tops + sizes, height)], axis=1)
        table = scene_table(embedding_schema(embeddings.shape[1]), result.scene.id, result.scene.paths, self.model_id,
                            facts.profile["transform"], facts.profile.get("crs"), boxes, embeddings)  # fmt: skip
        self.scenes[result.scene.id] = result.scene
        return self._committed(self.parts.add(table, result.scene.id))

    def _committed(self, done: list[tuple[str, Path]]) -> Committed:
        return [(self.scenes.pop(scene), [path]) for scene, path in done]

    def close(self) -> Committed:
        return self._committed(self.parts.close())

    def discard(self) -> None:
        self.parts.discard()


__all__ = ["SceneEmbeddings", "SceneFile", "SceneGeoParquet", "SceneGeoTiffs", "embed_batches", "tile_loader"]
