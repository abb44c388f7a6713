"""Multi-temporal inputs for the task models, as TerraTorch's TemporalWrapper handles them.

Inputs (B, C, T, H, W) are folded into the batch, (B * T, C, H, W), so that every time step goes through the encoder
(in one call); the encoder's outputs — every hidden state the heads use — are then merged over time: "mean", "max",
"concat" (along channels, time-major, as TerraTorch) or "diff" (first minus second). `subset_lengths` first averages
consecutive groups of time steps (TerraTorch's `subset_lengths`), e.g. [2, 3] for "before" and "after" means.

Static inputs given next to time series (a DEM, coordinates, a (B, H, W) nodata mask) are repeated at each time step;
nodata masks of a time series are (B, T, H, W).
`terramind.training.transforms.read_series_sample` reads time series from GeoTIFFs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .modalities import NODATA_MASK_SUFFIX


def _is_series(name: str, value: Any, series_modalities: set[str]) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    if name.endswith(NODATA_MASK_SUFFIX):
        return name[: -len(NODATA_MASK_SUFFIX)] in series_modalities and value.ndim == 4
    return value.ndim == 5


def fold_time(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """{name: (B, C, T, H, W) or static input} -> ({name: (B * T, ...)}, T); inputs without a time axis -> (them, None).

    Every time series must have the same T; static tensors are repeated T times (sample-major, like the series).
    """
    series = {name for name, value in inputs.items() if isinstance(value, torch.Tensor) and value.ndim == 5}
    if not series:
        return dict(inputs), None
    steps = {name: inputs[name].shape[2] for name in series}
    if len(set(steps.values())) > 1:
        raise ValueError(f"Time series must have the same number of time steps, got {steps}.")
    count = next(iter(steps.values()))
    folded = {}
    for name, value in inputs.items():
        if name in series:
            folded[name] = value.transpose(1, 2).reshape(-1, value.shape[1], *value.shape[3:])
        elif _is_series(name, value, series):  # (B, T, H, W) nodata mask of a time series
            folded[name] = value.reshape(-1, *value.shape[2:])
        elif isinstance(value, torch.Tensor):
            folded[name] = value.repeat_interleave(count, dim=0)
        else:
            folded[name] = value
    return folded, count


def merge_time(value: Any, steps: int, merge: str, subset_lengths: Sequence[int] | None = None) -> Any:
    """Merge (B * T, ...) outputs (tensors, or dicts/tuples of them) over their T time steps."""
    if isinstance(value, Mapping):
        return {key: merge_time(item, steps, merge, subset_lengths) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(merge_time(item, steps, merge, subset_lengths) for item in value)
    if not isinstance(value, torch.Tensor):
        return value
    stacked = value.reshape(-1, steps, *value.shape[1:])
    if subset_lengths is not None:
        if sum(subset_lengths) != steps:
            raise ValueError(f"temporal_subset_lengths {list(subset_lengths)} must add up to the {steps} time steps "
                             f"of the input.")  # fmt: skip
        stacked = torch.stack([part.mean(dim=1) for part in stacked.split(list(subset_lengths), dim=1)], dim=1)
    if merge == "mean":
        return stacked.mean(dim=1)
    if merge == "max":
        return stacked.max(dim=1).values
    if merge == "concat":  # (B, T, ..., D) -> (B, ..., T * D), time-major channels
        return stacked.movedim(1, -2).flatten(-2)
    if merge == "diff":
        if stacked.shape[1] != 2:
            raise ValueError(f"temporal_merge='diff' needs exactly two time steps (or two temporal_subset_lengths "
                             f"groups), got {stacked.shape[1]}.")  # fmt: skip
        return stacked[:, 0] - stacked[:, 1]
    raise ValueError(f"Unknown temporal_merge {merge!r}.")


__all__ = ["fold_time", "merge_time"]
