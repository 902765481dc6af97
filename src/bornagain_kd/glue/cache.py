"""Teacher predictions on their own training set: written once, keyed and checked.

A cache file is one safetensors file: the tensor `outputs` ((n, num_labels)
logits, or (n,) regression outputs on the [0, 1] scale) and metadata holding the
task, the example ids in row order, and a fingerprint. The fingerprint combines

    dataset_fingerprint(examples, tokenizer, max_seq_length)   what was predicted on
    teacher checkpoint sha256                                   who predicted

so a student refuses predictions made on other examples, in another order, with
another tokenizer or truncation, for another task, or by another teacher
(an unchecked cache silently misaligns). Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from bornagain_kd.files import atomic_write_bytes
from bornagain_kd.errors import UserError
from bornagain_kd.glue.data import GlueExample

FORMAT = "bornagain-teacher-predictions-v1"


def dataset_fingerprint(examples: list[GlueExample], *, tokenizer_fingerprint: str,
                        max_seq_length: int) -> str:
    """sha256 over every example (id, texts, label, in order), the tokenizer and the truncation.

    `tokenizer_fingerprint` comes from `bornagain_kd.glue.tokenization.tokenizer_fingerprint`.
    """
    h = hashlib.sha256()
    h.update(f"tokenizer={tokenizer_fingerprint}\nmax_seq_length={max_seq_length}\n".encode())
    for e in examples:
        h.update(json.dumps([e.id, e.text_a, e.text_b, e.label]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (a teacher's final weights)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist; retrain the teacher that writes it") from None
    return h.hexdigest()


def prediction_fingerprint(dataset_fp: str, teacher_fp: str) -> str:
    """The fingerprint a cache is written and checked with: dataset and teacher together."""
    return hashlib.sha256(f"dataset={dataset_fp}\nteacher={teacher_fp}".encode()).hexdigest()


@dataclass(frozen=True)
class TeacherPredictions:
    """A loaded cache: `outputs[i]` is the teacher's output on example `example_ids[i]`."""

    task: str
    example_ids: tuple[str, ...]
    outputs: torch.Tensor  # (n, num_labels) logits or (n,) regression outputs
    fingerprint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_row", {eid: i for i, eid in enumerate(self.example_ids)})

    def __len__(self) -> int:
        return len(self.example_ids)

    def rows(self, ids: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Row numbers of `ids` (int64); an unknown id is a UserError."""
        try:
            return torch.tensor([self._row[i] for i in ids], dtype=torch.int64)
        except KeyError as e:
            raise UserError(
                f"teacher predictions for {self.task} have no example {e.args[0]!r}: the cache was"
                " made on other examples; retrain the teacher or delete its predictions file"
            ) from None

    def lookup(self, ids: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Teacher outputs of `ids`, in that order: (len(ids), num_labels) or (len(ids),)."""
        return self.outputs[self.rows(ids)]


def save_teacher_predictions(path: str | Path, *, task: str, example_ids: list[str],
                             outputs: torch.Tensor, fingerprint: str) -> None:
    """Write a cache atomically (safetensors; ids, task and fingerprint in its metadata)."""
    if outputs.shape[0] != len(example_ids):
        raise ValueError(f"{outputs.shape[0]} outputs for {len(example_ids)} example ids")
    if len(set(example_ids)) != len(example_ids):
        raise ValueError("example ids of a teacher cache must be unique")
    metadata = {
        "format": FORMAT,
        "task": task,
        "fingerprint": fingerprint,
        "example_ids": json.dumps(list(example_ids)),
    }
    data = save({"outputs": outputs.detach().float().cpu().contiguous()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_teacher_predictions(path: str | Path, *, task: str, expected_fingerprint: str,
                             expected_ids: list[str] | None = None) -> TeacherPredictions:
    """Read a cache, refusing it (UserError) if its task, fingerprint or ids do not match.

    `expected_ids`, when given, must equal the cached ids as a set (order may differ:
    lookups go by id).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"teacher predictions '{path}' not found; run `bornagain glue-teachers` first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        outputs = load_file(str(path))["outputs"]
        ids = tuple(json.loads(meta["example_ids"]))
    except Exception as e:  # truncated or garbled file
        raise UserError(
            f"teacher predictions '{path}' are corrupt ({e.__class__.__name__}); delete the file and"
            " rerun `bornagain glue-teachers --resume` to rewrite it"
        ) from None
    if meta.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a bornagain teacher-predictions file")
    if meta.get("task") != task:
        raise UserError(f"teacher predictions '{path}' are for task {meta.get('task')!r}, not {task!r}")
    if meta.get("fingerprint") != expected_fingerprint:
        raise UserError(
            f"teacher predictions '{path}' do not match this data/tokenizer/teacher (fingerprint"
            f" {meta.get('fingerprint', '')[:12]} != expected {expected_fingerprint[:12]}): they were made"
            " for other examples, another tokenizer or max_seq_length, or another teacher checkpoint."
            " Use the same glue settings as the teachers, or retrain them in a new --output"
        )
    if outputs.shape[0] != len(ids):
        raise UserError(f"teacher predictions '{path}' hold {outputs.shape[0]} rows for {len(ids)} ids; delete it")
    if expected_ids is not None and set(expected_ids) != set(ids):
        raise UserError(
            f"teacher predictions '{path}' cover {len(ids)} examples but {len(expected_ids)} were expected"
            " (different example ids); use the teachers' glue settings or retrain them"
        )
    return TeacherPredictions(task=task, example_ids=ids, outputs=outputs, fingerprint=expected_fingerprint)
