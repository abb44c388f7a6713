"""Metrics for Trainer: segmentation, regression and classification (`terramind.training.metrics`)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from terramind.training.metrics import build_compute_metrics, segmentation_metrics


def test_compute_metrics():
    labels = np.array([[[0, 0, 1, 1], [2, 2, -100, 1]]])
    predictions = np.array([[[0, 1, 1, 1], [2, 0, 0, 1]]])
    metrics = segmentation_metrics(predictions, labels, num_labels=3)
    # IoU: class 0 = 1/3, class 1 = 3/4, class 2 = 1/2
    assert metrics["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    logits = np.eye(3)[predictions].transpose(0, 3, 1, 2)  # (B, C, H, W) logits give the same
    compute = build_compute_metrics("segmentation", num_labels=3)
    assert compute(EvalPrediction(predictions=logits, label_ids=labels))["mIoU"] == metrics["mIoU"]
    rmse = build_compute_metrics("regression")(EvalPrediction(predictions=np.array([[[1.0, 3.0]]]),
                                                              label_ids=np.array([[[2.0, np.nan]]])))  # fmt: skip
    assert rmse == {"rmse": 1.0, "mae": 1.0}
    accuracy = build_compute_metrics("classification")(EvalPrediction(predictions=np.array([[0.1, 0.9], [2.0, 1.0]]),
                                                                      label_ids=np.array([1, 1])))  # fmt: skip
    assert accuracy == {"accuracy": 0.5}
