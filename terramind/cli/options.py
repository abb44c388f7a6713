"""Shared pieces of the commands: one-line argument errors, argument types, runtime options, model loading."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A user mistake: reported in one line, without a traceback."""


class OneLineErrors:
    """argparse mix-in: a mistake in the arguments is one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Parser(OneLineErrors, argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def integer(low: int, multiple_of: int = 1) -> Callable[[str], int]:
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


def number(low: float, high: float = math.inf) -> Callable[[str], float]:
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


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("terramind")
    except PackageNotFoundError:
        return "unknown"


DEFAULT_EMBED_MODEL = "ibm-esa-geospatial/TerraMind-1.0-tiny"
DEFAULT_GENERATE_MODEL = "ibm-esa-geospatial/TerraMind-1.0-base"
OUTPUT_DTYPES = {"S2L2A": "int16", "S2L1C": "int16", "RGB": "uint8", "DEM": "float32", "NDVI": "float32",
                 "S1GRD": "float32", "S1RTC": "float32", "LULC": "uint8"}  # fmt: skip


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", required=True, metavar="MODALITY=PATH",
                        help="an input GeoTIFF per modality, e.g. --input S2L2A=scene.tif (repeat for more); embed and "
                        "generate also take a folder or a glob (S2L2A='data/*.tif'), pairing modalities by file name")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model precision")
    parser.add_argument("--batch-size", type=integer(1), default=8, help="tiles per forward pass")
    parser.add_argument("--tile-size", type=integer(16, 16), default=224, help="tile size in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (loading ones too)")


def parse_pairs(entries: list[str], option: str, resolve: Callable[[str], str]) -> dict[str, str]:
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


def parse_offsets(entries: list[str]) -> dict[str, float] | None:
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


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _check_device(name: str) -> None:
    """The device must exist in this torch build and machine (checked before anything is loaded)."""
    import torch

    from ..errors import first_line

    try:
        torch.empty(0, device=torch.device(name))
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {name} is not available here ({first_line(error)}); use --device cpu.") from None


def _check_model(name: str, option: str = "--model") -> None:
    """A local --model must be a TerraMind model folder (converted, or an original release); checked before
    loading, so that a tokenizer folder or a typo fails in one line."""
    from ..conversion.checkpoint import ORIGINAL_MODEL_FILE, find_release_file
    from ..hub import local_source

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


def check_tokenizer(modality: str, name: str) -> None:
    """A local --tokenizer must be a tokenizer folder or release (checked before anything is loaded)."""
    from ..conversion.tokenizer import ORIGINAL_TOKENIZER_FILE, find_original_tokenizer_checkpoint
    from ..hub import local_source

    local = local_source(name)
    if local is None or modality == "Coordinates":
        return
    path = Path(local)
    release = path if path.is_file() else find_original_tokenizer_checkpoint(path)
    if release is None or not ORIGINAL_TOKENIZER_FILE.match(release.name):
        if not (path.is_dir() and _model_type(path) == "terramind_tokenizer"):
            raise UsageError(f"--tokenizer {modality}={name} is not a TerraMind tokenizer (a converted folder, an "
                             "original release folder or a TerraMind_Tokenizer_<MODALITY>.pt file).")  # fmt: skip


def load_tokenizers(paths: dict[str, str]) -> dict[str, Any]:
    """The --tokenizer models, loaded before the model and checked to be of their modality."""
    from ..errors import first_line
    from ..modeling_terramind_tokenizer import TerraMindTokenizerModel, check_tokenizer_modality

    tokenizers = {}
    for modality, path in paths.items():
        try:
            if modality == "Coordinates":
                from ..tokenization_terramind_coords import TerraMindCoordsTokenizer

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


def load(model_class, name: str, default: str, **kwargs):
    """from_pretrained with a one-line error when a model cannot be reached (offline) or read."""
    try:
        return model_class.from_pretrained(name, **kwargs)
    except OSError as error:
        from ..errors import first_line

        hint = (" Without network access, pass --model PATH to a converted folder or to a folder holding the "
                "original TerraMind_v1_*.pt.") if name == default else ""  # fmt: skip
        raise UsageError(f"could not load model {name!r} ({first_line(error)}).{hint}") from None


def prepare_run(args: argparse.Namespace) -> None:
    """Checks and settings every model-running command shares: device, model source, dtype advice, progress."""
    from .hardware import warn_if_slow_bf16

    _check_device(args.device)
    _check_model(args.model)
    warn_if_slow_bf16(args.device, args.dtype == "bf16")
    if args.no_progress:
        from transformers.utils import logging as transformers_logging

        args.restore_progress_bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # also the Hub's download bars


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-workers", type=integer(0), default=2,
                        help="loader processes that read and preprocess scenes while the model runs (with folder or "
                        "glob inputs; one scene is read in the main process)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long runs)")


def open_run_folder(folder: Path, settings: dict, args: argparse.Namespace, state: Any, rank: int):
    """A many-scene run's output folder, checked by every rank (the same verdict) and then started or resumed by
    rank 0: the scenes already finished (with --resume) and this rank's manifest."""
    from ..scenes.manifest import Manifest, check_folder, finished_scenes, start_folder

    check_folder(folder, settings, args.resume, args.overwrite)
    if state is not None:
        state.wait_for_everyone()  # all have checked before rank 0 changes the folder
    if rank == 0:
        start_folder(folder, settings, args.resume, args.overwrite)
    if state is not None:
        state.wait_for_everyone()
    return (finished_scenes(folder) if args.resume else set()), Manifest(folder, rank)


def parse_input_specs(entries: list[str]) -> dict[str, str]:
    """--input MODALITY=FILE|FOLDER|GLOB entries -> {canonical modality: spec}."""
    from ..modalities import resolve_modality

    return parse_pairs(entries, "--input", resolve_modality)


def processes(device: str) -> tuple[int, int, Any]:
    """(rank, world size, accelerate's PartialState or None) of this process; several under `accelerate launch`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # --device cpu (or no GPU): CPU processes that talk over gloo; else a GPU per process (nccl)
    state = PartialState(cpu=device.startswith("cpu") or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state
