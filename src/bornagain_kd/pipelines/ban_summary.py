"""A born-again sequence's results.json: every generation's row, the ensembles, each student against its teacher
(and the controls) example by example on the test set, and how every member was trained and evaluated."""

from __future__ import annotations

from pathlib import Path

import torch

from bornagain_kd.distill.ban_losses import LOSS_PRESETS
from bornagain_kd.errors import UserError
from bornagain_kd.pipelines.ban_controls import control_pairs
from bornagain_kd.reports.ensembles import evaluate_ensembles, load_probs
from bornagain_kd.reports.metrics import agreement_with
from bornagain_kd.reports.power import per_example_power, reading
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.vision.prepare import PreparedData


def summarize(cfg: VisionConfig, run_dirs: list[Path], data: PreparedData, generations: list[dict],
              baseline: dict | None, controls: dict | None = None, *, output: Path | None = None) -> dict:
    probs = {}
    labels = None
    for g, run_dir in enumerate(run_dirs):
        probs[g], labels = load_probs(run_dir / "test_probs.safetensors")
        if labels.shape[0] != data.test_labels.shape[0] or not torch.equal(labels, data.test_labels):
            raise UserError(f"'{run_dir}' was evaluated on another test set than this run's data; "
                            "its probabilities cannot join the ensemble")
    keep = ("generation", "model", "params", "test_error", "test_accuracy", "val_accuracy", "test_nll", "test_ece",
            "seed", "train_seconds", "teacher_run")  # teacher_run: where a reused teacher's files are (plots, seeds)
    rows = [{k: r.get(k) for k in keep} | {"nll": r["test_nll"], "ece": r["test_ece"]} for r in generations]
    for g in range(1, len(rows)):  # each student against the generation that taught it, on the test set
        rows[g] |= agreement_with(probs[g], probs[g - 1])
    # how sure one run can be: each student against the teacher, example by example on the test set
    correct = {g: p.argmax(dim=1) == labels for g, p in probs.items()}
    pairs = [(f"BAN-{g}", correct[g], "teacher", correct[0]) for g in range(1, len(generations))]
    pairs += control_pairs(controls, output, correct, probs, labels,
                           include_teacher=cfg.ban.include_teacher_in_ensembles)
    readings = [reading(f"{a} - {b}", per_example_power(ca, cb), over="test images")
                for a, ca, b, cb in pairs]
    return {
        "dataset": data.name,
        "model": cfg.model.name,
        "student_model": cfg.ban.student_model or cfg.model.name,
        "params": generations[0]["params"],
        "student_params": generations[1]["params"] if len(generations) > 1 else None,
        "loss": cfg.ban.loss,
        "loss_weights": dict(zip(("label_weight", "teacher_weight", "temperature"), cfg.ban.weights())),
        "normalize_loss_weights": cfg.ban.normalize_loss_weights,
        "student_warmup_epochs": cfg.ban.student_warmup_epochs,
        "kd_loss_reported_as": LOSS_PRESETS[cfg.ban.loss].teacher_term,
        "epochs": cfg.train.epochs,
        # how every member was trained and evaluated: the ensembles average the members' (TTA) probabilities
        "tta": cfg.train.tta, "weight_averaging": cfg.train.weight_averaging,
        "label_smoothing": cfg.train.label_smoothing,
        "seed": cfg.seed,
        "generations": rows,
        "ensembles": evaluate_ensembles(probs, labels, cfg.ban.ensembles,
                                        include_teacher=cfg.ban.include_teacher_in_ensembles),
        "student_baseline": None if baseline is None else {
            k: baseline.get(k) for k in ("model", "params", "test_error", "test_accuracy", "val_accuracy",
                                         "test_nll", "test_ece")},
        "reported_epoch": "last",
        "readings": readings,
        "readings_note": READINGS_NOTE,
        **({"controls": controls} if controls else {}),
    }


READINGS_NOTE = ("One seed: each interval comes from the paired test over the test images, so it holds the test set's "
                 "noise, not another seed's (ban.seeds gives that)")
