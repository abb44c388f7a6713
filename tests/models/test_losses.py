"""Task losses (TerraTorch's names): values on hand-computed cases, combinations, ignore_index, class weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from terramind.losses import parse_loss, regression_loss, segmentation_loss

LOG3 = math.log(3.0)


def two_pixels(num_classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel 0: p = (0.75, 0.25, 0...) with label 0; pixel 1: p = (0.25, 0.75, 0...) with label 1."""
    logits = torch.full((1, num_classes, 1, 2), -1e4)
    logits[0, :2, 0, 0] = torch.tensor([LOG3, 0.0])
    logits[0, :2, 0, 1] = torch.tensor([0.0, LOG3])
    return logits, torch.tensor([[[0, 1]]])


def test_dice_matches_hand_computed_soft_dice():
    logits, labels = two_pixels()
    # per class: intersection 0.75, cardinality (0.75 + 0.25) + 1 = 2 -> dice 0.75, loss 0.25
    assert segmentation_loss(logits, labels, "dice").item() == pytest.approx(0.25, abs=1e-6)
    # an absent third class counts 0 but stays in the mean, as in segmentation_models_pytorch
    logits, labels = two_pixels(3)
    assert segmentation_loss(logits, labels, "dice").item() == pytest.approx(0.5 / 3, abs=1e-6)
    # class weights make it a weighted mean of the per-class losses (0.25, 0.25, 0)
    weighted = segmentation_loss(logits, labels, "dice", class_weights=[1.0, 3.0, 4.0]).item()
    assert weighted == pytest.approx((0.25 + 0.75) / 8, abs=1e-6)


def test_jaccard_matches_hand_computed_soft_iou():
    logits, labels = two_pixels()
    # per class: intersection 0.75, union 2 - 0.75 = 1.25 -> IoU 0.6, loss 0.4
    assert segmentation_loss(logits, labels, "jaccard").item() == pytest.approx(0.4, abs=1e-6)


def test_focal_matches_hand_computed_value():
    logits, labels = two_pixels()
    expected = -(0.25**2) * math.log(0.75)  # both pixels have p_t = 0.75
    assert segmentation_loss(logits, labels, "focal").item() == pytest.approx(expected, rel=1e-5)
    # gamma 2 down-weights easy pixels: below cross-entropy
    assert segmentation_loss(logits, labels, "focal") < segmentation_loss(logits, labels, "ce")
    weighted = segmentation_loss(logits, torch.tensor([[[0, 0]]]), "focal", class_weights=[2.0, 1.0]).item()
    assert weighted == pytest.approx((-(0.25**2) * math.log(0.75) - (0.75**2) * math.log(0.25)) / 2, rel=1e-5)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    """On 0/1 probabilities the Lovasz extension equals the Jaccard loss: mean over present classes of 1 - IoU."""
    labels = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    predicted = torch.tensor([[[0, 1, 1, 1, 2, 0]]])
    logits = (F.one_hot(predicted, 4).permute(0, 3, 1, 2).float() - 0.5) * 1e4
    iou = [1 / 3, 2 / 3, 1 / 2]  # class 3 is absent from the labels: not counted
    assert segmentation_loss(logits, labels, "lovasz").item() == pytest.approx(1 - sum(iou) / 3, abs=1e-6)
    assert segmentation_loss(logits, predicted, "lovasz").item() == pytest.approx(0.0, abs=1e-6)


def test_combinations_and_ignore_index():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (2, 8, 8), generator=generator)
    labels[0, :3] = 255
    single = {name: segmentation_loss(logits, labels, name, ignore_index=255) for name in ("ce", "dice", "focal")}
    combined = segmentation_loss(logits, labels, {"ce": 0.5, "dice": 0.5}, ignore_index=255)
    torch.testing.assert_close(combined, 0.5 * single["ce"] + 0.5 * single["dice"])
    torch.testing.assert_close(segmentation_loss(logits, labels, ["ce", "focal"], ignore_index=255),
                               single["ce"] + single["focal"])  # fmt: skip
    torch.testing.assert_close(single["ce"], F.cross_entropy(logits, labels, ignore_index=255))
    # ignored pixels do not count: changing their logits changes nothing
    changed = logits.clone()
    changed[0, :, :3] = 100.0
    for name in ("ce", "dice", "focal", "lovasz", "jaccard"):
        torch.testing.assert_close(segmentation_loss(changed, labels, name, ignore_index=255),
                                   segmentation_loss(logits, labels, name, ignore_index=255))  # fmt: skip


@pytest.mark.parametrize("loss", ["ce", "dice", "focal", "lovasz", "jaccard", {"ce": 0.5, "dice": 0.5}])
def test_all_ignored_batch_gives_zero_loss_and_zero_gradients(loss):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = segmentation_loss(logits, torch.full((2, 4, 4), -100), loss, class_weights=[1.0, 2.0, 1.0])
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_regression_losses():
    prediction = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[[[2.0, 2.0, float("nan"), -9.0]]]])
    assert regression_loss(prediction, labels, "mse", ignore_index=-9.0).item() == pytest.approx(0.5)
    assert regression_loss(prediction, labels, "rmse", ignore_index=-9.0).item() == pytest.approx(math.sqrt(0.5))
    assert regression_loss(prediction, labels, "mae", ignore_index=-9.0).item() == pytest.approx(0.5)
    assert regression_loss(prediction, labels, {"mse": 1.0, "mae": 2.0}, -9.0).item() == pytest.approx(1.5)
    assert regression_loss(prediction, labels, "mse").item() == pytest.approx((1 + 81) / 3)  # -9 counts without it
    nothing = regression_loss(prediction, torch.full_like(labels, float("nan")), "rmse")
    nothing.backward()
    assert nothing.item() == 0.0 and torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_parse_loss_errors():
    assert parse_loss(["ce", "dice"], ("ce", "dice"), "segmentation") == {"ce": 1.0, "dice": 1.0}
    with pytest.raises(ValueError, match="Unknown segmentation loss"):
        parse_loss("tversky", ("ce", "dice"), "segmentation")
    with pytest.raises(ValueError, match="non-negative numbers"):
        parse_loss({"ce": -1.0}, ("ce", "dice"), "segmentation")
    with pytest.raises(ValueError, match="names a loss twice"):
        parse_loss(["ce", "ce"], ("ce", "dice"), "segmentation")
