"""Faults the engine handles for every pipeline: SIGKILL anywhere (mid-step, mid-checkpoint-write),
SIGTERM, a non-finite loss, a failed write, a second process, a crafted checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from bam_fixtures import tiny_overrides, write_tiny_encoder, write_tiny_glue  # noqa: E402

from bornagain_kd.engine import trainer  # noqa: E402
from bornagain_kd.engine.checkpoint import read_checkpoint  # noqa: E402
from bornagain_kd.engine.distributed import DistInfo  # noqa: E402
from bornagain_kd.engine.lock import run_lock  # noqa: E402
from bornagain_kd.engine.trainer import EngineSettings, StepOutput, train  # noqa: E402
from bornagain_kd.errors import UserError  # noqa: E402

VISION = ["model.name=resnet-8", "train.batch_size=128", "train.progress=false", "train.trackers=[]",
          "train.num_threads=1", "data.train_subset=640", "data.val_size=128", "train.epochs=3"]


def _cli(command, out, *extra, env_extra=None):
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1")
    for key in ("BORNAGAIN_KILL_AT_STEP", "BORNAGAIN_TERM_AT_STEP", "BORNAGAIN_KILL_IN_WRITE"):
        env.pop(key, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bornagain_kd", command, "--output", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def _same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _untimed(results: dict) -> dict:
    """What a run learned: not how long it took, nor its speed choices (their reasons say 'recorded' after a
    resume and quote this machine's measurements, which grow with every run)."""
    return {k: v for k, v in results.items() if k not in ("train_seconds", "speed")}


@pytest.fixture(scope="module")
def vision_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    done = _cli("train", out, *VISION)
    assert done.returncode == 0, done.stderr
    return out


def test_sigterm_writes_a_checkpoint_and_resume_is_identical(tmp_path, vision_reference):
    # 512 images / 128 = 4 steps an epoch; SIGTERM before step 6 (mid epoch 2): step 6 finishes, then stop
    stopped = _cli("train", tmp_path / "run", *VISION, env_extra={"BORNAGAIN_TERM_AT_STEP": "6"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    extra = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["extra"]
    assert (extra["step"], extra["epoch"], extra["batch"]) == (7, 1, 3)
    resumed = _cli("train", tmp_path / "run", "--resume", *VISION)
    assert resumed.returncode == 0, resumed.stderr
    ref = json.loads((vision_reference / "results.json").read_text())
    assert _untimed(json.loads((tmp_path / "run" / "results.json").read_text())) == _untimed(ref)
    assert _same_weights(vision_reference / "model.safetensors", tmp_path / "run" / "model.safetensors")


def test_killed_while_writing_a_checkpoint_resumes_identically(tmp_path, vision_reference):
    # SIGKILL inside the second checkpoint write (after the temporary file, before the rename)
    killed = _cli("train", tmp_path / "run", *VISION, "train.checkpoint_every_steps=3",
                  env_extra={"BORNAGAIN_KILL_IN_WRITE": "checkpoint.safetensors:2"})
    assert killed.returncode == -signal.SIGKILL
    read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")  # the first checkpoint is intact
    resumed = _cli("train", tmp_path / "run", "--resume", *VISION, "train.checkpoint_every_steps=3")
    assert resumed.returncode == 0, resumed.stderr
    ref = json.loads((vision_reference / "results.json").read_text())
    assert _untimed(json.loads((tmp_path / "run" / "results.json").read_text())) == _untimed(ref)


def _glue_args(root: Path) -> list[str]:
    return tiny_overrides(write_tiny_glue(root / "glue"), write_tiny_encoder(root / "encoder"))


def test_glue_teacher_killed_at_a_random_step_resumes_identically(tmp_path):
    args = [*_glue_args(tmp_path), "glue.tasks=[MRPC]", "train.epochs=2", "train.checkpoint_every_steps=2",
            "train.trackers=[]"]
    ref = _cli("glue-teachers", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    step = random.Random(12).randrange(1, 6)  # 24 examples / batch 8: 3 steps an epoch, 6 in all
    killed = _cli("glue-teachers", tmp_path / "run", *args, env_extra={"BORNAGAIN_KILL_AT_STEP": f"MRPC teacher:{step}"})
    assert killed.returncode == -signal.SIGKILL
    resumed = _cli("glue-teachers", tmp_path / "run", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((tmp_path / d / "teachers" / "MRPC" / "results.json").read_text()) for d in ("ref", "run"))
    assert _untimed(a) == _untimed(b)
    assert _same_weights(tmp_path / "ref" / "teachers" / "MRPC" / "model.safetensors",
                         tmp_path / "run" / "teachers" / "MRPC" / "model.safetensors")


def test_bam_student_killed_at_a_random_step_resumes_identically(tmp_path):
    args = [*_glue_args(tmp_path), "bam.seeds=[0]", "bam.targets=[annealed]", "train.checkpoint_every_steps=2",
            "train.trackers=[]"]
    ref = _cli("bam", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    step = random.Random(7).randrange(1, 8)
    killed = _cli("bam", tmp_path / "run", *args, env_extra={"BORNAGAIN_KILL_AT_STEP": f"annealed seed 0:{step}"})
    assert killed.returncode == -signal.SIGKILL
    resumed = _cli("bam", tmp_path / "run", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    run = Path("students") / "annealed" / "seed0"
    a, b = (json.loads((tmp_path / d / run / "results.json").read_text()) for d in ("ref", "run"))
    assert _untimed(a) == _untimed(b)
    assert _same_weights(tmp_path / "ref" / run / "model.safetensors", tmp_path / "run" / run / "model.safetensors")


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        busy = _cli("train", out, "--resume", *VISION)
        assert busy.returncode == 2 and "in use by process" in busy.stderr
    # a holder killed with SIGKILL: the kernel drops its lock, the next process takes it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from bornagain_kd.engine.lock import run_lock\n"
        f"with run_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="in use"):
        with run_lock(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(out):
        pass


class _Regression:
    """A tiny task for the engine alone: fit y = 2x with one weight; the loss can be poisoned."""

    name, epochs = "toy", 2

    def __init__(self, poison_step=None):
        self.poison_step = poison_step

    def build_model(self):
        return torch.nn.Linear(1, 1, bias=False)

    def build_optimizer(self, model, steps_per_epoch):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def epoch_batches(self, epoch, dist: DistInfo):
        return [torch.full((4, 1), float(i + 1)) for i in range(3)]

    def loss(self, model, x, step):
        loss = ((model(x) - 2 * x) ** 2).mean()
        if step == self.poison_step:
            loss = loss * float("nan")
        return StepOutput(loss=loss, count=x.shape[0])

    def evaluate(self, model, epoch):
        return {}

    def finish(self, model, run_dir):
        return {"weight": float(model.weight)}


def _settings(**kw):
    return EngineSettings(device=torch.device("cpu"), progress=False, trackers=(), **kw)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(UserError, match="non-finite at step 5"):
        train(tmp_path, _Regression(poison_step=4), _settings(checkpoint_every_steps=2), resume=False)
    kept = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert kept["extra"]["step"] == 4 and torch.isfinite(kept["model"]["weight"]).all()
    assert not (tmp_path / "results.json").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    real, calls = trainer.save_checkpoint, []

    def disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", disk_full)
    with pytest.raises(UserError, match="could not write the checkpoint.*No space left.*previous checkpoint is intact"):
        train(tmp_path, _Regression(), _settings(checkpoint_every_steps=2), resume=False)
    assert read_checkpoint(tmp_path / "checkpoint.safetensors")["extra"]["step"] == 2


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['BORNAGAIN_PAYLOAD'], 'w').write('ran')",))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("BORNAGAIN_PAYLOAD", str(marker))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(UserError, match="corrupt or unreadable"):
        train(tmp_path / "run", _Regression(), _settings(), resume=True)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload()))  # the payload is real: unpickling it does run
    assert marker.exists()
