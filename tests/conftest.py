"""Shared fixtures: converted golden checkpoints of the original and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FIXTURES = Path(__file__).parent / "fixtures"
ARCHITECTURES = ("tiny", "base")


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
    from terramind.conversion import convert_checkpoint

    out = {}
    for arch in ARCHITECTURES:
        target = tmp_path_factory.mktemp(f"converted_{arch}")
        convert_checkpoint(FIXTURES / f"terramind_{arch}_original.pt", target,
                           config_overrides={"num_attention_heads": 2})  # fmt: skip
        out[arch] = target
    return out


def tiny_config(**kwargs):
    from terramind import TerraMindConfig

    params = dict(hidden_size=32, num_hidden_layers=2, num_decoder_layers=1, num_attention_heads=2,
                  hidden_act="gelu", gated_mlp=False, qkv_bias=True, proj_bias=True, mlp_bias=True,
                  image_size=64, modalities=["S2L2A", "S1GRD"])  # fmt: skip
    params.update(kwargs)
    return TerraMindConfig(**params)
