#!/usr/bin/env python
"""Fine-tune TerraMind for semantic segmentation on a folder of GeoTIFFs (e.g. S2L2A + S1RTC -> LULC classes).

The folder holds one subfolder per modality and one label folder, files matched by name (TerraTorch's
GenericMultiModalDataModule layout). With LoRA (`--use_lora`) only adapters and the decoder train, and `output_dir`
receives a small adapter; without it the whole model trains. Logs the loss every `--logging_steps` and the mIoU of
the evaluation split. Runs as is, or on several processes/GPUs with `accelerate launch` (or `torchrun`).

    python scripts/finetune_segmentation.py --data_root samples/terramesh --modalities S2L2A S1RTC \
        --label_dir LULC --num_labels 10 --model_name_or_path ibm-esa-geospatial/TerraMind-1.0-base \
        --use_lora --output_dir runs/lulc --max_steps 200 --learning_rate 1e-3 --per_device_train_batch_size 4

    accelerate launch --num_processes 2 scripts/finetune_segmentation.py ...   # same arguments

All `TrainingArguments` (learning rate, epochs, batch size, eval_strategy, ...) are accepted; the fine-tuning
arguments are listed by `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import HfArgumentParser, TrainingArguments  # noqa: E402
from transformers.utils import logging  # noqa: E402

from terramind.finetuning import FinetuningArguments, finetune  # noqa: E402

logger = logging.get_logger("terramind.finetune_segmentation")


def main(argv: list[str] | None = None):
    """Parse the arguments (or a JSON file of them), fine-tune, and return the `FinetuningResult`."""
    parser = HfArgumentParser((FinetuningArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        args, training_args = parser.parse_json_file(argv[0])
    else:
        args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if args.task != "segmentation":
        parser.error("This script fine-tunes segmentation; use terramind.finetuning.finetune for other tasks.")
    result = finetune(args, training_args)
    if result.trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in result.trainer.state.log_history if "loss" in entry]
        if losses:
            logger.warning(f"training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        logger.warning(f"evaluation mIoU {result.eval_metrics.get('eval_mIoU', float('nan')):.4f}, "
                       f"accuracy {result.eval_metrics.get('eval_accuracy', float('nan')):.4f}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
