"""The wheel, installed as a user installs it: built from this checkout, installed into a fresh virtual environment
with the repository off the path, and used from a folder that is not the repository: `bornagain ban`, `recipes`,
a packaged recipe by name at smoke size, `env`, and `predict` on the digits run.

The fresh environment gets no packages from the network: its dependencies (torch, numpy, ...) are the ones this
environment has, reached through a path file (a plain path entry: the editable install's own path hooks in this
environment's site-packages are not run there), and the wheel is installed without dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list, cwd: Path, env: dict, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # the wheel, built from a copy of the sources (the build's own build/ folder stays out of the checkout):
    # configs/ packaged as bornagain_kd/_recipes/ by setup.py's build step
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "data", "*.egg-info", "__pycache__", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp_path / "dist",
          source], cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "dist").glob("bornagain_kd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n for n in names if n.startswith("bornagain_kd/_recipes/")}
    assert packaged == {f"bornagain_kd/_recipes/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert not [n for n in names if n.startswith(("tests/", "configs/", "benchmarks/"))]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel], cwd=tmp_path, env=env)

    user = tmp_path / "user"  # a folder of the user's: no configs/, no src/
    user.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([python, "-c", "import bornagain_kd; print(bornagain_kd.__file__)"], user, env).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO), where
    bornagain = venv / "bin" / "bornagain"

    quick = ["train.epochs=1", "train.progress=false", "train.num_threads=1"]
    out = _run([bornagain, "ban", "--output", "runs/demo", *quick], user, env)
    assert "| Network | Parameters | Baseline (teacher) |" in out
    out = _run([bornagain, "recipes"], user, env)
    assert "fast-cifar10-10k" in out and "table1-densenet-bc-80-80" in out
    # a packaged recipe by name, at smoke size (its ResNet-8 and schedule on the bundled digits)
    out = _run([bornagain, "ban", "--config", "ban-cifar10-cpu", "data.name=digits", "data.val_size=100",
                "ban.generations=1", "ban.ensembles=[]", "--output", "runs/recipe", *quick], user, env)
    assert "resnet-8" in out and (user / "runs" / "recipe" / "gen1" / "results.json").is_file()
    out = _run([bornagain, "env"], user, env)
    assert "bornagain-kd:" in out and "native bf16:" in out
    _run([python, "-c", "import numpy as np; from bornagain_kd.vision.config import DataConfig; "
          "from bornagain_kd.vision.prepare import prepare_data; d = prepare_data(DataConfig(name='digits'), 0); "
          "np.savez('test.npz', images=d.test_images.numpy(), labels=d.test_labels.numpy())"], user, env)
    out = _run([bornagain, "predict", "runs/demo", "test.npz", "--ensemble", "All", "--output", "preds.csv"], user, env)
    assert "360 image(s)" in out and len((user / "preds.csv").read_text().splitlines()) == 361
