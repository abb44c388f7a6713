"""The `terramind` command line: convert original releases, embed scenes, generate modalities, fine-tune, predict."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A user mistake: reported in one line, without a traceback."""


class OneLineErrors:
    """argparse mix-in: a mistake in the arguments is one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Parser(OneLineErrors, argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


# ----------------------------------------------------------------------------- argument types
def _integer(low: int, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse type: an int >= `low` (and a multiple of `multiple_of`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or value % multiple_of:
            multiple = f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}{multiple}, got {text!r}")
        return value

    return parse


def _number(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a float in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {text!r}")
        return value

    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("terramind")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert an original TerraMind model or tokenizer checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original model file, e.g. TerraMind_v1_base.pt")
    source.add_argument("--tokenizer-checkpoint", help="original tokenizer file, e.g. TerraMind_Tokenizer_S2L2A.pt")
    parser.add_argument("--output", required=True, help="folder to write (config + safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--variant", choices=["tiny", "small", "base", "large"], help="released architecture")
    parser.add_argument("--modality", help="tokenizer modality (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI); default: "
                        "from the file name")  # fmt: skip
    parser.add_argument("--num-heads", type=_integer(1), help="attention heads, for checkpoints of no released variant")
    parser.add_argument("--config", help="JSON object of config overrides (TerraMindConfig, or TerraMindTokenizerConfig "
                        "with --tokenizer-checkpoint), e.g. '{\"hidden_act\": \"gelu\"}'")  # fmt: skip
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the converted folder to this Hub repo")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from .conversion import check_checkpoint_file
    from .outputs import atomic_folder

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
            from .tokenizer_conversion import convert_tokenizer_checkpoint

            convert_tokenizer_checkpoint(args.tokenizer_checkpoint, staging, args.modality, push_to_hub=args.push_to_hub,
                                         config_overrides=overrides or None)  # fmt: skip
        else:
            from .conversion import convert_checkpoint

            if args.num_heads:
                overrides["num_attention_heads"] = args.num_heads
            convert_checkpoint(args.checkpoint, staging, variant=args.variant, config_overrides=overrides,
                               push_to_hub=args.push_to_hub)  # fmt: skip
    print(f"Converted into {args.output}")


# ----------------------------------------------------------------------------- shared options
DEFAULT_EMBED_MODEL = "ibm-esa-geospatial/TerraMind-1.0-tiny"
DEFAULT_GENERATE_MODEL = "ibm-esa-geospatial/TerraMind-1.0-base"
OUTPUT_DTYPES = {"S2L2A": "int16", "S2L1C": "int16", "RGB": "uint8", "DEM": "float32", "NDVI": "float32",
                 "S1GRD": "float32", "S1RTC": "float32", "LULC": "uint8"}  # fmt: skip


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", required=True, metavar="MODALITY=PATH",
                        help="an input GeoTIFF per modality, e.g. --input S2L2A=scene.tif (repeat for more); embed and "
                        "generate also take a folder or a glob (S2L2A='data/*.tif'), pairing modalities by file name")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model precision")
    parser.add_argument("--batch-size", type=_integer(1), default=8, help="tiles per forward pass")
    parser.add_argument("--tile-size", type=_integer(16, 16), default=224, help="tile size in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (loading ones too)")


def _parse_pairs(entries: list[str], option: str, resolve: Callable[[str], str]) -> dict[str, str]:
    """MODALITY=PATH entries -> {canonical modality: path}; one-line errors for malformed or repeated ones."""
    pairs: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{option} takes MODALITY=PATH (e.g. S2L2A=scene.tif), got {entry!r}.")
        modality = resolve(name)  # clear error for unknown names
        if modality in pairs:
            raise UsageError(f"{option} names {modality} twice ({pairs[modality]} and {path}).")
        pairs[modality] = path
    return pairs


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


def _check_device(name: str) -> None:
    """The device must exist in this torch build and machine (checked before anything is loaded)."""
    import torch

    from .errors import first_line

    try:
        torch.empty(0, device=torch.device(name))
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {name} is not available here ({first_line(error)}); use --device cpu.") from None


def _check_model(name: str, option: str = "--model") -> None:
    """A local --model must be a TerraMind model folder (converted, or an original release); checked before
    loading, so that a tokenizer folder or a typo fails in one line."""
    from .conversion import ORIGINAL_MODEL_FILE, find_release_file
    from .hub import local_source

    local = local_source(name)
    if local is None:  # a Hub repo id
        return
    path = Path(local)
    if path.is_file():
        if not ORIGINAL_MODEL_FILE.match(path.name):
            raise UsageError(f"{option} {name} is a file; give a converted model folder, an original release folder "
                             "or a TerraMind_v1_<variant>.pt file.")  # fmt: skip
        return
    if (path / "config.json").is_file():
        model_type = _model_type(path)
        if model_type == "terramind_tokenizer":
            raise UsageError(f"{option} {name} is a TerraMind tokenizer, not a TerraMind model; pass tokenizers as "
                             "--tokenizer MODALITY=PATH.")  # fmt: skip
        if model_type != "terramind":
            raise UsageError(f"{option} {name} holds a {model_type!r} model (config.json), not a TerraMind model.")
        return
    if find_release_file(path, ORIGINAL_MODEL_FILE) is None:
        raise UsageError(f"{option} {name} holds neither a config.json nor an original TerraMind_v1_<variant>.pt.")


def _model_type(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def _check_tokenizer(modality: str, name: str) -> None:
    """A local --tokenizer must be a tokenizer folder or release (checked before anything is loaded)."""
    from .hub import local_source
    from .tokenizer_conversion import ORIGINAL_TOKENIZER_FILE, find_original_tokenizer_checkpoint

    local = local_source(name)
    if local is None or modality == "Coordinates":
        return
    path = Path(local)
    release = path if path.is_file() else find_original_tokenizer_checkpoint(path)
    if release is None or not ORIGINAL_TOKENIZER_FILE.match(release.name):
        if not (path.is_dir() and _model_type(path) == "terramind_tokenizer"):
            raise UsageError(f"--tokenizer {modality}={name} is not a TerraMind tokenizer (a converted folder, an "
                             "original release folder or a TerraMind_Tokenizer_<MODALITY>.pt file).")  # fmt: skip


def _load_tokenizers(paths: dict[str, str]) -> dict[str, Any]:
    """The --tokenizer models, loaded before the model and checked to be of their modality."""
    from .errors import first_line
    from .modeling_terramind_tokenizer import TerraMindTokenizerModel, check_tokenizer_modality

    tokenizers = {}
    for modality, path in paths.items():
        try:
            if modality == "Coordinates":
                from .tokenization_terramind_coords import TerraMindCoordsTokenizer

                tokenizers[modality] = TerraMindCoordsTokenizer.from_pretrained(path)
                continue
            tokenizer = TerraMindTokenizerModel.from_pretrained(path)
        except OSError as error:
            raise UsageError(f"could not load --tokenizer {modality}={path} ({first_line(error)}).") from None
        try:
            check_tokenizer_modality(tokenizer, modality)
        except ValueError as error:
            raise UsageError(f"--tokenizer {modality}={path}: {error}") from None
        tokenizers[modality] = tokenizer.eval()
    return tokenizers


def _load(model_class, name: str, default: str, **kwargs):
    """from_pretrained with a one-line error when a model cannot be reached (offline) or read."""
    try:
        return model_class.from_pretrained(name, **kwargs)
    except OSError as error:
        from .errors import first_line

        hint = (" Without network access, pass --model PATH to a converted folder or to a folder holding the "
                "original TerraMind_v1_*.pt.") if name == default else ""  # fmt: skip
        raise UsageError(f"could not load model {name!r} ({first_line(error)}).{hint}") from None


def _prepare_run(args: argparse.Namespace) -> None:
    """Checks and settings every model-running command shares: device, model source, dtype advice, progress."""
    from .hardware import warn_if_slow_bf16

    _check_device(args.device)
    _check_model(args.model)
    warn_if_slow_bf16(args.device, args.dtype == "bf16")
    if args.no_progress:
        from transformers.utils import logging as transformers_logging

        args.restore_progress_bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # also the Hub's download bars


# ----------------------------------------------------------------------------- embed
def _add_embed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("embed", help="per-patch embeddings of scenes (GeoTIFF, GeoParquet or safetensors)")
    parser.add_argument("--model", default=DEFAULT_EMBED_MODEL, help="converted folder, original release or Hub repo")
    parser.add_argument("--output", required=True, help="one scene: emb.tif (D bands at 1/16 resolution) or "
                        "emb.safetensors; many: a folder (a GeoTIFF per scene) or emb.parquet (GeoParquet rows)")  # fmt: skip
    parser.add_argument("--merge-method", default="mean", choices=["mean", "max", "concat"],
                        help="how modalities are merged per patch")  # fmt: skip
    parser.add_argument("--per-patch", action="store_true", help="GeoParquet: a row per 16x16 patch, not per tile")
    parser.add_argument("--resume", action="store_true", help="continue an earlier run into the same --output folder: "
                        "skip the scenes its manifest lists as finished")  # fmt: skip
    _add_scale_options(parser)
    _add_runtime_options(parser)
    parser.set_defaults(run=_run_embed)


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-workers", type=_integer(0), default=2,
                        help="loader processes that read and preprocess scenes while the model runs (with folder or "
                        "glob inputs; one scene is read in the main process)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long runs)")


def _open_run_folder(folder: Path, settings: dict, args: argparse.Namespace, state: Any, rank: int):
    """A many-scene run's output folder, checked by every rank (the same verdict) and then started or resumed by
    rank 0: the scenes already finished (with --resume) and this rank's manifest."""
    from .manifest import Manifest, check_folder, finished_scenes, start_folder

    check_folder(folder, settings, args.resume, args.overwrite)
    if state is not None:
        state.wait_for_everyone()  # all have checked before rank 0 changes the folder
    if rank == 0:
        start_folder(folder, settings, args.resume, args.overwrite)
    if state is not None:
        state.wait_for_everyone()
    return (finished_scenes(folder) if args.resume else set()), Manifest(folder, rank)


def _run_embed(args: argparse.Namespace) -> None:
    from .embedding import SceneFile, SceneGeoParquet, SceneGeoTiffs, embed_batches, tile_loader
    from .modeling_terramind import TerraMindModel
    from .outputs import check_target
    from .scenes import find_scenes, shard

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
    scenes = find_scenes(_parse_input_specs(args.input))
    rank, world_size, state = _processes(args.device)
    if single_file and (len(scenes) > 1 or world_size > 1):
        what = f"{len(scenes)} scenes" if len(scenes) > 1 else f"{world_size} processes"
        raise UsageError(f"--output {output} is one file, but there are {what}; give a folder (a GeoTIFF per scene) "
                         "or a name ending in .parquet.")  # fmt: skip
    if state is not None and args.device == "cuda":
        args.device = str(state.device)  # accelerate launch: a GPU per process
    _prepare_run(args)
    settings = {"command": "embed", "model": args.model, "modalities": sorted(scenes[0].paths), "dtype": args.dtype,
                "merge_method": args.merge_method, "tile_size": args.tile_size,
                "format": "parquet" if parquet else "geotiff", "per_patch": args.per_patch}  # fmt: skip
    done: set[str] = set()
    if not single_file:
        done, manifest = _open_run_folder(output, settings, args, state, rank)
    mine = shard(scenes, rank, world_size)
    todo = [scene for scene in mine if scene.id not in done]
    if not todo:
        print(f"Every scene of this process ({len(mine)}) is finished in {output}; nothing to do.")
        return
    from .scenes import read_scene_inputs

    try:  # a mistake in the inputs shows before the model loads; later scenes are read by the loader
        read_scene_inputs(todo[0].paths)
    except ValueError as error:
        raise ValueError(f"scene {todo[0].id}: {error}") from None
    model = _load(TerraMindModel, args.model, DEFAULT_EMBED_MODEL, modalities=list(scenes[0].paths),
                  merge_method=args.merge_method, dtype=_torch_dtype(args.dtype))  # fmt: skip
    model = model.to(args.device).eval()
    if args.compile:
        import torch

        model = torch.compile(model)
    if single_file:
        writer = SceneFile(output, args.overwrite)
    elif parquet:
        writer = SceneGeoParquet(output, args.model, args.per_patch, rank)
    else:
        writer = SceneGeoTiffs(output)
    loader = tile_loader(todo, args.tile_size, args.batch_size, args.num_workers if len(todo) > 1 else 0)
    written = 0

    def commit(committed) -> None:
        nonlocal written
        for scene, paths in committed:
            if not single_file:
                manifest.record(scene.id, scene.paths, paths)
            written += 1

    from tqdm.auto import tqdm

    try:
        with tqdm(desc="embedding tiles", unit="tile", disable=args.no_progress) as bar:
            for number, result in enumerate(embed_batches(model, loader, args.device, _torch_dtype(args.dtype)), 1):
                commit(writer.add(result))
                bar.update(result.facts.num_tiles)
                bar.set_postfix_str(f"{number}/{len(todo)} scenes", refresh=False)
        commit(writer.close())
    except BaseException:
        writer.discard()
        raise
    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    skipped = f", skipped {len(mine) - len(todo)} finished" if len(mine) > len(todo) else ""
    print(f"{prefix}Embedded {written} scene{'s' if written != 1 else ''}{skipped} into {output}")


def _parse_input_specs(entries: list[str]) -> dict[str, str]:
    """--input MODALITY=FILE|FOLDER|GLOB entries -> {canonical modality: spec}."""
    from .modalities import resolve_modality

    return _parse_pairs(entries, "--input", resolve_modality)


def _processes(device: str) -> tuple[int, int, Any]:
    """(rank, world size, accelerate's PartialState or None) of this process; several under `accelerate launch`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # --device cpu (or no GPU): CPU processes that talk over gloo; else a GPU per process (nccl)
    state = PartialState(cpu=device.startswith("cpu") or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


# ----------------------------------------------------------------------------- generate
def _add_generate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="generate modalities of a scene as GeoTIFFs plus PNG quick-looks")
    parser.add_argument("--model", default=DEFAULT_GENERATE_MODEL,
                        help="converted folder, original release or Hub repo (with the decoder)")  # fmt: skip
    parser.add_argument("--output-modalities", required=True, help="comma separated, e.g. S2L2A,LULC")
    parser.add_argument("--output-dir", required=True, help="folder for <MODALITY>.tif and <MODALITY>.png (many "
                        "scenes: <scene>/<MODALITY>.tif ...)")  # fmt: skip
    parser.add_argument("--tokenizer", action="append", default=[], metavar="MODALITY=PATH",
                        help="tokenizer folder or repo per output modality (default: the official repos)")  # fmt: skip
    parser.add_argument("--timesteps", type=_integer(1), default=50, help="diffusion steps of the tokenizer decoders")
    parser.add_argument("--decoding-steps", type=_integer(1), default=1, help="ROAR steps per modality")
    parser.add_argument("--temperature", type=_number(0), default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=_number(0, 1), default=0.8,
                        help="nucleus sampling: keep the most likely tokens up to this probability mass (0: off)")  # fmt: skip
    parser.add_argument("--top-k", type=_integer(0), default=0, help="keep only the k most likely tokens (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--overlap", type=_integer(0, 16), default=64,
                        help="tile overlap in pixels for scenes larger than a tile")  # fmt: skip
    parser.add_argument("--offset", action="append", default=[], metavar="MODALITY=NUMBER",
                        help="added to a modality's standardization means, e.g. S2L2A=1000")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an earlier many-scene run into the same "
                        "--output-dir: skip the scenes its manifest lists as finished")  # fmt: skip
    _add_scale_options(parser)
    _add_runtime_options(parser)
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    import torch

    from .image_processing_terramind import TerraMindImageProcessor
    from .modalities import MODALITIES, resolve_output_modality
    from .modeling_terramind import TerraMindForGeneration
    from .outputs import check_target
    from .scenes import WholeScenes, find_scenes, read_scene_inputs, shard

    outputs = [resolve_output_modality(m.strip()) for m in args.output_modalities.split(",") if m.strip()]
    if not outputs:
        raise UsageError("--output-modalities is empty; e.g. --output-modalities S2L2A,LULC.")
    if len(set(outputs)) < len(outputs):
        raise UsageError(f"--output-modalities names a modality twice: {args.output_modalities}.")
    specs = _parse_input_specs(args.input)
    scenes = find_scenes(specs)
    many = not all(Path(spec).is_file() for spec in specs.values())  # folders or globs: a folder per scene
    tokenizer_paths = _parse_pairs(args.tokenizer, "--tokenizer", resolve_output_modality)
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
    rank, world_size, state = _processes(args.device) if many else (0, 1, None)
    if state is not None and args.device == "cuda":
        args.device = str(state.device)
    out_dir = check_target(args.output_dir, overwrite=True, folder=True)
    done: set[str] = set()
    if many:
        settings = {"command": "generate", "model": args.model, "modalities": sorted(specs), "outputs": outputs,
                    "dtype": args.dtype, "tile_size": args.tile_size, "overlap": args.overlap, "seed": args.seed,
                    "timesteps": args.timesteps, "decoding_steps": args.decoding_steps,
                    "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}  # fmt: skip
        done, manifest = _open_run_folder(out_dir, settings, args, state, rank)
    else:
        for name in names:
            check_target(out_dir / name, args.overwrite)
    for modality, path in tokenizer_paths.items():
        _check_tokenizer(modality, path)
    _prepare_run(args)
    mine = shard(scenes, rank, world_size)
    todo = [scene for scene in mine if scene.id not in done]
    if not todo:
        print(f"Every scene of this process ({len(mine)}) is finished in {out_dir}; nothing to do.")
        return
    offsets = _parse_offsets(args.offset)
    try:  # a mistake in the inputs shows before the model loads
        read_scene_inputs(todo[0].paths, offsets)
    except ValueError as error:
        raise ValueError(f"scene {todo[0].id}: {error}" if many else str(error)) from None
    tokenizers = _load_tokenizers(tokenizer_paths)
    model = _load(TerraMindForGeneration, args.model, DEFAULT_GENERATE_MODEL, dtype=_torch_dtype(args.dtype))
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
    from .geotiff import write_geotiff
    from .outputs import NODATA_VALUES, atomic_outputs
    from .quicklook import save_quicklook

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
    from .modalities import MODALITIES

    bands = MODALITIES[name].bands if name in MODALITIES else ()
    return list(bands) if len(bands) == count else None


# ----------------------------------------------------------------------------- finetune
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", add_help=False,
                            help="fine-tune for segmentation on a GeoTIFF folder (`terramind finetune --help`)")  # fmt: skip
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the fine-tuning and TrainingArguments options; `terramind finetune --help` lists them")  # fmt: skip
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> None:
    from .finetuning import main as finetune_main

    argv = list(args.arguments)
    if not (len(argv) == 1 and argv[0].endswith(".json")):  # a JSON file of arguments is parsed by the script
        parser = _finetune_parser()
        finetuning_args, training_args = parser.parse_args_into_dataclasses(args=argv)  # one-line errors, --help
        _advise_finetuning(finetuning_args, training_args)
    finetune_main(argv)


# ----------------------------------------------------------------------------- pretrain
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain", add_help=False,
                            help="continued pre-training with 4M's any-to-any objective (`terramind pretrain --help`)")  # fmt: skip
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the pre-training and TrainingArguments options; `terramind pretrain --help` lists them")  # fmt: skip
    parser.set_defaults(run=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> None:
    from .training.pretraining import main as pretrain_main

    pretrain_main(list(args.arguments))


# The TrainingArguments that `terramind finetune --help` shows; `--help-all` shows all of them (over a hundred).
COMMON_TRAINING_OPTIONS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "logging_steps", "seed", "bf16", "use_cpu",
    "report_to", "dataloader_num_workers", "disable_tqdm", "resume_from_checkpoint",
)  # fmt: skip


class _HelpAll(argparse.Action):
    """`--help-all`: the help with every option, all TrainingArguments included."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            action.help = getattr(action, "full_help", action.help)
        parser.print_help()
        parser.exit()


def _finetune_parser() -> argparse.ArgumentParser:
    """The fine-tuning options (FinetuningArguments, TrainingArguments) with one-line errors and a `--help` that
    lists the fine-tuning options and the common training ones."""
    from dataclasses import fields

    from transformers import HfArgumentParser, TrainingArguments

    from .finetuning import FinetuningArguments

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    parser = Parser((FinetuningArguments, TrainingArguments), prog="terramind finetune",
                    usage="%(prog)s --data_root DIR [options]",
                    description="Fine-tune TerraMind for segmentation on a GeoTIFF folder with Trainer.")  # fmt: skip
    parser.add_argument("--help-all", action=_HelpAll, help="show every option, all TrainingArguments included")
    shown = {f.name for f in fields(FinetuningArguments)} | set(COMMON_TRAINING_OPTIONS) | {"help", "help_all"}
    for action in parser._actions:
        if action.option_strings and action.dest not in shown:
            action.full_help, action.help = action.help, argparse.SUPPRESS
    return parser


def _advise_finetuning(finetuning_args: Any, training_args: Any) -> None:
    """Warnings before a fine-tuning run: evaluation on training samples, bf16 where the CPU emulates it."""
    import torch
    from transformers.utils import logging

    from .data_terramind import read_split
    from .hardware import warn_if_slow_bf16

    logger = logging.get_logger("terramind.cli")
    train, evaluation = finetuning_args.train_split, finetuning_args.eval_split
    if not evaluation or evaluation == train:
        logger.warning("Evaluating on the training samples (no --eval_split of other samples): the metrics measure "
                       "fit, not generalisation.")  # fmt: skip
    elif train and Path(train).is_file() and Path(evaluation).is_file():
        shared = set(read_split(train)) & set(read_split(evaluation))
        if shared:
            logger.warning(f"{len(shared)} evaluation samples are also training samples ({sorted(shared)[:3]}...): "
                           "the metrics partly measure fit, not generalisation.")  # fmt: skip
    on_cpu = training_args.use_cpu or not torch.cuda.is_available()
    warn_if_slow_bf16("cpu" if on_cpu else "cuda", training_args.bf16)


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
    from .outputs import check_target
    from .prediction import load_predictor, parse_inputs, predict_scene, read_scene, write_prediction

    outputs = [args.output] + ([args.probabilities] if args.probabilities else [])
    if not all(path.endswith((".tif", ".tiff")) for path in outputs):
        raise UsageError("--output and --probabilities must end in .tif/.tiff (GeoTIFF).")
    if args.probabilities and Path(args.probabilities).resolve() == Path(args.output).resolve():
        raise UsageError("--probabilities and --output must be different files.")
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    for target in outputs:  # before any work (the quick-look PNG is checked once the task is known)
        check_target(target, args.overwrite)
    paths = parse_inputs(args.input)
    model, processor = load_predictor(args.model, args.adapter, _torch_dtype(args.dtype), args.device)
    if args.probabilities and type(model).__name__ != "TerraMindForSemanticSegmentation":
        raise UsageError("--probabilities is for segmentation models; this model does pixel regression.")
    inputs, nodata, profile = read_scene(paths, processor)
    overlap = args.overlap if args.overlap is not None else min(64, args.tile_size - 16)
    prediction = predict_scene(model, inputs, nodata, profile, args.tile_size, overlap, args.batch_size,
                               progress=not args.no_progress)  # fmt: skip
    for path in write_prediction(prediction, args.output, args.probabilities, args.overwrite):
        print(f"Wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="terramind", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,embed,generate,finetune,pretrain}")
    _add_convert(sub)
    _add_embed(sub)
    _add_generate(sub)
    _add_finetune(sub)
    _add_pretrain(sub)
    _add_predict(sub)
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
    from .conversion import ConversionError

    # SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so that partial outputs are removed
    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        args.run(args)
    except (UsageError, ConversionError, ValueError, OSError) as error:
        from .errors import one_line

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


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
