"""The plug-ins the scene engine runs with TerraMind in torch: window preparation through the image processor, and
model steps for embed, predict and generate (numpy batches in, numpy out; torch only inside).

Other backends (onnxruntime) plug their own `step` into `engine.run_scene`; `ProcessorPrepare` is the one piece
here that needs torch for the inputs, because the processor is written in torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .engine import Arrays, raw_nodata


class ProcessorPrepare:
    """Raw windows -> standardized model inputs through the TerraMind image processor, padded at the bottom/right
    (with the band means, i.e. 0 after standardization, as the processor pads a whole scene), and the nodata mask:
    True where `combine` ("any" or "all") of the inputs have nodata, and on the padding.

    A window where one input has no data at all (the processor refuses those) gets that input's fill (0 after
    standardization) and counts as nodata there."""

    def __init__(self, processor: Any, band_names: Mapping[str, Sequence[str] | None],
                 nodata: Mapping[str, float | None], combine: str = "any", dtype: Any = np.float32):  # fmt: skip
        if combine not in ("any", "all"):
            raise ValueError(f"combine must be 'any' or 'all', got {combine!r}.")
        self.processor, self.band_names, self.nodata = processor, dict(band_names), dict(nodata)
        self.combine, self.dtype = combine, dtype

    def __call__(self, raw: Arrays, height: int, width: int) -> tuple[Arrays, np.ndarray]:
        from ..image_processing_terramind import CLASS_MODALITIES, nodata_mask_key
        from ..modalities import resolve_modality

        empty = {name: mask.all() for name, mask in raw_nodata(raw, self.nodata).items()}
        given = {name: value[None] for name, value in raw.items() if not empty[name] and value.shape[-1] * value.shape[-2]}
        inputs, masks = {}, []
        if given:
            batch = self.processor({name: value for name, value in given.items()},
                                   band_names={name: self.band_names.get(name) for name in given},
                                   nodata_value={name: self.nodata.get(name) for name in given},
                                   return_nodata_mask=True, do_pad=True, pad_size={"height": height, "width": width},
                                   return_tensors="np")  # fmt: skip
            for name in given:
                modality = resolve_modality(name)
                inputs[name] = batch[modality][0]
                mask = batch[nodata_mask_key(modality)][0]
                masks.append(mask.any(axis=0) if mask.ndim == 3 else mask)  # time series: nodata at any step
        for name, value in raw.items():
            if name in given:
                continue
            modality = resolve_modality(name)
            bands = len(self.processor.output_bands(modality))
            shape = (bands, *value.shape[1:-2], height, width)
            inputs[name] = np.zeros(shape, np.int64 if modality in CLASS_MODALITIES else np.float32)
            masks.append(np.ones((height, width), dtype=bool))
        inputs = {name: inputs[name] for name in raw}  # the caller's order
        if self.dtype is not None:
            inputs = {k: v.astype(self.dtype, copy=False) if v.dtype.kind == "f" else v for k, v in inputs.items()}
        nodata = np.logical_or.reduce(masks) if self.combine == "any" else np.logical_and.reduce(masks)
        return inputs, nodata


class TorchStep:
    """A numpy -> numpy model step around a torch function of {name: tensor} (on `device`, floats in `dtype`)."""

    def __init__(self, function: Any, device: Any = "cpu", dtype: Any = None):
        self.function, self.device, self.dtype = function, device, dtype

    def __call__(self, batch: Arrays) -> np.ndarray | Arrays:
        import torch

        with torch.inference_mode():
            tensors = {name: torch.from_numpy(np.ascontiguousarray(value)).to(
                self.device, self.dtype if value.dtype.kind == "f" else None) for name, value in batch.items()}  # fmt: skip
            out = self.function(tensors)
            if isinstance(out, Mapping):
                return {name: _numpy(value) for name, value in out.items()}
            return _numpy(out)


def _numpy(value: Any) -> np.ndarray:
    import torch

    value = value.detach().cpu()
    return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()


def logits_step(model: Any) -> TorchStep:
    """A dense task model's logits (n, K, tile, tile), float32."""
    dtype = next(model.parameters()).dtype
    return TorchStep(lambda tiles: model(tiles).logits.float(), model.device, dtype)


def embedding_step(model: Any, device: Any = None, dtype: Any = None) -> TorchStep:
    """The encoder's tokens of each tile as a (n, D, tile/16, tile/16) grid, float32."""

    def tokens(tiles: dict) -> Any:
        out = model(**tiles).last_hidden_state.float()
        side = next(iter(tiles.values())).shape[-1] // 16
        return out.reshape(out.shape[0], side, side, -1).permute(0, 3, 1, 2)

    device = device if device is not None else getattr(model, "device", "cpu")
    return TorchStep(tokens, device, dtype if dtype is not None else next(model.parameters()).dtype)


__all__ = ["ProcessorPrepare", "TorchStep", "embedding_step", "logits_step"]
