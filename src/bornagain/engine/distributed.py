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


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op when absent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    forced = os.environ.get(ALWAYS_GROUP) == "always" and "RANK" in os.environ
    if world_size <= 1 and not forced:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")), grouped=True)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
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


def _checked(t: torch.Tensor, what: str) -> torch.Tensor:
    """Every tensor collective passes here: a tensor on another device than the process group moves is a bug
    of ours, named at once (and caught on a CPU-only machine by tests that fake an NCCL group)."""
    want = comm_device()
    if t.device != want:
        raise RuntimeError(f"{what}: a tensor on {t.device} given to the {dist.get_backend()} process group, which "
                           f"needs {want}")
    return t


def _enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Every rank waits here. Under NCCL the barrier is told its GPU (else it guesses, and warns)."""
    if _enabled():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(index: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's slice of a global batch of indices: (B,) -> (~B/world,)."""
    return index[info.rank :: info.world_size] if info.enabled else index


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a tensor over ranks in place; identity outside torchrun. ``t`` must be on
    :func:`comm_device` (the run's GPU under NCCL, the CPU under gloo)."""
    if not _enabled():
        return t
    dist.all_reduce(_checked(t, "all_reduce_tensor"), op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def max_over_ranks(value: float) -> float:
    """The largest of every rank's ``value`` (a stop request: one rank's signal stops all); ``value`` alone
    outside torchrun. The tensor is made where the process group moves tensors."""
    if not _enabled():
        return value
    return all_reduce_tensor(torch.tensor([float(value)], dtype=torch.float64, device=comm_device()), op="max").item()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (e.g. RNG states for rank 0 to checkpoint); [obj] alone. (Pickled;
    under NCCL torch stages the bytes on the current GPU, which init_distributed set.)"""
    if not _enabled():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
