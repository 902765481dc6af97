"""Task mixing for the multi-task student (BAM paper, Clark et al. 2019).

Each task's share of the training examples is proportional to |D_task|^alpha
(alpha = ``bam.task_weight_exponent``, 0.75 in the paper):

    share_t = |D_t|^alpha / sum_u |D_u|^alpha

so small tasks are seen more often than their size alone gives (alpha = 1 is
proportional sampling, alpha = 0 gives every task the same share).

One student *epoch* is defined as sum_t |D_t| examples (as many as one pass
over every task's training set), of which task t contributes
n_t = share_t * sum_u |D_u| (largest-remainder rounding, so the counts add up
exactly). Within an epoch a task's examples are drawn by walking through fresh
random permutations of its training set (a small task repeats its examples, a
large task sees a random subset), then all drawn examples are shuffled together
and cut into minibatches of ``batch_size``: a minibatch mixes tasks. The number
of steps is therefore known up front,

    steps_per_epoch = ceil(sum_t |D_t| / batch_size)
    total_steps     = ceil(epochs * steps_per_epoch),

which makes lambda = step / total_steps exact (under torchrun a last minibatch smaller than the
number of processes is dropped: see ``steps_per_epoch``). Epoch e's plan depends only on (seed, e),
so a resumed run re-creates it instead of storing sampler state.

``both_orders`` (MRPC, STS-B): each drawn example of such a task is presented
with its two sentences swapped with probability 1/2; its label and its teacher
prediction (looked up by the original example id) stay the same.

``lengths`` (``bam.bucket_by_length``): the mixed order is cut into chunks of
``bucket_batches`` minibatches, each chunk is sorted by token length and cut into
minibatches, and the full minibatches are shuffled (the short last one stays
last). A minibatch then holds examples of similar length, still drawn from
every task, and is padded far less: without it a mixed batch is padded to its
longest member, which with RTE and MRPC in the mix is close to max_seq_length
for every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from bornagain_kd.errors import UserError
from bornagain_kd.glue.tokenization import sort_within_chunks


def task_shares(task_sizes: Mapping[str, int], exponent: float) -> dict[str, float]:
    """share_t = |D_t|^exponent / sum_u |D_u|^exponent, in the order of ``task_sizes``."""
    if not task_sizes:
        raise UserError("the multi-task student needs at least one task: set glue.tasks")
    for task, size in task_sizes.items():
        if size <= 0:
            raise UserError(f"task {task} has no training examples: check its train.tsv or glue.max_train_examples")
    weights = {task: float(size) ** exponent for task, size in task_sizes.items()}
    total = sum(weights.values())
    return {task: weight / total for task, weight in weights.items()}


def allocate_counts(shares: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` examples by ``shares`` with largest-remainder rounding (counts sum to ``total``)."""
    raw = {task: share * total for task, share in shares.items()}
    counts = {task: int(math.floor(value)) for task, value in raw.items()}
    left = total - sum(counts.values())
    # Give the leftover examples to the largest fractional parts (ties: task order).
    by_remainder = sorted(raw, key=lambda task: raw[task] - counts[task], reverse=True)
    for task in by_remainder[:left]:
        counts[task] += 1
    return counts


def examples_per_epoch(task_sizes: Mapping[str, int]) -> int:
    """One student epoch = sum_t |D_t| examples."""
    return int(sum(task_sizes.values()))


def steps_per_epoch(task_sizes: Mapping[str, int], batch_size: int, world_size: int = 1) -> int:
    """ceil(sum_t |D_t| / batch_size), less the short last minibatch when it holds fewer examples than there are
    processes under torchrun (each rank takes a slice of every minibatch and needs at least one example): that
    minibatch is dropped on every rank alike, and its at most world_size - 1 examples wait for the next epoch's
    fresh draw. The vision runs and the GLUE teachers drop such a batch the same way."""
    if batch_size <= 0:
        raise UserError(f"bam.batch_size must be positive, got {batch_size}")
    examples = examples_per_epoch(task_sizes)
    steps = math.ceil(examples / batch_size)
    last = examples - (steps - 1) * batch_size  # examples in the last minibatch, 1..batch_size
    if last < world_size:
        steps -= 1
    if steps < 1:
        raise UserError(f"{examples} training example(s) per epoch cannot be shared by {world_size} processes: "
                        "give more examples (glue.max_train_examples) or launch fewer processes")
    return steps


def total_steps(task_sizes: Mapping[str, int], batch_size: int, epochs: float, world_size: int = 1) -> int:
    """ceil(epochs * steps_per_epoch): the lambda schedule's denominator."""
    if epochs <= 0:
        raise UserError(f"bam.epochs must be positive, got {epochs}")
    return max(1, math.ceil(epochs * steps_per_epoch(task_sizes, batch_size, world_size) - 1e-9))


@dataclass(frozen=True)
class EpochPlan:
    """The examples of one student epoch, in training order; all arrays have shape (n,)."""

    tasks: tuple[str, ...]
    """Task names; ``task_index`` points into this tuple."""
    task_index: np.ndarray
    example_index: np.ndarray
    """Row of the example in its task's training set."""
    swapped: np.ndarray
    """True where the two sentences are presented in swapped order."""
    batch_size: int

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.task_index) / self.batch_size)

    def batch(self, index: int) -> list[tuple[str, int, bool]]:
        """Minibatch ``index`` of the epoch as (task, example row, swapped) triples."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range for an epoch of {self.num_batches} batches")
        start, stop = index * self.batch_size, (index + 1) * self.batch_size
        return [
            (self.tasks[int(t)], int(i), bool(s))
            for t, i, s in zip(self.task_index[start:stop], self.example_index[start:stop], self.swapped[start:stop])
        ]


def _draw_rows(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """``count`` rows from a task of ``size`` examples, walking through fresh permutations."""
    passes = math.ceil(count / size) if count else 0
    rows = [rng.permutation(size) for _ in range(passes)]
    return np.concatenate(rows)[:count] if rows else np.zeros(0, dtype=np.int64)


def plan_epoch(
    task_sizes: Mapping[str, int],
    exponent: float,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    swap_tasks: Sequence[str] = (),
    lengths: Mapping[str, np.ndarray] | None = None,
    bucket_batches: int = 50,
) -> EpochPlan:
    """The mixed-task order of epoch ``epoch`` (deterministic in ``seed`` and ``epoch``).

    ``lengths[task]`` (shape (|D_task|,), token counts) turns on length bucketing (module doc).
    """
    tasks = tuple(task_sizes)
    counts = allocate_counts(task_shares(task_sizes, exponent), examples_per_epoch(task_sizes))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0xBA4])
    task_index = np.concatenate([np.full(counts[t], k, dtype=np.int64) for k, t in enumerate(tasks)])  # (n,)
    example_index = np.concatenate([_draw_rows(rng, task_sizes[t], counts[t]) for t in tasks]).astype(np.int64)
    swappable = np.isin(task_index, [k for k, t in enumerate(tasks) if t in set(swap_tasks)])  # (n,)
    swapped = swappable & (rng.random(len(task_index)) < 0.5)
    order = rng.permutation(len(task_index))  # mix the tasks inside every minibatch
    if lengths is not None:
        order = _bucket_order(order, _drawn_lengths(lengths, tasks, task_index, example_index), batch_size,
                              bucket_batches, rng)
    return EpochPlan(tasks, task_index[order], example_index[order], swapped[order], batch_size)


def _drawn_lengths(lengths: Mapping[str, np.ndarray], tasks: tuple[str, ...], task_index: np.ndarray,
                   example_index: np.ndarray) -> np.ndarray:
    """Token count of every drawn example, shape (n,) (a swapped pair has the same length)."""
    out = np.zeros(len(task_index), dtype=np.int64)
    for k, task in enumerate(tasks):
        rows = task_index == k
        out[rows] = np.asarray(lengths[task])[example_index[rows]]
    return out


def _bucket_order(order: np.ndarray, drawn_lengths: np.ndarray, batch_size: int, bucket_batches: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``order`` with each chunk of ``bucket_batches`` minibatches sorted by length, then the full
    minibatches shuffled; the last, possibly short, minibatch stays last so ``EpochPlan.batch``
    keeps cutting at multiples of ``batch_size``."""
    order = sort_within_chunks(order, drawn_lengths, batch_size * bucket_batches)
    full = len(order) // batch_size
    batches = order[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([batches.reshape(-1), order[full * batch_size:]])
