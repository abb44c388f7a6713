"""Generation and Thinking-in-Modalities: parity with the original, seeds, freezing, round trips, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, load_cases, reference_input, relative_error

from terramind import TerraMindForGeneration, TerraMindGenerationConfig, TerraMindModel
from terramind.generation_terramind import linear_token_schedule, sample_tokens
from terramind.scenes.tiled import generate_tiled


@pytest.fixture(scope="module")
def generators(converted):
    return {arch: TerraMindForGeneration.from_pretrained(converted[arch]).eval() for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generation_parity_greedy(generators, arch):
    """Greedy single-step generation gives the original's token grids, chained outputs included."""
    for case in load_cases(arch, "generation"):
        build = case["build"]
        inputs = {name: reference_input(spec) for name, spec in case["inputs"].items()}
        tokens = generators[arch].generate(inputs, output_modalities=build["output_modalities"],
                                           decoding_steps=build["decoding_steps"], temperature=build["temperature"],
                                           decode=False)  # fmt: skip
        assert list(tokens) == build["output_modalities"]
        for name, reference in case["tokens"].items():
            assert tokens[name].shape == (2, 14, 14)
            assert torch.equal(tokens[name], reference), (case["name"], name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tim_parity_every_layer_and_tokens(converted, arch):
    (case,) = load_cases(arch, "tim")
    build = case["build"]
    model = TerraMindModel.from_pretrained(
        converted[arch], modalities=build["modalities"], merge_method=build["merge_method"],
        tim_modalities=build["tim_modalities"],
        tim_generation_config=TerraMindGenerationConfig(decoding_steps=build["tim_decoding_steps"],
                                                        temperature=build["tim_temperature"]),
    ).eval()  # fmt: skip
    inputs = {name: reference_input(spec) for name, spec in case["inputs"].items()}
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    reference = case["outputs"]
    ours = list(output.hidden_states[1 : len(reference)]) + [output.last_hidden_state]
    errors = [relative_error(a, r) for a, r in zip(ours, reference, strict=True)]
    assert max(errors) < 1e-4, errors
    assert torch.equal(output.tim_tokens["LULC"], case["tim_tokens"]["LULC"])


def test_tim_generator_frozen_and_round_trip(converted, tmp_path):
    model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"], tim_modalities=["LULC"],
                                           tim_generation_config=TerraMindGenerationConfig(temperature=0.0),
                                           merge_method="dict")  # fmt: skip
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.", "layernorm")) for n in trainable), sorted(trainable)[:5]
    assert model.embeddings["S2L2A"] is model.tim_generator.terramind.encoder_embeddings["S2L2A"]
    model.train()
    assert not model.tim_generator.training
    x = torch.randn(1, 12, 32, 32)
    model.eval()
    with torch.no_grad():
        out = model(S2L2A=x)
    # as the original, the dict merge holds the inputs' tokens only; the TiM tokens are in `tim_tokens`
    assert set(out.last_hidden_state) == {"S2L2A"} and out.tim_tokens["LULC"].shape == (1, 4)
    model.save_pretrained(tmp_path)
    again = TerraMindModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(S2L2A=x).last_hidden_state["S2L2A"], out.last_hidden_state["S2L2A"])


def test_tim_refuses_band_subsets_and_new_modalities():
    from huggingface_hub.errors import StrictDataclassError

    from terramind import TerraMindConfig

    with pytest.raises(StrictDataclassError, match="band subsets"):
        TerraMindConfig(modalities=["S2L2A"], bands={"S2L2A": ["RED"]}, tim_modalities=["LULC"])
    with pytest.raises(StrictDataclassError, match="pretrained modalities only"):
        TerraMindConfig(modalities=["S2L2A", {"PLANET": 4}], tim_modalities=["LULC"])
    with pytest.raises(StrictDataclassError, match="cannot be generated"):
        TerraMindConfig(modalities=["S2L2A"], tim_modalities=["RGB"])


def test_seeded_multistep_generation_reproducible(generators):
    model = generators["tiny"]
    x = torch.randn(1, 12, 64, 64)

    def run(seed):
        return model.generate(S2L2A=x, output_modalities=["LULC", "DEM"], decoding_steps=4, temperature=1.0,
                              top_p=0.9, seed=seed, decode=False)  # fmt: skip

    first, again, other = run(1), run(1), run(2)
    for name in ("LULC", "DEM"):
        assert first[name].shape == (1, 4, 4)
        assert torch.equal(first[name], again[name])
    assert any(not torch.equal(first[n], other[n]) for n in ("LULC", "DEM"))


def test_input_tokens_condition_generation(generators):
    model = generators["tiny"]
    x = torch.randn(1, 12, 32, 32)
    lulc = torch.randint(0, 4375, (1, 2, 2))
    with_tokens = model.generate(S2L2A=x, input_tokens={"LULC": lulc}, output_modalities=["DEM"], temperature=0.0,
                                 decode=False)  # fmt: skip
    without = model.generate(S2L2A=x, output_modalities=["DEM"], temperature=0.0, decode=False)
    assert with_tokens["DEM"].shape == without["DEM"].shape == (1, 2, 2)


def test_schedules_and_sampling():
    assert linear_token_schedule(1, 196) == [196]
    assert linear_token_schedule(3, 10) == [4, 3, 3]
    assert sum(linear_token_schedule(7, 196)) == 196
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert sample_tokens(logits, temperature=0.0).item() == 1
    generator = torch.Generator().manual_seed(0)
    assert sample_tokens(logits, temperature=1.0, top_k=1, generator=generator).item() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(output_modalities=["S2L1C"]), "cannot generate 'S2L1C'"),
        (dict(output_modalities=["RGB"]), "cannot generate 'RGB'"),
        (dict(output_modalities=["FOO"]), "Unknown modality 'FOO'"),
        (dict(output_modalities=[]), "output_modalities is empty"),
    ],
)
def test_generation_bad_outputs(generators, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generators["tiny"].generate(S2L2A=torch.randn(1, 12, 32, 32), decode=False, **kwargs)


def test_generation_bad_inputs(generators):
    model = generators["tiny"]
    with pytest.raises(ValueError, match="No inputs given"):
        model.generate(output_modalities=["LULC"], decode=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate(S2L2A=torch.randn(1, 12, 40, 32), output_modalities=["LULC"], decode=False)
    with pytest.raises(ValueError, match="expected 12 channels"):
        model.generate(S2L2A=torch.randn(1, 3, 32, 32), output_modalities=["LULC"], decode=False)
    with pytest.raises(ValueError, match="given twice"):
        model.generate(S2L2A=torch.randn(1, 12, 32, 32), s2l2a=torch.randn(1, 12, 32, 32), output_modalities=["LULC"],
                       decode=False)  # fmt: skip
    with pytest.raises(ValueError, match="codebook"):
        model.generate(S2L2A=torch.randn(1, 12, 32, 32), input_tokens={"LULC": torch.full((1, 2, 2), 9999)},
                       output_modalities=["DEM"], decode=False)  # fmt: skip


def test_decode_end_to_end_with_tiny_tokenizers(generators):
    from conftest import mini_tokenizer

    model = generators["tiny"]
    tokenizers = {"S1GRD": mini_tokenizer("S1GRD"), "LULC": mini_tokenizer("LULC")}
    x = torch.randn(2, 12, 64, 64)
    out = model.generate(S2L2A=x, output_modalities=["LULC", "S1GRD"], temperature=0.0, timesteps=2,
                         tokenizers=tokenizers, seed=0)  # fmt: skip
    assert out["LULC"].shape == (2, 10, 64, 64)  # class logits
    assert out["S1GRD"].shape == (2, 2, 64, 64)
    assert out["S1GRD"].abs().max() <= 1.0 + 1e-5  # the diffusion decoder clips standardized samples to [-1, 1]
    physical = model.generate(S2L2A=x * 2000 + 1500, output_modalities=["S1GRD"], temperature=0.0, timesteps=2,
                              tokenizers=tokenizers, seed=0, standardize=True)["S1GRD"]  # fmt: skip
    assert physical.mean() < -5  # back in dB (VV mean -12.6, VH -20.3 in pre-training)


def test_tiled_generation_448_without_seams(generators):
    from conftest import mini_tokenizer

    model = generators["tiny"]
    tokenizers = {"LULC": mini_tokenizer("LULC")}
    x = torch.full((1, 12, 448, 448), 0.5)
    out = generate_tiled(model, S2L2A=x, output_modalities=["LULC"], temperature=0.0, tokenizers=tokenizers,
                               tile_size=224, overlap=64, batch_size=4)["LULC"]  # fmt: skip
    assert out.shape == (1, 10, 448, 448)
    assert torch.isfinite(out).all()
    # blending: jumps between neighbouring pixels at tile borders stay within those inside tiles
    steps = (out[..., :, 1:] - out[..., :, :-1]).abs().amax(dim=(0, 1, 2))
    borders = [t + 224 - 1 for t in (0, 160)]  # right edges of the first tiles
    inside = torch.cat([steps[:150], steps[300:]])
    assert max(steps[b] for b in borders) <= 1.5 * inside.max() + 1e-4
    tokens = generate_tiled(model, S2L2A=x, output_modalities=["LULC"], temperature=0.0, decode=False)["LULC"]
    assert tokens.shape == (1, 28, 28)


def coords_cases() -> dict[str, dict]:
    from conftest import FIXTURES

    cases = torch.load(FIXTURES / "terramind_coords_generation_cases.pt", weights_only=True)
    return {case["name"]: case for case in cases}


def coords_case_inputs(case: dict) -> dict[str, torch.Tensor]:
    """Seeded inputs (`reference_input`) with the case's constant samples, or tensors stored as they are."""
    inputs = {name: reference_input(spec) if isinstance(spec, list) else spec for name, spec in case["inputs"].items()}
    for name, samples in case.get("constant_samples", {}).items():
        for index, value in samples.items():
            inputs[name][index] = value
    return inputs


def test_coordinates_generation_parity(generators):
    """Greedy autoregressive Coordinates generation gives the original's token ids (tiny architecture)."""
    from conftest import coords_tokenizer

    case = coords_cases()["generate_S2L2A_to_Coordinates_greedy"]
    model = generators["tiny"]
    inputs = coords_case_inputs(case)
    tokenizers = {"Coordinates": coords_tokenizer()}
    tokens = model.generate(inputs, output_modalities=["Coordinates"], temperature=0.0, decode=False,
                            tokenizers=tokenizers)["Coordinates"]  # fmt: skip
    assert torch.equal(tokens, case["tokens"])
    with pytest.warns(UserWarning):  # random weights generate no parseable "lat=.. lon=.." text
        coordinates = model.generate(inputs, output_modalities=["Coordinates"], temperature=0.0,
                                     tokenizers=tokenizers)["Coordinates"]  # fmt: skip
    assert coordinates.shape == (2, 2) and torch.isnan(coordinates).all() and torch.isnan(case["coordinates"]).all()


def test_generated_coordinates_condition_later_outputs_as_the_original(converted):
    """Coordinates generated before LULC: the original drops the sentinels ([S_2] ends sample 0 after two tokens)
    and masks the padding of the shorter sample; LULC then equals the original's, and attending to the padding would
    change it."""
    from conftest import coords_tokenizer

    case = coords_cases()["generate_S2L2A_to_Coordinates_LULC_stop"]
    model = TerraMindForGeneration.from_pretrained(converted["tiny"]).eval()
    with torch.no_grad():  # the [S_2] row the case was made with (the logits head is tied to it)
        for index, row in case["decoder_coords_rows"].items():
            model.decoder_embeddings["Coordinates"].token_emb.weight[index] = row
    assert model.decoder_embeddings["Coordinates"].to_logits.weight[6].equal(case["decoder_coords_rows"][6])
    inputs = coords_case_inputs(case)
    tokens = model.generate(inputs, output_modalities=case["outputs"], temperature=0.0, decode=False,
                            tokenizers={"Coordinates": coords_tokenizer()})  # fmt: skip
    reference = case["tokens"]
    assert reference["Coordinates"].tolist()[0][-1] == 0 and 0 not in reference["Coordinates"].tolist()[1]
    assert torch.equal(tokens["Coordinates"], reference["Coordinates"])
    assert torch.equal(tokens["LULC"], reference["LULC"])
    # without the padding mask sample 0's LULC would differ: the test sees the masking
    prepared, grid = model.prepare_generation_inputs(inputs, None, False, None)
    unmasked = dict(prepared, Coordinates=tokens["Coordinates"])
    lulc = model.generate_tokens(unmasked, ["LULC"], grid, TerraMindGenerationConfig(temperature=0.0))["LULC"]
    assert not torch.equal(lulc, reference["LULC"])


def test_generation_from_coordinates_alone(generators):
    """Coordinates alone give images on the original's default 224 x 224 grid (parity), or any `image_size`."""
    from conftest import coords_tokenizer

    case = coords_cases()["generate_Coordinates_to_LULC_S1GRD"]
    model = generators["tiny"]
    tokenizers = {"Coordinates": coords_tokenizer()}
    tokens = model.generate(coords_case_inputs(case), output_modalities=case["outputs"], temperature=0.0,
                            decode=False, tokenizers=tokenizers)  # fmt: skip
    for name in case["outputs"]:
        assert torch.equal(tokens[name], case["tokens"][name]), name
    coordinates = torch.tensor([[8.5417, 47.3769]])
    small = model.generate(Coordinates=coordinates, output_modalities=["LULC"], image_size=(32, 64), temperature=0.0,
                           decode=False, tokenizers=tokenizers)["LULC"]  # fmt: skip
    assert small.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="does not match the image inputs"):
        model.generate(S2L2A=torch.randn(1, 12, 32, 32), Coordinates=coordinates, output_modalities=["LULC"],
                       image_size=64, decode=False, tokenizers=tokenizers)  # fmt: skip
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate(Coordinates=coordinates, output_modalities=["LULC"], image_size=40, decode=False,
                       tokenizers=tokenizers)  # fmt: skip


def test_offset_shifts_statistics_of_inputs_and_outputs(generators):
    """`offset` moves the means of standardization (inputs) and destandardization (outputs) for the call only."""
    from conftest import mini_tokenizer

    from terramind.modalities import standardization

    model = generators["tiny"]
    tokenizers = {"S1GRD": mini_tokenizer("S1GRD")}
    before = standardization("S2L2A")
    s2 = torch.rand(1, 12, 32, 32) * 3000
    options = dict(output_modalities=["S1GRD"], temperature=0.0, standardize=True, timesteps=2, seed=0,
                   tokenizers=tokenizers)  # fmt: skip
    plain = model.generate(S2L2A=s2, **options)["S1GRD"]
    shifted = model.generate(S2L2A=s2 + 1000, offset={"S2L2A": 1000, "S1GRD": [1.0, -2.0]}, **options)["S1GRD"]
    torch.testing.assert_close(shifted, plain + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    assert standardization("S2L2A") == before  # nothing shared was changed (the original's offset was cumulative)
    torch.testing.assert_close(model.generate(S2L2A=s2, **options)["S1GRD"], plain)
    tokens = dict(output_modalities=["LULC"], temperature=0.0, decode=False)
    assert torch.equal(model.generate(S2L2A=s2 + 1000, standardize=True, offset={"S2L2A": 1000}, **tokens)["LULC"],
                       model.generate(S2L2A=s2, standardize=True, **tokens)["LULC"])  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(offset={"S2L2A": 1000}), "needs standardize=True"),
        (dict(offset={"DEM": 10}, standardize=True), "neither an input nor an output"),
        (dict(offset={"S2L2A": [1, 2]}, standardize=True), "12 numbers"),
        (dict(offset={"LULC": 1}, standardize=True), "not standardized"),
    ],
)
def test_offset_errors(generators, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generators["tiny"].generate(S2L2A=torch.rand(1, 12, 32, 32), output_modalities=["LULC"], decode=False,
                                    **kwargs)  # fmt: skip


def test_tim_coordinates_and_unchained_generations(converted):
    """TiM generates Coordinates (up to 4 tokens, as the original's TiM) and, with tim_chained_generations=False,
    each TiM modality from the inputs alone."""
    from conftest import coords_tokenizer

    greedy = TerraMindGenerationConfig(temperature=0.0)
    x = torch.randn(2, 12, 32, 32)

    def tim(modalities, chained=True):
        model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"], tim_modalities=modalities,
                                               tim_chained_generations=chained, tim_generation_config=greedy,
                                               merge_method="dict").eval()  # fmt: skip
        model.set_tokenizer("Coordinates", coords_tokenizer())
        with torch.no_grad():
            return model, model(S2L2A=x)

    model, chained = tim(["Coordinates", "LULC"])
    assert chained.tim_tokens["Coordinates"].shape == (2, 4)  # generate samples 3 tokens, TiM up to 4
    assert set(chained.last_hidden_state) == {"S2L2A"}
    generator = model.tim_generator
    expected = generator.generate_tokens({"S2L2A": x}, ["Coordinates", "LULC"], (2, 2), greedy, sequence_tokens=4)
    assert torch.equal(chained.tim_tokens["Coordinates"], expected["Coordinates"])
    assert torch.equal(chained.tim_tokens["LULC"], expected["LULC"].flatten(1))
    _, unchained = tim(["Coordinates", "LULC"], chained=False)
    _, alone = tim(["LULC"])
    assert torch.equal(unchained.tim_tokens["LULC"], alone.tim_tokens["LULC"])
    assert not torch.equal(unchained.tim_tokens["LULC"], chained.tim_tokens["LULC"])
    # Coordinates alone: TiM thinks on the grid of config.image_size (the original's 224 x 224)
    located = TerraMindModel.from_pretrained(converted["tiny"], modalities=["Coordinates"], tim_modalities=["LULC"],
                                             tim_generation_config=greedy).eval()  # fmt: skip
    located.set_tokenizer("Coordinates", coords_tokenizer())
    with torch.no_grad():
        out = located(Coordinates=torch.tensor([[8.5417, 47.3769]]))
    assert out.tim_tokens["LULC"].shape == (1, 196) and out.last_hidden_state.shape == (1, 196, 16)


def test_tiled_generation_any_scene_size(generators):
    """Scenes of any size are padded (bottom/right, with the mean) to whole tiles and the outputs cropped back."""
    import torch.nn.functional as F
    from conftest import mini_tokenizer

    from terramind.modalities import standardization

    model = generators["tiny"]
    tokenizers = {"S1GRD": mini_tokenizer("S1GRD")}
    x = torch.randn(1, 12, 40, 56)
    padded = F.pad(x, (0, 8, 0, 24))  # to one 64 x 64 tile, with 0 = the mean of standardized inputs
    options = dict(output_modalities=["S1GRD"], temperature=0.0, timesteps=2, tokenizers=tokenizers)
    tiled = generate_tiled(model, S2L2A=x, tile_size=64, overlap=0, seed=0, **options)["S1GRD"]
    assert tiled.shape == (1, 2, 40, 56)
    torch.testing.assert_close(tiled, model.generate(S2L2A=padded, seed=0, **options)["S1GRD"][..., :40, :56])
    tokens = generate_tiled(model, S2L2A=x, tile_size=64, overlap=0, decode=False, **options)["S1GRD"]
    assert torch.equal(tokens, model.generate(S2L2A=padded, decode=False, **options)["S1GRD"][..., :3, :4])
    physical = x * 2000 + 1500
    standardized = generate_tiled(model, S2L2A=physical, tile_size=64, overlap=0, standardize=True,
                                        offset={"S2L2A": 100}, decode=False, **options)["S1GRD"]  # fmt: skip
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in standardization("S2L2A"))
    direct = F.pad((physical - mean - 100) / std, (0, 8, 0, 24))
    assert torch.equal(standardized, model.generate(S2L2A=direct, decode=False, **options)["S1GRD"][..., :3, :4])
    scene = generate_tiled(model, S2L2A=torch.randn(1, 12, 100, 130), tile_size=64, overlap=16, batch_size=3,
                                 decode=False, **options)["S1GRD"]  # fmt: skip
    assert scene.shape == (1, 7, 9)


def test_tim_loading_reports_nothing(converted):
    """The TiM generator is filled from the same folder after loading: no false "corrupted" tied-weights warning,
    no report of its keys, and its tied logits head really shares the token embedding."""
    from conftest import transformers_warnings

    with transformers_warnings() as records:
        model = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"], tim_modalities=["LULC"])
    assert records == [], records
    lulc = model.tim_generator.decoder_embeddings["LULC"]
    assert lulc.to_logits.weight is lulc.token_emb.weight and lulc.to_logits.weight.device.type == "cpu"


def test_generation_ignores_unknown_inputs_when_configured(converted):
    x = torch.randn(1, 12, 32, 32)
    options = dict(output_modalities=["LULC"], temperature=0.0, decode=False)
    model = TerraMindForGeneration.from_pretrained(converted["tiny"]).eval()
    with pytest.raises(ValueError, match="Unknown input modality 'FOO'"):
        model.generate(S2L2A=x, FOO=x, **options)
    lenient = TerraMindForGeneration.from_pretrained(converted["tiny"], ignore_unknown_modalities=True).eval()
    assert torch.equal(lenient.generate(S2L2A=x, FOO=x, **options)["LULC"], model.generate(S2L2A=x, **options)["LULC"])
