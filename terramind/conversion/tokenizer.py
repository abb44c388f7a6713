"""Conversion of the original TerraMind tokenizer releases (`TerraMind_Tokenizer_*.pt`) to TerraMindTokenizerModel.

The released files are plain state dicts of terratorch's `VQVAE` (LULC) and `DiVAE` (the diffusion tokenizers).
Used by `terramind convert --tokenizer-checkpoint ...` and by `TerraMindTokenizerModel.from_pretrained` on an
original release (folder, file or Hub repo), which is converted once into the TerraMind cache. Files are read
with `torch.load(..., weights_only=True)` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..configuration_terramind_tokenizer import TerraMindTokenizerConfig, canonical_tokenizer_modality
from .checkpoint import ConversionError, find_release_file, load_original_state_dict, resolve_release
from .model_card import push_folder, write_model_card

ORIGINAL_TOKENIZER_FILE = re.compile(r"^TerraMind_Tokenizer_(S2L2A|S1GRD|S1RTC|DEM|LULC|NDVI)\.pt$")
_HUB_REPO_MODALITY = re.compile(r"Tokenizer-(S2L2A|S1GRD|S1RTC|DEM|LULC|NDVI)$")

# Renames of the ViT parts (encoder, ViT decoder), first match wins.
_VIT_RENAMES = (
    (re.compile(r"^(encoder|decoder)\.proj\."), r"\1.patch_embed."),
    (re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.attn\."), r"\1.layer.\2.attention."),
    (re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\."), r"\1.layer.\2."),
    (re.compile(r"^(encoder|decoder)\.norm_mlp\."), r"\1.post_mlp_norm."),
    (re.compile(r"^(encoder|decoder)\.(post_mlp|out_proj)\."), r"\1.\2."),
    (re.compile(r"^(quant_proj|post_quant_proj)\."), r"\1."),
)
# Renames inside the patched UNet (`decoder.` of the diffusion tokenizers).
_UNET_RENAMES = (
    (re.compile(r"\.in_layers\.0\."), ".in_norm."),
    (re.compile(r"\.in_layers\.2\."), ".in_conv."),
    (re.compile(r"\.emb_layers\.1\."), ".emb_proj."),
    (re.compile(r"\.out_layers\.0\."), ".out_norm."),
    (re.compile(r"\.out_layers\.3\."), ".out_conv."),
    (re.compile(r"\.op\."), ".conv."),
    (re.compile(r"\.qkv\."), ".attention.qkv."),
    (re.compile(r"\.proj_out\."), ".attention.proj."),
)
_UNET_BLOCK = re.compile(r"^decoder\.(input_blocks|middle_block|output_blocks)\.(\d+)\.(.+)$")


def _grid_to_sequence(pos_emb: torch.Tensor) -> torch.Tensor:
    """(1, D, h, w) positional grid of the original -> (1, h*w, D)."""
    return pos_emb.flatten(2).transpose(1, 2).contiguous()


def _legacy_qkv_to_fused(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The UNet's 1x1-conv qkv is split per head first ((head, q/k/v, ch) rows); ours is (q/k/v, head, ch)."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    if tensor.ndim == 3:  # conv1d weight (3C, C, 1)
        tensor = tensor[..., 0]
    rest = tensor.shape[1:]
    return tensor.reshape(num_heads, 3, head_dim, *rest).transpose(0, 1).reshape(rows, *rest).contiguous()


def convert_tokenizer_state_dict(state: dict[str, torch.Tensor], config: TerraMindTokenizerConfig
                                 ) -> dict[str, torch.Tensor]:  # fmt: skip
    """Original tokenizer keys -> TerraMindTokenizerModel keys (works on meta tensors too).

    Raises ConversionError on keys that a v1 tokenizer of this decoder kind does not have.
    """
    if not any(k.startswith("encoder.blocks.") for k in state) or "quant_proj.weight" not in state:
        raise ConversionError("This is not a TerraMind tokenizer checkpoint (no encoder blocks / quant_proj found).")
    is_unet = any(k.startswith("decoder.input_blocks.") for k in state)
    if is_unet != config.is_diffusion:
        found = "a diffusion (patched UNet)" if is_unet else "a ViT"
        raise ConversionError(f"The checkpoint has {found} decoder, the config decoder_type is "
                              f"{config.decoder_type!r}; wrong --modality?")  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = _convert_key(key, is_unet)
        if new is None:
            unknown.append(key)
            continue
        if new.endswith("position_embeddings"):
            value = _grid_to_sequence(value)
        elif is_unet and new.startswith("decoder.") and ".attention.qkv." in new:
            value = _legacy_qkv_to_fused(value, config.unet_num_heads)
        elif is_unet and new.startswith("decoder.") and ".attention.proj." in new and value.ndim == 3:
            value = value[..., 0].contiguous()  # 1x1 conv1d -> linear
        out[new] = value
    if unknown:
        raise ConversionError(f"Unexpected keys in the tokenizer checkpoint (not TerraMind v1?): {unknown[:5]}")
    return out


def _convert_key(key: str, is_unet: bool) -> str | None:
    if key in ("encoder.pos_emb", "decoder.pos_emb"):
        return key.replace("pos_emb", "position_embeddings")
    if key.startswith("decoder.") and is_unet:
        return _convert_unet_key(key)
    for pattern, replacement in _VIT_RENAMES:
        new, count = pattern.subn(replacement, key)
        if count:
            return new
    return None


def _convert_unet_key(key: str) -> str | None:
    for old, new in (("decoder.time_embed.0.", "decoder.time_embedding.linear_1."),
                     ("decoder.time_embed.2.", "decoder.time_embedding.linear_2."),
                     ("decoder.input_blocks.0.0.", "decoder.conv_in."),
                     ("decoder.out.0.", "decoder.out_norm."), ("decoder.out.2.", "decoder.out_conv.")):  # fmt: skip
        if key.startswith(old):
            return new + key[len(old) :]
    match = _UNET_BLOCK.match(key)
    if not match:
        return None
    group, index, rest = match.groups()
    index = int(index) - 1 if group == "input_blocks" else int(index)  # input_blocks.0 is our conv_in
    rest = "." + rest
    for pattern, replacement in _UNET_RENAMES:
        rest, count = pattern.subn(replacement, rest)
        if count:
            break
    return f"decoder.{group}.{index}{rest}"


def tokenizer_config_for(modality: str, config_overrides: dict[str, Any] | None = None) -> TerraMindTokenizerConfig:
    """The v1 preset of a modality, with overrides (e.g. for a re-trained tokenizer of another size)."""
    return TerraMindTokenizerConfig.from_modality(modality, **(config_overrides or {}))


def _modality_from_filename(checkpoint: str | os.PathLike) -> str | None:
    match = ORIGINAL_TOKENIZER_FILE.match(Path(checkpoint).name)
    return match.group(1) if match else None


def load_original_tokenizer(
    checkpoint: str | os.PathLike | dict[str, torch.Tensor],
    modality: str | None = None,
    config: TerraMindTokenizerConfig | None = None,
    config_overrides: dict[str, Any] | None = None,
):
    """Build a TerraMindTokenizerModel holding the weights of an original tokenizer file (or state dict).

    The architecture comes from `config`, else from the v1 preset of `modality` (taken from the file name
    `TerraMind_Tokenizer_<MODALITY>.pt` when not given) with `config_overrides`. Every weight must fit.
    """
    from ..modeling_terramind_tokenizer import TerraMindTokenizerModel

    state = checkpoint if isinstance(checkpoint, dict) else load_original_state_dict(checkpoint)
    if config is None:
        if modality is None and not isinstance(checkpoint, dict):
            modality = _modality_from_filename(checkpoint)
        if modality is None:
            raise ConversionError("Which modality is this tokenizer for? Pass modality= / --modality (S2L2A, "
                                  "S1GRD, S1RTC, DEM, LULC or NDVI).")  # fmt: skip
        try:
            config = tokenizer_config_for(modality, config_overrides)
        except ValueError as error:
            raise ConversionError(str(error)) from None
    converted = convert_tokenizer_state_dict(state, config)
    model = TerraMindTokenizerModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [f"{k}: file {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in converted and converted[k].shape != expected[k].shape]  # fmt: skip
    if missing or unexpected or mismatched:
        raise ConversionError(f"The checkpoint does not fit the {config.modality or 'configured'} tokenizer "
                              f"architecture: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"mismatched {mismatched[:3]}.")  # fmt: skip
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_tokenizer_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    modality: str | None = None,
    push_to_hub: str | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Convert `TerraMind_Tokenizer_<MODALITY>.pt` into a folder (config.json + model.safetensors) that
    `TerraMindTokenizerModel.from_pretrained` loads; optionally push it to the Hub repo `push_to_hub`."""
    if modality is not None:
        try:
            modality = canonical_tokenizer_modality(modality)
        except ValueError as error:
            raise ConversionError(str(error)) from None
        from_name = _modality_from_filename(checkpoint)
        if from_name is not None and from_name != modality:
            raise ConversionError(f"{Path(checkpoint).name} is the {from_name} tokenizer, not {modality}.")
    model = load_original_tokenizer(checkpoint, modality, config_overrides=config_overrides)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    write_model_card(output_dir, str(checkpoint), f"{model.config.modality} tokenizer", [model.config.modality],
                     "AutoModel", "TerraMindTokenizerModel")  # fmt: skip
    if push_to_hub:
        push_folder(output_dir, push_to_hub)
    return output_dir


def find_original_tokenizer_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The `TerraMind_Tokenizer_*.pt` of an original release folder (one without config.json), else None."""
    return find_release_file(folder, ORIGINAL_TOKENIZER_FILE)


def resolve_original_tokenizer_release(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> str | None:
    """If `name_or_path` is an original tokenizer release (a folder or Hub repo holding `TerraMind_Tokenizer_*.pt`
    and no config.json, or such a file itself), convert it once into the cache and return the converted folder;
    otherwise None (a converted folder or repo is left to Transformers)."""

    def guess(repo_id: str) -> str | None:
        match = _HUB_REPO_MODALITY.search(repo_id)
        return f"TerraMind_Tokenizer_{match.group(1)}.pt" if match else None

    return resolve_release(name_or_path, ORIGINAL_TOKENIZER_FILE, convert_tokenizer_checkpoint, guess, **hub_kwargs)


__all__ = [
    "convert_tokenizer_state_dict",
    "convert_tokenizer_checkpoint",
    "load_original_tokenizer",
    "resolve_original_tokenizer_release",
    "find_original_tokenizer_checkpoint",
    "tokenizer_config_for",
]
