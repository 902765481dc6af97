"""Born-Again Network Ensembles (BANE), Eq. 4: average the generations' probabilities.

    f_hat_k(x) = (1/k) * sum_{i in window} softmax(z_i(x))

Computed from each generation's saved test-set probabilities, never by retraining
or re-running a model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from bornagain_kd.errors import UserError
from bornagain_kd.reports.metrics import classification_metrics


def load_probs(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (n, classes), labels (n,)) saved by a finished run (its test_probs / val_probs.safetensors)."""
    try:
        d = load_file(str(path))
    except Exception as e:
        raise UserError(f"'{path}' is corrupt or missing ({e.__class__.__name__}): rerun that generation "
                        "with --resume") from None
    return d["probs"], d["labels"]


def generation_dir(run_dir: Path, generation: dict) -> Path:
    """Where one generation (a row of a ban results.json) keeps its files: a reused teacher
    (ban.teacher_run) in its own run, every other generation in ``run_dir``/gen<g>."""
    if generation.get("teacher_run"):
        return Path(generation["teacher_run"])
    return Path(run_dir) / f"gen{generation['generation']}"


def member_dir(run_dir: Path, member: str) -> Path:
    """Where an ensemble member named in results.json keeps its files: relative to the run, or absolute (a
    reused teacher's own run)."""
    return Path(member) if Path(member).is_absolute() else Path(run_dir) / member


def average_probabilities(probs: list[torch.Tensor]) -> torch.Tensor:
    """Mean of k (n, classes) probability tensors -> (n, classes)."""
    if not probs:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on shape: {sorted(shapes)}")
    return torch.stack([p.double() for p in probs]).mean(dim=0)


def ensemble_windows(generations: list[int], sizes: tuple[int, ...], *, include_teacher: bool) -> list[tuple[str, list[int]]]:
    """Which generations each ensemble averages.

    ``Ens*k`` is the last k students of the sequence (generation 0, the teacher, joins
    only when ``include_teacher`` is set, as the paper's 80-120 row did). "All" averages
    every generation, teacher included. Windows larger than what is available are skipped.
    """
    members = [g for g in generations if include_teacher or g != 0]
    out = []
    for k in sizes:
        if k <= len(members) and k >= 2:
            out.append((f"Ens*{k}", members[-k:]))
    if len(generations) >= 2:
        out.append(("All", list(generations)))
    return out


def evaluate_ensembles(test_probs: dict[int, torch.Tensor], labels: torch.Tensor, sizes: tuple[int, ...], *,
                       include_teacher: bool) -> list[dict]:
    """Metrics of each ensemble window over generations' saved probabilities."""
    results = []
    for name, members in ensemble_windows(sorted(test_probs), sizes, include_teacher=include_teacher):
        m = classification_metrics(average_probabilities([test_probs[g] for g in members]), labels)
        results.append({"name": name, "members": members, "test_error": m["error"], "test_accuracy": m["accuracy"],
                        "nll": m["nll"], "ece": m["ece"]})
    return results


LABEL_SMOOTHING = "Label smoothing"
SINGLE_CONTROLS = {"longer": "longer", "doubled_label": "doubled label"}
"""The controls that are one run each (pipelines/ban_controls.py): ban.controls value -> column name in the pooled
tables and comparisons (a run's own table capitalises it)."""


def control_errors(results: dict) -> dict[str, float]:
    """{column: test error} of a run's controls (ban.controls): Ind*K beside Ens*K, the label-smoothing student."""
    controls = results.get("controls") or {}
    out = {e["name"]: e["test_error"] for e in (controls.get("independent") or {}).get("ensembles", [])}
    if controls.get("label_smoothing"):
        out[LABEL_SMOOTHING] = controls["label_smoothing"]["test_error"]
    for kind, column in SINGLE_CONTROLS.items():
        if controls.get(kind):
            out[column.capitalize()] = controls[kind]["test_error"]
    return out
