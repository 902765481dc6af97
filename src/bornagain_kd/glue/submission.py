"""GLUE test-set predictions in the official submission format.

The GLUE server takes a zip of one TSV per task (CoLA.tsv, SST-2.tsv, MRPC.tsv,
STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv, plus
AX.tsv for the diagnostic set, which is MNLI-style and not produced here). Each
file has the header `index<TAB>prediction` and one row per test example in the
test file's own index order. Predictions are the label names of the TSV files:
0/1 for CoLA, SST-2, MRPC, QQP and WNLI; entailment / neutral / contradiction for
MNLI; entailment / not_entailment for QNLI and RTE; and a score in [0, 5] with
three decimals for STS-B (our [0, 1] regression output times 5, clipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bornagain_kd.files import atomic_write_text
from bornagain_kd.glue.data import GlueExample
from bornagain_kd.glue.tasks import GlueTask, get_task


def submission_file_name(task: GlueTask | str, test_split: str = "test") -> str:
    task = get_task(task) if isinstance(task, str) else task
    return task.submission_files[task.test_splits.index(test_split)]


def format_predictions(task: GlueTask | str, outputs: np.ndarray) -> list[str]:
    """Label names (classification, argmax of logits) or scores in [0, 5] (STS-B)."""
    task = get_task(task) if isinstance(task, str) else task
    outputs = np.asarray(outputs, dtype=np.float64)
    if task.is_regression:
        scores = np.clip(outputs.reshape(-1) * task.label_scale, 0.0, task.label_scale)
        return [f"{s:.3f}" for s in scores]
    return [task.tsv_labels[i] for i in outputs.argmax(axis=-1)]


def write_submission(path: str | Path, task: GlueTask | str, test_examples: list[GlueExample],
                     outputs: np.ndarray) -> Path:
    """Write one GLUE submission TSV (`index<TAB>prediction`, sorted by index)."""
    task = get_task(task) if isinstance(task, str) else task
    if len(test_examples) != len(outputs):
        raise ValueError(f"{task.name}: {len(outputs)} outputs for {len(test_examples)} test examples")
    labels = format_predictions(task, outputs)
    rows = sorted(zip((e.index for e in test_examples), labels))
    text = "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in rows)
    atomic_write_text(path, text)
    return Path(path)


def read_submission(path: str | Path) -> list[tuple[int, str]]:
    """(index, prediction) rows of a submission file (for checks and tests)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "index\tprediction":
        raise ValueError(f"{path} is not a GLUE submission file (bad header)")
    return [(int(i), p) for i, p in (line.split("\t") for line in lines[1:])]
