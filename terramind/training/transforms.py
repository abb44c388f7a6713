"""The sample transform of fine-tuning datasets: reads a sample's rasters (time series as (C, T, H, W)) and its label,
crops and flips images and label together, and runs the processor (`TerraMindSampleTransform`, the function that
`build_dataset` hands to `Dataset.set_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..modalities import resolve_modality
from ..scenes.geotiff import GeoSample, open_raster, read_sample


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
