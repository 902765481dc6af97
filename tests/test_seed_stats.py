"""The statistics behind the seed tables, against scipy and against values computed by hand:
paired t, McNemar's exact test, Fisher's combination, ECE (right-closed bins) and NLL."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from bornagain.reports.metrics import classification_metrics, confidence_bins
from bornagain.reports.plots import reliability_bins
from bornagain.reports.stats import combine_p_values, mcnemar_exact, mcnemar_from_counts, paired_test, summarize


def test_summarize_counts_a_generator():
    s = summarize(x for x in [1.0, 2.0, 4.0])  # a generator is read once
    assert s.n == 3
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(np.std([1, 2, 4], ddof=1))


def test_paired_t_with_equal_nonzero_differences_is_undefined_not_zero():
    result = paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], test="t")
    assert math.isnan(result.p_value)  # scipy says p = 0: no finite sample supports that
    assert result.statistic == math.inf and result.mean_difference == pytest.approx(1.0)
    # the Wilcoxon test stays defined: all ranks tie, p = 2 / 2^3
    assert paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], test="wilcoxon").p_value == pytest.approx(0.25)


def test_paired_t_over_three_seeds_matches_scipy_and_the_formula():
    a, b = [12.1, 11.4, 12.9], [12.8, 11.9, 13.0]
    result = paired_test(a, b, test="t")
    reference = scipy_stats.ttest_rel(a, b)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert result.statistic == pytest.approx(t)
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), df=2))


def test_mcnemar_on_a_hand_made_contingency_table():
    # 2x2 table: both right 50, only a right 1, only b right 9, both wrong 40
    a = [True] * 50 + [True] * 1 + [False] * 9 + [False] * 40
    b = [True] * 50 + [False] * 1 + [True] * 9 + [False] * 40
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (1, 9)
    # exact: 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * (1 + 10) / 1024
    assert result.p_value == pytest.approx(22 / 1024)
    assert mcnemar_from_counts(9, 1).p_value == pytest.approx(22 / 1024)  # symmetric
    assert mcnemar_from_counts(5, 5).p_value == pytest.approx(1.0)
    assert mcnemar_from_counts(0, 0).p_value == 1.0  # no discordant example: no evidence


def test_fisher_combination_by_hand_and_scipy():
    # chi^2 with 4 degrees of freedom: sf(x) = exp(-x/2) (1 + x/2), x = -2 ln(p1 p2)
    p1, p2 = 0.1, 0.2
    half = -math.log(p1 * p2)
    assert combine_p_values([p1, p2]) == pytest.approx(math.exp(-half) * (1 + half))
    assert combine_p_values([p1, p2]) == pytest.approx(scipy_stats.combine_pvalues([p1, p2], method="fisher").pvalue)
    assert combine_p_values([0.3]) == pytest.approx(0.3)  # one test: its own p
    assert math.isnan(combine_p_values([]))


def _three_examples():
    # confidences 0.8 (right), 0.6 (wrong), 0.65 (right); 0.6 = 9/15 and 0.8 = 12/15 lie on bin edges
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.35, 0.65]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    return probs, labels


def test_ece_bins_are_closed_on_the_right():
    probs, labels = _three_examples()
    assert confidence_bins(probs.max(dim=1).values, 15).tolist() == [11, 8, 9]  # (11/15, 12/15], (8/15, 9/15], ...
    m = classification_metrics(probs, labels)
    # each example alone in its bin: (|1 - 0.8| + |0 - 0.6| + |1 - 0.65|) / 3; left-closed bins would put 0.6 and
    # 0.65 together and give (2 * |0.5 - 0.625| + 0.2) / 3 = 15%
    assert m["ece"] == pytest.approx(100 * (0.2 + 0.6 + 0.35) / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.65)) / 3)
    assert m["error"] == pytest.approx(100 / 3)


def test_reliability_bins_agree_with_the_ece():
    probs, labels = _three_examples()
    b = reliability_bins(probs, labels)
    assert b["count"].sum() == 3 and b["count"][[8, 9, 11]].tolist() == [1, 1, 1]
    ece = float(np.sum(b["count"] / 3 * np.abs(b["accuracy"] - b["confidence"])))
    assert ece == pytest.approx(classification_metrics(probs, labels)["ece"])
