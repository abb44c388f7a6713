"""`terramind predict` and its Python pieces: fine-tuned folders and adapters, any scene size, nodata, time series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TINY, sample_tile
from PIL import Image
from rasterio.windows import Window

from terramind import TerraMindConfig, TerraMindImageProcessor, TerraMindModel
from terramind.cli import main
from terramind.modeling_terramind_tasks import TerraMindForPixelRegression, TerraMindForSemanticSegmentation
from terramind.training.adapters import save_adapter
from terramind.training.finetuning import apply_lora

FAST = ["--tile-size", "64", "--overlap", "32", "--batch-size", "16", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs_of(s2: str = sample_tile("S2L2A"), s1: str = sample_tile("S1RTC")) -> list[str]:
    return ["--input", f"S2L2A={s2}", "--input", f"S1RTC={s1}"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_models")
    torch.manual_seed(0)
    segmentation = TerraMindForSemanticSegmentation(TerraMindConfig(**TINY, num_labels=4, decoder_hidden_size=16,
                                                                    id2label={0: "water", 1: "trees", 2: "crops",
                                                                              3: "built"}))  # fmt: skip
    segmentation.save_pretrained(root / "segmentation")
    TerraMindImageProcessor().save_pretrained(root / "segmentation")
    TerraMindForPixelRegression(TerraMindConfig(**TINY, decode_head="fcn", decoder_hidden_size=16)).save_pretrained(
        root / "regression")  # fmt: skip
    TerraMindModel(TerraMindConfig(**TINY)).save_pretrained(root / "base")
    base = TerraMindForSemanticSegmentation.from_pretrained(root / "base", num_labels=3, decoder_hidden_size=16)
    adapted = apply_lora(base, r=2)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    save_adapter(adapted, root / "adapter")
    return {"root": root, "segmentation": root / "segmentation", "regression": root / "regression",
            "base": root / "base", "adapter": root / "adapter"}  # fmt: skip


def reference_logits(model, s2: str = sample_tile("S2L2A"), s1: str = sample_tile("S1RTC")) -> torch.Tensor:
    from terramind import predict_tiled, read_sample

    sample = read_sample({"S2L2A": s2, "S1RTC": s1})
    batch = TerraMindImageProcessor()(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)
    return predict_tiled(model.eval(), dict(batch), tile_size=64, overlap=32)


def test_predict_class_map_probabilities_and_quicklook(models, tmp_path):
    out, probabilities = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    assert main(["predict", "--model", str(models["segmentation"]), *inputs_of(), "--output", str(out),
                 "--probabilities", str(probabilities), *FAST]) == 0  # fmt: skip
    logits = reference_logits(TerraMindForSemanticSegmentation.from_pretrained(models["segmentation"]))
    with rasterio.open(out) as dst, rasterio.open(sample_tile("S2L2A")) as src:
        assert dst.dtypes == ("uint8",) and dst.nodata == 255 and dst.crs == src.crs and dst.transform == src.transform
        classes = dst.read(1)
    assert np.array_equal(classes, logits[0].argmax(0).numpy())
    with rasterio.open(probabilities) as dst:
        assert dst.count == 4 and dst.descriptions == ("water", "trees", "crops", "built")
        np.testing.assert_allclose(dst.read(), logits[0].softmax(0).numpy(), rtol=1e-5, atol=1e-6)
    png = Image.open(tmp_path / "classes.png")
    assert png.mode == "P" and png.size == (224, 224)
    assert np.array_equal(np.asarray(png), classes)


def test_predict_any_scene_size_keeps_georeference_and_nodata(models, tmp_path):
    """A 100x150 window of the tile, with a nodata block in S2L2A: the output covers the window with its transform,
    and the nodata pixels are nodata in the class map."""
    paths = {}
    for modality in ("S2L2A", "S1RTC"):
        with rasterio.open(sample_tile(modality)) as src:
            window = Window(10, 20, 150, 100)
            values, profile = src.read(window=window), dict(src.profile)
            profile.update(height=100, width=150, transform=src.window_transform(window))
        if modality == "S2L2A":
            profile["nodata"] = 0
            values[:, :30, :40] = 0
        paths[modality] = tmp_path / f"{modality}.tif"
        with rasterio.open(paths[modality], "w", **profile) as dst:
            dst.write(values)
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", str(models["segmentation"]), *inputs_of(paths["S2L2A"], paths["S1RTC"]),
                 "--output", str(out), *FAST]) == 0  # fmt: skip
    with rasterio.open(out) as dst, rasterio.open(paths["S2L2A"]) as src:
        assert (dst.height, dst.width) == (100, 150) and dst.transform == src.transform
        classes = dst.read(1)
    assert (classes[:30, :40] == 255).all() and (classes[30:] < 4).all()


def test_predict_with_adapter_matches_the_python_model(models, tmp_path):
    from terramind.training.adapters import load_adapter

    out = tmp_path / "out.tif"
    assert main(["predict", "--model", str(models["base"]), "--adapter", str(models["adapter"]), *inputs_of(),
                 "--output", str(out), *FAST]) == 0  # fmt: skip
    logits = reference_logits(load_adapter(models["adapter"]).merge_and_unload())
    with rasterio.open(out) as dst:
        assert np.array_equal(dst.read(1), logits[0].argmax(0).numpy())


def test_predict_regression_and_time_series(models, tmp_path):
    out = tmp_path / "regression.tif"
    assert main(["predict", "--model", str(models["regression"]), *inputs_of(), "--output", str(out), *FAST]) == 0
    with rasterio.open(out) as dst:
        assert dst.dtypes == ("float32",) and np.isnan(dst.nodata) and np.isfinite(dst.read()).all()
    torch.manual_seed(0)
    temporal = TerraMindForSemanticSegmentation(TerraMindConfig(**TINY, num_labels=3, decoder_hidden_size=16,
                                                                temporal_merge="concat", num_timesteps=2))  # fmt: skip
    temporal.save_pretrained(tmp_path / "temporal")
    second = sample_tile("S2L2A", "433D_629L_3_1.tif")  # another date would do: any co-registered raster
    with rasterio.open(second) as src, rasterio.open(sample_tile("S2L2A")) as ref:
        profile = dict(ref.profile)
        values = src.read()
    with rasterio.open(tmp_path / "t1.tif", "w", **profile) as dst:
        dst.write(values)
    out = tmp_path / "temporal.tif"
    assert main(["predict", "--model", str(tmp_path / "temporal"), "--input", f"S2L2A={sample_tile('S2L2A')}",
                 "--input", f"S2L2A={tmp_path / 't1.tif'}", "--input", f"S1RTC={sample_tile('S1RTC')}",
                 "--output", str(out), *FAST]) == 0  # fmt: skip
    with rasterio.open(out) as dst:
        assert dst.read(1).max() < 3


def test_predict_errors_are_one_line(models, tmp_path, capsys):
    cases = [
        (["--model", str(models["base"])], "is not a fine-tuned segmentation or regression model"),
        (["--model", str(models["regression"]), "--probabilities", str(tmp_path / "p.tif")], "for segmentation"),
        (["--model", str(models["segmentation"]), "--input", "S2L2A=missing.tif"], "does not exist"),
    ]
    for arguments, message in cases:
        code = main(["predict", *arguments, *inputs_of(), "--output", str(tmp_path / "out.tif"), *FAST])
        error = capsys.readouterr().err.strip()
        assert code == 2 and message in error and len(error.splitlines()) == 1, error


def test_predict_outputs_are_whole_and_never_overwritten_unasked(models, tmp_path, capsys):
    out, probabilities = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    argv = ["predict", "--model", str(models["segmentation"]), *inputs_of(), "--output", str(out), *FAST]
    probabilities.write_text("keep")
    assert main([*argv, "--probabilities", str(probabilities)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert probabilities.read_text() == "keep" and not out.exists() and not out.with_suffix(".png").exists()
    out.with_suffix(".png").write_text("keep")  # the quick-look is checked too, and nothing is half-written
    assert main(argv) == 2
    assert "classes.png exists" in capsys.readouterr().err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.png", "probabilities.tif"]  # no leftovers
    assert main([*argv, "--probabilities", str(probabilities), "--overwrite"]) == 0
    with rasterio.open(probabilities) as dst:
        assert dst.count == 4
    assert Image.open(out.with_suffix(".png")).size == (224, 224)
