"""Fine-tuning TerraMind with `Trainer`: model, data, LoRA adapters and metrics in one reusable function.

`finetune(FinetuningArguments(...), TrainingArguments(...))` is what `scripts/finetune_segmentation.py` (and the
`terramind finetune` CLI) run; it works unchanged in one process and under `accelerate launch` (DDP).

LoRA (PEFT): `apply_lora(model)` adapts the attention (`qkv`, `proj`) and MLP (`fc1`, `fc2`, and `fc3` of the
SwiGLU base/large models) projections of TerraMind; with the plain names `proj` also matches the patch embeddings'
`proj` (each modality's input projection), so they are adapted too, as with TerraTorch's `target_modules`. The task
modules (neck, decoder, classifier) are trained fully and saved with the adapter (`modules_to_save`). The frozen
generator of Thinking-in-Modalities models is never adapted.

`replace_qkv="qkv"` with targets `qkv.q_linear` / `qkv.v_linear` (TerraTorch's option and names) adapts the query
and value parts of the fused `qkv` projection separately. TerraTorch splits the module into three linears; here the
module stays as it is, so that saved adapters load onto a plain base with `PeftModel.from_pretrained`: the LoRA of
`qkv` gets rank r per part, and its `lora_B` is block-diagonal (part i's output rows only see part i's r ranks; the
other blocks are zero and receive no gradient). That is exactly one rank-r LoRA per part on a rank-r-per-part
budget; the zero blocks are stored too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from ..configuration_terramind import TerraMindConfig
from ..modeling_terramind import TerraMindForGeneration, TerraMindModel
from ..modeling_terramind_tasks import (
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
)
from .data_collator import TerraMindDataCollator
from .data_generation import build_generation_dataset, token_accuracy_metrics, token_predictions
from .data_terramind import build_dataset
from .metrics import build_compute_metrics, preprocess_logits_for_metrics

logger = logging.get_logger(__name__)

LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2", "fc3")
QKV_PARTS = ("q", "k", "v")
LOSS_HELP = (
    'ce, dice, focal, lovasz, jaccard (regression: mse, mae, rmse, huber) or JSON: \'{"ce": 0.5, "dice": 0.5}\'.'
)
TASK_MODELS = {
    "segmentation": TerraMindForSemanticSegmentation,
    "regression": TerraMindForPixelRegression,
    "classification": TerraMindForImageClassification,
}


# ----------------------------------------------------------------------------- LoRA
def lora_target_modules(config: TerraMindConfig) -> list[str]:
    """LoRA targets of a TerraMind config: qkv, proj, fc1, fc2 (+ fc3 for gated MLPs)."""
    return [m for m in LORA_TARGET_MODULES if m != "fc3" or config.gated_mlp]


def lora_modules_to_save(model: torch.nn.Module) -> list[str]:
    """Task modules trained from scratch (saved with the adapter): e.g. ["feature_neck", "decode_head"]."""
    return [name for name in getattr(model, "task_modules", ()) if getattr(model, name, None) is not None
            and any(True for _ in getattr(model, name).parameters())]  # fmt: skip


def apply_lora(
    model: torch.nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
    replace_qkv: str | None = None,
    **lora_kwargs: Any,
):
    """Wrap a TerraMind model (task head, TerraMindModel or the generator) in a PEFT LoRA model; only adapters and
    heads train. On `TerraMindForGeneration` the adapters go into the encoder and decoder blocks (cross-attention
    included) and the modality embeddings stay frozen.

    `replace_qkv="qkv"` with targets such as `["qkv.q_linear", "qkv.v_linear", "mlp.fc1", "mlp.fc2"]` (TerraTorch's
    `peft_config`) adapts q and v of the fused projection separately (see the module docstring). The adapter records
    where the base model came from (its Hub id, or the absolute path of a local folder).
    """
    from peft import LoraConfig, get_peft_model

    from .adapters import base_model_source

    config = model.config
    encoder = model if isinstance(model, TerraMindModel) else getattr(model, "terramind", None)
    generator = isinstance(model, TerraMindForGeneration)
    if generator:  # adapters in the encoder and decoder blocks; the modality embeddings and logits heads stay
        lora_kwargs.setdefault("exclude_modules", r".*embeddings\..*")
    elif getattr(encoder, "tim_generator", None) is not None:
        lora_kwargs.setdefault("exclude_modules", r".*tim_generator\..*")
    if target_modules is None:
        target_modules = lora_target_modules(config) + (["q", "kv"] if generator else [])  # + cross-attention
    elif not isinstance(target_modules, str):  # a str is a regex over full module names
        target_modules = list(target_modules)
    target_modules, parts = split_qkv_targets(target_modules, replace_qkv)
    if parts:
        if lora_kwargs.get("use_dora") or lora_kwargs.get("rank_pattern") or lora_kwargs.get("alpha_pattern"):
            raise ValueError("replace_qkv cannot be combined with use_dora, rank_pattern or alpha_pattern.")
        scale = len(parts) ** 0.5 if lora_kwargs.get("use_rslora") else len(parts)  # keep alpha / r of each part
        lora_kwargs["rank_pattern"] = {replace_qkv: r * len(parts)}
        lora_kwargs["alpha_pattern"] = {replace_qkv: lora_alpha * scale}
    lora_config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=lora_modules_to_save(model) if modules_to_save is None else modules_to_save,
        **lora_kwargs,
    )
    source = base_model_source(model)
    peft_model = get_peft_model(model, lora_config)
    if source:
        peft_model.peft_config["default"].base_model_name_or_path = source
    if parts:
        keep_qkv_parts_separate(peft_model, replace_qkv, parts)
    return peft_model


def split_qkv_targets(targets: list[str] | str, replace_qkv: str | None) -> tuple[list[str] | str, list[str]]:
    """TerraTorch's q/k/v targets (`qkv.q_linear`, `q_linear`, ...) -> (targets with the fused module instead, parts)."""
    if replace_qkv is None:
        split_names = ("q_linear", "k_linear", "v_linear")
        parts = [] if isinstance(targets, str) else [t for t in targets if t.endswith(split_names)]
        if parts:
            raise ValueError(f"LoRA targets {parts} need replace_qkv='qkv' (the fused projection they are part of).")
        return targets, []
    if isinstance(targets, str):
        raise ValueError("replace_qkv takes a list of targets such as ['qkv.q_linear', 'qkv.v_linear'], not a regex.")
    parts, others = [], []
    for target in targets:
        prefix, _, last = target.rpartition(".")
        part = last.removesuffix("_linear")
        if last.endswith("_linear") and part in QKV_PARTS and prefix in ("", replace_qkv):
            parts.append(part)
        elif target == replace_qkv or last == replace_qkv:
            raise ValueError(f"With replace_qkv={replace_qkv!r}, target its parts ('{replace_qkv}.q_linear', "
                             f"'{replace_qkv}.v_linear', ...) instead of {target!r}.")  # fmt: skip
        else:
            others.append(target)
    if not parts:
        raise ValueError(f"replace_qkv={replace_qkv!r} needs targets among '{replace_qkv}.q_linear', "
                         f"'{replace_qkv}.k_linear', '{replace_qkv}.v_linear'.")  # fmt: skip
    return [*others, replace_qkv], sorted(set(parts), key=QKV_PARTS.index)


def keep_qkv_parts_separate(model: torch.nn.Module, fused_name: str, parts: list[str]) -> int:
    """Make each LoRA of the fused `fused_name` projections (rank r per part) block-diagonal: part i's output rows use
    only ranks [i r, (i + 1) r), the other entries of `lora_B` are zeroed and get no gradient. Call it again after
    loading such an adapter for further training. Returns the number of modules."""
    count = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != fused_name or not hasattr(module, "lora_B"):
            continue
        for lora_b in module.lora_B.values():
            weight = lora_b.weight
            width, rank = weight.shape[0] // len(QKV_PARTS), weight.shape[1] // len(parts)
            mask = torch.zeros_like(weight, dtype=torch.bool)
            for block, part in enumerate(parts):
                row = QKV_PARTS.index(part) * width
                mask[row : row + width, block * rank : (block + 1) * rank] = True
            with torch.no_grad():
                weight.masked_fill_(~mask, 0.0)
            weight.register_hook(lambda grad, keep=mask: grad * keep)
            count += 1
    return count


def weights_digest(model: torch.nn.Module, trainable_only: bool = False) -> str:
    """SHA-256 of the parameters (names, values), e.g. to check that DDP processes hold the same weights."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if trainable_only and not parameter.requires_grad:
            continue
        digest.update(name.encode())
        digest.update(parameter.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- arguments
@dataclass
class FinetuningArguments:
    """What to fine-tune on which data (the `TrainingArguments` hold the optimisation settings)."""

    data_root: str = field(metadata={"help": "Folder with one subfolder per modality and the label folder."})
    modalities: list[str] = field(default_factory=lambda: ["S2L2A", "S1RTC"],
                                  metadata={"help": "Input modalities (subfolders of data_root)."})  # fmt: skip
    label_dir: str = field(default="LULC", metadata={"help": "Label folder (under data_root or a path)."})
    task: str = field(default="segmentation",
                      metadata={"help": "segmentation, regression, classification or generation."})  # fmt: skip
    target_modalities: list[str] | None = field(
        default=None, metadata={"help": "generation: modalities the generator learns to generate (e.g. LULC)."}
    )
    target_reveal_rate: float = field(
        default=0.0, metadata={"help": "generation: reveal up to this fraction of target tokens as context "
                               "(trains multi-step decoding)."}  # fmt: skip
    )
    num_labels: int = field(default=10, metadata={"help": "Number of classes (segmentation, classification)."})
    ignore_index: int = field(default=-100, metadata={"help": "Label value that does not count in loss/metrics."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Names of the classes, for metrics."})
    train_split: str | None = field(default=None, metadata={"help": "Split file of training sample ids."})
    eval_split: str | None = field(default=None, metadata={"help": "Split file of evaluation sample ids."})
    image_grep: str = field(default="*.tif", metadata={"help": "Image file pattern; '*' is the sample id."})
    label_grep: str = field(default="*.tif", metadata={"help": "Label file pattern; '*' is the sample id."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained TerraMind (converted folder, Hub repo or original release)."}
    )
    variant: str = field(default="base", metadata={"help": "Architecture when training from scratch (no model)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON of more TerraMindConfig settings, e.g. '{\"decoder_hidden_size\": 128}'."}
    )
    decode_head: str = field(default="upernet", metadata={"help": "upernet, unet or fcn."})
    loss: str | None = field(default=None, metadata={"help": LOSS_HELP})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout before the head's classifier."})
    merge_method: str = field(default="mean", metadata={"help": "How modalities merge: mean, max or concat."})
    out_indices: list[int] | None = field(default=None, metadata={"help": "Encoder stages for the decoder."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Train the decoder only."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of the encoder."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA targets (default: qkv proj fc1 fc2 [fc3])."}
    )
    lora_replace_qkv: str | None = field(
        default=None, metadata={"help": "'qkv': adapt its parts (targets qkv.q_linear qkv.v_linear) separately."}
    )
    crop_size: int | None = field(default=None, metadata={"help": "Crop samples to this size (random in training)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal/vertical flips in training."})
    modality_drop_rate: float = field(default=0.0, metadata={"help": "Drop input modalities in training."})


@dataclass
class FinetuningResult:
    """What `finetune` returns: the trained model (PEFT-wrapped with LoRA), the trainer and the final metrics."""

    model: Any
    trainer: Trainer
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def build_generator(args: FinetuningArguments) -> TerraMindForGeneration:
    """The generator to fine-tune: pretrained from `model_name_or_path`, or a fresh `variant`."""
    if not args.target_modalities:
        raise ValueError("task generation needs target_modalities (e.g. --target_modalities LULC).")
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    settings = {"target_reveal_rate": args.target_reveal_rate, **overrides}
    if args.model_name_or_path:
        return TerraMindForGeneration.from_pretrained(args.model_name_or_path, **settings)
    logger.warning(f"No model_name_or_path: training a randomly initialized TerraMind-{args.variant} from scratch.")
    return TerraMindForGeneration(TerraMindConfig.from_variant(args.variant, **settings))


def build_model(args: FinetuningArguments) -> torch.nn.Module:
    """The task model: pretrained encoder from `model_name_or_path` (new head), or a fresh `variant`."""
    if args.task == "generation":
        return build_generator(args)
    if args.task not in TASK_MODELS:
        raise ValueError(f"task must be one of {', '.join(TASK_MODELS)} or generation, got {args.task!r}.")
    model_class = TASK_MODELS[args.task]
    settings: dict[str, Any] = {"modalities": list(args.modalities), "merge_method": args.merge_method,
                                "modality_drop_rate": args.modality_drop_rate}  # fmt: skip
    task_settings: dict[str, Any] = {"freeze_backbone": args.freeze_backbone}
    if args.task != "regression":  # regression ignores NaN labels, and `ignore_index` only when set in the config
        task_settings["ignore_index"] = args.ignore_index
    if args.task != "classification":
        task_settings["decode_head"] = args.decode_head
    if args.loss:
        task_settings["loss"] = json.loads(args.loss) if args.loss.lstrip().startswith(("{", "[")) else args.loss
    if args.head_dropout:
        task_settings["head_dropout"] = args.head_dropout
    if args.out_indices:
        task_settings["out_indices"] = list(args.out_indices)
    if args.task != "regression":
        settings["num_labels"] = args.num_labels
        if args.class_names:
            settings["id2label"] = dict(enumerate(args.class_names))
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if args.model_name_or_path:  # task settings are config fields: from_pretrained sets them on the config
        return model_class.from_pretrained(args.model_name_or_path, **{**settings, **task_settings, **overrides})
    logger.warning(f"No model_name_or_path: training a randomly initialized TerraMind-{args.variant} from scratch.")
    config = TerraMindConfig.from_variant(args.variant, **settings, **task_settings, **overrides)
    return model_class(config)


def build_datasets(args: FinetuningArguments, config: TerraMindConfig, processor: Any = None,
                   model: torch.nn.Module | None = None) -> tuple[Any, Any]:  # fmt: skip
    """Training (with crops/flips) and evaluation (center crops) datasets; evaluation defaults to the training split.
    For generation, the targets are tokenized once by `model`'s tokenizers (center crops only)."""
    if args.task == "generation":
        common = dict(data_root=args.data_root, input_modalities=list(args.modalities),
                      target_modalities=list(args.target_modalities), model=model, processor=processor,
                      image_grep=args.image_grep, crop_size=args.crop_size)  # fmt: skip
        train = build_generation_dataset(split=args.train_split, **common)
        return train, build_generation_dataset(split=args.eval_split or args.train_split, **common)
    common = dict(data_root=args.data_root, modalities=list(args.modalities),
                  label_dir=args.label_dir if args.task != "classification" else None, image_grep=args.image_grep,
                  label_grep=args.label_grep, processor=processor, config=config, task=args.task,
                  num_labels=args.num_labels, ignore_index=args.ignore_index, crop_size=args.crop_size)  # fmt: skip
    train = build_dataset(split=args.train_split, random_crop=args.crop_size is not None,
                          random_flip=args.random_flip, **common)  # fmt: skip
    evaluation = build_dataset(split=args.eval_split or args.train_split, **common)
    return train, evaluation


def finetune(
    args: FinetuningArguments,
    training_args: TrainingArguments,
    model: torch.nn.Module | None = None,
    processor: Any = None,
) -> FinetuningResult:
    """Fine-tune a TerraMind task model on a GeoTIFF folder with `Trainer` (LoRA or full), evaluate, save.

    Logs the training loss every `logging_steps` and the evaluation metrics (mIoU, accuracy / RMSE) at the end (and
    during training if `eval_strategy` says so). Saves the model (or only the adapter with LoRA) and the processor to
    `output_dir`. Works in one process and under `accelerate launch` / `torchrun` (DDP).
    """
    if model is None:
        model = build_model(args)
    config = model.config
    if processor is None:
        from ..image_processing_terramind import TerraMindImageProcessor

        processor = TerraMindImageProcessor()
    train_dataset, eval_dataset = build_datasets(args, config, processor, model)
    if args.use_lora:
        model = apply_lora(model, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                           target_modules=args.lora_target_modules, replace_qkv=args.lora_replace_qkv)  # fmt: skip
    if training_args.label_names is None:
        training_args.label_names = ["labels"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.warning(f"Fine-tuning {type(model).__name__}: {trainable:,} of {total:,} parameters trainable; "
                   f"{len(train_dataset)} training / {len(eval_dataset)} evaluation samples.")  # fmt: skip
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=TerraMindDataCollator(),
        compute_metrics=token_accuracy_metrics if args.task == "generation" else
        build_compute_metrics(args.task, args.num_labels, args.ignore_index, args.class_names),
        preprocess_logits_for_metrics={"segmentation": preprocess_logits_for_metrics,
                                       "generation": token_predictions}.get(args.task),
    )  # fmt: skip
    train_output = trainer.train()
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    if training_args.output_dir:
        if not args.use_lora:
            trainer.save_model()
        elif trainer.is_world_process_zero():  # the adapter with its task config and model card
            from .adapters import save_adapter

            save_adapter(model, training_args.output_dir, metrics=eval_metrics)
        if trainer.is_world_process_zero():
            processor.save_pretrained(training_args.output_dir)
            Path(training_args.output_dir, "finetuning_args.json").write_text(json.dumps(vars(args), indent=2))
    return FinetuningResult(model=model, trainer=trainer, train_metrics=dict(train_output.metrics),
                            eval_metrics=dict(eval_metrics))  # fmt: skip


__all__ = [
    "LORA_TARGET_MODULES",
    "FinetuningArguments",
    "FinetuningResult",
    "apply_lora",
    "build_datasets",
    "build_model",
    "finetune",
    "keep_qkv_parts_separate",
    "lora_modules_to_save",
    "lora_target_modules",
    "weights_digest",
]


def main(argv: list[str] | None = None) -> FinetuningResult:
    """Command-line fine-tuning for segmentation (`terramind finetune`, scripts/finetune_segmentation.py): parse the
    arguments (or a JSON file of them), fine-tune, log loss and mIoU, and return the `FinetuningResult`."""
    import sys

    from transformers import HfArgumentParser

    parser = HfArgumentParser((FinetuningArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        args, training_args = parser.parse_json_file(argv[0])
    else:
        args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if args.task not in ("segmentation", "generation"):
        parser.error("This command fine-tunes segmentation and generation; use terramind.training.finetuning.finetune for "
                     "other tasks.")  # fmt: skip
    result = finetune(args, training_args)
    if result.trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in result.trainer.state.log_history if "loss" in entry]
        if losses:
            logger.warning(f"training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        if args.task == "generation":
            logger.warning(f"evaluation token accuracy {result.eval_metrics.get('eval_token_accuracy', float('nan')):.4f}")
            return result
        logger.warning(f"evaluation mIoU {result.eval_metrics.get('eval_mIoU', float('nan')):.4f}, "
                       f"accuracy {result.eval_metrics.get('eval_accuracy', float('nan')):.4f}")  # fmt: skip
    return result
