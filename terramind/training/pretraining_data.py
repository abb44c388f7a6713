"""Continued pre-training data: TerraMesh-layout folders -> raw inputs (read lazily) and token grids (once, cached).

One folder per modality under `data_root` (`S2L2A/`, `S1RTC/`, `LULC/`, ...), files paired by name, as TerraMesh
and `samples/terramesh` are. A sample may lack some modalities (the masking then draws from the ones it has).
Every modality the objective needs as tokens — the targets, and tokenized inputs such as LULC or NDVI — is read,
standardized and tokenized ONCE by its frozen tokenizer with `datasets.Dataset.map` (batched, `num_proc`
processes), written in shards of Arrow files under `cache_dir`: a killed run keeps its finished shards and the next
run tokenizes only the rest. Raw image inputs stay file paths and are read by the loader workers
(`set_transform`). Coordinates, an input of text tokens, are the longitude / latitude of the tile's centre, read from
its georeference (no folder).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modalities import MODALITIES, resolve_modality, resolve_output_modality
from ..scenes.discovery import index_folder
from .data_generation import TargetTokenizer
from .transforms import TerraMindSampleTransform

logger = logging.getLogger(__name__)


COORDINATES = "Coordinates"


def is_tokenized_input(name: str) -> bool:
    """Whether an input modality enters the encoder as token ids (LULC, NDVI) rather than as raw patches."""
    return MODALITIES[resolve_modality(name)].kind == "image_tokens"


def is_coordinates(name: str) -> bool:
    return MODALITIES[resolve_modality(name)].kind == "sequence"


def raster_center_lonlat(path: str | Path) -> tuple[float, float] | None:
    """Longitude and latitude (degrees) of a raster's centre; None without a CRS."""
    from rasterio.warp import transform as reproject

    from ..scenes.geotiff import open_raster

    with open_raster(path) as src:
        if src.crs is None:
            return None
        x, y = src.transform @ (src.width / 2, src.height / 2)
        lon, lat = reproject(src.crs, "EPSG:4326", [x], [y])
    return float(lon[0]), float(lat[0])


def list_samples(data_root: str | Path, modalities: Sequence[str], input_modalities: Sequence[str],
                 target_modalities: Sequence[str], image_grep: str = "*.tif") -> dict[str, dict[str, str]]:  # fmt: skip
    """Sample id -> {modality: file} over the union of the modality folders. Samples without any input or any
    target modality cannot train and are left out with a warning that counts them."""
    root = Path(data_root)
    missing = [name for name in modalities if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{root} has no folder for {', '.join(missing)}; expected one folder per modality.")
    indexes = {name: index_folder(root / name, image_grep) for name in modalities}
    samples: dict[str, dict[str, str]] = {}
    for name, index in indexes.items():
        for sample_id, path in index.items():
            samples.setdefault(sample_id, {})[name] = str(path)
    usable = {i: files for i, files in sorted(samples.items())
              if set(files) & set(input_modalities) and set(files) & set(target_modalities)}  # fmt: skip
    if len(usable) < len(samples):
        logger.warning(f"{len(samples) - len(usable)} of {len(samples)} samples under {root} have no input or no "
                       f"target modality and are left out.")  # fmt: skip
    if not usable:
        raise ValueError(f"No sample under {root} has a file of an input and of a target modality.")
    return usable


def build_pretraining_dataset(
    data_root: str | Path,
    input_modalities: Sequence[str],
    target_modalities: Sequence[str],
    model: Any,
    processor: Any = None,
    sample_ids: Sequence[str] | None = None,
    image_grep: str = "*.tif",
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    num_proc: int | None = None,
    crop_size: int | tuple[int, int] | None = None,
    shard_size: int = 1024,
    fixed_masks: bool = False,
):
    """A `datasets.Dataset` of pre-training samples (rows: `pixel_values` {raw input: (C, H, W) or None}, `tokens`
    {tokenized modality: (h, w) LongTensor or None}, `sample_id`).

    Args:
        input_modalities / target_modalities: names as in `terramind pretrain`; a modality may be both (its raw
            patches as inputs, its tokens as targets: the masking keeps the two disjoint per position).
        model: the `TerraMindForGeneration` whose frozen tokenizers tokenize the targets and tokenized inputs.
        sample_ids: the samples to use (default: all usable ones, see `list_samples`).
        cache_dir: folder of the token shards (default: `tokens/` in the terramind cache).
        num_proc: processes tokenizing at once (`Dataset.map`).
        crop_size: center crop of every raster (the tokens are computed once, so crops cannot be random).
        shard_size: samples per cached shard (the unit a resumed tokenization skips).
        fixed_masks: rows carry a `mask_seed` (from the sample id), so that evaluation draws the same input and
            target tokens every time.
    """
    import datasets

    from ..conversion.checkpoint import default_cache_dir

    tokenized = list(dict.fromkeys([*[m for m in input_modalities if is_tokenized_input(m)], *target_modalities]))
    for name in target_modalities:
        resolve_output_modality(name)  # a one-line error for a modality that cannot be a target
    names = list(dict.fromkeys([m for m in [*input_modalities, *target_modalities] if not is_coordinates(m)]))
    folders = [m for m in input_modalities if not is_coordinates(m)]
    samples = list_samples(data_root, names, folders or names, target_modalities, image_grep)
    ids = list(samples) if sample_ids is None else list(sample_ids)
    unknown = [i for i in ids if i not in samples]
    if unknown:
        raise ValueError(f"Samples {unknown[:5]} are not usable samples under {data_root}.")
    raw = [m for m in input_modalities if not is_tokenized_input(m) and not is_coordinates(m)]
    coordinates = next((m for m in input_modalities if is_coordinates(m)), None)
    table = datasets.Dataset.from_dict({
        "sample_id": ids,
        "input_paths": [{m: samples[i].get(m) for m in raw} for i in ids],
        "reference_path": [next(iter(samples[i].values())) for i in ids],
    })  # fmt: skip
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    tokenize = TokenGridTokenizer(model, {m: resolve_output_modality(m) for m in tokenized}, processor, crop_size)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    # Only the token grids are cached (keyed by their files, the crop and the tokenizers); the other columns are
    # rebuilt every run, so that other inputs or settings never meet a stale cache.
    token_paths = datasets.Dataset.from_dict({"token_paths": [{m: samples[i].get(m) for m in tokenized}
                                                               for i in ids]})  # fmt: skip
    shards = []
    for start in range(0, len(token_paths), shard_size):
        shard = token_paths.select(range(start, min(start + shard_size, len(token_paths))))
        key = tokenize.fingerprint([[p for p in row.values() if p] for row in shard["token_paths"]], crop_size)
        shards.append(shard.map(tokenize, batched=True, batch_size=batch_size, num_proc=num_proc,
                                cache_file_name=str(cache / f"pretraining-tokens-{key}.arrow"),
                                load_from_cache_file=True, remove_columns=["token_paths"],
                                desc="Tokenizing").select_columns(["tokens"]))  # fmt: skip
    tokens = shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)
    table = datasets.concatenate_datasets([table, tokens], axis=1)
    table.set_transform(PretrainingSampleTransform(processor, crop_size, fixed_masks, coordinates))
    return table


class TokenGridTokenizer(TargetTokenizer):
    """`Dataset.map` function: the token grids of every tokenized modality a sample has ({name: grid or None})."""

    @torch.no_grad()
    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = batch["token_paths"]
        tokens: list[dict[str, Any]] = [dict.fromkeys(self.tokenizers) for _ in rows]
        for name, tokenizer in self.tokenizers.items():
            present = [row for row, paths in enumerate(rows) if paths.get(name)]
            if not present:
                continue
            images = torch.stack([self.reader.process_sample({name: rows[row][name]})[name] for row in present])
            grids = tokenizer.encode(images.to(tokenizer.device)).tokens.cpu().numpy().astype(np.int32)
            for row, grid in zip(present, grids, strict=True):
                tokens[row][name] = grid.tolist()
        return {"tokens": tokens}


class PretrainingSampleTransform:
    """`set_transform` function: reads and standardizes a sample's raw inputs; token grids become tensors;
    `coordinates` (the input's name, e.g. "Coordinates") adds the tile centre's (lon, lat) to the raw inputs."""

    def __init__(self, processor: Any = None, crop_size: tuple[int, int] | None = None, fixed_masks: bool = False,
                 coordinates: str | None = None):  # fmt: skip
        self.reader = TerraMindSampleTransform(processor, task="classification", crop_size=crop_size)
        self.fixed_masks = fixed_masks
        self.coordinates = coordinates

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"pixel_values": [], "tokens": [], "sample_id": list(batch["sample_id"])}
        for paths, grids, reference in zip(batch["input_paths"], batch["tokens"], batch["reference_path"], strict=True):
            present = {name: path for name, path in paths.items() if path}
            images = self.reader.process_sample(present) if present else {}
            raw = {name: images.get(name) for name in paths}
            if self.coordinates:
                lonlat = raster_center_lonlat(reference)
                raw[self.coordinates] = None if lonlat is None else torch.tensor(lonlat, dtype=torch.float32)
            out["pixel_values"].append(raw)
            out["tokens"].append({name: None if grid is None else torch.as_tensor(grid, dtype=torch.long)
                                  for name, grid in grids.items()})  # fmt: skip
        if self.fixed_masks:
            out["mask_seed"] = [int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) for i in batch["sample_id"]]
        return out


__all__ = ["PretrainingSampleTransform", "TokenGridTokenizer", "build_pretraining_dataset", "is_coordinates",
           "is_tokenized_input", "list_samples", "raster_center_lonlat"]  # fmt: skip
