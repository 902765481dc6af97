"""The GLUE task table: task -> text columns, label type, number of labels, metrics.

One row per task, in the spirit of Hugging Face `run_glue.py`'s `task_to_keys`,
extended with what a loader, a model head, the metrics and the submission writer
need. Label order follows the Hugging Face `datasets` GLUE configuration, so the
TSV and hub loaders produce the same class indices, and `tsv_labels[i]` is both
how class i is spelt in the classic TSV files and what the GLUE server expects in
a submission file.
"""

from __future__ import annotations

from dataclasses import dataclass

from bornagain_kd.errors import UserError


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    `text_columns` / `label_column` / `index_columns` name the columns of the
    classic TSV files; `hub_*` the Hugging Face `datasets` GLUE configuration.
    `splits` maps our split names to TSV file stems; MNLI has two dev and two
    test splits (matched and mismatched). `metric_suffix` says how each dev
    split's metrics are named (MNLI: `accuracy_m`, `accuracy_mm`).
    """

    name: str
    text_columns: tuple[str, ...]
    """One column (single sentence) or two (sentence pair)."""
    label_column: str
    tsv_labels: tuple[str, ...]
    """Class i as written in the TSV files and the submission; () for regression."""
    metrics: tuple[str, ...]
    """Metric names of one dev split: accuracy, f1, mcc, pearson, spearman."""
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    headerless_columns: tuple[str, ...] = ()
    """Column names for files that have no header row (CoLA train/dev)."""
    hub_name: str = ""
    hub_text_columns: tuple[str, ...] = ()
    submission_files: tuple[str, ...] = ()
    """GLUE server file name of each test split, in `test_splits` order."""
    label_scale: float = 1.0
    """Regression labels are divided by this (STS-B: 5, so targets lie in [0, 1])."""

    @property
    def is_regression(self) -> bool:
        return not self.tsv_labels

    @property
    def num_labels(self) -> int:
        """Output width of the task head: classes, or 1 for regression."""
        return 1 if self.is_regression else len(self.tsv_labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    def metric_suffix(self, split: str) -> str:
        """Suffix of the metric names of one dev split: '' or '_m' / '_mm' (MNLI)."""
        if len(self.dev_splits) == 1:
            return ""
        return {"dev_matched": "_m", "dev_mismatched": "_mm"}[split]

    @property
    def score_keys(self) -> tuple[str, ...]:
        """The dev metric keys averaged into this task's GLUE score."""
        return tuple(m + self.metric_suffix(s) for s in self.dev_splits for m in self.metrics)


_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "CoLA", ("sentence",), "label", _BINARY, ("mcc",),
            headerless_columns=("source", "label", "original_label", "sentence"),
            hub_name="cola", hub_text_columns=("sentence",), submission_files=("CoLA.tsv",),
        ),
        GlueTask(
            "SST-2", ("sentence",), "label", _BINARY, ("accuracy",),
            hub_name="sst2", hub_text_columns=("sentence",), submission_files=("SST-2.tsv",),
        ),
        GlueTask(
            "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"),
            hub_name="mrpc", hub_text_columns=("sentence1", "sentence2"),
            submission_files=("MRPC.tsv",),
        ),
        GlueTask(
            "STS-B", ("sentence1", "sentence2"), "score", (), ("pearson", "spearman"),
            hub_name="stsb", hub_text_columns=("sentence1", "sentence2"),
            submission_files=("STS-B.tsv",), label_scale=5.0,
        ),
        GlueTask(
            "QQP", ("question1", "question2"), "is_duplicate", _BINARY, ("f1", "accuracy"),
            hub_name="qqp", hub_text_columns=("question1", "question2"),
            submission_files=("QQP.tsv",),
        ),
        GlueTask(
            "MNLI", ("sentence1", "sentence2"), "gold_label", _NLI3, ("accuracy",),
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            hub_name="mnli", hub_text_columns=("premise", "hypothesis"),
            submission_files=("MNLI-m.tsv", "MNLI-mm.tsv"),
        ),
        GlueTask(
            "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",),
            hub_name="qnli", hub_text_columns=("question", "sentence"),
            submission_files=("QNLI.tsv",),
        ),
        GlueTask(
            "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",),
            hub_name="rte", hub_text_columns=("sentence1", "sentence2"),
            submission_files=("RTE.tsv",),
        ),
        GlueTask(
            # WNLI's TSV labels are 0/1 with 1 = entailment, as in `datasets`.
            "WNLI", ("sentence1", "sentence2"), "label", _BINARY, ("accuracy",),
            hub_name="wnli", hub_text_columns=("sentence1", "sentence2"),
            submission_files=("WNLI.tsv",),
        ),
    )
}

# The tasks of the BAM paper (all of GLUE except WNLI, whose dev set is adversarial).
BAM_TASKS: tuple[str, ...] = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE")


def get_task(name: str) -> GlueTask:
    """Look a task up by its GLUE name; case-insensitive, `SST2` and `STSB` accepted."""
    key = name.replace("-", "").lower()
    for task in GLUE_TASKS.values():
        if task.name.replace("-", "").lower() == key:
            return task
    raise UserError(
        f"unknown GLUE task {name!r}; choose from {', '.join(GLUE_TASKS)}"
        " (set glue.tasks=[CoLA,RTE,...])"
    )


def canonical_task_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Canonical spelling of each task name, refusing unknown names and duplicates."""
    canonical = tuple(get_task(n).name for n in names)
    if len(set(canonical)) != len(canonical):
        raise UserError(f"glue.tasks lists a task twice: {list(names)}; list each task once")
    if not canonical:
        raise UserError("glue.tasks is empty; list at least one task, e.g. glue.tasks=[RTE]")
    return canonical
