"""Vision data: digits, CIFAR pickles (and their verified download), image folders,
batched augmentation, normalisation and splits. All data is tiny and written here."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bornagain_kd.errors import UserError
from bornagain_kd.vision import (
    channel_stats,
    default_crop_pad,
    iterate_batches,
    load_cifar,
    load_image_folder,
    load_vision_data,
    normalize,
    random_crop_flip,
    train_val_split,
)
from bornagain_kd.vision import imagefolder

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_classes_and_train_stats():
    data = load_vision_data("digits", None)
    assert data.train.images.shape == (1437, 1, 8, 8) and data.test.images.shape == (360, 1, 8, 8)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.classes == tuple(str(d) for d in range(10)) and data.num_classes == 10
    assert data.hflip is False and data.name == "digits" and data.image_shape == (1, 8, 8)
    assert int(data.train.images.max()) == 255 and int(data.train.images.min()) == 0
    # Stratified: every digit has 35-37 of the 360 test images (10% each).
    assert data.test.labels.bincount(minlength=10).min() >= 35
    # mean/std come from the train split alone.
    x = data.train.images.double() / 255
    assert data.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert data.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)
    x_all = torch.cat([data.train.images, data.test.images]).double() / 255
    assert data.mean[0] != pytest.approx(x_all.mean().item(), abs=1e-9)
    # A fixed split: loading again gives identical tensors.
    again = load_vision_data("digits", None)
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.test.labels, data.test.labels)


def test_channel_stats_match_direct_computation():
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_unknown_name_and_missing_root_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_vision_data("mnist", None)
    for name in ("cifar10", "cifar100", "imagefolder"):
        with pytest.raises(UserError, match="needs a data root"):
            load_vision_data(name, None)


# ---------------------------------------------------------------- CIFAR pickles


def _cifar_rows(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 rows whose first value identifies the image and channel 1 is constant 7."""
    rows = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    rows[:, 0, 0, 0] = np.arange(offset, offset + n)
    rows[:, 1] = 7
    return rows.reshape(n, 3072)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(parent: Path, per_batch: int = 2) -> Path:
    """A tiny cifar-10-batches-py/ in the official layout: 5 train batches, a test batch, meta."""
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        _dump(d / f"data_batch_{i}", {b"batch_label": b"x", b"data": _cifar_rows(per_batch, 10 * i), b"labels": labels})
    _dump(d / "test_batch", {b"data": _cifar_rows(3, 100), b"labels": [9, 0, 1]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return d


def write_cifar100(parent: Path) -> Path:
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    _dump(d / "train", {b"data": _cifar_rows(4, 0), b"fine_labels": [99, 5, 0, 42], b"coarse_labels": [1, 1, 1, 1]})
    _dump(d / "test", {b"data": _cifar_rows(2, 50), b"fine_labels": [3, 98], b"coarse_labels": [2, 2]})
    _dump(d / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                       b"coarse_label_names": [b"c"] * 20})
    return d


def test_cifar10_reads_official_pickles_from_dir_or_parent(tmp_path):
    directory = write_cifar10(tmp_path)
    for root in (tmp_path, directory):
        (train_x, train_y), (test_x, test_y), classes = load_cifar("cifar10", root, download=False)
        assert train_x.shape == (10, 3, 32, 32) and train_x.dtype == np.uint8 and test_x.shape == (3, 3, 32, 32)
        # Rows are channel-major (3, 32, 32): image ids sit at [0, 0, 0], channel 1 is all 7s.
        assert train_x[:, 0, 0, 0].tolist() == [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]
        assert (train_x[:, 1] == 7).all() and (train_x[:, 2] == 0).all()
        assert train_y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6] and test_y.tolist() == [9, 0, 1]
        assert classes[0] == "airplane" and classes[-1] == "truck" and len(classes) == 10
    data = load_vision_data("cifar10", tmp_path, download=False)
    assert data.hflip and data.train.images.shape == (10, 3, 32, 32) and data.train.labels.dtype == torch.int64
    assert data.mean[1] == pytest.approx(7 / 255) and data.std[1] == pytest.approx(0.0, abs=1e-9)


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    data = load_vision_data("cifar100", tmp_path, download=False)
    assert data.train.labels.tolist() == [99, 5, 0, 42] and data.test.labels.tolist() == [3, 98]
    assert data.num_classes == 100 and data.classes[42] == "class42"
    assert data.test.images[:, 0, 0, 0].tolist() == [50, 51]


def test_cifar_missing_or_incomplete_directory_errors(tmp_path):
    with pytest.raises(UserError, match="allow the download"):
        load_cifar("cifar10", tmp_path, download=False)
    directory = write_cifar10(tmp_path)
    (directory / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing data_batch_3"):
        load_cifar("cifar10", tmp_path, download=False)
    (directory / "test_batch").write_bytes(b"not a pickle")
    (directory / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="corrupt"):
        load_cifar("cifar10", tmp_path, download=False)


def _tar_gz(source: Path, arcname: str, dest: Path) -> tuple[str, str]:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return dest.as_uri(), hashlib.md5(dest.read_bytes()).hexdigest()


def test_download_verifies_md5_then_extracts(tmp_path):
    url, md5 = _tar_gz(write_cifar10(tmp_path / "src"), "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    (train_x, _), (test_x, _), classes = load_cifar("cifar10", root, url=url, md5=md5)
    assert train_x.shape == (10, 3, 32, 32) and test_x.shape == (3, 3, 32, 32) and len(classes) == 10
    # Only the extracted directory remains: no archive, no temporary folders.
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]
    # The second call reads what is there instead of downloading again.
    load_cifar("cifar10", root, url="file:///nonexistent.tar.gz", md5=md5)


def test_download_with_wrong_md5_raises_and_leaves_nothing(tmp_path):
    url, _ = _tar_gz(write_cifar100(tmp_path / "src"), "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    root = tmp_path / "data" / "cifar"
    with pytest.raises(UserError, match="MD5"):
        load_cifar("cifar100", root, url=url, md5="0" * 32)
    assert not (tmp_path / "data").exists()  # the folders the failed attempt made are gone, not left empty
    with pytest.raises(UserError, match="cannot download"):  # offline
        load_cifar("cifar100", root, url=(tmp_path / "absent.tar.gz").as_uri(), md5="0" * 32)
    assert not (tmp_path / "data").exists()
    root.mkdir(parents=True)  # a folder the user made stays, as it was
    with pytest.raises(UserError, match="cannot download"):
        load_cifar("cifar100", root, url=(tmp_path / "absent.tar.gz").as_uri(), md5="0" * 32)
    assert os.listdir(root) == []


def test_download_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(UserError, match="unsafe path"):
        load_cifar("cifar10", root, url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escaped.txt").exists() and not root.exists()


# ---------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def write_image_folder(root: Path) -> dict[str, np.ndarray]:
    """train: cat (2 PNG, one grayscale), dog (1 PNG + 1 JPEG); test: one of each. 6x5 pixels."""
    rng = np.random.default_rng(0)
    arrays = {}
    for rel in ("train/cat/a.png", "train/dog/b.png", "test/cat/c.png", "test/dog/d.png"):
        arrays[rel] = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        _save(root / rel, arrays[rel], "PNG")
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    _save(root / "train/cat/gray.png", gray, "PNG")
    arrays["train/cat/gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    _save(root / "train/dog/photo.jpg", np.full((5, 6, 3), 200, dtype=np.uint8), "JPEG")
    (root / "train/dog/notes.txt").write_text("not an image")  # ignored
    return arrays


def test_image_folder_decodes_sorted_classes_and_rgb(tmp_path):
    arrays = write_image_folder(tmp_path)
    data = load_vision_data("imagefolder", tmp_path)
    assert data.classes == ("cat", "dog") and data.hflip
    assert data.train.images.shape == (4, 3, 5, 6) and data.test.images.shape == (2, 3, 5, 6)
    assert data.train.labels.tolist() == [0, 0, 1, 1] and data.test.labels.tolist() == [0, 1]
    # Files are sorted within a class: a.png, gray.png | b.png, photo.jpg. PNGs are lossless.
    for i, rel in enumerate(("train/cat/a.png", "train/cat/gray.png", "train/dog/b.png")):
        assert np.array_equal(data.train.images[i].permute(1, 2, 0).numpy(), arrays[rel])
    jpeg = data.train.images[3].int()
    assert (jpeg - 200).abs().max() <= 3  # lossy but close
    assert (tmp_path / ".bornagain-cache" / "imagefolder" / "meta.json").is_file()  # the arrays, mapped
    assert isinstance(load_image_folder(tmp_path)[0][0], np.memmap)


def test_image_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    write_image_folder(tmp_path)
    cache = tmp_path / "cache"
    first = load_image_folder(tmp_path, cache_dir=cache)
    real_decode = imagefolder.decode_into

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(imagefolder, "decode_into", must_not_decode)
    second = load_image_folder(tmp_path, cache_dir=cache)
    assert np.array_equal(first[0][0], second[0][0]) and np.array_equal(first[1][1], second[1][1])
    assert first[2] == second[2]
    # Adding a file changes the fingerprint, so the folder is decoded again.
    _save(tmp_path / "test/cat/e.png", np.zeros((5, 6, 3), dtype=np.uint8), "PNG")
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(tmp_path, cache_dir=cache)
    monkeypatch.setattr(imagefolder, "decode_into", real_decode)
    third = load_image_folder(tmp_path, cache_dir=cache)
    assert third[1][0].shape == (3, 3, 5, 6) and third[1][1].tolist() == [0, 0, 1]
    # replaced atomically: one cache folder, no temporary ones left (and the lock file, which means nothing alone)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1 and not list(cache.glob("*.tmp-*"))


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    arrays = write_image_folder(tmp_path)
    _save(tmp_path / "test/cat/odd.png", np.zeros((4, 6, 3), dtype=np.uint8), "PNG")
    paths = [str(tmp_path / rel) for rel in sorted(arrays)]
    # Force the process pool on a tiny list: chunks of 2 images, 2 workers.
    monkeypatch.setattr(imagefolder, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(imagefolder, "_CHUNK", 2)
    parallel = imagefolder.decode_images(paths, workers=2)
    serial = imagefolder.decode_images(paths, workers=1)
    assert parallel.shape == (len(paths), 3, 5, 6) and np.array_equal(parallel, serial)
    assert np.array_equal(parallel[0].transpose(1, 2, 0), arrays[sorted(arrays)[0]])
    # A different size is caught inside a worker's chunk and across chunks.
    odd = str(tmp_path / "test/cat/odd.png")
    with pytest.raises(UserError, match="must all have one size"):
        imagefolder.decode_images(paths[:5] + [odd], workers=2)
    with pytest.raises(UserError, match="data.image_size=N"):
        imagefolder.decode_images(paths[:4] + [odd], workers=2)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "absent")
    with pytest.raises(UserError, match="missing"):
        load_image_folder(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "train/cat").mkdir()
    (tmp_path / "test/cat").mkdir()
    with pytest.raises(UserError, match="has no images"):
        load_image_folder(tmp_path)
    _save(tmp_path / "train/cat/a.png", np.zeros((4, 4, 3), dtype=np.uint8), "PNG")
    with pytest.raises(UserError, match="holds no images"):
        load_image_folder(tmp_path)
    _save(tmp_path / "test/cat/a.png", np.zeros((4, 4, 3), dtype=np.uint8), "PNG")
    _save(tmp_path / "train/dog/a.png", np.zeros((4, 4, 3), dtype=np.uint8), "PNG")
    with pytest.raises(UserError, match=r"only in train: \['dog'\]"):
        load_image_folder(tmp_path)
    _save(tmp_path / "test/dog/a.png", np.zeros((4, 5, 3), dtype=np.uint8), "PNG")
    with pytest.raises(UserError, match="one size"):
        load_image_folder(tmp_path)
    (tmp_path / "test/dog/a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="cannot decode"):
        load_image_folder(tmp_path)


@pytest.mark.data
def test_real_cifar10_jpeg_folder_layout():
    root = SHARED_DATA / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip("../shared/data not found")
    classes, files = imagefolder.scan_image_folder(root)  # lists files only, decodes nothing
    assert classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert len(files["train"]) == 50_000 and len(files["test"]) == 10_000


# ---------------------------------------------------------------- augmentation


def _windows(padded: torch.Tensor, h: int, w: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every (dy, dx, flipped) crop of one padded (c, H, W) image."""
    out = {}
    for dy in range(padded.shape[1] - h + 1):
        for dx in range(padded.shape[2] - w + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop.flip(-1)
    return out


def _which_window(image: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    return [k for k, crop in _windows(padded, *image.shape[1:]).items() if torch.equal(crop, out)]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_flip_is_a_shift_of_the_padded_image(dtype):
    # Distinct pixel values (1..) so each output matches exactly one window.
    base = (torch.arange(2 * 6 * 7) + 1).reshape(2, 6, 7).to(dtype)
    images = base.expand(64, 2, 6, 7).contiguous()
    out = random_crop_flip(images, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == dtype
    found = set()
    for i in range(64):
        matches = _which_window(images[i], out[i], pad=2)
        assert len(matches) == 1, f"image {i} is not a crop of its padded self"
        found.add(matches[0])
    assert any(k[2] for k in found) and any(not k[2] for k in found)  # both flipped and not
    assert len({k[:2] for k in found}) > 5  # many different offsets


def test_random_crop_flip_flag_determinism_and_pad_zero():
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    a = random_crop_flip(images, 1, True, torch.Generator().manual_seed(7))
    b = random_crop_flip(images, 1, True, torch.Generator().manual_seed(7))
    c = random_crop_flip(images, 1, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    no_flip = random_crop_flip(images, 1, False, torch.Generator().manual_seed(7))
    for i in range(32):
        matches = _which_window(images[i], no_flip[i], pad=1)
        assert matches and not any(k[2] for k in matches)
        # Same draws with and without the flag: the crop is the same, at most mirrored.
        assert torch.equal(no_flip[i], a[i]) or torch.equal(no_flip[i].flip(-1), a[i])
    assert not torch.equal(no_flip, a)
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator()), images)
    flipped_only = random_crop_flip(images, 0, True, torch.Generator().manual_seed(0))
    for i in range(32):
        assert torch.equal(flipped_only[i], images[i]) or torch.equal(flipped_only[i], images[i].flip(-1))
    assert default_crop_pad(32) == 4 and default_crop_pad(8) == 1 and default_crop_pad(4) == 1


def test_normalize_values_and_dtype():
    images = torch.tensor([0, 51, 255, 128], dtype=torch.uint8).reshape(1, 2, 1, 2)
    mean, std = (0.5, 0.25), (0.2, 0.5)
    out = normalize(images, mean, std)
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(1, 2, 1, 1)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out.double(), expected, atol=1e-6)
    with pytest.raises(TypeError):
        normalize(images.float(), mean, std)
    with pytest.raises(ValueError):
        normalize(images, (0.5,), (0.2,))


# ---------------------------------------------------------------- splits and batches


def test_train_val_split_stratified_and_seeded():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 30)
    train_idx, val_idx = train_val_split(labels, 0.2, seed=0)
    assert len(val_idx) == 36 and len(train_idx) == 144
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(180))
    assert labels[val_idx].bincount().tolist() == [20, 10, 6]
    again = train_val_split(labels, 0.2, seed=0)
    assert torch.equal(again[1], val_idx) and torch.equal(again[0], train_idx)
    assert not torch.equal(train_val_split(labels, 0.2, seed=1)[1], val_idx)
    train_idx, val_idx = train_val_split(labels, 18, seed=0)
    assert labels[val_idx].bincount().tolist() == [10, 5, 3] and train_idx.dtype == torch.int64
    for zero in (0, 0.0):
        train_idx, val_idx = train_val_split(labels, zero, seed=0)
        assert len(val_idx) == 0 and torch.equal(train_idx, torch.arange(180))


@pytest.mark.parametrize("bad", [-1, 1.0, 1.5, 180, 500, True, "0.1", 2])
def test_train_val_split_invalid_sizes(bad):
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 30)
    with pytest.raises(UserError):
        train_val_split(labels, bad, seed=0)


def test_iterate_batches():
    batches = list(iterate_batches(10, 4, shuffle=False, generator=None))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(b) for b in iterate_batches(10, 4, shuffle=False, generator=None, drop_last=True)] == [4, 4]
    a = torch.cat(list(iterate_batches(10, 3, shuffle=True, generator=torch.Generator().manual_seed(0))))
    b = torch.cat(list(iterate_batches(10, 3, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10)) and a.tolist() != list(range(10))
    with pytest.raises(UserError):
        list(iterate_batches(10, 0, shuffle=False, generator=None))
