"""Shared LoRA adapters: the recorded base model, the model card and its snippet in a fresh environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from terramind import TerraMindConfig, TerraMindModel
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.training.adapters import load_adapter, save_adapter
from terramind.training.finetuning import apply_lora

REPO = Path(__file__).resolve().parents[2]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_decoder_layers=1, hidden_act="gelu",
            gated_mlp=False, modalities=["S2L2A", "S1RTC"], bands={"S2L2A": ["RED", "GREEN", "BLUE", "NIR_NARROW"]})  # fmt: skip
HUB_BASE = "ibm-esa-geospatial/TerraMind-1.0-tiny"
HUB_ADAPTER = "someone/terramind-lulc-lora"

pytestmark = pytest.mark.usefixtures("one_thread")


def adapted_model(base_folder, source: str | None = None) -> torch.nn.Module:
    base = TerraMindForSemanticSegmentation.from_pretrained(base_folder, num_labels=3, decoder_hidden_size=16,
                                                            id2label={0: "water", 1: "trees", 2: "built"},
                                                            loss={"ce": 0.5, "dice": 0.5})  # fmt: skip
    if source is not None:  # as if loaded with this name (a Hub id)
        base.pretrained_source = source
    model = apply_lora(base, r=2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapters") / "base"
    torch.manual_seed(0)
    TerraMindModel(TerraMindConfig(**TINY)).save_pretrained(folder)
    return folder


def test_saved_adapter_records_the_absolute_base_and_carries_a_card(base_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(base_folder.parent)
    model = adapted_model("base")  # a relative path, as users type it
    save_adapter(model, tmp_path / "adapter", metrics={"eval_mIoU": 0.4567})
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_folder.resolve())
    model.save_pretrained(tmp_path / "plain")  # PEFT's own save records it too (apply_lora set it)
    plain = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert plain["base_model_name_or_path"] == str(base_folder.resolve())
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["architectures"] == ["TerraMindForSemanticSegmentation"] and len(config["id2label"]) == 3
    card = (tmp_path / "adapter" / "README.md").read_text()
    for text in ("semantic segmentation", "| modalities | S2L2A, S1RTC |", "| bands of S2L2A | RED, GREEN, BLUE, "
                 "NIR_NARROW |", "0: water, 1: trees, 2: built", "| eval_mIoU | 0.4567 |", "PeftModel.from_pretrained",
                 '"loss": {"ce": 0.5, "dice": 0.5}'):  # fmt: skip
        assert text in card, text
    x = {"S2L2A": torch.randn(1, 4, 32, 32), "S1RTC": torch.randn(1, 2, 32, 32)}
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(tmp_path / "adapter").eval()(**x).logits, model(**x).logits)


def test_pushed_card_snippet_runs_in_a_fresh_environment(base_folder, tmp_path, monkeypatch):
    """Pushed to a (stand-in) Hub repo with a Hub base model: the card's snippet, run in a new interpreter with an
    empty Hugging Face cache, offline, where the two repo ids point at local stand-ins, gives the same outputs."""
    from huggingface_hub import HfApi

    standin = tmp_path / "hub" / HUB_ADAPTER
    pushed = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: pushed.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, repo_id, folder_path, **kwargs: shutil.copytree(
        folder_path, standin))  # fmt: skip
    model = adapted_model(base_folder, source=HUB_BASE)
    save_adapter(model, tmp_path / "local", push_to_hub=HUB_ADAPTER)
    assert pushed["repo"] == HUB_ADAPTER and (standin / "adapter_model.safetensors").exists()
    card = (standin / "README.md").read_text()
    assert f"base_model: {HUB_BASE}" in card and "library_name: peft" in card
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    snippet = snippet.replace(HUB_ADAPTER, str(standin)).replace(HUB_BASE, str(base_folder))
    x = {"S2L2A": torch.randn(1, 4, 32, 32), "S1RTC": torch.randn(1, 2, 32, 32)}
    torch.save(x, tmp_path / "x.pt")
    script = snippet + (f"\nimport torch\nx = torch.load({str(tmp_path / 'x.pt')!r})\nwith torch.no_grad():\n"
                        f"    torch.save(model(**x).logits, {str(tmp_path / 'logits.pt')!r})\n")  # fmt: skip
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HF_HOME": str(fresh / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script], cwd=fresh, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(**x).logits)


def test_save_adapter_refuses_plain_models(tmp_path):
    with pytest.raises(ValueError, match="takes a PEFT model"):
        save_adapter(TerraMindModel(TerraMindConfig(**TINY)), tmp_path)
