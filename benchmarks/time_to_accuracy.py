"""Time to accuracy: a recipe trained as a user runs it, its test accuracy, wall time and training FLOPs.

For every seed (and every epoch scale given) the recipe runs as `bornagain train --config RECIPE` in a process of
its own, into OUTPUT/x<scale>/seed-<s>/ (a finished run is reused, an interrupted one continued: the study
resumes where it stopped). The schedule is the recipe's, fixed in advance; the test set is read once, at the end
of each run, and chooses nothing. Per run it reports:

    test accuracy         the recipe's own evaluation (with its TTA, if it sets train.tta)
    train s               training time (results.json train_seconds: compilation and evaluation excluded)
    wall s                the whole command (start-up, data, compilation, training, test predictions)
    PFLOP                 training FLOPs: forward + backward of one step counted with torch.utils.flop_counter,
                          per image, times the images trained on (metrics.jsonl)
    % of matmul           PFLOP / train s over the FLOP/s of a large matrix multiply in the run's precision,
                          measured in this process (benchmarks/bench_flops.py's rate)

``--epochs-scale 1 2`` also trains every seed with twice the recipe's epochs: the plateau check (a network on
its plateau moves its mean test error over the seeds by less than 0.3 points when its epochs double).

    python benchmarks/time_to_accuracy.py configs/fast-cifar10-10k.yaml --seeds 0 1 2 3 4 --epochs-scale 1 2 \\
        --output runs/tta-10k data.name=imagefolder data.root=../shared/data/cifar10-jpeg
    python benchmarks/time_to_accuracy.py configs/fast-cifar10.yaml --seeds 0 --output runs/tta-50k \\
        data.name=imagefolder data.root=../shared/data/cifar10-jpeg

Published reference (KellerJordan/cifar10-airbench, airbench94.py): 94.01% mean test accuracy on CIFAR-10 in
9.9 epochs, about 0.36 PFLOP of training, 3.83 s on one A100.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_flops import matmul_flops  # noqa: E402

from bornagain_kd.config import load_config  # noqa: E402
from bornagain_kd.engine.device import native_bf16  # noqa: E402
from bornagain_kd.models import create_model  # noqa: E402
from bornagain_kd.reports.ensembles import load_probs  # noqa: E402
from bornagain_kd.vision.config import VisionConfig  # noqa: E402

AIRBENCH94 = {"accuracy": 94.01, "epochs": 9.9, "pflop": 0.36, "a100_seconds": 3.83}


def flops_per_image(cfg: VisionConfig, num_classes: int, in_channels: int, size: int) -> float:
    """Forward + backward FLOPs of one training image (eager fp32 count; precision does not change it)."""
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes, in_channels, **cfg.model.kwargs).train()
    batch = 32
    x = torch.randn(batch, in_channels, size, size)
    y = torch.randint(0, num_classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def run_one(recipe: Path, out: Path, seed: int, epochs: int, overrides: list[str]) -> tuple[dict, float]:
    """`bornagain train` for one seed in its own process: (results.json, wall seconds of the commands that trained
    it). The wall time is kept in OUT/wall_seconds.json, so a re-run reports a finished run's own time (and an
    interrupted one's parts summed), not the seconds its --resume took to find it finished."""
    record = out / "wall_seconds.json"
    earlier = json.loads(record.read_text())["wall_seconds"] if record.is_file() else 0.0
    if (out / "results.json").is_file() and record.is_file():
        return json.loads((out / "results.json").read_text()), earlier
    command = [sys.executable, "-m", "bornagain_kd.cli", "train", "--config", str(recipe), "--output", str(out),
               f"seed={seed}", f"train.epochs={epochs}", "train.progress=false", *overrides]
    if out.exists():
        command.append("--resume")
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = earlier + time.perf_counter() - started
    record.write_text(json.dumps({"wall_seconds": wall}))
    return json.loads((out / "results.json").read_text()), wall


def images_trained(run_dir: Path) -> int:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(r.get("examples", 0) for r in records if "epoch_seconds" in r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe (the data's location)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs-scale", type=int, nargs="+", default=[1], help="multiples of the recipe's epochs")
    p.add_argument("--output", type=Path, default=Path("runs/time-to-accuracy"))
    args = p.parse_intermixed_args()  # the overrides may follow the options

    cfg = load_config(VisionConfig, args.recipe, args.overrides)
    precision = cfg.train.precision if cfg.train.precision != "auto" else (
        "bf16" if native_bf16(torch.device("cpu")) else "fp32")
    rate = matmul_flops(precision, torch.device("cpu"))
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                     if f in Path("/proc/cpuinfo").read_text().split())
    print(f"{args.recipe.name}: {cfg.model.name}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size}; "
          f"{os.cpu_count()} CPUs ({flags}), {torch.get_num_threads()} threads; {precision} matmul "
          f"{rate / 1e9:.0f} GFLOP/s", flush=True)

    rows, by_scale, per_image = [], {}, None
    for scale in args.epochs_scale:
        for seed in args.seeds:
            out = args.output / f"x{scale}" / f"seed-{seed}"
            results, wall = run_one(args.recipe, out, seed, cfg.train.epochs * scale, args.overrides)
            if per_image is None:  # one model for every run: counted once
                probs, _ = load_probs(out / "test_probs.safetensors")  # (test images, classes)
                per_image = flops_per_image(cfg, probs.shape[1], 3, 32)
            flops = per_image * images_trained(out)
            train_s = results["train_seconds"]
            row = {"scale": scale, "seed": seed, "epochs": cfg.train.epochs * scale,
                   "test_accuracy": results["test_accuracy"], "train_seconds": train_s, "wall_seconds": wall,
                   "compile_seconds": results.get("compile_seconds"), "pflop": flops / 1e15,
                   "matmul_fraction": flops / train_s / rate, "ideal_seconds": flops / rate}
            rows.append(row)
            by_scale.setdefault(scale, []).append(row)
            print(f"  x{scale} seed {seed}: test accuracy {row['test_accuracy']:.2f}%, train {train_s:.0f} s, "
                  f"wall {wall:.0f} s, "
                  f"{row['pflop']:.4f} PFLOP, {100 * row['matmul_fraction']:.0f}% of the matmul rate", flush=True)

    print("\n| recipe | epochs | seeds | test accuracy % | test error % | train s / network | wall s / network "
          "| PFLOP / network | % of matmul rate | FLOPs / matmul rate (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale, group in by_scale.items():
        acc = [r["test_accuracy"] for r in group]
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        mean = lambda key: statistics.mean(r[key] for r in group)  # noqa: E731
        print(f"| {args.recipe.stem} | {group[0]['epochs']} | {len(group)} | {statistics.mean(acc):.2f} +- {sd:.2f} "
              f"| {100 - statistics.mean(acc):.2f} | {mean('train_seconds'):.0f} | {mean('wall_seconds'):.0f} "
              f"| {mean('pflop'):.4f} | {100 * mean('matmul_fraction'):.0f} | {mean('ideal_seconds'):.0f} |")
    print(f"| airbench94 (published, A100) | {AIRBENCH94['epochs']} | - | {AIRBENCH94['accuracy']} | "
          f"{100 - AIRBENCH94['accuracy']:.2f} | {AIRBENCH94['a100_seconds']} | - | {AIRBENCH94['pflop']} | - | - |")
    if len(by_scale) > 1:
        scales = sorted(by_scale)
        base = {r["seed"]: r["test_accuracy"] for r in by_scale[scales[0]]}
        for scale in scales[1:]:
            diffs = [base[r["seed"]] - r["test_accuracy"] for r in by_scale[scale] if r["seed"] in base]
            if len(diffs) > 1:
                half = 2.776 if len(diffs) == 5 else 1.96  # t(0.975, 4) for five seeds
                sd = statistics.stdev(diffs)
                print(f"\nplateau: x{scale} epochs minus x{scales[0]}: mean test error {statistics.mean(diffs):+.2f} "
                      f"points over {len(diffs)} seeds (paired; per seed {', '.join(f'{d:+.2f}' for d in diffs)}; "
                      f"95% interval +- {half * sd / math.sqrt(len(diffs)):.2f})")
    (args.output / "time_to_accuracy.json").write_text(json.dumps({"recipe": str(args.recipe), "rows": rows,
                                                                  "matmul_flops": rate, "cpu_flags": flags}, indent=1))


if __name__ == "__main__":
    main()
