"""Task losses of TerraMind's heads, by TerraTorch's names: `ce`, `dice`, `focal`, `lovasz`, `jaccard` for segmentation, `mse`,
`mae` (= `l1`), `rmse`, `huber` for pixel regression, and weighted combinations (`{"ce": 0.5, "dice": 0.5}`; a list
of names sums them, as TerraTorch's `CombinedLoss` does).

TerraTorch takes dice, lovasz and jaccard from segmentation_models_pytorch (smp 0.5, multiclass mode); it pulls in
timm and torchvision, so the few lines each loss needs are written here with smp's semantics (tests check them on
hand-computed cases). Every loss counts labelled pixels only (`ignore_index`; NaN for regression), and a batch without
any labelled pixel gives a loss of 0 whose gradients are 0 (a random crop can land entirely in nodata), instead of NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .configuration_terramind import REGRESSION_LOSSES, SEGMENTATION_LOSSES

FOCAL_GAMMA = 2.0
DICE_EPS = 1e-7  # smp's clamp of the dice denominator


def parse_loss(loss: str | Sequence[str] | Mapping[str, float], allowed: Sequence[str], what: str) -> dict[str, float]:
    """`"dice"`, `["ce", "dice"]` (summed) or `{"ce": 0.5, "dice": 0.5}` as {name: weight}; ValueError otherwise."""
    if isinstance(loss, str):
        terms = {loss: 1.0}
    elif isinstance(loss, Mapping):
        terms = dict(loss)
    elif isinstance(loss, Sequence) and loss:
        terms = dict.fromkeys(loss, 1.0)
        if len(terms) != len(loss):
            raise ValueError(f"loss {list(loss)} names a loss twice.")
    else:
        raise ValueError(f"loss must be a name, a list of names or {{name: weight}}, got {loss!r}.")
    unknown = [name for name in terms if name not in allowed]
    if unknown or not terms:
        raise ValueError(f"Unknown {what} loss {unknown or loss!r}; choose from {', '.join(allowed)} or a weighted "
                         f"combination such as {{'{allowed[0]}': 0.5, '{allowed[1]}': 0.5}}.")  # fmt: skip
    bad = {name: w for name, w in terms.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0}
    if bad:
        raise ValueError(f"Loss weights must be non-negative numbers, got {bad}.")
    return {name: float(weight) for name, weight in terms.items()}


def _zero_loss(prediction: torch.Tensor) -> torch.Tensor:
    """0, attached to the graph (Trainer calls backward on it) with zero gradients."""
    return prediction.sum() * 0.0


def _weighted_mean(per_class: torch.Tensor, counted: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-class losses over the `counted` classes, weighted by `weight` when given."""
    scale = counted.to(per_class.dtype) if weight is None else counted.to(per_class.dtype) * weight
    return (per_class * scale).sum() / scale.sum().clamp_min(torch.finfo(per_class.dtype).tiny)


# ----------------------------------------------------------------------------- segmentation
def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                       weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """Cross-entropy over labelled pixels, weighted by class as `torch.nn.CrossEntropyLoss` (TerraTorch's `ce`)."""
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)


def _soft_overlap(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class over the labelled pixels of the batch: soft intersection and cardinality of the softmax with the
    one-hot labels, and whether the class occurs in the labels."""
    classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1) * valid[:, None]
    one_hot = F.one_hot(torch.where(valid, labels, 0), classes).movedim(-1, 1) * valid[:, None]
    dims = (0, *range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(dims)
    return intersection, probabilities.sum(dims) + one_hot.sum(dims), one_hot.sum(dims) > 0


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
              weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """smp's multiclass DiceLoss: 1 - soft dice of the softmax per class over the whole batch, 0 for classes absent
    from the labels (they still count in the mean, as in smp); class weights make it a weighted mean."""
    intersection, cardinality, present = _soft_overlap(logits, labels, valid)
    per_class = (1.0 - 2.0 * intersection / cardinality.clamp_min(DICE_EPS)) * present
    return _weighted_mean(per_class, torch.ones_like(present), weight)


def jaccard_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                 weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """smp's multiclass JaccardLoss: 1 - soft IoU of the softmax per class, as `dice_loss` otherwise (here with
    `ignore_index`, which TerraTorch refuses for this loss)."""
    intersection, cardinality, present = _soft_overlap(logits, labels, valid)
    per_class = (1.0 - intersection / (cardinality - intersection).clamp_min(DICE_EPS)) * present
    return _weighted_mean(per_class, torch.ones_like(present), weight)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
               weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """Softmax focal loss (Lin et al., gamma 2): -(1 - p_t)^2 log p_t, averaged over labelled pixels; class weights
    act as per-class alpha, normalised like weighted cross-entropy."""
    log_p = logits.float().log_softmax(dim=1).movedim(1, -1)[valid]
    target = labels[valid]
    log_p_t = log_p.gather(1, target[:, None])[:, 0]
    terms = -((1.0 - log_p_t.exp()) ** FOCAL_GAMMA) * log_p_t
    alpha = weight[target] if weight is not None else torch.ones_like(terms)
    return (terms * alpha).sum() / alpha.sum().clamp_min(torch.finfo(terms.dtype).tiny)


def lovasz_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """smp's multiclass LovaszLoss (Lovasz-softmax, Berman et al. 2018) over the labelled pixels of the batch, averaged
    over the classes present in the labels (weighted by class weights when given)."""
    probabilities = logits.float().softmax(dim=1).movedim(1, -1)[valid]
    target = labels[valid]
    classes = logits.shape[1]
    per_class = probabilities.new_zeros(classes)
    present = torch.zeros(classes, dtype=torch.bool, device=logits.device)
    for cls in range(classes):
        foreground = (target == cls).to(probabilities.dtype)
        if foreground.sum() == 0:
            continue
        present[cls] = True
        errors, order = (foreground - probabilities[:, cls]).abs().sort(descending=True)
        sorted_foreground = foreground[order]
        intersection = sorted_foreground.sum() - sorted_foreground.cumsum(0)
        union = sorted_foreground.sum() + (1.0 - sorted_foreground).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])  # the Lovasz extension's gradient
        per_class[cls] = torch.dot(errors, jaccard)
    return _weighted_mean(per_class, present, weight)


SEGMENTATION_LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy_loss, "dice": dice_loss, "focal": focal_loss, "lovasz": lovasz_loss, "jaccard": jaccard_loss,
}  # fmt: skip


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, loss: Any = "ce", ignore_index: int = -100,
                      class_weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """Weighted sum of segmentation losses of (B, C, H, W) logits and (B, H, W) int64 labels (checked class ids)."""
    terms = parse_loss(loss, SEGMENTATION_LOSSES, "segmentation")
    valid = labels != ignore_index
    if not valid.any():
        return _zero_loss(logits)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32,
                                                                  device=logits.device)  # fmt: skip
    total = sum(factor * SEGMENTATION_LOSS_FUNCTIONS[name](logits, labels, valid, weight, ignore_index)
                for name, factor in terms.items())  # fmt: skip
    return total.to(logits.dtype)


# ----------------------------------------------------------------------------- regression
REGRESSION_LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "l1": F.l1_loss,
    "rmse": lambda prediction, target: F.mse_loss(prediction, target).clamp_min(1e-12).sqrt(),
    "huber": F.huber_loss,
}


def regression_loss(prediction: torch.Tensor, labels: torch.Tensor, loss: Any = "mse",
                    ignore_index: float | None = None) -> torch.Tensor:  # fmt: skip
    """Weighted sum of regression losses over finite label pixels (and those not equal to `ignore_index`); the
    root of `rmse` is taken after the mean over those pixels, as in TerraTorch."""
    terms = parse_loss(loss, REGRESSION_LOSSES, "regression")
    valid = torch.isfinite(labels)
    if ignore_index is not None:
        valid &= labels != ignore_index
    if not valid.any():
        return _zero_loss(prediction)
    predicted, target = prediction[valid], labels[valid].to(prediction.dtype)
    return sum(factor * REGRESSION_LOSS_FUNCTIONS[name](predicted, target) for name, factor in terms.items())


def classification_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                                 class_weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """Single-label cross-entropy of (B, C) logits; a batch of ignored labels gives 0."""
    if not (labels != ignore_index).any():
        return _zero_loss(logits)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                                  device=logits.device)  # fmt: skip
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)


__all__ = [
    "REGRESSION_LOSSES",
    "SEGMENTATION_LOSSES",
    "classification_cross_entropy",
    "dice_loss",
    "focal_loss",
    "jaccard_loss",
    "lovasz_loss",
    "parse_loss",
    "regression_loss",
    "segmentation_loss",
]
