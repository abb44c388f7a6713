"""TerraMindTokenizerModel: parity with the original tokenizers, v1 presets, conversion round trips, dtypes, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURES, reference_input, relative_error, run_without_package
from huggingface_hub.errors import StrictDataclassError

from terramind.configuration_terramind_tokenizer import TOKENIZER_PRESETS, TerraMindTokenizerConfig
from terramind.conversion import ConversionError
from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel
from terramind.tokenizer_conversion import (
    convert_tokenizer_checkpoint,
    convert_tokenizer_state_dict,
    load_original_tokenizer,
    resolve_original_tokenizer_release,
)

V1_MODALITIES = ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI")
# The narrow architectures of the golden files (../shared/reference/fixtures/manifest.json, "tokenizers").
MINI = dict(image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
MINI_LULC = dict(MINI, num_channels=10, num_classes=10, decoder_type="vit", decoder_patch_size=16,
                 fsq_levels=[7, 5, 5, 5, 5])  # fmt: skip
MINI_S1GRD = dict(MINI, num_channels=2, decoder_type="patched_unet", decoder_patch_size=4, unet_model_channels=32,
                  unet_num_res_blocks=1, unet_attention_resolutions=[2], unet_channel_mult=[1, 2], unet_num_heads=1,
                  fsq_levels=[8, 8, 8, 6, 5])  # fmt: skip
CHECKPOINTS = {"lulc_vqvae": ("tokenizer_lulc_vqvae_original.pt", MINI_LULC),
               "s1grd_divae": ("tokenizer_s1grd_divae_original.pt", MINI_S1GRD)}  # fmt: skip


@pytest.fixture(scope="module")
def cases() -> dict:
    return torch.load(FIXTURES / "tokenizer_cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def models() -> dict[str, TerraMindTokenizerModel]:
    """The golden original tokenizers, converted."""
    return {name: load_original_tokenizer(FIXTURES / file, config=TerraMindTokenizerConfig(**params))
            for name, (file, params) in CHECKPOINTS.items()}  # fmt: skip


def case_input(case: dict) -> torch.Tensor:
    kind, spec = next(iter(case["input"].items()))
    if kind == "classes":  # [seed, shape, n_classes] -> class ids
        seed, shape, n_classes = spec
        return torch.from_numpy(np.random.default_rng(seed).integers(0, n_classes, size=shape))
    return reference_input(spec)


# ----------------------------------------------------------------------------- parity with the original
def test_lulc_vqvae_parity(models, cases):
    case, model = cases["lulc_vqvae"], models["lulc_vqvae"]
    with torch.no_grad():
        encoded = model.encode(case_input(case))
        decoded = model.decode_tokens(encoded.tokens)
    assert encoded.tokens.dtype == torch.int64 and encoded.tokens.shape == (2, 4, 4)
    assert torch.equal(encoded.tokens, case["tokens"].long())
    assert relative_error(encoded.quantized, case["quant"]) < 1e-4
    assert decoded.shape == (2, 10, 64, 64)
    assert relative_error(decoded, case["decoded"]) < 1e-3


def test_s1grd_diffusion_parity(models, cases):
    """3 DDIM steps ("trailing": 999, 666, 333, 0) from torch.randn((B, C, H, W), generator seed 7) on the CPU."""
    case, model = cases["s1grd_divae"], models["s1grd_divae"]
    args = case["decode_args"]
    with torch.no_grad():
        encoded = model.encode(case_input(case))
        decoded = model.decode_tokens(encoded.tokens, timesteps=args["timesteps"], image_size=args["image_size"],
                                      generator=torch.Generator().manual_seed(args["generator_seed"]))  # fmt: skip
    assert torch.equal(encoded.tokens, case["tokens"].long())
    assert relative_error(encoded.quantized, case["quant"]) < 1e-4
    assert relative_error(decoded, case["decoded"]) < 1e-3


def test_parity_at_another_size_than_the_positional_grid(models):
    """48 and 96 px on a 64 px (4x4) grid: bicubic interpolation of the positional grid, as the 256-grid v1
    tokenizers on 224 px tiles (cases made by scripts/reference/make_tokenizer_size_cases.py)."""
    size_cases = torch.load(FIXTURES / "tokenizer_size_cases.pt", weights_only=True)
    for name, model in (("lulc_vqvae_48", models["lulc_vqvae"]), ("s1grd_divae_96", models["s1grd_divae"])):
        case = size_cases[name]
        args = case.get("decode_args", {})
        generator = torch.Generator().manual_seed(args["generator_seed"]) if args else None
        with torch.no_grad():
            encoded = model.encode(case_input(case))
            decoded = model.decode_tokens(encoded.tokens, timesteps=args.get("timesteps"), generator=generator)
        assert torch.equal(encoded.tokens, case["tokens"].long()), name
        assert relative_error(encoded.quantized, case["quant"]) < 1e-4, name
        assert relative_error(decoded, case["decoded"]) < 1e-3, name


def test_forward_reconstructs_through_tokens(models, cases):
    case, model = cases["s1grd_divae"], models["s1grd_divae"]
    pixels = case_input(case)
    with torch.no_grad():
        out = model(pixels, timesteps=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out.tokens, case["tokens"].long())
    assert relative_error(out.reconstruction, case["decoded"]) < 1e-3
    reconstruction, quantized, tokens = model(pixels, timesteps=3, generator=torch.Generator().manual_seed(7),
                                              return_dict=False)  # fmt: skip
    assert torch.equal(reconstruction, out.reconstruction) and torch.equal(tokens, out.tokens)


def test_ddim_timesteps_as_the_original(models):
    scheduler = models["s1grd_divae"].noise_scheduler
    assert scheduler.timesteps(3) == [999, 666, 333, 0]
    fifty = scheduler.timesteps(50)
    assert len(fifty) == 50 and fifty[0] == 999 and fifty[-1] == 19
    assert scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR


def test_lulc_input_forms_agree(models, cases):
    model = models["lulc_vqvae"]
    classes = case_input(cases["lulc_vqvae"])  # (2, 1, 64, 64)
    one_hot = torch.nn.functional.one_hot(classes[:, 0], 10).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        reference = model.encode(classes).tokens
        for variant in (classes[:, 0], classes.float(), one_hot, one_hot.bool(), classes.int()):
            assert torch.equal(model.encode(variant).tokens, reference)


# ----------------------------------------------------------------------------- decoding behaviour
def test_seeded_decodes_reproducible_and_batched(models):
    model = models["s1grd_divae"]
    tokens = torch.randint(0, 15360, (3, 4, 4))
    with torch.no_grad():
        first = model.decode_tokens(tokens, timesteps=2, generator=torch.Generator().manual_seed(0))
        again = model.decode_tokens(tokens.reshape(3, 16), timesteps=2, generator=torch.Generator().manual_seed(0))
        other = model.decode_tokens(tokens, timesteps=2, generator=torch.Generator().manual_seed(1))
        # batched UNet evaluation equals per-sample evaluation
        quantized = model.tokens_to_quantized(tokens)
        noisy = torch.randn(3, 2, 64, 64)
        steps = torch.tensor([999, 500, 3])
        batched = model.decoder(noisy, steps, quantized)
        single = torch.cat([model.decoder(noisy[i : i + 1], steps[i : i + 1], quantized[i : i + 1]) for i in range(3)])
    assert first.shape == (3, 2, 64, 64) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.abs().max() <= 1.0 + 1e-6  # thresholded to [-1, 1] at the last step
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_diffusion_decoding_shows_progress(models, capsys):
    tokens = torch.randint(0, 15360, (1, 4, 4))
    models["s1grd_divae"].decode_tokens(tokens, timesteps=3, progress=True)
    err = capsys.readouterr().err
    assert "diffusion decoding" in err and "0/4 [" in err  # a bar over the 4 UNet passes of 3 steps (999 ... 0)
    models["s1grd_divae"].decode_tokens(tokens, timesteps=3)
    assert capsys.readouterr().err == ""


def test_tokenizer_of_another_modality_is_refused():
    from conftest import mini_tokenizer

    from terramind.modeling_terramind_tokenizer import check_tokenizer_modality

    s1grd = mini_tokenizer("S1GRD")
    check_tokenizer_modality(s1grd, "S1GRD")
    check_tokenizer_modality(s1grd, "S1GRD_TOKENS")  # the token modality of the same tokenizer
    with pytest.raises(ValueError, match="The tokenizer for LULC is the S1GRD tokenizer"):
        check_tokenizer_modality(s1grd, "LULC")


def test_vit_decoder_batched_and_sizes(models):
    model = models["lulc_vqvae"]
    tokens = torch.randint(0, 4375, (2, 3, 5))  # non-square grid
    with torch.no_grad():
        both = model.decode_tokens(tokens)
        single = torch.cat([model.decode_tokens(tokens[i : i + 1]) for i in range(2)])
    assert both.shape == (2, 10, 48, 80)
    torch.testing.assert_close(both, single, rtol=1e-5, atol=1e-6)


def bf16_copy(model: TerraMindTokenizerModel) -> TerraMindTokenizerModel:
    copy = TerraMindTokenizerModel(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.to(torch.bfloat16).eval()


def test_bf16_encode_and_decode(models):
    fp32 = models["s1grd_divae"]
    model = bf16_copy(fp32)
    pixels = reference_input([3, [2, 2, 64, 64]])
    with torch.no_grad():
        reference = fp32(pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
        out = model(pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
        logits = bf16_copy(models["lulc_vqvae"]).decode_tokens(torch.randint(0, 4375, (2, 4, 4)))
    assert out.tokens.dtype == torch.int64 and out.quantized.dtype == torch.float32
    assert (out.tokens == reference.tokens).float().mean() > 0.9
    assert torch.isfinite(out.reconstruction).all()
    assert relative_error(out.reconstruction, reference.reconstruction) < 0.1
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_eager_attention_matches_sdpa(cases):
    file, params = CHECKPOINTS["s1grd_divae"]
    model = load_original_tokenizer(FIXTURES / file, config=TerraMindTokenizerConfig(**params))
    pixels = case_input(cases["s1grd_divae"])
    with torch.no_grad():
        sdpa = model(pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
        model.set_attn_implementation("eager")
        assert model.decoder.middle_block[1].attention.config._attn_implementation == "eager"
        eager = model(pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(eager.tokens, sdpa.tokens)
    assert relative_error(eager.reconstruction, sdpa.reconstruction) < 1e-4


def test_token_codebook_round_trip(models):
    model = models["s1grd_divae"]
    tokens = torch.arange(15360).reshape(1, 120, 128)
    codes = model.tokens_to_quantized(tokens)
    assert codes.min() >= 0 and codes.max() <= 1
    # codes are on the quantizer's grid: re-quantizing them (inverse sigmoid) gives the same ids back
    logits = torch.logit(codes.clamp(1e-6, 1 - 1e-6).double()).float()
    _, again = model.quantizer(logits)
    assert torch.equal(again, tokens)


# ----------------------------------------------------------------------------- v1 presets and conversion
@pytest.fixture(scope="module")
def v1_shapes() -> dict[str, dict[str, list[int]]]:
    return json.loads((FIXTURES / "v1_tokenizer_shapes.json").read_text())


@pytest.mark.parametrize("modality", V1_MODALITIES)
def test_presets_have_the_released_shapes(v1_shapes, modality):
    """Built on the meta device: a state dict of the released shapes converts to exactly our parameters and loads."""
    config = TerraMindTokenizerConfig.from_modality(modality)
    with torch.device("meta"):
        model = TerraMindTokenizerModel(config)
    layout = v1_shapes[f"TerraMind_Tokenizer_{modality}.pt"]
    released = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    converted = convert_tokenizer_state_dict(released, config)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_preset_facts():
    assert TerraMindTokenizerConfig.from_modality("S2L2A").codebook_size == 15360
    lulc = TerraMindTokenizerConfig.from_modality("lulc")
    assert (lulc.codebook_size, lulc.decoder_type, lulc.num_classes) == (4375, "vit", 10)
    for alias, name in (("sen1grd", "S1GRD"), ("S1RTC_TOKENS", "S1RTC"), ("tok_dem@224", "DEM"), ("NDVI", "NDVI")):
        config = TerraMindTokenizerConfig.from_modality(alias)
        assert config.modality == name and config.num_channels == TOKENIZER_PRESETS[name]["num_channels"]
        assert config.is_diffusion and config.prediction_type == "sample" and config.zero_terminal_snr
        assert config.thresholding and config.clip_sample and config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="no tokenizer"):
        TerraMindTokenizerConfig.from_modality("RGB")


@pytest.fixture
def mini_presets(monkeypatch, tmp_path):
    """Make the golden files look like a release: v1 presets swapped for the narrow architectures, own cache."""
    monkeypatch.setitem(TOKENIZER_PRESETS, "S1GRD", MINI_S1GRD)
    monkeypatch.setitem(TOKENIZER_PRESETS, "LULC", MINI_LULC)
    monkeypatch.setenv("TERRAMIND_CACHE", str(tmp_path / "cache"))
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(FIXTURES / "tokenizer_s1grd_divae_original.pt", release / "TerraMind_Tokenizer_S1GRD.pt")
    return release


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_convert_save_load_round_trip(models, mini_presets, tmp_path):
    out = convert_tokenizer_checkpoint(mini_presets / "TerraMind_Tokenizer_S1GRD.pt", tmp_path / "hf", "S1GRD")
    loaded = TerraMindTokenizerModel.from_pretrained(out)
    assert loaded.config.modality == "S1GRD" and loaded.config.fsq_levels == [8, 8, 8, 6, 5]
    assert_same_weights(loaded, models["s1grd_divae"])
    pixels = reference_input([9, [1, 2, 64, 64]])
    with torch.no_grad():
        a = loaded(pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
        b = models["s1grd_divae"](pixels, timesteps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.tokens, b.tokens)


def test_from_pretrained_converts_an_original_release_once(models, mini_presets, monkeypatch):
    first = TerraMindTokenizerModel.from_pretrained(mini_presets)
    assert_same_weights(first, models["s1grd_divae"])
    cached = resolve_original_tokenizer_release(mini_presets)
    assert cached is not None and "TerraMind_Tokenizer_S1GRD" in cached

    def fail(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("terramind.tokenizer_conversion.convert_tokenizer_checkpoint", fail)
    assert resolve_original_tokenizer_release(mini_presets) == cached
    again = TerraMindTokenizerModel.from_pretrained(mini_presets / "TerraMind_Tokenizer_S1GRD.pt")
    assert_same_weights(again, first)
    assert resolve_original_tokenizer_release(cached) is None  # a converted folder is left to Transformers


def test_conversion_errors(mini_presets, tmp_path):
    checkpoint = mini_presets / "TerraMind_Tokenizer_S1GRD.pt"
    with pytest.raises(ConversionError, match="is the S1GRD tokenizer, not LULC"):
        convert_tokenizer_checkpoint(checkpoint, tmp_path / "x", "LULC")
    renamed = tmp_path / "tokenizer.pt"
    shutil.copy(checkpoint, renamed)
    with pytest.raises(ConversionError, match="patched UNet"):  # LULC (ViT decoder) preset, diffusion checkpoint
        convert_tokenizer_checkpoint(renamed, tmp_path / "x", "LULC")
    with pytest.raises(ConversionError, match="modality"):
        convert_tokenizer_checkpoint(renamed, tmp_path / "x")
    with pytest.raises(ConversionError, match="no tokenizer"):
        convert_tokenizer_checkpoint(renamed, tmp_path / "x", "RGB")
    state = torch.load(checkpoint, weights_only=True)
    state["decoder.something_else.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="Unexpected keys"):
        load_original_tokenizer(state, "S1GRD")
    with pytest.raises(ConversionError, match="does not fit"):
        load_original_tokenizer(checkpoint, config=TerraMindTokenizerConfig(**{**MINI_S1GRD, "num_channels": 3}))
    with pytest.raises(ConversionError, match="not a TerraMind tokenizer"):
        load_original_tokenizer({"weight": torch.zeros(1)}, "S1GRD")


def test_remote_code_load_without_package(models, tmp_path):
    """A saved tokenizer loads with AutoModel + trust_remote_code where `terramind` is not importable."""
    TerraMindTokenizerConfig.register_for_auto_class()
    TerraMindTokenizerModel.register_for_auto_class("AutoModel")
    model = models["lulc_vqvae"]
    model.save_pretrained(tmp_path / "model")
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_terramind_tokenizer.TerraMindTokenizerModel"  # a string, not a pair
    tokens = torch.randint(0, 4375, (1, 4, 4))
    with torch.no_grad():
        torch.save({"tokens": tokens, "decoded": model.decode_tokens(tokens)}, tmp_path / "io.pt")
    stdout = run_without_package(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        io = torch.load({str(tmp_path / "io.pt")!r})
        torch.testing.assert_close(model.decode_tokens(io["tokens"]), io["decoded"])
        print("REMOTE_OK", type(model).__name__)
    """, tmp_path)
    assert "REMOTE_OK TerraMindTokenizerModel" in stdout


# ----------------------------------------------------------------------------- configuration and bad input
def test_config_round_trip(tmp_path):
    config = TerraMindTokenizerConfig.from_modality("LULC")
    config.save_pretrained(tmp_path)
    loaded = TerraMindTokenizerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict() and loaded.model_type == "terramind_tokenizer"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fsq_levels=[8, 1]), "fsq_levels"),
        (dict(latent_dim=4), "latent_dim"),
        (dict(decoder_type="gan"), "decoder_type"),
        (dict(hidden_size=30), "divisible"),
        (dict(image_size=250), "image_size"),
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(num_classes=10), "num_classes"),
        (dict(unet_model_channels=40), "unet_num_groups"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(StrictDataclassError, match=match):
        TerraMindTokenizerConfig(**kwargs)


def test_bad_input_errors(models):
    diffusion, lulc = models["s1grd_divae"], models["lulc_vqvae"]
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        diffusion.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        diffusion.encode(torch.zeros(1, 2, 60, 64))
    with pytest.raises(ValueError, match="NaN"):
        diffusion.encode(torch.full((1, 2, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="Class ids must be in"):
        lulc.encode(torch.full((1, 64, 64), 10))
    with pytest.raises(ValueError, match="Class ids must be in"):
        lulc.encode(torch.full((1, 1, 64, 64), -1))
    with pytest.raises(ValueError, match="integer class ids"):
        lulc.encode(torch.full((1, 64, 64), 0.5))
    with pytest.raises(ValueError, match="class ids"):
        lulc.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 15359\]"):
        diffusion.decode_tokens(torch.full((1, 4, 4), 15360))
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 4374\]"):
        lulc.decode_tokens(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="integer tensor"):
        lulc.decode_tokens(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="square grid"):
        lulc.decode_tokens(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="timesteps"):
        diffusion.decode_tokens(torch.zeros(1, 4, 4, dtype=torch.long), timesteps=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        diffusion.decode_tokens(torch.zeros(1, 4, 4, dtype=torch.long), timesteps=1, image_size=60)
    with pytest.raises(ValueError, match="image_size"):
        lulc.decode_tokens(torch.zeros(1, 4, 4, dtype=torch.long), image_size=32)
