"""Data larger than memory, as users run it: a synthetic image folder of a given size and shape, trained on with
`bornagain train` in one process and in two under torchrun, the private memory of every training process read from
/proc/PID/smaps_rollup while it trains.

    python benchmarks/bench_data_scale.py --root /data/synthetic-in64            # ImageNet-64's shape (default)
    python benchmarks/bench_data_scale.py --root /tmp/s --images 20000 --classes 100 --seconds 20   # a quick look
    python benchmarks/bench_data_scale.py --root /tmp/mixed --mixed 3000          # 224x224 from JPEGs of mixed sizes

What it prints, per launch (two processes first: they find no cache, so the node's local rank 0 writes it while the
other waits; then one process maps it):
    the cache's writing time (the "wrote the decoded images ... in X s" line; written once: one such line),
    the largest private (anonymous) memory of each training process and of all of them together, while training,
    optimiser steps per second over the measured window (steps counted by the run's own checkpoint at the stop).

The training runs for ``--seconds`` after its first epoch has begun, then gets SIGTERM, which the tool answers with
a checkpoint at the next step and "stopped after step N" (as a user's Ctrl-C). Targets (issue 35): ImageNet-64's
shape (1,281,167 images, 64x64x3, 1,000 classes, ~16 GB decoded) on a 24 GB machine: each process at most 3 GB
private, two processes together at most 6 GB, the cache written once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _write_class(task: tuple[str, int, int, int, tuple[int, int], int]) -> int:
    """One class's JPEGs: smooth random images (a few low-frequency waves: JPEG sizes like photos', not noise's)."""
    from PIL import Image  # noqa: PLC0415

    folder, label, count, seed, (lo, hi), quality = task
    rng = np.random.default_rng(seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        image = np.empty((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, phase = rng.uniform(0.02, 0.25, 2).tolist() + [rng.uniform(0, 6.3)]
            image[:, :, c] = 128 + 60 * np.sin(fx * x + fy * y + phase + label) + rng.normal(0, 8, (h, w))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(f"{folder}/{i:05d}.jpg", quality=quality)
    return count


def make_folder(root: Path, images: int, classes: int, test_per_class: int, sizes: tuple[int, int],
                workers: int) -> float:
    """root/{train,test}/<class>/*.jpg, unless root/.complete says this folder was made with these arguments."""
    spec = {"images": images, "classes": classes, "test_per_class": test_per_class, "sizes": list(sizes)}
    marker = root / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    per_class = [images // classes + (1 if c < images % classes else 0) for c in range(classes)]
    tasks = [(str(root / "train" / f"c{c:04d}"), c, per_class[c], c, sizes, 90) for c in range(classes)]
    tasks += [(str(root / "test" / f"c{c:04d}"), c, test_per_class, 100_000 + c, sizes, 90) for c in range(classes)]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        done = 0
        for count in pool.imap_unordered(_write_class, tasks, chunksize=4):
            done += count
            if done % 100_000 < count:
                print(f"  wrote {done} images", flush=True)
    marker.write_text(json.dumps(spec))
    return time.perf_counter() - started


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _anonymous_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    match = re.search(r"^Anonymous:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def _is_trainer(pid: int) -> bool:
    """A process that trains: runs bornagain_kd, and is not torchrun's agent or a decoding worker's parent."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = b" ".join(cmd).decode(errors="replace")
    return "bornagain_kd" in text and "torch.distributed.run" not in text


def launch(root: Path, out: Path, procs: int, seconds: float, extra: list[str]) -> dict:
    args = ["-m", "bornagain_kd", "train", "--output", str(out), "data.name=imagefolder", f"data.root={root}",
            "model.name=resnet-8", "train.epochs=1", "train.batch_size=256", "train.compile=false",
            "train.trackers=[]", "data.val_size=0.01", *extra]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                             if procs > 1 else []), *args]
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // procs)))
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter(), line.rstrip()))
            print("   |", line.rstrip(), flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak_each: dict[int, int] = {}
    peak_total = 0
    training_since = None
    stop_sent = None
    while proc.poll() is None:
        time.sleep(0.5)
        now = time.perf_counter()
        if training_since is None and any("speed:" in text for _, text in lines):
            training_since = now  # the run's first line: data mapped, the model is built next
        trainers = [p for p in _descendants(proc.pid) if _is_trainer(p)]
        sizes = {p: _anonymous_kb(p) for p in trainers}
        sizes = {p: kb for p, kb in sizes.items() if kb is not None}
        if training_since is not None and stop_sent is None:
            for p, kb in sizes.items():
                peak_each[p] = max(peak_each.get(p, 0), kb)
            peak_total = max(peak_total, sum(sizes.values()))
            if now - training_since >= seconds:
                os.killpg(proc.pid, signal.SIGTERM)
                stop_sent = now
    reader.join(timeout=5)
    text = "\n".join(t for _, t in lines)
    stopped = re.findall(r"stopped after step (\d+)", text)
    wrote = re.findall(r"wrote the decoded images of .* in ([\d.]+) s", text)
    return {
        "processes": procs,
        "cache_writes": len(wrote),
        "cache_seconds": float(wrote[0]) if wrote else None,
        "waited_for_local_rank_0": text.count("waits for local rank 0"),
        "seconds_to_first_line": None if training_since is None else round(training_since - started, 1),
        "private_gb_each": sorted(round(kb / 2**20, 2) for kb in peak_each.values()),
        "private_gb_together": round(peak_total / 2**20, 2),
        "steps": int(stopped[0]) if stopped else None,
        "steps_per_second": (int(stopped[0]) / (stop_sent - training_since)) if stopped and stop_sent else None,
        "exit_code": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where the synthetic image folder is made (kept)")
    parser.add_argument("--images", type=int, default=1_281_167, help="training images (ImageNet's 1,281,167)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64, help="side of every image")
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60, help="training seconds measured per launch")
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 1], help="launches, in order (2: torchrun)")
    parser.add_argument("--mixed", type=int, default=0,
                        help="instead: this many JPEGs of sizes 160-320 px, trained at data.image_size=224")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-data-scale"))
    a = parser.parse_args()
    if a.mixed:
        a.images, a.size = a.mixed, None
    sizes = (160, 320) if a.mixed else (a.size, a.size)
    print(f"making {a.images} training images ({sizes[0]}-{sizes[1]} px) in {a.classes} classes under {a.root}",
          flush=True)
    made = make_folder(a.root, a.images, a.classes, a.test_per_class, sizes, a.workers)
    print(f"  made in {made:.0f} s" if made else "  (already made)", flush=True)
    cache = a.root / ".bornagain-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first launch writes it
    extra = ["data.image_size=224", "train.batch_size=32"] if a.mixed else []
    results = []
    for procs in a.procs:
        print(f"launch: {procs} process(es), {a.seconds:.0f} s of training", flush=True)
        results.append(launch(a.root, a.output / f"procs-{procs}", procs, a.seconds, extra))
        print(json.dumps(results[-1]), flush=True)
    decoded = sum(p.stat().st_size for p in cache.rglob("*.npy")) if cache.exists() else 0
    print(f"\ncache: {decoded / 2**30:.2f} GiB of decoded arrays in {cache}")
    for r in results:
        cache_time = "" if r["cache_seconds"] is None else f" in {r['cache_seconds']:.0f} s"
        rate = None if r["steps_per_second"] is None else round(r["steps_per_second"], 2)
        print(f"{r['processes']} process(es): cache written {r['cache_writes']}x{cache_time}, private GB per process "
              f"{r['private_gb_each']}, together {r['private_gb_together']}, steps/s {rate}, exit {r['exit_code']}")

if __name__ == "__main__":
    main()
