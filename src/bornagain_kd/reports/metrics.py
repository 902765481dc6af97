"""Metrics of a classifier's probabilities: error, negative log-likelihood, calibration (ECE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15) -> dict[str, float]:
    """Accuracy and error (%), negative log-likelihood, and expected calibration error (%).

    probs: (n, classes) probabilities; labels: (n,). NLL is the mean of -ln p(label) (natural log, p
    clamped at 1e-12). ECE uses ``bins`` equal-width confidence bins closed on the right,
    B_1 = [0, 1/bins], B_b = ((b-1)/bins, b/bins] for b >= 2 (a confidence exactly on an edge joins the
    lower bin), and is sum_b |B_b|/n * |accuracy(B_b) - mean confidence(B_b)|, confidence = max_j p_j.
    """
    if labels.numel() == 0:
        return {"accuracy": float("nan"), "error": float("nan"), "nll": float("nan"), "ece": float("nan")}
    probs = probs.double()
    confidence, predicted = probs.max(dim=1)
    hit = (predicted == labels).double()
    accuracy = 100.0 * float(hit.mean())
    nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    which = confidence_bins(confidence, bins)  # (n,) bin of each example
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += float(mask.double().mean() * (hit[mask].mean() - confidence[mask].mean()).abs())
    return {"accuracy": accuracy, "error": 100.0 - accuracy, "nll": nll, "ece": 100.0 * ece}


def confidence_bins(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index in 0..bins-1 of each confidence: equal-width bins closed on the right ((lo, hi]).

    The inner edges are exactly b / bins (not linspace's rounding), so a confidence of k / bins lands in bin
    k - 1 as the docstring of classification_metrics says."""
    inner = torch.arange(1, bins, dtype=torch.float64) / bins  # (bins - 1,)
    # bucketize with right=False: edges[i-1] < v <= edges[i], i.e. right-closed intervals
    return torch.bucketize(confidence.double(), inner, right=False)


def agreement_with(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """How far a student follows its teacher on the same examples (Stanton et al. 2021: students that disagree
    with their teachers can still generalise better, so agreement is reported beside accuracy): top-1 agreement
    (%, the examples whose argmax classes are equal) and the mean KL(teacher || student) in nats, from the two
    (n, classes) probability tensors."""
    t, s = teacher.double(), student.double()
    agree = 100.0 * (t.argmax(dim=1) == s.argmax(dim=1)).double().mean().item()
    kl = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(dim=1).mean().item()
    return {"agreement_with_teacher": agree, "kl_from_teacher": kl}

