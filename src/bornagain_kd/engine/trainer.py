"""THE training loop, for every pipeline (a BAN generation, a baseline, a GLUE teacher, a BAM student).

A pipeline supplies a :class:`Task` (how to build the model and its optimiser, the batches of
an epoch, the loss of a batch, the evaluation at the end of an epoch, the final outputs); the
engine owns everything else, written once:

    device and precision (autocast)        seeding, and every rank's RNG state on resume
    optimiser, scheduler, gradient clip    step-level checkpoints (every N steps, each epoch end)
    metrics.jsonl + trackers (TB, MLflow)  progress bars
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

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from bornagain_kd.engine.averaging import AveragingSettings, WeightAverage
from bornagain_kd.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from bornagain_kd.engine.compile import compile_events, maybe_compile
from bornagain_kd.engine.device import autocast
from bornagain_kd.engine.distributed import (
    DistInfo, all_gather_objects, barrier, current, decided_by_rank0, per_rank_batch, rank_share,
)
from bornagain_kd.files import read_json, write_json
from bornagain_kd.engine.lock import run_lock
from bornagain_kd.engine.run import CHECKPOINT, RESULTS, is_finished, reuse_finished
from bornagain_kd.engine.run_log import RunLogger, progress, read_metrics
from bornagain_kd.engine.records import READ_EVERY_STEPS, EpochProgress, PendingRecords, StepOutput
from bornagain_kd.engine.signals import SignalFlag, fault_injection
from bornagain_kd.engine.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from bornagain_kd.errors import UserError

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
    trackers: tuple[str, ...] = ("tensorboard",)
    """Where records go besides metrics.jsonl: tensorboard, mlflow, wandb (engine/trackers.py)."""
    compile: bool = False
    """torch.compile the trained model (engine/compile.py); the time of the steps that compiled (the first,
    and any that met a new shape) is reported as compile_seconds and left out of the training time."""
    compile_mode: str = "default"
    sync_batchnorm: bool = False
    """Under DDP, batch norms over the global batch (torch.nn.SyncBatchNorm; CUDA only)."""
    averaging: AveragingSettings = AveragingSettings()
    """Weight EMA or lookahead (engine/averaging.py): evaluation, final weights and test outputs use the average."""


class Task(Protocol):
    """What a pipeline gives the engine for one run.

    Optional members, read where present: ``batch_size`` (the global batch, every rank's examples of a step
    together) with ``batch_key`` (the config key that sets it): the engine refuses a batch the ranks cannot
    share and writes results.json's ``per_rank_batch``; ``evaluate_on_every_rank`` and
    ``find_unused_parameters`` (False); ``compiles`` (False: the task compiles something of its own, a frozen
    teacher, whose compiling steps are timed apart from training as the model's are);
    ``state_dict()`` / ``load_state_dict(state)`` (the task's own random
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
        """Write the run's own outputs (rank 0 only) and return its fields of results.json. Optional before it,
        ``predict_on_every_rank(model)``: called on every rank with the final model in eval mode, for the long
        predictions the ranks share (each predicts a share, the outputs gathered), so no rank waits at a barrier
        while rank 0 alone predicts a training set (a process group's timeout is minutes: train.dist_timeout)."""


def train(run_dir: str | Path, task: Task, settings: EngineSettings, *, resume: bool,
          epoch_check=None) -> dict:
    """Train ``task`` in ``run_dir`` (or continue it from its checkpoint with ``resume``); return results.json.

    ``epoch_check(record) -> list[str]`` may return warnings about an epoch: they are printed,
    kept in that epoch's record and gathered into results.json["warnings"].
    """
    run_dir = Path(run_dir)
    dist = current()
    if decided_by_rank0(lambda: resume and is_finished(run_dir)):  # every rank takes rank 0's reading
        return reuse_finished(run_dir, main=dist.is_main)
    _per_rank_batch(task, dist)  # a batch the ranks cannot share: refused before anything is written
    with run_lock(run_dir, enabled=dist.is_main):
        return _train_locked(run_dir, task, settings, dist, resume=resume, epoch_check=epoch_check)


def _per_rank_batch(task: Task, dist: DistInfo) -> int | None:
    """The examples a rank takes of the task's global batch (None where the task declares no batch_size)."""
    size = getattr(task, "batch_size", None)
    return None if size is None else per_rank_batch(size, dist, getattr(task, "batch_key", "batch_size"))


def _train_locked(run_dir: Path, task: Task, settings: EngineSettings, dist: DistInfo, *, resume: bool,
                  epoch_check) -> dict:
    loop = _Loop(run_dir, task, settings, dist, epoch_check)
    loop.start(resume=resume)
    try:
        with loop.stop:
            while loop.state.epoch < task.epochs:
                loop.run_epoch()
        if loop.average is not None:  # the run's weights are the average from here on (every rank alike)
            loop.average.copy_to(loop.model)
        shared = getattr(task, "predict_on_every_rank", None)
        if shared is not None:  # every rank, with the final weights: the finish's long predictions, sharded
            loop.model.eval()
            with torch.no_grad():
                shared(loop.model)
        if dist.is_main:
            _finish(run_dir, task, loop.model, dist,
                    compile_seconds=loop.state.compile_seconds if loop.watch_compiles else None,
                    averaging=settings.averaging)
    except BaseException:
        loop.logger.close("FAILED")  # a stop on a signal closed it already (KILLED): then a no-op
        raise
    loop.logger.close("FINISHED")  # the trackers log results.json and the run's files
    barrier()  # the other ranks read what rank 0 wrote
    return read_json(run_dir / RESULTS)


class _Loop:
    """One run's training state between its steps: model, optimiser, scheduler, log, position, epoch sums."""

    def __init__(self, run_dir: Path, task: Task, settings: EngineSettings, dist: DistInfo, epoch_check):
        self.run_dir, self.task, self.settings, self.dist, self.epoch_check = run_dir, task, settings, dist, epoch_check
        self.main, self.device = dist.is_main, settings.device
        self.ckpt = run_dir / CHECKPOINT
        self.stop = SignalFlag()
        self.pending = PendingRecords()

    def start(self, *, resume: bool) -> None:
        """Build the model (fresh init from the run's seed), its optimiser and log; restore the checkpoint."""
        task, settings, dist = self.task, self.settings, self.dist
        seed_everything(settings.seed)
        self.model = task.build_model().to(self.device)  # fresh init from this run's seed, the same on every rank
        if dist.rank > 0:  # other dropout masks than rank 0's; rank 0 keeps the single-process stream
            seed_everything(derive_seed(settings.seed, "rank", dist.rank))
        probe = task.epoch_batches(0, dist)
        self.optimizer, self.scheduler = task.build_optimizer(self.model, len(probe))
        self.logger = RunLogger(self.run_dir, trackers=settings.trackers, enabled=self.main)
        self.state = EpochProgress()
        self.average = (WeightAverage(self.model, settings.averaging, task.epochs * len(probe))
                        if settings.averaging.enabled else None)
        if resume and self.ckpt.exists():
            self.batches = self._restore()
            if self.main:
                where = (f"epoch {self.state.epoch + 1}, batch {self.state.batch} of {len(self.batches)}"
                         if self.state.batch < len(self.batches) else "all epochs done: finishing")
                print(f"bornagain: resuming {self.run_dir} from step {self.state.step} ({where})", flush=True)
        else:
            if self.main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            self.batches = probe
        # Drop what a killed run logged after its checkpoint (everything, on a fresh start). Step records carry
        # the 0-based index of their update, epoch records the number of updates done.
        done = self.state.step
        self.logger.truncate_after(done, keep=lambda r: r["step"] <= done if "epoch_seconds" in r else r["step"] < done)
        self.train_model, self.compiled = self._wrap()
        # steps that compile (the model's, or what the task compiles itself) are timed apart from training
        self.watch_compiles = self.compiled or bool(getattr(task, "compiles", False))
        self.first_step = self.watch_compiles  # this process's first step compiles; so does any that meets a new shape

    def _restore(self) -> Sequence:
        """Position, sums, this rank's RNG and task state from the checkpoint; the epoch's batches rebuilt."""
        dist = self.dist
        extra = load_checkpoint(self.ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                restore_rng=False)
        self.state = EpochProgress.from_extra(extra, self.device)
        rank_states = extra["ranks"]
        if len(rank_states) != dist.world_size:
            raise UserError(f"checkpoint '{self.ckpt}' was written by {len(rank_states)} process(es) but this run has "
                            f"{dist.world_size}: resume with the same number of processes")
        mine = rank_states[dist.rank]
        restore_rng_state(mine["rng"])
        if self.average is not None:
            if "weight_average" not in extra:
                raise UserError(f"checkpoint '{self.ckpt}' holds no weight average (train.weight_averaging was off "
                                "when it was written): resume with the setting the run started with")
            self.average.load_state_dict(extra["weight_average"])
        if "sums" in mine:  # this rank's share of the epoch's running sums (the epoch record reduces them)
            self.state.restore_sums(mine, self.device)
        batches = self.task.epoch_batches(self.state.epoch, dist)  # rebuilds the epoch, then its generators' states
        if hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(mine["task"])
        return batches

    def _wrap(self) -> tuple[torch.nn.Module, bool]:
        """The model the steps run: under DDP when there is a process group, compiled where asked."""
        train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if self.settings.sync_batchnorm:  # the optimizer holds these parameters: the modules change, not them
                train_model = self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            note = batch_norm_note(self.model, getattr(self.task, "batch_size", None), self.dist.world_size,
                                   synced=self.settings.sync_batchnorm)
            if note and self.main:
                print(f"bornagain: warning: {self.task.name}: {note}", flush=True)
            train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(self.task, "find_unused_parameters", False))
        return maybe_compile(train_model, enabled=self.settings.compile, mode=self.settings.compile_mode,
                             announce=self.main)

    def _averaged(self):
        """The averaged weights in the model for an evaluation (a no-op without averaging)."""
        return self.average.applied(self.model) if self.average is not None else contextlib.nullcontext()

    def checkpoint(self) -> None:
        # Every rank's RNG and task state travel to rank 0, which writes one file.
        task = self.task
        rank_state = {"rng": capture_rng_state(), **self.state.sums_to_extra(),
                      "task": task.state_dict() if hasattr(task, "state_dict") else {}}
        ranks = all_gather_objects(rank_state)
        if self.main:
            average = {} if self.average is None else {"weight_average": self.average.state_dict()}
            _save(self.ckpt, self.model, self.optimizer, self.scheduler,
                  self.state.to_extra() | {"ranks": ranks} | average)
        barrier()

    def run_epoch(self) -> None:
        """The rest of this epoch's steps, then its record and a checkpoint."""
        task, state, settings = self.task, self.state, self.settings
        self.model.train()
        self.t0 = time.perf_counter()
        todo = progress(range(state.batch, len(self.batches)), total=len(self.batches) - state.batch,
                        desc=f"{task.name} epoch {state.epoch + 1}/{task.epochs}", enabled=settings.progress and self.main)
        for b in todo:
            self._step(b)
        state.check_finite(task.name)
        self.pending.write(self.logger)
        self._end_epoch(state.seconds + time.perf_counter() - self.t0)

    def _step(self, b: int) -> None:
        """Batch ``b`` of the epoch: one update, its step record, and a checkpoint when one is due or asked for."""
        task, state, settings = self.task, self.state, self.settings
        if b == 0:
            state.lr = self.optimizer.param_groups[0]["lr"]  # the epoch record's lr: its first step's
        fault_injection(state.step, task.name)
        if self.watch_compiles:
            t_step, events = time.perf_counter(), compile_events()
        out, grad_norm, lr = train_step(self.train_model, task, self.batches[b], state.step, self.optimizer,
                                        self.scheduler, settings, dist=self.dist)
        if self.watch_compiles and (self.first_step or compile_events() != events):
            _sync(self.device)
            spent = time.perf_counter() - t_step
            state.compile_seconds += spent  # a step that compiled: compile time, not training time
            self.t0 += spent
            self.first_step = False
        state.add(out, grad_norm)
        state.step, state.batch = state.step + 1, b + 1
        if self.average is not None:
            self.average.after_step(self.model, state.step)
        if settings.log_every_steps and state.step % settings.log_every_steps == 0:
            self.pending.add(state.step - 1, out, grad_norm, lr)  # the 0-based step; read in batches
            if len(self.pending) >= READ_EVERY_STEPS:
                state.check_finite(task.name)
                self.pending.write(self.logger)
        every = settings.checkpoint_every_steps
        stopping = self.stop.requested(self.dist, state.step)
        if stopping or (every and state.step % every == 0 and b + 1 < len(self.batches)):
            state.check_finite(task.name)
            self.pending.write(self.logger)
            state.seconds += time.perf_counter() - self.t0
            self.t0 = time.perf_counter()
            self.checkpoint()
            if stopping:
                self.logger.close()
                raise TrainingInterrupted(
                    f"{signal.Signals(self.stop.signum).name} received: {task.name} stopped after step {state.step}"
                    f" and wrote {self.ckpt}; continue with --resume", self.stop.signum)

    def _end_epoch(self, seconds: float) -> None:
        """The epoch record (evaluation, warnings), the next epoch's batches, a checkpoint."""
        task, state, main = self.task, self.state, self.main
        record = state.epoch_record(self.dist, self.device, seconds)
        if main or getattr(task, "evaluate_on_every_rank", False):
            self.model.eval()
            with torch.no_grad(), self._averaged():
                metrics = task.evaluate(self.model, state.epoch)
        if main:
            record.update(metrics)
            warnings = self.epoch_check(record) if self.epoch_check is not None else []
            if warnings:
                record["warnings"] = warnings
                for text in warnings:
                    print(f"bornagain: warning: {text}", flush=True)
        self.logger.log(record, step=state.step)
        self.logger.flush()
        if self.settings.progress and main:
            print(_epoch_line(task.name, record), flush=True)
        state.next_epoch()
        # the next epoch's batches now, so the checkpoint holds its fresh generators' states
        self.batches = task.epoch_batches(state.epoch, self.dist) if state.epoch < task.epochs else []
        self.checkpoint()


SMALL_BATCH_NORM_SLICE = 16
"""A process normalising its batch norms over fewer images than this gets a warning (noisy statistics)."""


def batch_norm_note(model: torch.nn.Module, batch_size: int | None, world_size: int, *, synced: bool) -> str | None:
    """The warning for a data-parallel run whose batch norms each normalise over a small slice of the batch, or
    None (no batch norm, synchronised ones, or slices of SMALL_BATCH_NORM_SLICE images or more)."""
    norms = (torch.nn.modules.batchnorm._BatchNorm,)
    if synced or batch_size is None or not any(isinstance(m, norms) for m in model.modules()):
        return None
    per_rank = batch_size // world_size
    if per_rank >= SMALL_BATCH_NORM_SLICE:
        return None
    return (f"each of the {world_size} processes normalises its batch norms over {per_rank} images (the global "
            f"batch {batch_size} split): noisier statistics than one process's, and a step is not the single-process "
            "step; raise train.batch_size, or on GPUs set train.sync_batchnorm=true")


def train_step(model, task: Task, batch, step: int, optimizer, scheduler, settings: EngineSettings, *,
               dist: DistInfo | None = None):
    """One optimiser update: forward under autocast, backward, clip, step, lr step.

    A task's loss is the mean over its rank's examples. Under torchrun the ranks' slices of a global batch can
    differ in size (17 examples on 2 ranks: 9 and 8) while DistributedDataParallel averages their gradients
    with equal weights, so the loss that is differentiated is weighted by the rank's share of the step's
    examples (rank_share: exactly 1.0 for equal slices): the gradient is the global-batch mean's for a model
    without batch norm. A batch norm in training mode normalises each rank's slice by that slice's own statistics
    (unless train.sync_batchnorm), so there the step is not the single-process step (batch_norm_note)."""
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
            compile_seconds: float | None = None, averaging: AveragingSettings = AveragingSettings()) -> None:
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
        # the record says where the weights, the evaluation and the test outputs came from
        **({"weight_averaging": {"mode": averaging.mode, "decay": averaging.decay, "every_steps": averaging.every,
                                 "warmup_power": averaging.warmup_power}} if averaging.enabled else {}),
    }
    write_json(run_dir / RESULTS, results)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the final weights replace the resume point
