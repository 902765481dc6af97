"""Statistics over seeds: mean/std, paired tests and their edge cases."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bornagain_kd.errors import UserError
from bornagain_kd.reports.stats import (
    Summary,
    format_mean_std,
    format_p_value,
    mean_std,
    paired_test,
    summarize,
    wilcoxon_min_p,
)


def test_mean_std_uses_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert std == pytest.approx(np.std([1, 2, 3, 6], ddof=1))  # 2.160..., not the ddof=0 value 1.87
    assert std != pytest.approx(np.std([1, 2, 3, 6], ddof=0))


def test_single_value_has_undefined_std_and_empty_is_nan():
    assert mean_std([0.7]) == (0.7, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(mean_std([])[0])
    assert summarize([0.5, 0.7]).n == 2


def test_paired_t_matches_scipy_and_sign_of_difference():
    a = [0.81, 0.79, 0.84, 0.80]
    b = [0.78, 0.77, 0.80, 0.79]
    result = paired_test(a, b, test="t")
    reference = scipy_stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.n == 4 and result.mean_difference == pytest.approx(0.025)
    # Pairing matters: the unpaired test on the same numbers is far less significant.
    assert result.p_value < scipy_stats.ttest_ind(a, b).pvalue


def test_wilcoxon_cannot_reach_005_with_three_seeds():
    a, b = [0.9, 0.8, 0.85], [0.1, 0.2, 0.15]
    result = paired_test(a, b, test="wilcoxon")
    assert result.p_value == pytest.approx(0.25)
    assert wilcoxon_min_p(3) == pytest.approx(0.25)
    assert wilcoxon_min_p(6) < 0.05 < wilcoxon_min_p(5)


def test_degenerate_pairs_are_defined():
    assert paired_test([0.5, 0.6], [0.5, 0.6]).p_value == 1.0  # identical: no evidence of a difference
    assert math.isnan(paired_test([0.5], [0.4]).p_value)  # one pair: no test
    with pytest.raises(UserError, match="same number"):
        paired_test([0.5, 0.6], [0.5])
    with pytest.raises(UserError, match="unknown paired test"):
        paired_test([0.5, 0.6], [0.5, 0.7], test="z")


def test_formatting():
    assert format_mean_std(Summary(0.8123, 0.0156, 3), scale=100) == "81.2 +- 1.6"
    assert format_mean_std(Summary(0.8123, math.nan, 1), scale=100) == "81.2"
    assert format_mean_std(Summary(math.nan, math.nan, 0)) == "-"
    assert format_p_value(0.0004) == "<0.001" and format_p_value(0.0312) == "0.031"
    assert format_p_value(math.nan) == "-"


def _brute_force_wilcoxon(d):
    """Two-sided exact signed-rank p by listing all 2^m sign assignments of the mid-ranks of the m non-zero
    |d| (zeros dropped, Wilcoxon's handling): P(|T+ - E| >= |t+ - E|), E = sum of ranks / 2."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    ranks = scipy_stats.rankdata(np.abs(d))  # mid-ranks for ties
    t_obs = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    signs = np.array(list(itertools.product((0, 1), repeat=d.size)))  # (2^m, m): 1 = positive
    t_all = signs @ ranks
    return np.mean(np.abs(t_all - centre) >= abs(t_obs - centre) - 1e-9)


@pytest.mark.parametrize("d", [
    [1.0, 1.0, 2.0],  # a tie, n = 3
    [0.0, 1.0, -2.0],  # a zero
    [0.0, 2.0, -3.0, 4.0, 4.0],  # a zero and a tie
    [0.5, 0.5, -0.5, 1.5, 0.0, 2.0],  # three tied |d|, a zero, n = 6
    [-1.0, 2.0, 2.0, 3.0, 3.0, 3.0],
    # n = 14 and 16 with ties and zeros: scipy >= 1.15 enumerates only up to n = 13, then uses the normal
    # approximation; scipy < 1.15 uses it for every input with a tie or a zero
    [1, 2, 2, 3, 3, 3, 4, 5, 6, -1, 0, 7, 8, 9],
    [1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0, -2, -1, 4, 4, 5],
])
def test_wilcoxon_is_exact_with_ties_and_zeros(d):
    result = paired_test(d, [0.0] * len(d), test="wilcoxon")
    assert result.p_value == pytest.approx(_brute_force_wilcoxon(d), rel=1e-12)
    assert result.method == "exact"


def test_wilcoxon_matches_scipys_exact_p_without_ties_or_zeros():
    rng = np.random.default_rng(0)
    for n in (3, 4, 5, 8, 12):
        for _ in range(5):
            d = rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n) + rng.uniform(0, 0.1, n)
            reference = scipy_stats.wilcoxon(d, method="exact")
            result = paired_test(d, np.zeros(n), test="wilcoxon")
            assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
            assert result.statistic == pytest.approx(reference.statistic)  # min(T+, T-)


def test_wilcoxon_minimum_p_is_two_over_two_to_the_n():
    for n in range(2, 9):
        p = paired_test(np.arange(1, n + 1), np.zeros(n), test="wilcoxon").p_value
        assert p == pytest.approx(wilcoxon_min_p(n))
    # a zero difference drops out: 4 pairs, 3 non-zero, p no lower than 2 / 2^3 >= 2 / 2^4
    assert paired_test([1.0, 2.0, 3.0, 0.0], [0.0] * 4, test="wilcoxon").p_value == pytest.approx(0.25)


def test_wilcoxon_ties_differences_of_the_same_number_of_test_examples():
    """Test errors are 100 k / 360: differences of one image do not subtract to equal floats (7/360 - 6/360 is
    not 3/360 - 2/360 in binary), yet they tie. The p on the percentages equals the p on the image counts."""
    a_counts, b_counts = [7, 3, 12, 5, 9, 4], [6, 2, 10, 6, 7, 3]
    on_counts = paired_test(a_counts, b_counts, test="wilcoxon")
    a, b = [100 * k / 360 for k in a_counts], [100 * k / 360 for k in b_counts]
    assert len({x - y for x, y in zip(a, b)}) > len({x - y for x, y in zip(a_counts, b_counts)})  # float noise
    on_percent = paired_test(a, b, test="wilcoxon")
    assert on_percent.p_value == pytest.approx(on_counts.p_value, rel=1e-12) == _brute_force_wilcoxon(
        [x - y for x, y in zip(a_counts, b_counts)])
    assert on_percent.statistic == on_counts.statistic
    # a difference of zero within rounding drops out like an exact zero
    assert paired_test([0.1 + 0.2, 1.0, 2.0], [0.3, 0.0, 0.0], test="wilcoxon").p_value == pytest.approx(0.5)


def test_wilcoxon_stays_exact_for_many_pairs():
    """No normal approximation at any n: with 80 pairs and ties the exact p is close to the tie-corrected normal
    approximation (as it should be at large n) and the null distribution sums to 1."""
    from bornagain_kd.reports.stats import signed_rank_null

    rng = np.random.default_rng(1)
    d = rng.integers(-5, 8, 80).astype(float)
    result = paired_test(d, np.zeros(80), test="wilcoxon")
    nonzero = d[d != 0]
    m, ranks = nonzero.size, scipy_stats.rankdata(np.abs(nonzero))
    _, ties = np.unique(np.abs(nonzero), return_counts=True)
    var = m * (m + 1) * (2 * m + 1) / 24 - np.sum(ties**3 - ties) / 48  # tie-corrected variance of T+
    z = (ranks[nonzero > 0].sum() - m * (m + 1) / 4) / np.sqrt(var)
    approx = 2 * scipy_stats.norm.sf(abs(z))
    assert result.method == "exact" and result.p_value == pytest.approx(approx, rel=0.05)
    assert signed_rank_null([2 * r for r in range(1, 81)]).sum() == pytest.approx(1.0, rel=1e-12)


def _one_image_fewer_in_every_seed():
    """Test errors (%) of 10,000 images, b one image worse than a in every seed: the differences are all 0.01
    points, but float rounding makes them unequal in their last bits."""
    errors = [2845, 3012, 2733, 2901, 2877]
    a = [100 * e / 10_000 for e in errors]
    b = [100 * (e + 1) / 10_000 for e in errors]
    d = [x - y for x, y in zip(a, b)]
    assert len(set(d)) > 1 and max(d) - min(d) < 1e-12  # the precondition: equal evidence, unequal bits
    return a, b


def test_the_paired_t_test_judges_no_spread_within_rounding_not_bit_for_bit():
    from bornagain_kd.reports.stats import paired_test

    a, b = _one_image_fewer_in_every_seed()
    result = paired_test(a, b)
    assert result.method == "no spread" and math.isnan(result.p_value) and result.statistic == -math.inf
    same = paired_test(a, [x + 1e-14 for x in a])  # no difference at all, but for rounding
    assert (same.statistic, same.p_value, same.method) == (0.0, 1.0, "no differences")
    assert paired_test([1.0], [2.0]).method == "one pair"
    assert paired_test([1.0, 2.0, 4.0], [0.5, 1.0, 1.0]).method == "t distribution"


def test_a_zero_width_interval_is_read_as_no_spread_not_as_excluding_0():
    from bornagain_kd.reports.power import paired_power, reading

    a, b = _one_image_fewer_in_every_seed()
    text = reading("BAN-1 - teacher", paired_power(a, b))
    assert "no spread" in text and "excludes 0" not in text
    assert "excludes 0" in reading("x", paired_power([3.0, 3.2, 2.9], [1.0, 1.1, 1.0]))
