"""`bornagain report DIR` on a `bornagain sweep train` output (DIR/sweep.json): one row per grid point, its
validation and test accuracy as mean ± std over the point's finished seeds, and the point with the best mean
validation accuracy marked (the one to choose: the test column is for reading, never for choosing).

A `ban` sweep's points are `ban.seeds`-style aggregates reported one by one (`bornagain report DIR/<point>`);
`glue-teachers` and `bam` points likewise.
"""

from __future__ import annotations

import math
from pathlib import Path

from bornagain_kd.errors import UserError
from bornagain_kd.files import read_json
from bornagain_kd.reports.ban_tables import csv_text, markdown
from bornagain_kd.reports.stats import summarize


def _finite(values: list) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    s = summarize(values)
    return f"{s.mean:.2f}" + (f" ± {s.std:.2f}" if s.n > 1 else "")


def _point(record: dict, run: dict) -> str:
    """The grid point a run belongs to: its folder above seed-<s>/ where the sweep has seeds."""
    return Path(run["name"]).parent.as_posix() if record.get("seeds") else run["name"]


def sweep_rows(top: Path) -> tuple[list[str], list[list[str]], str]:
    """The table of a `sweep train` output and the sentence under it."""
    record = read_json(top / "sweep.json")
    command = record.get("command")
    if command != "train":
        first = sorted({_point(record, r) for r in record["runs"]})[0]
        raise UserError(f"'{top}' is a `sweep {command}` output: report each grid point on its own, e.g. "
                        f"bornagain report {top / first}")
    points: dict[str, list[dict | None]] = {}
    for run in record["runs"]:
        results = top / run["name"] / "results.json"
        points.setdefault(_point(record, run), []).append(read_json(results) if results.is_file() else None)
    header = ["Grid point", "Seeds finished", "Validation accuracy (%)", "Test accuracy (%)", "Training time (s)"]
    rows, best, best_val = [], None, -math.inf
    for name, runs in points.items():
        done = [r for r in runs if r is not None]
        val = _finite([r.get("val_accuracy") for r in done])
        rows.append([name, f"{len(done)} of {len(runs)}", _cell(val),
                     _cell(_finite([r.get("test_accuracy") for r in done])),
                     _cell(_finite([r.get("train_seconds") for r in done]))])
        if val and sum(val) / len(val) > best_val:
            best, best_val = name, sum(val) / len(val)
    if best is None:
        note = "No finished run has a validation accuracy (data.val_size=0?): nothing to choose by."
    else:
        rows = [[f"**{r[0]}**" if r[0] == best else r[0], *r[1:]] for r in rows]
        note = (f"Best mean validation accuracy: {best} (bold). Choose by validation; the test column is read, not "
                "chosen by.")
    return header, rows, note


def sweep_command(top: Path, fmt: str) -> str:
    header, rows, note = sweep_rows(top)
    if fmt == "csv":
        return csv_text(header, [[c.replace("**", "") for c in r] for r in rows])
    if fmt == "latex":
        raise UserError("a sweep's table prints as markdown or csv: drop --format latex")
    return (f"`sweep train` in {top}, mean ± std over each grid point's finished seeds, each run's last epoch.\n\n"
            + markdown(header, rows) + "\n" + note + "\n")
