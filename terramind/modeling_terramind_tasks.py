"""TerraMind for downstream tasks: a Transformers backbone and task heads trained with `Trainer` (and PEFT).

Follows the original TerraTorch fine-tuning recipe (EncoderDecoderFactory): the encoder's token outputs of a few
blocks are selected (`SelectIndices`), reshaped to feature maps (`ReshapeTokensToImage`), optionally turned into a
learned 4x/2x/1x/0.5x pyramid (`LearnedInterpolateToPyramidal`) and decoded by UperNet, a UNet or an FCN.

Stage indices. `out_indices` index `TerraMindModel`'s `hidden_states`: 0 is the embedding output ("stem"), i is the
output of block i ("stage{i}"), and the last stage (`num_hidden_layers`) is the *normed* final output, as in the
original, where the backbone returns the block outputs with the encoder norm applied to the last one. TerraTorch's
`SelectIndices` count blocks from 0, so its defaults map as: base [2, 5, 8, 11] -> `out_indices=[3, 6, 9, 12]`,
large [5, 11, 17, 23] -> `[6, 12, 18, 24]` (original index i < last is block i+1; the last is the normed output).

Task settings are TerraMindConfig keyword arguments (`TerraMindConfig(..., num_labels=10, decode_head="unet")` or
`from_pretrained(path, num_labels=10)`):

- `out_indices` / `out_features`: stages fed to the decoder (defaults: 4 evenly spaced stages ending with the last
  one, e.g. [3, 6, 9, 12]; the FCN head takes the last stage only).
- `use_feature_pyramid`: learned 4x/2x/1x/0.5x pyramid from 4 stages (default: on for UperNet and UNet, off for FCN
  and for `TerraMindBackbone`).
- `decode_head`: "upernet" (default, transformers' `UperNetHead`), "unet" or "fcn" (transformers' `UperNetFCNHead`).
- `decoder_hidden_size` (UperNet/FCN channels, 256), `pool_scales` ((1, 2, 3, 6)), `unet_channels`
  ([512, 256, 128, 64]), `fcn_num_convs` (2).
- `ignore_index` (-100), `class_weights` (one weight per class) for segmentation (and single-label classification).
- `loss` (TerraTorch's names, `losses.py`): segmentation "ce" (default), "dice", "focal", "lovasz", "jaccard";
  regression "mse" (default), "mae"/"l1", "rmse", "huber"; or weighted combinations such as
  `{"ce": 0.5, "dice": 0.5}`.
- `num_regression_outputs` (1), `regression_loss` (the older name of a regression `loss`) for pixel regression;
  non-finite labels (and `ignore_index`, when set) are ignored.
- `head_dropout` (0.0): dropout before the final classifier of every head (TerraTorch's `head_dropout`);
  `classifier_dropout` is its Transformers name for classification. `problem_type` for classification.
- `temporal_merge` ("mean", "max", "concat", "diff"), `num_timesteps`, `temporal_subset_lengths`: inputs
  (B, C, T, H, W) run through the encoder one time step at a time and are merged over time per stage, as
  TerraTorch's TemporalWrapper (`pooling`, `n_timestamps`, `subset_lengths`) does.
- `freeze_backbone` (False): the encoder gets no gradients (the heads also offer `freeze_backbone()`).

These are typed fields of `TerraMindConfig`, so one config may hold the settings of every head (as Transformers'
tests build one config for all classes) and any class builds from it. A value that is not allowed is an error listing
the allowed ones; a keyword that no TerraMind class knows is an error naming the nearest known setting; a setting that
this model does not use (e.g. `unet_channels` with the UperNet head, `loss` with a classifier) gives one warning
naming the models that use it.

Inputs are the same as `TerraMindModel`'s (dict, keyword arguments per modality, or one tensor), plus `labels`.
Dense heads need merged spatial tokens: `merge_method` "mean" (default), "max" or "concat".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput, SemanticSegmenterOutput
from transformers.models.upernet.configuration_upernet import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetConvModule, UperNetFCNHead, UperNetHead
from transformers.utils import ModelOutput, logging

from .configuration_terramind import (
    DECODE_HEADS,
    REGRESSION_LOSSES,
    SEGMENTATION_LOSSES,
    TerraMindConfig,
    check_legacy_tim_settings,
    refuse_unknown_settings,
)
from .losses import (
    classification_cross_entropy,
    parse_loss,
    regression_loss,
    segmentation_loss,
)
from .modeling_terramind import (
    TerraMindModel,
    TerraMindModelOutput,
    TerraMindPreTrainedModel,
)
from .temporal import fold_time, merge_time
from .tiling import run_tiled

logger = logging.get_logger(__name__)

SPATIAL_MERGE_METHODS = ("mean", "max", "concat")
# Weights of a full TerraMind checkpoint (generator, TiM) that a task model does not use.
_UNUSED_CHECKPOINT_KEYS = [r"^decoder", r"(^|\.)mask_token", r"encoder_embeddings\."]
# Settings every task model uses, and those of each head type (see `TerraMindTaskPreTrainedModel.uses`).
COMMON_TASK_SETTINGS = ("freeze_backbone", "temporal_merge", "num_timesteps", "temporal_subset_lengths")
HEAD_SETTINGS = {
    "upernet": ("decoder_hidden_size", "pool_scales"),
    "unet": ("unet_channels",),
    "fcn": ("decoder_hidden_size", "fcn_num_convs", "fcn_concat_input"),
}


def task_setting(config: TerraMindConfig, name: str) -> Any:
    """A task setting of the config (a typed `TerraMindConfig` field)."""
    return getattr(config, name)


def apply_task_kwargs(config: TerraMindConfig, kwargs: dict[str, Any], model: type) -> None:
    """Task settings given to a model constructor (`TerraMindForSemanticSegmentation(config, decode_head="unet")`)
    go into its config; a keyword that no TerraMind class knows is an error naming the nearest setting.
    (`from_pretrained` sets known settings on the config itself and hands the unknown ones here.)"""
    check_legacy_tim_settings(kwargs)
    refuse_unknown_settings(kwargs, TerraMindConfig.known_settings(), model.__name__)
    for name, value in kwargs.items():
        setattr(config, name, value)


def warn_unused_task_settings(config: TerraMindConfig, model: type, used: set[str]) -> None:
    """One warning for the task settings (not at their default) that `model` does not use, naming the models (and
    decode heads) that use each: a config may hold the settings of every head, so this is no error."""
    unused = {name: value for name, value in config.changed_task_settings().items() if name not in used}
    if not unused:
        return
    described = []
    for name, value in unused.items():
        users = [cls.__name__ for cls in _TASK_MODELS if name in cls.uses]
        heads = [head for head, names in HEAD_SETTINGS.items() if name in names]
        where = ", ".join(users) + (f" with decode_head={' or '.join(map(repr, heads))}" if heads else "")
        described.append(f"{name}={value!r} (used by {where})")
    logger.warning_once(f"{model.__name__} does not use {'; '.join(described)}: ignored.")


def merged_timesteps(config: TerraMindConfig) -> int:
    """How many time steps the temporal merge keeps side by side: num_timesteps (or subsets) for "concat", else 1."""
    if task_setting(config, "temporal_merge") != "concat":
        return 1
    subsets = task_setting(config, "temporal_subset_lengths")
    return len(subsets) if subsets is not None else int(task_setting(config, "num_timesteps"))


# ----------------------------------------------------------------------------- stage selection
def default_out_indices(num_layers: int) -> list[int]:
    """Four evenly spaced stages ending with the last (TerraTorch's choice, `TERRATORCH_OUT_INDICES`): 12 layers ->
    [3, 6, 9, 12], 24 -> [6, 12, 18, 24]."""
    if num_layers < 4:
        return list(range(1, num_layers + 1))
    return [num_layers * k // 4 for k in range(1, 5)]


def resolve_out_indices(config: TerraMindConfig, default: list[int] | None = None) -> list[int]:
    """The stages a model reads: those chosen in the config (`out_indices` / `out_features`, checked and kept in
    sync by the config, as Transformers' backbones), else `default` (else TerraTorch's four stages)."""
    if config.out_indices_given:
        return config.out_indices
    return list(default or default_out_indices(config.num_hidden_layers))


def feature_channels(config: TerraMindConfig, model: TerraMindModel) -> int:
    """Channels of the merged tokens: hidden_size, times the image modalities (TiM ones included) for "concat", times
    the time steps for temporal_merge "concat"."""
    if config.merge_method == "concat":
        return config.hidden_size * len(model.image_modalities) * merged_timesteps(config)
    return config.hidden_size * merged_timesteps(config)


def _check_spatial_merge(config: TerraMindConfig, what: str) -> None:
    if config.merge_method not in SPATIAL_MERGE_METHODS:
        raise ValueError(f"{what} needs spatial feature maps, i.e. merge_method 'mean', 'max' or 'concat'; got "
                         f"{config.merge_method!r}.")  # fmt: skip


def _spatial_grid(inputs: list[Any], patch_size: int, num_tokens: int) -> tuple[int, int]:
    """(h, w) patch grid of `num_tokens` merged tokens, from the shapes of the raw inputs (tensors or dicts).

    Images (B, C, H, W) give (H/p, W/p); 3-D inputs are class maps (B, H, W) or token grids (B, h, w): the candidate
    whose size matches the tokens wins. Without image inputs the grid is square.
    """
    candidates = []
    stack = list(inputs)
    while stack:
        value = stack.pop(0)
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, torch.Tensor) and value.ndim in (3, 4):
            height, width = value.shape[-2:]
            candidates.append((height // patch_size, width // patch_size))
            if value.ndim == 3:
                candidates.append((height, width))
    for grid in candidates:
        if grid[0] * grid[1] == num_tokens:
            return grid
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens:
        raise ValueError(f"Cannot infer the patch grid of {num_tokens} tokens from the input shapes.")
    return side, side


def tokens_to_image(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major patch tokens -> (B, C, h, w) feature map."""
    batch, length, channels = tokens.shape
    if length != grid[0] * grid[1]:
        raise ValueError(f"{length} tokens do not form a {grid[0]}x{grid[1]} grid.")
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])


class TerraMindFeaturePyramid(nn.Module):
    """Learned pyramid from 4 same-size maps (the original's LearnedInterpolateToPyramidal): 4x, 2x, 1x, 0.5x.

    Channels become [C0/4, C1/2, C2, C3] (transposed convolutions halve them per 2x upsampling).
    """

    def __init__(self, channels: list[int]):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"The feature pyramid needs exactly 4 stages (out_indices), got {len(channels)}.")
        c0, c1 = channels[0], channels[1]
        self.upsample_4x = nn.Sequential(
            nn.ConvTranspose2d(c0, c0 // 2, kernel_size=2, stride=2),
            nn.BatchNorm2d(c0 // 2),
            nn.GELU(),
            nn.ConvTranspose2d(c0 // 2, c0 // 4, kernel_size=2, stride=2),
        )
        self.upsample_2x = nn.ConvTranspose2d(c1, c1 // 2, kernel_size=2, stride=2)
        self.downsample_2x = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)  # 1-patch-wide grids work
        self.out_channels = [c0 // 4, c1 // 2, channels[2], channels[3]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.upsample_4x(features[0]), self.upsample_2x(features[1]), features[2],
                self.downsample_2x(features[3])]  # fmt: skip


class TerraMindNeck(nn.Module):
    """Encoder outputs -> feature maps: select stages, reshape tokens to (B, C, H/16, W/16), optional pyramid."""

    def __init__(self, config: TerraMindConfig, channels: int, out_indices: list[int], pyramid: bool):
        super().__init__()
        self.out_indices = list(out_indices)
        self.last_stage = config.num_hidden_layers
        self.patch_size = config.patch_size
        self.pyramid = TerraMindFeaturePyramid([channels] * len(out_indices)) if pyramid else None
        use_single_value_safe_batch_norm(self)
        self.out_channels = self.pyramid.out_channels if pyramid else [channels] * len(out_indices)

    @property
    def needs_hidden_states(self) -> bool:
        """Whether a stage other than the (normed) last one is used."""
        return any(index != self.last_stage for index in self.out_indices)

    def forward(self, outputs: TerraMindModelOutput, grid: tuple[int, int]) -> list[torch.Tensor]:
        maps = []
        for index in self.out_indices:
            tokens = outputs.last_hidden_state if index == self.last_stage else outputs.hidden_states[index]
            maps.append(tokens_to_image(tokens, grid))
        return self.pyramid(maps) if self.pyramid is not None else maps


# ----------------------------------------------------------------------------- decoders
class TerraMindBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that uses its running statistics when a training batch has a single value per channel.

    That happens for a batch of one on a 1x1 map (UperNet's global pooling branch, the 0.5x pyramid level of tiny
    inputs), where plain BatchNorm raises; the weights are those of nn.BatchNorm2d.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and hidden_states[:, 0].numel() == 1:
            return F.batch_norm(hidden_states, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)  # fmt: skip
        return super().forward(hidden_states)


def use_single_value_safe_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d below `module` by TerraMindBatchNorm2d (same parameters and buffers)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            safe = TerraMindBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)  # fmt: skip
            safe.load_state_dict(child.state_dict())
            setattr(module, name, safe)
        else:
            use_single_value_safe_batch_norm(child)
    return module


class TerraMindUNetHead(nn.Module):
    """Light UNet decoder over a coarse-to-fine list of maps: upsample, concatenate the skip, two conv blocks."""

    def __init__(self, in_channels: list[int], channels: list[int], num_outputs: int):
        super().__init__()
        if len(channels) != len(in_channels):
            raise ValueError(f"unet_channels needs one width per stage ({len(in_channels)}), got {channels}.")
        self.stem = UperNetConvModule(in_channels[-1], channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        skips = list(reversed(in_channels[:-1]))
        for i, skip in enumerate(skips):
            self.blocks.append(nn.Sequential(
                UperNetConvModule(channels[i] + skip, channels[i + 1], kernel_size=3, padding=1),
                UperNetConvModule(channels[i + 1], channels[i + 1], kernel_size=3, padding=1),
            ))  # fmt: skip
        self.classifier = nn.Conv2d(channels[-1], num_outputs, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        hidden = self.stem(features[-1])
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            hidden = F.interpolate(hidden, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            hidden = block(torch.cat([hidden, skip], dim=1))
        return self.classifier(hidden)


class TerraMindDropoutConv2d(nn.Conv2d):
    """A decode head's final 1x1 convolution with dropout on its input (TerraTorch's `head_dropout`): the same
    parameters (and state-dict keys) as the convolution it replaces."""

    def __init__(self, conv: nn.Conv2d, dropout: float):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
        self.load_state_dict(conv.state_dict())
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(hidden_states))


def add_head_dropout(decode_head: nn.Module, dropout: float) -> None:
    """Dropout before the classifier of a decode head (UperNet, UNet and FCN heads all end in `classifier`)."""
    if dropout:
        decode_head.classifier = TerraMindDropoutConv2d(decode_head.classifier, dropout)


def build_decode_head(config: TerraMindConfig, in_channels: list[int], num_outputs: int, head: str) -> nn.Module:
    """UperNet (transformers' `UperNetHead`), UNet or FCN (transformers' `UperNetFCNHead`) over the neck outputs."""
    if head == "unet":
        decoder = TerraMindUNetHead(list(in_channels), list(config.unet_channels)[: len(in_channels)], num_outputs)
        return use_single_value_safe_batch_norm(decoder)
    # Transformers' UperNet heads read their settings from an UperNetConfig (the FCN head is its auxiliary head).
    head_config = UperNetConfig(hidden_size=config.decoder_hidden_size, pool_scales=list(config.pool_scales),
                                num_labels=num_outputs, use_auxiliary_head=False, auxiliary_in_channels=None,
                                auxiliary_channels=config.decoder_hidden_size, auxiliary_num_convs=config.fcn_num_convs,
                                auxiliary_concat_input=config.fcn_concat_input)  # fmt: skip
    if head == "upernet":
        decoder = UperNetHead(head_config, in_channels=list(in_channels))
    else:
        decoder = UperNetFCNHead(head_config, in_channels=list(in_channels), in_index=-1)
    return use_single_value_safe_batch_norm(decoder)


# ----------------------------------------------------------------------------- base classes
class TerraMindTaskPreTrainedModel(TerraMindPreTrainedModel):
    """TerraMind models with convolutional necks/heads: adds their init and the backbone freezing option."""

    _keys_to_ignore_on_load_unexpected = _UNUSED_CHECKPOINT_KEYS
    # `**modalities` is not `**loss_kwargs`: Trainer must not pass `num_items_in_batch` as an input.
    accepts_loss_kwargs = False
    # Modules a task adds on top of the encoder: trained from scratch, `modules_to_save` for PEFT.
    task_modules: tuple[str, ...] = ()
    # Task settings (TerraMindConfig fields) this model reads, besides COMMON_TASK_SETTINGS.
    uses: tuple[str, ...] = ()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or resume) training the TerraMind encoder; heads and necks stay trainable (the frozen generator of
        Thinking-in-Modalities models stays frozen)."""
        for name, parameter in self.terramind.named_parameters():
            if not name.startswith("tim_generator."):
                parameter.requires_grad_(not freeze)

    def _encode(
        self, pixel_values: Any, modalities: dict[str, Any], output_hidden_states: bool = True,
        output_attentions: bool = False,
    ) -> tuple[TerraMindModelOutput, tuple[int, int]]:  # fmt: skip
        """Run the encoder; returns its output (with every block's hidden states) and the patch grid."""
        outputs, inputs = self._run_encoder(pixel_values, modalities, output_hidden_states, output_attentions)
        tokens = outputs.last_hidden_state.shape[1]
        return outputs, _spatial_grid([inputs], self.config.patch_size, tokens)

    def _gather_inputs(self, pixel_values: Any, modalities: dict[str, Any]) -> dict[str, Any]:
        """Inputs as {name: value}: a dict, keyword arguments, or one tensor (the first configured modality)."""
        inputs = dict(modalities)
        if isinstance(pixel_values, dict):
            inputs = {**pixel_values, **inputs}
        elif pixel_values is not None:
            inputs = {next(iter(self.config.modality_aliases().values())): pixel_values, **inputs}
        return inputs

    def _run_encoder(
        self, pixel_values: Any, modalities: dict[str, Any], output_hidden_states: bool | None,
        output_attentions: bool | None = None,
    ) -> tuple[TerraMindModelOutput, dict[str, Any]]:  # fmt: skip
        """The encoder over the inputs; time series (B, C, T, H, W) go through it one time step at a time (folded
        into the batch) and its outputs are merged over time by `temporal_merge` (attentions stay per time step,
        (B * T, heads, N, N)). Returns the output and the (folded) inputs."""
        inputs = self._gather_inputs(pixel_values, modalities)
        tokens = inputs.pop("input_tokens", None)  # ready token grids (B, h, w), as TerraMindModel takes them
        inputs, steps = fold_time(inputs)
        if tokens is not None and steps is not None:
            tokens = {name: grid.repeat_interleave(steps, dim=0) for name, grid in tokens.items()}
        merge = task_setting(self.config, "temporal_merge")
        if steps is None and (merge in ("concat", "diff") or task_setting(self.config, "num_timesteps")):
            raise ValueError(f"This model merges time series (temporal_merge={merge!r}, num_timesteps="
                             f"{task_setting(self.config, 'num_timesteps')}); give inputs as (B, C, T, H, W).")  # fmt: skip
        expected = task_setting(self.config, "num_timesteps")
        if steps is not None and expected is not None and steps != expected:
            raise ValueError(f"The inputs have {steps} time steps, this model was built for num_timesteps={expected}.")
        outputs = self.terramind(inputs, input_tokens=tokens, output_hidden_states=output_hidden_states,
                                 output_attentions=output_attentions, return_dict=True)  # fmt: skip
        if steps is None:
            return outputs, inputs
        subsets = task_setting(self.config, "temporal_subset_lengths")
        merged = TerraMindModelOutput(
            last_hidden_state=merge_time(outputs.last_hidden_state, steps, merge, subsets),
            hidden_states=merge_time(outputs.hidden_states, steps, merge, subsets),
            attentions=outputs.attentions,
            tim_tokens={k: v.reshape(-1, steps, *v.shape[1:]) for k, v in outputs.tim_tokens.items()}
            if outputs.tim_tokens else outputs.tim_tokens,
        )  # fmt: skip
        return merged, inputs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any):
        """Standard loading; the model also remembers the name it was loaded with (a Hub id, also of an original
        release converted on the fly) as `pretrained_source`, which its LoRA adapters record as their base."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.pretrained_source = str(pretrained_model_name_or_path)
        return loaded

    def _after_loading(self) -> None:
        self._apply_freezing()  # loading hands out fresh Parameters

    @classmethod
    def check_settings(cls, config: TerraMindConfig, used: tuple[str, ...]) -> None:
        """The task settings' values (checked again: they may have been assigned after the config was built), and
        one warning for those this model does not use."""
        config.validate_task_settings()
        warn_unused_task_settings(config, cls, {*COMMON_TASK_SETTINGS, *used})

    def _apply_freezing(self) -> None:
        if task_setting(self.config, "freeze_backbone"):
            self.freeze_backbone(True)


# ----------------------------------------------------------------------------- backbone
class TerraMindBackbone(BackboneMixin, TerraMindTaskPreTrainedModel):
    """TerraMind encoder as a Transformers backbone: feature maps (B, C, H/16, W/16) of the `out_indices` stages.

    Stages are "stem" (embeddings) and "stage1".."stageL"; the last stage is the normed final output, as in the
    original (TerraTorch's SelectIndices [2, 5, 8, 11] = `out_indices=[3, 6, 9, 12]`). `use_feature_pyramid=True`
    (with 4 stages) returns a learned 4x/2x/1x/0.5x pyramid for hierarchical decoders instead. Takes the inputs of
    `TerraMindModel` (dict, per-modality keyword arguments or one tensor); C is `hidden_size`, times the number of
    image modalities with `merge_method="concat"`.
    """

    task_modules = ("feature_neck",)
    uses = ("out_indices", "use_feature_pyramid")

    def __init__(self, config: TerraMindConfig, **kwargs: Any):
        apply_task_kwargs(config, kwargs, type(self))
        self.check_settings(config, self.uses)
        super().__init__(config)
        _check_spatial_merge(config, "TerraMindBackbone")
        self.terramind = TerraMindModel(config)
        channels = feature_channels(config, self.terramind)
        self.num_features = [channels] * len(self.stage_names)
        pyramid = bool(task_setting(config, "use_feature_pyramid"))
        self.feature_neck = TerraMindNeck(config, channels, config.out_indices, pyramid)
        self.post_init()
        self._apply_freezing()

    def _init_transformers_backbone(self) -> None:
        self.stage_names = list(self.config.stage_names)
        self.config.verify_out_features_out_indices()
        self.num_features = None

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @out_indices.setter
    def out_indices(self, out_indices: list[int]) -> None:
        raise AttributeError("Set out_indices in the config (TerraMindBackbone.from_pretrained(..., out_indices=...)); "
                             "the neck is built for them.")  # fmt: skip

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @out_features.setter
    def out_features(self, out_features: list[str]) -> None:
        raise AttributeError("Set out_features in the config; the neck is built for them.")

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map (pyramid widths when the pyramid is on)."""
        return list(self.feature_neck.out_channels)

    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **modalities: torch.Tensor,
    ) -> BackboneOutput | tuple:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        modalities: further inputs by modality name, e.g. `S2L2A=x, S1RTC=y`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        keep_states = bool(output_hidden_states) or self.feature_neck.needs_hidden_states
        outputs, grid = self._encode(pixel_values, modalities, keep_states, bool(output_attentions))
        feature_maps = tuple(self.feature_neck(outputs, grid))
        hidden_states = outputs.hidden_states if output_hidden_states else None
        output = BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------- dense heads
@dataclass
class TerraMindPixelRegressionOutput(ModelOutput):
    """Output of TerraMindForPixelRegression.

    Args:
        loss: regression loss over finite label pixels, when `labels` are given.
        logits: predictions (B, num_regression_outputs, H, W) at the input size.
        hidden_states: with `output_hidden_states=True`, the encoder's merged hidden states.
        attentions: with `output_attentions=True`, the encoder's attention probabilities per block.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class TerraMindDenseModel(TerraMindTaskPreTrainedModel):
    """Encoder + neck + decode head producing per-pixel outputs at the input resolution."""

    task_modules = ("feature_neck", "decode_head")

    # Settings every dense model uses, besides those of its decode head.
    dense_settings = ("out_indices", "use_feature_pyramid", "decode_head", "head_dropout", "loss")
    uses = (*dense_settings, *sorted({name for names in HEAD_SETTINGS.values() for name in names}))

    def __init__(self, config: TerraMindConfig, num_outputs: int, used: tuple[str, ...] = ()):
        config.validate_task_settings()
        head = config.decode_head
        heads_settings = {name for other in DECODE_HEADS if other != head for name in HEAD_SETTINGS[other]}
        self.check_settings(config, (*(set(self.uses) - heads_settings | set(HEAD_SETTINGS[head])), *used))
        super().__init__(config)
        _check_spatial_merge(config, type(self).__name__)
        self.terramind = TerraMindModel(config)
        default = [config.num_hidden_layers] if head == "fcn" else None
        out_indices = resolve_out_indices(config, default)
        pyramid = task_setting(config, "use_feature_pyramid")
        if pyramid is None:
            pyramid = head != "fcn" and len(out_indices) == 4
        channels = feature_channels(config, self.terramind)
        self.feature_neck = TerraMindNeck(config, channels, out_indices, bool(pyramid))
        self.decode_head = build_decode_head(config, self.feature_neck.out_channels, num_outputs, head)
        add_head_dropout(self.decode_head, task_setting(config, "head_dropout"))
        self.post_init()
        self._apply_freezing()

    def _dense_forward(
        self, pixel_values: Any, modalities: dict[str, Any], output_hidden_states: bool | None,
        output_attentions: bool | None,
    ) -> tuple[torch.Tensor, TerraMindModelOutput]:  # fmt: skip
        keep_states = bool(output_hidden_states) or self.feature_neck.needs_hidden_states
        outputs, grid = self._encode(pixel_values, modalities, keep_states, bool(output_attentions))
        logits = self.decode_head(self.feature_neck(outputs, grid))
        size = (grid[0] * self.config.patch_size, grid[1] * self.config.patch_size)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, outputs

    @torch.no_grad()
    def predict_tiled(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        tile_size: int = 224,
        overlap: int = 64,
        batch_size: int = 8,
        progress: bool = False,
        **modalities: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, num_outputs, H, W) of a scene of any size, in eval mode: tiles of `tile_size` overlapping by
        `overlap` pixels, `batch_size` at a time on the model's device, blended with a smooth window (TerraTorch's
        tiled inference). Inputs are those of `forward` (standardized, e.g. by the processor; time series too) at
        any H, W: scenes smaller than a tile or not a multiple of the patch size are padded with 0 (the band mean)
        and the output cropped back. Returns float32 on the CPU; `softmax(dim=1)` gives class probabilities."""
        inputs = self._gather_inputs(pixel_values, modalities)
        dtype = next(self.parameters()).dtype

        def logits_of(tiles: dict[str, torch.Tensor]) -> torch.Tensor:
            tiles = {name: value.to(self.device, dtype if value.is_floating_point() else None)
                     for name, value in tiles.items()}  # fmt: skip
            return self(tiles).logits.float().cpu()

        was_training = self.training
        self.eval()
        try:
            return run_tiled(logits_of, inputs, tile_size, overlap, batch_size, multiple_of=self.config.patch_size,
                             progress=progress, description="TerraMind tiled prediction")  # fmt: skip
        finally:
            self.train(was_training)


class TerraMindForSemanticSegmentation(TerraMindDenseModel):
    """TerraMind with a segmentation decoder (UperNet by default, UNet or FCN): logits (B, num_labels, H, W).

    `labels` (B, H, W) class ids in [0, num_labels) or `ignore_index` give a cross-entropy loss (with
    `class_weights` if configured).
    """

    uses = (*TerraMindDenseModel.uses, "ignore_index", "class_weights")

    def __init__(self, config: TerraMindConfig, **kwargs: Any):
        apply_task_kwargs(config, kwargs, type(self))
        if config.num_labels < 2:
            raise ValueError(f"Semantic segmentation needs num_labels >= 2, got {config.num_labels}.")
        check_class_weights(config)
        parse_loss(config.loss or "ce", SEGMENTATION_LOSSES, "segmentation")
        super().__init__(config, config.num_labels, ("ignore_index", "class_weights"))

    @property
    def ignore_index(self) -> int:
        return -100 if self.config.ignore_index is None else int(self.config.ignore_index)

    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **modalities: torch.Tensor,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        labels: (B, H, W) (or (B, 1, H, W)) class ids; `ignore_index` pixels do not count.
        modalities: further inputs by modality name, e.g. `S2L2A=x, S1RTC=y`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        logits, outputs = self._dense_forward(pixel_values, modalities, output_hidden_states, output_attentions)
        loss = None
        if labels is not None:
            labels = check_segmentation_labels(labels, logits, self.config.num_labels, self.ignore_index)
            loss = segmentation_loss(logits, labels, task_setting(self.config, "loss") or "ce", self.ignore_index,
                                     task_setting(self.config, "class_weights"))  # fmt: skip
        hidden_states = outputs.hidden_states if output_hidden_states else None
        output = SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states,
                                         attentions=outputs.attentions)  # fmt: skip
        return output if return_dict else output.to_tuple()


class TerraMindForPixelRegression(TerraMindDenseModel):
    """TerraMind with a dense regression decoder: predictions (B, num_regression_outputs, H, W).

    `labels` (B, H, W) or (B, num_regression_outputs, H, W) give an MSE (or `regression_loss` "l1"/"huber") loss
    over finite label pixels (NaN marks nodata).
    """

    uses = (*TerraMindDenseModel.uses, "num_regression_outputs", "regression_loss", "ignore_index")

    def __init__(self, config: TerraMindConfig, **kwargs: Any):
        apply_task_kwargs(config, kwargs, type(self))
        config.validate_task_settings()
        loss, older = config.loss, config.regression_loss
        if loss is not None and older != "mse" and loss != older:
            raise ValueError(f"loss={loss!r} and regression_loss={older!r} disagree; set `loss` only.")
        parse_loss(self._loss_name(config), REGRESSION_LOSSES, "regression")
        used = ("num_regression_outputs", "regression_loss", "ignore_index")
        super().__init__(config, int(task_setting(config, "num_regression_outputs")), used)

    @staticmethod
    def _loss_name(config: TerraMindConfig) -> Any:
        return task_setting(config, "loss") or task_setting(config, "regression_loss")

    @property
    def ignore_index(self) -> float | None:
        """Label value that does not count; only when set explicitly (regression targets may take any value)."""
        return self.config.ignore_index

    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **modalities: torch.Tensor,
    ) -> TerraMindPixelRegressionOutput | tuple:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        labels: (B, H, W) targets (one output) or (B, num_regression_outputs, H, W); NaN pixels do not count.
        modalities: further inputs by modality name, e.g. `S2L2A=x, S1RTC=y`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        logits, outputs = self._dense_forward(pixel_values, modalities, output_hidden_states, output_attentions)
        loss = None
        if labels is not None:
            labels = check_regression_labels(labels, logits)
            loss = regression_loss(logits, labels, self._loss_name(self.config), self.ignore_index)
        hidden_states = outputs.hidden_states if output_hidden_states else None
        output = TerraMindPixelRegressionOutput(loss=loss, logits=logits, hidden_states=hidden_states,
                                                attentions=outputs.attentions)  # fmt: skip
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------- classification
class TerraMindForImageClassification(TerraMindTaskPreTrainedModel):
    """TerraMind with a linear classifier on the mean of the final (normed, merged) tokens: logits (B, num_labels).

    Losses follow Transformers: `problem_type` "single_label_classification" (int labels), "multi_label_classification"
    (float multi-hot labels) or "regression" (num_labels == 1).
    """

    task_modules = ("classifier",)
    uses = ("classifier_dropout", "head_dropout", "ignore_index", "class_weights")

    def __init__(self, config: TerraMindConfig, **kwargs: Any):
        apply_task_kwargs(config, kwargs, type(self))
        self.check_settings(config, self.uses)
        dropout, older = task_setting(config, "head_dropout"), task_setting(config, "classifier_dropout") or 0.0
        if dropout and older and dropout != older:
            raise ValueError(f"head_dropout={dropout} and classifier_dropout={older} disagree; set one of them.")
        check_class_weights(config)
        super().__init__(config)
        self.num_labels = config.num_labels
        self.terramind = TerraMindModel(config)
        channels = feature_channels(config, self.terramind)
        self.dropout = nn.Dropout(dropout or older)
        self.classifier = nn.Linear(channels, config.num_labels)
        self.post_init()
        self._apply_freezing()

    @staticmethod
    def pool(last_hidden_state: Any, num_register_tokens: int = 0) -> torch.Tensor:
        """Mean over tokens; for "dict" outputs the mean of the per-modality means (registers excluded)."""
        if isinstance(last_hidden_state, dict):
            parts = [v.mean(dim=1) for k, v in last_hidden_state.items() if k != "register_tokens"]
            return torch.stack(parts, dim=1).mean(dim=1)
        return last_hidden_state[:, num_register_tokens:].mean(dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **modalities: torch.Tensor,
    ) -> ImageClassifierOutput | tuple:
        r"""
        pixel_values: one tensor (the first configured modality) or a dict modality -> tensor.
        labels: (B,) class ids, (B, num_labels) multi-hot floats, or (B,) floats for regression.
        modalities: further inputs by modality name, e.g. `S2L2A=x, S1RTC=y`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        outputs, _ = self._run_encoder(pixel_values, modalities, output_hidden_states, output_attentions)
        registers = self.config.num_register_tokens if self.config.merge_method is None else 0
        logits = self.classifier(self.dropout(self.pool(outputs.last_hidden_state, registers)))
        loss = None
        if labels is not None:
            loss = self._classification_loss(logits, labels)
        hidden_states = outputs.hidden_states if output_hidden_states else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states,
                                       attentions=outputs.attentions)  # fmt: skip
        return output if return_dict else output.to_tuple()

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            labels = labels.reshape(-1)
            ignore = -100 if self.config.ignore_index is None else int(self.config.ignore_index)
            bad = labels[(labels != ignore) & ((labels < 0) | (labels >= self.num_labels))]
            if bad.numel():
                raise ValueError(f"Class ids {sorted(set(bad.tolist()))[:10]} are out of range for num_labels="
                                 f"{self.num_labels} (valid: 0..{self.num_labels - 1} or ignore_index="
                                 f"{ignore}).")  # fmt: skip
            weights = task_setting(self.config, "class_weights")
            return classification_cross_entropy(logits, labels.long(), ignore, weights)
        if labels.shape != logits.shape:
            raise ValueError(f"Multi-label labels must be (B, num_labels)={tuple(logits.shape)}, got "
                             f"{tuple(labels.shape)}.")  # fmt: skip
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


_TASK_MODELS = (TerraMindBackbone, TerraMindForSemanticSegmentation, TerraMindForPixelRegression,
                TerraMindForImageClassification)  # fmt: skip


# ----------------------------------------------------------------------------- label checks
def check_class_weights(config: TerraMindConfig) -> None:
    weights = config.class_weights
    if weights is not None and len(weights) != config.num_labels:
        raise ValueError(f"class_weights has {len(weights)} values for num_labels={config.num_labels}.")


def check_segmentation_labels(
    labels: torch.Tensor, logits: torch.Tensor, num_labels: int, ignore_index: int
) -> torch.Tensor:
    """(B, H, W) int64 class ids matching the logits, or a ValueError saying what is wrong."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    expected = (logits.shape[0], *logits.shape[-2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must be (B, H, W) = {expected} class ids matching the input, got shape "
                         f"{tuple(labels.shape)}.")  # fmt: skip
    labels = labels.to(logits.device)
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("labels must be integer class ids, got fractional values (a regression target?).")
        labels = labels.long()
    elif labels.dtype != torch.long:
        labels = labels.long()
    valid = labels[labels != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_labels):
        bad = torch.unique(valid[(valid < 0) | (valid >= num_labels)]).tolist()
        raise ValueError(f"labels hold class ids {bad[:10]} outside 0..{num_labels - 1} (num_labels={num_labels}); "
                         f"mark unlabeled pixels with ignore_index={ignore_index} or raise num_labels.")  # fmt: skip
    return labels


def check_regression_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Regression targets shaped like the predictions, or a ValueError."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.ndim == 3 and logits.shape[1] == 1:
        labels = labels[:, None]
    if labels.shape != logits.shape:
        raise ValueError(f"labels must be (B, H, W) or (B, C, H, W) = {tuple(logits.shape)} matching the input, got "
                         f"shape {tuple(labels.shape)}.")  # fmt: skip
    return labels.to(logits.device)


__all__ = [
    "TerraMindBackbone",
    "TerraMindFeaturePyramid",
    "TerraMindForImageClassification",
    "TerraMindForPixelRegression",
    "TerraMindForSemanticSegmentation",
    "TerraMindPixelRegressionOutput",
    "TerraMindTaskPreTrainedModel",
    "default_out_indices",
    "resolve_out_indices",
]
