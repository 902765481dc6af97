"""How close a training step comes to the machine's limit: achieved FLOP/s over matrix-multiply FLOP/s.

For each model at batch 128, the FLOPs of one training step (forward and backward, counted with
torch.utils.flop_counter) divided by its measured time, against the FLOP/s of a large matrix multiply in
the same precision measured in the same run (the practical peak of this machine for that precision).

    python benchmarks/bench_flops.py --models resnet-20 wrn-16-4 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_precision import make_step
from bornagain.engine.device import native_bf16


def matmul_flops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet-20", "wrn-16-4"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    print(f"{torch.get_num_threads()} threads, batch {args.batch_size}, channels_last\n")
    print("| model | precision | GFLOP per step | step s | achieved GFLOP/s | matmul GFLOP/s | utilisation |")
    print("|---|---|---|---|---|---|---|")
    precisions = ("fp32", "bf16") if native_bf16(torch.device("cpu")) else ("fp32",)
    if len(precisions) == 1:
        print("(this CPU has no native bf16: bf16 is left out, emulated it runs about 10x slower than fp32)\n")
    for precision in precisions:
        peak = matmul_flops(precision)
        for name in args.models:
            step = make_step(name, precision, True, args.batch_size, torch.device("cpu"))
            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
            step()  # warm-up
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            seconds = statistics.median(times)
            print(f"| {name} | {precision} | {flops / 1e9:.1f} | {seconds:.3f} | {flops / seconds / 1e9:.1f} | "
                  f"{peak / 1e9:.1f} | {flops / seconds / peak:.1%} |", flush=True)


if __name__ == "__main__":
    main()
