"""Two CPU processes under torchrun (gloo): the run completes and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
def test_torchrun_two_processes_ban(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    env.pop("BORNAGAIN_KILL_AT_STEP", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bornagain.cli", "ban", "--output", str(out), "train.epochs=2", "ban.generations=1",
           "model.name=resnet-8", "train.batch_size=128", "train.tensorboard=false", "train.num_threads=1",
           "data.train_subset=512", "data.val_size=128", "train.device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| Network |") == 1  # the table is printed by rank 0 only
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0, 1]
    for g in ("gen0", "gen1"):
        epochs = [json.loads(l)["epoch"] for l in (out / g / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]  # one writer: no duplicated records
    assert not list(out.rglob("*.tmp"))
