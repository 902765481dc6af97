"""The BAM results table: per task and GLUE average, mean +- std over seeds, paired tests.

Input: for each row (``teachers`` and every student arm) and each seed, the dev
metrics of every task, e.g. ``{"annealed": {0: {"MRPC": {"f1": .8, "accuracy": .7}}}}``.

- A task's score is the mean of its metrics (MRPC: F1 and accuracy; STS-B: Pearson
  and Spearman; an undefined correlation counts as 0, see
  metrics.task_score); the GLUE average is the mean of the task scores of that seed.
- Each cell is mean +- sample std (ddof = 1) over seeds, x100, with the number of
  seeds n behind it.
- BAM (``annealed``) is compared with the single-task teachers and with plain
  multi-task (``labels``) by a paired test per task over the seeds both rows
  share: seed k of BAM is paired with seed k of the other row (with
  ``bam.teacher_per_seed`` the seed-k student learnt from the seed-k teachers).
  A row with fewer than two shared seeds gets no test.
- Scores are on the GLUE dev sets, from the *final* student (last step): GLUE's
  test labels are private, so dev is the test set here and selects nothing.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Mapping

from bornagain_kd.glue.metrics import task_score
from bornagain_kd.reports.power import NOTE as POWER_NOTE
from bornagain_kd.reports.power import paired_power, reading
from bornagain_kd.reports.stats import (TEST_NAMES, Summary, format_mean_std, format_p_value, paired_test, summarize,
                                     wilcoxon_min_p)

ROW_ORDER = ("majority", "teachers", "labels", "annealed", "fixed", "smoothing-annealed")
ROW_TITLES = {
    "majority": "majority class (reference)",
    "teachers": "single-task teachers",
    "labels": "multi-task (labels)",
    "annealed": "BAM (teacher annealing)",
    "fixed": "fixed mixture (no annealing)",
    "smoothing-annealed": "smoothing annealed (no teacher)",
}
GLUE = "GLUE"
COMPARISONS = (("annealed", "teachers"), ("annealed", "labels"), ("annealed", "fixed"),
               ("annealed", "smoothing-annealed"))
"""BAM against the teachers and plain multi-task (the paper's claims), then the two ablations."""

PerSeed = Mapping[int, Mapping[str, Mapping[str, float]]]  # seed -> task -> metric -> value


def seed_scores(per_task: Mapping[str, Mapping[str, float]], tasks: tuple[str, ...]) -> dict[str, float]:
    """{task: score, ..., "GLUE": mean of the task scores} for one seed."""
    scores = {task: task_score(task, per_task[task]) for task in tasks}
    scores[GLUE] = sum(scores.values()) / len(scores)
    return scores


def _test_record(first: list[float], second: list[float], test: str) -> dict:
    """The paired test, and (x100, in points) the interval and minimum detectable effect (reports/power.py)."""
    result = paired_test(first, second, test=test)
    power = paired_power([100 * v for v in first], [100 * v for v in second])
    return {"mean_difference": result.mean_difference, "statistic": result.statistic,
            "p_value": result.p_value, "n": result.n, "power_points": power.to_dict()}


def build_results(runs: Mapping[str, PerSeed], tasks: tuple[str, ...], *, test: str = "t") -> dict:
    """Scores per seed, summaries per cell and the paired tests, as a JSON-ready dict."""
    rows = [row for row in ROW_ORDER if row in runs] + [row for row in runs if row not in ROW_ORDER]
    columns = (*tasks, GLUE)
    scores = {row: {int(seed): seed_scores(runs[row][seed], tasks) for seed in sorted(runs[row])} for row in rows}
    summary = {}
    for row in rows:
        summary[row] = {}
        for column in columns:
            cell = summarize([scores[row][seed][column] for seed in scores[row]])
            summary[row][column] = {"mean": cell.mean, "std": cell.std, "n": cell.n}
    tests = {}
    for first, second in COMPARISONS:
        if first not in scores or second not in scores:
            continue
        shared = sorted(set(scores[first]) & set(scores[second]))
        tests[f"{first} vs {second}"] = {
            "seeds": shared,
            **{c: _test_record([scores[first][s][c] for s in shared], [scores[second][s][c] for s in shared], test)
               for c in columns},
        }
    readings = [reading(f"{ROW_TITLES.get(first, first)} - {ROW_TITLES.get(second, second)}, GLUE average",
                        tests[f"{first} vs {second}"][GLUE]["power_points"])
                for first, second in COMPARISONS if f"{first} vs {second}" in tests]
    return {
        "tasks": list(tasks),
        "rows": rows,
        "readings": readings,
        "test": TEST_NAMES[test],
        "test_key": test,
        "metrics": {row: {str(seed): runs[row][seed] for seed in sorted(runs[row])} for row in rows},
        "scores": {row: {str(seed): values for seed, values in by_seed.items()} for row, by_seed in scores.items()},
        "summary": summary,
        "tests": tests,
    }


def _cell(summary: Mapping[str, float]) -> str:
    text = format_mean_std(Summary(summary["mean"], summary["std"], summary["n"]), scale=100.0)
    return f"{text} (n={summary['n']})"


def _test_cell(record: Mapping[str, float]) -> str:
    if record["n"] < 2 or math.isnan(record["p_value"]):
        return f"d={100 * record['mean_difference']:+.1f}, no test (n={record['n']})"
    p_text = format_p_value(record["p_value"])
    p_text = p_text if p_text.startswith("<") else "=" + p_text
    return f"d={100 * record['mean_difference']:+.1f}, p{p_text} (n={record['n']})"


def render_markdown(results: Mapping) -> str:
    """The table as Markdown: one row per method, one column per task and the GLUE average."""
    columns = [*results["tasks"], GLUE]
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in results["rows"]:
        cells = [_cell(results["summary"][row][c]) for c in columns]
        lines.append(f"| {ROW_TITLES.get(row, row)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Dev-set scores x100 of the final model (last step, no model selection), mean +- sample std over "
        "seeds, n = number of seeds. MRPC: mean of F1 and accuracy; STS-B: mean of Pearson and Spearman; "
        "CoLA: Matthews correlation; others: accuracy. GLUE: mean of the task scores."
    )
    if results["tests"]:
        test_name = results["test"][0].upper() + results["test"][1:]
        lines += ["", f"{test_name} per task, pairing seed k of BAM with seed k of the other method; "
                  "d = mean difference (BAM minus other) x100, two-sided p, n = pairs:", ""]
        lines.append("| comparison | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for name, record in results["tests"].items():
            first, second = name.split(" vs ")
            title = f"{ROW_TITLES.get(first, first)} vs {ROW_TITLES.get(second, second)}"
            lines.append(f"| {title} | " + " | ".join(_test_cell(record[c]) for c in columns) + " |")
        if results.get("test_key") == "wilcoxon":
            n = max((record[GLUE]["n"] for record in results["tests"].values()), default=0)
            lines += ["", f"With n = {n} pairs the exact Wilcoxon test cannot give p below {wilcoxon_min_p(n):.3f}."]
        if results.get("readings"):
            lines += ["", *[f"- {text}" for text in results["readings"]], "", POWER_NOTE]
    return "\n".join(lines) + "\n"


def render_csv(results: Mapping) -> str:
    """Long-format CSV: one line per (method, column) with mean, std, n (fractions, not x100) and the
    paired test of BAM against that method (empty for BAM itself or when no test ran)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "task", "mean", "std", "n", "bam_minus_method", "p_bam_vs_method", "pairs"])
    for row in results["rows"]:
        for column in [*results["tasks"], GLUE]:
            cell = results["summary"][row][column]
            record = results["tests"].get(f"annealed vs {row}", {}).get(column)
            tested = record is not None and not math.isnan(record["p_value"])
            writer.writerow([
                row, column, f"{cell['mean']:.6g}", "" if math.isnan(cell["std"]) else f"{cell['std']:.6g}", cell["n"],
                f"{record['mean_difference']:.6g}" if tested else "", f"{record['p_value']:.6g}" if tested else "",
                record["n"] if record is not None else "",
            ])
    return out.getvalue()
