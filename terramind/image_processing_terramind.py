"""Image processor for TerraMind: turns Earth-observation rasters into the standardized inputs of the model.

TerraMind was pre-trained on fixed band orders with fixed per-band statistics (`modalities.py`). Real data come
with more, fewer or differently ordered bands, nodata pixels and arbitrary sizes; this processor selects the
pretrained bands by name, fills nodata, resizes/crops/pads and standardizes, so that the output can be fed as
`model(**batch)`. `post_process_generation` undoes the standardization of generated modalities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import (
    ChannelDimension,
    infer_channel_dimension_format,
    is_pil_image,
    is_valid_image,
    make_flat_list_of_images,
)
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .modalities import (  # noqa: F401 (canonical_band_name, match_bands: imported from here too)
    MODALITIES,
    NODATA_MASK_SUFFIX,
    canonical_band_name,
    match_bands,
    resolve_modality,
)

logger = logging.get_logger(__name__)

# Image-like modalities a user gives as pixels: raw image modalities plus the tokenized-only LULC and NDVI maps.
PIXEL_MODALITIES = tuple(
    name for name, spec in MODALITIES.items() if spec.kind == "image" or spec.tokenizer_modality == name
)
CLASS_MODALITIES = ("LULC",)  # class ids: never standardized, resized with nearest neighbour, returned as int64
LULC_NUM_CLASSES = 10  # width of the one-hot input of the v1 LULC tokenizer (classes 0..9)
RESAMPLE_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")
# Transformers' `resample` values (PIL's filters: NEAREST, BILINEAR, BICUBIC, BOX) as `F.interpolate` modes.
_PIL_RESAMPLE_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic", 4: "area"}

# Sentinel-2 band ids (B01, B1, B8A, ...) as the band names TerraMind uses.


def nodata_mask_key(modality: str) -> str:
    """Output key of the nodata mask of a modality, e.g. "S2L2A" -> "S2L2A_nodata_mask"."""
    return f"{resolve_modality(modality)}{NODATA_MASK_SUFFIX}"


def _per_modality(value: Any, modality: str, default: Any = None) -> Any:
    """A setting given once for all modalities or per modality as {name: value} (any alias of the name)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if resolve_modality(key) == modality:
                return item
        return default
    return default if value is None else value


def _size_dict(size: int | Sequence[int] | Mapping[str, int] | None, name: str) -> dict[str, int] | None:
    if size is None:
        return None
    if isinstance(size, Mapping):
        if set(size) != {"height", "width"}:
            raise ValueError(f"`{name}` must be an int, (height, width) or {{'height', 'width'}}; got {size!r}.")
        return {"height": int(size["height"]), "width": int(size["width"])}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if len(size) != 2:
        raise ValueError(f"`{name}` must be an int, (height, width) or {{'height', 'width'}}; got {size!r}.")
    return {"height": int(size[0]), "width": int(size[1])}


def _as_tensor(value: Any, modality: str) -> torch.Tensor:
    """One input (numpy array, torch tensor or list of per-sample arrays) as a float32 CPU tensor."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{modality}: got an empty list.")
        samples = [_as_tensor(v, modality) for v in value]
        samples = [sample[None] if sample.ndim == 2 else sample for sample in samples]  # (H, W) maps are one band
        if len({tuple(s.shape) for s in samples}) > 1:
            raise ValueError(
                f"{modality}: samples in a list must have the same shape; got {[s.shape for s in samples]}."
            )
        return torch.stack(samples)
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{modality}: unsupported dtype {value.dtype}; give integer or floating point values.")
        return value.detach().to("cpu", torch.float32)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{modality}: expected a numpy array or torch tensor, got {type(value).__name__}.")
    if value.dtype.kind not in "iuf":
        raise ValueError(f"{modality}: unsupported dtype {value.dtype}; give integer or floating point values.")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


class TerraMindImageProcessorKwargs(ImagesKwargs, total=False):
    """Settings of `TerraMindImageProcessor` that `from_pretrained(..., **kwargs)` may override (dicts per modality)."""

    bands: dict[str, list[str]] | None
    offset: dict[str, float | list[float]] | None
    nodata_value: float | dict[str, float | None] | None
    fill_value: float | str | list[float] | dict[str, Any] | None
    return_nodata_mask: bool | None
    size_divisor: int | None
    default_modality: str | None


class TerraMindImageProcessor(BaseImageProcessor):
    r"""
    Prepares TerraMind inputs from multi-modal Earth-observation rasters.

    Input is a dict `{modality: array}` (any modality alias as key, e.g. "S2L2A", "s2_l2a", "S2RGB"), each array a
    numpy array or torch tensor of shape (C, H, W), (B, C, H, W), a list of (C, H, W) samples, or (H, W) for one-band
    modalities; time series are (B, C, T, H, W) (or a list of (C, T, H, W) samples), each time step processed alike,
    with (B, T, H, W) nodata masks. Values are in physical units: Sentinel-2 digital numbers (reflectance x 10000), RGB in 0-255,
    Sentinel-1 backscatter in dB, DEM in metres, LULC class ids (0-9), NDVI in [-1, 1].

    Per modality the processor:
    1. selects and orders the pretrained bands by name (`band_names` tells the names of the input channels; without
       names, input with the pretrained channel count is taken to be in the pretrained order),
    2. marks NaN/inf and `nodata_value` pixels as nodata and fills them (`fill_value`: "mean" = the band's
       standardization mean, i.e. 0 after standardization, or a number in input units),
    3. resizes (`do_resize`, `size`), center-crops (`do_center_crop`, `crop_size`) and pads at the bottom/right, so
       that the top-left georeference is kept (`do_pad`, to `pad_size` or to a multiple of `size_divisor`),
    4. standardizes (`do_normalize`) as (x - mean) / std with the v1 pre-training statistics of the bands (or the
       user's `image_mean`/`image_std` per modality, aligned with the output bands), the means shifted by `offset`.

    LULC stays class ids (int64, nearest-neighbour resizing, no standardization). The output is a `BatchFeature`
    keyed by canonical modality name, each value (B, C, H, W); with `return_nodata_mask=True` also
    `"<MODALITY>_nodata_mask"` (bool, (B, H, W), True where any band was nodata or padded).

    Args:
        bands (`dict[str, list[str]]`, *optional*):
            Output bands per modality (a subset/order of the pretrained bands, or new bands with user statistics).
            Defaults to the pretrained bands of each modality.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to standardize with the band statistics.
        image_mean (`dict[str, list[float]]`, *optional*):
            User means per modality, aligned with the output bands; defaults to the v1 pre-training means.
        image_std (`dict[str, list[float]]`, *optional*):
            User standard deviations per modality, aligned with the output bands.
        offset (`dict[str, float | list[float]]`, *optional*):
            Per modality a number (or one per output band) added to the means of standardization, nodata filling and
            `post_process_generation`, e.g. `{"S2L2A": 1000}` for harmonised L2A (processing baseline 04.00+) as in
            IBM's notebooks and the original's `offset`.
        nodata_value (`float` or `dict[str, float]`, *optional*):
            Input value that marks missing pixels (NaN and inf always do).
        fill_value (`float`, `"mean"`, per-band list or `dict[str, ...]`, *optional*, defaults to `"mean"`):
            Value, in input units, that replaces nodata pixels and padding.
        return_nodata_mask (`bool`, *optional*, defaults to `False`):
            Whether to return `"<MODALITY>_nodata_mask"` entries.
        do_resize (`bool`, *optional*, defaults to `False`), size (`int`, `(h, w)` or `{"height", "width"}`):
            Whether and to which size to resize.
        resample (`str`, *optional*, defaults to `"bilinear"`):
            Interpolation of continuous modalities (`torch.nn.functional.interpolate` mode, or Transformers'
            `PILImageResampling` NEAREST/BILINEAR/BICUBIC/BOX); class maps and masks always use "nearest-exact".
        do_center_crop (`bool`, *optional*, defaults to `False`), crop_size (`int`, `(h, w)` or dict):
            Whether and to which size to center-crop.
        do_pad (`bool`, *optional*, defaults to `False`), pad_size (`int`, `(h, w)` or dict):
            Whether to pad (bottom/right) to `pad_size`, or without it to the next multiple of `size_divisor`.
        size_divisor (`int`, *optional*, defaults to 16):
            The patch size of TerraMind; outputs whose size is not a multiple of it are reported with a warning.
        default_modality (`str`, *optional*):
            The modality of a bare input (an array, tensor or PIL image instead of a dict), returned as
            `pixel_values`, which the model reads as its first modality (conversion sets that one); this is what
            `pipeline("image-feature-extraction")` passes. Bare images behave as in Transformers' image processors:
            channels first or last (inferred from the modality's band count, or `input_data_format`), PIL images,
            lists of images of any sizes (brought to one size by `do_resize`, a crop or `do_pad`), and per-call
            `image_mean`/`image_std` (one value per channel, or one for all) that replace the modality's statistics.
        do_convert_rgb (`bool`, *optional*):
            For bare RGB images: whether to convert gray (1 channel) and RGBA (4 channels, composited onto white)
            images to RGB. By default (None) PIL images in other modes are converted (their mode says what the
            channels are) and arrays are taken as they are.
    """

    model_input_names = list(PIXEL_MODALITIES)
    valid_kwargs = TerraMindImageProcessorKwargs
    # Class-level defaults of the switches, as Transformers' image processors declare them.
    do_normalize = True
    do_resize = False
    do_convert_rgb = None

    def __init__(
        self,
        bands: Mapping[str, Sequence[str]] | None = None,
        do_normalize: bool = True,
        image_mean: Mapping[str, Sequence[float]] | None = None,
        image_std: Mapping[str, Sequence[float]] | None = None,
        nodata_value: float | Mapping[str, float | None] | None = None,
        fill_value: float | str | Sequence[float] | Mapping[str, Any] = "mean",
        return_nodata_mask: bool = False,
        offset: Mapping[str, float | Sequence[float]] | None = None,
        do_resize: bool = False,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: str = "bilinear",
        do_center_crop: bool = False,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_pad: bool = False,
        pad_size: int | Sequence[int] | Mapping[str, int] | None = None,
        size_divisor: int = 16,
        default_modality: str | None = None,
        do_convert_rgb: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.do_convert_rgb = do_convert_rgb
        self.default_modality = resolve_modality(default_modality) if default_modality is not None else None
        self.bands = self._canonical_keys(bands, lambda names: [canonical_band_name(n) for n in names])
        self.do_normalize = do_normalize
        self.image_mean = self._canonical_keys(image_mean, lambda values: [float(v) for v in values])
        self.image_std = self._canonical_keys(image_std, lambda values: [float(v) for v in values])
        self.offset = self._canonical_keys(offset, _offset_values)
        self.nodata_value = self._canonical_keys(nodata_value) if isinstance(nodata_value, Mapping) else nodata_value
        self.fill_value = self._canonical_keys(fill_value) if isinstance(fill_value, Mapping) else fill_value
        self.return_nodata_mask = return_nodata_mask
        self.do_resize = do_resize
        self.size = _size_dict(size, "size")
        self.resample = _resample_mode(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(crop_size, "crop_size")
        self.do_pad = do_pad
        self.pad_size = _size_dict(pad_size, "pad_size")
        self.size_divisor = size_divisor
        self._check_settings()

    @staticmethod
    def _canonical_keys(mapping: Mapping[str, Any] | None, convert=lambda v: v) -> dict[str, Any] | None:
        """Per-modality settings keyed by canonical modality names (JSON-friendly for `save_pretrained`)."""
        if mapping is None:
            return None
        return {resolve_modality(key): None if value is None else convert(value) for key, value in mapping.items()}

    def _check_settings(self) -> None:
        """Fail at construction, not at the first batch, on settings that can never work."""
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"`resample` must be one of {RESAMPLE_MODES}, got {self.resample!r}.")
        names = {*(self.bands or {}), *(self.image_mean or {}), *(self.image_std or {}), *(self.offset or {})}
        for name in names:
            if name not in PIXEL_MODALITIES:
                raise ValueError(f"{name} is not an image modality the processor handles ({PIXEL_MODALITIES}).")
        for name, values in (self.offset or {}).items():
            if name in CLASS_MODALITIES:
                raise ValueError(f"offset given for {name}, which holds class ids and is not standardized.")
            if isinstance(values, list) and len(values) != len(self.output_bands(name)):
                bands = list(self.output_bands(name))
                raise ValueError(f"offset[{name!r}] has {len(values)} values for the {len(bands)} output bands "
                                 f"{bands}; give one number or one per band.")  # fmt: skip
        for name in names:
            self.band_statistics(name)
        if self.do_resize and self.size is None:
            raise ValueError("`do_resize=True` needs `size`.")
        if self.do_center_crop and self.crop_size is None:
            raise ValueError("`do_center_crop=True` needs `crop_size`.")

    def output_bands(self, modality: str) -> tuple[str, ...]:
        """Bands, in order, that the processor returns for a modality."""
        modality = resolve_modality(modality)
        return tuple((self.bands or {}).get(modality) or MODALITIES[modality].bands)

    def band_statistics(
        self,
        modality: str,
        bands: Sequence[str] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> tuple[list[float], list[float]]:
        """(mean, std) per band, the means shifted by `offset`: `image_mean`/`image_std` if given (a call's own
        statistics, one value per channel), else the processor's user statistics, else the v1 pre-training values
        looked up by name."""
        modality = resolve_modality(modality)
        bands = self.output_bands(modality) if bands is None else tuple(canonical_band_name(b) for b in bands)
        if (image_mean is None) != (image_std is None):
            raise ValueError(f"Give both image_mean and image_std for {modality}, not only one of them.")
        if image_mean is not None:
            mean, std = [float(v) for v in image_mean], [float(v) for v in image_std]
            if len(mean) != len(std):
                raise ValueError(f"{modality}: image_mean has {len(mean)} values but image_std has {len(std)}.")
        else:
            mean, std = (self.image_mean or {}).get(modality), (self.image_std or {}).get(modality)
            if (mean is None) != (std is None):
                raise ValueError(f"Give both image_mean and image_std for {modality}, not only one of them.")
        if mean is not None and (image_mean is not None or bands == self.output_bands(modality)):
            if image_mean is None and (len(mean) != len(bands) or len(std) != len(bands)):
                raise ValueError(
                    f"{modality} statistics must have one value per output band {list(bands)}; "
                    f"got {len(mean)} means and {len(std)} stds."
                )
        else:
            spec = MODALITIES[modality]
            unknown = [band for band in bands if band not in spec.bands]
            if unknown:
                raise ValueError(
                    f"No pre-training statistics for {modality} bands {unknown} (pretrained bands: {list(spec.bands)}); "
                    "give image_mean and image_std for this modality."
                )
            mean = [spec.mean[spec.bands.index(band)] for band in bands]
            std = [spec.std[spec.bands.index(band)] for band in bands]
        if any(s <= 0 for s in std):
            raise ValueError(f"{modality} standard deviations must be positive, got {list(std)}.")
        shift = (self.offset or {}).get(modality)
        if isinstance(shift, list):  # one value per output band, matched by name
            if len(mean) != len(bands):
                raise ValueError(f"{modality}: a per-band offset cannot be matched to {len(mean)} unnamed channels; "
                                 "give band_names or one offset for all bands.")  # fmt: skip
            shift = dict(zip(self.output_bands(modality), shift, strict=True))
            mean = [m + shift.get(band, 0.0) for m, band in zip(mean, bands, strict=True)]
        elif shift is not None:
            mean = [m + shift for m in mean]
        return list(mean), list(std)

    def standardize(self, modality: str, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) values of `modality` in physical units -> standardized ((x - mean) / std, on the tensor's
        device). The statistics are those of the output bands, or of all pretrained bands, whichever has C bands
        (the same as `preprocess` and `post_process_generation` use). Class maps (LULC) are returned as they are."""
        modality = resolve_modality(modality)
        if modality in CLASS_MODALITIES:
            return pixels
        mean, std = self._statistics_tensors(modality, pixels)
        return (pixels.float() - mean) / std

    def destandardize(self, modality: str, values: torch.Tensor) -> torch.Tensor:
        """The inverse of `standardize`: standardized (B, C, H, W) values back in physical units (x * std + mean).
        Class maps (LULC) are returned as they are."""
        modality = resolve_modality(modality)
        if modality in CLASS_MODALITIES:
            return values
        mean, std = self._statistics_tensors(modality, values)
        return values.float() * std + mean

    def _statistics_tensors(self, modality: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, 1, 1) mean and std on `values`' device for the bands (output or pretrained) that number C."""
        if modality not in PIXEL_MODALITIES:
            raise ValueError(f"{modality} is not an image modality; standardization applies to {PIXEL_MODALITIES}.")
        if values.ndim != 4:
            raise ValueError(f"{modality}: expected (B, C, H, W) values, got shape {tuple(values.shape)}.")
        channels = values.shape[1]
        for bands in (self.output_bands(modality), MODALITIES[modality].bands):
            if len(bands) == channels:
                break
        else:
            raise ValueError(
                f"{modality}: {channels} channels match neither the output bands {list(self.output_bands(modality))} "
                f"nor the pretrained bands {list(MODALITIES[modality].bands)}."
            )
        return tuple(torch.tensor(v, dtype=torch.float32, device=values.device).view(1, -1, 1, 1)
                     for v in self.band_statistics(modality, bands))  # fmt: skip

    def preprocess(
        self,
        images: Mapping[str, Any] | Any,
        band_names: Mapping[str, Sequence[str] | None] | Sequence[str] | None = None,
        nodata_value: float | Mapping[str, float | None] | None = None,
        fill_value: float | str | Sequence[float] | Mapping[str, Any] | None = None,
        return_nodata_mask: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        image_std: float | Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: str | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_pad: bool | None = None,
        pad_size: int | Sequence[int] | Mapping[str, int] | None = None,
        input_data_format: str | ChannelDimension | None = None,
        do_convert_rgb: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Process `{modality: array}` into a `BatchFeature` of standardized (B, C, H, W) inputs.

        `band_names` gives the names of the input channels per modality (`{"S2L2A": [...]}`, or a plain list when
        there is one modality); `image_mean`/`image_std` replace the statistics for this call (`{modality: values}`,
        or values / one number when there is one modality); the other arguments override the settings of the
        processor for this call. A bare image or list of images (not a dict) is the `default_modality`, returned
        as `pixel_values`; for those, `input_data_format` tells the channel axis and `do_convert_rgb` converts gray
        and RGBA images to RGB. `return_tensors` is "pt" (default), "np" or None (torch tensors, unconverted).
        """
        if kwargs:
            raise ValueError(f"Unexpected arguments {sorted(kwargs)} for {self.__class__.__name__}.")
        settings = dict(band_names=band_names, nodata_value=nodata_value, fill_value=fill_value,
                        return_nodata_mask=return_nodata_mask, do_normalize=do_normalize, image_mean=image_mean,
                        image_std=image_std, do_resize=do_resize, size=size, resample=resample,
                        do_center_crop=do_center_crop, crop_size=crop_size, do_pad=do_pad, pad_size=pad_size,
                        return_tensors=return_tensors)  # fmt: skip
        if not isinstance(images, Mapping):
            return self._preprocess_bare(images, input_data_format, do_convert_rgb, **settings)
        if input_data_format is not None or do_convert_rgb is not None:
            raise ValueError("`input_data_format` and `do_convert_rgb` apply to bare images (the default_modality); "
                             "the arrays of a {modality: array} dict are channels-first.")  # fmt: skip
        return self._preprocess_modalities(images, **settings)

    def _preprocess_modalities(
        self,
        images: Mapping[str, Any],
        band_names: Mapping[str, Sequence[str] | None] | Sequence[str] | None,
        nodata_value: Any,
        fill_value: Any,
        return_nodata_mask: bool | None,
        do_normalize: bool | None,
        image_mean: Any,
        image_std: Any,
        do_resize: bool | None,
        size: Any,
        resample: str | None,
        do_center_crop: bool | None,
        crop_size: Any,
        do_pad: bool | None,
        pad_size: Any,
        return_tensors: str | None,
    ) -> BatchFeature:
        """`preprocess` of a `{modality: array}` dict."""
        if not images:
            raise ValueError("`images` must be a non-empty dict {modality: array}, e.g. {'S2L2A': array}.")
        band_names, image_mean, image_std = (
            self._per_call_mapping(images, value, name)
            for value, name in ((band_names, "band_names"), (image_mean, "image_mean"), (image_std, "image_std"))
        )
        do_resize = self.do_resize if do_resize is None else do_resize
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        settings = {
            "nodata_value": self.nodata_value if nodata_value is None else nodata_value,
            "fill_value": self.fill_value if fill_value is None else fill_value,
            "do_normalize": self.do_normalize if do_normalize is None else do_normalize,
            "size": (_size_dict(size, "size") or self.size) if do_resize else None,
            "resample": self.resample if resample is None else _resample_mode(resample),
            "crop_size": (_size_dict(crop_size, "crop_size") or self.crop_size) if do_center_crop else None,
            "do_pad": self.do_pad if do_pad is None else do_pad,
            "pad_size": _size_dict(pad_size, "pad_size") or self.pad_size,
        }
        if do_resize and settings["size"] is None:
            raise ValueError("`do_resize=True` needs `size`.")
        if do_center_crop and settings["crop_size"] is None:
            raise ValueError("`do_center_crop=True` needs `crop_size`.")
        if settings["resample"] not in RESAMPLE_MODES:
            raise ValueError(f"`resample` must be one of {RESAMPLE_MODES}, got {settings['resample']!r}.")
        return_nodata_mask = self.return_nodata_mask if return_nodata_mask is None else return_nodata_mask

        data: dict[str, torch.Tensor] = {}
        for key, value in images.items():
            modality = resolve_modality(key)
            if modality not in PIXEL_MODALITIES:
                raise ValueError(
                    f"{key!r} is {modality}, which the image processor does not take; it takes the pixel modalities "
                    f"{PIXEL_MODALITIES} (coordinates go to TerraMindProcessor(coordinates=...))."
                )
            if modality in data:
                raise ValueError(f"Modality {modality} is given twice (as {key!r} and another alias).")
            names = _per_modality(band_names, modality) if band_names is not None else None
            statistics = _per_modality(image_mean, modality), _per_modality(image_std, modality)
            pixels = _as_tensor(value, modality)
            if pixels.ndim == 5:  # a time series (B, C, T, H, W): each time step is processed alike
                batch, steps = pixels.shape[0], pixels.shape[2]
                folded, mask = self._process_modality(modality, pixels.transpose(1, 2).flatten(0, 1), names,
                                                      statistics, **settings)  # fmt: skip
                data[modality] = folded.unflatten(0, (batch, steps)).transpose(1, 2)
                mask = mask.unflatten(0, (batch, steps))  # (B, T, H, W)
            else:
                data[modality], mask = self._process_modality(modality, pixels, names, statistics, **settings)
            if return_nodata_mask:
                data[modality + NODATA_MASK_SUFFIX] = mask
        self._check_batch(data)
        return _batch_feature(data, return_tensors)

    @staticmethod
    def _per_call_mapping(images: Mapping[str, Any], value: Any, name: str) -> Mapping[str, Any] | None:
        """A per-call setting as {modality: value}: a dict as given, a plain value for the only modality."""
        if value is None or isinstance(value, Mapping):
            return value
        if len(images) != 1:
            raise ValueError(f"With several modalities, give `{name}` as a dict {{modality: values}}.")
        return {next(iter(images)): value}

    def _preprocess_bare(
        self, images: Any, input_data_format: str | ChannelDimension | None, do_convert_rgb: bool | None, **settings
    ) -> BatchFeature:
        """Bare images (an image, a batch, or a list of images of any sizes) of the `default_modality`, returned
        as `pixel_values`, as Transformers' image processors take them: channels first or last, PIL images."""
        modality = self.default_modality
        if modality is None:
            raise ValueError("`images` must be a dict {modality: array}, e.g. {'S2L2A': array}, or set the "
                             "processor's default_modality for bare arrays and images.")  # fmt: skip
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        if do_convert_rgb and modality != "RGB":
            raise ValueError(f"`do_convert_rgb` applies to RGB images; the default modality is {modality}.")
        return_tensors = settings.pop("return_tensors")
        is_series = getattr(images, "ndim", None) == 5 or (  # (B, C, T, H, W), or a list of (C, T, H, W) samples
            isinstance(images, (list, tuple)) and images and all(getattr(i, "ndim", None) == 4 for i in images)
        )
        if is_series:  # time series are channels-first, as in a dict
            if input_data_format not in (None, ChannelDimension.FIRST, "channels_first"):
                raise ValueError("Time series ((B, C, T, H, W) or (C, T, H, W) samples) must be channels-first.")
            batches = [_as_tensor(images, modality)]
        else:
            channels = self._bare_channel_counts(modality, settings, do_convert_rgb)
            samples = [self._channels_first(image, modality, input_data_format, channels, do_convert_rgb)
                       for image in self._bare_image_list(images, modality)]  # fmt: skip
            if len({tuple(sample.shape) for sample in samples}) == 1:
                batches = [torch.stack(samples)]
            else:  # images of different sizes: each on its own, then batched if resizing/cropping/padding evened them
                batches = [sample[None] for sample in samples]
        outputs = [self._preprocess_modalities({modality: batch}, return_tensors=None, **settings) for batch in batches]
        sizes = {tuple(output[modality].shape[-2:]) for output in outputs}
        if len(sizes) > 1:
            raise ValueError(f"{modality}: the images have different sizes {sorted(sizes)}; give do_resize=True with a "
                             "size (or a crop_size / pad_size) to batch them.")  # fmt: skip
        data = {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}
        data["pixel_values"] = data.pop(modality)
        return _batch_feature(data, return_tensors)

    def _bare_channel_counts(self, modality: str, settings: Mapping[str, Any], do_convert_rgb: bool | None) -> set:
        """The channel counts a bare image of `modality` may have, by which its channel axis is recognised."""
        counts = {len(self.output_bands(modality)), len(MODALITIES[modality].bands)}
        names, mean = settings.get("band_names"), settings.get("image_mean")
        if names is not None and not isinstance(names, Mapping):
            counts.add(len(names))
        if isinstance(mean, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(mean, str):
            counts.add(len(mean))
        if do_convert_rgb:
            counts |= {1, 3, 4}
        return counts

    @staticmethod
    def _bare_image_list(images: Any, modality: str) -> list[Any]:
        """An image, a batch or a (nested) list of images as a flat list of images (Transformers' structure)."""

        def is_map(image: Any) -> bool:  # a (H, W) one-band image
            return is_valid_image(image) and not is_pil_image(image) and image.ndim == 2

        if is_map(images):
            return [images]
        if isinstance(images, (list, tuple)) and images and all(is_map(image) for image in images):
            return list(images)
        try:
            return make_flat_list_of_images(images)
        except ValueError:
            shape = getattr(images, "shape", None)
            described = f"shape {tuple(shape)}" if shape is not None else type(images).__name__
            raise ValueError(f"{modality}: expected an image (PIL image, (C, H, W) or (H, W, C) array or tensor), a "
                             f"batch (B, C, H, W) or a list of images; got {described}.") from None  # fmt: skip

    @staticmethod
    def _channels_first(
        image: Any,
        modality: str,
        input_data_format: str | ChannelDimension | None,
        channels: set,
        do_convert_rgb: bool | None,
    ) -> torch.Tensor:
        """One bare image as a (C, H, W) float tensor: channel axis given or inferred, PIL modes converted."""
        if is_pil_image(image):
            convert = modality == "RGB" and do_convert_rgb is not False and image.mode != "RGB"
            if convert:  # PIL knows its modes (palette, CMYK, ...); transparency is composited below
                has_alpha = "A" in image.getbands() or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
            pixels = _as_tensor(np.asarray(image), modality)
            layout = ChannelDimension.LAST
        else:
            pixels, convert = _as_tensor(image, modality), bool(do_convert_rgb)
            layout = None if input_data_format is None else ChannelDimension(input_data_format)
        if pixels.ndim == 2:
            pixels = pixels[None]
        elif pixels.ndim != 3:
            raise ValueError(f"{modality}: an image must be (C, H, W), (H, W, C) or (H, W); got shape "
                             f"{tuple(pixels.shape)}.")  # fmt: skip
        elif layout is None:
            try:
                layout = infer_channel_dimension_format(pixels, num_channels=tuple(sorted(channels)))
            except ValueError:
                raise ValueError(
                    f"{modality}: cannot tell the channel axis of an image of shape {tuple(pixels.shape)} (expected "
                    f"{sorted(channels)} channels first or last); pass input_data_format='channels_first' or "
                    "'channels_last', or band_names."
                ) from None
        if layout == ChannelDimension.LAST:
            pixels = pixels.movedim(-1, 0)
        return _to_rgb(pixels) if convert else pixels

    def _process_modality(
        self,
        modality: str,
        value: Any,
        band_names: Sequence[str] | None,
        statistics: tuple[Any, Any],
        nodata_value: Any,
        fill_value: Any,
        do_normalize: bool,
        size: dict[str, int] | None,
        resample: str,
        crop_size: dict[str, int] | None,
        do_pad: bool,
        pad_size: dict[str, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One modality: bands, nodata, geometry, standardization. Returns the values and the nodata mask."""
        pixels = self._batched(modality, value)
        image_mean, image_std = (_expand(v, pixels.shape[1]) for v in statistics)
        own_channels = (band_names is None and image_mean is not None
                        and pixels.shape[1] == len(image_mean) != len(self.output_bands(modality)))  # fmt: skip
        if not own_channels:  # else the call's statistics give one value per input channel: taken as they are
            pixels = self._select_bands(modality, pixels, band_names)
            image_mean, image_std = (_expand(v, pixels.shape[1]) for v in statistics)
            if image_mean is not None and len(image_mean) != pixels.shape[1]:
                raise ValueError(
                    f"{modality}: image_mean has {len(image_mean)} values for the {pixels.shape[1]} bands "
                    f"{list(self.output_bands(modality))}; give one value per band, or one for all."
                )
        nodata = _per_modality(nodata_value, modality)
        missing = ~torch.isfinite(pixels)
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            missing |= pixels == torch.tensor(nodata, dtype=torch.float32)
        empty = missing.flatten(1).all(dim=1)
        if empty.any():
            raise ValueError(
                f"{modality} sample(s) {empty.nonzero().flatten().tolist()} are entirely nodata "
                f"(NaN/inf or nodata_value={nodata}); there is nothing to process."
            )
        self._check_values(modality, pixels, missing)

        fill = self._fill_values(modality, _per_modality(fill_value, modality, "mean"), pixels.shape[1],
                                 image_mean, image_std)  # fmt: skip
        pixels = torch.where(missing, fill, pixels)
        mask = missing.any(dim=1, keepdim=True).float()

        is_class_map = modality in CLASS_MODALITIES
        if size is not None:
            pixels = _resize(pixels, (size["height"], size["width"]), "nearest-exact" if is_class_map else resample)
            mask = _resize(mask, (size["height"], size["width"]), "nearest-exact")
        if crop_size is not None:
            pixels, mask = (_center_crop(t, crop_size["height"], crop_size["width"]) for t in (pixels, mask))
        if do_pad:
            height, width = pixels.shape[-2:]
            if pad_size is not None:
                target = (pad_size["height"], pad_size["width"])
            else:
                target = tuple(math.ceil(n / self.size_divisor) * self.size_divisor for n in (height, width))
            pixels, mask = _pad(pixels, target, fill), _pad(mask, target, torch.ones(1, 1, 1, 1))

        if is_class_map:
            pixels = pixels.round().to(torch.int64)
        elif do_normalize:
            mean, std = (
                torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                for v in self.band_statistics(modality, image_mean=image_mean, image_std=image_std)
            )
            pixels = (pixels - mean) / std
        return pixels, mask[:, 0].bool()

    def _batched(self, modality: str, value: Any) -> torch.Tensor:
        """(B, C, H, W) float32 from (C, H, W), (B, C, H, W), a list of samples, or (H, W) for one-band modalities."""
        pixels = _as_tensor(value, modality)
        if pixels.ndim == 2:
            if len(self.output_bands(modality)) != 1:
                raise ValueError(
                    f"{modality}: got a 2-D (H, W) array, but {modality} has {len(self.output_bands(modality))} bands; "
                    "give (C, H, W) or (B, C, H, W)."
                )
            return pixels[None, None]
        if pixels.ndim == 3:
            return pixels[None]
        if pixels.ndim == 4:
            return pixels
        raise ValueError(f"{modality}: expected (C, H, W), (B, C, H, W) or (H, W), got shape {tuple(pixels.shape)}.")

    def _select_bands(self, modality: str, pixels: torch.Tensor, band_names: Sequence[str] | None) -> torch.Tensor:
        """The output bands of a modality, picked by name from the input channels."""
        wanted, pretrained = self.output_bands(modality), MODALITIES[modality].bands
        channels = pixels.shape[1]
        if band_names is None:
            if channels == len(wanted):
                return pixels
            if channels != len(pretrained):
                raise ValueError(
                    f"{modality}: the input has {channels} channels but TerraMind takes {len(wanted)} bands "
                    f"{list(wanted)}; give `band_names={{'{modality}': [...]}}` naming the {channels} input channels "
                    "so that the bands can be selected by name (channels-first layout expected)."
                )
            band_names = pretrained  # unnamed input of the pretrained width is in the pretrained order
        if len(band_names) != channels:
            raise ValueError(
                f"{modality}: band_names has {len(band_names)} names {list(band_names)} but the input has "
                f"{channels} channels (channels-first layout expected)."
            )
        indexes = match_bands(wanted, band_names, f"the {modality} input")
        return pixels if indexes == list(range(channels)) else pixels[:, indexes]

    @staticmethod
    def _check_values(modality: str, pixels: torch.Tensor, missing: torch.Tensor) -> None:
        """Catch inputs in the wrong physical units, which would silently give garbage (the pixels not `missing`
        are checked; masked reductions, not a gather of them, which costs several times more)."""
        low = torch.where(missing, math.inf, pixels).amin().item()
        high = torch.where(missing, -math.inf, pixels).amax().item()
        if modality == "NDVI" and (low < -1.001 or high > 1.001):
            raise ValueError(f"NDVI must be in [-1, 1], got values in [{low}, {high}]; rescale it first.")
        if modality == "RGB":
            if low < 0 or high > 255:
                raise ValueError(f"RGB must be in 0-255, got values in [{low}, {high}].")
            if high <= 1:
                logger.warning("RGB values are all <= 1: TerraMind expects 0-255, not 0-1.")
        if modality in CLASS_MODALITIES:
            valid = pixels[~missing]
            if not torch.equal(valid, valid.round()) or low < 0 or high >= LULC_NUM_CLASSES:
                raise ValueError(
                    f"{modality} must hold integer class ids 0..{LULC_NUM_CLASSES - 1}, got values in [{low}, {high}]."
                )
        if modality in ("S1GRD", "S1RTC") and low >= 0:
            logger.warning(f"{modality} values are all >= 0: TerraMind expects backscatter in dB, not linear power.")
        if modality in ("S2L1C", "S2L2A") and high <= 2:
            logger.warning(f"{modality} values are all <= 2: TerraMind expects digital numbers (reflectance x 10000).")

    def _fill_values(
        self, modality: str, fill_value: Any, channels: int, image_mean: Any = None, image_std: Any = None
    ) -> torch.Tensor:
        """Per-band (1, C, 1, 1) values, in input units, for nodata pixels and padding."""
        if isinstance(fill_value, str):
            if fill_value != "mean":
                raise ValueError(f"`fill_value` must be 'mean', a number or one number per band, got {fill_value!r}.")
            values = self.band_statistics(modality, image_mean=image_mean, image_std=image_std)[0]
        elif isinstance(fill_value, Sequence):
            if len(fill_value) != channels:
                raise ValueError(f"{modality}: `fill_value` has {len(fill_value)} values for {channels} bands.")
            values = list(fill_value)
        else:
            values = [float(fill_value)] * channels
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)

    def _check_batch(self, data: dict[str, torch.Tensor]) -> None:
        """All modalities of a batch must share batch size and pixel grid: the model aligns them patch by patch."""
        shapes = {key: (value.shape[0], *value.shape[-2:]) for key, value in data.items()}
        if len(set(shapes.values())) > 1:
            described = ", ".join(f"{key}: B={s[0]} H={s[1]} W={s[2]}" for key, s in shapes.items())
            raise ValueError(f"Modalities differ in batch size or size ({described}); resize, crop or pad them.")
        height, width = next(iter(shapes.values()))[1:]
        if height % self.size_divisor or width % self.size_divisor:
            logger.warning(
                f"Output size {height}x{width} is not a multiple of the patch size {self.size_divisor}; "
                "use do_pad=True, a crop or a resize before feeding TerraMind."
            )

    def post_process_generation(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """
        Turn standardized generated modalities back into physical units.

        Image modalities are de-standardized with the same statistics as the inputs (x * std + mean), chosen by their
        channel count (the output bands of the processor, or all pretrained bands). LULC logits (B, C>1, H, W) become
        class ids by argmax, LULC class maps stay class ids ((B, 1, H, W) int64). Other entries (coordinates, masks)
        pass through unchanged.
        """
        results = {}
        for key, value in outputs.items():
            modality = None if key.endswith(NODATA_MASK_SUFFIX) else resolve_modality(key)
            if modality not in PIXEL_MODALITIES:
                results[key] = value
                continue
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            if modality in CLASS_MODALITIES:
                if tensor.ndim == 3:
                    tensor = tensor[:, None]
                if tensor.ndim == 4 and tensor.shape[1] > 1:
                    tensor = tensor.argmax(dim=1, keepdim=True)
                results[key] = tensor.round().to(torch.int64) if tensor.is_floating_point() else tensor.long()
                continue
            results[key] = self.destandardize(modality, tensor)
        return results


def _offset_values(value: Any) -> float | list[float]:
    """An offset as a float, or a list of floats (one per output band)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values):  # fmt: skip
        raise ValueError(f"An offset must be a number or a list of numbers (one per band), got {value!r}.")
    return [float(v) for v in values] if isinstance(value, (list, tuple)) else float(value)


def _resample_mode(resample: str | int) -> str | int:
    """A `resample` setting as an `F.interpolate` mode (Transformers' PIL filters mapped; others checked later)."""
    if isinstance(resample, int) and not isinstance(resample, bool):
        if resample not in _PIL_RESAMPLE_MODES:
            raise ValueError(f"`resample` {resample!r} has no torch equivalent; use one of {RESAMPLE_MODES}, or PIL's "
                             "NEAREST, BILINEAR, BICUBIC or BOX.")  # fmt: skip
        return _PIL_RESAMPLE_MODES[resample]
    return resample


def _batch_feature(data: dict[str, torch.Tensor], return_tensors: str | None) -> BatchFeature:
    if return_tensors == "np":
        data = {key: value.numpy() for key, value in data.items()}
    elif return_tensors not in ("pt", None):
        raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
    return BatchFeature(data=data, tensor_type=return_tensors)


def _expand(values: float | Sequence[float] | None, channels: int) -> list[float] | None:
    """A call's statistic as one float per channel: a number for all channels, or the values as given."""
    if values is None:
        return None
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)] * channels
    if isinstance(values, (str, Mapping)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise ValueError(f"image_mean / image_std must be a number or one number per channel, got {values!r}.")
    return [float(v) for v in values]


def _to_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """(C, H, W) 0-255 values as RGB: gray repeated, RGBA composited onto white (as Transformers' convert_to_rgb)."""
    if pixels.shape[0] == 1:
        return pixels.expand(3, -1, -1)
    if pixels.shape[0] == 4:
        alpha = pixels[3:] / 255
        return pixels[:3] * alpha + 255 * (1 - alpha)
    if pixels.shape[0] != 3:
        raise ValueError(f"RGB: cannot convert {pixels.shape[0]} channels to RGB (do_convert_rgb takes 1, 3 or 4).")
    return pixels


def _resize(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    options = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(pixels, size=size, mode=mode, **options)


def _center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    in_height, in_width = pixels.shape[-2:]
    if height > in_height or width > in_width:
        raise ValueError(f"crop_size {height}x{width} is larger than the image ({in_height}x{in_width}); pad instead.")
    top, left = (in_height - height) // 2, (in_width - width) // 2
    return pixels[..., top : top + height, left : left + width]


def _pad(pixels: torch.Tensor, size: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """Pad at the bottom and right (the top-left corner, hence the georeference, stays) with per-band values."""
    height, width = pixels.shape[-2:]
    if size[0] < height or size[1] < width:
        raise ValueError(f"pad_size {size[0]}x{size[1]} is smaller than the image ({height}x{width}); crop instead.")
    if (height, width) == tuple(size):
        return pixels
    padded = fill.to(pixels.dtype).expand(pixels.shape[0], pixels.shape[1], *size).clone()
    padded[..., :height, :width] = pixels
    return padded


__all__ = [
    "NODATA_MASK_SUFFIX",
    "PIXEL_MODALITIES",
    "TerraMindImageProcessor",
    "canonical_band_name",
    "match_bands",
    "nodata_mask_key",
]
