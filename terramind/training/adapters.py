"""Sharing LoRA adapters of TerraMind task models: save or push them with their task settings and a model card.

`save_adapter(model, folder)` writes what `PeftModel.save_pretrained` writes (adapter weights and config, with the
base model recorded as a Hub id or an absolute path, never a relative one) plus the task model's `config.json`
(modalities, bands, classes, head and loss settings: what a fresh environment needs to rebuild the base task model)
and a model card (`README.md`) with the task, modalities, bands, classes, metrics and the snippet that loads it.
`push_to_hub=REPO` uploads the same folder. `load_adapter(folder_or_repo)` is that snippet as a function.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CARD_FILE = "README.md"
TASK_NAMES = {
    "TerraMindForSemanticSegmentation": ("semantic segmentation", "image-segmentation"),
    "TerraMindForPixelRegression": ("pixel-wise regression", "image-to-image"),
    "TerraMindForImageClassification": ("image classification", "image-classification"),
    "TerraMindBackbone": ("feature extraction (backbone)", "image-feature-extraction"),
    "TerraMindModel": ("feature extraction (encoder)", "image-feature-extraction"),
    "TerraMindForGeneration": ("any-to-any generation", "image-to-image"),
}


def base_model_source(model: torch.nn.Module) -> str | None:
    """Where a model was loaded from, to record in its adapters: the Hub id (or original release id) it was loaded
    with, or the absolute path of a local folder; None for a model built from a config."""
    source = getattr(model, "pretrained_source", None) or model.__dict__.get("name_or_path")
    source = source or getattr(model.config, "_name_or_path", None)
    if not source:
        return None
    path = Path(str(source)).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def _task_class(config: Any) -> str:
    architectures = getattr(config, "architectures", None) or []
    names = [name for name in architectures if name in TASK_NAMES]
    if not names:
        raise ValueError(f"The adapter's config.json names no TerraMind task model (architectures={architectures}).")
    return names[0]


def load_adapter(adapter: str | os.PathLike, base_model: str | os.PathLike | None = None, **kwargs: Any):
    """The task model of a saved or pushed adapter, ready to use: its config (task settings) from the adapter, the
    base weights from `base_model` (default: the source the adapter records), then `PeftModel.from_pretrained`."""
    from peft import PeftConfig, PeftModel

    import terramind

    from ..configuration_terramind import TerraMindConfig

    config = TerraMindConfig.from_pretrained(adapter, **kwargs)
    base_model = base_model or PeftConfig.from_pretrained(adapter, **kwargs).base_model_name_or_path
    if not base_model:
        raise ValueError(f"The adapter {adapter} records no base model; pass base_model=.")
    model_class = getattr(terramind, _task_class(config))
    base = model_class.from_pretrained(base_model, config=config, **kwargs)
    return PeftModel.from_pretrained(base, adapter, **kwargs)


def save_adapter(
    model: Any,
    save_directory: str | os.PathLike,
    metrics: Mapping[str, float] | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> Path:
    """Save a PEFT-wrapped TerraMind model's adapter with its task config and model card; optionally push the folder
    to the Hub repo `push_to_hub` (created if missing). Returns the folder."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(f"save_adapter takes a PEFT model (apply_lora(...)), got {type(model).__name__}.")
    folder = Path(save_directory)
    base = model.get_base_model()
    peft_config = model.peft_config[model.active_adapter]
    source = peft_config.base_model_name_or_path
    if source and Path(source).expanduser().exists():  # a local folder: recorded as an absolute path
        peft_config.base_model_name_or_path = str(Path(source).expanduser().resolve())
    model.save_pretrained(folder)
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.architectures = [type(base).__name__]
    config.save_pretrained(folder)
    repo = push_to_hub or str(folder.resolve())
    card = adapter_card(config, peft_config, repo, metrics)
    (folder / CARD_FILE).write_text(card)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(folder), commit_message="Upload TerraMind adapter")
    return folder


def _bands(config: Any) -> dict[str, list[str]]:
    """Bands per image modality (configured subsets, the pretrained order, or the channel count of new ones)."""
    out = {}
    for key, alias in config.modality_aliases().items():
        spec = config.pretrained_spec(key)
        if spec is None:
            out[alias] = [f"{config.modality_specs()[key]} channels (new modality)"]
        elif spec.kind == "image":
            out[alias] = config.band_names(key) or list(spec.bands)
    return out


def adapter_card(config: Any, peft_config: Any, repo: str, metrics: Mapping[str, float] | None = None) -> str:
    """The model card (README.md) of a TerraMind adapter: metadata, task, inputs, classes, metrics and the snippet."""
    from huggingface_hub import ModelCardData

    model_class = _task_class(config)
    task, pipeline_tag = TASK_NAMES[model_class]
    base = peft_config.base_model_name_or_path or "BASE_MODEL"
    is_hub_id = not Path(base).expanduser().exists() and base.count("/") == 1
    data = ModelCardData(library_name="peft", base_model=base if is_hub_id else None, pipeline_tag=pipeline_tag,
                         tags=["terramind", "earth-observation", "lora", "remote-sensing"], license="apache-2.0")  # fmt: skip
    modalities = list(config.modality_aliases().values())
    lines = [f"---\n{data.to_yaml()}\n---", f"# TerraMind LoRA adapter: {task}", "",
             f"A LoRA adapter (r={peft_config.r}, alpha={peft_config.lora_alpha}, targets "
             f"{sorted(peft_config.target_modules)}) with the task head `{model_class}` for the TerraMind base model "
             f"`{base}`.", "", "| | |", "| --- | --- |", f"| task | {task} |",
             f"| modalities | {', '.join(modalities)} |"]  # fmt: skip
    for modality, bands in _bands(config).items():
        lines.append(f"| bands of {modality} | {', '.join(bands)} |")
    if model_class in ("TerraMindForSemanticSegmentation", "TerraMindForImageClassification"):
        classes = ", ".join(f"{i}: {config.id2label[i]}" for i in sorted(config.id2label))
        lines.append(f"| classes ({config.num_labels}) | {classes} |")
    settings = {name: getattr(config, name) for name in ("decode_head", "loss", "temporal_merge", "num_timesteps")
                if name in config.__dict__}  # fmt: skip
    if settings:
        lines.append(f"| task settings | {json.dumps(settings)} |")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
                  for name, value in metrics.items()]  # fmt: skip
    lines += ["", "## Use", "", "```python", "from peft import PeftModel",
              f"from terramind import TerraMindConfig, {model_class}", "",
              f'config = TerraMindConfig.from_pretrained("{repo}")  # the task settings',
              f'base = {model_class}.from_pretrained("{base}", config=config)',
              f'model = PeftModel.from_pretrained(base, "{repo}").eval()', "```", "",
              "Inputs are standardized pixels per modality, e.g. from `terramind.TerraMindImageProcessor`; "
              + ("`model.generate(S2L2A=x, output_modalities=[...])` generates." if model_class ==
                 "TerraMindForGeneration" else f"`terramind predict --model {base} --adapter {repo} --input "
                 "MODALITY=scene.tif --output out.tif` predicts whole scenes."), ""]  # fmt: skip
    return "\n".join(lines)


__all__ = ["adapter_card", "base_model_source", "load_adapter", "save_adapter"]
