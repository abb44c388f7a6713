"""Fine-tuning data: GeoTIFF folders as a `datasets.Dataset`, a collator and `compute_metrics` for `Trainer`.

The folder layout follows TerraTorch's GenericMultiModalDataModule: one folder per modality and one label folder,
files matched across folders by sample id (the file name without the `image_grep`/`label_grep` wildcard parts),
optional split files (one sample id per line)::

    data_root/
        S2L2A/282D_485L_3_3.tif   S1RTC/282D_485L_3_3.tif   LULC/282D_485L_3_3.tif   train.txt

`build_dataset` indexes the files (paths only), checks the layout, every file's metadata, the labels and the model's
modalities before any training, and reads the GeoTIFFs lazily through `set_transform`: each access reads the rasters
(`geotiff.read_sample`), crops/flips jointly with the label, and runs the processor. Rows are `{"S2L2A": (C, H, W), "S1RTC": (C, H, W), ...,
"labels": (H, W)}` (the processor's output plus labels), which `TerraMindDataCollator` batches and every TerraMind
task model takes as `model(**batch)`. The stored columns are "sample_id", "pixel_values" (the paths per modality) and
"labels", names that `Trainer` keeps with its default `remove_unused_columns=True`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..configuration_terramind import TerraMindConfig
from ..errors import first_line
from ..modalities import MODALITIES, resolve_modality
from ..scenes.discovery import index_folder
from ..scenes.geotiff import SUPPORTED_DTYPES, GeoSample, open_raster, read_sample

TASKS = ("segmentation", "regression", "classification")
MAX_LISTED = 5


# ----------------------------------------------------------------------------- indexing
def read_split(split: str | Path | Sequence[str]) -> list[str]:
    """Sample ids of a split: a text file with one id per line (file names allowed), or a list of ids."""
    if isinstance(split, (str, Path)):
        path = Path(split)
        if not path.is_file():
            raise ValueError(f"Split file {path} does not exist.")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        ids = [str(s) for s in split]
    ids = [Path(i).name.removesuffix(".tif").removesuffix(".tiff") if i.endswith((".tif", ".tiff")) else i
           for i in ids]  # fmt: skip
    if not ids:
        raise ValueError(f"Split {split} names no samples.")
    return list(dict.fromkeys(ids))


def _per_key(value: str | Mapping[str, str], key: str, default: str) -> str:
    if isinstance(value, Mapping):
        return value.get(key, default)
    return value


def _modality_folders(
    data_root: str | Path | None, modalities: Sequence[str] | Mapping[str, str | Path]
) -> dict[str, Path]:
    """Modality name -> folder: `data_root/<name>`, or the given folders (relative ones under `data_root`)."""
    if isinstance(modalities, str):
        modalities = [modalities]
    if isinstance(modalities, Mapping):
        folders = {name: Path(folder) for name, folder in modalities.items()}
        if data_root is not None:
            folders = {n: f if f.is_absolute() else Path(data_root) / f for n, f in folders.items()}
    elif data_root is None:
        raise ValueError("Give `data_root` (with one folder per modality) or `modalities` as {name: folder}.")
    else:
        folders = {name: Path(data_root) / name for name in modalities}
    if not folders:
        raise ValueError("`modalities` must name at least one modality.")
    return folders


def find_layout(
    data_root: str | Path | None,
    modalities: Sequence[str] | Mapping[str, str | Path],
    label_dir: str | Path | None,
    needs_labels: bool = True,
) -> tuple[dict[str, Path], Path | None]:
    """Folders of the modalities and of the labels, in either layout.

    TerraMind's layout has a subfolder per modality (`data_root/S2L2A`) and a label folder. TerraTorch's (its
    GenericNonGeoSegmentationDataModule datasets, e.g. HLS burn scars) keeps images and labels side by side in one
    folder, told apart by their file-name patterns (`image_grep="*_merged.tif"`, `label_grep="*.mask.tif"`): a
    modality without a subfolder, and no `label_dir`, mean `data_root` itself.
    """
    if isinstance(modalities, str):
        modalities = [modalities]
    if data_root is not None and not isinstance(modalities, Mapping):
        root = Path(data_root)
        folders = {name: root / name if (root / name).is_dir() else root for name in modalities}
        if not folders:
            raise ValueError("`modalities` must name at least one modality.")
    else:
        folders = _modality_folders(data_root, modalities)
    label_path = None
    if needs_labels:
        if label_dir is None:
            label_path = Path(data_root) if data_root is not None else None
        else:
            label_path = Path(label_dir)
            if data_root is not None and not label_path.is_absolute() and not label_path.is_dir():
                label_path = Path(data_root) / label_path
    return folders, label_path


def _sample_paths(steps: Mapping[str, list[dict[str, Path]]], patterns: Mapping[str, Any], sample: str) -> dict:
    """{modality: path} of a sample; {modality: [path per time step]} where its pattern is a list."""
    return {name: str(indexed[0][sample]) if isinstance(patterns[name], str) else
            [str(found[sample]) for found in indexed] for name, indexed in steps.items()}  # fmt: skip


def _flat_paths(paths: Mapping[str, str | list[str]]) -> dict[str, str]:
    """{modality: path}, time steps as entries "S2L2A[t]" of their own."""
    flat = {}
    for name, value in paths.items():
        for step, path in enumerate([value] if isinstance(value, str) else value):
            flat[name if isinstance(value, str) else f"{name}[{step}]"] = path
    return flat


def _check_patterns_apart(steps: Mapping[str, list[dict[str, Path]]], label_files: Mapping[str, Path],
                          patterns: Mapping[str, Any], label_grep: str) -> None:  # fmt: skip
    """In one folder, an image pattern must not match the label files (TerraTorch's `*_merged.tif` vs `*.mask.tif`)."""
    labels = set(label_files.values())
    for name, indexed in steps.items():
        shared = sorted(path.name for found in indexed for path in found.values() if path in labels)
        if shared:
            raise ValueError(f"image_grep {patterns[name]!r} of {name} and label_grep {label_grep!r} both match "
                             f"{shared[:MAX_LISTED]}; give patterns that tell images and labels apart, e.g. "
                             f"image_grep='*_merged.tif', label_grep='*.mask.tif'.")  # fmt: skip


def _split_sample_ids(ids: list[str], steps: Mapping[str, list[dict[str, Path]]]) -> list[str]:
    """Split entries as sample ids: ids as they are, or file names (with or without extension) of the images."""
    by_file = {}
    for indexed in steps.values():
        for found in indexed:
            for sample, path in found.items():
                by_file.setdefault(path.name, sample)
                by_file.setdefault(path.name.removesuffix(".tif").removesuffix(".tiff"), sample)
    known = set().union(*(found for indexed in steps.values() for found in indexed))
    return list(dict.fromkeys(i if i in known else by_file.get(i, i) for i in ids))


# ----------------------------------------------------------------------------- checks
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


# ----------------------------------------------------------------------------- time series
def _georeference(sample: GeoSample) -> tuple:
    profile = sample.profile
    return profile.get("crs"), tuple(profile["transform"])[:6], profile["height"], profile["width"]


def read_series_sample(
    paths: Mapping[str, str | Path | Sequence[str | Path]],
    bands: Mapping[str, Sequence[str | int]] | None = None,
    num_timesteps: Mapping[str, int] | None = None,
) -> GeoSample:
    """`read_sample` for time series: a list of paths of a modality is its time steps, in order (all lists of the
    same length, every file co-registered with the first); `num_timesteps={modality: T}` splits one file's bands,
    ordered channel by channel (c0 t0, c0 t1, ..., as TerraTorch's `expand_temporal_dimension`). Time series come
    back as (C, T, H, W) images, other modalities as (C, H, W)."""
    series = {name: list(value) for name, value in paths.items() if not isinstance(value, (str, Path))}
    lengths = {name: len(files) for name, files in series.items()}
    if any(n == 0 for n in lengths.values()) or len(set(lengths.values())) > 1:
        raise ValueError(f"Time series need one or more files per modality, the same number for each, got {lengths}.")
    sample = read_sample({name: files[0] if name in series else paths[name] for name, files in
                          {**paths, **series}.items()}, bands=bands)  # fmt: skip
    for name, files in series.items():
        key = resolve_modality(name)
        steps = [sample.images[key]]
        for path in files[1:]:
            step = read_sample({name: path}, bands=bands)
            if _georeference(step) != _georeference(sample):
                raise ValueError(f"{path} is not aligned with {files[0]} (CRS, transform or size differ).")
            steps.append(step.images[key])
        sample.images[key] = np.stack(steps, axis=1)
    for name, steps in (num_timesteps or {}).items():
        key = resolve_modality(name)
        if key in {resolve_modality(n) for n in series}:
            raise ValueError(f"{name} is given as one file per time step; num_timesteps is for stacked bands.")
        image = sample.images[key]
        if image.ndim != 3 or image.shape[0] % steps:
            raise ValueError(f"{sample.paths[key]} has {image.shape[0]} bands, not a multiple of num_timesteps="
                             f"{steps}.")  # fmt: skip
        sample.images[key] = image.reshape(image.shape[0] // steps, steps, *image.shape[1:])
        names = sample.band_names[key]
        sample.band_names[key] = tuple(names[::steps]) if names else None
    return sample


# ----------------------------------------------------------------------------- transform
def _label_geometry(label: torch.Tensor, image_processor: Any, fill: float) -> torch.Tensor:
    """Apply the processor's resize / center crop / pad to a (1, 1, H, W) label (nearest, padded with `fill`)."""
    if image_processor is None:
        return label
    if getattr(image_processor, "do_resize", False) and image_processor.size:
        size = (image_processor.size["height"], image_processor.size["width"])
        label = F.interpolate(label, size=size, mode="nearest-exact") if tuple(label.shape[-2:]) != size else label
    if getattr(image_processor, "do_center_crop", False) and image_processor.crop_size:
        height, width = image_processor.crop_size["height"], image_processor.crop_size["width"]
        top, left = (label.shape[-2] - height) // 2, (label.shape[-1] - width) // 2
        label = label[..., top : top + height, left : left + width]
    if getattr(image_processor, "do_pad", False):
        height, width = label.shape[-2:]
        if image_processor.pad_size:
            target = (image_processor.pad_size["height"], image_processor.pad_size["width"])
        else:
            divisor = image_processor.size_divisor
            target = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
        padded = label.new_full((*label.shape[:2], *target), fill)
        padded[..., :height, :width] = label
        label = padded
    return label


class TerraMindSampleTransform:
    """`set_transform` function: reads a batch of samples from disk and returns model inputs and labels."""

    def __init__(
        self,
        processor: Any = None,
        task: str = "segmentation",
        ignore_index: int = -100,
        label_map: Mapping[int, int] | None = None,
        crop_size: tuple[int, int] | None = None,
        random_crop: bool = False,
        random_flip: bool = False,
        band_names: Mapping[str, Sequence[str | int]] | None = None,
        extra_transform: Callable[[dict[str, np.ndarray], np.ndarray | None], tuple] | None = None,
        num_timesteps: Mapping[str, int] | None = None,
    ):
        if processor is None:
            from ..image_processing_terramind import TerraMindImageProcessor

            processor = TerraMindImageProcessor()
        self.processor = processor
        self.image_processor = getattr(processor, "image_processor", processor)
        self.task = task
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.crop_size = crop_size
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.band_names = band_names
        self.extra_transform = extra_transform
        self.num_timesteps = dict(num_timesteps) if num_timesteps else None

    def read_label(self, path: str | Path) -> np.ndarray:
        """(H, W) label: int64 class ids (nodata -> ignore_index, `label_map` applied) or float32 targets (NaN)."""
        with open_raster(path) as src:
            if src.count != 1:
                raise ValueError(f"{path}: a label raster must have 1 band, got {src.count}.")
            values, nodata = src.read(1), src.nodata
        missing = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
        if nodata is not None and not math.isnan(nodata):
            missing |= values == nodata
        if self.task == "regression":
            out = values.astype(np.float32)
            out[missing] = np.nan
            return out
        out = np.where(missing, 0, values).astype(np.int64)
        if self.label_map:
            lookup = out.copy()
            for source, target in self.label_map.items():
                lookup[out == source] = target
            out = lookup
        out[missing] = self.ignore_index
        return out

    def _geometry(self, images: dict[str, np.ndarray], label: np.ndarray | None) -> tuple:
        height, width = next(iter(images.values())).shape[-2:]
        if self.crop_size is not None:
            ch, cw = self.crop_size
            if ch > height or cw > width:
                raise ValueError(f"crop_size {ch}x{cw} is larger than the rasters ({height}x{width}).")
            if self.random_crop:
                top, left = np.random.randint(0, height - ch + 1), np.random.randint(0, width - cw + 1)
            else:
                top, left = (height - ch) // 2, (width - cw) // 2
            images = {k: v[..., top : top + ch, left : left + cw] for k, v in images.items()}
            label = label[..., top : top + ch, left : left + cw] if label is not None else None
        if self.random_flip:
            for axis in (-1, -2):
                if np.random.rand() < 0.5:
                    images = {k: np.flip(v, axis=axis) for k, v in images.items()}
                    label = np.flip(label, axis=axis) if label is not None else None
        images = {k: np.ascontiguousarray(v) for k, v in images.items()}
        return images, (np.ascontiguousarray(label) if label is not None else None)

    def process_sample(self, paths: Mapping[str, str], label: Any = None) -> dict[str, Any]:
        """One sample: {modality: (C, H, W) or (C, T, H, W) tensor, ..., "labels": tensor} (canonical names)."""
        sample = read_series_sample(paths, bands=self.band_names, num_timesteps=self.num_timesteps)
        images = {name: sample.images[resolve_modality(name)] for name in paths}
        label_array = self.read_label(label) if self.task != "classification" and label is not None else None
        if label_array is not None and label_array.shape != next(iter(images.values())).shape[-2:]:
            raise ValueError(f"Label {label} is {label_array.shape[0]}x{label_array.shape[1]}, the images are "
                             f"{'x'.join(map(str, next(iter(images.values())).shape[-2:]))}.")  # fmt: skip
        images, label_array = self._geometry(images, label_array)
        if self.extra_transform is not None:
            images, label_array = self.extra_transform(images, label_array)
        band_names = {name: sample.band_names[resolve_modality(name)] for name in paths}
        if self.band_names is None:
            band_names = {k: v for k, v in band_names.items() if v is not None} or None
        nodata = {name: sample.nodata[resolve_modality(name)] for name in paths}
        images = {name: image[None] if image.ndim == 4 else image for name, image in images.items()}  # series: batch
        processed = self.processor(images, band_names=band_names, nodata_value=nodata, return_tensors="pt")
        out: dict[str, Any] = {key: value[0] for key, value in processed.items()}
        if label_array is not None:
            fill = float("nan") if self.task == "regression" else self.ignore_index
            dtype = torch.float32 if self.task == "regression" else torch.int64
            tensor = torch.from_numpy(label_array).to(dtype)[None, None]
            out["labels"] = _label_geometry(tensor, self.image_processor, fill)[0, 0]
        elif self.task == "classification" and label is not None:
            out["labels"] = torch.as_tensor(label)
        return out

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        labels = batch.get("labels", [None] * len(batch["pixel_values"]))
        pairs = zip(batch["pixel_values"], labels, strict=True)
        samples = [self.process_sample(paths, label) for paths, label in pairs]
        out = {key: [s[key] for s in samples] for key in samples[0]}
        if "sample_id" in batch:  # kept for predictions; the collator drops it
            out["sample_id"] = list(batch["sample_id"])
        return out


# ----------------------------------------------------------------------------- dataset
def build_dataset(
    data_root: str | Path | None = None,
    modalities: Sequence[str] | Mapping[str, str | Path] = ("S2L2A",),
    label_dir: str | Path | None = None,
    labels: Mapping[str, Any] | None = None,
    split: str | Path | Sequence[str] | None = None,
    image_grep: str | Mapping[str, str | Sequence[str]] = "*.tif",
    label_grep: str = "*.tif",
    processor: Any = None,
    config: TerraMindConfig | None = None,
    task: str = "segmentation",
    num_labels: int | None = None,
    ignore_index: int = -100,
    label_map: Mapping[int, int] | None = None,
    crop_size: int | tuple[int, int] | None = None,
    random_crop: bool = False,
    random_flip: bool = False,
    band_names: Mapping[str, Sequence[str | int]] | None = None,
    extra_transform: Callable | None = None,
    validate: bool = True,
    num_timesteps: Mapping[str, int] | None = None,
):
    """A `datasets.Dataset` over GeoTIFF folders (TerraTorch GenericMultiModalDataModule layout), read lazily.

    Args:
        data_root: folder holding one subfolder per modality (named like the modality) and the label folder, or,
            in TerraTorch's one-folder layout, the images and labels themselves (see `find_layout`).
        modalities: modality names (subfolders of `data_root`, or `data_root` itself) or {name: folder}.
        label_dir: label folder (name under `data_root` or a path) for segmentation / pixel regression; default:
            `data_root` itself (TerraTorch's layout, labels told apart by `label_grep`).
        labels: sample id -> class id (or multi-hot list) for classification.
        split: split file (one sample id per line: the '*' part, or a file name) or list of ids; default: all.
        image_grep, label_grep: file patterns (per modality as a dict); the '*' part is the sample id. A list of
            patterns for a modality reads a time series, one file per time step (e.g. ["*_t0.tif", "*_t1.tif"]).
        num_timesteps: {modality: T} for time series stacked on the band axis (T x C bands, channel by channel,
            TerraTorch's `expand_temporal_dimension`). Time series come out as (C, T, H, W).
        processor: `TerraMindProcessor` / `TerraMindImageProcessor` (default: v1 statistics, no resizing).
        config: the model's config, to check the data's modalities (and band counts) against it.
        task: "segmentation", "regression" or "classification".
        num_labels, ignore_index, label_map: class ids must be in 0..num_labels-1 or ignore_index after `label_map`
            ({file value: class id}); label nodata pixels become ignore_index (NaN for regression).
        crop_size, random_crop, random_flip: joint crops (center unless random) and flips of images and labels.
        band_names: bands to read per modality (names or 1-based indexes, see `geotiff.read_geotiff`).
        extra_transform: `f(images, label) -> (images, label)` on numpy arrays before the processor.
        validate: check every file now (readable to its last block, data type, band count, each sample's size, CRS
            and transform; labels' class ids) and process the first sample, so that bad data fails here, naming the
            file, instead of during training.

    Returns a dataset with columns "sample_id", "pixel_values" ({modality: path}) and "labels"; indexing it gives
    `{modality: tensor, ..., "labels": tensor}`.
    """
    import datasets

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    folders, label_path = find_layout(data_root, modalities, label_dir, task != "classification")
    names = list(folders)
    for name in names:
        resolve_modality(name)  # clear error for unknown modality names
    check_modalities(names, config, processor)
    if task == "segmentation" and num_labels is None:
        num_labels = getattr(config, "num_labels", None) if config is not None else None
        if num_labels is None:
            raise ValueError("Segmentation needs `num_labels` (or a `config` with num_labels).")

    patterns = {name: _per_key(image_grep, name, "*.tif") for name in names}
    steps = {name: [index_folder(folders[name], p) for p in ([g] if isinstance(g, str) else list(g))]
             for name, g in patterns.items()}  # fmt: skip
    label_files: dict[str, Path] = {}
    if task == "classification":
        if labels is None:
            raise ValueError("Classification needs `labels` ({sample id: class}).")
    else:
        if label_path is None:
            raise ValueError(f"Task {task!r} needs `label_dir` (a folder of label rasters) or `data_root`.")
        label_files = index_folder(label_path, label_grep)
        _check_patterns_apart(steps, label_files, patterns, label_grep)

    sources = {}
    for name, indexed in steps.items():
        for step, found in enumerate(indexed):
            where = f"{folders[name]}" if len(indexed) == 1 else f"{folders[name]}, time step {step}"
            sources[f"{name} ({where})"] = set(found)
    if task == "classification":
        sources["labels"] = set(map(str, labels))
    else:
        sources[f"labels ({label_path})"] = set(label_files)
    if split is not None:
        ids = _split_sample_ids(read_split(split), steps)
    else:
        ids = sorted(set.union(*sources.values()))
    problems = []
    for source, available in sources.items():
        missing = [i for i in ids if i not in available]
        if missing:
            problems.append(f"{source} lacks {len(missing)} sample(s): {missing[:MAX_LISTED]}")
    if problems:
        raise ValueError("Missing files for some samples:\n  " + "\n  ".join(problems))

    rows = {
        "sample_id": ids,
        "pixel_values": [_sample_paths(steps, patterns, i) for i in ids],
    }
    if task == "classification":
        rows["labels"] = [labels[i] for i in ids]
    else:
        rows["labels"] = [str(label_files[i]) for i in ids]
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else (tuple(crop_size) if crop_size else None)
    transform = TerraMindSampleTransform(processor, task, ignore_index, label_map, crop, random_crop, random_flip,
                                         band_names, extra_transform, num_timesteps)  # fmt: skip
    if validate:  # every file of a time series is checked like a modality of its own
        flat = [_flat_paths(paths) for paths in rows["pixel_values"]]
        _validate_files({**rows, "pixel_values": flat}, transform, num_labels, ignore_index)
    dataset = datasets.Dataset.from_dict(rows)
    dataset.set_transform(transform)
    if validate:
        dataset[0]  # noqa: B018 - reads, processes and checks the first sample now
    return dataset


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


# ----------------------------------------------------------------------------- collator
def _collate(values: list[Any], key: str) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        keys = set(first)
        for value in values[1:]:
            if set(value) != keys:
                raise ValueError(f"Samples of a batch have different {key} entries: {sorted(keys)} vs "
                                 f"{sorted(value)}; every sample needs the same modalities.")  # fmt: skip
        return {k: _collate([v[k] for v in values], f"{key}.{k}") for k in first}
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"{key} differs in shape within a batch: {sorted(shapes)}; crop or resize the samples "
                             f"to one size.")  # fmt: skip
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return _collate([torch.from_numpy(np.asarray(v)) for v in values], key)
    if isinstance(first, (bool, int, float, np.number)) or (isinstance(first, list) and first
                                                            and isinstance(first[0], (int, float))):  # fmt: skip
        return torch.as_tensor(values)
    return values


@dataclass
class TerraMindDataCollator:
    """Batches dataset rows: tensors are stacked, dicts (modality -> tensor) batched per key, numbers tensorized.

    Strings and other values are dropped unless `keep_other=True` (Trainer passes every key to the model).
    """

    keep_other: bool = False

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        batch = {}
        for key in features[0]:
            value = _collate([f[key] for f in features], key)
            if isinstance(value, (torch.Tensor, dict)) or self.keep_other:
                batch[key] = value
        return batch


# ----------------------------------------------------------------------------- metrics
def preprocess_logits_for_metrics(logits: Any, labels: Any = None) -> torch.Tensor:
    """For `Trainer(preprocess_logits_for_metrics=...)`: keep class ids (B, H, W) instead of (B, C, H, W) logits."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=1) if logits.ndim == 4 else logits


def _predictions(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(labels)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int) -> np.ndarray:
    """(num_labels, num_labels) counts, rows = true class, columns = predicted class; ignored pixels skipped."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_labels)
    index = labels[valid].astype(np.int64) * num_labels + predictions[valid].astype(np.int64)
    return np.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def segmentation_metrics(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int = -100,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:  # fmt: skip
    """mIoU (over classes present in labels or predictions), pixel accuracy, mean class accuracy, IoU per class."""
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(axis=1)
    matrix = confusion_matrix(predictions, labels, num_labels, ignore_index)
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    support = matrix.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(support > 0, true_positive / support, np.nan)
    total = matrix.sum()
    metrics = {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "mean_accuracy": float(np.nanmean(class_accuracy)) if np.isfinite(class_accuracy).any() else 0.0,
    }
    names = list(class_names) if class_names else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"class_names has {len(names)} names for num_labels={num_labels}.")
    metrics.update({f"IoU_{name}": float(v) for name, v in zip(names, iou, strict=True) if np.isfinite(v)})
    return metrics


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over finite labels."""
    if predictions.shape != labels.shape and predictions.ndim == labels.ndim + 1 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    valid = np.isfinite(labels)
    error = predictions[valid].astype(np.float64) - labels[valid].astype(np.float64)
    if error.size == 0:
        return {"rmse": float("nan"), "mae": float("nan")}
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> dict[str, float]:
    """Top-1 accuracy (single-label) or exact-match/element accuracy (multi-label logits)."""
    if labels.ndim == predictions.ndim and labels.ndim == 2:  # multi-label
        hits = (predictions > 0) == (labels > 0.5)
        return {"accuracy": float(hits.all(axis=1).mean()), "label_accuracy": float(hits.mean())}
    predicted = predictions.argmax(axis=-1) if predictions.ndim == labels.ndim + 1 else predictions
    valid = labels != ignore_index
    return {"accuracy": float((predicted[valid] == labels[valid]).mean()) if valid.any() else 0.0}


def build_compute_metrics(
    task: str = "segmentation", num_labels: int | None = None, ignore_index: int = -100,
    class_names: Sequence[str] | None = None,
) -> Callable[[Any], dict[str, float]]:  # fmt: skip
    """`compute_metrics` for Trainer: mIoU/accuracy (segmentation), RMSE/MAE (regression), accuracy (classification)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    if task == "segmentation" and not num_labels:
        raise ValueError("Segmentation metrics need num_labels.")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = _predictions(eval_pred)
        if task == "segmentation":
            return segmentation_metrics(predictions, labels, num_labels, ignore_index, class_names)
        if task == "regression":
            return regression_metrics(predictions, labels)
        return classification_metrics(predictions, labels, ignore_index)

    return compute_metrics


__all__ = [
    "TerraMindDataCollator",
    "TerraMindSampleTransform",
    "build_compute_metrics",
    "build_dataset",
    "check_modalities",
    "classification_metrics",
    "find_layout",
    "index_folder",
    "preprocess_logits_for_metrics",
    "read_series_sample",
    "read_split",
    "regression_metrics",
    "segmentation_metrics",
]
