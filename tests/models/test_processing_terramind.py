"""TerraMindImageProcessor / TerraMindProcessor: band selection, standardization, nodata, geometry, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from terramind.image_processing_terramind import TerraMindImageProcessor, nodata_mask_key
from terramind.modalities import MODALITIES
from terramind.processing_terramind import TerraMindProcessor, register_processors
from terramind.scenes.geotiff import read_geotiff

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "terramesh"
TILE = "282D_485L_3_3.tif"
S2_IDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]  # S2L1C order


def sample(folder: str) -> np.ndarray:
    return read_geotiff(SAMPLES / folder / TILE).array


@pytest.fixture(scope="module")
def processor() -> TerraMindImageProcessor:
    return TerraMindImageProcessor()


# --- standardization against the original's table (literal values copied from terratorch's v1_pretraining_mean/std)


@pytest.mark.parametrize(
    "modality, band, mean, std",
    [("S2L2A", "BLUE", 1503.317, 2141.107), ("S1RTC", "VV", -10.93, 4.391), ("RGB", "RED", 87.271, 58.767),
     ("NDVI", "NDVI", 0.327, 0.322), ("DEM", "DEM", 670.665, 951.272)],
)  # fmt: skip
def test_standardization_reproduces_original_statistics(processor, modality, band, mean, std):
    bands = MODALITIES[modality].bands
    index = bands.index(band)
    values = np.linspace(-1.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    if modality == "RGB":
        values = (values + 1) * 100
    pixels = np.zeros((len(bands), 16, 16), dtype=np.float32)
    pixels[index] = values
    out = processor({modality: pixels})[modality][0, index].numpy()
    expected = (values - np.float32(mean)) / np.float32(std)  # the original: float32 (x - mean) / std
    np.testing.assert_array_equal(out, expected)
    assert processor.band_statistics(modality, [band]) == ([mean], [std])


def test_rgb_order_is_red_green_blue(processor):
    assert processor.output_bands("S2RGB") == ("RED", "GREEN", "BLUE")
    assert processor.band_statistics("RGB") == ([87.271, 80.931, 66.667], [58.767, 47.663, 42.631])


def test_real_tile_is_standardized(processor):
    raw = sample("S2L2A")
    out = processor({"S2L2A": raw})["S2L2A"][0]
    assert out.shape == (12, 224, 224) and out.dtype == torch.float32
    means, stds = out.mean(dim=(1, 2)), out.std(dim=(1, 2))
    assert (means.abs() < 2).all(), means  # raw digital numbers have means of ~600-1900
    assert ((stds > 0.1) & (stds < 3)).all(), stds


def test_all_seven_sample_modalities(processor):
    images = {folder: sample(folder) for folder in ("S2L1C", "S2L2A", "S2RGB", "S1RTC", "DEM", "LULC", "NDVI")}
    out = processor(images)
    assert set(out) == {"S2L1C", "S2L2A", "RGB", "S1RTC", "DEM", "LULC", "NDVI"}  # canonical names, no extras
    assert {key: tuple(value.shape[:2]) for key, value in out.items()} == {
        "S2L1C": (1, 13), "S2L2A": (1, 12), "RGB": (1, 3), "S1RTC": (1, 2), "DEM": (1, 1), "LULC": (1, 1),
        "NDVI": (1, 1),
    }  # fmt: skip
    assert out["LULC"].dtype == torch.int64
    np.testing.assert_array_equal(out["LULC"][0].numpy(), images["LULC"])  # class ids, not standardized


# --- band selection


def test_band_reordering_by_name_is_exact(processor):
    l1c = sample("S2L1C")  # 13 bands in the S2L1C order
    reference = processor({"S2L1C": l1c})["S2L1C"]
    permutation = np.random.default_rng(0).permutation(13)
    shuffled = processor({"S2L1C": l1c[permutation]}, band_names={"S2L1C": [S2_IDS[i] for i in permutation]})
    torch.testing.assert_close(shuffled["S2L1C"], reference, rtol=0, atol=0)


def test_select_bands_from_richer_input(processor):
    l1c = sample("S2L1C")
    extra = np.concatenate([l1c, np.full((1, 224, 224), 7, dtype=l1c.dtype)])
    names = [*MODALITIES["S2L1C"].bands, "SOMETHING_ELSE"]
    out = processor({"S2L2A": extra}, band_names=names)["S2L2A"][0]  # 14 channels -> the 12 S2L2A bands
    l2a_bands = MODALITIES["S2L2A"].bands
    picked = np.stack([l1c[names.index(band)] for band in l2a_bands]).astype(np.float32)
    mean, std = (np.array(v, dtype=np.float32)[:, None, None] for v in processor.band_statistics("S2L2A"))
    np.testing.assert_array_equal(out.numpy(), (picked - mean) / std)


def test_configured_band_subset():
    processor = TerraMindImageProcessor(bands={"s2l2a": ["B04", "B03", "B02"]})
    assert processor.output_bands("S2L2A") == ("RED", "GREEN", "BLUE")
    raw = sample("S2L2A")
    out = processor({"S2L2A": raw})["S2L2A"][0]  # unnamed 12-band input is in the pretrained order
    expected = (raw[[3, 2, 1]].astype(np.float32) - np.float32(1853.91)) / np.float32(2134.138)
    np.testing.assert_array_equal(out[0].numpy(), expected[0])


def test_user_statistics():
    processor = TerraMindImageProcessor(image_mean={"S1RTC": [1.0, 2.0]}, image_std={"S1RTC": [2.0, 4.0]})
    pixels = np.full((2, 16, 16), -10.0, dtype=np.float32)
    out = processor({"S1RTC": pixels})["S1RTC"][0]
    assert out[0].unique().tolist() == [-5.5] and out[1].unique().tolist() == [-3.0]


@pytest.mark.parametrize(
    "shape, kind", [((224, 224), "numpy"), ((1, 224, 224), "torch"), ((1, 1, 224, 224), "numpy"), (None, "list")]
)
def test_input_layouts(processor, shape, kind):
    dem = sample("DEM")
    reference = processor({"DEM": dem})["DEM"]
    value = [dem] if kind == "list" else dem.reshape(shape)
    value = torch.from_numpy(value) if kind == "torch" else value
    torch.testing.assert_close(processor({"DEM": value})["DEM"], reference, rtol=0, atol=0)


def test_batch_and_numpy_output(processor):
    s1 = np.stack([sample("S1RTC"), sample("S1RTC")])
    out = processor({"S1RTC": s1}, return_tensors="np")
    assert isinstance(out["S1RTC"], np.ndarray) and out["S1RTC"].shape == (2, 2, 224, 224)
    ndvi = sample("NDVI")[0]
    assert processor({"NDVI": [ndvi, ndvi]})["NDVI"].shape == (2, 1, 224, 224)  # a list of (H, W) maps


# --- nodata


def test_nodata_filled_and_reported(processor):
    s2 = sample("S2L2A").copy()
    s2[:, :8, :8] = -9999
    s1 = sample("S1RTC").astype(np.float32)
    s1[1, 100, 100] = np.nan
    out = processor({"S2L2A": s2, "S1RTC": s1}, nodata_value={"S2L2A": -9999}, return_nodata_mask=True)
    assert set(out) == {"S2L2A", "S1RTC", "S2L2A_nodata_mask", "S1RTC_nodata_mask"}
    assert nodata_mask_key("s2_l2a") == "S2L2A_nodata_mask"
    mask = out["S2L2A_nodata_mask"]
    assert mask.shape == (1, 224, 224) and mask.dtype == torch.bool
    assert mask[0, :8, :8].all() and mask.sum() == 64
    assert (out["S2L2A"][0, :, :8, :8] == 0).all()  # filled with the band mean -> 0 after standardization
    assert out["S1RTC_nodata_mask"].sum() == 1 and out["S1RTC"][0, 1, 100, 100] == 0  # only the NaN band is filled
    assert out["S1RTC"][0, 0, 100, 100] == (s1[0, 100, 100] - np.float32(-10.93)) / np.float32(4.391)
    assert torch.isfinite(out["S1RTC"]).all()
    assert set(processor({"S2L2A": s2}, nodata_value=-9999)) == {"S2L2A"}  # masks only on request


def test_numeric_fill_value():
    processor = TerraMindImageProcessor(fill_value={"DEM": 0.0}, do_normalize=False)
    dem = sample("DEM").astype(np.float32)
    dem[0, 0, 0] = np.nan
    out = processor({"DEM": dem})["DEM"]
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] == dem[0, 1, 1]


# --- geometry


def test_pad_to_multiple_of_16_keeps_top_left():
    processor = TerraMindImageProcessor(do_pad=True, return_nodata_mask=True)
    s2, lulc = sample("S2L2A")[:, :200, :190], sample("LULC")[:, :200, :190]
    out = processor({"S2L2A": s2, "LULC": lulc})
    assert out["S2L2A"].shape == (1, 12, 208, 192) and out["LULC"].shape == (1, 1, 208, 192)
    torch.testing.assert_close(out["S2L2A"][..., :200, :190], processor({"S2L2A": s2})["S2L2A"][..., :200, :190])
    assert (out["S2L2A"][..., 200:, :] == 0).all() and out["S2L2A_nodata_mask"][0, 200:].all()
    assert not out["S2L2A_nodata_mask"][0, :200, :190].any()


def test_resize_and_center_crop(processor):
    lulc, s1 = sample("LULC"), sample("S1RTC")
    out = processor({"LULC": lulc, "S1RTC": s1}, do_resize=True, size=112)
    assert out["S1RTC"].shape == (1, 2, 112, 112) and out["LULC"].dtype == torch.int64
    assert set(out["LULC"].unique().tolist()) <= set(np.unique(lulc).tolist())  # nearest: no new classes
    cropped = processor({"S1RTC": s1}, do_center_crop=True, crop_size=(128, 64))["S1RTC"]
    torch.testing.assert_close(cropped, processor({"S1RTC": s1})["S1RTC"][..., 48:176, 80:144], rtol=0, atol=0)


# --- post-processing


def test_post_process_generation_restores_physical_units(processor):
    folders = {"S2L2A": "S2L2A", "S1RTC": "S1RTC", "DEM": "DEM", "NDVI": "NDVI", "RGB": "S2RGB", "LULC": "LULC"}
    raw = {modality: sample(folder) for modality, folder in folders.items()}
    restored = processor.post_process_generation({**processor(raw), "Coordinates": "lon=1 lat=2"})
    assert restored["Coordinates"] == "lon=1 lat=2"
    for modality, values in raw.items():
        atol = 0 if values.dtype.kind in "iu" else 1e-5
        result = restored[modality][0].numpy()
        if values.dtype.kind in "iu":
            result = np.rint(result).astype(values.dtype)
        np.testing.assert_allclose(result, values, rtol=1e-6, atol=atol, err_msg=modality)


def test_offset_shifts_means_of_standardization_filling_and_post_processing(tmp_path):
    """`offset` (the original's, e.g. +1000 for harmonised L2A) shifts the means the processor uses everywhere."""
    plain = TerraMindImageProcessor()
    shifted = TerraMindImageProcessor(offset={"s2_l2a": 1000, "S1GRD": [1.0, -1.0]}, nodata_value=-9999)
    s2 = torch.rand(1, 12, 32, 32) * 3000
    s2[..., :4, :4] = -9999
    s1 = torch.randn(1, 2, 32, 32) * 5 - 15
    ours = shifted({"S2L2A": s2 + 1000 * (s2 != -9999), "S1GRD": s1 + torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)})
    base = plain({"S2L2A": s2, "S1GRD": s1}, nodata_value=-9999)
    torch.testing.assert_close(ours["S2L2A"], base["S2L2A"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["S1GRD"], base["S1GRD"], atol=1e-5, rtol=0)
    assert ours["S2L2A"][..., :4, :4].abs().max() < 1e-6  # nodata filled with the shifted mean: 0 standardized
    restored = shifted.post_process_generation({"S2L2A": base["S2L2A"]})["S2L2A"]
    torch.testing.assert_close(restored[..., 8:, 8:], s2[..., 8:, 8:] + 1000, atol=1e-2, rtol=0)
    shifted.save_pretrained(tmp_path)
    assert TerraMindImageProcessor.from_pretrained(tmp_path).offset == {"S2L2A": 1000.0, "S1GRD": [1.0, -1.0]}
    assert plain.band_statistics("S2L2A")[0][0] == MODALITIES["S2L2A"].mean[0]  # nothing shared was changed


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        ({"LULC": 1}, "class ids"),
        ({"S1GRD": [1.0, 2.0, 3.0]}, "3 values for the 2 output bands"),
        ({"S2L2A": "1000"}, "a number or a list of numbers"),
        ({"Coordinates": 1}, "not an image modality"),
    ],
)
def test_offset_errors(offset, message):
    with pytest.raises(ValueError, match=message):
        TerraMindImageProcessor(offset=offset)


def test_post_process_lulc_logits_become_class_ids(processor):
    logits = torch.randn(2, 10, 16, 16)
    out = processor.post_process_generation({"LULC": logits})["LULC"]
    assert out.shape == (2, 1, 16, 16) and out.dtype == torch.int64
    torch.testing.assert_close(out[:, 0], logits.argmax(dim=1))


# --- errors


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        ({"S2L2A": np.zeros((13, 16, 16), np.int16)}, {}, "give `band_names"),
        ({"S2L2A": np.zeros((12, 16, 16), np.int16)}, {"band_names": ["B02"] * 12}, "duplicate band names"),
        ({"S2L2A": np.zeros((3, 16, 16), np.int16)}, {"band_names": ["B02", "B03", "B04"]}, "'COASTAL_AEROSOL' is not"),
        ({"S1RTC": np.zeros((2, 16, 16), np.float32)}, {"band_names": ["VV"]}, "has 2 channels"),
        ({"S2L2A": np.zeros((12, 16, 16), np.complex64)}, {}, "unsupported dtype"),
        ({"DEM": torch.zeros(1, 16, 16, dtype=torch.bool)}, {}, "unsupported dtype"),
        ({"S1RTC": np.full((2, 16, 16), np.nan, np.float32)}, {}, "entirely nodata"),
        ({"DEM": np.zeros((16, 16))}, {"nodata_value": 0}, "entirely nodata"),
        ({"S3OLCI": np.zeros((3, 16, 16))}, {}, "Unknown modality 'S3OLCI'"),
        ({"Coordinates": np.zeros((1, 2))}, {}, "coordinates go to TerraMindProcessor"),
        ({"S2L2A": np.zeros((16, 16))}, {}, "2-D"),
        ({"NDVI": np.full((1, 16, 16), 5000.0)}, {}, r"NDVI must be in \[-1, 1\]"),
        ({"RGB": np.full((3, 16, 16), 300.0)}, {}, "RGB must be in 0-255"),
        ({"LULC": np.full((1, 16, 16), 12)}, {}, "class ids"),
        ({"DEM": np.zeros((1, 16, 16)), "S1RTC": np.zeros((2, 32, 32))}, {}, "differ in batch size or size"),
        ({"S2L2A": np.zeros((12, 16, 16)), "s2_l2a": np.zeros((12, 16, 16))}, {}, "given twice"),
    ],
)
def test_bad_input_raises_value_error(processor, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(images, **kwargs)


def test_bad_settings_raise_value_error():
    with pytest.raises(ValueError, match="No pre-training statistics"):
        TerraMindImageProcessor(bands={"S2L2A": ["BLUE", "THERMAL"]})
    with pytest.raises(ValueError, match="one value per output band"):
        TerraMindImageProcessor(image_mean={"DEM": [1.0, 2.0]}, image_std={"DEM": [1.0, 2.0]})
    with pytest.raises(ValueError, match="Unknown modality"):
        TerraMindImageProcessor(nodata_value={"S9": 0})


# --- processor, coordinates, save/load


def test_processor_passes_coordinates_through():
    processor = TerraMindProcessor()
    coordinates = np.array([[-47.25, -25.5], [12.5, 41.9]])
    out = processor({"S1RTC": np.stack([sample("S1RTC")] * 2)}, coordinates=coordinates)
    assert set(out) == {"S1RTC", "Coordinates"}
    np.testing.assert_array_equal(out["Coordinates"].numpy(), coordinates)
    assert set(processor(coordinates=coordinates[0])) == {"Coordinates"}
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        processor(coordinates=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="batch size"):
        processor({"DEM": sample("DEM")}, coordinates=coordinates)
    with pytest.raises(ValueError, match="latitude"):
        processor(coordinates=[[10.0, 95.0]])
    with pytest.raises(ValueError, match="no coordinates tokenizer"):
        processor.batch_decode([[1, 2]])
    with pytest.raises(ValueError, match="no coordinates tokenizer with `encode_coordinates`"):
        processor(coordinates=coordinates, tokenize_coordinates=True)


def custom_processor() -> TerraMindProcessor:
    return TerraMindProcessor(
        TerraMindImageProcessor(
            bands={"S2L2A": ["RED", "GREEN", "BLUE", "NIR_NARROW"]},
            image_mean={"DEM": [100.0]},
            image_std={"DEM": [10.0]},
            nodata_value={"S2L2A": 0},
            do_pad=True,
            return_nodata_mask=True,
        )
    )


def test_processor_save_load_round_trip(tmp_path):
    processor = custom_processor()
    processor.save_pretrained(tmp_path)
    loaded = TerraMindProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer is None
    images = {"S2L2A": sample("S2L2A")[:, :100, :100], "DEM": sample("DEM")[:, :100, :100]}
    expected, actual = processor(images), loaded(images)
    assert set(actual) == {"S2L2A", "DEM", "S2L2A_nodata_mask", "DEM_nodata_mask"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    image_processor = TerraMindImageProcessor.from_pretrained(tmp_path, do_pad=False)  # kwargs override the file
    assert image_processor.do_pad is False and image_processor.bands == processor.image_processor.bands


def test_processor_with_coordinates_tokenizer_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    model = tokenizers.models.WordLevel({"[UNK]": 0, "lon=-47.25": 1, "lat=-25.50": 2}, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    TerraMindProcessor(tokenizer=tokenizer).save_pretrained(tmp_path)
    loaded = TerraMindProcessor.from_pretrained(tmp_path)
    assert loaded.decode([1, 2]) == "lon=-47.25 lat=-25.50"

    class CoordinatesTokenizer(PreTrainedTokenizerFast):  # stands in for the coordinates tokenizer
        def encode_coordinates(self, lonlat):
            texts = [f"lon={lon:.2f} lat={lat:.2f}" for lon, lat in lonlat.tolist()]
            return torch.tensor([self.encode(text) for text in texts])

        def decode_coordinates(self, ids):
            return torch.tensor([[float(self.decode(row[:1])[4:]), float(self.decode(row[1:2])[4:])] for row in ids])

    processor = TerraMindProcessor(tokenizer=CoordinatesTokenizer(tokenizer_object=backend, unk_token="[UNK]"))
    assert processor(coordinates=[-47.25, -25.5], tokenize_coordinates=True)["Coordinates"].tolist() == [[1, 2]]
    assert processor(coordinates=[-47.25, -25.5])["Coordinates"].tolist() == [[-47.25, -25.5]]  # unchanged
    generated = processor.post_process_generation(
        {"Coordinates": torch.tensor([[1, 2]]), "DEM": torch.zeros(1, 1, 2, 2)}
    )
    torch.testing.assert_close(generated["Coordinates"], torch.tensor([[-47.25, -25.5]]))
    assert (generated["DEM"] == 670.665).all()
    with pytest.raises(ValueError, match="PreTrainedTokenizerBase"):
        TerraMindProcessor(tokenizer="not a tokenizer")


def test_auto_processor_from_folder_with_config(tmp_path):
    from terramind import TerraMindConfig

    register_processors()
    processor = custom_processor()
    processor.save_pretrained(tmp_path)
    TerraMindConfig().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "terramind"
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, TerraMindProcessor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()

    # A model folder with only config.json and the image processor's preprocessor_config.json.
    model_folder = tmp_path / "model"
    TerraMindConfig().save_pretrained(model_folder)
    TerraMindImageProcessor(size_divisor=32).save_pretrained(model_folder)
    loaded = AutoProcessor.from_pretrained(model_folder)
    assert isinstance(loaded, TerraMindProcessor) and loaded.image_processor.size_divisor == 32


def test_auto_image_processor_from_folder(tmp_path):
    pytest.importorskip("PIL", reason="transformers' AutoImageProcessor needs Pillow")
    from transformers import AutoImageProcessor

    from terramind import TerraMindConfig

    register_processors()
    TerraMindConfig().save_pretrained(tmp_path)
    custom_processor().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, TerraMindImageProcessor) and loaded.do_pad is True


def test_remote_code_folder_is_self_contained(tmp_path, monkeypatch):
    """With register_for_auto_class, saved folders carry the code and an auto_map (trust_remote_code loading)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from terramind import TerraMindConfig

    monkeypatch.setattr(TerraMindProcessor, "_auto_class", "AutoProcessor")
    monkeypatch.setattr(TerraMindImageProcessor, "_auto_class", "AutoImageProcessor")
    TerraMindConfig().save_pretrained(tmp_path)
    custom_processor().save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "processor_config.json").read_text())["auto_map"]
    assert auto_map == {"AutoProcessor": "processing_terramind.TerraMindProcessor"}

    remote_class = get_class_from_dynamic_module(auto_map["AutoProcessor"], tmp_path)  # the folder's own copy
    assert remote_class.__module__.startswith("transformers_modules")
    loaded = remote_class.from_pretrained(tmp_path)
    out = loaded({"DEM": np.ones((20, 20))})
    assert sorted(out) == ["DEM", "DEM_nodata_mask"] and out["DEM"].shape == (1, 1, 32, 32)


def test_time_series_are_processed_step_by_step(processor):
    """(B, C, T, H, W) inputs: every time step is processed as a single image would be; masks are (B, T, H, W)."""
    first, second = sample("S2L2A").astype(np.float32), sample("S2L2A")[:, ::-1].astype(np.float32).copy()
    second[:, :8, :8] = 0
    series = np.stack([first, second], axis=1)[None]  # (1, 12, 2, 224, 224)
    out = processor({"S2L2A": series, "S1RTC": sample("S1RTC")}, nodata_value={"S2L2A": 0}, return_nodata_mask=True)
    assert out["S2L2A"].shape == (1, 12, 2, 224, 224) and out["S1RTC"].shape == (1, 2, 224, 224)
    for step, image in enumerate((first, second)):
        single = processor({"S2L2A": image}, nodata_value=0, return_nodata_mask=True)
        torch.testing.assert_close(out["S2L2A"][:, :, step], single["S2L2A"])
        assert torch.equal(out[nodata_mask_key("S2L2A")][:, step], single[nodata_mask_key("S2L2A")])
    assert out[nodata_mask_key("S2L2A")].shape == (1, 2, 224, 224) and out[nodata_mask_key("S2L2A")][0, 1, :8, :8].all()
    listed = processor({"S2L2A": [series[0], series[0]]})["S2L2A"]  # a list of (C, T, H, W) samples
    assert listed.shape == (2, 12, 2, 224, 224)
