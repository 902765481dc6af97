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
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bornagain.engine.device import autocast, native_bf16
from bornagain.models import create_model


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


def step_fn(name: str, precision: str, batch: int):
    device = torch.device("cpu")
    model = create_model(name, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


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
            step = step_fn(name, precision, args.batch_size)
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
