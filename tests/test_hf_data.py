"""data.name=hf: a Hugging Face dataset (built here with the real `datasets` library, offline) as a vision source.

Skipped where `datasets` is not installed (the `hf` extra); CI installs it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"  # no test reaches the hub (conftest.py sets it for the whole suite too)
datasets = pytest.importorskip("datasets")

from PIL import Image  # noqa: E402

from bornagain_kd.cli import main  # noqa: E402
from bornagain_kd.errors import UserError  # noqa: E402
from bornagain_kd.vision.datasets import load_vision_data  # noqa: E402

CLASSES = ["cat", "dog", "frog"]
FAST = ["model.name=resnet-8", "train.epochs=1", "train.batch_size=16", "data.val_size=6", "train.progress=false",
        "train.num_threads=1"]


def _pixels(n: int, seed: int, gray_every: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """n random 8x8 RGB images (every gray_every-th one gray: mode L) and labels cycling over the classes."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (8, 8) if gray_every and i % gray_every == 0 else (8, 8, 3), dtype=np.uint8)
              for i in range(n)]
    return images, [i % len(CLASSES) for i in range(n)]


def _split(images, labels):
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CLASSES),
                                  "coarse_label": datasets.ClassLabel(names=["animal", "other"]),
                                  "id": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in images], "fine_label": labels,
                                       "coarse_label": [0] * len(labels), "id": list(range(len(labels)))},
                                      features=features)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """`datasets`' own cache (the arrow files load_dataset makes of parquet files) inside tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def saved(tmp_path, hf_cache):
    """A DatasetDict of 36 train / 12 test images saved with save_to_disk, and the arrays it was made from."""
    train, test = _pixels(36, 0), _pixels(12, 1)
    dd = datasets.DatasetDict(train=_split(*train), test=_split(*test))
    dd.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", dd, train, test


def _nchw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def test_saved_and_parquet_datasets_decode_to_the_images_they_hold(saved, tmp_path):
    root, dd, (train_x, train_y), (test_x, test_y) = saved
    for split, ds in dd.items():  # the same splits as parquet files, named as the hub names them
        ds.to_parquet(str(tmp_path / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    for source in (root, tmp_path / "parquet"):
        data = load_vision_data("hf", source)  # two ClassLabels: fine_label is taken by its usual name
        assert data.classes == tuple(CLASSES) and data.num_classes == 3
        assert data.train.images.dtype == torch.uint8 and tuple(data.train.images.shape) == (36, 3, 8, 8)
        assert torch.equal(data.train.images, _nchw(train_x)) and data.train.labels.tolist() == train_y
        assert torch.equal(data.test.images, _nchw(test_x)) and data.test.labels.tolist() == test_y
    assert len(list((root / ".bornagain-cache").glob("hf-*/meta.json"))) == 1  # decoded once, beside the data


def test_the_cache_is_read_back_and_renewed_when_the_dataset_changes(saved, monkeypatch):
    from bornagain_kd.vision import hf_datasets

    root, dd, train, _ = saved
    first = load_vision_data("hf", root)
    monkeypatch.setattr(hf_datasets, "decode_split_into", lambda *a: pytest.fail("decoded again instead of the cache"))
    again = load_vision_data("hf", root)
    assert torch.equal(first.train.images, again.train.images)
    monkeypatch.undo()
    flipped = [a[:, ::-1].copy() for a in train[0]]  # the same rows, other pixels: saved again over the old ones
    datasets.DatasetDict(train=_split(flipped, train[1]), test=dd["test"]).save_to_disk(str(root))
    changed = load_vision_data("hf", root)
    assert torch.equal(changed.train.images, _nchw(flipped)) and not torch.equal(changed.train.images,
                                                                                first.train.images)


def test_gray_images_stay_one_channel_and_a_gray_one_among_color_ones_becomes_rgb(tmp_path, hf_cache):
    gray = [np.full((8, 8), 7 * i, dtype=np.uint8) for i in range(9)]
    labels = [i % 3 for i in range(9)]
    datasets.DatasetDict(train=_split(gray, labels), test=_split(gray[:3], labels[:3])).save_to_disk(
        str(tmp_path / "gray"))
    data = load_vision_data("hf", tmp_path / "gray")
    assert tuple(data.train.images.shape) == (9, 1, 8, 8) and torch.equal(data.train.images[:, 0],
                                                                            torch.from_numpy(np.stack(gray)))
    mixed, mixed_labels = _pixels(9, 2, gray_every=4)
    datasets.DatasetDict(train=_split(mixed, mixed_labels), test=_split(gray[:3], labels[:3])).save_to_disk(
        str(tmp_path / "mixed"))
    data = load_vision_data("hf", tmp_path / "mixed")
    assert tuple(data.train.images.shape[1:]) == tuple(data.test.images.shape[1:]) == (3, 8, 8)
    assert torch.equal(data.train.images[0], torch.from_numpy(mixed[0]).expand(3, 8, 8))  # gray row 0: repeated


def test_columns_and_classes_without_a_classlabel(tmp_path, hf_cache):
    """Integer labels (no ClassLabel): K = the largest label + 1; columns named by hand."""
    images, labels = _pixels(12, 3)
    ds = datasets.Dataset.from_dict({"picture": [Image.fromarray(a) for a in images], "y": [v * 2 for v in labels]},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "y": datasets.Value("int32")}))
    datasets.DatasetDict(train=ds, validation=ds).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(UserError, match=r"data.label_column=NAME"):  # neither a ClassLabel nor a usual name
        load_vision_data("hf", tmp_path / "plain", splits=("train", "validation"))
    data = load_vision_data("hf", tmp_path / "plain", splits=("train", "validation"), columns=(None, "y"))
    assert data.classes == tuple(str(c) for c in range(5)) and data.train.labels.tolist() == [v * 2 for v in labels]


def test_a_wrong_split_or_column_names_the_available_ones(saved):
    root = saved[0]
    with pytest.raises(UserError, match=r"data.test_split='validation'.*'train', 'test'"):
        load_vision_data("hf", root, splits=("train", "validation"))
    with pytest.raises(UserError, match=r"data.image_column='pixels'.*img \(Image\), fine_label \(ClassLabel\)"):
        load_vision_data("hf", root, columns=("pixels", None))
    with pytest.raises(UserError, match=r"data.label_column='labels'.*coarse_label \(ClassLabel\), id \(Value\)"):
        load_vision_data("hf", root, columns=(None, "labels"))
    with pytest.raises(UserError, match=r"'id' .* not images"):
        load_vision_data("hf", root, columns=("id", None))


def test_a_hub_id_offline_and_a_missing_package_are_user_errors(hf_cache, monkeypatch):
    with pytest.raises(UserError, match=r"data.root=someone/no-such-dataset: .*the hub.*HF_DATASETS_OFFLINE"):
        load_vision_data("hf", "someone/no-such-dataset")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r'pip install "bornagain-kd\[hf\]"'):
        load_vision_data("hf", "someone/no-such-dataset")


@pytest.mark.slow
def test_train_and_ban_through_the_cli_on_a_saved_dataset(saved, tmp_path, capsys):
    from safetensors.torch import load_file

    root, test_labels = saved[0], saved[3][1]
    hf = ["data.name=hf", f"data.root={root}", *FAST]
    assert main(["train", "--output", str(tmp_path / "train"), *hf]) == 0
    result = json.loads((tmp_path / "train" / "results.json").read_text())
    assert result["dataset"] == "saved (hf)" and result["epochs"] == 1
    probs = load_file(tmp_path / "train" / "test_probs.safetensors")  # (12, 3): the dataset's test split, its classes
    assert tuple(probs["probs"].shape) == (12, 3) and probs["labels"].tolist() == test_labels
    assert main(["ban", "--output", str(tmp_path / "ban"), *hf, "ban.generations=1", "ban.ensembles=[]"]) == 0
    result = json.loads((tmp_path / "ban" / "results.json").read_text())
    assert result["dataset"] == "saved (hf)" and len(result["generations"]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["train", "--output", str(tmp_path / "bad"), *hf, "data.test_split=valid"]) == 2
    assert "'train', 'test'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_16_bit_gray_images_are_scaled_to_8_bit_not_clipped(tmp_path, hf_cache):
    deep = [np.full((8, 8), 4000 * i, dtype=np.uint16) for i in range(9)]  # up to 32000 of 65535
    labels = [i % 3 for i in range(9)]
    datasets.DatasetDict(train=_split(deep, labels), test=_split(deep[:3], labels[:3])).save_to_disk(
        str(tmp_path / "deep"))
    data = load_vision_data("hf", tmp_path / "deep")
    expected = torch.from_numpy(((np.stack(deep).astype(np.int64) + 128) // 257).astype(np.uint8))
    assert tuple(data.train.images.shape) == (9, 1, 8, 8) and torch.equal(data.train.images[:, 0], expected)


def test_a_hub_datasets_cache_goes_where_bornagain_cache_dir_says(tmp_path, monkeypatch):
    from bornagain_kd.vision.hf_datasets import _cache_folder

    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache_folder("someone/pictures", "train,test").parent == tmp_path / "mine"


def test_an_earlier_npz_cache_of_a_local_dataset_is_converted(saved, monkeypatch, capsys):
    from bornagain_kd.vision import hf_datasets

    root = saved[0]
    fresh = load_vision_data("hf", root)  # decoded now: what the old cache held
    folder = next(p for p in (root / ".bornagain-cache").iterdir() if p.is_dir())
    request = f"{root.resolve()}\0{('train', 'test')}\0{(None, None)}"
    old = folder.with_name(f"{folder.name}.npz")
    with open(old, "wb") as f:  # the earlier layout and fingerprint
        np.savez(f, fingerprint=np.array(hf_datasets._folder_fingerprint(root, request, "hf-v1")),
                 classes=np.array(fresh.classes), train_images=fresh.train.images.numpy(),
                 train_labels=fresh.train.labels.numpy(), test_images=fresh.test.images.numpy(),
                 test_labels=fresh.test.labels.numpy())
    import shutil

    shutil.rmtree(folder)
    monkeypatch.setattr(hf_datasets, "decode_split_into", lambda *a, **k: pytest.fail("decoded instead of converted"))
    converted = load_vision_data("hf", root)
    assert "converting the image cache" in capsys.readouterr().out and not old.exists()
    assert torch.equal(converted.train.images, fresh.train.images) and converted.classes == fresh.classes


def test_predict_reads_a_datasets_split_as_training_decoded_it(saved, tmp_path):
    from safetensors.torch import load_file

    from bornagain_kd.pipelines.predict import predict

    root = saved[0]
    assert main(["train", "--output", str(tmp_path / "run"), "data.name=hf", f"data.root={root}", "train.epochs=1",
                 "data.val_size=6", "model.name=resnet-8", "train.trackers=[]", "train.progress=false"]) == 0
    _, probs, classes, labels = predict(tmp_path / "run", f"hf://{root}", split="test")
    torch.testing.assert_close(probs, load_file(str(tmp_path / "run" / "test_probs.safetensors"))["probs"], rtol=0,
                               atol=1e-6)
    assert classes == tuple(CLASSES) and labels is not None
