"""`bornagain bam`: single-task teachers -> cached predictions -> multi-task students -> table.

    OUTPUT/
      bam_config.yaml                      the resolved config
      teachers/<TASK>/                     teachers of seed = config `seed` (what `glue-teachers` writes)
      teachers/seed<k>/<TASK>/             teachers of seed k != `seed` (bam.teacher_per_seed=true)
      students/<arm>/seed<k>/              one resumable student run each (see bam_student.py and the
                                           engine's run-directory contract): checkpoint, metrics.jsonl
                                           (lambda every step), model, settings.json,
                                           dev_metrics.json, results.json (written last)
      results.json                         every seed's per-task metrics, summaries, paired tests
      table.md, table.csv                  the table (bam_report.py)

Seeds and pairing. Student seed k fixes the student's initialisation and its task-mixing
order; every arm with seed k starts from the same initial weights and sees the same
examples in the same order, so arms differ only in their targets. With
``bam.teacher_per_seed`` (default) the seed-k student learns from teachers trained with
seed k, on the training subsample of seed k (``glue.max_train_examples``), so "BAM vs
teachers" pairs seed-k scores with seed-k scores. Otherwise one set of teachers (the
config's ``seed``) teaches every student seed and the teachers' row has n = 1.

Resume. Finished teachers and students are reused (their settings are checked first);
an interrupted one continues from its checkpoint with ``--resume``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from bornagain_kd.config import config_to_dict, save_config, settings_tree
from bornagain_kd.engine.distributed import barrier, current, per_rank_batch
from bornagain_kd.engine.run import RESULTS, RunSettings, check_shared_storage, command_dir, open_run
from bornagain_kd.files import atomic_write_text, json_safe, nan_for_none, read_json, write_json
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.distill.bam_targets import target_arm
from bornagain_kd.reports.bam_tables import build_results, render_csv, render_markdown
from bornagain_kd.glue.config import GlueExperimentConfig
from bornagain_kd.glue.data import load_split, load_train_examples
from bornagain_kd.glue.metrics import glue_score
from bornagain_kd.glue.model import build_model
from bornagain_kd.pipelines.bam_student import StudentData, StudentSetup, train_student
from bornagain_kd.pipelines.common import start_process, tracked
from bornagain_kd.glue.tasks import get_task
from bornagain_kd.pipelines.glue_teachers import TeacherRun, train_teacher
from bornagain_kd.glue.tokenization import encode_examples, load_tokenizer

SWAP_TASKS = ("MRPC", "STS-B")
"""Tasks trained in both sentence orders with ``bam.both_orders`` (their labels are symmetric)."""


def teacher_dir(output_dir: Path, cfg: GlueExperimentConfig, task: str, teacher_seed: int) -> Path:
    """Where the teacher of (task, seed) lives; the config's own seed uses `glue-teachers`' layout."""
    if teacher_seed == cfg.seed:
        return output_dir / "teachers" / task
    return output_dir / "teachers" / f"seed{teacher_seed}" / task


def teacher_seed_of(cfg: GlueExperimentConfig, student_seed: int) -> int:
    """The seed of the teachers (and of the training subsample) that student seed k learns from."""
    return student_seed if cfg.bam.teacher_per_seed else cfg.seed


def ensure_seed_teachers(cfg: GlueExperimentConfig, output_dir: Path, teacher_seed: int, *,
                         resume: bool) -> dict[str, TeacherRun]:
    """One finished single-task teacher per task for ``teacher_seed`` (trained when missing)."""
    seeded = dataclasses.replace(cfg, seed=teacher_seed)
    return {task: train_teacher(seeded, task, teacher_dir(output_dir, cfg, task, teacher_seed), resume=resume)
            for task in cfg.glue.tasks}


def load_student_data(cfg: GlueExperimentConfig, tokenizer, teachers: dict[str, TeacherRun] | None) -> StudentData:
    """Tokenised training and dev sets of every task, the swapped MRPC/STS-B pairs, and the
    teachers' cached outputs aligned with the training rows by example id (fingerprint checked).

    ``cfg.seed`` selects the training subsample, exactly as for the teachers of that seed.
    """
    train, dev, swapped, teacher_outputs, label_means = {}, {}, {}, {}, {}
    for name in cfg.glue.tasks:
        task = get_task(name)
        examples = load_train_examples(cfg, task)
        train[name] = encode_examples(task, examples, tokenizer, cfg.max_seq_length)
        if cfg.bam.both_orders and name in SWAP_TASKS:
            flipped = [dataclasses.replace(e, text_a=e.text_b, text_b=e.text_a) for e in examples]
            swapped[name] = encode_examples(task, flipped, tokenizer, cfg.max_seq_length)
        dev[name] = {split: encode_examples(task, load_split(task, split, data_dir=cfg.glue.data_dir,
                                                             source=cfg.glue.source), tokenizer, cfg.max_seq_length)
                     for split in task.dev_splits}
        if task.is_regression:
            label_means[name] = float(torch.nanmean(train[name].labels))
        if teachers is not None:
            cache = teachers[name].load_predictions(examples, tokenizer=tokenizer, max_seq_length=cfg.max_seq_length)
            teacher_outputs[name] = cache.lookup(train[name].ids)  # row r <-> train[name].ids[r]
    return StudentData(tasks=tuple(cfg.glue.tasks), train=train, dev=dev, swapped=swapped,
                       teacher_outputs=teacher_outputs if teachers is not None else None, label_means=label_means)


AVERAGING_KEYS = ("weight_averaging", "ema_decay", "ema_every_steps", "ema_warmup_power")


def student_settings(cfg: GlueExperimentConfig, arm: str, seed: int, teachers: dict[str, TeacherRun] | None) -> dict:
    """What defines one student run (checked before a finished or interrupted run is reused): every key but
    those declared may_differ("student") (train.* but precision: the student's own epochs and batch are bam.*;
    the arm list and seeds), with its own arm, seed and teachers; the tree of its settings.json."""
    tree = settings_tree(cfg, "student")
    train = tree.pop("train")
    tree["precision"] = train["precision"]
    # the engine averages a student's weights as train.* says (engine/averaging.py): a finished student trained
    # otherwise is not reused, and a checkpoint's average is not dropped on resume
    tree["train"] = {k: train[k] for k in AVERAGING_KEYS}
    tree["data_seed"] = cfg.seed  # the teachers' seed and the training subsample's
    tree["seed"] = seed
    tree["arm"] = arm
    if target_arm(arm).needs_teacher and teachers is not None:
        tree["teacher_predictions"] = {task: run.prediction_fingerprint for task, run in teachers.items()}
    return tree


def student_run_settings(cfg: GlueExperimentConfig, arm: str, seed: int,
                         teachers: dict[str, TeacherRun] | None) -> RunSettings:
    """A student's settings record (engine/run.py): ``student_settings``, compared whole."""
    return RunSettings("bam-student", student_settings(cfg, arm, seed, teachers), added=cfg.ADDED_KEYS)


def run_bam(cfg: GlueExperimentConfig, output_dir: str | Path, *, resume: bool = False) -> dict:
    """Teachers, students of every arm and seed, and the results; returns the results dict."""
    output_dir = Path(output_dir)
    device, info = start_process(cfg.train)  # once per command; under torchrun: know the rank before locking
    for key, size in (("train.batch_size", cfg.train.batch_size), ("bam.batch_size", cfg.bam.batch_size)):
        per_rank_batch(size, info, key)  # a batch too small for the world: refused before the teachers train
    check_shared_storage(output_dir)  # several nodes: every rank must see what rank 0 writes there
    main = current().is_main
    with command_dir(output_dir, main=main), tracked(cfg, output_dir, main=main):  # teachers, students nest under it
        return _run_bam(cfg, output_dir, device, resume=resume)


def _run_bam(cfg: GlueExperimentConfig, output_dir: Path, device: torch.device, *, resume: bool) -> dict:
    main = current().is_main
    if main:
        save_config(cfg, output_dir / "bam_config.yaml")
    tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
    pad_id = tokenizer.pad_token_id or 0
    runs: dict[str, dict[int, dict]] = {"majority": {}, "teachers": {}, **{arm: {} for arm in cfg.bam.targets}}
    started = time.perf_counter()
    for seed in cfg.bam.seeds:
        teacher_seed = teacher_seed_of(cfg, seed)
        teachers = ensure_seed_teachers(cfg, output_dir, teacher_seed, resume=resume)
        first = teacher_seed not in runs["teachers"]  # one set of teachers may teach every student seed
        runs["teachers"][teacher_seed] = {task: nan_for_none(run.dev_metrics) for task, run in teachers.items()}
        if main and first:
            print(f"teachers seed {teacher_seed}: GLUE {100 * glue_score(runs['teachers'][teacher_seed]):.1f} "
                  f"({time.perf_counter() - started:.0f} s since start)", flush=True)
        if not runs["majority"]:  # a reference row: always predicting the most frequent training class
            runs["majority"][teacher_seed] = {task: nan_for_none(run.majority_baseline) for task, run in teachers.items()}
        data_cfg = dataclasses.replace(cfg, seed=teacher_seed)
        data = None  # tokenised only when a student of this seed still has to train
        for arm in cfg.bam.targets:
            run_dir = output_dir / "students" / arm / f"seed{seed}"
            state = open_run(run_dir, student_run_settings(data_cfg, arm, seed, teachers), resume=resume,
                             main=main, what="student")
            if state == "finished":
                metrics, note = read_json(run_dir / RESULTS)["dev_metrics"], "finished earlier, reused"
            else:
                if data is None:
                    data = load_student_data(data_cfg, tokenizer, teachers if cfg.bam.needs_teachers else None)
                # Every arm of one seed starts from the same weights (paired comparison across arms):
                # the engine seeds the global RNG with derive_seed(seed, "bam-student"), then builds.
                setup = StudentSetup(arm=arm, seed=seed, bam=cfg.bam, optim_cfg=cfg.optim, train_cfg=cfg.train,
                                     device=device, pad_token_id=pad_id)
                metrics = train_student(None, data, setup, run_dir=run_dir, resume=state == "resume",
                                        build=lambda: build_model(cfg, cfg.glue.tasks),
                                        init_seed=derive_seed(seed, "bam-student"))
                note = f"{time.perf_counter() - started:.0f} s since start"
            runs[arm][seed] = {task: nan_for_none(values) for task, values in metrics.items()}
            if main:
                print(f"student {arm} seed {seed}: GLUE {100 * glue_score(runs[arm][seed]):.1f} ({note})", flush=True)
    results = build_results(runs, tuple(cfg.glue.tasks), test=cfg.bam.paired_test)
    results["teacher_seeds"] = {str(seed): teacher_seed_of(cfg, seed) for seed in cfg.bam.seeds}
    results["config"] = config_to_dict(cfg)
    results["wall_seconds"] = time.perf_counter() - started  # this invocation's (a resumed run: since the resume)
    if main:  # only rank 0 writes
        write_json(output_dir / "results.json", json_safe(results))
        atomic_write_text(output_dir / "table.md", render_markdown(results))
        atomic_write_text(output_dir / "table.csv", render_csv(results))
    barrier()
    return results


run = run_bam  # the pipeline's entry point: run(cfg, output, *, resume)
