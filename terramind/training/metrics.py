"""Evaluation metrics for `Trainer`: mIoU and accuracies (segmentation), RMSE and MAE (regression), accuracy
(classification), as `build_compute_metrics(task)`, and `preprocess_logits_for_metrics` to keep class ids instead of
logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# The tasks that `build_dataset` reads and `build_compute_metrics` scores.
TASKS = ("segmentation", "regression", "classification")


def preprocess_logits_for_metrics(logits: Any, labels: Any = None) -> torch.Tensor:
    """For `Trainer(preprocess_logits_for_metrics=...)`: keep class ids (B, H, W) instead of (B, C, H, W) logits."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=1) if logits.ndim == 4 else logits


def _predictions(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(labels)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int) -> np.ndarray:
    """(num_labels, num_labels) counts, rows = true class, columns = predicted class; ignored pixels skipped."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_labels)
    index = labels[valid].astype(np.int64) * num_labels + predictions[valid].astype(np.int64)
    return np.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def segmentation_metrics(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int = -100,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:  # fmt: skip
    """mIoU (over classes present in labels or predictions), pixel accuracy, mean class accuracy, IoU per class."""
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(axis=1)
    matrix = confusion_matrix(predictions, labels, num_labels, ignore_index)
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    support = matrix.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(support > 0, true_positive / support, np.nan)
    total = matrix.sum()
    metrics = {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "mean_accuracy": float(np.nanmean(class_accuracy)) if np.isfinite(class_accuracy).any() else 0.0,
    }
    names = list(class_names) if class_names else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"class_names has {len(names)} names for num_labels={num_labels}.")
    metrics.update({f"IoU_{name}": float(v) for name, v in zip(names, iou, strict=True) if np.isfinite(v)})
    return metrics


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over finite labels."""
    if predictions.shape != labels.shape and predictions.ndim == labels.ndim + 1 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    valid = np.isfinite(labels)
    error = predictions[valid].astype(np.float64) - labels[valid].astype(np.float64)
    if error.size == 0:
        return {"rmse": float("nan"), "mae": float("nan")}
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> dict[str, float]:
    """Top-1 accuracy (single-label) or exact-match/element accuracy (multi-label logits)."""
    if labels.ndim == predictions.ndim and labels.ndim == 2:  # multi-label
        hits = (predictions > 0) == (labels > 0.5)
        return {"accuracy": float(hits.all(axis=1).mean()), "label_accuracy": float(hits.mean())}
    predicted = predictions.argmax(axis=-1) if predictions.ndim == labels.ndim + 1 else predictions
    valid = labels != ignore_index
    return {"accuracy": float((predicted[valid] == labels[valid]).mean()) if valid.any() else 0.0}


def build_compute_metrics(
    task: str = "segmentation", num_labels: int | None = None, ignore_index: int = -100,
    class_names: Sequence[str] | None = None,
) -> Callable[[Any], dict[str, float]]:  # fmt: skip
    """`compute_metrics` for Trainer: mIoU/accuracy (segmentation), RMSE/MAE (regression), accuracy (classification)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    if task == "segmentation" and not num_labels:
        raise ValueError("Segmentation metrics need num_labels.")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = _predictions(eval_pred)
        if task == "segmentation":
            return segmentation_metrics(predictions, labels, num_labels, ignore_index, class_names)
        if task == "regression":
            return regression_metrics(predictions, labels)
        return classification_metrics(predictions, labels, ignore_index)

    return compute_metrics
