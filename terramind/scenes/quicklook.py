"""PNG quick-looks of TerraMind inputs and outputs: true colour for optical, a class palette for LULC, colour ramps
for DEM, NDVI and radar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..modalities import MODALITIES, resolve_modality

# ESRI 2020-style land-cover classes as in TerraMesh (0 = no data).
LULC_PALETTE = np.array(
    [[0, 0, 0], [65, 155, 223], [57, 125, 73], [136, 176, 83], [122, 135, 198], [228, 150, 53], [223, 195, 90],
     [196, 40, 27], [165, 155, 143], [168, 235, 255], [97, 97, 97]], dtype=np.uint8,
)  # fmt: skip
# A perceptual ramp (dark blue -> teal -> yellow), interpolated linearly.
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def _stretch(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values, dtype=np.float32)
    low = np.percentile(finite, 2) if low is None else low
    high = np.percentile(finite, 98) if high is None else high
    return np.clip((values - low) / max(high - low, 1e-6), 0, 1)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 on the ramp, 2-98 percentile stretch."""
    scaled = np.nan_to_num(_stretch(values.astype(np.float32))) * (len(RAMP) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(RAMP) - 2)
    frac = (scaled - low)[..., None]
    return (RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def render(modality: str, array: np.ndarray) -> np.ndarray:
    """(C, H, W) physical values of a modality -> (H, W, 3) uint8 picture; nodata (NaN) pixels are black."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    picture = _render(resolve_modality(modality).removesuffix("_TOKENS"), array)
    if array.dtype.kind == "f":
        picture[~np.isfinite(array).all(axis=0)] = 0
    return picture


def _render(name: str, array: np.ndarray) -> np.ndarray:
    if name == "LULC":
        classes = np.nan_to_num(array[0]).astype(int).clip(0, len(LULC_PALETTE) - 1)
        return LULC_PALETTE[classes]
    if name in ("S2L2A", "S2L1C", "RGB"):
        bands = MODALITIES[name].bands
        rgb = array[[bands.index("RED"), bands.index("GREEN"), bands.index("BLUE")]].astype(np.float32)
        high = 255.0 if name == "RGB" else 3000.0  # reflectance x 10000: 0.3 is bright
        return (np.clip(np.nan_to_num(rgb) / high, 0, 1) ** (1 / 1.5) * 255).astype(np.uint8).transpose(1, 2, 0)
    if name in ("S1GRD", "S1RTC"):  # VV in dB
        return colour_ramp(array[0])
    return colour_ramp(array[0])


# Distinct colours for class maps of any task (the 20 of matplotlib's tab20, then golden-ratio hues).
CLASS_COLOURS = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194],
     [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120], [152, 223, 138],
     [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141],
     [158, 218, 229]], dtype=np.uint8,
)  # fmt: skip


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, distinct for neighbouring class ids."""
    import colorsys

    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9) for i in range(max(0, num_classes - 20))]
    colours = np.concatenate([CLASS_COLOURS, (np.array(extra, dtype=np.float32).reshape(-1, 3) * 255).astype(np.uint8)])
    return colours[:num_classes]


def save_class_quicklook(path: str | Path, classes: np.ndarray, num_classes: int, nodata: int | None = None) -> Path:
    """A palette PNG ("P" mode) of a (H, W) class map: one colour per class, black for `nodata`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:num_classes] = class_palette(num_classes)
    if nodata is not None:
        palette[nodata] = 0
    image = Image.fromarray(np.asarray(classes, dtype=np.uint8))
    image.putpalette(palette.flatten().tolist())  # an "L" image with a palette becomes "P"
    image.save(path)
    return path


def save_quicklook(path: str | Path, modality: str, array: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(modality, array)).save(path)
    return path
