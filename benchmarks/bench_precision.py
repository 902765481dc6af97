"""Training-step throughput of a CIFAR model under fp32 / bf16 autocast, with and without channels_last.

Measured side by side in one process, the variants interleaved round by round so a
busy machine slows all of them alike. Prints images/s and the ratio to fp32.

    python benchmarks/bench_precision.py --model resnet-20 --batch-size 128 --rounds 5 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bornagain_kd.engine.device import autocast
from bornagain_kd.models import create_model

VARIANTS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


def make_step(model_name: str, precision: str, channels_last: bool, batch: int, device: torch.device):
    torch.manual_seed(0)
    model = create_model(model_name, 10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = {v: make_step(args.model, v[0], v[1], args.batch_size, device) for v in VARIANTS}
    for step in steps.values():  # warm-up (allocator, oneDNN kernel selection)
        step(), step()
    rates = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[v].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    base = statistics.median(rates[("fp32", False)])
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, device {device}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<22}{'images/s':>12}{'vs fp32':>10}")
    for (precision, cl), r in rates.items():
        med = statistics.median(r)
        name = precision + (" + channels_last" if cl else "")
        print(f"{name:<22}{med:>12.0f}{med / base:>10.2f}")


if __name__ == "__main__":
    main()
