"""Collectives under torchrun: every tensor goes to the process group on the device that group moves, and the
gradient of a data-parallel step is the gradient of the loss over the global batch, however unevenly the batch
splits over the ranks and whatever the loss normalises by.

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

import bornagain_kd.engine.distributed as distributed
from bornagain_kd.engine.distributed import DistInfo

SRC = Path(__file__).resolve().parent.parent / "src" / "bornagain_kd"
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
    from bornagain_kd.engine.signals import STOP_CHECK_EVERY, SignalFlag

    with pytest.raises(Reached):
        SignalFlag().requested(DistInfo(0, 2, 0), STOP_CHECK_EVERY)


def test_the_epoch_record_reduces_on_the_groups_device(fake_nccl):
    from bornagain_kd.engine.records import EpochProgress, StepOutput

    state = EpochProgress()
    meta = torch.device("meta")
    state.add(StepOutput(loss=torch.zeros((), device=meta), count=4, sums={"accuracy": torch.zeros((), device=meta)}),
              None)
    with pytest.raises(Reached):
        state.epoch_record(DistInfo(0, 2, 0), meta, seconds=1.0)


def test_cwtm_sums_its_weights_over_the_ranks_on_the_groups_device(fake_nccl):
    from bornagain_kd.distill.ban_losses import resolve_loss

    logits = torch.zeros(4, 3, device="meta")
    with pytest.raises(Reached):
        resolve_loss("cwtm")(logits, logits, torch.zeros(4, dtype=torch.long, device="meta"),
                             across_ranks=distributed.all_reduce_tensor)


def test_the_ranks_share_of_the_batch_is_summed_on_the_groups_device(fake_nccl):
    with pytest.raises(Reached):
        distributed.rank_share(3, DistInfo(0, 2, 0), torch.device("cpu"))


def test_a_tensor_on_another_device_is_moved_to_the_groups_device(fake_nccl):
    with pytest.raises(Reached):  # a CPU tensor arrives on the group's device, not refused
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


SLICES = (slice(0, 5), slice(5, 8))  # an uneven split of 8 examples over 2 ranks, as a batch of 17 splits 9 / 8


def _loss_rank(rank: int, world: int, port: int, loss_name: str, out: str) -> None:
    """One rank of a data-parallel step as the engine takes it: a shared linear student, this rank's slice of
    the global batch, the loss weighted by the rank's share (engine/trainer.py), gradients averaged over the
    ranks as DistributedDataParallel does."""
    from bornagain_kd.distill.ban_losses import resolve_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, teacher, labels, weight = _batch()
    part = SLICES[rank]
    parts = resolve_loss(loss_name)(x[part] @ weight, teacher[part], labels[part],
                                    across_ranks=distributed.all_reduce_tensor)
    info = distributed.current()
    (parts["loss"] * distributed.rank_share(len(labels[part]), info, torch.device("cpu"))).backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= world
    if rank == 0:
        torch.save(grad, out)
    dist.destroy_process_group()


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    teacher = torch.randn(8, 3, generator=g)
    teacher[5:] *= 6.0  # rank 1's teacher is far more confident than rank 0's: per-rank weights would differ
    labels = torch.randint(0, 3, (8,), generator=g)
    weight = torch.randn(5, 3, generator=g).requires_grad_(True)
    return x, teacher, labels, weight


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
@pytest.mark.parametrize("loss_name", ["cwtm", "ban+l"])
def test_a_step_over_two_unequal_ranks_has_the_global_batch_gradient(tmp_path, loss_name):
    """The mean of the ranks' gradients equals one process's gradient on the whole batch (float rounding
    apart), for CWTM (weights normalised over the batch) and BAN+L (a mean over the batch), with slices of 5 and
    3 examples. Before: CWTM normalised its weights per rank (46% off, relative norm, at equal slices) and every
    loss averaged the ranks' means with equal weights."""
    from bornagain_kd.distill.ban_losses import resolve_loss

    out = tmp_path / "grad.pt"
    mp.spawn(_loss_rank, args=(2, _free_port(), loss_name, str(out)), nprocs=2, join=True)
    x, teacher, labels, weight = _batch()
    resolve_loss(loss_name)(x @ weight, teacher, labels)["loss"].backward()
    assert torch.allclose(torch.load(out), weight.grad, rtol=1e-5, atol=1e-7)


def test_cwtm_in_one_process_is_the_papers_weighted_sum():
    """One process: sum_s w_s CE_s with w_s = c_s / sum_u c_u (Furlanello et al., CWTM)."""
    import torch.nn.functional as F

    from bornagain_kd.distill.ban_losses import cwtm_loss_parts

    x, teacher, labels, weight = _batch()
    confidence = F.softmax(teacher, dim=1).max(dim=1).values
    expected = (confidence / confidence.sum() * F.cross_entropy(x @ weight, labels, reduction="none")).sum()
    assert torch.allclose(cwtm_loss_parts(x @ weight, teacher, labels)["loss"], expected, rtol=1e-6)




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


def test_every_rank_gets_an_example_or_the_batch_is_refused():
    """One rule for every pipeline: a global batch is cut into per-rank slices; a last batch with fewer examples
    than ranks is dropped on all of them, and a batch size below the world size is refused up front (every
    batch would be dropped: an epoch of no steps)."""
    from bornagain_kd.errors import UserError

    four = DistInfo(1, 4, 1)
    batches = [list(range(10)), list(range(10, 13))]  # the last holds 3 examples for 4 ranks
    assert distributed.rank_slices(batches, four) == [[1, 5, 9]]
    assert distributed.rank_slices(batches, DistInfo()) == batches
    assert distributed.per_rank_batch(10, four, "train.batch_size") == 3
    with pytest.raises(UserError, match="train.batch_size=2 is the global batch.*4 processes"):
        distributed.per_rank_batch(2, four, "train.batch_size")
