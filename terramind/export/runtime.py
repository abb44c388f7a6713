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


def predict_onnx(folder: str | os.PathLike, inputs: Mapping[str, Any], output: str | os.PathLike,
                 probabilities: str | os.PathLike | None = None, tile_size: int = 224, overlap: int = 64,
                 batch_size: int = 8, overwrite: bool = False, session: Any = None, num_workers: int = 1,
                 progress: bool = False) -> list[Path]:  # fmt: skip
    """Predict a scene ({modality: GeoTIFF path or open rasterio dataset}) with an exported task model in
    onnxruntime, streaming through the scene engine (`OnnxPrepare` and `OnnxStep` as its plug-ins), into the same
    outputs as `terramind predict` with the input's georeference; no torch import on this path."""
    from ..scenes.engine import SceneSource, run_scene
    from ..scenes.prediction import PredictionWriter

    metadata = load_metadata(folder)
    if metadata.get("task") not in ("segmentation", "regression"):
        raise ValueError(f"{folder} holds an exported {metadata.get('task')}; predict needs a segmentation or "
                         "regression model.")  # fmt: skip
    multiple = metadata.get("patch_size", 16)
    if tile_size % multiple or overlap % multiple or not 0 <= overlap < tile_size:
        raise ValueError(f"tile size and overlap must be multiples of {multiple} with 0 <= overlap < tile size, "
                         f"got {tile_size} and {overlap}.")  # fmt: skip
    step = OnnxStep(session if session is not None else inference_session(folder))
    with SceneSource(inputs) as source:
        prepare = OnnxPrepare(metadata, source.band_names, source.nodata)
        with PredictionWriter(output, source.profile, metadata["task"], metadata.get("class_names") or [],
                              probabilities, overwrite) as files:  # fmt: skip
            run_scene(source, prepare, step, files, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                      multiple_of=multiple, merge="blend", num_workers=num_workers, progress=progress,
                      description="TerraMind ONNX prediction")  # fmt: skip
    return list(files.targets)
















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
           "ddim_step", "ddim_timesteps", "diffusion_decode"]  # fmt: skip
