"""Golden cases of the original for Coordinates in generation (greedy, tiny architecture):

1. `generate_S2L2A_to_Coordinates_greedy`: S2L2A -> Coordinates.
2. `generate_S2L2A_to_Coordinates_LULC_stop`: S2L2A -> Coordinates -> LULC, the generated coordinates conditioning
   LULC; sample 1 of the input is constant (`constant_samples`). One row of the decoder's coordinates table (the
   stop sentinel [S_2], stored in the case as `decoder_coords_rows`) is set so that the greedy decoder emits [S_2]
   in sample 0 only: the original drops the sentinels and masks the padding of the shorter sample before LULC is
   generated.
3. `generate_Coordinates_to_LULC_S1GRD`: Coordinates alone -> LULC -> S1GRD, on the original's default 224 x 224
   grid.

Run in a separate venv with the original importable (see ../shared/reference/README.md):
    PYTHONPATH=../shared/reference ref/bin/python scripts/reference/make_coords_generation_cases.py tests/fixtures
It reads the trimmed golden checkpoint `terramind_tiny_original.pt` of that folder with its coordinates table padded
back as the tests do (`conftest.fixture_checkpoint`), and the test vocabulary `coords_vocab.json` (made by
make_token_input_cases.py). Image outputs are captured as tokens, before the original decodes them.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from terratorch_reference import reference
from torch import nn

COORDINATES = [[8.5417, 47.3769], [-122.4194, 37.7749]]  # lon, lat
STOP = 6  # [S_2] in the test vocabulary
CONSTANT = 2.0  # the value of sample 1 in the stop case


class Captured(Exception):
    """Stops the original after sampling, before it decodes image tokens with tokenizers the case does not need."""


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / "terramind_tiny_original.pt", weights_only=True)
    key = "encoder_embeddings.coords.token_emb.weight"
    state[key] = torch.cat([state[key], torch.zeros(30000 - state[key].shape[0], state[key].shape[1])])
    return state


def build(generation, tm_utils, text, vocab: str, state: dict, modalities: list, outputs: list) -> nn.Module:
    model = generation.TerraMindGeneration(
        modalities=modalities, output_modalities=outputs, decoding_steps=1, temps=0.0, dim=16, encoder_depth=3,
        decoder_depth=2, num_heads=2, qkv_bias=True, proj_bias=True, mlp_bias=True,
        norm_layer=partial(tm_utils.LayerNorm, eps=1e-6, bias=False), act_layer=nn.GELU, gated_mlp=False,
        tokenizer_dict={"coords": lambda pretrained: text.CoordsTokenizer(vocab)},
    )  # fmt: skip
    own = model.state_dict()
    model.load_state_dict({"sampler.model." + k: v for k, v in state.items() if "sampler.model." + k in own},
                          strict=False)  # fmt: skip
    return model.eval()


def run(model: nn.Module, inputs: dict) -> dict:
    """The sampler's output (tokens per output modality) of one greedy generation."""
    captured = {}
    generate = model.sampler.generate

    def capture(*args, **kwargs):
        captured.update(generate(*args, **kwargs))
        raise Captured

    model.sampler.generate = capture
    with torch.no_grad():
        try:
            model(dict(inputs))
        except Captured:
            pass
    model.sampler.generate = generate
    return captured


def stop_row(model: nn.Module, s2: torch.Tensor) -> torch.Tensor:
    """A [S_2] row of the decoder's coordinates table (its logits head is tied to it) with which the greedy decoder
    stops after two tokens in sample 0 and never in sample 1. It points along the final decoder state of sample 0 at
    the third step, partly made orthogonal to the states of the other steps and sample, with the length that leaves
    the widest margins (so that implementations equal to ~1e-4 make the same choices)."""
    states = []
    norm = model.sampler.model.decoder_norm
    hook = norm.register_forward_hook(lambda module, args, output: states.append(output[:, -1].detach()))
    run(model, {"S2L2A": s2})
    hook.remove()
    table = model.sampler.model.decoder_embeddings["coords"].token_emb.weight.detach()
    others = [i for i in range(table.shape[0]) if i != STOP]
    steps = torch.stack([states[step] for step in range(3)])  # (step, sample, D); steps 0, 1, 2 come first
    best = table.T[:, others]
    rivals = torch.einsum("ksd,dv->ksv", steps, best).max(dim=-1).values  # best other logit per step and sample
    target = steps[2, 0]
    other_states = torch.stack([steps[k, b] for k in range(3) for b in range(2) if (k, b) != (2, 0)])
    basis, _ = torch.linalg.qr(other_states.T)
    orthogonal = target - basis @ (basis.T @ target)
    chosen, widest = None, -1.0
    for mix in torch.linspace(0, 1, 21):
        direction = (1 - mix) * target + mix * orthogonal
        direction = direction / direction.norm()
        for length in torch.linspace(0.05, 5.0, 100):
            stop_logits = torch.einsum("ksd,d->ks", steps, direction) * length
            margins = rivals - stop_logits  # > 0: [S_2] loses
            margins[2, 0] = -margins[2, 0]  # sample 0, step 2: [S_2] must win
            margin = margins.min().item() - 1e-3 * length.item()  # states may differ by ~1e-3 between implementations
            if margin > widest:
                chosen, widest = direction * length, margin
    with torch.no_grad():
        model.sampler.model.decoder_embeddings["coords"].token_emb.weight[STOP] = chosen
    tokens = run(model, {"S2L2A": s2})["coords"]["tensor"]
    if [int((t != 0).sum()) for t in tokens] != [2, 3] or widest <= 0:
        raise SystemExit(f"no [S_2] row makes sample 0 (only) stop after two tokens (margin {widest:.4f})")
    print(f"[S_2] row: norm {chosen.norm():.3f}, smallest logit margin {widest:.4f}")
    return chosen.clone()


def main(folder: str) -> None:
    reference()  # registers the original package modules
    generation = sys.modules["terratorch.models.backbones.terramind.model.terramind_generation"]
    tm_utils = sys.modules["terratorch.models.backbones.terramind.model.tm_utils"]
    text = __import__("terratorch.models.backbones.terramind.tokenizer.text.text_tokenizer", fromlist=["x"])
    target = Path(folder)
    vocab = str(target / "coords_vocab.json")
    state = load_state(target)
    s2 = torch.from_numpy(np.random.default_rng(7100).standard_normal([2, 12, 224, 224]).astype("float32"))
    cases = []

    model = build(generation, tm_utils, text, vocab, state, ["S2L2A"], ["Coordinates"])
    with torch.no_grad():
        coordinates = model(S2L2A=s2)["Coordinates"]
    tokens = run(model, {"S2L2A": s2})["coords"]["tensor"]
    cases.append({"name": "generate_S2L2A_to_Coordinates_greedy", "inputs": {"S2L2A": [7100, [2, 12, 224, 224]]},
                  "tokens": tokens, "coordinates": torch.tensor(coordinates)})  # fmt: skip

    # The original finds the conditioning embedding of a generated output by "coords" (not "Coordinates").
    # Sample 1 is a constant image: the two samples' decoder states differ enough for [S_2] to end one of them only.
    model = build(generation, tm_utils, text, vocab, state, ["S2L2A"], ["coords", "LULC"])
    s2[1] = CONSTANT
    row = stop_row(model, s2)
    out = run(model, {"S2L2A": s2})
    cases.append({"name": "generate_S2L2A_to_Coordinates_LULC_stop", "inputs": {"S2L2A": [7100, [2, 12, 224, 224]]},
                  "constant_samples": {"S2L2A": {1: CONSTANT}}, "decoder_coords_rows": {STOP: row},
                  "outputs": ["Coordinates", "LULC"],
                  "tokens": {"Coordinates": out["coords"]["tensor"],
                             "LULC": out["tok_lulc@224"]["tensor"].reshape(2, 14, 14)}})  # fmt: skip

    model = build(generation, tm_utils, text, vocab, state, ["Coordinates"], ["LULC", "S1GRD"])
    out = run(model, {"Coordinates": torch.tensor(COORDINATES)})
    cases.append({"name": "generate_Coordinates_to_LULC_S1GRD", "inputs": {"Coordinates": torch.tensor(COORDINATES)},
                  "outputs": ["LULC", "S1GRD"],
                  "tokens": {"LULC": out["tok_lulc@224"]["tensor"].reshape(2, 14, 14),
                             "S1GRD": out["tok_sen1grd@224"]["tensor"].reshape(2, 14, 14)}})  # fmt: skip

    torch.save(cases, target / "terramind_coords_generation_cases.pt")
    for case in cases:
        print(case["name"], case["tokens"] if "greedy" in case["name"] else
              {k: v.flatten(1)[:, :6] for k, v in case["tokens"].items()})  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
