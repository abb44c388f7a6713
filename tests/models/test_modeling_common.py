"""Common checks that Transformers' own mixins (tests/models/test_terramind_upstream_common.py) do not make:

- the generator (`TerraMindForGeneration`, whose dict outputs the mixins do not take) and the tokenizer: save/load,
  batching, eager vs SDPA, weight init;
- several modalities at once (the mixins' tester feeds one): batching, eager vs SDPA, hidden states and attentions
  (the attention checks of every class stay here until the mixins' attention tests pass, see issue23-model);
- activation checkpointing with LoRA, torch.export (the sdist ships no export tests), TerraMind's own init values,
  loading reports of heads on a generator folder, remote code, and config validation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import mini_tokenizer, run_without_package
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from terramind import (
    TerraMindBackbone,
    TerraMindConfig,
    TerraMindForGeneration,
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
    TerraMindGenerationConfig,
    TerraMindModel,
    TerraMindTokenizerModel,
)
from terramind.modeling_terramind_layers import TerraMindAttention, TerraMindDecoderLayer, TerraMindLayer
from terramind.training.finetuning import apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread

SIZE = 32  # 2x2 patch grid per modality: 8 encoder tokens for two modalities
TOKENS = 2 * (SIZE // 16) ** 2
HEAD = dict(decoder_hidden_size=16)  # a small UperNet decoder (SMALL_HEAD of the task tests)
LORA_TARGETS = ["qkv", "proj", "fc1", "fc2"]


def tiny(**kwargs) -> TerraMindConfig:
    """hidden 32, 2 heads, 2 encoder / 2 decoder layers; positions built for 64 px, so 32 px inputs interpolate."""
    params = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, num_decoder_layers=2, gated_mlp=False,
                  hidden_act="gelu", modalities=["S2L2A", "S1GRD"], merge_method="mean", image_size=64)  # fmt: skip
    params.update(kwargs)
    return TerraMindConfig(**params)


BUILDERS = {
    "model": lambda **kw: TerraMindModel(tiny(**kw)),
    "generation": lambda **kw: TerraMindForGeneration(tiny(**kw)),
    "backbone": lambda **kw: TerraMindBackbone(tiny(out_indices=[0, 1, 2], **kw)),
    "segmentation": lambda **kw: TerraMindForSemanticSegmentation(tiny(num_labels=3, **HEAD, **kw)),
    "regression": lambda **kw: TerraMindForPixelRegression(tiny(**HEAD, **kw)),
    "classification": lambda **kw: TerraMindForImageClassification(tiny(num_labels=3, **kw)),
}
CLASSES = {"model": TerraMindModel, "generation": TerraMindForGeneration, "backbone": TerraMindBackbone,
           "segmentation": TerraMindForSemanticSegmentation, "regression": TerraMindForPixelRegression,
           "classification": TerraMindForImageClassification}  # fmt: skip
ENCODER_MODELS = [name for name in BUILDERS if name != "generation"]  # TerraMindModel, backbone and the heads
# Where the mixins' checks do not reach: the generator, and the encoder (which every head runs) on two modalities.
MULTIMODAL = ["model", "generation"]


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name](**kwargs)


def inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"S2L2A": torch.randn(batch, 12, SIZE, SIZE, generator=generator),
            "S1GRD": torch.randn(batch, 2, SIZE, SIZE, generator=generator)}  # fmt: skip


def forward(model: nn.Module, x: dict[str, torch.Tensor], **kwargs):
    """The model's forward on `x`; the generator predicts LULC tokens."""
    if isinstance(model, TerraMindForGeneration):
        kwargs.setdefault("target_modalities", ["LULC"])
    return model(**x, **kwargs)


def tensors(output, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) model output, keyed by its path."""
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    if isinstance(output, dict):  # ModelOutput and plain dicts
        items = output.items()
    elif isinstance(output, (tuple, list)):
        items = enumerate(output)
    else:
        return {}
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}.{key}"))
    return found


def assert_same_outputs(actual, expected, atol: float = 0.0) -> None:
    actual, expected = tensors(actual), tensors(expected)
    assert actual.keys() == expected.keys() and expected, (sorted(actual), sorted(expected))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0 if atol == 0 else 1e-5, atol=atol, msg=key)


def attention_modules(model: nn.Module) -> list[TerraMindAttention]:
    return [m for m in model.modules() if isinstance(m, TerraMindAttention)]


def assert_attention_probabilities(attentions, count: int, shape: tuple[int, ...]) -> None:
    assert isinstance(attentions, tuple) and len(attentions) == count
    for weights in attentions:
        assert weights.shape == shape
        torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))
        assert (weights >= 0).all()


# ----------------------------------------------------------------------------- 1. save / load round trip
@pytest.mark.parametrize("name", ["generation"])  # the mixins' test_save_load covers the others
def test_save_load_round_trip(name, tmp_path):
    """save_pretrained + from_pretrained of the same class: nothing missing or unexpected, identical outputs."""
    model = build(name).eval()
    if name == "generation":
        model.generation_config = TerraMindGenerationConfig(decoding_steps=2, temperature=0.0, top_p=0.5)
    model.save_pretrained(tmp_path)
    again, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert type(again) is type(model)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    again.eval()
    reference, loaded = model.state_dict(), again.state_dict()
    assert reference.keys() == loaded.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    x = inputs()
    with torch.no_grad():  # same weights bit for bit; loaded (memory-mapped) tensors may take other conv kernels
        assert_same_outputs(forward(again, x, output_hidden_states=True), forward(model, x, output_hidden_states=True),
                            atol=1e-5)  # fmt: skip
    if name == "generation":  # the sampling settings come back from generation_config.json
        assert (tmp_path / "generation_config.json").is_file()
        config = again.generation_config
        assert isinstance(config, TerraMindGenerationConfig)
        assert (config.decoding_steps, config.temperature, config.top_p) == (2, 0.0, 0.5)
        tokens = again.generate(S2L2A=x["S2L2A"], output_modalities=["LULC"], decode=False, seed=3)["LULC"]
        expected = model.generate(S2L2A=x["S2L2A"], output_modalities=["LULC"], decode=False, seed=3)["LULC"]
        assert tokens.shape == (2, 2, 2) and torch.equal(tokens, expected)


def test_tokenizer_save_load_round_trip(tmp_path):
    """The tokenizer model (LULC, ViT decoder) round trips with a clean loading report and the same tokens/logits."""
    tokenizer = mini_tokenizer("LULC")
    tokenizer.save_pretrained(tmp_path)
    again, info = TerraMindTokenizerModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    class_map = torch.randint(0, 10, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = tokenizer.encode(class_map).tokens
        assert torch.equal(again.eval().encode(class_map).tokens, tokens)
        torch.testing.assert_close(again.decode_tokens(tokens), tokenizer.decode_tokens(tokens), rtol=0, atol=0)


# ----------------------------------------------------------------------------- 2. batching
@pytest.mark.parametrize("name", MULTIMODAL)
def test_batch_equals_single_samples(name):
    """In eval mode every output of a batch of 2 (hidden states and attentions too) equals that sample run alone."""
    model = build(name).eval()
    x = inputs(2)
    with torch.no_grad():
        batched = tensors(forward(model, x, output_hidden_states=True, output_attentions=True))
        for i in range(2):
            single = tensors(forward(model, {k: v[i : i + 1] for k, v in x.items()}, output_hidden_states=True,
                                     output_attentions=True))  # fmt: skip
            assert single.keys() == batched.keys()
            for key, value in single.items():
                torch.testing.assert_close(batched[key][i : i + 1], value, rtol=1e-5, atol=1e-5, msg=key)


def test_generate_batch_equals_single_samples():
    """Seeded multi-step greedy generation: the batch's token grids are those of each sample generated alone."""
    model = build("generation").eval()
    x = inputs(2)["S2L2A"]
    batched = model.generate(S2L2A=x, output_modalities=["LULC", "DEM"], decoding_steps=3, temperature=0, seed=1,
                             decode=False)  # fmt: skip
    for i in range(2):
        single = model.generate(S2L2A=x[i : i + 1], output_modalities=["LULC", "DEM"], decoding_steps=3,
                                temperature=0, seed=1, decode=False)  # fmt: skip
        for target in ("LULC", "DEM"):
            assert torch.equal(batched[target][i : i + 1], single[target]), target


# ----------------------------------------------------------------------------- 3. eager vs SDPA
@pytest.mark.parametrize("name", MULTIMODAL)
def test_eager_and_sdpa_agree(name):
    """set_attn_implementation reaches every attention layer (the generator's encoder copy too) and both
    implementations give the same outputs."""
    model = build(name).eval()
    x = inputs()
    outputs = {}
    for implementation in ("sdpa", "eager", "sdpa"):
        model.set_attn_implementation(implementation)
        layers = attention_modules(model)
        assert layers and {m.config._attn_implementation for m in layers} == {implementation}
        if implementation not in outputs:
            with torch.no_grad():
                outputs[implementation] = forward(model, x, output_hidden_states=True)
    assert_same_outputs(outputs["eager"], outputs["sdpa"], atol=1e-5)


# ----------------------------------------------------------------------------- 4. attentions and hidden states
def expected_tuple(output) -> tuple:
    """What return_dict=False should give: the non-None fields, in order."""
    return tuple(v for v in output.values() if v is not None)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_attentions_and_hidden_states(name, implementation):
    """num_layers attention maps (B, heads, N, N) over all tokens whose rows sum to 1, num_layers + 1 hidden states,
    the same numbers under SDPA (run eagerly for those calls) as under eager; return_dict=False holds them."""
    model = build(name).eval()
    model.set_attn_implementation(implementation)
    x = inputs()
    with torch.no_grad():
        plain = forward(model, x)
        output = forward(model, x, output_attentions=True, output_hidden_states=True)
        as_tuple = forward(model, x, output_attentions=True, output_hidden_states=True, return_dict=False)
        model.set_attn_implementation("eager")
        eager = forward(model, x, output_attentions=True)
    assert plain.attentions is None and plain.hidden_states is None
    assert_attention_probabilities(output.attentions, 2, (2, 2, TOKENS, TOKENS))
    for ours, reference in zip(output.attentions, eager.attentions, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert isinstance(output.hidden_states, tuple) and len(output.hidden_states) == 3
    assert all(h.shape == (2, TOKENS // 2, 32) for h in output.hidden_states)  # merged (mean of the 2 modalities)
    assert isinstance(as_tuple, tuple)
    assert_same_outputs(as_tuple, expected_tuple(output))
    assert len(as_tuple) == 3  # (main output, hidden_states, attentions)


def test_model_hidden_states_unmerged_and_stages():
    """merge_method=None: hidden_states are every token; hidden_states[i+1] is block i's output and the last hidden
    state is the normed last block output."""
    model = build("model", merge_method=None).eval()
    with torch.no_grad():
        output = model(**inputs(), output_hidden_states=True)
    assert [tuple(h.shape) for h in output.hidden_states] == [(2, TOKENS, 32)] * 3
    torch.testing.assert_close(output.last_hidden_state, model.layernorm(output.hidden_states[-1]))
    with torch.no_grad():
        block0, _ = model.encoder.layer[0](output.hidden_states[0])
    torch.testing.assert_close(block0, output.hidden_states[1])


def test_generator_attentions_per_target():
    """Generator: encoder attentions over the inputs; per target, num_decoder_layers self- and cross-attention maps
    (rows sum to 1) and num_decoder_layers + 1 decoder states; return_dict=False holds the same."""
    model = build("generation", num_decoder_layers=3).eval()
    x = inputs()
    targets = ["LULC", "DEM"]
    with torch.no_grad():
        plain = model(**x, target_modalities=targets)
        output = model(**x, target_modalities=targets, output_attentions=True, output_hidden_states=True)
        as_tuple = model(**x, target_modalities=targets, output_attentions=True, output_hidden_states=True,
                         return_dict=False)  # fmt: skip
    assert plain.encoder_attentions is None and plain.decoder_attentions is None and plain.cross_attentions is None
    assert plain.encoder_hidden_states is None and plain.decoder_hidden_states is None
    assert {k: tuple(v.shape) for k, v in output.logits.items()} == {"LULC": (2, 4, 4375), "DEM": (2, 4, 15360)}
    assert output.encoder_last_hidden_state.shape == (2, TOKENS, 32)
    assert_attention_probabilities(output.encoder_attentions, 2, (2, 2, TOKENS, TOKENS))
    assert [tuple(h.shape) for h in output.encoder_hidden_states] == [(2, TOKENS, 32)] * 3
    for key in ("decoder_attentions", "cross_attentions", "decoder_hidden_states"):
        assert list(output[key]) == targets, key
    for target in targets:
        assert_attention_probabilities(output.decoder_attentions[target], 3, (2, 2, 4, 4))
        assert_attention_probabilities(output.cross_attentions[target], 3, (2, 2, 4, TOKENS))
        assert [tuple(h.shape) for h in output.decoder_hidden_states[target]] == [(2, 4, 32)] * 4
    torch.testing.assert_close(plain.logits["DEM"], output.logits["DEM"])
    assert len(as_tuple) == 7
    assert_same_outputs(as_tuple, expected_tuple(output))


# ----------------------------------------------------------------------------- 5. checkpointing with LoRA
def training_loss(name: str, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    if name == "model":
        return model(**x).last_hidden_state.square().mean()
    if name == "backbone":
        return sum(m.square().mean() for m in model(**x).feature_maps)
    if name == "generation":
        labels = {"LULC": torch.randint(0, 4375, (2, 2, 2), generator=generator)}
        return model(**x, labels=labels).loss
    labels = {
        "segmentation": lambda: torch.randint(0, 3, (2, SIZE, SIZE), generator=generator),
        "regression": lambda: torch.randn(2, SIZE, SIZE, generator=generator),
        "classification": lambda: torch.tensor([0, 2]),
    }[name]()
    return model(**x, labels=labels).loss


def counting(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
@pytest.mark.parametrize("name", BUILDERS)
def test_activation_checkpointing_with_lora(name):
    """LoRA (qkv, proj, fc1, fc2) + activation checkpointing + enable_input_require_grads: the layers are really
    recomputed, every LoRA parameter gets a non-zero gradient, loss and gradients equal those without checkpointing,
    the base weights get none."""
    model = apply_lora(build(name), r=2, target_modules=LORA_TARGETS)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without gradient
        generator = torch.Generator().manual_seed(1)
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.train()
    x = inputs()
    blocks = [m for m in model.modules() if isinstance(m, (TerraMindLayer, TerraMindDecoderLayer))]
    calls = []
    for block in blocks:  # counts MLP runs (module hooks do not fire again when a checkpoint recomputes)
        block.mlp.forward = counting(block.mlp.forward, calls)

    def loss_and_grads():
        model.zero_grad()
        calls.clear()
        loss = training_loss(name, model, x)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads()
    assert len(calls) == len(blocks)
    model.activation_checkpointing_enable()
    model.enable_input_require_grads()
    loss, grads = loss_and_grads()
    assert len(calls) == 2 * len(blocks), "checkpointed blocks are recomputed in the backward pass"
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    # the generator holds the patch embeddings of every pretrained modality; only those of the inputs take part
    lora = [n for n in lora if ".encoder_embeddings." not in n or any(f".{key}." in n for key in x)]
    assert len(lora) >= 2 * 4 * 2  # A and B of qkv, proj, fc1, fc2 in each of the 2 encoder blocks
    assert all(model.get_parameter(n).requires_grad for n in lora)
    for parameter_name in lora:
        assert parameter_name in grads and grads[parameter_name].abs().sum() > 0, parameter_name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) <= trainable and not any(".base_layer." in n for n in grads)
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain.keys()
    for parameter_name, grad in plain.items():
        torch.testing.assert_close(grads[parameter_name], grad, msg=parameter_name)


# ----------------------------------------------------------------------------- 6. torch.export
@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_torch_export_matches_eager(name):
    """torch.export.export of the encoder and of each head: the exported program, run on other inputs of the same
    shapes, gives eager's outputs."""
    model = build(name).eval()
    exported = torch.export.export(model, args=(), kwargs=inputs(seed=0))
    other = inputs(seed=1)
    with torch.no_grad():
        assert_same_outputs(exported.module()(**other), model(**other), atol=1e-5)


# ----------------------------------------------------------------------------- 7. init
def _check_fresh_weights(model: nn.Module) -> None:
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))]
    assert norms
    for module in norms:
        if module.weight is not None:
            assert torch.equal(module.weight, torch.ones_like(module.weight)), module
        if module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), module


@pytest.mark.parametrize("name", MULTIMODAL)
def test_init_weights_finite_and_deterministic(name):
    """_init_weights: finite weights, norms at identity, zero linear biases, modality embeddings ~ N(0, 0.02),
    sin-cos positions; the same seed gives the same model, another seed another one."""
    from terramind.modeling_terramind import TerraMindPatchEmbedding
    from terramind.modeling_terramind_layers import sincos_pos_embed_2d

    model = build(name, qkv_bias=True, mlp_bias=True, proj_bias=True)
    _check_fresh_weights(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert linears and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    embeddings = [m for m in model.modules() if isinstance(m, TerraMindPatchEmbedding)]
    assert embeddings
    for embedding in embeddings:
        assert 0.005 < embedding.mod_emb.std().item() < 0.05
        torch.testing.assert_close(embedding.pos_emb, sincos_pos_embed_2d(4, 4, 32))
    if name == "generation":  # the logits heads share the token embeddings, decoder and encoder one mod_emb
        lulc = model.decoder_embeddings["LULC"]
        assert lulc.to_logits.weight is lulc.token_emb.weight
        assert lulc.mod_emb is model.terramind.encoder_embeddings["LULC"].mod_emb
    for attention in attention_modules(model):
        weight = attention.qkv.weight if hasattr(attention, "qkv") else attention.kv.weight
        parts = 3 if hasattr(attention, "qkv") else 2
        bound = (6.0 / (weight.shape[0] // parts + weight.shape[1])) ** 0.5
        assert weight.abs().max() <= bound and weight.abs().max() > 0.5 * bound
    biases = dict(qkv_bias=True, mlp_bias=True, proj_bias=True)
    same, other = build(name, **biases), build(name, seed=1, **biases)
    reference = model.state_dict()
    assert same.state_dict().keys() == reference.keys()
    for key, value in same.state_dict().items():
        assert torch.equal(value, reference[key]), key
    differing = [k for k, v in other.state_dict().items() if v.is_floating_point() and not torch.equal(v, reference[k])]
    assert differing


def test_tokenizer_init_finite_and_deterministic():
    """The tokenizer model's init: finite, norms at identity, seeded builds identical."""
    tokenizer = mini_tokenizer("LULC", seed=0)
    _check_fresh_weights(tokenizer)
    same, other = mini_tokenizer("LULC", seed=0).state_dict(), mini_tokenizer("LULC", seed=1).state_dict()
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(same[key], value), key
    assert any(not torch.equal(other[k], v) for k, v in tokenizer.state_dict().items() if v.is_floating_point())


# ----------------------------------------------------------------------------- 8. loading reports
@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory):
    """A saved TerraMindForGeneration (4 encoder blocks, so that the dense heads get their 4-stage pyramid) and the
    state of its encoder."""
    folder = tmp_path_factory.mktemp("generator")
    generator = build("generation", num_hidden_layers=4)
    generator.save_pretrained(folder)
    return folder, generator.terramind.state_dict()


@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_head_from_generator_folder_reports_only_new_modules(generator_folder, name):
    """A model loaded from a saved generator reports exactly its own new modules (neck, decode head, classifier)
    as missing, nothing unexpected (the generator's decoder is ignored by design), and gets the encoder's weights."""
    extra = {"backbone": dict(out_indices=[1, 2, 3, 4], use_feature_pyramid=True),
             "segmentation": dict(num_labels=3, **HEAD), "regression": HEAD,
             "classification": dict(num_labels=3)}.get(name, {})  # fmt: skip
    folder, generator = generator_folder
    model, info = CLASSES[name].from_pretrained(folder, output_loading_info=True, **extra)
    new_modules = {"model": set(), "backbone": {"feature_neck"}, "segmentation": {"feature_neck", "decode_head"},
                   "regression": {"feature_neck", "decode_head"}, "classification": {"classifier"}}[name]  # fmt: skip
    own = {k for k in model.state_dict() if k.split(".")[0] in new_modules}
    assert set(info["missing_keys"]) == own and (own or name == "model")
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    encoder = model if name == "model" else model.terramind
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, generator[key]), key


# ----------------------------------------------------------------------------- 9. remote code
FORBIDDEN_CODE = {"conversion.py", "tokenizer_conversion.py", "checkpoint.py", "cli.py", "app.py", "finetuning.py",
                  "data_terramind.py", "layout.py", "checks.py", "transforms.py", "data_collator.py", "metrics.py",
                  "geotiff.py", "quicklook.py", "__init__.py"}  # fmt: skip


def test_remote_code_generation_and_segmentation_without_package(tmp_path):
    """Saved folders load with trust_remote_code where `terramind` is not importable: AutoModelForImageToImage and
    AutoModel on a generator folder, AutoModelForSemanticSegmentation on a head's; the same numbers as the package.
    The folders carry only the model code (no converters, CLI, fine-tuning or data code)."""
    generator = build("generation").eval()
    segmentation = build("segmentation").eval()
    generator.save_pretrained(tmp_path / "generator")
    segmentation.save_pretrained(tmp_path / "segmentation")
    for folder, needed in (("generator", set()), ("segmentation", {"modeling_terramind_tasks.py"})):
        code = {p.name for p in (tmp_path / folder).glob("*.py")}
        assert {"modeling_terramind.py", "configuration_terramind.py", "modeling_terramind_layers.py",
                "modalities.py", "generation_terramind.py"} | needed <= code, code  # fmt: skip
        assert not code & FORBIDDEN_CODE, code & FORBIDDEN_CODE
    auto_map = json.loads((tmp_path / "generator" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageToImage"] == "modeling_terramind.TerraMindForGeneration"
    assert auto_map["AutoModel"] == "modeling_terramind.TerraMindModel"
    x = inputs()
    with torch.no_grad():
        expected = {
            "x": x,
            "logits": generator(**x, target_modalities=["LULC"]).logits["LULC"],
            "tokens": generator.generate(**x, output_modalities=["LULC"], decode=False, temperature=0)["LULC"],
            "encoder": TerraMindModel.from_pretrained(tmp_path / "generator").eval()(**x).last_hidden_state,
            "segmentation": segmentation(**x).logits,
        }
    torch.save(expected, tmp_path / "io.pt")
    stdout = run_without_package(f"""
        import torch
        from transformers import AutoModel, AutoModelForImageToImage, AutoModelForSemanticSegmentation
        io = torch.load({str(tmp_path / "io.pt")!r})
        x = io["x"]
        generator = AutoModelForImageToImage.from_pretrained({str(tmp_path / "generator")!r},
                                                             trust_remote_code=True).eval()
        encoder = AutoModel.from_pretrained({str(tmp_path / "generator")!r}, trust_remote_code=True).eval()
        segmentation = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "segmentation")!r},
                                                                        trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(generator(**x, target_modalities=["LULC"]).logits["LULC"], io["logits"])
            tokens = generator.generate(**x, output_modalities=["LULC"], decode=False, temperature=0)["LULC"]
            assert torch.equal(tokens, io["tokens"])
            torch.testing.assert_close(encoder(**x).last_hidden_state, io["encoder"])
            torch.testing.assert_close(segmentation(**x).logits, io["segmentation"])
        print("REMOTE_OK", type(generator).__name__, type(encoder).__name__, type(segmentation).__name__)
    """, tmp_path)  # fmt: skip
    assert "REMOTE_OK TerraMindForGeneration TerraMindModel TerraMindForSemanticSegmentation" in stdout


# ----------------------------------------------------------------------------- 10. config validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(merge_method="sum"), "merge_method"),
        (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by num_attention_heads"),
        (dict(tim_modalities=["RGB"]), "cannot be generated"),
        (dict(modality_drop_rate=2.0), "modality_drop_rate"),
    ],
)
def test_config_validation(kwargs, message, tmp_path):
    """Bad values raise StrictDataclassError in the constructor (field types and class validators) and as
    from_pretrained overrides, which Transformers' from_dict sets after construction."""
    with pytest.raises(StrictDataclassError, match=message):
        TerraMindConfig(**kwargs)
    tiny().save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match=message):
        TerraMindConfig.from_pretrained(tmp_path, **kwargs)


def test_backbone_from_pretrained_with_fewer_layers(tmp_path):
    """A 4-block folder loaded with num_hidden_layers=2: stage_names follow the override, so the backbone's default
    stage is the new last one, "stage2" (stale stage names made it "stage4", an IndexError in TerraMindNeck)."""
    build("model", num_hidden_layers=4).save_pretrained(tmp_path)
    config = TerraMindConfig.from_pretrained(tmp_path, num_hidden_layers=2)
    assert config.stage_names == ["stem", "stage1", "stage2"]
    backbone = TerraMindBackbone.from_pretrained(tmp_path, num_hidden_layers=2).eval()
    with torch.no_grad():
        output = backbone(**inputs(), output_hidden_states=True)
        (feature_map,) = output.feature_maps
    assert backbone.out_features == ["stage2"] and feature_map.shape == (2, 32, 2, 2)


def test_model_from_pretrained_validates_overrides(tmp_path):
    """Model loading: a bad config override and a misspelt one (a TypeError naming it) fail."""
    build("model").save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match="merge_method"):
        TerraMindModel.from_pretrained(tmp_path, merge_method="sum")
    with pytest.raises(TypeError, match="merge_methd"):
        TerraMindModel.from_pretrained(tmp_path, merge_methd="max")
    assert TerraMindModel.from_pretrained(tmp_path, merge_method="max").config.merge_method == "max"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(temperature=-1), "temperature"), (dict(top_k=-5), "top_k"), (dict(top_p=2), "top_p"),
     (dict(decoding_steps=0), "decoding_steps")],
)  # fmt: skip
def test_generation_config_validation(kwargs, message):
    """Sampling settings the sampler cannot use raise ValueError, in the config and as generate() overrides."""
    with pytest.raises(ValueError, match=message):
        TerraMindGenerationConfig(**kwargs)
    model = build("generation")
    with pytest.raises(ValueError, match=message):
        model.generate(S2L2A=inputs(1)["S2L2A"], output_modalities=["LULC"], decode=False, **kwargs)
    assert model.generation_config.temperature == 1.0  # a failed override leaves the model's config as it was
