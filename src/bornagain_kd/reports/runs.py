"""`bornagain report` for any run directory: a BAN sequence, a single engine run (a BAN generation, a
`train` run, a GLUE teacher, a BAM student), a `glue-teachers` output or a `bam` output."""

from __future__ import annotations

import math
from pathlib import Path

from bornagain_kd.engine.run_log import read_metrics
from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, read_json
from bornagain_kd.reports.bam_tables import render_markdown
from bornagain_kd.reports.ban_tables import load_run_results, markdown, render, render_latex, write_tables
from bornagain_kd.reports.plots import plot_run
from bornagain_kd.reports.compare import KIND as COMPARISON, compare_command
from bornagain_kd.reports.compare import check_format as check_comparison_format, render as render_comparison
from bornagain_kd.reports.seeds import pool_command, pools
from bornagain_kd.reports.sweeps import sweep_command

# The fields of a single run's results.json shown first, in this order, when present.
_SHOWN = ("run", "model", "task", "arm", "seed", "dataset", "params", "test_error", "test_nll", "test_ece",
          "val_accuracy", "world_size", "per_rank_batch", "train_seconds")


def kind_of(run_dir: Path) -> str:
    """'ban' | 'ban-seeds' | 'bam' | 'glue-teachers' | 'run' (one engine run), or a UserError naming what is
    missing."""
    results = run_dir / "results.json"
    if results.is_file():
        r = read_json(results)
        if r.get("kind") == "ban-seeds":  # a `ban.seeds` output: the aggregate of its seed-<s> runs
            return "ban-seeds"
        if r.get("kind") == COMPARISON:  # a `report --compare --output` folder
            return COMPARISON
        if "generations" in r:
            return "ban"
        if "rows" in r and "tests" in r:
            return "bam"
        return "run"
    if (run_dir / "teachers" / "summary.json").is_file():
        return "glue-teachers"
    if (run_dir / "sweep.json").is_file():
        return "sweep"
    if (run_dir / "checkpoint.safetensors").is_file():
        raise UserError(f"'{run_dir}' is an unfinished run (a checkpoint, no results.json): finish it with "
                        "--resume first")
    raise UserError(f"'{run_dir}' holds no results.json: it is not a finished bornagain run directory")


def _value(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def render_single_run(run_dir: Path) -> str:
    """One engine run: its results (headline fields, then dev metrics where there are some) and its last
    epoch record from metrics.jsonl."""
    r = read_json(run_dir / "results.json")
    rows = [[k, _value(r[k])] for k in _SHOWN if k in r]
    for task, metrics in sorted((r.get("dev_metrics") or {}).items()):
        if isinstance(metrics, dict):  # a BAM student: {task: {metric: value}}
            rows += [[f"dev {task} {k}", _value(v)] for k, v in metrics.items()]
        else:  # a GLUE teacher: {metric: value}
            rows.append([f"dev {task}", _value(metrics)])
    epochs = [rec for rec in read_metrics(run_dir / "metrics.jsonl") if "epoch_seconds" in rec]
    if epochs:
        last = epochs[-1]
        rows += [[f"last epoch {k}", _value(v)] for k, v in last.items() if k.startswith(("epoch", "train_", "val_"))]
    return f"{run_dir}\n\n" + markdown(["field", "value"], rows)


def render_teachers(run_dir: Path) -> str:
    summary = read_json(run_dir / "teachers" / "summary.json")
    rows = [[task, _value(t["dev"].get("score")), _value(t["majority_baseline"].get("score")),
             _value(t["train_seconds"])] for task, t in summary["tasks"].items()]
    return f"{run_dir}: single-task teachers (dev score, fractions)\n\n" + markdown(
        ["task", "dev score", "majority", "seconds"], rows)


def render_any(run_dirs: list[str]) -> str:
    """Each directory in its own form; BAN sequences together in one table (one row per run)."""
    out, ban = [], []
    for d in map(Path, run_dirs):
        kind = kind_of(d)
        if kind == "ban":
            ban.append(load_run_results(d))
        elif kind == "bam":
            out.append(f"{d}\n\n" + render_markdown(read_json(d / "results.json")))
        elif kind == "glue-teachers":
            out.append(render_teachers(d))
        else:
            out.append(render_single_run(d))
    if ban:
        out.insert(0, render(ban)[0])
    return "\n".join(out)


REPORT_FORMATS = ("markdown", "csv", "latex")


def report_command(run_dirs: list[str], output: str | None = None, *, plots: bool = False, fmt: str = "markdown",
                   per_run: bool = False, effect: float | None = None, adjust: str = "none",
                   compare: bool = False) -> str:
    """Re-render tables from finished runs and return the text to print in ``fmt`` (writing tables and plots
    where asked). Several `ban` runs of one config that differ in their seed are pooled (reports/seeds.py)
    unless ``per_run``, with the seeds needed to detect ``effect`` (test-error points); other `ban` runs give one
    row each; other kinds of run are printed in their own form."""
    if not run_dirs:
        raise UserError("bornagain report needs at least one run directory")
    if fmt not in REPORT_FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(REPORT_FORMATS)}")
    if output:  # the tables written there would replace a run's own results.json and tables
        out = Path(output).resolve()
        for d in run_dirs:
            if out == Path(d).resolve() or Path(d).resolve() in out.parents:
                raise UserError(f"--output {output} is inside the run '{d}' being reported: its tables would "
                                "replace the run's own files; give a new folder, e.g. --output runs/report")
    if compare and per_run:
        raise UserError("--compare pairs the two sweeps' seeds: drop --per-run (report each sweep with --per-run "
                        "for one row per run)")
    if compare:  # two sweeps over the same teachers, pair by pair (reports/compare.py)
        return compare_command(run_dirs, output, plots=plots, fmt=fmt, effect=effect, adjust=adjust)
    kinds = [kind_of(Path(d)) for d in run_dirs]
    if COMPARISON in kinds:  # printed again from its results.json
        if len(run_dirs) != 1 or output or plots:
            raise UserError(f"'{run_dirs[kinds.index(COMPARISON)]}' is a `report --compare` output: report it alone, "
                            "without --output or --plots (they were written with it)")
        check_comparison_format(fmt)
        return render_comparison(read_json(Path(run_dirs[0]) / "results.json"), fmt)
    if "sweep" in kinds:  # a `bornagain sweep` output: one row per grid point (reports/sweeps.py)
        if len(run_dirs) != 1 or output or plots or per_run or effect is not None or adjust != "none":
            raise UserError("a `bornagain sweep` output is reported alone and printed (no --output, --plots, "
                            "--per-run, --effect or --adjust): bornagain report DIR")
        return sweep_command(Path(run_dirs[0]), fmt)
    if "ban-seeds" in kinds or (not per_run and set(kinds) == {"ban"} and pools(run_dirs)):
        return pool_command(run_dirs, kinds, output, plots=plots, fmt=fmt, effect=effect, adjust=adjust)
    if adjust != "none":
        raise UserError("--adjust holm adjusts the p-values of a pooled table (runs that differ only in their seed, "
                        "a ban.seeds output, or --compare): drop it for these runs")
    if effect is not None:
        raise UserError("--effect sizes the seeds a pooled comparison needs: give runs that differ only in their seed "
                        "(or a ban.seeds output), without --per-run")
    if any(k != "ban" for k in kinds):  # other kinds of run: printed, each in its own form
        if output or plots or fmt != "markdown":
            raise UserError("--output and --plots (and --format csv or latex) take `bornagain ban` runs only; drop "
                            "them to print these runs")
        return render_any(run_dirs)
    results = [load_run_results(d) for d in run_dirs]
    if plots:
        for run_dir, r in zip(run_dirs, results):
            plot_run(run_dir, r)
    md, csv_out = render(results)
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        write_tables(results, Path(output))
        atomic_write_text(Path(output) / "table.tex", render_latex(results))
    if fmt == "markdown":  # each run's readings (one seed: the paired test over its test images)
        md += "".join(f"\n{line}" for r, d in zip(results, run_dirs) if r.get("readings")
                      for line in [f"{d}: {r['readings_note']}:" if len(results) > 1 else f"{r['readings_note']}:",
                                   *r["readings"]])
        return md + ("\n" if any(r.get("readings") for r in results) else "")
    return {"csv": csv_out, "latex": render_latex(results)}[fmt]
