"""Metrics of a classifier's probabilities: error, negative log-likelihood, calibration (ECE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15) -> dict[str, float]:
    """Accuracy and error (%), negative log-likelihood, and expected calibration error (%).

    probs: (n, classes) probabilities; labels: (n,). ECE uses ``bins`` equal-width
    confidence bins: sum_b |B|/n * |accuracy(B) - confidence(B)|.
    """
    if labels.numel() == 0:
        return {"accuracy": float("nan"), "error": float("nan"), "nll": float("nan"), "ece": float("nan")}
    probs = probs.double()
    confidence, predicted = probs.max(dim=1)
    hit = (predicted == labels).double()
    accuracy = 100.0 * float(hit.mean())
    nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # (n,) bin of each example
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += float(mask.double().mean() * (hit[mask].mean() - confidence[mask].mean()).abs())
    return {"accuracy": accuracy, "error": 100.0 - accuracy, "nll": nll, "ece": 100.0 * ece}
