"""TerraMind v1 modalities: names, aliases, pretrained band orders and pre-training statistics.

This is the one place that knows how a user-facing modality name ("S2L2A", "s2_l2a", "S2L1C_L8",
"location", ...) maps to a pretrained TerraMind embedding, which bands it was trained on and which
statistics standardized it. Model, generation, tokenizers and processor all resolve names here.

Facts follow `terratorch.models.backbones.terramind` (terratorch 1.2.13): `PRETRAINED_BANDS`,
`v1_pretraining_mean/std` and the name rules of `build_modality_embeddings`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModalitySpec:
    """A pretrained TerraMind v1 modality.

    `kind` is "image" (raw pixels through a patch embedding), "image_tokens" (a 14x14 grid of tokenizer
    codes through a token embedding) or "sequence" (text tokens, e.g. coordinates).
    `original_key` is the key of the modality in the original checkpoints (`untok_sen2l2a@224`, ...).
    """

    name: str
    original_key: str
    kind: str
    bands: tuple[str, ...] = ()
    vocab_size: int | None = None
    max_length: int | None = None
    mean: tuple[float, ...] = field(default=(), repr=False)
    std: tuple[float, ...] = field(default=(), repr=False)
    tokenizer_modality: str | None = None  # the image modality a token modality's tokenizer reads

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    @property
    def is_image(self) -> bool:
        return self.kind in ("image", "image_tokens")


S2L2A_BANDS = (
    "COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3",
    "NIR_BROAD", "NIR_NARROW", "WATER_VAPOR", "SWIR_1", "SWIR_2",
)  # fmt: skip
S2L1C_BANDS = (
    "COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3",
    "NIR_BROAD", "NIR_NARROW", "WATER_VAPOR", "CIRRUS", "SWIR_1", "SWIR_2",
)  # fmt: skip
RGB_BANDS = ("RED", "GREEN", "BLUE")  # the original's order (and statistics), not the B-G-R the seed guide lists
S1_BANDS = ("VV", "VH")
DEM_BANDS = ("DEM",)

_S2L2A_MEAN = (1390.458, 1503.317, 1718.197, 1853.91, 2199.1, 2779.975, 2987.011, 3083.234, 3132.22, 3162.988,
               2424.884, 1857.648)  # fmt: skip
_S2L2A_STD = (2106.761, 2141.107, 2038.973, 2134.138, 2085.321, 1889.926, 1820.257, 1871.918, 1753.829, 1797.379,
              1434.261, 1334.311)  # fmt: skip
_S2L1C_MEAN = (2357.089, 2137.385, 2018.788, 2082.986, 2295.651, 2854.537, 3122.849, 3040.56, 3306.481, 1473.847,
               506.07, 2472.825, 1838.929)  # fmt: skip
_S2L1C_STD = (1624.683, 1675.806, 1557.708, 1833.702, 1823.738, 1733.977, 1732.131, 1679.732, 1727.26, 1024.687,
              442.165, 1331.411, 1160.419)  # fmt: skip
_S1GRD_MEAN, _S1GRD_STD = (-12.599, -20.293), (5.195, 5.890)
_S1RTC_MEAN, _S1RTC_STD = (-10.93, -17.329), (4.391, 4.459)
_DEM_MEAN, _DEM_STD = (670.665,), (951.272,)

IMAGE_TOKEN_VOCAB = 15360  # FSQ 8-8-8-6-5
LULC_TOKEN_VOCAB = 4375  # FSQ 7-5-5-5-5
COORDS_VOCAB = 30000

MODALITIES: dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec("S2L1C", "untok_sen2l1c@224", "image", S2L1C_BANDS, mean=_S2L1C_MEAN, std=_S2L1C_STD),
        ModalitySpec("S2L2A", "untok_sen2l2a@224", "image", S2L2A_BANDS, mean=_S2L2A_MEAN, std=_S2L2A_STD),
        ModalitySpec("RGB", "untok_sen2rgb@224", "image", RGB_BANDS, mean=(87.271, 80.931, 66.667),
                     std=(58.767, 47.663, 42.631)),  # fmt: skip
        ModalitySpec("S1GRD", "untok_sen1grd@224", "image", S1_BANDS, mean=_S1GRD_MEAN, std=_S1GRD_STD),
        ModalitySpec("S1RTC", "untok_sen1rtc@224", "image", S1_BANDS, mean=_S1RTC_MEAN, std=_S1RTC_STD),
        ModalitySpec("DEM", "untok_dem@224", "image", DEM_BANDS, mean=_DEM_MEAN, std=_DEM_STD),
        # Tokenized modalities: the model sees tokenizer codes; the tokenizer reads the image modality.
        ModalitySpec("S2L2A_TOKENS", "tok_sen2l2a@224", "image_tokens", S2L2A_BANDS, IMAGE_TOKEN_VOCAB,
                     mean=_S2L2A_MEAN, std=_S2L2A_STD, tokenizer_modality="S2L2A"),  # fmt: skip
        ModalitySpec("S1GRD_TOKENS", "tok_sen1grd@224", "image_tokens", S1_BANDS, IMAGE_TOKEN_VOCAB,
                     mean=_S1GRD_MEAN, std=_S1GRD_STD, tokenizer_modality="S1GRD"),  # fmt: skip
        ModalitySpec("S1RTC_TOKENS", "tok_sen1rtc@224", "image_tokens", S1_BANDS, IMAGE_TOKEN_VOCAB,
                     mean=_S1RTC_MEAN, std=_S1RTC_STD, tokenizer_modality="S1RTC"),  # fmt: skip
        ModalitySpec("DEM_TOKENS", "tok_dem@224", "image_tokens", DEM_BANDS, IMAGE_TOKEN_VOCAB,
                     mean=_DEM_MEAN, std=_DEM_STD, tokenizer_modality="DEM"),  # fmt: skip
        ModalitySpec("LULC", "tok_lulc@224", "image_tokens", ("LULC",), LULC_TOKEN_VOCAB, mean=(0.0,), std=(1.0,),
                     tokenizer_modality="LULC"),  # fmt: skip
        ModalitySpec("NDVI", "tok_ndvi@224", "image_tokens", ("NDVI",), IMAGE_TOKEN_VOCAB, mean=(0.327,),
                     std=(0.322,), tokenizer_modality="NDVI"),  # fmt: skip
        ModalitySpec("Coordinates", "coords", "sequence", vocab_size=COORDS_VOCAB, max_length=4),
    )
}

ORIGINAL_KEY_TO_NAME = {spec.original_key: name for name, spec in MODALITIES.items()}
RAW_IMAGE_MODALITIES = tuple(n for n, s in MODALITIES.items() if s.kind == "image")
# Modalities the v1 decoder can generate, by their user-facing output names.
GENERATABLE_MODALITIES = ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI", "Coordinates")
# The image modality each tokenizer reads (tokenizer repos are named after it).
TOKENIZER_MODALITIES = ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI")

# Extra inputs the processor can add next to a modality (`S2L2A_nodata_mask`); every TerraMind model accepts them.
NODATA_MASK_SUFFIX = "_nodata_mask"

_ALLOWED = "S2L1C, S2L2A, RGB, S1GRD, S1RTC, DEM, LULC, NDVI, Coordinates (or S2L2A_TOKENS, S1GRD_TOKENS, ...)"


class UnknownModalityError(ValueError):
    """An input names a modality the model is not configured for (models with `ignore_unknown_modalities` skip it)."""


def _normalize(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def resolve_modality(name: str) -> str:
    """Canonical name of the pretrained modality a user name refers to.

    Follows the original's rules (case-insensitive, `s2`->`sen2`, `s1`->`sen1`, `location`->`coords`,
    substring matches so that e.g. `S2L1C_L8` or `sen2l2a` resolve, plain `S1` means S1GRD) and also takes
    the original checkpoint keys (`untok_sen2l2a@224`). Raises `ValueError` naming the allowed names.
    """
    if not isinstance(name, str):
        raise ValueError(f"A modality name must be a string, got {name!r} ({type(name).__name__}).")
    if name in MODALITIES:
        return name
    if name in ORIGINAL_KEY_TO_NAME:
        return ORIGINAL_KEY_TO_NAME[name]
    norm = _normalize(name)
    for canonical in MODALITIES:
        if norm == _normalize(canonical):
            return canonical
    renamed = norm.replace("s2", "sen2").replace("s1", "sen1").replace("location", "coords")
    tokens = "token" in renamed and not renamed.startswith("untok")
    rules = (
        ("sen2l2a", "S2L2A"),
        ("sen2l1c", "S2L1C"),
        ("sen1rtc", "S1RTC"),
        ("sen1", "S1GRD"),  # S1 without a product level means GRD, as in the original
        ("rgb", "RGB"),
        ("dem", "DEM"),
        ("lulc", "LULC"),
        ("ndvi", "NDVI"),
        ("coord", "Coordinates"),
    )
    for needle, canonical in rules:
        if needle in renamed:
            if tokens and f"{canonical}_TOKENS" in MODALITIES:
                return f"{canonical}_TOKENS"
            return canonical
    raise ValueError(f"Unknown modality {name!r}. Pretrained modalities are {_ALLOWED}; "
                     "a new modality is given as {'NAME': num_channels}.")  # fmt: skip


def resolve_output_modality(name: str) -> str:
    """Canonical name of a modality the decoder generates (S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI, Coordinates).

    Generated image modalities are token grids; the user names them by the image they decode to.
    """
    canonical = resolve_modality(name)
    canonical = canonical.removesuffix("_TOKENS")
    if canonical not in GENERATABLE_MODALITIES:
        raise ValueError(f"TerraMind cannot generate {name!r}; it generates {', '.join(GENERATABLE_MODALITIES)}.")
    return canonical


def token_modality(name: str) -> str:
    """The token-grid modality (embedding key) of a generatable output: S2L2A -> S2L2A_TOKENS, LULC -> LULC."""
    canonical = resolve_output_modality(name)
    return f"{canonical}_TOKENS" if f"{canonical}_TOKENS" in MODALITIES else canonical


def standardization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per band used in v1 pre-training for a modality (raw or tokenized)."""
    spec = MODALITIES[resolve_modality(name)]
    if not spec.mean:
        raise ValueError(f"Modality {spec.name} has no pixel statistics (it is not an image).")
    return spec.mean, spec.std


# Band names (torch-free, for the ONNX runtime path too): Sentinel-2 ids -> TerraMind names.
_S2_BAND_IDS = {
    "B01": "COASTAL_AEROSOL", "B02": "BLUE", "B03": "GREEN", "B04": "RED", "B05": "RED_EDGE_1",
    "B06": "RED_EDGE_2", "B07": "RED_EDGE_3", "B08": "NIR_BROAD", "B8A": "NIR_NARROW", "B09": "WATER_VAPOR",
    "B10": "CIRRUS", "B11": "SWIR_1", "B12": "SWIR_2",
}  # fmt: skip


def canonical_band_name(name: str) -> str:
    """TerraMind's name of a band: case/separator-insensitive, Sentinel-2 ids (B02, B2, B8A) mapped to names."""
    key = str(name).strip().upper().replace("-", "_").replace(" ", "_")
    if re.fullmatch(r"B\d", key):
        key = f"B0{key[1]}"
    return _S2_BAND_IDS.get(key, key)


def match_bands(requested: Sequence[str], available: Sequence[str | None], source: str) -> list[int]:
    """Indexes of `requested` bands in `available` band names; `ValueError` naming `source` if one is missing."""
    names = [None if n is None else canonical_band_name(n) for n in available]
    duplicates = sorted({n for n in names if n is not None and names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source} has duplicate band names {duplicates}; band names must be unique.")
    indexes = []
    for band in requested:
        wanted = canonical_band_name(band)
        if wanted not in names:
            raise ValueError(f"Band {band!r} is not in {source}, which has bands {list(available)}.")
        indexes.append(names.index(wanted))
    return indexes
