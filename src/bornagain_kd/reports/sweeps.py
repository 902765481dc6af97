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


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    s = summarize(values)
    return f"{s.mean:.2f}" + (f" ± {s.std:.2f}" if s.n > 1 else "")


def sweep_rows(top: Path) -> tuple[list[str], list[list[str]], str]:
    """The table of a `sweep train` output and the sentence under it."""
    record = read_json(top / "sweep.json")
    command = record.get("command")
    if command != "train":
        points = sorted({Path(r["name"]).parent.as_posix() if record.get("seeds") else r["name"]
                         for r in record["runs"]})
        raise UserError(f"'{top}' is a `sweep {command}` output: report each grid point on its own, e.g. "
                        f"bornagain report {top / points[0]}")
    points: dict[str, list[dict]] = {}
    for run in record["runs"]:
        name = Path(run["name"]).parent.as_posix() if record.get("seeds") else run["name"]
        results = top / run["name"] / "results.json"
        points.setdefault(name, []).append(read_json(results) if results.is_file() else None)
    header = ["Grid point", "Seeds finished", "Validation accuracy (%)", "Test accuracy (%)", "Training time (s)"]
    rows, best, best_val = [], None, -math.inf
    for name, runs in points.items():
        done = [r for r in runs if r is not None]
        val = [r.get("val_accuracy") for r in done]
        rows.append([name, f"{len(done)} of {len(runs)}", _cell(val), _cell([r.get("test_accuracy") for r in done]),
                     _cell([r.get("train_seconds") for r in done])])
        finite = [v for v in val if v is not None and not math.isnan(v)]
        if finite and sum(finite) / len(finite) > best_val:
            best, best_val = name, sum(finite) / len(finite)
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
    return f"`sweep {read_json(top / 'sweep.json').get('command')}` in {top}, mean ± std over each grid point's " \
           f"finished seeds, each run's last epoch.\n\n" + markdown(header, rows) + "\n" + note + "\n"
