"""Tables in the paper's layouts, rendered from finished runs' results.json (no model is touched).

Table 1 (born-again sequences): Network | Parameters | Baseline (teacher) | BAN-1 ... BAN-K | Ens*2 | Ens*3
Table 2 (cross-architecture):   Network | Parameters | Baseline (labels only) | BAN   (+ the teacher it learned from)
Cells are CIFAR-style test error in %.

Every caption states the students' loss and its weights as the run recorded them (results.json "loss",
"loss_weights", "normalize_loss_weights"): a BAN-1 trained with the default normalised 0.5 / 0.5 weights is
not the paper's Eq. 2 student (1 / 1), and a table must not let one pass for the other. The CSV carries the
same facts in columns of their own at the end of each row, since the runs of one table may differ.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bornagain_kd.files import atomic_write_text, read_json
from bornagain_kd.reports.ensembles import control_errors
from bornagain_kd.errors import UserError


def format_params(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _number(x: float) -> str:
    return f"{x:.4g}"


def loss_text(results: dict) -> str:
    """The students' loss of one run (a ban results.json or a seed aggregate), with its weights and how they
    stand to the paper's Eq. 2 (CE + T^2 KL, weights 1 / 1)."""
    loss, weights = results.get("loss"), results.get("loss_weights")
    if loss is None:
        return "students' loss not recorded"
    if not weights:
        return f"{loss}, weights not recorded"
    lw, tw, temperature = weights["label_weight"], weights["teacher_weight"], weights["temperature"]
    normalised = bool(results.get("normalize_loss_weights"))
    if loss == "cwtm":  # label CE only, each example weighted by the teacher's confidence (distill/ban_losses.py)
        return (f"{loss}, loss = {_number(lw)}·CE weighted per example by the teacher's max probability "
                "(weights summing to 1 over the batch); no teacher distribution term, so no teacher weight or T")
    teacher = "permuted teacher" if loss == "dkpp" else "teacher"
    text = (f"{loss}, loss = {_number(lw)}·CE + {_number(tw)}·T²·KL({teacher} || student), "
            f"T = {_number(temperature)}")
    if loss != "ban+l":
        return text + (" (weights normalised to sum to 1)" if normalised and lw + tw > 0 else "")
    if normalised:
        return text + " (weights normalised to sum to 1; the paper's Eq. 2 is 1 / 1, T = 1)"
    if lw == 1 and tw == 1 and temperature == 1:
        return text + " (the paper's Eq. 2)"
    return text + " (the paper's Eq. 2 is 1 / 1, T = 1)"


def loss_caption(results: list[dict]) -> str:
    """One line naming the students' loss: once when every run shares it, else per row (two rows may share a
    network and differ in the loss)."""
    texts = [loss_text(r) for r in results]
    if len(set(texts)) == 1:
        return f"Students: {texts[0]}."
    return "Students: " + "; ".join(f"row {i} ({_network(r)}): {t}"
                                    for i, (r, t) in enumerate(zip(results, texts), start=1)) + "."


LOSS_COLUMNS = ["Loss", "Label weight", "Teacher weight", "Temperature", "Weights normalised"]


def loss_cells(results: dict) -> list[str]:
    """The CSV's loss columns of one run; a weight the loss does not use (cwtm: teacher weight, T) is empty."""
    weights = results.get("loss_weights") or {}
    unused = ("teacher_weight", "temperature") if results.get("loss") == "cwtm" else ()
    cells = ["" if k in unused or weights.get(k) is None else _number(weights[k])
             for k in ("label_weight", "teacher_weight", "temperature")]
    normalised = results.get("normalize_loss_weights")
    return [results.get("loss") or "", *cells, "" if normalised is None else ("yes" if normalised else "no")]


def _network(r: dict) -> str:
    return r["model"] if r.get("student_model", r["model"]) == r["model"] else f"{r['model']} -> {r['student_model']}"


def _cell(x: float | None) -> str:
    return "/" if x is None else f"{x:.2f}"


def table1_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 1 for one or more BAN runs (then the controls' columns, where any ran)."""
    max_gen = max(len(r["generations"]) - 1 for r in results)
    ens_names: list[str] = []
    for r in results:
        for e in r["ensembles"]:
            if e["name"] not in ens_names:
                ens_names.append(e["name"])
    ens_names.sort(key=lambda n: (n == "All", int(n[4:]) if n.startswith("Ens*") else 0))  # Ens*2, Ens*3, ..., All
    controls = list(dict.fromkeys(name for r in results for name in control_errors(r)))
    header = ["Network", "Parameters", "Baseline (teacher)", *[f"BAN-{k}" for k in range(1, max_gen + 1)], *ens_names,
              *controls]
    rows = []
    for r in results:
        gens = {g["generation"]: g["test_error"] for g in r["generations"]}
        ens = {e["name"]: e["test_error"] for e in r["ensembles"]}
        ctl = control_errors(r)
        rows.append([_network(r), format_params(r["params"]), _cell(gens.get(0)),
                     *[_cell(gens.get(k)) for k in range(1, max_gen + 1)], *[_cell(ens.get(n)) for n in ens_names],
                     *[_cell(ctl.get(n)) for n in controls]])
    return header, rows


def table2_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Table 2: the student architecture alone (Baseline) vs taught by the teacher (BAN = BAN-1)."""
    header = ["Network", "Parameters", "Baseline (labels only)", "BAN", "Teacher", "Teacher error"]
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


TABLE1_CAPTION = ("Test error (%), last epoch of each generation. Ens*k averages the probabilities of the last k "
                  "students, All those of every generation, the teacher included.")
CONTROLS_CAPTION = ("Controls (ban.controls): Ind*K averages K independently trained copies of the teacher (gen0 and "
                    "K - 1 more seeds, the same schedule), as many networks as Ens*K (one training fewer); label smoothing is a student of the "
                    "students' architecture trained from labels smoothed by epsilon, no teacher; longer is the teacher "
                    "trained for twice the epochs (BAN-1's compute), labels only; doubled label is BAN-1 without its "
                    "teacher, its label term weighted by the students' two weights together.")
TABLE2_CAPTION = "Cross-architecture students (Table 2 layout)."


def _with_loss_columns(header: list[str], rows: list[list[str]],
                       results: list[dict]) -> tuple[list[str], list[list[str]]]:
    return header + LOSS_COLUMNS, [row + loss_cells(r) for row, r in zip(rows, results)]


def render(results: list[dict]) -> tuple[str, str]:
    """(markdown, csv) of Table 1, plus Table 2 where a run trained a student baseline."""
    h1, r1 = table1_rows(results)
    md = (f"{TABLE1_CAPTION} {loss_caption(results)}{_controls_caption(results)}{training_caption(results)}\n\n"
          + markdown(h1, r1) + agreement_lines(results))
    csv_out = csv_text(*_with_loss_columns(h1, r1, results))
    cross = [r for r in results if r.get("student_baseline")]
    if cross:
        h2, r2 = table2_rows(cross)
        md += f"\n{TABLE2_CAPTION} {loss_caption(cross)}\n\n" + markdown(h2, r2)
        csv_out += "\n" + csv_text(*_with_loss_columns(h2, r2, cross))
    return md, csv_out


def agreement_lines(results: list[dict]) -> str:
    """Each student's test top-1 agreement with its teacher and KL(teacher || student), under the table (Stanton
    et al. 2021: students that disagree with their teachers can generalise better: accuracy alone hides it)."""
    lines = []
    for r in results:
        cells = [f"BAN-{g['generation']} {g['agreement_with_teacher']:.2f}% / {g['kl_from_teacher']:.3f}"
                 for g in r.get("generations", []) if g.get("agreement_with_teacher") is not None]
        if cells:
            who = f"{r.get('model')}: " if len(results) > 1 else ""
            lines.append(f"{who}test top-1 agreement with its teacher / KL(teacher || student) in nats: "
                         + ", ".join(cells) + ".")
    return "".join(f"\n{line}\n" for line in lines)


def training_caption(results: list[dict]) -> str:
    """What the fast-training options did to every number of the table (nothing where none was used)."""
    parts = []
    tta = sorted({r.get("tta", "off") for r in results} - {"off"})
    if tta:
        parts.append(f"Every prediction, ensembles' members included, with test-time augmentation ({', '.join(tta)}).")
    averaging = sorted({r.get("weight_averaging", "off") for r in results} - {"off"})
    if averaging:
        parts.append(f"Weights averaged over training ({', '.join(averaging)}).")
    smoothing = sorted({r.get("label_smoothing", 0.0) for r in results} - {0.0})
    if smoothing:
        parts.append(f"Labels smoothed in every run's label loss (epsilon {', '.join(f'{e:g}' for e in smoothing)}).")
    return "".join(f" {p}" for p in parts)


def _controls_caption(results: list[dict]) -> str:
    if not any(control_errors(r) for r in results):
        return ""
    chosen = {(r["controls"]["label_smoothing"]["epsilon"], r["controls"]["label_smoothing"]["selected_by"])
              for r in results if (r.get("controls") or {}).get("label_smoothing")}
    smoothing = "".join(f" Label smoothing epsilon = {e:g} ({how})." for e, how in sorted(chosen))
    return f" {CONTROLS_CAPTION}{smoothing}"


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
                 ("*", r"$\ast$"), ("<", r"$<$"), ("±", r"$\pm$"), ("->", r"$\rightarrow$"), ("·", r"$\cdot$"),
                 ("²", r"$^2$"), ("||", r"$\|$")):
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
    out = latex_table(h1, r1, f"{TABLE1_CAPTION} {loss_caption(results)}{_controls_caption(results)}")
    cross = [r for r in results if r.get("student_baseline")]
    if cross:
        out += "\n" + latex_table(*table2_rows(cross), f"{TABLE2_CAPTION} {loss_caption(cross)}")
    return out
