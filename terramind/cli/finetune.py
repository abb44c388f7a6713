"""`terramind finetune`: the fine-tuning script (terramind.training.finetuning) behind the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import OneLineErrors


def add_finetune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", add_help=False,
                            help="fine-tune for segmentation on a GeoTIFF folder (`terramind finetune --help`)")  # fmt: skip
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the fine-tuning and TrainingArguments options; `terramind finetune --help` lists them")  # fmt: skip
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> None:
    from ..training.finetuning import main as finetune_main

    argv = list(args.arguments)
    if not (len(argv) == 1 and argv[0].endswith(".json")):  # a JSON file of arguments is parsed by the script
        parser = _finetune_parser()
        finetuning_args, training_args = parser.parse_args_into_dataclasses(args=argv)  # one-line errors, --help
        _advise_finetuning(finetuning_args, training_args)
    finetune_main(argv)


# The TrainingArguments that `terramind finetune --help` shows; `--help-all` shows all of them (over a hundred).
COMMON_TRAINING_OPTIONS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "logging_steps", "seed", "bf16", "use_cpu",
    "report_to", "dataloader_num_workers", "disable_tqdm", "resume_from_checkpoint",
)  # fmt: skip


class _HelpAll(argparse.Action):
    """`--help-all`: the help with every option, all TrainingArguments included."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            action.help = getattr(action, "full_help", action.help)
        parser.print_help()
        parser.exit()


def _finetune_parser() -> argparse.ArgumentParser:
    """The fine-tuning options (FinetuningArguments, TrainingArguments) with one-line errors and a `--help` that
    lists the fine-tuning options and the common training ones."""
    from dataclasses import fields

    from transformers import HfArgumentParser, TrainingArguments

    from ..training.finetuning import FinetuningArguments

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    parser = Parser((FinetuningArguments, TrainingArguments), prog="terramind finetune",
                    usage="%(prog)s --data_root DIR [options]",
                    description="Fine-tune TerraMind for segmentation on a GeoTIFF folder with Trainer.")  # fmt: skip
    parser.add_argument("--help-all", action=_HelpAll, help="show every option, all TrainingArguments included")
    shown = {f.name for f in fields(FinetuningArguments)} | set(COMMON_TRAINING_OPTIONS) | {"help", "help_all"}
    for action in parser._actions:
        if action.option_strings and action.dest not in shown:
            action.full_help, action.help = action.help, argparse.SUPPRESS
    return parser


def _advise_finetuning(finetuning_args: Any, training_args: Any) -> None:
    """Warnings before a fine-tuning run: evaluation on training samples, bf16 where the CPU emulates it."""
    import torch
    from transformers.utils import logging

    from ..training.layout import read_split
    from .hardware import warn_if_slow_bf16

    logger = logging.get_logger("terramind.cli")
    train, evaluation = finetuning_args.train_split, finetuning_args.eval_split
    if not evaluation or evaluation == train:
        logger.warning("Evaluating on the training samples (no --eval_split of other samples): the metrics measure "
                       "fit, not generalisation.")  # fmt: skip
    elif train and Path(train).is_file() and Path(evaluation).is_file():
        shared = set(read_split(train)) & set(read_split(evaluation))
        if shared:
            logger.warning(f"{len(shared)} evaluation samples are also training samples ({sorted(shared)[:3]}...): "
                           "the metrics partly measure fit, not generalisation.")  # fmt: skip
    on_cpu = training_args.use_cpu or not torch.cuda.is_available()
    warn_if_slow_bf16("cpu" if on_cpu else "cuda", training_args.bf16)
