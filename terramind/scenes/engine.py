"""The scene engine: one streaming loop for embed, predict and generate, at a memory that does not grow with the scene.

A scene is cut into tiles (`TileGrid`: `tile_size` squares overlapping by `overlap`, the last row and column flush
with the padded edge). Loader threads read each tile's window of the inputs (rasterio windowed reads, the overlap
included; GDAL's block cache, capped at `GDAL_CACHE_MB`, serves the blocks that neighbouring tiles share) and
prepare it (`prepare`: e.g. the image processor) while the model computes. Tiles whose every pixel is nodata are
skipped (no model time) and counted. The others go to the model `step` in batches of `batch_size`, in row-major
order (the order and batches of the in-memory tiler, so results match it). Tile outputs are merged into a rolling
band of output rows (`RowBand`: blended with a tapered window, nearest tile centre, or last tile wins), and every
row that no later tile touches goes to the `output` at once. So memory holds a few batches and one band of rows,
never the scene. Outputs that can take blocks (`write_block`) get scenes wider than `stripe_width` in vertical
stripes (`Stripe`), one after the other: the band is then a stripe wide, not a scene wide, and memory does not grow
with the scene's width either. Neighbouring stripes share the tile columns on their border (those run twice), so
every output pixel is still blended from the same tiles, in the same order.

Plug-ins, all numpy in and out (this module imports neither torch nor the model, so an onnxruntime step works with
torch absent):
- `prepare(raw, height, width) -> (inputs, nodata)`: raw window arrays {name: (C, h, w) or (C, T, h, w)}, clipped
  to the scene, -> model inputs padded at the bottom/right to (height, width) and a (height, width) nodata mask;
- `step(batch) -> outputs`: {name: (n, ...)} -> an array or {name: array} (n, ..., tile / s, tile / s);
- `output.write_rows(top, values, nodata)`: finished output rows {name: (..., rows, W / s)} from output row `top`;
  or `output.write_block(top, left, values, nodata)`: a finished block {name: (..., rows, cols)} at output row `top`
  and column `left` (outputs with it stream wide scenes in stripes).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

GDAL_CACHE_MB = 128  # GDAL's block cache while a scene streams: a constant, not the default 5% of the RAM
MERGE_MODES = ("blend", "nearest", "last")
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float32", "float64")

Arrays = dict[str, np.ndarray]
Prepare = Callable[[Arrays, int, int], tuple[Arrays, np.ndarray]]
Step = Callable[[Arrays], "np.ndarray | Arrays"]


class SceneOutput(Protocol):
    """Where finished rows go (a GeoTIFF/COG writer, GeoParquet rows, an in-memory array)."""

    def write_rows(self, top: int, values: Arrays, nodata: np.ndarray) -> None: ...


STRIPE_WIDTH = 2048  # px: wider scenes stream in stripes (into outputs that take blocks), so memory stays flat


# ----------------------------------------------------------------------------- tiles
def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size): regular steps, the last tile flush with the edge; [0] if size <= tile."""
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be >= 1, got tile={tile}, stride={stride}.")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a (height, width) scene padded at the bottom/right to (padded_height, padded_width)."""

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile: int
    overlap: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, tile_size: int, overlap: int = 0, multiple_of: int = 1,
             shrink: bool = False) -> TileGrid:  # fmt: skip
        """Pad to multiples of `multiple_of` and (unless `shrink`: tiles shrink to a smaller scene's shorter side
        instead) to at least one tile; tiles step by tile_size - overlap."""
        if tile_size < 1 or tile_size % multiple_of or not 0 <= overlap < tile_size or overlap % multiple_of:
            raise ValueError(f"tile_size and overlap must be multiples of {multiple_of} with 0 <= overlap < tile_size, "
                             f"got tile_size={tile_size}, overlap={overlap}.")  # fmt: skip
        padded_h, padded_w = (-(-n // multiple_of) * multiple_of for n in (height, width))
        if shrink:
            tile_size = min(tile_size, padded_h, padded_w)
            overlap = min(overlap, tile_size - multiple_of)
        else:
            padded_h, padded_w = max(tile_size, padded_h), max(tile_size, padded_w)
        stride = tile_size - overlap
        return cls(height, width, padded_h, padded_w, tile_size, overlap,
                   tuple(tile_starts(padded_h, tile_size, stride)), tuple(tile_starts(padded_w, tile_size, stride)))  # fmt: skip

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, row by row."""
        return [(top, left) for top in self.tops for left in self.lefts]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def stripes(self, width: int | None = None) -> tuple[Stripe, ...]:
        """The grid cut into vertical stripes about `width` pixels wide (None, or a grid no wider: one stripe).

        A stripe owns the pixel columns [start, stop) that only its own tiles cover, so it blends them completely;
        neighbouring stripes therefore share the tile columns that overlap their border (computed in both)."""
        lefts, tile = self.lefts, self.tile
        if width is None or self.padded_width <= width:
            return (Stripe(0, lefts, 0, self.padded_width),)
        stripes: list[Stripe] = []
        first, start = 0, 0  # the stripe's first tile column and first owned pixel column
        while True:
            last = first
            while last + 1 < len(lefts) and lefts[last + 1] + tile - lefts[first] <= width:
                last += 1
            while True:  # widen until the next stripe starts further right (width below ~2 tiles)
                if last + 1 >= len(lefts):
                    stripes.append(Stripe(len(stripes), lefts[first:], start, self.padded_width))
                    return tuple(stripes)
                stop = lefts[last + 1]  # the first pixel that a tile right of this stripe covers
                following = next(j for j in range(len(lefts)) if lefts[j] + tile > stop)
                if following > first:
                    break
                last += 1
            stripes.append(Stripe(len(stripes), lefts[first : last + 1], start, stop))
            first, start = following, stop


@dataclass(frozen=True)
class Stripe:
    """A vertical stripe of a `TileGrid`: its tile columns (`lefts`) and the pixel columns [start, stop) it owns."""

    index: int
    lefts: tuple[int, ...]
    start: int
    stop: int

    @property
    def origin(self) -> int:
        return self.lefts[0]


def blend_window(size: int, ramp: int) -> np.ndarray:
    """(size, size) float32 weights: 1 in the middle, a linear ramp over `ramp` pixels to a small floor at the
    edges (the in-memory tiler's window, value for value)."""
    ramp = max(1, min(ramp, size // 2))
    profile = np.ones(size, dtype=np.float32)
    edge = (np.arange(ramp, dtype=np.float32) + np.float32(0.5)) / np.float32(ramp)
    profile[:ramp] = edge
    profile[-ramp:] = edge[::-1]
    return profile[:, None] * profile[None, :]


# ----------------------------------------------------------------------------- inputs
def _missing(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a raw value is nodata (NaN/inf, or the file's nodata value)."""
    missing = ~np.isfinite(array) if array.dtype.kind == "f" else np.zeros(array.shape, dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        missing |= array == nodata
    return missing


class SceneSource:
    """The rasters of one scene, opened for windowed reads: {name: path, open rasterio dataset, or a list of them
    (the time steps of a modality)}. Paths may be GeoTIFFs (tiled or striped), COGs or VRT mosaics.

    Every raster must be on the first one's grid (size, CRS and transform): modalities on other grids are an error
    (reproject them onto one grid first, e.g. with a `WarpedVRT` or `gdalwarp`), never resampled silently."""

    def __init__(self, inputs: Mapping[str, Any]):
        import rasterio

        from .geotiff import _band_names

        if not inputs:
            raise ValueError("A scene needs at least one input, e.g. {'S2L2A': 'scene.tif'}.")
        self.specs = dict(inputs)
        self._opened: list[Any] = []
        self.rasters: dict[str, list[Any]] = {}
        try:
            for name, spec in self.specs.items():
                steps = list(spec) if isinstance(spec, (list, tuple)) else [spec]
                if not steps:
                    raise ValueError(f"Input {name} names no file.")
                self.rasters[name] = [self._open(step, rasterio) for step in steps]
            self._check_grid()
        except BaseException:
            self.close()
            raise
        first = next(iter(self.rasters.values()))[0]
        self.profile = dict(first.profile)
        self.height, self.width = first.height, first.width
        self.band_names = {name: _band_names(steps[0]) for name, steps in self.rasters.items()}
        self.nodata = {name: steps[0].nodata for name, steps in self.rasters.items()}
        self.paths = {name: [str(getattr(s, "name", s)) for s in steps] for name, steps in self.rasters.items()}

    def _open(self, spec: Any, rasterio: Any) -> Any:
        if not isinstance(spec, (str, os.PathLike)):
            if not hasattr(spec, "read") or not hasattr(spec, "transform"):
                raise ValueError(f"An input must be a path or an open rasterio dataset, got {type(spec).__name__}.")
            return spec
        path = Path(spec)
        if path.is_dir():
            raise ValueError(f"{path.resolve()} is a folder, not a raster file.")
        try:
            dataset = rasterio.open(path)
        except rasterio.errors.RasterioError as error:
            what = "does not exist" if not path.exists() else f"is not a readable GeoTIFF ({str(error).splitlines()[0]})"
            raise ValueError(f"{path.resolve()} {what}.") from None
        self._opened.append(dataset)
        unsupported = sorted(set(dataset.dtypes) - set(SUPPORTED_DTYPES))
        if unsupported:
            raise ValueError(f"{path}: unsupported data type {unsupported}; supported are {SUPPORTED_DTYPES}.")
        return dataset

    def _check_grid(self) -> None:
        reference = next(iter(self.rasters.values()))[0]
        for steps in self.rasters.values():
            for raster in steps:
                names = f"{reference.name} and {raster.name}"
                if (raster.height, raster.width) != (reference.height, reference.width):
                    raise ValueError(f"Raster sizes differ: {reference.height}x{reference.width} vs {raster.height}x"
                                     f"{raster.width} ({names}); the modalities must share one grid (reproject them "
                                     "onto the first one's grid, e.g. with a WarpedVRT or gdalwarp).")  # fmt: skip
                if raster.crs != reference.crs:
                    raise ValueError(f"CRSs differ: {reference.crs} vs {raster.crs} ({names}); reproject first.")
                if not raster.transform.almost_equals(reference.transform):
                    raise ValueError(f"Geotransforms differ ({names}): {tuple(reference.transform)[:6]} vs "
                                     f"{tuple(raster.transform)[:6]}; the rasters are not aligned.")  # fmt: skip

    def reopened(self) -> SceneSource:
        """The same scene opened again (rasterio datasets are not shared between threads); itself if it was given
        open datasets."""
        if any(not isinstance(s, (str, os.PathLike)) for spec in self.specs.values()
               for s in (spec if isinstance(spec, (list, tuple)) else [spec])):  # fmt: skip
            return self
        return SceneSource(self.specs)

    def read(self, top: int, left: int, height: int, width: int) -> Arrays:
        """Raw values of a window clipped to the scene: {name: (C, h, w)}, or (C, T, h, w) for time series."""
        from rasterio.windows import Window

        window = Window(left, top, max(0, min(width, self.width - left)), max(0, min(height, self.height - top)))
        out = {}
        for name, steps in self.rasters.items():
            arrays = [raster.read(window=window) for raster in steps]
            out[name] = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=1)
        return out

    def close(self) -> None:
        for dataset in self._opened:
            dataset.close()
        self._opened = []

    def __enter__(self) -> SceneSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def raw_nodata(raw: Arrays, nodata: Mapping[str, float | None]) -> dict[str, np.ndarray]:
    """Per input, the (h, w) mask of pixels nodata in every band (and time step)."""
    return {name: _missing(value, nodata.get(name)).reshape(-1, *value.shape[-2:]).all(axis=0)
            for name, value in raw.items()}  # fmt: skip


# ----------------------------------------------------------------------------- blending
class RowBand:
    """The output rows that tiles still touch, for one output: tile outputs merge in, finished rows go out.

    `blend` sums values x a tapered window and divides by the summed windows (floating point); `nearest` keeps the
    value of the tile whose window is highest (integer outputs: the nearest tile centre); `last` lets later tiles
    overwrite (tiles without overlap). Pixels no tile covered (skipped tiles) come out NaN (blend) or 0."""

    def __init__(self, first: np.ndarray, grid: TileGrid, mode: str, stripe: Stripe | None = None):
        if mode not in MERGE_MODES:
            raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}.")
        out_tile = first.shape[-1]
        if grid.tile % out_tile or first.shape[-2] != out_tile:
            raise ValueError(f"Tile outputs must be square and divide the tile size {grid.tile}, got "
                             f"{tuple(first.shape)}.")  # fmt: skip
        self.scale, self.out_tile, self.mode = grid.tile // out_tile, out_tile, mode
        self.lead = first.shape[:-2]
        self.window = blend_window(out_tile, max(1, grid.overlap // self.scale))
        stripe = stripe or grid.stripes()[0]
        self.origin = stripe.origin  # the pixel column of the band's first column
        self.width = (stripe.lefts[-1] + grid.tile - stripe.origin) // self.scale
        self.dtype = np.dtype(np.float32) if mode == "blend" else first.dtype
        self.top = 0  # output row of the band's first row
        self.rows = 0  # rows in use; the buffers are allocated once (one tile high) and grow only if tiles need
        self.values = np.zeros((*self.lead, out_tile, self.width), dtype=self.dtype)
        self.weights = np.zeros((out_tile, self.width), dtype=np.float32)

    @property
    def capacity(self) -> int:
        return self.values.shape[-2]

    def _reach(self, bottom: int) -> None:
        needed = bottom - self.top
        if needed > self.values.shape[-2]:
            extra = needed - self.values.shape[-2]
            self.values = np.concatenate([self.values, np.zeros((*self.lead, extra, self.width), self.dtype)], axis=-2)
            self.weights = np.concatenate([self.weights, np.zeros((extra, self.width), np.float32)], axis=0)
        self.rows = max(self.rows, needed)

    def add(self, part: np.ndarray, top: int, left: int) -> None:
        row, col = top // self.scale - self.top, (left - self.origin) // self.scale
        if row < 0:
            raise ValueError("A tile came after its rows were written; tiles must come row by row.")
        self._reach(self.top + row + self.out_tile)
        rows, cols = slice(row, row + self.out_tile), slice(col, col + self.out_tile)
        if self.mode == "blend":
            self.values[..., rows, cols] += part.astype(np.float32, copy=False) * self.window
            self.weights[rows, cols] += self.window
        elif self.mode == "nearest":
            nearer = self.window > self.weights[rows, cols]
            self.values[..., rows, cols] = np.where(nearer, part, self.values[..., rows, cols])
            self.weights[rows, cols] = np.maximum(self.weights[rows, cols], self.window)
        else:
            self.values[..., rows, cols] = part
            self.weights[rows, cols] = 1.0

    def pop(self, until: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first row, values, covered) of the output rows above `until` (output rows), which leave the band (the
        rows below move up in place)."""
        count = max(0, min(until - self.top, self.capacity))  # rows below `rows` are empty (skipped tiles)
        weights = self.weights[:count].copy()
        if self.mode == "blend":
            with np.errstate(invalid="ignore", divide="ignore"):
                values = self.values[..., :count, :] / weights
        else:
            values = self.values[..., :count, :].copy()
        keep = max(0, self.rows - count)
        if keep:
            self.values[..., :keep, :] = self.values[..., count : self.rows, :]
            self.weights[:keep] = self.weights[count : self.rows]
        self.values[..., keep : max(self.rows, count), :] = 0
        self.weights[keep : max(self.rows, count)] = 0
        top = self.top
        self.top += count
        self.rows = keep
        return top, values, weights > 0


# ----------------------------------------------------------------------------- the loop
class _Allocator:
    """glibc's allocator, kept from holding freed tile buffers: two arenas, and freed memory handed back to the system
    after each band of rows (`malloc_trim`). Tiles are allocated in loader threads and freed in the consumer; without
    this, the loader threads' heaps keep growing with the number of tiles, i.e. with the scene. (A fixed mmap
    threshold would bound them too, but makes every large torch buffer a fresh mmap: model steps ~40% slower.)
    No-ops where the C library is not glibc."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        try:
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self.libc.mallopt(-8, 2)  # M_ARENA_MAX
            self.libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            self.libc = None

    def trim(self) -> None:
        if self.libc is not None:
            self.libc.malloc_trim(0)


@dataclass
class SceneRun:
    """What a run did: tiles in the scene, tiles the model saw, tiles skipped for having no data (tiles on a
    border between stripes count in both stripes)."""

    tiles: int = 0
    computed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)


@dataclass
class SceneJob:
    """One scene for `run_scenes`: its source, how its windows are prepared, where its rows go, and a name for
    messages. `output.close()`, if it has one, runs once the scene's last rows are written.

    For many scenes, give `source` as a function that opens it and `setup(source) -> prepare` instead of
    `prepare`: scenes are then opened in turn, and one that cannot be read stops the run after the scenes before
    it are written, with a one-line error that names it."""

    source: SceneSource | Callable[[], SceneSource]
    prepare: Prepare | None
    output: SceneOutput
    name: str = "scene"
    setup: Callable[[SceneSource], Prepare] | None = None

    def open(self) -> None:
        try:
            if not isinstance(self.source, SceneSource):
                self.source = self.source()
            if self.prepare is None and self.setup is not None:
                self.prepare = self.setup(self.source)
        except (ValueError, OSError) as error:
            raise ValueError(f"{self.name}: {str(error).splitlines()[0] if str(error) else error!r}") from None


@dataclass
class _Failure:
    """A scene that could not be opened: the run stops after the scenes before it."""

    error: ValueError


@dataclass
class _Tile:
    scene: int
    stripe: int
    top: int
    left: int
    inputs: Arrays | None  # None: skipped (no data)
    nodata: np.ndarray


def _reader(jobs: list[SceneJob], plan: Callable[[SceneJob], tuple[TileGrid, tuple[Stripe, ...]]],
            grids: list[tuple[TileGrid, tuple[Stripe, ...]]], workers: int) -> Iterator[_Tile | _Failure]:
    """Prepared tiles of every scene in order (stripe by stripe, row-major within a stripe), read by `workers`
    threads a few tiles ahead of the consumer. Each thread opens its own datasets (rasterio's are not shared between threads)."""
    local = threading.local()
    opened: list[SceneSource] = []
    lock = threading.Lock()

    def load(scene: int, stripe: int, top: int, left: int) -> _Tile:
        job, grid = jobs[scene], grids[scene][0]
        cache = getattr(local, "sources", None)
        if cache is None:
            cache = local.sources = {}
        source = job.source if workers == 1 else cache.get(scene)
        if source is None:
            for old in [key for key in cache if key < scene]:
                cache.pop(old).close()
            source = cache[scene] = job.source.reopened()
            with lock:
                opened.append(source)
        try:
            raw = source.read(top, left, grid.tile, grid.tile)
            inputs, nodata = job.prepare(raw, grid.tile, grid.tile)
        except (ValueError, OSError) as error:
            raise ValueError(f"{job.name}: {str(error).splitlines()[0] if str(error) else error!r}") from None
        return _Tile(scene, stripe, top, left, None if nodata.all() else inputs, nodata)

    ahead = max(4, 4 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="terramind-reader") as pool:
        pending: deque = deque()
        try:
            for scene, job in enumerate(jobs):
                try:
                    job.open()  # in order: a scene that cannot be read stops the run after the ones before it
                except ValueError as error:
                    while pending:
                        yield pending.popleft().result()
                    yield _Failure(error)
                    return
                grid, stripes = plan(job)
                grids.append((grid, stripes))
                for stripe in stripes:
                    for top in grid.tops:
                        for left in stripe.lefts:
                            pending.append(pool.submit(load, scene, stripe.index, top, left))
                            if len(pending) >= ahead:
                                yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()
            for source in opened:
                if all(source is not job.source for job in jobs):
                    source.close()


def _visits(grid: TileGrid, stripes: tuple[Stripe, ...]) -> int:
    """Tiles a scene runs: its grid's, plus the border columns that neighbouring stripes share."""
    return len(grid.tops) * sum(len(stripe.lefts) for stripe in stripes)


class _SceneState:
    """One scene in flight: its stripes, and the current stripe's bands of output rows (per output) and of nodata
    (per output resolution)."""

    def __init__(self, job: SceneJob, grid: TileGrid, stripes: tuple[Stripe, ...], merge: str | Mapping[str, str],
                 pooling: str, allocator: _Allocator | None = None):  # fmt: skip
        self.job, self.grid, self.stripes, self.merge, self.pooling = job, grid, stripes, merge, pooling
        self.allocator = allocator
        self.run = SceneRun(tiles=_visits(grid, stripes))
        self.templates: dict[str, tuple[np.ndarray, str]] = {}  # output -> (a tile's output, merge mode)
        self.stripe = stripes[0]
        self.unwritten: list[int] = []  # stripes passed before any tile was computed (all their tiles skipped)
        self.bands: dict[str, RowBand] = {}
        self.mask_bands: dict[int, RowBand] = {}  # per output resolution: the nodata mask of the output pixels
        self.seen = 0
        self.last_top = 0  # the top of the last tile merged

    def _start(self) -> None:
        """Fresh bands for the current stripe (rows from the top)."""
        grid = self.grid
        self.bands = {name: RowBand(first, grid, mode, self.stripe) for name, (first, mode) in self.templates.items()}
        self.mask_bands = {scale: RowBand(np.zeros((grid.tile // scale,) * 2, dtype=np.uint8), grid, "last", self.stripe)
                           for scale in {band.scale for band in self.bands.values()}}  # fmt: skip
        self.last_top = 0

    def _learn(self, result: Mapping[str, np.ndarray], row: int) -> None:
        """The outputs' shapes and merge modes, from the first computed tile; stripes passed before it are written
        (as nodata) now."""
        for name, values in result.items():
            if values.ndim >= 3:  # (n, 2) vectors (coordinates) go to add_tiles only
                mode = self.merge.get(name, "auto") if isinstance(self.merge, Mapping) else self.merge
                if mode == "auto":
                    mode = "blend" if values.dtype.kind == "f" else "nearest"
                self.templates[name] = (values[row], mode)
        current = self.stripe
        for index in self.unwritten:
            self.stripe = self.stripes[index]
            self._start()
            self.emit(None)
        self.stripe = current
        self._start()

    def _enter(self, stripe: int) -> None:
        """Move on to `stripe`: the stripes before it are finished (their last rows go out; stripes whose tiles were
        all skipped come out as nodata)."""
        while self.stripe.index < stripe:
            if self.templates:
                self.emit(None)
            else:
                self.unwritten.append(self.stripe.index)
            self.stripe = self.stripes[self.stripe.index + 1]
            if self.templates:
                self._start()

    def finish(self) -> None:
        """The last rows of the last stripes."""
        self._enter(len(self.stripes) - 1)
        self.emit(None)

    def add(self, tiles: list[_Tile], result: Mapping[str, np.ndarray], rows: list[int]) -> None:
        """Merge tiles (in order) into the bands; each time a new row of tiles starts, the rows above it go out, so
        a band never holds more than a tile's height of rows."""
        for tile, row in zip(tiles, rows, strict=True):
            self._enter(tile.stripe)
            if not self.templates:
                self._learn(result, row)
            if tile.top > self.last_top:
                self.emit(tile.top)
                self.last_top = tile.top
            for name, band in self.bands.items():
                band.add(result[name][row], tile.top, tile.left)
            for scale, band in self.mask_bands.items():
                band.add(_pool(tile.nodata, scale, self.pooling), tile.top, tile.left)
        self.tiles_done(tiles, {name: values[rows] for name, values in result.items()})

    def tiles_done(self, tiles: list[_Tile], values: Mapping[str, np.ndarray] | None) -> None:
        """Per-tile outputs for outputs that want them (`output.add_tiles(boxes, values, nodata)`: (top, left, side)
        boxes, the step's outputs of those tiles or None for skipped tiles, and their pixel nodata masks)."""
        hook = getattr(self.job.output, "add_tiles", None)
        if hook is not None:
            hook([(tile.top, tile.left, self.grid.tile) for tile in tiles], values, [tile.nodata for tile in tiles])

    def emit(self, until: int | None) -> None:
        """Hand the rows above pixel row `until` (None: all, to the scene's bottom) to the output, cropped to the scene
        and to the stripe's own columns: one call per output resolution, with that resolution's nodata mask (nodata also where no tile
        was run)."""
        grid, stripe = self.grid, self.stripe
        whole = len(self.stripes) == 1
        for scale, mask_band in self.mask_bands.items():
            height, width = -(-grid.height // scale), -(-grid.width // scale)
            limit = height if until is None else until // scale
            if stripe.start % scale or stripe.stop % scale:
                raise ValueError(f"Stripe borders {stripe.start}, {stripe.stop} are not on the output grid (1/{scale}).")
            left = stripe.start // scale  # the stripe's own output columns, in the scene and in the band
            cols = slice(left - stripe.origin // scale, min(stripe.stop // scale, width) - stripe.origin // scale)
            while mask_band.top < min(limit, height):  # a band's height at a time (rows of skipped tiles too)
                top, mask, _ = mask_band.pop(min(limit, mask_band.top + mask_band.capacity))
                out = {}
                for name, band in self.bands.items():
                    if band.scale == scale:
                        band_top, values, covered = band.pop(band.top + mask.shape[0])
                        mask = mask.astype(bool) | ~covered
                        out[name] = values[..., : height - band_top, cols]
                mask = mask[: height - top, cols]
                if left >= width:
                    continue  # a stripe of padding only
                if whole:
                    self.job.output.write_rows(top, out, mask)
                else:
                    self.job.output.write_block(top, left, out, mask)
        if self.allocator is not None:
            self.allocator.trim()


def run_scenes(
    jobs: list[SceneJob],
    step: Step,
    tile_size: int = 224,
    overlap: int = 0,
    batch_size: int = 8,
    multiple_of: int = 16,
    merge: str | Mapping[str, str] = "blend",
    shrink: bool = False,
    nodata_pooling: str = "any",
    num_workers: int = 1,
    progress: bool = True,
    description: str = "tiles",
    stripe_width: int | None = STRIPE_WIDTH,
) -> Iterator[SceneRun]:
    """Stream scenes through `step`: read and prepare tiles in loader threads, run them in batches (which span
    scenes, so that many small scenes fill batches too), merge the outputs into rolling bands and hand every finished
    row to its scene's output (see the module docstring). Yields each scene's `SceneRun` once its output is closed.

    `merge` is a mode per output name (or one for all): "blend", "nearest", "last", or "auto" (blend floating
    point outputs, nearest for integers); output pixels are nodata where the inputs' nodata mask is
    True for any (`nodata_pooling="any"`) or all (`"all"`) of the input pixels they cover; a scene of nodata only
    is an error. Scenes wider than `stripe_width` pixels go in stripes into outputs that have `write_block`
    (None: never)."""
    import time

    import rasterio
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if stripe_width is not None and stripe_width < 2 * tile_size:
        raise ValueError(f"stripe_width must be at least two tiles ({2 * tile_size} px), got {stripe_width}.")
    allocator = _Allocator()
    if nodata_pooling not in ("any", "all"):
        raise ValueError(f"nodata_pooling must be 'any' or 'all', got {nodata_pooling!r}.")
    grids: list[tuple[TileGrid, tuple[Stripe, ...]]] = []  # filled as the scenes are opened

    def plan(job: SceneJob) -> tuple[TileGrid, tuple[Stripe, ...]]:
        grid = TileGrid.plan(job.source.height, job.source.width, tile_size, overlap, multiple_of, shrink)
        stripes = grid.stripes(stripe_width if hasattr(job.output, "write_block") else None)
        bar.total = (bar.total or 0) + _visits(grid, stripes)
        bar.refresh()
        return grid, stripes

    states: dict[int, _SceneState] = {}
    skipped = 0
    start = time.perf_counter()

    def run_batch(batch: list[_Tile]) -> None:
        names = list(batch[0].inputs)
        shapes = {tile.inputs[name].shape for tile in batch for name in names}
        if len(shapes) > len(names):  # tiles of another side (a smaller scene): one batch per side
            for side in sorted({tile.inputs[names[0]].shape[-1] for tile in batch}):
                run_batch([tile for tile in batch if tile.inputs[names[0]].shape[-1] == side])
            return
        stacked = {name: np.stack([tile.inputs[name] for tile in batch]) for name in names}
        result = step(stacked)
        if not isinstance(result, Mapping):
            result = {"": result}
        for values in result.values():
            if values.shape[0] != len(batch):
                raise ValueError(f"The model step returned {values.shape[0]} rows for {len(batch)} tiles.")
        for scene in dict.fromkeys(tile.scene for tile in batch):
            rows = [i for i, tile in enumerate(batch) if tile.scene == scene]
            states[scene].add([batch[i] for i in rows], result, rows)
            states[scene].run.computed += len(rows)

    def finish(scene: int) -> SceneRun:
        state = states.pop(scene)
        if not state.templates:
            raise ValueError(f"{state.job.name}: every pixel is nodata ({', '.join(state.job.source.paths)}); there "
                             "is nothing to process.")  # fmt: skip
        state.finish()
        close = getattr(state.job.output, "close", None)
        if close is not None:
            close()
        state.run.seconds = time.perf_counter() - start
        return state.run

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20), \
            tqdm(total=0, desc=description, unit="tile", disable=not progress) as bar:  # fmt: skip
        batch: list[_Tile] = []
        done = 0  # scenes finished, in order
        for tile in _reader(jobs, plan, grids, max(1, num_workers)):
            if isinstance(tile, _Failure):
                if batch:
                    run_batch(batch)
                while done < len(grids) and done in states and states[done].seen == states[done].run.tiles:
                    yield finish(done)
                    done += 1
                raise tile.error
            state = states.get(tile.scene)
            if state is None:
                state = states[tile.scene] = _SceneState(jobs[tile.scene], *grids[tile.scene], merge, nodata_pooling,
                                                         allocator)  # fmt: skip
            state.seen += 1
            if tile.inputs is None:  # (no stripe change here: tiles before it may still wait in the batch)
                state.tiles_done([tile], None)
                state.run.skipped += 1
                skipped += 1
                bar.set_postfix_str(f"skipped {skipped} without data", refresh=False)
            else:
                batch.append(tile)
            if len(batch) == batch_size:
                run_batch(batch)
                batch = []
            bar.update(1)
            while done < len(grids) and done in states and states[done].seen == states[done].run.tiles and \
                    not any(t.scene == done for t in batch):  # fmt: skip
                yield finish(done)
                done += 1
        if batch:
            run_batch(batch)
        while done < len(jobs):
            yield finish(done)
            done += 1


def run_scene(source: SceneSource, prepare: Prepare, step: Step, output: SceneOutput, **options: Any) -> SceneRun:
    """`run_scenes` for one scene: returns its `SceneRun`."""
    return next(iter(run_scenes([SceneJob(source, prepare, output)], step, **options)))


def _pool(mask: np.ndarray, scale: int, how: str) -> np.ndarray:
    """A (h, w) nodata mask on the output grid (h / scale, w / scale): any or all of each block."""
    if scale == 1:
        return mask.astype(np.uint8)
    blocks = mask.reshape(mask.shape[0] // scale, scale, mask.shape[1] // scale, scale)
    return (blocks.any(axis=(1, 3)) if how == "any" else blocks.all(axis=(1, 3))).astype(np.uint8)


class ArrayOutput:
    """Rows and blocks gathered in memory (for scenes that fit: the Python API's in-memory results, tests); one
    output resolution."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, int, Arrays, np.ndarray]] = []

    def write_rows(self, top: int, values: Arrays, nodata: np.ndarray) -> None:
        self.write_block(top, 0, values, nodata)

    def write_block(self, top: int, left: int, values: Arrays, nodata: np.ndarray) -> None:
        self.blocks.append((top, left, values, nodata))

    def result(self) -> tuple[Arrays, np.ndarray]:
        """({name: (..., H, W)}, the (H, W) nodata mask) of everything written."""
        height = max(top + mask.shape[0] for top, _, _, mask in self.blocks)
        width = max(left + mask.shape[1] for _, left, _, mask in self.blocks)
        nodata = np.ones((height, width), dtype=bool)
        out: Arrays = {}
        for top, left, values, mask in self.blocks:
            rows, cols = slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1])
            nodata[rows, cols] = mask
            for name, value in values.items():
                if name not in out:
                    out[name] = np.zeros((*value.shape[:-2], height, width), dtype=value.dtype)
                out[name][..., rows, cols] = value
        return out, nodata


__all__ = ["GDAL_CACHE_MB", "STRIPE_WIDTH", "ArrayOutput", "RowBand", "SceneJob", "SceneOutput", "SceneRun", "SceneSource",
           "Stripe", "TileGrid", "blend_window", "raw_nodata", "run_scene", "run_scenes", "tile_starts"]  # fmt: skip
