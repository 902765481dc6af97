"""Users' own models (model.name by import path) and data (data.name=tensors), from the CLI and the Python API."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

import bornagain_kd
from bornagain_kd.api import run_ban, train
from bornagain_kd.cli import main
from bornagain_kd.errors import UserError
from bornagain_kd.models import create_model

REPO = Path(__file__).resolve().parents[1]
FAST = ["train.epochs=1", "train.progress=false", "train.trackers=[]", "train.num_threads=1"]

NETS = textwrap.dedent('''
    import torch.nn as nn

    class Net(nn.Module):
        """A tiny CNN that any image size fits: conv stem, pooled features, linear head."""

        def __init__(self, num_classes, in_channels, width=8, with_head=True):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
            self.body = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            if with_head:
                self.num_features = width
                self.classifier = nn.Linear(width, num_classes)
            else:
                self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.body(self.stem(x))
            return self.classifier(x) if hasattr(self, "classifier") else self.head(x)

    def build_net(num_classes, in_channels, width=8):
        return Net(num_classes, in_channels, width)

    class Matched(nn.Module):
        """Fits resnet-8's first and last layer: a bias-free 3x3 stem of 16 filters, 64 features."""

        def __init__(self, num_classes, in_channels, hidden=32):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
            self.body = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, hidden, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(hidden, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.num_features = 64
            self.classifier = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.classifier(self.body(self.stem(x)))

    def headless(num_classes, in_channels):
        return Net(num_classes, in_channels, with_head=False)

    def not_a_module(num_classes, in_channels):
        return "a string"

    def broken(num_classes, in_channels):
        raise RuntimeError("out of ideas")

    CONSTANT = 3
''')


@pytest.fixture
def nets(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("bornagain: error: ") and "\n" not in err and "Traceback" not in err
    return err


# --- models by import path ---------------------------------------------------------------------------

def test_import_path_builds_from_a_file_and_from_a_module(nets, monkeypatch):
    model = create_model(f"{nets}:build_net", 7, in_channels=2, width=5)
    assert model(torch.zeros(3, 2, 9, 11)).shape == (3, 7) and model.stem.out_channels == 5
    monkeypatch.syspath_prepend(str(nets.parent))
    same = create_model("nets:build_net", 7, in_channels=2, width=5)
    assert type(same).__name__ == "Net" and same.classifier.out_features == 7


@pytest.mark.parametrize("name, fragment", [
    ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
    ("{dir}/missing.py:f", "does not exist"),
    ("{nets}:nothing_here", "has no attribute 'nothing_here'"),
    ("{nets}:CONSTANT", "not a function"),
    ("{nets}:not_a_module", "not a torch.nn.Module"),
    ("{nets}:broken", "building the model failed (RuntimeError: out of ideas)"),
    ("{bad}:f", "importing"),
])
def test_bad_import_paths_are_one_line_and_write_nothing(tmp_path, nets, capsys, name, fragment):
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_dependency_abc\n")
    name = name.format(dir=tmp_path, nets=nets, bad=bad)
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), f"model.name={name}", *FAST])
    assert fragment in err and name in err
    assert not (tmp_path / "out").exists()


def test_factory_that_rejects_the_kwargs(tmp_path, nets, capsys):
    err = _error(capsys, ["train", "--output", str(tmp_path / "out"), f"model.name={nets}:build_net",
                          "model.kwargs.depth=3", *FAST])
    assert "model.kwargs ['depth']" in err and "num_classes=..., in_channels=..." in err
    assert not (tmp_path / "out").exists()


def test_model_kwargs_must_be_a_mapping_and_reach_zoo_models(tmp_path, capsys):
    err = _error(capsys, ["train", "--output", str(tmp_path / "out"), "model.kwargs=3", *FAST])
    assert "model.kwargs" in err and "mapping" in err
    err = _error(capsys, ["train", "--output", str(tmp_path / "out"), "model.kwargs.depth=3", *FAST])
    assert "does not take option(s) ['depth']" in err  # the zoo's check, reached through model.kwargs
    assert not (tmp_path / "out").exists()


def test_sharing_with_a_model_without_stem_and_head_is_refused_before_training(tmp_path, nets, capsys):
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), "model.name=resnet-8",
                          f"ban.student_model={nets}:headless", "ban.share_stem_and_head=true", *FAST])
    assert "must expose `stem`" in err and "`classifier`" in err and "num_features" in err
    assert not (tmp_path / "out").exists()


def test_cross_architecture_student_by_import_path_shares_the_zoo_teachers_layers(tmp_path, nets):
    # a resnet-8 teacher teaches an own architecture built to fit its first and last layer, with its own
    # options (ban.student_kwargs); the student's shared layers are the teacher's, frozen
    results = run_ban(None, output=tmp_path / "out", overrides=[
        "model.name=resnet-8", f"ban.student_model={nets}:Matched", "ban.student_kwargs={hidden: 24}",
        "ban.share_stem_and_head=true", "ban.generations=1", "ban.ensembles=[]", *FAST])
    assert results["student_model"] == f"{nets}:Matched"
    teacher, student = (load_file(tmp_path / "out" / g / "model.safetensors") for g in ("gen0", "gen1"))
    assert torch.equal(teacher["stem.weight"], student["stem.weight"])
    assert torch.equal(teacher["classifier.weight"], student["classifier.weight"])
    assert student["body.2.weight"].shape[0] == 24  # ban.student_kwargs reached the student's factory


def test_teacher_run_of_an_own_model_is_checked_against_its_options(tmp_path, nets, capsys):
    args = [f"model.name={nets}:build_net", "model.kwargs.width=6", *FAST]
    assert main(["train", "--output", str(tmp_path / "teacher"), *args]) == 0
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), f"model.name={nets}:build_net",
                          "model.kwargs.width=4", f"ban.teacher_run={tmp_path / 'teacher'}", *FAST])
    assert "model.kwargs.width" in err
    assert not (tmp_path / "out").exists()
    assert main(["ban", "--output", str(tmp_path / "out"), *args, f"ban.teacher_run={tmp_path / 'teacher'}",
                 "ban.generations=1", "ban.ensembles=[]"]) == 0


@pytest.mark.slow
def test_import_path_model_on_digits_two_generations_killed_and_resumed(tmp_path, nets):
    args = [f"model.name={nets}:build_net", "model.kwargs.width=8", "ban.generations=2", "train.epochs=2",
            "train.batch_size=128", "data.train_subset=640", "data.val_size=128", *FAST[1:]]

    def cli(out, *extra, kill_at=None):
        env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1")
        env.pop("BORNAGAIN_KILL_AT_STEP", None)
        if kill_at:
            env["BORNAGAIN_KILL_AT_STEP"] = kill_at
        return subprocess.run([sys.executable, "-m", "bornagain_kd", "ban", "--output", str(out), *args, *extra],
                              env=env, capture_output=True, text=True, timeout=600)

    ref = cli(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    killed = cli(tmp_path / "run", kill_at="gen2:6")  # 512 images / 128: mid epoch 2 of generation 2
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "gen1" / "results.json").exists()
    assert not (tmp_path / "run" / "gen2" / "results.json").exists()
    resumed = cli(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ref_r, run_r = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ref", "run"))
    drop = lambda g: {k: v for k, v in g.items() if k != "train_seconds"}
    assert [drop(g) for g in run_r["generations"]] == [drop(g) for g in ref_r["generations"]]
    assert run_r["ensembles"] == ref_r["ensembles"] and len(run_r["ensembles"]) == 2
    wa, wb = (load_file(tmp_path / d / "gen2" / "model.safetensors") for d in ("ref", "run"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert f"{nets}:build_net" in (tmp_path / "run" / "table.md").read_text()
    # the run records the factory's options: resuming with others is refused, naming the key
    changed = cli(tmp_path / "run", "--resume", "model.kwargs.width=4")
    assert changed.returncode == 2 and "model.kwargs.width" in changed.stderr


# --- tensors data ------------------------------------------------------------------------------------

def _stripes(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey (n, h, w) uint8 noise with vertical stripes (class 0), horizontal stripes (1) or none (2): learnable
    in a few epochs by a convolution and a pooled feature, wherever the crop falls."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, h, w), dtype=np.uint8)
    images[labels == 0, :, ::2] += 150
    images[labels == 1, ::2, :] += 150
    return images, labels


def test_tensors_dataset_with_non_square_single_channel_images(tmp_path, nets):
    train_x, train_y = _stripes(300, 6, 12, seed=0)
    test_x, test_y = _stripes(90, 6, 12, seed=1)
    np.savez(tmp_path / "bars.npz", train_images=train_x, train_labels=train_y.astype(np.int32),
             test_images=test_x, test_labels=test_y, classes=np.array(["vertical", "horizontal", "plain"]))
    results = train({"data": {"name": "tensors", "root": str(tmp_path / "bars.npz"), "hflip": False,
                              "crop_padding": 1, "val_size": 30},
                     "model": {"name": f"{nets}:build_net", "kwargs": {"width": 8}}},
                    overrides=["train.epochs=3", "train.lr=0.05", *FAST[1:]], output=tmp_path / "out")
    assert results["dataset"] == "bars.npz (tensors)"
    assert results["test_error"] < 40.0  # chance is 66.7%: the stripes were learned from 6x12 grey images
    saved = load_file(tmp_path / "out" / "test_probs.safetensors")
    assert saved["probs"].shape == (90, 3)


def test_tensors_safetensors_in_nhwc_rgb(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 255, (40, 10, 14, 3), dtype=np.uint8),
              "train_labels": np.arange(40, dtype=np.int64) % 4,
              "test_images": rng.integers(0, 255, (12, 10, 14, 3), dtype=np.uint8),
              "test_labels": np.arange(12, dtype=np.int64) % 4}
    save_file(arrays, str(tmp_path / "d.safetensors"))
    from bornagain_kd.vision.prepare import prepare_data
    from bornagain_kd.vision.config import DataConfig

    data = prepare_data(DataConfig(name="tensors", root=str(tmp_path / "d.safetensors"), val_size=8), 0)
    assert data.train_images.shape[1:] == (3, 10, 14) and data.num_classes == 4 and data.hflip
    assert torch.equal(data.test_images[0], torch.from_numpy(arrays["test_images"][0]).permute(2, 0, 1))


def _tensor_file(tmp_path, **changes) -> Path:
    arrays = {"train_images": np.zeros((20, 1, 8, 8), np.uint8), "train_labels": np.arange(20) % 2,
              "test_images": np.zeros((6, 1, 8, 8), np.uint8), "test_labels": np.arange(6) % 2}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


@pytest.mark.parametrize("changes, fragment", [
    ({"test_labels": None}, "lacks test_labels"),
    ({"train_images": np.zeros((20, 1, 8, 8), np.float32)}, "images must be uint8"),
    ({"train_labels": np.arange(19) % 2}, "give one label per image"),
    ({"train_labels": np.arange(20) % 2 - 1}, "negative label -1"),
    ({"train_labels": np.arange(20) * 0 + 2}, "class(es) [0, 1] have no training image"),
    ({"test_images": np.zeros((6, 1, 8, 9), np.uint8)}, "both splits need the same image size"),
    ({"train_images": np.zeros((20, 3, 8, 3), np.uint8)}, "set data.layout=nchw or data.layout=nhwc"),
    ({"train_labels": np.arange(20) % 2 + 0.5}, "labels must be integers"),
])
def test_bad_tensors_files_are_one_line_and_write_nothing(tmp_path, capsys, changes, fragment):
    path = _tensor_file(tmp_path, **changes)
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), "data.name=tensors", f"data.root={path}", *FAST])
    assert fragment in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_missing_corrupt_and_unknown_tensors_files(tmp_path, capsys):
    out = ["--output", str(tmp_path / "out"), "data.name=tensors", *FAST]
    assert "no such file" in _error(capsys, ["train", *out, f"data.root={tmp_path / 'none.npz'}"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    assert "corrupt" in _error(capsys, ["train", *out, f"data.root={tmp_path / 'bad.safetensors'}"])
    (tmp_path / "bad.npz").write_bytes(b"PK not a zip")
    assert "corrupt" in _error(capsys, ["train", *out, f"data.root={tmp_path / 'bad.npz'}"])
    (tmp_path / "d.pt").write_bytes(b"x")
    assert "reads .safetensors or .npz" in _error(capsys, ["train", *out, f"data.root={tmp_path / 'd.pt'}"])
    assert "needs data.root=FILE" in _error(capsys, ["train", "--output", str(tmp_path / "out"), "data.name=tensors"])
    assert not (tmp_path / "out").exists()


# --- the Python API ----------------------------------------------------------------------------------

def test_api_raises_the_commands_error_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'ban.generation'"):
        run_ban({"ban": {"generation": 2}}, output=tmp_path / "out")
    with pytest.raises(UserError, match="no such file"):
        bornagain_kd.train({"data": {"name": "tensors", "root": str(tmp_path / "x.npz")}}, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert {"run_ban", "train", "glue_teachers", "bam", "create_model", "register_model"} <= set(bornagain_kd.__all__)


@pytest.mark.slow
def test_api_page_example_runs_verbatim(tmp_path):
    """docs/api.md's example: its files saved as named, its shell block and its Python block run as they
    stand (tests/doc_blocks.py runs them; tests/test_docs.py leaves this page to this test)."""
    from doc_blocks import page_blocks, run_block  # noqa: PLC0415

    blocks = page_blocks(REPO / "docs" / "api.md", long=False)
    assert [(b.lang, b.file) for b in blocks] == [("python", "mynets.py"), ("python", "make_data.py"),
                                                  ("bash", None), ("python", None)]
    for block in blocks:
        done = run_block(block, tmp_path, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        if block.file:
            assert (tmp_path / block.file).read_text() == block.text
        elif block.lang == "bash":
            assert "| mynets.py:build_net |" in done.stdout and "BAN-3" in done.stdout
        else:
            errors = json.loads(done.stdout.strip().splitlines()[-1])
            assert len(errors) == 3 and all(0 <= e <= 100 for e in errors)
    results = json.loads((tmp_path / "runs" / "mine" / "results.json").read_text())
    assert len(results["generations"]) == 4 and results["model"] == "mynets.py:build_net"
    assert results["generations"][0]["test_error"] < 20.0  # the CNN learns digits (chance: 90%)
