"""`TerraMindForGeneration.forward(input_masks=, target_masks=)`: per-sample subsets of input and target tokens
(what 4M's masked pre-training feeds the model)."""

from __future__ import annotations

import pytest
import torch
from conftest import mini_tokenizer, tiny_config

from terramind import TerraMindForGeneration


def _generator() -> TerraMindForGeneration:
    torch.manual_seed(0)
    model = TerraMindForGeneration(tiny_config(image_size=224, modalities=["S2L2A"]),
                                   modalities=["S2L2A", "S1RTC", "LULC"]).eval()  # fmt: skip
    model.terramind.set_tokenizer("LULC", mini_tokenizer("LULC"))
    return model


def test_full_masks_equal_the_plain_forward():
    model = _generator()
    x, lulc = torch.randn(2, 12, 64, 64), torch.randint(0, 4375, (2, 4, 4))
    full = model(S2L2A=x, labels={"LULC": lulc})
    every = torch.ones(2, 16, dtype=torch.bool)
    masked = model(S2L2A=x, labels={"LULC": lulc}, input_masks={"S2L2A": every}, target_masks={"LULC": every})
    torch.testing.assert_close(masked.logits["LULC"], full.logits["LULC"])
    torch.testing.assert_close(masked.loss, full.loss)


def test_per_sample_tokens_equal_each_sample_alone():
    """Each sample's logits equal those of the sample run alone with its own tokens; padding (-1) is not scored."""
    model = _generator()
    x, s1, lulc = torch.randn(2, 12, 64, 64), torch.randn(2, 2, 64, 64), torch.randint(0, 4375, (2, 4, 4))
    seen = torch.zeros(2, 16, dtype=torch.bool)
    seen[0, :5], seen[1, 3:12] = True, True
    s1_seen = torch.zeros(2, 16, dtype=torch.bool)
    s1_seen[0, 12:], s1_seen[1, 7] = True, True
    targets = torch.zeros(2, 16, dtype=torch.bool)
    targets[0, 10:12], targets[1, :3] = True, True
    out = model(S2L2A=x, S1RTC=s1, labels={"LULC": lulc}, input_masks={"S2L2A": seen, "S1RTC": s1_seen},
                target_masks={"LULC": targets})  # fmt: skip
    assert out.predicted_positions["LULC"].tolist() == [[10, 11, -1], [0, 1, 2]]
    assert out.encoder_last_hidden_state.shape[1] == 10  # packed: 5 + 4 and 9 + 1 tokens, not 9 + 4
    losses = []
    for b in range(2):
        wanted = targets[b].nonzero()[:, 0]
        inputs = {"S2L2A": x[b : b + 1], "S1RTC": s1[b : b + 1]}
        positions = {"S2L2A": seen[b].nonzero()[:, 0], "S1RTC": s1_seen[b].nonzero()[:, 0]}
        context, _ = model.encode_context(model.terramind.collect_inputs(None, inputs), positions)
        alone, _ = model.decode("LULC", context, (4, 4), wanted)
        torch.testing.assert_close(out.logits["LULC"][b, : len(wanted)], alone[0], rtol=1e-4, atol=1e-5)
        losses.append(torch.nn.functional.cross_entropy(alone[0], lulc[b].flatten()[wanted], reduction="sum"))
    torch.testing.assert_close(out.loss, sum(losses) / 5, rtol=1e-4, atol=1e-5)


def test_mask_errors():
    model = _generator()
    x, lulc = torch.randn(1, 12, 32, 32), torch.randint(0, 4375, (1, 2, 2))
    with pytest.raises(ValueError, match="boolean mask"):
        model(S2L2A=x, labels={"LULC": lulc}, input_masks={"S2L2A": torch.ones(1, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not among the inputs"):
        model(S2L2A=x, labels={"LULC": lulc}, input_masks={"S1RTC": torch.ones(1, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="every input token"):
        model(S2L2A=x, labels={"LULC": lulc}, input_masks={"S2L2A": torch.zeros(1, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not an image target"):
        model(S2L2A=x, labels={"LULC": lulc}, target_masks={"S1RTC": torch.ones(1, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not both"):
        model(S2L2A=x, labels={"LULC": lulc}, reveal_fraction=0.5, target_masks={"LULC": torch.ones(1, 4).bool()})


def test_a_target_with_no_chosen_token_is_skipped():
    model = _generator()
    x, lulc = torch.randn(2, 12, 32, 32), torch.randint(0, 4375, (2, 2, 2))
    out = model(S2L2A=x, labels={"LULC": lulc}, target_masks={"LULC": torch.zeros(2, 4, dtype=torch.bool)})
    assert "LULC" not in out.logits and out.loss.item() == 0.0
