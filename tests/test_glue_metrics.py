"""GLUE metrics against scikit-learn / scipy on fixed inputs, the GLUE average, submission files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bornagain_kd.glue.data import GlueExample
from bornagain_kd.glue.evaluation import majority_baseline
from bornagain_kd.glue.metrics import (
    accuracy, compute_metrics, f1, glue_score, matthews_corr, pearson, spearman, task_score,
)
from bornagain_kd.glue.submission import format_predictions, read_submission, write_submission
from bornagain_kd.glue.tasks import get_task

RNG = np.random.default_rng(1234)
LABELS = RNG.integers(0, 2, size=200)
PRED = np.where(RNG.random(200) < 0.7, LABELS, 1 - LABELS)
Y = RNG.uniform(0, 5, size=150)
Y_HAT = Y + RNG.normal(0, 1.5, size=150)


def test_classification_metrics_match_scikit_learn():
    assert accuracy(PRED, LABELS) == pytest.approx(accuracy_score(LABELS, PRED), abs=1e-12)
    assert f1(PRED, LABELS) == pytest.approx(f1_score(LABELS, PRED), abs=1e-12)
    assert matthews_corr(PRED, LABELS) == pytest.approx(matthews_corrcoef(LABELS, PRED), abs=1e-12)
    # hand-checked values on a tiny case: TP=2, TN=1, FP=1, FN=1
    pred, labels = np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0])
    assert f1(pred, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_corr(pred, labels) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))


def test_degenerate_cases_match_scikit_learn():
    constant = np.ones(10, dtype=int)
    labels = np.array([0, 1] * 5)
    assert matthews_corr(constant, labels) == matthews_corrcoef(labels, constant) == 0.0
    zeros = np.zeros(10, dtype=int)
    assert f1(zeros, zeros) == f1_score(zeros, zeros, zero_division=0.0) == 0.0


def test_correlations_match_scipy_including_ties():
    assert pearson(Y_HAT, Y) == pytest.approx(pearsonr(Y_HAT, Y)[0], abs=1e-12)
    assert spearman(Y_HAT, Y) == pytest.approx(spearmanr(Y_HAT, Y)[0], abs=1e-12)
    tied_pred, tied_y = np.round(Y_HAT), np.round(Y)  # many ties: average ranks
    assert spearman(tied_pred, tied_y) == pytest.approx(spearmanr(tied_pred, tied_y)[0], abs=1e-12)
    assert math.isnan(pearson(np.ones(5), np.arange(5.0)))


def test_task_metrics_and_glue_average():
    mrpc = compute_metrics("MRPC", PRED, LABELS)
    assert set(mrpc) == {"f1", "accuracy"}
    assert task_score("MRPC", mrpc) == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    stsb = compute_metrics("STS-B", Y_HAT, Y)
    assert stsb["spearman"] == pytest.approx(spearmanr(Y_HAT, Y)[0])
    mnli = {**compute_metrics("MNLI", PRED, LABELS, suffix="_m"), **compute_metrics("MNLI", 1 - PRED, LABELS, "_mm")}
    assert set(mnli) == {"accuracy_m", "accuracy_mm"}
    cola = compute_metrics("CoLA", PRED, LABELS)
    expected = np.mean([(mrpc["f1"] + mrpc["accuracy"]) / 2, (stsb["pearson"] + stsb["spearman"]) / 2,
                        (mnli["accuracy_m"] + mnli["accuracy_mm"]) / 2, cola["mcc"]])
    assert glue_score({"MRPC": mrpc, "STS-B": stsb, "MNLI": mnli, "CoLA": cola}) == pytest.approx(expected)


def test_majority_baseline():
    ex = lambda i, label: GlueExample(f"RTE/x/{i}", i, "a", "b", label)  # noqa: E731
    train = [ex(i, l) for i, l in enumerate([1, 1, 1, 0])]
    dev = {"dev": [ex(i, l) for i, l in enumerate([1, 0, 0, 0, 1])]}
    baseline = majority_baseline(get_task("RTE"), train, dev)
    assert baseline["accuracy"] == pytest.approx(2 / 5) and baseline["score"] == pytest.approx(2 / 5)
    assert majority_baseline(get_task("STS-B"), train, dev)["pearson"] is None  # a constant has no correlation


def test_submission_format(tmp_path):
    assert format_predictions("RTE", np.array([[2.0, 1.0], [0.0, 3.0]])) == ["entailment", "not_entailment"]
    assert format_predictions("MNLI", np.array([[0.0, 0.0, 1.0]])) == ["contradiction"]
    assert format_predictions("CoLA", np.array([[0.1, 0.9]])) == ["1"]
    assert format_predictions("STS-B", np.array([0.5, 1.2, -0.1])) == ["2.500", "5.000", "0.000"]
    test = [GlueExample(f"SST-2/test/{i}", i, "s", None, None) for i in (2, 0, 1)]
    path = write_submission(tmp_path / "SST-2.tsv", "SST-2", test, np.array([[0, 1], [1, 0], [0, 1.0]]))
    assert path.read_text().splitlines()[0] == "index\tprediction"
    assert read_submission(path) == [(0, "0"), (1, "1"), (2, "1")]
