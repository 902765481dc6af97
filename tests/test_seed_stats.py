"""The statistics behind the seed tables, against scipy and against values computed by hand:
paired t, McNemar's exact test per seed and pooled over seeds, ECE (right-closed bins) and NLL; and what the
tables say about them and about the students' loss, from hand-made runs (no training)."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from scipy import stats as scipy_stats

from bornagain_kd.config import config_to_dict
from bornagain_kd.errors import UserError
from bornagain_kd.reports import ban_tables, seed_tables
from bornagain_kd.reports.metrics import classification_metrics, confidence_bins
from bornagain_kd.reports.plots import reliability_bins
from bornagain_kd.reports.seeds import aggregate, check_poolable
from bornagain_kd.reports.stats import mcnemar_exact, mcnemar_from_counts, mcnemar_pooled, paired_test, summarize
from bornagain_kd.vision.config import VisionConfig


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


def test_pooled_mcnemar_lets_seeds_of_opposite_direction_cancel():
    # one seed's student clearly better, another's clearly worse, by equal counts: no evidence either way
    per_seed = [mcnemar_from_counts(40, 10), mcnemar_from_counts(10, 40)]
    assert all(m.p_value < 0.001 for m in per_seed)
    # Fisher's method, which the tables used before, adds the two up regardless of sign
    assert scipy_stats.combine_pvalues([m.p_value for m in per_seed], method="fisher").pvalue < 0.001
    pooled = mcnemar_pooled(per_seed)
    assert (pooled.only_a, pooled.only_b) == (50, 50)
    assert pooled.p_value == pytest.approx(1.0)


def test_pooled_mcnemar_sees_a_consistent_direction_that_no_single_seed_shows():
    per_seed = [mcnemar_from_counts(30, 20), mcnemar_from_counts(32, 18), mcnemar_from_counts(31, 19)]
    assert all(m.p_value > 0.05 for m in per_seed)
    pooled = mcnemar_pooled(per_seed)
    assert (pooled.only_a, pooled.only_b) == (93, 57)
    assert pooled.p_value == pytest.approx(scipy_stats.binomtest(93, 150, 0.5).pvalue)  # one exact binomial test
    assert pooled.p_value < 0.01
    assert mcnemar_pooled([mcnemar_from_counts(0, 0)]).p_value == 1.0  # no discordant example anywhere
    assert math.isnan(mcnemar_pooled([]).p_value)  # no seed: no test


# --- hand-made ban runs: two generations on 100 test examples, no model -------------------------------------------

def _fake_run(run_dir, seed, only_student, only_teacher, *, loss="ban+l", weights=(0.5, 0.5, 1.0), normalize=True):
    """A finished `ban` run: teacher and BAN-1 both right on 20 examples, only the student right on
    ``only_student``, only the teacher on ``only_teacher``, the rest wrong for both."""
    n, both = 100, 20
    right_t = torch.zeros(n, dtype=torch.bool)
    right_s = torch.zeros(n, dtype=torch.bool)
    right_t[:both] = right_s[:both] = True
    right_s[both:both + only_student] = True
    right_t[both + only_student:both + only_student + only_teacher] = True
    labels = torch.zeros(n, dtype=torch.long)
    generations = []
    for g, right in ((0, right_t), (1, right_s)):
        probs = torch.where(right[:, None], torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.9]))
        (run_dir / f"gen{g}").mkdir(parents=True)
        save_file({"probs": probs.contiguous(), "labels": labels}, str(run_dir / f"gen{g}" / "test_probs.safetensors"))
        m = classification_metrics(probs, labels)
        generations.append({"generation": g, "model": "resnet-8", "params": 75000, "test_error": m["error"],
                            "val_accuracy": 50.0 + g, "test_nll": m["nll"], "test_ece": m["ece"]})
    results = {"dataset": "digits", "model": "resnet-8", "student_model": "resnet-8", "params": 75000,
               "student_params": 75000, "loss": loss,
               "loss_weights": dict(zip(("label_weight", "teacher_weight", "temperature"), weights)),
               "normalize_loss_weights": normalize, "epochs": 1, "seed": seed, "generations": generations,
               "ensembles": [], "student_baseline": None, "reported_epoch": "last"}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_seed_aggregate_pools_discordant_counts_and_the_table_says_what_that_tests(tmp_path):
    runs = [_fake_run(tmp_path / "s0", 0, 40, 10), _fake_run(tmp_path / "s1", 1, 10, 40)]
    agg = aggregate(runs)
    [c] = agg["comparisons"]
    assert (c["a"], c["b"]) == ("BAN-1", "teacher") and c["mean_difference"] == pytest.approx(0.0)
    assert [(s["only_a_correct"], s["only_b_correct"]) for s in c["mcnemar"]] == [(40, 10), (10, 40)]
    assert all(s["p_value"] < 0.001 for s in c["mcnemar"])  # kept: each seed's pair does differ
    assert "mcnemar_combined_p" not in c
    assert c["mcnemar_pooled"] == {"only_a_correct": 50, "only_b_correct": 50, "p_value": pytest.approx(1.0)}
    assert "pooled over seeds" in agg["tests"]["mcnemar_pooled"]
    assert "not seed-to-seed" in agg["tests"]["mcnemar_pooled"]
    md = seed_tables.render(agg, "markdown")
    assert "McNemar pooled over seeds" in md and "| 1.000 (50/50) |" in md
    assert "Fisher" not in md and "Fisher" not in seed_tables.render(agg, "latex")
    assert "where they disagree" in seed_tables.notes(agg)

    same_way = aggregate([_fake_run(tmp_path / "t0", 0, 40, 10), _fake_run(tmp_path / "t1", 1, 40, 10)])
    pooled = same_way["comparisons"][0]["mcnemar_pooled"]
    assert (pooled["only_a_correct"], pooled["only_b_correct"]) == (80, 20) and pooled["p_value"] < 1e-6


def _results(loss="ban+l", weights=(0.5, 0.5, 1.0), normalize=True, model="resnet-8"):
    gens = [{"generation": g, "test_error": 10.0 - g} for g in (0, 1)]
    return {"model": model, "student_model": model, "params": 75000, "generations": gens, "ensembles": [],
            "student_baseline": None, "loss": loss, "normalize_loss_weights": normalize,
            "loss_weights": dict(zip(("label_weight", "teacher_weight", "temperature"), weights))}


def test_ban_tables_state_the_students_loss_and_its_weights():
    md_half, csv_half = ban_tables.render([_results()])
    md_eq2, csv_eq2 = ban_tables.render([_results(weights=(1.0, 1.0, 1.0), normalize=False)])
    assert "Students: ban+l, loss = 0.5·CE + 0.5·T²·KL(teacher || student), T = 1 (weights normalised to sum " \
           "to 1; the paper's Eq. 2 is 1 / 1, T = 1)" in md_half
    assert "Students: ban+l, loss = 1·CE + 1·T²·KL(teacher || student), T = 1 (the paper's Eq. 2)" in md_eq2
    assert "0.5·CE" not in md_eq2 and "Eq. 2)" not in md_half.replace("is 1 / 1, T = 1)", "")
    hot, _ = ban_tables.render([_results(weights=(1.0, 1.0, 4.0), normalize=False)])  # Eq. 2 has T = 1
    assert "T = 4 (the paper's Eq. 2 is 1 / 1, T = 1)" in hot
    # CSV: the same table, the loss in columns of its own at the end of each row (one run may differ from another)
    header, row = csv_half.splitlines()[:2]
    assert header.startswith("Network,Parameters,Baseline (teacher),BAN-1")
    assert header.endswith("Loss,Label weight,Teacher weight,Temperature,Weights normalised")
    assert row.endswith("ban+l,0.5,0.5,1,yes") and csv_eq2.splitlines()[1].endswith("ban+l,1,1,1,no")
    assert "Eq. 2" in ban_tables.render_latex([_results()])
    assert r"$\cdot$" in ban_tables.render_latex([_results()])  # the middle dot escaped for LaTeX

    cwtm, cwtm_csv = ban_tables.render([_results(loss="cwtm", weights=(1.0, 0.0, 1.0))])
    assert "Students: cwtm, loss = 1·CE weighted per example by the teacher's max probability" in cwtm
    assert "no teacher distribution term" in cwtm and "T²" not in cwtm
    assert cwtm_csv.splitlines()[1].endswith("cwtm,1,,,yes")  # no teacher weight, no temperature

    # two runs of one network with different weights: each row's loss is named
    mixed, _ = ban_tables.render([_results(), _results(weights=(1.0, 1.0, 1.0), normalize=False)])
    assert "row 1 (resnet-8): ban+l, loss = 0.5·CE" in mixed and "row 2 (resnet-8): ban+l, loss = 1·CE" in mixed


def test_seed_tables_state_the_students_loss_and_its_weights(tmp_path):
    half = aggregate([_fake_run(tmp_path / "a0", 0, 40, 10), _fake_run(tmp_path / "a1", 1, 10, 40)])
    eq2 = aggregate([_fake_run(tmp_path / "b0", 0, 40, 10, weights=(1.0, 1.0, 1.0), normalize=False),
                     _fake_run(tmp_path / "b1", 1, 10, 40, weights=(1.0, 1.0, 1.0), normalize=False)])
    assert half["loss_weights"] == {"label_weight": 0.5, "teacher_weight": 0.5, "temperature": 1.0}
    assert half["normalize_loss_weights"] is True and eq2["normalize_loss_weights"] is False
    assert "loss = 0.5·CE + 0.5·T²·KL(teacher || student), T = 1 (weights normalised" in seed_tables.caption(half)
    assert "loss = 1·CE + 1·T²·KL(teacher || student), T = 1 (the paper's Eq. 2)" in seed_tables.caption(eq2)
    for fmt in ("markdown", "latex"):
        assert "Eq. 2 is 1 / 1" in seed_tables.render(half, fmt) and "Eq. 2 is" not in seed_tables.render(eq2, fmt)
    metric_header, metric_row = seed_tables.render(half, "csv").splitlines()[:2]
    assert metric_header.endswith("Loss,Label weight,Teacher weight,Temperature,Weights normalised")
    assert metric_row.endswith("ban+l,0.5,0.5,1,yes")


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


def test_thin_reliability_bins_are_hollow_and_every_bar_is_counted():
    """A bin of 3 images at 100% must not read like a bin of 500: thin bins (< THIN_BIN images) are drawn
    hollow and every non-empty bin carries its image count."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from bornagain_kd.reports.plots import THIN_BIN, draw_reliability_bins  # noqa: PLC0415

    count = np.zeros(15)
    count[[3, 13, 14]] = [3, 40, 500]
    b = {"count": count, "accuracy": np.where(count > 0, 100.0, 0.0), "confidence": np.linspace(3, 97, 15)}
    fig, ax = plt.subplots()
    draw_reliability_bins(ax, b, (np.arange(15) + 0.5) * 100 / 15, 100 / 15)
    bars = {round(p.get_x() + p.get_width() / 2, 3): p for p in ax.patches}
    centre = lambda i: round((i + 0.5) * 100 / 15, 3)  # noqa: E731
    assert set(bars) == {centre(3), centre(13), centre(14)}  # empty bins draw nothing
    assert bars[centre(3)].get_facecolor()[3] == 0 and 3 < THIN_BIN  # hollow
    assert bars[centre(13)].get_facecolor()[3] == 1 and bars[centre(14)].get_facecolor()[3] == 1
    assert sorted(t.get_text() for t in ax.texts) == ["3", "40", "500"]
    plt.close(fig)


def test_runs_pool_only_with_the_settings_they_were_made_with(tmp_path):
    # a run recorded before ban.normalize_loss_weights existed trained BAN+L with 1 / 1: it must not pool with a
    # new run at the default 0.5 / 0.5, though today's default would fill the missing key with true
    old, new, new2 = (config_to_dict(VisionConfig(seed=s)) for s in (0, 1, 2))
    del old["ban"]["normalize_loss_weights"]
    dirs = []
    for name, cfg in (("old", old), ("new", new), ("new2", new2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg))
        dirs.append(tmp_path / name)
    with pytest.raises(UserError, match="ban.normalize_loss_weights"):
        check_poolable(dirs[:2])
    check_poolable(dirs[1:])  # two new runs that differ in the seed only
