"""Whole-scene prediction with a fine-tuned TerraMind (`terramind predict`, TerraTorch's `predict`).

A fine-tuned dense model (a folder saved by `finetune` or `save_pretrained`, or a base model plus a LoRA adapter
saved by `save_adapter`) predicts GeoTIFF scenes of any size, streaming through the scene engine: windows of the
inputs go through the model's own processor, tiles overlap and are blended in a rolling band, and finished rows are
written (COGs) with the input's CRS and transform: class maps as uint8 (nodata 255) with a palette quick-look PNG, regression as float32 (nodata NaN), and
optionally the class probabilities. Pixels where an input had nodata are nodata in the outputs. Repeating
`--input` for a modality gives its time series (one file per time step, in order).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engine import STRIPE_WIDTH

DENSE_TASK_MODELS = ("TerraMindForSemanticSegmentation", "TerraMindForPixelRegression")
CLASS_NODATA = 255


def parse_inputs(entries: Sequence[str]) -> dict[str, list[str]]:
    """MODALITY=PATH entries -> {modality: [paths]}; a repeated modality is a time series (in the given order)."""
    from ..modalities import resolve_modality

    paths: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--input takes MODALITY=PATH (e.g. S2L2A=scene.tif), got {entry!r}.")
        resolve_modality(name)  # one-line error for unknown names
        if not Path(path).is_file():
            raise ValueError(f"input file {path} does not exist.")
        paths.setdefault(name, []).append(path)
    steps = {name: len(files) for name, files in paths.items() if len(files) > 1}
    if len(set(steps.values())) > 1:
        raise ValueError(f"Time series need the same number of files per modality, got {steps}.")
    return paths


def _from_pretrained(loader: Any, sources: Sequence[str | os.PathLike | None]) -> Any:
    """The first of `sources` (folders or Hub repos) that `loader` can load, else None."""
    for source in sources:
        if source is None:
            continue
        try:
            return loader(source)
        except OSError:  # no such file there (e.g. a plain PEFT adapter has no config.json)
            continue
    return None


def load_predictor(model: str | os.PathLike, adapter: str | os.PathLike | None = None,
                   dtype: Any = None, device: str = "cpu") -> tuple[Any, Any]:  # fmt: skip
    """The dense task model (merged with its LoRA adapter, if given) in eval mode, and the processor it was trained
    with (the adapter's or the model's, else the default v1 statistics). The task settings come from the adapter's
    config.json (saved by `save_adapter`) or the model's."""
    from ..configuration_terramind import TerraMindConfig
    from ..image_processing_terramind import TerraMindImageProcessor
    from ..modeling_terramind_tasks import TerraMindForPixelRegression, TerraMindForSemanticSegmentation

    config = _from_pretrained(TerraMindConfig.from_pretrained, [adapter, model])
    architectures = (getattr(config, "architectures", None) or []) if config is not None else []
    names = [name for name in architectures if name in DENSE_TASK_MODELS]
    if not names:
        found = f"its config names {architectures}" if config is not None else "no TerraMind config.json was found"
        raise ValueError(f"{adapter or model} is not a fine-tuned segmentation or regression model ({found}); give "
                         "a model saved by `terramind finetune`, or --adapter with an adapter saved by it.")  # fmt: skip
    task_models = {m.__name__: m for m in (TerraMindForSemanticSegmentation, TerraMindForPixelRegression)}
    import torch

    dtype = torch.float32 if dtype is None else dtype  # torch only here: the ONNX path writes through this module
    loaded = task_models[names[0]].from_pretrained(model, config=config, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, adapter).merge_and_unload()
    processor = _from_pretrained(TerraMindImageProcessor.from_pretrained, [adapter, model])
    return loaded.to(device).eval(), processor or TerraMindImageProcessor()


def prediction_targets(output: str | os.PathLike, probabilities: str | os.PathLike | None = None,
                       task: str = "segmentation") -> list[Path]:  # fmt: skip
    """The files a prediction writes: the GeoTIFF, its PNG quick-look (segmentation), the probabilities if asked."""
    targets = [Path(output)] + ([Path(output).with_suffix(".png")] if task == "segmentation" else [])
    return targets + ([Path(probabilities)] if probabilities is not None else [])


def task_of(model: Any) -> tuple[str, list[str]]:
    """("segmentation" or "regression", the class names (segmentation; regression outputs are named output_<i>
    once their number is known)) of a dense task model."""
    if type(model).__name__ == "TerraMindForSemanticSegmentation":
        return "segmentation", [str(model.config.id2label.get(i, i)) for i in range(model.config.num_labels)]
    return "regression", []


class PredictionWriter:
    """The outputs of `terramind predict`, written as the engine's rows arrive: the class map (uint8, nodata 255,
    plus a palette PNG quick-look) or regression values (float32, nodata NaN), and the class probabilities if
    asked. COGs, all files or none (`outputs.atomic_outputs`), none over an existing file unless `overwrite`.

    Use as a context manager around `engine.run_scene`: the files replace their targets when the block ends
    without error."""

    def __init__(self, output: str | os.PathLike, profile: dict[str, Any], task: str, class_names: Sequence[str],
                 probabilities: str | os.PathLike | None = None, overwrite: bool = False):  # fmt: skip
        if task != "segmentation" and probabilities is not None:
            raise ValueError("Class probabilities are for segmentation models; this model does pixel regression.")
        if task == "segmentation" and len(class_names) > CLASS_NODATA:
            raise ValueError(f"{len(class_names)} classes do not fit a uint8 class map.")
        self.profile, self.task, self.class_names = profile, task, list(class_names)
        self.targets = prediction_targets(output, probabilities, task)
        self.probabilities = probabilities is not None
        self.overwrite = overwrite
        self.files: list[Any] = []

    def __enter__(self) -> PredictionWriter:
        from .outputs import atomic_outputs

        self._atomic = atomic_outputs(self.targets, self.overwrite)
        self.partial = self._atomic.__enter__()
        return self

    def _open(self, count: int) -> None:
        """The files, once the first rows tell the number of outputs."""
        from .writers import GeoTiffRows

        if self.task == "regression":
            self.class_names = [f"output_{i}" for i in range(count)]
        elif count != len(self.class_names):
            raise ValueError(f"The model gave {count} outputs for {len(self.class_names)} classes.")
        if self.task == "segmentation":
            self.files.append(GeoTiffRows(self.partial[self.targets[0]], self.profile, 1, "uint8", CLASS_NODATA,
                                          band_names=["class"]))  # fmt: skip
        else:
            self.files.append(GeoTiffRows(self.partial[self.targets[0]], self.profile, count, "float32", float("nan"),
                                          band_names=self.class_names, resampling="average"))  # fmt: skip
        if self.probabilities:
            self.files.append(GeoTiffRows(self.partial[self.targets[2]], self.profile, count, "float32", float("nan"),
                                          band_names=self.class_names, resampling="average"))  # fmt: skip

    def write_rows(self, top: int, values: dict[str, np.ndarray], nodata: np.ndarray) -> None:
        self.write_block(top, 0, values, nodata)

    def write_block(self, top: int, left: int, values: dict[str, np.ndarray], nodata: np.ndarray) -> None:
        logits = values[""]  # (K, rows, cols)
        if not self.files:
            self._open(logits.shape[0])
        if self.task == "segmentation":
            self.files[0].write(top, logits.argmax(axis=0).astype(np.uint8), nodata, left)
            if self.probabilities:
                shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
                probabilities = shifted / shifted.sum(axis=0, keepdims=True)
                probabilities[:, nodata] = np.nan
                self.files[1].write(top, probabilities, left=left)
        else:
            regression = logits.copy()
            regression[:, nodata] = np.nan
            self.files[0].write(top, regression, left=left)

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> Any:
        try:
            if kind is None:
                for file in self.files:
                    file.finish()
                if self.task == "segmentation":
                    from .quicklook import save_class_quicklook
                    from .writers import read_for_quicklook

                    save_class_quicklook(self.partial[self.targets[1]], read_for_quicklook(self.partial[self.targets[0]]),
                                         len(self.class_names), nodata=CLASS_NODATA)  # fmt: skip
            else:
                for file in self.files:
                    file.discard()
        except BaseException as failure:
            for file in self.files:
                file.discard()
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
            raise
        return self._atomic.__exit__(kind, error, traceback)


def predict_to_files(model: Any, inputs: Mapping[str, Any], output: str | os.PathLike,
                     probabilities: str | os.PathLike | None = None, processor: Any = None, tile_size: int = 224,
                     overlap: int = 64, batch_size: int = 8, num_workers: int = 1, progress: bool = True,
                     overwrite: bool = False, writer: Any = None, stripe_width: int | None = STRIPE_WIDTH) -> Any:  # fmt: skip
    """Predict a scene of any size from its files ({modality: path, open rasterio dataset, or a list of them for a
    time series}) straight into `output` (and `probabilities`), or into `writer` (anything with `write_rows`,
    e.g. `engine.ArrayOutput`), streaming: memory does not grow with the scene (scenes wider than `stripe_width`
    go in stripes into outputs with `write_block`, as the files are). Tiles without data are skipped.
    Returns the engine's `SceneRun` (tiles, skipped, seconds, outputs)."""
    from ..image_processing_terramind import TerraMindImageProcessor
    from .engine import SceneSource, run_scene
    from .steps import ProcessorPrepare, logits_step

    processor = processor if processor is not None else TerraMindImageProcessor()
    task, names = task_of(model)
    was_training = model.training
    model.eval()
    try:
        with SceneSource(inputs) as source:
            prepare = ProcessorPrepare(processor, source.band_names, source.nodata, combine="any")
            options = dict(tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                           multiple_of=model.config.patch_size, merge="blend", num_workers=num_workers,
                           progress=progress, description="TerraMind prediction", stripe_width=stripe_width)  # fmt: skip
            if writer is not None:
                return run_scene(source, prepare, logits_step(model), writer, **options)
            with PredictionWriter(output, source.profile, task, names, probabilities, overwrite) as files:
                run = run_scene(source, prepare, logits_step(model), files, **options)
            run.outputs = list(files.targets)
            return run
    finally:
        model.train(was_training)


__all__ = ["PredictionWriter", "load_predictor", "parse_inputs", "predict_to_files", "prediction_targets", "task_of"]
