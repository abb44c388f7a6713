"""Layers shared by every TerraMind model: the encoder, the generator's decoder and the tokenizers.

A leaf module (it imports no other module of this package): fixed sin-cos positional embeddings, attention through
the Transformers attention interface, MLPs, pre-norm encoder and decoder blocks, and the original's (MAE) weight
init. Numerically equal to the blocks of `terratorch.models.backbones.terramind` (terratorch 1.2.13).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


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


# ----------------------------------------------------------------------------- attention and blocks
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
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the attended states and the attention probabilities (B, H, Nq, Nk), or None where the
        implementation does not materialise them.

        SDPA never materialises the probabilities, so a call that asks for them (`output_attentions`, given or the
        config's) runs the eager path (the same numbers up to rounding); other calls use the configured one.
        """
        batch, length, dim = hidden_states.shape
        heads = (batch, -1, self.num_heads, self.head_dim)
        if self.is_cross_attention:
            query = self.q(hidden_states).view(heads).transpose(1, 2)
            key, value = self.kv(context).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)
        output_attentions = kwargs.get("output_attentions")
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        implementation = "eager" if output_attentions else (getattr(self.config, "_attn_implementation", None) or "sdpa")
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=getattr(self.config, "attention_dropout", 0.0) if self.training else 0.0,
            is_causal=False,
        )
        return self.proj_dropout(self.proj(output.reshape(batch, length, dim))), weights


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

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the block output and its attention probabilities (None where not materialised); the models
        record both with `@capture_outputs` hooks."""
        attended, weights = self.attention(self.norm1(hidden_states), None, attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(attended)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states))), weights


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
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the block output and its self- and cross-attention probabilities (None where not materialised)."""
        attended, self_weights = self.self_attention(self.norm1(hidden_states), None, self_attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(attended)
        attended, cross_weights = self.cross_attention(self.query_norm(hidden_states), self.context_norm(context),
                                                       cross_attention_mask, **kwargs)  # fmt: skip
        hidden_states = hidden_states + self.drop_path(attended)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states))), self_weights, cross_weights


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
