"""TerraMind v1 modality tokenizers: images <-> grids of discrete tokens.

Numerically equal to `terratorch.models.backbones.terramind.tokenizer` (terratorch 1.2.13): a ViT encoder (the
shared TerraMind blocks, here with biased LayerNorms and GELU MLPs) with a residual post-MLP, a 1x1 projection to a
5-channel latent, finite scalar quantization (FSQ), and either a ViT decoder (`VQVAE`, LULC: class logits in one
pass) or a patched diffusion UNet conditioned on the latent (`DiVAE`, S2L2A/S1GRD/S1RTC/DEM/NDVI) sampled with DDIM.

The DDIM sampler is our own few lines (`TerraMindDDIMSampler`) rather than diffusers: the original ships its own
scheduler, whose "trailing" timesteps (`arange(T, 0, -(T // n)) - 1`, four steps for n=3) differ from diffusers',
and the step (sample prediction, zero-terminal-SNR linear betas, thresholding) is a handful of tensor operations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_terramind_tokenizer import TerraMindTokenizerConfig, canonical_tokenizer_modality
from .modeling_terramind_layers import (
    TerraMindAttention,
    TerraMindLayer,
    TerraMindMLP,
    init_transformer_weights,
    interpolate_pos_embed,
    layer_norm,
    sincos_pos_embed_2d,
)

logger = logging.get_logger(__name__)


class BlockConfig:
    """Config view for the shared TerraMind blocks: a few overrides (width, heads, ...) over the model config.

    Attributes not overridden (e.g. `_attn_implementation`, dropout rates) are read from the model config at call
    time, so switching the attention implementation of the model switches it in every block.
    """

    def __init__(self, parent: Any, **overrides: Any):
        self.__dict__["_parent"] = parent
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        parent = self.__dict__.get("_parent")
        if parent is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(parent, name)


def vit_block_config(config: TerraMindTokenizerConfig, hidden_size: int, num_heads: int) -> BlockConfig:
    """The original tokenizer ViT blocks: biased LayerNorms (eps 1e-6), qkv/proj/MLP biases, plain GELU MLP."""
    return BlockConfig(config, hidden_size=hidden_size, num_attention_heads=num_heads, gated_mlp=False,
                       intermediate_size=int(hidden_size * config.mlp_ratio))  # fmt: skip


def post_mlp_config(config: TerraMindTokenizerConfig, hidden_size: int) -> BlockConfig:
    return BlockConfig(config, hidden_size=hidden_size, gated_mlp=False, hidden_act=config.post_mlp_act,
                       intermediate_size=int(hidden_size * config.mlp_ratio), mlp_bias=True)  # fmt: skip


# ----------------------------------------------------------------------------- outputs
@dataclass
class TerraMindTokenizerEncoderOutput(ModelOutput):
    """Output of `TerraMindTokenizerModel.encode`.

    Args:
        quantized: the FSQ codes in [0, 1], (B, latent_dim, H / patch, W / patch), float32.
        tokens: the token ids, (B, H / patch, W / patch), int64 in [0, codebook_size).
        latents: the latent before quantization (output of the 1x1 projection), same shape as `quantized`.
        last_hidden_state: encoder features after the post-MLP, (B, hidden_size, H / patch, W / patch).
    """

    quantized: torch.FloatTensor | None = None
    tokens: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class TerraMindTokenizerOutput(ModelOutput):
    """Output of `TerraMindTokenizerModel.forward` (reconstruction through the tokens).

    Args:
        reconstruction: the decoded image (B, C, H, W); class logits (B, num_classes, H, W) for LULC.
        quantized: the FSQ codes, (B, latent_dim, H / patch, W / patch).
        tokens: the token ids, (B, H / patch, W / patch), int64.
    """

    reconstruction: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    tokens: torch.LongTensor | None = None


# ----------------------------------------------------------------------------- quantizer
class TerraMindFiniteScalarQuantizer(nn.Module):
    """FSQ: each latent channel is squashed by a sigmoid onto `levels` equidistant values in [0, 1].

    The token id is the mixed-radix number of the per-channel levels (first channel least significant), so the
    codebook is implicit: no parameters. Quantization runs in float32 so that bf16 models give the same tokens.
    """

    def __init__(self, levels: list[int]):
        super().__init__()
        self.num_levels = list(levels)
        self.codebook_size = math.prod(levels)
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", self._basis(levels), persistent=False)

    @staticmethod
    def _basis(levels: list[int]) -> torch.Tensor:
        return torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.long), dim=0)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) latents -> (codes (B, D, h, w) float32, token ids (B, h, w) int64)."""
        latents = latents.float().movedim(1, -1)
        steps = (self.levels - 1).to(latents.dtype)
        scaled = torch.sigmoid(latents) * steps
        rounded = scaled + (scaled.round() - scaled).detach()  # straight-through rounding, as the original
        codes = rounded / steps
        tokens = (rounded.detach().round().long() * self.basis).sum(dim=-1)
        return codes.movedim(-1, 1), tokens

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) token ids -> (B, D, h, w) codes in [0, 1], float32."""
        digits = (tokens.long().unsqueeze(-1) // self.basis) % self.levels
        return (digits.float() / (self.levels - 1).float()).movedim(-1, 1)


# ----------------------------------------------------------------------------- ViT encoder / decoder
def _grid_pos_embed(config: TerraMindTokenizerConfig, hidden_size: int) -> torch.Tensor:
    grid = config.image_size // config.patch_size
    return sincos_pos_embed_2d(grid, grid, hidden_size)


class TerraMindTokenizerViT(nn.Module):
    """The trunk shared by the tokenizer's ViT encoder and decoder: fixed sin-cos positions (interpolated for
    other grids), pre-norm blocks, residual post-MLP."""

    def __init__(self, config: TerraMindTokenizerConfig, dim: int, num_heads: int, depth: int):
        super().__init__()
        block_config = vit_block_config(config, dim, num_heads)
        # A buffer, saved with the model: the original stores its (frozen) grid in the checkpoint.
        self.register_buffer("position_embeddings", _grid_pos_embed(config, dim), persistent=True)
        self.layer = nn.ModuleList([TerraMindLayer(block_config) for _ in range(depth)])
        self.post_mlp_norm = layer_norm(block_config) if config.post_mlp else None
        self.post_mlp = TerraMindMLP(post_mlp_config(config, dim)) if config.post_mlp else None
        self.gradient_checkpointing = False

    def transform(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) feature grid -> (B, h * w, D) tokens after positions, blocks and post-MLP."""
        grid_h, grid_w = grid.shape[-2:]
        hidden = grid.flatten(2).transpose(1, 2)
        hidden = hidden + interpolate_pos_embed(self.position_embeddings, grid_h, grid_w).to(hidden.dtype)
        for layer in self.layer:
            hidden = layer(hidden)[0]
        if self.post_mlp is not None:
            hidden = hidden + self.post_mlp(self.post_mlp_norm(hidden))
        return hidden


class TerraMindTokenizerEncoder(TerraMindTokenizerViT):
    """ViT encoder: conv patch embedding, then the shared trunk."""

    def __init__(self, config: TerraMindTokenizerConfig):
        super().__init__(config, config.hidden_size, config.num_attention_heads, config.num_hidden_layers)
        self.patch_embed = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                     stride=config.patch_size)  # fmt: skip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, hidden, H / patch, W / patch)."""
        grid = self.patch_embed(pixel_values)
        batch, dim, grid_h, grid_w = grid.shape
        return self.transform(grid).transpose(1, 2).reshape(batch, dim, grid_h, grid_w)


class TerraMindTokenizerViTDecoder(TerraMindTokenizerViT):
    """ViT decoder: the shared trunk, then a per-token linear map to a pixel patch."""

    def __init__(self, config: TerraMindTokenizerConfig):
        dim = config.decoder_hidden_size
        super().__init__(config, dim, config.decoder_num_attention_heads, config.decoder_num_hidden_layers)
        self.out_channels = config.output_channels
        self.patch_size = config.decoder_patch_size
        self.out_proj = nn.Linear(dim, self.out_channels * self.patch_size**2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, hidden, h, w) -> (B, C, h * patch, w * patch); patches unpacked in (channel, row, column) order."""
        batch, _, grid_h, grid_w = hidden.shape
        hidden = self.transform(hidden)
        p, c = self.patch_size, self.out_channels
        patches = self.out_proj(hidden).reshape(batch, grid_h, grid_w, c, p, p)
        return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, c, grid_h * p, grid_w * p)


# ----------------------------------------------------------------------------- patched diffusion UNet
class TerraMindGroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the model dtype (the original's `GroupNorm32`)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(hidden.float(), self.num_groups, weight, bias, self.eps).to(hidden.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features (N, dim), cosines first, as the original (ADM) UNet."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TerraMindUNetTimestepEmbedding(nn.Module):
    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(channels, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class TerraMindUNetBlock(nn.Module):
    """A UNet stage module: `forward(hidden, emb)`, with the timestep embedding `emb` used by residual blocks only
    (the original's `TimestepBlock`), so that the UNet runs every stage the same way."""

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class TerraMindUNetResBlock(TerraMindUNetBlock):
    """Residual block: GN-SiLU-conv, + projected timestep embedding, GN-SiLU-dropout-conv; 1x1 skip on width change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, config: TerraMindTokenizerConfig):
        super().__init__()
        groups, eps = config.unet_num_groups, 1e-5
        self.in_norm = TerraMindGroupNorm(groups, channels, eps=eps)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.out_norm = TerraMindGroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(config.unet_dropout)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_conv._zero_init = True  # the residual branch starts at zero, as the original's `zero_module`
        self.skip_connection = nn.Conv2d(channels, out_channels, 1) if out_channels != channels else None

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.in_conv(F.silu(self.in_norm(hidden)))
        out = out + self.emb_proj(F.silu(emb)).to(out.dtype)[:, :, None, None]
        out = self.out_conv(self.dropout(F.silu(self.out_norm(out))))
        skip = hidden if self.skip_connection is None else self.skip_connection(hidden)
        return skip + out


class TerraMindUNetAttentionBlock(TerraMindUNetBlock):
    """Self-attention over the positions of a feature map (GN, then the shared TerraMind attention), residual."""

    def __init__(self, channels: int, config: TerraMindTokenizerConfig):
        super().__init__()
        self.norm = TerraMindGroupNorm(config.unet_num_groups, channels, eps=1e-5)
        self.attention = TerraMindAttention(BlockConfig(config, hidden_size=channels, qkv_bias=True, proj_bias=True,
                                                        num_attention_heads=config.unet_num_heads))  # fmt: skip
        self.attention.proj._zero_init = True

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        tokens = self.norm(hidden).reshape(batch, channels, height * width).transpose(1, 2)
        attended = self.attention(tokens)[0].transpose(1, 2).reshape(batch, channels, height, width)
        return hidden + attended


class TerraMindUNetDownsample(TerraMindUNetBlock):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(hidden)


class TerraMindUNetUpsample(TerraMindUNetBlock):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(hidden, scale_factor=2, mode="nearest"))


class TerraMindPatchedUNet(nn.Module):
    """The diffusion decoder: an ADM-style UNet on (patch x patch)-folded pixels, conditioned on the quantized
    latent by nearest upsampling and channel concatenation (the original `PatchedUNetCondCat` / `unet_patched`).

    Call it as `decoder(noisy_sample, timesteps, quantized)` to train; `TerraMindTokenizerModel.decode_tokens`
    samples with it.
    """

    def __init__(self, config: TerraMindTokenizerConfig):
        super().__init__()
        self.patch_size = p = config.decoder_patch_size
        self.out_channels = config.num_channels
        self.model_channels = mc = config.unet_model_channels
        emb_dim = 4 * mc
        self.time_embedding = TerraMindUNetTimestepEmbedding(mc, emb_dim)
        in_channels = config.num_channels * p * p + config.latent_dim
        mult = config.unet_channel_mult
        attention_at = set(config.unet_attention_resolutions)

        ch = mc * mult[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_channels, ds = [ch], 1
        self.input_blocks = nn.ModuleList()
        for level, m in enumerate(mult):
            for _ in range(config.unet_num_res_blocks):
                block = nn.ModuleList([TerraMindUNetResBlock(ch, emb_dim, mc * m, config)])
                ch = mc * m
                if ds in attention_at:
                    block.append(TerraMindUNetAttentionBlock(ch, config))
                self.input_blocks.append(block)
                skip_channels.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(nn.ModuleList([TerraMindUNetDownsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList([TerraMindUNetResBlock(ch, emb_dim, ch, config),
                                           TerraMindUNetAttentionBlock(ch, config),
                                           TerraMindUNetResBlock(ch, emb_dim, ch, config)])  # fmt: skip
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(config.unet_num_res_blocks + 1):
                block = nn.ModuleList([TerraMindUNetResBlock(ch + skip_channels.pop(), emb_dim, mc * m, config)])
                ch = mc * m
                if ds in attention_at:
                    block.append(TerraMindUNetAttentionBlock(ch, config))
                if level and i == config.unet_num_res_blocks:
                    block.append(TerraMindUNetUpsample(ch))
                    ds //= 2
                self.output_blocks.append(block)
        self.out_norm = TerraMindGroupNorm(config.unet_num_groups, ch, eps=1e-5)
        self.out_conv = nn.Conv2d(mc * mult[0], config.num_channels * p * p, 3, padding=1)
        self.out_conv._zero_init = True
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | int, condition: torch.Tensor) -> torch.Tensor:
        """sample (B, C, H, W) at `timesteps` ((B,) or scalar), condition (B, latent_dim, h, w) -> (B, C, H, W)."""
        batch, channels, height, width = sample.shape
        p = self.patch_size
        grid_h, grid_w = height // p, width // p
        hidden = sample.reshape(batch, channels, grid_h, p, grid_w, p).permute(0, 1, 3, 5, 2, 4)
        hidden = hidden.reshape(batch, channels * p * p, grid_h, grid_w)
        condition = F.interpolate(condition, (grid_h, grid_w), mode="nearest").to(hidden.dtype)
        hidden = torch.cat([hidden, condition], dim=1)

        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
        timesteps = timesteps.reshape(-1).to(sample.device)
        emb = self.time_embedding(timestep_embedding(timesteps, self.model_channels).to(hidden.dtype))

        hidden = self.conv_in(hidden)
        skips = [hidden]
        for block in self.input_blocks:
            for module in block:
                hidden = module(hidden, emb)
            skips.append(hidden)
        for module in self.middle_block:
            hidden = module(hidden, emb)
        for block in self.output_blocks:
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            for module in block:
                hidden = module(hidden, emb)
        out = self.out_conv(F.silu(self.out_norm(hidden)))
        out = out.reshape(batch, channels, p, p, grid_h, grid_w).permute(0, 1, 4, 2, 5, 3)
        return out.reshape(batch, channels, height, width)


# ----------------------------------------------------------------------------- DDIM
class TerraMindDDIMSampler:
    """Deterministic DDIM (eta = 0) exactly as the original tokenizers' scheduler.

    Float32 on the CPU like the original: linear (or other) betas, optionally rescaled to zero terminal SNR, and
    the step for sample / epsilon / v prediction with dynamic thresholding or clipping of the predicted sample.
    """

    def __init__(self, config: TerraMindTokenizerConfig):
        self.config = config
        self.alphas_cumprod = self._alphas_cumprod(config)
        self.final_alpha_cumprod = torch.tensor(1.0)

    @staticmethod
    def _alphas_cumprod(config: TerraMindTokenizerConfig) -> torch.Tensor:
        steps = config.num_train_timesteps
        if config.beta_schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float32)
        elif config.beta_schedule == "scaled_linear":
            betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, steps, dtype=torch.float32) ** 2
        else:  # squaredcos_cap_v2 (GLIDE cosine)
            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                                  for i in range(steps)], dtype=torch.float32)  # fmt: skip
        if config.zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        return torch.cumprod(1.0 - betas, dim=0)

    def timesteps(self, num_inference_steps: int) -> list[int]:
        """The original's spacing with an integer step ratio: "trailing" n=3 -> [999, 666, 333, 0]."""
        total = self.config.num_train_timesteps
        ratio = total // num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "trailing":
            steps = np.arange(total, 0, -ratio).round().astype(np.int64) - 1
        elif spacing == "leading":
            steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        else:  # linspace
            steps = np.linspace(total, 1, num_inference_steps).round().astype(np.int64) - 1
        return [int(t) for t in steps]

    def _threshold(self, sample: torch.Tensor) -> torch.Tensor:
        """Imagen's dynamic thresholding per image; with sample_max_value <= 1 it reduces to a clip (v1)."""
        limit = self.config.sample_max_value
        if limit <= 1.0:  # clamp(quantile, min=1, max<=1) is `max` whatever the quantile
            return sample.clamp(-limit, limit) / limit
        flat = sample.reshape(sample.shape[0], -1)
        s = torch.stack([torch.quantile(row.abs(), self.config.dynamic_thresholding_ratio) for row in flat])
        s = s.clamp(min=1.0, max=limit).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, num_inference_steps: int):
        """x_t -> x_{t - T // n} (float32)."""
        prev = timestep - self.config.num_train_timesteps // num_inference_steps
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        beta_t = 1 - alpha_t
        kind = self.config.prediction_type
        if kind == "sample":
            pred_sample = model_output
            pred_epsilon = (sample - alpha_t**0.5 * pred_sample) / beta_t**0.5
        elif kind == "epsilon":
            pred_sample = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
            pred_epsilon = model_output
        else:  # v_prediction
            pred_sample = alpha_t**0.5 * sample - beta_t**0.5 * model_output
            pred_epsilon = alpha_t**0.5 * model_output + beta_t**0.5 * sample
        if self.config.thresholding:
            pred_sample = self._threshold(pred_sample)
        elif self.config.clip_sample:
            pred_sample = pred_sample.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return alpha_prev**0.5 * pred_sample + (1 - alpha_prev) ** 0.5 * pred_epsilon


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (Lin et al. 2023), as the original."""
    alphas_bar_sqrt = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


# ----------------------------------------------------------------------------- models
class TerraMindTokenizerPreTrainedModel(PreTrainedModel):
    config_class = TerraMindTokenizerConfig
    config: TerraMindTokenizerConfig
    base_model_prefix = "terramind_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["TerraMindLayer", "TerraMindUNetResBlock", "TerraMindUNetAttentionBlock"]
    # Converts an original (terratorch) tokenizer release: set by the `terramind` package (tokenizer_conversion.py),
    # absent in saved remote code, which never needs it.
    original_release_resolver: ClassVar[Callable[..., str | None] | None] = None
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """As the original: xavier linears (q, k, v separately), MAE-style patch embedding, zero-initialised
        residual outputs of the UNet, PyTorch's default for the other convolutions, sin-cos position grids."""
        if getattr(module, "_zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif init_transformer_weights(module, getattr(self.config, "initializer_range", 0.02)):
            pass
        elif isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            if module.kernel_size == module.stride and module.kernel_size != (1, 1):  # patch embedding (MAE)
                bound = math.sqrt(6.0 / float(fan_in + module.weight.shape[0]))
            else:
                bound = 1.0 / math.sqrt(fan_in)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        if isinstance(module, TerraMindTokenizerViT):
            init.copy_(module.position_embeddings, _grid_pos_embed(self.config, module.position_embeddings.shape[-1]))
        elif isinstance(module, TerraMindFiniteScalarQuantizer):
            init.copy_(module.levels, torch.tensor(module.num_levels, dtype=torch.long))
            init.copy_(module.basis, module._basis(module.num_levels))


class TerraMindTokenizerModel(TerraMindTokenizerPreTrainedModel):
    """A TerraMind v1 modality tokenizer: `encode` images to token grids, `decode_tokens` back, `forward` both.

    Inputs are standardized images (B, C, H, W) with H, W multiples of 16 (the v1 statistics of the modality, as for
    the TerraMind encoder). LULC takes class maps (B, H, W) or (B, 1, H, W) of class ids, or (B, 10, H, W) one-hot /
    probabilities, and decodes to class logits. Diffusion decoders (S2L2A, S1GRD, S1RTC, DEM, NDVI) sample with DDIM;
    pass a `torch.Generator` for reproducible images.

    `from_pretrained` also takes an original release (a folder or Hub repo with `TerraMind_Tokenizer_*.pt` and no
    config.json): it is converted once into the TerraMind cache.
    """

    def __init__(self, config: TerraMindTokenizerConfig):
        super().__init__(config)
        self.encoder = TerraMindTokenizerEncoder(config)
        self.quant_proj = nn.Conv2d(config.hidden_size, config.latent_dim, 1)
        self.quantizer = TerraMindFiniteScalarQuantizer(config.fsq_levels)
        if config.is_diffusion:
            self.post_quant_proj = None
            self.decoder = TerraMindPatchedUNet(config)
        else:
            self.post_quant_proj = nn.Conv2d(config.latent_dim, config.decoder_hidden_size, 1)
            self.decoder = TerraMindTokenizerViTDecoder(config)
        self.post_init()

    @property
    def noise_scheduler(self) -> TerraMindDDIMSampler:
        """The DDIM sampler of the diffusion decoder, from the current config (cheap: a 1000-step schedule)."""
        return TerraMindDDIMSampler(self.config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """Transformers' `from_pretrained`; an original release (folder or Hub repo holding `TerraMind_Tokenizer_*.pt`
        and no config.json) is converted on the fly into the cache first."""
        resolver = TerraMindTokenizerModel.original_release_resolver
        if pretrained_model_name_or_path is not None and kwargs.get("config") is None and resolver is not None:
            hub_kwargs = {k: kwargs[k] for k in ("token", "revision", "cache_dir", "local_files_only") if k in kwargs}
            converted = resolver(pretrained_model_name_or_path, **hub_kwargs)
            if converted is not None:
                pretrained_model_name_or_path = converted
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    # ------------------------------------------------------------------ inputs
    def prepare_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Validate the input and bring it to (B, C, H, W) in the model dtype (class maps one-hot encoded)."""
        config = self.config
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        shape = tuple(pixel_values.shape)
        if config.num_classes is not None:
            pixel_values = self._class_input(pixel_values)
        elif pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
            raise ValueError(f"The {config.modality or 'tokenizer'} input must be (B, {config.num_channels}, H, W), "
                             f"got shape {shape}.")  # fmt: skip
        elif not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a floating point tensor, got {pixel_values.dtype}.")
        height, width = pixel_values.shape[-2:]
        if height % config.patch_size or width % config.patch_size or height == 0 or width == 0:
            raise ValueError(f"Image size {height}x{width} must be a positive multiple of {config.patch_size}.")
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contains NaN or inf; fill nodata before tokenizing.")
        return pixel_values.to(self.dtype)

    def _class_input(self, values: torch.Tensor) -> torch.Tensor:
        classes = self.config.num_classes
        if values.ndim == 4 and values.shape[1] == classes:  # one-hot or class probabilities
            return values if values.is_floating_point() else values.float()
        if values.ndim == 4 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 3:
            raise ValueError(f"Expected class ids (B, H, W) or (B, 1, H, W), or one-hot (B, {classes}, H, W), got "
                             f"shape {tuple(values.shape)}.")  # fmt: skip
        if values.is_floating_point():
            if not torch.isfinite(values).all() or (values != values.round()).any():
                raise ValueError("A class map must hold integer class ids.")
        elif values.dtype == torch.bool:
            raise ValueError("A class map must hold integer class ids, got a bool tensor.")
        if values.numel() and (values.min() < 0 or values.max() >= classes):
            raise ValueError(f"Class ids must be in [0, {classes - 1}], got values in "
                             f"[{int(values.min())}, {int(values.max())}].")  # fmt: skip
        return F.one_hot(values.long(), classes).permute(0, 3, 1, 2)

    def _validate_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}.")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}.")
        if tokens.ndim == 2:  # (B, N) from the generator: square grid
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ValueError(f"Flat tokens (B, N) need a square grid; N={tokens.shape[1]}. Pass (B, h, w).")
            tokens = tokens.reshape(tokens.shape[0], side, side)
        if tokens.ndim != 3 or tokens.shape[0] == 0 or tokens.shape[1] == 0 or tokens.shape[2] == 0:
            raise ValueError(f"tokens must be (B, h, w), got shape {tuple(tokens.shape)}.")
        size = self.config.codebook_size
        if tokens.min() < 0 or tokens.max() >= size:
            raise ValueError(f"Token ids must be in [0, {size - 1}] (codebook of {size}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}].")  # fmt: skip
        return tokens

    # ------------------------------------------------------------------ encode / decode
    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """Image -> FSQ codes and token ids (B, H / 16, W / 16)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden = self.encoder(self.prepare_pixel_values(pixel_values))
        latents = self.quant_proj(hidden)
        quantized, tokens = self.quantizer(latents)
        if not return_dict:
            return quantized, tokens, latents, hidden
        return TerraMindTokenizerEncoderOutput(quantized=quantized, tokens=tokens, latents=latents,
                                               last_hidden_state=hidden)  # fmt: skip

    def tokens_to_quantized(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> FSQ codes (B, latent_dim, h, w)."""
        return self.quantizer.tokens_to_codes(self._validate_tokens(tokens))

    @torch.no_grad()
    def decode_tokens(
        self,
        tokens: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        image_size: int | tuple[int, int] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, h, w) (or (B, h*w) for a square grid) -> image (B, C, h * 16, w * 16).

        timesteps: DDIM steps of a diffusion decoder (default `config.num_inference_steps`, 50; "trailing" spacing
            as the original, so n=3 runs [999, 666, 333, 0]). Ignored by the ViT decoder.
        generator: draws the start noise, on the CPU as the original (`torch.randn((B, C, H, W), generator=...)`),
            for reproducible decodes. Ignored by the ViT decoder.
        image_size: output size (int or (H, W)); default: the token grid times the patch size.
        progress: show a progress bar over the diffusion steps (most of a generation's time).
        """
        quantized = self.tokens_to_quantized(tokens.to(self.device))
        return self.decode_quantized(quantized, timesteps=timesteps, generator=generator, image_size=image_size,
                                     progress=progress)  # fmt: skip

    def decode_quantized(
        self,
        quantized: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        image_size: int | tuple[int, int] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """FSQ codes (B, latent_dim, h, w) -> image; see `decode_tokens`."""
        config = self.config
        if quantized.ndim != 4 or quantized.shape[1] != config.latent_dim:
            raise ValueError(f"quantized must be (B, {config.latent_dim}, h, w), got shape {tuple(quantized.shape)}.")
        grid = (quantized.shape[2] * config.patch_size, quantized.shape[3] * config.patch_size)
        size = grid if image_size is None else _pair(image_size)
        if not config.is_diffusion:
            if size != grid:
                raise ValueError(f"The ViT decoder renders {config.patch_size} pixels per token: a "
                                 f"{quantized.shape[2]}x{quantized.shape[3]} token grid decodes to {grid}, not "
                                 f"image_size={size}.")  # fmt: skip
            return self.decoder(self.post_quant_proj(quantized.to(self.dtype)))
        return self._sample(quantized, timesteps, generator, size, progress)

    @torch.no_grad()
    def _sample(self, quantized: torch.Tensor, timesteps: int | None, generator: torch.Generator | None,
                size: tuple[int, int], progress: bool = False) -> torch.Tensor:  # fmt: skip
        """DDIM sampling without gradients, as the original pipeline (train the UNet through `self.decoder`)."""
        config = self.config
        steps = config.num_inference_steps if timesteps is None else timesteps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= config.num_train_timesteps:
            raise ValueError(f"timesteps must be an int in [1, {config.num_train_timesteps}], got {steps!r}.")
        multiple = config.unet_resolution_multiple()
        if size[0] <= 0 or size[1] <= 0 or size[0] % multiple or size[1] % multiple:
            raise ValueError(f"The diffusion decoder needs image sizes that are multiples of {multiple}, got {size}.")
        batch = quantized.shape[0]
        shape = (batch, config.num_channels, size[0], size[1])
        if generator is not None and generator.device.type != "cpu":
            sample = torch.randn(shape, generator=generator, device=generator.device)
        else:  # as the original: drawn on the CPU, then moved
            sample = torch.randn(shape, generator=generator)
        sample = sample.to(self.device)
        condition = quantized.to(self.device, self.dtype)
        scheduler = self.noise_scheduler
        description = f"{config.modality or 'tokenizer'} diffusion decoding"
        for t in tqdm(scheduler.timesteps(steps), desc=description, disable=not progress, leave=False):
            step = torch.full((batch,), t, dtype=torch.long, device=self.device)
            model_output = self.decoder(sample.to(self.dtype), step, condition)
            sample = scheduler.step(model_output.float(), t, sample, steps)
        return sample

    def forward(
        self,
        pixel_values: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
    ) -> TerraMindTokenizerOutput | tuple:
        r"""
        Reconstruction through the tokens: encode, then decode at the input size.

        timesteps: DDIM steps of a diffusion decoder (default `config.num_inference_steps`).
        generator: seeds the diffusion start noise (drawn on the CPU).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(pixel_values, return_dict=True)
        size = tuple(pixel_values.shape[-2:])
        reconstruction = self.decode_quantized(encoded.quantized, timesteps=timesteps, generator=generator,
                                               image_size=size)  # fmt: skip
        if not return_dict:
            return reconstruction, encoded.quantized, encoded.tokens
        return TerraMindTokenizerOutput(reconstruction=reconstruction, quantized=encoded.quantized,
                                        tokens=encoded.tokens)  # fmt: skip


def check_tokenizer_modality(tokenizer: Any, modality: str) -> None:
    """A tokenizer used for `modality` must be that modality's (its config says which): a mix-up, e.g. the S1GRD
    tokenizer decoding LULC tokens, would otherwise run and give plausible-looking nonsense."""
    expected = canonical_tokenizer_modality(modality)
    found = getattr(getattr(tokenizer, "config", None), "modality", None)
    if found is not None and canonical_tokenizer_modality(found) != expected:
        source = getattr(tokenizer, "name_or_path", "") or ""
        raise ValueError(f"The tokenizer for {expected}{f' ({source})' if source else ''} is the {found} tokenizer.")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"image_size must be an int or (H, W), got {size!r}.")


__all__ = [
    "check_tokenizer_modality",
    "TerraMindTokenizerPreTrainedModel",
    "TerraMindTokenizerModel",
    "TerraMindTokenizerEncoderOutput",
    "TerraMindTokenizerOutput",
]
