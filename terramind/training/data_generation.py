"""Training data for the generator: GeoTIFF folders -> inputs and target token grids, tokenized once and cached.

Fine-tuning `TerraMindForGeneration` learns to predict the *tokens* of a target modality (its frozen tokenizer's
codes), so targets are tokenized once, up front, with `datasets.Dataset.map` (batched, written to an Arrow file in
`cache_dir` and reused while the files and the tokenizers are unchanged); the inputs are read and standardized
lazily, per batch, as for the task heads. Rows index as `{input modality: tensor, ..., "labels": {target: (h, w)
token grid}}`, which `TerraMindDataCollator` batches and `TerraMindForGeneration.forward` takes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conversion.checkpoint import default_cache_dir
from ..modalities import resolve_modality, resolve_output_modality
from ..scenes.discovery import index_folder
from .layout import find_layout, read_split
from .transforms import TerraMindSampleTransform


def build_generation_dataset(
    data_root: str | Path,
    input_modalities: Sequence[str],
    target_modalities: Sequence[str],
    model: Any,
    processor: Any = None,
    split: str | Path | Sequence[str] | None = None,
    image_grep: str | Mapping[str, str] = "*.tif",
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    crop_size: int | tuple[int, int] | None = None,
):
    """A `datasets.Dataset` of generator training samples from one subfolder per modality under `data_root`.

    Args:
        input_modalities: modalities the generator reads (raw images; LULC/NDVI maps are tokenized by the model).
        target_modalities: modalities it learns to generate (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI); each is read,
            standardized by `processor` and tokenized with `model`'s frozen tokenizer for it.
        model: the `TerraMindForGeneration` (or a PEFT wrapper of it) whose tokenizers tokenize the targets.
        processor: `TerraMindImageProcessor` (default: v1 statistics, no resizing).
        split: split file or list of sample ids (default: every sample found in all folders).
        image_grep: file pattern (per modality as a dict); the '*' part is the sample id.
        cache_dir: folder for the tokenized targets (default: `tokens/` in the terramind cache, `TERRAMIND_CACHE`).
        batch_size: samples tokenized at once.
        crop_size: center crop of every raster (inputs and targets alike: the targets are tokenized once, so crops
            cannot be random).
    """
    import datasets

    inputs = [resolve_modality(name) for name in input_modalities]
    targets = [resolve_output_modality(name) for name in target_modalities]
    if not inputs or not targets:
        raise ValueError("Give at least one input and one target modality.")
    overlap = sorted(set(inputs) & set(targets))
    if overlap:
        raise ValueError(f"{', '.join(overlap)} given as both input and target; a generator learns targets it "
                         f"is not given.")  # fmt: skip
    names = list(dict.fromkeys([*input_modalities, *target_modalities]))
    folders, _ = find_layout(data_root, names, None, needs_labels=False)
    indexes = {name: index_folder(folder, _pattern(image_grep, name)) for name, folder in folders.items()}
    ids = sorted(set.intersection(*(set(index) for index in indexes.values())))
    if split is not None:
        wanted = read_split(split)
        missing = [i for i in wanted if i not in ids]
        if missing:
            raise ValueError(f"Split samples {missing[:5]} lack a file in one of {', '.join(folders)}.")
        ids = wanted
    if not ids:
        raise ValueError(f"No sample has a file in every folder of {', '.join(folders)} under {data_root}.")
    paths = {name: [str(indexes[name][i]) for i in ids] for name in names}
    table = datasets.Dataset.from_dict({"sample_id": ids, "pixel_values": [
        {name: paths[name][row] for name in input_modalities} for row in range(len(ids))]})  # fmt: skip
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    tokenize = TargetTokenizer(model, dict(zip(target_modalities, targets, strict=True)), processor, crop_size)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    key = tokenize.fingerprint([paths[name] for name in target_modalities], crop_size)
    table = table.add_column("target_paths", [{name: paths[name][row] for name in target_modalities}
                                              for row in range(len(ids))])  # fmt: skip
    table = table.map(tokenize, batched=True, batch_size=batch_size, cache_file_name=str(cache / f"tokens-{key}.arrow"),
                      load_from_cache_file=True, remove_columns=["target_paths"], desc="Tokenizing targets")  # fmt: skip
    table.set_transform(GenerationSampleTransform(processor, crop_size))
    return table


def _pattern(image_grep: str | Mapping[str, str], name: str) -> str:
    return image_grep.get(name, "*.tif") if isinstance(image_grep, Mapping) else image_grep


class TargetTokenizer:
    """`Dataset.map` function: reads and standardizes target rasters, returns their token grids as the "labels"
    column ({target: grid} per sample; named as the model's argument, so that Trainer keeps it)."""

    def __init__(self, model: Any, targets: Mapping[str, str], processor: Any = None,
                 crop_size: tuple[int, int] | None = None):  # fmt: skip
        generator = getattr(model, "get_base_model", lambda: model)()
        self.tokenizers = {name: generator.terramind.get_tokenizer(target) for name, target in targets.items()}
        self.reader = TerraMindSampleTransform(processor, task="classification", crop_size=crop_size)

    def fingerprint(self, files: Sequence[Sequence[str]], crop_size: tuple[int, int] | None = None) -> str:
        """Changes with the target files (path, size, time), the crop and the tokenizers' weights."""
        digest = hashlib.sha256(repr(crop_size).encode())
        for group in files:
            for path in group:
                stat = Path(path).stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        for name, tokenizer in self.tokenizers.items():
            digest.update(name.encode())
            for tensor_name, tensor in sorted(tokenizer.state_dict().items()):
                digest.update(f"{tensor_name}:{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        samples = [self.reader.process_sample(paths) for paths in batch["target_paths"]]
        tokens = {}
        for name, tokenizer in self.tokenizers.items():
            images = torch.stack([sample[name] for sample in samples]).to(tokenizer.device)
            tokens[name] = tokenizer.encode(images).tokens.cpu().numpy().astype(np.int32).tolist()
        return {"labels": [{name: grids[row] for name, grids in tokens.items()} for row in range(len(samples))]}


class GenerationSampleTransform:
    """`set_transform` function: reads and standardizes the inputs; the cached token grids become `labels`."""

    def __init__(self, processor: Any = None, crop_size: tuple[int, int] | None = None):
        self.reader = TerraMindSampleTransform(processor, task="classification", crop_size=crop_size)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        samples = [self.reader.process_sample(paths) for paths in batch["pixel_values"]]
        out = {key: [sample[key] for sample in samples] for key in samples[0]}
        out["labels"] = [{name: torch.as_tensor(grid, dtype=torch.long) for name, grid in labels.items()}
                         for labels in batch["labels"]]  # fmt: skip
        if "sample_id" in batch:  # kept for predictions; Trainer drops it (no model argument)
            out["sample_id"] = list(batch["sample_id"])
        return out


def token_accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for generation: per target, the share of tokens predicted right (and their mean)."""
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = next(p for p in predictions if isinstance(p, Mapping))
    out = {}
    for name, target in labels.items():
        predicted = np.asarray(predictions[name]).reshape(np.asarray(target).shape)
        valid = np.asarray(target) != -100
        out[f"token_accuracy_{name}"] = float((predicted == np.asarray(target))[valid].mean()) if valid.any() else 0.0
    out["token_accuracy"] = float(np.mean(list(out.values())))
    return out


def token_predictions(logits: Any, labels: Any = None) -> dict[str, torch.Tensor]:
    """`preprocess_logits_for_metrics` for generation: keep the predicted token ids per target, not the logits."""
    if isinstance(logits, (tuple, list)):
        logits = next(value for value in logits if isinstance(value, Mapping))
    return {name: value.argmax(dim=-1) for name, value in logits.items()}


__all__ = [
    "GenerationSampleTransform",
    "TargetTokenizer",
    "build_generation_dataset",
    "token_accuracy_metrics",
    "token_predictions",
]
