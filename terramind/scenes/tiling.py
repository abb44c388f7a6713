"""Tiling of scenes of any size: tile offsets, padding, a smooth blend window and a batched tiled runner.

One tiler serves dense prediction (`predict_tiled`, `terramind predict`), embeddings and generation: tiles of
`tile_size` overlap by `overlap` pixels, the last tile of a row or column sits flush with the scene's edge, scenes
smaller than a tile are padded (bottom/right, so the top-left georeference stays) and the outputs cropped back.
Floating-point tile outputs are blended with a window that tapers towards the tile edges, so tiles meet without
seams; integer outputs (class maps, token grids) come from the tile whose window is highest at each pixel, i.e. the
tile whose centre is nearest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .engine import blend_window as engine_blend_window
from .engine import tile_starts


def blend_window(size: int, ramp: int) -> torch.Tensor:
    """The engine's (size, size) blend weights (`engine.blend_window`) as a tensor."""
    return torch.from_numpy(engine_blend_window(size, ramp))


def pad_to(value: torch.Tensor, height: int, width: int, fill: float = 0.0) -> torch.Tensor:
    """Pad the last two axes at the bottom/right to at least (height, width) with `fill`."""
    pad_h, pad_w = max(0, height - value.shape[-2]), max(0, width - value.shape[-1])
    if not pad_h and not pad_w:
        return value
    return F.pad(value, (0, pad_w, 0, pad_h), value=fill)


def run_tiled(
    function: Callable[[dict[str, torch.Tensor]], torch.Tensor | Mapping[str, torch.Tensor]],
    inputs: Mapping[str, torch.Tensor],
    tile_size: int,
    overlap: int = 0,
    batch_size: int = 8,
    multiple_of: int = 1,
    fill: float | Mapping[str, float] = 0.0,
    progress: bool = False,
    description: str = "tiles",
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Run `function` over overlapping tiles of a scene and put its outputs back together.

    `inputs` are tensors (B, ..., H, W) sharing batch size and H, W (e.g. (B, C, H, W) images, (B, C, T, H, W) time
    series). The scene is padded (bottom/right, with `fill`, per input name if a dict) to at least one tile and to a
    multiple of `multiple_of`; `batch_size` tiles at a time are cut, concatenated along the batch axis and passed as
    `function({name: (n * B, ..., tile, tile)})`, which returns a tensor (or a dict of tensors) (n * B, ..., h, w)
    covering each tile at any resolution (h = tile / scale). Floating-point outputs are blended with `blend_window`,
    integer ones taken from the nearest tile centre. Returns (B, ..., H / scale, W / scale), cropped to the scene.
    """
    if not inputs:
        raise ValueError("run_tiled needs at least one input.")
    first = next(iter(inputs.values()))
    batch, (height, width) = first.shape[0], first.shape[-2:]
    for name, value in inputs.items():
        if value.shape[0] != batch or value.shape[-2:] != first.shape[-2:]:
            raise ValueError(f"Input {name} has shape {tuple(value.shape)}; every input needs batch size {batch} and "
                             f"spatial size {height}x{width}.")  # fmt: skip
    if tile_size < 1 or tile_size % multiple_of or not 0 <= overlap < tile_size or overlap % multiple_of:
        raise ValueError(f"tile_size and overlap must be multiples of {multiple_of} with 0 <= overlap < tile_size, "
                         f"got tile_size={tile_size}, overlap={overlap}.")  # fmt: skip
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    padded_h = max(tile_size, -(-height // multiple_of) * multiple_of)
    padded_w = max(tile_size, -(-width // multiple_of) * multiple_of)
    padded = {name: pad_to(value, padded_h, padded_w, fill[name] if isinstance(fill, Mapping) else fill)
              for name, value in inputs.items()}  # fmt: skip
    stride = tile_size - overlap
    tiles = [(top, left) for top in tile_starts(padded_h, tile_size, stride)
             for left in tile_starts(padded_w, tile_size, stride)]  # fmt: skip
    blender: _Blender | None = None
    with tqdm(total=len(tiles), desc=description, disable=not progress) as bar:
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            crops = {name: torch.cat([v[..., t : t + tile_size, x : x + tile_size] for t, x in chunk])
                     for name, v in padded.items()}  # fmt: skip
            outputs = function(crops)
            if blender is None:
                blender = _Blender(outputs, batch, tile_size, overlap, (padded_h, padded_w))
            blender.add(outputs, chunk)
            bar.update(len(chunk))
    return blender.result(height, width)


class _Blender:
    """Accumulates per-tile outputs (a tensor or a dict of tensors, each at its own resolution) into scene outputs."""

    def __init__(self, outputs: Any, batch: int, tile: int, overlap: int, size: tuple[int, int]):
        self.is_dict = isinstance(outputs, Mapping)
        self.batch, self.tile, self.overlap, self.size = batch, tile, overlap, size
        self.outputs: dict[str, _SceneOutput] = {}

    def add(self, outputs: Any, chunk: list[tuple[int, int]]) -> None:
        for name, value in (dict(outputs) if self.is_dict else {"": outputs}).items():
            if value.shape[0] != self.batch * len(chunk):
                raise ValueError(f"The tiled function returned {value.shape[0]} rows for {len(chunk)} tiles of batch "
                                 f"{self.batch}.")  # fmt: skip
            if name not in self.outputs:
                self.outputs[name] = _SceneOutput(value, self.batch, self.tile, self.overlap, self.size)
            for (top, left), part in zip(chunk, value.split(self.batch), strict=True):
                self.outputs[name].add(part, top, left)

    def result(self, height: int, width: int) -> Any:
        out = {name: output.result(height, width) for name, output in self.outputs.items()}
        return out if self.is_dict else out[""]


class _SceneOutput:
    """One output over the scene: blended sums (floating point) or nearest-centre values (integers)."""

    def __init__(self, first: torch.Tensor, batch: int, tile: int, overlap: int, size: tuple[int, int]):
        out_tile = first.shape[-1]
        if tile % out_tile or first.shape[-2] != out_tile:
            raise ValueError(f"Tile outputs must be square and divide the tile size {tile}, got {tuple(first.shape)}.")
        self.scale, self.tile = tile // out_tile, out_tile
        self.window = blend_window(out_tile, max(1, overlap // self.scale)).to(first.device)
        grid = (size[0] // self.scale, size[1] // self.scale)
        self.blend = first.is_floating_point()
        dtype = torch.float32 if self.blend else first.dtype
        self.values = torch.zeros(batch, *first.shape[1:-2], *grid, dtype=dtype, device=first.device)
        self.weights = torch.zeros(grid, device=first.device)  # sum of windows (blend) or highest window so far

    def add(self, part: torch.Tensor, top: int, left: int) -> None:
        rows = slice(top // self.scale, top // self.scale + self.tile)
        cols = slice(left // self.scale, left // self.scale + self.tile)
        if self.blend:
            self.values[..., rows, cols] += part.float() * self.window
            self.weights[rows, cols] += self.window
        else:  # the tile whose centre is nearest wins
            nearer = self.window > self.weights[rows, cols]
            self.values[..., rows, cols] = torch.where(nearer, part, self.values[..., rows, cols])
            self.weights[rows, cols] = torch.maximum(self.weights[rows, cols], self.window)

    def result(self, height: int, width: int) -> torch.Tensor:
        values = self.values / self.weights if self.blend else self.values
        return values[..., : -(-height // self.scale), : -(-width // self.scale)]


__all__ = ["blend_window", "pad_to", "run_tiled", "tile_starts"]
