"""`terramind export --format onnx`: a TerraMind encoder or fine-tuned task model as an ONNX folder.

The graph comes from PyTorch's maintained exporter (`torch.onnx.export(..., dynamo=True)`, i.e. `torch.export`
plus onnxscript), with one input per modality named after it (`S2L2A`, `S1RTC`, ...), a dynamic batch and a
dynamic spatial size (multiples of the patch size), and one output: `logits` for task models, `last_hidden_state`
for the encoder. Next to `model.onnx` the folder holds the processor's JSON, `terramind_onnx.json` (the inputs'
bands and statistics, the task and class names: what the torch-free runtime needs) and a model card. The folder
is written whole or not at all (`outputs.atomic_folder`), never over an existing one unasked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..scenes.outputs import atomic_folder
from .exportable import make_exportable
from .runtime import METADATA_FILE, MODEL_FILE

QUANTIZATIONS = ("int8",)
EXAMPLE_SIZE = 64  # the example tile of the export; the graph takes any multiple of the patch size


class ModalityInputs(nn.Module):
    """Positional tensors in the order of `modalities` -> the wrapped model's keyword inputs -> one output tensor;
    the ONNX graph's inputs take the modalities' names."""

    def __init__(self, model: nn.Module, modalities: Sequence[str], output: str):
        super().__init__()
        self.model, self.modalities, self.output = model, list(modalities), output

    def forward(self, *pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(dict(zip(self.modalities, pixel_values, strict=True))), self.output)


def _load(model: str | os.PathLike, adapter: str | os.PathLike | None) -> tuple[nn.Module, Any, str]:
    """The model to export (a task model merged with its adapter, else the encoder), its processor and its task."""
    from ..configuration_terramind import TerraMindConfig
    from ..hub import looks_like_path
    from ..image_processing_terramind import TerraMindImageProcessor
    from ..scenes.prediction import DENSE_TASK_MODELS, _from_pretrained, load_predictor

    if adapter is not None and looks_like_path(adapter) and not Path(adapter).expanduser().exists():
        raise ValueError(f"--adapter {adapter}: no such folder.")
    config = _from_pretrained(TerraMindConfig.from_pretrained, [adapter, model])
    if config is None:
        raise ValueError(f"{adapter or model} has no TerraMind config.json; give a folder saved by `terramind "
                         "convert`, `finetune` or `save_pretrained`.")  # fmt: skip
    if any(name in DENSE_TASK_MODELS for name in (config.architectures or [])):
        loaded, processor = load_predictor(model, adapter)
        task = "segmentation" if type(loaded).__name__ == "TerraMindForSemanticSegmentation" else "regression"
        return loaded, processor, task
    if adapter is not None:
        raise ValueError(f"--adapter {adapter}: no segmentation or regression adapter there (not a local folder, "
                         f"not on the Hub, or its config names {config.architectures}); an encoder is exported "
                         "without one.")  # fmt: skip
    from ..modeling_terramind import TerraMindModel

    encoder = TerraMindModel.from_pretrained(model, config=config).eval()
    processor = _from_pretrained(TerraMindImageProcessor.from_pretrained, [model]) or TerraMindImageProcessor()
    return encoder, processor, "encoder"


def _image_modalities(config: Any, requested: Sequence[str] | None) -> list[str]:
    """The image modalities the graph takes: the requested ones, else the configured ones (canonical names)."""
    from ..image_processing_terramind import PIXEL_MODALITIES
    from ..modalities import resolve_modality

    configured = [resolve_modality(entry) for entry in config.modalities if isinstance(entry, str)]
    names = [resolve_modality(name) for name in requested] if requested else configured
    unusable = [name for name in names if name not in PIXEL_MODALITIES or name not in configured]
    if unusable or not names:
        raise ValueError(f"The ONNX graph takes image modalities the model was configured with "
                         f"({[n for n in configured if n in PIXEL_MODALITIES]}); got {unusable or names}.")  # fmt: skip
    return names


def input_metadata(processor: Any, modalities: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per modality what the torch-free runtime needs to prepare inputs as the processor does for prediction."""
    from ..image_processing_terramind import CLASS_MODALITIES, _per_modality
    from ..modalities import MODALITIES

    if processor.do_resize or processor.do_center_crop:
        raise ValueError("The processor resizes or crops; the ONNX runtime prepares tiles without that (export a "
                         "model whose processor keeps the pixel grid).")  # fmt: skip
    nodata_values = processor.nodata_value
    entries = {}
    for modality in modalities:
        bands = list(processor.output_bands(modality))
        mean, std = processor.band_statistics(modality)
        fill = processor._fill_values(modality, _per_modality(processor.fill_value, modality, "mean"), len(bands))
        entries[modality] = {
            "bands": bands, "pretrained_bands": list(MODALITIES[modality].bands), "mean": mean, "std": std,
            "fill": fill.flatten().tolist(), "nodata_value": _per_modality(nodata_values, modality),
            "normalize": bool(processor.do_normalize), "class_map": modality in CLASS_MODALITIES,
        }  # fmt: skip
    return entries


def export_graph(model: nn.Module, modalities: Sequence[str], output_name: str, channels: Sequence[int],
                 path: Path, example_batch: int = 2, example_size: int = EXAMPLE_SIZE) -> None:  # fmt: skip
    """Write the ONNX graph of `model` with inputs named by modality, dynamic batch and spatial size."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install "terramind[onnx]".') from None
    patch = model.config.patch_size
    wrapper = ModalityInputs(make_exportable(model), modalities, output_name).eval()
    int_inputs = {"LULC"}
    examples = tuple(
        torch.randint(0, 10, (example_batch, count, example_size, example_size)) if name in int_inputs
        else torch.randn(example_batch, count, example_size, example_size)
        for name, count in zip(modalities, channels, strict=True)
    )  # fmt: skip
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows = torch.export.Dim("patch_rows", min=1, max=1024)
    cols = torch.export.Dim("patch_cols", min=1, max=1024)
    shapes = (tuple({0: batch, 2: patch * rows, 3: patch * cols} for _ in modalities),)  # for *pixel_values
    with torch.no_grad():
        program = torch.onnx.export(wrapper, examples, dynamic_shapes=shapes, input_names=list(modalities),
                                    output_names=[output_name], dynamo=True, verbose=False)  # fmt: skip
    program.save(str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly) of an ONNX graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def _model_card(source: str, adapter: str | None, task: str, modalities: list[str], output_name: str,
                quantize: str | None) -> str:  # fmt: skip
    inputs = ", ".join(f"`{name}`" for name in modalities)
    origin = f"`{source}`" + (f" with the LoRA adapter `{adapter}` merged" if adapter else "")
    return f"""---
library_name: onnx
tags: [terramind, earth-observation, onnx]
---
# TerraMind {task} (ONNX{", dynamic int8" if quantize else ""})

Exported from {origin} with `terramind export --format onnx`.

- Inputs: {inputs}, float32 (B, C, H, W) standardized as `preprocessor_config.json` says (bands, means, stds
  also in `{METADATA_FILE}`); B any, H and W multiples of 16.
- Output: `{output_name}`.

Run it without torch: `terramind predict --model <this folder> --input S2L2A=scene.tif ... --output map.tif`, or
`onnxruntime.InferenceSession("{MODEL_FILE}")` on your own preprocessed arrays.
"""


class TokenizerEncoder(nn.Module):
    """Image (one-hot for class maps) -> token ids (B, h, w) and FSQ codes, without the eager input checks."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, tokens = self.tokenizer.quantizer(self.tokenizer.quant_proj(self.tokenizer.encoder(pixel_values)))
        return tokens, quantized


class TokenizerViTDecoder(nn.Module):
    """Token ids (B, h, w) -> the decoded image (B, C, 16 h, 16 w): the FSQ-VAE's whole decode."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        codes = self.tokenizer.quantizer.tokens_to_codes(tokens)
        return self.tokenizer.decoder(self.tokenizer.post_quant_proj(codes))


class TokenizerDenoisingStep(nn.Module):
    """One call of a diffusion decoder: (noisy sample, timesteps (B,), token ids) -> the UNet's prediction; the
    DDIM loop around it runs in numpy (`runtime.diffusion_decode`)."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decoder(sample, timestep, self.tokenizer.quantizer.tokens_to_codes(tokens))


def _ddim_metadata(tokenizer: nn.Module) -> dict[str, Any]:
    """The DDIM sampler's settings and its alpha-bar schedule (float32, as the original computes it)."""
    config = tokenizer.config
    if config.thresholding and config.sample_max_value > 1:
        raise ValueError("Dynamic thresholding (sample_max_value > 1) is not supported by the numpy DDIM loop.")
    return {"alphas_cumprod": tokenizer.noise_scheduler.alphas_cumprod.tolist(),
            "num_train_timesteps": config.num_train_timesteps, "timestep_spacing": config.timestep_spacing,
            "prediction_type": config.prediction_type, "thresholding": bool(config.thresholding),
            "sample_max_value": config.sample_max_value, "clip_sample": bool(config.clip_sample),
            "clip_sample_range": config.clip_sample_range, "num_inference_steps": config.num_inference_steps,
            "num_channels": config.num_channels, "size_multiple": config.unet_resolution_multiple()}  # fmt: skip


def export_tokenizer(tokenizer: nn.Module, staging: Path) -> dict[str, Any]:
    """`encoder.onnx` (input named by the modality -> `tokens`, `quantized`) and, for a ViT decoder,
    `decoder.onnx` (`tokens` -> `pixel_values`), for a diffusion decoder `decoder_step.onnx` (`sample`, `timestep`,
    `tokens` -> `model_output`) and the DDIM settings. The example grid (3 x 5 tokens) is off the tokenizer's native
    grid on purpose: its positional embeddings are interpolated only for other grids, and the traced branch is the
    one the graph keeps."""
    config = tokenizer.config
    modality, patch = config.modality or "pixel_values", config.patch_size
    channels = config.num_classes or config.num_channels
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows = torch.export.Dim("token_rows", min=1, max=1024)
    cols = torch.export.Dim("token_cols", min=1, max=1024)
    example = torch.randn(2, channels, 3 * patch, 5 * patch)
    with torch.no_grad():
        tokens = TokenizerEncoder(tokenizer)(example)[0]
        torch.onnx.export(TokenizerEncoder(tokenizer).eval(), (example,),
                          dynamic_shapes=({0: batch, 2: patch * rows, 3: patch * cols},), input_names=[modality],
                          output_names=["tokens", "quantized"], dynamo=True, verbose=False).save(
                              str(staging / "encoder.onnx"))  # fmt: skip
        if config.is_diffusion:
            sample = torch.randn(2, config.num_channels, 3 * patch, 5 * patch)
            torch.onnx.export(TokenizerDenoisingStep(tokenizer).eval(), (sample, torch.tensor([999, 500]), tokens),
                              dynamic_shapes=({0: batch, 2: patch * rows, 3: patch * cols}, {0: batch},
                                              {0: batch, 1: rows, 2: cols}),
                              input_names=["sample", "timestep", "tokens"], output_names=["model_output"],
                              dynamo=True, verbose=False).save(str(staging / "decoder_step.onnx"))  # fmt: skip
            decoder = {"decoder_step.onnx": {"inputs": ["sample", "timestep", "tokens"], "outputs": ["model_output"]}}
        else:
            torch.onnx.export(TokenizerViTDecoder(tokenizer).eval(), (tokens,),
                              dynamic_shapes=({0: batch, 1: rows, 2: cols},), input_names=["tokens"],
                              output_names=["pixel_values"], dynamo=True, verbose=False).save(
                                  str(staging / "decoder.onnx"))  # fmt: skip
            decoder = {"decoder.onnx": {"inputs": ["tokens"], "outputs": ["pixel_values"]}}
    return {"format": "onnx", "task": "tokenizer", "modality": modality, "patch_size": patch,
            "codebook_size": config.codebook_size, "num_classes": config.num_classes,
            "ddim": _ddim_metadata(tokenizer) if config.is_diffusion else None,
            "files": {"encoder.onnx": {"inputs": [modality], "outputs": ["tokens", "quantized"]}, **decoder}}


def _is_tokenizer(model: str | os.PathLike) -> bool:
    config = Path(model) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "terramind_tokenizer"


def export_onnx(model: str | os.PathLike, output: str | os.PathLike, adapter: str | os.PathLike | None = None,
                modalities: Sequence[str] | None = None, quantize: str | None = None,
                overwrite: bool = False) -> Path:  # fmt: skip
    """Export an encoder, a fine-tuned task model (with `adapter` merged) or a tokenizer (a local folder) into the
    folder `output`."""
    from ..scenes.outputs import check_target

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize takes {QUANTIZATIONS}, got {quantize!r}.")
    check_target(output, overwrite, folder=True)  # before the minutes of loading and exporting
    if _is_tokenizer(model):
        if adapter is not None or quantize is not None or modalities:
            raise ValueError("A tokenizer is exported as it is: no --adapter, --quantize or --modalities.")
        from ..modeling_terramind_tokenizer import TerraMindTokenizerModel

        tokenizer = TerraMindTokenizerModel.from_pretrained(model).eval()
        with atomic_folder(output, overwrite) as staging:
            metadata = {**export_tokenizer(tokenizer, staging), "source": str(model)}
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
            (staging / "README.md").write_text(f"# TerraMind {metadata['modality']} tokenizer (ONNX)\n\nExported "
                                               f"from `{model}`: `encoder.onnx` (image -> `tokens`, `quantized`) and "
                                               "`decoder.onnx` (`tokens` -> `pixel_values`) or `decoder_step.onnx` (one "
                                               "denoising step; the DDIM loop: "
                                               "`terramind.export.runtime.diffusion_decode`).\n")  # fmt: skip
        return Path(output)
    loaded, processor, task = _load(model, adapter)
    names = _image_modalities(loaded.config, modalities)
    output_name = "last_hidden_state" if task == "encoder" else "logits"
    channels = [len(processor.output_bands(name)) for name in names]
    inputs = input_metadata(processor, names)
    with atomic_folder(output, overwrite) as staging:
        graph = staging / MODEL_FILE
        if quantize:
            full = staging / "model_fp32.tmp.onnx"
            export_graph(loaded, names, output_name, channels, full)
            quantize_int8(full, graph)
            full.unlink()
            (staging / "model_fp32.tmp.onnx.data").unlink(missing_ok=True)
        else:
            export_graph(loaded, names, output_name, channels, graph)
        processor.save_pretrained(staging)
        config = loaded.config
        id2label = getattr(config, "id2label", {}) or {}
        num_outputs = config.num_labels if task == "segmentation" else getattr(config, "num_regression_outputs", 1)
        class_names = ([str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_outputs)]
                       if task == "segmentation" else [f"output_{i}" for i in range(num_outputs)])  # fmt: skip
        metadata = {"format": "onnx", "task": task, "inputs": inputs, "output": output_name,
                    "class_names": class_names if task != "encoder" else None, "patch_size": config.patch_size,
                    "quantization": f"{quantize}-dynamic" if quantize else None, "source": str(model),
                    "adapter": None if adapter is None else str(adapter)}  # fmt: skip
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        (staging / "README.md").write_text(_model_card(str(model), adapter and str(adapter), task, names,
                                                       output_name, quantize))  # fmt: skip
    return Path(output)


__all__ = ["ModalityInputs", "TokenizerDenoisingStep", "TokenizerEncoder", "TokenizerViTDecoder", "export_graph", "export_onnx", "export_tokenizer",
           "input_metadata", "quantize_int8"]
