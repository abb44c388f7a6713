"""Conversion of original releases: every released layout, on-the-fly conversion, the script, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, fixture_checkpoint

from terramind import TerraMindForGeneration, TerraMindModel
from terramind.conversion.checkpoint import ConversionError, convert_checkpoint, convert_state_dict, infer_config

ROOT = Path(__file__).resolve().parents[2]
SHAPES = json.loads((FIXTURES / "v1_checkpoint_shapes.json").read_text())


def meta_state_dict(layout: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in SHAPES[layout].items()}


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_every_released_layout_converts_and_loads(variant):
    """A state dict of each released layout converts with no missing or unexpected keys (on the meta device)."""
    state = meta_state_dict(f"TerraMind_v1_{variant}.pt")
    config = infer_config(state, variant)
    assert config.variant == variant and config.modalities == ["S2L1C", "S2L2A", "RGB", "S1GRD", "S1RTC", "DEM"]
    converted = convert_state_dict(state)
    with torch.device("meta"):
        model = TerraMindForGeneration(config)
    result = model.load_state_dict(converted, strict=False, assign=True)
    tied = set(model._tied_weights_keys)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= tied, sorted(set(result.missing_keys) - tied)[:5]
    # the released files store one copy of each tied tensor
    assert len(converted) == len(model.state_dict()) - len(tied)


def test_variant_mismatch_and_bad_files(tmp_path):
    state = torch.load(FIXTURES / "terramind_tiny_original.pt", weights_only=True)
    with pytest.raises(ConversionError, match="does not match variant 'base'"):
        infer_config(state, "base")
    with pytest.raises(ConversionError, match="matches no released variant"):
        infer_config(state)
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="not a TerraMind model checkpoint"):
        convert_checkpoint(tmp_path / "other.pt", tmp_path / "out")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ConversionError, match="not a PyTorch state dict"):
        convert_checkpoint(tmp_path / "text.pt", tmp_path / "out")


def small_release(folder: Path) -> Path:
    """A random checkpoint with the released tiny layout but 2 encoder / 1 decoder blocks (small on disk)."""
    torch.manual_seed(0)
    state = {}
    for key, shape in SHAPES["TerraMind_v1_tiny.pt"].items():
        parts = key.split(".")
        if parts[0] in ("encoder", "decoder") and int(parts[1]) >= (2 if parts[0] == "encoder" else 1):
            continue
        if parts[0].endswith("_embeddings") and parts[1] not in ("untok_sen2l2a@224", "untok_sen1grd@224"):
            continue
        state[key] = torch.zeros(shape) if key.endswith("norm1.bias") or "norm" in key and key.endswith(
            ".bias") else torch.randn(shape) * 0.02  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "TerraMind_v1_tiny.pt")
    return folder


def test_from_pretrained_on_original_release_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TERRAMIND_CACHE", str(tmp_path / "cache"))
    release = small_release(tmp_path / "release")
    model = TerraMindModel.from_pretrained(release, modalities=["S2L2A", "S1GRD"])
    assert model.config.hidden_size == 192 and model.config.num_attention_heads == 3
    assert len(list((tmp_path / "cache" / "converted").glob("TerraMind_v1_tiny-*/config.json"))) == 1
    original = torch.load(release / "TerraMind_v1_tiny.pt", weights_only=True)
    torch.testing.assert_close(model.encoder.layer[1].attention.qkv.weight, original["encoder.1.attn.qkv.weight"])
    torch.testing.assert_close(model.encoder_embeddings["S2L2A"].proj.weight,
                               original["encoder_embeddings.untok_sen2l2a@224.proj.weight"])  # fmt: skip
    generator = TerraMindForGeneration.from_pretrained(release)  # reuses the cached conversion
    torch.testing.assert_close(generator.mask_token, original["mask_token"])


def test_conversion_script(tmp_path):
    out = tmp_path / "converted"
    checkpoint = fixture_checkpoint("base", tmp_path)
    command = [sys.executable, str(ROOT / "scripts" / "convert_terramind_original_to_hf.py"),
               "--checkpoint", str(checkpoint), "--output", str(out), "--num-heads", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["gated_mlp"] is True and config["hidden_act"] == "silu" and config["num_decoder_layers"] == 2
    from transformers import AutoProcessor

    from terramind import TerraMindProcessor

    assert isinstance(AutoProcessor.from_pretrained(out), TerraMindProcessor)  # written next to the model
    bad = subprocess.run(command[:3] + [str(tmp_path / "missing.pt"), "--output", str(out)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr  # an existing folder is kept
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    trimmed = subprocess.run(command[:3] + [str(FIXTURES / "terramind_base_original.pt"), "--output", str(out),
                                            "--num-heads", "2", "--overwrite"], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert trimmed.returncode == 2 and "size mismatch" in trimmed.stderr and "Traceback" not in trimmed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # a failed conversion replaces nothing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # and leaves no staging behind


# ----------------------------------------------------------------------------- the conversion cache
def cached_folders(cache: Path) -> list[Path]:
    return sorted((cache / "converted").glob("TerraMind_v1_tiny-*"))


def test_cache_is_keyed_on_content_and_converter_version(tmp_path, monkeypatch):
    import os

    import terramind.conversion.checkpoint as conversion

    monkeypatch.setenv("TERRAMIND_CACHE", str(tmp_path / "cache"))
    release = small_release(tmp_path / "release")
    first = conversion.resolve_original_release(release)
    assert conversion.resolve_original_release(release) == first  # cached
    checkpoint = release / "TerraMind_v1_tiny.pt"
    stat = checkpoint.stat()
    state = torch.load(checkpoint, weights_only=True)
    state["mask_token"] = state["mask_token"] + 1  # same size, and the old mtime restored below
    torch.save(state, checkpoint)
    assert checkpoint.stat().st_size == stat.st_size
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = conversion.resolve_original_release(release)
    assert second != first and len(cached_folders(tmp_path / "cache")) == 2
    model = TerraMindForGeneration.from_pretrained(second)
    torch.testing.assert_close(model.mask_token, state["mask_token"])  # the changed file, not the stale cache
    monkeypatch.setattr(conversion, "converter_version", lambda: "a-fixed-converter")
    assert conversion.resolve_original_release(release) not in (first, second)  # a converter fix reconverts


def test_cache_cleans_killed_conversions_and_serves_a_group(tmp_path, monkeypatch):
    import os
    import socket
    import time

    from transformers import AutoProcessor

    from terramind import TerraMindProcessor
    from terramind.conversion.checkpoint import resolve_original_release

    cache = tmp_path / "cache"
    monkeypatch.setenv("TERRAMIND_CACHE", str(cache))
    (cache / "converted").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache / "converted" / f".TerraMind_v1_tiny-x.partial-{socket.gethostname()}-{int(dead.stdout)}-0123abcd"
    legacy = cache / "converted" / ".TerraMind_v1_tiny-k2j4h5g6"  # tempfile.mkdtemp folders of earlier versions
    running = cache / "converted" / ".TerraMind_v1_base-m3n4b5v6"
    for folder in (stale, legacy, running):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 1024)
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    release = small_release(tmp_path / "release")
    umask = os.umask(0o002)  # a group-shared cache
    try:
        converted = Path(resolve_original_release(release))
    finally:
        os.umask(umask)
    assert not legacy.exists() and running.exists()  # an hour-old staging folder is gone, a fresh one stays
    assert not any(p.name.startswith(".TerraMind_v1_tiny-x.partial-") for p in (cache / "converted").iterdir())
    assert converted.stat().st_mode & 0o777 == 0o775  # not mkdtemp's 0700: the group can read and add conversions
    assert (converted / "model.safetensors").stat().st_mode & 0o777 == 0o664
    assert isinstance(AutoProcessor.from_pretrained(converted), TerraMindProcessor)  # the processor config is there


def test_converted_folder_card_processor_and_feature_extraction_pipeline(tmp_path):
    """A converted folder has a model card and a processor whose default modality (the model's first) takes bare
    images: `pipeline("image-feature-extraction")` works on it, giving the encoder's per-patch features."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    folder = convert_checkpoint(fixture_checkpoint("tiny", tmp_path), tmp_path / "rgb",
                                config_overrides={"num_attention_heads": 2, "modalities": ["RGB", "S2L2A"]})  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and "terramind_tiny_original.pt" in card
    assert "trust_remote_code=True" in card and "`RGB`: RED, GREEN, BLUE" in card
    assert AutoImageProcessor.from_pretrained(folder).default_modality == "RGB"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(folder))
    features = np.asarray(extractor(image))
    assert features.shape == (1, 16, 16)  # 4x4 patches of the hidden size 16
    model = TerraMindModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(image)["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)
