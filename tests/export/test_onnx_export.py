"""`terramind export --format onnx` of a fine-tuned tiny segmentation model (LoRA merged), its parity in
onnxruntime at other batch and tile sizes, `terramind predict` of the exported folder with torch blocked, int8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TINY, sample_tile

from terramind import TerraMindConfig, TerraMindImageProcessor, TerraMindModel, read_sample
from terramind.cli import main
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.scenes.prediction import load_predictor
from terramind.training.adapters import save_adapter
from terramind.training.finetuning import apply_lora

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--tile-size", "64", "--overlap", "32", "--batch-size", "4", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


INPUTS = ["--input", f"S2L2A={sample_tile('S2L2A')}", "--input", f"S1RTC={sample_tile('S1RTC')}"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model, a LoRA segmentation adapter with random (non-zero) updates, and its ONNX export."""
    root = tmp_path_factory.mktemp("onnx_export")
    torch.manual_seed(0)
    TerraMindModel(TerraMindConfig(**TINY)).save_pretrained(root / "base")
    base = TerraMindForSemanticSegmentation.from_pretrained(root / "base", num_labels=3, decoder_hidden_size=16,
                                                            id2label={0: "water", 1: "trees", 2: "built"})  # fmt: skip
    adapted = apply_lora(base, r=2)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    save_adapter(adapted, root / "adapter")
    TerraMindImageProcessor().save_pretrained(root / "adapter")
    code = main(["export", "--model", str(root / "base"), "--adapter", str(root / "adapter"), "--format", "onnx",
                 "--output", str(root / "onnx")])  # fmt: skip
    assert code == 0
    return {"root": root, "base": root / "base", "adapter": root / "adapter", "onnx": root / "onnx"}


def processed(height: int, width: int, offsets: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Standardized crops of the sample tile, one per offset, as a batch."""
    sample = read_sample({"S2L2A": sample_tile("S2L2A"), "S1RTC": sample_tile("S1RTC")})
    batch = TerraMindImageProcessor()(sample.images, band_names=sample.band_names, nodata_value=sample.nodata,
                                      return_tensors="np")  # fmt: skip
    return {name: np.concatenate([batch[name][:, :, t : t + height, x : x + width] for t, x in offsets])
            for name in ("S2L2A", "S1RTC")}  # fmt: skip


def test_exported_folder_holds_graph_processor_metadata_and_card(exported):
    folder = exported["onnx"]
    assert {"model.onnx", "preprocessor_config.json", "terramind_onnx.json", "README.md"} <= set(os.listdir(folder))
    metadata = json.loads((folder / "terramind_onnx.json").read_text())
    assert metadata["task"] == "segmentation" and metadata["class_names"] == ["water", "trees", "built"]
    assert list(metadata["inputs"]) == ["S2L2A", "S1RTC"] and len(metadata["inputs"]["S2L2A"]["mean"]) == 12
    assert not [name for name in os.listdir(folder.parent) if ".partial-" in name]  # written atomically


@pytest.mark.parametrize(("height", "width", "offsets"), [(48, 80, [(0, 0), (16, 32), (160, 128)]),
                                                          (224, 224, [(0, 0)])])  # fmt: skip
def test_onnxruntime_matches_pytorch_at_other_batch_and_tile_sizes(exported, height, width, offsets):
    session = onnxruntime.InferenceSession(str(exported["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["S2L2A", "S1RTC"]
    assert [node.name for node in session.get_outputs()] == ["logits"]
    inputs = processed(height, width, offsets)  # the export's example was 2 x 64 x 64
    (logits,) = session.run(None, inputs)
    model, _ = load_predictor(exported["base"], exported["adapter"])
    with torch.no_grad():
        reference = model({name: torch.from_numpy(value) for name, value in inputs.items()}).logits.numpy()
    assert logits.shape == reference.shape == (len(offsets), 3, height, width)
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_predict_exported_folder_without_torch(exported, tmp_path):
    out, reference = tmp_path / "onnx.tif", tmp_path / "torch.tif"
    blocker = textwrap.dedent(f"""
        import sys
        for name in ("torch", "transformers", "peft", "accelerate"):
            sys.modules[name] = None  # `import torch` raises ImportError
        from terramind.cli import main
        code = main(["predict", "--model", {str(exported["onnx"])!r}, *{INPUTS!r}, "--output", {str(out)!r},
                     "--probabilities", {str(tmp_path / "probabilities.tif")!r}, *{FAST!r}])
        assert not [name for name in sys.modules if name.split(".")[0] == "torch" and sys.modules[name]]
        sys.exit(code)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", blocker], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["predict", "--model", str(exported["base"]), "--adapter", str(exported["adapter"]), *INPUTS,
                 "--output", str(reference), *FAST]) == 0  # fmt: skip
    with rasterio.open(out) as onnx, rasterio.open(reference) as eager, rasterio.open(sample_tile("S2L2A")) as source:
        assert onnx.crs == source.crs and onnx.transform == source.transform and onnx.nodata == 255
        assert onnx.dtypes == ("uint8",) and onnx.descriptions == ("class",)
        assert (onnx.read(1) == eager.read(1)).mean() > 0.999  # ties aside, the same classes
    assert (tmp_path / "onnx.png").is_file()
    with rasterio.open(tmp_path / "probabilities.tif") as probabilities:
        assert probabilities.count == 3 and probabilities.descriptions == ("water", "trees", "built")
        np.testing.assert_allclose(probabilities.read().sum(axis=0), 1.0, rtol=1e-5)


def test_int8_quantization_agrees_with_fp32(exported, tmp_path):
    from terramind.export.onnx_export import quantize_int8

    quantize_int8(exported["onnx"] / "model.onnx", tmp_path / "int8.onnx")
    fp32 = onnxruntime.InferenceSession(str(exported["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in int8.get_inputs()] == ["S2L2A", "S1RTC"]
    inputs = processed(64, 64, [(0, 0), (96, 96)])
    reference, quantized = fp32.run(None, inputs)[0], int8.run(None, inputs)[0]
    assert quantized.shape == reference.shape
    assert 0 < np.abs(quantized - reference).max() < 0.5 * np.abs(reference).max()  # quantized, yet close


def test_export_refuses_an_existing_folder_and_a_non_terramind_model(exported, tmp_path, capsys):
    assert main(["export", "--model", str(exported["base"]), "--output", str(exported["onnx"])]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert str(tmp_path) in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_encoder_export_gives_last_hidden_state_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    encoder = TerraMindModel(TerraMindConfig(**{**TINY, "modalities": ["S1RTC"]})).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    assert main(["export", "--model", str(tmp_path / "encoder"), "--output", str(tmp_path / "onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["S1RTC"]
    assert [node.name for node in session.get_outputs()] == ["last_hidden_state"]
    inputs = {"S1RTC": processed(32, 96, [(0, 0), (64, 16), (128, 128)])["S1RTC"]}
    (hidden,) = session.run(None, inputs)
    with torch.no_grad():
        reference = encoder({"S1RTC": torch.from_numpy(inputs["S1RTC"])}).last_hidden_state.numpy()
    assert hidden.shape == reference.shape == (3, 2 * 6, 32)
    assert np.abs(hidden - reference).max() <= 1e-4 * np.abs(reference).max()
    assert json.loads((tmp_path / "onnx" / "terramind_onnx.json").read_text())["task"] == "encoder"


def test_tokenizer_export_encodes_and_decodes_like_pytorch(tmp_path):
    from conftest import mini_tokenizer

    tokenizer = mini_tokenizer("LULC")  # FSQ-VAE with a ViT decoder, 10 classes
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert main(["export", "--model", str(tmp_path / "tokenizer"), "--output", str(tmp_path / "onnx")]) == 0
    encoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in encoder.get_inputs()] == ["LULC"]
    for batch, height, width in ((1, 64, 64), (3, 32, 96)):  # the tokenizer's native grid, and another
        classes = torch.randint(0, 10, (batch, height, width), generator=torch.Generator().manual_seed(height))
        one_hot = torch.nn.functional.one_hot(classes, 10).permute(0, 3, 1, 2).float()
        tokens = encoder.run(None, {"LULC": one_hot.numpy()})[0]
        reference = tokenizer.encode(classes)
        assert np.array_equal(tokens, reference.tokens.numpy())
        (decoded,) = decoder.run(None, {"tokens": tokens})
        expected = tokenizer.decode_tokens(reference.tokens).numpy()
        assert decoded.shape == expected.shape == (batch, 10, height, width)
        assert np.abs(decoded - expected).max() <= 1e-4 * np.abs(expected).max()


def test_diffusion_tokenizer_step_with_numpy_ddim_matches_pytorch(tmp_path):
    from conftest import mini_tokenizer

    from terramind.export.runtime import diffusion_decode

    tokenizer = mini_tokenizer("S2L2A")  # FSQ-VAE with a patched-UNet diffusion decoder
    with torch.no_grad():  # the UNet's output layer starts at zero: give it something to say
        for name, parameter in tokenizer.named_parameters():
            if name.startswith("decoder"):
                parameter.normal_(0, 0.02)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert main(["export", "--model", str(tmp_path / "tokenizer"), "--output", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "decoder_step.onnx").is_file() and not (tmp_path / "onnx" / "decoder.onnx").exists()
    tokens = torch.randint(0, tokenizer.config.codebook_size, (3, 2, 4), generator=torch.Generator().manual_seed(1))
    expected = tokenizer.decode_tokens(tokens, timesteps=3, generator=torch.Generator().manual_seed(0)).numpy()
    noise = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0)).numpy()  # the same start
    decoded = diffusion_decode(tmp_path / "onnx", tokens.numpy(), timesteps=3, noise=noise)
    assert decoded.shape == expected.shape == (3, tokenizer.config.num_channels, 32, 64)
    assert np.abs(decoded - expected).max() <= 1e-4 * np.abs(expected).max()
