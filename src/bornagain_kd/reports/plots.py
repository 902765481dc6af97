"""Plots of finished born-again runs, from their files alone (results.json, metrics.jsonl, test_probs).

One run or several seeds of one config (then each point is the mean over seeds, with the spread), as PNG and
PDF (`bornagain report --plots`, the `ban.seeds` aggregate) or PNG only (the end of every `bornagain ban` run):

    generations.{png,pdf}  test error against generation (mean ± std over seeds, each seed a dot),
                           the ensembles as separate marked points to the right
    reliability.{png,pdf}  reliability diagram per generation: accuracy against confidence in 15
                           equal-width bins (closed on the right), test examples of every seed pooled
    forest.{png,pdf}       pooled over seeds: every comparison's per-seed differences, mean and 95% interval on
                           one axis with 0 marked (plot_forest)
    curves.{png,pdf}       per epoch: validation accuracy, the label term (CE with the labels) and the
                           teacher term of the students' loss, each on its own axis (they are different
                           quantities: the teacher term is the KL to the teacher, or CWTM's weighted CE)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bornagain_kd.engine.run_log import read_metrics
from bornagain_kd.reports.ensembles import control_errors, generation_dir, load_probs
from bornagain_kd.reports.metrics import confidence_bins

BINS = 15
BOTH = ("png", "pdf")
PNG_ONLY = ("png",)  # what every `bornagain ban` run draws at its end (a PDF costs as much again)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")  # dpi: PNG only; a PDF stays vector
    return paths


def _label(generation: int) -> str:
    return "teacher" if generation == 0 else f"BAN-{generation}"


def _mean_std(values: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean and sample std over runs (rows) of equal length; std 0 for one run."""
    a = np.asarray(values, dtype=np.float64)  # (runs, points)
    return a.mean(axis=0), (a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1]))


def _marked_points(ax, x: list[float], values: list[list[float]], *, fmt: str, color: str, label: str,
                   separator: float) -> None:
    """Columns set apart from the generations (ensembles, controls): mean +- std over runs, each run faint, and
    a dotted line before them. ``values``: (runs, columns)."""
    n = len(values)
    mean, std = _mean_std(values)
    ax.errorbar(x, mean, yerr=std if n > 1 else None, fmt=fmt, color=color, capsize=4, markersize=7, label=label)
    if n > 1:
        for row in values:
            ax.plot(x, row, ".", color=color, alpha=0.35)
    ax.axvline(separator, color="0.6", linestyle=":", linewidth=1)


def plot_error_vs_generation(output: Path, results: list[dict], formats: tuple[str, ...] = BOTH) -> list[Path]:
    plt = _pyplot()
    gens = [g["generation"] for g in results[0]["generations"]]
    errors = [[g["test_error"] for g in r["generations"]] for r in results]  # (seeds, generations)
    ens_names = [e["name"] for e in results[0]["ensembles"]]
    ens = [[e["test_error"] for e in r["ensembles"]] for r in results]  # (seeds, ensembles)
    n = len(results)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    mean, std = _mean_std(errors)
    ax.errorbar(gens, mean, yerr=std if n > 1 else None, fmt="o-", color="C0", capsize=4,
                label="single model" + (f" (mean ± std, n={n})" if n > 1 else ""))
    if n > 1:
        for row in errors:
            ax.plot(gens, row, ".", color="C0", alpha=0.35)
    x_ens = [len(gens) + 0.5 + i for i in range(len(ens_names))]
    if ens_names:
        _marked_points(ax, x_ens, ens, fmt="D", color="C3", label="ensemble of generations (BANE)",
                       separator=len(gens) - 0.25)
    # the controls (ban.controls): Ind*K and the label-smoothing student, trained without a teacher
    ctl_names = list(control_errors(results[0]))
    x_ctl = [len(gens) + len(ens_names) + 1.0 + i for i in range(len(ctl_names))]
    if ctl_names:
        ctl = [[control_errors(r)[name] for name in ctl_names] for r in results]  # (seeds, controls)
        _marked_points(ax, x_ctl, ctl, fmt="s", color="C2", label="controls, no teacher (Ind*K: independent models)",
                       separator=x_ctl[0] - 0.75)
    ax.set_xticks([*gens, *x_ens, *x_ctl], [*map(_label, gens), *ens_names, *(n.replace(" ", "\n") for n in ctl_names)])
    seeds = "" if n == 1 else f", {n} seeds"
    ax.set(xlabel="generation / ensemble", ylabel="test error (%)",
           title=f"{results[0]['model']} on {results[0]['dataset']}{seeds}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axes: no point hidden
    fig.tight_layout()
    paths = _save(fig, output / "generations", formats)
    plt.close(fig)
    return paths


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per bin: count, accuracy (%) and mean confidence (%) of the max-probability prediction.
    probs: (n, classes); labels: (n,). Bins as in the ECE (reports/metrics.py)."""
    confidence, predicted = probs.double().max(dim=1)
    which = confidence_bins(confidence, bins)
    hit = (predicted == labels).double()
    count = torch.bincount(which, minlength=bins).double()
    safe = count.clamp_min(1)
    return {"count": count.numpy(), "accuracy": (100 * torch.bincount(which, hit, bins) / safe).numpy(),
            "confidence": (100 * torch.bincount(which, confidence, bins) / safe).numpy()}


THIN_BIN = 10  # images: a bin with fewer is drawn hollow, its accuracy is a handful of answers


def draw_reliability_bins(ax, b: dict[str, np.ndarray], centres: np.ndarray, width: float) -> None:
    """One bar per non-empty bin with its image count above it; bins of fewer than THIN_BIN images hollow
    and hatched, so that a bin of 2 images at 100% does not read like one of 2,000."""
    for thin in (False, True):
        show = (b["count"] > 0) & ((b["count"] < THIN_BIN) == thin)
        if not show.any():
            continue
        ax.bar(centres[show], b["accuracy"][show], width=width, edgecolor="C0" if thin else "k", linewidth=0.5,
               color="none" if thin else "C0", hatch="///" if thin else None,
               label=f"accuracy (< {THIN_BIN} images)" if thin else "accuracy")
    for x, acc, n in zip(centres, b["accuracy"], b["count"]):
        if n > 0:
            ax.text(x, min(acc, 93) + 1.5, f"{int(n)}", ha="center", va="bottom", fontsize=5, rotation=90)
    filled = b["count"] > 0
    ax.plot([0, 100], [0, 100], "--", color="0.4", linewidth=1, label="perfect calibration")
    ax.plot(b["confidence"][filled], b["accuracy"][filled], ".", color="C3",
            label="(mean confidence, accuracy) of a bin")


def plot_reliability(output: Path, run_dirs: list[Path], results: list[dict],
                     formats: tuple[str, ...] = BOTH) -> list[Path]:
    plt = _pyplot()
    gens = [g["generation"] for g in results[0]["generations"]]
    cols = min(len(gens), 4)
    rows = -(-len(gens) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    width = 100 / BINS
    centres = (np.arange(BINS) + 0.5) * width
    for i, g in enumerate(gens):
        ax = axes[i // cols][i % cols]
        files = [generation_dir(d, r["generations"][i]) / "test_probs.safetensors" for d, r in zip(run_dirs, results)]
        if not all(f.is_file() for f in files):  # a reused teacher recorded before its path was kept
            ax.set_title(f"{_label(g)}: no saved test probabilities", fontsize=9)
            ax.axis("off")
            continue
        pairs = [load_probs(f) for f in files]
        b = reliability_bins(torch.cat([p for p, _ in pairs]), torch.cat([lab for _, lab in pairs]))
        draw_reliability_bins(ax, b, centres, width)
        ece = np.sum(b["count"] / b["count"].sum() * np.abs(b["accuracy"] - b["confidence"]))
        pooled = " (pooled)" if len(pairs) > 1 else ""  # the table's ECE is the mean of the seeds' own
        ax.set(xlim=(0, 100), ylim=(0, 100), title=f"{_label(g)}: ECE{pooled} {ece:.2f}%", xlabel="confidence (%)")
        if i % cols == 0:
            ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for j in range(len(gens), rows * cols):
        axes[j // cols][j % cols].axis("off")
    n = len(results)
    fig.suptitle(f"Reliability, {BINS} bins (images per bin above each bar)"
                 + (f", test sets of {n} seeds pooled" if n > 1 else ""), fontsize=10)
    legend = {}  # every panel's entries, once each: a thin-bin entry may appear in any panel
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=8,
               frameon=False)  # one legend, under the panels
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    paths = _save(fig, output / "reliability", formats)
    plt.close(fig)
    return paths


def plot_learning_curves(output: Path, run_dirs: list[Path], results: list[dict],
                         formats: tuple[str, ...] = BOTH) -> list[Path]:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig, (ax_val, ax_label, ax_kd) = plt.subplots(1, 3, figsize=(13, 4))
    n = len(results)
    for i, g in enumerate(results[0]["generations"]):
        records = [[rec for rec in read_metrics(generation_dir(d, r["generations"][i]) / "metrics.jsonl")
                    if "epoch_seconds" in rec] for d, r in zip(run_dirs, results)]
        if not all(records) or len({len(rs) for rs in records}) != 1:
            continue  # a run without (complete) records: nothing comparable to draw
        epochs = [rec["epoch"] for rec in records[0]]
        colour = f"C{i % 10}"
        for ax, key in ((ax_val, "val_accuracy"), (ax_label, "train_label_loss"), (ax_kd, "train_kd_loss")):
            if key == "train_kd_loss" and g["generation"] == 0:
                continue  # the teacher learns from labels alone: no teacher term
            if key not in records[0][0]:
                continue
            mean, std = _mean_std([[rec[key] for rec in rs] for rs in records])
            ax.plot(epochs, mean, "-", color=colour, label=_label(g["generation"]))
            if n > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    kd_name = results[0].get("kd_loss_reported_as") or "teacher term"
    spread = f" (mean ± std over {n} seeds)" if n > 1 else ""
    ax_val.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy" + spread)
    ax_label.set(xlabel="epoch", ylabel="cross-entropy with the labels (nats)", title="Label term of the loss")
    ax_kd.set(xlabel="epoch", ylabel="teacher term (nats)", title="Teacher term (students only)")
    ax_kd.annotate(kd_name, xy=(0.5, 0.97), xycoords="axes fraction", ha="center", va="top", fontsize=8)
    # fixed corners: accuracy rises, losses fall (loc="best" searches every position, slow on each save)
    for ax, corner in ((ax_val, "lower right"), (ax_label, "upper right"), (ax_kd, "center right")):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        if ax.get_lines():
            ax.legend(fontsize=8, loc=corner)
    fig.tight_layout()
    paths = _save(fig, output / "curves", formats)
    plt.close(fig)
    return paths


def plot_runs(output: str | Path, run_dirs: list[str | Path], results: list[dict],
              formats: tuple[str, ...] = BOTH) -> list[Path]:
    """All three plots of one run, or of several seeds of one config, into ``output``; their paths."""
    output, run_dirs = Path(output), [Path(d) for d in run_dirs]
    return [*plot_error_vs_generation(output, results, formats), *plot_reliability(output, run_dirs, results, formats),
            *plot_learning_curves(output, run_dirs, results, formats)]


def plot_run(run_dir: str | Path, results: dict, formats: tuple[str, ...] = BOTH) -> list[Path]:
    """The plots of one finished run, written into it."""
    return plot_runs(run_dir, [run_dir], [results], formats)


def plot_forest(output: str | Path, agg: dict, formats: tuple[str, ...] = BOTH) -> list[Path]:
    """forest.{png,pdf}: every comparison of a pooled table on one axis of test-error differences (a - b, points),
    each seed's difference a dot, the mean a diamond with its 95% interval, 0 marked: the paired evidence at a glance
    (the generations plot's columns are unpaired)."""
    comparisons = [c for c in agg.get("comparisons", []) if c.get("differences")]
    if not comparisons:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(comparisons) + 1.4))
    rng = np.random.default_rng(0)  # a fixed vertical jitter, so dots of equal differences stay apart
    labelled: set[str] = set()

    def once(text: str) -> str | None:  # each kind of mark in the legend once
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for row, c in enumerate(comparisons):
        y = len(comparisons) - 1 - row
        diffs = np.asarray(c["differences"], dtype=np.float64)
        ax.plot(diffs, y + rng.uniform(-0.12, 0.12, diffs.size), "o", color="C0", alpha=0.45, ms=4,
                label=once("one seed"))
        power = c.get("power") or {}
        low, high = power.get("ci_low", np.nan), power.get("ci_high", np.nan)
        holm_p = c.get("paired_t", {}).get("p_holm")
        if holm_p is not None:  # --adjust holm: red where the adjusted test rejects, not the unadjusted interval
            marked = holm_p == holm_p and holm_p < 0.05
            text = "mean, 95% interval; Holm-adjusted p < 0.05" if marked else "mean, 95% interval; Holm p >= 0.05"
        else:
            marked = not (np.isnan(low) or low <= 0 <= high)
            text = "mean, 95% interval excluding 0" if marked else "mean, 95% interval (includes 0)"
        color = "C3" if marked else "C7"
        if not np.isnan(low):
            ax.plot([low, high], [y, y], "-", color=color, lw=2, label=None)
        ax.plot([c["mean_difference"]], [y], "D", color=color, ms=7, label=once(text))
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(comparisons)),
                  [f"{c['a']} - {c['b']}" for c in reversed(comparisons)])
    n = len(agg.get("seeds", [])) or max(len(c["differences"]) for c in comparisons)
    ax.set(xlabel="test-error difference, first - second (points; negative: the first is better)",
           title=f"Paired differences over {n} seeds")
    ax.grid(alpha=0.3, axis="x")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    paths = _save(fig, Path(output) / "forest", formats)
    plt.close(fig)
    return paths
