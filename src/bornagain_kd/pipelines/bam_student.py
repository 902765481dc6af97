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

from bornagain_kd.engine.distributed import current, rank_slices
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.config import TrainingConfig
from bornagain_kd.engine.trainer import StepOutput, train
from bornagain_kd.files import json_safe, write_json
from bornagain_kd.distill.bam_targets import (
    TargetArm,
    annealing_lambda,
    classification_target,
    regression_target,
    soft_cross_entropy,
    squared_error,
    target_arm,
)
from bornagain_kd.glue.bam_config import BamConfig
from bornagain_kd.glue.config import OptimConfig
from bornagain_kd.glue.evaluation import Predicting, evaluate_dev
from bornagain_kd.glue.model import MultiTaskModel
from bornagain_kd.glue.optim import build_optimizer, build_scheduler
from bornagain_kd.glue.sampling import plan_epoch, steps_per_epoch, total_steps
from bornagain_kd.glue.tasks import get_task
from bornagain_kd.glue.tokenization import EncodedSplit
from bornagain_kd.pipelines.common import engine_settings


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


def student_loss(model: MultiTaskModel, batch: dict, *, arm: TargetArm | str, annealing: float, distill_weight: float,
                 label_means: dict[str, float] | None = None) -> dict:
    """Mean over the batch of each example's loss through its own task's head.

    Returns {"loss": scalar tensor, "task_loss": {task: mean loss tensor}, "count": {task: b_task}}.
    One forward call (``model(..., {task: rows})``) so DistributedDataParallel sees the whole step.
    """
    arm = target_arm(arm) if isinstance(arm, str) else arm
    outputs = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                    {name: part["rows"] for name, part in batch["tasks"].items()})  # {task: (b_task, c) or (b_task,)}
    total = batch["input_ids"].new_zeros((), dtype=torch.float32)
    task_loss, count = {}, {}
    for task_name, part in batch["tasks"].items():
        task = get_task(task_name)
        output = outputs[task_name]
        teacher = part["teacher"] if arm.needs_teacher else None
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
    return {"loss": total / batch["input_ids"].shape[0], "task_loss": task_loss, "count": count}


# --- evaluation ------------------------------------------------------------------------------


def evaluate_student(model: MultiTaskModel, dev: dict[str, dict[str, EncodedSplit]], *, batch_size: int,
                     pad_token_id: int, device: torch.device, precision: str = "fp32",
                     dist=None) -> dict[str, dict[str, float]]:
    """GLUE dev metrics of every task through its own head: {task: {metric: value, "score": mean}}.
    With ``dist`` every rank calls it and predicts its share (see glue/evaluation.py)."""
    how = Predicting(device, precision, batch_size, pad_token_id)
    return {task: evaluate_dev(model, splits, get_task(task), how, dist=dist) for task, splits in dev.items()}


# --- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSetup:
    """How one student arm with one seed trains: the settings StudentTask and train_student share."""

    arm: str
    seed: int
    bam: BamConfig
    optim_cfg: OptimConfig
    train_cfg: TrainingConfig
    """The shared training section: precision, checkpoints, progress (the student's epochs and batch are bam.*)."""
    device: torch.device
    pad_token_id: int = 0


class StudentTask:
    """The engine's view of one student arm with one seed (see the engine's Task protocol).

    Step t (0-based) of ``total`` uses lambda = t / total; the batches of an epoch are the
    task-mixing plan of (seed, epoch), each rank taking its slice of every mixed batch.
    """

    find_unused_parameters = True  # a head whose task is absent from a batch gets no gradient
    evaluate_on_every_rank = True  # under torchrun the ranks share the dev predictions

    def __init__(self, data: StudentData, setup: StudentSetup, *, model: MultiTaskModel | None = None, build=None):
        self.arm = target_arm(setup.arm)  # the declared entry, resolved once
        if self.arm.needs_teacher and data.teacher_outputs is None:
            raise ValueError(f"arm {setup.arm!r} needs the teachers' cached predictions")
        seed, bam, device = setup.seed, setup.bam, setup.device
        self.data, self.seed, self.bam, self.optim_cfg = data, seed, bam, setup.optim_cfg
        self.device, self.precision, self.pad_token_id = device, setup.train_cfg.precision, setup.pad_token_id
        self._model, self._build = model, build
        self.sizes = data.task_sizes
        self.batch_size, self.batch_key = bam.batch_size, "bam.batch_size"  # the engine splits it
        world = current().world_size  # a last minibatch smaller than the world is dropped (glue/sampling.py)
        self.total = total_steps(self.sizes, bam.batch_size, bam.epochs, world)
        self.per_epoch = steps_per_epoch(self.sizes, bam.batch_size, world)
        self.name, self.epochs = f"{self.arm.name} seed {seed}", -(-self.total // self.per_epoch)
        self.teacher_outputs = _to_device(data.teacher_outputs, device) if self.arm.needs_teacher else None
        self.lengths = {t: data.train[t].lengths for t in data.tasks} if bam.bucket_by_length else None

    def build_model(self) -> MultiTaskModel:
        return self._model if self._model is not None else self._build()

    def build_optimizer(self, model, steps_per_epoch: int):
        optimizer = build_optimizer(model, self.optim_cfg, lr=self.bam.lr)
        return optimizer, build_scheduler(optimizer, total_steps=self.total,
                                          warmup_fraction=self.optim_cfg.warmup_fraction)

    def epoch_batches(self, epoch: int, dist) -> list:
        plan = plan_epoch(self.sizes, self.bam.task_weight_exponent, self.bam.batch_size,
                          seed=derive_seed(self.seed, "bam-sampling"), epoch=epoch, swap_tasks=tuple(self.data.swapped),
                          lengths=self.lengths)
        steps = min(self.per_epoch, self.total - epoch * self.per_epoch)  # a fractional last epoch
        return rank_slices([plan.batch(i) for i in range(steps)], dist)  # (the steps leave out a too-short batch)

    def loss(self, model, triples, step: int) -> StepOutput:
        batch = batch_to_device(mixed_batch(self.data, triples, self.pad_token_id, self.teacher_outputs), self.device)
        annealing = annealing_lambda(step, self.total)
        parts = student_loss(model, batch, arm=self.arm, annealing=annealing, distill_weight=self.bam.distill_weight,
                             label_means=self.data.label_means)
        log = {"lambda": annealing, "label_weight": self.arm.label_weight(annealing, self.bam.distill_weight)}
        log.update({f"loss/{task}": value for task, value in parts["task_loss"].items()})
        return StepOutput(loss=parts["loss"], count=len(triples), log=log)

    def _dev_metrics(self, model, dist=None) -> dict:
        return evaluate_student(model, self.data.dev, batch_size=self.bam.eval_batch_size,
                                pad_token_id=self.pad_token_id, device=self.device, precision=self.precision,
                                dist=dist)

    def evaluate(self, model, epoch: int) -> dict:
        # Once, after the last update (the final model's scores: no model selection on dev).
        if epoch + 1 < self.epochs:
            return {}
        self._final = self._dev_metrics(model, dist=current())
        return {f"dev/{task}/{name}": value for task, values in self._final.items() for name, value in values.items()}

    def finish(self, model, run_dir: Path) -> dict:
        metrics = getattr(self, "_final", None) or self._dev_metrics(model)
        metrics = {task: json_safe(values) for task, values in metrics.items()}
        write_json(run_dir / "dev_metrics.json", metrics)
        return {"arm": self.arm.name, "seed": self.seed, "dev_metrics": metrics, "total_steps": self.total}


def train_student(model: MultiTaskModel | None, data: StudentData, setup: StudentSetup, *, run_dir: str | Path,
                  resume: bool, build=None, init_seed: int | None = None) -> dict[str, dict[str, float]]:
    """Train one student arm with one seed in ``run_dir`` on the engine; return its dev metrics.

    ``run_dir`` follows the engine's contract (checkpoint while unfinished, metrics.jsonl with lambda,
    lr, loss and per-task losses every step, model.safetensors, results.json last) plus
    dev_metrics.json. Give ``model`` (already initialised by the caller) or ``build`` (called after
    seeding the global RNG with ``init_seed``, so arms with one seed share one init).
    """
    run_dir = Path(run_dir)
    task = StudentTask(data, setup, model=model, build=build)
    seed = derive_seed(setup.seed, "bam-student") if init_seed is None else init_seed
    settings = engine_settings(setup.train_cfg, setup.device, seed=seed, max_grad_norm=setup.optim_cfg.max_grad_norm,
                               log_every_steps=1)
    return train(run_dir, task, settings, resume=resume)["dev_metrics"]


def _to_device(outputs: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    return None if outputs is None else {task: value.to(device) for task, value in outputs.items()}
