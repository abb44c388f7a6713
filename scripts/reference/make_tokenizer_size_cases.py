"""Golden cases of the original tokenizers at a size other than their positional grid (issue 3).

The released tokenizers hold a 16x16 positional grid (256 px) and are used on 224 px tiles, so the encoder and the
ViT decoder interpolate it bicubically. The shared fixtures only run the native size; this adds a
48 px LULC case (4x4 grid -> 3x3) and a 96 px S1GRD case (-> 6x6) with the narrow golden tokenizers of
../shared/reference/fixtures (built here as the fixtures were). Run in the reference venv:

    PYTHONPATH=../shared/reference ref/bin/python scripts/reference/make_tokenizer_size_cases.py \
        ../shared/reference/fixtures tests/fixtures

Inputs: `default_rng(seed).standard_normal(shape)` / `default_rng(seed).integers(0, n_classes, shape)`; the
diffusion decode uses 2 DDIM steps from `torch.randn((B, C, H, W), generator=torch.Generator().manual_seed(11))`.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from terratorch_reference import reference


def main(source: str, target: str) -> None:
    reference()
    vqvae = sys.modules["terratorch.models.backbones.terramind.tokenizer.vqvae"]
    vit = sys.modules["terratorch.models.backbones.terramind.tokenizer.models.vit_models"]
    unet = sys.modules["terratorch.models.backbones.terramind.tokenizer.models.unet.unet"]
    mini = dict(dim_tokens=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True)
    vit.vit_mini_enc = lambda **kw: vit.ViTEncoder(**mini, **{k: v for k, v in kw.items() if k in (
        "in_channels", "patch_size", "resolution", "patch_proj", "post_mlp")})  # fmt: skip
    vit.vit_mini_dec = lambda **kw: vit.ViTDecoder(**mini, **{k: v for k, v in kw.items() if k in (
        "out_channels", "patch_size", "resolution", "patch_proj", "post_mlp", "out_conv")})  # fmt: skip
    unet.unet_mini = partial(unet.PatchedUNetCondCat, patch_size=4, model_channels=32, num_res_blocks=1,
                             attention_resolutions=[2], channel_mult=(1, 2), num_heads=1)  # fmt: skip
    common = dict(image_size=64, enc_type="vit_mini_enc", post_mlp=True, patch_size=16, quant_type="fsq", latent_dim=5)
    lulc = vqvae.VQVAE(n_channels=10, dec_type="vit_mini_dec", codebook_size="7-5-5-5-5", **common)
    s1 = vqvae.DiVAE(n_channels=2, dec_type="unet_mini", codebook_size="8-8-8-6-5", clip_sample=True,
                     prediction_type="sample", **common)  # fmt: skip
    for model, file in ((lulc, "tokenizer_lulc_vqvae_original.pt"), (s1, "tokenizer_s1grd_divae_original.pt")):
        model.load_state_dict(torch.load(Path(source) / file, weights_only=True), strict=True)
        model.eval()
    cases = {}
    with torch.no_grad():
        spec = [600, [1, 48, 48], 10]
        classes = torch.from_numpy(np.random.default_rng(spec[0]).integers(0, spec[2], size=spec[1]))
        quant, _, tokens = lulc.encode(classes)
        cases["lulc_vqvae_48"] = {"input": {"classes": spec}, "tokens": tokens, "quant": quant,
                                  "decoded": lulc.decode_tokens(tokens)}  # fmt: skip
        spec = [601, [2, 2, 96, 96]]
        pixels = torch.from_numpy(np.random.default_rng(spec[0]).standard_normal(spec[1]).astype("float32"))
        quant, _, tokens = s1.encode(pixels)
        decoded = s1.decode_tokens(tokens, timesteps=2, generator=torch.Generator().manual_seed(11), image_size=96,
                                   verbose=False)  # fmt: skip
        cases["s1grd_divae_96"] = {"input": {"normal": spec}, "tokens": tokens, "quant": quant, "decoded": decoded,
                                   "decode_args": {"timesteps": 2, "generator_seed": 11, "image_size": 96}}  # fmt: skip
    torch.save(cases, Path(target) / "tokenizer_size_cases.pt")
    print({k: {n: tuple(v.shape) for n, v in c.items() if torch.is_tensor(v)} for k, c in cases.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
