"""Data-parallel training under `torchrun`: one process per GPU (or CPU process, with gloo).

    torchrun --nproc_per_node=4 -m bornagain.cli ban --config configs/table1-densenet-bc-80-80.yaml

Every rank builds the same model from the same seed, sees the same batch order
(the epoch generator is seeded identically) and trains on its own slice of each
global batch (`train.batch_size` is the global batch). Only rank 0 writes files
(logs, checkpoints, results); the others wait at a barrier and then read what
rank 0 wrote. A frozen teacher is a plain module on every rank, never wrapped in
DistributedDataParallel (it has no gradients to synchronise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op when absent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    """The running process's place in the group (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (epoch loss totals, correct counts)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(index: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's slice of a global batch of indices: (B,) -> (~B/world,)."""
    return index[info.rank :: info.world_size] if info.enabled else index


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a tensor over ranks in place; identity outside torchrun. gloo reduces CPU tensors,
    nccl device tensors: the tensor stays where it is."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (e.g. RNG states for rank 0 to checkpoint); [obj] alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
