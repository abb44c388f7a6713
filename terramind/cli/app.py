"""The `terramind` command line: convert releases, embed, generate, fine-tune, predict, export and pretrain."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .convert import add_convert
from .embed import add_embed
from .export import add_export
from .finetune import add_finetune
from .generate import add_generate
from .options import Parser, UsageError, version
from .predict import add_predict
from .pretrain import add_pretrain


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="terramind", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,embed,generate,finetune,predict,export,pretrain}")
    add_convert(sub)
    add_embed(sub)
    add_generate(sub)
    add_finetune(sub)
    add_predict(sub)
    add_export(sub)
    add_pretrain(sub)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("finetune", "pretrain"):  # their options belong to the training scripts (HfArgumentParser)
        args.arguments = [*extra, *args.arguments]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so that partial outputs are removed
    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        args.run(args)
    except (UsageError, ValueError, OSError, *_conversion_errors()) as error:
        from ..errors import one_line

        print(f"terramind {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"terramind {args.command}: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if getattr(args, "restore_progress_bars", False):  # main() may run again in this process
            from transformers.utils import logging as transformers_logging

            transformers_logging.enable_progress_bar()
    return 0


def _conversion_errors() -> tuple[type[Exception], ...]:
    """ConversionError, if the conversion module was loaded (it imports torch; predicting an ONNX folder must not)."""
    checkpoint = sys.modules.get("terramind.conversion.checkpoint")
    return (checkpoint.ConversionError,) if checkpoint is not None else ()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
