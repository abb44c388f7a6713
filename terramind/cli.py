"""The `terramind` command line: convert original releases, embed scenes, generate modalities, fine-tune, predict."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """A user mistake: reported in one line, without a traceback."""


def _add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert an original TerraMind model or tokenizer checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original model file, e.g. TerraMind_v1_base.pt")
    source.add_argument("--tokenizer-checkpoint", help="original tokenizer file, e.g. TerraMind_Tokenizer_S2L2A.pt")
    parser.add_argument("--output", required=True, help="folder to write (config + safetensors)")
    parser.add_argument("--variant", choices=["tiny", "small", "base", "large"], help="released architecture")
    parser.add_argument("--modality", help="tokenizer modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI); default: "
                        "from the file name")  # fmt: skip
    parser.add_argument("--num-heads", type=int, help="attention heads, for checkpoints of no released variant")
    parser.add_argument("--config", help="JSON of config overrides (TerraMindConfig, or TerraMindTokenizerConfig with "
                        "--tokenizer-checkpoint), e.g. '{\"hidden_act\": \"gelu\"}'")  # fmt: skip
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the converted folder to this Hub repo")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_checkpoint

    overrides = {}
    if args.config:
        try:
            overrides = json.loads(args.config)
        except json.JSONDecodeError as error:
            raise UsageError(f"--config is not valid JSON: {error}") from None
    if args.tokenizer_checkpoint:
        from .tokenizer_conversion import convert_tokenizer_checkpoint

        out = convert_tokenizer_checkpoint(args.tokenizer_checkpoint, args.output, args.modality,
                                           push_to_hub=args.push_to_hub, config_overrides=overrides or None)  # fmt: skip
    else:
        if args.num_heads:
            overrides["num_attention_heads"] = args.num_heads
        out = convert_checkpoint(args.checkpoint, args.output, variant=args.variant, config_overrides=overrides,
                                 push_to_hub=args.push_to_hub)  # fmt: skip
    print(f"Converted into {out}")


# ----------------------------------------------------------------------------- shared options
DEFAULT_EMBED_MODEL = "ibm-esa-geospatial/TerraMind-1.0-tiny"
DEFAULT_GENERATE_MODEL = "ibm-esa-geospatial/TerraMind-1.0-base"
OUTPUT_DTYPES = {"S2L2A": "int16", "S2L1C": "int16", "RGB": "uint8", "DEM": "float32", "NDVI": "float32",
                 "S1GRD": "float32", "S1RTC": "float32", "LULC": "uint8"}  # fmt: skip


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", required=True, metavar="MODALITY=PATH",
                        help="an input GeoTIFF per modality, e.g. --input S2L2A=scene.tif (repeat for more)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model precision")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    parser.add_argument("--tile-size", type=int, default=224, help="tile size in pixels (multiple of 16)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parse_inputs(entries: list[str]) -> dict[str, str]:
    from .modalities import resolve_modality

    paths = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--input takes MODALITY=PATH (e.g. S2L2A=scene.tif), got {entry!r}.")
        resolve_modality(name)  # clear error for unknown names
        paths[name] = path
    return paths


def _parse_offsets(entries: list[str]) -> dict[str, float] | None:
    offsets = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        try:
            offsets[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise UsageError(f"--offset takes MODALITY=NUMBER (e.g. S2L2A=1000), got {entry!r}.")
    return offsets or None


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _load(model_class, name: str, default: str, **kwargs):
    """from_pretrained with a one-line error when an official model cannot be reached (offline)."""
    try:
        return model_class.from_pretrained(name, **kwargs)
    except OSError as error:
        hint = (" Without network access, pass --model PATH to a converted folder or to a folder holding the "
                "original TerraMind_v1_*.pt.") if name == default else ""  # fmt: skip
        raise UsageError(f"could not load model {name!r} ({str(error).splitlines()[0]}).{hint}") from None


def _read_inputs(args: argparse.Namespace):
    from .geotiff import read_sample
    from .image_processing_terramind import TerraMindImageProcessor

    paths = _parse_inputs(args.input)
    for path in paths.values():
        if not Path(path).is_file():
            raise UsageError(f"input file {path} does not exist.")
    sample = read_sample(paths)
    offsets = _parse_offsets(getattr(args, "offset", []))  # generate's --offset
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16, offset=offsets)
    batch = processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)
    height, width = next(iter(sample.images.values())).shape[-2:]
    return sample, processor, {k: v for k, v in batch.items()}, (height, width)


# ----------------------------------------------------------------------------- embed
def _add_embed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("embed", help="per-patch embeddings of a scene (GeoTIFF or safetensors)")
    parser.add_argument("--model", default=DEFAULT_EMBED_MODEL, help="converted folder, original release or Hub repo")
    parser.add_argument("--output", required=True, help="emb.tif (D bands at 1/16 resolution) or emb.safetensors")
    parser.add_argument("--merge-method", default="mean", choices=["mean", "max", "concat"],
                        help="how modalities are merged per patch")  # fmt: skip
    _add_runtime_options(parser)
    parser.set_defaults(run=_run_embed)


def _run_embed(args: argparse.Namespace) -> None:
    import torch
    from tqdm.auto import tqdm

    from .geotiff import write_geotiff
    from .modeling_terramind import TerraMindModel

    if not args.output.endswith((".tif", ".tiff", ".safetensors")):
        raise UsageError("--output must end in .tif/.tiff (GeoTIFF) or .safetensors.")
    sample, _, batch, (height, width) = _read_inputs(args)
    model = _load(TerraMindModel, args.model, DEFAULT_EMBED_MODEL, modalities=list(batch),
                  merge_method=args.merge_method, dtype=_torch_dtype(args.dtype))  # fmt: skip
    model = model.to(args.device).eval()
    inputs = {k: v.to(args.device, _torch_dtype(args.dtype)) for k, v in batch.items()}
    padded_h, padded_w = next(iter(inputs.values())).shape[-2:]
    tile = min(args.tile_size, padded_h, padded_w)
    tiles = [(t, x) for t in _starts(padded_h, tile) for x in _starts(padded_w, tile)]
    grid = None
    with torch.inference_mode():
        for start in tqdm(range(0, len(tiles), args.batch_size), desc="embedding tiles", disable=args.no_progress):
            chunk = tiles[start : start + args.batch_size]
            crops = {k: torch.cat([v[..., t : t + tile, x : x + tile] for t, x in chunk]) for k, v in inputs.items()}
            tokens = model(**crops).last_hidden_state.float()
            side = tile // 16
            if grid is None:
                grid = torch.zeros(tokens.shape[-1], padded_h // 16, padded_w // 16)
            for (t, x), emb in zip(chunk, tokens, strict=True):
                grid[:, t // 16 : t // 16 + side, x // 16 : x // 16 + side] = emb.reshape(side, side, -1).permute(2, 0, 1)
    grid = grid[:, : -(-height // 16), : -(-width // 16)]
    if args.output.endswith(".safetensors"):
        from safetensors.torch import save_file

        profile = sample.profile
        metadata = {"crs": str(profile.get("crs")), "transform": json.dumps(list(profile["transform"])[:6]),
                    "patch_size": "16", "modalities": ",".join(batch)}  # fmt: skip
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": grid.contiguous()}, args.output, metadata=metadata)
    else:  # whole patches: the reference extent is the scene padded to multiples of 16
        reference = dict(sample.profile, height=grid.shape[1] * 16, width=grid.shape[2] * 16)
        write_geotiff(args.output, grid.numpy(), reference, dtype="float32")
    print(f"Wrote {tuple(grid.shape)} embeddings to {args.output}")


def _starts(size: int, tile: int) -> list[int]:
    from .tiling import tile_starts

    return tile_starts(size, tile, tile)


# ----------------------------------------------------------------------------- generate
def _add_generate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="generate modalities of a scene as GeoTIFFs plus PNG quick-looks")
    parser.add_argument("--model", default=DEFAULT_GENERATE_MODEL,
                        help="converted folder, original release or Hub repo (with the decoder)")  # fmt: skip
    parser.add_argument("--output-modalities", required=True, help="comma separated, e.g. S2L2A,LULC")
    parser.add_argument("--output-dir", required=True, help="folder for <MODALITY>.tif and <MODALITY>.png")
    parser.add_argument("--tokenizer", action="append", default=[], metavar="MODALITY=PATH",
                        help="tokenizer folder or repo per output modality (default: the official repos)")  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=50, help="diffusion steps of the tokenizer decoders")
    parser.add_argument("--decoding-steps", type=int, default=1, help="ROAR steps per modality")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap for scenes larger than a tile")
    parser.add_argument("--offset", action="append", default=[], metavar="MODALITY=NUMBER",
                        help="added to a modality's standardization means, e.g. S2L2A=1000")  # fmt: skip
    _add_runtime_options(parser)
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    import torch

    from .geotiff import write_geotiff
    from .modalities import resolve_output_modality
    from .modeling_terramind import TerraMindForGeneration
    from .quicklook import save_quicklook

    outputs = [resolve_output_modality(m.strip()) for m in args.output_modalities.split(",") if m.strip()]
    if not outputs:
        raise UsageError("--output-modalities is empty; e.g. --output-modalities S2L2A,LULC.")
    tokenizer_paths = {}
    for entry in args.tokenizer:
        name, sep, path = entry.partition("=")
        if not sep:
            raise UsageError(f"--tokenizer takes MODALITY=PATH, got {entry!r}.")
        tokenizer_paths[resolve_output_modality(name)] = path
    sample, processor, batch, (height, width) = _read_inputs(args)
    model = _load(TerraMindForGeneration, args.model, DEFAULT_GENERATE_MODEL, dtype=_torch_dtype(args.dtype))
    model.config.tokenizer_paths = {**(model.config.tokenizer_paths or {}), **tokenizer_paths}
    model.terramind.config.tokenizer_paths = model.config.tokenizer_paths
    model = model.to(args.device).eval()
    inputs = {k: v.to(args.device) for k, v in batch.items()}
    padded_h, padded_w = next(iter(inputs.values())).shape[-2:]
    options = dict(output_modalities=outputs, decoding_steps=args.decoding_steps, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, timesteps=args.timesteps, progress=not args.no_progress)  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    tile = min(args.tile_size, padded_h, padded_w)
    if "Coordinates" in outputs and (padded_h, padded_w) != (tile, tile):
        raise UsageError("Coordinates are generated for one tile; give a scene of one tile (--tile-size).")
    if (padded_h, padded_w) == (tile, tile):
        generated = model.generate(inputs, generator=generator, **options)
    else:
        generated = model.generate_tiled(inputs, tile_size=tile, overlap=min(args.overlap, tile - 16),
                                         batch_size=args.batch_size, generator=generator, **options)  # fmt: skip
    physical = processor.post_process_generation(generated)
    out_dir = Path(args.output_dir)
    if "Coordinates" in physical:
        out_dir.mkdir(parents=True, exist_ok=True)
        lon, lat = (float(v) for v in physical.pop("Coordinates")[0])
        (out_dir / "Coordinates.json").write_text(json.dumps({"lon": lon, "lat": lat}))
        print(f"Wrote {out_dir / 'Coordinates.json'} (lon {lon:.2f}, lat {lat:.2f})")
        outputs = [name for name in outputs if name != "Coordinates"]
    for name in outputs:
        values = physical[name][0, :, :height, :width].float().numpy() if name != "LULC" else \
            physical[name][0, :, :height, :width].numpy()  # fmt: skip
        tif = write_geotiff(out_dir / f"{name}.tif", values, sample.profile, dtype=OUTPUT_DTYPES.get(name, "float32"),
                            band_names=_band_names(name, values.shape[0]))  # fmt: skip
        png = save_quicklook(out_dir / f"{name}.png", name, values)
        print(f"Wrote {tif} and {png}")


def _band_names(name: str, count: int) -> list[str] | None:
    from .modalities import MODALITIES

    bands = MODALITIES[name].bands if name in MODALITIES else ()
    return list(bands) if len(bands) == count else None


# ----------------------------------------------------------------------------- finetune
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", add_help=False,
                            help="fine-tune for segmentation on a GeoTIFF folder (scripts/finetune_segmentation.py)")  # fmt: skip
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the fine-tuning and TrainingArguments options; `terramind finetune --help` lists them")  # fmt: skip
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> None:
    from .finetuning import main as finetune_main

    finetune_main(args.arguments)


# ----------------------------------------------------------------------------- predict
def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="predict a scene with a fine-tuned segmentation or regression model")
    parser.add_argument("--model", required=True,
                        help="fine-tuned model folder, or the base model (folder, Hub repo, release) of --adapter")  # fmt: skip
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo (saved by finetune / save_adapter)")
    parser.add_argument("--output", required=True, help="OUT.tif: class map (uint8, plus OUT.png) or regression")
    parser.add_argument("--probabilities", metavar="PATH", help="also write class probabilities (float32 GeoTIFF)")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default: min(64, tile size - 16))")
    _add_runtime_options(parser)
    parser.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> None:
    from .prediction import load_predictor, parse_inputs, predict_scene, read_scene, write_prediction

    outputs = [args.output] + ([args.probabilities] if args.probabilities else [])
    if not all(path.endswith((".tif", ".tiff")) for path in outputs):
        raise UsageError("--output and --probabilities must end in .tif/.tiff (GeoTIFF).")
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    paths = parse_inputs(args.input)
    model, processor = load_predictor(args.model, args.adapter, _torch_dtype(args.dtype), args.device)
    if args.probabilities and type(model).__name__ != "TerraMindForSemanticSegmentation":
        raise UsageError("--probabilities is for segmentation models; this model does pixel regression.")
    inputs, nodata, profile = read_scene(paths, processor)
    overlap = args.overlap if args.overlap is not None else min(64, args.tile_size - 16)
    prediction = predict_scene(model, inputs, nodata, profile, args.tile_size, overlap, args.batch_size,
                               progress=not args.no_progress)  # fmt: skip
    for path in write_prediction(prediction, args.output, args.probabilities):
        print(f"Wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terramind", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_embed(sub)
    _add_generate(sub)
    _add_finetune(sub)
    _add_predict(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "finetune":  # its options belong to the fine-tuning script (HfArgumentParser)
        args.arguments = [*extra, *args.arguments]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .conversion import ConversionError

    try:
        args.run(args)
    except (UsageError, ConversionError, ValueError, FileNotFoundError) as error:
        print(f"terramind {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
