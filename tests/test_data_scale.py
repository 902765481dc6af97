"""Data larger than memory: one memory-mapped copy of the decoded images per node, written once (by the node's local
rank 0 under torchrun), splits as index views, an earlier .npz cache converted, images of mixed sizes through
data.image_size, the random-resized crop, and validation predictions sharded over ranks with one process's numbers."""

from __future__ import annotations

import contextlib
import json
import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from bornagain_kd.errors import UserError
from bornagain_kd.vision import imagefolder
from bornagain_kd.vision.array_cache import read_arrays
from bornagain_kd.vision.augment import random_resized_crop_flip
from bornagain_kd.vision.config import DataConfig
from bornagain_kd.vision.imagefolder import folder_fingerprint, load_image_folder, scan_image_folder
from bornagain_kd.vision.prepare import ImageView, prepare_data


def write_folder(root: Path, per_class: int = 12, size: tuple[int, int] = (8, 8), classes=("a", "b", "c"),
                 fmt: str = "PNG", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", max(2, per_class // 4))):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.{fmt.lower()}", format=fmt)


def test_the_decoded_folder_is_memory_mapped_and_splits_are_index_views_of_it(tmp_path):
    write_folder(tmp_path / "img")
    train, test, classes = load_image_folder(tmp_path / "img")
    assert isinstance(train[0], np.memmap) and isinstance(test[0], np.memmap) and classes == ("a", "b", "c")
    data = prepare_data(DataConfig(name="imagefolder", root=str(tmp_path / "img"), val_size=6,
                                   train_subset=30), 0)
    views = (data.train_images, data.val_images)
    assert all(isinstance(v, ImageView) for v in views)
    # train, validation (and the subset they come from) share one base: the mapped file, never copied
    assert views[0].base is views[1].base and views[0].base.shape[0] == 36
    assert len(views[0]) == 24 and len(views[1]) == 6
    assert not set(views[0].index.tolist()) & set(views[1].index.tolist())
    # a batch reads exactly its rows of the file
    rows = torch.tensor([3, 0, 7])
    assert torch.equal(views[0][rows], torch.from_numpy(np.asarray(train[0]))[views[0].index[rows]])
    assert torch.equal(data.test_images[torch.tensor([1])], torch.from_numpy(np.asarray(test[0][1:2])))


def test_an_earlier_npz_cache_is_converted_once_and_not_decoded_again(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "img")
    root = tmp_path / "img"
    fresh = load_image_folder(root, cache_dir=tmp_path / "decoded")  # the images, decoded, to compare against
    classes, files = scan_image_folder(root)
    old = root / ".bornagain-cache" / "imagefolder.npz"
    old.parent.mkdir()
    with open(old, "wb") as f:  # the layout and fingerprint the tool wrote before
        np.savez(f, fingerprint=np.array(folder_fingerprint(classes, files, None, version="imagefolder-v1")),
                 classes=np.array(classes), train_images=np.asarray(fresh[0][0]), train_labels=fresh[0][1],
                 test_images=np.asarray(fresh[1][0]), test_labels=fresh[1][1])
    monkeypatch.setattr(imagefolder, "decode_into", lambda *a, **k: pytest.fail("decoded instead of converting"))
    converted = load_image_folder(root)
    assert "converting the image cache" in capsys.readouterr().out and not old.exists()
    assert isinstance(converted[0][0], np.memmap)
    assert np.array_equal(converted[0][0], fresh[0][0]) and np.array_equal(converted[1][1], fresh[1][1])
    assert load_image_folder(root)[2] == classes  # mapped from the new cache (decoding would fail the test)


def test_a_damaged_cache_is_written_again(tmp_path):
    write_folder(tmp_path / "img")
    first = load_image_folder(tmp_path / "img", cache_dir=tmp_path / "c")
    folder = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    images = np.load(folder / "train_images.npy", mmap_mode="r+")
    images[0] = 255 - images[0]  # a row the checksum reads (the first): someone wrote into the file
    images.flush()
    del images
    classes, files = scan_image_folder(tmp_path / "img")
    assert read_arrays(folder, folder_fingerprint(classes, files)) is None
    again = load_image_folder(tmp_path / "img", cache_dir=tmp_path / "c")
    assert np.array_equal(again[0][0][1:], first[0][0][1:]) and read_arrays(folder, folder_fingerprint(classes, files))


def _load_as_rank(rank: int, root: str, cache: str, out: str, local_world: int, delay_rank0: float) -> None:
    """One process of a node: LOCAL_RANK as torchrun sets it; rank 0 starts late, so rank 1 would write if it
    could. What each printed goes to out/rank<r>.txt, its checksum of the arrays to out/rank<r>.sum."""
    if local_world:
        os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(local_world))
    if rank == 0:
        time.sleep(delay_rank0)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        train, test, _ = load_image_folder(root, cache_dir=cache)
    Path(out, f"rank{rank}.txt").write_text(said.getvalue())
    Path(out, f"rank{rank}.sum").write_text(str(int(np.asarray(train[0], dtype=np.int64).sum())))


@pytest.mark.parametrize("local_world", [2, 0], ids=["torchrun-local-rank-0-writes", "lock-file-without-torchrun"])
def test_two_processes_of_a_node_write_the_cache_once_and_map_it(tmp_path, local_world):
    write_folder(tmp_path / "img", per_class=40)
    args = (str(tmp_path / "img"), str(tmp_path / "cache"), str(tmp_path), local_world, 1.5 if local_world else 0)
    mp.spawn(_load_as_rank, args=args, nprocs=2, join=True)
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    writes = [s.count("wrote the decoded images") for s in said]
    assert sum(writes) == 1, said  # written once
    if local_world:  # under torchrun: by local rank 0, while rank 1 (started first) waited for it
        assert writes == [1, 0] and "waits for local rank 0" in said[1], said
    sums = [(tmp_path / f"rank{r}.sum").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_mixed_sizes_are_refused_at_the_first_odd_image_and_data_image_size_resizes_them(tmp_path):
    root = tmp_path / "img"
    write_folder(root, per_class=4, size=(10, 10))
    Image.fromarray(np.zeros((6, 12, 3), np.uint8)).save(root / "train" / "b" / "001.png")  # 12 wide, 6 high
    with pytest.raises(UserError, match=r"train/b/001.png is 12x6 .* set data.image_size=N"):
        load_image_folder(root)
    ramp = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[None, :, None], (12, 1, 3))  # (12, 24, 3): x * 10
    Image.fromarray(ramp).save(root / "train" / "c" / "000.png")
    train, test, _ = load_image_folder(root, image_size=6)
    assert train[0].shape[1:] == (3, 6, 6) and test[0].shape[1:] == (3, 6, 6)
    # the 24x12 ramp: shorter side 12 -> 6 (half), so 12x6, and the centre 6x6 kept: columns 3..8 of the half
    row = train[0][8, 0, 3].astype(int)  # image c/000 is the 9th (a: 4, b: 4)
    assert np.all(np.diff(row) > 0) and 50 < row.mean() < 180, row
    data = prepare_data(DataConfig(name="imagefolder", root=str(root), image_size=6, val_size=3), 0)
    assert tuple(data.train_images.shape[1:]) == (3, 6, 6)


def test_data_image_size_on_a_source_it_cannot_resize_is_one_clear_error():
    with pytest.raises(UserError, match=r"data.image_size=16, but digits's images are 8x8"):
        prepare_data(DataConfig(name="digits", image_size=16), 0)
    with pytest.raises(UserError, match="data.image_size=0"):
        DataConfig(image_size=0)
    with pytest.raises(UserError, match="data.rrc_scale"):
        DataConfig(rrc_scale=(0.5, 0.2))


def test_auto_augmentation_is_the_random_resized_crop_above_64_pixels(tmp_path):
    write_folder(tmp_path / "small", per_class=4, size=(32, 32))
    write_folder(tmp_path / "large", per_class=4, size=(72, 72))
    styles = {name: prepare_data(DataConfig(name="imagefolder", root=str(tmp_path / name), val_size=3), 0)
              .augment_style for name in ("small", "large")}
    assert styles == {"small": "crop", "large": "rrc"}


def test_random_resized_crop_is_the_identity_at_full_scale_and_reads_inside_its_crop():
    g = torch.Generator().manual_seed(0)
    ramp = (torch.arange(40) * 6).to(torch.uint8).view(1, 1, 1, 40).expand(4, 3, 40, 40).contiguous()  # x * 6
    same = random_resized_crop_flip(ramp, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, generator=g)
    assert torch.equal(same, ramp)
    mirrored = random_resized_crop_flip(ramp, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True, generator=g,
                                        flip=torch.tensor([True, False, True, False]))
    assert torch.equal(mirrored[0], ramp[0].flip(2)) and torch.equal(mirrored[1], ramp[1])
    # a quarter of the area: a 20x20 window, enlarged 2x; every row is increasing and spans at most 20 columns
    out = random_resized_crop_flip(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0), hflip=False, generator=g)
    cols = out[:, 0, 5].float() / 6  # (4, 40) source columns
    assert torch.all(cols[:, 1:] >= cols[:, :-1]) and torch.all(cols[:, -1] - cols[:, 0] <= 20)
    assert torch.all(cols[:, -1] - cols[:, 0] >= 17)  # and not less (bilinear: the edges move by half a pixel)
    draws = [random_resized_crop_flip(ramp, scale=(0.08, 1.0), hflip=True, generator=torch.Generator().manual_seed(5))
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].dtype == torch.uint8  # the seed fixes the crops
    other = random_resized_crop_flip(ramp, scale=(0.08, 1.0), hflip=True, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other, draws[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _predict_as_rank(rank: int, port: int, out: str) -> None:
    from bornagain_kd.engine import distributed
    from bornagain_kd.models.registry import create_model
    from bornagain_kd.vision.batches import BatchPipeline, predict_logits

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = distributed.init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model("resnet-8", num_classes=10, in_channels=1)
    data = prepare_data(DataConfig(name="digits", val_size=100), 0)
    pipe = BatchPipeline(data.mean, data.std, torch.device("cpu"))
    logits = predict_logits(model, data.val_images, pipe, batch_size=16, precision="fp32", dist=info)  # 7 batches
    torch.save(logits, Path(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
def test_sharded_validation_gives_every_rank_one_processs_numbers(tmp_path):
    from bornagain_kd.models.registry import create_model
    from bornagain_kd.vision.batches import BatchPipeline, predict_logits

    mp.spawn(_predict_as_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = create_model("resnet-8", num_classes=10, in_channels=1)
    data = prepare_data(DataConfig(name="digits", val_size=100), 0)
    alone = predict_logits(model, data.val_images, BatchPipeline(data.mean, data.std, torch.device("cpu")),
                           batch_size=16, precision="fp32")
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), alone)  # the same batches: bit for bit


def test_tensors_files_and_npy_folders_are_mapped_not_read(tmp_path):
    from safetensors.numpy import save_file

    from bornagain_kd.vision.datasets import load_vision_data

    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (30, 9, 9, 3), dtype=np.uint8),
              "train_labels": np.arange(30) % 3, "test_images": rng.integers(0, 256, (6, 9, 9, 3), dtype=np.uint8),
              "test_labels": np.arange(6) % 3}
    save_file(arrays, str(tmp_path / "d.safetensors"))
    (tmp_path / "npy").mkdir()
    for key, value in arrays.items():
        np.save(tmp_path / "npy" / f"{key}.npy", value)
    (tmp_path / "npy" / "classes.txt").write_text("x\ny\nz\n")
    for root, classes in ((tmp_path / "d.safetensors", ("0", "1", "2")), (tmp_path / "npy", ("x", "y", "z"))):
        data = load_vision_data("tensors", root)
        assert data.classes == classes and tuple(data.train.images.shape) == (30, 3, 9, 9)
        assert not data.train.images.is_contiguous()  # (n, h, w, c) seen as (n, c, h, w): a view of the map
        assert torch.equal(data.train.images, torch.from_numpy(arrays["train_images"]).permute(0, 3, 1, 2))
    from bornagain_kd.vision.tensors import map_safetensors, read_npy_folder

    assert isinstance(map_safetensors(tmp_path / "d.safetensors")["train_images"], np.memmap)
    assert isinstance(read_npy_folder(tmp_path / "npy")["train_images"], np.memmap)


def test_jpegs_of_mixed_sizes_train_through_data_image_size_and_predict_resizes_new_ones(tmp_path):
    """The public commands: `bornagain train` on a folder of JPEGs of mixed sizes (72-110 px) at data.image_size=72
    (above 64 px: the random-resized crop), then `bornagain predict` on more JPEGs of other sizes."""
    from bornagain_kd.cli import main
    from bornagain_kd.files import read_json

    rng = np.random.default_rng(1)
    for split, n in (("train", 10), ("test", 3)):
        for cls in ("x", "y"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(72, 111, size=2))
                pixels = np.full((h, w, 3), 40 if cls == "x" else 210, np.uint8) + rng.integers(0, 30, (h, w, 3),
                                                                                                dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "img" / split / cls / f"{i}.jpg", quality=90)
    args = ["train", "--output", str(tmp_path / "run"), "data.name=imagefolder", f"data.root={tmp_path / 'img'}",
            "model.name=resnet-8", "train.epochs=2", "train.batch_size=8", "data.val_size=4", "train.trackers=[]"]
    assert main(args) == 2  # mixed sizes without data.image_size: one clear error, nothing written
    assert not (tmp_path / "run").exists()
    assert main([*args, "data.image_size=72"]) == 0
    results = read_json(tmp_path / "run" / "results.json")
    assert results["augmentation"] == "rrc" and 0 <= results["test_accuracy"] <= 100
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "img" / "test"), "--output",
                 str(tmp_path / "preds.csv")]) == 0
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 1 + 6


def test_a_run_recorded_before_the_new_data_keys_still_teaches(tmp_path):
    """Runs recorded before data.image_size / augment_style / rrc_scale existed read them as the behaviour they had
    (auto: the padded crop at these sizes), so an old teacher is not refused for 'other settings'."""
    import yaml

    from bornagain_kd.cli import main

    small = ["train.epochs=1", "data.train_subset=300", "data.val_size=100", "train.trackers=[]",
             "train.progress=false"]
    assert main(["train", "--output", str(tmp_path / "old"), *small]) == 0
    for name in ("settings.json", "config.yaml"):  # as the tool wrote them before the keys existed
        path = tmp_path / "old" / name
        tree = yaml.safe_load(path.read_text())
        data = tree["settings"]["data"] if name == "settings.json" else tree["data"]
        for key in ("image_size", "augment_style", "rrc_scale"):
            data.pop(key)
        path.write_text(json.dumps(tree) if name == "settings.json" else yaml.safe_dump(tree))
    assert main(["ban", "--output", str(tmp_path / "seq"), *small, "ban.generations=1",
                 f"ban.teacher_run={tmp_path / 'old'}"]) == 0


def test_a_whole_cache_is_read_without_the_lock_and_a_stale_one_does_not_keep_a_rank_waiting(tmp_path, monkeypatch):
    from bornagain_kd.vision import array_cache

    write_folder(tmp_path / "img")
    first = load_image_folder(tmp_path / "img", cache_dir=tmp_path / "c")
    # a read-only cache (a shared mount): reading a whole one takes no lock and writes nothing
    monkeypatch.setattr(array_cache, "exclusive_lock", lambda *a: pytest.fail("took the lock to read a whole cache"))
    assert np.array_equal(load_image_folder(tmp_path / "img", cache_dir=tmp_path / "c")[0][0], first[0][0])
    monkeypatch.undo()
    # local rank 1 expects another fingerprint than the whole cache holds, and nobody writes: an error, not a hang
    folder = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(array_cache, "STUCK_SECONDS", 0.2)
    with pytest.raises(UserError, match="the data folder changed while the ranks started"):
        array_cache.load_or_build(folder, "another-fingerprint", lambda w: pytest.fail("rank 1 must not write"),
                                  what="img", poll_seconds=0.01)


def test_a_stale_temporary_folder_of_a_killed_writer_is_removed(tmp_path):
    write_folder(tmp_path / "img")
    name = imagefolder._cache_name(tmp_path / "img", tmp_path / "c", None)
    stale = tmp_path / "c" / f".{name}.tmp-99999999"
    stale.mkdir(parents=True)
    (stale / "train_images.npy").write_bytes(b"half")
    load_image_folder(tmp_path / "img", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob(".*.tmp-*"))
