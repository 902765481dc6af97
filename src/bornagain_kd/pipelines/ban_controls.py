"""The controls a reviewer asks for beside a born-again sequence (`ban.controls`), trained into OUTPUT/controls/:

    controls/independent-1 .. independent-(K-1)   the teacher's architecture and schedule, labels only, other
                                                   seeds: with gen0 they are K independently trained models, and
                                                   Ind*K (their mean probabilities) stands beside Ens*K: as many
                                                   networks, K trainings (the sequence: K + 1), no teacher
    controls/label-smoothing-<eps>                 the students' architecture and schedule, labels smoothed by
                                                   eps, no teacher (one run per candidate eps; the one with the
                                                   lowest validation error is reported)
    controls/longer                                the teacher's architecture and recipe for 2 x train.epochs
                                                   (teacher + student: BAN-1's compute), labels only, from gen0's
                                                   initialisation: tells "a second training helped" apart from
                                                   "the teacher helped" (Ens*K is set beside it too)
    controls/doubled-label                         BAN-1 without its teacher: BAN-1's seed (initialisation, order,
                                                   augmentation), the label term weighted by the students' label +
                                                   teacher weights (Eq. 2's 1 / 1: 2 x CE), so the step size of
                                                   BAN's loss without the teacher's targets

Each is a complete run directory like a generation's (pipelines/classifier.py). Finished ones are never
retrained, so adding a control to a finished sequence (`--resume` with `ban.controls` set) trains only the
control. Nothing here is chosen on the test set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from bornagain_kd.distill.ban_losses import label_smoothing_loss, resolve_loss
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.files import read_json
from bornagain_kd.pipelines.classifier import RunSpec, fit, load_probs
from bornagain_kd.reports.ensembles import SINGLE_CONTROLS, average_probabilities, ensemble_windows, member_dir
from bornagain_kd.reports.metrics import classification_metrics
from bornagain_kd.vision.config import VisionConfig, independent_sizes
from bornagain_kd.vision.prepare import PreparedData

CONTROLS = "controls"


def smoothing_dir(epsilon: float) -> str:
    return f"{CONTROLS}/label-smoothing-{epsilon:g}"


def independent_dirs(output: Path, teacher_dir: Path, k: int) -> list[Path]:
    """The K members of Ind*K: the sequence's teacher and K - 1 more independent runs."""
    return [teacher_dir] + [output / CONTROLS / f"independent-{j}" for j in range(1, k)]


def run_controls(cfg: VisionConfig, output: Path, data: PreparedData, teacher_dir: Path, *,
                 run_config: Callable[[str], VisionConfig], model_factory: Callable[[str], Callable[[], torch.nn.Module]],
                 resume: bool) -> dict | None:
    """Train (or reuse) the controls of ``cfg.ban.controls``; their part of results.json, None without any.
    ``run_config(name)`` is the config a run of architecture ``name`` records, ``model_factory(name)`` makes its
    fresh model (both from pipelines/ban.py)."""
    if not cfg.ban.controls:
        return None
    out: dict = {}
    if "independent" in cfg.ban.controls:
        out["independent"] = _independent(cfg, output, data, teacher_dir, run_config, model_factory, resume)
    if "label_smoothing" in cfg.ban.controls:
        out["label_smoothing"] = _label_smoothing(cfg, output, data, run_config, model_factory, resume)
    for kind in SINGLE_CONTROLS:
        if kind in cfg.ban.controls:
            out[kind] = _single_control(kind, cfg, output, data, teacher_dir, run_config, model_factory, resume)
    return out


def control_dir(kind: str) -> str:
    return f"{CONTROLS}/{kind.replace('_', '-')}"


def _single_control(kind, cfg, output, data, teacher_dir, run_config, model_factory, resume) -> dict:
    """The `longer` or `doubled_label` control (module docstring), trained or reused."""
    if kind == "longer":
        name, epochs = cfg.model.name, 2 * cfg.train.epochs
        run_cfg = run_config(name)
        run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, epochs=epochs))
        # the teacher's own seed, so its initialisation (a ban gen0's derived seed, a `train` run's seed=...)
        seed = read_json(teacher_dir / "results.json").get("seed", derive_seed(cfg.seed, "generation", 0))
        loss, warmup = resolve_loss("ce"), 0.0
    else:
        name = cfg.ban.student_model or cfg.model.name
        label_weight, teacher_weight, _ = cfg.ban.weights()
        run_cfg, epochs = run_config(name), cfg.train.epochs
        loss = resolve_loss("ce", label_weight=label_weight + teacher_weight)
        seed, warmup = derive_seed(cfg.seed, "generation", 1), cfg.ban.student_warmup_epochs
    spec = RunSpec(name=kind.replace("_", "-"), model_name=name, seed=seed, loss_fn=loss, warmup_epochs=warmup,
                   extra={"generation": None, "loss": "ce", "label_weight": loss.label_weight, "control": kind})
    r = fit(output / control_dir(kind), run_cfg, data, spec, model_factory(name), resume=resume)
    return {"dir": control_dir(kind), "model": name, "epochs": epochs, "label_weight": loss.label_weight,
            "test_error": r["test_error"], "nll": r["test_nll"], "ece": r["test_ece"],
            "val_error": 100.0 - r["val_accuracy"]}


def _independent(cfg, output, data, teacher_dir, run_config, model_factory, resume) -> dict:
    name = cfg.model.name
    sizes = independent_sizes(cfg.ban)
    members = independent_dirs(output, teacher_dir, max(sizes))
    runs = []
    for j, run_dir in enumerate(members[1:], start=1):
        spec = RunSpec(name=f"independent-{j}", model_name=name, seed=derive_seed(cfg.seed, "independent", j),
                       loss_fn=resolve_loss("ce"), extra={"generation": None, "loss": "ce", "control": "independent"})
        runs.append(fit(run_dir, run_config(name), data, spec, model_factory(name), resume=resume))
    probs = [load_probs(d / "test_probs.safetensors")[0] for d in members]
    ensembles = []
    for k in sizes:
        m = classification_metrics(average_probabilities(probs[:k]), data.test_labels)
        ensembles.append({"name": f"Ind*{k}", "beside": f"Ens*{k}", "members": [_relative(d, output) for d in
                          members[:k]], "test_error": m["error"], "test_accuracy": m["accuracy"], "nll": m["nll"],
                          "ece": m["ece"]})
    return {"runs": [{k: r.get(k) for k in ("run", "seed", "test_error", "val_accuracy")} for r in runs],
            "ensembles": ensembles}


def _label_smoothing(cfg, output, data, run_config, model_factory, resume) -> dict:
    name = cfg.ban.student_model or cfg.model.name
    candidates = []
    for epsilon in cfg.ban.label_smoothing:
        spec = RunSpec(name=f"label-smoothing-{epsilon:g}", model_name=name, seed=derive_seed(cfg.seed, "label-smoothing"),
                       loss_fn=label_smoothing_loss(epsilon),
                       extra={"generation": None, "loss": "label_smoothing", "label_smoothing": epsilon,
                              "control": "label_smoothing"})
        r = fit(output / smoothing_dir(epsilon), run_config(name), data, spec, model_factory(name), resume=resume)
        candidates.append({"epsilon": epsilon, "dir": smoothing_dir(epsilon), "val_error": 100.0 - r["val_accuracy"],
                           "test_error": r["test_error"], "nll": r["test_nll"], "ece": r["test_ece"]})
    chosen = min(candidates, key=lambda c: c["val_error"])  # the validation split chooses, never the test set
    return {**chosen, "model": name, "candidates": candidates,
            "selected_by": "given" if len(candidates) == 1 else "lowest validation error"}


def control_pairs(controls: dict | None, output: Path, correct: dict[int, torch.Tensor], probs: dict[int, torch.Tensor],
                  labels: torch.Tensor, *, include_teacher: bool) -> list[tuple[str, torch.Tensor, str, torch.Tensor]]:
    """(a, correct_a, b, correct_b) per test example for each control's comparison: BAN-1 against the
    label-smoothing student, each Ens*K against Ind*K (``correct``/``probs``: each generation's, by number)."""
    pairs = []
    if not controls:
        return pairs
    if "label_smoothing" in controls and 1 in correct:
        smoothed = load_probs(output / controls["label_smoothing"]["dir"] / "test_probs.safetensors")[0]
        pairs.append(("BAN-1", correct[1], "label smoothing", smoothed.argmax(dim=1) == labels))
    for kind, column in SINGLE_CONTROLS.items():
        if kind not in controls:
            continue
        other = load_probs(output / controls[kind]["dir"] / "test_probs.safetensors")[0].argmax(dim=1) == labels
        if 1 in correct:
            pairs.append(("BAN-1", correct[1], column, other))
        if kind == "longer":  # Ens*2 (BANE's first ensemble) beside it too
            for name, window in ensemble_windows(sorted(probs), (2,), include_teacher=include_teacher):
                if name == "Ens*2":
                    ens = average_probabilities([probs[g] for g in window]).argmax(dim=1) == labels
                    pairs.append((name, ens, column, other))
    for e in (controls.get("independent") or {}).get("ensembles", []):
        k = int(e["beside"][4:])
        (_, window), = [w for w in ensemble_windows(sorted(probs), (k,), include_teacher=include_teacher)
                        if w[0] == e["beside"]]
        ens = average_probabilities([probs[g] for g in window]).argmax(dim=1) == labels
        ind = average_probabilities([load_probs(member_dir(output, d) / "test_probs.safetensors")[0]
                                     for d in e["members"]]).argmax(dim=1) == labels
        pairs.append((e["beside"], ens, e["name"], ind))
    return pairs


def _relative(path: Path, output: Path) -> str:
    """A member's directory as results.json keeps it: relative to the run (a reused teacher: absolute)."""
    try:
        return str(Path(path).relative_to(output))
    except ValueError:
        return str(path)

