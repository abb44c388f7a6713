"""TerraMind's coordinates tokenizer: longitude/latitude <-> token ids of the "Coordinates" modality.

As the original `CoordsTokenizer` (terratorch 1.2.13): coordinates are snapped to a 0.25 degree grid, written as
the text "lat=<lat:.2f> lon=<lon:.2f> [EOS]" and tokenized by a `tokenizers` WordPiece tokenizer whose vocabulary
holds whole "lat=..." / "lon=..." words; decoding reads the first two tokens back. The released vocabulary
(`ibm-esa-geospatial/TerraMind-1.0-Tokenizer-Coords`) is a tokenizers JSON named `config.json`; `from_pretrained`
reads it explicitly and `save_pretrained` writes it as `tokenizer.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.utils import cached_file

from .hub import resolve_source

ORIGINAL_VOCABULARY_FILE = "config.json"
GRID_DEGREES = 0.25
_COORDS_TEXT = re.compile(r"^\s*lat=([-+]?\d+(?:\.\d*)?)\s+lon=([-+]?\d+(?:\.\d*)?)\s*$")
_DEFAULT_SPECIAL_TOKENS = dict(pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", bos_token="[SOS]")


class TerraMindCoordsTokenizer(PreTrainedTokenizerFast):
    """Coordinates <-> token ids for TerraMind's "Coordinates" modality (a fast, `tokenizers`-backed tokenizer).

    `encode_coordinates(lonlat)` takes (B, 2) [longitude, latitude] in degrees and returns the (B, L) token ids the
    TerraMind encoder takes as `Coordinates`; `decode_coordinates(ids)` maps generated ids back to (B, 2)
    [longitude, latitude] (NaN, with a warning, where the ids do not spell coordinates).
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids"]
    padding_side = "right"

    @classmethod
    def from_vocabulary_file(cls, path: str | os.PathLike, **kwargs: Any) -> TerraMindCoordsTokenizer:
        """Build from a `tokenizers` JSON file of any name (the original release calls it config.json)."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if not _is_tokenizers_json(text):
            raise ValueError(f"{path} is not a `tokenizers` JSON file (no tokenizer model in it).")
        backend = Tokenizer.from_str(text)
        vocab = backend.get_vocab()
        for name, token in _DEFAULT_SPECIAL_TOKENS.items():
            if token in vocab:
                kwargs.setdefault(name, token)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        return cls(tokenizer_object=backend, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *init_inputs: Any, **kwargs: Any):
        """Transformers' `from_pretrained`; a folder or Hub repo holding only the original vocabulary (a tokenizers
        JSON named config.json, no tokenizer.json) is read from that file."""
        hub = {k: kwargs[k] for k in ("cache_dir", "token", "revision", "local_files_only") if k in kwargs}
        pretrained_model_name_or_path = resolve_source(pretrained_model_name_or_path, bool(hub.get("local_files_only")))
        original = _original_vocabulary(pretrained_model_name_or_path, **hub)
        if original is not None:
            ignored = set(hub) | {"force_download", "trust_remote_code"}
            extra = {k: v for k, v in kwargs.items() if k not in ignored}
            tokenizer = cls.from_vocabulary_file(original, **extra)
            tokenizer.name_or_path = str(pretrained_model_name_or_path)
            return tokenizer
        return super().from_pretrained(pretrained_model_name_or_path, *init_inputs, **kwargs)

    # ------------------------------------------------------------------ coordinates
    @staticmethod
    def coordinates_to_text(lonlat: Any) -> list[str]:
        """(B, 2) [lon, lat] -> the original's texts "lat=12.25 lon=-3.50 [EOS]" (0.25 degree grid)."""
        coords = _validate_lonlat(lonlat)
        coords = (coords * 4).round() / 4  # snap to the 0.25 degree grid, as the original (round half to even)
        return [f"lat={lat:.2f} lon={lon:.2f} [EOS]" for lon, lat in coords.tolist()]

    def encode_coordinates(self, lonlat: Any) -> torch.LongTensor:
        """(B, 2) [longitude, latitude] in degrees (tensor, array or nested list) -> (B, L) int64 token ids.

        Longitudes must lie in [-180, 180], latitudes in [-90, 90]. Rows of unequal length are padded with the pad
        id (0 in the released vocabulary); the released vocabulary gives [lat, lon, EOS] for every coordinate.
        """
        texts = self.coordinates_to_text(lonlat)
        encodings = self.backend_tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = [encoding.ids for encoding in encodings]
        unk = self.unk_token_id
        unknown = [text for text, row in zip(texts, ids, strict=True) if unk is not None and unk in row]
        if unknown:
            warnings.warn(f"Coordinates outside the vocabulary were encoded as {self.unk_token}: {unknown[:3]}.",
                          stacklevel=2)  # fmt: skip
        length = max((len(row) for row in ids), default=0)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        padded = [row + [pad] * (length - len(row)) for row in ids]
        return torch.tensor(padded, dtype=torch.long).reshape(len(ids), length)

    def decode_coordinates(self, token_ids: Any) -> torch.FloatTensor:
        """(B, L) token ids (generated or from `encode_coordinates`) -> (B, 2) float32 [longitude, latitude].

        As the original, the first two tokens are decoded to "lat=... lon=..."; a row that does not read so gives
        NaN with a warning instead of failing.
        """
        ids = torch.as_tensor(np.asarray(token_ids) if not torch.is_tensor(token_ids) else token_ids)
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        if ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"token_ids must be integer ids of shape (B, L), got {ids.dtype} {tuple(ids.shape)}.")
        out = []
        for row in ids.tolist():
            text = self.backend_tokenizer.decode(row[:2], skip_special_tokens=False)
            match = _COORDS_TEXT.match(text)
            if match is None:
                warnings.warn(f"Coordinate tokens {row[:2]} do not decode to coordinates (text {text!r}); "
                              "returning NaN.", stacklevel=2)  # fmt: skip
                out.append([math.nan, math.nan])
                continue
            lat, lon = float(match.group(1)), float(match.group(2))
            out.append([lon, lat])
        return torch.tensor(out, dtype=torch.float32).reshape(len(out), 2)


def _validate_lonlat(lonlat: Any) -> torch.Tensor:
    try:
        coords = torch.as_tensor(np.asarray(lonlat.detach().cpu() if torch.is_tensor(lonlat) else lonlat,
                                            dtype=np.float64))  # fmt: skip
    except (TypeError, ValueError) as error:
        raise ValueError(f"Coordinates must be numbers of shape (B, 2) [longitude, latitude]: {error}") from None
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"Coordinates must have shape (B, 2) with [longitude, latitude] per row, got shape "
                         f"{tuple(coords.shape)}.")  # fmt: skip
    if not torch.isfinite(coords).all():
        raise ValueError("Coordinates contain NaN or inf.")
    lon, lat = coords[:, 0], coords[:, 1]
    if (lon.abs() > 180).any() or (lat.abs() > 90).any():
        raise ValueError(f"Coordinates out of range: longitude must be in [-180, 180] and latitude in [-90, 90] "
                         f"(got longitudes in [{lon.min():.4g}, {lon.max():.4g}], latitudes in [{lat.min():.4g}, "
                         f"{lat.max():.4g}]); rows are [longitude, latitude].")  # fmt: skip
    return coords


def _is_tokenizers_json(text: str) -> bool:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "added_tokens" in data


def _original_vocabulary(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> str | None:
    """Path of the original release's vocabulary (config.json as tokenizers JSON, no tokenizer.json), else None."""
    def resolve(filename: str) -> str | None:
        try:
            return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **hub_kwargs)  # fmt: skip
        except (OSError, ValueError):
            return None

    if resolve("tokenizer.json") is not None:
        return None
    candidate = resolve(ORIGINAL_VOCABULARY_FILE)
    if candidate is None:
        return None
    with open(candidate, encoding="utf-8") as handle:
        return candidate if _is_tokenizers_json(handle.read()) else None


__all__ = ["TerraMindCoordsTokenizer"]
