"""`bornagain predict`: a generation, an exported folder and a born-again ensemble give, for the run's own test
images, exactly the probabilities the run saved; image files, tensors files and class folders are read as training
reads them; a mismatch (size, channels, classes) is one clear error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bornagain_kd.cli import main
from bornagain_kd.pipelines.predict import predict
from bornagain_kd.reports.ensembles import average_probabilities
from bornagain_kd.vision.config import DataConfig
from bornagain_kd.vision.prepare import prepare_data

TINY = ["train.epochs=2", "train.device=cpu", "train.batch_size=64", "train.progress=false", "train.num_threads=1", "data.val_size=100",
        "ban.generations=2", "ban.ensembles=[2]"]


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """A digits born-again sequence (teacher + 2 students), its test images as a tensors file, and an export."""
    root = tmp_path_factory.mktemp("predict")
    assert main(["ban", "--output", str(root / "seq"), *TINY]) == 0
    data = prepare_data(DataConfig(name="digits", val_size=100), 0)
    np.savez(root / "test.npz", images=data.test_images.numpy(), labels=data.test_labels.numpy())
    assert main(["export", str(root / "seq" / "gen2"), str(root / "export")]) == 0
    return root, data


def _saved(run: Path) -> torch.Tensor:
    return load_file(str(run / "test_probs.safetensors"))["probs"]


def test_a_generation_and_its_export_give_the_runs_own_test_probabilities(sequence):
    root, _ = sequence
    for gen in ("gen0", "gen1", "gen2"):
        _, probs, classes, labels = predict(root / "seq" / gen, root / "test.npz")
        torch.testing.assert_close(probs, _saved(root / "seq" / gen), rtol=0, atol=1e-6)
        assert classes == tuple(str(c) for c in range(10)) and labels is not None
    _, probs, _, _ = predict(root / "export", root / "test.npz")  # the normalisation from config.json
    torch.testing.assert_close(probs, _saved(root / "seq" / "gen2"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, members", [("Ens*2", ["gen1", "gen2"]), ("All", ["gen0", "gen1", "gen2"])])
def test_an_ensemble_averages_its_members_as_the_table_does(sequence, name, members):
    root, _ = sequence
    _, probs, _, _ = predict(root / "seq", root / "test.npz", ensemble=name)
    want = average_probabilities([_saved(root / "seq" / m) for m in members])
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-6)
    results = __import__("json").loads((root / "seq" / "results.json").read_text())
    error = next(e["test_error"] for e in results["ensembles"] if e["name"] == name)
    labels = load_file(str(root / "seq" / "gen1" / "test_probs.safetensors"))["labels"]
    assert abs(100 * (probs.argmax(1) != labels).double().mean().item() - error) < 1e-9


def test_image_files_in_class_folders_are_read_as_training_reads_them(sequence, tmp_path, capsys):
    """Gray PNGs in folders named after the classes: the same probabilities, a label column, the accuracy."""
    root, data = sequence
    order = []
    for i, (image, label) in enumerate(zip(data.test_images.numpy(), data.test_labels.tolist())):
        folder = tmp_path / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0], mode="L").save(folder / f"{i:04d}.png")
        order.append((f"{label}/{i:04d}.png", i))
    assert main(["predict", str(root / "seq" / "gen1"), str(tmp_path / "images"), "--output",
                 str(tmp_path / "preds.csv")]) == 0
    assert "accuracy" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert len(rows) == 360 and list(rows[0])[:3] == ["image", "prediction", "label"]
    saved = _saved(root / "seq" / "gen1")
    index = dict(order)
    for row in rows:
        i = index[row["image"]]
        assert row["label"] == str(data.test_labels[i].item())
        got = torch.tensor([float(row[f"p_{c}"]) for c in range(10)])
        torch.testing.assert_close(got, saved[i], rtol=1e-5, atol=1e-6)  # the CSV keeps 6 significant digits
        assert row["prediction"] == str(saved[i].argmax().item())


def test_mismatches_are_one_clear_error_and_write_nothing(sequence, tmp_path, capsys):
    root, data = sequence
    out = tmp_path / "preds.csv"

    def error(images, *extra) -> str:
        capsys.readouterr()
        assert main(["predict", str(root / "seq" / "gen1"), str(images), "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("bornagain: error: ") and "\n" not in err and not out.exists()
        return err

    np.savez(tmp_path / "big.npz", images=np.zeros((3, 1, 16, 16), np.uint8))
    assert "1x16x16" in error(tmp_path / "big.npz") and "1x8x8" in error(tmp_path / "big.npz")
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.fromarray(np.stack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8),
                              np.zeros((8, 8), np.uint8)], axis=2)).save(colour / "a.png")
    assert "3x8x8" in error(colour)
    other = tmp_path / "other" / "cat"
    other.mkdir(parents=True)
    Image.fromarray(data.test_images[0, 0].numpy(), mode="L").save(other / "a.png")
    assert "cat" in error(tmp_path / "other")
    np.savez(tmp_path / "labels.npz", images=data.test_images[:2].numpy(), labels=np.array([3, 12]))
    assert "12" in error(tmp_path / "labels.npz")
    assert "needs a finished `bornagain ban` output" in error(root / "test.npz", "--ensemble", "All")  # gen1 has none
    capsys.readouterr()
    assert main(["predict", str(root / "seq"), str(root / "test.npz"), "--output", str(out)]) == 2
    assert "--ensemble" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(root / "seq"), str(root / "test.npz"), "--output", str(out), "--ensemble",
                 "Ens*3"]) == 2
    assert "Ens*2, All" in capsys.readouterr().err and not out.exists()
    assert "does not exist" in error(tmp_path / "nothing-here")


def test_a_ban_output_with_a_reused_teacher_is_recognised_and_its_teacher_found(sequence, tmp_path, cli_error,
                                                                                 monkeypatch):
    """A Table 2-like output has no gen0/ (its teacher is another run's): still a whole `ban` output, and its
    ensembles reach the teacher where its results.json says it is."""
    root, _ = sequence
    monkeypatch.chdir(root)
    assert main(["ban", "--output", str(tmp_path / "reused"), *TINY, "ban.teacher_run=seq/gen0",
                 "ban.generations=1"]) == 0
    assert not (tmp_path / "reused" / "gen0").exists()
    err = cli_error(["predict", str(tmp_path / "reused"), "test.npz", "--output", str(tmp_path / "p.csv")])
    assert "is a whole `ban` output" in err
    _, probs, _, _ = predict(tmp_path / "reused", root / "test.npz", ensemble="All")
    want = average_probabilities([_saved(root / "seq" / "gen0"), _saved(tmp_path / "reused" / "gen1")])
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-6)
    monkeypatch.chdir(tmp_path)  # the teacher was given relative to root: not found from here, said so
    err = cli_error(["predict", str(tmp_path / "reused"), str(root / "test.npz"), "--ensemble", "All", "--output",
                     "p.csv"])
    assert "not found from here" in err


def test_bad_options_are_one_clear_error(sequence, tmp_path, cli_error):
    root, data = sequence
    gen1, images = str(root / "seq" / "gen1"), str(root / "test.npz")
    assert "not one of auto, cpu, cuda" in cli_error(["predict", gen1, images, "--output", "p.csv", "--device", "gpu"])
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in cli_error(["predict", gen1, images, "--output", "p.csv", "--device", "cuda"])
    assert "is a folder" in cli_error(["predict", gen1, images, "--output", str(tmp_path)])
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 1, 8, 8), np.uint8))
    assert "no images" in cli_error(["predict", gen1, str(tmp_path / "empty.npz"), "--output", str(tmp_path / "p.csv")])
    mixed = tmp_path / "mixed"
    (mixed / "cat").mkdir(parents=True)
    for where in (mixed, mixed / "cat"):
        Image.fromarray(data.test_images[0, 0].numpy(), mode="L").save(where / "a.png")
    assert "beside folders" in cli_error(["predict", gen1, str(mixed), "--output", str(tmp_path / "p.csv")])


def test_every_student_records_its_agreement_with_its_teacher(sequence):
    """results.json: each student's top-1 agreement with the generation that taught it and the mean KL(teacher ||
    student) on the test set, from the saved probabilities (computed here by hand); the teacher has none."""
    import json

    root, _ = sequence
    rows = json.loads((root / "seq" / "results.json").read_text())["generations"]
    assert "agreement_with_teacher" not in rows[0]
    for g in (1, 2):
        t, s = _saved(root / "seq" / f"gen{g - 1}").double(), _saved(root / "seq" / f"gen{g}").double()
        agree = 100 * sum(int(a == b) for a, b in zip(t.argmax(1).tolist(), s.argmax(1).tolist())) / len(t)
        kl = sum(float((ti * (ti.clamp_min(1e-12).log() - si.clamp_min(1e-12).log())).sum()) for ti, si in zip(t, s))
        assert abs(rows[g]["agreement_with_teacher"] - agree) < 1e-9
        assert abs(rows[g]["kl_from_teacher"] - kl / len(t)) < 1e-9 and rows[g]["kl_from_teacher"] > 0


def test_npy_files_and_folders_are_read_as_data_name_tensors_reads_them(sequence, tmp_path):
    root, data = sequence
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "test_images.npy", data.test_images.numpy())
    np.save(tmp_path / "npy" / "test_labels.npy", data.test_labels.numpy())
    np.save(tmp_path / "one.npy", data.test_images.numpy())
    for source in (tmp_path / "npy", tmp_path / "one.npy"):
        _, probs, _, labels = predict(root / "seq" / "gen1", source)
        torch.testing.assert_close(probs, _saved(root / "seq" / "gen1"), rtol=0, atol=1e-6)
    assert labels is None  # a lone .npy holds no labels; the folder's test_labels.npy gave them above
