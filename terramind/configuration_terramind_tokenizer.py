"""Configuration of the TerraMind v1 modality tokenizers (FSQ-VAE with a ViT or a diffusion decoder).

The original releases (`TerraMind_Tokenizer_{S2L2A,S1GRD,S1RTC,DEM,LULC,NDVI}.pt`, terratorch 1.2.13
`tokenizer_register.py`) hard-code the architecture in builder functions; here the config spells all of it out so
that a converted folder is self-describing, and `from_modality` gives the v1 presets.
"""

import copy
import math
from typing import Any, Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .modalities import TOKENIZER_MODALITIES, resolve_modality

DecoderType = Literal["vit", "patched_unet"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
PredictionType = Literal["sample", "epsilon", "v_prediction"]
TimestepSpacing = Literal["trailing", "leading", "linspace"]
DECODER_TYPES = get_args(DecoderType)

# The diffusion decoder of the v1 image tokenizers: `unet_patched` of the original (patch 4, 256 channels).
_V1_DIFFUSION = dict(
    decoder_type="patched_unet", decoder_patch_size=4, unet_model_channels=256, unet_num_res_blocks=3,
    unet_attention_resolutions=[4, 8], unet_channel_mult=[1, 2, 2, 2], unet_num_heads=1, fsq_levels=[8, 8, 8, 6, 5],
)  # fmt: skip

# modality -> overrides of the defaults (ViT-B encoder, patch 16, 256x256 positional grid, post-MLP, FSQ latent 5).
TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    "S2L2A": dict(num_channels=12, **_V1_DIFFUSION),
    "S1GRD": dict(num_channels=2, **_V1_DIFFUSION),
    "S1RTC": dict(num_channels=2, **_V1_DIFFUSION),
    "DEM": dict(num_channels=1, **_V1_DIFFUSION),
    "NDVI": dict(num_channels=1, **_V1_DIFFUSION),
    # LULC: 10 ESRI classes in (one-hot), ViT-B decoder out (class logits), smaller FSQ codebook.
    "LULC": dict(num_channels=10, num_classes=10, decoder_type="vit", decoder_patch_size=16,
                 fsq_levels=[7, 5, 5, 5, 5]),
}


@strict
class TerraMindTokenizerConfig(PreTrainedConfig):
    r"""Configuration of a TerraMind modality tokenizer: ViT encoder -> 1x1 projection -> FSQ -> decoder.

    Encoder (ViT, pre-norm blocks with biased LayerNorms, GELU MLP, as the original `vit_b_enc`):
        num_channels: input channels (for class-map inputs the number of classes).
        num_classes: set for class-map modalities (LULC): inputs may be class ids (B, H, W) / (B, 1, H, W), one-hot
            encoded for the encoder, and the ViT decoder returns class logits.
        image_size: size the fixed 2-D sin-cos positional grid is built for (other sizes interpolate it bicubically).
        patch_size: encoder patch size; the token grid is (H / patch_size, W / patch_size).
        hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio: encoder width, depth, heads and MLP ratio.
        hidden_act: activation of the transformer MLPs.
        qkv_bias, proj_bias, mlp_bias: biases of the attention and MLP projections.
        layer_norm_eps, layer_norm_bias: the LayerNorms of the tokenizer ViTs (eps 1e-6, with bias).
        post_mlp: a residual LayerNorm + MLP (`post_mlp_act`, tanh) after the encoder (and before the ViT decoder's
            output projection), as ViT-VQGAN.
    Quantizer:
        fsq_levels: finite scalar quantization levels per latent channel; the codebook has prod(levels) codes.
        latent_dim: channels of the quantized latent (= len(fsq_levels)).
    Decoder:
        decoder_type: "vit" (a ViT decoding in one pass; LULC) or "patched_unet" (a diffusion UNet on 4x4 patches,
            conditioned on the upsampled latent by concatenation; S2L2A, S1GRD, S1RTC, DEM, NDVI).
        decoder_patch_size: output patch size of the ViT decoder / patch size of the patched UNet.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads: ViT decoder (default: encoder's).
        unet_model_channels, unet_num_res_blocks, unet_attention_resolutions, unet_channel_mult, unet_num_heads,
            unet_num_groups, unet_dropout: the patched UNet (attention at the listed downsampling rates).
    Diffusion (DDIM sampling of the "patched_unet" decoder, as the original's scheduler):
        num_train_timesteps, beta_start, beta_end, beta_schedule, zero_terminal_snr: the noise schedule (linear betas
            rescaled to zero terminal SNR in v1).
        prediction_type: what the UNet predicts ("sample" in v1).
        thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample, clip_sample_range: treatment of the
            predicted clean sample (v1: thresholding with max 1.0, i.e. a clip to [-1, 1]).
        timestep_spacing: "trailing" in v1, with the original's integer step ratio.
        num_inference_steps: default number of DDIM steps of `decode_tokens`.
    """

    model_type = "terramind_tokenizer"

    modality: str | None = None
    num_channels: int = 12
    num_classes: int | None = None
    image_size: int = 256
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layer_norm_eps: float = 1e-6
    layer_norm_bias: bool = True
    post_mlp: bool = True
    post_mlp_act: str = "tanh"
    fsq_levels: list[int] | tuple[int, ...] = (8, 8, 8, 6, 5)
    latent_dim: int | None = None
    decoder_type: DecoderType = "patched_unet"
    decoder_patch_size: int | None = None
    decoder_hidden_size: int | None = None
    decoder_num_hidden_layers: int | None = None
    decoder_num_attention_heads: int | None = None
    unet_model_channels: int = 256
    unet_num_res_blocks: int = 3
    unet_attention_resolutions: list[int] | tuple[int, ...] = (4, 8)
    unet_channel_mult: list[int] | tuple[int, ...] = (1, 2, 2, 2)
    unet_num_heads: int = 1
    unet_num_groups: int = 32
    unet_dropout: float | int = 0.0
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: BetaSchedule = "linear"
    zero_terminal_snr: bool = True
    prediction_type: PredictionType = "sample"
    thresholding: bool = True
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: TimestepSpacing = "trailing"
    num_inference_steps: int = 50
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        """Derived defaults: the latent width from the FSQ levels, the decoder's ViT from the encoder's, the decoder
        patch from its type."""
        self.fsq_levels = [int(v) for v in self.fsq_levels]
        self.unet_attention_resolutions = list(self.unet_attention_resolutions)
        self.unet_channel_mult = list(self.unet_channel_mult)
        if self.latent_dim is None:
            self.latent_dim = len(self.fsq_levels)
        if self.decoder_patch_size is None:
            self.decoder_patch_size = 4 if self.decoder_type == "patched_unet" else self.patch_size
        if self.decoder_hidden_size is None:
            self.decoder_hidden_size = self.hidden_size
        if self.decoder_num_hidden_layers is None:
            self.decoder_num_hidden_layers = self.num_hidden_layers
        if self.decoder_num_attention_heads is None:
            self.decoder_num_attention_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    @classmethod
    def from_modality(cls, modality: str, **kwargs) -> "TerraMindTokenizerConfig":
        """The v1 architecture of a modality's tokenizer ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI" and the
        original's aliases); kwargs override single settings."""
        name = canonical_tokenizer_modality(modality)
        return cls(**{**TOKENIZER_PRESETS[name], "modality": name, **kwargs})

    @property
    def codebook_size(self) -> int:
        """Number of distinct tokens (product of the FSQ levels): 15360 for 8-8-8-6-5, 4375 for 7-5-5-5-5."""
        return math.prod(self.fsq_levels)

    @property
    def is_diffusion(self) -> bool:
        return self.decoder_type == "patched_unet"

    @property
    def output_channels(self) -> int:
        """Channels of a decoded image (class logits for class-map modalities)."""
        return self.num_classes or self.num_channels

    def unet_resolution_multiple(self) -> int:
        """Decoded sizes must be multiples of this: the UNet halves its patch grid once per extra level."""
        return self.decoder_patch_size * 2 ** (len(self.unet_channel_mult) - 1)

    def validate_architecture(self) -> None:
        """Fail at construction, with what is allowed, instead of building a model that fails later."""
        super().validate_architecture()

        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")

        for name in ("num_channels", "image_size", "patch_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "decoder_patch_size", "num_train_timesteps",
                     "num_inference_steps"):  # fmt: skip
            positive(name)
        if self.num_classes is not None:
            positive("num_classes")
            if self.num_classes < 2 or self.num_classes != self.num_channels:
                raise ValueError(f"num_classes ({self.num_classes}) must be >= 2 and equal num_channels "
                                 f"({self.num_channels}): class maps are one-hot encoded for the encoder.")  # fmt: skip
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}).")
        encoder = ("", self.hidden_size, self.num_attention_heads)
        decoder = ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads)
        for prefix, dim, heads in (encoder, decoder):
            if dim % heads:
                raise ValueError(f"{prefix}hidden_size ({dim}) must be divisible by {prefix}num_attention_heads "
                                 f"({heads}).")  # fmt: skip
            if dim % 4:
                raise ValueError(f"{prefix}hidden_size ({dim}) must be divisible by 4 (2-D sin-cos embeddings).")
        if not self.fsq_levels or any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"fsq_levels must be a non-empty list of ints >= 2, got {self.fsq_levels}.")
        if self.latent_dim != len(self.fsq_levels):
            raise ValueError(f"latent_dim ({self.latent_dim}) must equal the number of FSQ levels "
                             f"({len(self.fsq_levels)}).")  # fmt: skip
        if self.decoder_type == "vit":
            if self.image_size % self.decoder_patch_size or self.decoder_patch_size != self.patch_size:
                raise ValueError(f"The ViT decoder maps each token back to a patch: decoder_patch_size "
                                 f"({self.decoder_patch_size}) must equal patch_size ({self.patch_size}).")  # fmt: skip
            return
        if self.num_classes is not None:
            raise ValueError("Class-map modalities (num_classes) need the ViT decoder (decoder_type='vit').")
        for mult in self.unet_channel_mult:
            channels = self.unet_model_channels * mult
            if channels % self.unet_num_groups or channels % self.unet_num_heads:
                raise ValueError(f"UNet width {channels} (unet_model_channels x {mult}) must be divisible by "
                                 f"unet_num_groups ({self.unet_num_groups}) and unet_num_heads "
                                 f"({self.unet_num_heads}).")  # fmt: skip
        if self.unet_model_channels % 2:
            raise ValueError(f"unet_model_channels ({self.unet_model_channels}) must be even (timestep embedding).")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"num_inference_steps ({self.num_inference_steps}) cannot exceed num_train_timesteps "
                             f"({self.num_train_timesteps}).")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        output = copy.deepcopy(super().to_dict())
        # Transformers writes `auto_map` entries of classes whose name contains "Tokenizer" as (slow, fast) tokenizer
        # pairs; this config and its model are not text tokenizers, so keep plain "module.Class" references that
        # AutoConfig / AutoModel with trust_remote_code can read.
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict):
            for key, value in auto_map.items():
                if key != "AutoTokenizer" and isinstance(value, (list, tuple)):
                    auto_map[key] = next((v for v in value if v), None)
        return output


def canonical_tokenizer_modality(name: str) -> str:
    """"S2L2A", "s2l2a", "S2L2A_TOKENS", "tok_sen2l2a@224", "sen1grd" ... -> the tokenizer's modality name."""
    canonical = resolve_modality(name).removesuffix("_TOKENS")
    if canonical not in TOKENIZER_MODALITIES:
        raise ValueError(f"TerraMind v1 has no tokenizer for {name!r}; tokenizers exist for "
                         f"{', '.join(TOKENIZER_MODALITIES)}.")  # fmt: skip
    return canonical


__all__ = ["TerraMindTokenizerConfig", "TOKENIZER_PRESETS", "canonical_tokenizer_modality"]
