"""Plots of a finished born-again run, from its files alone (results.json, each generation's metrics.jsonl).

    curves.png        validation accuracy and training loss per epoch, one line per generation
    generations.png   test error of each generation, with the ensembles as horizontal lines
"""

from __future__ import annotations

from pathlib import Path

from bornagain.engine.logging import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: str | Path, results: dict) -> list[Path]:
    """Write curves.png and generations.png into ``run_dir``; return their paths."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    written = []

    fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for g in results["generations"]:
        source = Path(g["teacher_run"]) if g.get("teacher_run") else run_dir / f"gen{g['generation']}"
        records = read_metrics(source / "metrics.jsonl")
        if not records:
            continue
        label = "teacher" if g["generation"] == 0 else f"BAN-{g['generation']}"
        epochs = [r["epoch"] for r in records]
        if "val_accuracy" in records[0]:
            ax_val.plot(epochs, [r["val_accuracy"] for r in records], label=label)
        ax_loss.plot(epochs, [r["train_loss"] for r in records], label=label)
    ax_val.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss (label + teacher terms)")
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    written.append(run_dir / "curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    gens = [g["generation"] for g in results["generations"]]
    ax.plot(gens, [g["test_error"] for g in results["generations"]], "o-", label="single model")
    for i, e in enumerate(results.get("ensembles", [])):
        ax.axhline(e["test_error"], linestyle="--", color=f"C{i + 1}", label=f"{e['name']} {e['members']}")
    ax.set_xticks(gens, ["teacher" if g == 0 else f"BAN-{g}" for g in gens])
    ax.set(ylabel="test error (%)", title=f"{results['model']} on {results['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(run_dir / "generations.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
