"""`terramind export`: an encoder or a fine-tuned model (LoRA merged) or a tokenizer to ONNX, for onnxruntime."""

from __future__ import annotations

import argparse


def add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export an encoder or a fine-tuned model to ONNX (runs without torch)")
    parser.add_argument("--model", required=True, help="model folder (converted, fine-tuned) or Hub repo")
    parser.add_argument("--adapter", help="LoRA adapter (saved by finetune / save_adapter), merged into the graph")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    parser.add_argument("--output", required=True, help="folder to write (model.onnx, processor JSON, model card)")
    parser.add_argument("--modalities", help="encoder inputs, comma-separated (default: the configured modalities)")
    parser.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization of the exported graph")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from ..export.onnx_export import export_onnx

    modalities = [name.strip() for name in args.modalities.split(",")] if args.modalities else None
    print(f"Wrote {export_onnx(args.model, args.output, args.adapter, modalities, args.quantize, args.overwrite)}")
