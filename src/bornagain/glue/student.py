"""The BAM multi-task student: one shared encoder, one head per task, mixed minibatches.

One training step (see sampling.py for the order of examples, annealing.py for the targets):

    h      = pooled(encoder(x))                      # (b, hidden), ONE encoder pass for the mixed batch
    out_i  = head_{task(i)}(h_i)                     # each example through its own task's head only
    loss   = (1 / b) * sum_i loss_{task(i)}(out_i, target_i(lambda)),   lambda = step / total_steps

so a head whose task is absent from the minibatch gets no gradient. Teachers are
never run: their outputs on the training set were cached once, and the student
reads them by example id (``TeacherPredictions.lookup``) into a table aligned with
its own training rows; a step then costs one index into that table.

``step`` counts optimiser updates from 0; the update at step t uses
lambda = t / total_steps, so the first update is pure distillation (lambda = 0)
and lambda reaches 1 at the end of the run (after the last update).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bornagain.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from bornagain.engine.device import autocast
from bornagain.engine.io import read_json, write_json
from bornagain.engine.logging import RunLogger, progress
from bornagain.engine.rng import derive_seed
from bornagain.errors import UserError
from bornagain.glue.annealing import (
    TEACHER_ARMS,
    annealing_lambda,
    classification_target,
    label_weight,
    regression_target,
    soft_cross_entropy,
    squared_error,
)
from bornagain.glue.evaluation import evaluate_dev, json_safe
from bornagain.glue.model import MultiTaskModel
from bornagain.glue.optim import build_optimizer, build_scheduler, clip_gradients
from bornagain.glue.sampling import plan_epoch, steps_per_epoch, total_steps
from bornagain.glue.tasks import get_task
from bornagain.glue.tokenize import EncodedSplit


@dataclass
class StudentData:
    """Everything one student run reads, tokenised once and shared by every arm and seed.

    ``train[task]`` row r is the r-th training example; ``swapped[task]`` (MRPC, STS-B with
    ``bam.both_orders``) holds the same rows with the two sentences swapped;
    ``teacher_outputs[task]`` row r is the teacher's output on ``train[task].ids[r]``
    ((n, c) logits or (n,) regression outputs), looked up by id from the checked cache.
    """

    tasks: tuple[str, ...]
    train: dict[str, EncodedSplit]
    dev: dict[str, dict[str, EncodedSplit]]
    """Labelled dev splits of each task: {task: {"dev": split}} (MNLI: dev_matched, dev_mismatched)."""
    swapped: dict[str, EncodedSplit] = field(default_factory=dict)
    teacher_outputs: dict[str, torch.Tensor] | None = None
    label_means: dict[str, float] = field(default_factory=dict)
    """Mean training label of each regression task (the smoothing-annealed arm's prior)."""

    @property
    def task_sizes(self) -> dict[str, int]:
        return {task: len(self.train[task]) for task in self.tasks}


def mixed_batch(data: StudentData, triples: list[tuple[str, int, bool]], pad_token_id: int,
                teacher_outputs: dict[str, torch.Tensor] | None = None) -> dict:
    """Pad a mixed-task minibatch to its longest sequence and group its rows by task.

    Returns input_ids, attention_mask, token_type_ids (b, t) int64 and ``tasks``:
    {task: {"rows": (b_task,) positions in the batch, "labels": (b_task,),
    "teacher": (b_task, c) or (b_task,) or None}}.
    """
    sequences = []
    for task, row, swapped in triples:
        split = data.swapped[task] if swapped else data.train[task]
        sequences.append((split.input_ids[row], split.token_type_ids[row]))
    width = max(len(ids) for ids, _ in sequences)
    input_ids = np.full((len(triples), width), pad_token_id, dtype=np.int64)  # (b, t)
    token_types = np.zeros((len(triples), width), dtype=np.int64)  # (b, t)
    mask = np.zeros((len(triples), width), dtype=np.int64)  # (b, t)
    for i, (ids, types) in enumerate(sequences):
        input_ids[i, : len(ids)] = ids
        token_types[i, : len(ids)] = types
        mask[i, : len(ids)] = 1
    by_task: dict[str, dict] = {}
    for task in dict.fromkeys(t for t, _, _ in triples):  # first-appearance order
        positions = [i for i, (t, _, _) in enumerate(triples) if t == task]
        rows = torch.tensor([triples[i][1] for i in positions], dtype=torch.int64)
        by_task[task] = {
            "rows": torch.tensor(positions, dtype=torch.int64),
            "labels": data.train[task].labels[rows],
            "teacher": None if teacher_outputs is None else teacher_outputs[task][rows],
        }
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.from_numpy(token_types),
        "tasks": by_task,
    }


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Move a ``mixed_batch`` to ``device`` (a no-op on CPU)."""
    if device.type == "cpu":
        return batch
    moved = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "token_type_ids")}
    moved["tasks"] = {
        task: {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in part.items()}
        for task, part in batch["tasks"].items()
    }
    return moved


def student_loss(model: MultiTaskModel, batch: dict, *, arm: str, annealing: float, distill_weight: float,
                 label_means: dict[str, float] | None = None) -> dict:
    """Mean over the batch of each example's loss through its own task's head.

    Returns {"loss": scalar tensor, "task_loss": {task: float mean loss}, "count": {task: b_task}}.
    """
    pooled = model.pooled(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (b, hidden)
    total = pooled.new_zeros(())
    task_loss, count = {}, {}
    for task_name, part in batch["tasks"].items():
        task = get_task(task_name)
        output = model.heads[task_name](pooled[part["rows"]])  # (b_task, c) or (b_task,)
        teacher = part["teacher"] if arm in TEACHER_ARMS else None
        if task.is_regression:
            target = regression_target(arm, part["labels"], teacher, (label_means or {}).get(task_name, 0.5),
                                       annealing, distill_weight)  # (b_task,)
            per_example = squared_error(output, target)
        else:
            target = classification_target(arm, part["labels"], teacher, task.num_labels, annealing,
                                           distill_weight)  # (b_task, c)
            per_example = soft_cross_entropy(output, target)
        total = total + per_example.sum()
        task_loss[task_name] = per_example.detach().mean()
        count[task_name] = int(per_example.shape[0])
    return {"loss": total / pooled.shape[0], "task_loss": task_loss, "count": count}


# --- evaluation ------------------------------------------------------------------------------


def evaluate_student(model: MultiTaskModel, dev: dict[str, dict[str, EncodedSplit]], *, batch_size: int,
                     pad_token_id: int, device: torch.device, precision: str = "fp32") -> dict[str, dict[str, float]]:
    """GLUE dev metrics of every task through its own head: {task: {metric: value, "score": mean}}."""
    return {
        task: evaluate_dev(model, splits, get_task(task), device=device, precision=precision, batch_size=batch_size,
                           pad_token_id=pad_token_id)
        for task, splits in dev.items()
    }


# --- training ----------------------------------------------------------------------------------


def train_step(model: MultiTaskModel, batch: dict, optimizer, scheduler, *, arm: str, annealing: float,
               distill_weight: float, label_means: dict[str, float], max_grad_norm: float, device: torch.device,
               precision: str) -> dict:
    """One optimiser update on one mixed minibatch; returns ``student_loss``'s parts plus the
    gradient norm before clipping and the heads' lr this update used."""
    with autocast(device, precision):
        parts = student_loss(model, batch, arm=arm, annealing=annealing, distill_weight=distill_weight,
                             label_means=label_means)
    parts["loss"].backward()
    parts["lr"] = optimizer.param_groups[-1]["lr"]  # the heads' group: the full lr
    parts["grad_norm"] = clip_gradients(model, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    parts["loss"] = parts["loss"].detach()
    return parts


def _checkpoint_due(step: int, total: int, per_epoch: int, every: int) -> bool:
    return step == total or step % per_epoch == 0 or (every > 0 and step % every == 0)


def train_student(model: MultiTaskModel, data: StudentData, *, arm: str, seed: int, bam, optim_cfg,
                  run_dir: str | Path, device: torch.device, precision: str, pad_token_id: int,
                  resume: bool, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """Train one student arm with one seed in ``run_dir``; return its dev metrics.

    ``run_dir`` receives checkpoint.safetensors (whole training state, at every student
    epoch end and every ``bam.checkpoint_every_steps``; deleted once the run is finished), metrics.jsonl (lambda, lr, loss and
    per-task losses every step; dev metrics at the end), model.safetensors and, last of all,
    dev_metrics.json, which marks the run finished. With ``resume`` a finished run is read
    back and an interrupted one continues from its checkpoint (RNG states included).
    The caller seeds torch and builds ``model`` (so arms with one seed share one init).
    """
    run_dir = Path(run_dir)
    done_path, checkpoint_path = run_dir / "dev_metrics.json", run_dir / "checkpoint.safetensors"
    if resume and done_path.exists():
        return read_json(done_path)
    if arm in TEACHER_ARMS and data.teacher_outputs is None:
        raise ValueError(f"arm {arm!r} needs the teachers' cached predictions")
    sizes = data.task_sizes
    total, per_epoch = total_steps(sizes, bam.batch_size, bam.epochs), steps_per_epoch(sizes, bam.batch_size)
    model.to(device)
    optimizer = build_optimizer(model, optim_cfg, lr=bam.lr)
    scheduler = build_scheduler(optimizer, total_steps=total, warmup_fraction=optim_cfg.warmup_fraction)
    logger = RunLogger(run_dir)
    step = 0
    if resume and checkpoint_path.exists():
        extra = load_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler)
        if extra.get("total_steps") != total or extra.get("arm") != arm:
            raise UserError(
                f"checkpoint '{checkpoint_path}' is from another configuration ({extra.get('arm')}, "
                f"{extra.get('total_steps')} steps; now {arm}, {total} steps): rerun with the original config, "
                "or without --resume in a new --output"
            )
        step = int(extra["step"])
    logger.truncate_after(step - 1)  # a fresh run starts an empty log; a resumed one drops redone steps
    teacher_outputs = _to_device(data.teacher_outputs, device) if arm in TEACHER_ARMS else None
    swap_tasks = tuple(data.swapped)
    plan, plan_epoch_id = None, -1
    model.train()
    bar = progress(range(step, total), total=total - step, desc=f"{arm} seed {seed}", enabled=show_progress)
    for step in bar:
        epoch, index = divmod(step, per_epoch)
        if plan is None or plan_epoch_id != epoch:
            plan = plan_epoch(sizes, bam.task_weight_exponent, bam.batch_size, seed=derive_seed(seed, "bam-sampling"),
                              epoch=epoch, swap_tasks=swap_tasks)
            plan_epoch_id = epoch
        batch = batch_to_device(mixed_batch(data, plan.batch(index), pad_token_id, teacher_outputs), device)
        annealing = annealing_lambda(step, total)
        parts = train_step(model, batch, optimizer, scheduler, arm=arm, annealing=annealing,
                           distill_weight=bam.distill_weight, label_means=data.label_means,
                           max_grad_norm=optim_cfg.max_grad_norm, device=device, precision=precision)
        if not torch.isfinite(parts["loss"]):
            raise UserError(f"{arm} student, seed {seed}: the loss became {parts['loss'].item()} at step {step};"
                            " lower bam.lr or use train.precision=fp32")
        record = {"lambda": annealing, "label_weight": label_weight(arm, annealing, bam.distill_weight),
                  "loss": parts["loss"].item(), "lr": parts["lr"], "grad_norm": float(parts["grad_norm"])}
        record.update({f"loss/{task}": float(value) for task, value in parts["task_loss"].items()})
        logger.log(record, step=step)
        if _checkpoint_due(step + 1, total, per_epoch, bam.checkpoint_every_steps):
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler,
                            extra={"step": step + 1, "total_steps": total, "arm": arm, "seed": seed})
    metrics = evaluate_student(model, data.dev, batch_size=bam.eval_batch_size, pad_token_id=pad_token_id,
                               device=device, precision=precision)
    logger.log({f"dev/{task}/{name}": value for task, values in metrics.items() for name, value in values.items()},
               step=total)  # the final model's scores: no model selection on dev
    logger.close()
    save_weights(model, run_dir / "model.safetensors")
    write_json(done_path, {task: json_safe(values) for task, values in metrics.items()})
    # Finished: model.safetensors holds the final weights; the resume state (weights plus two
    # AdamW moments, 3x the model) is dead weight on disk: 12 BERT-Base students would keep 16 GB.
    checkpoint_path.unlink(missing_ok=True)
    return metrics


def _to_device(outputs: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    return None if outputs is None else {task: value.to(device) for task, value in outputs.items()}
