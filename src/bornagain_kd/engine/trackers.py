"""Experiment trackers (`train.trackers`): MLflow and Weights & Biases beside metrics.jsonl and TensorBoard.

One tracker run per training run (a BAN generation, a baseline, a `train` run, a GLUE teacher, a BAM
student), grouped under the run of the command that made it (a BAN sequence, a seed sweep, a `glue-teachers`
or `bam` output): in MLflow a parent run with nested child runs (``mlflow.parentRunId``), in W&B one ``group``
(the command's run then logs its results at the end, job type ``command``). Each run logs

    parameters    the run's resolved config (its config.yaml, or its settings record), the command's config
    metrics       every record of metrics.jsonl at its step (run_log.RunLogger calls ``log``)
    results       the numbers of results.json, as ``results/<key>`` (MLflow metrics, W&B summary)
    artifacts     the small files at the top of the run directory: results.json, config.yaml, tables, plots

Where: MLflow writes to $MLFLOW_TRACKING_URI, else to a SQLite database beside the runs,
``sqlite:///<command output>/mlflow.db`` with its artifacts in ``<command output>/mlartifacts`` (MLflow 3 no
longer starts runs in the old ``mlruns/`` file store); experiment $MLFLOW_EXPERIMENT_NAME or "bornagain".
W&B follows its own environment (WANDB_MODE=offline needs no login, WANDB_PROJECT, WANDB_RUN_GROUP, WANDB_DIR;
default directory ``<command output>/wandb``). A run directory keeps the ids of its tracker runs in
``trackers.json``, so a resumed run continues the same tracker run. Only rank 0 logs (``enabled``); the
libraries are imported when a run asks for them. A command's tracker run opens with its first training run (or
at its end): a command refused by its own checks writes nothing. A tracker's error (its store or service gone)
warns once on stderr and the training carries on; a tracker never fails a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from bornagain_kd.errors import UserError
from bornagain_kd.files import read_json, write_json

TRACKERS = ("tensorboard", "mlflow", "wandb")
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
"""The extra that installs each tracker's library (`pip install "bornagain-kd[mlflow]"`)."""
IDS = "trackers.json"
ARTIFACT_SUFFIXES = (".json", ".md", ".csv", ".tex", ".png", ".pdf", ".yaml")
_SKIPPED = (IDS, "settings.json")  # bookkeeping, not results


def check_available(trackers: Sequence[str]) -> None:
    """Refuse, before anything is written, a tracker whose library is not installed (naming the extra)."""
    missing = [t for t in trackers if t in EXTRAS and not _importable(EXTRAS[t])]
    if missing:
        extras = ",".join(EXTRAS[t] for t in missing)
        raise UserError(f"train.trackers asks for {', '.join(missing)}, which is not installed: "
                        f'pip install "bornagain-kd[{extras}]", or drop it from train.trackers')


def _importable(module: str) -> bool:
    import importlib  # noqa: PLC0415

    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


@dataclass
class _Group:
    """A command's run, open while the command runs; its training runs nest under it."""

    root: Path  # the outermost command's output: where mlflow.db and wandb/ go
    output: Path
    trackers: tuple[str, ...]
    wandb_group: str
    params: dict
    parent: "_Group | None" = None
    mlflow: Any = None  # _MlflowRun of this command, once opened
    opened: bool = False


def _open_group(group: _Group) -> None:
    """Open the command's tracker run (its parents' first) when its first training run opens or it finishes:
    a command refused by its own checks before that writes nothing (no mlflow.db, no trackers.json)."""
    if group.opened:
        return
    group.opened = True
    if group.parent is not None:
        _open_group(group.parent)
    if "mlflow" in group.trackers:
        parent = group.parent.mlflow if group.parent else None
        group.mlflow = _guarded("mlflow", _MlflowRun.open, group.output, group.root,
                                name=_name(group.output, group.root), params=group.params, kind="command",
                                parent=parent)
    _save_ids(group.output, {"wandb_group": group.wandb_group})


def _guarded(tracker: str, call, *args, **kwargs):
    """``call(*args, **kwargs)``, or None when the tracker's library raises: a tracker's failure (a store that
    went away, a network error) warns once and the training carries on, on every rank alike (rank 0 raising
    in a close would leave the other ranks waiting at the next barrier). A UserError (W&B not logged in) is
    the user's to fix and still refuses."""
    try:
        return call(*args, **kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (any error of the tracker's library)
        _warn_once(tracker, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        return None


_WARNED: set[str] = set()


def _warn_once(tracker: str, error: str) -> None:
    if tracker not in _WARNED:
        _WARNED.add(tracker)
        print(f"bornagain: warning: {tracker} failed ({error}); training carries on, without {tracker} logging "
              "where it failed (metrics.jsonl and results.json are complete)", file=sys.stderr, flush=True)


_STACK: list[_Group] = []


def _name(path: Path, root: Path) -> str:
    """A run's name: its path under the outermost command's output; that output itself by the path the command
    was given (``runs/lr/train.lr=0.1/seed-0``: a sweep's runs stay apart)."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    if str(rel) != ".":
        return str(rel)
    return str(path) if not path.is_absolute() else "/".join(path.parts[-2:])


@contextlib.contextmanager
def command_run(output: str | Path, trackers: Sequence[str], *, params: dict, enabled: bool,
                artifacts: Sequence[str] = ("*",)) -> Iterator[None]:
    """The tracker run of one command writing into ``output``: the training runs started inside nest under it.
    On success it logs the numbers of ``output/results.json`` and the files matching ``artifacts`` (globs
    under ``output``); on an error it is marked failed. A no-op without mlflow or wandb, or off rank 0."""
    wanted = tuple(t for t in trackers if t in EXTRAS)
    if not enabled or not wanted:
        yield
        return
    check_available(wanted)
    parent = _STACK[-1] if _STACK else None
    if "wandb" in wanted and parent is None:
        check_wandb_credentials()
    output = Path(output)
    root = parent.root if parent else output
    ids = _read_ids(output)
    group = parent.wandb_group if parent else (os.environ.get("WANDB_RUN_GROUP") or ids.get("wandb_group")
                                               or f"{output.resolve().name}-{uuid.uuid4().hex[:6]}")
    me = _Group(root, output, wanted, group, params, parent)
    if parent is None:
        _WARNED.clear()  # once per command
    _STACK.append(me)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        _STACK.pop()
        if status == "FINISHED":
            _open_group(me)  # a command that trained nothing here (all reused) still logs its results
        files = _artifacts(output, artifacts)
        results = _results(output) if status == "FINISHED" else {}
        if me.mlflow is not None:
            _guarded("mlflow", me.mlflow.close, results, files, status)
        if "wandb" in wanted and status == "FINISHED":
            run = _guarded("wandb", _WandbRun.open, output, root, name=_name(output, root), params=params,
                           group=group, kind="command")
            if run is not None:
                _guarded("wandb", run.close, results, files, status)


class RunTrackers:
    """The tracker runs of one training run (the engine's RunLogger holds one): opened at the first record."""

    def __init__(self, run_dir: str | Path, trackers: Sequence[str], *, enabled: bool):
        self.run_dir = Path(run_dir)
        self.wanted = tuple(t for t in trackers if t in EXTRAS) if enabled else ()
        self.runs: list = []
        self.failed: list = []
        self.opened = False
        if self.wanted and not _STACK:
            _WARNED.clear()  # a run of its own (`train`): its own warnings
        if self.wanted:
            check_available(self.wanted)

    def _open(self) -> list:
        if not self.opened and self.wanted:
            self.opened = True  # once: a tracker that failed to open stays off for this run
            group = _STACK[-1] if _STACK else None
            if group is not None:
                _open_group(group)
            root = group.root if group else self.run_dir
            name, params = _name(self.run_dir, root), _run_params(self.run_dir)
            if "mlflow" in self.wanted:
                self.runs.append(_guarded("mlflow", _MlflowRun.open, self.run_dir, root, name=name, params=params,
                                          kind="train", parent=group.mlflow if group else None))
            if "wandb" in self.wanted:
                wandb_group = group.wandb_group if group else os.environ.get("WANDB_RUN_GROUP")
                self.runs.append(_guarded("wandb", _WandbRun.open, self.run_dir, root, name=name, params=params,
                                          group=wandb_group, kind="train"))
            self.runs = [run for run in self.runs if run is not None]
        return self.runs

    def log(self, metrics: dict, step: int) -> None:
        numbers = _numbers(metrics)
        for run in self._open():
            if run not in self.failed and _guarded(run.NAME, run.log, numbers, step) is None:
                self.failed.append(run)  # not asked again (one warning, not one per record); closed at the end

    def close(self, status: str = "FINISHED") -> None:
        """End the tracker runs: FINISHED (results.json and the run's files logged), FAILED or KILLED."""
        if status == "FINISHED":
            self._open()  # a run that logged no record still gets its results
        files = _artifacts(self.run_dir, ("*",)) if status == "FINISHED" else []
        results = _results(self.run_dir) if status == "FINISHED" else {}
        for run in self.runs:
            _guarded(run.NAME, run.close, results, files, status)
        self.runs, self.failed = [], []
        self.opened = False


class _MlflowRun:
    """One MLflow run, through MlflowClient (no global active run: parents and children are explicit)."""

    NAME = "mlflow"

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def open(cls, where: Path, root: Path, *, name: str, params: dict, kind: str, parent: "_MlflowRun | None"):
        from mlflow import MlflowClient  # noqa: PLC0415
        from mlflow.entities import Param  # noqa: PLC0415

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database set-up notes on every command
        saved = _read_ids(where).get("mlflow", {})
        # a run resumed by hand without the environment it was made in (a sweep's shared store) continues there
        uri = parent.uri if parent else os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri") \
            or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        client = parent.client if parent else MlflowClient(uri)
        if saved.get("tracking_uri") == uri and _mlflow_run_exists(client, saved["run_id"]):
            client.update_run(saved["run_id"], status="RUNNING")  # a resumed run continues its tracker run
            return cls(client, saved["run_id"], uri)
        tags = {"bornagain.kind": kind, "bornagain.dir": str(where.resolve())}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        run = client.create_run(_mlflow_experiment(client, root, uri), run_name=name, tags=tags)
        flat = [Param(k[:250], _param_text(v)) for k, v in _flatten(params).items()]
        client.log_batch(run.info.run_id, params=flat)
        _save_ids(where, {"mlflow": {"run_id": run.info.run_id, "tracking_uri": uri}})
        return cls(client, run.info.run_id, uri)

    def log(self, numbers: dict[str, float], step: int) -> bool:
        from mlflow.entities import Metric  # noqa: PLC0415

        now = _millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])
        return True

    def close(self, results: dict[str, float], files: list[Path], status: str) -> None:
        try:
            if results:
                self.log({f"results/{k}": v for k, v in results.items()}, 0)
            for path in files:
                self.client.log_artifact(self.run_id, str(path))
        finally:  # ended even when logging failed, so the store does not keep a RUNNING run
            self.client.set_terminated(self.run_id, status=status)


def _mlflow_experiment(client, root: Path, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "bornagain")
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # a SQLite store keeps its artifacts beside its database, not in ./mlruns of whatever folder the command ran in
    location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=location)


def prepare_mlflow_store(root: str | Path) -> str:
    """Create the default SQLite store of ``root`` and its experiment now (runs that start concurrently, as the
    tasks of a sweep do, would race to create them); return its URI."""
    from mlflow import MlflowClient  # noqa: PLC0415

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    Path(root).mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"
    _mlflow_experiment(MlflowClient(uri), Path(root), uri)
    return uri


def _mlflow_run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def check_wandb_credentials() -> None:
    """W&B online needs credentials (an API key, or `wandb login`'s): refused when the command starts, not when
    the first epoch's record is logged. WANDB_MODE=offline or disabled needs none."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    import inspect  # noqa: PLC0415

    import wandb  # noqa: PLC0415

    kwargs = {"verify": False}
    if "prompt" in inspect.signature(wandb.login).parameters:
        kwargs["prompt"] = False  # never wait for a key typed in
    silent = os.environ.get("WANDB_SILENT")
    os.environ["WANDB_SILENT"] = "true"  # no "API key is configured" line
    try:
        found = wandb.login(**kwargs)
    except wandb.errors.Error:
        found = False
    finally:
        if silent is None:
            os.environ.pop("WANDB_SILENT", None)
        else:
            os.environ["WANDB_SILENT"] = silent
    if not found:
        raise UserError("train.trackers has wandb, but W&B has no credentials here: log in with `wandb login` (or "
                        "set WANDB_API_KEY), or set WANDB_MODE=offline (sync later with `wandb sync`)")


class _WandbRun:
    """One W&B run (several may be open in one process: reinit="create_new")."""

    NAME = "wandb"

    def __init__(self, run):
        self.run = run

    @classmethod
    def open(cls, where: Path, root: Path, *, name: str, params: dict, group: str | None, kind: str):
        import wandb  # noqa: PLC0415

        saved = _read_ids(where).get("wandb", {}).get("id")
        run_id = saved or uuid.uuid4().hex[:8]  # W&B ids: letters and digits
        directory = Path(os.environ.get("WANDB_DIR") or root)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "bornagain"), group=group, name=name,
                             job_type=kind, config=params, dir=str(directory), id=run_id,
                             resume="allow" if saved else None, reinit="create_new",
                             settings=wandb.Settings(console="off", quiet=True, x_disable_stats=True))
        except wandb.errors.Error as e:
            raise UserError(f"W&B could not start a run ({e}): log in with `wandb login`, or set "
                            "WANDB_MODE=offline (sync later with `wandb sync`)") from None
        _save_ids(where, {"wandb": {"id": run_id}})
        return cls(run)

    def log(self, numbers: dict[str, float], step: int) -> bool:
        self.run.log(numbers, step=step)
        return True

    def close(self, results: dict[str, float], files: list[Path], status: str) -> None:
        import wandb  # noqa: PLC0415

        if results:
            self.run.summary.update({f"results/{k}": v for k, v in results.items()})
        if files:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{self.run.name}-files"), type="run-files")
            for path in files:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _run_params(run_dir: Path) -> dict:
    """A training run's parameters: its resolved config (config.yaml), else its settings record."""
    if (run_dir / "config.yaml").is_file():
        tree = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        return tree if isinstance(tree, dict) else {}
    for name in ("settings.json", "student_settings.json", "teacher_settings.json"):
        if (run_dir / name).is_file():
            tree = read_json(run_dir / name)
            return tree.get("settings", tree) if isinstance(tree, dict) else {}
    return {}


def _results(where: Path) -> dict[str, float]:
    path = where / "results.json"
    if not path.is_file():
        return {}
    results = {k: v for k, v in read_json(path).items() if k != "config"}  # (bam's: already the parameters)
    return _numbers(_flatten(results, "/"))


def _artifacts(where: Path, patterns: Sequence[str]) -> list[Path]:
    """The small result files at the top of ``where`` matching ``patterns`` (no weights, no checkpoints)."""
    found = {p for pattern in patterns for p in where.glob(pattern)}
    return sorted(p for p in found if p.is_file() and p.suffix in ARTIFACT_SUFFIXES and p.name not in _SKIPPED)


def _flatten(tree: Any, sep: str = ".", prefix: str = "") -> dict:
    """Nested dicts and lists -> {"a.b.0": leaf}."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in tree):
        items = enumerate(tree)
    else:
        return {prefix: tree} if prefix else {}
    out = {}
    for k, v in items:
        out.update(_flatten(v, sep, f"{prefix}{sep}{k}" if prefix else str(k)))
    return out


def _numbers(values: dict) -> dict[str, float]:
    """The finite numbers of a record, under names every tracker accepts (letters, digits, _-./ and spaces)."""
    return {re.sub(r"[^\w\-./ ]", "_", str(k)): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit on a parameter's value


def _millis() -> int:
    import time  # noqa: PLC0415

    return int(time.time() * 1000)


def _read_ids(where: Path) -> dict:
    path = where / IDS
    try:
        return read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _save_ids(where: Path, ids: dict) -> None:
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / IDS, {**_read_ids(where), **ids})
