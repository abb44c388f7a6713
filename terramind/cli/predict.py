"""`terramind predict`: a scene through a fine-tuned segmentation or regression model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import UsageError, add_runtime_options, parse_pairs, torch_dtype


def add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="predict a scene with a fine-tuned segmentation or regression model")
    parser.add_argument("--model", required=True,
                        help="fine-tuned model folder, or the base model (folder, Hub repo, release) of --adapter")  # fmt: skip
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo (saved by finetune / save_adapter)")
    parser.add_argument("--output", required=True, help="OUT.tif: class map (uint8, plus OUT.png) or regression")
    parser.add_argument("--probabilities", metavar="PATH", help="also write class probabilities (float32 GeoTIFF)")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default: min(64, tile size - 16))")
    add_runtime_options(parser)
    parser.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> None:
    from ..export.runtime import is_onnx_folder

    if is_onnx_folder(args.model):  # onnxruntime, no torch import on this path
        _run_predict_onnx(args)
        return
    from ..scenes.outputs import check_target
    from ..scenes.prediction import load_predictor, parse_inputs, predict_to_files

    outputs = [args.output] + ([args.probabilities] if args.probabilities else [])
    if not all(path.endswith((".tif", ".tiff")) for path in outputs):
        raise UsageError("--output and --probabilities must end in .tif/.tiff (GeoTIFF).")
    if args.probabilities and Path(args.probabilities).resolve() == Path(args.output).resolve():
        raise UsageError("--probabilities and --output must be different files.")
    if args.no_progress:
        from transformers.utils import logging

        args.restore_progress_bars = logging.is_progress_bar_enabled()  # main() may run again in this process
        logging.disable_progress_bar()
    for target in outputs:  # before any work (the quick-look PNG is checked once the task is known)
        check_target(target, args.overwrite)
    paths = parse_inputs(args.input)
    model, processor = load_predictor(args.model, args.adapter, torch_dtype(args.dtype), args.device)
    if args.probabilities and type(model).__name__ != "TerraMindForSemanticSegmentation":
        raise UsageError("--probabilities is for segmentation models; this model does pixel regression.")
    overlap = args.overlap if args.overlap is not None else min(64, args.tile_size - 16)
    inputs = {name: files if len(files) > 1 else files[0] for name, files in paths.items()}
    run = predict_to_files(model, inputs, args.output, args.probabilities, processor, args.tile_size, overlap,
                           args.batch_size, progress=not args.no_progress, overwrite=args.overwrite)  # fmt: skip
    for path in run.outputs:
        print(f"Wrote {path}")
    if run.skipped:
        print(f"Skipped {run.skipped} of {run.tiles} tiles without data (written as nodata)")


def _run_predict_onnx(args: argparse.Namespace) -> None:
    from ..export.runtime import inference_session, predict_onnx
    from ..modalities import resolve_modality

    if args.adapter:
        raise UsageError("--adapter is merged at export time; an exported folder takes none.")
    if args.device != "cpu" or args.dtype != "fp32":
        raise UsageError("An exported folder runs in onnxruntime on the CPU in the graph's precision; leave --device "
                         "and --dtype at their defaults.")  # fmt: skip
    if len({entry.partition("=")[0] for entry in args.input}) < len(args.input):
        raise UsageError("Time series (a modality given twice) are not supported by the ONNX path.")
    inputs = parse_pairs(args.input, "--input", resolve_modality)
    outputs = [args.output] + ([args.probabilities] if args.probabilities else [])
    if not all(path.endswith((".tif", ".tiff")) for path in outputs):
        raise UsageError("--output and --probabilities must end in .tif/.tiff (GeoTIFF).")
    overlap = args.overlap if args.overlap is not None else min(64, args.tile_size - 16)
    session = inference_session(args.model)
    for path in predict_onnx(args.model, inputs, args.output, args.probabilities, args.tile_size, overlap,
                             args.batch_size, args.overwrite, session=session,
                             progress=not args.no_progress):  # fmt: skip
        print(f"Wrote {path}")
