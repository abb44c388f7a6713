"""Export-friendly stand-ins for modules whose traced graph bakes in the example's spatial size.

`nn.AdaptiveAvgPool2d` (UperNet's pyramid pooling) decomposes into index lists computed from the example input's
size, so an ONNX graph exported at 64 x 64 fails at any other size. Its bins are written here as two pooling
matrices built from the (symbolic) input size: the same averages (PyTorch's bins: floor(i n / o) to
ceil((i + 1) n / o)), valid at every size.
"""

from __future__ import annotations

import torch
from torch import nn


def _pooling_matrix(size: int | torch.SymInt, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) weights averaging each of PyTorch's adaptive-pooling bins along one axis."""
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    position = torch.arange(size, device=like.device)[None, :]
    inside = (position >= start[:, None]) & (position < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class ExportableAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d` as two matrix products, so that the pooled size stays fixed for any input size."""

    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if None in size:
            raise ValueError(f"Adaptive pooling to {output_size} keeps an input size; give both output sizes.")
        self.output_size = size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = _pooling_matrix(hidden_states.shape[-2], self.output_size[0], hidden_states)
        cols = _pooling_matrix(hidden_states.shape[-1], self.output_size[1], hidden_states)
        return rows @ hidden_states @ cols.transpose(0, 1)


def make_exportable(module: nn.Module) -> nn.Module:
    """Replace, in place, every `nn.AdaptiveAvgPool2d` below `module` by `ExportableAdaptiveAvgPool2d`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d):
            replacement = ExportableAdaptiveAvgPool2d(child.output_size)
            setattr(module, name, replacement)
            for value in vars(module).values():  # UperNet also keeps its layers in a plain list, run in forward
                if isinstance(value, list):
                    value[:] = [replacement if item is child else item for item in value]
        else:
            make_exportable(child)
    return module
