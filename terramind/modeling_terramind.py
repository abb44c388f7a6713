"""TerraMind encoder (TerraMindModel) and the building blocks shared by the whole package.

Numerically equal to `terratorch.models.backbones.terramind` (terratorch 1.2.13): pre-norm ViT blocks with
bias-free LayerNorms, fused `qkv`, GELU or SwiGLU MLPs, one linear patch embedding per modality on
(ph, pw, channel)-flattened patches, fixed 2-D sin-cos positional embeddings (interpolated bicubically for
other sizes) plus a learned modality embedding.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_terramind import TerraMindConfig
from .conversion import resolve_original_release
from .generation_terramind import TerraMindGenerationMixin
from .modalities import MODALITIES, NODATA_MASK_SUFFIX, resolve_modality, token_modality

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------- positional embeddings
def sincos_pos_embed_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos embeddings (1, height*width, dim), in the original's (MoCo-v3) layout.

    The original builds the grid with `meshgrid(arange(w), arange(h), indexing="ij")`, i.e. the first
    quarter of channels encodes the *slow* axis of the flattened sequence; kept as is for parity.
    """
    grid_w, grid_h = torch.meshgrid(torch.arange(width), torch.arange(height), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = grid_w.reshape(-1, 1).float() * omega
    out_h = grid_h.reshape(-1, 1).float() * omega
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1).unsqueeze(0)


def sincos_pos_embed_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 1-D sin-cos embeddings (1, length, dim)."""
    half = dim // 2
    omega = 1.0 / temperature ** (torch.arange(half, dtype=torch.float32) / half)
    out = torch.arange(length, dtype=torch.float32).reshape(-1, 1) * omega
    return torch.cat([out.sin(), out.cos()], dim=1).unsqueeze(0)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize (1, N, D) square-grid embeddings to a (grid_h, grid_w) grid, bicubic, as the original."""
    side = int(math.sqrt(pos_embed.shape[1]))
    if (side, side) == (grid_h, grid_w):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim).to(pos_embed.dtype)


# ----------------------------------------------------------------------------- shared blocks
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


def additive_attention_mask(allowed: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Nq, Nk) boolean "may attend" mask -> (B, 1, Nq, Nk) additive float mask for the attention functions."""
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


class TerraMindAttention(nn.Module):
    """Multi-head attention through the Transformers attention interface (SDPA by default, eager available).

    Self-attention uses one fused `qkv` projection; cross-attention (`is_cross_attention=True`) projects the
    queries with `q` and the context with a fused `kv`, matching the original's parameter names.
    """

    def __init__(self, config: Any, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.is_cross_attention = is_cross_attention
        dim = config.hidden_size
        if is_cross_attention:
            self.q = nn.Linear(dim, dim, bias=config.qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=config.qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=config.proj_bias)
        self.proj_dropout = nn.Dropout(getattr(config, "hidden_dropout", 0.0))

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length, dim = hidden_states.shape
        heads = (batch, -1, self.num_heads, self.head_dim)
        if self.is_cross_attention:
            query = self.q(hidden_states).view(heads).transpose(1, 2)
            key, value = self.kv(context).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)
        implementation = getattr(self.config, "_attn_implementation", None) or "sdpa"
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=getattr(self.config, "attention_dropout", 0.0) if self.training else 0.0,
            is_causal=False,
        )
        return self.proj_dropout(self.proj(output.reshape(batch, length, dim)))


class TerraMindMLP(nn.Module):
    """Feed-forward block: fc2(act(fc1(x))), or SwiGLU fc2(act(fc1(x)) * fc3(x)) when `gated_mlp`."""

    def __init__(self, config: Any):
        super().__init__()
        dim, hidden, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.fc3 = nn.Linear(dim, hidden, bias=bias) if config.gated_mlp else None
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout", 0.0))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.act(self.fc1(hidden_states))
        if self.fc3 is not None:
            gate = gate * self.fc3(hidden_states)
        return self.dropout(self.fc2(gate))


class TerraMindDropPath(nn.Module):
    """Stochastic depth per sample (active in training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep)
        return hidden_states * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def layer_norm(config: Any) -> nn.LayerNorm:
    """TerraMind's LayerNorm: no bias (the released files carry zero bias buffers), eps from the config."""
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=getattr(config, "layer_norm_bias", False))


class TerraMindLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: Any, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = layer_norm(config)
        self.attention = TerraMindAttention(config)
        self.norm2 = layer_norm(config)
        self.mlp = TerraMindMLP(config)
        self.drop_path = TerraMindDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.attention(self.norm1(hidden_states), None, attention_mask))
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class TerraMindDecoderLayer(GradientCheckpointingLayer):
    """Decoder block: self-attention, cross-attention to the (normed) encoder context, MLP."""

    def __init__(self, config: Any, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = layer_norm(config)
        self.self_attention = TerraMindAttention(config)
        self.query_norm = layer_norm(config)
        self.context_norm = layer_norm(config)
        self.cross_attention = TerraMindAttention(config, is_cross_attention=True)
        self.norm2 = layer_norm(config)
        self.mlp = TerraMindMLP(config)
        self.drop_path = TerraMindDropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        self_attention_mask: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.self_attention(self.norm1(hidden_states), None, self_attention_mask)
        hidden_states = hidden_states + self.drop_path(attended)
        attended = self.cross_attention(self.query_norm(hidden_states), self.context_norm(context), cross_attention_mask)
        hidden_states = hidden_states + self.drop_path(attended)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


# ----------------------------------------------------------------------------- modality embeddings
class TerraMindPatchEmbedding(nn.Module):
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
        pos = interpolate_pos_embed(self.pos_emb, h // self.patch_size, w // self.patch_size)
        return tokens, (pos + self.mod_emb).to(tokens.dtype).expand(b, -1, -1)


class TerraMindImageTokenEmbedding(nn.Module):
    """Tokenized image modality (a grid of tokenizer codes) -> tokens. With `to_logits` for the decoder."""

    def __init__(self, config: TerraMindConfig, vocab_size: int, with_logits: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, config.hidden_size)
        self.to_logits = nn.Linear(config.hidden_size, vocab_size, bias=False) if with_logits else None
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        grid = config.image_size // config.patch_size
        self.register_buffer("pos_emb", sincos_pos_embed_2d(grid, grid, config.hidden_size), persistent=False)

    def positional(self, batch: int, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = interpolate_pos_embed(self.pos_emb, grid_h, grid_w)
        return (pos + self.mod_emb).expand(batch, -1, -1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, h, w) grid (or (B, h*w) for a square grid)."""
        if tokens.ndim == 2:
            side = int(math.isqrt(tokens.shape[1]))
            tokens = tokens.reshape(tokens.shape[0], side, side)
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

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.token_emb(tokens)
        return embedded, self.positional(tokens.shape[0], tokens.shape[1]).to(embedded.dtype)


def build_modality_embedding(config: TerraMindConfig, key: str, channels: int | None, decoder: bool = False):
    """The embedding module of one modality key (pretrained canonical name or a new modality)."""
    spec = MODALITIES.get(key)
    if spec is None:  # new modality {"NAME": channels}
        return TerraMindPatchEmbedding(config, channels)
    if spec.kind == "image":
        return TerraMindPatchEmbedding(config, channels, spec.bands, config.band_names(key))
    if spec.kind == "image_tokens":
        return TerraMindImageTokenEmbedding(config, spec.vocab_size, with_logits=decoder)
    return TerraMindSequenceEmbedding(config, spec.vocab_size, spec.max_length, with_logits=decoder)


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
        tim_tokens: Thinking-in-Modalities: modality -> (B, N) token ids the model generated for itself.
    """

    last_hidden_state: Any = None
    hidden_states: tuple[Any, ...] | None = None
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


# ----------------------------------------------------------------------------- models
@torch.no_grad()
def init_transformer_weights(module: nn.Module, std: float) -> bool:
    """The original's (MAE) init of the transformer parts: fused q/k/v projections uniform per part, other linears
    xavier with zero bias, norms to identity, token embeddings N(0, std). Returns whether `module` was one of them
    (shared by the TerraMind models and tokenizers)."""
    if isinstance(module, TerraMindAttention):
        for name, parts in (("qkv", 3), ("kv", 2), ("q", 1)):
            linear = getattr(module, name, None)
            if linear is not None:
                bound = math.sqrt(6.0 / float(linear.weight.shape[0] // parts + linear.weight.shape[1]))
                init.uniform_(linear.weight, -bound, bound)
                if linear.bias is not None:
                    init.zeros_(linear.bias)
    elif isinstance(module, nn.Linear):
        init.xavier_uniform_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, std=std)
    else:
        return False
    return True


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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Standard loading, plus original releases: a folder or Hub repo holding `TerraMind_v1_*.pt` and no
        config.json (e.g. `ibm-esa-geospatial/TerraMind-1.0-base`) is converted once into the cache first."""
        if pretrained_model_name_or_path is not None:
            hub = {k: kwargs.get(k) for k in ("token", "revision")}
            converted = resolve_original_release(pretrained_model_name_or_path, **hub)
            if converted is not None:
                pretrained_model_name_or_path = converted
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)  # fmt: skip
        model._fill_tim_generators(info, **kwargs)
        model._after_loading()
        return (model, info) if want_info else model

    def _fill_tim_generators(self, info: dict, **kwargs: Any) -> None:
        """Load frozen TiM generators from the same folder when it does not hold them itself (a converted release
        holds the generator's weights under their plain names), and keep them frozen (loading hands out fresh
        Parameters)."""
        source = self.config._name_or_path
        for module in self.modules():
            if not isinstance(module, TerraMindModel) or module.tim_generator is None:
                continue
            if not checkpoint_has_key(source, "tim_generator.", **kwargs):
                weights = TerraMindForGeneration.from_pretrained(
                    source, modalities=list(module.tim_generator.terramind.modality_channels),
                    config=tim_generator_config(module.config), dtype=module.dtype,
                )  # fmt: skip
                module.tim_generator.load_state_dict(weights.state_dict())
                info["missing_keys"] = {k for k in info["missing_keys"] if "tim_generator." not in k}
            module.tim_generator.requires_grad_(False).eval()

    def _after_loading(self) -> None:
        """Hook for subclasses to restore state that loading resets (e.g. frozen parts)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE-style init as the original (see `init_transformer_weights`), plus modality and register tokens."""
        std = self.config.initializer_range
        init_transformer_weights(module, std)
        if isinstance(module, (TerraMindPatchEmbedding, TerraMindImageTokenEmbedding)):
            init.normal_(module.mod_emb, std=std)
            grid = self.config.image_size // self.config.patch_size
            init.copy_(module.pos_emb, sincos_pos_embed_2d(grid, grid, self.config.hidden_size))
        elif isinstance(module, TerraMindSequenceEmbedding):
            init.normal_(module.mod_emb, std=std)
            init.copy_(module.pos_emb, sincos_pos_embed_1d(512, self.config.hidden_size))
        if isinstance(module, TerraMindModel):
            if module.missing_modality_token is not None:
                init.normal_(module.missing_modality_token, std=std)
            if module.register_tokens is not None:
                init.normal_(module.register_tokens, std=std)


class TerraMindEncoder(nn.Module):
    def __init__(self, config: TerraMindConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layer = nn.ModuleList([TerraMindLayer(config, rate) for rate in rates])

    def forward(self, hidden_states: torch.Tensor, output_hidden_states: bool = False):
        all_states = [hidden_states] if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_states.append(hidden_states)
        return hidden_states, all_states


class TerraMindModel(TerraMindPreTrainedModel):
    """TerraMind encoder over any subset of its configured modalities.

    Inputs: a dict modality -> tensor, keyword arguments (`model(S2L2A=x, S1GRD=y)`, as Trainer passes them)
    or one tensor (the first configured modality). Raw image modalities take standardized pixels
    (B, C, H, W) with H, W multiples of the patch size. Keys `<MODALITY>_nodata_mask` (from the processor) are
    accepted and checked against their modality; the encoder does not mask tokens, so fill nodata first.
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder", r"mask_token", r"encoder_embeddings\."]
    _keys_to_ignore_on_load_missing = [r"^tim_generator\."]  # filled from the same folder by from_pretrained

    def __init__(self, config: TerraMindConfig):
        super().__init__(config)
        self.modality_channels = config.modality_specs()
        self.tim_targets = [token_modality(m) for m in config.tim_modalities]
        if self.tim_targets:
            # Thinking-in-Modalities: a frozen generator from the same weights produces the TiM tokens. As in the
            # original, the encoder's modality embeddings are the generator's own modules, so they stay frozen;
            # the encoder blocks below are a trainable copy.
            keys = list(dict.fromkeys([*self.modality_channels, *self.tim_targets]))
            self.tim_generator = TerraMindForGeneration(tim_generator_config(config), modalities=keys)
            self.tim_generator.requires_grad_(False).eval()
            self.encoder_embeddings = None
        else:
            self.tim_generator = None
            self.encoder_embeddings = nn.ModuleDict(
                {key: build_modality_embedding(config, key, ch) for key, ch in self.modality_channels.items()}
            )
        self.image_modalities = [k for k in self.modality_channels if self._is_image(k)]
        self.image_modalities += [k for k in self.tim_targets if k not in self.image_modalities]
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

    @staticmethod
    def _is_image(key: str) -> bool:
        return key not in MODALITIES or MODALITIES[key].is_image

    @property
    def modality_embeddings(self) -> nn.ModuleDict:
        """Embedding module per modality key (the frozen generator's own modules in TiM models)."""
        if self.tim_generator is not None:
            return self.tim_generator.terramind.encoder_embeddings
        return self.encoder_embeddings

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tim_generator is not None:
            self.tim_generator.eval()  # the TiM generator is frozen, also in training
        return self

    # ------------------------------------------------------------------ inputs
    def collect_inputs(
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
        for is_tokens, source in ((False, given), (True, input_tokens or {})):
            for name, value in source.items():
                key = self._input_key(name, tokens=is_tokens)
                if key in by_key:
                    raise ValueError(f"Modality {name!r} and another input both map to {key}; give it once.")
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"Input {name} must be a torch.Tensor, got {type(value).__name__}.")
                by_key[key] = (name, value, is_tokens)
        for name in masks:
            modality = name[: -len(NODATA_MASK_SUFFIX)]
            if self._input_key(modality) not in by_key:
                raise ValueError(f"{name} given without its modality {modality}.")
        ordered = {k: self._prepare_input(k, *by_key[k]) for k in self.modality_channels if k in by_key}
        self._check_shared_shapes(ordered)
        return ordered

    def _configured_names(self) -> str:
        return ", ".join(self.config.modality_aliases().values())

    def _input_key(self, name: str, tokens: bool = False) -> str:
        try:
            key = self.config.modality_key(name)
        except ValueError:
            key = None
        if tokens and key in MODALITIES and f"{key}_TOKENS" in self.modality_channels:
            key = f"{key}_TOKENS"  # input_tokens={"S2L2A": grid} means the tokenized S2L2A modality
        if key not in self.modality_channels:
            raise ValueError(f"Unknown input modality {name!r}: this model is configured for "
                             f"{self._configured_names()}. Configure it in `modalities` to use it.")  # fmt: skip
        if tokens and (key not in MODALITIES or MODALITIES[key].kind != "image_tokens"):
            raise ValueError(f"input_tokens takes token grids of tokenized modalities (LULC, NDVI, S2L2A_TOKENS, "
                             f"...), not {name!r}.")  # fmt: skip
        return key

    def _prepare_input(self, key: str, name: str, value: torch.Tensor, is_tokens: bool) -> torch.Tensor:
        spec = MODALITIES.get(key)
        if spec is None or spec.kind == "image":
            return self._check_image(key, name, value)
        if spec.kind == "sequence":
            tokenizer = self.get_tokenizer("Coordinates")
            return tokenizer.encode_coordinates(value).to(value.device)
        if not is_tokens:  # an image of a tokenized modality: tokenize it (frozen tokenizer)
            tokenizer = self.get_tokenizer(spec.tokenizer_modality)
            with torch.no_grad():
                value = tokenizer.encode(value.to(tokenizer.device)).tokens.to(value.device)
        if value.ndim != 3 or value.is_floating_point():
            raise ValueError(f"Token grid {name} must be an integer tensor (B, h, w), got {value.dtype} "
                             f"{tuple(value.shape)}.")  # fmt: skip
        if value.numel() and (value.min() < 0 or value.max() >= spec.vocab_size):
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
        if not torch.isfinite(value).all():
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
            if self.modality_channels.get(key) is not None or key not in MODALITIES:
                this_grid = (value.shape[-2] // patch, value.shape[-1] // patch)
            elif MODALITIES[key].kind == "image_tokens":
                this_grid = tuple(value.shape[-2:])
            else:
                continue
            if grid is not None and this_grid != grid:
                raise ValueError(f"Input {name} has a {this_grid} patch grid, other inputs {grid}; image "
                                 f"modalities must share one spatial size.")  # fmt: skip
            grid = this_grid

    def patch_grid(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(h, w) token grid of prepared inputs."""
        for key, value in inputs.items():
            if self.modality_channels.get(key) is not None or key not in MODALITIES:
                return value.shape[-2] // self.config.patch_size, value.shape[-1] // self.config.patch_size
            if MODALITIES[key].kind == "image_tokens":
                return tuple(value.shape[-2:])
        raise ValueError("At least one image modality is needed to know the spatial size.")

    # ------------------------------------------------------------------ tokenizers
    def get_tokenizer(self, modality: str):
        """Tokenizer of a modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI or Coordinates): set with
        `set_tokenizer`, or loaded once, frozen, from `config.tokenizer_paths` (defaults: the official repos).
        Tokenizers are not part of this model's weights."""
        name = resolve_modality(modality).removesuffix("_TOKENS")
        cache = self.__dict__.setdefault("_tokenizers", {})
        if name not in cache:
            from .configuration_terramind import DEFAULT_TOKENIZER_REPOS

            path = (self.config.tokenizer_paths or {}).get(name) or DEFAULT_TOKENIZER_REPOS.get(name)
            try:
                if name == "Coordinates":
                    from .tokenization_terramind_coords import TerraMindCoordsTokenizer

                    tokenizer = TerraMindCoordsTokenizer.from_pretrained(path)
                else:
                    from .modeling_terramind_tokenizer import TerraMindTokenizerModel

                    tokenizer = TerraMindTokenizerModel.from_pretrained(path).eval().requires_grad_(False)
            except (OSError, ValueError) as error:
                raise ValueError(f"The {name} tokenizer could not be loaded from {path!r} ({error}). Pass it with "
                                 f"`set_tokenizer('{name}', tokenizer)` (generate: tokenizers={{'{name}': ...}}) or "
                                 f"set config.tokenizer_paths['{name}'] to a converted or original tokenizer "
                                 "folder.") from None  # fmt: skip
            cache[name] = tokenizer
        tokenizer = cache[name]
        if isinstance(tokenizer, nn.Module) and tokenizer.device != self.device:
            cache[name] = tokenizer = tokenizer.to(self.device)
        return tokenizer

    def set_tokenizer(self, modality: str, tokenizer: Any) -> None:
        """Use `tokenizer` for `modality` (frozen; kept outside the model's weights)."""
        name = resolve_modality(modality).removesuffix("_TOKENS")
        if isinstance(tokenizer, nn.Module):
            tokenizer = tokenizer.eval().requires_grad_(False)
        self.__dict__.setdefault("_tokenizers", {})[name] = tokenizer

    def embed(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, int]]:
        """Token embeddings (+ positions, + modality) of every input, concatenated: (B, N, D) and counts."""
        pieces, counts = [], {}
        dtype = self.layernorm.weight.dtype
        for key, value in inputs.items():
            if value.is_floating_point():
                value = value.to(dtype)
            tokens, position = self.modality_embeddings[key](value)
            pieces.append(tokens + position)
            counts[key] = tokens.shape[1]
        return torch.cat(pieces, dim=1), counts

    def drop_modalities(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training-time modality dropout: each input but one random survivor is dropped with the rate."""
        if not (self.training and self.config.modality_drop_rate) or len(inputs) < 2:
            return inputs
        keys = list(inputs)
        keep = keys[int(torch.randint(len(keys), (1,)))]
        drop = torch.rand(len(keys)) < self.config.modality_drop_rate
        return {k: v for k, v, d in zip(keys, inputs.values(), drop.tolist(), strict=True) if k == keep or not d}

    # ------------------------------------------------------------------ merging
    def merge(self, hidden: torch.Tensor, counts: dict[str, int]) -> Any:
        """Split a (B, N, D) sequence per modality and merge it as `config.merge_method` says."""
        method = self.config.merge_method
        if method is None:
            return hidden
        registers = self.config.num_register_tokens
        parts = dict(zip(counts, torch.split(hidden[:, registers:], list(counts.values()), dim=1), strict=True))
        if method == "dict":
            aliases = self.config.modality_aliases()
            out = {"register_tokens": hidden[:, :registers]} if registers else {}
            out.update({aliases.get(k, k): v for k, v in parts.items()})
            return out
        images = [v for k, v in parts.items() if k in self.image_modalities]
        if not images:
            raise ValueError("merge_method needs at least one image modality among the inputs.")
        if method == "mean":
            return torch.stack(images, dim=1).mean(dim=1)
        if method == "max":
            return torch.stack(images, dim=1).max(dim=1).values
        # concat: configured image modalities in order, a learned token where one is missing
        missing = self.missing_modality_token.to(hidden.dtype).expand_as(images[0])
        return torch.cat([parts.get(k, missing) for k in self.image_modalities], dim=-1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        input_tokens: dict[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **modalities: torch.Tensor,
    ) -> TerraMindModelOutput | tuple:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        input_tokens: token grids (B, H/16, W/16) of tokenized modalities (LULC, NDVI, ...), used as they are.
        modalities: further inputs by modality name, e.g. `S2L2A=x, S1GRD=y`; tokenized modalities (LULC, NDVI)
            as images or class maps (tokenized first, by their frozen tokenizer); `Coordinates` as (B, 2) lon/lat.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = self.collect_inputs(pixel_values, modalities, input_tokens)
        tim_tokens = self.think(inputs) if self.tim_generator is not None else None
        inputs = self.drop_modalities(inputs)
        if tim_tokens:
            inputs.update(tim_tokens)
        hidden, counts = self.embed(inputs)
        if self.register_tokens is not None:
            hidden = torch.cat([self.register_tokens.to(hidden.dtype).expand(hidden.shape[0], -1, -1), hidden], 1)
        hidden, states = self.encoder(hidden, output_hidden_states=output_hidden_states)
        last = self.merge(self.layernorm(hidden), counts)
        all_states = tuple(self.merge(s, counts) for s in states) if output_hidden_states else None
        if tim_tokens:
            aliases = self.config.modality_aliases()
            tim_tokens = {aliases.get(k, k.removesuffix("_TOKENS")): v.flatten(1) for k, v in tim_tokens.items()}
        if not return_dict:
            return tuple(v for v in (last, all_states, tim_tokens) if v is not None)
        return TerraMindModelOutput(last_hidden_state=last, hidden_states=all_states, tim_tokens=tim_tokens)

    def think(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Thinking-in-Modalities: generate the TiM modalities the input lacks, as token grids (B, h, w)."""
        targets = [k for k in self.tim_targets if k not in inputs]
        if not targets:
            return {}
        grid = self.patch_grid(inputs)
        config = self.config
        return self.tim_generator.generate_tokens(
            inputs, targets, grid, decoding_steps=config.tim_decoding_steps, temperature=config.tim_temperature,
            top_k=config.tim_top_k, top_p=config.tim_top_p,
        )  # fmt: skip


DECODER_MODALITIES = tuple(k for k, s in MODALITIES.items() if s.kind in ("image_tokens", "sequence"))


class TerraMindForGeneration(TerraMindGenerationMixin, TerraMindPreTrainedModel):
    """TerraMind encoder-decoder: the any-to-any generator (and the frozen generator inside TiM models).

    Holds the encoder (`terramind`, with the embeddings of every pretrained modality, or of `modalities`), the
    decoder blocks, the decoder token embeddings with their logit heads, and the mask token. As in the original,
    a decoder modality's `to_logits` is tied to its `token_emb`, and encoder and decoder of a modality share
    `mod_emb`. `generate` (generation_terramind.py) runs the original's ROAR sampler.
    """

    _keys_to_ignore_on_load_unexpected = [r"embeddings\."]  # embeddings of modalities left out by `modalities`

    def __init__(self, config: TerraMindConfig, modalities: Sequence[str] | None = None):
        super().__init__(config)
        keys = list(modalities) if modalities is not None else list(MODALITIES)
        encoder_config = copy.deepcopy(config)
        encoder_config.modalities = keys
        encoder_config.bands = None
        encoder_config.merge_method = None
        encoder_config.tim_modalities = []
        self.terramind = TerraMindModel(encoder_config)
        decoder_keys = [k for k in keys if k in DECODER_MODALITIES]
        self.decoder_embeddings = nn.ModuleDict(
            {key: build_modality_embedding(config, key, None, decoder=True) for key in decoder_keys}
        )
        self.decoder_proj_context = nn.Linear(config.hidden_size, config.hidden_size)
        rates = torch.linspace(0, config.drop_path_rate, config.num_decoder_layers, device="cpu").tolist()
        self.decoder = nn.Module()
        self.decoder.layer = nn.ModuleList([TerraMindDecoderLayer(config, rate) for rate in rates])
        self.decoder_layernorm = layer_norm(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # As in the original: logits heads tied to the token embeddings, one `mod_emb` per modality.
        self._tied_weights_keys = {
            **{f"decoder_embeddings.{k}.to_logits.weight": f"decoder_embeddings.{k}.token_emb.weight" for k in decoder_keys},
            **{f"decoder_embeddings.{k}.mod_emb": f"terramind.encoder_embeddings.{k}.mod_emb" for k in decoder_keys},
        }  # fmt: skip
        self.post_init()

    def forward(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("TerraMindForGeneration generates with `generate(...)`; for embeddings use "
                                  "TerraMindModel (or `model.terramind`).")  # fmt: skip


def checkpoint_has_key(name_or_path: str, part: str, **kwargs: Any) -> bool:
    """Whether the safetensors weights of a saved model hold a key containing `part`."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("token", "revision", "cache_dir", "local_files_only") if k in kwargs}
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


def tim_generator_config(config: TerraMindConfig) -> TerraMindConfig:
    """Config of the frozen TiM generator: the same architecture, no dropout, no TiM of its own."""
    generator = copy.deepcopy(config)
    generator.tim_modalities = []
    generator.drop_path_rate = generator.attention_dropout = generator.hidden_dropout = 0.0
    generator.modality_drop_rate = 0.0
    return generator


__all__ = ["TerraMindPreTrainedModel", "TerraMindModel", "TerraMindModelOutput", "TerraMindForGeneration"]
