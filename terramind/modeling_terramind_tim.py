"""Thinking-in-Modalities (TiM): a TerraMind encoder that first generates modalities its input lacks.

As in the original (terratorch's `TerraMindTiM`), a frozen copy of the any-to-any generator, built from the same
weights, generates the tokens of the TiM modalities (`config.tim_modalities`) from the inputs; the encoder then
encodes inputs and generated tokens together. `TerraMindModel` holds one `TerraMindThinkingInModalities` as
`tim_generator` (the weights' names of saved TiM models) and calls `think` before embedding its inputs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .configuration_terramind import TerraMindConfig
from .generation_terramind import TerraMindGenerationConfig
from .modalities import MODALITIES, token_modality
from .modeling_terramind import TerraMindForGeneration, hub_kwargs


def tim_generator_config(config: TerraMindConfig) -> TerraMindConfig:
    """Config of the frozen TiM generator: the same architecture, no dropout, no TiM of its own."""
    generator = copy.deepcopy(config)
    generator.tim_modalities = []
    generator.drop_path_rate = generator.attention_dropout = generator.hidden_dropout = 0.0
    generator.modality_drop_rate = 0.0
    return generator


def checkpoint_has_key(name_or_path: str, part: str, **kwargs: Any) -> bool:
    """Whether the safetensors weights of a saved model hold a key containing `part`."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub = hub_kwargs(kwargs)
    index = cached_file(name_or_path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False,
                        **hub)  # fmt: skip
    if index is not None:
        with open(index) as handle:
            return any(part in k for k in json.load(handle)["weight_map"])
    weights = cached_file(name_or_path, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub)
    if weights is None:
        return False
    with safe_open(weights, "pt") as handle:
        return any(part in k for k in handle.keys())


class TerraMindThinkingInModalities(TerraMindForGeneration):
    """The frozen generator of a TiM encoder, and its one job: generate the TiM modalities the input lacks.

    `config` is the encoder's; the generator takes its architecture without dropout. `modalities` are the embedding
    keys it reads (the encoder's inputs and the TiM modalities). Frozen: no gradients, always in eval mode.
    """

    def __init__(self, config: TerraMindConfig, modalities: Sequence[str]):
        super().__init__(tim_generator_config(config), modalities=modalities)
        self.tim_targets = [token_modality(m) for m in config.tim_modalities]
        self.chained = config.tim_chained_generations
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> TerraMindThinkingInModalities:
        return super().train(False)  # frozen, also while the encoder trains

    def think(self, inputs: Mapping[str, torch.Tensor], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The TiM modalities the input lacks, generated with this generator's generation config: token grids
        (B, h, w); Coordinates as up to 4 token ids (B, L), padded with 0, as the original. Each is conditioned on
        the TiM modalities before it unless `tim_chained_generations=False`. `grid` is the inputs' token grid
        (that of `config.image_size` without an image input, as the original's 224 x 224)."""
        targets = [k for k in self.tim_targets if k not in inputs]
        if not targets:
            return {}
        return self.generate_tokens(dict(inputs), targets, grid, chained=self.chained,
                                    sequence_tokens=MODALITIES["Coordinates"].max_length)  # fmt: skip

    def fill_from(self, source: str, prefix: str, info: dict, generation_config: TerraMindGenerationConfig | None,
                  **kwargs: Any) -> None:  # fmt: skip
        """After the encoder's loading: take the generator's weights from the same folder when it does not hold
        them under `prefix` (a converted release holds them under their plain names), set the sampling (the
        folder's generation config unless one is given) and stay frozen (loading hands out fresh Parameters)."""
        if not checkpoint_has_key(source, prefix, **kwargs):
            weights = TerraMindForGeneration.from_pretrained(
                source, modalities=list(self.terramind.modality_channels), config=self.config, dtype=self.dtype,
                **hub_kwargs(kwargs),
            )  # fmt: skip
            self.load_state_dict(weights.state_dict(), assign=True)  # some are still on meta
            self.tie_weights()
            info["missing_keys"] = {k for k in info["missing_keys"] if prefix not in k}
        self.generation_config = generation_config or TerraMindGenerationConfig.from_folder(source,
                                                                                            **hub_kwargs(kwargs))
        self.requires_grad_(False).eval()


__all__ = ["TerraMindThinkingInModalities"]
