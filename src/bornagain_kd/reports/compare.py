"""Two sweeps over the same teachers, compared pair by pair (`bornagain report --compare A B`).

A and B are `ban.seeds` outputs (or folders of `seed-<s>/` runs) whose seed-s runs share their teacher: typically B
reuses A's teachers with another student setting (``ban.teacher_run=A/seed-{seed}/gen0``), e.g. the paper's loss
weights against the default. For every column both sweeps have (BAN-k, the ensembles, the controls) it takes the
per-seed difference B - A of test error over the seeds both hold, with the paired t-test, its 95% interval and
minimum detectable effect (reports/power.py), McNemar's exact test per seed and pooled (the same test images), and
optionally Holm's adjustment over the table's comparisons. A's controls that B lacks and that do not depend on the
students' loss (Ind*K, label smoothing, longer) control B's students too: B's BAN-1 and ensembles are compared with
them as the pooled table compares A's own. The teacher column is the check, not a comparison: the
two runs of a seed must hold the same teacher predictions, or the pairing means nothing and the command refuses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, read_json, write_json
from bornagain_kd.reports.ensembles import generation_dir, load_probs
from bornagain_kd.reports.plots import plot_forest
from bornagain_kd.config import keys_that_may_differ, load_yaml
from bornagain_kd.engine.settings import changed_keys, recorded
from bornagain_kd.reports.power import NOTE as POWER_NOTE
from bornagain_kd.reports.seed_tables import comparison_rows, family_note
from bornagain_kd.reports.seeds import (PAIRED, POOLED_TEST, _columns, _correct, _summary, adjust_p_values,
                                        comparisons_of, paired_comparison)
from bornagain_kd.reports.stats import TEST_NAMES
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.reports.ban_tables import csv_text, markdown

KIND = "ban-sweep-comparison"


def seed_runs(top: Path) -> dict[int, Path]:
    """{seed: run directory} of a `ban.seeds` output (its results.json's list) or of a folder of seed-<s>/ runs."""
    top = Path(top)
    summary = top / "results.json"
    if summary.is_file() and read_json(summary).get("kind") == "ban-seeds":
        dirs = [top / name for name in read_json(summary)["runs"]]
    else:
        dirs = sorted(d for d in top.glob("seed-*") if (d / "results.json").is_file())
    if not dirs:
        raise UserError(f"'{top}' is not a sweep over seeds: --compare takes two `ban.seeds` outputs (or folders of "
                        "finished seed-<s>/ runs)")
    runs = {}
    for d in dirs:
        results = read_json(d / "results.json")
        if "generations" not in results:
            raise UserError(f"'{d}' is not a `bornagain ban` run: --compare takes sweeps of ban runs")
        runs[int(results["seed"])] = d
    return runs


def _teacher_probs(run_dir: Path, results: dict) -> torch.Tensor:
    teacher = next(g for g in results["generations"] if g["generation"] == 0)
    return load_probs(generation_dir(run_dir, teacher) / "test_probs.safetensors")[0]


def compare_sweeps(a: Path, b: Path, *, labels: tuple[str, str] | None = None, effect: float | None = None,
                   adjust: str = "none") -> dict:
    """The comparison of sweep ``b`` against sweep ``a`` (differences b - a), seed by seed (module docstring)."""
    for top in (a, b):
        if not Path(top).is_dir():
            raise UserError(f"'{top}' does not exist: --compare takes two `ban.seeds` outputs (folders of seed-<s>/ runs)")
    if Path(a).resolve() == Path(b).resolve():
        raise UserError(f"--compare got '{a}' twice: give two sweeps (A B) to compare")
    runs_a, runs_b = seed_runs(a), seed_runs(b)
    seeds = sorted(set(runs_a) & set(runs_b))
    if len(seeds) < 2:
        raise UserError(f"'{a}' (seeds {sorted(runs_a)}) and '{b}' (seeds {sorted(runs_b)}) share "
                        f"{'only seed ' + str(seeds[0]) if seeds else 'no seed'}: a paired comparison needs at least "
                        "two seeds run in both")
    label_a, label_b = labels or (Path(a).name, Path(b).name)
    if label_a == label_b:
        label_a, label_b = str(a), str(b)
    res_a = {s: read_json(runs_a[s] / "results.json") for s in seeds}
    res_b = {s: read_json(runs_b[s] / "results.json") for s in seeds}
    for s in seeds:  # the same teachers: otherwise seed s of A and of B are unrelated and the pairing means nothing
        if not torch.equal(_teacher_probs(runs_a[s], res_a[s]), _teacher_probs(runs_b[s], res_b[s])):
            raise UserError(f"seed {s}: the teachers of '{runs_a[s]}' and '{runs_b[s]}' differ (their test "
                            "predictions are not the same): --compare pairs sweeps over the same teachers (run the "
                            f"second with ban.teacher_run={a}/seed-{{seed}}/gen0); for unrelated sweeps, report "
                            "each on its own")
    cols_a = {s: {c["name"]: c for c in _columns(res_a[s])} for s in seeds}
    cols_b = {s: {c["name"]: c for c in _columns(res_b[s])} for s in seeds}
    shared = [n for n in cols_a[seeds[0]] if n != "teacher" and all(n in cols_a[s] and n in cols_b[s] for s in seeds)]
    # a column is one thing in both only where it averages the same members (All of 2 and of 3 generations is not)
    same = lambda n, s: (cols_a[s][n]["members"], cols_a[s][n].get("dirs")) == (  # noqa: E731
        cols_b[s][n]["members"], cols_b[s][n].get("dirs"))
    names = [n for n in shared if all(same(n, s) for s in seeds)]
    unlike = [n for n in shared if n not in names]
    if not names:
        raise UserError(f"'{a}' and '{b}' have no column in common besides the teacher: nothing to compare")
    differ = _differences(runs_a[seeds[0]], runs_b[seeds[0]], compared_smoothing="label smoothing" in names)
    borrowed, not_borrowed = _borrow(cols_a, cols_b, seeds, names, differ)
    comparisons = []
    # B's column against A's same column, then against A's borrowed controls: (B's column, A's column, extra keys)
    for x, y, extra in [*((n, n, {}) for n in names), *((x, c, {"control": c}) for x, c in borrowed)]:
        err_b = [cols_b[s][x]["test_error"] for s in seeds]
        err_a = [cols_a[s][y]["test_error"] for s in seeds]
        correct = [(_correct(runs_b[s], res_b[s], cols_b[s][x]), _correct(runs_a[s], res_a[s], cols_a[s][y]))
                   for s in seeds]
        comparisons.append({**paired_comparison(f"{label_b} {x}", f"{label_a} {y}", err_b, err_a, correct, seeds,
                                                effect=effect), "column": x, **extra, "b_is_best_single": False})
    controls = list(dict.fromkeys(c for _, c in borrowed))
    error = lambda cols, n: _summary([cols[s][n]["test_error"] for s in seeds])  # noqa: E731
    rows = ([{"name": n, label_a: error(cols_a, n), label_b: error(cols_b, n)} for n in names]
            + [{"name": c, label_a: error(cols_a, c), label_b: None} for c in controls])
    partial = {label: sorted({n for s in seeds for n in cols[s]} - {n for n in cols[seeds[0]]
                                                                    if all(n in cols[s] for s in seeds)})
               for label, cols in ((label_a, cols_a), (label_b, cols_b))}
    return {
        "kind": KIND, "a": str(a), "b": str(b), "labels": [label_a, label_b], "seeds": seeds,
        "differ_in": differ, "left_out": unlike, "not_in_every_seed": {k: v for k, v in partial.items() if v},
        "only_in_a": sorted(set(runs_a) - set(seeds)), "only_in_b": sorted(set(runs_b) - set(seeds)),
        "dataset": res_a[seeds[0]].get("dataset"), "model": res_a[seeds[0]].get("model"),
        "loss_weights": [res_a[seeds[0]].get("loss_weights"), res_b[seeds[0]].get("loss_weights")],
        "columns": rows, "comparisons": comparisons, "borrowed_controls": controls,
        "controls_not_borrowed": not_borrowed, "adjust": adjust_p_values(comparisons, adjust),
        "tests": {"paired": f"{TEST_NAMES[PAIRED]} over seeds on test error (scipy.stats.ttest_rel), two-sided",
                  "mcnemar_pooled": POOLED_TEST, "power": POWER_NOTE},
    }


# Controls trained without the students (pipelines/ban_controls.py): Ind*K (the teacher and K - 1 more of its
# recipe), the label-smoothing student, `longer` (the teacher's recipe, twice the epochs). Not doubled label: it is
# BAN-1 with the students' weights.
BORROWABLE = ("Ind*", "label smoothing", "longer")
# The settings that change the students' loss or which students there are, and nothing a borrowable control uses
STUDENT_ONLY_KEYS = ("ban.loss", "ban.label_weight", "ban.teacher_weight", "ban.temperature",
                     "ban.normalize_loss_weights", "ban.student_warmup_epochs", "ban.generations", "ban.ensembles",
                     "ban.include_teacher_in_ensembles", "ban.student_baseline")


def _borrow(cols_a: dict, cols_b: dict, seeds: list[int], names: list[str],
            differ: dict) -> tuple[list[tuple[str, str]], str | None]:
    """(B's column, A's control) pairs where A trained a control that B did not and that does not depend on the
    students' loss: a control of B's students too, as long as the sweeps differ in nothing else; and why none is
    borrowed where that is worth saying (a sentence with {A} and {B} for the sweeps' names)."""
    candidates = [n for n in cols_a[seeds[0]] if n.startswith(BORROWABLE) and n not in names
                  and all(n in cols_a[s] and n not in cols_b[s] for s in seeds)]
    b_only = [n for n in cols_b[seeds[0]] if n.startswith(BORROWABLE) and n not in names
              and all(n in cols_b[s] and n not in cols_a[s] for s in seeds)]
    if not candidates:  # only the first sweep's controls serve the other's students
        return [], (f"{{B}}'s controls {', '.join(b_only)} serve the first sweep's networks only when that sweep "
                    "comes second: --compare {B} {A} compares them" if b_only else None)
    other = [k for k in differ if k not in STUDENT_ONLY_KEYS]
    if other:
        return [], (f"{{A}}'s {', '.join(candidates)} not compared with {{B}}'s networks: the sweeps also differ in "
                    f"{', '.join(other)}, which the controls depend on")
    b_names = [n for n in cols_b[seeds[0]] if all(n in cols_b[s] for s in seeds)]
    return [p for p in comparisons_of([*b_names, *candidates], None) if p[1] in candidates], None


def _differences(run_a: Path, run_b: Path, *, compared_smoothing: bool) -> dict[str, list]:
    """{dotted key: [A's value, B's value]} of the settings the two sweeps' runs differ in (the seed, how they ran,
    where the teacher came from and which controls ran left out): what the comparison is about."""
    try:
        ca, cb = (recorded(load_yaml(d / "config.yaml"), VisionConfig.ADDED_KEYS) for d in (run_a, run_b))
    except (OSError, UserError):
        return {}
    # which controls ran does not change the students; the smoothing candidates matter only where both sweeps'
    # label-smoothing controls are compared
    ignore = (*keys_that_may_differ(VisionConfig, "pool"), "ban.teacher_run", "output_dir", "ban.controls",
              *(() if compared_smoothing else ("ban.label_smoothing",)))
    return {k: [ca.get(k), cb.get(k)] for k in changed_keys(ca, cb, ignore=ignore)}


def _error_rows(agg: dict) -> tuple[list[str], list[list[str]]]:
    label_a, label_b = agg["labels"]
    header = ["Column", f"{label_a}: test error (%)", f"{label_b}: test error (%)"]
    cell = lambda s: "-" if s is None else f"{s['mean']:.2f} ± {s['std']:.2f}"  # noqa: E731
    return header, [[r["name"], cell(r[label_a]), cell(r[label_b])] for r in agg["columns"]]


def caption(agg: dict) -> str:
    label_a, label_b = agg["labels"]
    skipped = "".join(f" Seeds {v} are only in {k} and left out." for k, v in
                      ((label_a, agg["only_in_a"]), (label_b, agg["only_in_b"])) if v)
    if agg.get("left_out"):
        skipped += (f" Left out: {', '.join(agg['left_out'])} (in both, but averaging other members: not one "
                    "column).")
    if agg.get("borrowed_controls"):
        skipped += (f" {label_a}'s controls {', '.join(agg['borrowed_controls'])} (trained without students, so "
                    f"the same for both) are compared with {label_b}'s networks too.")
    if agg.get("controls_not_borrowed"):  # a sentence with {A} and {B} for the two sweeps' names
        skipped += " " + agg["controls_not_borrowed"].format(A=label_a, B=label_b) + "."
    for label, names in (agg.get("not_in_every_seed") or {}).items():
        skipped += f" Not in every seed of {label}, so left out: {', '.join(names)}."
    differ = agg.get("differ_in") or {}
    what = ("; the sweeps differ in " + ", ".join(f"{k} ({label_a}: {va}, {label_b}: {vb})"
                                                  for k, (va, vb) in differ.items())) if differ else \
        "; the sweeps' recorded settings differ in nothing but the teacher's source"
    return (f"{label_b} against {label_a}, pair by pair over the same teachers: {agg['model']} on {agg['dataset']}, "
            f"seeds {', '.join(map(str, agg['seeds']))} (n = {len(agg['seeds'])}){what}. Mean ± sample std of each "
            f"column's test error, each seed's last epoch.{skipped}")


def notes(agg: dict) -> str:
    return (f"{family_note(agg)} Differences are {agg['labels'][1]} - {agg['labels'][0]} in test-error points per "
            f"seed (negative: {agg['labels'][1]} better). Paired t: {agg['tests']['paired']}, df = n - 1. McNemar: "
            "exact tests on the test examples where the two runs of a seed disagree (in brackets: only "
            f"{agg['labels'][1]} right / only {agg['labels'][0]} right); pooled: " + agg["tests"]["mcnemar_pooled"] + ". " + agg["tests"]["power"])


def check_format(fmt: str) -> None:
    """A comparison prints as markdown or csv (its tables have no LaTeX form)."""
    if fmt == "latex":
        raise UserError("--compare prints markdown or csv: drop --format latex")


def render(agg: dict, fmt: str = "markdown") -> str:
    h1, r1 = _error_rows(agg)
    h2, r2 = comparison_rows(agg)
    if fmt == "csv":
        return csv_text(h1, r1) + "\n" + csv_text(h2, r2)
    readings = "\n".join(f"- {c['reading']}" for c in agg["comparisons"] if c.get("reading"))
    return (caption(agg) + "\n\n" + markdown(h1, r1) + "\n" + markdown(h2, r2) + "\n" + readings + "\n\n"
            + notes(agg) + "\n")


def compare_command(run_dirs: list[str], output: str | None, *, plots: bool, fmt: str, effect: float | None,
                    adjust: str) -> str:
    """`bornagain report --compare A B`: the table printed; with --output, table.md/.csv, results.json and (with
    --plots) the forest plot written there."""
    if len(run_dirs) != 2:
        raise UserError(f"--compare takes two sweeps (A B: differences B - A), got {len(run_dirs)} folders")
    check_format(fmt)
    if plots and not output:
        raise UserError("--compare --plots needs --output DIR (where to draw the forest plot)")
    agg = compare_sweeps(Path(run_dirs[0]), Path(run_dirs[1]), effect=effect, adjust=adjust)
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "table.md", render(agg, "markdown"))
        atomic_write_text(out / "table.csv", render(agg, "csv"))
        if plots:
            plot_forest(out, agg)
        write_json(out / "results.json", agg)
    return render(agg, fmt)
