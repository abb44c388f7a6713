"""Embeddings as GeoParquet: one row per tile (or per 16 x 16 patch) with its footprint, sources and embedding.

An output `x.parquet` is a folder of part files, as Spark, Dask and pyarrow write datasets: every process (rank)
writes its own parts, so that nothing is shared between processes, and `pyarrow.parquet.read_table("x.parquet")`
or `geopandas.read_parquet("x.parquet")` read them all as one table (`merge_parts` writes one file). A part holds
the rows of whole scenes, written in row groups; it appears under its final name only when complete.

Columns: `scene` (sample id), `row`, `col` (pixel offsets of the tile or patch in the scene), `crs` (the scene's),
`geometry` (WKB polygon of its pixels, clipped to the scene), `modalities` and `source_files` (in the same order),
`model` and `embedding` (fixed-size list of float32; NaN where the tile or patch has no input data). Geometries are
in longitude/latitude (OGC:CRS84), so that scenes of any UTM zone share one dataset; the schema's `geo` metadata
follows GeoParquet 1.1 (WKB encoding, the CRS as PROJJSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GEOPARQUET_VERSION = "1.1.0"
ROWS_PER_GROUP = 8192
ROWS_PER_PART = 100_000


GEOMETRY_CRS = "OGC:CRS84"


def pixel_polygons(transform: Any, crs: Any, boxes: np.ndarray) -> np.ndarray:
    """WKB polygons (object array) in longitude/latitude of pixel boxes (n, 4: left, top, right, bottom, in pixels)
    of a raster with an affine `transform` in `crs`."""
    import shapely
    from rasterio.warp import transform as reproject

    left, top, right, bottom = boxes.T.astype(np.float64)
    corners = np.stack([np.stack([left, top], -1), np.stack([right, top], -1), np.stack([right, bottom], -1),
                        np.stack([left, bottom], -1), np.stack([left, top], -1)], axis=1)  # fmt: skip
    a, b, c, d, e, f = tuple(transform)[:6]
    x, y = a * corners[..., 0] + b * corners[..., 1] + c, d * corners[..., 0] + e * corners[..., 1] + f
    lon, lat = reproject(crs, "EPSG:4326", x.reshape(-1), y.reshape(-1))  # (x, y) = (lon, lat) order
    return shapely.to_wkb(shapely.polygons(np.stack([lon, lat], -1).reshape(corners.shape)))


def geo_metadata() -> dict[str, Any]:
    """The GeoParquet `geo` metadata of the `geometry` column."""
    from rasterio.crs import CRS

    crs = CRS.from_user_input(GEOMETRY_CRS).to_dict(projjson=True)
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs}
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def embedding_schema(dim: int) -> pa.Schema:
    """The schema of the parts (see the module docstring)."""
    fields = [
        pa.field("scene", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("col", pa.int32(), nullable=False),
        pa.field("crs", pa.string(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("modalities", pa.list_(pa.string()), nullable=False),
        pa.field("source_files", pa.list_(pa.string()), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ]
    return pa.schema(fields, metadata={"geo": json.dumps(geo_metadata())})


def scene_table(schema: pa.Schema, scene: str, sources: dict[str, str], model: str, transform: Any, crs: Any,
                boxes: np.ndarray, embeddings: np.ndarray) -> pa.Table:  # fmt: skip
    """The rows of one scene: a box (left, top, right, bottom pixels) and an embedding per row."""
    if not crs:
        raise ValueError(f"scene {scene} has no CRS; GeoParquet outputs need georeferenced inputs.")
    count, dim = embeddings.shape
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), pa.float32())
    columns = {
        "scene": pa.array([scene] * count, pa.string()),
        "row": pa.array(boxes[:, 1], pa.int32()),
        "col": pa.array(boxes[:, 0], pa.int32()),
        "crs": pa.array([crs.to_string()] * count, pa.string()),
        "geometry": pa.array(pixel_polygons(transform, crs, boxes), pa.binary()),
        "modalities": pa.array([list(sources)] * count, pa.list_(pa.string())),
        "source_files": pa.array([list(sources.values())] * count, pa.list_(pa.string())),
        "model": pa.array([model] * count, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    return pa.Table.from_pydict(columns, schema=schema)


class _Part:
    """One part file being written (under a temporary name until `commit`)."""

    def __init__(self, path: Path, schema: pa.Schema):
        from .outputs import partial_path

        self.path, self.temporary = path, partial_path(path)
        self.writer = pq.ParquetWriter(self.temporary, schema)
        self.pending: list[pa.Table] = []
        self.rows, self.pending_rows, self.scenes = 0, 0, []

    def add(self, table: pa.Table | None, scene: str, complete: bool = True) -> None:
        if table is not None:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self.rows += table.num_rows
        if complete:
            self.scenes.append(scene)
        if self.pending_rows >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=ROWS_PER_GROUP)
            self.pending, self.pending_rows = [], 0

    def commit(self) -> list[str]:
        self.flush()
        self.writer.close()
        os.replace(self.temporary, self.path)
        return self.scenes

    def discard(self) -> None:
        self.writer.close()
        self.temporary.unlink(missing_ok=True)


class GeoParquetParts:
    """The part files one process writes into a GeoParquet dataset folder: `add` the rows of scenes; parts
    roll over at `rows_per_part` rows. `add` and `close` return the scenes whose part was committed (for the
    resume manifest)."""

    def __init__(self, folder: str | os.PathLike, rank: int = 0, rows_per_part: int = ROWS_PER_PART):
        import uuid

        self.folder, self.rank, self.rows_per_part = Path(folder), rank, rows_per_part
        self.run = uuid.uuid4().hex[:8]
        self.part: _Part | None = None
        self.count = 0

    def add(self, table: pa.Table | None, scene: str, complete: bool = True) -> list[tuple[str, Path]]:
        """Rows of `scene` (None: no more rows); the scene counts as written once its part is committed after its
        `complete` call, and parts roll over only between scenes."""
        if self.part is None and table is not None:
            name = f"part-r{self.rank:05d}-{self.run}-{self.count:05d}.parquet"
            self.part = _Part(self.folder / name, table.schema)
            self.count += 1
        if self.part is None:
            return []
        self.part.add(table, scene, complete)
        return self.close() if complete and self.part.rows >= self.rows_per_part else []

    def close(self) -> list[tuple[str, Path]]:
        part, self.part = self.part, None
        return [(scene, part.path) for scene in part.commit()] if part is not None else []

    def discard(self) -> None:
        if self.part is not None:
            self.part.discard()
            self.part = None


def merge_parts(folder: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """One GeoParquet file of a dataset folder's parts, written row group by row group."""
    from .outputs import atomic_file

    parts = sorted(Path(folder).glob("part-*.parquet"))
    if not parts:
        raise ValueError(f"{folder} holds no part-*.parquet files.")
    schema = pq.read_schema(parts[0])
    with atomic_file(output, overwrite) as partial, pq.ParquetWriter(partial, schema) as writer:
        for part in parts:
            source = pq.ParquetFile(part)
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group))
    return Path(output)


def read_rows(folder: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of a dataset folder (its committed parts), sorted by scene, row and col."""
    table = pq.read_table(folder, columns=list(columns) if columns else None)
    return table.sort_by([("scene", "ascending"), ("row", "ascending"), ("col", "ascending")])


__all__ = ["GeoParquetParts", "embedding_schema", "geo_metadata", "merge_parts", "pixel_polygons", "read_rows",
           "scene_table"]  # fmt: skip
