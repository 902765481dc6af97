"""`bornagain report` for any run directory: a BAN sequence, a single engine run (a BAN generation, a
`train` run, a GLUE teacher, a BAM student), a `glue-teachers` output or a `bam` output."""

from __future__ import annotations

import math
from pathlib import Path

from bornagain.engine.run_log import read_metrics
from bornagain.errors import UserError
from bornagain.files import read_json
from bornagain.reports.ban_tables import load_run_results, markdown

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
        if "generations" in r:
            return "ban"
        if "rows" in r and "tests" in r:
            return "bam"
        return "run"
    if (run_dir / "teachers" / "summary.json").is_file():
        return "glue-teachers"
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
    from bornagain.reports.ban_tables import render  # noqa: PLC0415
    from bornagain.reports.bam_tables import render_markdown  # noqa: PLC0415

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
