"""The born-again sequence: a teacher, then generations of students, each taught by the last.

    OUTPUT/
      config.yaml            the resolved experiment config
      gen0/ gen1/ ...        one complete training run each (see pipelines/classifier.py); gen0 is the teacher
      baseline/              optional: the student architecture trained from labels alone (Table 2)
      results.json           generations, ensembles, baseline
      table.md, table.csv    the paper's layout

Generation k >= 1 is a fresh model with seed derive_seed(seed, "generation", k), trained
with the teacher's exact schedule, taught by the *final* model of generation k-1, which
is reloaded from its saved weights into a separate object, frozen (requires_grad False),
kept in eval mode and run under inference_mode. Finished generations are never retrained
on --resume; the interrupted one continues from its last checkpoint.

With `ban.seeds`, the whole sequence runs once per seed, then the aggregate over seeds:

    OUTPUT/
      config.yaml                  the resolved config, with ban.seeds
      seed-<s>/                    a complete `bornagain ban` run with seed=s (its config.yaml says so),
                                   resumable on its own; --resume on OUTPUT continues the unfinished ones;
                                   no plots of its own (`bornagain report seed-<s> --plots` draws them)
      results.json                 mean +- std per column, paired t-tests, McNemar tests (reports/seeds.py)
      table.md, table.csv, table.tex
      generations.{png,pdf}, reliability.{png,pdf}, curves.{png,pdf}

Each seed's run is exactly the single-seed run of that seed: its split, subset, initialisations and
augmentation all derive from s, so `seed-1/` equals `bornagain ban seed=1`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch

from bornagain_kd.config import config_to_dict, keys_that_may_differ, recorded_config
from bornagain_kd.engine.device import resolve_device
from bornagain_kd.engine.distributed import barrier, current, decided_by_rank0
from bornagain_kd.engine.run import check_command_dir, command_dir, is_finished, record_command
from bornagain_kd.engine.settings import changed_keys, describe_changes, flatten
from bornagain_kd.pipelines.classifier import RunSpec, check_flips, fit, load_probs
from bornagain_kd.pipelines.teacher_source import (
    local_teacher, pin_teacher, teacher_config_tree, unfinished_teacher_message,
)
from bornagain_kd.pipelines.common import tracked
from bornagain_kd.pipelines.vision_speed import keep_explicit_compile, resolve_vision_speed
from bornagain_kd.files import read_json, write_json
from bornagain_kd.engine.run_log import read_metrics
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.errors import UserError
from bornagain_kd.distill.ban_losses import resolve_loss
from bornagain_kd.models import create_model, model_options
from bornagain_kd.pipelines.ban_controls import run_controls
from bornagain_kd.pipelines.ban_summary import summarize
from bornagain_kd.models.imported import is_import_path
from bornagain_kd.models.fold import fold_batch_norms
from bornagain_kd.models.sharing import check_shareable, share_stem_and_head
from bornagain_kd.engine.checkpoint import load_weights
from bornagain_kd.reports.plots import PNG_ONLY, plot_run
from bornagain_kd.reports.ban_tables import write_tables
from bornagain_kd.reports.seeds import aggregate, write_aggregate
from bornagain_kd.vision.config import VisionConfig, teacher_run_dir, vision_settings
from bornagain_kd.vision.prepare import PreparedData, prepare_data


label_loss = resolve_loss("ce")
"""Generation 0 and baselines: plain cross-entropy on the labels."""


def model_kwargs(cfg: VisionConfig, name: str) -> dict:
    """Keyword arguments of architecture ``name``: model.kwargs for the teacher's architecture,
    ban.student_kwargs for another student architecture; model.dropout for the WRN families."""
    kwargs = dict(cfg.model.kwargs) if name == cfg.model.name else dict(cfg.ban.student_kwargs or {})
    if cfg.model.dropout is not None:
        if is_import_path(name):
            raise UserError(f"model.dropout is for the zoo's WRN families; {name} is your own model: "
                            "pass its dropout as model.kwargs.dropout (or however your factory names it)")
        if name.startswith(("wrn", "match-wrn")):
            if kwargs.get("dropout", cfg.model.dropout) != cfg.model.dropout:
                raise UserError(f"model.dropout={cfg.model.dropout} and dropout={kwargs['dropout']} in the "
                                "model's kwargs disagree: set it once")
            kwargs["dropout"] = cfg.model.dropout
    if name.startswith("match-"):
        kwargs["teacher"] = cfg.ban.student_teacher_name or cfg.model.teacher or cfg.model.name
    return kwargs


def build_model(cfg: VisionConfig, name: str, data: PreparedData) -> torch.nn.Module:
    return create_model(name, data.num_classes, in_channels=data.in_channels, **model_kwargs(cfg, name))


def generation_model_name(cfg: VisionConfig, generation: int) -> str:
    if generation == 0:
        return cfg.model.name
    return cfg.ban.student_model or cfg.model.name


def load_frozen_teacher(run_dir: Path, cfg: VisionConfig, name: str, data: PreparedData) -> torch.nn.Module:
    """The final model of a finished generation as a new, frozen, eval-mode object."""
    device = resolve_device(cfg.train.device)
    teacher = build_model(cfg, name, data)
    load_weights(teacher, run_dir / "model.safetensors")
    warning = smoothed_teacher_warning(run_dir)
    if warning and current().is_main:
        print(f"bornagain: warning: {warning}", file=sys.stderr, flush=True)
    teacher.requires_grad_(False)
    teacher = teacher.to(device).eval()
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def smoothed_teacher_warning(run_dir: Path) -> str | None:
    """A warning where the teacher in ``run_dir`` was trained with label smoothing (its results.json says so)."""
    results = run_dir / "results.json"
    epsilon = read_json(results).get("label_smoothing", 0.0) if results.is_file() else 0.0
    if not epsilon:
        return None
    return (f"the teacher {run_dir} was trained with train.label_smoothing={epsilon:g}: label-smoothed teachers "
            "distil worse in Mueller et al. 2019 ('When does label smoothing help?': smoothing erases the similarity "
            "between classes that a student learns from). A teacher without it: train one with "
            "train.label_smoothing=0 (bornagain train) and pass its folder as ban.teacher_run, with "
            "ban.teacher_run_other_schedule=true")


def prepare_teacher(teacher: torch.nn.Module, cfg: VisionConfig) -> tuple[torch.nn.Module, int]:
    """The frozen teacher as it runs in the students' steps: batch norms folded (ban.prepare_teacher), in
    channels_last where the students are; (model, batch norms folded). The unprepared teacher stays the one
    whose stem and head a student shares."""
    if not cfg.ban.prepare_teacher:
        return teacher, 0
    folded, n = fold_batch_norms(teacher)
    if cfg.train.channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    return folded, n


def make_student_factory(cfg: VisionConfig, name: str, data: PreparedData, teacher: torch.nn.Module | None):
    """Fresh student; with ban.share_stem_and_head its stem and classifier are the teacher's."""

    def make() -> torch.nn.Module:
        student = build_model(cfg, name, data)
        if teacher is not None and cfg.ban.share_stem_and_head:
            share_stem_and_head(teacher, student, freeze=not cfg.ban.train_shared_layers)
        return student

    return make


def start_warning(student: dict, teacher: dict | None, num_classes: int, *, normalized: bool = True) -> str | None:
    """A student that starts far behind its teacher, from the two runs' first-epoch records.

    Symptom (issue seen with confident teachers): the teacher's near one-hot targets make the KL
    term about as large as the label cross-entropy, so BAN+L's summed loss doubles the gradient at
    the recipe's learning rate and the student's first epoch collapses. Flagged when the student's
    first-epoch training accuracy is below half the teacher's, or its label loss is still near
    chance (>= 0.9 ln C) while the teacher's was not.
    """
    if student.get("epoch") != 1 or teacher is None:
        return None
    acc_s, acc_t = student["train_accuracy"], teacher["train_accuracy"]
    chance = math.log(num_classes)
    at_chance = student["train_label_loss"] >= 0.9 * chance > teacher["train_label_loss"]
    if not (acc_s < 0.5 * acc_t or at_chance):
        return None
    started = (f"this student started badly: first-epoch training accuracy {acc_s:.1f}% against its teacher's "
               f"{acc_t:.1f}% (label loss {student['train_label_loss']:.2f}, chance {chance:.2f}). ")
    if not normalized:  # the paper's summed weights: the usual cause, with its usual fix
        return started + ("A confident teacher makes the distillation term as large as the label term and the summed "
                          "loss overshoots at this lr; set ban.normalize_loss_weights=true (the default), or "
                          "ban.student_warmup_epochs=1 (or more), or lower train.lr")
    return started + "The loss weights are already normalised: set ban.student_warmup_epochs=1 (or more), or lower train.lr"


def _first_record(run_dir: Path) -> dict | None:
    records = read_metrics(run_dir / "metrics.jsonl")
    return records[0] if records else None


def check_before_training(cfg: VisionConfig, data: PreparedData) -> None:
    """Build every architecture on the meta device (no memory) and check the shared layers fit:
    a bad model name or a student that cannot take its teacher's layers fails before any training."""
    check_flips(cfg, data)
    with torch.device("meta"):
        teacher = build_model(cfg, cfg.model.name, data)
        if cfg.ban.generations > 0:
            student = build_model(cfg, generation_model_name(cfg, 1), data)
            if cfg.ban.share_stem_and_head:
                check_shareable(teacher, student)


def run_train(cfg: VisionConfig, output: Path, *, resume: bool) -> dict:
    """`bornagain train`: one classifier from its labels in ``output`` (results.json)."""
    data = prepare_data(cfg.data, cfg.seed)
    check_flips(cfg, data)  # flip TTA on digits: refused before anything is written
    with torch.device("meta"):
        build_model(cfg, cfg.model.name, data)  # a bad model name fails before anything is written
    spec = RunSpec(name="train", model_name=cfg.model.name, seed=cfg.seed, loss_fn=label_loss)
    cfg, speed = resolve_vision_speed(cfg, output)
    return fit(output, cfg, data, spec, lambda: build_model(cfg, cfg.model.name, data), resume=resume, speed=speed)


def run_ban(cfg: VisionConfig, output: Path, *, resume: bool, plots: bool = True, speed: dict | None = None) -> dict:
    """Train (or resume) the teacher, the generations and the optional baseline; write results, tables and
    (``plots``) the plots. ``auto`` speed settings are resolved first (the values ``output`` recorded, where it
    has a record), so the sequence records what it chose; ``speed``: choices already made (a seed of ban.seeds)."""
    resolved, choices = resolve_vision_speed(cfg, output)
    cfg, speed = resolved, speed or choices
    if resume:
        cfg = keep_explicit_compile(cfg, output)
    if cfg.ban.seeds is not None:  # one sequence per seed, then their aggregate
        return run_seeds(cfg, output, resume=resume, speed=speed)
    main = current().is_main
    with command_dir(output, main=main), tracked(cfg, output, main=main):
        return _run_ban(cfg, output, resume=resume, plots=plots, speed=speed)


run = run_ban  # the pipeline's entry point: run(cfg, output, *, resume)


def seed_config(cfg: VisionConfig, seed: int, output: Path) -> VisionConfig:
    """The config of one seed's run: seed=s, no ban.seeds, its own output directory."""
    return dataclasses.replace(cfg, seed=seed, output_dir=str(output / f"seed-{seed}"),
                               ban=dataclasses.replace(cfg.ban, seeds=None))


def seed_started(run_dir: Path, sub: VisionConfig, *, resume: bool) -> bool:
    """Whether one seed's sequence continues (True) or starts fresh: a seed not started yet starts fresh, a started
    one continues and must have the same config. Rank 0 decides for every rank (its own seed-<s>/.lock could
    otherwise make another rank see a used directory and refuse it)."""
    def decide() -> bool:
        started = resume and run_dir.is_dir() and any(run_dir.iterdir())
        check_command_dir(run_dir, vision_settings(sub), resume=started)
        return started

    return decided_by_rank0(decide)


def run_seeds(cfg: VisionConfig, output: Path, *, resume: bool, speed: dict | None = None) -> dict:
    """Run (or continue) every seed's sequence in order, then write the aggregate at ``output``."""
    main = current().is_main
    with command_dir(output, main=main), tracked(cfg, output, main=main):  # seeds nest under the sweep's tracker run
        if cfg.ban.teacher_run:  # every seed's teacher checked before the sweep records itself (a typo leaves nothing)
            for seed in cfg.ban.seeds:
                check_teacher_run(seed_config(cfg, seed, output), output / f"seed-{seed}")
        record_command(output, vision_settings(cfg), config_to_dict(cfg), main=main)
        seed_dirs = []
        for seed in cfg.ban.seeds:
            run_dir = output / f"seed-{seed}"
            sub = seed_config(cfg, seed, output)
            started = seed_started(run_dir, sub, resume=resume)
            if main:
                print(f"bornagain ban: seed {seed} -> {run_dir}", flush=True)
            run_ban(sub, run_dir, resume=started, plots=False, speed=speed)  # the aggregate draws every seed at once
            seed_dirs.append(run_dir)
        agg = aggregate(seed_dirs, labels=[d.name for d in seed_dirs])
        if main:
            write_aggregate(agg, seed_dirs, output)
        barrier()
    return agg


def _run_ban(cfg: VisionConfig, output: Path, *, resume: bool, plots: bool = True, speed: dict | None = None) -> dict:
    # the teacher first: a missing one is refused before the data are downloaded
    teacher_dir = check_teacher_run(cfg, output) if cfg.ban.teacher_run else None  # a local folder (hf:// fetched)
    data = prepare_data(cfg.data, cfg.seed)
    check_before_training(cfg, data)
    if teacher_dir is not None:
        check_teacher_data(teacher_dir, cfg, data)
    main = current().is_main
    record_command(output, vision_settings(cfg), config_to_dict(cfg), main=main)  # its own checks passed
    if teacher_dir is not None and main:
        pin_teacher(output, teacher_run_dir(cfg), teacher_dir)  # hf://: --resume keeps this commit ({seed} filled)

    generations = []
    teacher = None
    student_loss = cfg.ban.student_loss()
    run_dirs = [teacher_dir or output / "gen0"]
    run_dirs += [output / f"gen{g}" for g in range(1, cfg.ban.generations + 1)]
    for g, run_dir in enumerate(run_dirs):
        name = generation_model_name(cfg, g)
        if g == 0 and cfg.ban.teacher_run:
            generations.append(_reuse_teacher(run_dir))
            teacher = load_frozen_teacher(run_dir, cfg, name, data)
            continue
        loss = student_loss if g else label_loss
        taught_by, folded = prepare_teacher(teacher, cfg) if teacher is not None else (None, 0)
        spec = RunSpec(
            name=f"gen{g}", model_name=name, seed=derive_seed(cfg.seed, "generation", g),
            loss_fn=loss, teacher=taught_by, teacher_name=generation_model_name(cfg, g - 1) if g else None,
            extra={"generation": g, "loss": loss.preset.name, "label_weight": loss.label_weight,
                   "teacher_weight": loss.teacher_weight, "temperature": loss.temperature,
                   "teacher_dir": f"gen{g - 1}" if g else None, "teacher_batch_norms_folded": folded,
                   "teacher_precision": (cfg.ban.teacher_precision or cfg.train.precision) if g else None,
                   "warmup_epochs": cfg.ban.student_warmup_epochs if g else 0.0},
            warmup_epochs=cfg.ban.student_warmup_epochs if g else 0.0,
            epoch_check=_start_check(run_dirs[g - 1], data.num_classes, cfg.ban.normalize_loss_weights) if g else None,
        )
        result = fit(run_dir, _run_config(cfg, name), data, spec, make_student_factory(cfg, name, data, teacher),
                     resume=resume, speed=speed)
        generations.append(result)
        if g < len(run_dirs) - 1:
            teacher = load_frozen_teacher(run_dir, cfg, name, data)  # the next generation's frozen teacher

    baseline = None
    if cfg.ban.student_baseline:
        name = generation_model_name(cfg, 1)
        spec = RunSpec(name="baseline", model_name=name, seed=derive_seed(cfg.seed, "baseline"), loss_fn=label_loss,
                       extra={"generation": None, "loss": "ce"})
        baseline = fit(output / "baseline", _run_config(cfg, name), data, spec,
                       make_student_factory(cfg, name, data, None), resume=resume, speed=speed)

    controls = run_controls(cfg, output, data, run_dirs[0], run_config=lambda name: _run_config(cfg, name),
                            model_factory=lambda name: make_student_factory(cfg, name, data, None), resume=resume)
    results = summarize(cfg, run_dirs, data, generations, baseline, controls, output=output)
    if speed:  # the sequence's choices (each generation's results.json adds its own compile decision)
        results["speed"] = {k: c.as_dict() for k, c in speed.items()}
    if main:
        write_json(output / "results.json", results)
        write_tables([results], output)
        if plots:
            plot_run(output, results, PNG_ONLY)  # PDFs too: `bornagain report OUTPUT --plots`
    barrier()
    return results


def _start_check(teacher_dir: Path, num_classes: int, normalized: bool):
    teacher_first = _first_record(teacher_dir)

    def check(record: dict) -> list[str]:
        text = start_warning(record, teacher_first, num_classes, normalized=normalized)
        return [text] if text else []

    return check


def _run_config(cfg: VisionConfig, name: str) -> VisionConfig:
    """The config a single generation's run directory records (its own model name)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name))


def teacher_shaping(cfg: VisionConfig, *, schedule: bool) -> dict:
    """What shaped the training of a run of ``cfg.model.name``, as dotted keys: the split seed, the data, the
    options its model was built with (models.model_options: ``model.dropout`` only where the architecture
    takes it, so the DenseNet teacher of a Table 2 recipe never sees the dropout that recipe sets for its WRN
    students; a family default given or not is the same) and, with ``schedule``, ``train.*``. Not ``ban.*``:
    a teacher learns from its labels alone."""
    name = cfg.model.name
    tree = {"seed": cfg.seed, "data": config_to_dict(cfg.data),
            "model": {"name": name, "kwargs": model_options(name, **model_kwargs(cfg, name))}}
    if schedule:
        tree["train"] = config_to_dict(cfg.train)
    return flatten(tree)


def check_teacher_run(cfg: VisionConfig, output: Path | None = None) -> Path:
    """Refuse a `ban.teacher_run` that is not this sequence's teacher, before anything is written: not finished,
    another model, or trained on other data (another split seed could put this run's validation images in its
    training set), with other model arguments or, unless `ban.teacher_run_other_schedule`, with another
    schedule. The run's recorded config is read as it was made (keys added since take their values of then).
    Names the keys. The run is a run directory or a folder `bornagain export` wrote (hf://OWNER/NAME: fetched from
    the hub first, at the commit ``output`` pinned where it has one); returns its local folder."""
    run_dir, name = local_teacher(teacher_run_dir(cfg), output), generation_model_name(cfg, 0)
    if not is_finished(run_dir):
        raise UserError(unfinished_teacher_message(run_dir, name))
    result = read_json(run_dir / "results.json")
    if "generations" in result or result.get("kind") == "ban-seeds":  # a sequence (or a sweep), not one network
        inner = "seed-{seed}/gen0" if result.get("kind") == "ban-seeds" else "gen0"  # a sweep: one teacher a seed
        raise UserError(f"ban.teacher_run={run_dir} is a `bornagain ban` run, not one network: point it at the "
                        f"teacher inside, ban.teacher_run={run_dir}/{inner}")
    if result.get("model") != name:
        raise UserError(f"ban.teacher_run={run_dir} holds a {result.get('model')} but model.name={name}: "
                        "point it at a run of the same model")
    tree = teacher_config_tree(run_dir)  # config.yaml, or an exported folder's config.json
    try:
        theirs = recorded_config(VisionConfig, tree)
    except UserError as e:
        raise UserError(f"ban.teacher_run={run_dir}: its recorded config cannot be read ({e}); point it at a run made "
                        "by `bornagain ban` or `bornagain train`") from None
    schedule = not cfg.ban.teacher_run_other_schedule
    before, now = teacher_shaping(theirs, schedule=schedule), teacher_shaping(_run_config(cfg, name), schedule=schedule)
    # how it ran (device, precision, threads, ...) and where its data lay: declared on the keys (may_differ)
    changed = changed_keys(before, now, ignore=keys_that_may_differ(VisionConfig, "teacher"))
    if changed:
        schedule = [k for k in changed if k.startswith("train.")]
        hint = (" (a deliberately different teacher schedule is allowed with ban.teacher_run_other_schedule=true)"
                if schedule and len(schedule) == len(changed) else "")
        raise UserError(f"ban.teacher_run={run_dir} was trained with other settings than this run "
                        f"({describe_changes(before, now, changed)}): use a teacher of the same data and split{hint}")
    return run_dir


def check_teacher_data(run_dir: Path, cfg: VisionConfig, data: PreparedData) -> None:
    """Refuse a teacher evaluated on another test set than this run's data, before anything is written: the config
    check leaves data.root free (where the data lie), yet another folder (or data.name=hf, whose root is the
    dataset) may hold another dataset of the same classes. The teacher's test labels (n,) must be this run's."""
    _, labels = load_probs(run_dir / "test_probs.safetensors")
    if labels.shape != data.test_labels.shape or not torch.equal(labels, data.test_labels.to(labels.dtype)):
        raise UserError(f"ban.teacher_run={cfg.ban.teacher_run} was evaluated on another test set than "
                        f"data.root={cfg.data.root or cfg.data.name} ({labels.shape[0]} test labels, this data "
                        f"{data.test_labels.shape[0]}, not the same): use a teacher trained on this dataset")


def _reuse_teacher(run_dir: Path) -> dict:
    """Generation 0 from an earlier finished run (ban.teacher_run, checked by check_teacher_run)."""
    return {**read_json(run_dir / "results.json"), "generation": 0, "teacher_run": str(run_dir)}


def check_output_dir(output: Path, cfg: VisionConfig, *, resume: bool) -> None:
    """Refuse to mix runs: a used directory needs --resume, and --resume needs the same config (how it ran may
    change, and controls may be added to a finished sequence: declared on the keys, may_differ "resume"). An
    ``auto`` setting is compared as it resolves for this directory (its recorded value)."""
    check_command_dir(output, vision_settings(resolve_vision_speed(cfg, output)[0]), resume=resume)
