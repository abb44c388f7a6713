"""Generation through the streaming scene engine equals the in-memory tiled generation, seeded and sampled, and
wide scenes in stripes equal whole rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import mini_tokenizer
from rasterio.transform import from_origin

from terramind import TerraMindForGeneration, TerraMindImageProcessor
from terramind.scenes.generation import QUICKLOOK_MAX_SIDE, generate_scenes, read_decimated
from terramind.scenes.tiled import generate_tiled

pytestmark = pytest.mark.usefixtures("one_thread")


def write_s2(path: Path, height: int, width: int, nodata_rows: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.integers(500, 4000, (12, height, width)).astype(np.int16)
    values[:, :nodata_rows] = 0
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=12, dtype="int16", nodata=0,
                       crs="EPSG:32632", transform=from_origin(600000, 5000000, 10, 10)) as dst:  # fmt: skip
        dst.write(values)
        for index, band in enumerate(TerraMindImageProcessor().output_bands("S2L2A"), start=1):
            dst.set_band_description(index, band)
    return values


def test_streamed_generation_equals_in_memory_tiled_generation(converted, tmp_path):
    model = TerraMindForGeneration.from_pretrained(converted["tiny"]).eval()
    tokenizers = {"S1GRD": mini_tokenizer("S1GRD")}
    raw = write_s2(tmp_path / "s2.tif", 100, 130)
    options = dict(temperature=1.0, top_p=0.8, timesteps=2, tokenizers=tokenizers)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16)
    runs = list(generate_scenes(model, [{"S2L2A": str(tmp_path / "s2.tif")}], [tmp_path / "out"], ["S1GRD"],
                                processor, tile_size=64, overlap=16, batch_size=3,
                                generator=torch.Generator().manual_seed(7), progress=False, **options))  # fmt: skip
    assert runs[0].computed == runs[0].tiles == 6 and sorted(p.name for p in runs[0].outputs) == ["S1GRD.png",
                                                                                                 "S1GRD.tif"]  # fmt: skip
    inputs = processor({"S2L2A": raw}, band_names={"S2L2A": processor.output_bands("S2L2A")}, nodata_value=0)
    expected = generate_tiled(model, dict(inputs), output_modalities=["S1GRD"], tile_size=64, overlap=16,
                                    batch_size=3, generator=torch.Generator().manual_seed(7), **options)  # fmt: skip
    physical = processor.post_process_generation(expected)["S1GRD"][0, :, :100, :130].numpy()
    with rasterio.open(tmp_path / "out" / "S1GRD.tif") as dst:
        assert dst.shape == (100, 130) and dst.dtypes[0] == "float32"
        np.testing.assert_allclose(dst.read(), physical, rtol=0, atol=1e-5)


def test_generate_tiled_streams_scene_files_into_a_folder(converted, tmp_path):
    model = TerraMindForGeneration.from_pretrained(converted["tiny"]).eval()
    write_s2(tmp_path / "s2.tif", 80, 96, nodata_rows=64)  # the first row of 64-px tiles has no data
    run = generate_tiled(model, {"S2L2A": str(tmp_path / "s2.tif")}, output_modalities="S1GRD", tile_size=64,
                               overlap=0, output=tmp_path / "out", temperature=0.0, timesteps=2,
                               tokenizers={"S1GRD": mini_tokenizer("S1GRD")})  # fmt: skip
    assert (run.tiles, run.skipped) == (4, 2)
    with rasterio.open(tmp_path / "out" / "S1GRD.tif") as dst:
        values = dst.read()
    assert np.isnan(values[:, :64]).all() and np.isfinite(values[:, 64:]).all()
    with pytest.raises(ValueError, match="output="):
        generate_tiled(model, {"S2L2A": str(tmp_path / "s2.tif")}, output_modalities="S1GRD")


def test_wide_scenes_generate_in_stripes_equal_to_whole_rows(converted, tmp_path):
    model = TerraMindForGeneration.from_pretrained(converted["tiny"]).eval()
    write_s2(tmp_path / "s2.tif", 64, 288)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16)
    results = []
    for name, stripe_width in (("whole", None), ("striped", 128)):  # greedy, ViT decoder: deterministic per tile
        (run,) = generate_scenes(model, [{"S2L2A": str(tmp_path / "s2.tif")}], [tmp_path / name], ["LULC"], processor,
                                 tile_size=64, overlap=32, batch_size=4, progress=False, stripe_width=stripe_width,
                                 temperature=0.0, tokenizers={"LULC": mini_tokenizer("LULC")})  # fmt: skip
        with rasterio.open(tmp_path / name / "LULC.tif") as dst:
            results.append((run.tiles, dst.read(1)))
    (whole_tiles, whole), (striped_tiles, striped) = results
    assert striped_tiles > whole_tiles == 8 and whole.shape == striped.shape == (64, 288)
    assert (striped == whole).mean() > 0.999  # classes: equal but for near-ties that batch rounding may flip


def test_quicklooks_read_a_bounded_grid_whatever_the_scene(tmp_path):
    """The quick-look of a generated output reads every band, so its grid is capped: memory flat in scene size."""
    write_s2(tmp_path / "wide.tif", 40, 2600)
    values = read_decimated(tmp_path / "wide.tif")
    assert QUICKLOOK_MAX_SIDE == 1024 and values.shape == (12, 14, 867) and values.dtype == np.float32
    assert read_decimated(tmp_path / "wide.tif", max_side=4096).shape == (12, 40, 2600)


class RandomGenerator:
    """`generate` with the real outputs' shapes (12-band S2L2A, 10-class LULC logits) and no model time."""

    device = "cpu"

    def generate(self, tiles, output_modalities, generator=None, decode=True, **options):
        count, side = len(tiles["S2L2A"]), tiles["S2L2A"].shape[-1]
        return {"S2L2A": torch.randn(count, 12, side, side), "LULC": torch.randn(count, 10, side, side)}


def test_generation_memory_does_not_grow_with_the_scene(tmp_path, monkeypatch):
    """The arrays that stream (numpy's, as tracemalloc sees them) peak equally for a scene and one four times its
    area; whole rows instead of stripes peak with the width (so the measure sees the bands)."""
    import tracemalloc

    from terramind.scenes.generation import GeneratedFiles

    streaming_peaks: list[int] = []
    close = GeneratedFiles.close

    def close_and_record(self):  # the peak while the scene streams, before the quick-looks are drawn
        streaming_peaks.append(tracemalloc.get_traced_memory()[1])
        close(self)

    monkeypatch.setattr(GeneratedFiles, "close", close_and_record)
    peaks = {}
    for height, width, stripe_width in ((384, 768, 192), (768, 1536, 192), (384, 768, None), (768, 1536, None)):
        write_s2(tmp_path / f"s2-{width}.tif", height, width)
        tracemalloc.start()
        try:
            (run,) = generate_scenes(RandomGenerator(), [{"S2L2A": str(tmp_path / f"s2-{width}.tif")}],
                                     [tmp_path / f"out-{width}-{stripe_width}"], ["S2L2A", "LULC"],
                                     TerraMindImageProcessor(do_pad=True, size_divisor=16), tile_size=64, overlap=16,
                                     batch_size=4, progress=False, stripe_width=stripe_width)  # fmt: skip
        finally:
            tracemalloc.stop()
        peaks[width, stripe_width] = streaming_peaks[-1]
        with rasterio.open(tmp_path / f"out-{width}-{stripe_width}" / "S2L2A.tif") as dst:
            assert (dst.count, dst.height, dst.width) == (12, height, width) and run.computed == run.tiles
    assert peaks[1536, 192] <= 1.05 * peaks[768, 192]
    assert peaks[1536, None] > 1.5 * peaks[768, None] > 1.5 * peaks[768, 192]
