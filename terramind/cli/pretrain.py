"""`terramind pretrain`: continued pre-training (terramind.training.pretraining) behind the command line."""

from __future__ import annotations

import argparse


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain", add_help=False,
                            help="continued pre-training with 4M's any-to-any objective (`terramind pretrain --help`)")  # fmt: skip
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the pre-training and TrainingArguments options; `terramind pretrain --help` lists them")  # fmt: skip
    parser.set_defaults(run=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> None:
    from ..training.pretraining import main as pretrain_main

    pretrain_main(list(args.arguments))
