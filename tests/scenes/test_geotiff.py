"""GeoTIFF helpers: reading the TerraMesh sample tiles, co-registration checks, and writing outputs back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine

from terramind.image_processing_terramind import TerraMindImageProcessor
from terramind.modalities import MODALITIES
from terramind.scenes.geotiff import GeoTiff, read_geotiff, read_sample, write_geotiff

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "terramesh"
TILE = "282D_485L_3_3.tif"
FOLDERS = ("S2L1C", "S2L2A", "S2RGB", "S1RTC", "DEM", "LULC", "NDVI")
CANONICAL = {"S2RGB": "RGB"}


def tile(folder: str) -> Path:
    return SAMPLES / folder / TILE


def write(path: Path, array: np.ndarray, crs: str = "EPSG:32722", nodata=None, descriptions=None, **profile):
    """A small GeoTIFF written with plain rasterio, for the error cases."""
    count, height, width = array.shape
    transform = profile.pop("transform", Affine(10, 0, 790236.04, 0, -10, 7198039.25))
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count, dtype=array.dtype.name,
                       crs=crs, transform=transform, nodata=nodata) as dst:  # fmt: skip
        dst.write(array)
        for index, description in enumerate(descriptions or (), start=1):
            dst.set_band_description(index, description)
    return path


@pytest.fixture(scope="module")
def sample():
    return read_sample({folder: tile(folder) for folder in FOLDERS})


def test_sample_files_are_in_the_project():
    for folder in FOLDERS:
        assert tile(folder).is_file(), tile(folder)
    assert "Apache-2.0" in (SAMPLES / "README.md").read_text()


@pytest.mark.parametrize(
    "folder, count, dtype",
    [("S2L1C", 13, "int16"), ("S2L2A", 12, "int16"), ("S2RGB", 3, "uint8"), ("S1RTC", 2, "float64"),
     ("DEM", 1, "int16"), ("LULC", 1, "uint8"), ("NDVI", 1, "float64")],
)  # fmt: skip
def test_read_geotiff_sample_tiles(folder, count, dtype):
    raster = read_geotiff(tile(folder))
    assert isinstance(raster, GeoTiff)
    assert raster.array.shape == (count, 224, 224) and raster.array.dtype == dtype
    assert raster.band_names is None  # the tiles carry no band names (only rioxarray's repeated "bands")
    assert raster.profile["crs"] == CRS.from_epsg(32722) and raster.profile["nodata"] is None


def test_read_sample_keeps_georeference(sample):
    assert list(sample.images) == [CANONICAL.get(folder, folder) for folder in FOLDERS]
    assert sample.profile["transform"].almost_equals(read_geotiff(tile("DEM")).profile["transform"])
    assert all(value is None for value in sample.nodata.values())


def test_band_selection_by_description(tmp_path):
    l1c = read_geotiff(tile("S2L1C")).array
    order = [12, 3, 0, 7, 1, 10, 5, 2, 8, 11, 4, 6, 9]
    ids = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    path = write(tmp_path / "shuffled.tif", l1c[order], descriptions=[ids[i] for i in order])
    raster = read_geotiff(path)
    assert raster.band_names == tuple(ids[i] for i in order)
    picked = read_geotiff(path, bands=["RED", "b3", "B02"])  # names, S2 ids and case are all accepted
    np.testing.assert_array_equal(picked.array, l1c[[3, 2, 1]])
    assert picked.band_names == ("B04", "B03", "B02")
    np.testing.assert_array_equal(read_geotiff(path, bands=[1]).array, l1c[[12]])

    processor = TerraMindImageProcessor()
    from_file = processor({"S2L2A": raster.array}, band_names=raster.band_names)["S2L2A"]
    direct = processor({"S2L2A": l1c}, band_names=MODALITIES["S2L1C"].bands)["S2L2A"]
    torch.testing.assert_close(from_file, direct, rtol=0, atol=0)


@pytest.mark.parametrize("folder, dtype", [("S2L2A", "int16"), ("S2RGB", "uint8"), ("S1RTC", "float32"),
                                           ("DEM", "int16"), ("LULC", "uint8"), ("NDVI", "float32")])  # fmt: skip
def test_read_process_post_process_write_round_trip(tmp_path, sample, folder, dtype):
    modality = CANONICAL.get(folder, folder)
    processor = TerraMindImageProcessor()
    batch = processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata)
    restored = processor.post_process_generation(batch)[modality]
    bands = processor.output_bands(modality)
    path = write_geotiff(tmp_path / f"{folder}.tif", restored, sample, dtype=dtype, band_names=bands)

    written, original = read_geotiff(path), read_geotiff(tile(folder))
    assert written.array.dtype == dtype and written.band_names == bands
    assert written.profile["crs"] == original.profile["crs"]
    assert written.profile["transform"].almost_equals(original.profile["transform"])  # tiles differ by ~1e-9 m
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(written.array, original.array, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(written.array, original.array)


def test_write_embeddings_scales_transform(tmp_path, sample):
    embeddings = torch.randn(1, 196, 8)  # per-patch tokens of a 224x224 tile: 14x14 patches of 16 pixels
    grid = embeddings[0].T.reshape(8, 14, 14)
    written = read_geotiff(write_geotiff(tmp_path / "embeddings.tif", grid, sample.profile))
    assert written.array.shape == (8, 14, 14) and written.array.dtype == np.float32
    reference = sample.profile["transform"]
    assert written.profile["transform"].a == 16 * reference.a and written.profile["transform"].e == 16 * reference.e
    assert (written.profile["transform"].c, written.profile["transform"].f) == (reference.c, reference.f)
    np.testing.assert_array_equal(written.array, grid.numpy())


def test_write_segmentation_map_with_nodata(tmp_path, sample):
    classes = torch.randint(0, 10, (224, 224))
    written = read_geotiff(write_geotiff(tmp_path / "seg.tif", classes, sample, dtype="uint8"))
    assert written.array.shape == (1, 224, 224) and written.array.dtype == np.uint8
    np.testing.assert_array_equal(written.array[0], classes.numpy())

    values = np.array([[[1.4, np.nan], [300.0, -5.0]]])
    written = read_geotiff(write_geotiff(tmp_path / "nan.tif", values, sample, dtype="uint8", nodata=255))
    np.testing.assert_array_equal(written.array, [[[1, 255], [254, 0]]])  # rounded, NaN -> nodata, clipped below it
    assert written.profile["nodata"] == 255


# --- errors


def test_mismatched_raster_sizes(tmp_path):
    small = write(tmp_path / "small.tif", np.ones((2, 100, 100), np.float32))
    with pytest.raises(ValueError, match=r"Raster sizes differ: 224x224 vs 100x100.*small\.tif"):
        read_sample({"S2L2A": tile("S2L2A"), "S1RTC": small})


def test_mismatched_crs(tmp_path):
    other = write(tmp_path / "wgs84.tif", np.ones((2, 224, 224), np.float32), crs="EPSG:4326")
    with pytest.raises(ValueError, match=r"CRSs differ: EPSG:32722 vs EPSG:4326.*wgs84\.tif"):
        read_sample({"S2L2A": tile("S2L2A"), "S1RTC": other})


def test_mismatched_transform(tmp_path):
    shifted = write(tmp_path / "shifted.tif", np.ones((1, 224, 224), np.int16),
                    transform=Affine(10, 0, 790246.04, 0, -10, 7198039.25))  # fmt: skip
    with pytest.raises(ValueError, match="Geotransforms differ"):
        read_sample({"S2L2A": tile("S2L2A"), "DEM": shifted})


def test_unsupported_dtype(tmp_path):
    path = write(tmp_path / "complex.tif", np.ones((1, 16, 16), np.complex64))
    with pytest.raises(ValueError, match=r"complex\.tif: unsupported data type \['complex64'\]"):
        read_geotiff(path)


def test_missing_band(tmp_path):
    path = write(tmp_path / "rgb.tif", np.ones((3, 16, 16), np.int16), descriptions=["B04", "B03", "B02"])
    with pytest.raises(ValueError, match=r"Band 'B08' is not in .*rgb\.tif"):
        read_geotiff(path, bands=["B04", "B08"])
    with pytest.raises(ValueError, match="no band descriptions"):
        read_geotiff(tile("S2L2A"), bands=["BLUE"])
    with pytest.raises(ValueError, match="out of range"):
        read_geotiff(path, bands=[4])


def test_all_nodata_tile(tmp_path):
    path = write(tmp_path / "empty.tif", np.zeros((2, 16, 16), np.int16), nodata=0)
    with pytest.raises(ValueError, match=r"empty\.tif: every pixel is nodata"):
        read_sample({"S1RTC": path})
    nan_path = write(tmp_path / "nan.tif", np.full((1, 16, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"nan\.tif: every pixel is nodata"):
        read_geotiff(nan_path)


def test_unknown_modality_and_bad_writes(tmp_path, sample):
    with pytest.raises(ValueError, match="Unknown modality"):
        read_sample({"hyperspectral": tile("S2L2A")})
    with pytest.raises(ValueError, match="one sample per file"):
        write_geotiff(tmp_path / "batch.tif", np.zeros((2, 1, 14, 14)), sample)
    with pytest.raises(ValueError, match="give `nodata=`"):
        write_geotiff(tmp_path / "nan.tif", np.full((1, 4, 4), np.nan), sample, dtype="int16")
    with pytest.raises(ValueError, match="2 band names for 1 bands"):
        write_geotiff(tmp_path / "names.tif", np.zeros((1, 4, 4)), sample, band_names=["A", "B"])
