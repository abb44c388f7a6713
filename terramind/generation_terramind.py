"""Any-to-any generation with TerraMind: ROAR decoding of token grids, chaining, decoding, tiling.

The sampler follows the original (`GenerationSampler`, `build_chained_generation_schedules` in terratorch's
`generate.py`): each target modality is decoded in random order (ROAR) over a linear token schedule with
per-step temperature / top-k / top-p sampling (temperature 0 is greedy); several targets are chained, each
generated modality joining the encoder input of the next. Randomness comes from a `torch.Generator`, so seeded
runs are reproducible (the original reseeds the global RNG instead).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .image_processing_terramind import TerraMindImageProcessor
from .modalities import MODALITIES, resolve_modality, resolve_output_modality, token_modality


class TerraMindGenerationConfig(GenerationConfig):
    """How TerraMind samples tokens (saved as `generation_config.json` beside the model).

    Args:
        decoding_steps: ROAR steps per image modality (the original's default is 1: every token at once). More steps
            follow 4M's ROAR schedule, each conditioned on the tokens decoded before; terratorch 1.2.13 raises at
            the second step, so only one step is comparable with it (and identical).
        temperature: sampling temperature per step; 0 is greedy (argmax).
        top_k: keep the k most likely tokens (an int), or that fraction of the vocabulary (a float in (0, 1));
            0 disables.
        top_p: nucleus sampling: keep the smallest set of tokens with this probability mass; 0 disables.
        timesteps: diffusion steps of the tokenizers' decoders when generated tokens are decoded to images.
    """

    def __init__(self, decoding_steps: int = 1, temperature: float = 1.0, top_k: int | float = 0,
                 top_p: float = 0.8, timesteps: int = 50, **kwargs: Any):  # fmt: skip
        self.decoding_steps = decoding_steps  # set first: the base class validates
        self.timesteps = timesteps
        kwargs.setdefault("do_sample", temperature > 0)
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p, **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> TerraMindGenerationConfig:
        return cls()  # TerraMind's model config holds no sampling settings

    @classmethod
    def from_folder(cls, name_or_path: str | os.PathLike, **hub_kwargs: Any) -> TerraMindGenerationConfig:
        """The folder's (or Hub repo's) generation_config.json, or the defaults when it has none."""
        try:
            return cls.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError):
            return cls()

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None) -> None:
        """One-line errors for values the sampler cannot use (Transformers' checks of text generation do not
        apply: TerraMind decodes token grids, not sequences with a length or a cache)."""
        checks = (
            ("decoding_steps", isinstance(self.decoding_steps, int) and self.decoding_steps >= 1, "an int >= 1"),
            ("temperature", isinstance(self.temperature, (int, float)) and self.temperature >= 0, "a number >= 0"),
            ("top_k", (isinstance(self.top_k, int) and self.top_k >= 0)
             or (isinstance(self.top_k, float) and 0 < self.top_k < 1), "an int >= 0 or a fraction in (0, 1)"),
            ("top_p", isinstance(self.top_p, (int, float)) and 0 <= self.top_p <= 1, "a number in [0, 1]"),
            ("timesteps", isinstance(self.timesteps, int) and self.timesteps >= 1, "an int >= 1"),
        )  # fmt: skip
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"Generation setting {name} must be {expected}, got {getattr(self, name)!r}.")


def linear_token_schedule(steps: int, total: int) -> list[int]:
    """Tokens decoded per step: `total` split as evenly as possible, larger chunks first (the original's)."""
    if steps < 1:
        raise ValueError(f"decoding_steps must be >= 1, got {steps}.")
    chunks = np.diff(np.linspace(0, total, steps + 1, dtype=int))
    chunks = sorted(chunks.tolist(), reverse=True)
    return [c for c in chunks if c > 0]


def logits_warpers(temperature: float, top_k: int | float = 0, top_p: float = 0.0,
                   vocab_size: int | None = None) -> LogitsProcessorList:  # fmt: skip
    """Transformers' top-k, top-p and temperature warpers, in the original's order: top-k and nucleus filtering of
    the raw logits, then the temperature (Transformers' default order puts the temperature first, which changes the
    nucleus). A fractional `top_k` is that share of `vocab_size`."""
    warpers = LogitsProcessorList()
    if top_k:
        k = top_k if isinstance(top_k, int) else max(1, int(top_k * vocab_size))
        warpers.append(TopKLogitsWarper(k if vocab_size is None else min(k, vocab_size)))
    if top_p:
        warpers.append(TopPLogitsWarper(top_p))
    warpers.append(TemperatureLogitsWarper(float(temperature)))
    return warpers


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | float = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per row of (..., V) logits through `logits_warpers`; temperature 0 takes the argmax."""
    shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if temperature <= 1e-10:
        return logits.argmax(dim=-1).reshape(shape)
    probs = F.softmax(logits_warpers(temperature, top_k, top_p, logits.shape[-1])(None, logits), dim=-1)
    if generator is not None and generator.device != probs.device:
        samples = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    else:
        samples = torch.multinomial(probs, 1, generator=generator)
    return samples[:, 0].reshape(shape)


class TerraMindGenerationMixin:
    """Sampling for `TerraMindForGeneration`, through its methods only: `encode_context` (inputs -> decoder
    context), `decode` (mask-token queries -> logits of an image target) and `decode_sequence` (next-token logits of
    a sequence target), with the settings of a `TerraMindGenerationConfig` (default: `self.generation_config`)."""

    # ------------------------------------------------------------------ token level
    @torch.no_grad()
    def generate_tokens(
        self,
        inputs: Mapping[str, torch.Tensor],
        targets: Sequence[str],
        grid: tuple[int, int],
        generation_config: TerraMindGenerationConfig | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        chained: bool = True,
        sequence_tokens: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Generate `targets` (embedding keys, e.g. "LULC", "S1GRD_TOKENS", "Coordinates"): token grids (B, h, w) of
        image modalities, token ids (B, L) of sequences.

        `inputs` maps embedding keys to model-ready tensors: standardized images (B, C, H, W) for raw image
        modalities, token grids (B, h, w) for token modalities, token ids (B, L) for sequences. Targets are
        decoded in order, each conditioned on the inputs and, if `chained` (the original's default), on the targets
        before it. A sequence target is sampled up to `sequence_tokens` tokens (default: its maximum length minus the
        start sentinel, 3 for Coordinates, as the original's generation; its TiM samples up to 4) and returned as the
        tokens between the sentinels, padded with [PAD] = 0; the padding is not attended to where it conditions
        later targets, as the original's merged sequences.
        """
        config = generation_config if generation_config is not None else self.generation_config
        context_inputs = dict(inputs)
        valid: dict[str, torch.Tensor] = {}  # generated sequences: which of their (padded) tokens are real
        out: dict[str, torch.Tensor] = {}
        schedule = linear_token_schedule(config.decoding_steps, grid[0] * grid[1])
        bar = tqdm(total=len(targets) * len(schedule), desc="TerraMind generation", disable=not progress)
        for target in targets:
            source = context_inputs if chained else inputs
            if MODALITIES[target].kind == "sequence":
                limit = sequence_tokens if sequence_tokens is not None else MODALITIES[target].max_length - 1
                out[target], valid[target] = self._generate_sequence(target, source, valid, config, generator, limit)
                bar.update(len(schedule))
            else:
                out[target] = self._generate_grid(target, source, valid, grid, schedule, config, generator, bar)
            context_inputs[target] = out[target]
        bar.close()
        return out

    def _generate_grid(self, target: str, inputs: Mapping[str, torch.Tensor], valid: Mapping[str, torch.Tensor],
                       grid: tuple[int, int], schedule: list[int], config: TerraMindGenerationConfig,
                       generator: torch.Generator | None, bar: tqdm) -> torch.Tensor:  # fmt: skip
        """ROAR decoding of one image target: a random order, `schedule[i]` tokens per step, tokens decoded in
        earlier steps joining the context."""
        first = next(iter(inputs.values()))
        batch, device = first.shape[0], first.device
        num_tokens = grid[0] * grid[1]
        tokens = torch.zeros(batch, num_tokens, dtype=torch.long, device=device)
        order = torch.randperm(num_tokens, generator=generator, device="cpu").to(device)
        done = 0
        for count in schedule:
            step_inputs, known = dict(inputs), None
            if done:  # tokens of this target decoded in earlier steps condition the next ones
                step_inputs[target] = tokens.reshape(batch, *grid)
                known = {target: order[:done]}
            mask = self.terramind.embeddings.token_mask(step_inputs, valid, known, self.config.num_register_tokens)
            context, _ = self.encode_context(step_inputs, known, attention_mask=mask)
            select = order[done : done + count] if len(schedule) > 1 else None
            logits, _ = self.decode(target, context, grid, select, context_mask=mask)
            sampled = sample_tokens(logits, config.temperature, config.top_k, config.top_p, generator)
            if select is None:
                tokens = sampled
            else:
                tokens[:, select] = sampled
            done += count
            bar.update(1)
        return tokens.reshape(batch, *grid)

    def _generate_sequence(self, target: str, inputs: Mapping[str, torch.Tensor], valid: Mapping[str, torch.Tensor],
                           config: TerraMindGenerationConfig, generator: torch.Generator | None,
                           max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Autoregressive decoding of a sequence modality (coordinates), as the original: start from the sentinel
        [S_1], causal self-attention, stop when every sequence has the closing sentinel [S_2] or after `max_tokens`.
        Returns the tokens the original keeps (`merge_span_masking`: those after an [S_1], sentinels dropped),
        left-aligned and padded with [PAD] (B, L), and which of them are real (B, L)."""
        tokenizer = self.terramind.get_tokenizer(target)
        start, stop = sentinel_ids(tokenizer)
        mask = self.terramind.embeddings.token_mask(inputs, valid, offset=self.config.num_register_tokens)
        context, _ = self.encode_context(inputs, attention_mask=mask)
        out = torch.full((context.shape[0], 1), start, dtype=torch.long, device=context.device)
        for _ in range(max_tokens):
            logits, _ = self.decode_sequence(target, context, out, context_mask=mask)
            next_token = sample_tokens(logits[:, -1], config.temperature, config.top_k, config.top_p, generator)
            out = torch.cat([out, next_token[:, None]], dim=1)
            if (out == stop).any(dim=1).all():
                break
        pad = getattr(tokenizer, "pad_token_id", None)
        return merge_generated_span(out, start, sentinel_token_ids(tokenizer) | {start, stop}, pad or 0)

    def sampling_config(
        self, generation_config: TerraMindGenerationConfig | None, options: dict[str, Any]
    ) -> TerraMindGenerationConfig:
        """A checked copy of `generation_config` (default: the model's) updated with the sampling settings among
        `options` (taken out of it), as Transformers' `generate(**kwargs)` does."""
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        settings = {k: options.pop(k) for k in list(options) if k in SAMPLING_SETTINGS}
        for name, value in settings.items():
            setattr(config, name, value)
        config.validate()
        return config

    # ------------------------------------------------------------------ user level
    @torch.no_grad()
    def generate(
        self,
        inputs: Mapping[str, torch.Tensor] | None = None,
        output_modalities: Sequence[str] = ("S2L2A",),
        generation_config: TerraMindGenerationConfig | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        standardize: bool = False,
        decode: bool = True,
        input_tokens: Mapping[str, torch.Tensor] | None = None,
        tokenizers: Mapping[str, Any] | None = None,
        progress: bool = False,
        offset: Mapping[str, float | Sequence[float]] | None = None,
        image_size: int | Sequence[int] | None = None,
        **modalities: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Generate `output_modalities` (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI, Coordinates) from any inputs.

        Args:
            inputs / **modalities: input modality -> tensor. Raw modalities (S2L1C, S2L2A, RGB, S1GRD, S1RTC, DEM)
                as images (B, C, H, W), H and W multiples of 16. Tokenized modalities (LULC, NDVI, ...) as images
                too: they are tokenized with their tokenizer first. Coordinates as (B, 2) lon/lat, also alone.
            input_tokens: ready token grids (B, H/16, W/16) per tokenized modality, skipping its tokenizer.
            output_modalities: generated in this order, each conditioning the next (as the original).
            generation_config: sampling settings (default: the model's `generation_config`); keyword arguments
                `decoding_steps`, `temperature`, `top_k`, `top_p`, `timesteps` override it for this call.
            generator / seed: a `torch.Generator` (or a seed for a new CPU one) drives every random choice, so
                seeded runs are reproducible.
            standardize: False (default): inputs are already standardized (e.g. by TerraMindProcessor) and outputs
                stay standardized. True: inputs are physical values, standardized here with the v1 pre-training
                statistics, and outputs are returned in physical units. Don't standardize twice.
            offset: with `standardize=True`, per modality a number (or one per band) added to the pre-training
                means for that modality's inputs and outputs, e.g. `{"S2L2A": 1000}` for harmonised L2A (processing
                baseline 04.00+) as in IBM's notebooks. Nothing shared is changed.
            image_size: pixel size (int or (height, width), multiples of 16) of the generated images when no input
                is an image (e.g. Coordinates alone); default `config.image_size` (224, as the original).
            decode: True: images through the tokenizers' decoders; False: the token grids (B, H/16, W/16).
            tokenizers: modality -> TerraMindTokenizerModel to use; otherwise loaded lazily from
                `config.tokenizer_paths` (defaults to the official repos), only those needed.

        Returns:
            dict output modality -> images (B, C, H, W) (LULC: class logits), Coordinates (B, 2) lon/lat; with
            decode=False the token grids (B, H/16, W/16) and coordinate token ids (B, L), padded with 0.
        """
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        config = self.sampling_config(generation_config, modalities)
        given = dict(inputs or {})
        for name, value in modalities.items():
            if name in given:
                raise ValueError(f"Input {name!r} was given twice.")
            given[name] = value
        if not given and not input_tokens:
            raise ValueError("No inputs given: pass at least one input modality (e.g. S2L2A=..., S1GRD=...).")
        if isinstance(output_modalities, str):
            output_modalities = [output_modalities]
        outputs = [resolve_output_modality(name) for name in output_modalities]
        if not outputs:
            raise ValueError("output_modalities is empty; name at least one of S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI, "
                             "Coordinates.")  # fmt: skip
        offsets = standardization_offsets(offset, standardize, [*given, *(input_tokens or {}), *outputs])
        model_inputs, grid = self.prepare_generation_inputs(given, input_tokens, standardize, tokenizers, offsets,
                                                            image_size)  # fmt: skip
        targets = [token_modality(name) for name in outputs]
        tokens = self.generate_tokens(model_inputs, targets, grid, config, generator, progress)
        result = {name: tokens[key] for name, key in zip(outputs, targets, strict=True)}
        if not decode:
            return result
        for name in outputs:
            tokenizer = self.get_tokenizer(name, tokenizers)
            if name == "Coordinates":
                result[name] = tokenizer.decode_coordinates(result[name])  # (B, 2) lon, lat; NaN if unparseable
                continue
            decoded = tokenizer.decode_tokens(result[name], timesteps=config.timesteps, generator=generator,
                                              progress=progress)  # fmt: skip
            result[name] = destandardize(name, decoded, offsets) if standardize else decoded
        return result

    def prepare_generation_inputs(
        self,
        given: Mapping[str, torch.Tensor],
        input_tokens: Mapping[str, torch.Tensor] | None,
        standardize: bool,
        tokenizers: Mapping[str, Any] | None,
        offsets: Mapping[str, torch.Tensor] | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Standardize (if asked, means shifted by `offsets` from `standardization_offsets`) and map inputs to
        model-ready tensors with the encoder's own input handling (validation, tokenization of LULC/NDVI images,
        coordinates, unknown modalities), then the token grid: the image inputs', else that of `image_size`
        (default `config.image_size`)."""
        for name, tokenizer in (tokenizers or {}).items():
            self.terramind.set_tokenizer(name, tokenizer)
        device = self.mask_token.device
        prepared = {}
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"Input {name} must be a torch.Tensor, got {type(value).__name__}.")
            try:
                key = resolve_modality(name)
            except ValueError:  # left to the encoder, which names what it takes (or ignores it, if so configured)
                prepared[name] = value
                continue
            if key in prepared:
                raise ValueError(f"Modality {key} was given twice (as {name!r} and another name).")
            value = value.to(device)
            prepared[key] = standardize_input(name, value, offsets or {}) if standardize else value
        tokens = {resolve_modality(k): v.to(device) for k, v in (input_tokens or {}).items()}
        inputs = self.terramind.collect_inputs(None, prepared, tokens)
        requested = _grid_of(image_size, self.config.patch_size) if image_size is not None else None
        if any(self.terramind.inputs.is_image_modality(k) for k in inputs):
            grid = self.terramind.inputs.patch_grid(inputs)
            if requested is not None and requested != grid:
                patch = self.config.patch_size
                raise ValueError(f"image_size {image_size} does not match the image inputs ({grid[0] * patch}x"
                                 f"{grid[1] * patch}); it sets the size when no input is an image.")  # fmt: skip
            return inputs, grid
        return inputs, requested or self.terramind.inputs.default_grid()

    def get_tokenizer(self, modality: str, tokenizers: Mapping[str, Any] | None = None):
        """The tokenizer of a modality: passed in, or the encoder's (set or loaded from config.tokenizer_paths)."""
        name = resolve_output_modality(modality)
        for key, tokenizer in (tokenizers or {}).items():
            if resolve_output_modality(key) == name:
                return tokenizer
        return self.terramind.get_tokenizer(name)


def standardization_offsets(
    offset: Mapping[str, float | Sequence[float]] | None, standardize: bool, modalities: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Checked `offset` of a generation call: image modality (S2L2A for S2L2A and its tokens) -> (C,) values added
    to its pre-training means. Only with `standardize=True`, only for standardized modalities of the call."""
    if not offset:
        return {}
    if not standardize:
        raise ValueError("offset shifts the standardization means: it needs standardize=True (for inputs the "
                         "processor standardized, give it to TerraMindProcessor(offset=...)).")  # fmt: skip
    involved = {resolve_modality(name).removesuffix("_TOKENS") for name in modalities}
    out: dict[str, torch.Tensor] = {}
    for name, value in offset.items():
        key = resolve_modality(name).removesuffix("_TOKENS")
        spec = MODALITIES[key]
        if key not in involved:
            raise ValueError(f"offset given for {name!r}, which is neither an input nor an output of this call.")
        if key in out:
            raise ValueError(f"offset given twice for {key}.")
        if not spec.mean or key == "LULC":
            raise ValueError(f"offset given for {name!r}, which is not standardized.")
        values = torch.as_tensor(value, dtype=torch.float32).flatten()
        if values.numel() not in (1, len(spec.mean)) or not torch.isfinite(values).all():
            raise ValueError(f"offset[{name!r}] must be a number or {len(spec.mean)} numbers (one per {key} band), "
                             f"got {value!r}.")  # fmt: skip
        out[key] = values.expand(len(spec.mean)).clone()
    return out


def _statistics(
    modality: str, device: torch.device, offsets: Mapping[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (plus the modality's offset, if any) and std as (1, C, 1, 1) tensors: the image processor's, which owns
    the standardization statistics (the v1 pre-training values, by band)."""
    key = resolve_modality(modality).removesuffix("_TOKENS")
    shift = (offsets or {}).get(key)
    processor = TerraMindImageProcessor(offset=None if shift is None else {key: shift.tolist()})
    mean, std = processor.band_statistics(key)
    return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std))


def standardize_input(name: str, value: torch.Tensor, offsets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A physical-unit input standardized with the v1 statistics (LULC class maps and coordinates as they are)."""
    key = resolve_modality(name)
    if MODALITIES[key].kind == "sequence" or key == "LULC":
        return value
    mean, std = _statistics(key, value.device, offsets)
    if value.ndim != 4 or value.shape[1] != mean.shape[1]:
        raise ValueError(f"Input {name} must be (B, {mean.shape[1]}, H, W), got {tuple(value.shape)}.")
    return (value.float() - mean) / std


def destandardize(name: str, decoded: torch.Tensor, offsets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A decoded output back in physical units (LULC logits as they are)."""
    if name == "LULC":
        return decoded
    mean, std = _statistics(name, decoded.device, offsets)
    return decoded * std + mean


def _grid_of(image_size: int | Sequence[int], patch: int) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 and v % patch == 0 for v in size):
        raise ValueError(f"image_size must be an int or (height, width), positive multiples of {patch}; got "
                         f"{image_size!r}.")  # fmt: skip
    return size[0] // patch, size[1] // patch


def sentinel_token_ids(tokenizer: Any) -> set[int]:
    """Ids of every sentinel token ([S_0], [S_1], ...) of a text tokenizer, as the original finds them."""
    return {i for token, i in tokenizer.get_vocab().items() if token.startswith("[S_")}


def merge_generated_span(
    sequences: torch.Tensor, start: int, sentinels: set[int], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's `merge_span_masking` of generated sequences (B, L) that begin with [S_1]: per row the tokens
    that follow an [S_1] up to the next sentinel, left-aligned and padded with `pad` to the longest row; returns
    them (B, L') and the mask of the real ones (B, L')."""
    rows = []
    for row in sequences.tolist():
        span, kept = None, []
        for token in row:
            if token in sentinels:
                span = token
            elif span == start:
                kept.append(token)
        rows.append(kept)
    length = max(len(row) for row in rows)
    tokens = torch.full((len(rows), length), pad, dtype=torch.long)
    valid = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[i, : len(row)] = True
    return tokens.to(sequences.device), valid.to(sequences.device)


def sentinel_ids(tokenizer: Any) -> tuple[int, int]:
    """Ids of [S_1] and [S_2]: from the coordinates tokenizer, else the original's fixed 5 and 6."""
    if tokenizer is not None:
        ids = tokenizer.convert_tokens_to_ids(["[S_1]", "[S_2]"])
        if None not in ids and tokenizer.unk_token_id not in ids:
            return ids[0], ids[1]
    return 5, 6


SAMPLING_SETTINGS = ("decoding_steps", "temperature", "top_k", "top_p", "timesteps")
_GENERATE_OPTIONS = ("generation_config", "standardize", "input_tokens", "tokenizers", "offset", "image_size")
