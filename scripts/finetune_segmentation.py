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

from terramind.training.finetuning import main  # noqa: E402

if __name__ == "__main__":
    main()
