"""Born-again sequences repeated over seeds: mean +- std of every column, and the tests behind each claim.

Reads finished `bornagain ban` runs (their results.json, config.yaml and each member's
test_probs.safetensors) and touches no model. Used by `ban.seeds` (pipelines/ban.py, run_seeds) and by
`bornagain report RUN_DIR ...` on runs that differ only in their seed.

Columns: the teacher (generation 0, the paper's "Baseline"), BAN-1..K, the optional student baseline, and
every ensemble. Each metric (test error %, NLL, ECE %) is summarised as mean, sample std (ddof 1) and n.

Comparisons (``a`` against ``b``, differences a - b in test-error points, negative = ``a`` better):
BAN-k vs the teacher, each ensemble vs the teacher and vs the best single generation (the generation
with the lowest mean *validation* error, so the test set selects nothing), BAN-1 vs the student baseline.
Two tests each:
- the paired t-test over seeds (reports/stats.py paired_test, scipy.stats.ttest_rel): is the mean
  difference non-zero across repetitions of the whole training? n - 1 degrees of freedom.
- McNemar's exact test per seed on the same test examples (argmax correctness): do the two models of one
  seed differ on this test set? And the same test pooled over seeds (reports/stats.py mcnemar_pooled): the
  discordant counts of all seeds summed into one exact binomial test, so seeds that differ in opposite
  directions cancel (Fisher's method on the per-seed two-sided p-values, used before, added them up). Both
  see test-set sampling noise for fixed models, not the seed-to-seed variability of training.

The aggregate also carries the students' loss and its weights (loss, loss_weights, normalize_loss_weights)
from the first run's results.json: runs pooled over seeds have equal configs (check_poolable).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bornagain_kd.config import keys_that_may_differ, load_yaml
from bornagain_kd.engine.settings import changed_keys, recorded
from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, read_json, write_json
from bornagain_kd.reports.ensembles import SINGLE_CONTROLS, average_probabilities, generation_dir, load_probs, member_dir
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.reports.power import NOTE as POWER_NOTE
from bornagain_kd.reports.plots import plot_forest, plot_runs
from bornagain_kd.reports.power import paired_power, reading
from bornagain_kd.reports.seed_tables import render
from bornagain_kd.reports.stats import TEST_NAMES, format_p_value, holm, mcnemar_exact, mcnemar_pooled, paired_test, summarize

KIND = "ban-seeds"
METRICS = ("test_error", "nll", "ece", "agreement", "kl")  # agreement, kl: students only (with their teacher)
NAN = float("nan")
PAIRED = "t"
POOLED_TEST = ("McNemar's exact test pooled over seeds: the test examples only a got right, summed over seeds, "
               "against those only b got right, in one exact binomial test (scipy.stats.binomtest), two-sided. "
               "H0: the two models of each seed are equally often right on the test examples where they disagree, "
               "pooled over seeds; seeds that differ in opposite directions cancel. It sees test-set sampling noise "
               "for fixed models, not seed-to-seed training variability; the seeds share one test set, so an "
               "example that the models of several seeds disagree on counts once per seed, and p is optimistic when "
               "the seeds' models err on the same examples")

def check_poolable(run_dirs: list[Path]) -> None:
    """Refuse runs whose configs differ in anything but the seed and how they ran, naming the keys; and
    refuse a seed given twice. Each config is read as it was made (engine/settings.recorded: a key added since
    takes the value in force then), so an old BAN+L run (weights 1 / 1) does not pool with a new one (0.5 / 0.5)."""
    configs = []
    for d in run_dirs:
        if not (d / "config.yaml").is_file():
            raise UserError(f"'{d}' has no config.yaml, so it cannot be checked against the other runs: "
                            "pool only runs made by `bornagain ban`")
        configs.append(recorded(load_yaml(d / "config.yaml"), VisionConfig.ADDED_KEYS))  # dotted keys
    for d, cfg in zip(run_dirs[1:], configs[1:]):
        # the seed, and how a run ran: declared on the keys (may_differ "pool")
        changed = changed_keys(configs[0], cfg, ignore=keys_that_may_differ(VisionConfig, "pool"))
        if changed:
            raise UserError(f"cannot pool '{run_dirs[0]}' and '{d}' over seeds: their configs differ in "
                            f"{', '.join(changed)} (only the seed may differ); pass --per-run for one row per run")
    seeds = [c.get("seed", 0) for c in configs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"the runs share a seed ({seeds}): pooling needs one run per seed")


def _columns(results: dict) -> list[dict]:
    """Column descriptions of one run: name, kind and the metrics of that column."""
    cols = [{"name": "teacher" if g["generation"] == 0 else f"BAN-{g['generation']}", "kind": "generation",
             "generation": g["generation"], "members": [g["generation"]],
             "test_error": g["test_error"], "nll": g["test_nll"], "ece": g["test_ece"],
             "agreement": g.get("agreement_with_teacher", NAN), "kl": g.get("kl_from_teacher", NAN),
             "val_error": None if g.get("val_accuracy") is None else 100.0 - g["val_accuracy"]}
            for g in results["generations"]]
    if results.get("student_baseline"):
        b = results["student_baseline"]
        cols.append({"name": "student baseline", "kind": "baseline", "generation": None, "members": [],
                     "test_error": b["test_error"], "nll": b["test_nll"], "ece": b["test_ece"], "val_error": None})
    cols += [{"name": e["name"], "kind": "ensemble", "generation": None, "members": e["members"],
              "test_error": e["test_error"], "nll": e["nll"], "ece": e["ece"], "val_error": None}
             for e in results["ensembles"]]
    controls = results.get("controls") or {}
    cols += [{"name": e["name"], "kind": "control", "generation": None, "members": [], "dirs": e["members"],
              "test_error": e["test_error"], "nll": e["nll"], "ece": e["ece"], "val_error": None}
             for e in (controls.get("independent") or {}).get("ensembles", [])]
    if controls.get("label_smoothing"):
        ls = controls["label_smoothing"]
        cols.append({"name": "label smoothing", "kind": "control", "generation": None, "members": [],
                     "dirs": [ls["dir"]], "test_error": ls["test_error"], "nll": ls["nll"], "ece": ls["ece"],
                     "val_error": None})
    for kind, name in SINGLE_CONTROLS.items():
        if controls.get(kind):
            c = controls[kind]
            cols.append({"name": name, "kind": "control", "generation": None, "members": [], "dirs": [c["dir"]],
                         "test_error": c["test_error"], "nll": c["nll"], "ece": c["ece"], "val_error": None})
    return cols


def _correct(run_dir: Path, results: dict, column: dict) -> torch.Tensor:
    """(n,) bool: argmax correctness of one column of one run on its test set."""
    by_gen = {g["generation"]: g for g in results["generations"]}
    if column["kind"] == "baseline":
        probs, labels = load_probs(run_dir / "baseline" / "test_probs.safetensors")
    else:
        dirs = ([member_dir(run_dir, d) for d in column["dirs"]] if column["kind"] == "control"
                else [generation_dir(run_dir, by_gen[g]) for g in column["members"]])
        loaded = [load_probs(d / "test_probs.safetensors") for d in dirs]
        labels = loaded[0][1]
        if any(not torch.equal(lab, labels) for _, lab in loaded):
            raise UserError(f"the generations of '{run_dir}' were tested on different test sets")
        probs = average_probabilities([p for p, _ in loaded])  # (n, classes); one member: its own probs
    return probs.argmax(dim=1) == labels


def _summary(values: list[float]) -> dict:
    s = summarize(values)
    return {"mean": s.mean, "std": s.std, "n": s.n, "values": values}


def comparisons_of(names: list[str], best: str | None) -> list[tuple[str, str]]:
    """(a, b) pairs: BAN-k vs teacher, ensembles vs teacher and vs the best single generation, BAN-1 vs the
    student baseline, and the controls: Ens*K vs Ind*K (as many networks), BAN-1 vs the label-smoothing student,
    BAN-1 and Ens*2 vs the longer-trained teacher (compute-matched), BAN-1 vs the doubled-label student."""
    pairs = [(n, "teacher") for n in names if n.startswith("BAN-")]
    for n in names:
        if n.startswith("Ens*") or n == "All":
            pairs.append((n, "teacher"))
            if best and best != "teacher":
                pairs.append((n, best))
    if "student baseline" in names and "BAN-1" in names:
        pairs.append(("BAN-1", "student baseline"))
    pairs += [(f"Ens*{n[4:]}", n) for n in names if n.startswith("Ind*") and f"Ens*{n[4:]}" in names]
    if "label smoothing" in names and "BAN-1" in names:
        pairs.append(("BAN-1", "label smoothing"))
    if "longer" in names:  # the compute-matched control: BAN-1 (two trainings) and BANE's Ens*2 beside it
        pairs += [(a, "longer") for a in ("BAN-1", "Ens*2") if a in names]
    if "doubled label" in names and "BAN-1" in names:
        pairs.append(("BAN-1", "doubled label"))
    return pairs


ADJUSTMENTS = ("none", "holm")


def adjust_p_values(comparisons: list[dict], method: str) -> dict:
    """With ``holm``, each comparison's paired t gets ``p_holm``, Holm's adjustment over the table's defined paired
    t-tests (stats.holm); returns what the table's notes say: the method and the number of comparisons."""
    if method not in ADJUSTMENTS:
        raise UserError(f"--adjust {method}: choose one of {', '.join(ADJUSTMENTS)}")
    if method == "holm":
        for c, p in zip(comparisons, holm([c["paired_t"]["p_value"] for c in comparisons])):
            c["paired_t"]["p_holm"] = p
            if c.get("reading") and p == p:  # the reading says what the adjustment leaves of it
                c["reading"] += (f"; Holm-adjusted over the {len(comparisons)} comparisons, p = {format_p_value(p)}"
                                 + (" (significant at 0.05)" if p < 0.05 else " (not significant at 0.05)"))
    return {"method": method, "comparisons": len(comparisons)}


def paired_comparison(a: str, b: str, err_a: list[float], err_b: list[float],
                      correct: list[tuple[torch.Tensor, torch.Tensor]], seeds: list[int], *,
                      effect: float | None) -> dict:
    """One comparison a - b over seeds: the per-seed differences, the paired t-test, its interval and detectable
    effect (and the seeds ``effect`` needs), the reading, McNemar's test per seed on ``correct`` ((n,) bool of a,
    of b, per seed) and pooled over the seeds."""
    t = paired_test(err_a, err_b, test=PAIRED)
    power = paired_power(err_a, err_b, effect=effect)
    mcnemar = [mcnemar_exact(ca.tolist(), cb.tolist()) for ca, cb in correct]
    pooled = mcnemar_pooled(mcnemar)
    return {"a": a, "b": b, "mean_difference": t.mean_difference, "power": power.to_dict(),
            "differences": [x - y for x, y in zip(err_a, err_b)],
            "reading": reading(f"{a} - {b}", power),
            "paired_t": {"statistic": t.statistic, "p_value": t.p_value, "n": t.n, "df": t.n - 1},
            "mcnemar": [{"seed": seed, "only_a_correct": m.only_a, "only_b_correct": m.only_b,
                         "p_value": m.p_value} for seed, m in zip(seeds, mcnemar)],
            "mcnemar_pooled": {"only_a_correct": pooled.only_a, "only_b_correct": pooled.only_b,
                               "p_value": pooled.p_value}}


def aggregate(run_dirs: list[Path], *, labels: list[str] | None = None, effect: float | None = None,
              adjust: str = "none") -> dict:
    """The aggregate of finished ban runs of one config, one per seed (checked by the caller). Each comparison
    carries its per-seed differences, its interval and minimum detectable effect (reports/power.py) and, with
    ``effect`` (test-error points), the seeds needed to detect that effect; ``adjust="holm"`` adds Holm-adjusted
    paired-t p-values over the table's comparisons."""
    runs = [read_json(d / "results.json") for d in run_dirs]
    seeds = [r["seed"] for r in runs]
    columns = [_columns(r) for r in runs]
    names = [c["name"] for c in columns[0]]
    if any([c["name"] for c in cols] != names for cols in columns):
        raise UserError("the runs have different generations or ensembles: pool runs of one config only")
    rows = []
    for i, name in enumerate(names):
        row = {"name": name, "kind": columns[0][i]["kind"], "members": columns[0][i]["members"]}
        row |= {m: _summary([cols[i].get(m, NAN) for cols in columns]) for m in METRICS}
        val = [cols[i]["val_error"] for cols in columns]
        row["val_error"] = None if None in val else _summary(val)
        rows.append(row)
    singles = [r for r in rows if r["kind"] == "generation" and r["val_error"] is not None]
    best = min(singles, key=lambda r: r["val_error"]["mean"])["name"] if singles else None
    by_name = {r["name"]: i for i, r in enumerate(rows)}
    tests = []
    for a, b in comparisons_of(names, best):
        ia, ib = by_name[a], by_name[b]
        err_a = [cols[ia]["test_error"] for cols in columns]
        err_b = [cols[ib]["test_error"] for cols in columns]
        correct = [(_correct(d, r, cols[ia]), _correct(d, r, cols[ib])) for d, r, cols in zip(run_dirs, runs, columns)]
        tests.append({**paired_comparison(a, b, err_a, err_b, correct, seeds, effect=effect),
                      "b_is_best_single": b == best and b != "teacher"})
    first = runs[0]
    return {
        "kind": KIND, "seeds": seeds, "runs": labels or [str(d) for d in run_dirs],
        "dataset": first["dataset"], "model": first["model"], "student_model": first.get("student_model"),
        "params": first["params"], "loss": first.get("loss"), "loss_weights": first.get("loss_weights"),
        "normalize_loss_weights": first.get("normalize_loss_weights"), "epochs": first.get("epochs"),
        "columns": rows, "best_single_generation": best, "best_single_selected_by": "lowest mean validation error",
        "comparisons": tests, "adjust": adjust_p_values(tests, adjust),
        "tests": {"paired": f"{TEST_NAMES[PAIRED]} over seeds on test error (scipy.stats.ttest_rel), two-sided",
                  "mcnemar": "McNemar's exact test per seed (binomial on the discordant test examples, "
                             "scipy.stats.binomtest), two-sided",
                  "mcnemar_pooled": POOLED_TEST, "power": POWER_NOTE},
        "ece_bins": "15 equal-width confidence bins, closed on the right",
        "reported_epoch": "last",  # each generation's final weights: no epoch is chosen on validation or test data
    }


def write_aggregate(agg: dict, run_dirs: list[Path], output: Path, *, plots: bool = True) -> list[Path]:
    """results.json, table.md/.csv/.tex and (with ``plots``) the seed plots at ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, name in (("markdown", "table.md"), ("csv", "table.csv"), ("latex", "table.tex")):
        atomic_write_text(output / name, render(agg, fmt))
        written.append(output / name)
    if plots:
        written += plot_runs(output, run_dirs, [read_json(d / "results.json") for d in run_dirs])
        written += plot_forest(output, agg)
    write_json(output / "results.json", agg)  # last: it marks the aggregate as complete
    return [*written, output / "results.json"]


def pools(run_dirs: list[str]) -> bool:
    """Several `ban` runs whose recorded seeds differ: repetitions to pool (check_poolable decides if they may)."""
    seeds = [load_yaml(Path(d) / "config.yaml").get("seed", 0) if (Path(d) / "config.yaml").is_file() else None
             for d in run_dirs]
    return len(run_dirs) > 1 and len(set(seeds)) > 1


def seed_runs_of(top: Path) -> list[Path]:
    """The seed runs of a `ban.seeds` output, as its results.json lists them (relative to it)."""
    return [top / name for name in read_json(top / "results.json")["runs"]]


def pool_command(run_dirs: list[str], kinds: list[str], output: str | None, *, plots: bool, fmt: str,
                 effect: float | None = None, adjust: str = "none") -> str:
    """`bornagain report` on one `ban.seeds` output, or on `ban` runs of one config that differ in the seed."""
    if "ban-seeds" in kinds:
        if len(run_dirs) != 1:
            raise UserError("a `ban.seeds` output is reported alone: give it by itself, or give its seed-<s> runs")
        top = Path(run_dirs[0])
        dirs = seed_runs_of(top)
        labels = [d.name for d in dirs]
    else:
        top, dirs, labels = None, [Path(d) for d in run_dirs], None
        if plots and not output:
            raise UserError("--plots of runs pooled over seeds needs --output DIR (where to draw them)")
    check_poolable(dirs)
    agg = aggregate(dirs, labels=labels, effect=effect, adjust=adjust)
    if output:
        if top is None:  # the runs as seen from the output folder, so that `report OUTPUT` finds them again
            agg["runs"] = [os.path.relpath(d.resolve(), Path(output).resolve()) for d in dirs]
        write_aggregate(agg, dirs, Path(output), plots=plots)
    elif plots:
        plot_runs(top, dirs, [read_json(d / "results.json") for d in dirs])
        plot_forest(top, agg)
    return render(agg, fmt)
