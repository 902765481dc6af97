"""What bounds a bf16 born-again step on a CPU: each lever measured on its own, side by side in one run.

1. Layout, per convolution shape of the model (3x3, stride 1): forward + backward of one convolution in bf16,
   NCHW against channels_last, as GFLOP/s and as a share of the bf16 matrix-multiply rate measured in the same run.
   Small channel counts (ResNet-20's 16-channel stage at 32x32) are where oneDNN is far from the matmul rate.
2. Fused batch norm + ReLU: the student's training step eager against compiled (compiling fuses the memory-bound
   work between the convolutions).
3. The frozen teacher's forward: as trained (batch norms), folded, folded and compiled, folded and compiled with
   frozen weights (ban.teacher_compile: prepacked weights, convolution + bias + ReLU fused).
4. Batch size: the compiled student step at batch 128 against 256, images/s (a recipe's batch size changes what a
   run learns, so this is a bound, not a default).

    python benchmarks/bench_levers.py --model resnet-20 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench_flops import matmul_flops
from bornagain_kd.engine.compile import compile_frozen
from bornagain_kd.models import create_model
from bornagain_kd.models.fold import fold_batch_norms

BF16 = torch.bfloat16


def median_seconds(fn, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_shapes(model: torch.nn.Module, image: int) -> list[tuple[int, int]]:
    """(channels, side) of every stride-1 3x3 convolution with as many inputs as outputs, in the model's order."""
    shapes = []

    def hook(module, inputs, _output):
        if module.kernel_size == (3, 3) and module.stride == (1, 1) and module.in_channels == module.out_channels:
            shapes.append((module.in_channels, inputs[0].shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, image, image))
    for h in handles:
        h.remove()
    return list(dict.fromkeys(shapes))


def conv_rate(channels: int, side: int, batch: int, channels_last: bool) -> float:
    """GFLOP/s of one bf16 3x3 convolution's forward and backward (input and weight gradients)."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(BF16)
    x = torch.randn(batch, channels, side, side, dtype=BF16)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(conv(x))

    def step():
        conv(x).backward(grad)

    flops = 3 * 2 * channels * channels * 9 * side * side * batch  # forward, input grad, weight grad
    return flops / median_seconds(step) / 1e9


def student_step(model_name: str, batch: int, compiled: bool, classes: int) -> float:
    """Seconds of one bf16 channels_last training step (forward, cross-entropy, backward, fused SGD)."""
    torch.manual_seed(0)
    model = create_model(model_name, classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    run = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step():
        with torch.autocast("cpu", dtype=BF16):
            logits = run(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_seconds(step)


def teacher_forwards(model_name: str, batch: int, classes: int) -> dict[str, float]:
    """Seconds of the frozen teacher's bf16 forward, four ways."""
    torch.manual_seed(0)
    trained = create_model(model_name, classes).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    folded, _ = fold_batch_norms(trained)
    folded = folded.to(memory_format=torch.channels_last)
    ways = {"as trained (batch norms)": trained, "folded": folded,
            "folded, compiled": torch.compile(folded),
            "folded, compiled, frozen weights": compile_frozen(folded, enabled=True)[0]}
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = {}
    for name, model in ways.items():
        def forward(model=model):
            with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
                model(x)
        out[name] = median_seconds(forward)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    b = args.batch_size
    shapes = conv_shapes(create_model(args.model, args.classes), 32)
    rows: dict[str, list[float]] = {}
    peak = []
    for r in range(args.rounds):  # every lever once per round: a busy machine slows all of them alike
        peak.append(matmul_flops("bf16", torch.device("cpu")) / 1e9)
        for channels, side in shapes:
            for cl in (False, True):
                rows.setdefault(f"conv {channels}ch {side}x{side} {'channels_last' if cl else 'NCHW'}", []).append(
                    conv_rate(channels, side, b, cl))
        for compiled in (False, True):
            rows.setdefault(f"student step {'compiled' if compiled else 'eager'}", []).append(
                student_step(args.model, b, compiled, args.classes))
        rows.setdefault(f"student step compiled, batch {2 * b}", []).append(
            student_step(args.model, 2 * b, True, args.classes) / 2)
        for name, seconds in teacher_forwards(args.model, b, args.classes).items():
            rows.setdefault(f"teacher forward {name}", []).append(seconds)
        print(f"round {r + 1} done", flush=True)
    rate = statistics.median(peak)
    print(f"\n{args.model}, bf16, {torch.get_num_threads()} threads, median of {args.rounds} rounds; "
          f"bf16 matmul {rate:.0f} GFLOP/s\n")
    print("| lever | measured | per batch of " + str(b) + " |")
    print("|---|---|---|")
    for name, values in rows.items():
        m = statistics.median(values)
        if name.startswith("conv"):
            print(f"| {name} | {m:.0f} GFLOP/s ({100 * m / rate:.0f}% of matmul) | |")
        else:
            print(f"| {name} | {b / m:.0f} images/s | {1000 * m:.1f} ms |")


if __name__ == "__main__":
    main()
