"""Model outputs on a whole split, dev metrics, and the majority-class baseline.

Shared by the single-task teachers and the BAM student. Outputs come back in the
split's example order: (n, num_labels) logits, or (n,) regression outputs on
the [0, 1] scale, as float32 CPU tensors.

Under torchrun the engine evaluates on every rank (``evaluate_on_every_rank``): each
rank predicts every world_size-th length-sorted batch and the outputs are gathered,
so evaluation uses every process instead of leaving all but rank 0 waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bornagain_kd.engine.device import autocast
from bornagain_kd.engine.distributed import DistInfo, all_gather_objects
from bornagain_kd.engine.run_log import progress
from bornagain_kd.glue.data import GlueExample, majority_label
from bornagain_kd.glue.metrics import compute_metrics, predictions_from_outputs, task_score
from bornagain_kd.glue.model import MultiTaskModel
from bornagain_kd.glue.tasks import GlueTask
from bornagain_kd.glue.tokenization import EncodedSplit, eval_batch_indices, iterate_batches


@dataclass(frozen=True)
class Predicting:
    """How a split is predicted: on which device, in which precision, in batches of how many examples, padded
    with which token id."""

    device: torch.device
    precision: str = "fp32"
    batch_size: int = 128
    pad_token_id: int = 0


@torch.inference_mode()
def predict_outputs(model: MultiTaskModel, split: EncodedSplit, task: GlueTask, how: Predicting, *,
                    show_progress: bool = False, dist: DistInfo | None = None) -> torch.Tensor:
    """Outputs of `task`'s head on every example of `split` (eval mode: no dropout).

    With ``dist`` (world size > 1) every rank must call this: each predicts its share of the
    batches and every rank gets all outputs back.
    """
    was_training = model.training
    model.eval()
    shape = (len(split),) if task.is_regression else (len(split), task.num_labels)
    outputs = torch.empty(shape, dtype=torch.float32)
    batches = eval_batch_indices(split.lengths, how.batch_size)  # sorted by length: least padding
    sharded = dist is not None and dist.enabled  # (one rank in a forced group: the gather still runs)
    if sharded:  # round robin over the sorted batches: every rank gets short and long ones
        batches = batches[dist.rank::dist.world_size]
    mine: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in progress(iterate_batches(split, batches, how.pad_token_id, how.device), total=len(batches),
                          desc=f"predict {task.name}", enabled=show_progress):
        with autocast(how.device, how.precision):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task.name)
        mine.append((batch["index"].cpu(), out.float().cpu()))
    for part in all_gather_objects(mine) if sharded else [mine]:
        for index, out in part:
            outputs[index] = out  # scatter back to example order
    model.train(was_training)
    return outputs


def split_metrics(task: GlueTask, split_name: str, outputs: torch.Tensor,
                  labels: torch.Tensor) -> dict[str, float]:
    """The task's metrics on one labelled split (MNLI dev sets get '_m' / '_mm' suffixes)."""
    pred = predictions_from_outputs(task, outputs.numpy())
    return compute_metrics(task, pred, labels.numpy(), suffix=task.metric_suffix(split_name))


def evaluate_dev(model: MultiTaskModel, dev_splits: dict[str, EncodedSplit], task: GlueTask, how: Predicting, *,
                 dist: DistInfo | None = None) -> dict[str, float]:
    """All dev metrics of a task plus its GLUE `score` (mean of its metrics); ``dist``: see predict_outputs."""
    metrics: dict[str, float] = {}
    for name, split in dev_splits.items():
        outputs = predict_outputs(model, split, task, how, dist=dist)
        metrics.update(split_metrics(task, name, outputs, split.labels))
    metrics["score"] = task_score(task, metrics)
    return metrics


def majority_baseline(task: GlueTask, train_examples: list[GlueExample],
                      dev_examples: dict[str, list[GlueExample]]) -> dict[str, float | None]:
    """Dev metrics of always predicting the most frequent training class.

    For regression a constant prediction has no correlation: metrics are None (JSON null).
    """
    if task.is_regression:
        out: dict[str, float | None] = {k: None for k in task.score_keys}
        out["score"] = 0.0
        return out
    majority = majority_label(train_examples)
    metrics: dict[str, float | None] = {}
    for name, examples in dev_examples.items():
        labels = np.asarray([e.label for e in examples])
        metrics.update(compute_metrics(task, np.full_like(labels, majority), labels,
                                       suffix=task.metric_suffix(name)))
    metrics["score"] = task_score(task, metrics)
    return metrics
