"""Statistics over seeds: mean +- standard deviation and paired significance tests.

Used by both pipelines (BAN generations over seeds, BAM arms over seeds), so the
functions take plain sequences of numbers and know nothing about models or tasks.

Conventions
- The standard deviation is the *sample* standard deviation (ddof = 1), the
  spread one expects between independent repetitions; it is NaN for a single value.
- Paired tests compare two methods run with the *same* seeds: value ``a[i]`` and
  ``b[i]`` come from seed i. Two tests are offered:
  * ``"t"``: the paired t-test (``scipy.stats.ttest_rel``) on d_i = a_i - b_i,
    t = mean(d) / (std(d) / sqrt(n)) with n - 1 degrees of freedom. It assumes
    roughly normal differences; with few seeds that is an assumption, not a fact.
  * ``"wilcoxon"``: the Wilcoxon signed-rank test on d_i. Zeros are handled by Wilcoxon's rule: pairs with
    d_i = 0 are dropped and the m non-zero |d_i| are ranked, tied |d_i| sharing their mid-rank. The statistic
    is T+ = sum of the ranks of the positive d_i, reported as min(T+, T-) like scipy. Its null distribution is
    computed here, exactly, for any m: all 2^m equally likely sign assignments of those (mid-)ranks, weighed
    by a recursion over the ranks instead of listing them; the two-sided p is P(|T+ - E| >= |t+ - E|),
    E = sum of the ranks / 2. With ties or zeros scipy does not give this for every n (below 1.15 it always
    used the normal approximation there; 1.15+ enumerates only up to n = 13), and the normal approximation is
    wrong at n = 3-5. Metrics are ratios of counts (errors k / 360 x 100, GLUE accuracies k / N) whose
    differences do not subtract exactly in floating point, so "zero" and "tied" are judged with a tolerance
    (1e-9 of the largest |value|): two seeds whose difference is the same number of test examples tie, as
    they would on the counts. The test assumes no normality but, with n pairs, its two-sided p-value can never go below 2 / 2^n: with 3 seeds the smallest
    possible p is 0.25 and with 5 seeds 0.0625, so it needs n >= 6 to ever reach p < 0.05 (see
    :func:`wilcoxon_min_p`; zero differences drop out and raise that floor to 2 / 2^m).
- Degenerate inputs get defined answers instead of warnings: fewer than two
  pairs give p = NaN; differences that are all exactly zero give p = 1.0 (no
  evidence of a difference); for the t-test, differences that are all equal and
  non-zero give p = NaN (their standard deviation is 0, so t is infinite and the
  test is undefined; scipy would say p = 0, which no finite sample supports).
  The Wilcoxon test stays defined there (all ranks tie: p = 2 / 2^n).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from bornagain_kd.errors import UserError

PAIRED_TESTS = ("t", "wilcoxon")
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and count of a set of values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of ``a`` against ``b`` (same seeds, same order)."""

    test: str
    """"t" or "wilcoxon"."""
    statistic: float
    p_value: float
    n: int
    """Number of pairs."""
    mean_difference: float
    """mean(a - b): positive means ``a`` scored higher."""
    method: str = "exact"
    """How p was computed: "t distribution" (the t-test), "exact" (the signed-rank null distribution), or why no
    test ran: "no differences" (every pair equal: p = 1), "no spread" (every difference equal and not zero: the
    t-test is undefined), "one pair"."""


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise UserError(f"{what} must be a flat list of numbers, got shape {array.shape}")
    return array


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Return (mean, sample std with ddof=1); std is NaN for one value, both NaN for none."""
    array = _as_array(values, "values")
    if array.size == 0:
        return math.nan, math.nan
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return float(np.mean(array)), std


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and count of ``values`` (one value per seed); any iterable, a generator too."""
    array = _as_array(values, "values")  # read once: a generator is empty the second time
    mean, std = mean_std(array)
    return Summary(mean=mean, std=std, n=int(array.size))


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs: 2 / 2^n."""
    if n < 1:
        return math.nan
    return min(1.0, 2.0 / 2.0**n)


def paired_test(a: Sequence[float], b: Sequence[float], *, test: str = "t") -> PairedTest:
    """Paired test of ``a`` against ``b`` (two-sided), pairs matched by position (seed).

    ``test="t"``: t = mean(d) / (s_d / sqrt(n)), d = a - b, df = n - 1.
    ``test="wilcoxon"``: signed-rank statistic on d, exact null distribution.
    """
    if test not in PAIRED_TESTS:
        raise UserError(f"unknown paired test {test!r}: choose one of {', '.join(PAIRED_TESTS)}")
    first, second = _as_array(a, "a"), _as_array(b, "b")
    if first.shape != second.shape:
        raise UserError(
            f"a paired test needs the same number of values on both sides (one per seed), "
            f"got {first.size} and {second.size}: run both methods with the same seeds"
        )
    n = int(first.size)
    difference = first - second
    mean_difference = float(np.mean(difference)) if n else math.nan
    if n < 2:
        return PairedTest(test, math.nan, math.nan, n, mean_difference, "one pair")
    # Equal within float rounding, not bit for bit: the same evidence (one image fewer in every seed) reaches
    # here as differences of 0.01 points that rounding made unequal in the last bits, which gave t = -139810
    # one time and t = -inf another.
    tol = _tolerance(first, second)
    if np.all(np.abs(difference) <= tol):
        return PairedTest(test, 0.0, 1.0, n, mean_difference, "no differences")
    if test == "t" and equal_within_rounding(difference, first, second):
        # zero spread: t = mean / 0 is infinite and the t-test undefined (not p = 0)
        return PairedTest(test, math.copysign(math.inf, mean_difference), math.nan, n, mean_difference, "no spread")
    if test == "wilcoxon":
        return _wilcoxon(difference, tol, mean_difference)
    with warnings.catch_warnings():
        # scipy warns about precision on nearly identical inputs; the result is still defined.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_rel(first, second)
    return PairedTest(test, float(result.statistic), float(result.pvalue), n, mean_difference, "t distribution")


def equal_within_rounding(difference: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every paired difference a - b is the same number, float rounding apart (no spread)."""
    return difference.size > 0 and float(np.ptp(difference)) <= _tolerance(a, b)


def _tolerance(a: np.ndarray, b: np.ndarray) -> float:
    """Below this, two |differences| are equal (and a difference is zero): float rounding of ratios of counts."""
    return 1e-9 * max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))


def _tolerant_ranks(values: np.ndarray, tol: float) -> np.ndarray:
    """Ranks 1..m of ``values`` (>= 0), values within ``tol`` of their neighbour in sorted order sharing their
    mid-rank (scipy's rankdata ties only exact equality)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    start = 0
    for i in range(1, values.size + 1):
        if i == values.size or values[order[i]] - values[order[i - 1]] > tol:
            ranks[order[start:i]] = (start + 1 + i) / 2  # the mid-rank of positions start+1 .. i
            start = i
    return ranks


def signed_rank_null(doubled_ranks: Sequence[int]) -> np.ndarray:
    """prob[s] = P(2 T+ = s) under the null, for ranks given doubled (integers: a mid-rank is a multiple of 1/2):
    each rank is in T+ with probability 1/2, independently, so prob holds the coefficients of
    prod_i (1 + x^(2 r_i)) / 2, built one rank at a time: the same numbers as listing all 2^m assignments, in
    O(m * sum of ranks) steps. Halving is exact in floating point, so any m works (no counts to overflow)."""
    prob = np.zeros(int(sum(doubled_ranks)) + 1)
    prob[0] = 1.0
    for r in doubled_ranks:  # r >= 2: every rank is at least 1
        prob[r:] += prob[:-r].copy()  # the copy: each rank joins an assignment once
        prob *= 0.5
    return prob


def _wilcoxon(difference: np.ndarray, tol: float, mean_difference: float) -> PairedTest:
    """Two-sided exact signed-rank test on the non-zero differences (Wilcoxon's zero rule); the caller has
    handled n < 2 and all-zero differences."""
    n = int(difference.size)
    nonzero = difference[np.abs(difference) > tol]
    if nonzero.size == 0:  # zero within float rounding
        return PairedTest("wilcoxon", 0.0, 1.0, n, mean_difference)
    doubled = np.rint(2 * _tolerant_ranks(np.abs(nonzero), tol)).astype(np.int64)  # exact integers
    t_plus2 = int(doubled[nonzero > 0].sum())  # 2 T+
    total2 = int(doubled.sum())  # 2 (T+ + T-)
    statistic = min(t_plus2, total2 - t_plus2) / 2
    prob = signed_rank_null(doubled.tolist())
    # |T+ - E| times 4 (index s = 2 T+, 4 E = total2): integers throughout, so ties at the boundary count
    distance = np.abs(2 * np.arange(prob.size) - total2)
    p = float(prob[distance >= abs(2 * t_plus2 - total2)].sum())
    return PairedTest("wilcoxon", statistic, min(1.0, p), n, mean_difference)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the given order: the k-th smallest of the m defined p-values
    becomes max over j <= k of min(1, (m - j + 1) p_(j)). A family of m comparisons keeps its chance of any false
    rejection at alpha, with more power than Bonferroni's m p. NaN (an undefined test) stays NaN and is not counted."""
    defined = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(defined)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(defined, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def format_mean_std(summary: Summary, *, scale: float = 1.0, digits: int = 1) -> str:
    """'mean +- std' with ``digits`` decimals after multiplying by ``scale`` ('-' when empty)."""
    if summary.n == 0 or math.isnan(summary.mean):
        return "-"
    mean = summary.mean * scale
    if summary.n < 2 or math.isnan(summary.std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {summary.std * scale:.{digits}f}"


def format_p_value(p_value: float) -> str:
    """A p-value for a table: 3 decimals, '<0.001' below that, '-' when undefined."""
    if math.isnan(p_value):
        return "-"
    if p_value < 0.001:
        return "<0.001"
    return f"{p_value:.3f}"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the *same* test examples.

    ``only_a`` examples are right under ``a`` and wrong under ``b``; ``only_b`` the reverse. Under the null
    (both have the same error rate on this test distribution) each discordant example is a fair coin, so
    ``only_a ~ Binomial(only_a + only_b, 1/2)``; the p-value is that binomial test's two-sided p.
    """

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact (binomial) test from per-example correctness of two models on one test set."""
    a = np.asarray(list(correct_a), dtype=bool)
    b = np.asarray(list(correct_b), dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"McNemar's test needs the two models' answers on the same test examples, got {a.shape} "
                        f"and {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return mcnemar_from_counts(only_a, only_b)


def mcnemar_from_counts(only_a: int, only_b: int) -> McNemar:
    """McNemar's exact test from the two discordant counts of a 2x2 contingency table; p = 1 with none."""
    if only_a + only_b == 0:
        return McNemar(only_a, only_b, 1.0)
    p = scipy_stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    return McNemar(only_a, only_b, float(p))


def mcnemar_pooled(per_seed: Sequence[McNemar]) -> McNemar:
    """McNemar's exact test pooled over seeds: the discordant counts of every seed summed, sum(only_a) against
    sum(only_b), in one two-sided exact binomial test; NaN with no seed.

    H0: the two models of each seed are equally often right on the test examples where they disagree, pooled
    over seeds. A seed where ``a`` is better and one where ``b`` is better by as much cancel, as the mean
    difference does; Fisher's method on the per-seed two-sided p-values (used here before) added them up
    and called two opposite seeds significant. Like the per-seed test it sees test-set sampling noise for the
    fixed trained models, not the seed-to-seed variability of training (the paired t-test over seeds does).
    It treats the discordant (example, seed) pairs as independent; the seeds share one test set, so an example
    the models of several seeds disagree on the same way counts once per seed, and p is optimistic when the
    seeds' models err on the same examples.
    """
    if not per_seed:
        return McNemar(0, 0, math.nan)
    return mcnemar_from_counts(sum(m.only_a for m in per_seed), sum(m.only_b for m in per_seed))
