"""Exported TerraMind folders in onnxruntime, without torch or Transformers: a model step and its preprocessing.

The pieces follow the scene engine's plug-in shapes (numpy in, numpy out), so a streaming engine can run them:
- `OnnxPrepare(metadata, band_names, nodata)(raw, height, width) -> (inputs, nodata_mask)`: the image processor's
  work for prediction (band selection by name, nodata filling, standardization, padding at the bottom/right) in
  numpy, with the statistics the export wrote into `terramind_onnx.json`;
- `OnnxStep(session)(batch) -> logits`: {modality: (n, C, h, w)} -> (n, K, h, w) through an `InferenceSession`.
`predict_onnx` is the minimal glue for one scene in memory (the tiling and blending of `predict_tiled`, the outputs
of `terramind predict`); it imports only numpy, rasterio, Pillow and onnxruntime.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..modalities import match_bands

METADATA_FILE = "terramind_onnx.json"
MODEL_FILE = "model.onnx"
CLASS_NODATA = 255

Arrays = dict[str, np.ndarray]


def is_onnx_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `terramind export --format onnx`."""
    return (Path(path) / METADATA_FILE).is_file()


def load_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The export's description of the graph: its inputs (bands, statistics), task and class names."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not an exported ONNX folder (no {METADATA_FILE}); run `terramind export`.")
    return json.loads(path.read_text())


def inference_session(folder: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None):
    """An onnxruntime session of the folder's model (CPU unless `providers` says otherwise)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('Running an exported folder needs onnxruntime: pip install "terramind[onnx]".') from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(Path(folder) / MODEL_FILE), options,
                                        providers=list(providers or ["CPUExecutionProvider"]))  # fmt: skip


class OnnxStep:
    """The model step: {modality: (n, C, h, w)} numpy batch -> the graph's first output (n, K, h, w), float32."""

    def __init__(self, session: Any):
        self.session = session
        self.input_names = [node.name for node in session.get_inputs()]

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise ValueError(f"The exported model takes {self.input_names}; {missing} missing from the batch.")
        feeds = {name: np.ascontiguousarray(batch[name]) for name in self.input_names}
        return self.session.run(None, feeds)[0]


class OnnxPrepare:
    """Raw windows {modality: (C, h, w)} in physical units -> standardized inputs padded (bottom/right) to
    (height, width), and the nodata mask (True where any input has nodata, and on the padding): what
    `TerraMindImageProcessor` does for prediction, with the statistics recorded at export."""

    def __init__(self, metadata: Mapping[str, Any], band_names: Mapping[str, Sequence[str] | None] | None = None,
                 nodata: Mapping[str, float | None] | None = None):  # fmt: skip
        self.inputs = metadata["inputs"]
        self.band_names, self.nodata = dict(band_names or {}), dict(nodata or {})

    def _bands(self, modality: str, value: np.ndarray) -> np.ndarray:
        spec, names = self.inputs[modality], self.band_names.get(modality)
        wanted, pretrained = spec["bands"], spec["pretrained_bands"]
        channels = value.shape[0]
        if names is None:
            if channels == len(wanted):
                return value
            if channels != len(pretrained):
                raise ValueError(f"{modality}: the input has {channels} channels but the model takes {len(wanted)} "
                                 f"bands {wanted}; name the input's bands (band descriptions).")  # fmt: skip
            names = pretrained
        if len(names) != channels:
            raise ValueError(f"{modality}: {len(names)} band names for {channels} channels.")
        return value[match_bands(wanted, names, f"the {modality} input")]

    def __call__(self, raw: Mapping[str, np.ndarray], height: int, width: int) -> tuple[Arrays, np.ndarray]:
        unknown = sorted(set(raw) - set(self.inputs))
        if unknown:
            raise ValueError(f"The exported model takes {sorted(self.inputs)}, not {unknown}.")
        absent = sorted(set(self.inputs) - set(raw))
        if absent:
            raise ValueError(f"The exported model needs the inputs {sorted(self.inputs)}; {absent} missing.")
        inputs: Arrays = {}
        mask = np.ones((height, width), dtype=bool)  # the padding stays nodata
        first = next(iter(raw.values()))
        mask[: first.shape[-2], : first.shape[-1]] = False
        for modality, spec in self.inputs.items():
            value = raw[modality]
            if value.ndim != 3:
                raise ValueError(f"{modality}: expected (C, H, W) values, got shape {value.shape} (time series are "
                                 "not supported by the ONNX path).")  # fmt: skip
            pixels = self._bands(modality, value).astype(np.float32)
            nodata = self.nodata.get(modality)
            nodata = spec["nodata_value"] if nodata is None else nodata
            missing = ~np.isfinite(pixels)
            if nodata is not None and not math.isnan(nodata):
                missing |= pixels == np.float32(nodata)
            fill = np.asarray(spec["fill"], dtype=np.float32)[:, None, None]
            pixels = np.where(missing, fill, pixels)
            rows, cols = pixels.shape[-2:]
            padded = np.broadcast_to(fill, (pixels.shape[0], height, width)).copy()
            padded[:, :rows, :cols] = pixels
            if spec["class_map"]:
                inputs[modality] = np.rint(padded).astype(np.int64)
            elif spec["normalize"]:
                mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
                std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
                inputs[modality] = (padded - mean) / std
            else:
                inputs[modality] = padded
            mask[:rows, :cols] |= missing.any(axis=0)
        return inputs, mask


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size), the last flush with the edge (as `terramind.tiling.tile_starts`)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    return starts if starts[-1] == size - tile else [*starts, size - tile]


def blend_window(size: int, ramp: int) -> np.ndarray:
    """(size, size) weights tapering linearly over `ramp` pixels (as `terramind.tiling.blend_window`)."""
    ramp = max(1, min(ramp, size // 2))
    profile = np.ones(size, dtype=np.float32)
    edge = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
    profile[:ramp], profile[-ramp:] = edge, edge[::-1]
    return profile[:, None] * profile[None, :]


def run_tiles(step: Any, inputs: Mapping[str, np.ndarray], tile_size: int, overlap: int,
              batch_size: int) -> np.ndarray:  # fmt: skip
    """Blended step outputs (K, H, W) over (C, H, W) inputs already padded to at least a tile and a multiple of 16:
    the tiles, batches and blending of `run_tiled` / `predict_tiled`."""
    height, width = next(iter(inputs.values())).shape[-2:]
    stride = tile_size - overlap
    tiles = [(top, left) for top in tile_starts(height, tile_size, stride)
             for left in tile_starts(width, tile_size, stride)]  # fmt: skip
    window = blend_window(tile_size, overlap)
    values = weights = None
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = {name: np.stack([value[:, t : t + tile_size, x : x + tile_size] for t, x in chunk])
                 for name, value in inputs.items()}  # fmt: skip
        out = step(batch)
        if out.shape[-2:] != (tile_size, tile_size):
            raise ValueError(f"The model returned {out.shape[-2:]} per {tile_size}-pixel tile; dense outputs expected.")
        if values is None:
            values = np.zeros((out.shape[1], height, width), dtype=np.float32)
            weights = np.zeros((height, width), dtype=np.float32)
        for (top, left), part in zip(chunk, out, strict=True):
            values[:, top : top + tile_size, left : left + tile_size] += part * window
            weights[top : top + tile_size, left : left + tile_size] += window
    return values / weights


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def prediction_targets(output: str | os.PathLike, probabilities: str | os.PathLike | None, task: str) -> list[Path]:
    """The files a prediction writes: the GeoTIFF, its PNG quick-look (segmentation), the probabilities if asked."""
    targets = [Path(output)] + ([Path(output).with_suffix(".png")] if task == "segmentation" else [])
    return targets + ([Path(probabilities)] if probabilities is not None else [])


def write_prediction(logits: np.ndarray, nodata: np.ndarray, profile: Mapping[str, Any], task: str,
                     class_names: Sequence[str], output: str | os.PathLike,
                     probabilities: str | os.PathLike | None = None, overwrite: bool = False) -> list[Path]:  # fmt: skip
    """(K, H, W) logits as `terramind predict` writes them: class map (uint8, nodata 255, palette PNG) or
    regression (float32, nodata NaN), optional class probabilities; all files or none, none over an existing file
    unless `overwrite`."""
    from ..scenes.geotiff import write_geotiff
    from ..scenes.outputs import atomic_outputs
    from ..scenes.quicklook import save_class_quicklook

    if task != "segmentation" and probabilities is not None:
        raise ValueError("Class probabilities are for segmentation models; this model does pixel regression.")
    targets = prediction_targets(output, probabilities, task)
    with atomic_outputs(targets, overwrite) as partial:
        if task == "segmentation":
            classes = logits.argmax(axis=0).astype(np.uint8)
            classes[nodata] = CLASS_NODATA
            marked = np.where(nodata, np.nan, classes.astype(np.float32))
            write_geotiff(partial[targets[0]], marked, profile, dtype="uint8", nodata=CLASS_NODATA,
                          band_names=["class"])  # fmt: skip
            save_class_quicklook(partial[targets[1]], classes, len(class_names), nodata=CLASS_NODATA)
            if probabilities is not None:
                values = softmax(logits)
                values[:, nodata] = np.nan
                write_geotiff(partial[targets[2]], values, profile, dtype="float32", nodata=float("nan"),
                              band_names=list(class_names))  # fmt: skip
        else:
            values = logits.copy()
            values[:, nodata] = np.nan
            write_geotiff(partial[targets[0]], values, profile, dtype="float32", nodata=float("nan"),
                          band_names=list(class_names))  # fmt: skip
    return targets


def predict_onnx(folder: str | os.PathLike, inputs: Mapping[str, str | os.PathLike], output: str | os.PathLike,
                 probabilities: str | os.PathLike | None = None, tile_size: int = 224, overlap: int = 64,
                 batch_size: int = 8, overwrite: bool = False, session: Any = None) -> list[Path]:  # fmt: skip
    """Predict a scene ({modality: GeoTIFF}) with an exported task model in onnxruntime and write the outputs with
    the input's georeference; no torch import on this path."""
    from ..scenes.geotiff import read_sample

    metadata = load_metadata(folder)
    if metadata.get("task") not in ("segmentation", "regression"):
        raise ValueError(f"{folder} holds an exported {metadata.get('task')}; predict needs a segmentation or "
                         "regression model.")  # fmt: skip
    multiple = metadata.get("patch_size", 16)
    if tile_size % multiple or overlap % multiple or not 0 <= overlap < tile_size:
        raise ValueError(f"tile size and overlap must be multiples of {multiple} with 0 <= overlap < tile size, "
                         f"got {tile_size} and {overlap}.")  # fmt: skip
    sample = read_sample(inputs)
    height, width = sample.profile["height"], sample.profile["width"]
    padded_h = max(tile_size, -(-height // multiple) * multiple)
    padded_w = max(tile_size, -(-width // multiple) * multiple)
    prepare = OnnxPrepare(metadata, sample.band_names, sample.nodata)
    model_inputs, nodata = prepare(sample.images, padded_h, padded_w)
    step = OnnxStep(session if session is not None else inference_session(folder))
    logits = run_tiles(step, model_inputs, tile_size, overlap, batch_size)[:, :height, :width]
    return write_prediction(logits, nodata[:height, :width], sample.profile, metadata["task"],
                            metadata["class_names"], output, probabilities, overwrite)  # fmt: skip


def ddim_timesteps(ddim: Mapping[str, Any], steps: int) -> list[int]:
    """The original's spacing with an integer step ratio ("trailing" n=3 -> [999, 666, 333, 0])."""
    total = ddim["num_train_timesteps"]
    ratio = total // steps
    if ddim["timestep_spacing"] == "trailing":
        values = np.arange(total, 0, -ratio).round().astype(np.int64) - 1
    elif ddim["timestep_spacing"] == "leading":
        values = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64)
    else:  # linspace
        values = np.linspace(total, 1, steps).round().astype(np.int64) - 1
    return [int(t) for t in values]


def ddim_step(ddim: Mapping[str, Any], model_output: np.ndarray, timestep: int, sample: np.ndarray,
              steps: int) -> np.ndarray:  # fmt: skip
    """Deterministic DDIM (eta = 0), x_t -> x_{t - T // n}, float32 (`TerraMindDDIMSampler.step` in numpy)."""
    alphas = ddim["alphas_cumprod"]
    prev = timestep - ddim["num_train_timesteps"] // steps
    alpha_t = np.float32(alphas[timestep])
    alpha_prev = np.float32(alphas[prev] if prev >= 0 else 1.0)
    beta_t = 1 - alpha_t
    if ddim["prediction_type"] == "sample":
        pred_sample = model_output
        pred_epsilon = (sample - alpha_t**0.5 * pred_sample) / beta_t**0.5
    elif ddim["prediction_type"] == "epsilon":
        pred_sample = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
        pred_epsilon = model_output
    else:  # v_prediction
        pred_sample = alpha_t**0.5 * sample - beta_t**0.5 * model_output
        pred_epsilon = alpha_t**0.5 * model_output + beta_t**0.5 * sample
    if ddim["thresholding"]:  # sample_max_value <= 1: a clip (the export refuses the dynamic kind)
        limit = np.float32(ddim["sample_max_value"])
        pred_sample = np.clip(pred_sample, -limit, limit) / limit
    elif ddim["clip_sample"]:
        pred_sample = np.clip(pred_sample, -ddim["clip_sample_range"], ddim["clip_sample_range"])
    return (alpha_prev**0.5 * pred_sample + (1 - alpha_prev) ** 0.5 * pred_epsilon).astype(np.float32)


def diffusion_decode(folder: str | os.PathLike, tokens: np.ndarray, timesteps: int | None = None,
                     noise: np.ndarray | None = None, seed: int = 0, session: Any = None) -> np.ndarray:  # fmt: skip
    """Token ids (B, h, w) -> images (B, C, 16 h, 16 w) with an exported diffusion tokenizer decoder: the DDIM loop
    in numpy around `decoder_step.onnx`. `noise` is the start sample (default: standard normal from `seed`)."""
    ddim = load_metadata(folder)["ddim"]
    if ddim is None:
        raise ValueError(f"{folder} holds no diffusion decoder; run its decoder.onnx on the tokens.")
    if session is None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(Path(folder) / "decoder_step.onnx"),
                                               providers=["CPUExecutionProvider"])  # fmt: skip
    steps = ddim["num_inference_steps"] if timesteps is None else timesteps
    patch = load_metadata(folder)["patch_size"]
    shape = (tokens.shape[0], ddim["num_channels"], tokens.shape[1] * patch, tokens.shape[2] * patch)
    sample = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) if noise is None else noise
    for t in ddim_timesteps(ddim, steps):
        feeds = {"sample": sample.astype(np.float32), "timestep": np.full(shape[0], t, dtype=np.int64),
                 "tokens": tokens.astype(np.int64)}  # fmt: skip
        sample = ddim_step(ddim, session.run(None, feeds)[0], t, sample, steps)
    return sample


__all__ = ["OnnxPrepare", "OnnxStep", "inference_session", "is_onnx_folder", "load_metadata", "predict_onnx",
           "run_tiles", "write_prediction", "ddim_step", "ddim_timesteps", "diffusion_decode"]  # fmt: skip
