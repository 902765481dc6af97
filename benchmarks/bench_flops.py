"""How close a training step comes to the machine's limit: achieved FLOP/s over matrix-multiply FLOP/s.

For each model at batch 128, the FLOPs of one training step (forward and backward, counted with
torch.utils.flop_counter) divided by its measured time, against the FLOP/s of a large matrix multiply in
the same precision measured in the same run (the practical peak of this machine for that precision).
``--born-again`` adds a frozen teacher's forward pass (same architecture, batch norms folded, under
inference mode) to every step, as a generation's step has; its FLOPs are counted too.

    python benchmarks/bench_flops.py --models resnet-20 wrn-16-4 --batch-size 128
    python benchmarks/bench_flops.py --device cuda --precisions bf16 --compile off on \\
        --models wrn-28-10 densenet-bc-80-80 --born-again
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bornagain_kd.engine.device import autocast, native_bf16
from bornagain_kd.models import create_model
from bornagain_kd.models.fold import fold_batch_norms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(precision: str, device: torch.device, repeats: int = 10) -> float:
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):  # warm-up (library handles, clocks)
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def make_step(name: str, precision: str, batch: int, device: torch.device, *, compile_: bool, born_again: bool):
    """One training step of ``name`` (channels_last, SGD+Nesterov, fused where offered) on fixed random inputs."""
    torch.manual_seed(0)
    model = create_model(name, 100).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)
    teacher = None
    if born_again:
        teacher, _ = fold_batch_norms(create_model(name, 100).to(device).eval())
        teacher = teacher.to(memory_format=torch.channels_last)
        teacher.requires_grad_(False)
    fwd = torch.compile(model) if compile_ else model
    tfwd = torch.compile(teacher) if compile_ and teacher is not None else teacher

    def step():
        with autocast(device, precision):
            if tfwd is not None:
                with torch.inference_mode():
                    t_logits = tfwd(x).float()
                t_logits = t_logits.clone()
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        if tfwd is not None:
            loss = loss + F.kl_div(F.log_softmax(logits.float(), 1), F.log_softmax(t_logits, 1),
                                   reduction="batchmean", log_target=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, teacher, step


def count_flops(step, device) -> float:
    """FLOPs of one eager step (the flop counter does not see inside compiled graphs)."""
    with FlopCounterMode(display=False) as counter:
        step()
    sync(device)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet-20", "wrn-16-4"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is shown")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", nargs="+", default=None, help="default: fp32, and bf16 where it is native")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--cudnn-benchmark", nargs="+", default=["on"], choices=["off", "on"],
                   help="torch.backends.cudnn.benchmark (the pipelines turn it on for CUDA)")
    p.add_argument("--born-again", action="store_true", help="add a frozen teacher's forward to every step")
    args = p.parse_args()
    device = torch.device(args.device)
    precisions = args.precisions or (("fp32", "bf16") if native_bf16(device) else ("fp32",))
    what = "born-again step (student + frozen teacher)" if args.born_again else "plain training step"
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"{what}, device {device}{gpu}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
          f"channels_last, 100 classes\n")
    if not native_bf16(device):
        print("(this CPU has no native bf16: emulated bf16 runs about 10x slower than fp32)\n")
    rows = []
    for precision in precisions:
        peak = matmul_flops(precision, device)
        for name in args.models:
            flops = None
            for comp, cudnn in [(c, b) for c in args.compile for b in args.cudnn_benchmark]:
                torch.backends.cudnn.benchmark = cudnn == "on"
                model, teacher, step = make_step(name, precision, args.batch_size, device,
                                                 compile_=(comp == "on"), born_again=args.born_again)
                if flops is None:
                    eager = make_step(name, precision, args.batch_size, device, compile_=False,
                                      born_again=args.born_again)
                    flops = count_flops(eager[2], device)
                    del eager
                t0 = time.perf_counter()
                for _ in range(3):  # warm-up: compilation, cuDNN autotuning, allocator
                    step()
                sync(device)
                warm = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    sync(device)
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    sync(device)
                    times.append((time.perf_counter() - t) / args.steps)
                seconds = statistics.median(times)
                row = (f"| {name} | {precision} | {comp} | {cudnn if device.type == 'cuda' else '-'} | {flops / 1e9:.1f} | {seconds * 1e3:.1f} | "
                       f"{args.batch_size / seconds:.0f} | {flops / seconds / 1e12:.3g} | {peak / 1e12:.3g} | "
                       f"{flops / seconds / peak:.1%} | {warm:.0f} |")
                rows.append(row)
                print(row, flush=True)
                del model, teacher, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print("\n| model | precision | compile | cudnn.benchmark | GFLOP per step | step ms | images/s | achieved TFLOP/s | "
          "matmul TFLOP/s | utilisation | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
