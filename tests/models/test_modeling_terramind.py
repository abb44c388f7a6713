"""TerraMindModel: parity with the original encoder, round trips, dtypes, checkpointing, remote code, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, load_cases, reference_input, relative_error, run_without_package, tiny_config

from terramind import TerraMindForGeneration, TerraMindModel

TOLERANCE = 1e-4


def run_case(model: TerraMindModel, case: dict):
    inputs = {name: reference_input(spec) for name, spec in case["inputs"].items()}
    with torch.no_grad():
        if case.get("as_tensor"):
            return model(next(iter(inputs.values())), output_hidden_states=True)
        return model(**inputs, output_hidden_states=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_backbone_parity_every_layer(converted, arch):
    """Each golden case of the original: block i output == hidden_states[i+1], normed output == last_hidden_state."""
    cases = load_cases(arch, "backbone")
    assert len(cases) == 8
    for case in cases:
        build = case["build"]
        model = TerraMindModel.from_pretrained(converted[arch], modalities=build["modalities"],
                                               merge_method=build["merge_method"], bands=build.get("bands")).eval()  # fmt: skip
        output = run_case(model, case)
        reference = case["outputs"]
        ours = list(output.hidden_states[1 : len(reference)]) + [output.last_hidden_state]
        errors = [relative_error(a, r) for a, r in zip(ours, reference, strict=True)]
        assert max(errors) < TOLERANCE, (case["name"], errors)


def test_band_subset_takes_pretrained_columns_by_name(converted):
    full = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"]).eval()
    bands = ["NIR_NARROW", "RED", "GREEN", "BLUE"]
    subset = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"], bands={"S2L2A": bands}).eval()
    order = list(full.encoder_embeddings["S2L2A"].proj.weight.shape)  # unchanged pretrained layout
    assert list(subset.encoder_embeddings["S2L2A"].proj.weight.shape) == order
    x = torch.randn(1, 4, 32, 32)
    padded = torch.zeros(1, 12, 32, 32)
    for i, band in enumerate(bands):
        padded[:, ["COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD",
                   "NIR_NARROW", "WATER_VAPOR", "SWIR_1", "SWIR_2"].index(band)] = x[:, i]  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(subset(x).last_hidden_state, full(padded).last_hidden_state)


def test_unknown_bands_get_fresh_columns(converted):
    model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"],
                                           bands={"S2L2A": ["RED", "PANCHROMATIC", "THERMAL_1"]})  # fmt: skip
    embedding = model.encoder_embeddings["S2L2A"]
    assert embedding.new_bands_proj.weight.shape == (16, 2 * 16 * 16)
    assert embedding.new_bands_proj.weight.abs().sum() > 0
    assert model(torch.randn(2, 3, 32, 32)).last_hidden_state.shape == (2, 4, 16)


def test_save_and_reload_identical(converted, tmp_path):
    model = TerraMindModel.from_pretrained(converted["base"], modalities=["S2L2A", "S1GRD"], merge_method="concat")
    model.eval()
    x = {"S2L2A": torch.randn(1, 12, 48, 32), "S1GRD": torch.randn(1, 2, 48, 32)}
    model.save_pretrained(tmp_path)
    again = TerraMindModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**x).last_hidden_state, again(**x).last_hidden_state, rtol=0, atol=0)
        # concat with a missing modality uses the (saved) learned token
        torch.testing.assert_close(model(S1GRD=x["S1GRD"]).last_hidden_state,
                                   again(S1GRD=x["S1GRD"]).last_hidden_state, rtol=0, atol=0)  # fmt: skip
    assert model(S1GRD=x["S1GRD"]).last_hidden_state.shape == (1, 6, 32)


def test_generation_folder_round_trip_keeps_ties(converted, tmp_path):
    model = TerraMindForGeneration.from_pretrained(converted["tiny"])
    lulc = model.decoder_embeddings["LULC"]
    assert lulc.to_logits.weight is lulc.token_emb.weight
    assert lulc.mod_emb is model.terramind.encoder_embeddings["LULC"].mod_emb
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert "decoder_embeddings.LULC.to_logits.weight" not in keys and "decoder_embeddings.LULC.mod_emb" not in keys
    again = TerraMindForGeneration.from_pretrained(tmp_path)
    assert again.decoder_embeddings["LULC"].to_logits.weight is again.decoder_embeddings["LULC"].token_emb.weight
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_bf16_load_runs(converted):
    model = TerraMindModel.from_pretrained(converted["base"], modalities=["S2L2A"], dtype=torch.bfloat16).eval()
    assert model.encoder.layer[0].mlp.fc1.weight.dtype == torch.bfloat16
    x = torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        out = model(x).last_hidden_state
        reference = TerraMindModel.from_pretrained(converted["base"], modalities=["S2L2A"]).eval()(x).last_hidden_state
    assert out.dtype == torch.bfloat16
    assert relative_error(out, reference) < 0.05


def test_eager_and_sdpa_agree(converted):
    x = torch.randn(2, 12, 32, 32)
    outs = []
    for implementation in ("eager", "sdpa"):
        model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"],
                                               attn_implementation=implementation).eval()  # fmt: skip
        with torch.no_grad():
            outs.append(model(x).last_hidden_state)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = TerraMindModel(tiny_config(hidden_dropout=0.0))
    x = torch.randn(2, 12, 32, 32)

    def grads():
        model.zero_grad()
        model(S2L2A=x).last_hidden_state.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    plain = grads()
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_inputs_as_dict_kwargs_or_tensor_and_any_order():
    model = TerraMindModel(tiny_config(merge_method="dict")).eval()
    s2, s1 = torch.randn(1, 12, 32, 48), torch.randn(1, 2, 32, 48)
    with torch.no_grad():
        a = model({"S1GRD": s1, "S2L2A": s2}).last_hidden_state
        b = model(S2L2A=s2, S1GRD=s1).last_hidden_state
        c = model(s2).last_hidden_state
    assert list(a) == ["S2L2A", "S1GRD"]  # configured order, whatever the input order
    torch.testing.assert_close(a["S2L2A"], b["S2L2A"])
    assert a["S2L2A"].shape == (1, 6, 32) and c["S2L2A"].shape == (1, 6, 32)


def test_aliases_and_register_tokens():
    model = TerraMindModel(tiny_config(modalities=["S2L1C_L8", "sen1grd"], num_register_tokens=2,
                                       merge_method="dict")).eval()  # fmt: skip
    out = model(S2L1C_L8=torch.randn(1, 13, 32, 32), sen1grd=torch.randn(1, 2, 32, 32)).last_hidden_state
    assert list(out) == ["register_tokens", "S2L1C_L8", "sen1grd"]
    assert out["register_tokens"].shape == (1, 2, 32)


def test_new_modality_and_default_image():
    model = TerraMindModel(tiny_config(modalities=["S2L2A", {"PLANET": 4}], merge_method="mean")).eval()
    out = model(PLANET=torch.randn(2, 4, 32, 32)).last_hidden_state
    assert out.shape == (2, 4, 32)
    default = TerraMindModel(tiny_config(modalities=None, in_chans=5))
    assert list(default.encoder_embeddings) == ["image"]
    assert default(torch.randn(1, 5, 16, 16)).last_hidden_state.shape == (1, 1, 32)


def test_new_modality_named_like_a_pretrained_one(converted, tmp_path):
    """{"NDVI": 1} is a new raw patch embedding (no NDVI tokenizer, offline), fresh even where the checkpoint holds
    the pretrained tokenized NDVI under that name; it saves and reloads as built."""
    from safetensors.torch import load_file

    from terramind.modeling_terramind import TerraMindPatchEmbedding

    model, info = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A", {"NDVI": 1}],
                                                 merge_method="dict", output_loading_info=True)  # fmt: skip
    embedding = model.encoder_embeddings["NDVI"]
    assert isinstance(embedding, TerraMindPatchEmbedding) and embedding.proj.in_features == 16 * 16
    pretrained = load_file(converted["tiny"] / "model.safetensors")["terramind.encoder_embeddings.NDVI.mod_emb"]
    assert not torch.equal(embedding.mod_emb, pretrained)
    assert {"encoder_embeddings.NDVI.proj.weight", "encoder_embeddings.NDVI.mod_emb"} <= set(info["missing_keys"])
    inputs = {"S2L2A": torch.randn(2, 12, 32, 32), "NDVI": torch.rand(2, 1, 32, 32)}
    model.eval()
    with torch.no_grad():
        out = model(**inputs).last_hidden_state
    assert list(out) == ["S2L2A", "NDVI"] and out["NDVI"].shape == (2, 4, 16)
    model.save_pretrained(tmp_path)
    again = TerraMindModel.from_pretrained(tmp_path).eval()
    assert again.config.modalities == ["S2L2A", {"NDVI": 1}]
    assert torch.equal(again.encoder_embeddings["NDVI"].mod_emb, embedding.mod_emb)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).last_hidden_state["NDVI"], out["NDVI"])
    # a converted release whose config names the new modality: the config round-trips, the weights stay fresh
    from conftest import fixture_checkpoint

    from terramind import TerraMindConfig
    from terramind.conversion.checkpoint import convert_checkpoint

    overrides = {"num_attention_heads": 2, "modalities": ["S2L2A", {"NDVI": 1}]}
    folder = convert_checkpoint(fixture_checkpoint("tiny", tmp_path), tmp_path / "new", config_overrides=overrides)
    assert TerraMindConfig.from_pretrained(folder).modalities == ["S2L2A", {"NDVI": 1}]
    converted_model = TerraMindModel.from_pretrained(folder)
    assert not torch.equal(converted_model.encoder_embeddings["NDVI"].mod_emb, pretrained)
    with pytest.raises(ValueError, match="input_tokens takes token grids"):
        model(S2L2A=inputs["S2L2A"], input_tokens={"NDVI": torch.zeros(2, 2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="Unknown input modality 'ndvi'"):
        model(S2L2A=inputs["S2L2A"], ndvi=inputs["NDVI"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(modalities=["NDVI", {"NDVI": 1}]), "configured twice: as the pretrained 'NDVI' and as a new modality"),
        (dict(modalities=["S2L2A", {"LULC": 10}], tim_modalities=["S1GRD"]), "pretrained modalities only"),
        (dict(modalities=[{"NDVI": 0}]), "positive int"),
        (dict(modalities=["S1GRD"], bands={"S1GRD": [2]}), "indices 0..1"),
        (dict(modalities=["S1GRD"], bands={"S1GRD": [True]}), "Field 'bands'"),
        (dict(modalities=["S1GRD"], bands={"S1GRD": [0, "VV"]}), "distinct bands"),
    ],
)
def test_modality_config_errors(config, message):
    from huggingface_hub.errors import StrictDataclassError

    from terramind import TerraMindConfig

    with pytest.raises(StrictDataclassError, match=message):
        TerraMindConfig(**config)


def test_integer_bands_are_pretrained_positions(converted, tmp_path):
    """TerraTorch configs write `S1GRD: [0, 1]`: indices into the pretrained bands (here VH, VV)."""
    by_index = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S1GRD"], bands={"S1GRD": [1, 0]}).eval()
    by_name = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S1GRD"],
                                             bands={"S1GRD": ["VH", "VV"]}).eval()  # fmt: skip
    assert by_index.config.band_names("S1GRD") == ["VH", "VV"]
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(by_index(x).last_hidden_state, by_name(x).last_hidden_state)
        plain = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S1GRD"]).eval()
        torch.testing.assert_close(by_index(x).last_hidden_state, plain(x.flip(1)).last_hidden_state)
    by_index.save_pretrained(tmp_path)
    assert TerraMindModel.from_pretrained(tmp_path).config.bands == {"S1GRD": [1, 0]}


def test_ignore_unknown_modalities_warns_and_drops():
    """Inputs of unconfigured modalities raise; with ignore_unknown_modalities=True they are dropped with a warning,
    as the original does."""
    import logging as pylogging

    from transformers.utils import logging

    x = {"S2L2A": torch.randn(1, 12, 32, 32), "S1RTC": torch.randn(1, 2, 32, 32), "FOO": torch.randn(1, 1, 32, 32)}
    strict = TerraMindModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="Unknown input modality 'S1RTC'"):
        strict(**x)
    lenient = TerraMindModel(tiny_config(ignore_unknown_modalities=True)).eval()
    lenient.load_state_dict(strict.state_dict())
    records: list[str] = []
    handler = pylogging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    module_logger = logging.get_logger("terramind.modeling_terramind")
    module_logger.addHandler(handler)
    try:
        with torch.no_grad():
            out = lenient(**x, FOO_nodata_mask=torch.zeros(1, 32, 32, dtype=torch.bool)).last_hidden_state
    finally:
        module_logger.removeHandler(handler)
    assert any("['S1RTC', 'FOO']" in r and "ignore_unknown_modalities" in r for r in records), records
    with torch.no_grad():
        torch.testing.assert_close(out, strict(S2L2A=x["S2L2A"]).last_hidden_state)
    with pytest.raises(ValueError, match="No input of a configured modality"):
        lenient(FOO=x["FOO"])


def test_modality_drop_in_training_only():
    torch.manual_seed(0)
    model = TerraMindModel(tiny_config(modality_drop_rate=1.0, merge_method="dict"))
    x = {"S2L2A": torch.randn(1, 12, 32, 32), "S1GRD": torch.randn(1, 2, 32, 32)}
    model.train()
    assert len(model(**x).last_hidden_state) == 1  # all but one dropped
    model.eval()
    assert len(model(**x).last_hidden_state) == 2


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"S2L2A": torch.randn(1, 11, 32, 32)}, "expected 12 channels, got 11"),
        ({"S2L2A": torch.randn(1, 12, 30, 32)}, "multiples of 16"),
        ({"S1RTC": torch.randn(1, 2, 32, 32)}, "Unknown input modality 'S1RTC'"),
        ({"NOPE": torch.randn(1, 2, 32, 32)}, "Unknown input modality 'NOPE'"),
        ({"S2L2A": torch.randn(2, 12, 32, 32), "S1GRD": torch.randn(1, 2, 32, 32)}, "batch size 1"),
        ({"S2L2A": torch.full((1, 12, 32, 32), float("nan"))}, "NaN or inf; fill nodata"),
        ({"S2L2A": torch.randn(12, 32, 32)}, "must be (B, C, H, W)"),
        ({"S2L2A": torch.randn(1, 12, 32, 32), "S1GRD": torch.randn(1, 2, 48, 32)}, "share one spatial size"),
        ({}, "No input given"),
    ],
)
def test_bad_input_errors(inputs, message):
    model = TerraMindModel(tiny_config())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(**inputs)


def test_remote_code_load_without_package(tmp_path):
    """A saved folder loads with AutoModel + trust_remote_code where `terramind` is not importable."""
    model = TerraMindModel(tiny_config(modalities=["S2L2A"])).eval()
    model.save_pretrained(tmp_path / "model")
    x = torch.randn(1, 12, 32, 32)
    torch.save({"x": x, "y": model(x).last_hidden_state.detach()}, tmp_path / "io.pt")
    stdout = run_without_package(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        io = torch.load({str(tmp_path / "io.pt")!r})
        torch.testing.assert_close(model(io["x"]).last_hidden_state, io["y"])
        print("REMOTE_OK", type(model).__name__)
    """, tmp_path)
    assert "REMOTE_OK TerraMindModel" in stdout


# ----------------------------------------------------------------------------- tokenized inputs and coordinates
def token_case_inputs(case: dict) -> tuple[dict, dict]:
    import numpy as np

    images, tokens = {}, {}
    for name, spec in case["inputs"].items():
        if name.endswith("_tokens"):
            seed, shape, vocab = spec
            tokens[name.removesuffix("_tokens")] = torch.from_numpy(np.random.default_rng(seed).integers(0, vocab, shape))
        elif isinstance(spec, torch.Tensor):
            images[name] = spec
        else:
            images[name] = reference_input(spec)
    return images, tokens


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_token_and_coordinate_inputs_parity(converted, arch):
    """LULC token grids and Coordinates as encoder inputs, against cases made with the original."""
    from conftest import FIXTURES, coords_tokenizer

    cases = [c for c in torch.load(FIXTURES / "terramind_token_input_cases.pt", weights_only=True) if c["arch"] == arch]
    assert len(cases) == 4
    for case in cases:
        build = case["build"]
        model = TerraMindModel.from_pretrained(converted[arch], **build).eval()
        model.set_tokenizer("Coordinates", coords_tokenizer())
        images, tokens = token_case_inputs(case)
        with torch.no_grad():
            output = model(**images, input_tokens=tokens or None, output_hidden_states=True)
        reference = case["outputs"]
        ours = list(output.hidden_states[1 : len(reference)]) + [output.last_hidden_state]
        errors = [relative_error(a, r) for a, r in zip(ours, reference, strict=True)]
        assert max(errors) < TOLERANCE, (case["name"], errors)
        if build["merge_method"] == "dict" and "Coordinates" in build["modalities"]:
            assert output.last_hidden_state["Coordinates"].shape[1] == 3  # lat, lon, [EOS]


def test_class_map_is_tokenized_and_token_grid_skips_tokenizer(converted):
    from conftest import mini_tokenizer

    model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A", "LULC"]).eval()
    tokenizer = mini_tokenizer("LULC")
    calls = []
    encode = tokenizer.encode
    tokenizer.encode = lambda x, **kw: calls.append(x.shape) or encode(x, **kw)
    model.set_tokenizer("LULC", tokenizer)
    s2 = torch.randn(2, 12, 64, 64)
    class_map = torch.randint(0, 10, (2, 64, 64))
    with torch.no_grad():
        from_map = model(S2L2A=s2, LULC=class_map).last_hidden_state
        assert calls == [(2, 64, 64)]
        grid = encode(class_map).tokens
        from_tokens = model(S2L2A=s2, input_tokens={"LULC": grid}).last_hidden_state
    assert calls == [(2, 64, 64)], "a token grid must not go through the tokenizer"
    torch.testing.assert_close(from_map, from_tokens)


def test_tokenized_input_errors(converted, monkeypatch, tmp_path):
    model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A", "LULC", "Coordinates"],
                                           tokenizer_paths={"LULC": str(tmp_path / "none")}).eval()  # fmt: skip
    s2 = torch.randn(1, 12, 32, 32)
    with pytest.raises(ValueError, match="LULC tokenizer could not be loaded"):
        model(S2L2A=s2, LULC=torch.randint(0, 10, (1, 32, 32)))
    with pytest.raises(ValueError, match="outside the codebook"):
        model(S2L2A=s2, input_tokens={"LULC": torch.full((1, 2, 2), 5000)})
    with pytest.raises(ValueError, match="integer tensor"):
        model(S2L2A=s2, input_tokens={"LULC": torch.zeros(1, 2, 2)})
    with pytest.raises(ValueError, match="input_tokens takes token grids"):
        model(input_tokens={"S2L2A": torch.zeros(1, 2, 2, dtype=torch.long)})
    from conftest import coords_tokenizer

    model.set_tokenizer("Coordinates", coords_tokenizer())
    with pytest.raises(ValueError, match="lon"):
        model(S2L2A=s2, Coordinates=torch.tensor([[200.0, 10.0]]))
    with pytest.raises(ValueError, match=r"\(B, 2\)|\[batch, 2\]|shape"):
        model(S2L2A=s2, Coordinates=torch.tensor([1.0, 2.0, 3.0]))


def test_loading_reports_new_weights_once_without_decoder_noise(converted):
    from conftest import transformers_warnings

    with transformers_warnings() as records:
        TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A", {"PLANET": 3}])
    text = "\n".join(records)
    assert "encoder_embeddings.PLANET.proj.weight" in text and text.count("PLANET.proj.weight") == 1
    assert "decoder" not in text and "mask_token" not in text and "S1GRD" not in text
