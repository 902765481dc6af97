"""Decisions every rank must take alike under torchrun (2 gloo processes here): a non-finite loss seen on one rank
stops every rank with the same error, rather than one rank exiting while the others wait in their next
collective."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    from bornagain_kd.engine import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    assert distributed.init_distributed("cpu").enabled


def _finite_rank(rank: int, port: int, out: str) -> None:
    """Rank 1's loss is NaN at step 3 (0-based), rank 0's never: both check, as the engine does, at the same step."""
    from bornagain_kd.engine.records import EpochProgress, StepOutput
    from bornagain_kd.errors import UserError

    _join(rank, 2, port)
    state = EpochProgress()
    for step in range(6):
        state.step = step
        bad = rank == 1 and step == 3
        state.add(StepOutput(torch.tensor(float("nan") if bad else 1.0), 4), None)
    try:
        state.check_finite("gen1")
        Path(out, f"rank{rank}").write_text("no error")
    except UserError as e:
        Path(out, f"rank{rank}").write_text(str(e))
    dist.barrier()  # before the fix rank 0 went on alone: here it would still arrive, having raised nothing
    dist.destroy_process_group()


def test_a_loss_non_finite_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    mp.spawn(_finite_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    said = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert said[0] == said[1] and "non-finite at step 4" in said[0], said


def test_one_process_alone_still_reports_its_first_bad_step():
    from bornagain_kd.engine.records import EpochProgress, StepOutput
    from bornagain_kd.errors import UserError

    state = EpochProgress()
    for step, loss in enumerate([1.0, float("inf"), float("nan"), 1.0]):
        state.step = step
        state.add(StepOutput(torch.tensor(loss), 2), None)
    with pytest.raises(UserError, match="non-finite at step 2;"):
        state.check_finite("gen0")
    clean = EpochProgress()
    clean.add(StepOutput(torch.tensor(1.0), 2), None)
    clean.check_finite("gen0")  # nothing to say


def _seed_rank(rank: int, port: int, root: str) -> None:
    """One seed of `ban.seeds` under torchrun: rank 0 decides, then makes the seed's directory at once (as its
    run's lock does); rank 1 comes to the same check later and must take rank 0's decision, not the folder's."""
    import time

    from bornagain_kd.config import load_config
    from bornagain_kd.errors import UserError
    from bornagain_kd.pipelines.ban import seed_started
    from bornagain_kd.vision.config import VisionConfig

    _join(rank, 2, port)
    run_dir = Path(root) / "seed-0"
    sub = load_config(VisionConfig, None, ["seed=0", f"output_dir={run_dir}"])
    if rank == 1:
        time.sleep(0.5)  # rank 0 is already writing
    try:
        started = seed_started(run_dir, sub, resume=False)
        said = f"started={started}"
    except UserError as e:
        said = str(e)
    if rank == 0:
        run_dir.mkdir()
        (run_dir / ".lock").write_text("")
    Path(root, f"rank{rank}").write_text(said)
    dist.barrier()
    dist.destroy_process_group()


def test_every_rank_takes_rank_0s_decision_on_a_seeds_directory(tmp_path):
    mp.spawn(_seed_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["started=False"] * 2


def test_train_dist_timeout_reaches_the_process_group(monkeypatch):
    """train.dist_timeout (minutes) is the timeout the process group is made with; null leaves PyTorch's own."""
    import datetime

    from bornagain_kd.config import load_config
    from bornagain_kd.engine import distributed
    from bornagain_kd.errors import UserError
    from bornagain_kd.vision.config import VisionConfig

    made = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: made.append(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(VisionConfig, None, ["train.dist_timeout=45"])
    distributed.init_distributed("cpu", cfg.train.dist_timeout)
    distributed.init_distributed("cpu", None)
    assert made == [{"backend": "gloo", "timeout": datetime.timedelta(minutes=45)}, {"backend": "gloo"}]
    with pytest.raises(UserError, match="train.dist_timeout=0"):
        load_config(VisionConfig, None, ["train.dist_timeout=0"])


def _shared_finish_rank(rank: int, port: int, out: str) -> None:
    """The engine calls a task's predict_on_every_rank on every rank, before rank 0 alone finishes."""
    from bornagain_kd.engine.records import StepOutput
    from bornagain_kd.engine.trainer import EngineSettings, train

    _join(rank, 2, port)

    class Shared:
        name, epochs, batch_size = "toy", 1, 8

        def build_model(self):
            return torch.nn.Linear(1, 1, bias=False)

        def build_optimizer(self, model, steps_per_epoch):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

        def epoch_batches(self, epoch, dist):
            return [torch.full((4, 1), 1.0)]

        def loss(self, model, x, step):
            return StepOutput(loss=((model(x) - 2 * x) ** 2).mean(), count=x.shape[0])

        def evaluate(self, model, epoch):
            return {}

        def predict_on_every_rank(self, model):
            self.shared = f"rank {rank} predicted (eval mode: {not model.training})"

        def finish(self, model, run_dir):
            return {"shared": self.shared}

    task = Shared()
    train(Path(out) / "run", task, EngineSettings(device=torch.device("cpu"), progress=False, trackers=()),
          resume=False)
    Path(out, f"rank{rank}").write_text(task.shared)
    dist.destroy_process_group()


def test_the_finishing_predictions_run_on_every_rank(tmp_path):
    mp.spawn(_shared_finish_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [
        f"rank {r} predicted (eval mode: True)" for r in (0, 1)]
    assert (tmp_path / "run" / "results.json").is_file()


def _storage_rank(rank: int, port: int, root: str, shared: bool) -> None:
    """Rank 1 given another folder stands for a node that does not see rank 0's storage."""
    from bornagain_kd.engine.run import check_shared_storage
    from bornagain_kd.errors import UserError

    _join(rank, 2, port)
    output = Path(root) / ("out" if shared or rank == 0 else "elsewhere") / "run"
    try:
        check_shared_storage(output)
        said = "ok"
    except UserError as e:
        said = str(e)
    Path(root, f"rank{rank}").write_text(said)
    dist.destroy_process_group()


@pytest.mark.parametrize("shared", [True, False])
def test_every_rank_must_see_the_output_directory_rank_0_writes(tmp_path, shared):
    mp.spawn(_storage_rank, args=(_free_port(), str(tmp_path), shared), nprocs=2, join=True)
    said = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    if shared:
        assert said == ["ok", "ok"]
    else:  # one error, the same on every rank: none goes on alone
        assert said[0] == said[1] and "1 of the 2 processes cannot see" in said[0] and "shares" in said[0]
    assert not (tmp_path / "out" / "run").exists()  # the marker, and the folder made for it, are gone
