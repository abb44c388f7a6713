"""Inputs of the TerraMind models: what a forward's tensors, dicts and keyword arguments mean, checked and made
model-ready (`TerraMindInputs`), and the frozen modality tokenizers that turn images of tokenized modalities and
coordinates into token ids (`TerraMindModalityTokenizers`).

`TerraMindModel` calls them first: inputs -> embeddings -> encoder -> outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .configuration_terramind import TerraMindConfig
from .modalities import MODALITIES, NODATA_MASK_SUFFIX, UnknownModalityError, resolve_modality

# Warnings about a model's inputs are the model's: its module's logger (also in a remote-code folder).
logger = logging.get_logger(f"{__name__.rpartition('.')[0]}.modeling_terramind".lstrip("."))


class TerraMindModalityTokenizers:
    """The frozen tokenizers of a model's tokenized modalities (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI) and of
    Coordinates, by modality name. They are not part of the model's weights (each is a model of its own, with its
    own folder): set with `set`, or loaded once, frozen, from `config.tokenizer_paths` (defaults: the official
    repos) when first needed, and kept on the model's device."""

    def __init__(self, config: TerraMindConfig):
        self.config = config
        self.loaded: dict[str, Any] = {}

    def get(self, modality: str, device: torch.device | None = None):
        """Tokenizer of a modality, loaded on first use (and moved to `device` when given)."""
        name = resolve_modality(modality).removesuffix("_TOKENS")
        if name not in self.loaded:
            self.loaded[name] = self._load(name)
        tokenizer = self.loaded[name]
        if device is not None and isinstance(tokenizer, nn.Module) and tokenizer.device != device:
            self.loaded[name] = tokenizer = tokenizer.to(device)
        return tokenizer

    def set(self, modality: str, tokenizer: Any) -> None:
        """Use `tokenizer` for `modality` (frozen)."""
        if isinstance(tokenizer, nn.Module):
            tokenizer = tokenizer.eval().requires_grad_(False)
        self.loaded[resolve_modality(modality).removesuffix("_TOKENS")] = tokenizer

    def _load(self, name: str):
        from .configuration_terramind import DEFAULT_TOKENIZER_REPOS

        path = (self.config.tokenizer_paths or {}).get(name) or DEFAULT_TOKENIZER_REPOS.get(name)
        try:
            if name == "Coordinates":
                from .tokenization_terramind_coords import TerraMindCoordsTokenizer

                return TerraMindCoordsTokenizer.from_pretrained(path)
            from .modeling_terramind_tokenizer import TerraMindTokenizerModel

            return TerraMindTokenizerModel.from_pretrained(path).eval().requires_grad_(False)
        except (OSError, ValueError) as error:
            raise ValueError(f"The {name} tokenizer could not be loaded from {path!r} ({error}). Pass it with "
                             f"`set_tokenizer('{name}', tokenizer)` (generate: tokenizers={{'{name}': ...}}) or "
                             f"set config.tokenizer_paths['{name}'] to a converted or original tokenizer "
                             "folder.") from None  # fmt: skip


class TerraMindInputs:
    """A model's inputs by name -> embedding key -> model-ready tensor, in configured order.

    Knows the configured modalities (`modality_channels`: embedding key -> channels, None for tokenized ones),
    resolves names and aliases, checks images, and tokenizes images of tokenized modalities and coordinates through
    `tokenizers`. Unknown names raise (`config.ignore_unknown_modalities`: dropped with a warning, as the original).
    """

    def __init__(self, config: TerraMindConfig, modality_channels: Mapping[str, int | None],
                 tokenizers: TerraMindModalityTokenizers):  # fmt: skip
        self.config = config
        self.modality_channels = modality_channels
        self.tokenizers = tokenizers

    def is_image_modality(self, key: str) -> bool:
        """Whether an embedding key is an image (raw, new or tokenized), not a sequence."""
        spec = self.config.pretrained_spec(key)
        return spec is None or spec.is_image

    def collect(
        self,
        pixel_values: Any,
        modalities: dict[str, Any],
        input_tokens: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Gather tensor/dict/keyword inputs into embedding key -> model-ready tensor, in configured order.

        Raw images are validated; tokenized modalities given as images (or LULC class maps) go through their
        tokenizer; `input_tokens` are ready token grids (B, H/16, W/16) that skip it; Coordinates (B, 2)
        lon/lat become token ids through the coordinates tokenizer.
        """
        given: dict[str, Any] = {}
        if isinstance(pixel_values, dict):
            given.update(pixel_values)
        elif pixel_values is not None:
            given[next(iter(self.config.modality_aliases().values()))] = pixel_values
        for name, value in modalities.items():
            if name in given:
                raise ValueError(f"Modality {name!r} was given twice.")
            given[name] = value
        masks = {k: given.pop(k) for k in list(given) if k.endswith(NODATA_MASK_SUFFIX)}
        if not given and not input_tokens:
            raise ValueError(f"No input given; expected one or more of {self._configured_names()}.")
        by_key: dict[str, tuple[str, torch.Tensor, bool]] = {}
        ignored: list[str] = []
        for is_tokens, source in ((False, given), (True, input_tokens or {})):
            for name, value in source.items():
                key = self._known_input_key(name, is_tokens, ignored)
                if key is None:
                    continue
                if key in by_key:
                    raise ValueError(f"Modality {name!r} and another input both map to {key}; give it once.")
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"Input {name} must be a torch.Tensor, got {type(value).__name__}.")
                by_key[key] = (name, value, is_tokens)
        for name in masks:
            modality = name[: -len(NODATA_MASK_SUFFIX)]
            key = self._known_input_key(modality, False, ignored)
            if key is not None and key not in by_key:
                raise ValueError(f"{name} given without its modality {modality}.")
        if ignored:
            logger.warning_once(f"Ignoring inputs of modalities this model is not configured for: {ignored} "
                                f"(ignore_unknown_modalities=True); it takes {self._configured_names()}.")  # fmt: skip
        if not by_key:
            raise ValueError(f"No input of a configured modality given; expected one or more of "
                             f"{self._configured_names()}.")  # fmt: skip
        ordered = {k: self._prepare_input(k, *by_key[k]) for k in self.modality_channels if k in by_key}
        self._check_shared_shapes(ordered)
        return ordered

    def _configured_names(self) -> str:
        return ", ".join(self.config.modality_aliases().values())

    def _known_input_key(self, name: str, tokens: bool, ignored: list[str]) -> str | None:
        """`_input_key`, or None (the name noted in `ignored`) for an unknown modality when the config says to
        ignore those, as the original does."""
        try:
            return self._input_key(name, tokens=tokens)
        except UnknownModalityError:
            if not self.config.ignore_unknown_modalities:
                raise
            if name not in ignored:
                ignored.append(name)
            return None

    def _input_key(self, name: str, tokens: bool = False) -> str:
        try:
            key = self.config.modality_key(name)
        except ValueError:
            key = None
        if tokens and self.config.pretrained_spec(key) is not None and f"{key}_TOKENS" in self.modality_channels:
            key = f"{key}_TOKENS"  # input_tokens={"S2L2A": grid} means the tokenized S2L2A modality
        if key not in self.modality_channels:
            raise UnknownModalityError(f"Unknown input modality {name!r}: this model is configured for "
                                       f"{self._configured_names()}. Configure it in `modalities`.")  # fmt: skip
        spec = self.config.pretrained_spec(key)
        if tokens and (spec is None or spec.kind != "image_tokens"):
            raise ValueError(f"input_tokens takes token grids of tokenized modalities (LULC, NDVI, S2L2A_TOKENS, "
                             f"...), not {name!r}.")  # fmt: skip
        return key

    def _prepare_input(self, key: str, name: str, value: torch.Tensor, is_tokens: bool) -> torch.Tensor:
        spec = self.config.pretrained_spec(key)
        if spec is None or spec.kind == "image":
            return self._check_image(key, name, value)
        if spec.kind == "sequence":
            tokenizer = self.tokenizers.get("Coordinates")
            return tokenizer.encode_coordinates(value).to(value.device)
        if not is_tokens:  # an image of a tokenized modality: tokenize it (frozen tokenizer)
            tokenizer = self.tokenizers.get(spec.tokenizer_modality, value.device)
            with torch.no_grad():
                value = tokenizer.encode(value.to(tokenizer.device)).tokens.to(value.device)
        if value.ndim != 3 or value.is_floating_point():
            raise ValueError(f"Token grid {name} must be an integer tensor (B, h, w), got {value.dtype} "
                             f"{tuple(value.shape)}.")  # fmt: skip
        if not torch.compiler.is_compiling() and value.numel() and (value.min() < 0 or value.max() >= spec.vocab_size):
            raise ValueError(f"Token grid {name} has ids outside the codebook [0, {spec.vocab_size}).")
        return value.long()

    def _check_image(self, key: str, name: str, value: torch.Tensor) -> torch.Tensor:
        channels = self.modality_channels[key]
        patch = self.config.patch_size
        if value.ndim != 4:
            raise ValueError(f"Input {name} must be (B, C, H, W), got shape {tuple(value.shape)}.")
        if value.shape[1] != channels:
            raise ValueError(f"Input {name} expected {channels} channels, got {value.shape[1]} "
                             f"(shape {tuple(value.shape)}).")  # fmt: skip
        h, w = value.shape[-2:]
        if h % patch or w % patch:
            raise ValueError(f"Input {name} has spatial size {h}x{w}; expected multiples of {patch}.")
        if not value.is_floating_point():
            raise ValueError(f"Input {name} must be a floating point tensor, got {value.dtype}.")
        if not torch.compiler.is_compiling() and not torch.isfinite(value).all():  # data-dependent: not traced
            raise ValueError(f"Input {name} contains NaN or inf; fill nodata first (e.g. with "
                             f"TerraMindImageProcessor, which fills and reports it).")  # fmt: skip
        return value

    def _check_shared_shapes(self, inputs: dict[str, torch.Tensor]) -> None:
        """One batch size, and one patch grid for all image modalities (merges stack them)."""
        batch, grid, first = None, None, None
        patch = self.config.patch_size
        for key, value in inputs.items():
            name = self.config.modality_aliases().get(key, key)
            if batch is not None and value.shape[0] != batch:
                raise ValueError(f"Input {name} has batch size {value.shape[0]}, {first} has {batch}.")
            batch, first = value.shape[0], first or name
            if self.modality_channels.get(key) is not None:
                this_grid = (value.shape[-2] // patch, value.shape[-1] // patch)
            elif MODALITIES[key].kind == "image_tokens":
                this_grid = tuple(value.shape[-2:])
            else:
                continue
            if grid is not None and this_grid != grid:
                raise ValueError(f"Input {name} has a {this_grid} patch grid, other inputs {grid}; image "
                                 f"modalities must share one spatial size.")  # fmt: skip
            grid = this_grid

    def patch_grid(self, inputs: Mapping[str, torch.Tensor], default: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) token grid of prepared inputs; `default` when none is an image (e.g. Coordinates alone)."""
        for key, value in inputs.items():
            if self.modality_channels.get(key) is not None:
                return value.shape[-2] // self.config.patch_size, value.shape[-1] // self.config.patch_size
            if key in MODALITIES and MODALITIES[key].kind == "image_tokens":
                return tuple(value.shape[-2:])
        if default is None:
            raise ValueError("At least one image modality is needed to know the spatial size.")
        return default

    def default_grid(self) -> tuple[int, int]:
        """The token grid of `config.image_size`: what the original generates without an image input."""
        side = self.config.image_size // self.config.patch_size
        return side, side

