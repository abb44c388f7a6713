"""Any-to-any generation with TerraMind: ROAR decoding of token grids, chaining, decoding, tiling.

The sampler follows the original (`GenerationSampler`, `build_chained_generation_schedules` in terratorch's
`generate.py`): each target modality is decoded in random order (ROAR) over a linear token schedule with
per-step temperature / top-k / top-p sampling (temperature 0 is greedy); several targets are chained, each
generated modality joining the encoder input of the next. Randomness comes from a `torch.Generator`, so seeded
runs are reproducible (the original reseeds the global RNG instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .modalities import MODALITIES, resolve_modality, resolve_output_modality, standardization, token_modality


def linear_token_schedule(steps: int, total: int) -> list[int]:
    """Tokens decoded per step: `total` split as evenly as possible, larger chunks first (the original's)."""
    if steps < 1:
        raise ValueError(f"decoding_steps must be >= 1, got {steps}.")
    chunks = np.diff(np.linspace(0, total, steps + 1, dtype=int))
    chunks = sorted(chunks.tolist(), reverse=True)
    return [c for c in chunks if c > 0]


def filter_logits(logits: torch.Tensor, top_k: int | float = 0, top_p: float = 0.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of (N, V) logits: removed entries become -inf."""
    logits = logits.clone()
    if top_k > 0:
        k = min(int(top_k) if isinstance(top_k, int) else int(top_k * logits.shape[-1]), logits.shape[-1])
        threshold = torch.topk(logits, k)[0][..., -1, None]
        logits[logits < threshold] = float("-inf")
    if top_p > 0.0:
        sorted_logits, sorted_indices = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits[remove.scatter(-1, sorted_indices, remove)] = float("-inf")
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | float = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per row of (..., V) logits; temperature 0 takes the argmax."""
    shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if temperature <= 1e-10:
        return logits.argmax(dim=-1).reshape(shape)
    probs = F.softmax(filter_logits(logits, top_k, top_p) / temperature, dim=-1)
    if generator is not None and generator.device != probs.device:
        samples = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    else:
        samples = torch.multinomial(probs, 1, generator=generator)
    return samples[:, 0].reshape(shape)


class TerraMindGenerationMixin:
    """Generation for `TerraMindForGeneration` (the encoder is `self.terramind`, decoder parts on `self`)."""

    # ------------------------------------------------------------------ token level
    def _encode_context(self, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Encoder over (tokens, positional) pieces -> decoder context (projected output + positions)."""
        tokens = torch.cat([t for t, _ in pieces], dim=1)
        positions = torch.cat([p for _, p in pieces], dim=1)
        hidden = tokens + positions
        for layer in self.terramind.encoder.layer:
            hidden = layer(hidden)
        hidden = self.terramind.layernorm(hidden)
        return self.decoder_proj_context(hidden) + positions

    def _decode_logits(self, target: str, context: torch.Tensor, grid: tuple[int, int], positions: torch.Tensor):
        """Logits (B, len(positions), V) of `target` tokens at the given flat grid positions."""
        embedding = self.decoder_embeddings[target]
        queries = embedding.positional(context.shape[0], *grid)[:, positions].to(context.dtype)
        hidden = self.mask_token.to(context.dtype) + queries
        for layer in self.decoder.layer:
            hidden = layer(hidden, context)
        return embedding.to_logits(self.decoder_layernorm(hidden))

    def _embed_input(self, key: str, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if value.is_floating_point():
            value = value.to(self.terramind.layernorm.weight.dtype)
        return self.terramind.modality_embeddings[key](value)

    @torch.no_grad()
    def generate_tokens(
        self,
        inputs: Mapping[str, torch.Tensor],
        targets: Sequence[str],
        grid: tuple[int, int],
        decoding_steps: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.8,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Generate token grids (B, h, w) of `targets` (embedding keys, e.g. "LULC", "S1GRD_TOKENS").

        `inputs` maps embedding keys to model-ready tensors: standardized images (B, C, H, W) for raw image
        modalities, token grids (B, h, w) for token modalities, token ids (B, L) for sequences. Targets are
        decoded in order, each one conditioning the next.
        """
        pieces = [self._embed_input(key, value) for key, value in inputs.items()]
        batch = pieces[0][0].shape[0]
        device = pieces[0][0].device
        num_tokens = grid[0] * grid[1]
        out: dict[str, torch.Tensor] = {}
        schedule = linear_token_schedule(decoding_steps, num_tokens)
        bar = tqdm(total=len(targets) * len(schedule), desc="TerraMind generation", disable=not progress)
        for target in targets:
            if MODALITIES[target].kind == "sequence":
                out[target] = self._generate_sequence(target, pieces, temperature, top_k, top_p, generator)
                pieces.append(self.terramind.modality_embeddings[target](out[target]))
                bar.update(len(schedule))
                continue
            tokens = torch.zeros(batch, num_tokens, dtype=torch.long, device=device)
            order = torch.randperm(num_tokens, generator=generator, device="cpu").to(device)
            done = 0
            embedding = self.terramind.modality_embeddings[target]
            for count in schedule:
                context_pieces = list(pieces)
                if done:  # tokens of this target decoded in earlier steps condition the next ones
                    known = order[:done]
                    partial, partial_pos = embedding(tokens.reshape(batch, *grid))
                    context_pieces.append((partial[:, known], partial_pos[:, known]))
                context = self._encode_context(context_pieces)
                select = order[done : done + count] if len(schedule) > 1 else torch.arange(num_tokens, device=device)
                logits = self._decode_logits(target, context, grid, select)
                tokens[:, select] = sample_tokens(logits, temperature, top_k, top_p, generator)
                done += count
                bar.update(1)
            out[target] = tokens.reshape(batch, *grid)
            pieces.append(embedding(out[target]))
        bar.close()
        return out

    def _generate_sequence(
        self,
        target: str,
        pieces: list[tuple[torch.Tensor, torch.Tensor]],
        temperature: float,
        top_k: int,
        top_p: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Autoregressive decoding of a sequence modality (coordinates), as the original: start from the sentinel
        [S_1], causal self-attention, stop when every sequence has the closing sentinel [S_2] or at the maximum
        length. Returns the tokens between the sentinels (B, L), padded with 0 ([PAD])."""
        from .modeling_terramind import additive_attention_mask  # (modeling_terramind imports this module)

        start, stop = _sentinel_ids(self.terramind.get_tokenizer(target) if target == "Coordinates" else None)
        context = self._encode_context(pieces)
        batch = context.shape[0]
        embedding = self.decoder_embeddings[target]
        length = MODALITIES[target].max_length - 1  # targets of the original's empty sequence: 3 of 4 positions
        positions = embedding.positional(batch, length).to(context.dtype)
        out = torch.full((batch, 1), start, dtype=torch.long, device=context.device)
        for _ in range(length):
            size = out.shape[1]
            hidden = embedding.token_emb(out) + positions[:, :size]
            causal = torch.ones(size, size, dtype=torch.bool, device=context.device).tril().expand(batch, -1, -1)
            mask = additive_attention_mask(causal, hidden.dtype)
            for layer in self.decoder.layer:
                hidden = layer(hidden, context, self_attention_mask=mask)
            logits = embedding.to_logits(self.decoder_layernorm(hidden[:, -1]))
            out = torch.cat([out, sample_tokens(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
            if (out == stop).any(dim=1).all():
                break
        tokens = out[:, 1:]
        ended = (tokens == stop).cumsum(dim=1) > 0
        return tokens.masked_fill(ended, 0)

    # ------------------------------------------------------------------ user level
    @torch.no_grad()
    def generate(
        self,
        inputs: Mapping[str, torch.Tensor] | None = None,
        output_modalities: Sequence[str] = ("S2L2A",),
        decoding_steps: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.8,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        timesteps: int = 50,
        standardize: bool = False,
        decode: bool = True,
        input_tokens: Mapping[str, torch.Tensor] | None = None,
        tokenizers: Mapping[str, Any] | None = None,
        progress: bool = False,
        **modalities: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Generate `output_modalities` (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI, Coordinates) from any inputs.

        Args:
            inputs / **modalities: input modality -> tensor. Raw modalities (S2L1C, S2L2A, RGB, S1GRD, S1RTC, DEM)
                as images (B, C, H, W), H and W multiples of 16. Tokenized modalities (LULC, NDVI, ...) as images
                too: they are tokenized with their tokenizer first. Coordinates as (B, 2) lon/lat.
            input_tokens: ready token grids (B, H/16, W/16) per tokenized modality, skipping its tokenizer.
            output_modalities: generated in this order, each conditioning the next (as the original).
            decoding_steps: ROAR steps per image modality (the original's default is 1).
            temperature, top_k, top_p: sampling per step; temperature 0 is greedy.
            generator / seed: a `torch.Generator` (or a seed for a new CPU one) drives every random choice, so
                seeded runs are reproducible.
            timesteps: diffusion steps of the tokenizers' decoders.
            standardize: False (default): inputs are already standardized (e.g. by TerraMindProcessor) and outputs
                stay standardized. True: inputs are physical values, standardized here with the v1 pre-training
                statistics, and outputs are returned in physical units. Don't standardize twice.
            decode: True: images through the tokenizers' decoders; False: the token grids (B, H/16, W/16).
            tokenizers: modality -> TerraMindTokenizerModel to use; otherwise loaded lazily from
                `config.tokenizer_paths` (defaults to the official repos), only those needed.

        Returns:
            dict output modality -> images (B, C, H, W) (LULC: class logits), Coordinates (B, 2) lon/lat; with
            decode=False the token grids (B, H/16, W/16) and coordinate token ids (B, L).
        """
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
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
        model_inputs, grid = self.prepare_generation_inputs(given, input_tokens, standardize, tokenizers)
        targets = [token_modality(name) for name in outputs]
        tokens = self.generate_tokens(model_inputs, targets, grid, decoding_steps, temperature, top_k, top_p,
                                      generator, progress)  # fmt: skip
        result = {name: tokens[key] for name, key in zip(outputs, targets, strict=True)}
        if not decode:
            return result
        for name in outputs:
            tokenizer = self.get_tokenizer(name, tokenizers)
            if name == "Coordinates":
                result[name] = tokenizer.decode_coordinates(result[name])  # (B, 2) lon, lat; NaN if unparseable
                continue
            decoded = tokenizer.decode_tokens(result[name], timesteps=timesteps, generator=generator, progress=progress)
            if standardize and name != "LULC":
                mean, std = _statistics(name, decoded.device)
                decoded = decoded * std + mean
            result[name] = decoded
        return result

    @torch.no_grad()
    def generate_tiled(
        self,
        inputs: Mapping[str, torch.Tensor] | None = None,
        output_modalities: Sequence[str] = ("S2L2A",),
        tile_size: int = 224,
        overlap: int = 64,
        batch_size: int = 8,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        decode: bool = True,
        progress: bool = False,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Generate over scenes larger than one tile: overlapping tiles, batched, blended with a smooth window.

        Inputs are (B, C, H, W) with H, W >= `tile_size` (multiples of 16); every tile goes through `generate`
        (same keyword arguments). Decoded outputs are blended with a tapered window, so tiles meet without
        seams; with `decode=False` each token comes from the tile whose centre is nearest. Outputs have the
        input's size (token grids: H/16, W/16).
        """
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        images = dict(inputs or {})
        images.update({k: kwargs.pop(k) for k in list(kwargs) if k not in _GENERATE_OPTIONS})
        if not images:
            raise ValueError("No inputs given: pass at least one input modality (e.g. S2L2A=...).")
        if any(resolve_output_modality(name) == "Coordinates" for name in output_modalities):
            raise ValueError("Coordinates are generated per tile, not for a scene: use `generate` on one tile.")
        patch = self.config.patch_size
        if tile_size % patch or not 0 <= overlap < tile_size or overlap % patch:
            raise ValueError(f"tile_size and overlap must be multiples of {patch} with 0 <= overlap < tile_size.")
        height, width = next(iter(images.values())).shape[-2:]
        batch = next(iter(images.values())).shape[0]
        if any(v.shape[-2:] != (height, width) or v.shape[0] != batch for v in images.values()):
            raise ValueError("All inputs of a tiled generation must share batch and spatial size.")
        if height < tile_size or width < tile_size or height % patch or width % patch:
            raise ValueError(f"Tiled generation needs inputs of at least {tile_size}x{tile_size} in multiples of "
                             f"{patch}, got {height}x{width}.")  # fmt: skip
        stride = tile_size - overlap
        tops = _tile_starts(height, tile_size, stride)
        lefts = _tile_starts(width, tile_size, stride)
        tiles = [(top, left) for top in tops for left in lefts]
        scale = 1 if decode else patch
        window = _blend_window(tile_size // scale, (overlap // scale) or 1).to(self.mask_token.device)
        sums: dict[str, torch.Tensor] = {}
        weights = torch.zeros(height // scale, width // scale, device=self.mask_token.device)
        bar = tqdm(total=len(tiles), desc="TerraMind tiled generation", disable=not progress)
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            crops = {name: torch.cat([v[..., t : t + tile_size, x : x + tile_size] for t, x in chunk])
                     for name, v in images.items()}  # fmt: skip
            out = self.generate(crops, output_modalities=output_modalities, generator=generator, decode=decode,
                                progress=progress, **kwargs)  # fmt: skip
            for name, value in out.items():
                parts = value.split(batch) if value.shape[0] == batch * len(chunk) else [value]
                for (top, left), part in zip(chunk, parts, strict=True):
                    rows = slice(top // scale, (top + tile_size) // scale)
                    cols = slice(left // scale, (left + tile_size) // scale)
                    if decode:
                        if name not in sums:
                            sums[name] = torch.zeros(*part.shape[:-2], height, width, device=part.device)
                        sums[name][..., rows, cols] += part.float() * window
                    else:
                        if name not in sums:
                            sums[name] = torch.zeros(batch, height // patch, width // patch, dtype=part.dtype,
                                                     device=part.device)  # fmt: skip
                        better = window > weights[rows, cols]
                        sums[name][..., rows, cols] = torch.where(better, part, sums[name][..., rows, cols])
            for top, left in chunk:
                rows = slice(top // scale, (top + tile_size) // scale)
                cols = slice(left // scale, (left + tile_size) // scale)
                if decode:
                    weights[rows, cols] += window
                else:
                    weights[rows, cols] = torch.maximum(weights[rows, cols], window)
            bar.update(len(chunk))
        bar.close()
        if decode:
            return {name: value / weights for name, value in sums.items()}
        return sums

    def prepare_generation_inputs(
        self,
        given: Mapping[str, torch.Tensor],
        input_tokens: Mapping[str, torch.Tensor] | None,
        standardize: bool,
        tokenizers: Mapping[str, Any] | None,
    ) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Standardize (if asked) and map inputs to model-ready tensors with the encoder's own input handling
        (validation, tokenization of LULC/NDVI images, coordinates), then the token grid size."""
        for name, tokenizer in (tokenizers or {}).items():
            self.terramind.set_tokenizer(name, tokenizer)
        device = self.mask_token.device
        prepared = {}
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"Input {name} must be a torch.Tensor, got {type(value).__name__}.")
            key = resolve_modality(name)
            value = value.to(device)
            if standardize and MODALITIES[key].kind != "sequence" and key != "LULC":
                mean, std = _statistics(key, device)
                if value.ndim != 4 or value.shape[1] != mean.shape[1]:
                    raise ValueError(f"Input {name} must be (B, {mean.shape[1]}, H, W), got {tuple(value.shape)}.")
                value = (value.float() - mean) / std
            prepared[key] = value
        tokens = {resolve_modality(k): v.to(device) for k, v in (input_tokens or {}).items()}
        inputs = self.terramind.collect_inputs(None, prepared, tokens)
        return inputs, self.terramind.patch_grid(inputs)

    def get_tokenizer(self, modality: str, tokenizers: Mapping[str, Any] | None = None):
        """The tokenizer of a modality: passed in, or the encoder's (set or loaded from config.tokenizer_paths)."""
        name = resolve_output_modality(modality)
        for key, tokenizer in (tokenizers or {}).items():
            if resolve_output_modality(key) == name:
                return tokenizer
        return self.terramind.get_tokenizer(name)


def _statistics(modality: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """v1 pre-training mean and std of a modality as (1, C, 1, 1) tensors."""
    return tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in standardization(modality))


def _sentinel_ids(tokenizer: Any) -> tuple[int, int]:
    """Ids of [S_1] and [S_2]: from the coordinates tokenizer, else the original's fixed 5 and 6."""
    if tokenizer is not None:
        ids = tokenizer.convert_tokens_to_ids(["[S_1]", "[S_2]"])
        if None not in ids and tokenizer.unk_token_id not in ids:
            return ids[0], ids[1]
    return 5, 6


_GENERATE_OPTIONS = {"decoding_steps", "temperature", "top_k", "top_p", "timesteps", "standardize", "input_tokens",
                     "tokenizers"}  # fmt: skip


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size): regular steps, the last tile flush with the edge."""
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _blend_window(size: int, ramp: int) -> torch.Tensor:
    """(size, size) weights: 1 in the middle, a linear ramp over `ramp` pixels to a small floor at the edges."""
    ramp = max(1, min(ramp, size // 2))
    profile = torch.ones(size)
    edge = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
    profile[:ramp] = edge
    profile[-ramp:] = edge.flip(0)
    return profile[:, None] * profile[None, :]
