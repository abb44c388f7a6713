"""`terramind generate`: generated modalities of scenes as GeoTIFFs plus PNG quick-looks."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .options import (
    DEFAULT_GENERATE_MODEL,
    OUTPUT_DTYPES,
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
    from ..outputs import check_target
    from ..scenes import WholeScenes, find_scenes, read_scene_inputs, shard

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
        read_scene_inputs(todo[0].paths, offsets)
    except ValueError as error:
        raise ValueError(f"scene {todo[0].id}: {error}" if many else str(error)) from None
    tokenizers = load_tokenizers(tokenizer_paths)
    model = load(TerraMindForGeneration, args.model, DEFAULT_GENERATE_MODEL, dtype=torch_dtype(args.dtype))
    for modality, tokenizer in tokenizers.items():
        model.terramind.set_tokenizer(modality, tokenizer)
    model = model.to(args.device).eval()
    if args.compile:
        _compile_generator(model, tokenizers.values())
    options = dict(output_modalities=outputs, decoding_steps=args.decoding_steps, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, timesteps=args.timesteps,
                   progress=not args.no_progress and not many)  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16, offset=offsets)  # destandardizes the outputs
    loader = torch.utils.data.DataLoader(WholeScenes(todo, offsets), batch_size=None, collate_fn=_as_is,
                                         num_workers=min(args.num_workers, len(todo)) if many else 0)  # fmt: skip

    def write(items: list, generated: dict) -> None:
        physical = {name: value.cpu() for name, value in processor.post_process_generation(generated).items()}
        for index, item in enumerate(items):
            folder = out_dir / item.scene.id if many else out_dir
            scene_outputs = {name: value[index : index + 1] for name, value in physical.items()}
            written = _write_generated(folder, images, scene_outputs, item, args.overwrite or many)
            if many:
                manifest.record(item.scene.id, item.scene.paths, written)
            else:
                for target in written:
                    print(f"Wrote {target}")

    pending: dict[tuple[int, int], list] = {}  # one-tile scenes by size, generated in batches across scenes
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc="generating scenes", unit="scene", disable=args.no_progress or not many) as bar:
        for item in loader:
            if item.error:
                raise ValueError(item.error)
            padded_h, padded_w = item.no_data.shape
            tile = min(args.tile_size, padded_h, padded_w)
            one_tile = (padded_h, padded_w) == (tile, tile)
            if "Coordinates" in outputs and not one_tile:
                raise UsageError(f"Coordinates are generated for one tile; scene {item.scene.id} is larger than one "
                                 "tile (--tile-size).")  # fmt: skip
            if one_tile:
                group = pending.setdefault((padded_h, padded_w), [])
                group.append(item)
                if len(group) < args.batch_size:
                    continue
                pending.pop((padded_h, padded_w))
                inputs = {k: torch.cat([i.inputs[k] for i in group]).to(args.device) for k in item.inputs}
                write(group, model.generate(inputs, generator=generator, **options))
                bar.update(len(group))
            else:
                inputs = {k: v.to(args.device) for k, v in item.inputs.items()}
                write([item], model.generate_tiled(inputs, tile_size=tile, overlap=min(args.overlap, tile - 16),
                                                   batch_size=args.batch_size, generator=generator, **options))  # fmt: skip
                bar.update()
        for group in pending.values():
            inputs = {k: torch.cat([i.inputs[k] for i in group]).to(args.device) for k in group[0].inputs}
            write(group, model.generate(inputs, generator=generator, **options))
            bar.update(len(group))
    if many:
        prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
        skipped = f", skipped {len(mine) - len(todo)} finished" if len(mine) > len(todo) else ""
        print(f"{prefix}Generated {len(todo)} scene{'s' if len(todo) != 1 else ''}{skipped} into {out_dir}")


def _as_is(item: Any) -> Any:
    return item


def _compile_generator(model: Any, tokenizers: Any) -> None:
    """torch.compile the generator's encoder and decoder blocks and the given tokenizers' decoders, in place."""
    model.terramind.encoder.compile()
    model.decoder.compile()
    for tokenizer in tokenizers:
        if hasattr(tokenizer, "decoder"):
            tokenizer.decoder.compile()


def _write_generated(folder: Path, images: list[str], physical: dict, item: Any, overwrite: bool) -> list[Path]:
    """One scene's generated modalities: a GeoTIFF and a PNG quick-look each (Coordinates.json), all or none."""
    from ..geotiff import write_geotiff
    from ..outputs import NODATA_VALUES, atomic_outputs
    from ..quicklook import save_quicklook

    profile = item.sample.profile
    height, width = profile["height"], profile["width"]
    targets = [folder / f"{name}.{suffix}" for name in images for suffix in ("tif", "png")]
    targets += [folder / "Coordinates.json"] if "Coordinates" in physical else []
    missing = item.no_data[:height, :width].numpy()
    with atomic_outputs(targets, overwrite) as partial:
        if "Coordinates" in physical:
            lon, lat = (float(v) for v in physical.pop("Coordinates")[0])
            partial[folder / "Coordinates.json"].write_text(json.dumps({"lon": lon, "lat": lat}))
        for name in images:
            values = physical[name][0, :, :height, :width].float().numpy()
            values[:, missing] = math.nan  # pixels without input data: nodata, not made-up values
            dtype = OUTPUT_DTYPES.get(name, "float32")
            write_geotiff(partial[folder / f"{name}.tif"], values, profile, dtype=dtype, nodata=NODATA_VALUES[dtype],
                          band_names=_band_names(name, values.shape[0]))  # fmt: skip
            save_quicklook(partial[folder / f"{name}.png"], name, values)
    return targets


def _band_names(name: str, count: int) -> list[str] | None:
    from ..modalities import MODALITIES

    bands = MODALITIES[name].bands if name in MODALITIES else ()
    return list(bands) if len(bands) == count else None
