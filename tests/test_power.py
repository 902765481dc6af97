"""Confidence intervals, minimum detectable effects and seeds needed, checked against independent computations:
scipy's own t-interval and a simulation with a known effect."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bornagain_kd.reports.power import (minimum_detectable_effect, paired_power, power_of_paired_t, reading,
                                     seeds_needed)


def _simulated_power(effect: float, sd: float, n: int, draws: int = 40_000, seed: int = 0) -> float:
    """Share of paired t-tests (two-sided, alpha 0.05) that reject on n normal differences of mean ``effect``."""
    d = np.random.default_rng(seed).normal(effect, sd, size=(draws, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, n - 1)))


def test_the_interval_is_scipys_paired_t_interval():
    a = [7.1, 6.4, 8.0, 7.7, 6.9]
    b = [7.5, 6.6, 7.9, 8.4, 7.3]
    p = paired_power(a, b)
    reference = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (p.ci_low, p.ci_high) == pytest.approx((reference.low, reference.high), rel=1e-10)
    assert p.mean_difference == pytest.approx(np.mean(np.subtract(a, b)))


@pytest.mark.parametrize("n, sd", [(3, 0.4), (5, 1.0), (10, 2.5)])
def test_a_true_effect_the_size_of_the_mde_is_detected_80_percent_of_the_time(n, sd):
    mde = minimum_detectable_effect(sd, n)
    assert power_of_paired_t(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    assert _simulated_power(mde, sd, n) == pytest.approx(0.8, abs=0.015)  # 40k draws: 1 s.e. = 0.002
    assert _simulated_power(0.5 * mde, sd, n) < 0.5  # half the MDE is usually missed


def test_the_mde_shrinks_with_seeds_and_grows_with_spread():
    assert minimum_detectable_effect(1.0, 3) > minimum_detectable_effect(1.0, 5) > minimum_detectable_effect(1.0, 20)
    assert minimum_detectable_effect(2.0, 5) == pytest.approx(2 * minimum_detectable_effect(1.0, 5))
    assert math.isnan(minimum_detectable_effect(1.0, 1)) and math.isnan(minimum_detectable_effect(0.0, 5))
    two = minimum_detectable_effect(1.0, 2)  # one degree of freedom: a wide t, far tails
    assert 5 < two < 20 and power_of_paired_t(two, 1.0, 2) == pytest.approx(0.8, abs=1e-6)


def test_seeds_needed_is_the_smallest_n_with_80_percent_power():
    for effect, sd in ((0.3, 0.5), (1.0, 1.0), (0.1, 1.0)):
        n = seeds_needed(effect, sd)
        assert power_of_paired_t(effect, sd, n) >= 0.8
        assert n == 2 or power_of_paired_t(effect, sd, n - 1) < 0.8
    n = seeds_needed(0.3, 0.5)
    assert _simulated_power(0.3, 0.5, n) >= 0.785
    assert seeds_needed(0.3, 0.0) == 2 and seeds_needed(0.0, 1.0) is None


def test_the_reading_says_what_the_interval_and_the_mde_say():
    p = paired_power([1.0, 1.2, 0.8, 1.1, 0.9], [1.1, 1.0, 1.2, 1.0, 1.1], effect=0.3)
    text = reading("BAN-1 - teacher", p)
    assert text.startswith(f"BAN-1 - teacher: {p.mean_difference:+.2f} [{p.ci_low:+.2f}, {p.ci_high:+.2f}] "
                           "points over 5 seeds; no difference detectable below ")
    assert f"({p.seeds_for_effect} seeds would detect 0.30 points with 80% power)" in text
    clear = paired_power([2.0, 2.1, 1.9, 2.2], [1.0, 1.1, 1.0, 1.0])
    assert "the 95% interval excludes 0" in reading("a - b", clear)
    assert "no interval from one value" in reading("a - b", paired_power([1.0], [0.5]))


def test_a_single_run_ends_with_a_reading_of_ban1_against_its_teacher(tmp_path, capsys):
    """`bornagain ban` prints, under its table, BAN-1 - teacher with the interval of the per-example paired test
    on its test set; the mean is the difference of the two test errors."""
    import json

    from bornagain_kd.cli import main
    from bornagain_kd.reports.ensembles import load_probs

    out = tmp_path / "run"
    assert main(["ban", "--output", str(out), "train.epochs=1", "ban.generations=1", "ban.ensembles=[]",
                 "data.train_subset=300", "train.progress=false", "train.trackers=[]"]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = [line for line in lines if line.startswith("BAN-1 - teacher:")]
    results = json.loads((out / "results.json").read_text())
    assert printed == results["readings"][:1] and results["readings_note"] + ":" in lines
    errors = [g["test_error"] for g in results["generations"]]
    assert printed[0].startswith(f"BAN-1 - teacher: {errors[1] - errors[0]:+.2f} [")
    _, labels = load_probs(out / "gen0" / "test_probs.safetensors")
    assert f"points over {labels.numel()} test images" in printed[0] and "One seed" in results["readings_note"]
