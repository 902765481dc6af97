"""Collectives under torchrun: every tensor goes to the process group on the device that group moves, and
losses that normalise over the batch normalise over the global batch.

NCCL (several GPUs) refuses a CPU tensor; gloo (these tests' CPUs) takes it. So a CPU-only machine cannot see
the bug by running a real group: these tests fake an NCCL group whose tensors must live on a device of its own
(the meta device stands in for "this rank's GPU"), call every place that reduces a tensor, and check the
tensor arrived there. A second test keeps collectives from appearing outside the checked helpers.
"""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bornagain.engine.distributed as distributed
from bornagain.engine.distributed import DistInfo

SRC = Path(__file__).resolve().parent.parent / "src" / "bornagain"
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "reduce",
               "reduce_scatter", "gather", "scatter", "barrier", "all_to_all", "send", "recv"}


class Reached(Exception):
    """The fake group got a tensor on its own device: the collective would have run."""


class FakeNccl:
    """Stands in for torch.distributed under NCCL with 2 ranks: its collectives accept only tensors on
    ``device`` (as NCCL accepts only this rank's GPU) and stop the caller there with ``Reached``."""

    ReduceOp = dist.ReduceOp

    def __init__(self, device: torch.device):
        self.device = device
        self.barriers = []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_backend(self):
        return "nccl"

    def get_world_size(self):
        return 2

    def get_rank(self):
        return 0

    def all_reduce(self, t, op=None):
        if t.device != self.device:  # NCCL's own refusal, in its words
            raise RuntimeError(f"No backend type associated with device type {t.device.type}")
        raise Reached(t.device)

    def barrier(self, device_ids=None):
        self.barriers.append(device_ids)


@pytest.fixture
def fake_nccl(monkeypatch):
    group = FakeNccl(torch.device("meta"))
    monkeypatch.setattr(distributed, "dist", group)
    monkeypatch.setattr(distributed, "comm_device", lambda: group.device, raising=False)  # (absent before the fix)
    return group


def test_the_stop_check_reduces_on_the_groups_device(fake_nccl):
    """Every STOP_CHECK_EVERY steps the ranks agree on a stop request (engine/signals.py); the tensor of that
    all-reduce was made on the CPU, which NCCL refuses: every multi-GPU run died at step 8."""
    from bornagain.engine.signals import STOP_CHECK_EVERY, SignalFlag

    with pytest.raises(Reached):
        SignalFlag().requested(DistInfo(0, 2, 0), STOP_CHECK_EVERY)


def test_the_epoch_record_reduces_on_the_groups_device(fake_nccl):
    from bornagain.engine.records import EpochProgress, StepOutput

    state = EpochProgress()
    meta = torch.device("meta")
    state.add(StepOutput(loss=torch.zeros((), device=meta), count=4, sums={"accuracy": torch.zeros((), device=meta)}),
              None)
    with pytest.raises(Reached):
        state.epoch_record(DistInfo(0, 2, 0), meta, seconds=1.0)


def test_cwtm_sums_its_weights_over_the_ranks_on_the_groups_device(fake_nccl):
    from bornagain.distill.ban_losses import cwtm_loss_parts

    logits = torch.zeros(4, 3, device="meta")
    with pytest.raises(Reached):
        cwtm_loss_parts(logits, logits, torch.zeros(4, dtype=torch.long, device="meta"))


def test_a_tensor_on_another_device_is_named_before_the_group_sees_it(fake_nccl):
    with pytest.raises(RuntimeError, match="all_reduce_tensor: a tensor on cpu given to the nccl process group"):
        distributed.all_reduce_tensor(torch.zeros(1))


def test_the_nccl_device_is_this_ranks_gpu_and_the_barrier_is_told_it(monkeypatch):
    group = FakeNccl(torch.device("meta"))
    monkeypatch.setattr(distributed, "dist", group)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.comm_device() == torch.device("cuda", 3)
    distributed.barrier()
    assert group.barriers == [[3]]
    monkeypatch.setattr(group, "get_backend", lambda: "gloo")
    assert distributed.comm_device() == torch.device("cpu")


def test_no_collective_outside_the_checked_helpers():
    """torch.distributed's collectives are called in engine/distributed.py only, where each tensor is checked
    against the group's device; elsewhere the code calls those helpers."""
    calls = []
    for path in SRC.rglob("*.py"):
        if path.name == "distributed.py" and path.parent.name == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES:
                base = ast.unparse(node.value)
                if base in ("dist", "torch.distributed", "distributed"):
                    calls.append(f"{path.relative_to(SRC)}:{node.lineno} {base}.{node.attr}")
    assert calls == []


# --- CWTM over two real processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cwtm_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a data-parallel CWTM step: a shared linear student, this rank's half of the global batch,
    gradients averaged over the ranks as DistributedDataParallel does."""
    from bornagain.distill.ban_losses import cwtm_loss_parts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, teacher, labels, weight = _cwtm_batch()
    part = slice(rank * 4, (rank + 1) * 4)
    loss = cwtm_loss_parts(x[part] @ weight, teacher[part], labels[part])["loss"]
    loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= world
    if rank == 0:
        torch.save(grad, out)
    dist.destroy_process_group()


def _cwtm_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    teacher = torch.randn(8, 3, generator=g)
    teacher[4:] *= 6.0  # rank 1's teacher is far more confident than rank 0's: per-rank weights would differ
    labels = torch.randint(0, 3, (8,), generator=g)
    weight = torch.randn(5, 3, generator=g).requires_grad_(True)
    return x, teacher, labels, weight


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
def test_cwtm_over_two_ranks_is_the_weighted_mean_over_the_global_batch(tmp_path):
    """The mean of the ranks' gradients equals one process's gradient on the whole batch (float rounding
    apart). Normalising each rank's weights over its own half gave a gradient 46% off here (relative norm)."""
    from bornagain.distill.ban_losses import cwtm_loss_parts

    out = tmp_path / "grad.pt"
    mp.spawn(_cwtm_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    x, teacher, labels, weight = _cwtm_batch()
    cwtm_loss_parts(x @ weight, teacher, labels)["loss"].backward()
    assert torch.allclose(torch.load(out), weight.grad, rtol=1e-5, atol=1e-7)


def test_cwtm_in_one_process_is_unchanged():
    """R = 1: the weights over the local batch, exactly as before the global sum existed."""
    import torch.nn.functional as F

    from bornagain.distill.ban_losses import cwtm_loss_parts

    x, teacher, labels, weight = _cwtm_batch()
    confidence = F.softmax(teacher, dim=1).max(dim=1).values
    expected = (confidence / confidence.sum() * F.cross_entropy(x @ weight, labels, reduction="none")).sum()
    assert torch.equal(cwtm_loss_parts(x @ weight, teacher, labels)["loss"], expected)




def _one_rank_group(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      BORNAGAIN_PROCESS_GROUP="always")
    info = distributed.init_distributed("cpu")
    Path(out).write_text(f"{info.enabled} {distributed.current().enabled} {dist.is_initialized()} "
                         f"{distributed.max_over_ranks(3.0)}")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
def test_one_process_joins_a_group_when_asked_so_one_gpu_runs_the_parallel_path(tmp_path):
    """BORNAGAIN_PROCESS_GROUP=always (benchmarks/gpu_check.py): torchrun with one process still joins a process
    group and trains data-parallel, the only way a one-GPU machine runs DDP and NCCL's collectives."""
    out = tmp_path / "info.txt"
    mp.spawn(_one_rank_group, args=(_free_port(), str(out)), nprocs=1, join=True)
    assert out.read_text() == "True True True 3.0"
    assert not distributed.init_distributed("cpu").enabled  # without torchrun's variables: alone, no group
