"""Raster outputs written as the scene engine's rows arrive, finished as Cloud Optimized GeoTIFFs.

Rows go into a tiled, deflate-compressed GeoTIFF under a temporary name; at the end overviews are built on it and
GDAL copies it, block by block with the overviews in front (a COG), into the temporary that the caller's
`atomic_outputs` renames into place. So a
granule-sized output never sits in memory, and the user's disk sees the whole file or nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_SIZE = 256
WRITE_CACHE_MB = 32  # GDAL's block cache while an output becomes a COG: a constant, whatever the output's size
CLASS_MAP_QUICKLOOK_MAX_SIDE = 4096  # larger class maps get a decimated quick-look (nearest), not a full-size PNG


class GeoTiffRows:
    """One raster output, (count, H / scale, W / scale) over the scene of `profile`, written by rows into `path`.

    `write(top, values, left=0)` takes (count, rows, cols) values (NaN/inf become `nodata`, integer types are rounded and
    clipped, as `write_geotiff` does); `finish()` turns the file into a COG (`cog=True`) and closes it."""

    def __init__(self, path: str | os.PathLike, profile: Mapping[str, Any], count: int, dtype: str,
                 nodata: float | None, scale: int = 1, band_names: Sequence[str] | None = None, cog: bool = True,
                 resampling: str = "nearest"):  # fmt: skip
        import rasterio
        from rasterio.transform import Affine

        from .outputs import partial_path

        self.path, self.dtype, self.nodata, self.cog, self.resampling = Path(path), np.dtype(dtype), nodata, cog, resampling
        self.height, self.width = -(-profile["height"] // scale), -(-profile["width"] // scale)
        self.staging = partial_path(self.path) if cog else self.path
        tiled = self.height >= BLOCK_SIZE and self.width >= BLOCK_SIZE
        options = {"tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE} if tiled else {}
        self.dataset = rasterio.open(self.staging, "w", driver="GTiff", height=self.height, width=self.width,
                                     count=count, dtype=self.dtype.name, crs=profile.get("crs"),
                                     transform=profile["transform"] @ Affine.scale(scale), nodata=nodata,
                                     compress="deflate", interleave="band", BIGTIFF="IF_SAFER",
                                     **options)  # fmt: skip
        for index, name in enumerate(band_names or (), start=1):
            self.dataset.set_band_description(index, str(name))

    def write(self, top: int, values: np.ndarray, nodata: np.ndarray | None = None, left: int = 0) -> None:
        """Write (count, rows, cols) values at output row `top` and column `left`; `nodata` (rows, cols) marks pixels
        as nodata."""
        from rasterio.windows import Window

        from .geotiff import _cast

        if values.ndim == 2:
            values = values[None]
        if left + values.shape[-1] > self.width or top + values.shape[-2] > self.height:
            raise ValueError(f"Rows {top}..{top + values.shape[-2]} x columns {left}..{left + values.shape[-1]} do not "
                             f"fit the output {self.height} x {self.width}.")  # fmt: skip
        values = _cast(values, self.dtype, self.nodata)
        if nodata is not None:
            values[:, nodata] = self.nodata
        self.dataset.write(values, window=Window(left, top, values.shape[-1], values.shape[-2]))

    def finish(self) -> Path:
        """Close the file; as a COG at `path`: overviews built on the tiled file, then copied with them in front
        (`COPY_SRC_OVERVIEWS`, the classic COG layout; band-interleaved, so that many-band outputs such as
        embeddings stream through a small block cache). Returns `path`."""
        import rasterio
        import rasterio.shutil
        from rasterio.enums import Resampling

        self.dataset.close()
        if not self.cog:
            return self.path
        try:
            with rasterio.Env(GDAL_CACHEMAX=WRITE_CACHE_MB * 2**20):
                factors = [2**k for k in range(1, 16) if max(self.height, self.width) >> k >= BLOCK_SIZE // 2]
                if factors:
                    with rasterio.open(self.staging, "r+") as staged:
                        staged.build_overviews(factors, getattr(Resampling, self.resampling))
                rasterio.shutil.copy(self.staging, self.path, driver="GTiff", COPY_SRC_OVERVIEWS="YES", TILED="YES",
                                     BLOCKXSIZE=BLOCK_SIZE, BLOCKYSIZE=BLOCK_SIZE, COMPRESS="DEFLATE",
                                     INTERLEAVE="BAND", BIGTIFF="IF_SAFER")  # fmt: skip
        finally:
            self.staging.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        if not self.dataset.closed:
            self.dataset.close()
        if self.cog:
            self.staging.unlink(missing_ok=True)


def decimated_shape(src: Any, max_side: int) -> tuple[int, int]:
    """(height, width) at which to read an open raster, decimated by a whole factor so that no side exceeds
    `max_side` (its own size if it fits)."""
    factor = max(1, math.ceil(max(src.height, src.width) / max_side))
    return -(-src.height // factor), -(-src.width // factor)


def read_for_quicklook(path: str | os.PathLike, max_side: int = CLASS_MAP_QUICKLOOK_MAX_SIDE) -> np.ndarray:
    """Band 1 of a raster, whole if its sides fit `max_side`, else decimated (nearest) to fit it."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1, out_shape=decimated_shape(src, max_side))


__all__ = ["BLOCK_SIZE", "CLASS_MAP_QUICKLOOK_MAX_SIDE", "GeoTiffRows", "decimated_shape", "read_for_quicklook"]
