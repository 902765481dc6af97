"""Data-parallel training under `torchrun`: one process per GPU (or CPU process, with gloo).

    torchrun --nproc_per_node=4 -m bornagain_kd.cli ban --config configs/table1-densenet-bc-80-80.yaml

Every rank builds the same model from the same seed, sees the same batch order
(the epoch generator is seeded identically) and trains on its own slice of each
global batch (`train.batch_size` is the global batch). Only rank 0 writes files
(logs, checkpoints, results); the others wait at a barrier and then read what
rank 0 wrote. A frozen teacher is a plain module on every rank, never wrapped in
DistributedDataParallel (it has no gradients to synchronise).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bornagain_kd.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    grouped: bool = False
    """A process group exists although there is one process (BORNAGAIN_PROCESS_GROUP=always)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Data-parallel training: DistributedDataParallel, collectives, sharded batches."""
        return self.world_size > 1 or self.grouped


ALWAYS_GROUP = "BORNAGAIN_PROCESS_GROUP"
"""=always: join a process group under torchrun even with one process, so that a machine with one GPU runs the
data-parallel path (DDP, NCCL collectives) too (benchmarks/gpu_check.py). Otherwise one process trains alone."""


def init_distributed(device_kind: str, timeout_minutes: float | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op when absent). ``timeout_minutes``
    (train.dist_timeout): how long a collective waits for the other ranks before the run fails; None: PyTorch's
    default (10 minutes under NCCL, 30 under gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    forced = os.environ.get(ALWAYS_GROUP) == "always" and "RANK" in os.environ
    if world_size <= 1 and not forced:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")), grouped=True)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        if timeout_minutes is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return info


def current() -> DistInfo:
    """The running process's place in the group (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), grouped=True)
    return DistInfo()


def comm_device() -> torch.device:
    """Where a collective's tensors must live: NCCL moves only CUDA tensors of this process's GPU (a CPU tensor
    fails: "No backend type associated with device type cpu"), gloo here only CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Every rank waits here. Under NCCL the barrier is told its GPU (else it guesses, and warns)."""
    if _enabled():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def rank_slices(batches, info: DistInfo) -> list:
    """This rank's slice of every global batch (index tensors or lists): (B,) -> (~B/world,). A batch with fewer
    examples than ranks would leave a rank with nothing: it is dropped on every rank alike (at most
    world_size - 1 examples of an epoch's last batch; ``per_rank_batch`` refuses batches that are all too small).
    Every pipeline slices its batches here."""
    if not info.enabled:
        return list(batches)
    return [b[info.rank :: info.world_size] for b in batches if len(b) >= info.world_size]


def per_rank_batch(batch_size: int, info: DistInfo, key: str) -> int:
    """Examples a rank takes of a global batch of ``batch_size`` (at most; results.json's per_rank_batch). A
    global batch smaller than the number of processes cannot give each rank an example: refused, naming the
    config key, before anything is trained."""
    if batch_size < info.world_size:
        raise UserError(f"{key}={batch_size} is the global batch, split over the {info.world_size} processes, "
                        f"and cannot give each one an example: set {key} to at least {info.world_size} (a multiple "
                        "of it splits evenly), or launch fewer processes")
    return -(-batch_size // info.world_size)


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` summed (or maxed) over ranks, on ``t``'s device; ``t`` itself outside torchrun. The collective runs
    on :func:`comm_device` (the rank's GPU under NCCL, the CPU under gloo): ``t`` is copied there and back when
    it lives elsewhere, so no caller can hand the process group a tensor it refuses."""
    if not _enabled():
        return t
    where = comm_device()
    moved = t if t.device == where else t.to(where)
    dist.all_reduce(moved, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return moved if moved is t else moved.to(t.device)


def max_over_ranks(value: float) -> float:
    """The largest of every rank's ``value`` (a stop request: one rank's signal stops all); ``value`` alone
    outside torchrun."""
    if not _enabled():
        return value
    return all_reduce_tensor(torch.tensor([float(value)], dtype=torch.float64, device=comm_device()), op="max").item()


def rank_share(count: int, info: DistInfo, device: torch.device) -> torch.Tensor:
    """world_size * count / (the step's examples over every rank), on ``device``: the weight that turns this
    rank's mean loss over its ``count`` examples into its part of the global-batch mean, since
    DistributedDataParallel averages the ranks' gradients with equal weights. Exactly 1.0 when the ranks'
    slices are equal; one all-reduce of a scalar a step (the caller asks only under data-parallel training)."""
    total = all_reduce_tensor(torch.tensor(float(count), dtype=torch.float32, device=device))
    return info.world_size * count / total


def shutdown() -> None:
    """Leave the process group at the end of a command (torch warns on every NCCL rank that exits without)."""
    if _enabled():
        dist.destroy_process_group()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (e.g. RNG states for rank 0 to checkpoint); [obj] alone. (Pickled;
    under NCCL torch stages the bytes on the current GPU, which init_distributed set.)"""
    if not _enabled():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def decided_by_rank0(decide):
    """Rank 0's ``decide()`` on every rank, a UserError it raises raised on every rank alike: a decision read from
    files (is this run new, started, finished?) is taken once, by the rank that writes them, before it writes;
    another rank reading them itself could see rank 0's first files and decide otherwise. Then a barrier.
    ``decide()`` itself outside torchrun."""
    if not _enabled():
        return decide()
    payload = [None]
    if dist.get_rank() == 0:
        try:
            payload[0] = ("value", decide())
        except UserError as e:
            payload[0] = ("error", str(e))
    dist.broadcast_object_list(payload, src=0)  # pickled; under NCCL staged on the current GPU
    barrier()
    kind, value = payload[0]
    if kind == "error":
        raise UserError(value)
    return value
