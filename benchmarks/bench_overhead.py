"""Born-again overhead: images/s of a generation taught by a frozen teacher against plain training of the
same model at the same settings, per epoch, side by side in one process (variants alternate round by round).

A born-again step adds the teacher's forward pass to the student's forward, backward and update, so a naive
teacher costs about a third more. `bornagain` prepares the teacher once per generation (batch norms folded
into the convolutions, channels_last, its own precision); the "unprepared" rows show what that saves.

    python benchmarks/bench_overhead.py --data ../shared/data/cifar10-jpeg --images 5000 --rounds 2
    python benchmarks/bench_overhead.py --device cuda --model wrn-28-10 --epochs 3 --settings bf16+CL bf16+CL+compile
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

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

SETTINGS = {
    "auto": [],  # the defaults: what `auto` picks on this machine for this run
    "fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "fp32+CL": ["train.precision=fp32", "train.channels_last=true", "train.compile=false"],
    "bf16+CL": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "bf16+CL+compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    # a student that must stay fp32 and eager, its frozen teacher in bf16 and compiled with frozen weights
    "fp32+CL,teacher-bf16-compiled": ["train.precision=fp32", "train.channels_last=true", "train.compile=false",
                                      "ban.teacher_precision=bf16", "ban.teacher_compile=true"],
}


def epoch_speed(cfg: VisionConfig, data, teacher, out: Path, planned_epochs: int) -> tuple[float, str]:
    """(images/s of the last epoch, what was compiled) of one run: plain training when ``teacher`` is None, else a
    BAN+L generation; train.compile and ban.teacher_compile decided for a generation of ``planned_epochs``."""
    cfg, _ = decide_for_generation(cfg, tuple(data.train_images.shape), teacher, planned_epochs,
                                   torch.device(cfg.train.device))
    loss = resolve_loss("ce") if teacher is None else resolve_loss("ban+l", normalize=True)
    spec = RunSpec(name="gen", model_name=cfg.model.name, seed=1, loss_fn=loss, teacher=teacher,
                   teacher_name=cfg.model.name)
    result = fit(out, cfg, data, spec, lambda: create_model(cfg.model.name, data.num_classes), resume=False)
    ips = [r for r in read_metrics(out / "metrics.jsonl") if "epoch_seconds" in r][-1]["images_per_second"]
    parts = [name for name, key in (("student", "compile"), ("teacher", "teacher_compile"))
             if result["speed"].get(key, {}).get("value")]
    return ips, " + ".join(parts) or "nothing"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, images=5000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run; the last one is timed")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None,
                   help="default: auto (the defaults) and fp32")
    args = p.parse_args()
    base = [*one_epoch_overrides(args), f"train.device={args.device}", f"train.epochs={args.epochs}"]
    names = args.settings or ["auto", "fp32"]
    print(f"native bf16 here: {native_bf16(torch.device(args.device))}")
    settings = {name: SETTINGS[name] for name in names}
    data = prepare_data(load_config(VisionConfig, None, base).data, 0)
    torch.manual_seed(0)
    raw_teacher = create_model(args.model, data.num_classes).to(args.device).eval().requires_grad_(False)
    speeds: dict[str, list[float]] = {}
    compiled: dict[str, str] = {}  # the last round's decisions (auto decides per run)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting, overrides in settings.items():
                cfg, _ = resolve_vision_speed(load_config(VisionConfig, None, [*base, *overrides]), Path(tmp) / "none")
                teacher = raw_teacher.to(memory_format=torch.channels_last) if cfg.train.channels_last else raw_teacher
                prepared, _ = prepare_teacher(raw_teacher, cfg)
                for way, t in (("plain training", None), ("born-again, prepared teacher", prepared),
                               ("born-again, unprepared teacher", teacher)):
                    key = f"{setting} | {way}"
                    ips, compiled[key] = epoch_speed(cfg, data, t, Path(tmp) / f"{r}-{setting}-{way}",
                                                     args.planned_epochs)  # a run dir each
                    speeds.setdefault(key, []).append(ips)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in speeds.items()), flush=True)
    print(f"\n{args.model}, batch {args.batch_size}, {args.images} images, device {args.device}, "
          f"{torch.get_num_threads()} threads, epoch {args.epochs} of {args.epochs}, median of {args.rounds} rounds; compile decided for a "
          f"{args.planned_epochs}-epoch generation\n")
    print("| settings | way | images/s | overhead (plain / this) | compiled |")
    print("|---|---|---|---|---|")
    for setting in settings:
        plain = statistics.median(speeds[f"{setting} | plain training"])
        for key, values in speeds.items():
            if key.startswith(setting + " |"):
                m = statistics.median(values)
                print(f"| {key} | {m:.0f} | {plain / m:.2f} | {compiled[key]} |")


if __name__ == "__main__":
    main()
