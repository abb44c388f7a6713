"""TerraMindCoordsTokenizer: the original CoordsTokenizer's grid, text and ids, loading the release layout, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from terramind.tokenization_terramind_coords import TerraMindCoordsTokenizer

SPECIAL = ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]


def build_vocabulary() -> Tokenizer:
    """A small stand-in for the released vocabulary: whole "lat=.." / "lon=.." words on the 0.25 degree grid."""
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for value in np.arange(-90, 90.25, 0.25):
        vocab[f"lat={value:.2f}"] = len(vocab)
    for value in np.arange(-180, 180.25, 0.25):
        vocab[f"lon={value:.2f}"] = len(vocab)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tokenizer


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The layout of ibm-esa-geospatial/TerraMind-1.0-Tokenizer-Coords: the vocabulary as config.json only."""
    folder = tmp_path_factory.mktemp("coords_release")
    build_vocabulary().save(str(folder / "config.json"))
    return folder


@pytest.fixture(scope="module")
def tokenizer(release) -> TerraMindCoordsTokenizer:
    return TerraMindCoordsTokenizer.from_pretrained(release)


def test_encode_matches_the_original_text_and_ids(tokenizer):
    vocabulary = build_vocabulary()
    lonlat = torch.tensor([[7.61, 45.9], [-180.0, -90.0], [180.0, 90.0], [0.125, -33.374]])
    texts = tokenizer.coordinates_to_text(lonlat)
    # as CoordsTokenizer.encode: (coords * 4).round() / 4, then f"lat={lat:.2f} lon={lon:.2f} [EOS]"
    assert texts == ["lat=46.00 lon=7.50 [EOS]", "lat=-90.00 lon=-180.00 [EOS]", "lat=90.00 lon=180.00 [EOS]",
                     "lat=-33.25 lon=0.00 [EOS]"]  # fmt: skip
    ids = tokenizer.encode_coordinates(lonlat)
    expected = [e.ids for e in vocabulary.encode_batch(texts, add_special_tokens=True)]
    assert ids.dtype == torch.int64 and ids.shape == (4, 3)
    assert ids.tolist() == expected
    assert (ids[:, 2] == tokenizer.convert_tokens_to_ids("[EOS]")).all()


def test_decode_round_trip_on_the_grid(tokenizer):
    lonlat = torch.tensor([[-73.9, 40.7], [139.69, 35.69], [18.42, -33.92]], dtype=torch.float64)
    decoded = tokenizer.decode_coordinates(tokenizer.encode_coordinates(lonlat))
    assert decoded.shape == (3, 2) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded.double(), (lonlat * 4).round() / 4)
    assert tokenizer.decode_coordinates(tokenizer.encode_coordinates([[10.0, 20.0]])[0]).tolist() == [[10.0, 20.0]]


def test_unparseable_ids_give_nan_with_a_warning(tokenizer):
    lat = tokenizer.convert_tokens_to_ids("lat=10.00")
    lon = tokenizer.convert_tokens_to_ids("lon=20.00")
    with pytest.warns(UserWarning, match="returning NaN"):
        decoded = tokenizer.decode_coordinates([[lon, lat, 3], [0, 0, 0], [lat, lon, 3]])
    assert all(math.isnan(v) for v in decoded[0].tolist() + decoded[1].tolist())
    assert decoded[2].tolist() == [20.0, 10.0]


def test_save_as_tokenizer_json_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and not (tmp_path / "config.json").exists()
    reloaded = TerraMindCoordsTokenizer.from_pretrained(tmp_path)
    lonlat = [[5.0, 50.0], [-120.25, 36.5]]
    assert torch.equal(reloaded.encode_coordinates(lonlat), tokenizer.encode_coordinates(lonlat))
    assert reloaded.pad_token == "[PAD]" and reloaded.pad_token_id == 0


def test_from_vocabulary_file_reads_it_explicitly(release, tmp_path):
    tokenizer = TerraMindCoordsTokenizer.from_vocabulary_file(release / "config.json")
    assert tokenizer.encode_coordinates([[0.0, 0.0]]).shape == (1, 3)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "terramind"}))
    with pytest.raises(ValueError, match="not a `tokenizers` JSON"):
        TerraMindCoordsTokenizer.from_vocabulary_file(tmp_path / "config.json")


@pytest.mark.parametrize(
    "lonlat, match",
    [
        ([[181.0, 0.0]], "out of range"),
        ([[0.0, -90.5]], "out of range"),
        ([[0.0, 10.0, 3.0]], r"\(B, 2\)"),
        ([0.0, 10.0], r"\(B, 2\)"),
        ([[float("nan"), 10.0]], "NaN"),
        ([["a", "b"]], "numbers"),
    ],
)
def test_bad_coordinates(tokenizer, lonlat, match):
    with pytest.raises(ValueError, match=match):
        tokenizer.encode_coordinates(lonlat)


def test_bad_token_ids(tokenizer):
    with pytest.raises(ValueError, match="integer ids"):
        tokenizer.decode_coordinates(torch.zeros(2, 3))
