"""One born-again generation epoch: the plain-PyTorch way against `bornagain`, side by side in one process.

The plain way is written as a user would write it: an image-folder Dataset that opens each JPEG with PIL
and crops and flips it in numpy, a DataLoader with 2 workers, fp32, the frozen teacher under no_grad, the
BAN+L loss. `bornagain` runs the same generation (same model, teacher weights, images, batch, loss) through
its pipeline (`pipelines.classifier.fit`) in the settings listed below. The variants alternate round by
round, so a busy machine slows all of them alike. Prints images/s per variant, the speed-up over plain, and
each variant's training loss of its last round (one epoch from the same initial weights).

    python benchmarks/bench_vs_plain.py --data ../shared/data/cifar10-jpeg --images 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bornagain_kd.config import load_config
from cifar_args import add_data_args, decide_for_generation, one_epoch_overrides
from bornagain_kd.distill.ban_losses import resolve_loss
from bornagain_kd.engine.device import native_bf16
from bornagain_kd.engine.run_log import read_metrics
from bornagain_kd.models import create_model
from bornagain_kd.pipelines.ban import prepare_teacher
from bornagain_kd.pipelines.classifier import RunSpec, fit
from bornagain_kd.pipelines.vision_speed import resolve_vision_speed
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.vision.prepare import prepare_data

OURS = {  # name: overrides of the shared training section
    "bornagain fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "bornagain fp32+CL": ["train.precision=fp32", "train.channels_last=true", "train.compile=false"],
    "bornagain fp32+CL+compile": ["train.precision=fp32", "train.channels_last=true", "train.compile=true"],
    "bornagain bf16+CL": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "bornagain bf16+CL+compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    # no speed flags: what `auto` picks here (printed below). Last in a round, so that even round 1 decides on
    # compiling from the measurements the explicit variants just added to this machine's record.
    "bornagain defaults (auto)": [],
}


class PlainFolder(torch.utils.data.Dataset):
    """What a user writes: one JPEG opened, padded, cropped, flipped and normalised per __getitem__."""

    def __init__(self, files: list[tuple[str, int]], mean, std):
        self.files, self.mean, self.std = files, np.array(mean, np.float32), np.array(std, np.float32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, label = self.files[i]
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)  # (32, 32, 3)
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
        dy, dx = np.random.randint(0, 9, size=2)
        img = padded[dy:dy + 32, dx:dx + 32]
        if np.random.rand() < 0.5:
            img = img[:, ::-1]
        x = (img.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label


def plain_epoch(files, mean, std, student, teacher, batch: int) -> tuple[float, float]:
    """(images/s, mean training loss) of one epoch the plain way."""
    loader = torch.utils.data.DataLoader(PlainFolder(files, mean, std), batch_size=batch, shuffle=True,
                                         num_workers=2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    student.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in loader:
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        loss = 0.5 * F.cross_entropy(s, y) + 0.5 * F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(y), n + len(y)
    return n / (time.perf_counter() - t0), total / n


def ours_epoch(cfg: VisionConfig, data, teacher, init: dict, out: Path, planned_epochs: int
               ) -> tuple[float, float, float, dict]:
    """(images/s, mean training loss, compile seconds, the speed choices) of one generation epoch through the
    pipeline; ``auto`` settings resolved as `bornagain ban` resolves them, train.compile=auto for a generation of
    ``planned_epochs`` epochs (a real generation is longer than the one epoch timed here)."""
    cfg, choices = resolve_vision_speed(cfg, out)
    prepared, _ = prepare_teacher(teacher, cfg)
    spec = RunSpec(name="gen1", model_name=cfg.model.name, seed=1, loss_fn=resolve_loss("ban+l", normalize=True),
                   teacher=prepared, teacher_name=cfg.model.name)
    cfg, decided = decide_for_generation(cfg, tuple(data.train_images.shape), prepared, planned_epochs,
                                         torch.device("cpu"))
    choices |= decided

    def student() -> torch.nn.Module:  # the plain way's initial weights
        model = create_model(cfg.model.name, data.num_classes)
        model.load_state_dict(init)
        return model

    result = fit(out, cfg, data, spec, student, resume=False, speed=choices)
    record = [r for r in read_metrics(out / "metrics.jsonl") if "epoch_seconds" in r][-1]
    shown = {k: c.as_dict() for k, c in choices.items()}  # fit sees the decisions as set: show their reasons
    return record["images_per_second"], record["train_loss"], result.get("compile_seconds", 0.0), shown


def _short(name: str) -> str:
    """'bornagain defaults (auto)' -> 'defaults', 'bornagain bf16+CL' -> 'bf16+CL' (--variants)."""
    return name.removeprefix("bornagain ").split(" ")[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, images=5000)
    p.add_argument("--variants", nargs="+", choices=[_short(k) for k in OURS], default=None,
                   help="the bornagain variants to run (default: all)")
    args = p.parse_args()

    base = one_epoch_overrides(args)
    ours = {k: v for k, v in OURS.items() if args.variants is None or _short(k) in args.variants}
    ours = ours if native_bf16(torch.device("cpu")) else {k: v for k, v in ours.items() if "bf16" not in k}
    print(cpu_summary())
    if any("bf16" in k for k in OURS) and not any("bf16" in k for k in ours) and args.variants is None:
        print("this CPU has no native bf16: the bf16 variants are left out (emulated bf16 is ~10x slower)")
    cfg0 = load_config(VisionConfig, None, base)
    data = prepare_data(cfg0.data, cfg0.seed)  # decoded once (and cached on disk), as every run of the tool does
    # The same images for the plain way: the files of the chosen subset, in the folder's order.
    classes = sorted(d.name for d in (Path(args.data) / "train").iterdir() if d.is_dir())
    files = [(str(f), c) for c, name in enumerate(classes) for f in sorted((Path(args.data) / "train" / name).glob("*"))]
    rng = np.random.default_rng(0)
    files = [files[i] for i in rng.choice(len(files), size=args.images, replace=False)]

    torch.manual_seed(0)
    teacher = create_model(args.model, data.num_classes).eval().requires_grad_(False)
    init = create_model(args.model, data.num_classes).state_dict()
    speeds = {name: [] for name in ["plain PyTorch", *ours]}
    losses, compile_seconds, speed = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            student = create_model(args.model, data.num_classes)
            student.load_state_dict(init)
            ips, losses["plain PyTorch"] = plain_epoch(files, data.mean, data.std, student, teacher, args.batch_size)
            speeds["plain PyTorch"].append(ips)
            for name, overrides in ours.items():
                cfg = load_config(VisionConfig, None, [*base, *overrides])
                ips, losses[name], compile_seconds[name], speed[name] = ours_epoch(
                    cfg, data, teacher, init, Path(tmp) / f"{r}-{len(speeds)}-{name}", args.planned_epochs)
                speeds[name].append(ips)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in speeds.items()), flush=True)

    plain = statistics.median(speeds["plain PyTorch"])
    print(f"\n{args.model}, batch {args.batch_size}, {args.images} images, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds\n")
    print("| way | images/s | vs plain | train loss (last round) | compile s |")
    print("|---|---|---|---|---|")
    for name, values in speeds.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.0f} | {m / plain:.2f} | {losses[name]:.4f} | {compile_seconds.get(name, 0.0):.1f} |")
    auto = speed.get("bornagain defaults (auto)")
    if auto:  # the last round's choices
        print(f"\nbornagain defaults chose (compile for a {args.planned_epochs}-epoch generation): " + "; ".join(f"{k} {v['value']} ({v['reason']})" for k, v in auto.items()))


def cpu_summary() -> str:
    """torch, threads, the CPU kernel setting and the CPU's vector/bf16 flags (what the speed choices depend on)."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "avx512_vnni")))
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, ATen CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {native_bf16(torch.device('cpu'))}, "
            f"CPU flags: {' '.join(shown) or 'unknown'}")


if __name__ == "__main__":
    main()
