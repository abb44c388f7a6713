"""Tiled inference over a scene of any size, for Python users: dense prediction (`predict_tiled`) and generation
(`generate_tiled`) with a model. Tensors in memory are tiled, batched and blended here; files stream through the
scene engine. Written as functions of the model, not methods, because the model files ship as remote code and
must not import the application (ARCHITECTURE.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..generation_terramind import (
    _GENERATE_OPTIONS,
    SAMPLING_SETTINGS,
    destandardize,
    standardization_offsets,
    standardize_input,
)
from ..image_processing_terramind import TerraMindImageProcessor
from ..modalities import resolve_output_modality
from .generation import generate_scenes
from .prediction import predict_to_files
from .tiling import run_tiled


@torch.no_grad()
def predict_tiled(
    model: Any,
    pixel_values: torch.Tensor | dict[str, torch.Tensor] | None = None,
    tile_size: int = 224,
    overlap: int = 64,
    batch_size: int = 8,
    progress: bool = False,
    output: str | os.PathLike | None = None,
    writer: Any = None,
    probabilities: str | os.PathLike | None = None,
    processor: Any = None,
    num_workers: int = 1,
    overwrite: bool = False,
    **modalities: Any,
) -> torch.Tensor | Any:
    """Logits (B, num_outputs, H, W) of a dense task `model` (segmentation or regression) over a scene of any
    size, in eval mode: tiles of `tile_size` overlapping by
    `overlap` pixels, `batch_size` at a time on the model's device, blended with a smooth window (TerraTorch's
    tiled inference). Inputs are those of `forward` (standardized, e.g. by the processor; time series too) at
    any H, W: scenes smaller than a tile or not a multiple of the patch size are padded with 0 (the band mean)
    and the output cropped back. Returns float32 on the CPU; `softmax(dim=1)` gives class probabilities.

    Scenes larger than memory: give the inputs as files ({modality: path, open rasterio dataset, or a list of
    them for a time series}) and an `output` GeoTIFF (class map or regression values, a COG; `probabilities`
    too) or a `writer` (`write_rows(top, values, nodata)`): the scene streams through the scene engine
    (`terramind.scenes`), raw values standardized by `processor` (default: the v1 statistics), tiles without
    data skipped. Returns the engine's `SceneRun` (tiles, skipped, seconds, output files) then."""
    inputs = model._gather_inputs(pixel_values, modalities)
    if inputs and not any(isinstance(value, torch.Tensor) for value in inputs.values()):
        if output is None and writer is None:
            raise ValueError("Scene files stream into `output=` (a GeoTIFF path) or `writer=`; give one.")
        return predict_to_files(model, inputs, output, probabilities, processor, tile_size, overlap, batch_size,
                                num_workers, progress, overwrite, writer)  # fmt: skip

    dtype = next(model.parameters()).dtype

    def logits_of(tiles: dict[str, torch.Tensor]) -> torch.Tensor:
        tiles = {name: value.to(model.device, dtype if value.is_floating_point() else None)
                 for name, value in tiles.items()}  # fmt: skip
        return model(tiles).logits.float().cpu()

    was_training = model.training
    model.eval()
    try:
        return run_tiled(logits_of, inputs, tile_size, overlap, batch_size, multiple_of=model.config.patch_size,
                         progress=progress, description="TerraMind tiled prediction")  # fmt: skip
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_tiled(
    model: Any,
    inputs: Mapping[str, torch.Tensor] | None = None,
    output_modalities: Sequence[str] = ("S2L2A",),
    tile_size: int = 224,
    overlap: int = 64,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    decode: bool = True,
    progress: bool = False,
    output: str | os.PathLike | None = None,
    processor: Any = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> dict[str, torch.Tensor] | Any:
    """Generate with `model` (a TerraMindForGeneration) over a scene of any size: overlapping tiles, batched, blended with a smooth window.

    Scenes larger than memory: give the inputs as files ({modality: path or open rasterio dataset}, raw values)
    and an `output` folder; the scene streams through the scene engine (`terramind.scenes`), standardized and
    destandardized by `processor` (default: the v1 statistics, padded to multiples of 16), and each output
    modality is written as `<output>/<MODALITY>.tif` (a COG) plus a PNG quick-look. Returns the engine's
    `SceneRun` then.

    Inputs are images (B, C, H, W) of one size, any size: the scene is padded at the bottom/right to whole
    tiles and multiples of 16 with the band means (0 after standardization), as `terramind generate` does, and
    the outputs are cropped back. Every tile goes through `generate` (same keyword arguments, `standardize` and
    `offset` included); Coordinates inputs (B, 2) condition every tile. Decoded outputs are blended with a
    tapered window, so tiles meet without seams; with `decode=False` each token comes from the tile whose
    centre is nearest. Outputs have the input's size (token grids: ceil(H/16), ceil(W/16)).
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    files = {**dict(inputs or {}), **{k: v for k, v in kwargs.items() if isinstance(v, (str, os.PathLike))}}
    if files and not any(isinstance(value, torch.Tensor) for value in files.values()):
        if output is None:
            raise ValueError("Scene files stream into an `output=` folder; give one.")
        options = {k: v for k, v in kwargs.items() if k not in files}
        processor = processor or TerraMindImageProcessor(do_pad=True, size_divisor=16)
        outputs = [resolve_output_modality(name) for name in ([output_modalities] if isinstance(
            output_modalities, str) else output_modalities)]  # fmt: skip
        return next(iter(generate_scenes(model, [files], [output], outputs, processor, tile_size, overlap,
                                         batch_size, generator, overwrite, progress=progress, **options)))

    given = dict(inputs or {})
    given.update({k: kwargs.pop(k) for k in list(kwargs) if k not in SAMPLING_SETTINGS + _GENERATE_OPTIONS})
    if not given:
        raise ValueError("No inputs given: pass at least one input modality (e.g. S2L2A=...).")
    if isinstance(output_modalities, str):
        output_modalities = [output_modalities]
    if any(resolve_output_modality(name) == "Coordinates" for name in output_modalities):
        raise ValueError("Coordinates are generated per tile, not for a scene: use `generate` on one tile.")
    for option in ("input_tokens", "image_size"):
        if kwargs.get(option) is not None:
            raise ValueError(f"generate_tiled cuts image tiles: {option} does not apply (tokenized modalities go "
                             f"in as images, e.g. LULC class maps).")  # fmt: skip
    patch = model.config.patch_size
    if tile_size % patch or not 0 <= overlap < tile_size or overlap % patch:
        raise ValueError(f"tile_size and overlap must be multiples of {patch} with 0 <= overlap < tile_size.")
    standardize = kwargs.pop("standardize", False)
    offsets = standardization_offsets(kwargs.pop("offset", None), standardize, [*given, *output_modalities])
    scene, fixed = {}, {}
    for name, value in given.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"Input {name} must be a torch.Tensor, got {type(value).__name__}.")
        if value.ndim < 3:  # Coordinates (B, 2): the same for every tile
            fixed[name] = value
        else:  # standardized before padding, so that the padding is the mean
            scene[name] = standardize_input(name, value, offsets) if standardize else value
    if not scene:
        raise ValueError("generate_tiled needs an image input to tile; use `generate` for Coordinates alone.")
    batch = next(iter(scene.values())).shape[0]

    def generate_tiles(crops: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        repeats = next(iter(crops.values())).shape[0] // batch
        tile_inputs = {**crops, **{k: v.repeat(repeats, *[1] * (v.ndim - 1)) for k, v in fixed.items()}}
        return model.generate(tile_inputs, output_modalities=output_modalities, generator=generator, decode=decode,
                             **kwargs)  # fmt: skip

    out = run_tiled(generate_tiles, scene, tile_size, overlap, batch_size, multiple_of=patch, fill=0.0,
                    progress=progress, description="TerraMind tiled generation")  # fmt: skip
    if standardize and decode:
        out = {name: destandardize(resolve_output_modality(name), value, offsets) for name, value in out.items()}
    return out
