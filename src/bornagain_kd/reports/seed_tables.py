"""The aggregate over seeds (reports/seeds.py) as tables: markdown, CSV or LaTeX.

    Table 1 layout: Network | Parameters | n | Baseline (the teacher) | BAN-1..K | [Student baseline] | Ens*k
    cells "mean ± std" (ddof 1) of test error %, then the same for NLL and ECE %;
    below, one line per comparison: mean paired difference, paired t over seeds, McNemar per seed, McNemar
    pooled over seeds.

The caption names the students' loss and its weights (ban_tables.loss_text), so a table of students trained
with the normalised 0.5 / 0.5 weights does not pass for the paper's Eq. 2 (1 / 1); the CSV gives them in
columns of their own at the end of each metric row.
"""

from __future__ import annotations

import math

from bornagain_kd.reports.ban_tables import (LOSS_COLUMNS, csv_text, format_params, latex_table, loss_cells, loss_text,
                                          markdown)
from bornagain_kd.reports.ensembles import SINGLE_CONTROLS
from bornagain_kd.reports.stats import format_p_value

FORMATS = ("markdown", "csv", "latex")
_METRIC_TITLES = {"test_error": "test error (%)", "nll": "test NLL (nats)", "ece": "test ECE (%)",
                  "agreement": "top-1 agreement with its teacher (%)", "kl": "KL(teacher || student) (nats)"}
_DIGITS = {"test_error": 2, "nll": 3, "ece": 2, "agreement": 2, "kl": 3}


def _heading(name: str) -> str:
    if name in ("teacher", "student baseline", "label smoothing", *SINGLE_CONTROLS.values()):
        return name[:1].upper() + name[1:]
    return name  # BAN-1, Ens*2, All, Ind*2, and --compare's "SWEEP BAN-1" as they are


def _cell(summary: dict, digits: int, pm: str) -> str:
    if summary["n"] == 0 or math.isnan(summary["mean"]):
        return "-"
    if summary["n"] < 2:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} {pm} {summary['std']:.{digits}f}"


def metric_rows(agg: dict, *, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """One row per metric (test error, NLL, ECE), the paper's columns."""
    names = [c["name"] for c in agg["columns"]]
    network = agg["model"] if agg.get("student_model") in (None, agg["model"]) else \
        f"{agg['model']} -> {agg['student_model']}"
    header = ["Network", "Parameters", "Metric", "n",
              *["Baseline (teacher)" if n == "teacher" else _heading(n) for n in names]]
    rows = []
    for metric in _METRIC_TITLES:
        if metric not in agg["columns"][0] or all(c[metric]["n"] == 0 or math.isnan(c[metric]["mean"])
                                                  for c in agg["columns"]):
            continue  # an aggregate written before the metric existed, or runs that did not record it
        rows.append([network, format_params(agg["params"]), _METRIC_TITLES[metric], str(agg["columns"][0][metric]["n"]),
                     *[_cell(c[metric], _DIGITS[metric], pm) for c in agg["columns"]]])
    return header, rows


def comparison_rows(agg: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Comparison (first - second)", "Mean difference (points)", "95% interval", "Minimum detectable effect",
              "Paired t over seeds", "McNemar exact p per seed", "McNemar pooled over seeds"]
    rows = []
    for c in agg["comparisons"]:
        b = _heading(c["b"]) + (" (best single)" if c["b_is_best_single"] else "")
        t = c["paired_t"]
        if math.isinf(t["statistic"]):
            t_text = "undefined (all differences equal)"
        elif math.isnan(t["p_value"]):
            t_text = "-"  # fewer than two seeds
        else:
            t_text = f"t({t['df']}) = {t['statistic']:.2f}, p = {format_p_value(t['p_value'])}"
            if "p_holm" in t:
                t_text += f" (Holm: {format_p_value(t['p_holm'])})"
        per_seed = ", ".join(f"{format_p_value(s['p_value'])} ({s['only_a_correct']}/{s['only_b_correct']})"
                             for s in c["mcnemar"])
        pooled = c["mcnemar_pooled"]
        power = c.get("power") or {}  # (aggregates written before the power figures existed lack them)
        interval = "-" if math.isnan(power.get("ci_low", math.nan)) else \
            f"[{power['ci_low']:+.2f}, {power['ci_high']:+.2f}]"
        mde = power.get("minimum_detectable_effect", math.nan)
        rows.append([f"{_heading(c['a'])} - {b}", f"{c['mean_difference']:+.2f}", interval,
                     "-" if math.isnan(mde) else f"{mde:.2f}", t_text, per_seed,
                     f"{format_p_value(pooled['p_value'])} ({pooled['only_a_correct']}/{pooled['only_b_correct']})"])
    return header, rows


def caption(agg: dict) -> str:
    seeds = ", ".join(map(str, agg["seeds"]))
    return (f"{agg['model']} on {agg['dataset']}; students: {loss_text(agg)}; "
            f"{agg.get('epochs')} epochs per generation, "
            f"errors of each generation's last epoch (no epoch chosen on validation or test data); mean ± sample std (ddof 1) over n = {len(agg['seeds'])} seeds ({seeds}). "
            "Baseline is the teacher (generation 0). ECE: 15 equal-width confidence bins, closed on the right.")


def family_note(agg: dict) -> str:
    """How many comparisons the table holds, and whether their paired-t p-values are adjusted for it."""
    n = len(agg["comparisons"])
    if (agg.get("adjust") or {}).get("method") == "holm":
        return (f"This table holds {n} comparisons; in brackets after each paired-t p, Holm's step-down adjustment "
                f"over them (family-wise error at alpha over all {n}).")
    return (f"This table holds {n} comparisons, each p unadjusted (about one in 20 true nulls gives p < 0.05: "
            "--adjust holm adjusts them for the family).")


def notes(agg: dict) -> str:
    best = agg.get("best_single_generation")
    return (f"{family_note(agg)} Differences are a - b in test-error points (negative: a has the lower error). Paired t: "
            f"{agg['tests']['paired']}, df = n - 1. McNemar: {agg['tests']['mcnemar']}; in brackets the test "
            f"examples only a / only b got right. Pooled: {agg['tests']['mcnemar_pooled']}; in brackets the sums over "
            f"seeds. {agg['tests'].get('power', '')} Best single generation: "
            f"{_heading(best) if best else 'none'}, chosen by {agg['best_single_selected_by']}.")


def readings(agg: dict) -> str:
    """One sentence per comparison: its interval and what this many seeds can detect."""
    return "\n".join(f"- {c['reading']}" for c in agg["comparisons"] if c.get("reading"))


def render_markdown(agg: dict) -> str:
    h1, r1 = metric_rows(agg)
    h2, r2 = comparison_rows(agg)
    return (caption(agg) + "\n\n" + markdown(h1, r1) + "\n" + markdown(h2, r2) + "\n" + readings(agg) + "\n\n"
            + notes(agg) + "\n")


def render_csv(agg: dict) -> str:
    h1, r1 = metric_rows(agg, pm="+-")
    h2, r2 = comparison_rows(agg)
    return csv_text(h1 + LOSS_COLUMNS, [row + loss_cells(agg) for row in r1]) + "\n" + csv_text(h2, r2)


def render_latex(agg: dict) -> str:
    """Two tables (booktabs): the metrics, then the comparisons; captions from the same text as markdown."""
    h1, r1 = metric_rows(agg)
    h2, r2 = comparison_rows(agg)
    return ("% needs \\usepackage{booktabs}\n" + latex_table(h1, r1, caption(agg)) + "\n"
            + latex_table(h2, r2, notes(agg)))


def render(agg: dict, fmt: str) -> str:
    if fmt == "markdown":
        return render_markdown(agg)
    if fmt == "csv":
        return render_csv(agg)
    if fmt == "latex":
        return render_latex(agg)
    raise ValueError(f"unknown table format {fmt!r}")
