"""`terramind embed`: per-patch embeddings of scenes (GeoTIFF, GeoParquet or safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    DEFAULT_EMBED_MODEL,
    UsageError,
    add_runtime_options,
    add_scale_options,
    load,
    open_run_folder,
    parse_input_specs,
    prepare_run,
    processes,
    torch_dtype,
)


def add_embed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("embed", help="per-patch embeddings of scenes (GeoTIFF, GeoParquet or safetensors)")
    parser.add_argument("--model", default=DEFAULT_EMBED_MODEL, help="converted folder, original release or Hub repo")
    parser.add_argument("--output", required=True, help="one scene: emb.tif (D bands at 1/16 resolution) or "
                        "emb.safetensors; many: a folder (a GeoTIFF per scene) or emb.parquet (GeoParquet rows)")  # fmt: skip
    parser.add_argument("--merge-method", default="mean", choices=["mean", "max", "concat"],
                        help="how modalities are merged per patch")  # fmt: skip
    parser.add_argument("--per-patch", action="store_true", help="GeoParquet: a row per 16x16 patch, not per tile")
    parser.add_argument("--resume", action="store_true", help="continue an earlier run into the same --output folder: "
                        "skip the scenes its manifest lists as finished")  # fmt: skip
    add_scale_options(parser)
    add_runtime_options(parser)
    parser.set_defaults(run=_run_embed)


def _run_embed(args: argparse.Namespace) -> None:
    from ..modeling_terramind import TerraMindModel
    from ..scenes import find_scenes, shard
    from ..scenes.embedding import GeoParquetSink, GeoTiffSink, SafetensorsSink, embed_scenes
    from ..scenes.outputs import check_target

    output = args.output.rstrip("/")
    if Path(output).suffix not in ("", ".tif", ".tiff", ".safetensors", ".parquet") and not Path(output).is_dir():
        raise UsageError("--output must end in .tif/.tiff (GeoTIFF), .safetensors or .parquet (GeoParquet), or be a "
                         "folder (a GeoTIFF per scene).")  # fmt: skip
    single_file = output.endswith((".tif", ".tiff", ".safetensors"))
    parquet = output.endswith(".parquet")
    if args.per_patch and not parquet:
        raise UsageError("--per-patch is for GeoParquet outputs (--output x.parquet).")
    if args.resume and single_file:
        raise UsageError("--resume is for folder outputs (a folder of GeoTIFFs or x.parquet).")
    if single_file:
        check_target(output, args.overwrite)
    scenes = find_scenes(parse_input_specs(args.input))
    rank, world_size, state = processes(args.device)
    if single_file and (len(scenes) > 1 or world_size > 1):
        what = f"{len(scenes)} scenes" if len(scenes) > 1 else f"{world_size} processes"
        raise UsageError(f"--output {output} is one file, but there are {what}; give a folder (a GeoTIFF per scene) "
                         "or a name ending in .parquet.")  # fmt: skip
    if state is not None and args.device == "cuda":
        args.device = str(state.device)  # accelerate launch: a GPU per process
    prepare_run(args)
    settings = {"command": "embed", "model": args.model, "modalities": sorted(scenes[0].paths), "dtype": args.dtype,
                "merge_method": args.merge_method, "tile_size": args.tile_size,
                "format": "parquet" if parquet else "geotiff", "per_patch": args.per_patch}  # fmt: skip
    done: set[str] = set()
    if not single_file:
        done, manifest = open_run_folder(output, settings, args, state, rank)
    mine = shard(scenes, rank, world_size)
    todo = [scene for scene in mine if scene.id not in done]
    if not todo:
        print(f"Every scene of this process ({len(mine)}) is finished in {output}; nothing to do.")
        return
    from ..scenes.engine import SceneSource

    try:  # a mistake in the inputs shows before the model loads; later scenes are opened as they come
        SceneSource(todo[0].paths).close()
    except ValueError as error:
        raise ValueError(f"scene {todo[0].id}: {error}") from None
    model = load(TerraMindModel, args.model, DEFAULT_EMBED_MODEL, modalities=list(scenes[0].paths),
                  merge_method=args.merge_method, dtype=torch_dtype(args.dtype))  # fmt: skip
    model = model.to(args.device).eval()
    if args.compile:
        import torch

        model = torch.compile(model)
    if single_file and output.endswith(".safetensors"):
        sink = SafetensorsSink(output, args.overwrite)
    elif single_file:
        sink = GeoTiffSink(output, args.overwrite)
    elif parquet:
        sink = GeoParquetSink(output, args.model, args.per_patch, rank)
    else:
        sink = GeoTiffSink(output, folder=True)
    written = skipped = 0

    def commit(committed) -> None:
        nonlocal written
        for scene, paths in committed:
            if not single_file:
                manifest.record(scene.id, scene.paths, paths)
            written += 1

    try:
        for run, committed in embed_scenes(model, todo, sink, args.tile_size, args.batch_size,
                                           max(1, args.num_workers), args.device, torch_dtype(args.dtype),
                                           progress=not args.no_progress):  # fmt: skip
            skipped += run.skipped
            commit(committed)
        commit(sink.close())
    except BaseException:
        sink.discard()
        raise
    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    finished = f", skipped {len(mine) - len(todo)} finished" if len(mine) > len(todo) else ""
    empty = f" ({skipped} tiles without data skipped)" if skipped else ""
    print(f"{prefix}Embedded {written} scene{'s' if written != 1 else ''}{finished} into {output}{empty}")


