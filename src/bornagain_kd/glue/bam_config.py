"""Configuration of the BAM multi-task student (BAM paper, Clark et al. 2019). Owned by the BAM pipeline.

The student shares the rest of the NLP config with the teachers: `encoder.*` (the
architecture), `optim.*` (AdamW eps, weight decay, layer-wise lr decay, warmup
fraction, gradient clipping), `max_seq_length`, `glue.*` (tasks, data) and
`train.*` (device, precision, threads, checkpoint interval, progress, TensorBoard). Only
what differs between the single-task teachers and the multi-task student lives here: its
lr, batch size, epochs, and the distillation settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bornagain_kd.config import may_differ
from bornagain_kd.distill.bam_targets import TARGET_ARMS
from bornagain_kd.errors import UserError



@dataclass(frozen=True)
class BamConfig:
    """The multi-task student's settings (`bam.*` keys). None defines a teacher ("teacher"); the arms, seeds,
    evaluation batch and test do not define one student run either ("student")."""

    targets: tuple[str, ...] = field(default=("annealed", "labels"), metadata=may_differ("teacher", "student"))
    """Student target arms, each trained once per seed: annealed (BAM: lambda * label +
    (1 - lambda) * teacher, lambda = step / total_steps), fixed (constant teacher weight
    `distill_weight`), labels (plain multi-task), smoothing-annealed (the same schedule from
    uniform label smoothing to hard labels, no teacher)."""
    seeds: tuple[int, ...] = field(default=(0,), metadata=may_differ("teacher", "student"))
    """Each arm is repeated once per seed; the table reports mean +- std over seeds."""
    teacher_per_seed: bool = field(default=True, metadata=may_differ("teacher"))
    """Train one single-task teacher per (task, seed) and let student seed k learn from the
    seed-k teachers, so 'BAM vs teachers' is a paired comparison over seeds. False: one teacher
    per task (trained with the config's `seed`, on that seed's subsample) teaches every student
    seed; the teachers' row then has n = 1 and no paired test against them."""
    distill_weight: float = field(default=0.5, metadata=may_differ("teacher"))
    """Constant teacher weight (1 - lambda) of the `fixed` arm (the original code's 0.5)."""
    task_weight_exponent: float = field(default=0.75, metadata=may_differ("teacher"))
    """Task t's share of the training examples is proportional to |D_t|^exponent."""
    both_orders: bool = field(default=True, metadata=may_differ("teacher"))
    """Present each drawn MRPC / STS-B example with its sentences swapped with probability 1/2."""
    lr: float = field(default=1e-4, metadata=may_differ("teacher"))
    """Peak learning rate of the student (the task heads'; lower layers get layer-wise decay)."""
    batch_size: int = field(default=128, metadata=may_differ("teacher"))
    """Examples per minibatch, mixed across tasks."""
    epochs: float = field(default=6.0, metadata=may_differ("teacher"))
    """Student epochs; one epoch = sum over tasks of |D_task| examples (see sampling.py)."""
    eval_batch_size: int = field(default=256, metadata=may_differ("teacher", "student"))
    """Examples per batch when the student predicts the dev sets."""
    bucket_by_length: bool = field(default=False, metadata=may_differ("teacher"))
    """Sort each chunk of 50 mixed minibatches by token length (less padding, tasks still mixed;
    see sampling.py). Off by default: the original's plain mixed order."""
    paired_test: Literal["t", "wilcoxon"] = field(default="t", metadata=may_differ("teacher", "student"))
    """Significance test over seeds: paired t-test (scipy ttest_rel) or Wilcoxon signed-rank
    (which cannot reach p < 0.05 with fewer than 6 seeds)."""

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserError(f"bam.targets is empty; list at least one of {', '.join(TARGET_ARMS)}")
        for arm in self.targets:
            if arm not in TARGET_ARMS:
                raise UserError(f"bam.targets: unknown arm {arm!r}; choose from {', '.join(TARGET_ARMS)}")
        if len(set(self.targets)) != len(self.targets):
            raise UserError(f"bam.targets lists an arm twice: {list(self.targets)}")
        if not self.seeds:
            raise UserError("bam.seeds is empty; give at least one seed, e.g. bam.seeds=[0,1,2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"bam.seeds lists a seed twice: {list(self.seeds)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise UserError(f"bam.distill_weight={self.distill_weight} must lie in [0, 1]")
        if self.task_weight_exponent < 0:
            raise UserError(f"bam.task_weight_exponent={self.task_weight_exponent} must be >= 0")
        if self.lr <= 0 or self.epochs <= 0:
            raise UserError("bam.lr and bam.epochs must be > 0")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("bam.batch_size and bam.eval_batch_size must be >= 1")

    @property
    def needs_teachers(self) -> bool:
        """Whether any arm reads the teachers' cached predictions."""
        return any(TARGET_ARMS[arm].needs_teacher for arm in self.targets)
