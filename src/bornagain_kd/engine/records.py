"""What a run keeps between steps: where it is, the epoch's running sums (on the device), and the step
records still waiting to be read from the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bornagain_kd.engine.distributed import DistInfo, all_reduce_tensor, current
from bornagain_kd.engine.run_log import RunLogger
from bornagain_kd.errors import UserError


@dataclass
class StepOutput:
    """A task's loss on one batch: the scalar to minimise, per-example sums for the epoch means,
    and values for the step record. Tensors stay on the device (no host sync per step)."""

    loss: torch.Tensor
    count: int
    """Examples in this rank's batch (the weight of this step in the epoch means)."""
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    """Summed over the batch's examples; epoch record key f"train_{name}" = total / examples."""
    log: dict[str, Any] = field(default_factory=dict)
    """Extra values of this step's record (read only on steps that log)."""


class EpochProgress:
    """Where the run is (step, epoch, batch in the epoch) and the epoch's running sums, on the device."""

    def __init__(self):
        self.step = self.epoch = self.batch = 0
        self.seconds = 0.0  # training time of the current epoch before the last checkpoint
        self.total_seconds = 0.0
        self.compile_seconds = 0.0
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bad_step = None  # tensor: first step whose loss was not finite (-1: none)
        self.lr = float("nan")

    def add(self, out: StepOutput, grad_norm) -> None:
        loss = out.loss.detach()
        for k, v in {"loss": loss * out.count, **out.sums}.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += out.count
        # The finite check stays on the device; it is read when a record or a checkpoint is written.
        if self.bad_step is None:
            self.bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        keep = (self.bad_step >= 0) | torch.isfinite(loss)
        self.bad_step = torch.where(keep, self.bad_step, self.step)

    def check_finite(self, name: str) -> None:
        """Raise once any rank's loss was non-finite, on every rank alike: the ranks call this at the same steps
        and agree on the first bad step (the smallest over the ranks), so none exits alone while the others wait
        in their next collective."""
        none = torch.iinfo(torch.long).max
        local = -1 if self.bad_step is None else int(self.bad_step)  # the one read of the device
        first = local if local >= 0 else none
        if current().enabled:  # the earliest bad step over the ranks: a max of negated steps
            first = -int(all_reduce_tensor(torch.tensor(-first, dtype=torch.long), op="max"))
        if first != none:
            raise UserError(f"{name}: the loss became non-finite at step {first + 1}; the last good "
                            "checkpoint is kept. Lower the learning rate (or use train.precision=fp32) and --resume")

    def epoch_record(self, dist: DistInfo, device: torch.device, seconds: float) -> dict:
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k].to(torch.float64) for k in keys] + [torch.tensor(float(self.count),
                            dtype=torch.float64, device=self.sums[keys[0]].device if keys else device)])
        total = all_reduce_tensor(local).tolist()  # metrics over every rank's examples
        n = max(total[-1], 1.0)
        record = {"epoch": self.epoch + 1, "lr": self.lr}
        record.update({f"train_{k}": v / n for k, v in zip(keys, total)})
        record.update(examples=int(total[-1]), epoch_seconds=seconds,
                      images_per_second=total[-1] / seconds if seconds > 0 else float("nan"))
        self.total_seconds += seconds
        return record

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.seconds = self.epoch + 1, 0, 0.0
        self.sums, self.count = {}, 0

    def sums_to_extra(self) -> dict:
        return {"count": self.count, "sums": {k: float(v) for k, v in self.sums.items()}}

    def restore_sums(self, extra: dict, device: torch.device) -> None:
        self.count = int(extra["count"])
        self.sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in extra["sums"].items()}

    def to_extra(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "seconds": self.seconds, "lr": self.lr,
                "total_seconds": self.total_seconds, "compile_seconds": self.compile_seconds, **self.sums_to_extra()}

    @classmethod
    def from_extra(cls, extra: dict, device: torch.device) -> "EpochProgress":
        p = cls()
        p.step, p.epoch, p.batch = int(extra["step"]), int(extra["epoch"]), int(extra["batch"])
        p.seconds, p.total_seconds = float(extra["seconds"]), float(extra["total_seconds"])
        p.lr = float(extra["lr"])
        p.compile_seconds = float(extra.get("compile_seconds", 0.0))
        p.restore_sums(extra, device)  # rank 0's (every rank's own are in extra["ranks"])
        return p


READ_EVERY_STEPS = 32
"""Step records stay on the device and are read (one transfer) every this many records, at checkpoints and
at epoch ends: logging every step costs no host synchronisation per step."""


class PendingRecords:
    """Step records whose tensor values (loss, grad norm, task logs) are still on the device."""

    def __init__(self):
        self.items: list[tuple[int, dict]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, step: int, out: StepOutput, grad_norm, lr: float) -> None:
        record = {"loss": out.loss.detach(), "lr": lr}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm.detach()
        record.update(out.log)
        self.items.append((step, record))

    def write(self, logger: RunLogger) -> None:
        """Read every pending tensor with one device-to-host copy, then log the records in order."""
        if not self.items:
            return
        places = [(i, k) for i, (_, r) in enumerate(self.items) for k, v in r.items() if isinstance(v, torch.Tensor)]
        values = torch.stack([self.items[i][1][k].float().reshape(()) for i, k in places]).tolist() if places else []
        for (i, k), v in zip(places, values):
            self.items[i][1][k] = v
        for step, record in self.items:
            logger.log(record, step=step)
        self.items = []
