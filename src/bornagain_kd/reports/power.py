"""How sure a comparison is: the mean paired difference with its confidence interval, the minimum detectable
effect, and the number of seeds a stated effect needs.

A p-value alone cannot tell "no effect" from "too few seeds". For paired differences d_1..d_n (a - b, one per
seed, or one per test example for a single run) with sample standard deviation s:

- the 95% confidence interval of the mean difference is  mean(d) +- t_{0.975, n-1} * s / sqrt(n);
- the *minimum detectable effect* (MDE) is the true mean difference that the two-sided paired t-test at
  alpha = 0.05 would detect with 80% power, were the differences spread as observed: the delta solving
      P(|T| > t_{0.975, n-1}) = 0.8,   T ~ noncentral t(df = n - 1, noncentrality = delta * sqrt(n) / s);
  a difference smaller than the MDE is one this many seeds would usually miss, so "not significant" says
  little about it;
- the seeds needed for an effect e are the smallest n >= 2 whose power against e reaches 80%, with s as
  observed (the spread is itself estimated from few seeds: a planning figure, not a guarantee).

scipy's noncentral t gives the power exactly (no normal approximation); the tests check these figures against
a simulation with a known effect.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

from bornagain_kd.reports.stats import equal_within_rounding

ALPHA = 0.05
POWER = 0.8
LEVEL = 0.95


@dataclass(frozen=True)
class Power:
    """The mean difference a - b of paired values, its interval and what this many pairs can detect."""

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    sd_difference: float
    minimum_detectable_effect: float
    effect: float | None = None
    seeds_for_effect: int | None = None
    """Pairs (seeds) needed to detect ``effect`` at 80% power, for the observed spread."""

    def to_dict(self) -> dict:
        return asdict(self)


def power_of_paired_t(effect: float, sd: float, n: int, *, alpha: float = ALPHA) -> float:
    """Probability that the two-sided paired t-test at ``alpha`` rejects when the true mean difference is
    ``effect`` and the differences have standard deviation ``sd`` (n pairs)."""
    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    noncentrality = abs(effect) * math.sqrt(n) / sd
    upper = float(scipy_stats.nct.sf(critical, df, noncentrality))
    lower = float(scipy_stats.nct.cdf(-critical, df, noncentrality))  # the wrong-sign tail: tiny
    return upper + (0.0 if math.isnan(lower) else lower)  # (scipy gives NaN for it far out, where it is < 1e-60)


def minimum_detectable_effect(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The |mean difference| the paired t-test detects with probability ``power`` (see the module doc); NaN
    with fewer than 2 pairs or no spread."""
    if n < 2 or not sd > 0:
        return math.nan
    upper = sd
    while power_of_paired_t(upper, sd, n, alpha=alpha) < power:  # power grows with the effect: bracket it
        upper *= 2
    return float(optimize.brentq(lambda e: power_of_paired_t(e, sd, n, alpha=alpha) - power, 0.0, upper,
                                 xtol=1e-10 * sd))


def seeds_needed(effect: float, sd: float, *, alpha: float = ALPHA, power: float = POWER,
                 limit: int = 100_000) -> int | None:
    """Smallest n >= 2 whose paired t-test detects ``effect`` with probability ``power``; None past ``limit``
    (or for no effect); 2 when the differences have no spread."""
    if not effect or math.isnan(sd):
        return None
    if sd == 0:
        return 2
    n = 2
    while power_of_paired_t(effect, sd, n, alpha=alpha) < power:
        n *= 2
        if n > limit:
            return None
    low, high = n // 2 if n > 2 else 1, n  # power(low) < target <= power(high): bisect
    while high - low > 1:
        middle = (low + high) // 2
        if middle >= 2 and power_of_paired_t(effect, sd, middle, alpha=alpha) >= power:
            high = middle
        else:
            low = middle
    return high


def paired_power(a: Sequence[float], b: Sequence[float], *, effect: float | None = None, level: float = LEVEL,
                 alpha: float = ALPHA, power: float = POWER) -> Power:
    """The mean of a - b (pairs by position), its ``level`` t-interval, the MDE and (with ``effect``) the
    pairs needed for it."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and equal_within_rounding(d, a, b):
        sd = 0.0  # every difference equal within float rounding: no spread (not a rounding-sized one)
    if n > 1:
        half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return Power(n, mean, low, high, sd, minimum_detectable_effect(sd, n, alpha=alpha, power=power), effect,
                 None if effect is None else seeds_needed(effect, sd, alpha=alpha, power=power))


def per_example_power(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Power:
    """One run's comparison of two models on the same test examples: the paired differences are the examples'
    errors in points (100 where wrong, 0 where right), so the mean is the difference of the test errors and
    the interval and MDE are those of the paired t-test over examples (about McNemar's test at this size).
    They see the test set's sampling noise only, not the training noise another seed would bring."""
    a = 100.0 * (1.0 - np.asarray(correct_a, dtype=np.float64))  # (n,): a tensor, an array or a list
    b = 100.0 * (1.0 - np.asarray(correct_b, dtype=np.float64))
    return paired_power(a, b)


def reading(name: str, p: Power | dict, *, unit: str = "points", over: str = "seeds") -> str:
    """One plain sentence: "BAN-1 - teacher: -0.21 [-0.60, +0.18] points over 5 seeds; no difference detectable
    below 0.45 points at this size"."""
    p = p if isinstance(p, dict) else p.to_dict()
    n, mean, low, high = p["n"], p["mean_difference"], p["ci_low"], p["ci_high"]
    if n < 2 or math.isnan(low):
        return f"{name}: {mean:+.2f} {unit} from {n} {over[:-1] if n == 1 else over}; no interval from one value"
    text = f"{name}: {mean:+.2f} [{low:+.2f}, {high:+.2f}] {unit} over {n} {over}"
    mde = p["minimum_detectable_effect"]
    if p.get("sd_difference") == 0:  # a zero-width interval is no evidence that excludes 0: checked first
        text += "; every difference equal, so no spread to judge a difference by"
    elif low > 0 or high < 0:
        text += "; the 95% interval excludes 0"
    elif math.isnan(mde):
        text += "; every difference equal, so no spread to judge a difference by"
    else:
        text += f"; no difference detectable below {mde:.2f} {unit} at this size"
    if p.get("effect") is not None:
        needed = p.get("seeds_for_effect")
        text += (f" ({needed} {over} would detect {abs(p['effect']):.2f} {unit} with 80% power)" if needed
                 else f" (no number of {over} up to 100,000 would detect {abs(p['effect']):.2f} {unit})")
    return text


NOTE = ("Interval: the 95% t-interval of the mean paired difference. Minimum detectable effect: the true mean "
        "difference the two-sided paired t-test (alpha 0.05) would detect with 80% power at this n, were the "
        "differences spread as observed (noncentral t); a smaller difference would usually go unseen, so a "
        "non-significant comparison says little about it.")
