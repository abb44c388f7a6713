"""Fine-tuning TerraMind with `Trainer`: model, data, LoRA adapters and metrics in one reusable function.

`finetune(FinetuningArguments(...), TrainingArguments(...))` is what `scripts/finetune_segmentation.py` (and the
`terramind finetune` CLI) run; it works unchanged in one process and under `accelerate launch` (DDP).

LoRA (PEFT): `apply_lora(model)` adapts the attention (`qkv`, `proj`) and MLP (`fc1`, `fc2`, and `fc3` of the
SwiGLU base/large models) projections of TerraMind; with the plain names `proj` also matches the patch embeddings'
`proj` (each modality's input projection), so they are adapted too, as with TerraTorch's `target_modules`. The task
modules (neck, decoder, classifier) are trained fully and saved with the adapter (`modules_to_save`). The frozen
generator of Thinking-in-Modalities models is never adapted.
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

from .configuration_terramind import TerraMindConfig
from .data_terramind import (
    TerraMindDataCollator,
    build_compute_metrics,
    build_dataset,
    preprocess_logits_for_metrics,
)
from .modeling_terramind import TerraMindModel
from .modeling_terramind_tasks import (
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
)

logger = logging.get_logger(__name__)

LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2", "fc3")
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
    **lora_kwargs: Any,
):
    """Wrap a TerraMind model (task head or TerraMindModel) in a PEFT LoRA model; only adapters and heads train."""
    from peft import LoraConfig, get_peft_model

    config = model.config
    encoder = model if isinstance(model, TerraMindModel) else getattr(model, "terramind", None)
    if getattr(encoder, "tim_generator", None) is not None:
        lora_kwargs.setdefault("exclude_modules", r".*tim_generator\..*")
    if target_modules is None:
        target_modules = lora_target_modules(config)
    elif not isinstance(target_modules, str):  # a str is a regex over full module names
        target_modules = list(target_modules)
    lora_config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=lora_modules_to_save(model) if modules_to_save is None else modules_to_save,
        **lora_kwargs,
    )
    return get_peft_model(model, lora_config)


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
    task: str = field(default="segmentation", metadata={"help": "segmentation, regression or classification."})
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


def build_model(args: FinetuningArguments) -> torch.nn.Module:
    """The task model: pretrained encoder from `model_name_or_path` (new head), or a fresh `variant`."""
    if args.task not in TASK_MODELS:
        raise ValueError(f"task must be one of {', '.join(TASK_MODELS)}, got {args.task!r}.")
    model_class = TASK_MODELS[args.task]
    settings: dict[str, Any] = {"modalities": list(args.modalities), "merge_method": args.merge_method,
                                "modality_drop_rate": args.modality_drop_rate}  # fmt: skip
    task_settings: dict[str, Any] = {"freeze_backbone": args.freeze_backbone, "ignore_index": args.ignore_index}
    if args.task != "classification":
        task_settings["decode_head"] = args.decode_head
    if args.out_indices:
        task_settings["out_indices"] = list(args.out_indices)
    if args.task != "regression":
        settings["num_labels"] = args.num_labels
        if args.class_names:
            settings["id2label"] = dict(enumerate(args.class_names))
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if args.model_name_or_path:
        from .modeling_terramind_tasks import TASK_CONFIG_DEFAULTS

        config_settings = {**settings, **{k: v for k, v in overrides.items() if k not in TASK_CONFIG_DEFAULTS}}
        task_settings.update({k: v for k, v in overrides.items() if k in TASK_CONFIG_DEFAULTS})
        return model_class.from_pretrained(args.model_name_or_path, **config_settings, **task_settings)
    logger.warning(f"No model_name_or_path: training a randomly initialized TerraMind-{args.variant} from scratch.")
    config = TerraMindConfig.from_variant(args.variant, **settings, **task_settings, **overrides)
    return model_class(config)


def build_datasets(args: FinetuningArguments, config: TerraMindConfig, processor: Any = None) -> tuple[Any, Any]:
    """Training (with crops/flips) and evaluation (center crops) datasets; evaluation defaults to the training split."""
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
        from .image_processing_terramind import TerraMindImageProcessor

        processor = TerraMindImageProcessor()
    train_dataset, eval_dataset = build_datasets(args, config, processor)
    if args.use_lora:
        model = apply_lora(model, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                           target_modules=args.lora_target_modules)  # fmt: skip
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
        compute_metrics=build_compute_metrics(args.task, args.num_labels, args.ignore_index, args.class_names),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if args.task == "segmentation" else None,
    )
    train_output = trainer.train()
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    if training_args.output_dir:
        trainer.save_model()
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
    if args.task != "segmentation":
        parser.error("This command fine-tunes segmentation; use terramind.finetuning.finetune for other tasks.")
    result = finetune(args, training_args)
    if result.trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in result.trainer.state.log_history if "loss" in entry]
        if losses:
            logger.warning(f"training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        logger.warning(f"evaluation mIoU {result.eval_metrics.get('eval_mIoU', float('nan')):.4f}, "
                       f"accuracy {result.eval_metrics.get('eval_accuracy', float('nan')):.4f}")  # fmt: skip
    return result
