"""The `terramind` command line on the shipped sample scene, with tiny converted models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import fixture_checkpoint, mini_tokenizer
from PIL import Image

from terramind.cli import main
from terramind.conversion import convert_checkpoint

SCENE = Path(__file__).resolve().parents[1] / "samples" / "terramesh"
TILE = "282D_485L_3_3.tif"


def scene(modality: str) -> str:
    return str(SCENE / modality / TILE)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_assets")
    convert_checkpoint(fixture_checkpoint("tiny", root), root / "model", config_overrides={"num_attention_heads": 2})
    for modality in ("S2L2A", "LULC", "DEM"):
        mini_tokenizer(modality).save_pretrained(root / f"tokenizer_{modality}")
    return {"model": root / "model", **{m: root / f"tokenizer_{m}" for m in ("S2L2A", "LULC", "DEM")}}


def test_embed_geotiff_and_safetensors(assets, tmp_path):
    out = tmp_path / "emb.tif"
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={scene('S2L2A')}",
                 "--input", f"S1RTC={scene('S1RTC')}", "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    with rasterio.open(scene("S2L2A")) as src, rasterio.open(out) as emb:
        assert (emb.count, emb.height, emb.width) == (16, 14, 14)
        assert emb.crs == src.crs
        assert np.allclose(emb.transform.a, src.transform.a * 16) and emb.transform.c == src.transform.c
        assert np.isfinite(emb.read()).all()
    from safetensors import safe_open

    out = tmp_path / "emb.safetensors"
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={scene('S2L2A')}", "--output",
                 str(out), "--merge-method", "concat", "--no-progress"]) == 0  # fmt: skip
    with safe_open(out, "pt") as handle:
        assert handle.get_tensor("embeddings").shape == (16, 14, 14)  # concat of the one configured modality
        assert handle.metadata()["modalities"] == "S2L2A"


def test_generate_geotiffs_and_quicklooks(assets, tmp_path):
    code = main(["generate", "--model", str(assets["model"]), "--input", f"S1RTC={scene('S1RTC')}",
                 "--output-modalities", "S2L2A,LULC", "--output-dir", str(tmp_path), "--timesteps", "2",
                 "--tokenizer", f"S2L2A={assets['S2L2A']}", "--tokenizer", f"LULC={assets['LULC']}",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    with rasterio.open(scene("S1RTC")) as src:
        for name, count, dtype in (("S2L2A", 12, "int16"), ("LULC", 1, "uint8")):
            with rasterio.open(tmp_path / f"{name}.tif") as out:
                assert (out.count, out.height, out.width, out.dtypes[0]) == (count, 224, 224, dtype)
                assert out.crs == src.crs and out.transform == src.transform
            with Image.open(tmp_path / f"{name}.png") as png:
                assert png.size == (224, 224) and png.mode == "RGB"


def test_generate_offset_shifts_the_statistics(assets, tmp_path, capsys):
    """--offset S2L2A=1000 (harmonised L2A): generated S2L2A comes back 1000 higher, the same samples otherwise."""
    outputs = {}
    for name, extra in (("plain", []), ("offset", ["--offset", "S2L2A=1000"])):
        assert main(["generate", "--model", str(assets["model"]), "--input", f"S1RTC={scene('S1RTC')}",
                     "--output-modalities", "S2L2A", "--output-dir", str(tmp_path / name), "--timesteps", "1",
                     "--tokenizer", f"S2L2A={assets['S2L2A']}", "--no-progress", *extra]) == 0  # fmt: skip
        with rasterio.open(tmp_path / name / "S2L2A.tif") as out:
            outputs[name] = out.read().astype(np.int32)
    assert np.abs(outputs["offset"] - outputs["plain"] - 1000).max() <= 1
    argv = ["generate", "--input", f"S2L2A={scene('S2L2A')}", "--output-modalities", "LULC", "--output-dir", "o"]
    assert main([*argv, "--offset", "S2L2A=much"]) == 2
    assert "--offset takes MODALITY=NUMBER" in capsys.readouterr().err


def test_generate_tiles_a_larger_scene(assets, tmp_path):
    with rasterio.open(scene("S2L2A")) as src:
        data, profile = src.read(), src.profile
    big = np.concatenate([data, data[:, :, ::-1][:, :, :96]], axis=2)  # 224 x 320
    profile.update(width=big.shape[2])
    path = tmp_path / "wide.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
    code = main(["generate", "--model", str(assets["model"]), "--input", f"S2L2A={path}", "--output-modalities",
                 "DEM", "--output-dir", str(tmp_path / "out"), "--timesteps", "1", "--tokenizer",
                 f"DEM={assets['DEM']}", "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert code == 0
    with rasterio.open(tmp_path / "out" / "DEM.tif") as out:
        assert (out.height, out.width) == (224, 320) and out.transform == profile["transform"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--input", "FOO=x.tif", "--output", "e.tif"], "Unknown modality 'FOO'"),
        (["embed", "--input", "S2L2A", "--output", "e.tif"], "MODALITY=PATH"),
        (["embed", "--input", "S2L2A=missing.tif", "--output", "e.tif"], "does not exist"),
        (["embed", "--input", f"S2L2A={scene('S2L2A')}", "--output", "e.png"], "must end in"),
        (["generate", "--input", f"S2L2A={scene('S2L2A')}", "--output-modalities", "RGB", "--output-dir", "o"],
         "cannot generate 'RGB'"),
        (["embed", "--model", "/nonexistent/model", "--input", f"S2L2A={scene('S2L2A')}", "--output", "e.tif"],
         "could not load model"),
    ],
)
def test_user_mistakes_give_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_console_entry_point_exits_non_zero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "terramind.cli", "embed", "--input", "S2L2A=nope.tif",
                             "--output", "e.tif"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_finetune_wraps_the_finetuning_script(tmp_path):
    import json

    overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_decoder_layers": 1,
                 "decoder_hidden_size": 16}  # fmt: skip
    code = main(["finetune", "--data_root", str(SCENE), "--modalities", "S2L2A", "S1RTC", "--label_dir", "LULC",
                 "--num_labels", "11", "--variant", "tiny", "--config_overrides", json.dumps(overrides),
                 "--crop_size", "64", "--output_dir", str(tmp_path), "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
                 "--disable_tqdm", "true"])  # fmt: skip
    assert code == 0
    assert (tmp_path / "model.safetensors").exists()


def test_convert_a_tokenizer_checkpoint(tmp_path):
    """`terramind convert --tokenizer-checkpoint` gives a folder with the original's tokens (golden LULC case)."""
    import json

    import torch
    from conftest import FIXTURES, MINI_TOKENIZER, MINI_VIT_DECODER

    from terramind import TerraMindTokenizerModel

    overrides = dict(MINI_TOKENIZER, num_channels=10, num_classes=10, **MINI_VIT_DECODER)
    code = main(["convert", "--tokenizer-checkpoint", str(FIXTURES / "tokenizer_lulc_vqvae_original.pt"),
                 "--modality", "LULC", "--config", json.dumps(overrides), "--output", str(tmp_path / "lulc")])  # fmt: skip
    assert code == 0
    tokenizer = TerraMindTokenizerModel.from_pretrained(tmp_path / "lulc")
    case = torch.load(FIXTURES / "tokenizer_cases.pt", weights_only=True)["lulc_vqvae"]
    seed, shape, classes = case["input"]["classes"]
    class_map = torch.from_numpy(np.random.default_rng(seed).integers(0, classes, size=shape))
    assert torch.equal(tokenizer.encode(class_map).tokens, case["tokens"])
