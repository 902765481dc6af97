"""Single-task GLUE teachers: fine-tune one encoder per task, cache its predictions.

`bornagain glue-teachers` trains, for each task in `glue.tasks`, a teacher with
plain supervised loss (cross-entropy on the class, or squared error on the
[0, 1]-scaled STS-B score), the last epoch's model being the teacher (no model
selection on dev). Each teacher is its own resumable run in
OUTPUT/teachers/<TASK>/:

    config.yaml                 the resolved experiment config
    settings.json               what defines the teacher, checked on resume/reuse (engine/run.py; runs made
                                before it: teacher_settings.json)
    checkpoint.safetensors      training state while unfinished (every N steps and each epoch end)
    metrics.jsonl, tb/          loss, lr, grad norm every train.log_every_steps; dev metrics per epoch
    model.safetensors           the final teacher (weights.safetensors in runs made before the one engine)
    dev_metrics.json            its dev metrics and the majority-class baseline
    train_predictions.safetensors   its outputs on its own training set, keyed by example id
    submission/<FILE>.tsv       GLUE test predictions in the server's format
    results.json                written last: a finished teacher, never retrained
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bornagain_kd.config import config_to_dict, settings_tree
from bornagain_kd.engine.device import resolve_device
from bornagain_kd.engine.distributed import DistInfo, current, init_distributed, per_rank_batch, rank_slices
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.engine.run import RESULTS, RunSettings, check_shared_storage, command_dir, open_run
from bornagain_kd.engine.trainer import StepOutput, train
from bornagain_kd.files import json_safe, nan_for_none, read_json, write_json
from bornagain_kd.glue.cache import (
    TeacherPredictions, dataset_fingerprint, file_fingerprint, load_teacher_predictions,
    prediction_fingerprint, save_teacher_predictions,
)
from bornagain_kd.glue.config import GlueExperimentConfig
from bornagain_kd.glue.data import GlueExample, has_split, load_split, load_train_examples
from bornagain_kd.glue.evaluation import Predicting, evaluate_dev, majority_baseline, predict_outputs
from bornagain_kd.glue.model import build_model
from bornagain_kd.glue.optim import build_optimizer, build_scheduler
from bornagain_kd.glue.submission import submission_file_name, write_submission
from bornagain_kd.glue.tasks import GlueTask, get_task
from bornagain_kd.pipelines.common import engine_settings, start_process, tracked
from bornagain_kd.glue.tokenization import (
    encode_examples, iterate_batches, load_tokenizer, tokenizer_fingerprint, train_batch_indices,
)

WEIGHTS = "model.safetensors"
OLD_WEIGHTS = "weights.safetensors"  # teachers finished before the one engine
PREDICTIONS = "train_predictions.safetensors"


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
        old = self.run_dir / OLD_WEIGHTS
        return old if old.exists() and not (self.run_dir / WEIGHTS).exists() else self.run_dir / WEIGHTS

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
    """The config values that define a teacher: every key but those declared may_differ("teacher") (device,
    progress bars, the task list, bam.*), with its task; the tree of its settings.json."""
    tree = settings_tree(cfg, "teacher")
    tree["precision"] = tree["train"].pop("precision")
    tree["task"] = task
    return tree


def teacher_run_settings(cfg: GlueExperimentConfig, task: str) -> RunSettings:
    """A teacher's settings record (engine/run.py): ``teacher_settings``, compared whole (the keys that may
    differ are already left out), read under today's names and with the values of then for keys added since."""
    return RunSettings("glue-teacher", teacher_settings(cfg, task), renamed=cfg.RENAMED_KEYS, added=cfg.ADDED_KEYS)


def label_loss(task: GlueTask, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class indices, or mean squared error on the [0, 1] regression target."""
    if task.is_regression:
        return F.mse_loss(outputs.float(), labels.float())
    return F.cross_entropy(outputs.float(), labels)


def _finished_run(task: str, run_dir: Path) -> TeacherRun:
    r = read_json(run_dir / RESULTS)
    return TeacherRun(task, run_dir, r["dev_metrics"], r["majority_baseline"], r["prediction_fingerprint"],
                      r["train_seconds"])


class TeacherTask:
    """The engine's view of one single-task teacher (see the engine's Task protocol)."""

    evaluate_on_every_rank = True  # under torchrun the ranks share the dev predictions

    def __init__(self, cfg: GlueExperimentConfig, task: GlueTask, device: torch.device):
        self.cfg, self.task, self.device = cfg, task, device
        self.name, self.epochs = f"{task.name} teacher", cfg.train.epochs
        self.batch_size, self.batch_key = cfg.train.batch_size, "train.batch_size"  # the engine splits it
        self.train_examples = load_train_examples(cfg, task)
        self.dev_examples = {s: load_split(task, s, data_dir=cfg.glue.data_dir, source=cfg.glue.source)
                             for s in task.dev_splits}
        self.tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.train_split = encode_examples(task, self.train_examples, self.tokenizer, cfg.max_seq_length)
        self.dev_splits = {s: encode_examples(task, ex, self.tokenizer, cfg.max_seq_length)
                           for s, ex in self.dev_examples.items()}

    def build_model(self):
        return build_model(self.cfg, [self.task.name])

    def build_optimizer(self, model, steps_per_epoch: int):
        optimizer = build_optimizer(model, self.cfg.optim)
        return optimizer, build_scheduler(optimizer, total_steps=self.epochs * steps_per_epoch,
                                          warmup_fraction=self.cfg.optim.warmup_fraction)

    def epoch_batches(self, epoch: int, dist: DistInfo) -> list[list[int]]:
        # The batch order of an epoch depends only on (seed, task, epoch); each rank takes its slice.
        batches = train_batch_indices(self.train_split.lengths, self.cfg.train.batch_size,
                                      bucket=self.cfg.train.bucket_by_length,
                                      seed=derive_seed(self.cfg.seed, "teacher", self.task.name, "epoch", epoch))
        return rank_slices([list(b) for b in batches], dist)

    def loss(self, model, rows: list[int], step: int) -> StepOutput:
        (batch,) = iterate_batches(self.train_split, [rows], self.pad_id, self.device)
        outputs = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], self.task.name)
        with torch.autocast(self.device.type, enabled=False):  # the loss in fp32
            loss = label_loss(self.task, outputs, batch["labels"])
        return StepOutput(loss=loss, count=len(rows))

    def _predicting(self) -> Predicting:
        return Predicting(self.device, self.cfg.train.precision, self.cfg.train.eval_batch_size, self.pad_id)

    def evaluate(self, model, epoch: int) -> dict:
        dev = evaluate_dev(model, self.dev_splits, self.task, self._predicting(), dist=current())
        if epoch + 1 == self.epochs:
            self._final_dev = dev  # the final model's: finish() reports it without predicting dev again
        return {f"dev/{k}": v for k, v in dev.items()}

    def predict_on_every_rank(self, model) -> None:
        """The final model's predictions that finish() writes, shared by the ranks (each predicts every
        world_size-th batch; glue/evaluation.py): dev (where the last epoch's evaluation is not at hand, after a
        resume), the whole training set (the cached teacher predictions: MNLI's 393k examples with BERT-large is
        long), and the test sets of the submission."""
        cfg, task, how, dist = self.cfg, self.task, self._predicting(), current()
        if getattr(self, "_final_dev", None) is None:
            self._final_dev = evaluate_dev(model, self.dev_splits, task, how, dist=dist)
        self._train_outputs = predict_outputs(model, self.train_split, task, how, show_progress=cfg.train.progress,
                                              dist=dist)
        self._test_outputs = []
        for split in task.test_splits if cfg.glue.test_submissions else ():
            if not has_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source):
                continue  # a local GLUE copy without test files: nothing to submit
            examples = load_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source)
            encoded = encode_examples(task, examples, self.tokenizer, cfg.max_seq_length)
            self._test_outputs.append((split, examples, predict_outputs(model, encoded, task, how, dist=dist)))

    def finish(self, model, run_dir: Path) -> dict:
        """Dev metrics, own-train-set predictions, submission (predicted by predict_on_every_rank); this
        teacher's fields of results.json."""
        cfg, task = self.cfg, self.task
        dev = json_safe(self._final_dev)
        baseline = majority_baseline(task, self.train_examples, self.dev_examples)
        write_json(run_dir / "dev_metrics.json", {"task": task.name, "dev": dev, "majority_baseline": baseline,
                                                  "model": "last epoch (no selection on dev)"})
        dataset_fp = dataset_fingerprint(self.train_examples,
                                         tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
                                         max_seq_length=cfg.max_seq_length)
        fingerprint = prediction_fingerprint(dataset_fp, file_fingerprint(run_dir / WEIGHTS))
        save_teacher_predictions(run_dir / PREDICTIONS, task=task.name, example_ids=self.train_split.ids,
                                 outputs=self._train_outputs, fingerprint=fingerprint)
        submissions = []
        for split, test_examples, test_outputs in self._test_outputs:
            path = run_dir / "submission" / submission_file_name(task, split)
            submissions.append(str(write_submission(path, task, test_examples, test_outputs.numpy()).relative_to(
                run_dir)))
        return {"task": task.name, "dev_metrics": dev, "majority_baseline": baseline,
                "prediction_fingerprint": fingerprint, "dataset_fingerprint": dataset_fp,
                "num_train_examples": len(self.train_examples), "submission_files": submissions}


def train_teacher(cfg: GlueExperimentConfig, task_name: str, run_dir: str | Path, *,
                  resume: bool = False) -> TeacherRun:
    """Fine-tune (or resume, or reuse) the single-task teacher of one task in `run_dir`."""
    task, run_dir = get_task(task_name), Path(run_dir)
    state = open_run(run_dir, teacher_run_settings(cfg, task.name), resume=resume, main=current().is_main,
                     what=f"{task.name} teacher", config=config_to_dict(cfg))
    if state == "finished":
        return _finished_run(task.name, run_dir)  # finished teachers are never retrained
    device, _ = start_process(cfg.train)
    settings = engine_settings(cfg.train, device, seed=derive_seed(cfg.seed, "teacher", task.name),
                               max_grad_norm=cfg.optim.max_grad_norm, log_every_steps=cfg.train.log_every_steps)
    result = train(run_dir, TeacherTask(cfg, task, device), settings, resume=state == "resume")
    return TeacherRun(task.name, run_dir, result["dev_metrics"], result["majority_baseline"],
                      result["prediction_fingerprint"], result["train_seconds"])


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
    from bornagain_kd.glue.model import _encoder_config  # noqa: PLC0415

    load_tokenizer(cfg.encoder.tokenizer_name)
    _encoder_config(cfg.encoder)
    if cfg.glue.source != "tsv":
        return
    for name in cfg.glue.tasks:
        task = get_task(name)
        for split in ("train", *task.dev_splits):
            if not has_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source):
                load_split(task, split, data_dir=cfg.glue.data_dir, source=cfg.glue.source)  # raises its UserError


def run(cfg: GlueExperimentConfig, output: str | Path, *, resume: bool) -> tuple[dict[str, TeacherRun], dict]:
    """`bornagain glue-teachers`: every task's teacher (trained when missing) and teachers/summary.json;
    returns (teachers by task, summary)."""
    from bornagain_kd.glue.metrics import glue_score  # noqa: PLC0415

    output_dir = Path(output)
    # under torchrun: know the rank before locking
    info = init_distributed(resolve_device(cfg.train.device).type, cfg.train.dist_timeout)
    per_rank_batch(cfg.train.batch_size, info, "train.batch_size")  # a batch too small for the world: refused now
    check_shared_storage(output_dir)  # several nodes: every rank must see what rank 0 writes there
    main = current().is_main
    with command_dir(output_dir, main=main), tracked(cfg, output_dir, main=main, artifacts=("teachers/summary.json",)):
        runs = ensure_teachers(cfg, output_dir, resume=resume)
        summary = {
            "tasks": {t: {"dev": r.dev_metrics, "majority_baseline": r.majority_baseline,
                          "train_seconds": r.train_seconds} for t, r in runs.items()},
            "glue_score_of_these_tasks": glue_score({t: nan_for_none(r.dev_metrics) for t, r in runs.items()}),
        }
        if main:
            write_json(output_dir / "teachers" / "summary.json", summary)
    return runs, summary
