"""Checks of fine-tuning data before any training: the data's modalities against the model's config, class ids, and
every raster of every sample (readable to its last block, data type, band count, size, CRS and transform), with
errors that name the full path of the bad file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..configuration_terramind import TerraMindConfig
from ..errors import first_line
from ..modalities import MODALITIES
from ..scenes.geotiff import SUPPORTED_DTYPES, open_raster

if TYPE_CHECKING:
    from .transforms import TerraMindSampleTransform


def check_modalities(modalities: Sequence[str], config: TerraMindConfig | None, processor: Any = None) -> None:
    """Every data modality must be configured in the model (and, with a processor, give it the channels it expects)."""
    if config is None:
        return
    specs = config.modality_specs()
    configured = ", ".join(config.modality_aliases().values())
    image_processor = getattr(processor, "image_processor", processor)
    for name in modalities:
        try:
            key = config.modality_key(name)
        except ValueError:
            key = None
        if key not in specs:
            raise ValueError(f"The data has modality {name!r}, but the model is configured for {configured}. Add it "
                             f"to `modalities` of the config or drop it from the data.")  # fmt: skip
        channels = specs[key]
        if channels is not None and hasattr(image_processor, "output_bands") and key in MODALITIES:
            produced = len(image_processor.output_bands(key))
            if produced != channels:
                raise ValueError(f"The processor gives {produced} bands of {name}, the model expects {channels} "
                                 f"(bands {config.band_names(key) or list(MODALITIES[key].bands)}); set the same "
                                 f"`bands` in processor and config.")  # fmt: skip


def check_label_values(values: np.ndarray, num_labels: int, ignore_index: int, source: str) -> None:
    """Class ids must be integers in 0..num_labels-1 or `ignore_index`."""
    valid = values[values != ignore_index]
    if valid.size == 0:
        return
    if valid.dtype.kind == "f" and not np.array_equal(valid, np.round(valid)):
        raise ValueError(f"{source}: labels must be integer class ids, got fractional values.")
    bad = np.unique(valid[(valid < 0) | (valid >= num_labels)])
    if bad.size:
        raise ValueError(f"{source}: class ids {bad[:10].tolist()} outside 0..{num_labels - 1} (num_labels="
                         f"{num_labels}); use `label_map`, raise num_labels or mark them with ignore_index="
                         f"{ignore_index}.")  # fmt: skip


class RasterFacts(NamedTuple):
    """What `build_dataset` checks of every file before training: band count, size and georeference."""

    count: int
    height: int
    width: int
    crs: Any
    transform: Any


def raster_facts(path: str | Path) -> RasterFacts:
    """Metadata of a raster, after checking that it opens, has a supported data type and that its last block reads
    (a truncated file fails here); one-line ValueErrors name the full path."""
    path = Path(path).absolute()
    with open_raster(path) as src:
        unsupported = sorted(set(src.dtypes) - set(SUPPORTED_DTYPES))
        if unsupported:
            raise ValueError(f"{path}: unsupported data type {unsupported}; supported are {SUPPORTED_DTYPES}.")
        try:  # the last pixel of every band: its blocks are the last ones written, so truncation shows
            src.read(window=Window(src.width - 1, src.height - 1, 1, 1))
        except RasterioError as error:
            raise ValueError(f"{path}: the pixels cannot be read, the file is damaged or truncated "
                             f"({first_line(error)}).") from None  # fmt: skip
        return RasterFacts(src.count, src.height, src.width, src.crs, src.transform)


def _validate_files(rows: dict[str, list], transform: TerraMindSampleTransform, num_labels: int | None,
                    ignore_index: int) -> None:  # fmt: skip
    """Every file of every sample, before training: readable to its last block, a supported data type, the band
    count of that modality's other files, and within a sample one size, CRS and transform; label rasters have one
    band and valid class ids. Errors name the full path."""
    band_counts: dict[str, tuple[int, Path]] = {}
    for sample, paths, label in zip(rows["sample_id"], rows["pixel_values"], rows["labels"], strict=True):
        facts = {name: (Path(path).absolute(), raster_facts(path)) for name, path in paths.items()}
        first_path, first = next(iter(facts.values()))
        for name, (path, fact) in facts.items():
            if name not in band_counts:
                band_counts[name] = (fact.count, path)
            elif fact.count != band_counts[name][0]:
                count, other = band_counts[name]
                raise ValueError(f"{path} has {fact.count} bands, {other} has {count}; every {name} file needs the "
                                 "same bands.")  # fmt: skip
            _check_co_registered(path, fact, first_path, first)
        if transform.task == "classification":
            if num_labels is not None and isinstance(label, (int, np.integer)):
                check_label_values(np.asarray([label]), num_labels, ignore_index, f"Sample {sample!r}")
            continue
        label_path = Path(label).absolute()
        fact = raster_facts(label_path)
        if fact.count != 1:
            raise ValueError(f"Label {label_path} has {fact.count} bands; a label raster has one band of class "
                             "ids/targets.")  # fmt: skip
        _check_co_registered(label_path, fact, first_path, first, label=True)
        if transform.task == "segmentation":
            check_label_values(transform.read_label(label_path), num_labels, ignore_index, f"Label {label_path}")


def _check_co_registered(path: Path, fact: RasterFacts, first_path: Path, first: RasterFacts,
                         label: bool = False) -> None:  # fmt: skip
    """A sample's rasters share size, CRS and transform (a label without georeference only the size)."""
    if (fact.height, fact.width) != (first.height, first.width):
        raise ValueError(f"{'Label ' if label else ''}{path} is {fact.height}x{fact.width}, {first_path} of the same "
                         f"sample is {first.height}x{first.width}; TerraMind needs co-registered rasters.")  # fmt: skip
    if label and fact.crs is None:
        return
    if fact.crs != first.crs:
        raise ValueError(f"{path} is in {fact.crs}, {first_path} of the same sample in {first.crs}; reproject "
                         "first.")  # fmt: skip
    if not fact.transform.almost_equals(first.transform):
        raise ValueError(f"{path} and {first_path} of the same sample have different geotransforms "
                         f"({tuple(fact.transform)[:6]} vs {tuple(first.transform)[:6]}); the rasters are not "
                         "aligned.")  # fmt: skip
