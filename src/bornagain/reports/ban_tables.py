"""Tables in the paper's layouts, rendered from finished runs' results.json (no model is touched).

Table 1 (born-again sequences): Network | Parameters | Baseline | BAN-1 ... BAN-K | Ens*2 | Ens*3
Table 2 (cross-architecture):   Network | Parameters | Baseline | BAN   (+ the teacher it learned from)
Cells are CIFAR-style test error in %.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bornagain.files import atomic_write_text, read_json
from bornagain.errors import UserError


def format_params(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _cell(x: float | None) -> str:
    return "/" if x is None else f"{x:.2f}"


def table1_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 1 for one or more BAN runs."""
    max_gen = max(len(r["generations"]) - 1 for r in results)
    ens_names: list[str] = []
    for r in results:
        for e in r["ensembles"]:
            if e["name"] not in ens_names:
                ens_names.append(e["name"])
    ens_names.sort(key=lambda n: (n == "All", int(n[4:]) if n.startswith("Ens*") else 0))  # Ens*2, Ens*3, ..., All
    header = ["Network", "Parameters", "Baseline", *[f"BAN-{k}" for k in range(1, max_gen + 1)], *ens_names]
    rows = []
    for r in results:
        gens = {g["generation"]: g["test_error"] for g in r["generations"]}
        ens = {e["name"]: e["test_error"] for e in r["ensembles"]}
        network = r["model"] if r.get("student_model", r["model"]) == r["model"] else f"{r['model']} -> {r['student_model']}"
        rows.append([network, format_params(r["params"]), _cell(gens.get(0)),
                     *[_cell(gens.get(k)) for k in range(1, max_gen + 1)], *[_cell(ens.get(n)) for n in ens_names]])
    return header, rows


def table2_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Table 2: the student architecture alone (Baseline) vs taught by the teacher (BAN = BAN-1)."""
    header = ["Network", "Parameters", "Baseline", "BAN", "Teacher", "Teacher error"]
    rows = []
    for r in results:
        baseline = r.get("student_baseline") or {}
        ban1 = next((g for g in r["generations"] if g["generation"] == 1), None)
        rows.append([r["student_model"], format_params(r.get("student_params") or baseline.get("params")),
                     _cell(baseline.get("test_error")), _cell(ban1["test_error"] if ban1 else None),
                     r["model"], _cell(r["generations"][0]["test_error"])])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def render(results: list[dict]) -> tuple[str, str]:
    """(markdown, csv) of Table 1, plus Table 2 where a run trained a student baseline."""
    h1, r1 = table1_rows(results)
    md = "Test error (%), last epoch of each generation.\n\n" + markdown(h1, r1)
    csv_out = csv_text(h1, r1)
    cross = [r for r in results if r.get("student_baseline")]
    if cross:
        h2, r2 = table2_rows(cross)
        md += "\nCross-architecture students (Table 2 layout):\n\n" + markdown(h2, r2)
        csv_out += "\n" + csv_text(h2, r2)
    return md, csv_out


def write_tables(results: list[dict], output: Path) -> str:
    md, csv_out = render(results)
    atomic_write_text(Path(output) / "table.md", md)
    atomic_write_text(Path(output) / "table.csv", csv_out)
    return md


def load_run_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no results.json: it is not a finished `bornagain ban` run "
                        "(finish it with `bornagain ban --output DIR --resume`)")
    results = read_json(path)
    if "generations" not in results:
        raise UserError(f"'{path}' is not the results of a `bornagain ban` run (no 'generations')")
    return results


def latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("*", r"$\ast$"), ("<", r"$<$"), ("±", r"$\pm$"), ("->", r"$\rightarrow$")):
        text = text.replace(a, b)
    return text


def latex_table(header: list[str], rows: list[list[str]], caption: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}), every cell escaped."""
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(header) + "}",
             r"\toprule", " & ".join(map(latex_escape, header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(latex_escape, row)) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + latex_escape(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_latex(results: list[dict]) -> str:
    h1, r1 = table1_rows(results)
    out = latex_table(h1, r1, "Test error (%), last epoch of each generation.")
    cross = [r for r in results if r.get("student_baseline")]
    if cross:
        out += "\n" + latex_table(*table2_rows(cross), "Cross-architecture students (Table 2 layout).")
    return out


REPORT_FORMATS = ("markdown", "csv", "latex")


def report_command(run_dirs: list[str], output: str | None = None, *, plots: bool = False, fmt: str = "markdown",
                   per_run: bool = False) -> str:
    """Re-render tables from finished runs and return the text to print in ``fmt`` (writing tables and plots
    where asked). Several `ban` runs of one config that differ in their seed are pooled (reports/seeds.py)
    unless ``per_run``; other `ban` runs give one row each; other kinds of run are printed in their own form."""
    if not run_dirs:
        raise UserError("bornagain report needs at least one run directory")
    if fmt not in REPORT_FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(REPORT_FORMATS)}")
    from bornagain.reports.runs import kind_of, render_any  # noqa: PLC0415
    from bornagain.reports.seeds import pool_command, pools  # noqa: PLC0415

    kinds = [kind_of(Path(d)) for d in run_dirs]
    if "ban-seeds" in kinds or (not per_run and set(kinds) == {"ban"} and pools(run_dirs)):
        return pool_command(run_dirs, kinds, output, plots=plots, fmt=fmt)
    if any(k != "ban" for k in kinds):  # other kinds of run: printed, each in its own form
        if output or plots or fmt != "markdown":
            raise UserError("--output and --plots (and --format csv or latex) take `bornagain ban` runs only; drop "
                            "them to print these runs")
        return render_any(run_dirs)
    results = [load_run_results(d) for d in run_dirs]
    if plots:
        from bornagain.reports.plots import plot_run

        for run_dir, r in zip(run_dirs, results):
            plot_run(run_dir, r)
    md, csv_out = render(results)
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        write_tables(results, Path(output))
        atomic_write_text(Path(output) / "table.tex", render_latex(results))
    return {"markdown": md, "csv": csv_out, "latex": render_latex(results)}[fmt]
