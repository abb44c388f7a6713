"""4M's any-to-any masking: budgets spread by a Dirichlet, disjoint input and target tokens, missing modalities."""

from __future__ import annotations

import pytest
import torch

from terramind.training.pretraining import AnyToAnyCollator, AnyToAnyMasking, spread_budget


def test_spread_budget_fills_the_budget_within_capacities():
    torch.manual_seed(0)
    for alpha in (0.05, 0.2, 1.0, 100.0):
        for _ in range(50):
            counts = spread_budget(20, [16, 16, 4], alpha)
            assert sum(counts) == 20 and all(0 <= c <= cap for c, cap in zip(counts, [16, 16, 4], strict=True))
    assert sum(spread_budget(100, [16, 16], 0.2)) == 32  # more budget than tokens: every token
    # small alpha: mostly one modality; large alpha: even shares
    torch.manual_seed(1)
    concentrated = [max(spread_budget(30, [100, 100, 100], 0.05)) for _ in range(100)]
    even = [max(spread_budget(30, [100, 100, 100], 1000.0)) for _ in range(100)]
    assert sum(concentrated) / 100 > 25 and max(even) <= 12


def test_masks_respect_budgets_and_are_disjoint():
    """Per sample: at most input_budget input tokens and target_budget target tokens; a modality that is both an
    input (raw) and a target (tokens) never has a position in both."""
    masking = AnyToAnyMasking(input_budget=10, target_budget=7, dirichlet_alpha=0.5)
    torch.manual_seed(0)
    for _ in range(100):
        inputs, targets = masking.sample({"S2L2A": 16, "S1RTC": 16, "LULC": 16}, ["S2L2A", "S1RTC"],
                                         ["S1RTC", "LULC"])  # fmt: skip
        assert sum(int(m.sum()) for m in inputs.values()) == 10
        assert sum(int(m.sum()) for m in targets.values()) == 7
        assert not (inputs["S1RTC"] & targets["S1RTC"]).any()
        assert set(inputs) == {"S2L2A", "S1RTC"} and set(targets) == {"S1RTC", "LULC"}


def test_samples_lacking_a_modality_draw_from_the_others():
    masking = AnyToAnyMasking(input_budget=6, target_budget=6, dirichlet_alpha=0.2)
    collate = AnyToAnyCollator(masking, ["S2L2A", "DEM"], ["LULC"], patch_size=16)
    lulc = torch.randint(0, 10, (2, 2))
    with_dem = {"pixel_values": {"S2L2A": torch.randn(12, 32, 32), "DEM": torch.randn(1, 32, 32)},
                "tokens": {"LULC": lulc}}  # fmt: skip
    without = {"pixel_values": {"S2L2A": torch.randn(12, 32, 32), "DEM": None}, "tokens": {"LULC": None}}
    torch.manual_seed(0)
    for _ in range(20):
        batch = collate([with_dem, without])
        assert not batch["input_masks"]["DEM"][1].any() and int(batch["input_masks"]["S2L2A"][1].sum()) == 4
        assert not batch["target_masks"]["LULC"][1].any() and (batch["labels"]["LULC"][1] == -100).all()
        assert int(batch["input_masks"]["S2L2A"][0].sum() + batch["input_masks"]["DEM"][0].sum()) == 6
        assert batch["pixel_values"]["DEM"].shape == (2, 1, 32, 32)
    # fixed seeds (evaluation) draw the same tokens every time
    seeded = [dict(with_dem, mask_seed=7), dict(without, mask_seed=8)]
    first, again = collate(seeded), collate(seeded)
    assert torch.equal(first["input_masks"]["S2L2A"], again["input_masks"]["S2L2A"])


def test_bad_settings():
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        AnyToAnyMasking(dirichlet_alpha=0)
    with pytest.raises(ValueError, match="budget"):
        AnyToAnyMasking(input_budget=0)
