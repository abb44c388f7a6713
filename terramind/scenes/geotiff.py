"""GeoTIFF input and output for TerraMind: band names, nodata and georeference in, model outputs out.

`read_geotiff` / `read_sample` give arrays, band names and nodata values in the form `TerraMindImageProcessor` takes;
`write_geotiff` writes generated modalities, segmentation maps or per-patch embeddings with the georeference of the
input, scaling the transform when the output has another resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import Affine

from ..errors import first_line
from ..modalities import match_bands, resolve_modality
from .outputs import atomic_file

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float32", "float64")


class GeoTiff(NamedTuple):
    """A raster read by `read_geotiff`: (C, H, W) values, band names (None when the file has none), profile."""

    array: np.ndarray
    band_names: tuple[str, ...] | None
    profile: dict[str, Any]


@dataclass
class GeoSample:
    """Co-registered rasters of several modalities, keyed by canonical modality name.

    Feed it as `processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)`; `profile` is
    the georeference shared by all modalities (for `write_geotiff`).
    """

    images: dict[str, np.ndarray]
    band_names: dict[str, tuple[str, ...] | None]
    nodata: dict[str, float | None]
    profile: dict[str, Any]
    paths: dict[str, Path]


def _band_names(src: rasterio.DatasetReader) -> tuple[str, ...] | None:
    """Band descriptions, if they name the bands: all present and unique, not the variable name rioxarray repeats."""
    names = src.descriptions
    if any(not name for name in names) or len(set(names)) < len(names):
        return None
    if src.count == 1 and names[0] == src.tags().get("long_name"):
        return None
    return tuple(names)


def _band_indexes(bands: Sequence[str | int], names: tuple[str, ...] | None, count: int, path: Path) -> list[int]:
    """1-based rasterio band indexes of `bands` (names, or 1-based indexes as in rasterio)."""
    indexes = []
    for band in bands:
        if isinstance(band, (int, np.integer)):
            if not 1 <= band <= count:
                raise ValueError(f"{path}: band index {band} is out of range; the file has bands 1..{count}.")
            indexes.append(int(band))
        elif names is None:
            raise ValueError(
                f"{path}: band {band!r} was requested by name but the file has no band descriptions; "
                f"select its {count} bands by 1-based index or pass band names to the processor."
            )
        else:
            indexes.append(match_bands([band], names, str(path))[0] + 1)
    return indexes


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """`rasterio.open` for reading, with a one-line ValueError naming the full path when the file is missing or is
    not a raster GDAL can read (e.g. a text file named .tif)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path.resolve()} is a folder, not a raster file.")
    try:
        src = rasterio.open(path)
    except RasterioError as error:
        what = "does not exist" if not path.exists() else f"is not a readable GeoTIFF ({first_line(error)})"
        raise ValueError(f"{path.resolve()} {what}.") from None
    with src:
        yield src


def _valid_pixels(array: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= array != nodata
    return valid


def read_geotiff(path: str | Path, bands: Sequence[str | int] | None = None) -> GeoTiff:
    """
    Read a GeoTIFF as (C, H, W) values with band names (from the band descriptions) and its rasterio profile (CRS,
    transform, nodata, ...). `bands` selects and orders bands by name (descriptions, Sentinel-2 ids such as "B02"
    match "BLUE") or by 1-based index. `ValueError` on unsupported dtypes, missing bands and all-nodata tiles.
    """
    path = Path(path)
    with open_raster(path) as src:
        unsupported = sorted(set(src.dtypes) - set(SUPPORTED_DTYPES))
        if unsupported:
            raise ValueError(f"{path}: unsupported data type {unsupported}; supported are {SUPPORTED_DTYPES}.")
        names = _band_names(src)
        indexes = list(range(1, src.count + 1)) if bands is None else _band_indexes(bands, names, src.count, path)
        try:
            array = src.read(indexes)
        except RasterioError as error:
            raise ValueError(f"{path}: the pixels cannot be read, the file is damaged or truncated "
                             f"({first_line(error)}).") from None  # fmt: skip
        profile = dict(src.profile)
    if not _valid_pixels(array, profile.get("nodata")).any():
        raise ValueError(f"{path}: every pixel is nodata (nodata={profile.get('nodata')}, NaN); the tile is empty.")
    band_names = None if names is None else tuple(names[i - 1] for i in indexes)
    return GeoTiff(array, band_names, profile)


def read_sample(paths: Mapping[str, str | Path], bands: Mapping[str, Sequence[str | int]] | None = None) -> GeoSample:
    """
    Read one GeoTIFF per modality (`{"S2L2A": path, "S1RTC": path, ...}`, any modality alias as key) and check that
    they share raster size, CRS and transform, since TerraMind aligns the modalities pixel by pixel.
    """
    if not paths:
        raise ValueError("`paths` must name at least one GeoTIFF, e.g. {'S2L2A': 'tile.tif'}.")
    bands = {resolve_modality(key): value for key, value in (bands or {}).items()}
    rasters: dict[str, GeoTiff] = {}
    files: dict[str, Path] = {}
    for key, path in paths.items():
        modality = resolve_modality(key)
        if modality in rasters:
            raise ValueError(f"Modality {modality} is given twice ({files[modality]} and {path}).")
        rasters[modality], files[modality] = read_geotiff(path, bands.get(modality)), Path(path)
    first = next(iter(rasters))
    reference = rasters[first].profile
    for modality, raster in rasters.items():
        profile, names = raster.profile, f"{files[first]} and {files[modality]}"
        if (profile["height"], profile["width"]) != (reference["height"], reference["width"]):
            raise ValueError(
                f"Raster sizes differ: {reference['height']}x{reference['width']} vs "
                f"{profile['height']}x{profile['width']} ({names}); TerraMind needs co-registered rasters."
            )
        if profile.get("crs") != reference.get("crs"):
            raise ValueError(f"CRSs differ: {reference.get('crs')} vs {profile.get('crs')} ({names}); reproject first.")
        if not profile["transform"].almost_equals(reference["transform"]):
            raise ValueError(
                f"Geotransforms differ ({names}): {tuple(reference['transform'])[:6]} vs "
                f"{tuple(profile['transform'])[:6]}; the rasters are not aligned."
            )
    return GeoSample(
        images={modality: raster.array for modality, raster in rasters.items()},
        band_names={modality: raster.band_names for modality, raster in rasters.items()},
        nodata={modality: raster.profile.get("nodata") for modality, raster in rasters.items()},
        profile=reference,
        paths=files,
    )


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor (torch is not imported here: the ONNX runtime path runs without it)
        import torch

        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    return np.asarray(array)


def _cast(values: np.ndarray, dtype: np.dtype, nodata: float | None) -> np.ndarray:
    """Values in `dtype`: rounded and clipped for integer types, NaN/inf written as `nodata`."""
    missing = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, dtype=bool)
    if missing.any() and nodata is None and dtype.kind != "f":
        raise ValueError(f"The array has NaN/inf values; give `nodata=` to write them as {dtype.name}.")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = info.min, info.max
        if nodata is not None and nodata in (low, high):  # valid values never take the nodata value
            low, high = low + (nodata == low), high - (nodata == high)
        values = np.where(missing, 0, values)
        values = np.clip(np.rint(values) if values.dtype.kind == "f" else values, low, high)
    values = values.astype(dtype)
    if nodata is not None:
        values[missing] = nodata
    return values


def write_geotiff(
    path: str | Path,
    array: Any,
    reference_profile: Mapping[str, Any] | GeoTiff | GeoSample,
    dtype: str | np.dtype | None = None,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
) -> Path:
    """
    Write (C, H, W), (1, C, H, W) or (H, W) values (numpy or torch) with the georeference of `reference_profile`
    (a rasterio profile, or the `GeoTiff`/`GeoSample` it came with).

    An array of another size than the reference is taken to cover the same extent, so its transform is scaled:
    per-patch embeddings of a 224x224 tile, reshaped to (D, 14, 14), get 16x larger pixels. Integer `dtype`s round
    and clip; NaN/inf become `nodata`. `band_names` become the band descriptions.
    """
    profile = reference_profile.profile if isinstance(reference_profile, (GeoTiff, GeoSample)) else reference_profile
    values = _as_numpy(array)
    if values.ndim == 4:
        if values.shape[0] != 1:
            raise ValueError(f"Write one sample per file: got a batch of {values.shape[0]} ({values.shape}).")
        values = values[0]
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"Expected (C, H, W), (1, C, H, W) or (H, W) values, got shape {values.shape}.")
    if values.dtype.kind not in "biuf":
        raise ValueError(f"Unsupported dtype {values.dtype}; write integer or floating point values.")
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    dtype = (
        np.dtype(dtype) if dtype is not None else np.dtype(np.float32 if values.dtype == np.float16 else values.dtype)
    )
    if dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"Unsupported output dtype {dtype.name}; supported are {SUPPORTED_DTYPES}.")
    if band_names is not None and len(band_names) != values.shape[0]:
        raise ValueError(f"{len(band_names)} band names for {values.shape[0]} bands.")

    count, height, width = values.shape
    out_profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype.name,
        "crs": profile.get("crs"),
        "transform": grid_transform(profile, height, width),
        "nodata": nodata,
        "compress": "deflate",
    }
    path = Path(path)
    with atomic_file(path, overwrite=True) as partial, rasterio.open(partial, "w", **out_profile) as dst:
        dst.write(_cast(values, dtype, nodata))
        for index, name in enumerate(band_names or (), start=1):
            dst.set_band_description(index, str(name))
    return path


def grid_transform(reference_profile: Mapping[str, Any], height: int, width: int) -> Affine:
    """The transform of a (height, width) grid over the extent of `reference_profile`: e.g. the 16x coarser
    transform of per-patch embeddings."""
    t = reference_profile["transform"]
    if (height, width) == (reference_profile["height"], reference_profile["width"]):
        return t
    scale_x, scale_y = reference_profile["width"] / width, reference_profile["height"] / height
    return Affine(t.a * scale_x, t.b * scale_y, t.c, t.d * scale_x, t.e * scale_y, t.f)  # t x Affine.scale(sx, sy)


__all__ = [
    "SUPPORTED_DTYPES",
    "GeoSample",
    "GeoTiff",
    "grid_transform",
    "open_raster",
    "read_geotiff",
    "read_sample",
    "write_geotiff",
]
