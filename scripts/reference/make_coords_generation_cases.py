"""Golden case of the original for generating Coordinates (greedy, S2L2A -> coords), tiny architecture.

    PYTHONPATH=../shared/reference ref/bin/python scripts/reference/make_coords_generation_cases.py \
        ../shared/reference/fixtures tests/fixtures
Uses the test vocabulary tests/fixtures/coords_vocab.json (made by make_token_input_cases.py).
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from terratorch_reference import reference
from torch import nn


def main(source: str, target: str) -> None:
    reference()  # registers the original package modules
    generation = sys.modules["terratorch.models.backbones.terramind.model.terramind_generation"]
    tm_utils = sys.modules["terratorch.models.backbones.terramind.model.tm_utils"]
    text = __import__("terratorch.models.backbones.terramind.tokenizer.text.text_tokenizer", fromlist=["x"])
    vocab = str(Path(target) / "coords_vocab.json")
    model = generation.TerraMindGeneration(
        modalities=["S2L2A"], output_modalities=["Coordinates"], decoding_steps=1, temps=0.0, dim=16,
        encoder_depth=3, decoder_depth=2, num_heads=2, qkv_bias=True, proj_bias=True, mlp_bias=True,
        norm_layer=partial(tm_utils.LayerNorm, eps=1e-6, bias=False), act_layer=nn.GELU, gated_mlp=False,
        tokenizer_dict={"coords": lambda pretrained: text.CoordsTokenizer(vocab)},
    )  # fmt: skip
    state = torch.load(Path(source) / "terramind_tiny_original.pt", weights_only=True)
    own = model.state_dict()
    model.load_state_dict({"sampler.model." + k: v for k, v in state.items() if "sampler.model." + k in own},
                          strict=False)  # fmt: skip
    model.eval()
    captured = {}
    generate = model.sampler.generate
    model.sampler.generate = lambda *a, **k: captured.update(out := generate(*a, **k)) or out
    s2 = torch.from_numpy(np.random.default_rng(7100).standard_normal([2, 12, 224, 224]).astype("float32"))
    with torch.no_grad():
        coordinates = model(S2L2A=s2)["Coordinates"]
    case = {"name": "generate_S2L2A_to_Coordinates_greedy", "inputs": {"S2L2A": [7100, [2, 12, 224, 224]]},
            "tokens": captured["coords"]["tensor"], "coordinates": torch.tensor(coordinates)}  # fmt: skip
    torch.save([case], Path(target) / "terramind_coords_generation_cases.pt")
    print(case["tokens"], case["coordinates"])


if __name__ == "__main__":
    main(*sys.argv[1:])
