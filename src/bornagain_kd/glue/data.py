"""GLUE examples from the classic TSV files or from Hugging Face `datasets`.

Every example keeps a stable id, `"<task>/<split>/<index>"`, where index is the
file's own `index` (or QQP's `id`) column when it has one and the 0-based data
row otherwise; the hub loader uses the dataset's `idx`, which is the same row
number. Teacher caches are keyed by these ids.

The real TSV files have quirks a loader must meet (all handled here):
- CoLA's train and dev files have no header row (source, label, mark, sentence);
- MRPC's files start with a UTF-8 byte-order mark;
- sentences contain quote characters, so lines are split on tabs, never parsed
  with CSV quoting (which would swallow text up to the next quote);
- test files have no label column (their examples get `label=None`);
- a few QQP rows are truncated: rows missing a needed column are skipped, with a
  warning that counts them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.errors import UserError
from bornagain_kd.glue.tasks import GlueTask, get_task


@dataclass(frozen=True)
class GlueExample:
    """One example: its stable id, one or two texts, and its label (None on test sets).

    `label` is the class index for classification tasks and the raw score for
    regression (STS-B: 0..5; divide by `task.label_scale` for the [0, 1] target).
    """

    id: str
    index: int
    text_a: str
    text_b: str | None
    label: int | float | None


def example_id(task: str, split: str, index: int) -> str:
    return f"{task}/{split}/{index}"


def _split_rows(path: Path) -> list[list[str]]:
    # utf-8-sig drops MRPC's byte-order mark; split on tabs only (no CSV quoting).
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"GLUE file '{path}' is not UTF-8 text ({e}); re-download the task") from None
    return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip("\r\n ")]


def _header_and_rows(task: GlueTask, path: Path) -> tuple[list[str], list[list[str]]]:
    rows = _split_rows(path)
    if not rows:
        raise UserError(f"GLUE file '{path}' is empty; re-download the {task.name} task")
    first = rows[0]
    if task.headerless_columns and task.text_columns[0] not in first:
        # CoLA train/dev: no header row; the first row is already an example.
        return list(task.headerless_columns), rows
    return first, rows[1:]


def read_glue_tsv(task: GlueTask | str, path: str | Path, split: str) -> list[GlueExample]:
    """Read one classic GLUE TSV file into examples (labels parsed when present)."""
    task = get_task(task) if isinstance(task, str) else task
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"GLUE file '{path}' not found: glue.data_dir must hold {task.name}/{path.name}"
            " in the classic GLUE layout (or set glue.source=hub)"
        )
    header, rows = _header_and_rows(task, path)
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in task.text_columns if c not in col]
    if missing:
        raise UserError(
            f"GLUE file '{path}' has no column(s) {missing} (header: {header}); is it really {task.name}?"
        )
    text_idx = [col[c] for c in task.text_columns]
    label_idx = col.get(task.label_column)
    index_idx = col.get("index", col.get("id"))
    needed = max(text_idx + ([label_idx] if label_idx is not None else []))
    examples, skipped = [], 0
    for row_number, row in enumerate(rows):
        if len(row) <= needed:
            skipped += 1
            continue
        index = int(row[index_idx]) if index_idx is not None else row_number
        label = None if label_idx is None else parse_label(task, row[label_idx], path)
        texts = [row[i].strip() for i in text_idx]
        examples.append(
            GlueExample(
                id=example_id(task.name, split, index),
                index=index,
                text_a=texts[0],
                text_b=texts[1] if task.is_pair else None,
                label=label,
            )
        )
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} malformed row(s) with missing columns", stacklevel=2)
    _check_unique_ids(examples, path)
    return examples


def parse_label(task: GlueTask, text: str, where: object = "") -> int | float:
    text = text.strip()
    if task.is_regression:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{where}: {task.name} score {text!r} is not a number") from None
    try:
        return task.tsv_labels.index(text)
    except ValueError:
        raise UserError(
            f"{where}: {task.name} label {text!r} is not one of {list(task.tsv_labels)}"
        ) from None


def _check_unique_ids(examples: list[GlueExample], where: object) -> None:
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: example ids are not unique (duplicate index values); fix the file")


def split_file(task: GlueTask, split: str) -> str:
    return f"{split}.tsv"


# --- Hugging Face `datasets` ------------------------------------------------------------


def _load_hub_dataset(hub_name: str, split: str):
    """`datasets.load_dataset("glue", hub_name, split=split)`; tests monkeypatch this."""
    try:
        import datasets  # noqa: PLC0415  (optional dependency, imported only on this path)
    except ImportError:
        raise UserError(
            "glue.source=hub needs the `datasets` package: pip install 'bornagain-kd[hub]'"
            " (or use glue.source=tsv with glue.data_dir)"
        ) from None
    try:
        return datasets.load_dataset("glue", hub_name, split=split)
    except Exception as e:  # network errors, unknown configs: one clear line
        raise UserError(
            f"could not load GLUE {hub_name}/{split} from the Hugging Face hub ({e.__class__.__name__}: {e});"
            " check the connection, or use glue.source=tsv with a local glue.data_dir"
        ) from None


def _hub_split(split: str) -> str:
    return {"dev": "validation"}.get(split, split.replace("dev_", "validation_"))


def load_hub_split(task: GlueTask | str, split: str,
                   loader: Callable[[str, str], object] | None = None) -> list[GlueExample]:
    """One split of the hub's GLUE configuration as examples (test labels -1 -> None)."""
    task = get_task(task) if isinstance(task, str) else task
    rows = (loader or _load_hub_dataset)(task.hub_name, _hub_split(split))
    examples = []
    for row_number, row in enumerate(rows):
        index = int(row.get("idx", row_number))
        texts = [str(row[c]).strip() for c in task.hub_text_columns]
        raw = row.get("label")
        if raw is None or (not task.is_regression and int(raw) < 0):
            label = None
        else:
            label = float(raw) if task.is_regression else int(raw)
        examples.append(GlueExample(example_id(task.name, split, index), index, texts[0],
                                    texts[1] if task.is_pair else None, label))
    _check_unique_ids(examples, f"hub GLUE {task.hub_name}/{split}")
    return examples


# --- one task, all splits -----------------------------------------------------------------


def load_split(task: GlueTask | str, split: str, *, data_dir: str | Path | None,
               source: str = "tsv") -> list[GlueExample]:
    """Examples of one split ("train", "dev", "dev_matched", "test", ...) of a task."""
    task = get_task(task) if isinstance(task, str) else task
    if source == "hub":
        return load_hub_split(task, split)
    if source != "tsv":
        raise UserError(f"glue.source={source!r} is not one of tsv, hub")
    if not data_dir:
        raise UserError(
            "glue.source=tsv needs glue.data_dir (a folder with CoLA/, SST-2/, ... in the classic"
            " GLUE TSV layout); set glue.data_dir=PATH or glue.source=hub"
        )
    return read_glue_tsv(task, Path(data_dir) / task.name / split_file(task, split), split)


def has_split(task: GlueTask, split: str, *, data_dir: str | Path | None, source: str) -> bool:
    """Whether a split is available (test files are optional in a local copy)."""
    if source == "hub":
        return True
    return bool(data_dir) and (Path(data_dir) / task.name / split_file(task, split)).is_file()


def subsample_examples(examples: list[GlueExample], max_examples: int | None, *, seed: int,
                       is_regression: bool) -> list[GlueExample]:
    """At most `max_examples` examples, seeded and label-stratified, in their original order.

    Classification: each class keeps a share proportional to its frequency
    (largest remainders get the leftover slots), so the label balance survives.
    Regression: a uniform random subset. The ids are the original ones.
    """
    if max_examples is None or len(examples) <= max_examples:
        return list(examples)
    rng = np.random.default_rng(seed)
    if is_regression:
        keep = rng.choice(len(examples), size=max_examples, replace=False)
    else:
        by_label: dict[object, list[int]] = {}
        for i, e in enumerate(examples):
            by_label.setdefault(e.label, []).append(i)
        labels = sorted(by_label, key=str)
        exact = np.array([len(by_label[l]) * max_examples / len(examples) for l in labels])
        counts = np.floor(exact).astype(int)
        leftover = max_examples - counts.sum()
        for j in np.argsort(-(exact - counts), kind="stable")[:leftover]:
            counts[j] += 1
        keep = np.concatenate([
            rng.choice(by_label[l], size=c, replace=False) for l, c in zip(labels, counts)
        ])
    return [examples[i] for i in sorted(int(i) for i in keep)]


def majority_label(examples: list[GlueExample]) -> int:
    """The most frequent training class (ties: the smallest index): the majority baseline."""
    labels = [e.label for e in examples if e.label is not None]
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return int(values[np.argmax(counts)])


def load_train_examples(cfg, task: GlueTask | str) -> list[GlueExample]:
    """The training examples of `task` under experiment config `cfg` (a GlueExperimentConfig).

    Applies `glue.max_train_examples` with the seed derive_seed(cfg.seed, "subsample", task),
    so the teachers and the BAM student see exactly the same examples.
    """
    task = get_task(task) if isinstance(task, str) else task
    examples = load_split(task, "train", data_dir=cfg.glue.data_dir, source=cfg.glue.source)
    return subsample_examples(examples, cfg.glue.max_train_examples,
                              seed=derive_seed(cfg.seed, "subsample", task.name),
                              is_regression=task.is_regression)
