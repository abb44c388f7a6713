"""Outputs recorded by Transformers' `@capture_outputs` (hidden states, attentions, cross-attentions) and the
model's inner homes (Thinking-in-Modalities class, sampling through Transformers' logits warpers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from terramind import (
    TerraMindBackbone,
    TerraMindConfig,
    TerraMindForGeneration,
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
    TerraMindModel,
)
from terramind.generation_terramind import sample_tokens
from terramind.modeling_terramind_tim import TerraMindThinkingInModalities

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_decoder_layers=3, num_attention_heads=2, gated_mlp=False,
            hidden_act="gelu", modalities=["S2L2A"], image_size=64)  # fmt: skip
CLASSES = {
    TerraMindModel: {},
    TerraMindBackbone: dict(out_indices=[1, 2]),
    TerraMindForImageClassification: dict(num_labels=3),
    TerraMindForSemanticSegmentation: dict(num_labels=3, decoder_hidden_size=16),
    TerraMindForPixelRegression: dict(decoder_hidden_size=16),
}


def first_output(output) -> torch.Tensor:
    value = output[0]
    return value[0] if isinstance(value, tuple) else value  # a backbone's first feature map


@pytest.mark.parametrize("model_class", list(CLASSES), ids=lambda c: c.__name__)
@pytest.mark.parametrize("from_config", [False, True], ids=["kwargs", "config"])
def test_retain_grad_hidden_states_and_attentions(model_class, from_config):
    """As Transformers' test_retain_grad_hidden_states_attentions: the first hidden state and attention are on the
    graph of the first output, asked for per call or in the config (one image modality, merged by "mean")."""
    torch.manual_seed(0)
    flags = dict(output_hidden_states=True, output_attentions=True)
    config = TerraMindConfig(**TINY, **CLASSES[model_class], **(flags if from_config else {}))
    model = model_class._from_config(config, attn_implementation="eager")
    output = model(pixel_values=torch.randn(2, 12, 32, 32), **({} if from_config else flags))
    hidden, attention = output.hidden_states[0], output.attentions[0]
    assert len(output.hidden_states) == 3 and len(output.attentions) == 2
    assert attention.shape == (2, 2, 4, 4)
    hidden.retain_grad()
    attention.retain_grad()
    first_output(output).flatten()[0].backward()
    assert hidden.grad is not None and attention.grad is not None


@pytest.mark.parametrize("model_class", [TerraMindForSemanticSegmentation, TerraMindForPixelRegression],
                         ids=lambda c: c.__name__)  # fmt: skip
def test_dense_heads_return_attentions_when_asked(model_class):
    torch.manual_seed(0)
    model = model_class(TerraMindConfig(**TINY, **CLASSES[model_class])).eval()
    x = torch.randn(1, 12, 32, 32)
    with torch.no_grad():
        plain = model(x)
        asked = model(x, output_attentions=True)
        as_tuple = model(x, output_attentions=True, return_dict=False)
    assert plain.attentions is None and plain.hidden_states is None
    assert len(asked.attentions) == 2 and asked.attentions[0].shape == (1, 2, 4, 4)
    torch.testing.assert_close(asked.logits, plain.logits)  # eager for the probabilities, the same numbers
    assert len(as_tuple) == 2 and torch.equal(as_tuple[1][0], asked.attentions[0])


def test_outputs_recorded_once_whichever_model_asks_first():
    """The generator's encoder is a model of its own: asked directly first, then through the generator, then
    directly again, every block is recorded once (Transformers' installer alone would hook it twice)."""
    torch.manual_seed(0)
    generator = TerraMindForGeneration(TerraMindConfig(**TINY), modalities=["S2L2A", "LULC"]).eval()
    x = torch.randn(1, 12, 32, 32)
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        before = generator.terramind(S2L2A=x, **flags)
        both = generator(S2L2A=x, target_modalities=["LULC"], **flags)
        after = generator.terramind(S2L2A=x, **flags)
    assert (len(before.hidden_states), len(before.attentions)) == (3, 2)
    assert (len(after.hidden_states), len(after.attentions)) == (3, 2)
    assert (len(both.encoder_hidden_states), len(both.encoder_attentions)) == (3, 2)
    assert len(both.decoder_hidden_states["LULC"]) == 4  # the queries and every decoder block
    assert len(both.decoder_attentions["LULC"]) == len(both.cross_attentions["LULC"]) == 3
    assert both.decoder_attentions["LULC"][0].shape == (1, 2, 4, 4)  # queries attend to each other
    assert both.cross_attentions["LULC"][0].shape == (1, 2, 4, 4)  # and to the 4 context tokens
    for a, b in zip(before.hidden_states, after.hidden_states, strict=True):
        torch.testing.assert_close(a, b)


def test_thinking_in_modalities_is_its_own_frozen_class():
    torch.manual_seed(0)
    model = TerraMindModel(TerraMindConfig(**TINY, tim_modalities=["LULC"])).train()
    assert isinstance(model.tim_generator, TerraMindThinkingInModalities)
    assert not model.tim_generator.training and model.encoder.training
    assert not any(p.requires_grad for p in model.tim_generator.parameters())
    assert any(k.startswith("tim_generator.decoder.") for k in model.state_dict())  # saved TiM weights' names
    assert model.embeddings is model.tim_generator.terramind.encoder_embeddings


def reference_sample(logits, temperature, top_k, top_p, generator):
    """The original's sampling (terratorch `generate.py`): top-k, then nucleus on the raw logits, then temperature."""
    logits = logits.clone()
    if top_k:
        k = top_k if isinstance(top_k, int) else int(top_k * logits.shape[-1])
        logits[logits < torch.topk(logits, k)[0][..., -1, None]] = float("-inf")
    if top_p:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        remove = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits[remove.scatter(-1, order, remove)] = float("-inf")
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]


@pytest.mark.parametrize("settings", [(1.0, 0, 0.8), (0.7, 0, 0.9), (1.0, 50, 0.8), (1.3, 0.01, 0.0)])
def test_sampling_through_logits_warpers_draws_the_original_tokens(settings):
    torch.manual_seed(0)
    logits = torch.randn(64, 4096) * 3
    expected = reference_sample(logits, *settings, torch.Generator().manual_seed(1))
    assert torch.equal(sample_tokens(logits, *settings, torch.Generator().manual_seed(1)), expected)
    assert torch.equal(sample_tokens(logits, 0.0), logits.argmax(-1))


def test_layers_record_nothing_without_a_request():
    model = TerraMindModel(TerraMindConfig(**TINY)).eval()
    with torch.no_grad():
        model(torch.randn(1, 12, 32, 32))
    assert not getattr(model, "_output_capturing_hooks_installed", False)
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, nn.Module))


@pytest.mark.parametrize("model_class", [TerraMindModel, TerraMindBackbone, TerraMindForSemanticSegmentation],
                         ids=lambda c: c.__name__)  # fmt: skip
def test_selected_hidden_states_only(model_class):
    """`output_hidden_states=[0, -1]` keeps those (None elsewhere), as Transformers; a head's neck still reads
    the stages it needs, and its output is unchanged."""
    torch.manual_seed(0)
    model = model_class(TerraMindConfig(**TINY, **CLASSES[model_class])).eval()
    x = torch.randn(1, 12, 32, 32)
    with torch.no_grad():
        every = model(x, output_hidden_states=True)
        some = model(x, output_hidden_states=[0, -1])
        none = model(x)
    assert some.hidden_states[1] is None and none.hidden_states is None
    torch.testing.assert_close(some.hidden_states[0], every.hidden_states[0])
    torch.testing.assert_close(some.hidden_states[2], every.hidden_states[2])
    torch.testing.assert_close(first_output(some), first_output(none))
