"""Fine-tuning datasets from GeoTIFF folders: layout, checks before training, the sample transform, time series,
TerraTorch's layout, collation; and the names `terramind.training.data_terramind` keeps exporting."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import tiny_config as base_config

from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.training.data_collator import TerraMindDataCollator
from terramind.training.data_terramind import build_dataset

TILES = Path(__file__).resolve().parents[2] / "samples" / "terramesh"  # 3 tiles with S2L2A, S1RTC and LULC (0-9)
HEAD = dict(decoder_hidden_size=32)
# What `terramind.data_terramind` and `terramind.training.data_terramind` exported before the split, in their homes.
EXPORTED = {
    "scenes.discovery": ["index_folder"],
    "training.layout": ["MAX_LISTED", "find_layout", "read_split"],
    "training.checks": ["RasterFacts", "check_label_values", "check_modalities", "raster_facts"],
    "training.transforms": ["TerraMindSampleTransform", "read_series_sample"],
    "training.data_collator": ["TerraMindDataCollator"],
    "training.metrics": ["TASKS", "build_compute_metrics", "classification_metrics", "confusion_matrix",
                         "preprocess_logits_for_metrics", "regression_metrics", "segmentation_metrics"],
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def tiny_config(**kwargs):
    return base_config(**{"modalities": ["S2L2A", "S1RTC"], "num_labels": 10, **kwargs})


@pytest.mark.parametrize("path", ["terramind.data_terramind", "terramind.training.data_terramind"])
def test_old_import_path_exports_the_moved_names(path):
    """`from terramind.data_terramind import build_dataset, TerraMindDataCollator, ...` (earlier READMEs) still works,
    and gives the objects of the modules they moved to."""
    module = importlib.import_module(path)
    for home, names in EXPORTED.items():
        moved = importlib.import_module(f"terramind.{home}")
        for name in names:
            assert getattr(module, name) is getattr(moved, name), (home, name)
    assert set(module.__all__) == {name for names in EXPORTED.values() for name in names} | {"build_dataset"}


# ----------------------------------------------------------------------------- data
def test_dataset_reads_tiles_lazily_and_collates():
    dataset = build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", config=tiny_config())
    assert dataset.column_names == ["sample_id", "pixel_values", "labels"]
    assert dataset.with_format(None)["sample_id"] == ["282D_485L_3_3", "433D_629L_3_1", "637U_59R_1_3"]
    sample = dataset[0]
    assert set(sample) == {"S2L2A", "S1RTC", "labels", "sample_id"} and sample["sample_id"] == "282D_485L_3_3"
    assert sample["S2L2A"].shape == (12, 224, 224) and sample["S1RTC"].shape == (2, 224, 224)
    assert sample["labels"].dtype == torch.int64 and set(sample["labels"].unique().tolist()) == {1, 2, 6, 9}
    assert abs(sample["S2L2A"].mean().item()) < 2  # standardized with the v1 statistics
    batch = TerraMindDataCollator()([dataset[i] for i in range(3)])
    assert set(batch) == {"S2L2A", "S1RTC", "labels"}
    assert batch["S2L2A"].shape == (3, 12, 224, 224) and batch["labels"].shape == (3, 224, 224)


def test_dataset_split_crop_flip_and_label_map(tmp_path):
    split = tmp_path / "train.txt"
    split.write_text("433D_629L_3_1\n637U_59R_1_3.tif\n")
    dataset = build_dataset(TILES, {"S2L2A": "S2L2A", "S1RTC": TILES / "S1RTC"}, label_dir=TILES / "LULC",
                            split=split, num_labels=3, label_map={1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 9: 2},
                            crop_size=(64, 96), random_crop=True, random_flip=True)  # fmt: skip
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample["S2L2A"].shape == (12, 64, 96) and sample["labels"].shape == (64, 96)
    assert set(sample["labels"].unique().tolist()) <= {0, 1, 2}


def copy_tiles(target: Path, modalities=("S2L2A", "S1RTC", "LULC")) -> Path:
    for modality in modalities:
        shutil.copytree(TILES / modality, target / modality)
    return target


def write_label(path: Path, values: np.ndarray) -> None:
    with rasterio.open(TILES / "LULC" / "282D_485L_3_3.tif") as src:
        profile = dict(src.profile)
    profile.update(width=values.shape[-1], height=values.shape[-2], count=values.shape[0], dtype=values.dtype.name)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)


def test_dataset_errors_before_training(tmp_path):
    root = copy_tiles(tmp_path / "data")
    config = tiny_config()
    with pytest.raises(ValueError, match="model is configured for S2L2A, S1RTC"):
        build_dataset(TILES, ["S2L2A", "S1RTC", "DEM"], label_dir="LULC", config=config)
    with pytest.raises(ValueError, match=r"class ids \[6, 9\] outside 0..4"):
        build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", num_labels=5)
    (root / "S1RTC" / "433D_629L_3_1.tif").unlink()
    with pytest.raises(ValueError, match=r"S1RTC .* lacks 1 sample\(s\): \['433D_629L_3_1'\]"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "data2")
    write_label(root / "LULC" / "282D_485L_3_3.tif", np.ones((1, 112, 112), np.uint8))
    with pytest.raises(ValueError, match=r"LULC/282D_485L_3_3.tif is 112x112, /\S+/S2L2A/282D_485L_3_3.tif of the same "
                       "sample is 224x224"):  # fmt: skip
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    write_label(root / "LULC" / "282D_485L_3_3.tif", np.ones((2, 224, 224), np.uint8))
    with pytest.raises(ValueError, match="has 2 bands"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    with pytest.raises(ValueError, match="Split file"):
        build_dataset(TILES, ["S2L2A"], label_dir="LULC", num_labels=10, split=tmp_path / "none.txt")


def rewrite(path: Path, values=None, **changes) -> None:
    """Rewrite a GeoTIFF in place with other profile settings and/or band values (`values(data) -> data`)."""
    with rasterio.open(path) as src:
        data, profile = src.read(), dict(src.profile)
    if values is not None:
        data = values(data)
    profile.update(count=data.shape[0], **changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_every_sample_is_checked_before_training(tmp_path):
    """A bad file in the last sample fails in build_dataset, naming its full path, not in the middle of training."""
    config = tiny_config()
    last = "637U_59R_1_3.tif"  # the last of the three samples
    root = copy_tiles(tmp_path / "truncated")
    data = (root / "S1RTC" / last).read_bytes()
    (root / "S1RTC" / last).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{root / 'S1RTC' / last}: .*(damaged or truncated|not a readable)"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "crs")
    rewrite(root / "S1RTC" / last, crs="EPSG:4326")
    with pytest.raises(ValueError, match=f"{root / 'S1RTC' / last} is in EPSG:4326, {root / 'S2L2A' / last} of the "
                       "same sample in"):  # fmt: skip
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "bands")
    rewrite(root / "S2L2A" / last, values=lambda data: data[:11])
    with pytest.raises(ValueError, match=f"{root / 'S2L2A' / last} has 11 bands, .*282D_485L_3_3.tif has 12"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "shifted")
    with rasterio.open(root / "S1RTC" / last) as src:
        shifted = src.transform @ rasterio.Affine.translation(3, 0)
    rewrite(root / "S1RTC" / last, transform=shifted)
    with pytest.raises(ValueError, match="different geotransforms"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)


# ----------------------------------------------------------------------------- time series and TerraTorch's layout
def write_like(path: Path, values: np.ndarray, like: Path) -> None:
    with rasterio.open(like) as src:
        profile = dict(src.profile, count=values.shape[0], dtype=values.dtype.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_dataset_reads_time_series_one_file_per_step_or_stacked_bands(tmp_path):
    ids = ["282D_485L_3_3", "433D_629L_3_1"]
    root = copy_tiles(tmp_path / "data", ("S1RTC", "LULC"))
    stacked = tmp_path / "stacked"
    for i, sample in enumerate(ids):
        first, second = TILES / "S2L2A" / f"{sample}.tif", TILES / "S2L2A" / f"{ids[1 - i]}.tif"
        write_like(root / "S2L2A" / f"{sample}_t0.tif", read(first), first)
        write_like(root / "S2L2A" / f"{sample}_t1.tif", read(second), first)
        both = np.stack([read(first), read(second)], axis=1).reshape(24, 224, 224)  # channel by channel
        write_like(stacked / "S2L2A" / f"{sample}.tif", both, first)
    shutil.copytree(root / "S1RTC", stacked / "S1RTC")
    shutil.copytree(root / "LULC", stacked / "LULC")
    config = tiny_config(temporal_merge="concat", num_timesteps=2, **HEAD)
    per_file = build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config, split=ids,
                             image_grep={"S2L2A": ["*_t0.tif", "*_t1.tif"], "S1RTC": "*.tif"})  # fmt: skip
    from_bands = build_dataset(stacked, ["S2L2A", "S1RTC"], label_dir="LULC", config=config, split=ids,
                               num_timesteps={"S2L2A": 2})  # fmt: skip
    single = build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", config=tiny_config(), split=ids)
    sample = per_file[0]
    assert sample["S2L2A"].shape == (12, 2, 224, 224) and sample["S1RTC"].shape == (2, 224, 224)
    torch.testing.assert_close(sample["S2L2A"][:, 0], single[0]["S2L2A"])
    torch.testing.assert_close(sample["S2L2A"][:, 1], single[1]["S2L2A"])
    torch.testing.assert_close(from_bands[0]["S2L2A"], sample["S2L2A"])
    batch = TerraMindDataCollator()([per_file[0], per_file[1]])
    model = TerraMindForSemanticSegmentation(config)
    output = model(**{k: v[..., :64, :64] for k, v in batch.items()})
    assert output.logits.shape == (2, 10, 64, 64) and torch.isfinite(output.loss)
    (root / "S2L2A" / f"{ids[1]}_t1.tif").unlink()
    with pytest.raises(ValueError, match=r"S2L2A \(.*time step 1\) lacks 1 sample"):
        build_dataset(root, ["S2L2A"], label_dir="LULC", num_labels=10, split=ids,
                      image_grep={"S2L2A": ["*_t0.tif", "*_t1.tif"]})  # fmt: skip


def test_dataset_reads_terratorch_one_folder_layout(tmp_path):
    """TerraTorch's GenericNonGeoSegmentationDataModule layout: `*_merged.tif` images and `*.mask.tif` labels in one
    folder, a split file of sample prefixes (or file names)."""
    folder = tmp_path / "burn_scars"
    folder.mkdir()
    for sample in ("282D_485L_3_3", "433D_629L_3_1", "637U_59R_1_3"):
        shutil.copy(TILES / "S2L2A" / f"{sample}.tif", folder / f"{sample}_merged.tif")
        shutil.copy(TILES / "LULC" / f"{sample}.tif", folder / f"{sample}.mask.tif")
    (folder / "train.txt").write_text("282D_485L_3_3\n637U_59R_1_3_merged.tif\n")
    dataset = build_dataset(folder, ["S2L2A"], image_grep="*_merged.tif", label_grep="*.mask.tif",
                            split=folder / "train.txt", num_labels=10)  # fmt: skip
    assert dataset.with_format(None)["sample_id"] == ["282D_485L_3_3", "637U_59R_1_3"]
    reference = build_dataset(TILES, ["S2L2A"], label_dir="LULC", num_labels=10, split=["637U_59R_1_3"])[0]
    torch.testing.assert_close(dataset[1]["S2L2A"], reference["S2L2A"])
    assert torch.equal(dataset[1]["labels"], reference["labels"])
    with pytest.raises(ValueError, match=r"both match .*give patterns that tell images and labels apart"):
        build_dataset(folder, ["S2L2A"], label_grep="*.mask.tif", num_labels=10)
