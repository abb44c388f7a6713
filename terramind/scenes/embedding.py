"""`terramind embed` over scenes of any size: the scene engine streams tiles through the encoder into a sink.

Sinks: one file for one scene (a GeoTIFF/COG of D bands at 1/16 resolution, or safetensors), a GeoTIFF per scene in
a folder, or GeoParquet rows per tile or per patch (`geoparquet.py`). Folder outputs are resumable (`manifest.py`).
Patches without any input data are NaN, never made-up embeddings. With several processes (`accelerate launch`) each
rank embeds its share of the scenes and writes its own files; their union equals a one-process run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .discovery import Scene
from .engine import STRIPE_WIDTH

Committed = list[tuple[Scene, list[Path]]]  # scenes whose outputs are on disk, with those outputs


# ----------------------------------------------------------------------------- streaming outputs (engine)
class EmbeddingRows:
    """One scene's embeddings as the engine writes them: rows of the (D, H/16, W/16) patch grid (NaN where no input
    has data) go to the run's `sink` as they are finished, and per-tile outputs for per-tile GeoParquet rows."""

    def __init__(self, sink: Any, scene: Scene, profile: dict[str, Any], height: int, width: int):
        self.sink, self.scene, self.profile, self.height, self.width = sink, scene, profile, height, width
        self.committed: Committed = []
        self.state: Any = None  # the sink's per-scene state

    def write_rows(self, top: int, values: dict, nodata: Any) -> None:
        rows = values[""].copy()
        rows[:, nodata] = math.nan
        self.sink.rows(self, top, rows)

    def add_tiles(self, boxes: list[tuple[int, int, int]], values: dict | None, nodata: list) -> None:
        if hasattr(self.sink, "tiles"):
            self.sink.tiles(self, boxes, None if values is None else values[""], nodata)

    def close(self) -> None:
        self.committed = self.sink.close_scene(self)


class EmbeddingBlocks(EmbeddingRows):
    """`EmbeddingRows` for sinks that take blocks (`sink.block`): the engine streams wide scenes into them in
    vertical stripes."""

    def write_block(self, top: int, left: int, values: dict, nodata: Any) -> None:
        block = values[""].copy()
        block[:, nodata] = math.nan
        self.sink.block(self, top, left, block)


class GeoTiffSink:
    """Each scene into its own GeoTIFF (COG, float32, D bands on the 16-pixel patch grid, nodata NaN), written by
    rows and renamed into place when the scene is done: `path` for one scene, else `<folder>/<scene id>.tif` (a
    file of this run's folder may be replaced: it is one that a killed run wrote before recording it)."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, folder: bool = False):
        self.path, self.overwrite, self.folder = Path(path), overwrite or folder, folder
        self.open: list[EmbeddingRows] = []

    def target(self, scene: EmbeddingRows) -> Path:
        return self.path / f"{scene.scene.id}.tif" if self.folder else self.path

    def rows(self, scene: EmbeddingRows, top: int, rows: Any) -> None:
        self.block(scene, top, 0, rows)

    def block(self, scene: EmbeddingRows, top: int, left: int, block: Any) -> None:
        from .outputs import atomic_file
        from .writers import GeoTiffRows

        if scene.state is None:
            context = atomic_file(self.target(scene), self.overwrite)
            partial = context.__enter__()
            profile = dict(scene.profile, height=scene.height, width=scene.width)
            scene.state = (context, GeoTiffRows(partial, profile, block.shape[0], "float32", math.nan, scale=16,
                                                resampling="average"))  # fmt: skip
            self.open.append(scene)
        scene.state[1].write(top, block, left=left)

    def close_scene(self, scene: EmbeddingRows) -> Committed:
        context, file = scene.state
        file.finish()
        context.__exit__(None, None, None)
        self.open.remove(scene)
        return [(scene.scene, [self.target(scene)])]

    def close(self) -> Committed:
        return []

    def discard(self) -> None:
        for scene in self.open:
            context, file = scene.state
            file.discard()
            context.__exit__(RuntimeError, RuntimeError("discarded"), None)
        self.open = []


class SafetensorsSink:
    """One scene into a safetensors file (its grid and georeference as metadata). safetensors has no partial
    writes, so this one output holds the scene's (D, H/16, W/16) grid in memory."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path, self.overwrite = Path(path), overwrite

    def rows(self, scene: EmbeddingRows, top: int, rows: Any) -> None:
        scene.state = (scene.state or []) + [rows]

    def close_scene(self, scene: EmbeddingRows) -> Committed:
        import numpy as np
        from safetensors.numpy import save_file

        from .geotiff import grid_transform
        from .outputs import atomic_file

        grid = np.concatenate(scene.state, axis=1)
        profile = dict(scene.profile, height=grid.shape[1] * 16, width=grid.shape[2] * 16)
        transform = grid_transform(profile, grid.shape[1], grid.shape[2])
        metadata = {"crs": str(profile.get("crs")), "transform": json.dumps(list(transform)[:6]),
                    "patch_size": "16", "modalities": ",".join(scene.scene.paths), "nodata": "nan"}  # fmt: skip
        with atomic_file(self.path, self.overwrite) as partial:
            save_file({"embeddings": np.ascontiguousarray(grid)}, partial, metadata=metadata)
        return [(scene.scene, [self.path])]

    def close(self) -> Committed:
        return []

    def discard(self) -> None:
        pass


class GeoParquetSink:
    """GeoParquet rows per tile (its mean over patches with data, NaN without) or per patch, into this rank's part
    files: per-patch rows stream as the grid's rows are finished; a scene's rows never straddle two part files."""

    def __init__(self, folder: str | os.PathLike, model_id: str, per_patch: bool = False, rank: int = 0,
                 rows_per_part: int | None = None):  # fmt: skip
        from .geoparquet import ROWS_PER_PART, GeoParquetParts

        self.parts = GeoParquetParts(folder, rank, rows_per_part or ROWS_PER_PART)
        self.model_id, self.per_patch = model_id, per_patch
        self.scenes: dict[str, Scene] = {}

    def _table(self, scene: EmbeddingRows, boxes: Any, embeddings: Any) -> Any:
        from .geoparquet import embedding_schema, scene_table

        return scene_table(embedding_schema(embeddings.shape[1]), scene.scene.id, scene.scene.paths, self.model_id,
                           scene.profile["transform"], scene.profile.get("crs"), boxes, embeddings)  # fmt: skip

    def rows(self, scene: EmbeddingRows, top: int, rows: Any) -> None:
        import numpy as np

        if not self.per_patch:
            return
        dim, count, width = rows.shape
        tops, lefts = np.meshgrid((top + np.arange(count)) * 16, np.arange(width) * 16, indexing="ij")
        tops, lefts = tops.reshape(-1), lefts.reshape(-1)
        boxes = np.stack([lefts, tops, np.minimum(lefts + 16, scene.width), np.minimum(tops + 16, scene.height)],
                         axis=1)  # fmt: skip
        self.parts.add(self._table(scene, boxes, rows.reshape(dim, -1).T), scene.scene.id, complete=False)

    def tiles(self, scene: EmbeddingRows, boxes: list, values: Any, nodata: list) -> None:
        import numpy as np

        from .engine import _pool

        if self.per_patch:
            return
        means = scene.state = scene.state or {}
        for index, ((top, left, side), mask) in enumerate(zip(boxes, nodata, strict=True)):
            keep = ~_pool(mask, 16, "all").astype(bool).reshape(-1)
            if values is None or not keep.any():
                means[(top, left, side)] = None
            else:
                tokens = values[index].reshape(values.shape[1], -1).T  # (patches, D)
                means[(top, left, side)] = tokens[keep].mean(axis=0, dtype=np.float32)

    def close_scene(self, scene: EmbeddingRows) -> Committed:
        import numpy as np

        self.scenes[scene.scene.id] = scene.scene
        if self.per_patch:
            return self._committed(self.parts.add(None, scene.scene.id, complete=True))
        means = scene.state
        dim = next(value.shape[0] for value in means.values() if value is not None)
        order = sorted(means)
        embeddings = np.stack([means[box] if means[box] is not None else np.full(dim, math.nan, np.float32)
                               for box in order])  # fmt: skip
        tops, lefts, sizes = (np.array([box[i] for box in order]) for i in range(3))
        boxes = np.stack([lefts, tops, np.minimum(lefts + sizes, scene.width), np.minimum(tops + sizes, scene.height)],
                         axis=1)  # fmt: skip
        return self._committed(self.parts.add(self._table(scene, boxes, embeddings), scene.scene.id))

    def _committed(self, done: list[tuple[str, Path]]) -> Committed:
        return [(self.scenes.pop(scene), [path]) for scene, path in done]

    def close(self) -> Committed:
        return self._committed(self.parts.close())

    def discard(self) -> None:
        self.parts.discard()


def embed_scenes(model: Any, scenes: list[Scene], sink: Any, tile_size: int = 224, batch_size: int = 8,
                 num_workers: int = 1, device: Any = None, dtype: Any = None, offsets: Any = None,
                 progress: bool = True, stripe_width: int | None = STRIPE_WIDTH) -> Iterator[tuple[Any, Committed]]:  # fmt: skip
    """Embed scenes of any size (each {modality: path or open rasterio dataset}) into `sink` (`GeoTiffSink`,
    `SafetensorsSink`, `GeoParquetSink`), streaming through the scene engine: tiles of `tile_size` (of a smaller
    scene's shorter side) without overlap, the last row and column flush with the edge, batches spanning scenes,
    tiles without data skipped; scenes wider than `stripe_width` go into a GeoTIFF sink in vertical stripes. Yields
    each scene's `SceneRun` with what its sink committed, in order."""
    from ..image_processing_terramind import TerraMindImageProcessor
    from .engine import SceneJob, SceneSource, run_scenes
    from .steps import ProcessorPrepare, embedding_step

    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16, offset=dict(offsets) if offsets else None)
    jobs = []
    for scene in scenes:
        output = (EmbeddingBlocks if hasattr(sink, "block") else EmbeddingRows)(sink, scene, {}, 0, 0)

        def setup(source: SceneSource, output: EmbeddingRows = output) -> ProcessorPrepare:
            output.profile, output.height, output.width = source.profile, source.height, source.width
            return ProcessorPrepare(processor, source.band_names, source.nodata, combine="all")

        jobs.append(SceneJob(lambda scene=scene: SceneSource(scene.paths), None, output, f"scene {scene.id}", setup))
    step = embedding_step(model, device, dtype)
    try:
        runs = run_scenes(jobs, step, tile_size=tile_size, overlap=0, batch_size=batch_size, multiple_of=16,
                          merge="last", shrink=True, nodata_pooling="all", num_workers=num_workers,
                          progress=progress, description="embedding tiles", stripe_width=stripe_width)  # fmt: skip
        for job, run in zip(jobs, runs, strict=False):
            yield run, job.output.committed
    finally:
        for job in jobs:
            if isinstance(job.source, SceneSource):
                job.source.close()


__all__ = ["EmbeddingBlocks", "EmbeddingRows", "GeoParquetSink", "GeoTiffSink", "SafetensorsSink", "embed_scenes"]
