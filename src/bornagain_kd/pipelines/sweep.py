"""`bornagain sweep`: seeds x a grid of overrides, one run each, locally one after another or as a SLURM array.

    bornagain sweep ban --config F --output DIR --seeds 0,1,2 train.lr=[0.05,0.1] [key=value ...]
        [--launcher local|slurm|submitit-local] [--slurm-partition P --gpus-per-task G --time MIN ...]

A value in brackets is a grid axis (`train.lr=[0.05,0.1]`), except for a key that takes a list, whose axis is a
list of lists (`ban.ensembles=[[2],[2,3]]`); every other override is the same for every run. Each run is exactly
`bornagain COMMAND --output RUN_DIR <its overrides> seed=<s>` (the command's own checks, run directory,
resume), in

    DIR/<key=value,...>/seed-<s>/      one run per grid point and seed (DIR/seed-<s>/ without a grid)
    DIR/<key=value,...>/results.json   `ban`: once every seed of the point has finished, the aggregate over its
                                       seeds, as a `ban.seeds` output writes it (`bornagain report DIR/<point>`)
    DIR/sweep.json                     every run: its overrides, directory and state (finished / failed)
    DIR/slurm/                         submitit's logs of each array task (the SLURM launchers)

A run is finished when its results.json exists (the engine's marker; a `glue-teachers` output: its
teachers/summary.json); running the same command again launches only the unfinished runs, each continuing from
its checkpoint (--resume) where it had started. A finished run is reused only with the settings it was made
with (its command's --resume check): a changed fixed override or --config refuses the sweep, naming the runs and
keys, before anything is launched. Every config is built before anything is launched, so an unknown
key or a badly typed value refuses the whole sweep; a run that fails (a model that does not exist, a crash) is
reported with its log and leaves the others running.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from bornagain_kd.config import config_keys, load_config
from bornagain_kd.engine.run import RunSettings, recorded_settings
from bornagain_kd.engine.settings import changed_keys, describe_changes
from bornagain_kd.engine.trackers import check_available
from bornagain_kd.errors import UserError
from bornagain_kd.files import read_json, write_json

COMMANDS = ("ban", "train", "glue-teachers", "bam")
LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: its name (its directory under the sweep's), overrides and command line."""

    name: str
    run_dir: Path
    overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks SLURM for (submitit's AutoExecutor parameters)."""

    partition: str | None = None
    gpus_per_task: int = 0
    time_min: int = 60
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    max_parallel: int | None = None
    """At most this many tasks of the array at once (SLURM's %N)."""


def _config_class(command: str) -> type:
    if command in ("ban", "train"):
        from bornagain_kd.vision.config import VisionConfig  # noqa: PLC0415

        return VisionConfig
    from bornagain_kd.glue.config import GlueExperimentConfig  # noqa: PLC0415

    return GlueExperimentConfig


def _text(value: Any) -> str:
    """An override's value as the command line writes it (YAML; JSON is YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X`` (`ban.seeds: tuple[int, ...] | None` takes a list as much as a plain tuple key)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else tp


def split_grid(command: str, overrides: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(overrides every run shares, grid axes [(key, [value text, ...])]) from ``key=value`` strings."""
    list_keys = {key for key, _, tp, _ in config_keys(_config_class(command)) if typing.get_origin(_unwrap(tp)) is tuple}
    fixed, axes = [], []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep:
            raise UserError(f"override '{text}' is not of the form key=value (a grid axis: {text}=[a,b])")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        is_axis = isinstance(value, list) and (key not in list_keys or all(isinstance(v, list) for v in value))
        if is_axis and key in list_keys and not value:
            is_axis = False  # key=[]: the empty list itself
        if is_axis:
            if not value:
                raise UserError(f"grid axis '{text}' has no values: give one or more, {key}=[a,b]")
            axes.append((key, [_text(v) for v in value]))
        else:
            fixed.append(text)
    return fixed, axes


def _dir_name(assignment: Sequence[tuple[str, str]]) -> str:
    return re.sub(r"[^\w.=,+-]", "_", ",".join(f"{k}={v}" for k, v in assignment))


def expand(command: str, output: Path, seeds: Sequence[int], overrides: Sequence[str]) -> list[SweepRun]:
    """Every run of the sweep: the grid's points (in the order given) x the seeds."""
    fixed, axes = split_grid(command, overrides)
    if not axes and not seeds:
        raise UserError("nothing to sweep: give --seeds 0,1,2 and/or a grid axis key=[a,b]")
    runs = []
    for point in itertools.product(*[[(key, v) for v in values] for key, values in axes]):
        point_dir = output / _dir_name(point) if point else output
        for seed in seeds or [None]:
            run_dir = point_dir / f"seed-{seed}" if seed is not None else point_dir
            extra = [f"{k}={v}" for k, v in point] + ([f"seed={seed}"] if seed is not None else [])
            runs.append(SweepRun(str(run_dir.relative_to(output)) if run_dir != output else ".", run_dir,
                                 (*fixed, *extra)))
    return runs


def is_done(command: str, run_dir: Path) -> bool:
    """Finished as the engine marks it: results.json (a glue-teachers output: teachers/summary.json)."""
    marker = Path("teachers", "summary.json") if command == "glue-teachers" else Path("results.json")
    return (run_dir / marker).is_file()


def changed_settings(command: str, cfg, run_dir: Path) -> str | None:
    """What the finished run in ``run_dir`` would refuse on --resume with ``cfg`` (the keys that changed, with
    both values), or None: the check its command makes (engine/run.py), so a finished run is reused only for the
    settings it was made with."""
    if command in ("ban", "train"):
        from bornagain_kd.pipelines.vision_speed import resolve_vision_speed  # noqa: PLC0415
        from bornagain_kd.vision.config import vision_settings  # noqa: PLC0415

        checks = [(run_dir, recorded_settings(run_dir), vision_settings(resolve_vision_speed(cfg, run_dir)[0]))]
    elif command == "glue-teachers":
        from bornagain_kd.pipelines.glue_teachers import teacher_run_settings  # noqa: PLC0415

        # each task's teacher as `glue-teachers --resume` checks it (a task not trained yet: no record)
        checks = [(run_dir / "teachers" / task, recorded_settings(run_dir / "teachers" / task),
                   teacher_run_settings(cfg, task)) for task in cfg.glue.tasks]
    else:  # bam: the config its results were made with (results.json) against this one, but for mechanics
        from bornagain_kd.config import config_to_dict, keys_that_may_differ  # noqa: PLC0415

        checks = [(run_dir, read_json(run_dir / "results.json").get("config"),
                   RunSettings("bam", config_to_dict(cfg), ignore=keys_that_may_differ(type(cfg), "resume"),
                               added=cfg.ADDED_KEYS, renamed=cfg.RENAMED_KEYS))]
    found = []
    for where, saved, now in checks:
        keys = changed_keys(saved, now.tree, now.ignore, dict(now.renamed), dict(now.added)) if saved else []
        if keys:
            found.append(describe_changes(saved, now.tree, keys, dict(now.renamed), dict(now.added))
                         + ("" if where == run_dir else f" in {where.relative_to(run_dir)}"))
        elif saved is None and command == "glue-teachers":
            found.append(f"glue.tasks: no teacher of {where.name} in this finished output")
    return "; ".join(found) or None


def check_finished_runs(command: str, runs: Sequence[SweepRun], configs: Sequence) -> None:
    """Refuse the sweep, before anything is launched, when a finished run was made with other settings than its
    config now (a fixed override or --config changed, the grid and seeds not): it would be skipped and sweep.json
    would record the new overrides against the old results."""
    changed = [(run.name, what) for run, cfg in zip(runs, configs)
               if is_done(command, run.run_dir) and (what := changed_settings(command, cfg, run.run_dir))]
    if changed:
        names = "; ".join(f"{name}: {what}" for name, what in changed)
        raise UserError(f"{len(changed)} finished sweep run(s) were made with other settings ({names}); give the "
                        "sweep its recorded settings (--config and overrides), or another --output for the new ones")


def command_line(command: str, config: str | None, run: SweepRun) -> list[str]:
    """The `bornagain` arguments of one run: continued with --resume where it had started."""
    started = run.run_dir.is_dir() and any(run.run_dir.iterdir())
    return [command, *(["--config", config] if config else []), "--output", str(run.run_dir),
            *(["--resume"] if started else []), *run.overrides]


def run_task(argv: list[str], gpus: int = 0, env: dict | None = None) -> None:
    """One run, as a user launches it (an array task calls this): `python -m bornagain_kd ...`, under torchrun with
    one process per GPU when the task has several. A non-zero exit raises, so the launcher marks it failed."""
    prefix = [sys.executable, "-m", "bornagain_kd"]
    if gpus > 1:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                  "-m", "bornagain_kd"]
    done = subprocess.run([*prefix, *argv], env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}")


def _launch_local(argvs: list[list[str]], env: dict) -> list[str | None]:
    """One run after another in this machine's processes; each run's error (None: finished)."""
    errors = []
    for argv in argvs:
        try:
            run_task(argv, 0, env)
            errors.append(None)
        except RuntimeError as e:
            errors.append(str(e))
    return errors


def submitit_executor(output: Path, *, cluster: str):
    """submitit's executor of the sweep (cluster "slurm", or "local": its processes here), or a UserError."""
    try:
        import submitit  # noqa: PLC0415
    except ImportError:
        raise UserError('--launcher slurm needs submitit: pip install "bornagain-kd[slurm]"') from None
    try:
        return submitit.AutoExecutor(folder=output / "slurm" / "%j", cluster=cluster)
    except RuntimeError as e:  # no srun here
        raise UserError(f"--launcher slurm: {e} (--launcher local runs the sweep here)") from None


def _launch_submitit(argvs: list[list[str]], env: dict, executor, slurm: SlurmOptions) -> list[str | None]:
    """One SLURM array (or submitit's local processes), waited for; each task's error with where its log is
    (None: finished)."""
    params = {"name": "bornagain-sweep", "timeout_min": slurm.time_min, "tasks_per_node": 1, "nodes": 1,
              "gpus_per_node": slurm.gpus_per_task}
    params.update({k: v for k, v in (("cpus_per_task", slurm.cpus_per_task), ("mem_gb", slurm.mem_gb),
                                     ("slurm_partition", slurm.partition),
                                     ("slurm_array_parallelism", slurm.max_parallel)) if v is not None})
    try:
        executor.update_parameters(**params)
        jobs = executor.map_array(run_task, argvs, [slurm.gpus_per_task] * len(argvs), [env] * len(argvs))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # no sbatch here, a refused submission
        raise UserError(f"the SLURM array could not be submitted ({e}); check --slurm-partition and that sbatch "
                        "works on this machine (--launcher local runs here)") from None
    print(f"bornagain sweep: submitted {len(jobs)} task(s) ({jobs[0].job_id.split('_')[0]}); waiting", flush=True)
    errors = []
    for job in jobs:
        try:
            job.result()
            errors.append(None)
        except Exception as e:  # noqa: BLE001  (submitit raises the task's error, or a FailedJobError)
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            errors.append(f"{last} (log: {job.paths.stderr})")
    return errors


def tracker_environment(output: Path, trackers: set[str]) -> dict:
    """What the runs of one sweep share: one MLflow store (its database made here, once, before tasks run
    concurrently) and one W&B group. A user's MLFLOW_TRACKING_URI / WANDB_RUN_GROUP wins."""
    env = {}
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI"):
        from bornagain_kd.engine.trackers import prepare_mlflow_store  # noqa: PLC0415

        env["MLFLOW_TRACKING_URI"] = prepare_mlflow_store(output)
    if "wandb" in trackers:
        env.setdefault("WANDB_RUN_GROUP", os.environ.get("WANDB_RUN_GROUP") or output.resolve().name)
        env.setdefault("WANDB_DIR", os.environ.get("WANDB_DIR") or str(output.resolve()))
    return env


def sweep(command: str, config: str | None, output: str | Path, *, seeds: Sequence[int] = (),
          overrides: Sequence[str] = (), launcher: str = "local", slurm: SlurmOptions = SlurmOptions()) -> dict:
    """Launch the sweep's unfinished runs, wait for them, write sweep.json (and `ban` aggregates); return it.
    Failed runs raise a UserError naming them after every other run has finished."""
    if command not in COMMANDS or launcher not in LAUNCHERS:
        raise UserError(f"bornagain sweep {command} --launcher {launcher}: the command is one of "
                        f"{', '.join(COMMANDS)}, the launcher one of {', '.join(LAUNCHERS)}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))} repeats a seed: give each once")
    output = Path(output)
    runs = expand(command, output, seeds, overrides)
    cls = _config_class(command)
    configs = [load_config(cls, config, run.overrides) for run in runs]  # every config checked before launching
    check_available(sorted({t for cfg in configs for t in cfg.train.trackers}))  # before DIR is made
    check_finished_runs(command, runs, configs)
    todo = [run for run in runs if not is_done(command, run.run_dir)]
    executor = submitit_executor(output, cluster="local" if launcher == "submitit-local" else "slurm") \
        if launcher != "local" and todo else None
    print(f"bornagain sweep: {len(runs)} run(s) in {output}, {len(runs) - len(todo)} finished, "
          f"launching {len(todo)} ({launcher})", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    env = tracker_environment(output, {t for cfg in configs for t in cfg.train.trackers})
    argvs = [command_line(command, config, run) for run in todo]
    if not todo:
        errors = []
    elif executor is None:
        errors = _launch_local(argvs, env)
    else:
        errors = _launch_submitit(argvs, env, executor, slurm)
    failed = {run.name: error for run, error in zip(todo, errors) if error is not None}
    record = {"command": command, "config": config, "seeds": list(seeds), "overrides": list(overrides),
              "launched": [run.name for run in todo],
              "runs": [{"name": run.name, "dir": str(run.run_dir), "overrides": list(run.overrides),
                        "state": "failed" if run.name in failed else "finished" if is_done(command, run.run_dir)
                        else "unfinished", **({"error": failed[run.name]} if run.name in failed else {})}
                       for run in runs]}
    write_json(output / "sweep.json", record)
    if command == "ban" and seeds:
        _write_aggregates(runs, seeds)
    if failed:
        names = "; ".join(f"{name}: {error}" for name, error in failed.items())
        raise UserError(f"{len(failed)} of {len(runs)} sweep run(s) failed ({names}); fix them and run the same "
                        f"command again: the {len(runs) - len(failed)} finished run(s) are not rerun")
    return record


def _write_aggregates(runs: list[SweepRun], seeds: Sequence[int]) -> None:
    """Each grid point whose seeds all finished: the aggregate over its seeds at the point's directory, as a
    `ban.seeds` output has it (`bornagain report POINT`)."""
    from bornagain_kd.reports.seeds import aggregate, check_poolable, write_aggregate  # noqa: PLC0415

    points: dict[Path, list[Path]] = {}
    for run in runs:
        points.setdefault(run.run_dir.parent, []).append(run.run_dir)
    for point, dirs in points.items():
        if len(dirs) == len(seeds) > 1 and all(is_done("ban", d) for d in dirs):
            check_poolable(dirs)
            write_aggregate(aggregate(dirs, labels=[d.name for d in dirs]), dirs, point)
