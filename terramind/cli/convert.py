"""`terramind convert`: an original model or tokenizer checkpoint into a Transformers folder."""

from __future__ import annotations

import argparse
import json

from .options import UsageError, integer


def add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert an original TerraMind model or tokenizer checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original model file, e.g. TerraMind_v1_base.pt")
    source.add_argument("--tokenizer-checkpoint", help="original tokenizer file, e.g. TerraMind_Tokenizer_S2L2A.pt")
    parser.add_argument("--output", required=True, help="folder to write (config + safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--variant", choices=["tiny", "small", "base", "large"], help="released architecture")
    parser.add_argument("--modality", help="tokenizer modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI); default: "
                        "from the file name")  # fmt: skip
    parser.add_argument("--num-heads", type=integer(1), help="attention heads, for checkpoints of no released variant")
    parser.add_argument("--config", help="JSON object of config overrides (TerraMindConfig, or TerraMindTokenizerConfig "
                        "with --tokenizer-checkpoint), e.g. '{\"hidden_act\": \"gelu\"}'")  # fmt: skip
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the converted folder to this Hub repo")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from ..conversion.checkpoint import check_checkpoint_file
    from ..scenes.outputs import atomic_folder

    overrides = {}
    if args.config:
        try:
            overrides = json.loads(args.config)
        except json.JSONDecodeError as error:
            raise UsageError(f"--config is not valid JSON: {error}") from None
        if not isinstance(overrides, dict):
            raise UsageError(f"--config must be a JSON object of settings, e.g. '{{\"hidden_act\": \"gelu\"}}', got "
                             f"{args.config!r}.")  # fmt: skip
    check_checkpoint_file(args.tokenizer_checkpoint or args.checkpoint)
    with atomic_folder(args.output, args.overwrite) as staging:
        if args.tokenizer_checkpoint:
            from ..conversion.tokenizer import convert_tokenizer_checkpoint

            convert_tokenizer_checkpoint(args.tokenizer_checkpoint, staging, args.modality, push_to_hub=args.push_to_hub,
                                         config_overrides=overrides or None)  # fmt: skip
        else:
            from ..conversion.checkpoint import convert_checkpoint

            if args.num_heads:
                overrides["num_attention_heads"] = args.num_heads
            convert_checkpoint(args.checkpoint, staging, variant=args.variant, config_overrides=overrides,
                               push_to_hub=args.push_to_hub)  # fmt: skip
    print(f"Converted into {args.output}")
