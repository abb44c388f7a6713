"""Processor for TerraMind: the image processor plus an optional coordinates tokenizer, saved and loaded together."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import cached_file

from .hub import resolve_source
from .image_processing_terramind import TerraMindImageProcessor

COORDINATES_KEY = "Coordinates"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only")


class TerraMindProcessor(ProcessorMixin):
    r"""
    Prepares all TerraMind inputs of a batch: image modalities through [`TerraMindImageProcessor`] and coordinates
    as `"Coordinates"`.

    Coordinates ((B, 2) longitude/latitude) pass through unchanged by default. The TerraMind encoder embeds coordinates
    as token ids of the coordinates tokenizer: with a tokenizer that has `encode_coordinates`, `tokenize_coordinates=
    True` returns those ids instead. The tokenizer is optional and, when given, saved and loaded with the processor
    (it also decodes generated coordinates in `post_process_generation`).

    Args:
        image_processor ([`TerraMindImageProcessor`], *optional*):
            The image processor; a default one (v1 pre-training statistics) when not given.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The coordinates tokenizer.
    """

    def __init__(
        self,
        image_processor: TerraMindImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs,
    ) -> None:
        if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ValueError(f"`tokenizer` must be a PreTrainedTokenizerBase or None, got {type(tokenizer).__name__}.")
        # Both are ProcessorMixin attributes (from this signature): saved, loaded and checked by Transformers.
        super().__init__(image_processor=image_processor or TerraMindImageProcessor(), tokenizer=tokenizer, **kwargs)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type | None:
        """Transformers' check against the modality's base class, plus: the coordinates tokenizer is optional, and
        the image processor is a TerraMindImageProcessor by name (a folder's remote-code copy of the class is one)."""
        if argument_name == "tokenizer" and argument is None:
            return None
        proper_class = super().check_argument_for_proper_class(argument_name, argument)
        if argument_name == "image_processor" and not _is_named(argument, TerraMindImageProcessor.__name__):
            raise TypeError(f"`image_processor` must be a TerraMindImageProcessor, got {type(argument).__name__}.")
        return proper_class

    @property
    def model_input_names(self) -> list[str]:
        return [*self.image_processor.model_input_names, COORDINATES_KEY]

    def __call__(
        self,
        images: Mapping[str, Any] | None = None,
        coordinates: Any = None,
        tokenize_coordinates: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Process `images` (`{modality: array}` or bare images of the default modality, see
        [`TerraMindImageProcessor.preprocess`], which takes the other keyword arguments) and pass `coordinates`
        ((B, 2) or (2,) longitude/latitude in degrees) through unchanged as `"Coordinates"`, or as the tokenizer's
        (B, L) token ids with `tokenize_coordinates=True`. `return_tensors` is "pt" (default), "np" or None.
        """
        # As Transformers' processors: explicit arguments are the inputs, settings with defaults are keywords.
        return_tensors = kwargs.pop("return_tensors", "pt")
        if images is None and coordinates is None:
            raise ValueError("Give `images` ({modality: array}), `coordinates` ((B, 2) lon/lat), or both.")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=None, **kwargs))
        elif kwargs:
            raise ValueError(f"Arguments {sorted(kwargs)} need `images`.")
        if coordinates is not None:
            coordinates = self._check_coordinates(coordinates, data)
            if tokenize_coordinates:
                coordinates = self._require_tokenizer("encode_coordinates").encode_coordinates(coordinates)
            data[COORDINATES_KEY] = coordinates
        if return_tensors == "np":
            data = {key: np.asarray(value) for key, value in data.items()}
        elif return_tensors not in ("pt", None):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_coordinates(coordinates: Any, data: Mapping[str, Any]) -> torch.Tensor:
        """(B, 2) lon/lat with the values untouched; `ValueError` on a wrong shape, range or batch size."""
        values = coordinates if isinstance(coordinates, torch.Tensor) else torch.as_tensor(np.asarray(coordinates))
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2 or values.shape[1] != 2:
            raise ValueError(f"`coordinates` must be (B, 2) longitude/latitude, got shape {tuple(values.shape)}.")
        if values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"`coordinates` must be numbers, got dtype {values.dtype}.")
        lon, lat = values[:, 0].double(), values[:, 1].double()
        if not (lon.abs() <= 180).all() or not (lat.abs() <= 90).all():
            raise ValueError("`coordinates` must be (longitude in [-180, 180], latitude in [-90, 90]) in degrees.")
        batch_sizes = {len(value) for value in data.values()}
        if batch_sizes and batch_sizes != {len(values)}:
            raise ValueError(f"`coordinates` has {len(values)} rows but the images have batch size {batch_sizes}.")
        return values

    def post_process_generation(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """
        Generated modalities in physical units (see [`TerraMindImageProcessor.post_process_generation`]); generated
        coordinate token ids become (B, 2) lon/lat when the tokenizer has `decode_coordinates`.
        """
        results = self.image_processor.post_process_generation(outputs)
        coordinates = results.get(COORDINATES_KEY)
        decode = getattr(self.tokenizer, "decode_coordinates", None)
        if decode is not None and isinstance(coordinates, torch.Tensor) and not coordinates.is_floating_point():
            results[COORDINATES_KEY] = decode(coordinates)
        return results

    def batch_decode(self, *args, **kwargs):
        return self._require_tokenizer("batch_decode").batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._require_tokenizer("decode").decode(*args, **kwargs)

    def _require_tokenizer(self, method: str) -> PreTrainedTokenizerBase:
        if self.tokenizer is None or not hasattr(self.tokenizer, method):
            raise ValueError(
                f"This TerraMindProcessor has no coordinates tokenizer with `{method}`; pass `tokenizer=` to use it."
            )
        return self.tokenizer

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Transformers' loading; a missing local path fails at once, an unreachable Hub is tried once."""
        source = resolve_source(pretrained_model_name_or_path, bool(kwargs.get("local_files_only")))
        return super().from_pretrained(source, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        # ProcessorMixin saves every attribute it lists; a processor without the optional coordinates tokenizer is
        # saved as one whose only attribute is the image processor (and loads back with `tokenizer=None`).
        present = [name for name in type(self).get_attributes() if getattr(self, name, None) is not None]
        self.get_attributes = lambda: present
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            del self.get_attributes

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls, sub_processor_type: str, pretrained_model_name_or_path: str | os.PathLike, subfolder: str = "", **kwargs
    ) -> PreTrainedTokenizerBase | None:
        """Transformers' loading of the tokenizer attribute (AutoTokenizer), or None where the folder has none: the
        coordinates tokenizer is optional. The image processor's settings are not the tokenizer's."""
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        tokenizer_file = cached_file(
            pretrained_model_name_or_path,
            TOKENIZER_CONFIG_FILE,
            subfolder=subfolder,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        if tokenizer_file is None:
            return None
        image_settings = TerraMindImageProcessor.valid_kwargs.__annotations__
        kwargs = {key: value for key, value in kwargs.items() if key not in image_settings}
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )


def _is_named(instance: Any, class_name: str) -> bool:
    """Whether `instance` is of a class named `class_name` or a subclass of one (Transformers resolves sub-processor
    classes by name: a package's class and a saved folder's copy of it are different objects with one name)."""
    return any(cls.__name__ == class_name for cls in type(instance).__mro__)


def register_processors(config_class: type | None = None, exist_ok: bool = True) -> None:
    """
    Map a TerraMind config class (model_type "terramind", by default `TerraMindConfig`) to these processors, so that
    `AutoImageProcessor` and `AutoProcessor` load them.
    """
    if config_class is None:
        from .configuration_terramind import TerraMindConfig as config_class
    image_processor_classes = {"torchvision": TerraMindImageProcessor, "pil": TerraMindImageProcessor}
    try:
        AutoImageProcessor.register(config_class, image_processor_classes=image_processor_classes, exist_ok=exist_ok)
    except ImportError:  # without Pillow AutoImageProcessor is a placeholder; its mapping still takes the class
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

        IMAGE_PROCESSOR_MAPPING.register(config_class, image_processor_classes, exist_ok=exist_ok)
    AutoProcessor.register(config_class, TerraMindProcessor, exist_ok=exist_ok)


__all__ = ["COORDINATES_KEY", "TerraMindProcessor", "register_processors"]
