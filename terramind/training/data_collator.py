"""Batches of fine-tuning datasets: `TerraMindDataCollator` stacks the rows into the `model(**batch)` inputs of
every TerraMind task model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _collate(values: list[Any], key: str) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        keys = set(first)
        for value in values[1:]:
            if set(value) != keys:
                raise ValueError(f"Samples of a batch have different {key} entries: {sorted(keys)} vs "
                                 f"{sorted(value)}; every sample needs the same modalities.")  # fmt: skip
        return {k: _collate([v[k] for v in values], f"{key}.{k}") for k in first}
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"{key} differs in shape within a batch: {sorted(shapes)}; crop or resize the samples "
                             f"to one size.")  # fmt: skip
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return _collate([torch.from_numpy(np.asarray(v)) for v in values], key)
    if isinstance(first, (bool, int, float, np.number)) or (isinstance(first, list) and first
                                                            and isinstance(first[0], (int, float))):  # fmt: skip
        return torch.as_tensor(values)
    return values


@dataclass
class TerraMindDataCollator:
    """Batches dataset rows: tensors are stacked, dicts (modality -> tensor) batched per key, numbers tensorized.

    Strings and other values are dropped unless `keep_other=True` (Trainer passes every key to the model).
    """

    keep_other: bool = False

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        batch = {}
        for key in features[0]:
            value = _collate([f[key] for f in features], key)
            if isinstance(value, (torch.Tensor, dict)) or self.keep_other:
                batch[key] = value
        return batch
