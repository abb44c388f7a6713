"""The `terramind` command line: convert original releases, embed scenes, generate modalities, fine-tune."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A user mistake: reported in one line, without a traceback."""


def _add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert an original TerraMind model or tokenizer checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original model file, e.g. TerraMind_v1_base.pt")
    source.add_argument("--tokenizer-checkpoint", help="original tokenizer file, e.g. TerraMind_Tokenizer_S2L2A.pt")
    parser.add_argument("--output", required=True, help="folder to write (config + safetensors)")
    parser.add_argument("--variant", choices=["tiny", "small", "base", "large"], help="released architecture")
    parser.add_argument("--modality", help="tokenizer modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI)")
    parser.add_argument("--num-heads", type=int, help="attention heads, for checkpoints of no released variant")
    parser.add_argument("--config", help="JSON of TerraMindConfig overrides, e.g. '{\"hidden_act\": \"gelu\"}'")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the converted folder to this Hub repo")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_checkpoint

    if args.tokenizer_checkpoint:
        if not args.modality:
            raise UsageError("--tokenizer-checkpoint needs --modality (S2L2A, S1GRD, S1RTC, DEM, LULC or NDVI).")
        from .tokenizer_conversion import convert_tokenizer_checkpoint

        out = convert_tokenizer_checkpoint(args.tokenizer_checkpoint, args.output, args.modality,
                                           push_to_hub=args.push_to_hub)  # fmt: skip
    else:
        overrides = {}
        if args.config:
            try:
                overrides = json.loads(args.config)
            except json.JSONDecodeError as error:
                raise UsageError(f"--config is not valid JSON: {error}") from None
        if args.num_heads:
            overrides["num_attention_heads"] = args.num_heads
        out = convert_checkpoint(args.checkpoint, args.output, variant=args.variant, config_overrides=overrides,
                                 push_to_hub=args.push_to_hub)  # fmt: skip
        _save_processor(out)
    print(f"Converted into {out}")


def _save_processor(folder) -> None:
    """Write the matching processor next to a converted model, so AutoProcessor loads the folder."""
    try:
        from .processing_terramind import TerraMindProcessor
    except ImportError:
        return
    TerraMindProcessor().save_pretrained(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terramind", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .conversion import ConversionError

    try:
        args.run(args)
    except (UsageError, ConversionError, ValueError, FileNotFoundError) as error:
        print(f"terramind {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
