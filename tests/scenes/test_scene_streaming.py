"""The streaming scene engine: results equal the in-memory path, rows stream, nodata tiles are skipped, wide scenes
go in vertical stripes (bit-identical to whole rows), outputs are atomic COGs, inputs may be striped GeoTIFFs or VRT
mosaics, and the engine runs without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TINY, sample_tile
from rasterio.transform import from_origin

from terramind import TerraMindConfig, TerraMindImageProcessor, TerraMindModel, read_sample
from terramind.modeling_terramind_tasks import TerraMindForPixelRegression, TerraMindForSemanticSegmentation
from terramind.scenes.discovery import Scene
from terramind.scenes.embedding import GeoParquetSink, GeoTiffSink, embed_scenes
from terramind.scenes.engine import ArrayOutput, SceneSource, TileGrid, run_scene
from terramind.scenes.prediction import predict_to_files
from terramind.scenes.steps import ProcessorPrepare, logits_step
from terramind.scenes.tiled import predict_tiled

ROOT = Path(__file__).resolve().parents[2]
PATHS = {"S2L2A": sample_tile("S2L2A"), "S1RTC": sample_tile("S1RTC")}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmentation():
    torch.manual_seed(0)
    return TerraMindForSemanticSegmentation(TerraMindConfig(**TINY, num_labels=4, decoder_hidden_size=16)).eval()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    return TerraMindModel(TerraMindConfig(**TINY)).eval()


def in_memory_logits(model, paths=PATHS, tile_size=64, overlap=32, batch_size=5) -> np.ndarray:
    """The pre-streaming path: the whole scene read and processed at once, then `predict_tiled`."""
    sample = read_sample(paths)
    batch = TerraMindImageProcessor()(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)
    return predict_tiled(model, dict(batch), tile_size=tile_size, overlap=overlap, batch_size=batch_size)[0].numpy()


def write_scene(folder: Path, side: int, nodata_columns: int = 0, tiled: bool = True) -> dict[str, str]:
    """S2L2A + S1RTC copies of the sample tile's values, tiled to `side`, with the first `nodata_columns` nodata."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = read_sample(PATHS)
    out = {}
    for name, array in sample.images.items():
        reps = -(-side // array.shape[-1])
        values = np.tile(array, (1, reps, reps))[:, :side, :side].copy()
        nodata = 0 if name == "S2L2A" else np.nan
        values[:, :, :nodata_columns] = nodata
        profile = dict(driver="GTiff", height=side, width=side, count=values.shape[0], dtype=values.dtype.name,
                       crs="EPSG:32632", transform=from_origin(600000, 5000000, 10, 10), nodata=nodata)  # fmt: skip
        if tiled:
            profile.update(tiled=True, blockxsize=128, blockysize=128, compress="deflate")
        out[name] = str(folder / f"{name}.tif")
        with rasterio.open(out[name], "w", **profile) as dst:
            dst.write(values)
            for index, band in enumerate(TerraMindImageProcessor().output_bands(name), start=1):
                dst.set_band_description(index, band)
    return out


def test_prediction_streams_to_files_equal_to_the_in_memory_path(segmentation, tmp_path):
    out, probabilities = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    run = predict_to_files(segmentation, PATHS, out, probabilities, tile_size=64, overlap=32, batch_size=5,
                           progress=False)  # fmt: skip
    logits = in_memory_logits(segmentation)
    assert (run.tiles, run.computed, run.skipped) == (36, 36, 0)
    with rasterio.open(out) as dst, rasterio.open(PATHS["S2L2A"]) as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.nodata == 255
        assert np.array_equal(dst.read(1), logits.argmax(0))  # bit-identical logits give identical classes
    with rasterio.open(probabilities) as dst:
        expected = torch.from_numpy(logits).softmax(0).numpy()
        np.testing.assert_allclose(dst.read(), expected, rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.png", "classes.tif", "probabilities.tif"]


def test_engine_logits_are_bit_identical_and_regression_too(tmp_path):
    torch.manual_seed(2)
    model = TerraMindForPixelRegression(TerraMindConfig(**TINY, decode_head="fcn", decoder_hidden_size=16)).eval()
    output = ArrayOutput()
    run = predict_to_files(model, PATHS, None, tile_size=64, overlap=16, batch_size=3, progress=False, writer=output)
    values, nodata = output.result()
    assert run.computed == len(TileGrid.plan(224, 224, 64, 16, 16)) and not nodata.any()
    assert np.array_equal(values[""], in_memory_logits(model, tile_size=64, overlap=16, batch_size=3))


def test_embeddings_stream_equal_to_tiles_of_the_whole_scene(encoder, tmp_path):
    sample = read_sample(PATHS)
    processor = TerraMindImageProcessor(do_pad=True, size_divisor=16)
    batch = processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)
    expected = np.zeros((32, 14, 14), dtype=np.float32)
    grid = TileGrid.plan(224, 224, 96, 0, 16, shrink=True)
    with torch.no_grad():
        for top, left in grid.tiles:
            tiles = {name: value[..., top : top + 96, left : left + 96] for name, value in batch.items()}
            tokens = encoder(**tiles).last_hidden_state[0].reshape(6, 6, -1).permute(2, 0, 1).numpy()
            expected[:, top // 16 : top // 16 + 6, left // 16 : left // 16 + 6] = tokens
    (tmp_path / "folder").mkdir()
    runs = list(embed_scenes(encoder, [Scene("a", PATHS)], GeoTiffSink(tmp_path / "folder", folder=True),
                             tile_size=96, batch_size=4, progress=False))  # fmt: skip
    assert runs[0][1][0][1] == [tmp_path / "folder" / "a.tif"]
    with rasterio.open(tmp_path / "folder" / "a.tif") as dst:
        assert dst.transform.a == 160 and dst.count == 32
        np.testing.assert_allclose(dst.read(), expected, rtol=0, atol=1e-6)


def test_nodata_tiles_are_skipped_counted_and_written_as_nodata(segmentation, encoder, tmp_path):
    paths = write_scene(tmp_path / "scene", 256, nodata_columns=140)
    out = tmp_path / "classes.tif"
    run = predict_to_files(segmentation, paths, out, tile_size=64, overlap=0, batch_size=4, progress=False)
    assert (run.tiles, run.skipped, run.computed) == (16, 8, 8)  # columns 0-127 have no data
    with rasterio.open(out) as dst:
        classes = dst.read(1)
    assert (classes[:, :140] == 255).all() and (classes[:, 140:] < 4).all()
    sink = GeoParquetSink(tmp_path / "rows", "tiny")
    (tmp_path / "rows").mkdir()
    (run, committed), = embed_scenes(encoder, [Scene("s", paths)], sink, tile_size=64, batch_size=4, progress=False)
    sink.close()
    from terramind.scenes.geoparquet import read_rows

    rows = read_rows(tmp_path / "rows")
    embeddings = np.array(rows["embedding"].to_pylist())
    assert run.skipped == 8 and rows.num_rows == 16  # skipped tiles still have their (NaN) row
    assert np.isnan(embeddings[np.array(rows["col"].to_pylist()) < 128]).all()
    assert np.isfinite(embeddings[np.array(rows["col"].to_pylist()) >= 128]).all()


class Recorder(ArrayOutput):
    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def write_rows(self, top, values, nodata):
        self.calls.append(("rows", top, nodata.shape[0]))
        super().write_rows(top, values, nodata)


def test_rows_are_written_while_the_scene_is_still_running(tmp_path):
    """Memory does not hold the scene: each finished row of tiles goes out before the next ones are computed,
    and the blending band is one tile high."""
    paths = write_scene(tmp_path / "scene", 320)
    calls: list = []

    def step(batch):
        calls.append(("step", len(next(iter(batch.values())))))
        return np.ones((len(batch["S2L2A"]), 2, 64, 64), dtype=np.float32)

    with SceneSource(paths) as source:
        prepare = ProcessorPrepare(TerraMindImageProcessor(), source.band_names, source.nodata)
        output = Recorder(calls)
        run_scene(source, prepare, step, output, tile_size=64, overlap=32, batch_size=3, progress=False)
    rows = [call for call in calls if call[0] == "rows"]
    assert rows[0][1] == 0 and calls.index(rows[0]) < len(calls) - 3  # the first rows left early
    assert sum(call[2] for call in rows) == 320 and max(call[2] for call in rows) <= 64
    values, _ = output.result()
    np.testing.assert_allclose(values[""], 1.0, rtol=1e-6)  # blending windows sum to what they weigh


def test_striped_geotiffs_and_vrt_mosaics_give_the_same_result(segmentation, tmp_path):
    tiled = write_scene(tmp_path / "tiled", 192)
    striped = write_scene(tmp_path / "striped", 192, tiled=False)
    mosaics = {}
    for name, path in striped.items():  # a VRT over two halves of the scene: one scene
        with rasterio.open(path) as src:
            halves = []
            for index, window in enumerate([((0, 96), (0, 192)), ((96, 192), (0, 192))]):
                half = tmp_path / f"{name}-{index}.tif"
                profile = dict(src.profile, height=96, transform=src.window_transform(window))
                with rasterio.open(half, "w", **profile) as dst:
                    dst.write(src.read(window=window))
                    dst.descriptions = src.descriptions
                halves.append(half)
            mosaics[name] = str(tmp_path / f"{name}.vrt")
            Path(mosaics[name]).write_text(_vrt(src, halves))
    results = []
    for paths in (tiled, striped, mosaics):
        output = ArrayOutput()
        predict_to_files(segmentation, paths, None, tile_size=64, overlap=32, batch_size=4, progress=False,
                         writer=output)  # fmt: skip
        results.append(output.result()[0][""])
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def _vrt(src, halves: list[Path]) -> str:
    """A VRT of two vertically stacked halves (GDAL's XML, as gdalbuildvrt writes it)."""
    transform = ", ".join(str(v) for v in src.transform.to_gdal())
    bands = []
    for band in range(1, src.count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT='0'>{half}</SourceFilename><SourceBand>{band}</SourceBand>"
            f"<SrcRect xOff='0' yOff='0' xSize='{src.width}' ySize='96'/>"
            f"<DstRect xOff='0' yOff='{96 * index}' xSize='{src.width}' ySize='96'/></SimpleSource>"
            for index, half in enumerate(halves)
        )
        nodata = "nan" if src.nodata is not None and np.isnan(src.nodata) else src.nodata
        bands.append(f"<VRTRasterBand dataType='{'Int16' if src.dtypes[0] == 'int16' else 'Float32'}' band='{band}'>"
                     f"<NoDataValue>{nodata}</NoDataValue><Description>{src.descriptions[band - 1]}</Description>"
                     f"{sources}</VRTRasterBand>")  # fmt: skip
    return (f"<VRTDataset rasterXSize='{src.width}' rasterYSize='{src.height}'><SRS>{src.crs.to_wkt()}</SRS>"
            f"<GeoTransform>{transform}</GeoTransform>{''.join(bands)}</VRTDataset>")  # fmt: skip


def test_modalities_on_other_grids_are_an_error(tmp_path):
    paths = write_scene(tmp_path / "a", 128)
    other = write_scene(tmp_path / "b", 160)
    with pytest.raises(ValueError, match="Raster sizes differ.*one grid"):
        SceneSource({"S2L2A": paths["S2L2A"], "S1RTC": other["S1RTC"]})


def test_a_failing_run_leaves_nothing_on_disk(segmentation, tmp_path):
    paths = write_scene(tmp_path / "scene", 192)
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return logits_step(segmentation)(batch)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="out of memory"):
        from terramind.scenes.engine import run_scene as engine_run
        from terramind.scenes.prediction import PredictionWriter

        with SceneSource(paths) as source, PredictionWriter(out / "c.tif", source.profile, "segmentation",
                                                            ["a", "b", "c", "d"]) as writer:  # fmt: skip
            prepare = ProcessorPrepare(TerraMindImageProcessor(), source.band_names, source.nodata)
            engine_run(source, prepare, failing, writer, tile_size=64, overlap=0, batch_size=2, progress=False)
    assert list(out.iterdir()) == []


def test_large_outputs_are_cloud_optimized(segmentation, tmp_path):
    paths = write_scene(tmp_path / "scene", 600)
    out = tmp_path / "classes.tif"
    predict_to_files(segmentation, paths, out, tile_size=224, overlap=64, batch_size=8, progress=False)
    with rasterio.open(out) as dst:
        assert dst.profile["tiled"] and dst.profile["compress"] == "deflate" and dst.overviews(1) == [2, 4]
        assert dst.block_shapes[0] == (256, 256)
    with open(out, "rb") as raw:  # COG layout: the overviews' IFDs come before the image data
        head = raw.read(4096)
    assert b"LAYOUT=IFDS_BEFORE_DATA" in head


def test_the_engine_runs_with_torch_absent(tmp_path):
    """An onnxruntime step plugs in with torch blocked: the engine's import and loop are numpy and rasterio."""
    paths = write_scene(tmp_path / "scene", 160)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch fails
        import numpy as np
        from terramind.scenes.engine import ArrayOutput, SceneSource, run_scene

        def prepare(raw, height, width):
            out = {{k: np.zeros((v.shape[0], height, width), np.float32) for k, v in raw.items()}}
            for k, v in raw.items():
                out[k][:, : v.shape[1], : v.shape[2]] = v
            nodata = np.ones((height, width), bool)
            nodata[: v.shape[1], : v.shape[2]] = False
            return out, nodata

        output = ArrayOutput()
        with SceneSource({paths!r}) as source:
            run = run_scene(source, prepare, lambda b: b["S2L2A"][:, :1], output, tile_size=64, overlap=32,
                            progress=True)
        values, nodata = output.result()
        assert values[""].shape == (1, 160, 160) and "torch" not in [m for m in sys.modules if sys.modules[m]]
        print("ok", run.tiles)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "16"]


def test_predict_tiled_takes_scene_files_and_open_datasets(segmentation, tmp_path):
    with rasterio.open(PATHS["S1RTC"]) as s1:
        run = predict_tiled(segmentation, {"S2L2A": PATHS["S2L2A"], "S1RTC": s1}, tile_size=64, overlap=32,
                                         batch_size=5, output=tmp_path / "c.tif")  # fmt: skip
    assert run.outputs == [tmp_path / "c.tif", tmp_path / "c.png"] and run.computed == 36
    with rasterio.open(tmp_path / "c.tif") as dst:
        assert np.array_equal(dst.read(1), in_memory_logits(segmentation).argmax(0))
    with pytest.raises(ValueError, match="output="):
        predict_tiled(segmentation, PATHS)


# ----------------------------------------------------------------------------- stripes
class RowsOnly:
    """An output that takes whole rows only: the engine does not stripe it."""

    def __init__(self) -> None:
        self.array = ArrayOutput()

    def write_rows(self, top, values, nodata) -> None:
        self.array.write_rows(top, values, nodata)

    def result(self):
        return self.array.result()


class CountingBlocks(ArrayOutput):
    def __init__(self) -> None:
        super().__init__()
        self.lefts: set[int] = set()

    def write_block(self, top, left, values, nodata) -> None:
        self.lefts.add(left)
        super().write_block(top, left, values, nodata)


@pytest.mark.parametrize(("width", "tile", "overlap", "stripe_width"),
                         [(1000, 64, 32, 256), (1000, 64, 0, 200), (2048, 224, 64, 448), (10980, 224, 64, 2048),
                          (700, 64, 48, 128), (300, 64, 32, 4096)])  # fmt: skip
def test_stripes_own_every_column_once_from_their_own_tiles(width, tile, overlap, stripe_width):
    grid = TileGrid.plan(64, width, tile, overlap, 16)
    stripes = grid.stripes(stripe_width)
    assert stripes[0].start == 0 and stripes[-1].stop == grid.padded_width
    assert all(a.stop == b.start for a, b in zip(stripes, stripes[1:], strict=False))  # a partition of the columns
    assert sorted({left for stripe in stripes for left in stripe.lefts}) == list(grid.lefts)
    for stripe in stripes:
        assert stripe.start < stripe.stop
        covering = {left for left in grid.lefts if left < stripe.stop and left + tile > stripe.start}
        assert covering <= set(stripe.lefts)  # every tile over an owned pixel runs in this stripe
        if len(stripes) > 1:
            assert stripe.lefts[-1] + tile - stripe.lefts[0] <= max(stripe_width, 2 * tile)
    if grid.padded_width <= stripe_width:
        assert len(stripes) == 1 and stripes[0].lefts == grid.lefts


@pytest.fixture(scope="module")
def segmentation3():
    torch.manual_seed(3)
    return TerraMindForSemanticSegmentation(TerraMindConfig(**TINY, num_labels=3, decoder_hidden_size=16)).eval()


@pytest.mark.parametrize("nodata_columns", [0, 150])
def test_striped_prediction_is_bit_identical_to_whole_rows(segmentation3, tmp_path, nodata_columns):
    paths = write_scene(tmp_path / "scene", 352, nodata_columns=nodata_columns)
    options = dict(tile_size=64, overlap=32, batch_size=5, progress=False, stripe_width=128)
    whole, striped = RowsOnly(), CountingBlocks()
    run_whole = predict_to_files(segmentation3, paths, None, writer=whole, **options)
    run_striped = predict_to_files(segmentation3, paths, None, writer=striped, **options)
    (expected, expected_nodata), (values, nodata) = whole.result(), striped.result()
    assert len(striped.lefts) == len(TileGrid.plan(352, 352, 64, 32, 16).stripes(128)) > 2
    assert run_striped.tiles > run_whole.tiles == len(TileGrid.plan(352, 352, 64, 32, 16))  # borders run twice
    assert values[""].shape == (3, 352, 352) and np.array_equal(nodata, expected_nodata)
    # every pixel blends the same tiles in the same order; only the batches differ (kernels may round differently)
    np.testing.assert_allclose(values[""], expected[""], rtol=0, atol=1e-6)
    assert nodata[:, :nodata_columns].all() and not nodata[:, nodata_columns:].any()


def test_striped_geotiff_equals_the_unstriped_one(segmentation3, tmp_path: Path):
    paths = write_scene(tmp_path / "scene", 300, nodata_columns=40)
    for name, stripe_width in (("whole.tif", None), ("striped.tif", 128)):
        predict_to_files(segmentation3, paths, tmp_path / name, tmp_path / f"p-{name}", tile_size=64, overlap=32,
                         batch_size=4, progress=False, stripe_width=stripe_width)  # fmt: skip
    for a, b in (("whole.tif", "striped.tif"), ("p-whole.tif", "p-striped.tif")):
        with rasterio.open(tmp_path / a) as whole, rasterio.open(tmp_path / b) as striped:
            assert {**whole.profile, "nodata": str(whole.nodata)} == {**striped.profile, "nodata": str(striped.nodata)}
            expected, values = whole.read(), striped.read()
        if a == "whole.tif":  # classes: equal but for near-ties that batch rounding may flip
            assert (expected == 255).sum() == (values == 255).sum() == 40 * 300 and (expected == values).mean() > 0.999
        else:
            np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6)


def test_too_narrow_stripes_are_refused(segmentation3, tmp_path):
    paths = write_scene(tmp_path / "scene", 128)
    with pytest.raises(ValueError, match="stripe_width must be at least two tiles"):
        predict_to_files(segmentation3, paths, None, writer=ArrayOutput(), tile_size=64, stripe_width=100,
                         progress=False)  # fmt: skip


def test_striped_embeddings_equal_whole_rows_and_parquet_keeps_rows(encoder, tmp_path):
    paths = write_scene(tmp_path / "scene", 352, nodata_columns=100)
    grids = []
    for name, stripe_width in (("whole.tif", None), ("striped.tif", 128)):
        (run, _), = embed_scenes(encoder, [Scene("s", paths)], GeoTiffSink(tmp_path / name), tile_size=64,
                                 batch_size=4, progress=False, stripe_width=stripe_width)  # fmt: skip
        with rasterio.open(tmp_path / name) as dst:
            grids.append((run, dst.read()))
    (whole_run, whole), (striped_run, striped) = grids
    assert whole.shape == striped.shape == (32, 22, 22) and striped_run.tiles == whole_run.tiles == 36  # no overlap
    assert np.isnan(striped[:, :, :6]).all() and np.isfinite(striped[:, :, 7:]).all()
    np.testing.assert_allclose(striped, whole, rtol=0, atol=1e-6)
