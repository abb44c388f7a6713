"""Model cards for converted folders: what the folder is, where its weights come from, and how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from ..modalities import MODALITIES, resolve_modality

RELEASE_LICENSE = "apache-2.0"  # the ibm-esa-geospatial/TerraMind-1.0-* releases


def _modality_lines(modalities: list[Any]) -> list[str]:
    lines = []
    for entry in modalities:
        name = entry if isinstance(entry, str) else next(iter(entry))
        spec = MODALITIES[resolve_modality(name)] if isinstance(entry, str) else None  # dicts are new modalities
        if spec is not None and spec.kind == "image":
            lines.append(f"- `{name}`: {', '.join(spec.bands)}")
        elif spec is not None:
            lines.append(f"- `{name}` ({spec.kind.replace('_', ' ')})")
        else:
            lines.append(f"- `{name}`: {entry[name]} new channels")
    return lines


def write_model_card(folder: str | Path, source: str, kind: str, modalities: list[Any], auto_class: str,
                     python_class: str) -> Path:  # fmt: skip
    """Write `README.md` into a converted folder: the model, its source release and license, its modalities and
    bands, and the two ways to load it (with the `terramind` package, or remote code with transformers alone)."""
    folder = Path(folder)
    text = "\n".join([
        "---",
        f"license: {RELEASE_LICENSE}",
        "library_name: transformers",
        "tags: [terramind, earth-observation, remote-sensing, multimodal]",
        "---",
        "",
        f"# TerraMind 1.0 {kind} (Transformers)",
        "",
        f"TerraMind, the IBM/ESA any-to-any generative foundation model for Earth observation: the {kind}, converted "
        f"from the original release `{Path(source).name}` (terratorch 1.2.13 state dict, license Apache-2.0) by the "
        "`terramind` package; converted, it gives the original's numbers.",
        "",
        "## Modalities and bands",
        "",
        *_modality_lines(modalities),
        "",
        "## Loading",
        "",
        "```python",
        f"from terramind import {python_class}  # pip install terramind",
        f'model = {python_class}.from_pretrained("<this repo or folder>")',
        "",
        f"from transformers import {auto_class}  # transformers alone: the code ships with the weights",
        f'model = {auto_class}.from_pretrained("<this repo or folder>", trust_remote_code=True)',
        "```",
        "",
    ])  # fmt: skip
    path = folder / "README.md"
    path.write_text(text)
    return path


def push_folder(folder: str | Path, repo_id: str, **hub_kwargs: Any) -> str:
    """Push a whole converted folder (weights, config, code, processor, card) to a Hub model repo."""
    api = HfApi(token=hub_kwargs.get("token"))
    repo = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="Convert TerraMind 1.0 with terramind")
    return repo
