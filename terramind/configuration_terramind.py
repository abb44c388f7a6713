"""Configuration of TerraMind (IBM/ESA any-to-any Earth-observation foundation model)."""

import copy
import dataclasses
import difflib
import functools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import logging

from .modalities import (
    GENERATABLE_MODALITIES,
    MODALITIES,
    RAW_IMAGE_MODALITIES,
    TOKENIZER_MODALITIES,
    ModalitySpec,
    resolve_modality,
)

logger = logging.get_logger(__name__)

# The four released v1 architectures. tiny/small: biases + GELU MLP; base/large: no biases + SwiGLU (`fc3`).
TERRAMIND_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=192, num_attention_heads=3, num_hidden_layers=12, num_decoder_layers=4,
                 qkv_bias=True, proj_bias=True, mlp_bias=True, hidden_act="gelu", gated_mlp=False),
    "small": dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=12, num_decoder_layers=6,
                  qkv_bias=True, proj_bias=True, mlp_bias=True, hidden_act="gelu", gated_mlp=False),
    "base": dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=12, num_decoder_layers=12,
                 qkv_bias=False, proj_bias=False, mlp_bias=False, hidden_act="silu", gated_mlp=True),
    "large": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, num_decoder_layers=24,
                  qkv_bias=False, proj_bias=False, mlp_bias=False, hidden_act="silu", gated_mlp=True),
}  # fmt: skip

MERGE_METHODS = ("mean", "max", "concat", "dict", None)
# TerraTorch's default stages for dense decoders (its SelectIndices [2, 5, 8, 11] / [5, 11, 17, 23], counted here
# as "stageN" with the last one normed): the task heads' default, and a preset for `TerraMindBackbone`.
TERRATORCH_OUT_INDICES: dict[str, list[int]] = {
    "tiny": [3, 6, 9, 12], "small": [3, 6, 9, 12], "base": [3, 6, 9, 12], "large": [6, 12, 18, 24]
}  # fmt: skip
# Config keys of earlier versions: TiM sampling now lives in the frozen generator's generation config.
LEGACY_TIM_SAMPLING = ("tim_decoding_steps", "tim_temperature", "tim_top_p", "tim_top_k")
# Task heads (modeling_terramind_tasks.py) and their losses (losses.py, TerraTorch's names).
DECODE_HEADS = ("upernet", "unet", "fcn")
TEMPORAL_MERGES = ("mean", "max", "concat", "diff")
SEGMENTATION_LOSSES = ("ce", "dice", "focal", "lovasz", "jaccard")
REGRESSION_LOSSES = ("mse", "mae", "l1", "rmse", "huber")
# The task settings (config fields read by the task models; each model says which it uses, see `uses`).
TASK_SETTINGS = (
    "use_feature_pyramid", "decode_head", "decoder_hidden_size", "pool_scales", "unet_channels", "fcn_num_convs",
    "fcn_concat_input", "ignore_index", "class_weights", "num_regression_outputs", "regression_loss",
    "classifier_dropout", "freeze_backbone", "loss", "head_dropout", "temporal_merge", "num_timesteps",
    "temporal_subset_lengths",
)  # fmt: skip
# Keywords a config takes besides its fields: PreTrainedConfig's (popped by its `__post_init__`), the backbone
# stages, and entries that saving writes.
_CONFIG_KEYWORDS = {"out_features", "out_indices", "num_labels", "torch_dtype", "name_or_path", "output_attentions",
                    "attn_implementation", "experts_implementation", "per_layer_config", "model_type", "auto_map",
                    "custom_pipelines", "stage_names"}  # fmt: skip
# Keywords of `from_pretrained` / `from_dict` that reach `from_dict` besides settings.
_LOADING_KEYWORDS = {"return_unused_kwargs", "trust_remote_code", "code_revision", "name_or_path"}
# Set while a saved config is read back: it may carry anything (settings of older versions, of Trainer, of PEFT).
_LOADING: ContextVar[bool] = ContextVar("terramind_config_loading", default=False)
DEFAULT_TOKENIZER_REPOS = {m: f"ibm-esa-geospatial/TerraMind-1.0-Tokenizer-{m}" for m in TOKENIZER_MODALITIES}
DEFAULT_TOKENIZER_REPOS["Coordinates"] = "ibm-esa-geospatial/TerraMind-1.0-Tokenizer-Coords"


@strict
class TerraMindConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a TerraMind v1 model (encoder, and the decoder used for generation and TiM).

    Args:
        hidden_size: width of the transformer.
        num_hidden_layers: encoder blocks.
        num_decoder_layers: decoder blocks (generation, Thinking-in-Modalities).
        num_attention_heads: heads of every attention layer.
        mlp_ratio: MLP width over `hidden_size`; a gated MLP (SwiGLU) uses 2/3 of it, as the original.
        intermediate_size: MLP hidden width; derived from `mlp_ratio` when not given.
        hidden_act: MLP activation ("gelu" for tiny/small, "silu" with `gated_mlp` for base/large).
        gated_mlp: SwiGLU MLP with a third projection `fc3`.
        qkv_bias, proj_bias, mlp_bias: biases of the attention input/output projections and of the MLP.
        layer_norm_eps: epsilon of the (bias-free) LayerNorms.
        image_size: size the positional embeddings are built for; other sizes (multiples of `patch_size`)
            interpolate them bicubically, as the original does.
        patch_size: patch size of the image embeddings.
        modalities: encoder inputs: pretrained names (S2L1C, S2L2A, RGB, S1GRD, S1RTC, DEM, LULC, NDVI,
            Coordinates and the original's aliases, e.g. "S2L1C_L8", "sen2l2a", "location") and new modalities
            as `{"NAME": num_channels}`: always a new raw patch embedding keyed by that name, also when the name is a
            pretrained one (`{"NDVI": 1}` takes raw NDVI, not the tokenized NDVI). `None` or empty with `in_chans`
            gives one new modality "image".
        in_chans: channels of the new modality "image" when `modalities` is empty.
        bands: per-modality band names or indices. For a pretrained image modality the patch embedding takes the
            pretrained columns by name (subsets and reorderings); unknown names get fresh columns. An int is the
            index of a pretrained band (TerraTorch configs write `S1GRD: [0, 1]` for VV, VH).
        merge_method: how the per-modality tokens are merged in the outputs: "mean", "max", "concat" (along
            channels, learned token for missing modalities), "dict" (modality -> tokens) or None (all tokens).
        modality_drop_rate: probability of dropping each input modality but one during training.
        num_register_tokens: learned register tokens prepended to the sequence.
        drop_path_rate: stochastic depth, linearly increasing over the encoder blocks.
        attention_dropout, hidden_dropout: dropout rates of attention probabilities and block outputs.
        tim_modalities: Thinking-in-Modalities: modalities the model generates for itself and appends to its
            input (the original `_tim` models default to ["LULC"]). Empty disables TiM.
            Their sampling (steps, temperature, top-k, top-p) is the frozen generator's generation config
            (`generation_config.json` of the folder, or `tim_generation_config=` at loading). Image modalities or
            Coordinates (up to 4 sampled tokens, as the original).
        tim_chained_generations: True (the original's default): each TiM modality is conditioned on the inputs and
            the TiM modalities generated before it; False: on the inputs only.
        ignore_unknown_modalities: inputs of modalities the model is not configured for raise a one-line error
            (default); True warns and drops them, as the original does (for TerraTorch configs relying on that).
        tokenizer_paths: modality -> folder or Hub repo of its tokenizer (defaults to the official repos).
        initializer_range: std of the normal init of embeddings.
        generator_modalities: the modalities whose embeddings `TerraMindForGeneration` holds (default: every
            pretrained one); set when a generator is built for a subset, so that it reloads as built.
        target_reveal_rate: training `TerraMindForGeneration` with labels reveals a fraction, drawn uniformly in
            [0, target_reveal_rate] per batch, of each image target's tokens as context (multi-step ROAR
            decoding); 0 predicts every target token from the inputs (one-step generation).
        out_indices / out_features: backbone stages (`stage_names`: "stem" = embeddings, "stage1".."stageL" = block
            outputs, the last one normed), kept in sync as in Transformers' backbones. Neither given: the last stage
            for `TerraMindBackbone`, and the task heads' own defaults (`TERRATORCH_OUT_INDICES` for UperNet/UNet).
    """

    model_type = "terramind"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_decoder_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    intermediate_size: int | None = None
    hidden_act: str = "silu"
    gated_mlp: bool = True
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 16
    modalities: list[str | dict[str, int]] | dict[str, int] | None = None
    in_chans: int = 3
    bands: dict[str, list[str | int]] | None = None
    merge_method: Literal["mean", "max", "concat", "dict"] | None = "mean"
    modality_drop_rate: float | int = 0.0
    num_register_tokens: int = 0
    drop_path_rate: float | int = 0.0
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    tim_modalities: list[str] | None = None
    tim_chained_generations: bool = True
    ignore_unknown_modalities: bool = False
    tokenizer_paths: dict[str, str] | None = None
    initializer_range: float = 0.02
    variant: str | None = None
    generator_modalities: list[str] | None = None
    target_reveal_rate: float | int = 0.0
    tie_word_embeddings: bool = True  # the decoder's logits heads share the token embeddings
    # task settings (TASK_SETTINGS), read by the task models of modeling_terramind_tasks.py
    use_feature_pyramid: bool | None = None
    decode_head: str = "upernet"
    decoder_hidden_size: int = 256
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    unet_channels: list[int] | tuple[int, ...] = (512, 256, 128, 64)
    fcn_num_convs: int = 2
    fcn_concat_input: bool = False
    ignore_index: int | float | None = None
    class_weights: list[float | int] | None = None
    num_regression_outputs: int = 1
    regression_loss: str = "mse"
    classifier_dropout: float | int | None = 0.0
    freeze_backbone: bool = False
    loss: str | list[str] | dict[str, float | int] | None = None
    head_dropout: float | int = 0.0
    temporal_merge: str = "mean"
    num_timesteps: int | None = None
    temporal_subset_lengths: list[int] | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = int(self.hidden_size * self.mlp_ratio)
            if self.gated_mlp:  # the original keeps the parameter count of the plain MLP
                self.intermediate_size = int(2 * self.intermediate_size / 3)
        if isinstance(self.modalities, dict):
            self.modalities = [self.modalities]
        self.modalities = list(self.modalities) if self.modalities else [{"image": self.in_chans}]
        self.bands = dict(self.bands) if self.bands else None
        self.tim_modalities = list(self.tim_modalities or [])
        self.tokenizer_paths = dict(self.tokenizer_paths or {})
        self.pool_scales = list(self.pool_scales)
        self.unet_channels = list(self.unet_channels)
        if _LOADING.get():  # a folder saved by an earlier version: its TiM sampling settings no longer apply
            legacy = [name for name in LEGACY_TIM_SAMPLING if name in kwargs]
            for name in legacy:
                kwargs.pop(name)
            check_legacy_tim_settings(legacy, warn=True)
        check_legacy_tim_settings(kwargs)
        if not _LOADING.get():  # written by the user: a typo is an error (a saved config may carry anything)
            refuse_unknown_settings(kwargs, type(self).known_settings(), type(self).__name__)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_features=kwargs.pop("out_features", None),
                                                out_indices=kwargs.pop("out_indices", None))  # fmt: skip
        super().__post_init__(**kwargs)

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> "TerraMindConfig":
        """Config of a released v1 architecture ("tiny", "small", "base", "large"); kwargs override."""
        if variant not in TERRAMIND_VARIANTS:
            raise ValueError(f"Unknown TerraMind variant {variant!r}; expected one of {', '.join(TERRAMIND_VARIANTS)}.")
        return cls(**{**TERRAMIND_VARIANTS[variant], "variant": variant, **kwargs})

    @classmethod
    def known_settings(cls) -> set[str]:
        """Every keyword a TerraMind config takes: its fields (also those of PreTrainedConfig and the task heads) and
        the keywords PreTrainedConfig and generation configs accept."""
        return _known_settings(cls)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Transformers' `from_dict`, whose overrides (`from_pretrained(path, num_hidden_layers=2)`) are set after
        construction: derived stages are rebuilt and every validator runs again on the result.

        The saved dict may carry anything (older versions, values set by Trainer or PEFT); the overrides are the
        user's: legacy TiM settings are refused with where they moved, and unless a model takes the unknown ones
        (`return_unused_kwargs`, then the model checks them), an unknown one is an error naming the nearest."""
        check_legacy_tim_settings(kwargs)
        if not kwargs.get("return_unused_kwargs"):
            refuse_unknown_settings({k: v for k, v in kwargs.items() if k not in _LOADING_KEYWORDS},
                                    cls.known_settings(), cls.__name__)  # fmt: skip
        with reading_saved_config():
            out = super().from_dict(config_dict, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, config.num_hidden_layers + 1)]
        config.set_output_features_output_indices(out_features=config._out_features, out_indices=config._out_indices)
        config.validate()
        return out

    @classmethod
    def from_json_file(cls, json_file: Any):
        """Transformers' `from_json_file`; a saved config may carry anything."""
        with reading_saved_config():
            return super().from_json_file(json_file)

    # ------------------------------------------------------------------ backbone stages
    def set_output_features_output_indices(self, out_features: list | None, out_indices: list | None) -> None:
        """As Transformers' backbones (aligned and checked), except that giving neither stores neither: the backbone
        then returns the last stage, and task heads use their own default (see `out_indices`)."""
        if out_features is None and out_indices is None:
            self._out_features = self._out_indices = None
            return
        super().set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    @property
    def out_features(self) -> list[str]:
        return list(self._out_features) if self._out_features is not None else [self.stage_names[-1]]

    @out_features.setter
    def out_features(self, out_features: list[str] | None) -> None:
        self.set_output_features_output_indices(out_features=out_features, out_indices=None)

    @property
    def out_indices(self) -> list[int]:
        return list(self._out_indices) if self._out_indices is not None else [len(self.stage_names) - 1]

    @out_indices.setter
    def out_indices(self, out_indices: list[int] | tuple[int, ...] | None) -> None:
        out_indices = list(out_indices) if out_indices is not None else None
        self.set_output_features_output_indices(out_features=None, out_indices=out_indices)

    @property
    def out_indices_given(self) -> bool:
        """Whether stages were chosen (task heads fall back to their own default otherwise)."""
        return self._out_indices is not None

    # ------------------------------------------------------------------ validation (run by `validate()`)
    def validate_output_attentions(self) -> None:
        """Every TerraMind attention returns its probabilities when asked (that call runs eagerly), so
        `output_attentions` goes with any attention implementation."""

    def validate_architecture(self) -> None:
        """Fail early, with what is allowed, instead of building a model that fails later."""
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads}).")  # fmt: skip
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by 4 (2-D sin-cos embeddings).")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}).")
        if not 0.0 <= self.modality_drop_rate <= 1.0:
            raise ValueError(f"modality_drop_rate must be in [0, 1], got {self.modality_drop_rate}.")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}.")
        for name in ("drop_path_rate", "attention_dropout", "hidden_dropout", "target_reveal_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")

    def validate_task_settings(self) -> None:
        """Values of the task settings; also run by each task model, since settings may be assigned later."""
        one_of("decode_head", self.decode_head, DECODE_HEADS)
        one_of("temporal_merge", self.temporal_merge, TEMPORAL_MERGES)
        one_of("regression_loss", self.regression_loss, REGRESSION_LOSSES)
        if self.loss is not None:
            names = [self.loss] if isinstance(self.loss, str) else list(self.loss)
            for name in names:
                one_of("loss", name, SEGMENTATION_LOSSES + REGRESSION_LOSSES,
                       f"{', '.join(SEGMENTATION_LOSSES)} (segmentation), {', '.join(REGRESSION_LOSSES)} "
                       f"(regression), or a weighted combination such as {{'ce': 0.5, 'dice': 0.5}}")  # fmt: skip
        for name in ("head_dropout", "classifier_dropout"):
            value = getattr(self, name) or 0.0
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
        for name in ("decoder_hidden_size", "fcn_num_convs", "num_regression_outputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}.")
        if not self.pool_scales or not self.unet_channels or min(self.pool_scales + self.unet_channels) < 1:
            raise ValueError(f"pool_scales and unet_channels must be non-empty lists of positive ints, got "
                             f"{self.pool_scales} and {self.unet_channels}.")  # fmt: skip
        self._validate_temporal_settings()

    def _validate_temporal_settings(self) -> None:
        """`temporal_merge`, `num_timesteps` and `temporal_subset_lengths` must fit together (TerraTorch's rules)."""
        merge, steps, subsets = self.temporal_merge, self.num_timesteps, self.temporal_subset_lengths
        if steps is not None and steps < 1:
            raise ValueError(f"num_timesteps must be a positive int, got {steps!r}.")
        if subsets is not None:
            if not subsets or min(subsets) < 1:
                raise ValueError(f"temporal_subset_lengths must be a list of positive ints, got {subsets!r}.")
            if steps is not None and sum(subsets) != steps:
                raise ValueError(f"temporal_subset_lengths {subsets} must add up to num_timesteps={steps}.")
        if merge == "concat" and steps is None:
            raise ValueError("temporal_merge='concat' needs num_timesteps (the decoder's input width depends on it).")
        merged = len(subsets) if subsets is not None else steps
        if merge == "diff" and merged is not None and merged != 2:
            raise ValueError(f"temporal_merge='diff' takes the difference of two time steps (or of two "
                             f"temporal_subset_lengths groups), got {merged}.")  # fmt: skip

    def changed_task_settings(self) -> dict[str, Any]:
        """Task settings not at their default (the backbone stages when chosen)."""
        defaults = _task_defaults(type(self))
        changed = {name: getattr(self, name) for name in TASK_SETTINGS if getattr(self, name) != defaults[name]}
        if self.out_indices_given:
            changed["out_indices"] = self.out_indices
        return changed

    def validate_modalities(self) -> None:
        """Modality names, band choices and Thinking-in-Modalities settings."""
        specs = self.modality_specs()  # validates names and duplicates
        new = self.new_modalities()
        for name, channels in specs.items():
            if channels is None and self.bands and name in self.bands:
                raise ValueError(f"bands given for {name}, which is not an image modality.")
        for key in self.bands or {}:
            target = self.modality_key(key)
            if target not in specs:
                raise ValueError(f"bands given for modality {key!r}, which is not in modalities "
                                 f"({', '.join(specs)}).")  # fmt: skip
            if target in new:
                raise ValueError(f"bands given for new modality {key!r}, which has no pretrained bands; a new "
                                 f"modality is set by its channel count ({{'{key}': num_channels}}).")  # fmt: skip
            if MODALITIES[target].kind != "image":
                raise ValueError(f"bands can only be chosen for raw image modalities "
                                 f"({', '.join(RAW_IMAGE_MODALITIES)}), not {key!r}.")  # fmt: skip
            self.band_names(target)  # names and indices
        for name in self.tim_modalities:
            canonical = resolve_modality(name).removesuffix("_TOKENS")
            if canonical not in GENERATABLE_MODALITIES:
                raise ValueError(f"TiM modality {name!r} cannot be generated as tokens; choose from "
                                 f"{', '.join(GENERATABLE_MODALITIES)}.")  # fmt: skip
        if self.tim_modalities:
            if new:
                raise ValueError(f"Thinking-in-Modalities works with pretrained modalities only (its generator was "
                                 f"trained on them); got new modalities {list(new)}.")  # fmt: skip
            if self.bands:
                raise ValueError("Thinking-in-Modalities does not support band subsets: the frozen generator needs "
                                 f"the pretrained bands of each input; got bands={self.bands}.")  # fmt: skip

    def modality_specs(self) -> dict[str, int | None]:
        """Embedding key -> input channels (None for token/sequence modalities), in configured order.

        Pretrained modalities are keyed by their canonical name ("S2L2A"), new ones by the user's name (which may be
        a pretrained name: `{"NDVI": 1}` is a new raw modality keyed "NDVI").
        """
        out: dict[str, int | None] = {}
        new = self.new_modalities()
        for entry in self.modalities:
            if isinstance(entry, dict):
                for name, channels in entry.items():
                    if name in out:
                        raise ValueError(f"Modality {name!r} is configured twice.")
                    out[name] = channels
                continue
            key = resolve_modality(entry)
            if key in new:
                raise ValueError(f"Modality {key!r} is configured twice: as the pretrained {entry!r} and as a new "
                                 f"modality {{'{key}': {new[key]}}}; give the new one another name.")  # fmt: skip
            if key in out:
                raise ValueError(f"Modalities {self.modality_aliases().get(key, key)!r} and {entry!r} both map to the "
                                 f"pretrained embedding {key}; configure it once.")  # fmt: skip
            out[key] = self._channels(key) if MODALITIES[key].kind == "image" else None
        return out

    def new_modalities(self) -> dict[str, int]:
        """New modalities (`{"NAME": num_channels}` entries): name -> channels. Each is a new raw patch embedding."""
        out: dict[str, int] = {}
        for entry in self.modalities:
            if not isinstance(entry, dict):
                continue
            for name, channels in entry.items():
                if not isinstance(name, str) or not name or "." in name:
                    raise ValueError(f"A new modality needs a non-empty name without dots, got {name!r}.")
                if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
                    raise ValueError(f"New modality {name!r} must be given as {{'{name}': num_channels}} with "
                                     f"a positive int, got {channels!r}.")  # fmt: skip
                out[name] = channels
        return out

    def pretrained_spec(self, key: str) -> ModalitySpec | None:
        """The pretrained modality an embedding key stands for; None for new modalities (whatever their name)."""
        return None if key in self.new_modalities() else MODALITIES.get(key)

    def modality_aliases(self) -> dict[str, str]:
        """Embedding key -> the name the user configured it with (e.g. "S2L2A" -> "S2L2A_L8")."""
        out = {}
        for entry in self.modalities:
            if isinstance(entry, dict):
                out.update({k: k for k in entry})
            else:
                out.setdefault(resolve_modality(entry), entry)
        return out

    def modality_key(self, name: str) -> str:
        """Embedding key of a user-facing modality name (configured alias, canonical name or new modality)."""
        for entry in self.modalities:
            if isinstance(entry, dict) and name in entry:
                return name
            if entry == name:
                return resolve_modality(name)
        key = resolve_modality(name)
        if key in self.new_modalities():  # e.g. "ndvi" names the pretrained NDVI, not the new modality "NDVI"
            raise ValueError(f"{name!r} names the pretrained {key}, but {key!r} is a new modality of this model.")
        return key

    def band_names(self, key: str) -> list[str] | None:
        """Bands configured for an embedding key, as names (indices are pretrained positions), or None when the
        pretrained order is used."""
        for name, bands in (self.bands or {}).items():
            if self.modality_key(name) == key:
                pretrained = MODALITIES[key].bands
                names = []
                for band in bands:
                    if isinstance(band, int) and not isinstance(band, bool) and 0 <= band < len(pretrained):
                        names.append(pretrained[band])
                    elif isinstance(band, str) and band:
                        names.append(band)
                    else:
                        raise ValueError(f"bands[{name!r}] takes band names or indices 0..{len(pretrained) - 1} of "
                                         f"{key}'s pretrained bands {list(pretrained)}, got {band!r}.")  # fmt: skip
                if not names or len(set(names)) != len(names):
                    raise ValueError(f"bands[{name!r}] must be a non-empty list of distinct bands, got {bands!r}.")
                return names
        return None

    def _channels(self, key: str) -> int:
        names = self.band_names(key)
        return len(names) if names else MODALITIES[key].num_channels

    def to_dict(self) -> dict[str, Any]:
        output = copy.deepcopy(super().to_dict())
        output.pop("stage_names", None)  # derived from num_hidden_layers
        return output


@contextmanager
def reading_saved_config() -> Iterator[None]:
    """While a saved config is read back, any entry is accepted (and kept, as Transformers does)."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


@functools.cache
def _known_settings(cls: type[TerraMindConfig]) -> frozenset[str]:
    fields = {field.name for field in dataclasses.fields(cls)}
    with reading_saved_config():
        saved = set(cls().to_dict())
    generation = set(GenerationConfig._get_default_generation_params())  # PreTrainedConfig drops these
    return frozenset(name for name in fields | saved | generation | _CONFIG_KEYWORDS if not name.startswith("_"))


@functools.cache
def _task_defaults(cls: type[TerraMindConfig]) -> dict[str, Any]:
    with reading_saved_config():
        default = cls()
    return {name: getattr(default, name) for name in TASK_SETTINGS}


def nearest(name: str, choices: Iterable[str]) -> str:
    """The hint " (did you mean 'x'?)" for the closest choice, or ""."""
    match = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def one_of(name: str, value: Any, allowed: tuple[str, ...], listed: str | None = None) -> None:
    """A setting with a fixed set of values: an error listing them (and the nearest) otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {listed or ', '.join(allowed)}; got {value!r}"
                         f"{nearest(value, allowed) if isinstance(value, str) else ''}.")  # fmt: skip


def refuse_unknown_settings(given: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Keywords not in `known`: a TypeError naming, for each, the nearest setting that a TerraMind class knows."""
    known = set(known)
    unknown = sorted(name for name in given if name not in known and not name.startswith("_"))
    if unknown:
        settings = TerraMindConfig.known_settings()
        hints = "; ".join(f"{name!r}{nearest(name, settings)}" for name in unknown)
        raise TypeError(f"{where} got unknown settings: {hints}. No TerraMind class knows "
                        f"{'it' if len(unknown) == 1 else 'them'} (see TerraMindConfig's fields).")  # fmt: skip


def check_legacy_tim_settings(given: Iterable[str], warn: bool = False) -> None:
    """TiM sampling settings of earlier versions: an error saying where they went (a warning that they are ignored
    for a saved config, which must still load)."""
    legacy = sorted(name for name in given if name in LEGACY_TIM_SAMPLING)
    if legacy:
        moved = (f"{', '.join(legacy)} moved to the generation config: pass "
                 f"tim_generation_config=TerraMindGenerationConfig(...) when loading a TiM model")  # fmt: skip
        if not warn:
            raise ValueError(f"{moved}.")
        logger.warning(f"Ignoring {', '.join(legacy)} of this saved config: {moved} (or save its "
                       f"generation_config.json).")  # fmt: skip


__all__ = ["TerraMindConfig", "TERRAMIND_VARIANTS", "TERRATORCH_OUT_INDICES", "DEFAULT_TOKENIZER_REPOS"]
