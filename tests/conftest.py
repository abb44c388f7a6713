"""Shared fixtures: converted golden checkpoints of the original and tiny random models."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "terramesh"  # copied from ../shared: tests run without it
SAMPLE_TILE = "282D_485L_3_3.tif"
# The tiny two-modality encoder that the scene, prediction and export tests build their task models on.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_decoder_layers=1, hidden_act="gelu",
            gated_mlp=False, modalities=["S2L2A", "S1RTC"])  # fmt: skip


def sample_tile(modality: str, tile: str = SAMPLE_TILE) -> str:
    """The path of a sample tile's GeoTIFF of `modality`."""
    return str(SAMPLES / modality / tile)


def pytest_configure(config):
    from upstream.fetch import register_markers  # Transformers' common tests (tests/upstream)

    register_markers(config)
ARCHITECTURES = ("tiny", "base")


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and least disturbed by other jobs) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_input(spec: list) -> torch.Tensor:
    """Inputs of the golden cases: [seed, shape] -> default_rng(seed).standard_normal(shape) as float32."""
    seed, shape = spec[0], spec[1]
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype("float32"))


def relative_error(actual, reference) -> float:
    """max |a - r| / max |r|, recursing into dicts (the issue's per-layer tolerance measure)."""
    if isinstance(reference, dict):
        assert set(actual) == set(reference), (set(actual), set(reference))
        return max(relative_error(actual[k], reference[k]) for k in reference)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    return ((actual.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def load_cases(arch: str, kind: str) -> list[dict]:
    cases = torch.load(FIXTURES / f"terramind_{arch}_cases.pt", weights_only=True)
    return [c for c in cases if c["kind"] == kind]


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The narrow golden checkpoints of the original (tiny- and base-style), converted with our converter."""
    from terramind.conversion.checkpoint import convert_checkpoint

    out = {}
    for arch in ARCHITECTURES:
        target = tmp_path_factory.mktemp(f"converted_{arch}")
        convert_checkpoint(fixture_checkpoint(arch, tmp_path_factory.mktemp("original")), target,
                           config_overrides={"num_attention_heads": 2})  # fmt: skip
        out[arch] = target
    return out


def fixture_checkpoint(arch: str, folder: Path) -> Path:
    """The trimmed golden checkpoint with its coordinates token table padded back to the full 30000 rows
    (only the rows of the test vocabulary were kept; the others are never looked up)."""
    state = torch.load(FIXTURES / f"terramind_{arch}_original.pt", weights_only=True)
    key = "encoder_embeddings.coords.token_emb.weight"
    table = state[key]
    state[key] = torch.cat([table, torch.zeros(30000 - table.shape[0], table.shape[1])])
    path = folder / f"terramind_{arch}_original.pt"
    torch.save(state, path)
    return path


def tiny_config(**kwargs):
    from terramind import TerraMindConfig

    params = dict(hidden_size=32, num_hidden_layers=2, num_decoder_layers=1, num_attention_heads=2,
                  hidden_act="gelu", gated_mlp=False, qkv_bias=True, proj_bias=True, mlp_bias=True,
                  image_size=64, modalities=["S2L2A", "S1GRD"])  # fmt: skip
    params.update(kwargs)
    return TerraMindConfig(**params)


# The narrow tokenizer architectures of the golden files (fixtures/manifest.json, "tokenizers").
MINI_TOKENIZER = dict(image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
MINI_VIT_DECODER = dict(decoder_type="vit", decoder_patch_size=16, fsq_levels=[7, 5, 5, 5, 5])
MINI_DIFFUSION_DECODER = dict(decoder_type="patched_unet", decoder_patch_size=4, unet_model_channels=32,
                              unet_num_res_blocks=1, unet_attention_resolutions=[2], unet_channel_mult=[1, 2],
                              unet_num_heads=1, fsq_levels=[8, 8, 8, 6, 5])  # fmt: skip


def mini_tokenizer(modality: str, seed: int = 0):
    """A tiny random tokenizer with the codebook of the v1 `modality` tokenizer (LULC: ViT decoder, 10 classes)."""
    from terramind.configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from terramind.modalities import MODALITIES
    from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel

    torch.manual_seed(seed)
    if modality == "LULC":
        params = dict(MINI_TOKENIZER, num_channels=10, num_classes=10, **MINI_VIT_DECODER)
    else:
        params = dict(MINI_TOKENIZER, num_channels=MODALITIES[modality].num_channels, **MINI_DIFFUSION_DECODER)
    return TerraMindTokenizerModel(TerraMindTokenizerConfig(modality=modality, **params)).eval()


def coords_tokenizer():
    from terramind.tokenization_terramind_coords import TerraMindCoordsTokenizer

    return TerraMindCoordsTokenizer.from_vocabulary_file(FIXTURES / "coords_vocab.json")


def run_without_package(body: str, workdir: Path) -> str:
    """Run Python `body` in a fresh interpreter where `terramind` cannot be imported (even when installed),
    offline; returns stdout. For remote-code (trust_remote_code) checks."""
    import subprocess
    import sys
    import textwrap

    prelude = textwrap.dedent("""
        import importlib.abc, sys

        class NoTerramind(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "terramind":
                    raise ImportError("terramind is hidden in this test")

        sys.meta_path.insert(0, NoTerramind())
        sys.path = [p for p in sys.path if p not in ("", ".")]
        try:
            import terramind
            raise SystemExit("terramind should not be importable here")
        except ImportError:
            pass
    """)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@contextlib.contextmanager
def transformers_warnings():
    """Collect the messages Transformers logs at warning level (e.g. loading reports) inside the block."""
    import logging as pylogging

    from transformers.utils import logging

    records: list[str] = []
    handler = pylogging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    root = logging.get_logger("transformers")
    root.addHandler(handler)
    logging.set_verbosity_warning()
    try:
        yield records
    finally:
        logging.set_verbosity_error()
        root.removeHandler(handler)
