"""Fine-tuning data: GeoTIFF folders as a `datasets.Dataset` (`build_dataset`), read lazily, checked before training.

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

The pieces live in modules of their own: `layout.py` (folders, split files, sample paths), `checks.py` (modalities,
class ids, every raster), `transforms.py` (the sample transform), `data_collator.py` (`TerraMindDataCollator`) and
`metrics.py` (`build_compute_metrics`); this module builds the dataset and keeps their public names importable from
here (`from terramind.training.data_terramind import build_dataset, TerraMindDataCollator, build_compute_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..configuration_terramind import TerraMindConfig
from ..modalities import resolve_modality
from ..scenes.discovery import index_folder
from .checks import RasterFacts, _validate_files, check_label_values, check_modalities, raster_facts
from .data_collator import TerraMindDataCollator
from .layout import (
    MAX_LISTED,
    _check_patterns_apart,
    _flat_paths,
    _per_key,
    _sample_paths,
    _split_sample_ids,
    find_layout,
    read_split,
)
from .metrics import (
    TASKS,
    build_compute_metrics,
    classification_metrics,
    confusion_matrix,
    preprocess_logits_for_metrics,
    regression_metrics,
    segmentation_metrics,
)
from .transforms import TerraMindSampleTransform, read_series_sample


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


__all__ = [
    "MAX_LISTED",
    "RasterFacts",
    "TASKS",
    "TerraMindDataCollator",
    "TerraMindSampleTransform",
    "build_compute_metrics",
    "build_dataset",
    "check_label_values",
    "check_modalities",
    "classification_metrics",
    "confusion_matrix",
    "find_layout",
    "index_folder",
    "preprocess_logits_for_metrics",
    "raster_facts",
    "read_series_sample",
    "read_split",
    "regression_metrics",
    "segmentation_metrics",
]
