"""Single-task GLUE teachers: fine-tune one encoder per task, cache its predictions.

`bornagain glue-teachers` trains, for each task in `glue.tasks`, a teacher with
plain supervised loss (cross-entropy on the class, or squared error on the
[0, 1]-scaled STS-B score), the last epoch's model being the teacher (no model
selection on dev). Each teacher is its own resumable run in
OUTPUT/teachers/<TASK>/:

    config.yaml                 the resolved experiment config
    teacher_settings.json       the settings that define the teacher (checked on resume/reuse)
    checkpoint.safetensors      training state after each epoch (and every N steps), for --resume;
                                removed once the teacher is finished
    metrics.jsonl, tb/          training loss, lr, dev metrics per epoch
    weights.safetensors         the final teacher
    dev_metrics.json            its dev metrics and the majority-class baseline
    train_predictions.safetensors   its outputs on its own training set, keyed by example id
    submission/<FILE>.tsv       GLUE test predictions in the server's format
    results.json                written last: a finished teacher, never retrained
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bornagain.config import config_to_dict, load_config, save_config
from bornagain.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from bornagain.engine.device import autocast, resolve_device
from bornagain.engine.io import read_json, write_json
from bornagain.engine.logging import RunLogger, progress
from bornagain.engine.rng import derive_seed, seed_everything
from bornagain.errors import UserError
from bornagain.glue.cache import (
    TeacherPredictions, dataset_fingerprint, file_fingerprint, load_teacher_predictions,
    prediction_fingerprint, save_teacher_predictions,
)
from bornagain.glue.config import GlueExperimentConfig
from bornagain.glue.data import GlueExample, has_split, load_split, load_train_examples
from bornagain.glue.evaluation import evaluate_dev, json_safe, majority_baseline, predict_outputs
from bornagain.glue.model import MultiTaskModel, build_model
from bornagain.glue.optim import build_optimizer, build_scheduler, clip_gradients
from bornagain.glue.submission import submission_file_name, write_submission
from bornagain.glue.tasks import GlueTask, get_task
from bornagain.glue.tokenize import (
    encode_examples, iterate_batches, load_tokenizer, tokenizer_fingerprint, train_batch_indices,
)

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "weights.safetensors"
PREDICTIONS = "train_predictions.safetensors"
RESULTS = "results.json"
SETTINGS = "teacher_settings.json"


@dataclass(frozen=True)
class TeacherRun:
    """A finished teacher: where its files are and what it scored."""

    task: str
    run_dir: Path
    dev_metrics: dict
    majority_baseline: dict
    prediction_fingerprint: str
    train_seconds: float

    @property
    def weights_path(self) -> Path:
        return self.run_dir / WEIGHTS

    @property
    def predictions_path(self) -> Path:
        return self.run_dir / PREDICTIONS

    def load_predictions(self, train_examples: list[GlueExample], *, tokenizer,
                         max_seq_length: int) -> TeacherPredictions:
        """The cached outputs on `train_examples`, refused unless they are exactly the teacher's
        examples (same ids, texts, labels, order), tokenizer and max_seq_length, and the weights
        file is the one that made them."""
        dataset_fp = dataset_fingerprint(train_examples, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                                         max_seq_length=max_seq_length)
        expected = prediction_fingerprint(dataset_fp, file_fingerprint(self.weights_path))
        return load_teacher_predictions(self.predictions_path, task=self.task, expected_fingerprint=expected,
                                        expected_ids=[e.id for e in train_examples])


def teacher_settings(cfg: GlueExperimentConfig, task: str) -> dict:
    """The config values that define a teacher (device, progress bars and the task list do not)."""
    tree = config_to_dict(cfg)
    for key in ("output_dir", "bam", "train"):
        tree.pop(key)
    tree["glue"].pop("tasks")
    for key in ("eval_batch_size", "log_every_steps", "checkpoint_every_steps"):
        tree["teacher"].pop(key)
    tree["precision"] = cfg.train.precision
    tree["task"] = task
    return tree


def _check_settings(run_dir: Path, settings: dict) -> None:
    saved = read_json(run_dir / SETTINGS)
    if saved != settings:
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise UserError(
            f"teacher run '{run_dir}' was made with other settings (differences in: {', '.join(diff)});"
            " use the same config, or a new --output directory"
        )


def label_loss(task: GlueTask, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class indices, or mean squared error on the [0, 1] regression target."""
    if task.is_regression:
        return F.mse_loss(outputs.float(), labels.float())
    return F.cross_entropy(outputs.float(), labels)


def train_step(model: MultiTaskModel, batch: dict, task: GlueTask, optimizer, scheduler, *,
               device: torch.device, precision: str, max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on one batch; returns (loss, gradient norm before clipping) as tensors."""
    with autocast(device, precision):
        outputs = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task.name)
    loss = label_loss(task, outputs, batch["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(model, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return loss.detach(), grad_norm


def _finished_run(cfg: GlueExperimentConfig, task: str, run_dir: Path) -> TeacherRun:
    _check_settings(run_dir, teacher_settings(cfg, task))
    r = read_json(run_dir / RESULTS)
    return TeacherRun(task, run_dir, r["dev_metrics"], r["majority_baseline"], r["prediction_fingerprint"],
                      r["train_seconds"])


def train_teacher(cfg: GlueExperimentConfig, task_name: str, run_dir: str | Path, *,
                  resume: bool = False) -> TeacherRun:
    """Fine-tune (or resume, or reuse) the single-task teacher of one task in `run_dir`."""
    task, run_dir = get_task(task_name), Path(run_dir)
    if (run_dir / RESULTS).exists():
        return _finished_run(cfg, task.name, run_dir)  # finished teachers are never retrained
    settings = teacher_settings(cfg, task.name)
    resuming = (run_dir / CHECKPOINT).exists()
    if resuming and not resume:
        raise UserError(f"'{run_dir}' holds an unfinished {task.name} teacher: pass --resume to continue it,"
                        " or choose another --output")
    if resuming:
        _check_settings(run_dir, settings)
    else:
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / SETTINGS, settings)

    seed_everything(derive_seed(cfg.seed, "teacher", task.name))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    precision, show = cfg.train.precision, cfg.train.progress

    train_examples = load_train_examples(cfg, task)
    dev_examples = {s: load_split(task, s, data_dir=cfg.glue.data_dir, source=cfg.glue.source)
                    for s in task.dev_splits}
    tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
    pad_id = tokenizer.pad_token_id or 0
    train_split = encode_examples(task, train_examples, tokenizer, cfg.max_seq_length)
    dev_splits = {s: encode_examples(task, ex, tokenizer, cfg.max_seq_length) for s, ex in dev_examples.items()}

    model = build_model(cfg, [task.name]).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    batch_size, epochs = cfg.teacher.batch_size, cfg.teacher.epochs
    steps_per_epoch = math.ceil(len(train_split) / batch_size)
    total_steps = epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps=total_steps, warmup_fraction=cfg.optim.warmup_fraction)
    logger = RunLogger(run_dir)

    epoch, batch_in_epoch, step, elapsed = 0, 0, 0, 0.0
    if resuming:
        extra = load_checkpoint(run_dir / CHECKPOINT, model=model, optimizer=optimizer, scheduler=scheduler)
        epoch, batch_in_epoch, step, elapsed = extra["epoch"], extra["batch"], extra["step"], extra["seconds"]
    # Drop lines logged after the checkpoint by a killed run (all of them when none was saved).
    logger.truncate_after(step)

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        save_checkpoint(run_dir / CHECKPOINT, model=model, optimizer=optimizer, scheduler=scheduler,
                        extra={"epoch": next_epoch, "batch": next_batch, "step": step,
                               "seconds": elapsed + time.perf_counter() - started})

    started = time.perf_counter()
    lengths = train_split.lengths
    while epoch < epochs:
        # The batch order of an epoch depends only on (seed, task, epoch): a resumed run
        # rebuilds it and skips the batches already done.
        batches = train_batch_indices(lengths, batch_size, bucket=cfg.teacher.bucket_by_length,
                                      seed=derive_seed(cfg.seed, "teacher", task.name, "epoch", epoch))
        model.train()
        todo = iterate_batches(train_split, batches[batch_in_epoch:], pad_id, device)
        for b, batch in enumerate(progress(todo, total=len(batches) - batch_in_epoch, enabled=show,
                                           desc=f"{task.name} epoch {epoch + 1}/{epochs}"), start=batch_in_epoch):
            loss, grad_norm = train_step(model, batch, task, optimizer, scheduler, device=device,
                                         precision=precision, max_grad_norm=cfg.optim.max_grad_norm)
            step += 1
            if not torch.isfinite(loss):
                raise UserError(f"{task.name} teacher: the loss became {loss.item()} at step {step};"
                                " lower optim.lr or use train.precision=fp32")
            if step % cfg.teacher.log_every_steps == 0:
                logger.log({"train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                            "train/lr": scheduler.get_last_lr()[-1], "epoch": epoch + (b + 1) / len(batches)},
                           step=step)
            every = cfg.teacher.checkpoint_every_steps
            if every and step % every == 0 and b + 1 < len(batches):
                checkpoint(epoch, b + 1)
        epoch, batch_in_epoch = epoch + 1, 0
        dev = evaluate_dev(model, dev_splits, task, device=device, precision=precision,
                           batch_size=cfg.teacher.eval_batch_size, pad_token_id=pad_id)
        logger.log({f"dev/{k}": v for k, v in dev.items()} | {"epoch": epoch}, step=step)
        checkpoint(epoch, 0)
    logger.close()
    elapsed += time.perf_counter() - started

    return _finish_teacher(cfg, task, run_dir, model, tokenizer, train_examples, train_split, dev_examples,
                           dev_splits, device=device, pad_id=pad_id, train_seconds=elapsed)


def _finish_teacher(cfg, task: GlueTask, run_dir: Path, model, tokenizer, train_examples, train_split,
                    dev_examples, dev_splits, *, device, pad_id: int, train_seconds: float) -> TeacherRun:
    """Write the final weights, dev metrics, own-train-set predictions, submission; then results.json."""
    kw = dict(device=device, precision=cfg.train.precision, batch_size=cfg.teacher.eval_batch_size,
              pad_token_id=pad_id)
    save_weights(model, run_dir / WEIGHTS)
    dev = json_safe(evaluate_dev(model, dev_splits, task, **kw))
    baseline = majority_baseline(task, train_examples, dev_examples)
    write_json(run_dir / "dev_metrics.json", {"task": task.name, "dev": dev, "majority_baseline": baseline,
                                              "model": "last epoch (no selection on dev)"})

    dataset_fp = dataset_fingerprint(train_examples, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                                     max_seq_length=cfg.max_seq_length)
    fingerprint = prediction_fingerprint(dataset_fp, file_fingerprint(run_dir / WEIGHTS))
    outputs = predict_outputs(model, train_split, task, show_progress=cfg.train.progress, **kw)
    save_teacher_predictions(run_dir / PREDICTIONS, task=task.name, example_ids=train_split.ids,
                             outputs=outputs, fingerprint=fingerprint)

    submissions = []
    for split in task.test_splits:
        if not has_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source):
            continue  # a local GLUE copy without test files: nothing to submit
        test_examples = load_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source)
        test_split = encode_examples(task, test_examples, tokenizer, cfg.max_seq_length)
        test_outputs = predict_outputs(model, test_split, task, **kw).numpy()
        path = run_dir / "submission" / submission_file_name(task, split)
        submissions.append(str(write_submission(path, task, test_examples, test_outputs).relative_to(run_dir)))

    write_json(run_dir / RESULTS, {
        "task": task.name, "dev_metrics": dev, "majority_baseline": baseline,
        "prediction_fingerprint": fingerprint, "dataset_fingerprint": dataset_fp,
        "num_train_examples": len(train_examples), "train_seconds": train_seconds,
        "submission_files": submissions,
    })
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: the final weights replace the resume point
    return TeacherRun(task.name, run_dir, dev, baseline, fingerprint, train_seconds)


def ensure_teachers(cfg: GlueExperimentConfig, output_dir: str | Path, *,
                    resume: bool = False) -> dict[str, TeacherRun]:
    """One finished teacher per task of `glue.tasks` under OUTPUT/teachers/, training the missing ones."""
    root = Path(output_dir) / "teachers"
    return {task: train_teacher(cfg, task, root / task, resume=resume) for task in cfg.glue.tasks}


def format_teacher_table(runs: dict[str, TeacherRun]) -> str:
    """A plain-text table: dev metrics (x100) beside the majority-class baseline, and wall time."""
    lines = [f"{'task':<7} {'dev metrics':<34} {'score':>6} {'majority':>8} {'seconds':>8}"]
    for task, run in runs.items():
        keys = get_task(task).score_keys
        shown = ", ".join(f"{k} {_pct(run.dev_metrics.get(k))}" for k in keys)
        lines.append(f"{task:<7} {shown:<34} {_pct(run.dev_metrics['score']):>6} "
                     f"{_pct(run.majority_baseline['score']):>8} {run.train_seconds:8.0f}")
    return "\n".join(lines)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def preflight(cfg: GlueExperimentConfig) -> None:
    """Check what a user can get wrong before any file is written: the tokenizer, the encoder's
    config, and every task's train and dev files (local TSVs; the hub is checked when loaded)."""
    from bornagain.glue.model import _encoder_config  # noqa: PLC0415

    load_tokenizer(cfg.encoder.tokenizer_name)
    _encoder_config(cfg.encoder)
    if cfg.glue.source != "tsv":
        return
    for name in cfg.glue.tasks:
        task = get_task(name)
        for split in ("train", *task.dev_splits):
            if not has_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source):
                load_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source)  # raises its UserError


def glue_teachers_command(config: str | None, output: str | None, resume: bool, overrides: list[str]) -> None:
    """`bornagain glue-teachers [--config FILE] [--output DIR] [--resume] [key=value ...]`."""
    from bornagain.glue.metrics import glue_score  # noqa: PLC0415

    cfg = load_config(GlueExperimentConfig, config, overrides)
    preflight(cfg)
    output_dir = Path(output or cfg.output_dir)
    runs = ensure_teachers(cfg, output_dir, resume=resume)
    summary = {
        "tasks": {t: {"dev": r.dev_metrics, "majority_baseline": r.majority_baseline,
                      "train_seconds": r.train_seconds} for t, r in runs.items()},
        "glue_score_of_these_tasks": glue_score({t: _nan(r.dev_metrics) for t, r in runs.items()}),
    }
    write_json(output_dir / "teachers" / "summary.json", summary)
    print(format_teacher_table(runs))
    print(f"GLUE average over {len(runs)} task(s): {100 * summary['glue_score_of_these_tasks']:.1f}")
    print(f"teachers in {output_dir / 'teachers'}")


def _nan(metrics: dict) -> dict:
    return {k: float("nan") if v is None else v for k, v in metrics.items()}
