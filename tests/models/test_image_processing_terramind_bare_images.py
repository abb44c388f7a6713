"""Bare images with a default modality behave as in Transformers' image processors (issue 22, item 4): channels first
or last, PIL images, lists of any sizes, per-call statistics, do_convert_rgb; plus the standardize/destandardize
methods that own the statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from terramind import MODALITIES, TerraMindImageProcessor

RGB_MEAN = torch.tensor(MODALITIES["RGB"].mean).view(1, 3, 1, 1)
RGB_STD = torch.tensor(MODALITIES["RGB"].std).view(1, 3, 1, 1)


def rgb(height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """A (3, H, W) uint8 RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)


@pytest.fixture
def processor():
    return TerraMindImageProcessor(default_modality="RGB")


def test_channels_last_and_first_give_identical_pixel_values(processor):
    image = rgb(32, 40)
    first = processor(image)["pixel_values"]
    expected = (torch.from_numpy(image).float()[None] - RGB_MEAN) / RGB_STD
    torch.testing.assert_close(first, expected)
    for channels_last in (image.transpose(1, 2, 0), torch.from_numpy(image).permute(1, 2, 0)):
        torch.testing.assert_close(processor(channels_last)["pixel_values"], first)
        given = processor(channels_last, input_data_format="channels_last")["pixel_values"]
        torch.testing.assert_close(given, first)
    batch_last = np.stack([image.transpose(1, 2, 0)] * 2)  # (B, H, W, C)
    torch.testing.assert_close(processor(batch_last)["pixel_values"], first.expand(2, -1, -1, -1))


def test_input_data_format_settles_an_ambiguous_layout(processor):
    image = rgb(3, 3)  # 3 x 3 pixels: both axes could be the channels
    first = processor(image, input_data_format="channels_first")["pixel_values"]
    last = processor(image, input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(first[0], (torch.from_numpy(image).float() - RGB_MEAN[0]) / RGB_STD[0])
    torch.testing.assert_close(last[0], (torch.from_numpy(image).float().permute(2, 0, 1) - RGB_MEAN[0]) / RGB_STD[0])
    with pytest.raises(ValueError, match="cannot tell the channel axis.*input_data_format"):
        processor(np.zeros((5, 6, 7)))


def test_pil_images_and_lists_of_any_size_with_do_resize(processor):
    images = [rgb(32, 40, seed=1), rgb(20, 24, seed=2)]
    pil = [Image.fromarray(image.transpose(1, 2, 0)) for image in images]
    out = processor(pil, do_resize=True, size=16)["pixel_values"]
    assert out.shape == (2, 3, 16, 16)
    for index, image in enumerate(images):  # each resized on its own, as a single image would be
        alone = processor(image, do_resize=True, size=(16, 16))["pixel_values"]
        torch.testing.assert_close(out[index : index + 1], alone)
    torch.testing.assert_close(processor(pil[0])["pixel_values"], processor(images[0])["pixel_values"])
    with pytest.raises(ValueError, match="different sizes.*do_resize"):
        processor(pil)
    from transformers.image_utils import PILImageResampling

    bicubic = processor(pil, do_resize=True, size=16, resample=PILImageResampling.BICUBIC)["pixel_values"]
    torch.testing.assert_close(bicubic, processor(pil, do_resize=True, size=16, resample="bicubic")["pixel_values"])
    assert not torch.allclose(bicubic, out)
    assert TerraMindImageProcessor(resample=PILImageResampling.BOX).resample == "area"
    with pytest.raises(ValueError, match="no torch equivalent"):
        processor(pil, do_resize=True, size=16, resample=PILImageResampling.LANCZOS)


def test_per_call_statistics_replace_the_modality_statistics(processor):
    image = rgb(16, 16)
    pixels = torch.from_numpy(image).float()[None]
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    out = processor(image, image_mean=mean, image_std=std)["pixel_values"]
    torch.testing.assert_close(out, (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(processor(image, image_mean=0.0, image_std=1.0)["pixel_values"], pixels)
    torch.testing.assert_close(processor(image)["pixel_values"], (pixels - RGB_MEAN) / RGB_STD)  # not remembered
    # the same for a {modality: array} input, as {modality: values}
    as_dict = processor({"RGB": image}, image_mean={"RGB": mean}, image_std={"RGB": std})["RGB"]
    torch.testing.assert_close(as_dict, out)
    with pytest.raises(ValueError, match="both image_mean and image_std"):
        processor(image, image_mean=mean)
    with pytest.raises(ValueError, match="2 values for the 3 bands"):
        processor(image, image_mean=[1.0, 2.0], image_std=[1.0, 1.0])


def test_channels_of_their_own_statistics_are_kept(processor):
    """A 4-channel image with 4 statistics (Transformers' test_call_numpy_4_channels) keeps its 4 channels."""
    image = np.random.default_rng(0).integers(0, 256, (24, 20, 4), dtype=np.uint8)
    out = processor(image, input_data_format="channels_last", do_convert_rgb=False, image_mean=[1.0, 2.0, 3.0, 4.0],
                    image_std=[1.0, 1.0, 1.0, 2.0])["pixel_values"]  # fmt: skip
    expected = torch.from_numpy(image).float().permute(2, 0, 1)[None] - torch.arange(1.0, 5.0).view(1, 4, 1, 1)
    expected[:, 3] /= 2
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="4 channels but TerraMind takes 3 bands"):
        processor(image, input_data_format="channels_last")


def test_do_convert_rgb(processor):
    gray = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    expected = processor(np.stack([gray] * 3))["pixel_values"]
    torch.testing.assert_close(processor(Image.fromarray(gray))["pixel_values"], expected)  # PIL "L": by its mode
    torch.testing.assert_close(processor(gray[..., None], do_convert_rgb=True)["pixel_values"], expected)
    rgba = np.concatenate([rgb(16, 16), np.full((1, 16, 16), 255, np.uint8)])
    opaque = processor(rgba[:3])["pixel_values"]
    torch.testing.assert_close(processor(rgba, do_convert_rgb=True)["pixel_values"], opaque)
    transparent = rgba.copy()
    transparent[3] = 0  # fully transparent: white
    white = processor(np.full((3, 16, 16), 255, np.uint8))["pixel_values"]
    torch.testing.assert_close(processor(transparent, do_convert_rgb=True)["pixel_values"], white)
    pil_rgba = Image.fromarray(transparent.transpose(1, 2, 0), mode="RGBA")
    torch.testing.assert_close(processor(pil_rgba)["pixel_values"], white)
    with pytest.raises(ValueError, match="1 channels but TerraMind takes 3 bands"):
        processor(gray[None], do_convert_rgb=False, input_data_format="channels_first")
    with pytest.raises(ValueError, match="applies to RGB"):
        TerraMindImageProcessor(default_modality="S2L2A")(np.zeros((12, 16, 16)), do_convert_rgb=True)
    with pytest.raises(ValueError, match="apply to bare images"):
        processor({"RGB": rgb()}, do_convert_rgb=True)


def test_multispectral_channels_last_and_band_names():
    processor = TerraMindImageProcessor(default_modality="S2L2A")
    tile = np.random.default_rng(0).uniform(0, 5000, (12, 16, 16)).astype(np.float32)
    first = processor(tile)["pixel_values"]
    torch.testing.assert_close(processor(tile.transpose(1, 2, 0))["pixel_values"], first)
    named = list(MODALITIES["S2L2A"].bands)
    reversed_last = tile[::-1].transpose(1, 2, 0).copy()  # channels-last, bands in reverse order, named
    torch.testing.assert_close(processor(reversed_last, band_names=named[::-1])["pixel_values"], first)


def test_bare_one_band_maps_and_time_series_keep_their_meaning():
    """As before bare images took the layouts of a dict: (H, W) one-band maps, (C, T, H, W) time-series samples."""
    dem = TerraMindImageProcessor(default_modality="DEM")
    heights = np.random.default_rng(0).uniform(0, 900, (16, 16)).astype(np.float32)
    torch.testing.assert_close(dem(heights)["pixel_values"], dem({"DEM": heights})["DEM"])
    torch.testing.assert_close(dem([heights, heights])["pixel_values"], dem({"DEM": [heights, heights]})["DEM"])
    s2 = TerraMindImageProcessor(default_modality="S2L2A")
    series = np.random.default_rng(1).uniform(0, 5000, (12, 2, 16, 16)).astype(np.float32)  # (C, T, H, W)
    out = s2([series, series])["pixel_values"]
    assert out.shape == (2, 12, 2, 16, 16)
    torch.testing.assert_close(out, s2({"S2L2A": [series, series]})["S2L2A"])
    torch.testing.assert_close(s2(series[None])["pixel_values"], out[:1])


def test_standardize_and_destandardize_round_trip():
    processor = TerraMindImageProcessor(offset={"S2L2A": 1000})
    tile = torch.from_numpy(np.random.default_rng(0).uniform(0, 5000, (2, 12, 8, 8)).astype(np.float32))
    standardized = processor.standardize("s2_l2a", tile)
    torch.testing.assert_close(standardized, processor({"S2L2A": tile})["S2L2A"])
    torch.testing.assert_close(processor.destandardize("S2L2A", standardized), tile, rtol=1e-5, atol=1e-2)
    spec = MODALITIES["S2L2A"]
    torch.testing.assert_close(standardized[:, 0], (tile[:, 0] - spec.mean[0] - 1000) / spec.std[0])
    classes = torch.randint(0, 10, (1, 1, 4, 4))
    assert processor.standardize("LULC", classes) is classes and processor.destandardize("LULC", classes) is classes
    with pytest.raises(ValueError, match="5 channels match neither"):
        processor.standardize("S2L2A", tile[:, :5])


def test_remote_code_processor_takes_bare_images_without_package(tmp_path):
    """A saved folder's own copy of the processor (trust_remote_code, `terramind` not importable) loads its image
    processor through Transformers' sub-processor machinery and takes channels-last images."""
    from conftest import run_without_package

    from terramind import TerraMindConfig, TerraMindProcessor

    TerraMindConfig().save_pretrained(tmp_path / "folder")
    TerraMindProcessor(TerraMindImageProcessor(default_modality="RGB")).save_pretrained(tmp_path / "folder")
    image = rgb(16, 24)
    np.save(tmp_path / "image.npy", image.transpose(1, 2, 0))
    expected = TerraMindImageProcessor(default_modality="RGB")(image)["pixel_values"]
    torch.save(expected, tmp_path / "expected.pt")
    stdout = run_without_package(f"""
        import numpy as np, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path / "folder")!r}, trust_remote_code=True)
        out = processor(np.load({str(tmp_path / "image.npy")!r}), coordinates=[[7.5, 45.0]])
        torch.testing.assert_close(out["pixel_values"], torch.load({str(tmp_path / "expected.pt")!r}))
        assert out["Coordinates"].tolist() == [[7.5, 45.0]] and processor.tokenizer is None
        print("REMOTE_OK", type(processor).__module__.split(".")[0], type(processor.image_processor).__name__)
    """, tmp_path)  # fmt: skip
    assert "REMOTE_OK transformers_modules TerraMindImageProcessor" in stdout
