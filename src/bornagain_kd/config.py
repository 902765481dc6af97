"""Frozen dataclass configs from plain YAML, with dotted ``key=value`` overrides.

A config is a tree of frozen dataclasses: a field whose type is a dataclass is a
section (``train``, ``ban``...). Every pipeline's ``train`` section derives from
``TrainingConfig`` below (the keys every run shares). ``load_config(cls, path, overrides)`` reads the
YAML file, applies each override (``train.lr=0.05``, ``ban.ensembles=[2,3]``;
values are parsed as YAML scalars or flow lists) and checks every value against
the field's annotation. Unknown keys and badly typed values raise ``UserError``
naming the key and listing the valid ones. Sections validate their own values
in ``__post_init__``. A renamed key keeps working under its old name: the top-level
class lists ``RENAMED_KEYS = {"old.key": "new.key"}``, and the old name is moved to the new
one with a ``RenamedKeyWarning``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

from bornagain_kd.engine.settings import SHARED_RENAMED_KEYS, recorded
from bornagain_kd.errors import RenamedKeyWarning, UserError

T = TypeVar("T")

OCCASIONS = ("resume", "pool", "teacher", "student")
"""When two runs of one experiment are compared: a run continued with --resume ("resume"), runs pooled over
seeds ("pool"), a finished run reused or continued as a teacher ("teacher": a BAN generation 0, a GLUE
teacher), a BAM student run reused or continued ("student")."""
MECHANICS = OCCASIONS
"""A key that says how a run ran, never what it learned (logging, threads, checkpoint cadence, compilation):
it may differ on every occasion."""
_MAY_DIFFER = "may_differ"


def may_differ(*occasions: str) -> dict:
    """Field metadata declaring, on the key itself, the occasions (``OCCASIONS``) on which its value may differ
    between the runs compared; every settings check reads it through ``keys_that_may_differ``."""
    unknown = sorted(set(occasions) - set(OCCASIONS))
    if unknown:
        raise ValueError(f"unknown occasions {unknown}: choose from {OCCASIONS}")
    return {_MAY_DIFFER: frozenset(occasions)}


def config_keys(cls: type, prefix: str = "", skip: tuple[str, ...] = ()):
    """Every key of config class ``cls`` in field order, sections expanded: (dotted key, field, its type, the
    class that holds it). ``skip``: top-level sections left out."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name], cls


def keys_that_may_differ(cls: type, occasion: str) -> tuple[str, ...]:
    """The dotted keys of config class ``cls`` (sections expanded) whose fields declare ``may_differ(occasion)``."""
    if occasion not in OCCASIONS:
        raise ValueError(f"unknown occasion {occasion!r}: choose from {OCCASIONS}")
    return tuple(key for key, f, _, _ in config_keys(cls) if occasion in f.metadata.get(_MAY_DIFFER, ()))


@dataclass(frozen=True)
class TrainingConfig:
    """How every run trains (`train.*`), one section for every pipeline; each pipeline's `train` section
    derives from this, sets its own defaults and adds its own keys."""

    epochs: int = 10
    """Passes over the training set (per generation, per teacher)."""
    batch_size: int = 64
    """The global batch: under torchrun it is split over the ranks."""
    eval_batch_size: int = field(default=512, metadata=may_differ("teacher"))
    """Examples per batch when predicting validation and test sets (no gradients: larger than training's)."""
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata=may_differ("teacher"))
    """auto (bf16 autocast where this hardware runs bf16 natively: a GPU with bf16, a CPU with AVX512-BF16 or AMX;
    fp32 elsewhere), bf16 or fp32. The run records the value chosen and keeps it on --resume."""
    device: str = field(default="auto", metadata=may_differ("pool", "teacher"))
    """auto | cpu | cuda (or cuda:N)."""
    checkpoint_every_steps: int = field(default=0, metadata=may_differ(*MECHANICS))
    """Also checkpoint every N optimiser steps inside an epoch (0: only at epoch ends)."""
    num_threads: int | None = field(default=None, metadata=may_differ(*MECHANICS))
    """torch intra-op threads on CPU; null leaves torch's default."""
    progress: bool = field(default=True, metadata=may_differ(*MECHANICS))
    """Progress bars on stderr, where it is a terminal (a log file gets the epoch lines only)."""
    trackers: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = field(
        default=("tensorboard",), metadata=may_differ(*MECHANICS))
    """Where every run's metrics, config, results and tables go besides metrics.jsonl (always written):
    tensorboard (event files in tb/), mlflow (one run per training run, nested under the command's run, in
    $MLFLOW_TRACKING_URI or sqlite:///OUTPUT/mlflow.db; extra `mlflow`), wandb (Weights & Biases, grouped by
    command; WANDB_MODE=offline needs no login; extra `wandb`); [] for none. Formerly train.tensorboard
    (true: [tensorboard], false: [])."""
    compile: bool | Literal["auto"] = field(default="auto", metadata=may_differ(*MECHANICS))
    """true, false or auto: torch.compile the trained model (and a frozen BAN teacher: ban.teacher_compile); auto:
    where the run pays the compile time back. Falls back to eager with one warning line where this machine cannot
    compile. The compile time is reported apart from the training time. auto: compile
    where the run is long enough to pay the compile time back, judged from this machine's measurements
    (engine/speed.py; ~/.cache/bornagain or $BORNAGAIN_CACHE_DIR); results.json says what was chosen and why."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = field(
        default="default", metadata=may_differ(*MECHANICS))
    """torch.compile's mode, wherever a model is compiled (train.compile true, or auto deciding to compile)."""
    weight_averaging: Literal["off", "ema", "lookahead"] = "off"
    """Average the weights over training, and evaluate, save and teach with the average: ema keeps an exponential
    moving average beside the training weights (timm's model EMA), lookahead also sets the training weights to the
    average at each update (airbench94), off keeps the last step's weights. Checkpoints hold the average and
    results.json records the setting (engine/averaging.py)."""
    ema_decay: float = 0.999
    """The average's decay per optimiser step (horizon about 1 / (1 - decay) steps); applied as decay^k when it is
    updated every k steps."""
    ema_every_steps: int = 1
    """Update the average every this many optimiser steps."""
    ema_warmup_power: float = 0.0
    """Warm-up of the decay, so that early weights, which change fast, are soon forgotten: decay x (step / total
    steps)^power (airbench94: 3); 0: timm's, min(decay, (1 + step) / (10 + step))."""
    dist_timeout: float | None = field(default=None, metadata=may_differ(*MECHANICS))
    """Minutes a collective under torchrun waits for the other processes before the run fails (null: PyTorch's
    default, 10 under NCCL, 30 under gloo); raise it where one process does long work alone."""
    sync_batchnorm: bool = False
    """Under torchrun on GPUs, normalise batch norms over the global batch (torch.nn.SyncBatchNorm), so a
    data-parallel step is the single-process step; off (PyTorch's default): each process normalises over its own
    slice, and a warning says when a slice is small. GPUs only (PyTorch's SyncBatchNorm); no effect in one process."""

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"train.epochs={self.epochs} must be at least 1")
        if len(set(self.trackers)) != len(self.trackers):
            raise UserError(f"train.trackers={list(self.trackers)} names a tracker twice: name each once")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("train.batch_size and train.eval_batch_size must be at least 1")
        if self.checkpoint_every_steps < 0:
            raise UserError(f"train.checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0")
        if self.dist_timeout is not None and not self.dist_timeout > 0:
            raise UserError(f"train.dist_timeout={self.dist_timeout} must be a positive number of minutes (or null)")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"train.num_threads={self.num_threads} must be at least 1 (or null for torch's default)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"train.ema_decay={self.ema_decay} must be in [0, 1) (0.999: about a 1,000-step horizon)")
        if self.ema_every_steps < 1:
            raise UserError(f"train.ema_every_steps={self.ema_every_steps} must be at least 1")
        if self.ema_warmup_power < 0:
            raise UserError(f"train.ema_warmup_power={self.ema_warmup_power} must be >= 0 (0: timm's warm-up)")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"train.device={self.device!r} is not one of auto, cpu, cuda")


def _article(name: str) -> str:
    """'a whole number', 'true or false', "a list of number", "one of 'fill' | 'drop'"."""
    if name.startswith("'"):
        return f"one of {name}"
    if name.startswith(("true or false", "text", "null")):
        return name
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


_PLAIN_NAMES = {int: "whole number", float: "number", bool: "true or false", str: "text", type(None): "null"}


def _type_name(tp: Any) -> str:
    """A type as a user reads it in an error: 'whole number | null', "list of number", "'fill' | 'drop'"."""
    if tp in _PLAIN_NAMES:
        return _PLAIN_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if int in args and float in args:  # int | float: a number
            args = tuple(a for a in args if a is not int)
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(f"config key '{key}': {value!r} is not {_article(_type_name(tp))}")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise UserError(f"config key '{key}': {value!r} is not a mapping of names to values "
                        f"(in YAML `{key.split('.')[-1]}: {{width: 64}}`, or {key}.width=64 on the command line)")
    if origin is tuple:
        (item_tp, *rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is expected: `bam.targets=annealed`
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, prefix=key + ".")
    raise UserError(f"config key '{key}': {value!r} is not {_article(_type_name(tp))}")


def _build(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            valid = sorted(prefix + n for n in fields)
            close = difflib.get_close_matches(prefix + str(name), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(
                f"unknown config key '{prefix}{name}'.{hint} Valid keys here: {', '.join(valid)}"
            )
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value (for example train.lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"override '{text}': cannot parse the value as YAML ({e.__class__.__name__})") from None
    return key.split("."), value


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file is a UserError."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file '{p}' is a folder: give one recipe in it, e.g. --config {p / 'NAME.yaml'}")
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist: check the path given to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"config file '{p}' is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{p}' must hold a mapping of keys to values at the top level")
    return data


RENAMED_VALUES: dict[str, Any] = {
    # train.tensorboard (a bool) became train.trackers (a list): its value changes form with its name
    "train.tensorboard": lambda on: ["tensorboard"] if on else [],
}
"""Renamed keys (SHARED_RENAMED_KEYS, a class's RENAMED_KEYS) whose old value is converted to the new key's."""


def _renamed_keys(cls: type) -> dict[str, str]:
    """Old dotted names -> new ones for config ``cls``: the shared train section's and the class's own."""
    return {**SHARED_RENAMED_KEYS, **getattr(cls, "RENAMED_KEYS", {})}


def _converted(old: str, value: Any) -> Any:
    convert = RENAMED_VALUES.get(old)
    if convert is None:
        return value
    if not isinstance(value, bool):
        raise UserError(f"config key '{old}' takes true or false, not {value!r} (it is now "
                        f"'{SHARED_RENAMED_KEYS.get(old, old)}': give a list there)")
    return convert(value)


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"config key '{old}' is now '{new}'; the old name still works but will be removed",
                  RenamedKeyWarning, stacklevel=3)


def rename_keys(tree: dict, renamed: dict[str, str], *, warn: bool = True) -> dict:
    """Move every old dotted key of ``renamed`` present in ``tree`` to its new name (in place; returns
    ``tree``). An old and a new name given different values is refused; emptied sections are dropped."""
    for old, new in renamed.items():
        *old_path, old_leaf = old.split(".")
        parents = [tree]
        for part in old_path:
            child = parents[-1].get(part)
            if not isinstance(child, dict):
                break
            parents.append(child)
        else:
            if old_leaf not in parents[-1]:
                continue
            value = _converted(old, parents[-1].pop(old_leaf))
            if warn:
                _renamed(old, new)
            *new_path, new_leaf = new.split(".")
            node = tree
            for part in new_path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"config key '{'.'.join(new_path)}' must be a section (it holds '{new_leaf}')")
            if new_leaf in node and node[new_leaf] != value:
                raise UserError(f"config keys '{old}' ({value!r}) and '{new}' ({node[new_leaf]!r}) are the same "
                                f"setting with different values: keep '{new}' only")
            node[new_leaf] = value
            for part, parent in zip(reversed(old_path), reversed(parents[:-1])):
                if parent[part]:
                    break
                del parent[part]  # a section left empty by the move (e.g. the old `teacher:`)
    return tree


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build config ``cls`` from YAML file ``path`` (optional; a packaged recipe's name works too) plus
    ``key=value`` overrides."""
    if path is None:
        return config_from_tree(cls, {}, overrides)
    from bornagain_kd.recipes import find_recipe  # noqa: PLC0415

    return config_from_tree(cls, load_yaml(find_recipe(path)), overrides)


def config_from_tree(cls: type[T], tree: dict, overrides: Sequence[str] = ()) -> T:
    """Build config ``cls`` from a nested mapping (as a YAML recipe would hold it; not changed) plus
    ``key=value`` overrides, with the same checks as a recipe file."""
    if not isinstance(tree, dict):
        raise UserError(f"a config must be a mapping of keys to values, got a {type(tree).__name__}")
    renamed = _renamed_keys(cls)
    tree = rename_keys(copy.deepcopy(tree), renamed)
    for text in overrides:
        keys, value = _parse_override(text)
        dotted = ".".join(keys)
        if dotted in renamed:  # an override of an old name sets the new one (later overrides win)
            _renamed(dotted, renamed[dotted])
            keys, value = renamed[dotted].split("."), _converted(dotted, value)
        _set_nested(tree, keys, value)
    return _build(cls, tree)


def recorded_config(cls: type[T], tree: dict) -> T:
    """The config a run was made with, from the tree it recorded (its config.yaml): keys it lacks because they
    were added later take the value in force then (``cls.ADDED_KEYS``), not today's default."""
    nested: dict = {}
    tree = rename_keys(copy.deepcopy(tree), _renamed_keys(cls), warn=False)  # old names, their values converted
    for dotted, value in recorded(tree, getattr(cls, "ADDED_KEYS", {})).items():
        _set_nested(nested, dotted.split("."), value)
    return _build(cls, nested)


def settings_tree(cfg: Any, occasion: str) -> dict:
    """The config as a plain tree without the keys that may differ on ``occasion`` (empty sections dropped):
    what a run recorded so that it is reused or continued only with the same values."""
    tree = config_to_dict(cfg)
    for key in keys_that_may_differ(type(cfg), occasion):
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node[part]
        node.pop(leaf)
    return {k: v for k, v in tree.items() if v != {}}


def config_to_dict(cfg: Any) -> dict:
    """Plain dict (lists, not tuples) of a config tree, for YAML/JSON output."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from bornagain_kd.files import atomic_write_text  # noqa: PLC0415

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported: configs are frozen, derive new ones."""
    return dataclasses.replace(cfg, **changes)
