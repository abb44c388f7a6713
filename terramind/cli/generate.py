"""`terramind generate`: generated modalities of scenes as GeoTIFFs plus PNG quick-looks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import (
    DEFAULT_GENERATE_MODEL,
    UsageError,
    add_runtime_options,
    add_scale_options,
    check_tokenizer,
    integer,
    load,
    load_tokenizers,
    number,
    open_run_folder,
    parse_input_specs,
    parse_offsets,
    parse_pairs,
    prepare_run,
    processes,
    torch_dtype,
)


def add_generate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="generate modalities of a scene as GeoTIFFs plus PNG quick-looks")
    parser.add_argument("--model", default=DEFAULT_GENERATE_MODEL,
                        help="converted folder, original release or Hub repo (with the decoder)")  # fmt: skip
    parser.add_argument("--output-modalities", required=True, help="comma separated, e.g. S2L2A,LULC")
    parser.add_argument("--output-dir", required=True, help="folder for <MODALITY>.tif and <MODALITY>.png (many "
                        "scenes: <scene>/<MODALITY>.tif ...)")  # fmt: skip
    parser.add_argument("--tokenizer", action="append", default=[], metavar="MODALITY=PATH",
                        help="tokenizer folder or repo per output modality (default: the official repos)")  # fmt: skip
    parser.add_argument("--timesteps", type=integer(1), default=50, help="diffusion steps of the tokenizer decoders")
    parser.add_argument("--decoding-steps", type=integer(1), default=1, help="ROAR steps per modality")
    parser.add_argument("--temperature", type=number(0), default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=number(0, 1), default=0.8,
                        help="nucleus sampling: keep the most likely tokens up to this probability mass (0: off)")  # fmt: skip
    parser.add_argument("--top-k", type=integer(0), default=0, help="keep only the k most likely tokens (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--overlap", type=integer(0, 16), default=64,
                        help="tile overlap in pixels for scenes larger than a tile")  # fmt: skip
    parser.add_argument("--offset", action="append", default=[], metavar="MODALITY=NUMBER",
                        help="added to a modality's standardization means, e.g. S2L2A=1000")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an earlier many-scene run into the same "
                        "--output-dir: skip the scenes its manifest lists as finished")  # fmt: skip
    add_scale_options(parser)
    add_runtime_options(parser)
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    import torch

    from ..image_processing_terramind import TerraMindImageProcessor
    from ..modalities import MODALITIES, resolve_output_modality
    from ..modeling_terramind import TerraMindForGeneration
    from ..scenes.discovery import find_scenes, shard
    from ..scenes.engine import SceneSource
    from ..scenes.generation import generate_scenes
    from ..scenes.outputs import check_target

    outputs = [resolve_output_modality(m.strip()) for m in args.output_modalities.split(",") if m.strip()]
    if not outputs:
        raise UsageError("--output-modalities is empty; e.g. --output-modalities S2L2A,LULC.")
    if len(set(outputs)) < len(outputs):
        raise UsageError(f"--output-modalities names a modality twice: {args.output_modalities}.")
    specs = parse_input_specs(args.input)
    scenes = find_scenes(specs)
    many = not all(Path(spec).is_file() for spec in specs.values())  # folders or globs: a folder per scene
    tokenizer_paths = parse_pairs(args.tokenizer, "--tokenizer", resolve_output_modality)
    tokenized_inputs = {name for name in specs if MODALITIES[name].kind == "image_tokens"}  # LULC, NDVI
    unused = sorted(set(tokenizer_paths) - set(outputs) - tokenized_inputs)
    if unused:
        raise UsageError(f"--tokenizer {', '.join(unused)} is given but neither generated (--output-modalities "
                         f"{args.output_modalities}) nor a tokenized input.")  # fmt: skip
    if args.resume and not many:
        raise UsageError("--resume is for many scenes (--input folders or globs).")
    images = [name for name in outputs if name != "Coordinates"]
    names = [f"{name}.{suffix}" for name in images for suffix in ("tif", "png")]
    names += ["Coordinates.json"] if "Coordinates" in outputs else []
    rank, world_size, state = processes(args.device) if many else (0, 1, None)
    if state is not None and args.device == "cuda":
        args.device = str(state.device)
    out_dir = check_target(args.output_dir, overwrite=True, folder=True)
    done: set[str] = set()
    if many:
        settings = {"command": "generate", "model": args.model, "modalities": sorted(specs), "outputs": outputs,
                    "dtype": args.dtype, "tile_size": args.tile_size, "overlap": args.overlap, "seed": args.seed,
                    "timesteps": args.timesteps, "decoding_steps": args.decoding_steps,
                    "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}  # fmt: skip
        done, manifest = open_run_folder(out_dir, settings, args, state, rank)
    else:
        for name in names:
            check_target(out_dir / name, args.overwrite)
    for modality, path in tokenizer_paths.items():
        check_tokenizer(modality, path)
    prepare_run(args)
    mine = shard(scenes, rank, world_size)
    todo = [scene for scene in mine if scene.id not in done]
    if not todo:
        print(f"Every scene of this process ({len(mine)}) is finished in {out_dir}; nothing to do.")
        return
    offsets = parse_offsets(args.offset)
    try:  # a mistake in the inputs shows before the model loads
        SceneSource(todo[0].paths).close()
    except ValueError as error:
        raise ValueError(f"scene {todo[0].id}: {error}" if many else str(error)) from None
    tokenizers = load_tokenizers(tokenizer_paths)
    model = load(TerraMindForGeneration, args.model, DEFAULT_GENERATE_MODEL, dtype=torch_dtype(args.dtype))
    for modality, tokenizer in tokenizers.items():
        model.terramind.set_tokenizer(modality, tokenizer)
    model = model.to(args.device).eval()
    if args.compile:
        _compile_generator(model, tokenizers.values())
    options = dict(decoding_steps=args.decoding_steps, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, timesteps=args.timesteps)  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16, offset=offsets)  # (de)standardizes
    folders = [out_dir / scene.id if many else out_dir for scene in todo]
    runs = generate_scenes(model, todo, folders, outputs, processor, args.tile_size, args.overlap, args.batch_size,
                           generator, args.overwrite or many, max(1, args.num_workers), not args.no_progress,
                           **options)  # fmt: skip
    try:
        for scene, run in zip(todo, runs, strict=False):
            if many:
                manifest.record(scene.id, scene.paths, run.outputs)
            else:
                for target in run.outputs:
                    print(f"Wrote {target}")
    except ValueError as error:
        if "Coordinates are generated for one tile" in str(error):
            raise UsageError(str(error)) from None
        raise
    if many:
        prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
        skipped = f", skipped {len(mine) - len(todo)} finished" if len(mine) > len(todo) else ""
        print(f"{prefix}Generated {len(todo)} scene{'s' if len(todo) != 1 else ''}{skipped} into {out_dir}")


def _compile_generator(model: Any, tokenizers: Any) -> None:
    """torch.compile the generator's encoder and decoder blocks and the given tokenizers' decoders, in place."""
    model.terramind.encoder.compile()
    model.decoder.compile()
    for tokenizer in tokenizers:
        if hasattr(tokenizer, "decoder"):
            tokenizer.decoder.compile()
