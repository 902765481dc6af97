"""GLUE metrics exactly as GLUE defines them, and the GLUE average.

All values are fractions (accuracy 0.853, not 85.3); multiply by 100 for tables.

    accuracy  = mean(pred == y)
    f1        = 2 TP / (2 TP + FP + FN), positive class 1 (MRPC, QQP)
    mcc       = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0 when undefined (CoLA)
    pearson   = cov(pred, y) / (std(pred) std(y))                      (STS-B)
    spearman  = pearson of the ranks (ties get their average rank)     (STS-B)

Task score = mean of that task's metrics (MNLI: matched and mismatched accuracy);
GLUE score = mean of the task scores (as in the BAM paper).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from bornagain_kd.glue.tasks import GlueTask, get_task


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def _confusion(pred: np.ndarray, labels: np.ndarray) -> tuple[int, int, int, int]:
    pred, labels = np.asarray(pred) == 1, np.asarray(labels) == 1
    tp = int(np.sum(pred & labels))
    tn = int(np.sum(~pred & ~labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    return tp, tn, fp, fn


def f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of class 1; 0 when there is no positive prediction nor label (as scikit-learn)."""
    tp, _, fp, fn = _confusion(pred, labels)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corr(pred: np.ndarray, labels: np.ndarray) -> float:
    """Binary Matthews correlation; 0 when a marginal is empty (as scikit-learn)."""
    tp, tn, fp, fn = _confusion(pred, labels)
    denom = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(pred: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant (a constant predictor has none)."""
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denom) if denom else float("nan")


def spearman(pred: np.ndarray, labels: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson of average ranks."""
    return pearson(rankdata(pred), rankdata(labels))


METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}


def predictions_from_outputs(task: GlueTask | str, outputs: np.ndarray) -> np.ndarray:
    """Class predictions (argmax of logits) or the regression outputs themselves."""
    task = get_task(task) if isinstance(task, str) else task
    outputs = np.asarray(outputs)
    return outputs.astype(np.float64) if task.is_regression else outputs.argmax(axis=-1)


def compute_metrics(task: GlueTask | str, pred: np.ndarray, labels: np.ndarray,
                    suffix: str = "") -> dict[str, float]:
    """The task's GLUE metrics of one split, named `<metric><suffix>` (MNLI dev: '_m', '_mm')."""
    task = get_task(task) if isinstance(task, str) else task
    if len(pred) != len(labels) or len(pred) == 0:
        raise ValueError(f"{task.name}: {len(pred)} predictions for {len(labels)} labels")
    return {name + suffix: METRIC_FUNCTIONS[name](pred, labels) for name in task.metrics}


def task_score(task: GlueTask | str, metrics: dict[str, float]) -> float:
    """Mean of the task's metrics (both MNLI dev sets); NaN metrics count as 0 (no correlation)."""
    task = get_task(task) if isinstance(task, str) else task
    values = [metrics[k] for k in task.score_keys]
    return float(np.mean([0.0 if math.isnan(v) else v for v in values]))


def glue_score(metrics_by_task: dict[str, dict[str, float]]) -> float:
    """The GLUE average: mean over tasks of each task's averaged metrics."""
    if not metrics_by_task:
        raise ValueError("glue_score needs at least one task")
    return float(np.mean([task_score(t, m) for t, m in metrics_by_task.items()]))
