"""TerraMind models: the encoder (`TerraMindModel`) and the any-to-any generator (`TerraMindForGeneration`).

Numerically equal to `terratorch.models.backbones.terramind` (terratorch 1.2.13). Read top-down:
- modality embeddings: one linear patch embedding per raw image modality on (ph, pw, channel)-flattened patches,
  token embeddings for tokenized modalities and sequences, each plus fixed sin-cos positions (interpolated
  bicubically for other sizes) and a learned modality embedding; `TerraMindEmbeddings` holds them per modality;
- `TerraMindEncoder` and `TerraMindDecoder`: stacks of the shared blocks (`modeling_terramind_layers`);
- `TerraMindModel`: inputs (`TerraMindInputs`, modeling_terramind_inputs) -> Thinking-in-Modalities where configured
  (`TerraMindThinkingInModalities`, modeling_terramind_tim) -> embeddings -> encoder -> norm -> the per-modality
  tokens merged (`merge_method`); hidden states and attentions are recorded by Transformers' `@capture_outputs`;
- `TerraMindForGeneration`: the encoder plus the decoder predicting target-modality tokens (`forward` gives their
  logits and loss, `generate` samples them, `generation_terramind`).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithCrossAttentions
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs, recursively_install_hooks

from .configuration_terramind import TerraMindConfig, check_legacy_tim_settings, refuse_unknown_settings
from .generation_terramind import TerraMindGenerationConfig, TerraMindGenerationMixin, sentinel_ids
from .modalities import MODALITIES, resolve_modality, token_modality
from .modeling_terramind_inputs import TerraMindInputs, TerraMindModalityTokenizers
from .modeling_terramind_layers import (
    TerraMindAttention,
    TerraMindDecoderLayer,
    TerraMindLayer,
    additive_attention_mask,
    init_transformer_weights,
    interpolate_pos_embed,
    layer_norm,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------- modality embeddings
class TerraMindGridEmbedding(nn.Module):
    """Base of the image-like embeddings: sin-cos positions of the patch grid (`pos_emb`, interpolated for other
    grids) plus the learned modality embedding (`mod_emb`)."""

    def positional(self, batch: int, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = interpolate_pos_embed(self.pos_emb, grid_h, grid_w)
        return (pos + self.mod_emb).expand(batch, -1, -1)


class TerraMindPatchEmbedding(TerraMindGridEmbedding):
    """Raw image modality -> tokens: a bias-free linear map of (ph, pw, channel)-flattened patches.

    `bands` (optional) are the band names of the input; for a pretrained modality the linear map keeps the
    pretrained layout (`proj` over the pretrained bands) and inputs are scattered into it by name, so that
    pretrained weights load unchanged and adapters (LoRA) on `proj` still apply. Bands the pretrained modality
    lacks go through `new_bands_proj`, freshly initialised.
    """

    def __init__(self, config: TerraMindConfig, num_channels: int, pretrained_bands: tuple[str, ...] = (),
                 bands: list[str] | None = None):  # fmt: skip
        super().__init__()
        self.patch_size = config.patch_size
        self.image_size = config.image_size
        self.num_channels = num_channels
        pixels = self.patch_size**2
        self.band_index: list[int] | None = None
        self.new_band_positions: list[int] = []
        proj_channels = num_channels
        if bands is not None and list(bands) != list(pretrained_bands):
            proj_channels = len(pretrained_bands)
            self.band_index = [pretrained_bands.index(b) for b in bands if b in pretrained_bands]
            self.known_band_positions = [i for i, b in enumerate(bands) if b in pretrained_bands]
            self.new_band_positions = [i for i, b in enumerate(bands) if b not in pretrained_bands]
        self.proj = nn.Linear(pixels * proj_channels, config.hidden_size, bias=False)
        self.new_bands_proj = (
            nn.Linear(pixels * len(self.new_band_positions), config.hidden_size, bias=False)
            if self.new_band_positions
            else None
        )
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        grid = config.image_size // config.patch_size
        self.register_buffer("pos_emb", sincos_pos_embed_2d(grid, grid, config.hidden_size), persistent=False)

    def _patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return patches.reshape(b, (h // p) * (w // p), p * p * c)

    def num_tokens(self, pixel_values: torch.Tensor) -> int:
        return (pixel_values.shape[-2] // self.patch_size) * (pixel_values.shape[-1] // self.patch_size)

    def positions_for(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Positional + modality embeddings (B, N, D) of an input, without embedding its pixels."""
        return self.positional(pixel_values.shape[0], *(s // self.patch_size for s in pixel_values.shape[-2:]))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (token embeddings, positional + modality embeddings), both (B, N, D)."""
        b, _, h, w = pixel_values.shape
        if self.band_index is None:
            tokens = self.proj(self._patchify(pixel_values))
        else:
            scattered = pixel_values.new_zeros(b, self.proj.in_features // self.patch_size**2, h, w)
            scattered[:, self.band_index] = pixel_values[:, self.known_band_positions]
            tokens = self.proj(self._patchify(scattered))
            if self.new_bands_proj is not None:
                tokens = tokens + self.new_bands_proj(self._patchify(pixel_values[:, self.new_band_positions]))
        return tokens, self.positional(b, h // self.patch_size, w // self.patch_size).to(tokens.dtype)


class TerraMindImageTokenEmbedding(TerraMindGridEmbedding):
    """Tokenized image modality (a grid of tokenizer codes) -> tokens. With `to_logits` for the decoder."""

    def __init__(self, config: TerraMindConfig, vocab_size: int, with_logits: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, config.hidden_size)
        self.to_logits = nn.Linear(config.hidden_size, vocab_size, bias=False) if with_logits else None
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        grid = config.image_size // config.patch_size
        self.register_buffer("pos_emb", sincos_pos_embed_2d(grid, grid, config.hidden_size), persistent=False)

    @staticmethod
    def _grid(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 2:
            side = int(math.isqrt(tokens.shape[1]))
            tokens = tokens.reshape(tokens.shape[0], side, side)
        return tokens

    def num_tokens(self, tokens: torch.Tensor) -> int:
        return tokens.shape[1] if tokens.ndim == 2 else tokens.shape[-2] * tokens.shape[-1]

    def positions_for(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positional + modality embeddings (B, N, D) of a token grid."""
        tokens = self._grid(tokens)
        return self.positional(tokens.shape[0], *tokens.shape[1:])

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, h, w) grid (or (B, h*w) for a square grid)."""
        tokens = self._grid(tokens)
        b, gh, gw = tokens.shape
        embedded = self.token_emb(tokens.reshape(b, gh * gw))
        return embedded, self.positional(b, gh, gw).to(embedded.dtype)


class TerraMindSequenceEmbedding(nn.Module):
    """Sequence modality (text tokens, e.g. coordinates) -> tokens, 1-D sin-cos positions. Padding id 0."""

    def __init__(self, config: TerraMindConfig, vocab_size: int, max_length: int, with_logits: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.token_emb = nn.Embedding(vocab_size, config.hidden_size, padding_idx=0)
        self.to_logits = nn.Linear(config.hidden_size, vocab_size, bias=False) if with_logits else None
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_buffer("pos_emb", sincos_pos_embed_1d(512, config.hidden_size), persistent=False)

    def positional(self, batch: int, length: int) -> torch.Tensor:
        return (self.pos_emb[:, :length] + self.mod_emb).expand(batch, -1, -1)

    def num_tokens(self, tokens: torch.Tensor) -> int:
        return tokens.shape[1]

    def positions_for(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positional + modality embeddings (B, L, D) of a token sequence."""
        return self.positional(tokens.shape[0], tokens.shape[1])

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.token_emb(tokens)
        return embedded, self.positional(tokens.shape[0], tokens.shape[1]).to(embedded.dtype)


def build_modality_embedding(config: TerraMindConfig, key: str, channels: int | None, decoder: bool = False):
    """The embedding module of one modality key (pretrained canonical name or a new modality)."""
    spec = MODALITIES.get(key) if decoder else config.pretrained_spec(key)
    if spec is None:  # new modality {"NAME": channels}, whatever its name
        return TerraMindPatchEmbedding(config, channels)
    if spec.kind == "image":
        return TerraMindPatchEmbedding(config, channels, spec.bands, config.band_names(key))
    if spec.kind == "image_tokens":
        return TerraMindImageTokenEmbedding(config, spec.vocab_size, with_logits=decoder)
    return TerraMindSequenceEmbedding(config, spec.vocab_size, spec.max_length, with_logits=decoder)




class TerraMindEmbeddings(nn.ModuleDict):
    """Inputs -> tokens: the embedding module of every modality key, applied in input order and concatenated.

    `token_positions` keeps only some tokens of a modality (e.g. the target tokens already decoded, which condition
    the next ones in generation): flat grid positions (n,) shared by the batch, or (B, n) per sample (4M's masked
    pre-training picks other tokens in every sample); `token_slices` says where each modality's tokens sit.
    """

    def __init__(self, config: TerraMindConfig, channels: Mapping[str, int | None], decoder: bool = False):
        super().__init__({key: build_modality_embedding(config, key, ch, decoder) for key, ch in channels.items()})

    def forward(
        self, inputs: Mapping[str, torch.Tensor], token_positions: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Token + positional + modality embeddings (B, N, D) of every input."""
        pieces = []
        for key, value in inputs.items():
            if value.is_floating_point():  # pixels in the model's dtype (bf16 models take fp32 inputs)
                value = value.to(self[key].mod_emb.dtype)
            tokens, positions = self[key](value)
            pieces.append(_keep(tokens + positions, key, token_positions))
        return torch.cat(pieces, dim=1)

    def positions(
        self, inputs: Mapping[str, torch.Tensor], token_positions: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Positional + modality embeddings (B, N, D) alone (the decoder context adds them again)."""
        return torch.cat([_keep(self[k].positions_for(v), k, token_positions) for k, v in inputs.items()], dim=1)

    def token_slices(
        self, inputs: Mapping[str, torch.Tensor], token_positions: Mapping[str, torch.Tensor] | None = None,
        offset: int = 0,
    ) -> dict[str, slice]:  # fmt: skip
        """Where each modality's tokens are in the embedded sequence (after `offset` leading tokens)."""
        slices = {}
        for key, value in inputs.items():
            kept = (token_positions or {}).get(key)
            count = kept.shape[-1] if kept is not None else self[key].num_tokens(value)
            slices[key] = slice(offset, offset + count)
            offset += count
        return slices

    def token_mask(
        self,
        inputs: Mapping[str, torch.Tensor],
        valid_tokens: Mapping[str, torch.Tensor] | None,
        token_positions: Mapping[str, torch.Tensor] | None = None,
        offset: int = 0,
    ) -> torch.Tensor | None:
        """(B, N) mask of the encoded tokens to attend to (`offset` leading tokens, e.g. registers, then every
        input's tokens) from per-input (B, N_m) masks, e.g. of generated sequences padded to one length; None when
        every token counts."""
        valid_tokens = {k: v for k, v in (valid_tokens or {}).items() if k in inputs}
        if not valid_tokens:
            return None
        slices = self.token_slices(inputs, token_positions, offset=offset)
        first = next(iter(inputs.values()))
        mask = torch.ones(first.shape[0], max(s.stop for s in slices.values()), dtype=torch.bool, device=first.device)
        for key, valid in valid_tokens.items():
            kept = (token_positions or {}).get(key)
            mask[:, slices[key]] = valid if kept is None else gather_tokens(valid, kept)
        return mask


def _keep(tokens: torch.Tensor, key: str, token_positions: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    kept = (token_positions or {}).get(key)
    return tokens if kept is None else gather_tokens(tokens, kept)


def gather_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (B, n, ...) at positions (n,) shared by the batch or (B, n) per sample."""
    if positions.ndim == 1:
        return tokens[:, positions]
    index = positions.to(tokens.device).reshape(*positions.shape, *[1] * (tokens.ndim - 2))
    return tokens.gather(1, index.expand(*positions.shape, *tokens.shape[2:]))


def masked_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) boolean token mask -> (positions (B, n), valid (B, n)): every sample's chosen positions in grid
    order, padded to the largest count n of the batch with unchosen positions, which `valid` marks False."""
    mask = mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    count = int(mask.sum(dim=1).max()) if mask.numel() else 0
    positions = order[:, :count]
    return positions, mask.gather(1, positions)


# ----------------------------------------------------------------------------- encoder and decoder
def _padding_mask(attention_mask: torch.Tensor | None, queries: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Nk) "token is valid" mask -> (B, 1, queries, Nk) additive attention mask."""
    if attention_mask is None:
        return None
    return additive_attention_mask(attention_mask.bool()[:, None, :].expand(-1, queries, -1), dtype)


class TerraMindEncoder(nn.Module):
    """The encoder blocks. `attention_mask` (B, N), 1 for tokens to attend to, hides padding tokens. Hidden states
    and attentions are recorded by the model's `@capture_outputs` hooks on the blocks."""

    def __init__(self, config: TerraMindConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layer = nn.ModuleList([TerraMindLayer(config, rate) for rate in rates])

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:  # fmt: skip
        """`last_hidden_state` is the last block's output (before the final norm)."""
        mask = _padding_mask(attention_mask, hidden_states.shape[1], hidden_states.dtype)
        for layer in self.layer:
            hidden_states = layer(hidden_states, mask, **kwargs)[0]
        return BaseModelOutput(last_hidden_state=hidden_states)


class TerraMindDecoder(nn.Module):
    """The decoder blocks: queries attend to each other (optionally causally) and to the encoder context."""

    def __init__(self, config: TerraMindConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_decoder_layers, device="cpu").tolist()
        self.layer = nn.ModuleList([TerraMindDecoderLayer(config, rate) for rate in rates])

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        self_attention_mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithCrossAttentions:
        """`self_attention_mask`: additive (B, 1, Nq, Nq) (e.g. causal); `context_mask`: (B, Nk) valid context."""
        cross_mask = _padding_mask(context_mask, hidden_states.shape[1], hidden_states.dtype)
        for layer in self.layer:
            hidden_states = layer(hidden_states, context, self_attention_mask, cross_mask, **kwargs)[0]
        return BaseModelOutputWithCrossAttentions(last_hidden_state=hidden_states)


# ----------------------------------------------------------------------------- outputs
@dataclass
class TerraMindModelOutput(ModelOutput):
    """Output of TerraMindModel.

    Args:
        last_hidden_state: final block output after the encoder norm, merged as `merge_method` says:
            (B, N, D) for mean/max, (B, N, D * num_image_modalities) for concat, dict modality -> (B, N_m, D)
            for "dict", all tokens (B, N_total, D) for None.
        hidden_states: with `output_hidden_states=True`, the embedding output followed by every block's output
            (the last one before the final norm), each merged like `last_hidden_state`.
        attentions: with `output_attentions=True`, every block's attention probabilities (B, heads, N, N) over all
            tokens (registers, every modality, TiM tokens), unmerged.
        tim_tokens: Thinking-in-Modalities: modality -> (B, N) token ids the model generated for itself.
    """

    last_hidden_state: Any = None
    hidden_states: tuple[Any, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    tim_tokens: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        # ModelOutput would unpack a dict first field ("dict" merge) as field names; keep it as the value.
        first = self.last_hidden_state
        if not isinstance(first, dict):
            return super().__post_init__()
        self.last_hidden_state = None
        super().__post_init__()
        self["last_hidden_state"] = first
        self.move_to_end("last_hidden_state", last=False)


@dataclass
class TerraMindEncoderOutput(BaseModelOutput):
    """`BaseModelOutput` of the encoder over every token, with `token_slices`: where each input's tokens are."""

    token_slices: dict[str, slice] | None = None


@dataclass
class TerraMindGenerationOutput(ModelOutput):
    """Output of `TerraMindForGeneration.forward`.

    Args:
        loss: with `labels`, the summed cross-entropy of the target modalities' tokens.
        logits: target modality -> (B, N, vocab_size) logits of its tokens (image modalities in row-major grid
            order; sequences per position).
        encoder_last_hidden_state: the decoder's context (B, N_in, D): encoder output, normed and projected.
        encoder_hidden_states / encoder_attentions: the encoder's, with `output_hidden_states` / `output_attentions`.
        decoder_hidden_states / decoder_attentions / cross_attentions: per target modality, the decoder's.
        predicted_positions: with revealed target tokens (`reveal_fraction`), target -> the flat grid positions
            whose logits `logits` holds, in order.
    """

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: dict[str, tuple[torch.Tensor, ...]] | None = None
    decoder_attentions: dict[str, tuple[torch.Tensor, ...]] | None = None
    cross_attentions: dict[str, tuple[torch.Tensor, ...]] | None = None
    predicted_positions: dict[str, torch.Tensor] | None = None


# ----------------------------------------------------------------------------- base class
def own_output_hooks(method: Callable) -> Callable:
    """Put outside `@capture_outputs`: when a call asks for outputs, the model's recording hooks go on its own
    blocks only, once. Transformers' installer also walks into sub-models (the generator's encoder, the TiM
    generator), even where those installed theirs already, so their outputs would be recorded twice."""

    @wraps(method)
    def wrapper(self: TerraMindPreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_output_capturing_hooks_installed", False) and any(
                wants(self.config, kwargs, f"output_{key}") for key in self._can_record_outputs or {}):  # fmt: skip
            tasks = [(key, spec) for key, spec in self._can_record_outputs.items()]
            for name, child in self.named_children():
                if not isinstance(child, PreTrainedModel):  # sub-models install their own when asked
                    recursively_install_hooks(child, name, tasks)
            self._output_capturing_hooks_installed = True
        return method(self, *args, **kwargs)

    return wrapper


class TerraMindPreTrainedModel(PreTrainedModel):
    config_class = TerraMindConfig
    config: TerraMindConfig
    base_model_prefix = "terramind"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["TerraMindLayer", "TerraMindDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    # Converts an original (terratorch) release to a Transformers folder: set by the `terramind` package
    # (conversion.py), absent where only the saved remote code is loaded, which never needs it.
    original_release_resolver: ClassVar[Callable[..., str | None] | None] = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Standard loading, plus original releases: a folder or Hub repo holding `TerraMind_v1_*.pt` and no
        config.json (e.g. `ibm-esa-geospatial/TerraMind-1.0-base`) is converted once into the cache first."""
        resolver = TerraMindPreTrainedModel.original_release_resolver
        if pretrained_model_name_or_path is not None and resolver is not None:
            converted = resolver(pretrained_model_name_or_path, **{k: kwargs.get(k) for k in ("token", "revision")})
            if converted is not None:
                pretrained_model_name_or_path = converted
        want_info = kwargs.pop("output_loading_info", False)
        tim_generation_config = kwargs.pop("tim_generation_config", None)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)  # fmt: skip
        model._fill_tim_generators(info, tim_generation_config, **kwargs)
        model._renew_new_modalities(info, pretrained_model_name_or_path, **kwargs)
        if isinstance(model, TerraMindForGeneration):
            model.generation_config = kwargs.get("generation_config") or TerraMindGenerationConfig.from_folder(
                pretrained_model_name_or_path, **hub_kwargs(kwargs))
        model._after_loading()
        return (model, info) if want_info else model

    def _fill_tim_generators(self, info: dict, generation_config: TerraMindGenerationConfig | None,
                             **kwargs: Any) -> None:  # fmt: skip
        """Every TiM generator inside takes its weights and sampling from the same folder (`fill_from`)."""
        for module in self.modules():
            if isinstance(module, TerraMindModel) and module.tim_generator is not None:
                module.tim_generator.fill_from(self.config._name_or_path, "tim_generator.", info, generation_config,
                                               **kwargs)  # fmt: skip

    def _renew_new_modalities(self, info: dict, source: str | os.PathLike, **kwargs: Any) -> None:
        """A new modality named like a pretrained one (`{"NDVI": 1}`) is a new raw patch embedding: weights that the
        checkpoint holds under that name belong to the pretrained modality (here its `mod_emb`), so they are
        initialised afresh, as the original (which keys them apart) does; a folder saved with the same new modality
        loads as saved."""
        from transformers import PreTrainedConfig

        named_like_pretrained = [
            (path, module, name, channels) for path, module in self.named_modules()
            if isinstance(module, TerraMindModel) and module.encoder_embeddings is not None
            for name, channels in module.config.new_modalities().items() if name in MODALITIES
        ]  # fmt: skip
        saved_new = None
        for path, module, name, channels in named_like_pretrained:
            prefix = f"{path}.encoder_embeddings.{name}." if path else f"encoder_embeddings.{name}."
            embedding = module.encoder_embeddings[name]
            if all(prefix + k in info["missing_keys"] for k, _ in embedding.named_parameters()):
                continue  # nothing loaded under that name: fresh, and reported so
            if f"{prefix}proj.weight" not in info["missing_keys"]:  # the checkpoint has a patch embedding there
                if saved_new is None:
                    saved = PreTrainedConfig.get_config_dict(source, **hub_kwargs(kwargs))[0].get("modalities") or []
                    saved_new = {k: v for entry in saved if isinstance(entry, dict) for k, v in entry.items()}
                if saved_new.get(name) == channels:  # saved as this new modality: loaded as saved
                    continue
            for param in embedding.parameters():
                param._is_hf_initialized = False
            embedding.apply(self._init_weights)
            info["missing_keys"] = set(info["missing_keys"]) | {prefix + k for k, _ in embedding.named_parameters()}
            logger.warning(f"New modality {name!r} is freshly initialised: the checkpoint's {name!r} is the "
                           f"pretrained modality of that name.")  # fmt: skip

    def _after_loading(self) -> None:
        """Hook for subclasses to restore state that loading resets (e.g. frozen parts)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE-style init as the original (see `init_transformer_weights`), plus modality and register tokens."""
        std = self.config.initializer_range
        init_transformer_weights(module, std)
        if isinstance(module, TerraMindGridEmbedding):
            init.normal_(module.mod_emb, std=std)
            grid = self.config.image_size // self.config.patch_size
            init.copy_(module.pos_emb, sincos_pos_embed_2d(grid, grid, self.config.hidden_size))
        elif isinstance(module, TerraMindSequenceEmbedding):
            init.normal_(module.mod_emb, std=std)
            init.copy_(module.pos_emb, sincos_pos_embed_1d(512, self.config.hidden_size))
        elif isinstance(module, TerraMindModel):
            if module.missing_modality_token is not None:
                init.normal_(module.missing_modality_token, std=std)
            if module.register_tokens is not None:
                init.normal_(module.register_tokens, std=std)


def hub_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("token", "revision", "cache_dir", "local_files_only") if k in kwargs}


FRAMEWORK_KWARGS = frozenset(TransformersKwargs.__annotations__)


def split_model_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A forward's keyword arguments -> (inputs by modality name, Transformers' kwargs such as `output_attentions`)."""
    modalities = {k: v for k, v in kwargs.items() if k not in FRAMEWORK_KWARGS}
    return modalities, {k: v for k, v in kwargs.items() if k in FRAMEWORK_KWARGS}


def wants(config: TerraMindConfig, kwargs: Mapping[str, Any], flag: str) -> bool:
    """Whether a call asks for an output (`output_hidden_states`, `output_attentions`): its kwarg, else the config."""
    value = kwargs.get(flag)
    return bool(getattr(config, flag, False) if value is None else value)


def selected_hidden_states(config: TerraMindConfig, kwargs: Mapping[str, Any]) -> bool | list[int]:
    """What a call asks of `output_hidden_states` (its kwarg, else the config): all (True), none (False), or the
    indices of some (as Transformers' `output_hidden_states=[0, -1]`)."""
    value = kwargs.get("output_hidden_states")
    value = getattr(config, "output_hidden_states", False) if value is None else value
    if isinstance(value, bool) or not value:
        return bool(value)
    return [value] if isinstance(value, int) else list(value)


def _check_model_kwargs(cls: type, kwargs: Mapping[str, Any]) -> None:
    """`from_pretrained` hands keyword arguments that are no config field to the model: a typo lands here, and is
    an error naming the nearest known setting (a TiM sampling setting says where it moved)."""
    check_legacy_tim_settings(kwargs)
    refuse_unknown_settings(kwargs, (), cls.__name__)


# ----------------------------------------------------------------------------- encoder model
class TerraMindModel(TerraMindPreTrainedModel):
    """TerraMind encoder over any subset of its configured modalities.

    Inputs: `pixel_values` (one tensor for the first configured modality, or a dict modality -> tensor) and/or
    keyword arguments per modality (`model(S2L2A=x, S1GRD=y)`, as TerraTorch users write and Trainer passes them).
    Raw image modalities take standardized pixels (B, C, H, W) with H, W multiples of the patch size. Keys
    `<MODALITY>_nodata_mask` (from the processor) are accepted and checked against their modality; the encoder
    does not mask tokens, so fill nodata first. Unknown keywords raise (`config.ignore_unknown_modalities`: dropped
    with a warning, as the original). `inputs` reads them (`TerraMindInputs`), `tim_generator` thinks in modalities
    (`TerraMindThinkingInModalities`), then embeddings -> encoder -> norm -> merged outputs.
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder", r"mask_token", r"encoder_embeddings\."]
    _keys_to_ignore_on_load_missing = [r"^tim_generator\."]  # filled from the same folder by from_pretrained
    _can_record_outputs = {
        "hidden_states": OutputRecorder(TerraMindLayer, index=0),
        "attentions": OutputRecorder(TerraMindAttention, index=1),
    }

    def __init__(self, config: TerraMindConfig, **kwargs: Any):
        _check_model_kwargs(type(self), kwargs)
        super().__init__(config)
        self.modality_channels = config.modality_specs()
        self.tokenizers = TerraMindModalityTokenizers(config)
        self.inputs = TerraMindInputs(config, self.modality_channels, self.tokenizers)
        tim_targets = [token_modality(m) for m in config.tim_modalities]
        self.tim_generator = self.encoder_embeddings = None
        if tim_targets:  # as the original: the encoder embeds with the frozen generator's own modality embeddings
            from .modeling_terramind_tim import TerraMindThinkingInModalities

            keys = list(dict.fromkeys([*self.modality_channels, *tim_targets]))
            self.tim_generator = TerraMindThinkingInModalities(config, keys)
            self.tim_generator.terramind.use_tokenizers(self.tokenizers)
        else:
            self.encoder_embeddings = TerraMindEmbeddings(config, self.modality_channels)
        self.image_modalities = [k for k in dict.fromkeys([*self.modality_channels, *tim_targets])
                                 if self.inputs.is_image_modality(k)]  # fmt: skip
        self.encoder = TerraMindEncoder(config)
        self.layernorm = layer_norm(config)
        self.missing_modality_token = (
            nn.Parameter(torch.zeros(config.hidden_size)) if config.merge_method == "concat" else None
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens
            else None
        )
        self.gradient_checkpointing = False
        self.post_init()

    @property
    def embeddings(self) -> TerraMindEmbeddings:
        """Embedding module per modality key (the frozen generator's own modules in TiM models)."""
        if self.tim_generator is not None:
            return self.tim_generator.terramind.encoder_embeddings
        return self.encoder_embeddings

    def get_input_embeddings(self) -> TerraMindEmbeddings:
        return self.embeddings

    def post_init(self) -> None:
        super().post_init()
        # The concat merge's missing-modality token stands in for absent inputs; no release has it, so every
        # pretrained load would report it. Weights that carry input (new modalities, bands, registers) are reported.
        self._keys_to_ignore_on_load_missing.add(r"(^|\.)missing_modality_token$")

    def tie_weights(self, missing_keys: set[str] | None = None, recompute_mapping: bool = True) -> None:
        """Transformers' tying; the TiM generator's weights are filled after loading, from the same folder (see
        `from_pretrained`), so their absence from the checkpoint is no corruption."""
        if missing_keys is None or self.tim_generator is None:
            return super().tie_weights(missing_keys=missing_keys, recompute_mapping=recompute_mapping)
        filled_later = {k: v for k, v in self.all_tied_weights_keys.items()
                        if k.startswith("tim_generator.") and k in missing_keys and v in missing_keys}  # fmt: skip
        for key in filled_later:
            self.all_tied_weights_keys.pop(key)
        try:
            super().tie_weights(missing_keys=missing_keys, recompute_mapping=recompute_mapping)
        finally:
            self.all_tied_weights_keys.update(filled_later)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Transformers' saving; a TiM model also writes its generator's sampling (`generation_config.json`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tim_generator is not None:
            self.tim_generator.generation_config.save_pretrained(save_directory)

    # ------------------------------------------------------------------ inputs and tokenizers
    def collect_inputs(self, pixel_values: Any, modalities: dict[str, Any],
                       input_tokens: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Tensor/dict/keyword inputs -> embedding key -> model-ready tensor (`TerraMindInputs.collect`)."""
        return self.inputs.collect(pixel_values, modalities, input_tokens)

    def get_tokenizer(self, modality: str):
        """Frozen tokenizer of a modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI or Coordinates) on this model's
        device: set with `set_tokenizer`, or loaded once from `config.tokenizer_paths` (not part of the weights)."""
        return self.tokenizers.get(modality, self.device)

    def set_tokenizer(self, modality: str, tokenizer: Any) -> None:
        """Use `tokenizer` for `modality` (frozen; kept outside the model's weights; also the TiM generator's)."""
        self.tokenizers.set(modality, tokenizer)

    def use_tokenizers(self, tokenizers: TerraMindModalityTokenizers) -> None:
        """Share another model's tokenizers (the TiM generator shares its encoder's)."""
        self.tokenizers = self.inputs.tokenizers = tokenizers

    def drop_modalities(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training-time modality dropout: each input but one random survivor is dropped with the rate."""
        if not (self.training and self.config.modality_drop_rate) or len(inputs) < 2:
            return inputs
        keys = list(inputs)
        keep = keys[int(torch.randint(len(keys), (1,)))]
        drop = torch.rand(len(keys)) < self.config.modality_drop_rate
        return {k: v for k, v, d in zip(keys, inputs.values(), drop.tolist(), strict=True) if k == keep or not d}

    # ------------------------------------------------------------------ forward: inputs -> embeddings -> encoder
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        input_tokens: dict[str, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TerraMindModelOutput:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        input_tokens: token grids (B, H/16, W/16) of tokenized modalities (LULC, NDVI, ...), used as they are.
        kwargs: further inputs by modality name, e.g. `S2L2A=x, S1GRD=y`; tokenized modalities (LULC, NDVI) as
            images or class maps (tokenized first, by their frozen tokenizer); `Coordinates` as (B, 2) lon/lat.
            And Transformers' `output_hidden_states` / `output_attentions` (computed eagerly for this call).
        """
        modalities, kwargs = split_model_kwargs(kwargs)
        inputs = self.inputs.collect(pixel_values, modalities, input_tokens)
        tim_tokens = {}
        if self.tim_generator is not None:
            tim_tokens = self.tim_generator.think(inputs, self.inputs.patch_grid(inputs, self.inputs.default_grid()))
        inputs = {**self.drop_modalities(inputs), **tim_tokens}
        outputs = self.encode(inputs, return_dict=True, **kwargs)
        slices = outputs.token_slices
        if tim_tokens and self.config.merge_method == "dict":  # as the original: the inputs' tokens, not TiM's
            slices = {k: v for k, v in slices.items() if k not in tim_tokens}
        hidden_states = outputs.hidden_states
        if hidden_states is not None:
            hidden_states = tuple(None if h is None else self.merge(h, slices) for h in hidden_states)
        aliases = self.config.modality_aliases()
        return TerraMindModelOutput(
            last_hidden_state=self.merge(outputs.last_hidden_state, slices), hidden_states=hidden_states,
            attentions=outputs.attentions,
            tim_tokens={aliases.get(k, k.removesuffix("_TOKENS")): v.flatten(1) for k, v in tim_tokens.items()} or None,
        )  # fmt: skip

    @own_output_hooks
    @capture_outputs(tie_last_hidden_states=False)
    def encode(
        self,
        inputs: Mapping[str, torch.Tensor],
        token_positions: Mapping[str, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TerraMindEncoderOutput:
        """Prepared inputs (embedding key -> tensor) -> the encoder's output (last state normed; every token,
        `hidden_states` and `attentions` recorded from the blocks) and where each input's tokens are.
        `attention_mask` (B, N) hides tokens (see `TerraMindEmbeddings.token_mask`). `keep` (B, K): per sample, the
        embedded tokens (registers first) the blocks run on, e.g. a sample's chosen tokens packed to the batch's
        largest count (`masked_positions` of a token mask); `attention_mask` is then (B, K) and the slices do not
        apply."""
        hidden = self.embeddings(inputs, token_positions)
        if self.register_tokens is not None:
            hidden = torch.cat([self.register_tokens.to(hidden.dtype).expand(hidden.shape[0], -1, -1), hidden], 1)
        if keep is not None:
            hidden = gather_tokens(hidden, keep)
        outputs = self.encoder(hidden, attention_mask, **kwargs)
        slices = self.embeddings.token_slices(inputs, token_positions, offset=self.config.num_register_tokens)
        return TerraMindEncoderOutput(last_hidden_state=self.layernorm(outputs.last_hidden_state), token_slices=slices)

    def merge(self, hidden: torch.Tensor, slices: Mapping[str, slice]) -> Any:
        """Merge a (B, N, D) sequence's per-modality tokens as `config.merge_method` says."""
        method = self.config.merge_method
        if method is None:
            return hidden
        parts = {key: hidden[:, where] for key, where in slices.items()}
        if method == "dict":
            aliases = self.config.modality_aliases()
            registers = self.config.num_register_tokens
            out = {"register_tokens": hidden[:, :registers]} if registers else {}
            out.update({aliases.get(k, k): v for k, v in parts.items()})
            return out
        images = [v for k, v in parts.items() if k in self.image_modalities]
        if len(parts) == 1 and len(images) == 1 and method in ("mean", "max") and images[0].shape == hidden.shape:
            return hidden  # one image modality, no registers: its tokens are the sequence (and keep its graph)
        if not images:
            raise ValueError("merge_method needs at least one image modality among the inputs.")
        if method == "mean":
            return torch.stack(images, dim=1).mean(dim=1)
        if method == "max":
            return torch.stack(images, dim=1).max(dim=1).values
        # concat: configured image modalities in order, a learned token where one is missing
        missing = self.missing_modality_token.to(hidden.dtype).expand_as(images[0])
        return torch.cat([parts.get(k, missing) for k in self.image_modalities], dim=-1)

# ----------------------------------------------------------------------------- generator
DECODER_MODALITIES = tuple(k for k, s in MODALITIES.items() if s.kind in ("image_tokens", "sequence"))


class TerraMindForGeneration(TerraMindGenerationMixin, TerraMindPreTrainedModel):
    """TerraMind encoder-decoder: the any-to-any generator (and the frozen generator inside TiM models).

    Holds the encoder (`terramind`, with the embeddings of every pretrained modality, or of `modalities`), the
    decoder blocks, the decoder token embeddings with their logit heads, and the mask token. As in the original,
    a decoder modality's `to_logits` is tied to its `token_emb`, and encoder and decoder of a modality share
    `mod_emb`. `forward` predicts target tokens from the inputs (logits, and the loss given `labels`); `generate`
    (generation_terramind.py) samples them with the original's ROAR sampler, sampling as `generation_config` says.
    """

    _keys_to_ignore_on_load_unexpected = [r"embeddings\."]  # embeddings of modalities left out by `modalities`
    _can_record_outputs = {
        "hidden_states": OutputRecorder(TerraMindDecoderLayer, index=0),
        "attentions": OutputRecorder(TerraMindAttention, index=1, layer_name="self_attention"),
        "cross_attentions": OutputRecorder(TerraMindAttention, index=1, layer_name="cross_attention"),
    }
    generation_config_class = TerraMindGenerationConfig
    # `**modalities` is not `**loss_kwargs`: Trainer must not pass `num_items_in_batch` as an input.
    accepts_loss_kwargs = False

    def __init__(self, config: TerraMindConfig, modalities: Sequence[str] | None = None, **kwargs: Any):
        _check_model_kwargs(type(self), kwargs)
        if modalities is not None:
            config = copy.deepcopy(config)
            config.generator_modalities = [resolve_modality(m) for m in modalities]
        super().__init__(config)
        keys = list(config.generator_modalities or MODALITIES)
        encoder_config = copy.deepcopy(config)
        encoder_config.modalities = keys
        encoder_config.bands = None
        encoder_config.merge_method = None
        encoder_config.tim_modalities = []
        self.terramind = TerraMindModel(encoder_config)
        decoder_keys = [k for k in keys if k in DECODER_MODALITIES]
        self.decoder_embeddings = TerraMindEmbeddings(config, dict.fromkeys(decoder_keys), decoder=True)
        self.decoder_proj_context = nn.Linear(config.hidden_size, config.hidden_size)
        self.decoder = TerraMindDecoder(config)
        self.decoder_layernorm = layer_norm(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # As in the original: logits heads tied to the token embeddings, one `mod_emb` per modality.
        self._tied_weights_keys = {
            **{f"decoder_embeddings.{k}.to_logits.weight": f"decoder_embeddings.{k}.token_emb.weight" for k in decoder_keys},
            **{f"decoder_embeddings.{k}.mod_emb": f"terramind.encoder_embeddings.{k}.mod_emb" for k in decoder_keys},
        }  # fmt: skip
        self.post_init()

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Transformers' saving. The folder holds a whole TerraMind (encoder and decoder), so with remote code it
        also maps `AutoModel` to the encoder, `TerraMindModel`, whose code is in the same file."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                   "AutoModel": "modeling_terramind.TerraMindModel"}
        super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> TerraMindEmbeddings:
        return self.terramind.get_input_embeddings()

    def get_output_embeddings(self) -> None:
        return None  # one logits head per target modality, tied to its token embedding (`_tied_weights_keys`)

    # ------------------------------------------------------------------ the two halves
    def encode_context(
        self,
        inputs: Mapping[str, torch.Tensor],
        token_positions: Mapping[str, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, TerraMindEncoderOutput]:
        """Prepared inputs -> the decoder's context (B, N, D): the normed encoder output, projected, plus the
        inputs' positional and modality embeddings (as the original); and the encoder's output. `attention_mask`
        (B, N) hides tokens from the encoder (`TerraMindEmbeddings.token_mask`); give it to the decoder too. `keep`
        (B, K) packs each sample's tokens (see `TerraMindModel.encode`)."""
        outputs = self.terramind.encode(inputs, token_positions, attention_mask, keep=keep, return_dict=True, **kwargs)
        positions = self.terramind.embeddings.positions(inputs, token_positions).to(outputs.last_hidden_state.dtype)
        if keep is not None:  # registers have no positional embedding: zeros, as they are not added below either
            registers = positions.new_zeros(positions.shape[0], self.config.num_register_tokens, positions.shape[2])
            positions = gather_tokens(torch.cat([registers, positions], dim=1), keep)
        return self.decoder_proj_context(outputs.last_hidden_state) + positions, outputs

    @own_output_hooks
    @capture_outputs(tie_last_hidden_states=False)
    def run_decoder(
        self, queries: torch.Tensor, context: torch.Tensor, self_attention_mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithCrossAttentions:  # fmt: skip
        """The decoder blocks over `queries`; hidden states, self- and cross-attentions recorded from the blocks."""
        return self.decoder(queries, context, self_attention_mask, context_mask, **kwargs)

    def decode(
        self,
        target: str,
        context: torch.Tensor,
        grid: tuple[int, int],
        query_positions: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, BaseModelOutputWithCrossAttentions]:
        """Logits (B, n, V) of an image-token target at flat grid `query_positions` ((n,), or (B, n) per sample; all
        when None): mask-token queries at those positions attend to each other and to the context (its tokens where
        `context_mask`); `query_mask` (B, n) marks padding queries (False) that no query attends to."""
        embedding = self.decoder_embeddings[target]
        queries = embedding.positional(context.shape[0], *grid).to(context.dtype)
        if query_positions is not None:
            queries = gather_tokens(queries, query_positions.clamp(min=0))  # padding (-1): any query, masked
        self_mask = _padding_mask(query_mask, queries.shape[1], context.dtype)
        outputs = self.run_decoder(self.mask_token.to(context.dtype) + queries, context, self_attention_mask=self_mask,
                                   context_mask=context_mask, return_dict=True, **kwargs)  # fmt: skip
        return embedding.to_logits(self.decoder_layernorm(outputs.last_hidden_state)), outputs

    def decode_sequence(
        self,
        target: str,
        context: torch.Tensor,
        tokens: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, BaseModelOutputWithCrossAttentions]:
        """Next-token logits (B, L, V) of a sequence target (Coordinates) given its tokens so far (B, L), which
        start with the sentinel [S_1]: causal self-attention, as the original (context tokens where `context_mask`)."""
        embedding = self.decoder_embeddings[target]
        length = tokens.shape[1]
        hidden = embedding.token_emb(tokens) + embedding.positional(tokens.shape[0], length).to(context.dtype)
        causal = torch.ones(length, length, dtype=torch.bool, device=context.device).tril()
        mask = additive_attention_mask(causal.expand(tokens.shape[0], -1, -1), hidden.dtype)
        outputs = self.run_decoder(hidden, context, self_attention_mask=mask, context_mask=context_mask,
                                   return_dict=True, **kwargs)  # fmt: skip
        return embedding.to_logits(self.decoder_layernorm(outputs.last_hidden_state)), outputs

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        input_tokens: dict[str, torch.Tensor] | None = None,
        target_modalities: Sequence[str] | None = None,
        labels: dict[str, torch.Tensor] | None = None,
        reveal_fraction: float | None = None,
        input_masks: dict[str, torch.Tensor] | None = None,
        target_masks: dict[str, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TerraMindGenerationOutput:
        r"""Predict the tokens of target modalities from the inputs (what one-step generation does).

        pixel_values / input_tokens / kwargs: the inputs, as for `TerraMindModel` (and Transformers' `output_*`).
        target_modalities: modalities to predict (LULC, S2L2A, ...; default: the keys of `labels`). Image targets
            get logits at every grid position from mask-token queries.
        labels: target modality -> token ids: grids (B, h, w) for image modalities, (B, L) for Coordinates
            (teacher-forced; padding id 0 does not count). Gives `loss`: the sum of the targets' cross-entropies.
        reveal_fraction: with `labels`, this fraction of each image target's tokens (random positions) joins the
            encoder input as context and only the others are predicted, as in multi-step ROAR decoding (4M's
            masked pre-training); `predicted_positions` says which. Default: none in evaluation, and in training
            a fraction drawn uniformly in [0, `config.target_reveal_rate`] per batch (0 unless configured).
        input_masks: input modality -> (B, N_m) bool, True for the tokens the encoder sees, per sample (4M's masked
            pre-training, `terramind.training.pretraining`); a sample's other tokens of it are left out, and each
            sample's tokens are packed, so that the encoder runs on the batch's largest token count (as 4M's).
            Inputs without a mask are seen whole.
        target_masks: image target -> (B, h*w) bool, True for the tokens predicted (and scored), per sample; `logits`
            then hold (B, n, V) at `predicted_positions` (B, n), padded to the batch's largest n with position -1
            (a target with no token chosen in the batch has no logits).
        """
        modalities, kwargs = split_model_kwargs(kwargs)
        targets = self._forward_targets(target_modalities, labels)
        inputs = self.terramind.collect_inputs(pixel_values, modalities, input_tokens)
        image_targets = any(MODALITIES[k].is_image for k in targets.values())
        grid = self.terramind.inputs.patch_grid(inputs, self.terramind.inputs.default_grid()) if image_targets else None
        if input_masks or target_masks:
            if reveal_fraction:
                raise ValueError("Give either reveal_fraction or input_masks/target_masks, not both.")
            revealed, context_mask = self._select_input_tokens(inputs, input_masks or {})
            keep, context_mask = masked_positions(context_mask) if context_mask is not None else (None, None)
            predicted, query_masks = self._select_target_tokens(targets, target_masks or {}, grid)
        else:
            predicted, revealed = self._reveal_targets(inputs, targets, labels, grid, reveal_fraction)
            keep, context_mask, query_masks = None, None, {}
        context, encoder_outputs = self.encode_context(inputs, revealed, attention_mask=context_mask, keep=keep,
                                                       **kwargs)  # fmt: skip
        logits, decoder_states, decoder_attentions, cross_attentions, losses = {}, {}, {}, {}, []
        for name, key in targets.items():
            target_labels = None if labels is None else _find_label(labels, name)
            if name in query_masks and not query_masks[name].shape[1]:  # target_masks choose none of its tokens
                continue
            if MODALITIES[key].kind == "sequence":
                if target_labels is None:
                    raise ValueError(f"{name} logits are teacher-forced: give its token ids in labels={{'{name}': ...}}.")
                target_logits, outputs = self.decode_sequence(key, context, self._sequence_decoder_input(target_labels),
                                                              context_mask=context_mask, **kwargs)  # fmt: skip
            else:
                target_logits, outputs = self.decode(key, context, grid, predicted.get(name), context_mask=context_mask,
                                                     query_mask=query_masks.get(name), **kwargs)  # fmt: skip
            logits[name] = target_logits
            if target_labels is not None:
                losses.append(self._token_loss(key, name, target_logits, target_labels, grid, predicted.get(name)))
            if outputs.hidden_states is not None:
                decoder_states[name] = outputs.hidden_states
            if outputs.attentions is not None:
                decoder_attentions[name], cross_attentions[name] = outputs.attentions, outputs.cross_attentions
        loss = torch.stack(losses).sum() if losses else None
        if loss is None and labels is not None:  # no target token chosen in this batch: nothing to learn
            loss = context.sum() * 0.0
        return TerraMindGenerationOutput(
            loss=loss, logits=logits, encoder_last_hidden_state=context,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
            decoder_hidden_states=decoder_states or None, decoder_attentions=decoder_attentions or None,
            cross_attentions=cross_attentions or None, predicted_positions=predicted or None,
        )  # fmt: skip

    def _reveal_targets(
        self, inputs: dict[str, torch.Tensor], targets: Mapping[str, str], labels: Mapping[str, torch.Tensor] | None,
        grid: tuple[int, int] | None, reveal_fraction: float | None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:  # fmt: skip
        """Reveal part of each image target's label tokens as encoder context (added to `inputs`): returns the
        predicted positions per target name and the revealed positions per embedding key."""
        rate = reveal_fraction if reveal_fraction is not None else (self.config.target_reveal_rate if self.training
                                                                    else 0.0)  # fmt: skip
        if labels is None or not rate:
            return {}, {}
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"reveal_fraction must be in [0, 1), got {rate}.")
        predicted, revealed = {}, {}
        for name, key in targets.items():
            target_labels = _find_label(labels, name)
            if not MODALITIES[key].is_image or target_labels is None:
                continue
            total = grid[0] * grid[1]
            fraction = rate if reveal_fraction is not None else float(torch.rand(())) * rate
            count = int(fraction * total)
            if count == 0:
                continue
            order = torch.randperm(total).to(target_labels.device)
            revealed[key], predicted[name] = order[:count], order[count:].sort().values
            inputs[key] = target_labels.to(self.device).long().clamp(min=0)  # ignored (-100) tokens: any id
        return predicted, revealed

    def _select_input_tokens(
        self, inputs: dict[str, torch.Tensor], input_masks: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Per-sample input tokens from `input_masks`: positions (B, n) per masked input, padded, and the encoder's
        (B, N) attention mask hiding the padding. An input no sample sees is left out."""
        positions, valid = {}, {}
        for name, mask in input_masks.items():
            key = name if name in inputs else self.terramind.config.modality_key(name)
            if key not in inputs:
                raise ValueError(f"input_masks given for {name!r}, which is not among the inputs {list(inputs)}.")
            count = self.terramind.embeddings[key].num_tokens(inputs[key])
            if mask.ndim != 2 or mask.shape != (inputs[key].shape[0], count):
                raise ValueError(f"input_masks[{name!r}] must be a (B, N) = {(inputs[key].shape[0], count)} boolean "
                                 f"mask, got shape {tuple(mask.shape)}.")  # fmt: skip
            mask = mask.to(inputs[key].device).bool()
            if not mask.any():
                del inputs[key]
                continue
            positions[key], valid[key] = masked_positions(mask)[0], mask
        if not inputs:
            raise ValueError("input_masks hide every input token; give each sample at least one.")
        return positions, self.terramind.embeddings.token_mask(inputs, valid, positions, self.config.num_register_tokens)

    def _select_target_tokens(
        self, targets: Mapping[str, str], target_masks: Mapping[str, torch.Tensor], grid: tuple[int, int] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-sample query positions (B, n) of each masked image target (padding: -1) and their valid masks."""
        positions, valid = {}, {}
        for name, mask in target_masks.items():
            target = next((t for t, key in targets.items() if t == name or key == token_modality(name)), None)
            if target is None or not MODALITIES[targets[target]].is_image:
                raise ValueError(f"target_masks given for {name!r}, which is not an image target of this call.")
            if mask.ndim != 2 or mask.shape[1] != grid[0] * grid[1]:
                raise ValueError(f"target_masks[{name!r}] must be a (B, {grid[0] * grid[1]}) boolean mask, got "
                                 f"shape {tuple(mask.shape)}.")  # fmt: skip
            chosen, real = masked_positions(mask.to(self.mask_token.device))
            positions[target], valid[target] = chosen.masked_fill(~real, -1), real
        return positions, valid

    def _forward_targets(self, target_modalities: Sequence[str] | None, labels: Mapping[str, Any] | None) -> dict:
        """User target name -> decoder embedding key, checked against this generator's decoder modalities."""
        if isinstance(target_modalities, str):
            target_modalities = [target_modalities]
        names = list(target_modalities) if target_modalities is not None else list(labels or {})
        if not names:
            raise ValueError("Name the modalities to predict: target_modalities=[...] or labels={modality: tokens}.")
        targets = {}
        for name in names:
            key = token_modality(name)
            if key not in self.decoder_embeddings:
                raise ValueError(f"{name!r} is not a target of this generator; it predicts "
                                 f"{', '.join(k.removesuffix('_TOKENS') for k in self.decoder_embeddings)}.")  # fmt: skip
            targets[name] = key
        for name in labels or {}:
            if name not in targets and token_modality(name) not in targets.values():
                raise ValueError(f"labels given for {name!r}, which is not among target_modalities {names}.")
        return targets

    def _sequence_decoder_input(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: [S_1] followed by all but the last label token."""
        start, _ = sentinel_ids(self.terramind.get_tokenizer("Coordinates"))
        first = torch.full_like(labels[:, :1], start)
        return torch.cat([first, labels[:, :-1]], dim=1)

    def _token_loss(self, key: str, name: str, logits: torch.Tensor, labels: torch.Tensor,
                    grid: tuple[int, int] | None, positions: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Cross-entropy of one target's token ids (image grids: -100 ignored, only the predicted `positions`;
        sequences: padding 0 ignored). A batch with no token to learn from gives 0, not NaN."""
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise ValueError(f"labels[{name!r}] must be an integer tensor of token ids.")
        labels = labels.to(logits.device)
        if MODALITIES[key].kind == "sequence":
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().long(), ignore_index=0)
        if tuple(labels.shape) != (logits.shape[0], *grid):
            raise ValueError(f"labels[{name!r}] must be a (B, h, w) = {(logits.shape[0], *grid)} token grid matching "
                             f"the inputs, got shape {tuple(labels.shape)}.")  # fmt: skip
        labels = labels.flatten(1).long()
        if positions is not None and positions.ndim == 2:  # per-sample positions, -1 padding
            labels = labels.gather(1, positions.clamp(min=0)).masked_fill(positions < 0, -100)
        elif positions is not None:
            labels = labels[:, positions]
        if not (labels != -100).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _find_label(labels: Mapping[str, torch.Tensor], name: str) -> torch.Tensor | None:
    for key, value in labels.items():
        if key == name or token_modality(key) == token_modality(name):
            return value
    return None


__all__ = [
    "TerraMindDecoder",
    "TerraMindEmbeddings",
    "TerraMindEncoder",
    "TerraMindForGeneration",
    "TerraMindGenerationOutput",
    "TerraMindModel",
    "TerraMindModelOutput",
    "TerraMindPreTrainedModel",
]
