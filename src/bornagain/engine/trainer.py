"""THE training loop, for every pipeline (a BAN generation, a baseline, a GLUE teacher, a BAM student).

A pipeline supplies a :class:`Task` (how to build the model and its optimiser, the batches of
an epoch, the loss of a batch, the evaluation at the end of an epoch, the final outputs); the
engine owns everything else, written once:

    device and precision (autocast)        seeding, and every rank's RNG state on resume
    optimiser, scheduler, gradient clip    step-level checkpoints (every N steps, each epoch end)
    metrics.jsonl + TensorBoard            progress bars
    DDP (torchrun)                         SIGTERM/SIGINT -> checkpoint and a clean exit
    non-finite loss guard                  one process per run directory (lock)
    finish: model.safetensors, results.json (written last: the one "finished" marker), checkpoint removed

Run directory (every kind of run):

    config.yaml               the resolved config of the run (written by the pipeline)
    checkpoint.safetensors    whole training state while unfinished (model, optimiser, scheduler,
                              step, epoch, batch in epoch, partial epoch sums, every rank's RNG)
    metrics.jsonl, tb/        step records (every log_every_steps) and one record per epoch
    model.safetensors         final weights (last step: no model selection)
    results.json              written last

A step is one optimiser update. Batches of an epoch are a pure function of (task, epoch, rank),
so a resumed run rebuilds the epoch's list, restores the task's own random state and skips the
batches already done: with a fixed seed and thread count on CPU the result is identical to an
uninterrupted run.

The loop's bookkeeping (position, device-side epoch sums, step records read in batches) is in
records.py; stopping on signals and the test kill hooks in signals.py.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from bornagain.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from bornagain.engine.compile import compile_events, maybe_compile
from bornagain.engine.device import autocast
from bornagain.engine.distributed import DistInfo, all_gather_objects, barrier, current, per_rank_batch, rank_share
from bornagain.files import read_json, write_json
from bornagain.engine.lock import run_lock
from bornagain.engine.run_log import RunLogger, progress, read_metrics
from bornagain.engine.records import READ_EVERY_STEPS, EpochProgress, PendingRecords, StepOutput
from bornagain.engine.signals import SignalFlag, fault_injection
from bornagain.engine.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from bornagain.errors import UserError

CHECKPOINT = "checkpoint.safetensors"
RESULTS = "results.json"
WEIGHTS = "model.safetensors"


class TrainingInterrupted(UserError):
    """SIGTERM/SIGINT arrived: the current step finished, a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to know about how to run (the config's shared training section)."""

    device: torch.device
    precision: str = "fp32"
    seed: int = 0
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this (0: no clipping)."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N steps (0: only at epoch ends)."""
    log_every_steps: int = 0
    """Write a step record every N steps (0: epoch records only)."""
    progress: bool = True
    tensorboard: bool = True
    compile: bool = False
    """torch.compile the trained model (engine/compile.py); the time of the steps that compiled (the first,
    and any that met a new shape) is reported as compile_seconds and left out of the training time."""
    compile_mode: str = "default"


class Task(Protocol):
    """What a pipeline gives the engine for one run.

    Optional members, read where present: ``batch_size`` (the global batch, every rank's examples of a step
    together) with ``batch_key`` (the config key that sets it): the engine refuses a batch the ranks cannot
    share and writes results.json's ``per_rank_batch``; ``evaluate_on_every_rank`` and
    ``find_unused_parameters`` (False); ``state_dict()`` / ``load_state_dict(state)`` (the task's own random
    state, kept in every checkpoint).
    """

    name: str  # "gen1", "RTE teacher", "annealed seed 0": in logs, progress bars, fault injection
    epochs: int

    def build_model(self) -> torch.nn.Module: ...

    def build_optimizer(self, model: torch.nn.Module, steps_per_epoch: int
                        ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]: ...

    def epoch_batches(self, epoch: int, dist: DistInfo) -> Sequence:
        """Every batch of ``epoch`` for this rank (each rank its slice of the global batch);
        the same list on a rebuild. May reseed the task's own generators."""

    def loss(self, model: torch.nn.Module, batch: Any, step: int) -> StepOutput: ...

    def evaluate(self, model: torch.nn.Module, epoch: int) -> dict:
        """Metrics at the end of ``epoch`` (the model is in eval mode under no_grad). Rank 0 only, unless
        the task sets ``evaluate_on_every_rank = True``: then every rank calls it (to share the work;
        the task gathers) and rank 0's metrics are logged."""

    def finish(self, model: torch.nn.Module, run_dir: Path) -> dict:
        """Write the run's own outputs (rank 0 only) and return its fields of results.json."""


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULTS).is_file()


def finished_results(run_dir: str | Path) -> dict | None:
    """results.json of a finished run (never retrained), else None."""
    return read_json(Path(run_dir) / RESULTS) if is_finished(run_dir) else None


def train(run_dir: str | Path, task: Task, settings: EngineSettings, *, resume: bool,
          epoch_check=None) -> dict:
    """Train ``task`` in ``run_dir`` (or continue it from its checkpoint with ``resume``); return results.json.

    ``epoch_check(record) -> list[str]`` may return warnings about an epoch: they are printed,
    kept in that epoch's record and gathered into results.json["warnings"].
    """
    run_dir = Path(run_dir)
    if resume and is_finished(run_dir):
        return finished_results(run_dir)
    dist = current()
    _per_rank_batch(task, dist)  # a batch the ranks cannot share: refused before anything is written
    with run_lock(run_dir, enabled=dist.is_main):
        return _train_locked(run_dir, task, settings, dist, resume=resume, epoch_check=epoch_check)


def _per_rank_batch(task: Task, dist: DistInfo) -> int | None:
    """The examples a rank takes of the task's global batch (None where the task declares no batch_size)."""
    size = getattr(task, "batch_size", None)
    return None if size is None else per_rank_batch(size, dist, getattr(task, "batch_key", "batch_size"))


def _train_locked(run_dir: Path, task: Task, settings: EngineSettings, dist: DistInfo, *, resume: bool,
                  epoch_check) -> dict:
    main, device = dist.is_main, settings.device
    seed_everything(settings.seed)
    model = task.build_model().to(device)  # fresh init from this run's seed, the same on every rank
    if dist.rank > 0:  # other dropout masks than rank 0's; rank 0 keeps the single-process stream
        seed_everything(derive_seed(settings.seed, "rank", dist.rank))
    probe = task.epoch_batches(0, dist)
    steps_per_epoch = len(probe)
    optimizer, scheduler = task.build_optimizer(model, steps_per_epoch)
    logger = RunLogger(run_dir, tensorboard=settings.tensorboard, enabled=main)

    state = EpochProgress()
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.exists():
        extra = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, restore_rng=False)
        state = EpochProgress.from_extra(extra, device)
        rank_states = extra["ranks"]
        if len(rank_states) != dist.world_size:
            raise UserError(f"checkpoint '{ckpt}' was written by {len(rank_states)} process(es) but this run has "
                            f"{dist.world_size}: resume with the same number of processes")
        mine = rank_states[dist.rank]
        restore_rng_state(mine["rng"])
        if "sums" in mine:  # this rank's share of the epoch's running sums (the epoch record reduces them)
            state.restore_sums(mine, device)
        batches = task.epoch_batches(state.epoch, dist)  # rebuilds the epoch, then its generators' states
        if hasattr(task, "load_state_dict"):
            task.load_state_dict(mine["task"])
    else:
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        batches = probe
    # Drop what a killed run logged after its checkpoint (everything, on a fresh start). Step records carry
    # the 0-based index of their update, epoch records the number of updates done.
    done = state.step
    logger.truncate_after(done, keep=lambda r: r["step"] <= done if "epoch_seconds" in r else r["step"] < done)

    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=getattr(task, "find_unused_parameters", False))
    train_model, compiled = maybe_compile(train_model, enabled=settings.compile, mode=settings.compile_mode,
                                          announce=main)
    first_step = compiled  # this process's first step compiles; so does any step that recompiles (a new shape)

    def checkpoint() -> None:
        # Every rank's RNG and task state travel to rank 0, which writes one file.
        rank_state = {"rng": capture_rng_state(), **state.sums_to_extra(),
                      "task": task.state_dict() if hasattr(task, "state_dict") else {}}
        ranks = all_gather_objects(rank_state)
        if main:
            _save(ckpt, model, optimizer, scheduler, state.to_extra() | {"ranks": ranks})
        barrier()

    stop = SignalFlag()
    pending = PendingRecords()
    with stop:
        while state.epoch < task.epochs:
            model.train()
            t0 = time.perf_counter()
            todo = progress(range(state.batch, len(batches)), total=len(batches) - state.batch,
                            desc=f"{task.name} epoch {state.epoch + 1}/{task.epochs}", enabled=settings.progress and main)
            for b in todo:
                if b == 0:
                    state.lr = optimizer.param_groups[0]["lr"]  # the epoch record's lr: its first step's
                fault_injection(state.step, task.name)
                if compiled:
                    t_step, events = time.perf_counter(), compile_events()
                out, grad_norm, lr = train_step(train_model, task, batches[b], state.step, optimizer, scheduler, settings,
                                                dist=dist)
                if compiled and (first_step or compile_events() != events):
                    _sync(device)
                    spent = time.perf_counter() - t_step
                    state.compile_seconds += spent  # a step that compiled: compile time, not training time
                    t0 += spent
                    first_step = False
                state.add(out, grad_norm)
                state.step, state.batch = state.step + 1, b + 1
                if settings.log_every_steps and state.step % settings.log_every_steps == 0:
                    pending.add(state.step - 1, out, grad_norm, lr)  # the 0-based step; read in batches
                    if len(pending) >= READ_EVERY_STEPS:
                        state.check_finite(task.name)
                        pending.write(logger)
                every = settings.checkpoint_every_steps
                stopping = stop.requested(dist, state.step)
                if stopping or (every and state.step % every == 0 and b + 1 < len(batches)):
                    state.check_finite(task.name)
                    pending.write(logger)
                    state.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    checkpoint()
                    if stopping:
                        logger.close()
                        raise TrainingInterrupted(
                            f"{signal.Signals(stop.signum).name} received: {task.name} stopped after step {state.step}"
                            f" and wrote {ckpt}; continue with --resume", stop.signum)
            state.check_finite(task.name)
            pending.write(logger)
            seconds = state.seconds + time.perf_counter() - t0
            record = state.epoch_record(dist, device, seconds)
            if main or getattr(task, "evaluate_on_every_rank", False):
                model.eval()
                with torch.no_grad():
                    metrics = task.evaluate(model, state.epoch)
            if main:
                record.update(metrics)
                warnings = epoch_check(record) if epoch_check is not None else []
                if warnings:
                    record["warnings"] = warnings
                    for text in warnings:
                        print(f"bornagain: warning: {text}", flush=True)
            logger.log(record, step=state.step)
            logger.flush()
            if settings.progress and main:
                print(_epoch_line(task.name, record), flush=True)
            state.next_epoch()
            # the next epoch's batches now, so the checkpoint holds its fresh generators' states
            batches = task.epoch_batches(state.epoch, dist) if state.epoch < task.epochs else []
            checkpoint()
    logger.close()
    if main:
        _finish(run_dir, task, model, dist, compile_seconds=state.compile_seconds if compiled else None)
    barrier()  # the other ranks read what rank 0 wrote
    return read_json(run_dir / RESULTS)


def train_step(model, task: Task, batch, step: int, optimizer, scheduler, settings: EngineSettings, *,
               dist: DistInfo | None = None):
    """One optimiser update: forward under autocast, backward, clip, step, lr step.

    A task's loss is the mean over its rank's examples. Under torchrun the ranks' slices of a global batch can
    differ in size (17 examples on 2 ranks: 9 and 8) while DistributedDataParallel averages their gradients
    with equal weights, so the loss that is differentiated is weighted by the rank's share of the step's
    examples (rank_share: exactly 1.0 for equal slices): the gradient is the global-batch mean's."""
    with autocast(settings.device, settings.precision):
        out = task.loss(model, batch, step)
    optimizer.zero_grad(set_to_none=True)
    loss = out.loss
    if dist is not None and dist.enabled:
        loss = loss * rank_share(out.count, dist, loss.device)
    loss.backward()
    grad_norm = None
    if settings.max_grad_norm > 0:
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    lr = optimizer.param_groups[-1]["lr"]  # the lr this update uses (last group: task heads at the full lr)
    optimizer.step()
    scheduler.step()
    return out, grad_norm, lr


def _epoch_line(name: str, record: dict) -> str:
    shown = " ".join(f"{k} {v:.4g}" for k, v in record.items()
                     if k in ("train_loss", "train_accuracy", "val_accuracy", "dev_score") and isinstance(v, float))
    return f"[{name}] epoch {record['epoch']} {shown}"


def _save(path: Path, model, optimizer, scheduler, extra: dict) -> None:
    try:
        save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, extra=extra, with_rng=False)
    except OSError as e:
        raise UserError(f"could not write the checkpoint {path} ({e.strerror or e}); the previous checkpoint is "
                        "intact. Free disk space or fix the folder's permissions, then --resume") from None


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (only where timing it needs it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finish(run_dir: Path, task: Task, model: torch.nn.Module, dist: DistInfo, *,
            compile_seconds: float | None = None) -> None:
    """Final weights, the task's outputs, results.json (last), checkpoint removed."""
    save_weights(model, run_dir / WEIGHTS)
    model.eval()
    results = task.finish(model, run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    epochs = [r for r in records if "epoch" in r and "train_loss" in r]
    per_rank = _per_rank_batch(task, dist)
    results = {
        **results,
        "reported_epoch": "last",  # never a best epoch: nothing is selected on the evaluation data
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in epochs),  # survives a resume
        "warnings": [text for r in epochs for text in r.get("warnings", [])],
        "world_size": dist.world_size,
        **({} if per_rank is None else {"per_rank_batch": per_rank}),
        **({} if compile_seconds is None else {"compile_seconds": compile_seconds}),
    }
    write_json(run_dir / RESULTS, results)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the final weights replace the resume point
