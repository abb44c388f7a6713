"""Golden cases of the original for tokenized and sequence encoder inputs (issue: LULC tokens, Coordinates).

Run in a separate venv with the original importable (see ../shared/reference/README.md):
    PYTHONPATH=../shared/reference ref/bin/python scripts/reference/make_token_input_cases.py \
        ../shared/reference/fixtures tests/fixtures
Inputs are seeded: images `default_rng(seed).standard_normal(shape)`, tokens `default_rng(seed).integers(0, vocab, shape)`;
coordinates are stored as given.
"""

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from terratorch_reference import reference
from torch import nn

ARCH = {
    "tiny": dict(qkv_bias=True, proj_bias=True, mlp_bias=True, act_layer=nn.GELU, gated_mlp=False),
    "base": dict(qkv_bias=False, proj_bias=False, mlp_bias=False, act_layer=nn.SiLU, gated_mlp=True),
}


def coords_vocabulary(path: Path) -> None:
    """A small WordLevel vocabulary with the original's special tokens and "lat=.. lon=.." words of a 0.25 grid
    around the test locations (the released vocabulary has the same word form)."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    specials = ["[PAD]", "[UNK]", "[SOS]", "[EOS]", "[S_0]", "[S_1]", "[S_2]"]
    words = [f"lat={v:.2f}" for v in np.arange(-90, 90.25, 0.25)] + [f"lon={v:.2f}" for v in np.arange(-180, 180.25, 0.25)]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tokenizer.save(str(path))


def main(source: str, target: str) -> None:
    reference()  # registers the original package modules
    vit_module = sys.modules["terratorch.models.backbones.terramind.model.terramind_vit"]
    tm_utils = sys.modules["terratorch.models.backbones.terramind.model.tm_utils"]
    text = __import__("terratorch.models.backbones.terramind.tokenizer.text.text_tokenizer", fromlist=["x"])
    target_dir = Path(target)
    vocab_path = target_dir / "coords_vocab.json"
    coords_vocabulary(vocab_path)
    cases = []
    for arch, extra in ARCH.items():
        state = torch.load(Path(source) / f"terramind_{arch}_original.pt", weights_only=True)
        for name, modalities, merge in (("s2l2a_lulc_tokens_mean", ["S2L2A", "LULC"], "mean"),
                                        ("s2l2a_lulc_tokens_dict", ["S2L2A", "LULC"], "dict"),
                                        ("s2l2a_coords_mean", ["S2L2A", "Coordinates"], "mean"),
                                        ("s2l2a_coords_dict", ["S2L2A", "Coordinates"], "dict")):  # fmt: skip
            vit = vit_module.TerraMindViT(modalities=modalities, merge_method=merge, dim=16, encoder_depth=3,
                                          num_heads=2, norm_layer=partial(tm_utils.LayerNorm, eps=1e-6, bias=False),
                                          **extra)  # fmt: skip
            own = vit.state_dict()
            vit.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
            vit.eval()
            inputs = {"S2L2A": [7000, [2, 12, 224, 224]]}
            feed = {"S2L2A": torch.from_numpy(np.random.default_rng(7000).standard_normal([2, 12, 224, 224])
                                              .astype("float32"))}  # fmt: skip
            if "LULC" in modalities:
                inputs["LULC_tokens"] = [7001, [2, 14, 14], 4375]
                feed["LULC"] = torch.from_numpy(np.random.default_rng(7001).integers(0, 4375, size=[2, 14, 14]))
            else:
                coords = torch.tensor([[8.5417, 47.3769], [-122.4194, 37.7749]])
                inputs["Coordinates"] = coords
                vit.tokenizer = {"coords": text.CoordsTokenizer(str(vocab_path))}
                feed["Coordinates"] = coords
            with torch.no_grad():
                outputs = vit(feed)
            cases.append({"name": name, "arch": arch, "build": {"modalities": modalities, "merge_method": merge},
                          "inputs": inputs, "outputs": outputs})  # fmt: skip
    torch.save(cases, target_dir / "terramind_token_input_cases.pt")
    print(json.dumps([c["name"] + "/" + c["arch"] for c in cases]))


if __name__ == "__main__":
    main(*sys.argv[1:])
